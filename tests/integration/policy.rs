//! `policy evaluate-model` on fingerprints of test-written model files, and `screen check` on the real
//! OFAC SDN file and a CSL file in the published header format.

use std::path::Path;
use std::process::Command;

use gpuattest_tests::{bin, run};
use serde_json::{Value, json};

fn model_dir(root: &Path, id: &str, config: Value, tensors: &[(&str, &[u64])]) -> std::path::PathBuf {
    let d = root.join(id);
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join("config.json"), config.to_string()).expect("config");
    let mut h = serde_json::Map::new();
    let mut off = 0u64;
    for (n, shape) in tensors {
        let b = shape.iter().product::<u64>() * 2;
        h.insert(n.to_string(), json!({"dtype": "BF16", "shape": shape, "data_offsets": [off, off + b]}));
        off += b;
    }
    let h = Value::Object(h).to_string();
    let mut v = (h.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(h.as_bytes());
    let f = d.join("model-00001-of-00002.safetensors");
    std::fs::write(&f, &v).expect("write");
    std::fs::OpenOptions::new().write(true).open(&f).and_then(|x| x.set_len(v.len() as u64 + off)).expect("sparse");
    d
}

fn evaluate(path: &Path) -> Value {
    let (code, fp, err) = run(Command::new(bin("gpuattest-agent")).args(["fingerprint", "--json"]).arg(path));
    assert_eq!(code, 0, "fingerprint {}: {err}", path.display());
    let mut child = Command::new(bin("gpuattest-collector"))
        .args(["policy", "evaluate-model", "-", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), fp.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("verdict JSON")
}

#[test]
fn evaluate_model_names_family_and_developer_and_spares_controls() {
    let t = tempfile::tempdir().expect("tmp");
    let r = t.path();
    let cases = [
        (
            model_dir(
                r,
                "deepseek-ai/DeepSeek-V3",
                json!({"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "_name_or_path": "deepseek-ai/DeepSeek-V3", "vocab_size": 129280, "n_routed_experts": 256}),
                &[("model.embed_tokens.weight", &[129_280, 7168])],
            ),
            "DeepSeek",
            "CN",
            true,
        ),
        (
            model_dir(
                r,
                "THUDM/GLM-4-9B-0414",
                json!({"architectures": ["Glm4ForCausalLM"], "model_type": "glm4", "_name_or_path": "THUDM/GLM-4-9B-0414"}),
                &[("model.embed_tokens.weight", &[151_552, 4096])],
            ),
            "GLM / ChatGLM",
            "CN",
            true,
        ),
        (
            model_dir(
                r,
                "Qwen/Qwen2.5-7B-Instruct",
                json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "_name_or_path": "Qwen/Qwen2.5-7B-Instruct"}),
                &[("model.embed_tokens.weight", &[152_064, 3584])],
            ),
            "Qwen",
            "CN",
            true,
        ),
        (
            model_dir(
                r,
                "meta-llama/Llama-3.1-8B-Instruct",
                json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "_name_or_path": "meta-llama/Llama-3.1-8B-Instruct"}),
                &[("model.embed_tokens.weight", &[128_256, 4096])],
            ),
            "Llama",
            "US",
            false,
        ),
        (
            model_dir(
                r,
                "mistralai/Mistral-7B-Instruct-v0.3",
                json!({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "_name_or_path": "mistralai/Mistral-7B-Instruct-v0.3"}),
                &[("model.embed_tokens.weight", &[32_768, 4096])],
            ),
            "Mistral",
            "FR",
            false,
        ),
        (
            model_dir(
                r,
                "sentence-transformers/all-MiniLM-L6-v2",
                json!({"architectures": ["BertModel"], "model_type": "bert", "_name_or_path": "sentence-transformers/all-MiniLM-L6-v2"}),
                &[("embeddings.word_embeddings.weight", &[30_522, 384])],
            ),
            "MiniLM / sentence-transformers",
            "US",
            false,
        ),
    ];
    for (dir, family, country, restricted) in cases {
        let v = evaluate(&dir);
        assert_eq!(
            (v["family"].as_str(), v["developer_country"].as_str(), v["restricted"].as_bool()),
            (Some(family), Some(country), Some(restricted)),
            "{}: {v}",
            dir.display()
        );
        assert!(v["developer"].is_string() && v["reasons"].as_array().is_some_and(|r| !r.is_empty()));
        assert_eq!(v["severity"] == "none", !restricted, "{v}");
    }
}

#[test]
fn screen_check_finds_sdn_variants_and_csl_entries_and_nothing_for_clean_names() {
    let sdn = Path::new(env!("CARGO_MANIFEST_DIR")).join("../collector/test-data/lists/ofac_sdn_2024-05-03.csv");
    let check = |name: &str, list: &Path| -> Value {
        let (code, out, err) =
            run(Command::new(bin("gpuattest-collector")).args(["screen", "check", name, "--json", "--list"]).arg(list));
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).expect("json")
    };
    let m = check("banco nacional de cuba", &sdn);
    assert_eq!((m[0]["source_id"].as_str(), m[0]["list"].as_str()), (Some("306"), Some("OFAC SDN")));
    assert!(m[0]["score"].as_f64().is_some_and(|s| s > 0.9));
    assert_eq!(check("Northwind Traders GPU Cloud Inc.", &sdn), json!([]));
    let t = tempfile::tempdir().expect("tmp");
    let csl = t.path().join("consolidated.csv");
    std::fs::write(
        &csl,
        "_id,source,entity_number,type,programs,name,title,addresses,federal_register_notice,start_date,end_date,standard_order,license_requirement,license_policy,call_sign,vessel_type,gross_tonnage,gross_registered_tonnage,vessel_flag,vessel_owner,remarks,source_list_url,alt_names,citizenships,dates_of_birth,nationalities,places_of_birth,source_information_url,ids\n\
e1,Entity List (EL) - Bureau of Industry and Security,,Entity,,Beijing Academy of Artificial Intelligence,,,90 FR 14046,2025-03-25,,,,,,,,,,,,,BAAI; Zhiyuan Research Institute,,,,,,\n",
    )
    .expect("write");
    let m = check("Zhiyuan Research Institute", &csl);
    assert_eq!(m[0]["list"], "Entity List (EL) - Bureau of Industry and Security");
    let (code, _, err) =
        run(Command::new(bin("gpuattest-collector")).args(["screen", "check", "x", "--list", "/nonexistent.csv"]));
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent.csv") && err.lines().count() == 1, "{err}");
}

#[test]
fn screen_bench_reports_the_real_sdn_import() {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("../collector/test-data/lists/ofac_sdn_2024-05-03.csv");
    let (code, out, err) = run(Command::new(bin("gpuattest-collector"))
        .args(["screen", "bench", "--iterations", "1", "--list"])
        .arg(&list));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["entries"], 14965, "{v}");
    assert!(v["import_ms_median"].as_f64().is_some_and(|ms| ms > 0.0), "{v}");
}
