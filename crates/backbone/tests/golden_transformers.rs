//! Our forward pass against Hugging Face `transformers` itself: tiny random
//! Llama (Llama-3 RoPE scaling, untied head; and plain RoPE, tied head), Qwen2
//! (q/k/v biases, tied embeddings) and Mistral (explicit head_dim ≠
//! hidden/heads) models, all with GQA, saved by `save_pretrained` and their
//! outputs, from `scripts/golden_transformers.py`. The two Llamas and the
//! Qwen2 are also saved in bf16 (`<arch>_bf16/`): our loader widens bf16 to
//! f32, and their reference is transformers on the same bf16 weights widened
//! exactly to float64, so the f32 bound below holds for them unchanged.
//! Everything goes through the public loading path (`config.json` →
//! `ModelConfig`, `model.safetensors` → `Transformer`), so a misread config
//! field, a misnamed tensor, or a layer computing something else shows up.
//!
//! The reference is the float64 run of the same weights, which has no
//! rounding error to speak of; our f32 forward must match it to what f32
//! rounding explains. Torch's own f32 run is printed beside ours as the
//! yardstick (both are f32 pipelines summing in different orders) and must
//! agree with ours to the same bound. The two sequences are run packed in
//! one varlen batch (the training path, `forward`) and each alone (`infer`).

use std::path::{Path, PathBuf};

use llm2comp_backbone::{Input, ModelConfig, Pass, SafetensorsFiles, Transformer};
use llm2comp_tensor::Tensor;
use llm2comp_tensor::ops::matmul::linear_forward;
use serde_json::Value;

/// Norm-wise relative error ‖got − want‖ / ‖want‖ bound. Hidden states and
/// logits are O(1) (unit-scale embeddings, norm weights near 1) and pass
/// through 2 blocks of length-≤64 dot products, softmax and RMSNorm in f32:
/// a few ulps (2⁻²⁴ ≈ 6e-8) per op, compounded over ~20 ops. Measured: ours
/// 1.2e-7 to 1.9e-7 against f64, torch's own f32 run 1.8e-7 to 2.2e-7; 1e-6
/// leaves room for another CPU's summation order and nothing more (ignoring
/// the Llama-3 RoPE scaling alone gives 1.2e-2).
const REL_TOL: f64 = 1e-6;
/// Max abs error bound, for values up to ~10 (the logits; measured ≤ 8.4e-6
/// against torch f32, which carries its own ≤ 5.7e-6, and ≤ 3.9e-6 against f64).
const ABS_TOL: f64 = 2e-5;

fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(arch)
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("an array of numbers")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

/// (max abs error, norm-wise relative error).
fn errors(got: &[f64], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let (mut num, mut den, mut max) = (0.0f64, 0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        assert!(g.is_finite(), "non-finite output");
        num += (g - w) * (g - w);
        den += w * w;
        max = max.max((g - w).abs());
    }
    (max, (num / den.max(f64::MIN_POSITIVE)).sqrt())
}

fn check(what: &str, got: &[f64], want: &[f64]) {
    let (abs, rel) = errors(got, want);
    eprintln!("{what:<44} max abs {abs:.2e}  rel {rel:.2e}");
    assert!(
        abs <= ABS_TOL && rel <= REL_TOL,
        "{what}: max abs error {abs:.3e} (bound {ABS_TOL:e}), relative {rel:.3e} (bound {REL_TOL:e})"
    );
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_vec_f32().into_iter().map(f64::from).collect()
}

/// Hidden states and logits [T, H], [T, V] of the given rows.
fn rows(t: &[f64], width: usize, from: usize, to: usize) -> &[f64] {
    &t[from * width..to * width]
}

fn read_golden(arch: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(arch).join("golden.json")).unwrap())
        .unwrap()
}

/// Checks the fixture is stored as `dtype` (`F32` or `BF16`), with an
/// `lm_head.weight` exactly when the head is untied, then matches it.
fn golden(arch: &str, class: &str, dtype: &str) {
    let dir = fixture(arch);
    let g = read_golden(arch);
    assert_eq!(g["architecture"], class, "{arch}: fixture of another class");
    eprintln!(
        "{arch}: reference from {}; {}",
        g["generator"], g["weights"]
    );
    let config = ModelConfig::from_file(dir.join("config.json")).unwrap();
    let files = SafetensorsFiles::open(&dir).unwrap();
    for name in files.names() {
        let (stored, _) = files.dtype_and_shape(name).unwrap();
        assert_eq!(stored, dtype, "{arch}: tensor {name} stored as {stored}");
    }
    assert_eq!(
        files.names().contains(&"lm_head.weight"),
        !config.tie_word_embeddings,
        "{arch}: a separate LM head is stored exactly when it is untied"
    );
    let model = Transformer::from_safetensors(&config, &files).unwrap();
    assert_eq!(model.is_tied(), config.tie_word_embeddings);
    let (h, v) = (config.hidden_size, config.vocab_size);

    let seqs: Vec<Vec<u32>> = g["seqs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| floats(s).into_iter().map(|x| x as u32).collect())
        .collect();
    assert_eq!(seqs.len(), 2);
    assert_ne!(
        seqs[0].len(),
        seqs[1].len(),
        "the sequences must differ in length"
    );
    let mut cu = vec![0u32];
    for s in &seqs {
        cu.push(cu.last().unwrap() + s.len() as u32);
    }
    let packed_ids: Vec<u32> = seqs.concat();
    let (packed, _) = model
        .forward(Input::Ids(&packed_ids), &cu, &Pass::causal())
        .unwrap();
    let packed_logits = to_f64(&linear_forward(&packed, model.lm_head()).unwrap());
    let packed = to_f64(&packed);

    for (i, ids) in seqs.iter().enumerate() {
        let n = ids.len();
        let alone = model
            .infer(Input::Ids(ids), &[0, n as u32], &Pass::causal())
            .unwrap();
        let alone_logits = to_f64(&linear_forward(&alone, model.lm_head()).unwrap());
        let alone = to_f64(&alone);
        let (a, b) = (cu[i] as usize, cu[i + 1] as usize);
        let want64 = &g["f64"][i];
        let want32 = &g["f32"][i];
        let (h64, l64) = (floats(&want64["hidden"]), floats(&want64["logits"]));
        let (h32, l32) = (floats(&want32["hidden"]), floats(&want32["logits"]));
        assert_eq!(
            (h64.len(), l64.len()),
            (n * h, n * v),
            "{arch}: fixture shape"
        );

        let torch32 = (errors(&h32, &h64), errors(&l32, &l64));
        eprintln!(
            "{arch} seq {i} ({n} tokens): torch f32 vs f64: hidden max abs {:.2e} rel {:.2e}, \
             logits max abs {:.2e} rel {:.2e}",
            torch32.0.0, torch32.0.1, torch32.1.0, torch32.1.1
        );
        let tag = |s: &str| format!("{arch} seq {i} {s}");
        check(&tag("alone  hidden vs f64"), &alone, &h64);
        check(&tag("alone  logits vs f64"), &alone_logits, &l64);
        check(&tag("packed hidden vs f64"), rows(&packed, h, a, b), &h64);
        check(
            &tag("packed logits vs f64"),
            rows(&packed_logits, v, a, b),
            &l64,
        );
        check(&tag("alone  logits vs torch f32"), &alone_logits, &l32);
    }
}

#[test]
fn llama_with_llama3_rope_scaling_and_untied_head_matches_transformers() {
    let c = ModelConfig::from_file(fixture("llama").join("config.json")).unwrap();
    assert!(c.rope.scaling.is_some() && !c.tie_word_embeddings);
    assert!(c.num_kv_heads < c.num_heads, "GQA");
    golden("llama", "LlamaForCausalLM", "F32");
}

#[test]
fn llama_with_tied_head_matches_transformers() {
    let c = ModelConfig::from_file(fixture("llama_tied").join("config.json")).unwrap();
    assert!(c.rope.scaling.is_none() && c.tie_word_embeddings);
    assert!(c.num_kv_heads < c.num_heads, "GQA");
    assert_eq!(c.rope.theta, 5e5);
    golden("llama_tied", "LlamaForCausalLM", "F32");
}

#[test]
fn qwen2_with_qkv_bias_and_tied_embeddings_matches_transformers() {
    let c = ModelConfig::from_file(fixture("qwen2").join("config.json")).unwrap();
    assert!(c.attention_bias.qkv && c.tie_word_embeddings);
    assert_eq!(c.rope.theta, 1e6);
    golden("qwen2", "Qwen2ForCausalLM", "F32");
}

#[test]
fn mistral_with_explicit_head_dim_matches_transformers() {
    let c = ModelConfig::from_file(fixture("mistral").join("config.json")).unwrap();
    assert_eq!(c.head_dim * c.num_heads, 2 * c.hidden_size);
    golden("mistral", "MistralForCausalLM", "F32");
}

/// The bf16 copy must be a different model from the f32 one by more than
/// the tolerance (else its own golden file would prove nothing about the
/// bf16 path: reading bf16 bits as f16, or dropping the low half of an f32,
/// must fail), yet close to it (it is a rounding of the same weights).
fn bf16_golden(arch: &str, class: &str) {
    let rounded = format!("{arch}_bf16");
    let a = floats(&read_golden(arch)["f64"][0]["logits"]);
    let b = floats(&read_golden(&rounded)["f64"][0]["logits"]);
    let (_, rel) = errors(&b, &a);
    eprintln!("{rounded}: bf16 rounding of the weights moves the f64 logits by {rel:.2e}");
    assert!(
        (100.0 * REL_TOL..0.1).contains(&rel),
        "{rounded}: bf16 and f32 references differ by {rel:.2e}"
    );
    golden(&rounded, class, "BF16");
}

#[test]
fn llama_bf16_checkpoint_with_untied_head_matches_transformers() {
    bf16_golden("llama", "LlamaForCausalLM");
}

#[test]
fn llama_bf16_checkpoint_with_tied_head_matches_transformers() {
    bf16_golden("llama_tied", "LlamaForCausalLM");
}

#[test]
fn qwen2_bf16_checkpoint_with_qkv_bias_matches_transformers() {
    let c = ModelConfig::from_file(fixture("qwen2_bf16").join("config.json")).unwrap();
    assert!(c.attention_bias.qkv && c.tie_word_embeddings);
    bf16_golden("qwen2", "Qwen2ForCausalLM");
}
