//! The real-model checks: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to
//! f32, Q/K rows un-permuted) against Hugging Face `transformers` reading the
//! same GGUF with its own loader (gguf-py's dequantisation, its own Q/K
//! un-permutation and name map): final hidden states of three short texts
//! within 1e-4 relative of transformers' float64 run
//! (`tests/fixtures/smollm2_golden.json`, from `scripts/golden_smollm2.py`),
//! the same top-5 next tokens, and " Paris" after "The capital of France is"
//! with the logits of /work/shared/MODELS.md.
//!
//! The file is 98 MB and not in the repository: `scripts/fetch-smollm2.sh`
//! downloads it once into a cache, where these tests look (or at
//! `LLM2COMP_SMOLLM2_GGUF`). Without it each test says so on stderr (written
//! directly, so libtest's output capture does not swallow the notice) and
//! passes; a path set in the variable that does not exist is an error.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use llm2comp_backbone::{GgufFile, Input, Pass, Tokenizer, Transformer};
use llm2comp_tensor::Tensor;
use llm2comp_tensor::ops::matmul::linear_forward;
use serde_json::Value;

/// "The capital of France is" in SmolLM2's tokenizer.
const IDS: [u32; 5] = [504, 3575, 282, 4649, 314];
/// Top-3 next tokens and their logits: " Paris", " the", " London".
const TOP3: [(u32, f32); 3] = [(7042, 17.371), (260, 14.889), (4528, 13.245)];
/// log p(" Paris").
const LOGP_PARIS: f32 = -0.258;
/// Absolute logit tolerance: the reference values are given to 3 decimals
/// (±5e-4) and a 30-layer f32 forward summing in another order drifts by
/// ~1e-4 at logits of this size; 1e-2 still catches any modelling error (a
/// wrong RoPE layout or norm moves them by whole units).
const TOL: f32 = 1e-2;
/// Norm-wise relative bound on the final hidden states against the float64
/// reference. The issue asks for 1e-3; both sides dequantise the same blocks
/// exactly, so what is left is f32 rounding over 30 blocks: torch's own f32
/// run is 0.8e-6 to 1.1e-6 from float64 (recorded in the fixture), ours
/// 1.7e-6 to 2.3e-6 (the fixture's 6 significant digits add ~3e-7). 1e-4
/// leaves room for other summation orders, and catches a slip the issue's
/// 1e-3 would let through: RMSNorm eps 1e-6 instead of 1e-5 moves the
/// hidden states of "The capital of France is" by 6.4e-4 (measured in torch).
const HIDDEN_REL_TOL: f64 = 1e-4;

/// The GGUF, if downloaded: `LLM2COMP_SMOLLM2_GGUF`, else the cache of
/// `scripts/fetch-smollm2.sh`.
fn smollm2_path() -> Option<PathBuf> {
    let p = llm2comp_backbone::model::smollm2_gguf()?;
    assert!(
        p.is_file(),
        "LLM2COMP_SMOLLM2_GGUF={} does not exist",
        p.display()
    );
    Some(p)
}

/// The model and its tokenizer, loaded once for all tests of this file.
fn smollm2(test: &str) -> Option<&'static (Transformer, Tokenizer)> {
    static MODEL: OnceLock<Option<(Transformer, Tokenizer)>> = OnceLock::new();
    let loaded = MODEL.get_or_init(|| {
        let path = smollm2_path()?;
        let start = Instant::now();
        let gguf = GgufFile::open(&path).unwrap();
        let model = Transformer::from_gguf(&gguf).unwrap();
        let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
        let _ = writeln!(
            std::io::stderr(),
            "smollm2: loaded {} in {:.2?}",
            path.display(),
            start.elapsed()
        );
        Some((model, tokenizer))
    });
    if loaded.is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "{test}: SKIPPED (SmolLM2 not downloaded: run scripts/fetch-smollm2.sh, or set \
             LLM2COMP_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf)"
        );
    }
    loaded.as_ref()
}

/// (max abs error, norm-wise relative error).
fn errors(got: &[f32], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let (mut num, mut den, mut max) = (0.0f64, 0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        assert!(g.is_finite(), "non-finite output");
        let d = f64::from(g) - w;
        num += d * d;
        den += w * w;
        max = max.max(d.abs());
    }
    (max, (num / den).sqrt())
}

/// Logits of the rows `rows` of `hidden` [T, H].
fn logits_of(model: &Transformer, hidden: &[f32], rows: &[usize]) -> Vec<Vec<f32>> {
    let h = model.config().hidden_size;
    let picked: Vec<f32> = rows
        .iter()
        .flat_map(|&r| hidden[r * h..(r + 1) * h].iter().copied())
        .collect();
    let x = Tensor::from_vec(picked, &[rows.len(), h]).unwrap();
    let all = linear_forward(&x, model.lm_head()).unwrap().to_vec_f32();
    all.chunks(model.config().vocab_size)
        .map(<[f32]>::to_vec)
        .collect()
}

fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order[..k].iter().map(|&i| (i as u32, logits[i])).collect()
}

#[test]
fn smollm2_predicts_paris() {
    let Some((model, _)) = smollm2("smollm2_predicts_paris") else {
        return;
    };
    assert_eq!(model.config().vocab_size, 49152);
    assert!(model.is_tied());

    let start = Instant::now();
    let hidden = model
        .infer(Input::Ids(&IDS), &[0, IDS.len() as u32], &Pass::causal())
        .unwrap()
        .to_vec_f32();
    let logits = logits_of(model, &hidden, &[IDS.len() - 1]).remove(0);
    let top = top_k(&logits, 3);
    let lse = {
        let m = top[0].1;
        m + logits.iter().map(|&l| (l - m).exp()).sum::<f32>().ln()
    };
    let logp = top[0].1 - lse;
    let _ = writeln!(
        std::io::stderr(),
        "smollm2: top-3 {top:?}, log p(Paris) {logp:.4}, forward {:.2?}",
        start.elapsed()
    );
    assert!(
        (logp - LOGP_PARIS).abs() <= TOL,
        "log p(Paris) {logp}, expected {LOGP_PARIS} ± {TOL}"
    );
    for ((id, logit), (want_id, want)) in top.iter().zip(TOP3) {
        assert_eq!(*id, want_id, "top-3 ids {top:?}, expected {TOP3:?}");
        assert!(
            (logit - want).abs() <= TOL,
            "token {id}: logit {logit}, expected {want} ± {TOL}"
        );
    }
}

#[test]
fn smollm2_hidden_states_match_transformers() {
    let Some((model, tokenizer)) = smollm2("smollm2_hidden_states_match_transformers") else {
        return;
    };
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2_golden.json"
    );
    let g: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let h = model.config().hidden_size;
    assert_eq!(g["hidden_size"].as_u64(), Some(h as u64));
    let _ = writeln!(
        std::io::stderr(),
        "smollm2: reference from {}, {}",
        g["generator"],
        g["reference"]
    );
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 2);
    let ids: Vec<Vec<u32>> = cases
        .iter()
        .map(|c| {
            let ids: Vec<u32> = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let text = c["text"].as_str().unwrap();
            // Our tokenizer must agree with transformers' on the same file.
            assert_eq!(tokenizer.encode(text, false).unwrap(), ids, "{text:?}");
            ids
        })
        .collect();
    assert_eq!(ids[0], IDS);

    // All texts packed in one varlen batch, as the embedder runs them.
    let mut cu = vec![0u32];
    for s in &ids {
        cu.push(cu.last().unwrap() + s.len() as u32);
    }
    let hidden = model
        .infer(Input::Ids(&ids.concat()), &cu, &Pass::causal())
        .unwrap()
        .to_vec_f32();
    let last_rows: Vec<usize> = cu[1..].iter().map(|&e| e as usize - 1).collect();
    let logits = logits_of(model, &hidden, &last_rows);

    for (i, case) in cases.iter().enumerate() {
        let (a, b) = (cu[i] as usize, cu[i + 1] as usize);
        let want: Vec<f64> = case["hidden"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(want.len(), (b - a) * h, "case {i}: fixture shape");
        let (abs, rel) = errors(&hidden[a * h..b * h], &want);
        let ours = top_k(&logits[i], 5);
        let want_ids: Vec<u32> = case["top5_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let want_logits: Vec<f32> = case["top5_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let logit_err = ours
            .iter()
            .zip(&want_logits)
            .map(|((_, l), w)| (l - w).abs())
            .fold(0.0f32, f32::max);
        let _ = writeln!(
            std::io::stderr(),
            "smollm2 case {i} ({} tokens, {:?}): hidden vs transformers f64 rel {rel:.2e} \
             (max abs {abs:.2e}; torch f32 rel {}), top-5 logits max abs err {logit_err:.1e}",
            b - a,
            case["text"].as_str().unwrap(),
            case["torch_f32_vs_f64_rel"]["hidden"]
        );
        assert!(
            rel <= HIDDEN_REL_TOL,
            "case {i}: hidden states relative error {rel:.3e} (bound {HIDDEN_REL_TOL:e})"
        );
        let got_ids: Vec<u32> = ours.iter().map(|&(id, _)| id).collect();
        assert_eq!(got_ids, want_ids, "case {i}: top-5 next tokens");
        assert!(
            logit_err <= TOL,
            "case {i}: top-5 logits {ours:?}, expected {want_logits:?} ± {TOL}"
        );
    }
    assert_eq!(
        top_k(&logits[0], 1)[0].0,
        7042,
        "\" Paris\" after \"The capital of France is\""
    );
}
