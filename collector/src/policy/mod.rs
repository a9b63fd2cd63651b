//! Policy: what in a report raises a flag, and how severe it is.
//!
//! The policy is TOML (the built-in default is `default-policy.toml`; an operator's `<data>/policy.toml`
//! replaces it). Its SHA-256 digest is recorded with every flag, so a reviewer can tell which policy
//! judged the evidence. The rules here: models of listed or PRC-headquartered developers named on a GPU
//! process's command line; accelerators of flagged vendors on the host; and the host's report chain
//! (missing sequence numbers, a broken hash chain).

use std::path::Path;

use gpuattest_proto::pb;
use serde::{Deserialize, Serialize};

use crate::compute::JobSummary;
use crate::store::{ChainPosition, CommitContext, NewFlag};
use crate::tenants::{Finding, TenantMapping};

/// The built-in policy.
pub const DEFAULT_POLICY: &str = include_str!("default-policy.toml");
/// Largest policy file read.
pub const MAX_POLICY_BYTES: usize = 4 * 1024 * 1024;

pub use crate::severity::Severity;

mod host_rules;
mod names;
mod rules;

pub use names::{glob, model_candidates};

/// A model-id pattern with what it means.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPattern {
    /// Glob over model ids, e.g. `deepseek-ai/*`.
    pub pattern: String,
    /// Model family.
    pub family: String,
    /// Developer.
    pub developer: String,
    /// Developer's headquarters country (ISO 3166 alpha-2).
    pub country: String,
    /// Severity of a match.
    pub severity: Severity,
    /// Listing status with its source.
    #[serde(default)]
    pub listing: Option<String>,
}

/// An accelerator vendor flagged when present.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AcceleratorVendor {
    /// PCI vendor id, `0x19e5`.
    pub vendor_id: String,
    /// Display name.
    pub name: String,
    /// Severity.
    pub severity: Severity,
    /// Why it is flagged.
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    /// Add the built-in model patterns and accelerator vendors after this file's own.
    #[serde(default)]
    extend_builtin: bool,
    /// The tenant file (relative paths are read beside the policy file).
    #[serde(default)]
    tenants: Option<std::path::PathBuf>,
    /// Restricted-party list files tenants are screened against.
    #[serde(default)]
    screening_lists: Vec<std::path::PathBuf>,
    /// Lowest match score that counts (0 to 1).
    #[serde(default)]
    screening_threshold: Option<f64>,
    /// ISO 3166 codes; a tenant (or its parent) headquartered in one is flagged.
    #[serde(default)]
    countries_of_concern: Option<Vec<String>>,
    /// How a job maps to a tenant, first match wins; the host's enrollment tenant otherwise.
    #[serde(default)]
    tenant_mapping: Vec<TenantMapping>,
    /// The operator's model families, tried before the shipped registry.
    #[serde(default)]
    model_families: Vec<crate::registry::Family>,
    #[serde(default)]
    model_patterns: Vec<ModelPattern>,
    #[serde(default)]
    accelerator_vendors: Vec<AcceleratorVendor>,
    #[serde(default)]
    integrity: IntegrityFile,
    #[serde(default)]
    compute: ComputeFile,
    /// Re-open a flag a reviewer decided on any new occurrence; otherwise (the default) only evidence
    /// of another kind re-opens it, and further occurrences are counted beside the decision.
    #[serde(default)]
    reopen_decided_flags: bool,
    /// GPU attestation: extra trusted roots and golden measurements.
    #[serde(default)]
    attestation: crate::evidence::AttestationFile,
    /// Location: tolerance, landmarks needed, window, processing floor.
    #[serde(default)]
    location: crate::location::LocationPolicy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComputeFile {
    /// Model FLOPs utilisation assumed while a GPU is busy (0 to 1).
    assumed_efficiency: Option<f64>,
    /// `upper_bound` (default) or `estimate`: which figure the thresholds compare.
    compare: Option<String>,
    thresholds: Option<Vec<Threshold>>,
}

/// A compute threshold: a job whose operations reach `operations` is flagged at `severity`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Operations (e.g. 1e26).
    pub operations: f64,
    /// Severity of the flag.
    pub severity: Severity,
}

/// Compute-accounting settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Compute {
    /// Assumed efficiency while busy.
    pub assumed_efficiency: f64,
    /// Compare the estimate instead of the upper bound.
    pub compare_estimate: bool,
    /// Thresholds, ascending.
    pub thresholds: Vec<Threshold>,
}

impl Default for Compute {
    fn default() -> Self {
        Compute {
            assumed_efficiency: 0.4,
            compare_estimate: false,
            thresholds: vec![
                Threshold { operations: 1e24, severity: Severity::Low },
                Threshold { operations: 1e25, severity: Severity::Medium },
                Threshold { operations: 1e26, severity: Severity::High },
            ],
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntegrityFile {
    max_clock_skew: Option<String>,
    silence_intervals: Option<u32>,
}

/// Host-integrity settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Integrity {
    /// Largest tolerated difference between agent and collector clocks, ms.
    pub max_clock_skew_ms: i64,
    /// A host silent for this many of its intervals is flagged.
    pub silence_intervals: u32,
}

/// When and how a report arrived, for freshness and clock rules.
#[derive(Debug, Clone, Copy)]
pub struct Receipt {
    /// Collector clock at receipt, Unix ms.
    pub received_at: i64,
    /// The report carries this stream's nonce: it was made just now, so its clock can be compared.
    pub nonce_fresh: bool,
}

/// A policy that cannot be used; the running policy stays as it was.
#[derive(Debug, thiserror::Error)]
#[error("policy {source_name}: {reason}")]
pub struct PolicyError {
    /// File name or `built-in`.
    pub source_name: String,
    /// What is wrong, with line and key where known.
    pub reason: String,
}

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy(std::sync::Arc<PolicyData>);

impl std::ops::Deref for Policy {
    type Target = PolicyData;
    fn deref(&self) -> &PolicyData {
        &self.0
    }
}

/// What a policy holds; shared, so cloning a [`Policy`] for each report costs a reference count.
#[derive(Debug)]
pub struct PolicyData {
    patterns: Vec<ModelPattern>,
    accelerator_vendors: Vec<(u32, AcceleratorVendor)>,
    integrity: Integrity,
    compute: Compute,
    tenant_mapping: Vec<TenantMapping>,
    reopen_decided_flags: bool,
    /// The tenant file's ids, where the policy names one.
    tenant_ids: Option<std::collections::BTreeSet<String>>,
    /// The operator's model families, then the shipped registry.
    families: Vec<crate::registry::Family>,
    /// Findings per tenant id, computed when the policy loads.
    findings: std::collections::BTreeMap<String, Vec<Finding>>,
    /// The screening lists loaded, for exports and `policy show`.
    lists: Vec<LoadedFile>,
    /// Files the policy was read from (resolved), watched for hot reload.
    sources: Vec<std::path::PathBuf>,
    /// GPU attestation: the verifier with its anchors and chain cache, and golden values.
    evidence: crate::evidence::EvidencePolicy,
    /// Location verdict settings.
    location: crate::location::LocationPolicy,
    digest: String,
}

/// Where the running policy comes from, for hot reload: `--policy FILE` (it must exist) or
/// `<data>/policy.toml` (the built-in policy while it does not exist).
#[derive(Debug, Clone)]
pub struct PolicySource {
    /// The file.
    pub path: std::path::PathBuf,
    /// Named with `--policy` (or the config file): a missing file is an error, not the built-in.
    pub explicit: bool,
}

impl PolicySource {
    /// Loads the policy from this source.
    ///
    /// # Errors
    /// [`PolicyError`] for an unreadable or invalid policy, tenant or list file.
    pub fn load(&self) -> Result<Policy, PolicyError> {
        if !self.explicit && !self.path.exists() {
            return Ok(Policy::builtin());
        }
        Policy::load_file(&self.path)
    }
}

/// Modification time and size of each file, to notice edits (`None`: missing).
pub fn stamp(paths: &[std::path::PathBuf]) -> Vec<Option<(std::time::SystemTime, u64)>> {
    paths.iter().map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}

/// A file the policy loaded, with its digest (recorded in the policy digest and in exports).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LoadedFile {
    /// The path as configured.
    pub path: String,
    /// `sha256:<hex>` of its bytes.
    pub sha256: String,
    /// Entries (list) or tenants (tenant file).
    pub entries: usize,
}

/// Countries of concern when the policy names none: Macau and a subset of Country Group D:5 as the
/// rescinded AI Diffusion Rule used them. Operators should set their counsel's list.
pub const DEFAULT_COUNTRIES_OF_CONCERN: &[&str] = &["CN", "MO", "RU", "BY", "IR", "KP", "SY", "CU", "VE"];

pub(crate) use crate::files::read_bounded_file;

/// What the host is, for rules that need it.
#[derive(Debug, Clone)]
pub struct HostContext<'a> {
    /// Host id.
    pub host_id: &'a str,
    /// Hostname.
    pub hostname: &'a str,
    /// The tenant the host was enrolled for (its pool).
    pub tenant: Option<&'a str>,
}

impl Policy {
    /// The built-in default policy.
    pub fn builtin() -> Policy {
        // The default is part of the build and covered by a test; failing here is a build defect.
        Policy::parse(DEFAULT_POLICY, "built-in").unwrap_or_else(|e| panic!("built-in policy is invalid: {e}"))
    }

    /// Parses policy TOML.
    ///
    /// # Errors
    /// [`PolicyError`] naming the line and key for syntax, type and unknown-key errors, and the
    /// pattern or vendor for invalid values.
    pub fn parse(text: &str, source_name: &str) -> Result<Policy, PolicyError> {
        Policy::parse_with_base(text, source_name, None)
    }

    /// Parses policy TOML whose relative file paths (tenants, screening lists) are read from `base`.
    ///
    /// # Errors
    /// As [`Policy::parse`], and for tenant and list files that cannot be read or parsed.
    pub fn parse_with_base(text: &str, source_name: &str, base: Option<&Path>) -> Result<Policy, PolicyError> {
        let err = |reason: String| PolicyError { source_name: source_name.to_string(), reason };
        let file: PolicyFile = toml::from_str(text).map_err(|e| err(e.to_string().trim().replace('\n', " ")))?;
        for p in &file.model_patterns {
            if p.pattern.trim().is_empty() || p.pattern.len() > 256 {
                return Err(err(format!("model pattern `{}` must be 1 to 256 characters", p.pattern)));
            }
        }
        let mut vendors = Vec::new();
        for v in file.accelerator_vendors {
            let id = u32::from_str_radix(v.vendor_id.trim_start_matches("0x"), 16)
                .map_err(|_| err(format!("accelerator vendor_id `{}` is not hex like 0x19e5", v.vendor_id)))?;
            vendors.push((id, v));
        }
        let skew = file.integrity.max_clock_skew.as_deref().unwrap_or("2m");
        let max_skew =
            gpuattest_proto::units::parse_duration(skew).map_err(|e| err(format!("integrity.max_clock_skew: {e}")))?;
        let silence_intervals = file.integrity.silence_intervals.unwrap_or(6);
        if silence_intervals < 2 {
            return Err(err("integrity.silence_intervals must be at least 2".into()));
        }
        let defaults = Compute::default();
        let efficiency = file.compute.assumed_efficiency.unwrap_or(defaults.assumed_efficiency);
        if !(efficiency > 0.0 && efficiency <= 1.0) {
            return Err(err(format!("compute.assumed_efficiency must be above 0 and at most 1, not {efficiency}")));
        }
        let compare_estimate = match file.compute.compare.as_deref() {
            None | Some("upper_bound") => false,
            Some("estimate") => true,
            Some(other) => return Err(err(format!("compute.compare must be upper_bound or estimate, not `{other}`"))),
        };
        let mut thresholds = file.compute.thresholds.unwrap_or(defaults.thresholds);
        if thresholds.iter().any(|t| !(t.operations.is_finite() && t.operations > 0.0)) {
            return Err(err("compute.thresholds: operations must be positive numbers like 1e26".into()));
        }
        thresholds.sort_by(|a, b| a.operations.total_cmp(&b.operations));
        let compute = Compute { assumed_efficiency: efficiency, compare_estimate, thresholds };
        for (i, m) in file.tenant_mapping.iter().enumerate() {
            m.validate(i + 1).map_err(&err)?;
        }
        for f in &file.model_families {
            f.validate().map_err(&err)?;
        }
        let mut families = file.model_families;
        families.extend(crate::registry::builtin().iter().cloned());
        let resolve = |p: &Path| match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p.to_path_buf(),
        };
        let mut digest_input = text.as_bytes().to_vec();
        let mut lists = Vec::new();
        let mut entries = Vec::new();
        let mut sources = Vec::new();
        for l in &file.screening_lists {
            let path = resolve(l);
            sources.push(path.clone());
            let bytes = read_bounded_file(&path, crate::screening::MAX_LIST_BYTES, "screening list").map_err(&err)?;
            let parsed =
                crate::screening::parse(&path.display().to_string(), &bytes).map_err(|e| err(e.to_string()))?;
            let sha = format!("sha256:{}", gpuattest_proto::hex(&gpuattest_proto::sha256(&bytes)));
            digest_input.extend_from_slice(format!("\n{}\0{sha}", l.display()).as_bytes());
            lists.push(LoadedFile { path: l.display().to_string(), sha256: sha, entries: parsed.len() });
            entries.extend(parsed);
        }
        let threshold = file.screening_threshold.unwrap_or(0.9);
        if !(0.5..=1.0).contains(&threshold) {
            return Err(err(format!("screening_threshold must be between 0.5 and 1, not {threshold}")));
        }
        let concern: Vec<String> = file
            .countries_of_concern
            .unwrap_or_else(|| DEFAULT_COUNTRIES_OF_CONCERN.iter().map(|c| (*c).to_string()).collect());
        if let Some(bad) = concern.iter().find(|c| !(c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))) {
            return Err(err(format!("countries_of_concern: `{bad}` is not an ISO 3166 code like CN")));
        }
        let mut findings = std::collections::BTreeMap::new();
        let mut tenant_ids: Option<std::collections::BTreeSet<String>> = None;
        if let Some(t) = &file.tenants {
            let path = resolve(t);
            sources.push(path.clone());
            let bytes = read_bounded_file(&path, crate::tenants::MAX_TENANTS_BYTES, "tenant file").map_err(&err)?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|e| err(format!("tenant file {}: not UTF-8 ({e})", path.display())))?;
            let tenants =
                crate::tenants::parse(text).map_err(|e| err(format!("tenant file {}: {e}", path.display())))?;
            let sha = format!("sha256:{}", gpuattest_proto::hex(&gpuattest_proto::sha256(&bytes)));
            digest_input.extend_from_slice(format!("\n{}\0{sha}", t.display()).as_bytes());
            tenant_ids = Some(tenants.iter().map(|t| t.id.clone()).collect());
            for tenant in &tenants {
                let f = crate::tenants::assess(tenant, &entries, threshold, &concern);
                if !f.is_empty() {
                    findings.insert(tenant.id.clone(), f);
                }
            }
        }
        let mut attestation = file.attestation.clone();
        attestation.anchors = attestation.anchors.as_deref().map(resolve);
        attestation.golden = attestation.golden.as_deref().map(resolve);
        let evidence = crate::evidence::EvidencePolicy::load(&attestation, |path, limit, what| {
            sources.push(path.to_path_buf());
            let bytes = read_bounded_file(path, limit, what)?;
            let sha = format!("sha256:{}", gpuattest_proto::hex(&gpuattest_proto::sha256(&bytes)));
            digest_input.extend_from_slice(format!("\n{}\0{sha}", path.display()).as_bytes());
            Ok(bytes)
        })
        .map_err(&err)?;
        file.location.validate().map_err(&err)?;
        let mut patterns = file.model_patterns;
        if file.extend_builtin {
            let builtin = Policy::builtin();
            patterns.extend(builtin.patterns.iter().cloned());
            vendors.extend(builtin.accelerator_vendors.iter().cloned());
        }
        Ok(Policy(std::sync::Arc::new(PolicyData {
            patterns,
            accelerator_vendors: vendors,
            integrity: Integrity { max_clock_skew_ms: max_skew.as_millis() as i64, silence_intervals },
            compute,
            tenant_mapping: file.tenant_mapping,
            reopen_decided_flags: file.reopen_decided_flags,
            tenant_ids,
            families,
            findings,
            lists,
            sources,
            evidence,
            location: file.location,
            digest: format!("sha256:{}", gpuattest_proto::hex(&gpuattest_proto::sha256(&digest_input))),
        })))
    }

    /// Loads `<data>/policy.toml` if present, else the built-in policy.
    ///
    /// # Errors
    /// [`PolicyError`] when the file exists but is unreadable or invalid.
    pub fn load_from_data(data_dir: &Path) -> Result<Policy, PolicyError> {
        let path = data_dir.join("policy.toml");
        if !path.exists() {
            return Ok(Policy::builtin());
        }
        Policy::load_file(&path)
    }

    /// Reads and validates a policy file.
    ///
    /// # Errors
    /// [`PolicyError`] naming the file, and the line and key where the TOML is wrong.
    pub fn load_file(path: &Path) -> Result<Policy, PolicyError> {
        let name = path.display().to_string();
        let meta =
            std::fs::metadata(path).map_err(|e| PolicyError { source_name: name.clone(), reason: e.to_string() })?;
        if meta.len() > MAX_POLICY_BYTES as u64 {
            return Err(PolicyError { source_name: name, reason: format!("larger than {MAX_POLICY_BYTES} bytes") });
        }
        let bytes =
            std::fs::read(path).map_err(|e| PolicyError { source_name: name.clone(), reason: e.to_string() })?;
        let text = String::from_utf8(bytes)
            .map_err(|e| PolicyError { source_name: name.clone(), reason: format!("not UTF-8 ({e})") })?;
        Policy::parse_with_base(&text, &name, path.parent())
    }

    /// Host-integrity settings.
    pub fn integrity(&self) -> Integrity {
        self.integrity
    }

    /// The policy's digest, `sha256:<hex>`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The patterns that match a command line, with the model id each matched.
    pub fn match_cmdline<'a>(&'a self, cmdline: &str) -> Vec<(&'a ModelPattern, String)> {
        let candidates = model_candidates(cmdline);
        if candidates.is_empty() {
            return Vec::new();
        }
        // Case-insensitive: each candidate lowered once, a pattern only where it has capitals (the
        // lists' patterns are lower case), rather than both for every pair.
        let lowered: Vec<String> = candidates.iter().map(|c| c.to_ascii_lowercase()).collect();
        let mut out = Vec::new();
        for p in &self.patterns {
            let pattern = if p.pattern.bytes().any(|b| b.is_ascii_uppercase()) {
                std::borrow::Cow::Owned(p.pattern.to_ascii_lowercase())
            } else {
                std::borrow::Cow::Borrowed(p.pattern.as_str())
            };
            if let Some(i) = lowered.iter().position(|c| glob(&pattern, c)) {
                out.push((p, candidates[i].clone()));
            }
        }
        out
    }

    /// The flags one report raises, given where the host's chain stood.
    pub fn evaluate(
        &self,
        host: &HostContext<'_>,
        report: &pb::UsageReport,
        pos: &ChainPosition,
        ctx: &CommitContext,
        receipt: Receipt,
    ) -> Vec<NewFlag> {
        let pre = self.report_flags(host, report, receipt);
        self.commit_flags(host, report, pos, ctx, pre)
    }

    /// Location verdict settings.
    pub fn location(&self) -> &crate::location::LocationPolicy {
        &self.location
    }

    /// The GPU attestation checks this policy configures (anchors, golden values, the chain cache).
    pub fn evidence(&self) -> &crate::evidence::EvidencePolicy {
        &self.evidence
    }

    /// The registry's verdict on a fingerprint, with the operator's families first.
    pub fn evaluate_model(&self, fp: &serde_json::Value) -> crate::registry::Verdict {
        crate::registry::evaluate_with(fp, &self.families)
    }

    /// Tenant and list files this policy read (the policy file itself is the caller's).
    pub fn sources(&self) -> &[std::path::PathBuf] {
        &self.sources
    }

    /// What is known against a tenant (screening matches, parent country).
    pub fn tenant_findings(&self, tenant: &str) -> Vec<Finding> {
        self.findings.get(tenant).cloned().unwrap_or_default()
    }

    /// The screening lists loaded.
    pub fn screening_lists(&self) -> &[LoadedFile] {
        &self.lists
    }

    /// The tenant of a process under this policy's mapping (the host's tenant otherwise).
    pub fn tenant_of(&self, p: &pb::GpuProcess, host_tenant: Option<&str>) -> Option<String> {
        crate::tenants::tenant_of(&self.tenant_mapping, p, host_tenant)
    }

    /// Whether `tenant` is in the tenant file: `None` when the policy names no tenant file.
    pub fn knows_tenant(&self, tenant: &str) -> Option<bool> {
        self.tenant_ids.as_ref().map(|ids| ids.contains(tenant))
    }

    /// Whether any new occurrence re-opens a decided flag (not only evidence of another kind).
    pub fn reopen_decided_flags(&self) -> bool {
        self.reopen_decided_flags
    }

    /// Compute-accounting settings.
    pub fn compute(&self) -> &Compute {
        &self.compute
    }

    /// Fills in a job's operation estimate at the assumed efficiency.
    pub fn estimate(&self, mut j: JobSummary) -> JobSummary {
        j.ops_estimate = j.ops_upper_bound * self.compute.assumed_efficiency;
        j
    }
}

#[cfg(test)]
mod tests;
