//! Human-readable tables for the CLI (the default output; `--json` prints the rows instead).

use std::fmt::Write;

use crate::store::{FlagRow, HostSummary};

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { format!("{}…", s.chars().take(n - 1).collect::<String>()) }
}

/// The flags table.
pub fn flags(rows: &[FlagRow]) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        return "no flags\n".into();
    }
    let _ = writeln!(
        s,
        "{:<5} {:<9} {:<20} {:<10} {:<22} {:<14} SUMMARY",
        "ID", "SEVERITY", "RULE", "STATUS", "HOST", "TENANT"
    );
    for f in rows {
        let _ = writeln!(
            s,
            "{:<5} {:<9} {:<20} {:<10} {:<22} {:<14} {}",
            f.id,
            f.severity.to_uppercase(),
            f.rule,
            f.status,
            clip(&f.host_id, 22),
            clip(f.tenant.as_deref().unwrap_or("-"), 14),
            f.summary
        );
    }
    s
}

/// The hosts table.
pub fn hosts(rows: &[HostSummary]) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        return "no hosts enrolled\n".into();
    }
    let _ = writeln!(
        s,
        "{:<24} {:<16} {:<14} {:>8} {:>8} {:>5} {:>8}  LAST SEEN",
        "HOST", "HOSTNAME", "TENANT", "LAST_SEQ", "REPORTS", "GAPS", "RECORDED"
    );
    for h in rows {
        let _ = writeln!(
            s,
            "{:<24} {:<16} {:<14} {:>8} {:>8} {:>5} {:>8}  {}{}",
            clip(&h.host_id, 24),
            clip(&h.hostname, 16),
            clip(h.tenant.as_deref().unwrap_or("-"), 14),
            h.last_seq,
            h.reports,
            h.gaps,
            h.recorded_gaps,
            h.last_seen.as_deref().unwrap_or("never"),
            if h.revoked { "  (revoked)" } else { "" }
        );
    }
    s
}
