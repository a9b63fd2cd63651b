//! The model registry: which family a fingerprint belongs to, who develops it, where they are
//! headquartered and whether they are listed, with a confidence and the reasons. Several families share
//! an architecture (Yi and DeepSeek-LLM use `llama`; DeepSeek-R1-Distill uses `qwen2`; Kimi K2 uses the
//! DeepSeek-V3 architecture), so names, organisations, tokenizers and config signatures outrank the
//! architecture. Facts from `shared/research/model-families.md` and `ai-restricted-parties.md`.

use serde::Serialize;
use serde_json::Value;

use crate::severity::Severity;

/// A shipped model family (static data; see [`Family`] for the form operators write).
#[derive(Debug, Clone, Copy)]
struct BuiltinFamily {
    /// Family name.
    pub name: &'static str,
    /// Developer.
    pub developer: &'static str,
    /// Developer's headquarters (ISO 3166 alpha-2).
    pub country: &'static str,
    /// Listing status with its source, if listed.
    pub listing: Option<&'static str>,
    /// Name or organisation fragments (lower case) that identify it.
    pub names: &'static [&'static str],
    /// `model_type` values and architecture class names that belong to it alone.
    pub model_types: &'static [&'static str],
    /// GGUF `tokenizer.ggml.pre` values.
    pub tokenizers: &'static [&'static str],
}

/// The shipped registry.
const BUILTIN: &[BuiltinFamily] = &[
    BuiltinFamily {
        name: "Kimi / Moonshot",
        developer: "Moonshot AI (Beijing Moonshot Technology Co., Ltd.)",
        country: "CN",
        listing: None,
        names: &["moonshotai", "kimi"],
        model_types: &["kimi_k2", "kimi_k25", "kimi_linear", "kimilinearforcausallm"],
        tokenizers: &["kimi-k2"],
    },
    BuiltinFamily {
        name: "DeepSeek",
        developer: "DeepSeek (Hangzhou DeepSeek Artificial Intelligence Basic Technology Research Co., Ltd.)",
        country: "CN",
        listing: None,
        names: &["deepseek"],
        model_types: &[
            "deepseek_v2",
            "deepseek_v3",
            "deepseek_v32",
            "deepseek_v4",
            "deepseekv2forcausallm",
            "deepseekv3forcausallm",
            "deepseekv32forcausallm",
            "deepseek_vl",
        ],
        tokenizers: &["deepseek-llm", "deepseek-coder", "deepseek-v3", "deepseek-r1-qwen"],
    },
    BuiltinFamily {
        name: "GLM / ChatGLM",
        developer: "Zhipu AI (Beijing Zhipu Huazhang Technology Co., Ltd.; Z.ai) with Tsinghua KEG",
        country: "CN",
        listing: Some("BIS Entity List, 90 FR 4617 (FR Doc 2025-00704), effective 2025-01-16"),
        names: &["thudm", "zai-org", "zhipu", "chatglm", "glm-4", "glm4", "glm-5", "z.ai"],
        model_types: &[
            "chatglm",
            "glm",
            "glm4",
            "glm4_moe",
            "glm4_moe_lite",
            "glm_moe_dsa",
            "glm4v",
            "glm5_next",
            "chatglmmodel",
            "glm4forcausallm",
            "glmforcausallm",
            "glm4moeforcausallm",
        ],
        tokenizers: &["chatglm-bpe", "glm4"],
    },
    BuiltinFamily {
        name: "BAAI (BGE, Aquila, Emu)",
        developer: "Beijing Academy of Artificial Intelligence (BAAI)",
        country: "CN",
        listing: Some("BIS Entity List, 90 FR 14046 (FR Doc 2025-05427), effective 2025-03-25"),
        names: &["baai", "bge-", "aquila"],
        model_types: &[],
        tokenizers: &[],
    },
    BuiltinFamily {
        name: "Qwen",
        developer: "Alibaba Cloud / Qwen team (Alibaba Group)",
        country: "CN",
        listing: None,
        names: &["qwen", "alibaba"],
        model_types: &[
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "qwen3_next",
            "qwen3_5",
            "qwen3_5_moe",
            "qwen2_vl",
            "qwen2_5_vl",
            "qwen3_vl",
            "qwen2forcausallm",
            "qwen3forcausallm",
            "qwen2moeforcausallm",
            "qwen3moeforcausallm",
        ],
        tokenizers: &["qwen2"],
    },
    BuiltinFamily {
        name: "Baichuan",
        developer: "Baichuan Intelligent Technology",
        country: "CN",
        listing: None,
        names: &["baichuan"],
        model_types: &["baichuan", "baichuanforcausallm"],
        tokenizers: &[],
    },
    BuiltinFamily {
        name: "InternLM",
        developer: "Shanghai AI Laboratory (with SenseTime)",
        country: "CN",
        listing: Some("co-developer SenseTime: BIS Entity List, 84 FR 54002 (2019-10-09)"),
        names: &["internlm"],
        model_types: &["internlm", "internlm2", "internlm3", "internlm2forcausallm"],
        tokenizers: &[],
    },
    BuiltinFamily {
        name: "Yi",
        developer: "01.AI (Beijing Lingyi Wanwu)",
        country: "CN",
        listing: None,
        names: &["01-ai", "yi-"],
        model_types: &[],
        tokenizers: &[],
    },
    BuiltinFamily {
        name: "MiniMax",
        developer: "MiniMax (Shanghai)",
        country: "CN",
        listing: None,
        names: &["minimax"],
        model_types: &["minimax", "minimax_text_01", "minimax_m2", "minimaxm2forcausallm"],
        tokenizers: &[],
    },
    BuiltinFamily {
        name: "Hunyuan",
        developer: "Tencent",
        country: "CN",
        listing: Some("DoD Section 1260H list (2025-01-06); not an export-control list"),
        names: &["hunyuan"],
        model_types: &["hunyuan_v1_dense", "hunyuan_v1_moe", "hunyuan"],
        tokenizers: &[],
    },
    BuiltinFamily {
        name: "ERNIE",
        developer: "Baidu",
        country: "CN",
        listing: None,
        names: &["ernie", "baidu"],
        model_types: &["ernie4_5", "ernie4_5_moe", "ernie4_5forcausallm"],
        tokenizers: &[],
    },
    BuiltinFamily {
        name: "Llama",
        developer: "Meta Platforms",
        country: "US",
        listing: None,
        names: &["meta-llama", "llama"],
        model_types: &["llama", "llama4", "llamaforcausallm"],
        tokenizers: &["llama-bpe", "llama"],
    },
    BuiltinFamily {
        name: "Mistral",
        developer: "Mistral AI",
        country: "FR",
        listing: None,
        names: &["mistral", "mixtral"],
        model_types: &["mistral", "mixtral", "mistral3", "mistralforcausallm"],
        tokenizers: &[],
    },
    BuiltinFamily {
        name: "Gemma",
        developer: "Google (Google DeepMind)",
        country: "US",
        listing: None,
        names: &["gemma", "google/"],
        model_types: &["gemma", "gemma2", "gemma3", "gemma3_text", "gemma3n", "gemma4"],
        tokenizers: &[],
    },
    BuiltinFamily {
        name: "Phi",
        developer: "Microsoft",
        country: "US",
        listing: None,
        names: &["microsoft/phi", "phi-"],
        model_types: &["phi", "phi3", "phimoe"],
        tokenizers: &[],
    },
    BuiltinFamily {
        name: "MiniLM / sentence-transformers",
        developer: "Microsoft (MiniLM) / sentence-transformers",
        country: "US",
        listing: None,
        names: &["minilm", "sentence-transformers"],
        model_types: &["bert"],
        tokenizers: &[],
    },
];

/// A model family: how to recognise it, who develops it, and what that means. The shipped registry
/// plus the operator's `[[model_families]]` (policy file), which come first.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Family {
    /// Family name.
    pub name: String,
    /// Developer.
    pub developer: String,
    /// Developer's headquarters (ISO 3166 alpha-2).
    pub country: String,
    /// Listing status with its source, if listed (`BIS Entity List ...` makes it critical).
    #[serde(default)]
    pub listing: Option<String>,
    /// Name or organisation fragments (matched case-insensitively) that identify it.
    #[serde(default)]
    pub names: Vec<String>,
    /// `model_type` values and architecture class names that belong to it alone.
    #[serde(default)]
    pub model_types: Vec<String>,
    /// GGUF `tokenizer.ggml.pre` values.
    #[serde(default)]
    pub tokenizers: Vec<String>,
    /// Exact `header_sha256` values of known files (the strongest evidence).
    #[serde(default)]
    pub header_sha256: Vec<String>,
    /// Config signatures: every key (a fingerprint metadata key such as `config.vocab_size`) must have
    /// its value.
    #[serde(default)]
    pub signatures: Vec<std::collections::BTreeMap<String, String>>,
    /// Severity when it matches; by default critical for an Entity List listing, high for a developer
    /// in a country of concern, none otherwise.
    #[serde(default)]
    pub severity: Option<Severity>,
}

impl Family {
    fn from_builtin(b: &BuiltinFamily) -> Family {
        let v = |x: &[&str]| x.iter().map(|s| (*s).to_string()).collect();
        let mut signatures = Vec::new();
        if b.name == "DeepSeek" {
            // DeepSeek-V3/R1: vocabulary and routed experts, whatever the file is called.
            signatures.push(
                [("config.vocab_size", "129280"), ("config.n_routed_experts", "256")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
        Family {
            name: b.name.into(),
            developer: b.developer.into(),
            country: b.country.into(),
            listing: b.listing.map(str::to_string),
            names: v(b.names),
            model_types: v(b.model_types),
            tokenizers: v(b.tokenizers),
            header_sha256: Vec::new(),
            signatures,
            severity: None,
        }
    }

    /// Checks an operator's family.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.developer.trim().is_empty() {
            return Err("model_families: name and developer must not be empty".into());
        }
        if !(self.country.len() == 2 && self.country.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(format!(
                "model_families `{}`: country `{}` is not an ISO 3166 code like CN",
                self.name, self.country
            ));
        }
        if self.names.is_empty()
            && self.model_types.is_empty()
            && self.tokenizers.is_empty()
            && self.header_sha256.is_empty()
            && self.signatures.is_empty()
        {
            return Err(format!(
                "model_families `{}`: give at least one of names, model_types, tokenizers, header_sha256, signatures",
                self.name
            ));
        }
        if let Some(h) = self.header_sha256.iter().find(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!("model_families `{}`: header_sha256 `{h}` is not 64 hex digits", self.name));
        }
        Ok(())
    }
}

/// The shipped registry.
pub fn builtin() -> &'static [Family] {
    static ALL: std::sync::OnceLock<Vec<Family>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| BUILTIN.iter().map(Family::from_builtin).collect())
}

/// Countries of concern for model developers (the BIS guidance names PRC models).
const CONCERN: &[&str] = &["CN"];

/// The verdict on one model.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Family, or `unknown`.
    pub family: String,
    /// Developer.
    pub developer: Option<String>,
    /// Developer's country.
    pub developer_country: Option<String>,
    /// Developed by a listed party or one headquartered in a country of concern.
    pub restricted: bool,
    /// `none`, `low`, `medium`, `high` or `critical`.
    pub severity: Severity,
    /// 0 to 1.
    pub confidence: f64,
    /// Families named as bases (a distill or fine-tune).
    pub lineage: Vec<String>,
    /// Sentences a reviewer can check.
    pub reasons: Vec<String>,
}

fn hits<'a>(text: &str, fams: &'a [Family], pick: impl Fn(&Family) -> &[String]) -> Vec<&'a Family> {
    let t = text.to_ascii_lowercase();
    fams.iter().filter(|f| pick(f).iter().any(|n| !n.is_empty() && t.contains(&n.to_ascii_lowercase()))).collect()
}

/// Evaluates a fingerprint against the shipped registry.
pub fn evaluate(fp: &Value) -> Verdict {
    evaluate_with(fp, builtin())
}

/// A report's model fingerprint as the JSON `fingerprint --json` prints.
pub fn fingerprint_json(m: &gpuattest_proto::pb::ModelFingerprint) -> Value {
    serde_json::json!({
        "path": m.path, "format": m.format, "header_sha256": m.header_sha256,
        "tensor_count": m.tensor_count, "parameter_count": m.parameter_count,
        "architecture": m.architecture, "model_type": m.model_type, "name": m.name,
        "organization": m.organization, "base_models": m.base_models, "metadata": m.metadata,
    })
}

/// Evaluates a fingerprint (`fingerprint --json` output, or a model inside a report) against
/// `fams`, earlier families first.
pub fn evaluate_with(fp: &Value, fams: &[Family]) -> Verdict {
    let s = |k: &str| fp[k].as_str().unwrap_or_default().to_string();
    let meta = |k: &str| fp["metadata"][k].as_str().unwrap_or_default().to_string();
    let (name, org, arch, mtype) = (s("name"), s("organization"), s("architecture"), s("model_type"));
    let path_tail = s("path").rsplit('/').take(3).collect::<Vec<_>>().join("/");
    let bases: Vec<String> = fp["base_models"]
        .as_array()
        .map(|a| a.iter().filter_map(|b| b.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let mut reasons = Vec::new();
    // 1. Names and organisations (the file's own header, config.json's _name_or_path, GGUF general.*).
    let mut by_name = hits(&format!("{org} {name} {}", meta("general.basename")), fams, |f| &f.names);
    // Prefer the most specific: Kimi before DeepSeek for a Kimi name on DeepSeek architecture.
    by_name.dedup_by(|a, b| a.name == b.name);
    // 2. Tokenizer pre-tokenizer (GGUF).
    let tok = meta("tokenizer.ggml.pre");
    let by_tok =
        if tok.is_empty() { Vec::new() } else { fams.iter().filter(|f| f.tokenizers.contains(&tok)).collect() };
    // 3. Architecture / model_type.
    let by_arch: Vec<&Family> = fams
        .iter()
        .filter(|f| {
            f.model_types
                .iter()
                .any(|m| m.eq_ignore_ascii_case(&mtype) || (!arch.is_empty() && m.eq_ignore_ascii_case(&arch)))
        })
        .collect();
    // 4. Config signatures that pin a family whatever the name says.
    let sig = fams.iter().find_map(|f| {
        f.signatures.iter().find(|sig| !sig.is_empty() && sig.iter().all(|(k, v)| meta(k) == *v)).map(|sig| (f, sig))
    });
    // 0. An exact header hash: this very file is known.
    let header = s("header_sha256");
    let by_hash =
        fams.iter().find(|f| !header.is_empty() && f.header_sha256.iter().any(|h| h.eq_ignore_ascii_case(&header)));
    let (family, confidence) = if let Some(f) = by_hash {
        reasons.push(format!("the header hash {header} is a known {} file", f.name));
        (Some(f), 0.99)
    } else if let Some(f) = by_name.first() {
        reasons.push(format!(
            "the model's own name or organisation ({}) names {}",
            [org.as_str(), name.as_str()].iter().filter(|x| !x.is_empty()).cloned().collect::<Vec<_>>().join(", "),
            f.name
        ));
        (Some(*f), 0.9)
    } else if let Some((f, sig)) = sig {
        let text: Vec<String> = sig.iter().map(|(k, v)| format!("{}={v}", k.trim_start_matches("config."))).collect();
        reasons.push(format!("config signature {} is {}'s", text.join(" with "), f.name));
        (Some(f), 0.85)
    } else if let Some(f) = by_tok.first() {
        reasons.push(format!("GGUF pre-tokenizer {tok:?} belongs to {}", f.name));
        (Some(*f), 0.8)
    } else if let Some(f) = by_arch.first() {
        reasons.push(format!(
            "architecture {} / model_type {} is {}'s",
            if arch.is_empty() { "?" } else { &arch },
            if mtype.is_empty() { "?" } else { &mtype },
            f.name
        ));
        let shared = matches!(mtype.as_str(), "llama" | "qwen2" | "bert") || arch == "LlamaForCausalLM";
        if shared {
            reasons.push("other families reuse this architecture (Yi and DeepSeek-LLM use llama, R1 distills use qwen2): confidence is low without a name".into());
        }
        (Some(*f), if shared { 0.4 } else { 0.7 })
    } else {
        let from_path = hits(&path_tail, fams, |f| &f.names);
        match from_path.first() {
            Some(f) => {
                reasons.push(format!("only the file path ({path_tail}) suggests {}", f.name));
                (Some(*f), 0.3)
            }
            None => (None, 0.0),
        }
    };
    if let Some(f) = family
        && let Some(a) = by_arch.first()
        && a.name != f.name
    {
        reasons.push(format!(
            "built on the {} architecture ({}), as distills and derivatives are",
            a.name,
            if mtype.is_empty() { &arch } else { &mtype }
        ));
    }
    let mut lineage: Vec<String> =
        bases.iter().filter_map(|b| hits(b, fams, |f| &f.names).first().map(|f| f.name.clone())).collect();
    if let (Some(f), Some(a)) = (family, by_arch.first())
        && a.name != f.name
        && !lineage.contains(&a.name)
    {
        lineage.push(a.name.clone());
    }
    if !lineage.is_empty() {
        reasons.push(format!("derived from: {}", lineage.join(", ")));
    }
    let Some(f) = family else {
        return Verdict {
            family: "unknown".into(),
            developer: None,
            developer_country: None,
            restricted: false,
            severity: Severity::Low,
            confidence: 0.0,
            lineage,
            reasons: vec!["no name, organisation, tokenizer, config signature or architecture in the registry matches; review by hand".into()],
        };
    };
    let restricted =
        f.listing.as_deref().is_some_and(|l| l.contains("Entity List")) || CONCERN.contains(&f.country.as_str());
    let severity = f.severity.unwrap_or(if f.listing.as_deref().is_some_and(|l| l.starts_with("BIS Entity List")) {
        Severity::Critical
    } else if restricted {
        Severity::High
    } else {
        Severity::None
    });
    match (f.listing.as_deref(), restricted) {
        (Some(l), _) => reasons.push(format!("{}: {l}", f.developer)),
        (None, true) => reasons.push(format!(
            "{} is headquartered in {}, a country of concern under the 2025 BIS guidance; not known to be listed",
            f.developer, f.country
        )),
        (None, false) => reasons.push(format!("{} ({}) is not a restricted party", f.developer, f.country)),
    }
    Verdict {
        family: f.name.clone(),
        developer: Some(f.developer.clone()),
        developer_country: Some(f.country.clone()),
        restricted,
        severity,
        confidence,
        lineage,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn families_from_real_shaped_fingerprints() {
        let cases = [
            (
                json!({"architecture": "DeepseekV3ForCausalLM", "model_type": "deepseek_v3", "organization": "deepseek-ai", "name": "deepseek-ai/DeepSeek-V3"}),
                "DeepSeek",
                true,
                "high",
            ),
            (
                json!({"architecture": "Glm4ForCausalLM", "model_type": "glm4", "name": "THUDM/GLM-4-9B-0414", "organization": "THUDM"}),
                "GLM / ChatGLM",
                true,
                "critical",
            ),
            (
                json!({"model_type": "qwen2", "name": "Qwen2.5 7B Instruct", "organization": "Qwen"}),
                "Qwen",
                true,
                "high",
            ),
            (
                json!({"architecture": "LlamaForCausalLM", "model_type": "llama", "name": "meta-llama/Llama-3.1-8B-Instruct"}),
                "Llama",
                false,
                "none",
            ),
            (
                json!({"architecture": "MistralForCausalLM", "model_type": "mistral", "name": "mistralai/Mistral-7B-Instruct-v0.3"}),
                "Mistral",
                false,
                "none",
            ),
            (
                json!({"architecture": "BertModel", "model_type": "bert", "name": "sentence-transformers/all-MiniLM-L6-v2"}),
                "MiniLM / sentence-transformers",
                false,
                "none",
            ),
        ];
        for (fp, family, restricted, severity) in cases {
            let v = evaluate(&fp);
            assert_eq!(
                (v.family.as_str(), v.restricted, v.severity.as_str()),
                (family, restricted, severity),
                "{fp}: {v:?}"
            );
            assert!(!v.reasons.is_empty());
        }
    }

    #[test]
    fn shared_architectures_need_more_than_the_architecture() {
        // DeepSeek-R1-Distill-Qwen: qwen2 architecture, DeepSeek's name, Qwen lineage.
        let v = evaluate(
            &json!({"model_type": "qwen2", "name": "DeepSeek R1 Distill Qwen 7B", "organization": "Deepseek Ai", "base_models": ["Qwen2.5 Math 7B"]}),
        );
        assert_eq!(v.family, "DeepSeek");
        assert!(v.lineage.contains(&"Qwen".to_string()), "{v:?}");
        // Kimi K2 on the DeepSeek-V3 architecture.
        assert_eq!(evaluate(&json!({"model_type": "kimi_k2", "architecture": "DeepseekV3ForCausalLM", "name": "moonshotai/Kimi-K2-Instruct"})).family, "Kimi / Moonshot");
        // A llama-architecture file with no name: low confidence.
        let v = evaluate(&json!({"model_type": "llama"}));
        assert!(v.confidence < 0.5, "{v:?}");
        // A renamed DeepSeek-V3 still has its config signature.
        let v = evaluate(
            &json!({"model_type": "deepseek_v3", "name": "our-internal-model", "metadata": {"config.vocab_size": "129280", "config.n_routed_experts": "256"}}),
        );
        assert_eq!(v.family, "DeepSeek");
        assert_eq!(evaluate(&json!({})).family, "unknown");
    }
}
