//! Tenants: who the GPU cloud's customers are (a tenant file the operator maintains), how a job maps to
//! one (operator configuration in the policy), and what is known against them: a tenant or its parent
//! on a screening list, or a parent headquartered in a country of concern (the rescinded AI Diffusion
//! Rule's red flag for subsidiaries of foreign parents).
//!
//! ```toml
//! [[tenant]]
//! id = "acme-ai"
//! legal_name = "Acme AI, Inc."
//! country = "US"
//! parent = "Acme Holdings Ltd."
//! parent_country = "US"
//! aliases = ["Acme"]
//! ```

use std::collections::BTreeSet;

use gpuattest_proto::pb;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::screening::{Entry, check};

/// Largest tenant file read.
pub const MAX_TENANTS_BYTES: u64 = 16 * 1024 * 1024;

/// One tenant.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// The id hosts are enrolled under and flags carry.
    pub id: String,
    /// Registered legal name.
    pub legal_name: String,
    /// Country of incorporation (ISO 3166 alpha-2).
    #[serde(default)]
    pub country: Option<String>,
    /// Parent company, if any.
    #[serde(default)]
    pub parent: Option<String>,
    /// Parent's headquarters country.
    #[serde(default)]
    pub parent_country: Option<String>,
    /// Other names it trades under.
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    tenant: Vec<Tenant>,
}

fn country_ok(c: &str) -> bool {
    c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase())
}

/// Parses and validates a tenant file.
///
/// # Errors
/// A line naming the line and key, or the tenant and what is wrong with it.
pub fn parse(text: &str) -> Result<Vec<Tenant>, String> {
    let f: TenantsFile = toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))?;
    let mut seen = BTreeSet::new();
    for t in &f.tenant {
        if t.id.is_empty() || t.id.len() > 128 || t.id.chars().any(char::is_control) {
            return Err(format!("tenant id `{}` must be 1 to 128 printable characters", t.id.escape_debug()));
        }
        if !seen.insert(t.id.as_str()) {
            return Err(format!("tenant `{}` is listed twice", t.id));
        }
        if t.legal_name.trim().is_empty() {
            return Err(format!("tenant `{}`: legal_name is empty", t.id));
        }
        for (key, c) in [("country", &t.country), ("parent_country", &t.parent_country)] {
            if let Some(c) = c
                && !country_ok(c)
            {
                return Err(format!("tenant `{}`: {key} `{c}` is not an ISO 3166 code like US or CN", t.id));
            }
        }
    }
    Ok(f.tenant)
}

/// How a process on a shared host (one enrolled without a tenant) maps to a tenant; the first rule that
/// applies wins. On a host enrolled for a tenant, every process is that tenant's and no rule applies:
/// the enrollment is the operator's word, and a process must not be able to name itself into another
/// tenant.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantMapping {
    /// A pod label whose value is the tenant id.
    #[serde(default)]
    pub kubernetes_label: Option<String>,
    /// Pods in this namespace belong to `tenant`.
    #[serde(default)]
    pub kubernetes_namespace: Option<String>,
    /// Slurm jobs charged to this account belong to `tenant`.
    #[serde(default)]
    pub slurm_account: Option<String>,
    /// The tenant (with a namespace or account).
    #[serde(default)]
    pub tenant: Option<String>,
    /// `slurm_account` reads `SLURM_JOB_ACCOUNT` from the process's own environment, which the process
    /// controls: a claim, not the scheduler's record. The rule is refused unless this says the operator
    /// accepts that (on shared hosts only, like every rule).
    #[serde(default)]
    pub trust_process_environment: bool,
}

impl TenantMapping {
    /// Checks that the rule names exactly one source, and a tenant where it needs one.
    ///
    /// # Errors
    /// What is wrong with rule number `i` (from 1).
    pub fn validate(&self, i: usize) -> Result<(), String> {
        let sources = [&self.kubernetes_label, &self.kubernetes_namespace, &self.slurm_account]
            .iter()
            .filter(|s| s.is_some())
            .count();
        if sources != 1 {
            return Err(format!(
                "tenant_mapping {i}: give exactly one of kubernetes_label, kubernetes_namespace, slurm_account"
            ));
        }
        if self.slurm_account.is_some() && !self.trust_process_environment {
            return Err(format!(
                "tenant_mapping {i}: slurm_account is read from SLURM_JOB_ACCOUNT in the process's own environment, which the process can set; add trust_process_environment = true to accept that claim, or enroll the Slurm nodes for their tenant"
            ));
        }
        match (&self.kubernetes_label, &self.tenant) {
            (Some(_), Some(_)) => {
                Err(format!("tenant_mapping {i}: with kubernetes_label the label's value is the tenant; drop `tenant`"))
            }
            (None, None) => Err(format!("tenant_mapping {i}: `tenant` is missing")),
            _ => Ok(()),
        }
    }

    fn apply(&self, p: &pb::GpuProcess) -> Option<String> {
        if let Some(label) = &self.kubernetes_label {
            return p.pod.as_ref().and_then(|pod| pod.labels.get(label)).filter(|v| !v.is_empty()).cloned();
        }
        if let Some(ns) = &self.kubernetes_namespace {
            return p.pod.as_ref().filter(|pod| &pod.namespace == ns).and(self.tenant.clone());
        }
        if let Some(acct) = &self.slurm_account {
            return p.env.get("SLURM_JOB_ACCOUNT").filter(|a| *a == acct).and(self.tenant.clone());
        }
        None
    }
}

/// The tenant of a process: the host's, where it was enrolled for one (a dedicated host); on a shared
/// host, the first mapping rule that applies (the kubelet's pod record first in the shipped example);
/// `None` where nothing says.
pub fn tenant_of(rules: &[TenantMapping], p: &pb::GpuProcess, host_tenant: Option<&str>) -> Option<String> {
    match host_tenant {
        Some(t) => Some(t.to_string()),
        None => rules.iter().find_map(|r| r.apply(p)),
    }
}

/// Something known against a tenant, turned into a flag whenever the tenant's jobs report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    /// `tenant-screening` or `tenant-parent-country`.
    pub rule: String,
    /// Severity.
    pub severity: crate::severity::Severity,
    /// For reviewers.
    pub summary: String,
    /// What matched.
    pub evidence: serde_json::Value,
}

/// Screens every tenant's names (legal name, aliases, parent) against the lists, and checks its and
/// its parent's countries against the countries of concern.
pub fn assess(tenant: &Tenant, lists: &[Entry], threshold: f64, concern: &[String]) -> Vec<Finding> {
    use crate::severity::Severity;
    let mut out = Vec::new();
    let names = std::iter::once(("legal name", tenant.legal_name.as_str()))
        .chain(tenant.aliases.iter().map(|a| ("alias", a.as_str())))
        .chain(tenant.parent.as_deref().map(|p| ("parent", p)));
    for (what, name) in names {
        if let Some(m) = check(name, lists, threshold).into_iter().next() {
            out.push(Finding {
                rule: "tenant-screening".into(),
                severity: Severity::Critical,
                summary: format!(
                    "tenant {}: its {what} `{name}` matches `{}` on {} ({}, score {:.2})",
                    tenant.id, m.matched_name, m.list, m.source_id, m.score
                ),
                evidence: json!({"tenant": tenant.id, "screened": what, "name": name, "match": m}),
            });
        }
    }
    let listed = |c: &Option<String>| c.as_ref().filter(|c| concern.iter().any(|x| x == *c)).cloned();
    if let Some(c) = listed(&tenant.parent_country) {
        out.push(Finding {
            rule: "tenant-parent-country".into(),
            severity: Severity::High,
            summary: format!(
                "tenant {} ({}) has a parent, {}, headquartered in {c}, a country of concern: the rescinded AI Diffusion Rule's red flag for subsidiaries of foreign parents",
                tenant.id,
                tenant.legal_name,
                tenant.parent.as_deref().unwrap_or("unnamed")
            ),
            evidence: json!({"tenant": tenant.id, "legal_name": tenant.legal_name, "parent": tenant.parent, "parent_country": c}),
        });
    } else if let Some(c) = listed(&tenant.country) {
        out.push(Finding {
            rule: "tenant-parent-country".into(),
            severity: Severity::High,
            summary: format!(
                "tenant {} ({}) is incorporated in {c}, a country of concern",
                tenant.id, tenant.legal_name
            ),
            evidence: json!({"tenant": tenant.id, "legal_name": tenant.legal_name, "country": c}),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_files_are_validated_with_the_line_and_key() {
        let ok = parse("[[tenant]]\nid = \"a\"\nlegal_name = \"A Inc.\"\nparent_country = \"CN\"\n").expect("ok");
        assert_eq!(ok[0].parent_country.as_deref(), Some("CN"));
        assert!(parse("[[tenant]]\nid = \"a\"\nlegal_nam = \"x\"\n").expect_err("key").contains("legal_nam"));
        assert!(parse("[[tenant]]\nid = 5\n").expect_err("type").contains("line 2"));
        let dup = "[[tenant]]\nid = \"a\"\nlegal_name = \"x\"\n[[tenant]]\nid = \"a\"\nlegal_name = \"y\"\n";
        assert!(parse(dup).expect_err("dup").contains("twice"));
        assert!(
            parse("[[tenant]]\nid = \"a\"\nlegal_name = \"x\"\ncountry = \"China\"\n").expect_err("c").contains("ISO")
        );
        assert!(parse("[[tenant]]\nid = \"a\"\nlegal_name = \" \"\n").expect_err("empty").contains("legal_name"));
        assert!(parse("").expect("empty file").is_empty());
    }

    #[test]
    fn mapping_rules_apply_in_order_and_fall_back_to_the_host() {
        let rules = vec![
            TenantMapping { kubernetes_label: Some("gpuattest.io/tenant".into()), ..TenantMapping::default() },
            TenantMapping {
                kubernetes_namespace: Some("team-b".into()),
                tenant: Some("b".into()),
                ..TenantMapping::default()
            },
            TenantMapping {
                slurm_account: Some("acct-c".into()),
                tenant: Some("c".into()),
                trust_process_environment: true,
                ..TenantMapping::default()
            },
        ];
        for (i, r) in rules.iter().enumerate() {
            r.validate(i + 1).expect("valid");
        }
        let mut p = pb::GpuProcess::default();
        assert_eq!(tenant_of(&rules, &p, None), None);
        p.env.insert("SLURM_JOB_ACCOUNT".into(), "acct-c".into());
        assert_eq!(tenant_of(&rules, &p, None), Some("c".into()));
        p.pod = Some(pb::KubernetesPod { namespace: "team-b".into(), ..Default::default() });
        assert_eq!(tenant_of(&rules, &p, None), Some("b".into()));
        p.pod.as_mut().expect("pod").labels.insert("gpuattest.io/tenant".into(), "a".into());
        assert_eq!(tenant_of(&rules, &p, None), Some("a".into()));
        let bad =
            TenantMapping { kubernetes_label: Some("x".into()), tenant: Some("t".into()), ..TenantMapping::default() };
        assert!(bad.validate(4).expect_err("bad").contains("tenant_mapping 4"));
        assert!(TenantMapping::default().validate(1).is_err());
    }

    #[test]
    fn finding_4_a_process_cannot_name_itself_into_another_tenant() {
        let rules = vec![
            TenantMapping { kubernetes_label: Some("gpuattest.io/tenant".into()), ..TenantMapping::default() },
            TenantMapping {
                slurm_account: Some("globex".into()),
                tenant: Some("globex".into()),
                trust_process_environment: true,
                ..TenantMapping::default()
            },
        ];
        // What acme's process says about itself: another tenant's account and label.
        let mut p = pb::GpuProcess::default();
        p.env.insert("SLURM_JOB_ACCOUNT".into(), "globex".into());
        p.pod = Some(pb::KubernetesPod { namespace: "x".into(), ..Default::default() });
        p.pod.as_mut().expect("pod").labels.insert("gpuattest.io/tenant".into(), "globex".into());
        assert_eq!(tenant_of(&rules, &p, Some("acme")), Some("acme".into()), "the host's enrollment decides");
        assert_eq!(tenant_of(&rules, &p, None), Some("globex".into()), "on a shared host the pod record does");
        // An environment claim is accepted only where the operator says so.
        let claim =
            TenantMapping { slurm_account: Some("x".into()), tenant: Some("t".into()), ..TenantMapping::default() };
        assert!(claim.validate(3).expect_err("claim").contains("trust_process_environment"));
    }

    #[test]
    fn tenants_are_assessed_against_lists_and_countries() {
        let sdn = b"1,\"HUAWEI TECHNOLOGIES CO., LTD.\",\"entity\",\"CHINA-EL\",-0-,-0-,-0-,-0-,-0-,-0-,-0-,-0-\n";
        let lists = crate::screening::parse("sdn.csv", sdn).expect("list");
        let concern = vec!["CN".to_string()];
        let clean = Tenant {
            id: "acme".into(),
            legal_name: "Acme AI, Inc.".into(),
            country: Some("US".into()),
            parent: None,
            parent_country: None,
            aliases: vec![],
        };
        assert!(assess(&clean, &lists, 0.9, &concern).is_empty());
        let sub = Tenant {
            id: "north".into(),
            legal_name: "Northwind Compute GmbH".into(),
            country: Some("DE".into()),
            parent: Some("Huawei Technologies Co Ltd".into()),
            parent_country: Some("CN".into()),
            aliases: vec![],
        };
        let f = assess(&sub, &lists, 0.9, &concern);
        let rules: Vec<&str> = f.iter().map(|x| x.rule.as_str()).collect();
        assert_eq!(rules, ["tenant-screening", "tenant-parent-country"], "{f:?}");
        assert!(f[0].summary.contains("parent"), "{}", f[0].summary);
    }
}
