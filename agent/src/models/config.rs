//! Model directories: `config.json` (Hugging Face `transformers`), `tokenizer_config.json`, and the
//! weight files beside them (sharded safetensors with their index).

use std::path::Path;

use serde_json::Value;

use super::{Fingerprint, ModelError, clip, open_regular, read_exact_bounded};

/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;
/// Most weight files fingerprinted in one directory.
pub const MAX_SHARDS: usize = 4096;

/// Hyperparameters that tell families apart when they share an architecture.
const SIGNATURE_KEYS: &[&str] = &[
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "intermediate_size",
    "max_position_embeddings",
    "n_routed_experts",
    "num_experts",
    "num_local_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "kv_lora_rank",
    "q_lora_rank",
    "rope_theta",
    "torch_dtype",
    "tie_word_embeddings",
];

fn read_json(path: &Path) -> Result<(Vec<u8>, Value), ModelError> {
    read_json_with(path, false)
}

fn read_json_with(path: &Path, no_follow: bool) -> Result<(Vec<u8>, Value), ModelError> {
    let (mut f, meta) = super::open_regular_with(path, no_follow)?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ModelError::Invalid(format!("{} is larger than {MAX_CONFIG_BYTES} bytes", path.display())));
    }
    let bytes = read_exact_bounded(&mut f, meta.len() as usize, "config")?;
    let v = serde_json::from_slice(&bytes).map_err(|e| ModelError::Invalid(format!("{}: {e}", path.display())))?;
    Ok((bytes, v))
}

fn apply_config(fp: &mut Fingerprint, cfg: &Value) {
    let s = |k: &str| cfg.get(k).and_then(Value::as_str).map(|v| clip(v, 256));
    fp.model_type = s("model_type").or(fp.model_type.take());
    if let Some(a) = cfg.get("architectures").and_then(Value::as_array).and_then(|a| a.first()).and_then(Value::as_str)
    {
        fp.architecture = Some(clip(a, 256));
    }
    if let Some(n) = s("_name_or_path").filter(|n| !n.is_empty() && !n.starts_with('/') && !n.starts_with('.')) {
        if let Some((org, _)) = n.split_once('/') {
            fp.organization = fp.organization.take().or(Some(org.to_string()));
        }
        fp.name = fp.name.take().or(Some(n));
    }
    for k in SIGNATURE_KEYS {
        if let Some(v) = cfg.get(*k).filter(|v| v.is_number() || v.is_string() || v.is_boolean()) {
            fp.metadata.insert(format!("config.{k}"), clip(v.to_string().trim_matches('"'), 64));
        }
    }
}

/// Adds what `config.json` and `tokenizer_config.json` in `dir` say to a weight file's fingerprint.
/// Missing or invalid files add nothing (the weight file's own header still stands). For a directory
/// the operator names (`inspect`); a process's directory goes through [`enrich_with`] and its root.
pub fn enrich_from_dir(fp: &mut Fingerprint, dir: &Path) {
    enrich_with(fp, |name| Some(dir.join(name)), false);
}

/// As [`enrich_from_dir`], with each file found by `locate` (for a process: resolved inside its
/// root) and, with `no_follow`, opened without following a link at the last step.
pub fn enrich_with(fp: &mut Fingerprint, locate: impl Fn(&str) -> Option<std::path::PathBuf>, no_follow: bool) {
    let read = |name: &str| locate(name).ok_or(ModelError::Unknown).and_then(|p| read_json_with(&p, no_follow));
    if let Ok((bytes, cfg)) = read("config.json") {
        apply_config(fp, &cfg);
        fp.metadata.insert("config.sha256".into(), super::sha256_hex(&[&bytes]));
    }
    if let Ok((_, tok)) = read("tokenizer_config.json")
        && let Some(c) = tok.get("tokenizer_class").and_then(Value::as_str)
    {
        fp.metadata.insert("tokenizer.class".into(), clip(c, 128));
    }
}

/// Fingerprints a model directory from its config.json and weight files together.
///
/// # Errors
/// [`ModelError::Unknown`] when the directory has neither a config.json nor weight files.
pub fn fingerprint_dir(dir: &Path) -> Result<Fingerprint, ModelError> {
    let mut fp = Fingerprint { format: "directory".into(), ..Default::default() };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::Io(format!("{}: {e}", dir.display())))?
        .flatten()
        .take(100_000)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| super::looks_like_model(n))
        .collect();
    names.sort();
    let config = read_json(&dir.join("config.json")).ok();
    if config.is_none() && names.is_empty() {
        return Err(ModelError::Unknown);
    }
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    if let Some((bytes, _)) = &config {
        hash.update(bytes);
    }
    let mut dtypes = std::collections::BTreeSet::new();
    let mut files = 0u64;
    for n in names.iter().take(MAX_SHARDS) {
        let Ok((mut f, meta)) = open_regular(&dir.join(n)) else { continue };
        let Ok(w) = super::fingerprint_file(&mut f, meta.len(), n) else { continue };
        hash.update(w.header_sha256.as_bytes());
        fp.tensor_count += w.tensor_count;
        fp.parameter_count = fp.parameter_count.saturating_add(w.parameter_count);
        fp.size_bytes = fp.size_bytes.saturating_add(w.size_bytes);
        dtypes.extend(w.dtypes);
        fp.model_type = fp.model_type.take().or(w.model_type);
        fp.name = fp.name.take().or(w.name);
        fp.organization = fp.organization.take().or(w.organization);
        files += 1;
    }
    fp.dtypes = dtypes.into_iter().take(16).collect();
    fp.metadata.insert("weight_files".into(), files.to_string());
    fp.header_sha256 = super::hex(hash.finish().as_ref());
    enrich_from_dir(&mut fp, dir);
    if let Ok((_, idx)) = read_json(&dir.join("model.safetensors.index.json"))
        && let Some(total) = idx.pointer("/metadata/total_size").and_then(Value::as_u64)
    {
        fp.metadata.insert("index.total_size".into(), total.to_string());
    }
    Ok(fp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_combines_config_and_shards() {
        let t = tempfile::tempdir().expect("tmp");
        let d = t.path();
        std::fs::write(
            d.join("config.json"),
            r#"{"architectures":["DeepseekV3ForCausalLM"],"model_type":"deepseek_v3","_name_or_path":"deepseek-ai/DeepSeek-V3","hidden_size":7168,"n_routed_experts":256,"vocab_size":129280}"#,
        )
        .expect("w");
        for (i, shape) in [(1, "[2,3]"), (2, "[4]")] {
            let h = format!(r#"{{"w{i}":{{"dtype":"BF16","shape":{shape},"data_offsets":[0,0]}}}}"#);
            let mut v = (h.len() as u64).to_le_bytes().to_vec();
            v.extend_from_slice(h.as_bytes());
            std::fs::write(d.join(format!("model-0000{i}-of-00002.safetensors")), v).expect("w");
        }
        std::fs::write(d.join("model.safetensors.index.json"), r#"{"metadata":{"total_size":20},"weight_map":{}}"#)
            .expect("w");
        let fp = fingerprint_dir(d).expect("fingerprint");
        assert_eq!((fp.tensor_count, fp.parameter_count), (2, 10));
        assert_eq!(fp.architecture.as_deref(), Some("DeepseekV3ForCausalLM"));
        assert_eq!(fp.model_type.as_deref(), Some("deepseek_v3"));
        assert_eq!(fp.organization.as_deref(), Some("deepseek-ai"));
        assert_eq!(fp.metadata.get("config.n_routed_experts").map(String::as_str), Some("256"));
        assert_eq!(fp.metadata.get("weight_files").map(String::as_str), Some("2"));
        assert_eq!(fp.metadata.get("index.total_size").map(String::as_str), Some("20"));
    }

    #[test]
    fn hostile_configs_add_nothing() {
        let t = tempfile::tempdir().expect("tmp");
        std::fs::write(t.path().join("config.json"), "{\"model_type\": ").expect("w");
        let mut fp = Fingerprint::default();
        enrich_from_dir(&mut fp, t.path());
        assert_eq!(fp, Fingerprint::default());
        std::fs::write(t.path().join("config.json"), "[".repeat(200_000)).expect("w");
        enrich_from_dir(&mut fp, t.path());
        assert_eq!(fp, Fingerprint::default());
        assert!(matches!(fingerprint_dir(tempfile::tempdir().expect("tmp").path()), Err(ModelError::Unknown)));
    }
}
