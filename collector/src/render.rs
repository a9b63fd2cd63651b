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
        // GPU evidence: counted by state, then each GPU that failed or sent none, with why.
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for e in &h.gpu_evidence {
            *counts.entry(e.state.as_str()).or_default() += 1;
        }
        if !counts.is_empty() {
            let text: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let _ = writeln!(s, "    GPU evidence: {}", text.join(", "));
        }
        for e in h.gpu_evidence.iter().filter(|e| e.state == "failed" || e.state == "missing") {
            let _ = writeln!(s, "      {} {}: {}", e.gpu_uuid, e.state, e.reasons.join("; "));
        }
        if let Some(l) = &h.location
            && l["verdict"] != "unregistered"
        {
            let _ = writeln!(
                s,
                "    location: {} ({})",
                l["verdict"].as_str().unwrap_or_default(),
                l["reason"].as_str().unwrap_or_default()
            );
        }
    }
    s
}

/// `jobs list`.
pub fn jobs(rows: &[crate::compute::JobSummary]) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        return "no jobs yet\n".into();
    }
    let _ = writeln!(
        s,
        "{:<40} {:<16} {:<14} {:>5} {:>5} {:>10} {:>10} {:>10}",
        "JOB", "KIND", "TENANT", "HOSTS", "GPUS", "GPU-HOURS", "OPS<=", "OPS~"
    );
    for j in rows {
        let _ = writeln!(
            s,
            "{:<40} {:<16} {:<14} {:>5} {:>5} {:>10.3} {:>10.2e} {:>10.2e}",
            clip(&j.job_key, 40),
            format!("{} {:.0}%", j.verdict.kind, j.verdict.confidence * 100.0),
            clip(j.tenant.as_deref().unwrap_or("-"), 14),
            j.hosts.len(),
            j.gpus,
            j.gpu_hours,
            j.ops_upper_bound,
            j.ops_estimate
        );
    }
    s
}

/// `jobs show`.
pub fn job(j: &crate::compute::JobSummary) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "job {}", j.job_key);
    let _ = writeln!(s, "  tenant       {}", j.tenant.as_deref().unwrap_or("-"));
    let _ = writeln!(s, "  hosts        {}", j.hosts.join(", "));
    let _ = writeln!(s, "  gpus         {}", j.gpus);
    let _ = writeln!(s, "  gpu-hours    {:.3}", j.gpu_hours);
    let _ = writeln!(s, "  energy       {:.1} kJ", j.energy_joules / 1000.0);
    let _ = writeln!(s, "  operations   at most {:.3e}; estimated {:.3e}", j.ops_upper_bound, j.ops_estimate);
    if j.unknown_peak_gpu_seconds > 0.0 {
        let _ = writeln!(
            s,
            "               ({:.0} GPU-seconds on GPUs whose peak is unknown are not counted)",
            j.unknown_peak_gpu_seconds
        );
    }
    let _ = writeln!(
        s,
        "  seen         {} to {}",
        crate::timefmt::rfc3339(j.first_seen),
        crate::timefmt::rfc3339(j.last_seen)
    );
    let _ = writeln!(s, "  verdict      {} ({:.0}% confidence)", j.verdict.kind, j.verdict.confidence * 100.0);
    for r in &j.verdict.reasons {
        let _ = writeln!(s, "    - {r}");
    }
    s
}

pub use crate::report_view::report_json;
