//! gRPC ingest: enrollment and the report stream.
//!
//! For every report: verify the Ed25519 signature over the exact bytes received against the host's
//! pinned key, decode only then, check that it belongs to this host and advances its sequence, evaluate
//! policy, and commit report, decoded rows and flags in one transaction; acknowledge only after the
//! commit. A bad report gets an in-band `Rejection` with a gRPC code; the stream and the collector go
//! on, and nothing stored changes. Conversion to `tonic::Status` happens here and nowhere else.

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
    /// the rules that need only the report. Blocking; streams call it through [`Ingest::ingest`].
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
        let refuse =
            |seq: u64, code: Code, kind: Reject, message: String| Ok(Err(Refusal { seq, code, message, kind }));
        // The key is looked up by the report's key id in the store now, never taken from the stream's
        // copy of the host: a report may be signed by a key retired since (it waited in the spool) and
        // must then fall within that key's validity; a key retired mid-stream stops working at once.
        let key = self.store.signing_key(&host.host_id, &signed.key_id).map_err(|e| internal(&e))?;
        let report = match crate::verify::report(key.as_ref(), &signed, &host.host_id, None) {
            Ok(r) => r,
            Err(p) => {
                let (seq, code, kind) = match &p {
                    Problem::UnknownKey => (0, Code::Unauthenticated, Reject::UnknownKey),
                    Problem::KeyRetired { seq, .. } => (*seq, Code::Unauthenticated, Reject::UnknownKey),
                    Problem::BadSignature(_) => (0, Code::InvalidArgument, Reject::BadSignature),
                    Problem::Malformed(_) | Problem::SeqZero | Problem::WrongSeq { .. } => {
                        (0, Code::InvalidArgument, Reject::Malformed)
                    }
                    Problem::WrongHost { .. } => (0, Code::PermissionDenied, Reject::WrongHost),
                };
                return refuse(seq, code, kind, p.to_string());
            }
        };
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
        let cc_on = report.confidential_compute.as_ref().is_some_and(|c| c.enabled == Some(true));
        if report.attestations.is_empty() && !cc_on {
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

    /// Ingest on a stream: the CPU part on a blocking thread (at most one per core at once), then the
    /// commit awaited without holding a thread.
    async fn ingest(
        &self,
        host: &HostRow,
        signed: pb::SignedReport,
        nonce: &[u8],
    ) -> Result<Result<u64, Refusal>, Status> {
        let prepared = {
            let _permit = self.cpu.acquire().await.map_err(|e| Status::internal(e.to_string()))?;
            let (svc, h, n) = (self.clone(), host.clone(), nonce.to_vec());
            tokio::task::spawn_blocking(move || svc.prepare(&h, signed, &n))
                .await
                .map_err(|e| Status::internal(e.to_string()))??
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

#[tonic::async_trait]
impl Collector for Ingest {
    #[instrument(skip_all)]
    async fn enroll(&self, req: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        let client_key = client_key(&req);
        let req = req.into_inner();
        if req.public_key.len() != 32 {
            self.metrics.enrollment(false);
            return Err(Status::invalid_argument("public_key must be a raw 32-byte Ed25519 key"));
        }
        if req.enroll_token.is_empty() || req.enroll_token.len() > 256 {
            self.metrics.enrollment(false);
            return Err(Status::unauthenticated("an enroll token is required"));
        }
        let facts = req.facts.unwrap_or_default();
        let hostname: String = facts.hostname.chars().filter(|c| !c.is_control()).take(253).collect();
        let facts_json = serde_json::json!({
            "hostname": hostname,
            "machine_id": facts.machine_id,
            "agent_version": facts.agent_version,
            "gpus": facts.gpus.iter().take(1024).map(|g| serde_json::json!({"uuid": g.uuid, "serial": g.serial})).collect::<Vec<_>>(),
        })
        .to_string();
        let key_id = gpuattest_proto::key_id(&req.public_key);
        let store = self.store.clone();
        let token_hash = crate::tokens::hash(&req.enroll_token);
        let machine_id = facts.machine_id.clone();
        let pk = req.public_key.clone();
        let name = hostname.clone();
        let result = tokio::task::spawn_blocking(move || {
            store.enroll_bound(
                &token_hash,
                &pk,
                &key_id,
                &name,
                &machine_id,
                &facts_json,
                client_key.as_ref().map(|k| k.as_slice()),
                now_ms(),
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        match result {
            Ok(host) => {
                self.metrics.enrollment(true);
                info!(host_id = %host.host_id, hostname = %hostname, "host enrolled");
                Ok(Response::new(pb::EnrollResponse { host_id: host.host_id, key_id: key_id.to_vec() }))
            }
            Err(StoreError::Refused(why)) => {
                self.metrics.enrollment(false);
                warn!(hostname = %hostname, reason = %why, "enrollment refused");
                Err(Status::permission_denied(why))
            }
            Err(e) => Err(internal(&e)),
        }
    }

    #[instrument(skip_all)]
    async fn rotate_key(&self, req: Request<pb::RotateKeyRequest>) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let req = req.into_inner();
        if req.new_public_key.len() != 32 {
            return Err(Status::invalid_argument("new_public_key must be a raw 32-byte Ed25519 key"));
        }
        let store = self.store.clone();
        let id = req.host_id.clone();
        let host = tokio::task::spawn_blocking(move || store.host(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| internal(&e))?
            .ok_or_else(|| Status::unauthenticated(format!("host {:?} is not enrolled", req.host_id)))?;
        let new_key_id = gpuattest_proto::key_id(&req.new_public_key);
        let vouched_by_current = gpuattest_proto::verify_rotation(
            &host.public_key,
            &req.host_id,
            &req.new_public_key,
            req.last_seq_old_key,
            &req.signature,
        )
        .is_ok();
        // A retried rotation that already took effect: the vouching key is now the retired one.
        let already_done = host.key_id == new_key_id;
        if !vouched_by_current && !already_done {
            warn!(host_id = %host.host_id, "key rotation with a bad signature refused");
            return Err(Status::unauthenticated("the rotation is not signed by the host's current key"));
        }
        let (store, id, pk, seq) =
            (self.store.clone(), host.host_id.clone(), req.new_public_key.clone(), req.last_seq_old_key);
        let result = tokio::task::spawn_blocking(move || store.rotate_key(&id, &pk, seq, crate::now_ms()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        match result {
            Ok(key_id) => {
                info!(host_id = %host.host_id, "host key rotated");
                Ok(Response::new(pb::RotateKeyResponse { new_key_id: key_id }))
            }
            Err(StoreError::Refused(why)) => Err(Status::permission_denied(why)),
            Err(e) => Err(internal(&e)),
        }
    }

    type StreamStream = ReceiverStream<Result<pb::CollectorMessage, Status>>;

    #[instrument(skip_all)]
    async fn stream(&self, req: Request<Streaming<pb::AgentMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        let presented = client_key(&req);
        let peer = req.remote_addr();
        let mut inbound = req.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Hello(h)) }) => h,
            _ => {
                return Err(Status::invalid_argument("the first message on a stream must be Hello"));
            }
        };
        let store = self.store.clone();
        let id = hello.host_id.clone();
        let host = tokio::task::spawn_blocking(move || store.host(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| internal(&e))?
            .ok_or_else(|| {
                warn!(host_id = %hello.host_id, "stream from an unknown host refused");
                Status::unauthenticated(format!(
                    "host {:?} is not enrolled; enroll it with a token from `token create --role enroll`",
                    hello.host_id
                ))
            })?;
        if host.revoked_at.is_some() {
            return Err(revoked_status(&host.host_id, host.revoked_reason.as_deref().unwrap_or_default()));
        }
        // A host enrolled over mTLS is bound to its certificate's key: another node's certificate (or
        // none) cannot speak for it, even with its Ed25519 key.
        if let Some(bound) = &host.client_key
            && presented.as_ref().map(|k| k.as_slice()) != Some(bound.as_slice())
        {
            warn!(host_id = %host.host_id, peer = ?peer, presented = presented.is_some(), "stream refused: client certificate is not the one the host enrolled with");
            return Err(Status::permission_denied(format!(
                "host {} is bound to the client certificate key it enrolled with; this connection presents {}; each node needs its own certificate",
                host.host_id,
                if presented.is_some() { "another one" } else { "none" }
            )));
        }
        if hello.key_id != host.key_id {
            warn!(host_id = %host.host_id, "stream with a key other than the enrolled one refused");
            return Err(Status::unauthenticated(format!("key is not the one enrolled for host {}", host.host_id)));
        }
        // Nothing the opening message says changes stored state: it is not signed, and anyone who
        // knows a host id and key id can send it. `hello.interval_ms` is ignored; the interval arrives
        // signed in each report.
        let (tx, rx) = mpsc::channel::<Result<pb::CollectorMessage, Status>>(64);
        let nonce = Self::new_nonce();
        // Recorded before the agent sees it: GPU evidence counts only over a nonce issued to this host.
        self.store.issue_nonce(&host.host_id, &nonce, now_ms()).map_err(|e| internal(&e))?;
        let landmarks = self.landmarks_for_agents();
        let challenge = pb::CollectorMessage {
            msg: Some(pb::collector_message::Msg::Challenge(pb::Challenge {
                nonce: nonce.clone(),
                stored_seq: host.last_seq,
                collector_time_unix_ms: now_ms(),
                landmarks: landmarks.clone(),
            })),
        };
        let _ = tx.send(Ok(challenge)).await;
        info!(host_id = %host.host_id, stored_seq = host.last_seq, "stream open");
        self.metrics.stream(true);
        let this = self.clone();
        let mut revoked = self.revocations.subscribe();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let host = Arc::new(host);
            let mut nonce = Arc::new(nonce);
            let mut rotate = tokio::time::interval_at(
                tokio::time::Instant::now() + crate::evidence::NONCE_ROTATION,
                crate::evidence::NONCE_ROTATION,
            );
            let mut bucket = RateLimit::new(REPORTS_PER_SECOND, REPORT_BURST);
            loop {
                // Per-host rate limit: a host over its rate is simply read more slowly, so HTTP/2 flow
                // control pushes back on the agent; nothing is refused or lost.
                bucket.take().await;
                let next = tokio::select! {
                    m = inbound.message() => m,
                    r = revoked.recv() => {
                        let reason = match r {
                            Ok((id, reason)) if id == host.host_id => Some(reason),
                            Ok(_) => None,
                            // Missed some: ask the store about this host.
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                let (store, id) = (this.store.clone(), host.host_id.clone());
                                match tokio::task::spawn_blocking(move || store.host(&id)).await {
                                    Ok(Ok(Some(h))) if h.revoked_at.is_some() => Some(h.revoked_reason.unwrap_or_default()),
                                    _ => None,
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
                        };
                        if let Some(reason) = reason {
                            info!(host_id = %host.host_id, "host revoked; closing its stream");
                            let _ = tx.send(Err(revoked_status(&host.host_id, &reason))).await;
                            break;
                        }
                        continue;
                    }
                    _ = rotate.tick() => {
                        // A fresh nonce: GPUs in confidential-computing mode attest again to it.
                        let fresh = Self::new_nonce();
                        if let Err(e) = this.store.issue_nonce(&host.host_id, &fresh, now_ms()) {
                            warn!(host_id = %host.host_id, error = %e, "cannot record a new nonce; keeping the current one");
                            continue;
                        }
                        nonce = Arc::new(fresh.clone());
                        let c = pb::Challenge {
                            nonce: fresh,
                            stored_seq: 0,
                            collector_time_unix_ms: now_ms(),
                            landmarks: this.landmarks_for_agents(),
                        };
                        if tx.send(Ok(pb::CollectorMessage { msg: Some(pb::collector_message::Msg::Challenge(c)) })).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    () = stopping(&mut shutdown) => {
                        let _ = tx.send(Err(Status::unavailable("the collector is shutting down; reconnect (to another replica where there is one) and resend what is unacknowledged"))).await;
                        break;
                    }
                };
                let msg = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    // tonic reports a protobuf decode failure as INTERNAL; anything else is the
                    // connection breaking (an agent killed or restarted), which is not bad input.
                    Err(status) if status.code() == Code::Internal => {
                        this.metrics.rejected(Reject::Malformed);
                        warn!(host_id = %host.host_id, error = %status.message(), "undecodable message; closing this stream");
                        let _ = tx
                            .send(Err(Status::invalid_argument(format!("undecodable message: {}", status.message()))))
                            .await;
                        break;
                    }
                    Err(status) => {
                        info!(host_id = %host.host_id, reason = %status.message(), "stream broke");
                        break;
                    }
                };
                let signed = match msg.msg {
                    Some(pb::agent_message::Msg::Report(s)) => s,
                    _ => {
                        this.metrics.rejected(Reject::Malformed);
                        let rej = pb::Rejection {
                            seq: 0,
                            code: Code::InvalidArgument as i32,
                            message: "expected a report".into(),
                        };
                        let _ = tx
                            .send(Ok(pb::CollectorMessage { msg: Some(pb::collector_message::Msg::Rejection(rej)) }))
                            .await;
                        continue;
                    }
                };
                let reply = match this.ingest(&host, signed, &nonce).await {
                    Ok(Ok(seq)) => pb::collector_message::Msg::Ack(pb::Ack { seq }),
                    Ok(Err(r)) if r.kind == Reject::HostGone => {
                        this.metrics.rejected(r.kind);
                        let reason = this.store.host(&host.host_id).ok().flatten().and_then(|h| h.revoked_reason);
                        info!(host_id = %host.host_id, "report from a revoked host; closing its stream");
                        let _ =
                            tx.send(Err(revoked_status(&host.host_id, reason.as_deref().unwrap_or_default()))).await;
                        break;
                    }
                    Ok(Err(r)) => {
                        this.metrics.rejected(r.kind);
                        warn!(host_id = %host.host_id, seq = r.seq, code = ?r.code, reason = %r.message, "report rejected");
                        pb::collector_message::Msg::Rejection(pb::Rejection {
                            seq: r.seq,
                            code: r.code as i32,
                            message: r.message,
                        })
                    }
                    Err(status) => {
                        warn!(host_id = %host.host_id, error = %status, "store failure; closing the stream so the agent resends");
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                if tx.send(Ok(pb::CollectorMessage { msg: Some(reply) })).await.is_err() {
                    break;
                }
            }
            this.metrics.stream(false);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
