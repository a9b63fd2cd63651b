//! Flag severity: what the policy assigns and the store, registry and tenant findings keep. Below
//! every module that judges or stores, so none of them imports another for it.

use serde::{Deserialize, Serialize};

/// Flag severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Nothing to see.
    None,
    /// Worth a look.
    Low,
    /// Review soon.
    Medium,
    /// Review now.
    High,
    /// Stop and escalate.
    Critical,
}

impl Severity {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::None => "none",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}
