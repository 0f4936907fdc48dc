//! `config.json` parsing: real checkpoints' configs give the published
//! parameter counts, every unsupported option is refused by name, and every
//! error names the file.

use std::path::{Path, PathBuf};

use llm2comp_backbone::{Architecture, AttentionBias, BackboneError, ModelConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(name: &str) -> ModelConfig {
    ModelConfig::from_file(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Parses `smollm2-135m.json` with `edit` applied to its JSON.
fn smollm_with(edit: impl FnOnce(&mut serde_json::Value)) -> Result<ModelConfig, BackboneError> {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("smollm2-135m.json")).unwrap())
            .unwrap();
    edit(&mut v);
    ModelConfig::from_json(&v.to_string(), Path::new("models/x/config.json"))
}

/// An edit of the fixture's JSON and the text its error must contain.
type Case = (Box<dyn FnOnce(&mut serde_json::Value)>, &'static str);

fn err_text(r: Result<ModelConfig, BackboneError>) -> String {
    let e = r.expect_err("the config must be refused").to_string();
    assert!(
        e.starts_with("models/x/config.json: "),
        "error must name the file: {e}"
    );
    e
}

#[test]
fn smollm2_135m() {
    let c = load("smollm2-135m.json");
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(
        (c.hidden_size, c.intermediate_size, c.num_layers),
        (576, 1536, 30)
    );
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (9, 3, 64));
    assert_eq!((c.vocab_size, c.max_position_embeddings), (49152, 8192));
    assert_eq!(c.rope.theta, 100_000.0);
    assert_eq!(c.rope.head_dim, 64);
    assert!(c.rope.scaling.is_none());
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.attention_bias, AttentionBias::default());
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.as_slice()),
        (Some(1), &[2][..])
    );
    assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
    assert_eq!(c.num_parameters(), 134_515_008);
}

#[test]
fn llama_3_1_8b_with_rope_scaling_and_eos_list() {
    let c = load("llama-3.1-8b.json");
    let s = c.rope.scaling.expect("llama3 rope scaling");
    assert_eq!(
        (s.factor, s.low_freq_factor, s.high_freq_factor),
        (8.0, 1.0, 4.0)
    );
    assert_eq!(s.original_max_position_embeddings, 8192);
    assert_eq!(c.rope.theta, 500_000.0);
    assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.num_parameters(), 8_030_261_248);
}

#[test]
fn qwen2_0_5b_has_qkv_bias_and_no_window() {
    let c = load("qwen2-0.5b.json");
    assert_eq!(c.architecture, Architecture::Qwen2);
    assert_eq!(
        c.attention_bias,
        AttentionBias {
            qkv: true,
            o: false
        }
    );
    assert_eq!(c.sliding_window, None);
    assert_eq!(c.head_dim, 64);
    assert_eq!(c.num_parameters(), 494_032_768);
}

#[test]
fn mistral_7b_window_refuses_longer_sequences_only() {
    let c = load("mistral-7b-v0.1.json");
    assert_eq!(c.architecture, Architecture::Mistral);
    assert_eq!(c.sliding_window, Some(4096));
    assert_eq!(c.num_parameters(), 7_241_732_096);
    let origin = fixture("mistral-7b-v0.1.json");
    c.check_sequence_len(4096, &origin).unwrap();
    let e = c.check_sequence_len(4097, &origin).unwrap_err().to_string();
    assert!(
        e.contains("sliding window of 4096") && e.contains("mistral-7b-v0.1.json"),
        "{e}"
    );
}

/// transformers ≥ 5 writes `rope_parameters` (theta inside) and `dtype`, and
/// no top-level `rope_theta`/`rope_scaling`: both must be read, or the model
/// would silently run base 10000 without scaling.
#[test]
fn transformers_5_rope_parameters_are_read() {
    use serde_json::json;
    let c = smollm_with(|v| {
        let o = v.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.remove("rope_scaling");
        o.remove("torch_dtype");
        o.insert("dtype".into(), json!("float32"));
        o.insert(
            "rope_parameters".into(),
            json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}),
        );
    })
    .unwrap();
    assert_eq!(c.rope.theta, 500_000.0);
    let s = c.rope.scaling.expect("llama3 scaling from rope_parameters");
    assert_eq!((s.factor, s.original_max_position_embeddings), (8.0, 8192));
    assert_eq!(c.torch_dtype.as_deref(), Some("float32"));

    let plain = smollm_with(|v| {
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 1e6});
    })
    .unwrap();
    assert_eq!((plain.rope.theta, plain.rope.scaling), (1e6, None));

    // Both spellings, agreeing: accepted.
    let both = smollm_with(|v| {
        v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 100000.0})
    })
    .unwrap();
    assert_eq!(both.rope.theta, 100_000.0);

    let cases: Vec<Case> = vec![
        (
            Box::new(|v| v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 1e6})),
            "disagrees with rope_parameters",
        ),
        (
            Box::new(|v| {
                v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0,
                    "low_freq_factor": 1.0, "high_freq_factor": 4.0});
                v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 100000.0});
            }),
            "rope_scaling disagrees with rope_parameters",
        ),
        (
            Box::new(|v| v["rope_parameters"] = json!({"rope_type": "yarn", "factor": 4.0})),
            "unsupported: rope_parameters type `yarn`",
        ),
        (
            Box::new(|v| {
                v["rope_parameters"] =
                    json!({"full_attention": {"rope_type": "default", "rope_theta": 1e4}})
            }),
            "per-layer-type RoPE",
        ),
        (
            Box::new(|v| {
                v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 100000.0,
                    "partial_rotary_factor": 0.5})
            }),
            "partial_rotary_factor",
        ),
    ];
    for (edit, want) in cases {
        let e = err_text(smollm_with(edit));
        assert!(e.contains(want), "wanted `{want}` in: {e}");
    }
}

#[test]
fn unsupported_options_are_refused_by_name() {
    use serde_json::json;
    let cases: Vec<Case> = vec![
        (
            Box::new(|v| v["architectures"] = json!(["GemmaForCausalLM"])),
            "GemmaForCausalLM",
        ),
        (
            Box::new(|v| v["hidden_act"] = json!("gelu")),
            "hidden_act `gelu`",
        ),
        (Box::new(|v| v["mlp_bias"] = json!(true)), "mlp_bias"),
        (
            Box::new(|v| v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0})),
            "rope_scaling type `yarn`",
        ),
        (
            Box::new(|v| {
                v["architectures"] = json!(["Qwen2ForCausalLM"]);
                v["use_sliding_window"] = json!(true);
            }),
            "use_sliding_window",
        ),
    ];
    for (edit, want) in cases {
        let e = err_text(smollm_with(edit));
        assert!(e.contains("unsupported") && e.contains(want), "{e}");
    }
}

#[test]
fn malformed_or_inconsistent_configs_are_errors() {
    use serde_json::json;
    let cases: Vec<Case> = vec![
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("hidden_size");
            }),
            "missing `hidden_size`",
        ),
        (
            Box::new(|v| v["num_key_value_heads"] = json!(4)),
            "not a multiple of num_key_value_heads 4",
        ),
        (
            Box::new(|v| v["head_dim"] = json!(63)),
            "head_dim must be even",
        ),
        (
            Box::new(|v| v["vocab_size"] = json!(0)),
            "`vocab_size` must be at least 1",
        ),
        (
            Box::new(|v| v["eos_token_id"] = json!(49152)),
            "eos_token_id 49152 is outside",
        ),
        (
            Box::new(|v| v["eos_token_id"] = json!("</s>")),
            "`eos_token_id` must be a token id",
        ),
        (
            Box::new(|v| v["rope_theta"] = json!(-1.0)),
            "rope_theta must be > 0",
        ),
        (
            Box::new(|v| {
                v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0,
                    "low_freq_factor": 4.0, "high_freq_factor": 1.0})
            }),
            "must exceed low_freq_factor",
        ),
        (
            Box::new(|v| v["hidden_size"] = json!("576")),
            "invalid type",
        ),
    ];
    for (edit, want) in cases {
        let e = err_text(smollm_with(edit));
        assert!(e.contains(want), "wanted `{want}` in: {e}");
    }
}

#[test]
fn unreadable_and_non_json_files_name_the_file() {
    let e = ModelConfig::from_file("/nonexistent/config.json")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/nonexistent/config.json: "), "{e}");
    let e = ModelConfig::from_json("{ \"hidden_size\": 5,", Path::new("models/x/config.json"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("models/x/config.json: ") && e.contains("line 1"),
        "{e}"
    );
}

#[test]
fn model_type_stands_in_for_a_missing_architectures_list() {
    let c = smollm_with(|v| {
        v.as_object_mut().unwrap().remove("architectures");
    })
    .unwrap();
    assert_eq!(c.architecture, Architecture::Llama);
}

/// `to_hf_json` writes back every field the loader reads: each real and
/// golden config, and edits of them (Llama-3 scaling, attention biases, a
/// sliding window, several EOS ids, no BOS, a dtype), reads back equal.
#[test]
fn to_hf_json_round_trips_through_from_json() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden");
    let mut configs: Vec<ModelConfig> = [
        "smollm2-135m.json",
        "llama-3.1-8b.json",
        "qwen2-0.5b.json",
        "mistral-7b-v0.1.json",
    ]
    .iter()
    .map(|n| load(n))
    .collect();
    for arch in ["llama", "llama_tied", "qwen2", "mistral", "llama_bf16"] {
        configs.push(ModelConfig::from_file(golden.join(arch).join("config.json")).unwrap());
    }
    let mut edited = load("smollm2-135m.json");
    edited.attention_bias = AttentionBias { qkv: true, o: true };
    edited.eos_token_ids = vec![2, 7, 9];
    edited.bos_token_id = None;
    edited.torch_dtype = None;
    edited.rms_norm_eps = 1.234_567_890_123e-6;
    configs.push(edited);
    let mut seen_scaling = false;
    for c in configs {
        seen_scaling |= c.rope.scaling.is_some();
        let text = c.to_hf_json().unwrap().to_string();
        let back = ModelConfig::from_json(&text, Path::new("x/config.json"))
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(back, c, "{text}");
    }
    assert!(seen_scaling, "a Llama-3 rope_scaling config is covered");
    // A Llama with q/k/v biases but none on o_proj has no Hugging Face spelling.
    let mut odd = load("smollm2-135m.json");
    odd.attention_bias = AttentionBias {
        qkv: true,
        o: false,
    };
    let e = odd.to_hf_json().unwrap_err().to_string();
    assert!(
        e.contains("unsupported") && e.contains("LlamaForCausalLM"),
        "{e}"
    );
}
