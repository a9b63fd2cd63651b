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
use serde_json::json;

use crate::compute::JobSummary;
use crate::store::{ChainPosition, CommitContext, NewFlag};
use crate::tenants::{Finding, TenantMapping};

/// The built-in policy.
pub const DEFAULT_POLICY: &str = include_str!("default-policy.toml");
/// Largest policy file read.
pub const MAX_POLICY_BYTES: usize = 4 * 1024 * 1024;

pub use crate::severity::Severity;

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

    /// The flag for a host whose location is still not verified long after it enrolled.
    pub fn location_unverified_flag(&self, hostname: &str, v: &crate::location::Verdict) -> NewFlag {
        NewFlag {
            rule: "location-unverified".into(),
            severity: Severity::Medium.as_str().into(),
            job_key: "location".into(),
            summary: format!(
                "{hostname}: location not verified {} after enrollment: {}",
                self.location.unverified_after, v.reason
            ),
            pid: None,
            gpu_uuids: Vec::new(),
            evidence: json!({"location": v}),
            policy_digest: self.digest.clone(),
            job_host: None,
            tenant: None,
        }
    }

    /// The flag for a host that has gone silent.
    pub fn silence_flag(&self, hostname: &str, last_seen: i64, now: i64) -> NewFlag {
        NewFlag {
            rule: "host-silent".into(),
            severity: Severity::Medium.as_str().into(),
            job_key: format!("silent-since:{last_seen}"),
            summary: format!(
                "{hostname} has sent no report since {} ({} s): agent stopped, host down, or evidence suppressed",
                crate::timefmt::rfc3339(last_seen),
                (now - last_seen) / 1000
            ),
            pid: None,
            gpu_uuids: Vec::new(),
            evidence: json!({"last_seen": crate::timefmt::rfc3339(last_seen), "checked_at": crate::timefmt::rfc3339(now)}),
            policy_digest: self.digest.clone(),
            job_host: None,
            tenant: None,
        }
    }

    /// The policy's digest, `sha256:<hex>`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The patterns that match a command line, with the model id each matched.
    pub fn match_cmdline<'a>(&'a self, cmdline: &str) -> Vec<(&'a ModelPattern, String)> {
        let candidates = model_candidates(cmdline);
        let mut out = Vec::new();
        for p in &self.patterns {
            if let Some(c) = candidates.iter().find(|c| glob(&p.pattern.to_ascii_lowercase(), &c.to_ascii_lowercase()))
            {
                out.push((p, c.clone()));
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

    /// The rules that need only the report itself (models, accelerators, tenant findings, GPU change
    /// events, clock skew). Ingest runs these on its verifying threads, outside the commit.
    pub fn report_flags(&self, host: &HostContext<'_>, report: &pb::UsageReport, receipt: Receipt) -> Vec<NewFlag> {
        let mut flags = Vec::new();
        for p in &report.processes {
            // What the command line names, and what the weight files it has open say they are.
            let mut hits: Vec<(&ModelPattern, String, String)> = self
                .match_cmdline(&p.cmdline)
                .into_iter()
                .map(|(pat, m)| (pat, m, "command line".to_string()))
                .collect();
            for m in &p.models {
                let names: Vec<&str> = [m.name.as_deref(), m.metadata.get("general.basename").map(String::as_str)]
                    .into_iter()
                    .flatten()
                    .collect();
                for n in names {
                    for (pat, model) in self.match_cmdline(n) {
                        if !hits.iter().any(|(hp, _, _)| hp.pattern == pat.pattern) {
                            hits.push((pat, model, format!("model file {}", m.path)));
                        }
                    }
                }
            }
            for (pattern, model, source) in hits {
                let job_key = crate::compute::job_identity(host.host_id, self.tenant_of(p, host.tenant).as_deref(), p);
                flags.push(NewFlag {
                    job_host: None,
                    tenant: self.tenant_of(p, host.tenant),
                    rule: "model-developer".into(),
                    severity: pattern.severity.as_str().into(),
                    job_key,
                    summary: format!(
                        "pid {} on {} ({}) runs {} — {} model by {} ({}){}",
                        p.pid,
                        host.hostname,
                        gpu_list(&p.gpu_uuids),
                        model,
                        pattern.family,
                        pattern.developer,
                        pattern.country,
                        pattern.listing.as_ref().map(|l| format!("; {l}")).unwrap_or_default()
                    ),
                    pid: Some(p.pid),
                    gpu_uuids: p.gpu_uuids.clone(),
                    evidence: json!({
                        "matched": model,
                        "source": source,
                        "pattern": pattern.pattern,
                        "family": pattern.family,
                        "developer": pattern.developer,
                        "developer_country": pattern.country,
                        "listing": pattern.listing,
                        "cmdline": p.cmdline,
                        "models": p.models.iter().map(|m| json!({
                            "path": m.path, "format": m.format, "header_sha256": m.header_sha256,
                            "architecture": m.architecture, "model_type": m.model_type, "name": m.name,
                            "parameter_count": m.parameter_count,
                        })).collect::<Vec<_>>(),
                        "container_id": p.container_id,
                        "pod_uid": p.pod_uid,
                        "slurm_job_id": p.slurm_job_id,
                        "pod": p.pod.as_ref().map(|k| json!({"namespace": k.namespace, "name": k.name, "owner": k.owner})),
                        "report_seq": report.seq,
                    }),
                    policy_digest: self.digest.clone(),
                });
            }
        }
        // What the weight files themselves are, by the registry (names, tokenizers, config
        // signatures, header hashes): a renamed or re-packaged model is still recognised.
        for p in &report.processes {
            for m in &p.models {
                let v = self.evaluate_model(&crate::registry::fingerprint_json(m));
                if v.severity == Severity::None || v.family == "unknown" {
                    continue;
                }
                // Weak identification (a path alone, a shared architecture) is worth a look, not an alarm.
                let severity = if v.confidence < 0.5 { Severity::Low } else { v.severity };
                let job_key = crate::compute::job_identity(host.host_id, self.tenant_of(p, host.tenant).as_deref(), p);
                flags.push(NewFlag {
                    rule: "model-developer".into(),
                    severity: severity.as_str().into(),
                    job_key: job_key.clone(),
                    // The path stays in the evidence: summaries travel in redacted exports.
                    summary: format!(
                        "pid {} on {} ({}) has {} {} weights open: a {} model by {} ({}), {:.0}% confidence",
                        p.pid,
                        host.hostname,
                        gpu_list(&p.gpu_uuids),
                        if m.format.is_empty() { "model" } else { m.format.as_str() },
                        display_name(m.name.as_deref()),
                        v.family,
                        v.developer.as_deref().unwrap_or("?"),
                        v.developer_country.as_deref().unwrap_or("?"),
                        v.confidence * 100.0
                    ),
                    pid: Some(p.pid),
                    gpu_uuids: p.gpu_uuids.clone(),
                    evidence: json!({
                        "source": format!("model file {}", m.path),
                        "family": v.family,
                        "developer": v.developer,
                        "developer_country": v.developer_country,
                        "registry": v,
                        "model": crate::registry::fingerprint_json(m),
                        "cmdline": p.cmdline,
                        "report_seq": report.seq,
                    }),
                    policy_digest: self.digest.clone(),
                    job_host: None,
                    tenant: self.tenant_of(p, host.tenant),
                });
            }
        }
        for a in &report.accelerators {
            if let Some((_, v)) = self.accelerator_vendors.iter().find(|(id, _)| *id == a.vendor_id) {
                flags.push(NewFlag {
                    rule: "foreign-accelerator".into(),
                    severity: v.severity.as_str().into(),
                    job_key: format!("pci:{}", a.pci_address),
                    summary: format!("{} has a {} {} at PCI {}: {}", host.hostname, v.name, a.product, a.pci_address, v.reason),
                    pid: None,
                    gpu_uuids: Vec::new(),
                    evidence: json!({"pci_address": a.pci_address, "vendor_id": a.vendor_id, "device_id": a.device_id, "product": a.product, "report_seq": report.seq}),
                    policy_digest: self.digest.clone(),
                    job_host: None,
                tenant: None,
                });
            }
        }
        let mut tenants: std::collections::BTreeSet<String> =
            report.processes.iter().filter_map(|p| self.tenant_of(p, host.tenant)).collect();
        tenants.extend(host.tenant.map(str::to_string));
        for t in &tenants {
            for f in self.findings.get(t).into_iter().flatten() {
                flags.push(NewFlag {
                    rule: f.rule.clone(),
                    severity: f.severity.as_str().into(),
                    job_key: format!("tenant:{t}"),
                    summary: f.summary.clone(),
                    pid: None,
                    gpu_uuids: Vec::new(),
                    evidence: f.evidence.clone(),
                    policy_digest: self.digest.clone(),
                    // One flag per tenant and rule, whichever host its jobs run on.
                    job_host: Some(format!("tenant:{t}")),
                    tenant: Some(t.clone()),
                });
            }
        }
        flags.extend(self.gpu_change_flags(host, report));
        let skew = report.agent_time_unix_ms - receipt.received_at;
        if receipt.nonce_fresh && skew.abs() > self.integrity.max_clock_skew_ms {
            flags.push(NewFlag {
                rule: "clock-skew".into(),
                severity: Severity::Medium.as_str().into(),
                job_key: "clock".into(),
                summary: format!(
                    "{}: the agent's clock is {} s {} the collector's (limit {} s); report times from this host are unreliable",
                    host.hostname,
                    skew.abs() / 1000,
                    if skew > 0 { "ahead of" } else { "behind" },
                    self.integrity.max_clock_skew_ms / 1000
                ),
                pid: None,
                gpu_uuids: Vec::new(),
                evidence: json!({"agent_time_unix_ms": report.agent_time_unix_ms, "received_at_unix_ms": receipt.received_at, "report_seq": report.seq}),
                policy_digest: self.digest.clone(),
                job_host: None,
            tenant: None,
            });
        }
        flags
    }

    /// The rules that need the store's view at commit time (chain position, job totals, GPU
    /// locations), added to `flags` from [`Policy::report_flags`]. A job that spans hosts gets one flag
    /// per rule: it lives on the host that first reported the job.
    pub fn commit_flags(
        &self,
        host: &HostContext<'_>,
        report: &pb::UsageReport,
        pos: &ChainPosition,
        ctx: &CommitContext,
        mut flags: Vec<NewFlag>,
    ) -> Vec<NewFlag> {
        for f in flags.iter_mut().filter(|f| f.rule == "model-developer") {
            if let Some(j) = ctx.jobs.iter().find(|j| j.job_key == f.job_key) {
                f.job_host = j.hosts.first().cloned();
                if let Some(o) = f.evidence.as_object_mut() {
                    o.insert("job".into(), json!({"verdict": j.verdict, "gpu_hours": j.gpu_hours, "hosts": j.hosts}));
                }
            }
        }
        flags.extend(self.chain_flags(host, report, pos));
        flags.extend(self.compute_flags(&ctx.jobs));
        for m in &ctx.moved_gpus {
            flags.push(NewFlag {
                rule: "gpu-moved".into(),
                severity: Severity::High.as_str().into(),
                job_key: format!("gpu:{}", m.uuid),
                summary: format!(
                    "GPU {} (serial {}) was reported by host {} until {} and is now on {}: a chip that moves between hosts is a diversion signal; confirm the move was authorised",
                    m.uuid,
                    m.serial,
                    m.from_host,
                    crate::timefmt::rfc3339(m.from_last_seen),
                    host.hostname
                ),
                pid: None,
                gpu_uuids: vec![m.uuid.clone()],
                evidence: json!({"gpu_uuid": m.uuid, "serial": m.serial, "previous_serial": m.previous_serial,
                    "from_host": m.from_host, "from_last_seen": crate::timefmt::rfc3339(m.from_last_seen),
                    "to_host": host.host_id, "report_seq": report.seq}),
                policy_digest: self.digest.clone(),
                job_host: None,
            tenant: None,
            });
        }
        for m in &ctx.moved_devices {
            flags.push(NewFlag {
                rule: "gpu-evidence-moved".into(),
                severity: Severity::High.as_str().into(),
                job_key: format!("device:{}", m.device_serial),
                summary: format!(
                    "the GPU with device identity {} (proven by its own NVIDIA certificate) was on host {} as {} until {} and now attests on {} as {}: the chip moved; confirm the move was authorised",
                    m.device_serial,
                    m.from_host,
                    m.from_gpu_uuid,
                    crate::timefmt::rfc3339(m.from_last_seen),
                    host.hostname,
                    m.gpu_uuid
                ),
                pid: None,
                gpu_uuids: vec![m.gpu_uuid.clone()],
                evidence: json!({"device_serial": m.device_serial, "gpu_uuid": m.gpu_uuid, "from_host": m.from_host,
                    "from_gpu_uuid": m.from_gpu_uuid, "from_last_seen": crate::timefmt::rfc3339(m.from_last_seen),
                    "to_host": host.host_id, "report_seq": report.seq}),
                policy_digest: self.digest.clone(),
                job_host: None,
                tenant: None,
            });
        }
        flags
    }

    /// Location verdict settings.
    pub fn location(&self) -> &crate::location::LocationPolicy {
        &self.location
    }

    /// Flags for a host's location: `location-inconsistent` (high) when a landmark's disc excludes its
    /// registered site, `location-relay-suspected` (high) instead when only GPU-bound discs exclude it
    /// (the host key answers from the site, the chips cannot); `location-record-invalid` (medium) for records that are forged, another host's,
    /// or from an unregistered landmark.
    pub fn location_flags(
        &self,
        host: &HostContext<'_>,
        report: &pb::UsageReport,
        v: &crate::location::Verdict,
        refused: &[String],
    ) -> Vec<NewFlag> {
        let mut flags = Vec::new();
        let flag = |rule: &str, severity: Severity, summary: String, evidence: serde_json::Value| NewFlag {
            rule: rule.into(),
            severity: severity.as_str().into(),
            job_key: "location".into(),
            summary,
            pid: None,
            gpu_uuids: Vec::new(),
            evidence,
            policy_digest: self.digest.clone(),
            job_host: None,
            tenant: None,
        };
        if let Some(why) = &v.relay_suspected {
            flags.push(flag(
                "location-relay-suspected",
                Severity::High,
                format!("{}: a relay is suspected: {why}", host.hostname),
                json!({"location": v, "report_seq": report.seq}),
            ));
        } else if v.verdict == "inconsistent" {
            flags.push(flag(
                "location-inconsistent",
                Severity::High,
                format!("{}: not where it is registered: {}", host.hostname, v.reason),
                json!({"location": v, "report_seq": report.seq}),
            ));
        }
        if !refused.is_empty() {
            flags.push(flag(
                "location-record-invalid",
                Severity::Medium,
                format!("{}: location records refused: {}", host.hostname, refused.join("; ")),
                json!({"refused": refused, "report_seq": report.seq}),
            ));
        }
        flags
    }

    /// The GPU attestation checks this policy configures (anchors, golden values, the chain cache).
    pub fn evidence(&self) -> &crate::evidence::EvidencePolicy {
        &self.evidence
    }

    /// Flags for a report's GPU evidence: evidence that fails to verify or was replayed, contradicts the
    /// report, or differs from the golden values (high); a GPU in confidential-computing mode without
    /// evidence (medium).
    pub fn evidence_flags(
        &self,
        host: &HostContext<'_>,
        report: &pb::UsageReport,
        evidence: &[crate::evidence::GpuEvidence],
    ) -> Vec<NewFlag> {
        use crate::evidence::{Failure, State};
        evidence
            .iter()
            .filter(|e| e.state != State::Verified)
            .map(|e| {
                let (rule, severity, what) = match (e.state, e.failure) {
                    (State::Missing, _) => ("gpu-evidence-missing", Severity::Medium, "sent no attestation evidence"),
                    (_, Some(Failure::Contradicts)) => {
                        ("gpu-evidence-mismatch", Severity::High, "attests to something other than the report says")
                    }
                    (_, Some(Failure::Golden)) => {
                        ("gpu-evidence-golden", Severity::High, "measures differently from the golden values")
                    }
                    _ => ("gpu-evidence-failed", Severity::High, "sent attestation evidence that does not verify"),
                };
                NewFlag {
                    rule: rule.into(),
                    severity: severity.as_str().into(),
                    job_key: format!("gpu:{}", e.gpu_uuid),
                    summary: format!("{}: GPU {} {what}: {}", host.hostname, e.gpu_uuid, e.reasons.join("; ")),
                    pid: None,
                    gpu_uuids: vec![e.gpu_uuid.clone()],
                    evidence: json!({"gpu_evidence": e, "report_seq": report.seq}),
                    policy_digest: self.digest.clone(),
                    job_host: None,
                    tenant: None,
                }
            })
            .collect()
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

    /// A job whose operations reached a threshold: one flag per job, at the highest threshold reached.
    fn compute_flags(&self, jobs: &[JobSummary]) -> Vec<NewFlag> {
        let mut flags = Vec::new();
        for j in jobs {
            let j = self.estimate(j.clone());
            let (figure, what) = if self.compute.compare_estimate {
                (j.ops_estimate, "estimated")
            } else {
                (j.ops_upper_bound, "at most")
            };
            let Some(t) = self.compute.thresholds.iter().rev().find(|t| figure >= t.operations) else {
                continue;
            };
            flags.push(NewFlag {
                rule: "compute-threshold".into(),
                severity: t.severity.as_str().into(),
                job_key: j.job_key.clone(),
                summary: format!(
                    "job {} ({}, {:.0}% confidence) has used {what} {:.2e} operations (threshold {:.0e}) over {:.1} GPU-hours on {} GPUs across {} hosts",
                    j.job_key,
                    j.verdict.kind,
                    j.verdict.confidence * 100.0,
                    figure,
                    t.operations,
                    j.gpu_hours,
                    j.gpus,
                    j.hosts.len()
                ),
                pid: None,
                gpu_uuids: Vec::new(),
                evidence: json!({
                    "threshold": t.operations,
                    "ops_upper_bound": j.ops_upper_bound,
                    "ops_estimate": j.ops_estimate,
                    "assumed_efficiency": self.compute.assumed_efficiency,
                    "gpu_hours": j.gpu_hours,
                    "energy_joules": j.energy_joules,
                    "hosts": j.hosts,
                    "verdict": j.verdict,
                }),
                policy_digest: self.digest.clone(),
                job_host: j.hosts.first().cloned(),
                tenant: j.tenant.clone(),
            });
        }
        flags
    }

    /// The agent's change events: a GPU removed, lost, swapped under the same UUID, or added.
    fn gpu_change_flags(&self, host: &HostContext<'_>, report: &pb::UsageReport) -> Vec<NewFlag> {
        report
            .events
            .iter()
            .filter_map(|e| {
                let (severity, what) = match e.kind.as_str() {
                    "gpu_serial_changed" => {
                        (Severity::High, "reports a different serial under the same UUID: a swapped board or a spoofed identity")
                    }
                    "gpu_disappeared" => (Severity::Medium, "is no longer on the host: removed, or hidden from the driver"),
                    "gpu_lost" => (Severity::Medium, "fell off the bus (NVML: GPU is lost): failed hardware, or tampering"),
                    "gpu_appeared" => (Severity::Low, "appeared on the host"),
                    _ => return None,
                };
                Some(NewFlag {
                    rule: "gpu-change".into(),
                    severity: severity.as_str().into(),
                    job_key: format!("{}:{}", e.kind, e.gpu_uuid),
                    summary: format!("{}: GPU {} {what}{}", host.hostname, e.gpu_uuid, if e.detail.is_empty() { String::new() } else { format!(" ({})", e.detail) }),
                    pid: None,
                    gpu_uuids: vec![e.gpu_uuid.clone()],
                    evidence: json!({"event": e.kind, "gpu_uuid": e.gpu_uuid, "detail": e.detail, "report_seq": report.seq}),
                    policy_digest: self.digest.clone(),
                    job_host: None,
                    tenant: None,
                })
            })
            .collect()
    }

    fn chain_flags(&self, host: &HostContext<'_>, report: &pb::UsageReport, pos: &ChainPosition) -> Vec<NewFlag> {
        let mut flags = Vec::new();
        if report.seq > pos.last_seq + 1 {
            let (first, last) = (pos.last_seq + 1, report.seq - 1);
            flags.push(NewFlag {
                rule: "sequence-gap".into(),
                severity: Severity::Medium.as_str().into(),
                job_key: format!("seq:{first}-{last}"),
                summary: format!("{}: reports {first} to {last} never reached the collector", host.hostname),
                pid: None,
                gpu_uuids: Vec::new(),
                evidence: json!({"missing_first": first, "missing_last": last, "report_seq": report.seq}),
                policy_digest: self.digest.clone(),
                job_host: None,
                tenant: None,
            });
        }
        if let Some(g) = &report.gap {
            flags.push(NewFlag {
                rule: "sequence-gap".into(),
                severity: Severity::Medium.as_str().into(),
                job_key: format!("seq:{}-{}", g.first_seq, g.last_seq),
                summary: format!(
                    "{}: the agent dropped reports {} to {} before delivery ({})",
                    host.hostname, g.first_seq, g.last_seq, g.reason
                ),
                pid: None,
                gpu_uuids: Vec::new(),
                evidence: json!({"missing_first": g.first_seq, "missing_last": g.last_seq, "agent_gap_record": report.seq, "reason": g.reason}),
                policy_digest: self.digest.clone(),
                job_host: None,
            tenant: None,
            });
        }
        let expected = pos.last_hash.as_deref().unwrap_or(&[]);
        if report.seq == pos.last_seq + 1 && pos.last_seq > 0 && report.prev_report_sha256 != expected {
            flags.push(NewFlag {
                rule: "chain-break".into(),
                severity: Severity::High.as_str().into(),
                job_key: format!("seq:{}", report.seq),
                summary: format!(
                    "{}: report {} does not chain to report {} (previous-report hash differs): history was rewritten or a second agent uses this key",
                    host.hostname, report.seq, pos.last_seq
                ),
                pid: None,
                gpu_uuids: Vec::new(),
                evidence: json!({
                    "report_seq": report.seq,
                    "prev_report_sha256": gpuattest_proto::hex(&report.prev_report_sha256),
                    "stored_hash": gpuattest_proto::hex(expected),
                }),
                policy_digest: self.digest.clone(),
                job_host: None,
            tenant: None,
            });
        }
        flags
    }
}

/// A model name fit for a summary: a Hugging Face id as it is, a local path cut to its last part (a
/// file's `_name_or_path` may be a directory on the tenant's disk).
fn display_name(name: Option<&str>) -> &str {
    match name {
        None | Some("") => "unnamed",
        Some(n) if n.starts_with('/') || n.matches('/').count() > 1 => {
            n.rsplit('/').find(|p| !p.is_empty()).unwrap_or("unnamed")
        }
        Some(n) => n,
    }
}

/// `GPU-a` / `GPU-a, GPU-b` / `GPU-a and 7 more GPUs`: short enough for a table row.
fn gpu_list(uuids: &[String]) -> String {
    match uuids {
        [] => "no GPU".into(),
        [one] => one.clone(),
        [a, b] => format!("{a}, {b}"),
        [first, rest @ ..] => format!("{first} and {} more GPUs", rest.len()),
    }
}

/// Model-id candidates in a command line: every `org/name` tail of each word, and Hugging Face cache
/// directory names (`models--org--name`) turned back into `org/name`.
pub fn model_candidates(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in cmdline.split(|c: char| c.is_whitespace() || matches!(c, '=' | ',' | '"' | '\'' | ';')) {
        if word.is_empty() || word.len() > 1024 {
            continue;
        }
        let parts: Vec<&str> = word.split('/').filter(|s| !s.is_empty()).collect();
        for w in parts.windows(2) {
            out.push(format!("{}/{}", w[0], w[1]));
        }
        for part in &parts {
            if let Some(rest) = part.strip_prefix("models--") {
                let mut it = rest.splitn(2, "--");
                if let (Some(org), Some(name)) = (it.next(), it.next()) {
                    out.push(format!("{org}/{name}"));
                }
            }
        }
    }
    out
}

/// Glob match with `*` (any run) and `?` (one character), iterative with backtracking on the last `*`.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_policy_parses() {
        let p = Policy::builtin();
        assert!(p.digest().starts_with("sha256:"));
        assert!(p.patterns.len() >= 10);
    }

    #[test]
    fn operator_file_extends_or_replaces_the_builtin_patterns() {
        let own = "[[model_patterns]]\npattern = \"acme-rival/*\"\nfamily = \"Rival\"\ndeveloper = \"Rival Labs\"\ncountry = \"XX\"\nseverity = \"medium\"\n";
        let replaced = Policy::parse(own, "t").expect("parse");
        assert_eq!(replaced.patterns.len(), 1);
        assert!(replaced.accelerator_vendors.is_empty());
        let extended = Policy::parse(&format!("extend_builtin = true\n{own}"), "t").expect("parse");
        assert_eq!(extended.patterns.len(), 1 + Policy::builtin().patterns.len());
        assert_eq!(extended.patterns[0].family, "Rival", "the operator's own patterns come first");
        assert_eq!(extended.accelerator_vendors.len(), Policy::builtin().accelerator_vendors.len());
    }

    #[test]
    fn referenced_tenant_and_list_files_are_validated_and_digested() {
        let d = tempfile::tempdir().expect("tmp");
        let w = |name: &str, text: &[u8]| std::fs::write(d.path().join(name), text).expect("write");
        let parse = |text: &str| Policy::parse_with_base(text, "p.toml", Some(d.path()));
        w("t.toml", b"[[tenant]]\nid = \"a\"\nlegal_name = \"A\"\nparent_country = \"CN\"\n");
        w("l.csv", b"name,source\nEvil Corp,ops\n");
        let ok = parse("tenants = \"t.toml\"\nscreening_lists = [\"l.csv\"]\n").expect("ok");
        assert_eq!(ok.screening_lists()[0].entries, 1);
        assert_eq!(ok.findings["a"][0].rule, "tenant-parent-country");
        assert_eq!(ok.sources().len(), 2);
        w("t.toml", b"[[tenant]]\nid = \"a\"\nlegal_name = \"A\"\nparent_country = \"RU\"\n");
        let changed = parse("tenants = \"t.toml\"\nscreening_lists = [\"l.csv\"]\n").expect("ok");
        assert_ne!(ok.digest(), changed.digest(), "the tenant file is part of the digest");

        let e = parse("tenants = \"missing.toml\"\n").expect_err("missing").to_string();
        assert!(e.contains("p.toml") && e.contains("missing.toml"), "{e}");
        w("bad.toml", b"[[tenant]]\nid = \"a\"\nlegal_nam = \"A\"\n");
        let e = parse("tenants = \"bad.toml\"\n").expect_err("key").to_string();
        assert!(e.contains("bad.toml") && e.contains("legal_nam") && e.contains("line 3"), "{e}");
        w("latin.toml", b"\xff\xfe");
        assert!(parse("tenants = \"latin.toml\"\n").expect_err("enc").to_string().contains("UTF-8"));
        w("empty.csv", b"");
        assert!(parse("screening_lists = [\"empty.csv\"]\n").expect_err("empty").to_string().contains("empty"));
        let e = parse("[[tenant_mapping]]\nkubernetes_label = \"x\"\ntenant = \"y\"\n").expect_err("map").to_string();
        assert!(e.contains("tenant_mapping 1"), "{e}");
        assert!(parse("countries_of_concern = [\"China\"]\n").expect_err("cc").to_string().contains("China"));
        assert!(parse("screening_threshold = 0.1\n").expect_err("thr").to_string().contains("screening_threshold"));
        assert!(
            parse("[compute]\nassumed_efficiency = 2.0\n").expect_err("eff").to_string().contains("assumed_efficiency")
        );
        assert!(parse("[compute]\ncompare = \"max\"\n").expect_err("cmp").to_string().contains("compute.compare"));
    }

    #[test]
    fn weight_files_are_identified_by_the_registry_and_operator_families() {
        let host = HostContext { host_id: "h", hostname: "n", tenant: None };
        let pos = ChainPosition { last_seq: 0, last_hash: None };
        let model = |name: &str, meta: &[(&str, &str)], sha: &str| pb::ModelFingerprint {
            path: "/data/ckpt/model.safetensors".into(),
            format: "safetensors".into(),
            header_sha256: sha.into(),
            name: Some(name.into()),
            metadata: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        let report = |m: pb::ModelFingerprint| pb::UsageReport {
            seq: 1,
            processes: vec![pb::GpuProcess {
                pid: 9,
                cmdline: "python3 serve.py".into(),
                models: vec![m],
                ..Default::default()
            }],
            ..Default::default()
        };
        let rules = |p: &Policy, r: &pb::UsageReport| -> Vec<(String, String)> {
            p.evaluate(&host, r, &pos, &CommitContext::default(), Receipt { received_at: 0, nonce_fresh: false })
                .into_iter()
                .map(|f| (f.rule, f.severity))
                .collect()
        };
        let p = Policy::builtin();
        // Renamed, but the config signature is DeepSeek-V3's.
        let sig =
            model("our-internal-model", &[("config.vocab_size", "129280"), ("config.n_routed_experts", "256")], "");
        assert_eq!(rules(&p, &report(sig)), [("model-developer".to_string(), "high".to_string())]);
        // A Llama file is not flagged.
        assert!(rules(&p, &report(model("meta-llama/Llama-3.1-8B", &[], ""))).is_empty());
        // The operator knows this exact file.
        let sha = "ab".repeat(32);
        let own = format!(
            "extend_builtin = true\n[[model_families]]\nname = \"Rival\"\ndeveloper = \"Rival Labs\"\ncountry = \"CN\"\nheader_sha256 = [\"{sha}\"]\n"
        );
        let p = Policy::parse(&own, "t").expect("parse");
        let r = report(model("finetune-final", &[], &sha));
        assert_eq!(rules(&p, &r), [("model-developer".to_string(), "high".to_string())]);
        assert_eq!(p.evaluate_model(&crate::registry::fingerprint_json(&r.processes[0].models[0])).family, "Rival");
        let bad = "[[model_families]]\nname = \"X\"\ndeveloper = \"Y\"\ncountry = \"CN\"\n";
        assert!(Policy::parse(bad, "t").expect_err("no signal").to_string().contains("at least one"));
    }

    #[test]
    fn summaries_do_not_carry_local_paths() {
        assert_eq!(display_name(Some("deepseek-ai/DeepSeek-V3")), "deepseek-ai/DeepSeek-V3");
        assert_eq!(display_name(Some("/home/alice/private/ckpt/")), "ckpt");
        assert_eq!(display_name(Some("models/org/name")), "name");
        assert_eq!(display_name(None), "unnamed");
    }

    #[test]
    fn glob_cases() {
        assert!(glob("deepseek-ai/*", "deepseek-ai/deepseek-v3"));
        assert!(!glob("deepseek-ai/*", "deepseek-ai"));
        assert!(glob("tencent/hunyuan*", "tencent/hunyuan-large"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*", ""));
        assert!(!glob("a*b*c", &"ab".repeat(2000)));
    }

    #[test]
    fn cmdline_matches() {
        let p = Policy::builtin();
        let hits = p.match_cmdline("torchrun --nproc-per-node 8 train.py --model deepseek-ai/DeepSeek-V3 --lr 1e-5");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].1, "deepseek-ai/DeepSeek-V3");
        assert_eq!(hits[0].0.severity, Severity::High);
        let hits =
            p.match_cmdline("vllm serve /root/.cache/huggingface/hub/models--THUDM--glm-4-9b-chat/snapshots/abc");
        assert_eq!(hits[0].0.family, "GLM / ChatGLM");
        let hits = p.match_cmdline("python serve.py --model=/models/Qwen/Qwen2.5-7B-Instruct");
        assert_eq!(hits[0].0.family, "Qwen");
        assert!(p.match_cmdline("vllm serve meta-llama/Llama-3.1-8B-Instruct").is_empty());
        assert!(p.match_cmdline("python train.py --notes deepseek-ai").is_empty());
    }

    fn fresh(received_at: i64) -> Receipt {
        Receipt { received_at, nonce_fresh: true }
    }

    #[test]
    fn clock_skew_is_flagged_only_on_fresh_reports() {
        let p = Policy::builtin();
        let host = HostContext { host_id: "h", hostname: "n", tenant: None };
        let r = pb::UsageReport { seq: 1, agent_time_unix_ms: 1_000_000, ..Default::default() };
        let pos = ChainPosition { last_seq: 0, last_hash: None };
        assert!(p.evaluate(&host, &r, &pos, &CommitContext::default(), fresh(1_000_000 + 60_000)).is_empty());
        let f = p.evaluate(&host, &r, &pos, &CommitContext::default(), fresh(1_000_000 + 600_000));
        assert_eq!((f.len(), f[0].rule.as_str()), (1, "clock-skew"));
        assert!(f[0].summary.contains("600 s behind"), "{}", f[0].summary);
        // A spooled report delivered late is not skew.
        assert!(
            p.evaluate(
                &host,
                &r,
                &pos,
                &CommitContext::default(),
                Receipt { received_at: 9_000_000, nonce_fresh: false }
            )
            .is_empty()
        );
    }

    #[test]
    fn chain_rules() {
        let p = Policy::builtin();
        let host = HostContext { host_id: "h", hostname: "n", tenant: None };
        let mut r = pb::UsageReport { seq: 5, prev_report_sha256: vec![1; 32], ..Default::default() };
        let gap = p.evaluate(
            &host,
            &r,
            &ChainPosition { last_seq: 2, last_hash: Some(vec![1; 32]) },
            &CommitContext::default(),
            fresh(0),
        );
        assert_eq!(gap.len(), 1);
        assert_eq!((gap[0].rule.as_str(), gap[0].job_key.as_str()), ("sequence-gap", "seq:3-4"));
        r.seq = 3;
        let brk = p.evaluate(
            &host,
            &r,
            &ChainPosition { last_seq: 2, last_hash: Some(vec![2; 32]) },
            &CommitContext::default(),
            fresh(0),
        );
        assert_eq!(brk[0].rule, "chain-break");
        assert!(
            p.evaluate(
                &host,
                &r,
                &ChainPosition { last_seq: 2, last_hash: Some(vec![1; 32]) },
                &CommitContext::default(),
                fresh(0)
            )
            .is_empty()
        );
    }

    #[test]
    fn hostile_policies_are_refused_with_line_and_key() {
        let e =
            Policy::parse("[[model_patterns]]\npattern = \"x/*\"\nfamly = \"x\"\n", "p.toml").expect_err("unknown key");
        assert!(e.to_string().contains("famly") && e.to_string().contains("p.toml"), "{e}");
        let e = Policy::parse("[[model_patterns]]\npattern = 5\n", "p.toml").expect_err("type");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = Policy::parse(
            "[[model_patterns]]\npattern = \"\"\nfamily=\"a\"\ndeveloper=\"b\"\ncountry=\"CN\"\nseverity=\"high\"\n",
            "p.toml",
        )
        .expect_err("empty pattern");
        assert!(e.to_string().contains("1 to 256"), "{e}");
        let e = Policy::parse(
            "[[model_patterns]]\npattern = \"a/*\"\nfamily=\"a\"\ndeveloper=\"b\"\ncountry=\"CN\"\nseverity=\"severe\"\n",
            "p.toml",
        )
        .expect_err("bad severity");
        assert!(e.to_string().contains("severity") || e.to_string().contains("severe"), "{e}");
        assert!(Policy::parse("", "empty").is_ok());
    }
}
