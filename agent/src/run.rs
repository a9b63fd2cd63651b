//! The daemon: observe on an interval, sign, spool, and stream to the collector until acknowledged.
//!
//! Two tasks share the spool. The producer observes, builds the next chained report, signs it, writes
//! it to the spool (fsync) and only then advances the chain state. The sender keeps one stream open to
//! a collector (failing over across the configured addresses with jittered backoff), resumes after the
//! collector's stored sequence number, and trims the spool on cumulative acknowledgements.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gpuattest_proto::pb;
use prost::Message;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, error, info, warn};

use crate::identity::{Identity, StateError};
use crate::observe::Observer;
use crate::report::{self, ReportContext};
use crate::spool::Spool;
use crate::state::ChainState;
use crate::transport::{self, TransportError};

/// Settings of the daemon.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Collector addresses, tried in order (failover).
    pub collectors: Vec<String>,
    /// One-time enrollment token, needed until the host is enrolled.
    pub enroll_token: Option<String>,
    /// Where key, state and spool live.
    pub state_dir: PathBuf,
    /// Observation interval.
    pub interval: Duration,
    /// GPU counter sampling interval (at most `interval`).
    pub sample_interval: Duration,
    /// Spool size bound in bytes.
    pub spool_max_bytes: u64,
    /// Most reports in flight before an acknowledgement (backpressure).
    pub window: usize,
    /// TLS material for https:// collectors.
    pub tls: crate::transport::Tls,
    /// On shutdown, how long to keep sending the spool before stopping.
    pub drain_timeout: Duration,
    /// Where `/metrics` and `/healthz` are served (off when `None`).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// State directory, key or spool trouble.
    #[error(transparent)]
    State(#[from] StateError),
    /// Enrollment was refused or impossible.
    #[error("{0}")]
    Enroll(String),
    /// Observation failed at start-up.
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    /// The collector revoked this host: the agent stops for good (its spool and state are kept).
    #[error("{0}; the agent stops (exit 78) and keeps its spool; enroll a new identity to report again")]
    Revoked(String),
}

/// The wall clock, Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Shared {
    state_dir: PathBuf,
    identity: Identity,
    spool: Mutex<Spool>,
    chain: Mutex<ChainState>,
    nonce: Mutex<Vec<u8>>,
    appended: Notify,
    ack_saved_at: Mutex<std::time::Instant>,
    /// The observation interval, signed into every report.
    interval_ms: u64,
    /// Counters for `/metrics`.
    metrics: crate::metrics::AgentMetrics,
    /// The landmarks the collector names (its latest challenge), for the landmark tasks.
    landmarks: tokio::sync::watch::Sender<Vec<pb::Landmark>>,
    /// Signed landmark records waiting for the next report.
    location: Arc<crate::landmarks::Records>,
}

impl Shared {
    /// `/metrics` for this agent.
    fn metrics_text(&self) -> String {
        let (unacked, bytes) = {
            let spool = lock(&self.spool);
            (spool.pending().len() as u64, spool.disk_bytes())
        };
        self.metrics.render(unacked, bytes)
    }

    /// Signs and spools one report, then advances the chain. A dropped range (spool overflow) is
    /// followed at once by a signed gap record.
    fn produce(
        &self,
        obs: &crate::observe::Observation,
        window_start: i64,
        gap: Option<pb::Gap>,
    ) -> Result<u64, StateError> {
        let mut chain = lock(&self.chain);
        let mut spool = lock(&self.spool);
        let mut gap = gap;
        let mut seq = 0;
        for _ in 0..2 {
            seq = chain.last_seq + 1;
            let ctx = ReportContext {
                host_id: chain.host_id.clone().unwrap_or_default(),
                seq,
                prev_report_sha256: hex_decode(&chain.last_hash),
                window_start_unix_ms: window_start,
                agent_time_unix_ms: now_ms(),
                collector_nonce: lock(&self.nonce).clone(),
                gap: gap.take(),
                interval_ms: self.interval_ms,
                location_records: self.location.drain(),
                landmark_answers: self.location.drain_answers(),
            };
            let (bytes, hash) = report::sign(self.identity.key(), &report::build(obs, &ctx));
            let dropped = spool.append(seq, bytes)?;
            chain.last_seq = seq;
            chain.last_hash = gpuattest_proto::hex(&hash);
            chain.save(&self.state_dir)?;
            match dropped {
                Some((_, last)) => {
                    // Drops always take the oldest reports, so everything unacknowledged up to `last` is
                    // gone, earlier gap records included: one record covers it all.
                    let first = chain.acked_seq + 1;
                    chain.recorded_gaps.push((first, last));
                    gap = Some(pb::Gap {
                        first_seq: first,
                        last_seq: last,
                        reason: format!("spool full: {} reports dropped before delivery", last - first + 1),
                    });
                }
                None => break,
            }
        }
        drop(spool);
        drop(chain);
        self.appended.notify_one();
        Ok(seq)
    }

    /// Records a cumulative acknowledgement. The state file is rewritten at most once a second for
    /// acknowledgements (and at shutdown): a stale `acked_seq` after a crash only means resending what
    /// the collector's challenge then tells us it already has.
    fn ack(&self, seq: u64) -> Result<(), StateError> {
        let mut chain = lock(&self.chain);
        if seq <= chain.acked_seq {
            return Ok(());
        }
        let seq = seq.min(chain.last_seq);
        lock(&self.spool).ack(seq)?;
        chain.acked_seq = seq;
        self.metrics.acked(now_ms());
        chain.recorded_gaps.retain(|(_, last)| *last > seq);
        let mut saved = lock(&self.ack_saved_at);
        if saved.elapsed() >= Duration::from_secs(1) {
            *saved = std::time::Instant::now();
            chain.save(&self.state_dir)?;
        }
        Ok(())
    }
}

/// The observer's GPUs, for landmarks' GPU-bound challenges.
struct ObserverGpus(Arc<Mutex<Observer>>);

impl crate::landmarks::GpuAttester for ObserverGpus {
    fn attesting(&self) -> Option<Vec<String>> {
        // Never wait behind an observation here (an async task asks): busy means "ask again".
        self.0.try_lock().ok().and_then(|o| o.attesting_gpus())
    }

    fn attest(&self, uuid: &str, nonce: &[u8; 32]) -> Option<pb::GpuAttestation> {
        lock(&self.0).attest_gpu(uuid, nonce).map(|a| crate::report::attestation(&a))
    }
}

pub(crate) fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2).filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

/// Made but unacknowledged reports that are neither in the spool nor already covered by a gap record:
/// holes from damaged records, and a tail cut off by broken framing.
fn unaccounted(chain: &ChainState, spool: &Spool) -> Vec<(u64, u64)> {
    let mut lost = spool.holes(chain.acked_seq);
    let tail_from = spool.last_seq().unwrap_or(chain.acked_seq).max(chain.acked_seq) + 1;
    if tail_from <= chain.last_seq {
        lost.push((tail_from, chain.last_seq));
    }
    let covered = |seq: u64| chain.recorded_gaps.iter().any(|(a, b)| (*a..=*b).contains(&seq));
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, b) in lost {
        for seq in a..=b {
            if covered(seq) {
                continue;
            }
            match out.last_mut() {
                Some((_, end)) if *end + 1 == seq => *end = seq,
                _ => out.push((seq, seq)),
            }
        }
    }
    out
}

/// Brings the chain state up to the spool after a crash between spooling and saving state.
fn reconcile(chain: &mut ChainState, spool: &Spool) {
    if let Some(p) = spool.pending().back()
        && p.seq > chain.last_seq
        && let Ok(signed) = pb::SignedReport::decode(p.bytes.as_slice())
    {
        warn!(
            state_seq = chain.last_seq,
            spool_seq = p.seq,
            "chain state was behind the spool; recovered from the spool"
        );
        chain.last_seq = p.seq;
        chain.last_hash = gpuattest_proto::hex(&gpuattest_proto::sha256(&signed.report));
    }
}

/// Runs the daemon until `shutdown` turns true.
///
/// # Errors
/// [`RunError`] when the state directory or key is unusable, or enrollment is refused for good.
pub async fn run(cfg: RunConfig, mut observer: Observer, mut shutdown: watch::Receiver<bool>) -> Result<(), RunError> {
    let identity = Identity::load_or_create(&cfg.state_dir)?;
    let mut chain = ChainState::load(&cfg.state_dir)?;
    let (spool, recovery) = Spool::open(&cfg.state_dir, chain.acked_seq, cfg.spool_max_bytes)?;
    if recovery.truncated_bytes > 0 || recovery.damaged_records > 0 {
        warn!(?recovery, "spool was repaired on start-up");
    }
    reconcile(&mut chain, &spool);
    info!(key_id = %identity.key_id_hex(), last_seq = chain.last_seq, acked_seq = chain.acked_seq, "agent starting");

    if chain.host_id.is_none() {
        let host_id = enroll(&cfg, &identity, &mut observer, &mut shutdown).await?;
        chain.host_id = Some(host_id);
        chain.enrolled_with = cfg.collectors.first().cloned();
    }
    chain.save(&cfg.state_dir)?;
    let host_id = chain.host_id.clone().unwrap_or_default();
    let holes = unaccounted(&chain, &spool);
    let shared = Arc::new(Shared {
        metrics: crate::metrics::AgentMetrics::default(),
        interval_ms: cfg.interval.as_millis() as u64,
        state_dir: cfg.state_dir.clone(),
        identity,
        spool: Mutex::new(spool),
        chain: Mutex::new(chain),
        nonce: Mutex::new(Vec::new()),
        appended: Notify::new(),
        ack_saved_at: Mutex::new(std::time::Instant::now()),
        landmarks: tokio::sync::watch::Sender::new(Vec::new()),
        location: Arc::new(crate::landmarks::Records::default()),
    });

    if let Some(addr) = cfg.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            RunError::Enroll(format!("cannot listen on {addr} for /metrics: {e}; pick another --metrics-listen"))
        })?;
        info!(%addr, "serving /metrics and /healthz");
        let s = shared.clone();
        let stop = shutdown.clone();
        let healthy_within = cfg.interval * 3 + Duration::from_secs(10);
        tokio::spawn(crate::metrics::serve(listener, stop, move |path| match path {
            "/metrics" => Some((200, s.metrics_text())),
            "/healthz" => Some(if s.metrics.observed_within(healthy_within, now_ms()) {
                (200, "ok\n".to_string())
            } else {
                (503, "no observation recently; see the agent's log\n".to_string())
            }),
            _ => None,
        }));
    }
    // The sender has its own stop signal: on shutdown it first gets a moment to drain the spool.
    let (sender_stop_tx, sender_stop) = watch::channel(false);
    let mut sender = tokio::spawn(send_loop(shared.clone(), cfg.clone(), host_id.clone(), sender_stop));
    let mut revoked: Option<String> = None;
    // Reports lost to a damaged spool are accounted for with signed gap records: loss is never silent.
    for (first, last) in holes {
        let obs = crate::observe::Observation {
            observed_at_unix_ms: now_ms(),
            host: observer.host_facts(),
            gpu_source: "gap-record".into(),
            ..Default::default()
        };
        let gap = pb::Gap {
            first_seq: first,
            last_seq: last,
            reason: "spool damage found at start-up: these reports could not be read back".into(),
        };
        warn!(first, last, "spool damage: reports lost; signing a gap record");
        shared.produce(&obs, obs.observed_at_unix_ms, Some(gap))?;
    }
    let observer = Arc::new(Mutex::new(observer));
    tokio::spawn(crate::landmarks::supervise(
        shared.landmarks.subscribe(),
        Arc::new(crate::landmarks::HostKey {
            host_id: host_id.clone(),
            key: shared.identity.shared_key(),
            gpus: Some(Arc::new(ObserverGpus(observer.clone()))),
        }),
        shared.location.clone(),
        shutdown.clone(),
    ));
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampler = tokio::time::interval(cfg.sample_interval);
    sampler.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut window_start = now_ms();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = sampler.tick() => {
                let h = observer.clone();
                // The counters only: a few NVML calls per GPU, no /proc walk.
                if let Err(e) = tokio::task::spawn_blocking(move || lock(&h).sample(now_ms())).await {
                    error!(error = %e, "sampling task failed");
                }
                continue;
            }
            _ = shutdown.changed() => break,
            r = &mut sender => {
                revoked = r.ok().flatten();
                break;
            }
        }
        let obs_handle = observer.clone();
        let now = now_ms();
        // The collector's latest nonce: GPUs in confidential-computing mode attest to it once.
        let nonce = <[u8; 32]>::try_from(lock(&shared.nonce).as_slice()).ok();
        let obs = match tokio::task::spawn_blocking(move || lock(&obs_handle).observe_with(now, nonce)).await {
            Ok(Ok(o)) => {
                shared.metrics.observed(&o, now_ms());
                o
            }
            Ok(Err(e)) => {
                shared.metrics.nvml_error("observe");
                error!(error = %e, "observation failed; retrying at the next interval");
                continue;
            }
            Err(e) => {
                error!(error = %e, "observation task failed");
                continue;
            }
        };
        let s = shared.clone();
        let end = obs.observed_at_unix_ms;
        match tokio::task::spawn_blocking(move || s.produce(&obs, window_start, None)).await {
            Ok(Ok(seq)) => debug!(seq, "report spooled"),
            Ok(Err(e)) => {
                error!(error = %e, "cannot spool a report; it is not made and the chain does not advance")
            }
            Err(e) => error!(error = %e, "spool task failed"),
        }
        window_start = end;
    }
    if let Some(why) = revoked {
        // Nothing more is observed or signed; what is spooled stays on disk as evidence.
        let chain = lock(&shared.chain).clone();
        chain.save(&cfg.state_dir)?;
        error!(last_seq = chain.last_seq, acked_seq = chain.acked_seq, "host revoked: {why}");
        return Err(RunError::Revoked(why));
    }
    let drain_until = tokio::time::Instant::now() + cfg.drain_timeout;
    while !lock(&shared.spool).pending().is_empty() && tokio::time::Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = sender_stop_tx.send(true);
    if !sender.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(2), sender).await;
    }
    let chain = lock(&shared.chain).clone();
    chain.save(&cfg.state_dir)?;
    info!(last_seq = chain.last_seq, acked_seq = chain.acked_seq, "agent stopped");
    Ok(())
}

async fn enroll(
    cfg: &RunConfig,
    identity: &Identity,
    observer: &mut Observer,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<String, RunError> {
    let token = cfg.enroll_token.clone().ok_or_else(|| {
        RunError::Enroll(format!(
            "host is not enrolled (no host id in {}); pass --enroll-token TOKEN from `gpuattest-collector token create --role enroll`",
            ChainState::path(&cfg.state_dir).display()
        ))
    })?;
    let obs = observer.observe(now_ms())?;
    let req = pb::EnrollRequest {
        enroll_token: token,
        public_key: identity.public_key(),
        facts: Some(pb::HostFacts {
            hostname: obs.host.hostname.clone(),
            machine_id: obs.host.machine_id.clone(),
            agent_version: obs.host.agent_version.clone(),
            gpus: obs.gpus.iter().map(|g| pb::GpuIdentity { uuid: g.uuid.clone(), serial: g.serial.clone() }).collect(),
        }),
    };
    let mut backoff = Backoff::new();
    loop {
        for addr in &cfg.collectors {
            match transport::enroll(addr, &cfg.tls, req.clone()).await {
                Ok(resp) => {
                    info!(host_id = %resp.host_id, collector = %addr, "enrolled");
                    return Ok(resp.host_id);
                }
                Err(e) if !e.is_retryable() => {
                    return Err(RunError::Enroll(format!("enrollment failed: {e}")));
                }
                Err(e) => warn!(error = %e, "enrollment attempt failed; will retry"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.changed() => return Err(RunError::Enroll("stopped before enrollment completed".into())),
        }
    }
}

/// Exponential backoff with full jitter, 200 ms to 30 s.
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn new() -> Self {
        Backoff { attempt: 0 }
    }
    fn reset(&mut self) {
        self.attempt = 0;
    }
    fn next_delay(&mut self) -> Duration {
        let cap = 200u64.saturating_mul(1 << self.attempt.min(8)).min(30_000);
        self.attempt += 1;
        let mut b = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        Duration::from_millis(cap / 2 + u64::from_le_bytes(b) % (cap / 2 + 1))
    }
}

/// Streams the spool to the collectors until shutdown (`None`) or until one says the host is revoked
/// (`Some(its sentence)`).
async fn send_loop(
    shared: Arc<Shared>,
    cfg: RunConfig,
    host_id: String,
    mut shutdown: watch::Receiver<bool>,
) -> Option<String> {
    let mut backoff = Backoff::new();
    let mut idx = 0usize;
    loop {
        let addr = cfg.collectors[idx % cfg.collectors.len()].clone();
        match session(&shared, &addr, &cfg.tls, &host_id, cfg.interval, cfg.window, &mut shutdown, &mut backoff).await {
            Ok(()) => return None,
            Err(e @ TransportError::Revoked { .. }) => return Some(e.to_string()),
            Err(e) => {
                warn!(collector = %addr, error = %e, "stream ended; reconnecting");
                idx += 1;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.changed() => return None,
        }
    }
}

/// One stream to one collector. Returns `Ok` only on shutdown.
#[allow(clippy::too_many_arguments)]
async fn session(
    shared: &Shared,
    addr: &str,
    tls: &crate::transport::Tls,
    host_id: &str,
    interval: Duration,
    window: usize,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Result<(), TransportError> {
    let proto_err = |reason: String| TransportError::Protocol { addr: addr.to_string(), reason };
    let mut client = transport::connect(addr, tls).await?;
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(window.max(1));
    let hello = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            host_id: host_id.to_string(),
            key_id: shared.identity.key_id().to_vec(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            interval_ms: interval.as_millis() as u64,
        })),
    };
    let _ = tx.send(hello).await;
    let mut inbound =
        client.stream(ReceiverStream::new(rx)).await.map_err(|s| transport::refused(addr, &s))?.into_inner();
    let mut next_seq = 0u64;
    let mut got_challenge = false;
    loop {
        let acked = lock(&shared.chain).acked_seq;
        let next = if got_challenge {
            let spool = lock(&shared.spool);
            let floor = next_seq.max(acked + 1);
            spool.pending().iter().find(|p| p.seq >= floor).cloned()
        } else {
            None
        };
        let room = next_seq.saturating_sub(acked + 1) < window as u64;
        tokio::select! {
            msg = inbound.message() => {
                let msg = msg.map_err(|s| transport::refused(addr, &s))?
                    .ok_or_else(|| proto_err("the collector closed the stream".into()))?;
                match msg.msg {
                    Some(pb::collector_message::Msg::Challenge(c)) => {
                        *lock(&shared.nonce) = c.nonce;
                        shared.landmarks.send_if_modified(|l| {
                            let changed = *l != c.landmarks;
                            if changed {
                                l.clone_from(&c.landmarks);
                            }
                            changed
                        });
                        if !got_challenge {
                            got_challenge = true;
                            backoff.reset();
                            info!(collector = %addr, stored_seq = c.stored_seq, "stream open");
                            shared.ack(c.stored_seq).map_err(|e| proto_err(e.to_string()))?;
                            next_seq = c.stored_seq + 1;
                        }
                    }
                    Some(pb::collector_message::Msg::Ack(a)) => {
                        shared.ack(a.seq).map_err(|e| proto_err(e.to_string()))?;
                    }
                    Some(pb::collector_message::Msg::Rejection(r)) => {
                        error!(seq = r.seq, code = r.code, reason = %r.message, "collector rejected a report; it is dropped from the spool");
                        lock(&shared.spool).discard(r.seq);
                    }
                    None => return Err(proto_err("empty message".into())),
                }
            }
            res = tx.reserve(), if next.is_some() && room => {
                let permit = res.map_err(|_| proto_err("stream closed".into()))?;
                if let Some(p) = next {
                    match pb::SignedReport::decode(p.bytes.as_slice()) {
                        Ok(signed) => permit.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Report(signed)) }),
                        Err(e) => {
                            error!(seq = p.seq, error = %e, "spooled report does not decode; dropping it");
                            lock(&shared.spool).discard(p.seq);
                        }
                    }
                    next_seq = p.seq + 1;
                }
            }
            _ = shared.appended.notified(), if next.is_none() || !room => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}
