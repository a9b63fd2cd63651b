//! Location landmarks: the agent connects out to each landmark the collector names (hosts rarely
//! accept inbound traffic), answers its timed challenges with the host key, and keeps the signed
//! measurement records it sends back for the next report. Each landmark has its own task, so an
//! answer never waits behind report work; the landmark, not the agent, times the round trip and signs
//! the record, so the agent cannot shorten what it carries. Where the GPUs are in confidential-computing
//! mode, the landmark also sends GPU-bound challenges, answered with a GPU's attestation report over a
//! nonce derived from the challenge: then the chip, not only the host key, is timed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpuattest_proto::landmark::{
    ANSWER, CHALLENGE, GPU_ANSWER, GPU_CHALLENGE, HELLO, RECORD, answer_message, gpu_nonce, read_frame,
    record_verifies, write_frame,
};
use gpuattest_proto::pb;
use prost::Message;
use ring::signature::{Ed25519KeyPair, KeyPair};
use tokio::sync::watch;
use tracing::{debug, info};

/// Records kept for the next report, at most one per landmark and this many in all.
pub const MAX_RECORDS: usize = 64;
/// A landmark silent this long (no challenge, no record) is dialled again.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(900);

/// The signed records received since the last report (newest per landmark), and how fast this agent
/// answered each landmark meanwhile.
#[derive(Debug, Default)]
pub struct Records {
    records: Mutex<BTreeMap<String, pb::SignedLocationRecord>>,
    answers: Mutex<BTreeMap<String, pb::LandmarkAnswers>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Records {
    /// Takes every record for a report.
    pub fn drain(&self) -> Vec<pb::SignedLocationRecord> {
        std::mem::take(&mut *lock(&self.records)).into_values().collect()
    }

    /// Takes the answer timings for a report.
    pub fn drain_answers(&self) -> Vec<pb::LandmarkAnswers> {
        std::mem::take(&mut *lock(&self.answers)).into_values().collect()
    }

    fn put(&self, landmark: &str, r: pb::SignedLocationRecord) {
        let mut m = lock(&self.records);
        if m.len() < MAX_RECORDS || m.contains_key(landmark) {
            m.insert(landmark.to_string(), r);
        }
    }

    fn answered(&self, landmark: &str, took: Duration) {
        let us = took.as_micros() as u64;
        let mut m = lock(&self.answers);
        if m.len() >= MAX_RECORDS && !m.contains_key(landmark) {
            return;
        }
        let a = m
            .entry(landmark.to_string())
            .or_insert_with(|| pb::LandmarkAnswers { landmark: landmark.to_string(), ..Default::default() });
        a.answers = a.answers.saturating_add(1);
        a.max_answer_us = a.max_answer_us.max(us);
        a.total_answer_us = a.total_answer_us.saturating_add(us);
    }
}

/// What a landmark task needs from the agent.
pub struct HostKey {
    /// Enrolled host id.
    pub host_id: String,
    /// The host's signing key (answers are signed with it).
    pub key: Arc<Ed25519KeyPair>,
    /// The GPUs, for GPU-bound challenges (none: host-key challenges only).
    pub gpus: Option<Arc<dyn GpuAttester>>,
}

/// The host's GPUs as landmark tasks see them: which can attest, and an attestation over a nonce.
pub trait GpuAttester: Send + Sync {
    /// GPUs in confidential-computing mode; `None` until the GPUs have been observed once.
    fn attesting(&self) -> Option<Vec<String>>;
    /// `uuid`'s attestation report over `nonce` (blocking: a driver call).
    fn attest(&self, uuid: &str, nonce: &[u8; 32]) -> Option<pb::GpuAttestation>;
}

/// How long a landmark task waits for the first observation to learn which GPUs can attest.
pub const GPU_LIST_WAIT: Duration = Duration::from_secs(30);

/// Keeps one task per landmark in the latest list the collector sent, until `stop` turns true.
pub async fn supervise(
    mut list: watch::Receiver<Vec<pb::Landmark>>,
    host: Arc<HostKey>,
    records: Arc<Records>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks: BTreeMap<(String, String, Vec<u8>), tokio::task::JoinHandle<()>> = BTreeMap::new();
    loop {
        let wanted: Vec<pb::Landmark> = list.borrow_and_update().clone();
        let keys: Vec<_> = wanted.iter().map(|l| (l.name.clone(), l.address.clone(), l.public_key.clone())).collect();
        tasks.retain(|k, t| {
            let keep = keys.contains(k);
            if !keep {
                t.abort();
            }
            keep
        });
        for l in wanted.into_iter().take(MAX_RECORDS) {
            let k = (l.name.clone(), l.address.clone(), l.public_key.clone());
            if let std::collections::btree_map::Entry::Vacant(slot) = tasks.entry(k) {
                slot.insert(tokio::spawn(dial(l, host.clone(), records.clone())));
            }
        }
        tokio::select! {
            changed = list.changed() => if changed.is_err() { break },
            _ = stop.changed() => if *stop.borrow() { break },
        }
    }
    for t in tasks.values() {
        t.abort();
    }
}

async fn dial(l: pb::Landmark, host: Arc<HostKey>, records: Arc<Records>) {
    let mut delay = Duration::from_secs(1);
    loop {
        match connection(&l, &host, &records).await {
            Ok(()) => delay = Duration::from_secs(1),
            Err(e) => {
                info!(landmark = %l.name, address = %l.address, reason = %e, "landmark connection ended; dialling again");
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
        tokio::time::sleep(delay).await;
    }
}

async fn connection(l: &pb::Landmark, host: &HostKey, records: &Records) -> Result<(), String> {
    let mut s = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(&l.address))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    // The GPUs in confidential-computing mode, once the first observation has said which they are.
    let mut attesting = Vec::new();
    if let Some(g) = &host.gpus {
        let until = tokio::time::Instant::now() + GPU_LIST_WAIT;
        loop {
            if let Some(list) = g.attesting() {
                attesting = list;
                break;
            }
            if tokio::time::Instant::now() > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let hello = pb::LandmarkHello {
        host_id: host.host_id.clone(),
        public_key: host.key.public_key().as_ref().to_vec(),
        attesting_gpus: attesting.clone(),
    };
    write_frame(&mut s, HELLO, &hello.encode_to_vec()).await.map_err(|e| e.to_string())?;
    let gpu_name = format!("{}/gpu", l.name);
    let mut turn = 0usize;
    loop {
        let (kind, payload) = tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut s))
            .await
            .map_err(|_| "the landmark fell silent".to_string())?
            .map_err(|e| e.to_string())?;
        match kind {
            CHALLENGE if payload.len() == 32 => {
                let read_at = std::time::Instant::now();
                let sig = host.key.sign(&answer_message(&payload, &l.name, &host.host_id));
                write_frame(&mut s, ANSWER, sig.as_ref()).await.map_err(|e| e.to_string())?;
                records.answered(&l.name, read_at.elapsed());
            }
            GPU_CHALLENGE if payload.len() == 32 && !attesting.is_empty() => {
                let read_at = std::time::Instant::now();
                let (Some(g), Ok(challenge)) = (host.gpus.clone(), <[u8; 32]>::try_from(payload.as_slice())) else {
                    return Err("a GPU-bound challenge without GPUs to answer it".into());
                };
                // The GPUs take turns, so each proves its own place over time.
                let uuid = attesting[turn % attesting.len()].clone();
                turn = turn.wrapping_add(1);
                let nonce = gpu_nonce(&challenge, &l.name, &host.host_id);
                let answer = tokio::task::spawn_blocking(move || g.attest(&uuid, &nonce))
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| "the GPU gave no attestation for a GPU-bound challenge".to_string())?;
                write_frame(&mut s, GPU_ANSWER, &answer.encode_to_vec()).await.map_err(|e| e.to_string())?;
                records.answered(&gpu_name, read_at.elapsed());
            }
            RECORD => {
                let r = pb::SignedLocationRecord::decode(payload.as_slice()).map_err(|e| e.to_string())?;
                // Only what this landmark signed is worth carrying.
                if !record_verifies(&l.public_key, &r.record, &r.signature) {
                    return Err("a record the landmark's key did not sign".into());
                }
                debug!(landmark = %l.name, "location record received");
                let gpu = pb::LocationRecord::decode(r.record.as_slice()).is_ok_and(|x| x.kind == "gpu");
                records.put(if gpu { &gpu_name } else { &l.name }, r);
            }
            _ => return Err(format!("unexpected frame kind {kind}")),
        }
    }
}
