//! gRPC ingest: enrollment and the report stream.
//!
//! For every report: verify the Ed25519 signature over the exact bytes received against the host's
//! pinned key, decode only then, check that it belongs to this host and advances its sequence, evaluate
//! policy, and commit report, decoded rows and flags in one transaction; acknowledge only after the
//! commit. A bad report gets an in-band `Rejection` with a gRPC code; the stream and the collector go
//! on, and nothing stored changes. Conversion to `tonic::Status` happens here and nowhere else.

mod keys;
mod service;

use std::sync::{Arc, RwLock};
use std::time::Instant;

use gpuattest_proto::pb::{self, collector_server::Collector};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{info, instrument, warn};

use crate::metrics::{Metrics, Reject};
use crate::policy::{HostContext, Policy};
use crate::store::{Commit, HostRow, Store, StoreError};
use crate::verify::Problem;

/// The ingest service.
#[derive(Clone)]
pub struct Ingest {
    store: Arc<Store>,
    policy: Arc<RwLock<Policy>>,
    metrics: Arc<Metrics>,
    committer: crate::store::GroupCommitter,
    /// Verification, decoding and report rules run on at most this many blocking threads at once
    /// (one per core): under thousands of streams the CPU work queues here instead of spreading over
    /// hundreds of threads, and waiting for a commit holds no thread at all.
    cpu: Arc<tokio::sync::Semaphore>,
    /// Hosts revoked while their streams are open: (host id, reason), from [`Ingest::watch_revocations`].
    revocations: tokio::sync::broadcast::Sender<(String, String)>,
    /// The collector's shutdown: every stream is closed with "reconnect elsewhere" when it turns true.
    shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    /// Hosts' current signing keys, so a report's verification reads nothing from the store.
    keys: Arc<keys::CurrentKeys>,
}

/// How often the collector looks for hosts revoked since its last look (a revocation may come from
/// the CLI or another replica, so it is read from the store).
pub const REVOCATION_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// The status that closes or refuses a revoked host's stream, marked so the agent stops for good.
fn revoked_status(host_id: &str, reason: &str) -> Status {
    let mut s = Status::permission_denied(format!(
        "host {host_id} is revoked ({}); its stored evidence is kept; enroll a new identity to report again",
        if reason.is_empty() { "no reason given" } else { reason }
    ));
    let value: String = reason.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(256).collect();
    let value = if value.trim().is_empty() { "revoked".to_string() } else { value };
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(value.as_str()) {
        s.metadata_mut().insert(gpuattest_proto::REVOKED_METADATA, v);
    }
    s
}

/// SHA-256 of the public key of the client certificate on this request's connection (mTLS), if any.
fn client_key<T>(req: &Request<T>) -> Option<[u8; 32]> {
    req.peer_certs()
        .and_then(|certs| certs.first().and_then(|c| gpuattest_evidence::x509::public_key_sha256(c.as_ref())))
}

/// Resolves when `shutdown` turns true (never without one), holding no guard across the wait.
async fn stopping(shutdown: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match shutdown {
        Some(rx) => {
            if rx.wait_for(|v| *v).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// The largest signed report verified on the runtime's own thread (an 8-GPU report with a dozen
/// processes is about 2 KB); larger ones go to a blocking thread, so no stream holds a runtime thread
/// for long.
pub const INLINE_REPORT_BYTES: usize = 16 * 1024;

/// Verifies `signed` with `key` as a report of `host_id` and decodes it, or says why it is refused.
fn verified(
    key: Option<&crate::verify::SigningKey>,
    signed: &pb::SignedReport,
    host_id: &str,
) -> Result<pb::UsageReport, Refusal> {
    crate::verify::report(key, signed, host_id, None).map_err(|p| {
        let (seq, code, kind) = match &p {
            Problem::UnknownKey => (0, Code::Unauthenticated, Reject::UnknownKey),
            Problem::KeyRetired { seq, .. } => (*seq, Code::Unauthenticated, Reject::UnknownKey),
            Problem::BadSignature(_) => (0, Code::InvalidArgument, Reject::BadSignature),
            Problem::Malformed(_) | Problem::SeqZero | Problem::WrongSeq { .. } => {
                (0, Code::InvalidArgument, Reject::Malformed)
            }
            Problem::WrongHost { .. } => (0, Code::PermissionDenied, Reject::WrongHost),
        };
        Refusal { seq, code, message: p.to_string(), kind }
    })
}

/// The report carries what [`Ingest::finish`] checks against the store or certificate chains: GPU
/// attestation evidence (or confidential-computing mode, whose missing evidence is looked up) or
/// landmark records.
fn needs_store(report: &pb::UsageReport) -> bool {
    carries_evidence(report) || !report.location_records.is_empty()
}

/// The report carries GPU attestation evidence, or says its host is in confidential-computing mode
/// (where evidence missing is itself a finding).
fn carries_evidence(report: &pb::UsageReport) -> bool {
    !report.attestations.is_empty() || report.confidential_compute.as_ref().is_some_and(|c| c.enabled == Some(true))
}

/// A verified report ready for its group commit, with what its answer needs.
pub struct Prepared {
    item: crate::store::PendingCommit,
    seq: u64,
    started: Instant,
    /// Verified landmark measurements the report carried, kept once it is stored.
    measurements: Vec<crate::store::Measurement>,
}

/// Sustained reports per second one host may send (a spool drains at this rate after an outage).
pub const REPORTS_PER_SECOND: f64 = 500.0;
/// Reports a host may send in a burst above the sustained rate.
pub const REPORT_BURST: f64 = 2000.0;

/// A token bucket.
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl RateLimit {
    fn new(rate: f64, burst: f64) -> Self {
        RateLimit { rate, burst, tokens: burst, at: tokio::time::Instant::now() }
    }

    async fn take(&mut self) {
        let now = tokio::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens < 1.0 {
            let wait = (1.0 - self.tokens) / self.rate;
            tokio::time::sleep(std::time::Duration::from_secs_f64(wait)).await;
            self.tokens = 1.0;
            self.at = tokio::time::Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// A refused report, as sent back in-band.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The report's sequence number, where it could be trusted (0 otherwise).
    pub seq: u64,
    /// gRPC code.
    pub code: Code,
    /// A sentence for the operator.
    pub message: String,
    /// The metrics label.
    pub kind: Reject,
}

fn now_ms() -> i64 {
    crate::now_ms()
}

fn internal(e: &StoreError) -> Status {
    Status::internal(format!("collector store failure: {e}"))
}

impl Ingest {
    /// A service over a store, a policy and metrics.
    ///
    /// # Errors
    /// When the group-commit thread cannot be started.
    pub fn new(store: Arc<Store>, policy: Arc<RwLock<Policy>>, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let committer = crate::store::GroupCommitter::start(store.clone())?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let (revocations, _) = tokio::sync::broadcast::channel(1024);
        Ok(Ingest {
            store,
            policy,
            metrics,
            committer,
            cpu: Arc::new(tokio::sync::Semaphore::new(cores)),
            revocations,
            shutdown: None,
            keys: Arc::default(),
        })
    }

    /// Closes every stream (telling agents to reconnect elsewhere) when `shutdown` turns true; the
    /// report in hand is committed and answered first.
    #[must_use]
    pub fn with_shutdown(mut self, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// Looks for revoked hosts every [`REVOCATION_POLL`] until shutdown, and closes their open streams.
    pub async fn watch_revocations(self) {
        let mut shutdown = self.shutdown.clone();
        let mut since = crate::now_ms();
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep(REVOCATION_POLL) => {}
                () = stopping(&mut shutdown) => return,
            }
            let store = self.store.clone();
            // A revoking clock a little behind ours is still seen; `seen` keeps each one announced once.
            let from = since - 60_000;
            since = crate::now_ms();
            match tokio::task::spawn_blocking(move || store.revoked_since(from)).await {
                Ok(Ok(hosts)) => {
                    if seen.len() > 100_000 {
                        seen.clear();
                    }
                    for (host, reason) in hosts {
                        if seen.insert(host.clone()) {
                            let _ = self.revocations.send((host, reason));
                        }
                    }
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot read revocations; streams of revoked hosts close at their next report")
                }
                Err(e) => warn!(error = %e, "revocation check failed"),
            }
        }
    }

    /// The CPU part of ingest: verifies the signature, decodes, checks identity and sequence, and runs
    /// the rules that need only the report. Blocking (it may read the store); streams call it through
    /// [`Ingest::ingest`].
    ///
    /// # Errors
    /// A [`Refusal`] for a report that will not be stored; `Err(Status)` only for store failures.
    pub fn prepare(
        &self,
        host: &HostRow,
        signed: pb::SignedReport,
        nonce: &[u8],
    ) -> Result<Result<Prepared, Refusal>, Status> {
        let started = Instant::now();
        // The key is looked up by the report's key id, never taken from the stream's copy of the host: a
        // report may be signed by a key retired since (it waited in the spool) and must then fall within
        // that key's validity. The host's current key is kept in memory; a key retired mid-stream stops
        // working at once all the same, since the commit checks the key's standing again.
        let key = self.keys.signing_key(&self.store, &host.host_id, &signed.key_id).map_err(|e| internal(&e))?;
        match verified(key.as_ref(), &signed, &host.host_id) {
            Ok(report) => self.finish(host, signed, report, nonce, started),
            Err(r) => Ok(Err(r)),
        }
    }

    /// The rest of [`Ingest::prepare`] for a verified `report`: policy, and the GPU evidence and
    /// landmark records it carries (which read the store; see [`needs_store`]).
    fn finish(
        &self,
        host: &HostRow,
        signed: pb::SignedReport,
        report: pb::UsageReport,
        nonce: &[u8],
        started: Instant,
    ) -> Result<Result<Prepared, Refusal>, Status> {
        let policy = self.policy.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let received_at = now_ms();
        let nonce_fresh = !nonce.is_empty() && report.collector_nonce == nonce;
        let process_tenants = report.processes.iter().map(|p| policy.tenant_of(p, host.tenant.as_deref())).collect();
        let seq = report.seq;
        let policy_reopens = policy.reopen_decided_flags();
        let (host_id, hostname, tenant) = (host.host_id.clone(), host.hostname.clone(), host.tenant.clone());
        // Rules that need only the report run here, on this verifying thread; the commit thread runs
        // only the ones that need the chain position and job totals.
        let ctx = HostContext { host_id: &host_id, hostname: &hostname, tenant: tenant.as_deref() };
        let mut pre = policy.report_flags(&ctx, &report, crate::policy::Receipt { received_at, nonce_fresh });
        let evidence = self.evidence(host, &report, &policy, received_at)?;
        pre.extend(policy.evidence_flags(&ctx, &report, &evidence));
        let measurements = if report.location_records.is_empty() {
            Vec::new()
        } else {
            let (keep, flags) = self.location(host, &signed.key_id, &report, &policy, &ctx, received_at)?;
            pre.extend(flags);
            keep
        };
        let flags_for: crate::store::FlagsFor = Box::new(move |report, pos, commit| {
            let ctx = HostContext { host_id: &host_id, hostname: &hostname, tenant: tenant.as_deref() };
            policy.commit_flags(&ctx, report, pos, commit, pre.clone())
        });
        let item = crate::store::PendingCommit {
            host_id: host.host_id.clone(),
            signed,
            decoded: report,
            received_at,
            nonce_fresh,
            process_tenants,
            reopen_decided: policy_reopens,
            evidence,
            flags_for,
        };
        Ok(Ok(Prepared { item, seq, started, measurements }))
    }

    /// Each GPU's attestation evidence in `report`, checked against where its nonce stands (one store
    /// read, only for reports with evidence or from hosts in confidential-computing mode).
    fn evidence(
        &self,
        host: &HostRow,
        report: &pb::UsageReport,
        policy: &crate::policy::Policy,
        now: i64,
    ) -> Result<Vec<crate::evidence::GpuEvidence>, Status> {
        if !carries_evidence(report) {
            return Ok(Vec::new());
        }
        let standing = if report.collector_nonce.is_empty() {
            crate::evidence::NonceStanding::Unknown
        } else {
            self.store.nonce_standing(&host.host_id, &report.collector_nonce).map_err(|e| internal(&e))?
        };
        Ok(policy.evidence().check(report, standing, now))
    }

    /// The landmark records in `report`, checked, and the flags the host's new location verdict and
    /// any refused record raise.
    fn location(
        &self,
        host: &HostRow,
        key_id: &[u8],
        report: &pb::UsageReport,
        policy: &crate::policy::Policy,
        ctx: &HostContext<'_>,
        now: i64,
    ) -> Result<(Vec<crate::store::Measurement>, Vec<crate::store::NewFlag>), Status> {
        let landmarks = self.store.landmarks().map_err(|e| internal(&e))?;
        let keys = [host.key_id.clone(), key_id.to_vec()];
        let (keep, refused) =
            crate::location::check_records(report, &host.host_id, &keys, &landmarks, policy.evidence(), now);
        for r in &refused {
            warn!(host_id = %host.host_id, reason = %r, "location record refused");
        }
        let mut all = self.store.measurements(&host.host_id).map_err(|e| internal(&e))?;
        for m in &keep {
            let same = |o: &crate::store::Measurement| o.landmark == m.landmark && o.kind == m.kind;
            all.retain(|o| !same(o) || o.measured_at > m.measured_at);
            if !all.iter().any(same) {
                all.push(m.clone());
            }
        }
        let site = self.store.site(&host.host_id).map_err(|e| internal(&e))?;
        let gpus_attest = self.store.has_attesting_gpus(&host.host_id).map_err(|e| internal(&e))?;
        let v = crate::location::verdict(policy.location(), site.as_ref(), &landmarks, &all, gpus_attest, now);
        Ok((keep, policy.location_flags(ctx, report, &v, &refused)))
    }

    /// The answer to a committed report: its sequence number, or why it was not stored.
    fn answer(&self, host_id: &str, seq: u64, started: Instant, outcome: Commit) -> Result<u64, Refusal> {
        let refuse = |seq: u64, code: Code, kind: Reject, message: String| Err(Refusal { seq, code, message, kind });
        match outcome {
            Commit::Stored { flags } => {
                self.metrics.accepted(started.elapsed().as_micros() as u64, flags);
                Ok(seq)
            }
            Commit::Duplicate => refuse(
                seq,
                Code::AlreadyExists,
                Reject::Replay,
                format!("report {seq} of host {host_id} is already stored; replay refused"),
            ),
            Commit::Behind { last_seq } => refuse(
                seq,
                Code::FailedPrecondition,
                Reject::OutOfOrder,
                format!("report {seq} is behind host {host_id}'s position {last_seq}"),
            ),
            Commit::HostGone => {
                refuse(seq, Code::PermissionDenied, Reject::HostGone, format!("host {host_id} is revoked or unknown"))
            }
            Commit::KeyRetired { through } => refuse(
                seq,
                Code::Unauthenticated,
                Reject::UnknownKey,
                match through {
                    Some(t) => format!("report {seq} is signed by a key host {host_id} retired after report {t}"),
                    None => format!("report {seq} is signed by a key host {host_id} does not hold"),
                },
            ),
        }
    }

    /// Ingest on a stream: the CPU part, then the commit awaited without holding a thread.
    ///
    /// A report of at most [`INLINE_REPORT_BYTES`] signed by its host's current key (kept in memory) and
    /// carrying no GPU evidence or landmark records is verified and checked right here, on the runtime's
    /// thread: that is pure CPU, about 100 us for an 8-GPU report, and handing it to a blocking thread
    /// and back cost the collector 12-18% more CPU per report in `bench` (two thread switches and their
    /// cache misses). Everything else (large reports, other keys, evidence, landmarks: store reads
    /// and certificate chains) runs on a blocking thread, at most one per core at once.
    async fn ingest(
        &self,
        host: &HostRow,
        signed: pb::SignedReport,
        nonce: &[u8],
    ) -> Result<Result<u64, Refusal>, Status> {
        let started = Instant::now();
        let kept = (signed.report.len() <= INLINE_REPORT_BYTES)
            .then(|| self.keys.kept(&host.host_id, &signed.key_id))
            .flatten();
        let prepared = match kept.map(|key| verified(Some(&key), &signed, &host.host_id)) {
            Some(Err(refusal)) => Err(refusal),
            Some(Ok(report)) if !needs_store(&report) => self.finish(host, signed, report, nonce, started)?,
            Some(Ok(report)) => {
                self.on_blocking_thread(host, nonce, move |svc, h, n| svc.finish(h, signed, report, n, started)).await?
            }
            None => self.on_blocking_thread(host, nonce, move |svc, h, n| svc.prepare(h, signed, n)).await?,
        };
        match prepared {
            Err(r) => Ok(Err(r)),
            Ok(p) => {
                let outcome = self.committer.commit_async(p.item).await.map_err(|e| internal(&e))?;
                if matches!(outcome, Commit::Stored { .. }) && !p.measurements.is_empty() {
                    let (store, id, ms) = (self.store.clone(), host.host_id.clone(), p.measurements);
                    // Signed by the landmarks, so keeping them is safe on its own; a failure here costs
                    // one measurement (the next round brings another), never the report.
                    match tokio::task::spawn_blocking(move || store.put_measurements(&id, &ms)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => warn!(host_id = %host.host_id, error = %e, "location measurements not kept"),
                        Err(e) => warn!(host_id = %host.host_id, error = %e, "location measurements not kept"),
                    }
                }
                Ok(self.answer(&host.host_id, p.seq, p.started, outcome))
            }
        }
    }

    /// Runs `work` (part of [`Ingest::prepare`]) on a blocking thread, at most one per core at once.
    async fn on_blocking_thread<F>(
        &self,
        host: &HostRow,
        nonce: &[u8],
        work: F,
    ) -> Result<Result<Prepared, Refusal>, Status>
    where
        F: FnOnce(&Ingest, &HostRow, &[u8]) -> Result<Result<Prepared, Refusal>, Status> + Send + 'static,
    {
        let _permit = self.cpu.acquire().await.map_err(|e| Status::internal(e.to_string()))?;
        let (svc, h, n) = (self.clone(), host.clone(), nonce.to_vec());
        tokio::task::spawn_blocking(move || work(&svc, &h, &n)).await.map_err(|e| Status::internal(e.to_string()))?
    }

    /// The registered landmarks, as agents dial them (none when the store cannot say: location is
    /// then not measured until the next nonce, and nothing else is affected).
    fn landmarks_for_agents(&self) -> Vec<pb::Landmark> {
        match self.store.landmarks() {
            Ok(ls) => ls
                .into_iter()
                .map(|l| pb::Landmark { name: l.name, address: l.address, public_key: l.public_key })
                .collect(),
            Err(e) => {
                warn!(error = %e, "cannot read landmarks");
                Vec::new()
            }
        }
    }

    fn new_nonce() -> Vec<u8> {
        let mut n = vec![0u8; 32];
        let _ = SystemRandom::new().fill(&mut n);
        n
    }
}
