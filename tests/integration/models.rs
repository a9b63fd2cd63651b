//! Model identification on real processes: children that hold safetensors and GGUF files open (one
//! only memory-mapped, its descriptor closed, and one deleted while open), placed on GPUs through the
//! simulated NVML scenario.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gpuattest_tests::{Workload, bin, run, sim_lib, wait_for, write_scenario};
use serde_json::Value;

fn safetensors(path: &std::path::Path, tensors: &[(&str, &[u64])]) {
    let mut h = serde_json::Map::new();
    let mut off = 0u64;
    for (n, shape) in tensors {
        let b = shape.iter().product::<u64>() * 2;
        h.insert(n.to_string(), serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [off, off + b]}));
        off += b;
    }
    let h = Value::Object(h).to_string();
    let mut v = (h.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(h.as_bytes());
    std::fs::write(path, &v).expect("write");
    std::fs::OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(v.len() as u64 + off)).expect("sparse");
}

/// A Python child that memory-maps `path`, closes the descriptor, and waits.
fn mmap_child(path: &std::path::Path) -> Option<Child> {
    let script = "import mmap,sys,time\nf=open(sys.argv[1],'rb')\nm=mmap.mmap(f.fileno(),0,access=mmap.ACCESS_READ)\nf.close()\nprint('ready',flush=True)\ntime.sleep(120)\n";
    let mut c = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(c.stdout.take()?), &mut line).ok()?;
    (line.trim() == "ready").then_some(c)
}

fn inspect(scenario: &std::path::Path) -> Value {
    let (code, out, err) = run(Command::new(bin("gpuattest-agent"))
        .args(["inspect", "--json", "--nvml-lib"])
        .arg(sim_lib())
        .arg("--sys-root")
        .arg(scenario.parent().expect("dir"))
        .env("GPUATTEST_NVML_SIM", scenario));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("json")
}

#[test]
fn open_mapped_and_deleted_weights_are_fingerprinted() {
    let t = tempfile::tempdir().expect("tmp");
    let ds = t.path().join("deepseek-ai/DeepSeek-V3");
    std::fs::create_dir_all(&ds).expect("mkdir");
    std::fs::write(
        ds.join("config.json"),
        r#"{"architectures":["DeepseekV3ForCausalLM"],"model_type":"deepseek_v3","_name_or_path":"deepseek-ai/DeepSeek-V3","n_routed_experts":256}"#,
    )
    .expect("config");
    let shard = ds.join("model-00001-of-000163.safetensors");
    safetensors(&shard, &[("model.embed_tokens.weight", &[129_280, 7168])]);
    let gguf = t.path().join("qwen2.5-7b-instruct-q4_k_m.gguf");
    std::fs::write(
        &gguf,
        gpuattest_agent::models::gguf::write_header(
            &[
                ("general.architecture", "qwen2"),
                ("general.name", "Qwen2.5 7B Instruct"),
                ("general.organization", "Qwen"),
            ],
            &[("token_embd.weight", &[3584, 152_064])],
        ),
    )
    .expect("gguf");
    let doomed = t.path().join("scratch.safetensors");
    safetensors(&doomed, &[("w", &[10, 10])]);

    let holder = Workload::start_holding("python3", &["train.py"], &[&shard, &gguf, &doomed]);
    wait_for("the workload to open its files", Duration::from_secs(10), || {
        let open: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", holder.pid()))
            .ok()?
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .collect();
        [&shard, &gguf, &doomed].iter().all(|f| open.contains(f)).then_some(())
    });
    std::fs::remove_file(&doomed).expect("delete while open");
    let mapped = t.path().join("mapped.safetensors");
    safetensors(&mapped, &[("a", &[4, 4]), ("b", &[2])]);
    let mut mapper = mmap_child(&mapped);
    let mut pids = vec![holder.pid()];
    if let Some(m) = &mapper {
        pids.push(m.id());
    }
    let scenario = t.path().join("scenario.json");
    write_scenario(&scenario, "models-host", 2, &pids);
    let obs = inspect(&scenario);

    let procs = obs["processes"].as_array().expect("processes");
    let holder_obs = procs.iter().find(|p| p["pid"] == holder.pid()).expect("holder");
    let models = holder_obs["models"].as_array().expect("models");
    let by_format =
        |f: &str| models.iter().find(|m| m["format"] == f).unwrap_or_else(|| panic!("no {f} in {models:?}"));
    let st = models.iter().find(|m| m["path"] == shard.display().to_string()).expect("shard fingerprint");
    assert_eq!(st["format"], "safetensors");
    assert_eq!(st["parameter_count"], 129_280u64 * 7168);
    assert_eq!(st["architecture"], "DeepseekV3ForCausalLM");
    assert_eq!(st["model_type"], "deepseek_v3");
    assert_eq!(st["organization"], "deepseek-ai");
    let g = by_format("gguf-v3");
    assert_eq!((g["model_type"].as_str(), g["organization"].as_str()), (Some("qwen2"), Some("Qwen")));
    let deleted =
        models.iter().find(|m| m["path"].as_str().is_some_and(|p| p.ends_with("scratch.safetensors (deleted)")));
    assert_eq!(deleted.expect("deleted file read through its fd")["parameter_count"], 100);
    for m in models {
        for k in ["path", "format", "header_sha256", "tensor_count", "parameter_count"] {
            assert!(m.get(k).is_some(), "{k} missing in {m}");
        }
    }
    match mapper.as_mut() {
        Some(m) => {
            let mo = procs.iter().find(|p| p["pid"] == m.id()).expect("mapper");
            let mm = &mo["models"].as_array().expect("models")[0];
            assert_eq!(mm["path"], mapped.display().to_string());
            assert_eq!((mm["tensor_count"].as_u64(), mm["parameter_count"].as_u64()), (Some(2), Some(18)));
            let _ = m.kill();
            let _ = m.wait();
        }
        None => eprintln!("python3 with mmap is not available here; the memory-mapped case was not exercised"),
    }
}

#[test]
fn fingerprint_command_reads_files_and_directories_and_refuses_junk() {
    let t = tempfile::tempdir().expect("tmp");
    let d = t.path().join("m");
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(
        d.join("config.json"),
        r#"{"architectures":["Glm4ForCausalLM"],"model_type":"glm4","_name_or_path":"THUDM/GLM-4-9B-0414"}"#,
    )
    .expect("w");
    safetensors(&d.join("model.safetensors"), &[("x", &[151_552, 4096])]);
    let fp = |p: &std::path::Path| run(Command::new(bin("gpuattest-agent")).args(["fingerprint", "--json"]).arg(p));
    let (code, out, err) = fp(&d);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (v["format"].as_str(), v["model_type"].as_str(), v["organization"].as_str()),
        (Some("directory"), Some("glm4"), Some("THUDM"))
    );
    assert_eq!(v["parameter_count"], 151_552u64 * 4096);
    let (code, out, err) = fp(&d.join("model.safetensors"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).expect("json")["architecture"], "Glm4ForCausalLM");

    let junk = t.path().join("junk.safetensors");
    std::fs::write(&junk, [0xffu8; 64]).expect("w");
    let (code, out, err) = fp(&junk);
    assert_ne!(code, 0);
    assert!(out.is_empty() && err.lines().count() == 1 && err.contains("junk.safetensors"), "{err}");
    let (code, _, err) = fp(std::path::Path::new("/dev/zero"));
    assert_ne!(code, 0);
    assert!(err.contains("not a regular file"), "{err}");
}
