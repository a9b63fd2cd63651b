//! The HTTP side: the review UI, the JSON API with bearer tokens by role, `/healthz` and `/metrics`.
//!
//! Who may do what is one table ([`allowed`]); every handler asks it. Every route is one row of
//! [`ROUTES`]: the router is built from it and the authorization matrix test walks it, so a route
//! without an entry cannot exist. A customer token is bound to one tenant and sees nothing else. The UI is static files with no build step; it renders every value as
//! text, and sends the token only in the `Authorization` header, so there is no cookie to forge.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

mod log_head;
mod routes;

pub use log_head::{HEAD_EVERY, LogHead, head_signer};
pub use routes::{Action, ROUTES, RouteSpec, allowed};

use crate::metrics::Metrics;
use crate::store::Store;
use crate::tokens::{self, Access, Principal, Role};

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The store.
    pub store: Arc<Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The key that signs exports and tree heads.
    pub export_key: Arc<crate::export::ExportKey>,
    /// The policy in force (its digest goes into exports).
    pub policy: Arc<std::sync::RwLock<crate::policy::Policy>>,
    /// The transparency log's right edge, extended by the leaves appended since the last head.
    pub log: Arc<std::sync::Mutex<LogHead>>,
    /// The budget of the unauthenticated routes.
    pub public_budget: Arc<std::sync::Mutex<Budget>>,
    /// Exports running now (each holds the whole log's tree while it builds).
    pub exports: Arc<tokio::sync::Semaphore>,
    /// Each token's export budget.
    pub export_budgets: Arc<std::sync::Mutex<std::collections::HashMap<String, Budget>>>,
    /// The fleet's gauges as last read from the store, and when.
    pub fleet: Arc<tokio::sync::Mutex<Option<(std::time::Instant, String)>>>,
}

/// How long the fleet's gauges on `/metrics` are reused: scrapes (public) cost at most one store
/// read per this period.
pub const FLEET_GAUGES_TTL: std::time::Duration = std::time::Duration::from_secs(10);

impl HttpState {
    /// The state over a store, metrics, export key and policy.
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        export_key: Arc<crate::export::ExportKey>,
        policy: Arc<std::sync::RwLock<crate::policy::Policy>>,
    ) -> Self {
        HttpState {
            store,
            metrics,
            export_key,
            policy,
            log: Arc::default(),
            public_budget: Arc::new(std::sync::Mutex::new(Budget::new(PUBLIC_PER_SECOND, PUBLIC_BURST))),
            exports: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_EXPORTS)),
            export_budgets: Arc::default(),
            fleet: Arc::default(),
        }
    }
}

/// Requests per second the unauthenticated routes answer together (beyond: 429).
pub const PUBLIC_PER_SECOND: f64 = 20.0;
/// Requests above that rate answered in a burst.
pub const PUBLIC_BURST: f64 = 40.0;
/// Exports built at once; a further request waits (the client's own timeout bounds the wait).
pub const MAX_CONCURRENT_EXPORTS: usize = 2;
/// Exports one token may start in a burst; then one a minute (beyond: 429).
pub const EXPORT_BURST_PER_TOKEN: f64 = 10.0;

/// A token bucket.
#[derive(Debug)]
pub struct Budget {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl Budget {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        Budget { rate, burst, tokens: burst, at: std::time::Instant::now() }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An API error: a status and one sentence, sent as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn error(code: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(code, msg.into())
}

/// Checks the bearer token (a store read, on a blocking thread) and the role's permission.
async fn authorize(state: &HttpState, headers: &HeaderMap, action: Action) -> Result<Principal, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "missing Authorization: Bearer TOKEN"))?
        .to_string();
    let store = state.store.clone();
    let p = tokio::task::spawn_blocking(move || tokens::authenticate(&store, &token, crate::now_ms()))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| error(StatusCode::UNAUTHORIZED, e))?;
    if !allowed(p.role(), action) {
        return Err(error(StatusCode::FORBIDDEN, format!("role {} may not do this", p.role())));
    }
    Ok(p)
}

fn store_err(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store failure in the HTTP API");
    error(StatusCode::INTERNAL_SERVER_ERROR, "store failure; see the collector log")
}

/// Customer tokens see their tenant only; others see all.
fn tenant_scope(p: &Principal) -> Option<&str> {
    p.access.tenant_scope()
}

async fn list_flags(State(s): State<HttpState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let p = authorize(&s, &headers, Action::ListFlags).await?;
    let (store, scope) = (s.store.clone(), tenant_scope(&p).map(str::to_string));
    Ok(Json(blocking(move || store.flags(scope.as_deref())).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    decision: String,
    reason: String,
}

async fn decide(
    State(s): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Option<Json<Decision>>,
) -> Result<Response, ApiError> {
    let p = authorize(&s, &headers, Action::Decide).await?;
    let Some(Json(d)) = body else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "body must be JSON {\"decision\": \"confirm|dismiss|escalate\", \"reason\": \"...\"}",
        ));
    };
    let status = match d.decision.as_str() {
        "confirm" => "confirmed",
        "dismiss" => "dismissed",
        "escalate" => "escalated",
        other => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("decision {other:?} is not confirm, dismiss or escalate"),
            ));
        }
    };
    let reason = d.reason.trim();
    if reason.is_empty() || reason.len() > 4096 {
        return Err(error(StatusCode::BAD_REQUEST, "a reason of 1 to 4096 characters is required"));
    }
    let (store, actor, reason) = (s.store.clone(), format!("token:{}", p.token_id), reason.to_string());
    match blocking(move || store.decide_flag(id, status, &actor, &reason, crate::now_ms())).await? {
        Some(()) => Ok(Json(json!({"id": id, "status": status})).into_response()),
        None => Err(error(StatusCode::NOT_FOUND, format!("no flag {id}"))),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(store_err)
}

/// `GET /api/v1/hosts`: the contract's fields, plus the GPUs and other accelerators of each host's
/// latest report.
async fn list_hosts(State(s): State<HttpState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers, Action::ListHosts).await?;
    let store = s.store.clone();
    let policy = s.policy.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let hosts = blocking(move || {
        let mut out = Vec::new();
        let mut hosts = store.hosts(None)?;
        let reports = crate::location::annotate_hosts(&store, policy.location(), &mut hosts, crate::now_ms())?;
        for (h, latest) in hosts.into_iter().zip(reports) {
            let mut v = serde_json::to_value(&h).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                let (gpus, acc) = latest.map_or((vec![], vec![]), |r| {
                    (
                        r.gpus
                            .iter()
                            .map(|g| json!({"uuid": g.uuid, "name": g.name, "serial": g.serial, "lost": g.lost}))
                            .collect(),
                        r.accelerators
                            .iter()
                            .map(|a| json!({"pci_address": a.pci_address, "vendor": a.vendor, "product": a.product}))
                            .collect(),
                    )
                });
                o.insert("gpus".into(), json!(gpus));
                o.insert("accelerators".into(), json!(acc));
            }
            out.push(v);
        }
        Ok(out)
    })
    .await?;
    Ok(Json(hosts).into_response())
}

/// `GET /api/v1/flags/{id}`: the flag, its decision history, the reports behind it, its job's verdict
/// and compute, the job's GPU timeline, what is known against its tenant, and the host's GPU evidence.
/// What the review page shows of flag `id` (seen within `scope`, a customer's tenant): the flag, its
/// history, the reports behind it, its job, the job's timeline, screening, GPU evidence and location.
/// `None` when there is no such flag in scope.
///
/// # Errors
/// The store's.
pub fn flag_detail(
    store: &Store,
    policy: &crate::policy::Policy,
    id: i64,
    scope: Option<&str>,
) -> Result<Option<serde_json::Value>, crate::store::StoreError> {
    let Some(f) = store.flag(id, scope)? else { return Ok(None) };
    let history = store.flag_history(id)?;
    let reports = store.report_refs(&f.host_id, f.first_seq, f.last_seq, 50)?;
    let job = store.job(&f.job)?.map(|j| policy.estimate(j));
    let timeline = store.timeline(&f.job, &f.host_id, &f.gpu_uuids, (f.first_seq, f.last_seq))?;
    let screening = f.tenant.as_deref().map(|t| policy.tenant_findings(t)).unwrap_or_default();
    let last_seq = store.host(&f.host_id)?.map_or(0, |h| h.last_seq);
    let latest = store.decoded_report(&f.host_id, last_seq)?;
    let gpu_evidence = store.gpu_evidence_states(&f.host_id, latest.as_ref())?;
    let landmarks = store.landmarks()?;
    let location = crate::location::host_verdict(store, policy.location(), &f.host_id, &landmarks, crate::now_ms())?;
    Ok(Some(json!({"flag": f, "history": history, "reports": reports, "job": job, "timeline": timeline,
        "screening": screening, "gpu_evidence": gpu_evidence, "location": location})))
}

async fn show_flag(State(s): State<HttpState>, headers: HeaderMap, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let p = authorize(&s, &headers, Action::ShowFlag).await?;
    let scope = tenant_scope(&p).map(str::to_string);
    let policy = s.policy.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let store = s.store.clone();
    let detail = blocking(move || flag_detail(&store, &policy, id, scope.as_deref())).await?;
    match detail {
        Some(d) => Ok(Json(d).into_response()),
        None => Err(error(StatusCode::NOT_FOUND, format!("no flag {id}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Assignment {
    assignee: String,
}

/// `POST /api/v1/flags/{id}/assign` with `{"assignee": "name"}` (empty: unassign); audited.
async fn assign(
    State(s): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Option<Json<Assignment>>,
) -> Result<Response, ApiError> {
    let p = authorize(&s, &headers, Action::Assign).await?;
    let Some(Json(a)) = body else {
        return Err(error(StatusCode::BAD_REQUEST, "body must be JSON {\"assignee\": \"name\"}"));
    };
    let who = a.assignee.trim().to_string();
    if who.len() > 128 || who.chars().any(char::is_control) {
        return Err(error(StatusCode::BAD_REQUEST, "an assignee is up to 128 printable characters"));
    }
    let (store, actor) = (s.store.clone(), format!("token:{}", p.token_id));
    let w = who.clone();
    match blocking(move || store.assign_flag(id, &w, &actor, crate::now_ms())).await? {
        Some(()) => Ok(Json(json!({"id": id, "assignee": who})).into_response()),
        None => Err(error(StatusCode::NOT_FOUND, format!("no flag {id}"))),
    }
}

/// `GET /api/v1/reports/{host}/{seq}`: the stored signed bytes and signature, re-verified now, and the
/// report decoded for reading. A customer reads its own tenant's hosts only.
async fn read_report(
    State(s): State<HttpState>,
    headers: HeaderMap,
    Path((host_id, seq)): Path<(String, u64)>,
) -> Result<Response, ApiError> {
    let p = authorize(&s, &headers, Action::ReadReport).await?;
    let scope = tenant_scope(&p).map(str::to_string);
    let store = s.store.clone();
    let checked = blocking(move || {
        if let Some(t) = &scope
            && store.host(&host_id)?.is_none_or(|h| h.tenant.as_deref() != Some(t.as_str()))
        {
            return Ok(None);
        }
        store.check_report(&host_id, seq)
    })
    .await?;
    match checked {
        Some(c) => Ok(Json(c).into_response()),
        None => Err(error(StatusCode::NOT_FOUND, "no such report")),
    }
}

async fn audit(State(s): State<HttpState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers, Action::ReadAudit).await?;
    let store = s.store.clone();
    Ok(Json(blocking(move || store.audit_log(1000)).await?).into_response())
}

#[derive(Deserialize)]
struct ExportQuery {
    tenant: Option<String>,
    since: Option<String>,
    until: Option<String>,
    redact: Option<bool>,
}

/// `GET /api/v1/export?tenant=&since=&until=&redact=true`: a signed attestation (DSSE JSON). A customer
/// token exports its own tenant only. Every export is audited.
async fn export(
    State(s): State<HttpState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let p = authorize(&s, &headers, Action::Export).await?;
    {
        let mut budgets = s.export_budgets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if budgets.len() > 100_000 {
            budgets.clear();
        }
        let b = budgets.entry(p.token_id.clone()).or_insert_with(|| Budget::new(1.0 / 60.0, EXPORT_BURST_PER_TOKEN));
        if !b.try_take() {
            return Err(error(
                StatusCode::TOO_MANY_REQUESTS,
                "this token has started too many exports; one a minute after a burst of 10",
            ));
        }
    }
    let tenant = match (&p.access, q.tenant) {
        (Access::Customer { tenant: own }, Some(t)) if t != *own => {
            return Err(error(StatusCode::FORBIDDEN, "a customer token exports its own tenant only"));
        }
        (Access::Customer { tenant: own }, _) => own.clone(),
        (_, Some(t)) => t,
        _ => return Err(error(StatusCode::BAD_REQUEST, "tenant=ID is required")),
    };
    // Unredacted exports carry command lines and paths: only for the operator's own people.
    if q.redact == Some(false) && !matches!(p.access, Access::Reviewer | Access::Operator) {
        return Err(error(StatusCode::FORBIDDEN, "redact=false is for reviewer and operator tokens only"));
    }
    let now = crate::now_ms();
    let parse = |v: Option<String>, default: i64| -> Result<i64, ApiError> {
        v.map(|t| crate::export::statement::parse_time(&t, now))
            .transpose()
            .map(|t| t.unwrap_or(default))
            .map_err(|e| error(StatusCode::BAD_REQUEST, e))
    };
    let req = crate::export::statement::ExportRequest {
        tenant: tenant.clone(),
        since: parse(q.since, 0)?,
        until: parse(q.until, now + 1)?,
        redact: q.redact.unwrap_or(p.role() == Role::Customer),
    };
    let _permit =
        s.exports.clone().acquire_owned().await.map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let policy = s.policy.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let (store, key, actor) = (s.store.clone(), s.export_key.clone(), format!("token:{}", p.token_id));
    let envelope = tokio::task::spawn_blocking(move || {
        let st = crate::export::statement::build(&store, &key, &req, &policy, |_, _| {})?;
        let n = st["subject"].as_array().map_or(0, Vec::len);
        store
            .audit(now, &actor, "export", &req.tenant, &format!("{n} reports, redacted={}, via API", req.redact))
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(crate::export::seal(&st, &key))
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| error(StatusCode::NOT_FOUND, e))?;
    Ok(Json(envelope).into_response())
}

/// `GET /api/v1/log/head`: the current signed tree head (public, like a certificate-transparency log).
/// Reads only the leaves appended since the last head (O(log n) to hash), records a head only when the
/// tree grew, and shares a budget with the other public routes.
async fn log_head(State(s): State<HttpState>) -> Result<Response, ApiError> {
    public_budget_ok(&s)?;
    let (store, key, log) = (s.store.clone(), s.export_key.clone(), s.log.clone());
    let head = tokio::task::spawn_blocking(move || {
        log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).advance(&store, &key)
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(store_err)?;
    Ok(Json(head).into_response())
}

fn public_budget_ok(s: &HttpState) -> Result<(), ApiError> {
    if s.public_budget.lock().unwrap_or_else(std::sync::PoisonError::into_inner).try_take() {
        Ok(())
    } else {
        Err(error(StatusCode::TOO_MANY_REQUESTS, "too many requests to public routes; retry in a second"))
    }
}

/// `GET /readyz`: 200 when the store answers (the database, for a shared store) and a policy is in
/// force; 503 with the reason otherwise. Liveness (`/healthz`) stays a constant: a slow database must
/// take a replica out of the Service, not restart it.
async fn readyz(State(s): State<HttpState>) -> Response {
    let store = s.store.clone();
    let ping =
        tokio::time::timeout(std::time::Duration::from_secs(2), tokio::task::spawn_blocking(move || store.ping()))
            .await;
    let policy = s.policy.read().unwrap_or_else(std::sync::PoisonError::into_inner).digest().to_string();
    let (code, problem) = match ping {
        Ok(Ok(Ok(()))) => (StatusCode::OK, None),
        Ok(Ok(Err(e))) => (StatusCode::SERVICE_UNAVAILABLE, Some(e.to_string())),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, Some(e.to_string())),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Some("the store did not answer within 2 s".to_string())),
    };
    let body = json!({"ready": problem.is_none(), "store": s.store.location().to_string(), "policy": policy, "problem": problem});
    (code, Json(body)).into_response()
}

/// `GET /metrics`: the collector's counters, the process's, and the fleet's gauges from the store
/// (read at most once per [`FLEET_GAUGES_TTL`]; a store failure leaves them out and is logged).
async fn metrics(State(s): State<HttpState>) -> Response {
    let mut text = s.metrics.render();
    let mut cached = s.fleet.lock().await;
    let fresh = cached.as_ref().is_some_and(|(at, _)| at.elapsed() < FLEET_GAUGES_TTL);
    if !fresh {
        let store = s.store.clone();
        let read = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>(crate::metrics::FleetGauges {
                flags_open: store.open_flag_counts()?,
                hosts: store.host_gauges()?,
                log_unsequenced: store.unsequenced()?,
            })
        })
        .await;
        match read {
            Ok(Ok(g)) => *cached = Some((std::time::Instant::now(), g.render())),
            Ok(Err(e)) => tracing::warn!(error = %e, "fleet gauges not read for /metrics"),
            Err(e) => tracing::warn!(error = %e, "fleet gauges task failed"),
        }
    }
    if let Some((_, fleet)) = cached.as_ref() {
        text.push_str(fleet);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn handler(spec: &RouteSpec) -> axum::routing::MethodRouter<HttpState> {
    match (spec.method, spec.path) {
        ("GET", "/") => get(|| async { asset("text/html; charset=utf-8", include_str!("ui/index.html")) }),
        ("GET", "/ui.js") => get(|| async { asset("text/javascript; charset=utf-8", include_str!("ui/ui.js")) }),
        ("GET", "/ui.css") => get(|| async { asset("text/css; charset=utf-8", include_str!("ui/ui.css")) }),
        ("GET", "/healthz") => get(|| async { "ok\n" }),
        ("GET", "/readyz") => get(readyz),
        ("GET", "/metrics") => get(metrics),
        ("GET", "/api/v1/log/head") => get(log_head),
        ("GET", "/api/v1/flags") => get(list_flags),
        ("GET", "/api/v1/flags/{id}") => get(show_flag),
        ("POST", "/api/v1/flags/{id}/decision") => post(decide),
        ("POST", "/api/v1/flags/{id}/assign") => post(assign),
        ("GET", "/api/v1/reports/{host}/{seq}") => get(read_report),
        ("GET", "/api/v1/hosts") => get(list_hosts),
        ("GET", "/api/v1/audit") => get(audit),
        ("GET", "/api/v1/export") => get(export),
        // A row of ROUTES without a handler is a build defect; the unit test below builds the router.
        (m, p) => unreachable!("ROUTES names {m} {p}, which has no handler"),
    }
}

/// The router, built from [`ROUTES`] alone.
pub fn router(state: HttpState) -> Router {
    ROUTES.iter().fold(Router::new(), |r, spec| r.route(spec.path, handler(spec))).with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_in_the_table_has_a_handler() {
        for spec in ROUTES {
            let _ = handler(spec);
        }
        let paths: std::collections::BTreeSet<_> = ROUTES.iter().map(|r| (r.method, r.path)).collect();
        assert_eq!(paths.len(), ROUTES.len(), "a route is listed twice");
    }

    #[test]
    fn role_table_matches_the_contract() {
        use Action::*;
        use Role::*;
        let expect = [
            (Reviewer, [true, true, true, true, true, true, true, true]),
            (Operator, [true, false, true, true, true, true, false, true]),
            (Customer, [true, false, false, false, true, true, false, true]),
            (Enroll, [false, false, false, false, false, false, false, false]),
        ];
        for (role, row) in expect {
            let actions = [ListFlags, Decide, ListHosts, ReadAudit, Export, ShowFlag, Assign, ReadReport];
            for (action, ok) in actions.into_iter().zip(row) {
                assert_eq!(allowed(role, action), ok, "{role} {action:?}");
            }
        }
    }
}
