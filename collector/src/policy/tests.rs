//! Policy tests: parsing, files, rules.

use super::rules::display_name;
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
    let sig = model("our-internal-model", &[("config.vocab_size", "129280"), ("config.n_routed_experts", "256")], "");
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
    let hits = p.match_cmdline("vllm serve /root/.cache/huggingface/hub/models--THUDM--glm-4-9b-chat/snapshots/abc");
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
        p.evaluate(&host, &r, &pos, &CommitContext::default(), Receipt { received_at: 9_000_000, nonce_fresh: false })
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
    let e = Policy::parse("[[model_patterns]]\npattern = \"x/*\"\nfamly = \"x\"\n", "p.toml").expect_err("unknown key");
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

#[test]
fn glob_counts_characters_not_bytes_and_patterns_match_any_case() {
    // `?` is one character also where the text is not ASCII (a byte-wise match would need two here).
    assert!(glob("modèl?/x", "modèle/x"));
    assert!(glob("m?dele/*", "mödele/anything"));
    assert!(!glob("m??dele/*", "mödele/x"));
    assert!(glob("*/naïve-*", "org/naïve-7b"));
    let p = Policy::builtin();
    let upper = p.match_cmdline("python serve.py --model DeepSeek-AI/DeepSeek-V3");
    let lower = p.match_cmdline("python serve.py --model deepseek-ai/deepseek-v3");
    assert!(!upper.is_empty(), "a listed developer's model matches whatever its case");
    assert_eq!(
        upper.iter().map(|(m, _)| &m.pattern).collect::<Vec<_>>(),
        lower.iter().map(|(m, _)| &m.pattern).collect::<Vec<_>>()
    );
    assert_eq!(upper[0].1, "DeepSeek-AI/DeepSeek-V3", "the model id is reported as the command line wrote it");
    assert!(p.match_cmdline("python train.py --lr 3e-4").is_empty());
}
