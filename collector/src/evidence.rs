//! GPU attestation evidence in reports: each GPU's SPDM report verified (`gpuattest-evidence`) over the
//! nonce the collector issued to that host, single use, then compared with what the same report says
//! through NVML (driver and VBIOS versions, the GPU listed) and with the operator's golden
//! measurements. The result per GPU is a [`GpuEvidence`] the store keeps beside the report and the
//! policy turns into flags.
//!
//! Freshness: the collector issues a nonce per stream and rotates it ([`NONCE_ROTATION`]); every
//! nonce is recorded with the host it was issued to (`attestation_nonces`). Evidence counts only over
//! a nonce issued to this host, never used by another report; a report carrying evidence marks its
//! nonce used when it commits, so the same evidence sent again is refused as replayed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use gpuattest_evidence::Verifier;
use gpuattest_proto::pb;
use serde::{Deserialize, Serialize};

/// How often a stream's nonce is replaced, so a long-lived stream re-attests its GPUs.
pub const NONCE_ROTATION: std::time::Duration = std::time::Duration::from_secs(3600);

/// Largest golden-measurements file read.
pub const MAX_GOLDEN_BYTES: u64 = 4 * 1024 * 1024;
/// Largest anchors file read.
pub const MAX_ANCHORS_BYTES: u64 = 256 * 1024;

/// What a GPU's evidence showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Every mandatory check passed, and nothing contradicts the report.
    Verified,
    /// The evidence does not verify, was replayed, or contradicts the report or the golden values.
    Failed,
    /// The GPU is in confidential-computing mode and sent no evidence.
    Missing,
}

impl State {
    /// `verified`, `failed` or `missing`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Verified => "verified",
            State::Failed => "failed",
            State::Missing => "missing",
        }
    }
}

/// Why evidence failed, for the flag it raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The report, signature, chain or nonce did not verify.
    Unverified,
    /// The nonce was not issued to this host, or another report used it.
    Replayed,
    /// Verified, but its driver or VBIOS version or its GPU contradicts the report's NVML fields.
    Contradicts,
    /// Verified, but a measurement differs from the operator's golden value.
    Golden,
}

/// One GPU's evidence in one report, as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuEvidence {
    /// The GPU, as the report names it.
    pub gpu_uuid: String,
    /// What the evidence showed.
    pub state: State,
    /// For a failure: which kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Sentences: what failed or why there is none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The verifier's checks, by NVIDIA's claim names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, bool>,
    /// The device's identity from its certificate (NVIDIA's `ueid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_serial: Option<String>,
    /// The certificate's hardware model (NVIDIA's `hwmodel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hwmodel: Option<String>,
    /// The driver version the GPU signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// The VBIOS version the GPU signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vbios_version: Option<String>,
    /// The nonce the evidence answers, hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nonce: String,
    /// Measurement indexes compared with golden values, where a golden set applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden_compared: Option<usize>,
}

impl GpuEvidence {
    fn missing(gpu_uuid: &str, reason: String) -> GpuEvidence {
        GpuEvidence {
            gpu_uuid: gpu_uuid.to_string(),
            state: State::Missing,
            failure: None,
            reasons: vec![reason],
            checks: BTreeMap::new(),
            device_serial: None,
            hwmodel: None,
            driver_version: None,
            vbios_version: None,
            nonce: String::new(),
            golden_compared: None,
        }
    }

    fn fail(&mut self, failure: Failure, reason: String) {
        if self.state != State::Failed {
            self.failure = Some(failure);
        }
        self.state = State::Failed;
        self.reasons.push(reason);
    }
}

/// Where a report's nonce stands in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceStanding {
    /// Issued to this host at (Unix ms), and used by no report, or by this one (`used_by`).
    Issued {
        /// When.
        at: i64,
        /// The report that used it, where one did.
        used_by: Option<u64>,
    },
    /// Never issued to this host.
    Unknown,
}

/// The expected measurements for one (GPU model, VBIOS version, driver version).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenSet {
    /// The GPU's name as NVML reports it (`NVIDIA H100 80GB HBM3`).
    pub gpu_model: String,
    /// As `nvidia-smi` writes it (`96.00.9F.00.01`).
    pub vbios_version: String,
    /// As NVML reports it (`550.90.07`).
    pub driver_version: String,
    /// Measurement index -> expected value, hex.
    pub measurements: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GoldenFile {
    #[serde(default)]
    golden: Vec<GoldenSet>,
}

/// The `[attestation]` section of a policy file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationFile {
    /// PEM roots trusted beside NVIDIA's pinned Device Identity CA (tests, private CAs).
    pub anchors: Option<std::path::PathBuf>,
    /// A TOML file of `[[golden]]` sets.
    pub golden: Option<std::path::PathBuf>,
}

/// The evidence checks a policy configures: trusted roots (with the chain cache) and golden values.
#[derive(Clone)]
pub struct EvidencePolicy {
    /// The verifier, its anchors and its chain cache.
    pub verifier: Arc<Verifier>,
    /// Golden measurement sets.
    pub golden: Vec<GoldenSet>,
    /// Anchors' fingerprints, hex, for `policy show`.
    pub anchors: Vec<String>,
}

impl std::fmt::Debug for EvidencePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvidencePolicy").field("anchors", &self.anchors).field("golden", &self.golden.len()).finish()
    }
}

impl Default for EvidencePolicy {
    fn default() -> Self {
        EvidencePolicy { verifier: Arc::new(Verifier::new(Vec::new())), golden: Vec::new(), anchors: Vec::new() }
    }
}

impl EvidencePolicy {
    /// Reads the section's files through `read` (a bounded reader that also records the file as a
    /// policy source).
    ///
    /// # Errors
    /// A sentence naming the file and what is wrong in it.
    pub fn load(
        section: &AttestationFile,
        mut read: impl FnMut(&Path, u64, &str) -> Result<Vec<u8>, String>,
    ) -> Result<EvidencePolicy, String> {
        let mut fingerprints = Vec::new();
        if let Some(a) = &section.anchors {
            let pem = read(a, MAX_ANCHORS_BYTES, "attestation anchors")?;
            fingerprints = Verifier::anchors_from_pem(&pem)
                .map_err(|e| format!("attestation anchors {}: {e}; give PEM root certificates", a.display()))?;
        }
        let mut golden = Vec::new();
        if let Some(g) = &section.golden {
            let bytes = read(g, MAX_GOLDEN_BYTES, "golden measurements")?;
            let text = std::str::from_utf8(&bytes).map_err(|e| format!("golden measurements {}: {e}", g.display()))?;
            let file: GoldenFile = toml::from_str(text).map_err(|e| {
                format!("golden measurements {}: {}", g.display(), e.to_string().trim().replace('\n', " "))
            })?;
            for s in &file.golden {
                for (k, v) in &s.measurements {
                    let ok_index = k.parse::<u8>().is_ok_and(|i| i > 0);
                    let ok_value = v.len() % 2 == 0 && !v.is_empty() && v.bytes().all(|b| b.is_ascii_hexdigit());
                    if !ok_index || !ok_value {
                        return Err(format!(
                            "golden measurements {}: set for {} / {} / {}: index `{k}` must be 1..255 and its value hex",
                            g.display(),
                            s.gpu_model,
                            s.vbios_version,
                            s.driver_version
                        ));
                    }
                }
            }
            golden = file.golden;
        }
        Ok(EvidencePolicy {
            anchors: fingerprints.iter().map(|f| gpuattest_proto::hex(f)).collect(),
            verifier: Arc::new(Verifier::new(fingerprints)),
            golden,
        })
    }

    /// Checks every GPU's evidence in `report` (already signature-verified), given where its nonce
    /// stands and the time now (Unix ms). CC off, or no evidence and none due: nothing.
    pub fn check(&self, report: &pb::UsageReport, nonce: NonceStanding, now_ms: i64) -> Vec<GpuEvidence> {
        let cc_on = report.confidential_compute.as_ref().is_some_and(|c| c.enabled == Some(true));
        let mut out: Vec<GpuEvidence> =
            report.attestations.iter().map(|a| self.one(report, a, nonce, now_ms)).collect();
        if !cc_on {
            return out;
        }
        if report.attestations.is_empty() {
            // The agent attests once per nonce, in its first report after the nonce arrives; a nonce
            // still unused a while after it was issued means the GPUs gave nothing.
            let grace = 60_000i64.max(2 * i64::try_from(report.interval_ms).unwrap_or(i64::MAX / 4));
            if let NonceStanding::Issued { at, used_by: None } = nonce
                && report.window_start_unix_ms > at.saturating_add(grace)
            {
                return report
                    .gpus
                    .iter()
                    .filter(|g| !g.lost)
                    .map(|g| {
                        GpuEvidence::missing(
                            &g.uuid,
                            format!(
                                "in confidential-computing mode, but no evidence over the nonce issued at {}",
                                crate::timefmt::rfc3339(at)
                            ),
                        )
                    })
                    .collect();
            }
            return out;
        }
        for g in &report.gpus {
            if !g.lost && !report.attestations.iter().any(|a| a.gpu_uuid == g.uuid) {
                out.push(GpuEvidence::missing(
                    &g.uuid,
                    "in confidential-computing mode, but the report carries no evidence for this GPU".into(),
                ));
            }
        }
        out
    }

    fn one(&self, report: &pb::UsageReport, a: &pb::GpuAttestation, nonce: NonceStanding, now_ms: i64) -> GpuEvidence {
        if a.report.is_empty() {
            let why = if a.error.is_empty() { "no attestation report".to_string() } else { a.error.clone() };
            return GpuEvidence::missing(&a.gpu_uuid, format!("the driver gave no evidence: {why}"));
        }
        // The nonce it must answer: the report's, and only while it is this host's and unused.
        let mut replay = None;
        let expected: &[u8] = match nonce {
            NonceStanding::Issued { used_by: Some(seq), .. } if seq != report.seq => {
                replay = Some(format!("its nonce was already used by report {seq}: replayed evidence"));
                &[]
            }
            NonceStanding::Issued { at, .. } if at > report.window_end_unix_ms + 60_000 => {
                replay = Some("its nonce was issued after the report's window ended".into());
                &[]
            }
            NonceStanding::Issued { .. } => &report.collector_nonce,
            NonceStanding::Unknown => {
                replay = Some("its nonce was never issued to this host".into());
                &[]
            }
        };
        let chain = if a.attestation_cert_chain.is_empty() { &a.cert_chain } else { &a.attestation_cert_chain };
        let v = self.verifier.verify(&a.report, chain, expected, now_ms / 1000);
        let mut e = GpuEvidence {
            gpu_uuid: a.gpu_uuid.clone(),
            state: State::Verified,
            failure: None,
            reasons: Vec::new(),
            checks: v.checks.iter().map(|(k, b)| ((*k).to_string(), *b)).collect(),
            device_serial: v.device_serial.clone(),
            hwmodel: v.hwmodel.clone(),
            driver_version: v.driver_version.clone(),
            vbios_version: v.vbios_version.clone(),
            nonce: v.nonce.clone(),
            golden_compared: None,
        };
        if let Some(r) = replay {
            e.fail(Failure::Replayed, r);
        }
        if !v.valid {
            let replayed = e.failure == Some(Failure::Replayed);
            for r in v.errors.iter().filter(|r| !(replayed && r.contains("nonce"))) {
                e.fail(Failure::Unverified, r.clone());
            }
            if e.state != State::Failed {
                e.fail(Failure::Unverified, "the evidence does not verify".into());
            }
            return e;
        }
        if e.state == State::Failed {
            return e;
        }
        let gpu = report.gpus.iter().find(|g| g.uuid == a.gpu_uuid);
        let Some(gpu) = gpu else {
            e.fail(Failure::Contradicts, format!("the report lists no GPU {}", a.gpu_uuid));
            return e;
        };
        let nvml_driver = report.host.as_ref().map(|h| h.driver_version.as_str()).unwrap_or_default();
        if let Some(d) = &v.driver_version
            && !nvml_driver.is_empty()
            && d != nvml_driver
        {
            e.fail(Failure::Contradicts, format!("the GPU signed driver {d}; NVML reported {nvml_driver}"));
        }
        if let Some(b) = &v.vbios_version
            && !gpu.vbios_version.is_empty()
            && !b.eq_ignore_ascii_case(&gpu.vbios_version)
        {
            e.fail(Failure::Contradicts, format!("the GPU signed VBIOS {b}; NVML reported {}", gpu.vbios_version));
        }
        if let Some(set) = self.golden.iter().find(|s| {
            s.gpu_model == gpu.name
                && v.vbios_version.as_deref().is_some_and(|b| b.eq_ignore_ascii_case(&s.vbios_version))
                && v.driver_version.as_deref() == Some(s.driver_version.as_str())
        }) {
            e.golden_compared = Some(set.measurements.len());
            for (index, want) in &set.measurements {
                let got = v.measurements.iter().find(|(i, _)| i.to_string() == *index).map(|(_, h)| h.as_str());
                if !got.is_some_and(|g| g.eq_ignore_ascii_case(want)) {
                    e.fail(
                        Failure::Golden,
                        format!("measurement {index} is {}, the golden value is {want}", got.unwrap_or("absent")),
                    );
                }
            }
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_with(att: pb::GpuAttestation) -> pb::UsageReport {
        pb::UsageReport {
            seq: 5,
            window_end_unix_ms: 2_000_000,
            collector_nonce: vec![7; 32],
            confidential_compute: Some(pb::ConfidentialCompute { enabled: Some(true), ..Default::default() }),
            gpus: vec![
                pb::Gpu { uuid: "GPU-a".into(), ..Default::default() },
                pb::Gpu { uuid: "GPU-b".into(), ..Default::default() },
            ],
            attestations: vec![att],
            ..Default::default()
        }
    }

    #[test]
    fn nonces_are_single_use_and_this_hosts_own() {
        let p = EvidencePolicy::default();
        let r = report_with(pb::GpuAttestation {
            gpu_uuid: "GPU-a".into(),
            report: b"junk".to_vec(),
            ..Default::default()
        });
        let used = p.check(&r, NonceStanding::Issued { at: 1_000_000, used_by: Some(4) }, 2_000_000);
        assert_eq!((used[0].state, used[0].failure), (State::Failed, Some(Failure::Replayed)), "{used:?}");
        assert!(used[0].reasons[0].contains("report 4"));
        let unknown = p.check(&r, NonceStanding::Unknown, 2_000_000);
        assert_eq!(unknown[0].failure, Some(Failure::Replayed));
        let late = p.check(&r, NonceStanding::Issued { at: 9_000_000, used_by: None }, 2_000_000);
        assert_eq!(late[0].failure, Some(Failure::Replayed));
        // Issued and unused, but the bytes are not a report: unverified.
        let fresh = p.check(&r, NonceStanding::Issued { at: 1_000_000, used_by: None }, 2_000_000);
        assert_eq!(fresh[0].failure, Some(Failure::Unverified), "{fresh:?}");
        // GPU-b sent nothing while CC is on.
        assert_eq!((fresh[1].gpu_uuid.as_str(), fresh[1].state), ("GPU-b", State::Missing));
    }

    #[test]
    fn a_driver_error_is_missing_evidence_and_cc_off_checks_nothing() {
        let p = EvidencePolicy::default();
        let mut r = report_with(pb::GpuAttestation {
            gpu_uuid: "GPU-a".into(),
            error: "attestation report: not supported".into(),
            ..Default::default()
        });
        let e = p.check(&r, NonceStanding::Unknown, 0);
        assert_eq!(e[0].state, State::Missing);
        assert!(e[0].reasons[0].contains("not supported"));
        r.attestations.clear();
        assert!(p.check(&r, NonceStanding::Unknown, 0).is_empty());
        // No evidence at all, a minute after the nonce was issued and never used: both GPUs missing.
        r.window_start_unix_ms = 2_000_000;
        assert!(p.check(&r, NonceStanding::Issued { at: 1_990_000, used_by: None }, 0).is_empty(), "not yet due");
        let due = p.check(&r, NonceStanding::Issued { at: 1_000_000, used_by: None }, 0);
        assert_eq!(due.iter().map(|e| e.state).collect::<Vec<_>>(), vec![State::Missing, State::Missing]);
        assert!(p.check(&r, NonceStanding::Issued { at: 1_000_000, used_by: Some(3) }, 0).is_empty(), "attested");
        r.confidential_compute = None;
        assert!(p.check(&r, NonceStanding::Issued { at: 1_000_000, used_by: None }, 0).is_empty(), "CC off");
    }

    #[test]
    fn golden_files_are_validated() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("golden.toml");
        let read = |p: &Path, _: u64, _: &str| std::fs::read(p).map_err(|e| e.to_string());
        std::fs::write(&path, "[[golden]]\ngpu_model = \"H\"\nvbios_version = \"1\"\ndriver_version = \"2\"\nmeasurements = { \"0\" = \"ab\" }\n")
            .expect("write");
        let section = AttestationFile { anchors: None, golden: Some(path.clone()) };
        assert!(EvidencePolicy::load(&section, read).expect_err("index 0").contains("index `0`"));
        std::fs::write(&path, "[[golden]]\ngpu_model = \"H\"\nvbios_version = \"1\"\ndriver_version = \"2\"\nmeasurements = { \"3\" = \"abc\" }\n")
            .expect("write");
        assert!(EvidencePolicy::load(&section, read).is_err(), "odd hex");
        std::fs::write(&path, "[[golden]]\ngpu_model = \"H\"\nvbios_version = \"1\"\ndriver_version = \"2\"\nmeasurements = { \"3\" = \"abcd\" }\n")
            .expect("write");
        assert_eq!(EvidencePolicy::load(&section, read).expect("valid").golden.len(), 1);
    }
}
