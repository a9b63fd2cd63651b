//! `landmark serve`: a location landmark. Agents connect out to it (hosts rarely accept inbound
//! traffic); on each connection it sends fresh 32-byte challenges, times each signed answer from just
//! before the challenge is written to its receipt, keeps the minimum of a round (queueing only adds),
//! and sends back a `SignedLocationRecord` the agent carries to the collector in its next report. The
//! landmark signs; the agent cannot alter what it carries. Protocol: `gpuattest_proto::landmark`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuattest_proto::landmark::{
    ANSWER, CHALLENGE, GPU_ANSWER, GPU_CHALLENGE, HELLO, RECORD, answer_verifies, gpu_nonce, read_frame,
    record_message, write_frame,
};
use gpuattest_proto::pb;
use prost::Message;
use ring::rand::SecureRandom;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use crate::export::ExportKey;

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 4096;
/// How long an agent has to say who it is, and to answer a challenge.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A landmark's settings.
#[derive(Debug, Clone)]
pub struct LandmarkConfig {
    /// Its name: what its records say, and what the collector registers it under.
    pub name: String,
    /// Challenges per round (the minimum of them is the measurement).
    pub rounds: u32,
    /// Pause between challenges of a round.
    pub spacing: Duration,
    /// Pause between rounds on one connection.
    pub every: Duration,
    /// GPU-bound challenges per round, for hosts that name GPUs in confidential-computing mode (0: none).
    pub gpu_rounds: u32,
}

/// How long a GPU has to attest (real GPUs take tens to hundreds of milliseconds).
pub const GPU_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves agents on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    cfg: LandmarkConfig,
    key: Arc<ExportKey>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            () = &mut shutdown => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept failed");
                continue;
            }
        };
        let (cfg, key) = (cfg.clone(), key.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, &cfg, &key).await {
                info!(%peer, reason = %e, "landmark connection closed");
            }
        });
    }
}

async fn connection(mut stream: TcpStream, cfg: &LandmarkConfig, key: &ExportKey) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (kind, payload) = tokio::time::timeout(ANSWER_TIMEOUT, read_frame(&mut stream))
        .await
        .map_err(|_| "no hello within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let hello = pb::LandmarkHello::decode(payload.as_slice()).map_err(|e| format!("hello: {e}"))?;
    if kind != HELLO || hello.public_key.len() != 32 || hello.host_id.is_empty() || hello.host_id.len() > 256 {
        return Err("the first frame is not a hello naming a host and its Ed25519 key".into());
    }
    let rng = ring::rand::SystemRandom::new();
    loop {
        let mut rtts = Vec::with_capacity(cfg.rounds as usize);
        for i in 0..cfg.rounds {
            if i > 0 {
                tokio::time::sleep(cfg.spacing).await;
            }
            let mut nonce = [0u8; 32];
            rng.fill(&mut nonce).map_err(|_| "no randomness".to_string())?;
            let sent = Instant::now();
            write_frame(&mut stream, CHALLENGE, &nonce).await.map_err(|e| e.to_string())?;
            let (kind, sig) = tokio::time::timeout(ANSWER_TIMEOUT, read_frame(&mut stream))
                .await
                .map_err(|_| "no answer within 5 s".to_string())?
                .map_err(|e| e.to_string())?;
            let rtt = sent.elapsed();
            if kind != ANSWER || !answer_verifies(&hello.public_key, &nonce, &cfg.name, &hello.host_id, &sig) {
                return Err(format!("host {}: an answer that does not verify", hello.host_id));
            }
            rtts.push(rtt.as_micros() as u64);
        }
        rtts.sort_unstable();
        let record = pb::LocationRecord {
            host_id: hello.host_id.clone(),
            landmark: cfg.name.clone(),
            host_key_id: gpuattest_proto::sha256(&hello.public_key).to_vec(),
            min_rtt_us: rtts.first().copied().unwrap_or_default(),
            median_rtt_us: rtts.get(rtts.len() / 2).copied().unwrap_or_default(),
            rounds: cfg.rounds,
            measured_at_unix_ms: crate::now_ms(),
            ..Default::default()
        }
        .encode_to_vec();
        send_record(&mut stream, key, record).await?;
        info!(host_id = %hello.host_id, min_rtt_us = rtts.first().copied().unwrap_or_default(), "measured");
        if cfg.gpu_rounds > 0 && !hello.attesting_gpus.is_empty() {
            gpu_round(&mut stream, cfg, key, &hello, &rng).await?;
        }
        tokio::time::sleep(cfg.every).await;
    }
}

/// Signs a record and sends it to the agent, which carries it to the collector.
async fn send_record(stream: &mut TcpStream, key: &ExportKey, record: Vec<u8>) -> Result<(), String> {
    let signature = key.sign(&record_message(&record));
    let signed = pb::SignedLocationRecord { record, signature }.encode_to_vec();
    write_frame(stream, RECORD, &signed).await.map_err(|e| e.to_string())
}

/// One GPU-bound measurement: challenges answered by a GPU's attestation report over
/// [`gpu_nonce`], timed like host-key answers. The landmark checks that each answer is a report over
/// exactly that nonce from a GPU the host named, and keeps the fastest answer whole in its record; the
/// collector verifies its signature and certificate chain against its trust anchors.
async fn gpu_round(
    stream: &mut TcpStream,
    cfg: &LandmarkConfig,
    key: &ExportKey,
    hello: &pb::LandmarkHello,
    rng: &ring::rand::SystemRandom,
) -> Result<(), String> {
    let mut rtts = Vec::with_capacity(cfg.gpu_rounds as usize);
    let mut fastest: Option<(u64, [u8; 32], pb::GpuAttestation)> = None;
    for i in 0..cfg.gpu_rounds {
        if i > 0 {
            tokio::time::sleep(cfg.spacing).await;
        }
        let mut nonce = [0u8; 32];
        rng.fill(&mut nonce).map_err(|_| "no randomness".to_string())?;
        let expected = gpu_nonce(&nonce, &cfg.name, &hello.host_id);
        let sent = Instant::now();
        write_frame(stream, GPU_CHALLENGE, &nonce).await.map_err(|e| e.to_string())?;
        let (kind, payload) = tokio::time::timeout(GPU_ANSWER_TIMEOUT, read_frame(stream))
            .await
            .map_err(|_| "no GPU answer within 10 s".to_string())?
            .map_err(|e| e.to_string())?;
        let rtt = sent.elapsed().as_micros() as u64;
        let a = pb::GpuAttestation::decode(payload.as_slice()).map_err(|e| format!("GPU answer: {e}"))?;
        let over = gpuattest_evidence::Report::parse(&a.report).map(|r| r.request_nonce);
        if kind != GPU_ANSWER || !hello.attesting_gpus.contains(&a.gpu_uuid) || over.as_ref().ok() != Some(&expected) {
            return Err(format!(
                "host {}: a GPU answer that is not an attestation over this challenge by a GPU it named",
                hello.host_id
            ));
        }
        rtts.push(rtt);
        if fastest.as_ref().is_none_or(|(t, _, _)| rtt < *t) {
            fastest = Some((rtt, expected, a));
        }
    }
    let Some((min_rtt, gpu_nonce_bytes, a)) = fastest else { return Ok(()) };
    rtts.sort_unstable();
    let record = pb::LocationRecord {
        host_id: hello.host_id.clone(),
        landmark: cfg.name.clone(),
        host_key_id: gpuattest_proto::sha256(&hello.public_key).to_vec(),
        min_rtt_us: min_rtt,
        median_rtt_us: rtts.get(rtts.len() / 2).copied().unwrap_or_default(),
        rounds: cfg.gpu_rounds,
        measured_at_unix_ms: crate::now_ms(),
        kind: "gpu".into(),
        gpu_uuid: a.gpu_uuid,
        gpu_nonce: gpu_nonce_bytes.to_vec(),
        gpu_report: a.report,
        gpu_cert_chain: if a.attestation_cert_chain.is_empty() { a.cert_chain } else { a.attestation_cert_chain },
    }
    .encode_to_vec();
    send_record(stream, key, record).await?;
    info!(host_id = %hello.host_id, min_rtt_us = min_rtt, "measured a GPU-bound round trip");
    Ok(())
}
