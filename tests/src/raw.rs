//! A hand-driven agent: its own Ed25519 key, real enrollment over gRPC, and reports it builds and signs
//! itself, so tests can send what a real agent never would (flipped bytes, replays, other keys).

use std::time::Duration;

use gpuattest_proto::pb::{self, collector_client::CollectorClient};
use prost::Message;
use ring::signature::{Ed25519KeyPair, KeyPair};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// A fresh Ed25519 key.
pub fn new_key() -> Ed25519KeyPair {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("key")
}

/// A gRPC client to `url`.
pub async fn client(url: &str) -> CollectorClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to collector");
    CollectorClient::new(ch)
}

/// Enrolls `key` with `token`; returns the host id or the refusal.
pub async fn enroll(url: &str, token: &str, key: &Ed25519KeyPair, hostname: &str) -> Result<String, tonic::Status> {
    let resp = client(url)
        .await
        .enroll(pb::EnrollRequest {
            enroll_token: token.to_string(),
            public_key: key.public_key().as_ref().to_vec(),
            facts: Some(pb::HostFacts { hostname: hostname.to_string(), ..Default::default() }),
        })
        .await?;
    Ok(resp.into_inner().host_id)
}

/// A minimal report with one GPU and one process whose command line is `cmdline`.
pub fn report(host_id: &str, seq: u64, prev: &[u8], cmdline: &str) -> pb::UsageReport {
    pb::UsageReport {
        host_id: host_id.to_string(),
        seq,
        prev_report_sha256: prev.to_vec(),
        window_start_unix_ms: 1,
        window_end_unix_ms: 2,
        agent_time_unix_ms: 2,
        gpus: vec![pb::Gpu {
            uuid: "GPU-00000000-1111-2222-3333-444444444444".into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            processes: vec![pb::GpuProcessUsage { pid: 4242, used_memory_bytes: 1, mps: false }],
            ..Default::default()
        }],
        processes: vec![pb::GpuProcess {
            pid: 4242,
            gpu_uuids: vec!["GPU-00000000-1111-2222-3333-444444444444".into()],
            cmdline: cmdline.to_string(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Signs a report's encoding with `key`.
pub fn sign(key: &Ed25519KeyPair, r: &pb::UsageReport) -> pb::SignedReport {
    gpuattest_proto::sign_report(key, r.encode_to_vec())
}

/// An open report stream.
pub struct RawStream {
    tx: mpsc::Sender<pb::AgentMessage>,
    rx: tonic::Streaming<pb::CollectorMessage>,
    /// The collector's first message.
    pub challenge: pb::Challenge,
}

impl RawStream {
    /// Opens a stream as `host_id` with `key_id`; the collector's refusal is returned as is.
    pub async fn open(url: &str, host_id: &str, key_id: &[u8]) -> Result<RawStream, tonic::Status> {
        Self::open_with_interval(url, host_id, key_id, 1000).await
    }

    /// As [`RawStream::open`], announcing `interval_ms` in the (unsigned) opening message.
    pub async fn open_with_interval(
        url: &str,
        host_id: &str,
        key_id: &[u8],
        interval_ms: u64,
    ) -> Result<RawStream, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
                host_id: host_id.to_string(),
                key_id: key_id.to_vec(),
                agent_version: "raw-test".into(),
                interval_ms,
            })),
        })
        .await
        .expect("queue hello");
        let mut rx = client(url).await.stream(ReceiverStream::new(rx)).await?.into_inner();
        let first = rx.message().await?.expect("collector sent nothing");
        let Some(pb::collector_message::Msg::Challenge(challenge)) = first.msg else {
            panic!("expected a Challenge first, got {first:?}");
        };
        Ok(RawStream { tx, rx, challenge })
    }

    /// Sends one signed report.
    pub async fn send(&self, signed: pb::SignedReport) {
        self.tx
            .send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Report(signed)) })
            .await
            .expect("send report");
    }

    /// Sends one report and returns the collector's answer.
    pub async fn next_after(&mut self, signed: pb::SignedReport) -> pb::collector_message::Msg {
        self.send(signed).await;
        self.next().await
    }

    /// The collector's next message (panics after 10 s).
    pub async fn next(&mut self) -> pb::collector_message::Msg {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("collector answered in time")
            .expect("stream alive")
            .expect("a message")
            .msg
            .expect("non-empty")
    }
}
