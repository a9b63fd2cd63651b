//! Issue 18: GPU attestation evidence from the simulated NVML library in confidential-computing mode,
//! in NVIDIA's real SPDM format, signed by per-GPU P-384 keys chained to a test root made for the run
//! (never NVIDIA's). The simulator's corruption knobs drive every evidence flag through real agent
//! and collector processes; the CLI verifies the same bytes offline.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use gpuattest_proto::pb;
use gpuattest_tests::raw::{report, sign};
use gpuattest_tests::{Collector, bin, device_serial, flags, host, make_gpu_pki, run, sim_lib, token, wait_for};
use serde_json::{Value, json};

use crate::streaming::{node, reports, start_agent};

const MODEL: &str = "NVIDIA H100 80GB HBM3";
const VBIOS: &str = "96.00.99.00.01";
const DRIVER: &str = "550.90.07";

/// Every corruption the simulator knows, after one honest GPU; the first six fail verification itself.
const FAULTS: [Option<&str>; 8] = [
    None,
    Some("bad_signature"),
    Some("wrong_nonce"),
    Some("truncated"),
    Some("foreign_chain"),
    Some("unknown_root"),
    Some("wrong_driver"),
    Some("wrong_measurement"),
];

fn uuid(i: u32) -> String {
    format!("GPU-e0e0e0e0-0000-4000-8000-{i:012x}")
}

/// A CC scenario whose GPUs carry `faults` (None: honest), with keys and chains in `pki`.
fn scenario(seed: &str, pki: &Path, gpus: &[(String, Option<&str>)]) -> String {
    let gpus: Vec<Value> = gpus
        .iter()
        .map(|(u, f)| json!({"uuid": u, "name": MODEL, "vbios_version": VBIOS, "attestation_fault": f}))
        .collect();
    json!({"seed": seed, "driver_version": DRIVER,
        "confidential_compute": {"evidence_dir": pki.display().to_string()}, "gpus": gpus})
    .to_string()
}

/// A policy trusting the test root, with the simulator's golden measurements.
fn policy(dir: &Path, root: &Path) -> std::path::PathBuf {
    let golden: Vec<String> = (1..=gpuattest_nvml_sim::spdm::MEASUREMENT_BLOCKS)
        .map(|i| {
            format!("\"{i}\" = \"{}\"", gpuattest_proto::hex(&gpuattest_nvml_sim::spdm::measurement(MODEL, VBIOS, i)))
        })
        .collect();
    let g = dir.join("golden.toml");
    std::fs::write(
        &g,
        format!(
            "[[golden]]\ngpu_model = \"{MODEL}\"\nvbios_version = \"{VBIOS}\"\ndriver_version = \"{DRIVER}\"\nmeasurements = {{ {} }}\n",
            golden.join(", ")
        ),
    )
    .expect("golden");
    let p = dir.join("policy.toml");
    std::fs::write(
        &p,
        format!(
            "extend_builtin = true\n[attestation]\nanchors = \"{}\"\ngolden = \"{}\"\n",
            root.display(),
            g.display()
        ),
    )
    .expect("policy");
    p
}

/// The agent's `inspect` on a scenario, attesting to `nonce`: (uuid, report bytes, chain PEM) per GPU.
fn attest(dir: &Path, scenario: &str, nonce: &str) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let path = dir.join("inspect-scenario.json");
    std::fs::write(&path, scenario).expect("scenario");
    let (code, out, err) = run(std::process::Command::new(bin("gpuattest-agent"))
        .args(["inspect", "--json", "--attest-nonce", nonce, "--nvml-lib"])
        .arg(sim_lib())
        .arg("--sys-root")
        .arg(dir)
        .env("GPUATTEST_NVML_SIM", &path));
    assert_eq!(code, 0, "{err}");
    let obs: Value = serde_json::from_str(&out).expect("json");
    let b64 =
        |v: &Value| base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).expect("b64");
    obs["attestations"]
        .as_array()
        .expect("attestations")
        .iter()
        .map(|a| {
            (
                a["gpu_uuid"].as_str().unwrap_or_default().to_string(),
                b64(&a["report_base64"]),
                b64(&a["attestation_cert_chain_base64"]),
            )
        })
        .collect()
}

fn cli_verify(dir: &Path, report: &[u8], chain: &[u8], nonce: &str, anchor: Option<&Path>) -> (i32, Value, String) {
    let (r, c) = (dir.join("r.bin"), dir.join("c.pem"));
    std::fs::write(&r, report).expect("report");
    std::fs::write(&c, chain).expect("chain");
    let mut cmd = std::process::Command::new(bin("gpuattest-collector"));
    cmd.args(["attestation", "verify", "--json", "--report"]).arg(&r).arg("--certs").arg(&c).args(["--nonce", nonce]);
    if let Some(a) = anchor {
        cmd.arg("--anchor").arg(a);
    }
    let (code, out, err) = run(&mut cmd);
    (code, serde_json::from_str(&out).unwrap_or(Value::Null), err)
}

#[test]
fn simulated_gpus_sign_real_spdm_reports_and_each_corruption_fails_its_check() {
    let t = tempfile::tempdir().expect("tmp");
    let faults = &FAULTS[..6];
    let gpus: Vec<(String, Option<&str>)> = faults.iter().enumerate().map(|(i, f)| (uuid(i as u32), *f)).collect();
    let uuids: Vec<String> = gpus.iter().map(|g| g.0.clone()).collect();
    let refs: Vec<&str> = uuids.iter().map(String::as_str).collect();
    let pki = t.path().join("pki");
    let Some(root) = make_gpu_pki(&pki, &refs) else { return };
    let nonce = "5a".repeat(32);
    let atts = attest(t.path(), &scenario("cli", &pki, &gpus), &nonce);
    assert_eq!(atts.len(), faults.len());
    let expect_false = [
        None,
        Some("x-nvidia-gpu-attestation-report-signature-verified"),
        Some("x-nvidia-gpu-attestation-report-nonce-match"),
        Some("x-nvidia-gpu-attestation-report-parsed"),
        Some("x-nvidia-gpu-attestation-report-signature-verified"),
        Some("x-nvidia-gpu-attestation-report-cert-chain-validated"),
    ];
    for ((u, report, chain), want) in atts.iter().zip(expect_false) {
        let (code, v, err) = cli_verify(t.path(), report, chain, &nonce, Some(&root));
        match want {
            None => {
                assert_eq!((code, &v["valid"]), (0, &json!(true)), "{u}: {v} {err}");
                assert_eq!(v["device_serial"], device_serial(u));
                assert_eq!(v["driver_version"], DRIVER);
                assert_eq!(v["vbios_version"], VBIOS);
                assert_eq!(v["checks"]["x-nvidia-gpu-attestation-report-cert-chain-fwid-match"], true, "{v}");
                assert_eq!(v["checks"]["x-nvidia-gpu-attestation-report-cert-chain-root-pinned"], false, "a test root");
                // The honest report, without the test root as an anchor: the chain is not trusted.
                let (code, v, err) = cli_verify(t.path(), report, chain, &nonce, None);
                assert_eq!(code, 1, "{v}");
                assert!(err.contains("neither the pinned NVIDIA Device Identity CA nor a configured anchor"), "{err}");
            }
            Some(check) => {
                assert_eq!(code, 1, "{u}: {v} {err}");
                assert_eq!(v["checks"][check], false, "{u}: {check}: {v}");
                assert_eq!(err.trim().lines().count(), 1, "{err}");
            }
        }
    }
    // Hostile chains, each refused in one line: a loop (the chain over and over), and the wrong curve
    // (a P-256 chain from the mTLS test PKI).
    let (_, report, chain) = &atts[0];
    let looped = chain.repeat(3);
    let (code, v, err) = cli_verify(t.path(), report, &looped, &nonce, Some(&root));
    assert_eq!(code, 1, "{v}");
    assert!(err.contains("more than a device chain has") && err.trim().lines().count() == 1, "{err}");
    std::fs::create_dir_all(t.path().join("p256")).expect("dir");
    let Some(p256) = gpuattest_tests::make_pki(&t.path().join("p256")) else { return };
    let wrong_curve = [std::fs::read(&p256.client.0).expect("leaf"), std::fs::read(&p256.ca).expect("ca")].concat();
    let (code, v, err) = cli_verify(t.path(), report, &wrong_curve, &nonce, Some(&root));
    assert_eq!(code, 1, "{v}");
    assert!(err.contains("not an EC P-384 key") && err.trim().lines().count() == 1, "{err}");
}

#[test]
fn the_public_h100_leaf_under_another_gpus_intermediate_is_refused() {
    let t = tempfile::tempdir().expect("tmp");
    let Some(_) = make_gpu_pki(&t.path().join("pki"), &["GPU-other"]) else { return };
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../evidence/test-data");
    let report = std::fs::read_to_string(sample.join("hopperAttestationReport.txt")).expect("report");
    let chain = std::fs::read_to_string(sample.join("hopperCertChain.txt")).expect("chain");
    let certs: Vec<&str> = chain.split_inclusive("-----END CERTIFICATE-----\n").collect();
    assert!(certs.len() >= 3, "{}", certs.len());
    // NVIDIA's leaf, then the test PKI's intermediate (another GPU's chain), then NVIDIA's upper chain.
    let other = std::fs::read_to_string(t.path().join("pki/intermediate.pem")).expect("intermediate");
    let spliced = format!("{}{other}{}", certs[0], certs[2..].concat());
    let r = t.path().join("r.txt");
    std::fs::write(&r, report.trim()).expect("report");
    let c = t.path().join("c.pem");
    std::fs::write(&c, spliced).expect("chain");
    let (code, out, err) = run(std::process::Command::new(bin("gpuattest-collector"))
        .args(["attestation", "verify", "--report"])
        .arg(&r)
        .arg("--certs")
        .arg(&c)
        .args(["--nonce", "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"]));
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("certificate chain") && err.trim().lines().count() == 1, "{err}");
}

fn rule(data: &Path, rule: &str) -> Vec<Value> {
    flags(data).into_iter().filter(|f| f["rule"] == rule).collect()
}

fn flagged_gpus(data: &Path, r: &str) -> Vec<String> {
    let mut v: Vec<String> =
        rule(data, r).iter().filter_map(|f| f["gpu_uuids"][0].as_str().map(str::to_string)).collect();
    v.sort();
    v
}

#[test]
fn evidence_is_verified_at_ingest_flagged_listed_and_exported() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    let faults = FAULTS;
    let mut gpus: Vec<(String, Option<&str>)> = faults.iter().enumerate().map(|(i, f)| (uuid(i as u32), *f)).collect();
    let uuids: Vec<String> = gpus.iter().map(|g| g.0.clone()).collect();
    let refs: Vec<&str> = uuids.iter().map(String::as_str).collect();
    let pki = t.path().join("pki");
    let Some(root) = make_gpu_pki(&pki, &refs) else { return };
    let policy_file = policy(t.path(), &root);
    let c = Collector::start_with(&data, "127.0.0.1:0", &["--policy", policy_file.to_str().expect("utf8")]);
    let n = node(t.path(), "node-cc", &[]);
    // A ninth GPU whose driver lacks the attestation call: in CC mode, no evidence.
    let mut spec: Value = serde_json::from_str(&scenario("node-cc", &pki, &gpus)).expect("json");
    spec["gpus"].as_array_mut().expect("gpus").push(json!({"uuid": uuid(99), "name": MODEL, "vbios_version": VBIOS,
        "missing": ["nvmlDeviceGetConfComputeGpuAttestationReport"]}));
    std::fs::write(&n.scenario, spec.to_string()).expect("scenario");
    let enroll = token(&data, "enroll", Some("acme"));
    let mut a = start_agent(&c.url(), &n, &enroll, "200ms", &[]);
    wait_for("reports with evidence", Duration::from_secs(30), || {
        (reports(&data, "node-cc") >= 3 && !rule(&data, "gpu-evidence-golden").is_empty()).then_some(())
    });
    a.stop();
    assert_eq!(
        flagged_gpus(&data, "gpu-evidence-failed"),
        uuids[1..6].to_vec(),
        "{:?}",
        rule(&data, "gpu-evidence-failed")
    );
    assert_eq!(flagged_gpus(&data, "gpu-evidence-mismatch"), vec![uuids[6].clone()]);
    assert_eq!(flagged_gpus(&data, "gpu-evidence-golden"), vec![uuids[7].clone()]);
    assert_eq!(flagged_gpus(&data, "gpu-evidence-missing"), vec![uuid(99)]);
    for f in rule(&data, "gpu-evidence-failed").iter().chain(&rule(&data, "gpu-evidence-mismatch")) {
        assert_eq!(f["severity"], "high", "{f}");
    }
    let mismatch = &rule(&data, "gpu-evidence-mismatch")[0];
    assert!(mismatch["summary"].as_str().is_some_and(|s| s.contains("999.99.99") && s.contains(DRIVER)), "{mismatch}");
    assert_eq!(rule(&data, "gpu-evidence-missing")[0]["severity"], "medium");

    // hosts list: each GPU's state, the honest one verified with its device identity.
    let h = host(&data, "node-cc").expect("host");
    let states: Vec<(String, String)> = h["gpu_evidence"]
        .as_array()
        .expect("gpu_evidence")
        .iter()
        .map(|e| (e["gpu_uuid"].as_str().unwrap_or_default().into(), e["state"].as_str().unwrap_or_default().into()))
        .collect();
    assert!(states.contains(&(uuids[0].clone(), "verified".into())), "{states:?}");
    assert!(states.contains(&(uuid(99), "missing".into())), "{states:?}");
    assert_eq!(states.iter().filter(|s| s.1 == "failed").count(), 7, "{states:?}");
    let honest = h["gpu_evidence"].as_array().expect("e").iter().find(|e| e["gpu_uuid"] == uuids[0].as_str()).cloned();
    assert_eq!(honest.expect("honest")["device_serial"], device_serial(&uuids[0]));
    let (code, text, _) = run(gpuattest_tests::collector_cmd(&data).args(["hosts", "list"]));
    assert_eq!(code, 0);
    assert!(text.contains("GPU evidence: 7 failed, 1 missing, 1 verified"), "{text}");

    // The flag page's API carries the verdict with NVIDIA's claim names.
    let reviewer = token(&data, "reviewer", None);
    let id = rule(&data, "gpu-evidence-failed")[0]["id"].as_i64().expect("id");
    let (code, body) = gpuattest_tests::http_get(&c.http, &format!("/api/v1/flags/{id}"), Some(&reviewer));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("x-nvidia-gpu-attestation-report-signature-verified"), "{body}");
    let detail: Value = serde_json::from_str(&body).expect("json");
    let shown = detail["gpu_evidence"].as_array().expect("the host's GPU evidence on the flag page");
    assert_eq!(shown.len(), 9, "{shown:?}");
    assert!(shown.iter().any(|e| e["gpu_uuid"] == uuids[0].as_str() && e["state"] == "verified"), "{shown:?}");

    // The customer's export carries the verdicts.
    let out = t.path().join("export.json");
    let (code, _, err) = run(gpuattest_tests::collector_cmd(&data)
        .args(["export", "--tenant", "acme", "--since", "1h", "--out"])
        .arg(&out));
    assert_eq!(code, 0, "{err}");
    let export = std::fs::read_to_string(&out).expect("export");
    let statement = exported_statement(&export);
    let ev = &statement["predicate"]["hosts"][0]["gpu_evidence"];
    let verified: Vec<&Value> =
        ev.as_array().expect("gpu_evidence").iter().filter(|e| e["state"] == "verified").collect();
    assert_eq!(verified.len(), 1, "{ev}");
    assert_eq!(verified[0]["device_serial"], device_serial(&uuids[0]));

    // The honest chip moves: another host attests with its identity.
    gpus.truncate(1);
    let m = node(t.path(), "node-new", &[]);
    std::fs::write(&m.scenario, scenario("node-new", &pki, &gpus)).expect("scenario");
    let mut b = start_agent(&c.url(), &m, &token(&data, "enroll", Some("acme")), "200ms", &[]);
    let moved =
        wait_for("a moved-chip flag", Duration::from_secs(30), || rule(&data, "gpu-evidence-moved").into_iter().next());
    b.stop();
    assert_eq!(moved["severity"], "high");
    assert!(moved["summary"].as_str().is_some_and(|s| s.contains(&device_serial(&uuids[0]))), "{moved}");
}

/// The in-toto statement inside an export's DSSE envelope.
fn exported_statement(export: &str) -> Value {
    let v: Value = serde_json::from_str(export).expect("export json");
    let payload = v["payload"].as_str().or_else(|| v["envelope"]["payload"].as_str()).expect("payload");
    serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(payload).expect("b64")).expect("statement")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_evidence_and_an_unissued_nonce_fail() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    let gpu = uuid(7);
    let pki = t.path().join("pki");
    let Some(root) = make_gpu_pki(&pki, &[&gpu]) else { return };
    let policy_file = policy(t.path(), &root);
    let c = Collector::start_with(&data, "127.0.0.1:0", &["--policy", policy_file.to_str().expect("utf8")]);
    let (key, id, mut s) = crate::rules::raw_host(&c, &data, "raw-evidence").await;
    let nonce = s.challenge.nonce.clone();
    let scen = scenario("raw", &pki, &[(gpu.clone(), None)]);
    let (_, att, chain) = attest(t.path(), &scen, &gpuattest_proto::hex(&nonce)).remove(0);
    let with = |seq: u64, nonce: &[u8], att: &[u8]| {
        let mut r = report(&id, seq, &[], "python serve.py");
        r.collector_nonce = nonce.to_vec();
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        (r.window_start_unix_ms, r.window_end_unix_ms, r.agent_time_unix_ms) = (now - 10_000, now, now);
        r.host = Some(pb::HostInfo { driver_version: DRIVER.into(), ..r.host.clone().unwrap_or_default() });
        r.gpus =
            vec![pb::Gpu { uuid: gpu.clone(), name: MODEL.into(), vbios_version: VBIOS.into(), ..Default::default() }];
        r.confidential_compute = Some(pb::ConfidentialCompute { enabled: Some(true), ..Default::default() });
        r.attestations = vec![pb::GpuAttestation {
            gpu_uuid: gpu.clone(),
            nonce: nonce.to_vec(),
            report: att.to_vec(),
            attestation_cert_chain: chain.clone(),
            ..Default::default()
        }];
        sign(&key, &r)
    };
    crate::rules::acked(s.next_after(with(1, &nonce, &att)).await, 1);
    assert!(rule(&data, "gpu-evidence-failed").is_empty(), "{:?}", rule(&data, "gpu-evidence-failed"));
    // The same evidence again in the next report: its nonce was used by report 1.
    crate::rules::acked(s.next_after(with(2, &nonce, &att)).await, 2);
    let f = rule(&data, "gpu-evidence-failed");
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0]["summary"].as_str().is_some_and(|s| s.contains("already used by report 1")), "{f:?}");
    // Evidence over a nonce this collector never issued (made by the GPU for someone else).
    let foreign = [0x42u8; 32];
    let (_, att2, _) = attest(t.path(), &scen, &gpuattest_proto::hex(&foreign)).remove(0);
    crate::rules::acked(s.next_after(with(3, &foreign, &att2)).await, 3);
    let f = rule(&data, "gpu-evidence-failed");
    assert!(f[0]["summary"].as_str().is_some_and(|s| s.contains("never issued to this host")), "{f:?}");
}
