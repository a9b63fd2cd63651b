//! Every route the HTTP listener serves, and who may call it: the contract's role table.

use crate::tokens::Role;

/// One route: method, path (axum syntax), and what it takes. `None`: public (no token).
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The path.
    pub path: &'static str,
    /// The action a token must be allowed; `None` for public routes.
    pub action: Option<Action>,
}

/// Every route the HTTP listener serves. The router is built from this table alone.
pub const ROUTES: &[RouteSpec] = &[
    RouteSpec { method: "GET", path: "/", action: None },
    RouteSpec { method: "GET", path: "/ui.js", action: None },
    RouteSpec { method: "GET", path: "/ui.css", action: None },
    RouteSpec { method: "GET", path: "/healthz", action: None },
    RouteSpec { method: "GET", path: "/readyz", action: None },
    RouteSpec { method: "GET", path: "/metrics", action: None },
    RouteSpec { method: "GET", path: "/api/v1/log/head", action: None },
    RouteSpec { method: "GET", path: "/api/v1/flags", action: Some(Action::ListFlags) },
    RouteSpec { method: "GET", path: "/api/v1/flags/{id}", action: Some(Action::ShowFlag) },
    RouteSpec { method: "POST", path: "/api/v1/flags/{id}/decision", action: Some(Action::Decide) },
    RouteSpec { method: "POST", path: "/api/v1/flags/{id}/assign", action: Some(Action::Assign) },
    RouteSpec { method: "GET", path: "/api/v1/reports/{host}/{seq}", action: Some(Action::ReadReport) },
    RouteSpec { method: "GET", path: "/api/v1/hosts", action: Some(Action::ListHosts) },
    RouteSpec { method: "GET", path: "/api/v1/audit", action: Some(Action::ReadAudit) },
    RouteSpec { method: "GET", path: "/api/v1/export", action: Some(Action::Export) },
];

/// API actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `GET /api/v1/flags`.
    ListFlags,
    /// `POST /api/v1/flags/{id}/decision`.
    Decide,
    /// `GET /api/v1/hosts`.
    ListHosts,
    /// `GET /api/v1/audit`.
    ReadAudit,
    /// `GET /api/v1/export`.
    Export,
    /// `GET /api/v1/flags/{id}`: a flag with its reports, job, timeline and screening.
    ShowFlag,
    /// `POST /api/v1/flags/{id}/assign`.
    Assign,
    /// `GET /api/v1/reports/{host}/{seq}`: a stored signed report, re-verified now.
    ReadReport,
}

/// The contract's role table.
pub fn allowed(role: Role, action: Action) -> bool {
    use Action::*;
    use Role::*;
    matches!(
        (role, action),
        (Reviewer | Operator | Customer, ListFlags)
            | (Reviewer, Decide)
            | (Operator | Reviewer, ListHosts)
            | (Operator | Reviewer, ReadAudit)
            | (Reviewer | Operator | Customer, Export)
            | (Reviewer | Operator | Customer, ShowFlag)
            | (Reviewer, Assign)
            | (Reviewer | Operator | Customer, ReadReport)
    )
}
