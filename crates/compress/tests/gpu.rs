//! The compression step with the whole embedding table trained
//! (`--train-embeddings all`) on CUDA against the same step on the CPU (GPU
//! suite: `scripts/gpu-build.sh` copies this executable into gpu-bin/ as
//! `gpu-tests-compress`, `scripts/gpu-check.sh` runs it). Without a device
//! each test prints `SKIPPED (no CUDA device)` and returns; gpu-check.sh
//! counts that line as a failure on the GPU machine. (`compress-step-gpu`
//! checks the step that trains only the memory rows, on a larger model.)
//!
//! A tiny random model (2 blocks, hidden 128, head_dim 64 so bf16 takes the
//! MMA attention kernels; tied head; LoRA r 4 with random B; 3 memory
//! tokens), `kl`, three passages. On CUDA the encoder reads and trains an f32
//! master of the table (`TokenEmbedding::set_master`) whose gradient is
//! scattered on the device; the bf16 table stays the original, which the
//! decoder, the teacher and the tied head read. Compared: the loss and the
//! gradient of every trainable tensor (each LoRA A and B, the memory rows,
//! the table), then one AdamW step, after which the master must have moved
//! and the bf16 table must not.
//!
//! Bounds, as `compress-step-gpu`'s: CUDA in f32 (cuBLAS without TF32,
//! simple attention) differs from the CPU in summation order only: loss
//! 1e-4 relative, each gradient 1e-3 relative L2 error. CUDA in bf16 rounds
//! activations and frozen weights to 8 bits: loss 2e-2 relative, each
//! gradient 1e-1 relative L2 error (the stage-1 step measured 5-7% through
//! 30 layers on an H100; docs/benchmarks.md). A gradient scattered to the
//! wrong row or dropped is an O(1) error. Not yet run on a GPU when written.

use std::path::Path;
use std::sync::Once;

use llm2comp_backbone::{LoraConfig, LoraTarget, ModelConfig, Transformer};
use llm2comp_compress::{CompressConfig, Compressor, Objective, Sample, TrainEmbeddings, pack};
use llm2comp_tensor::ops::adamw::{self, AdamWConfig};
use llm2comp_tensor::testing::{rel_err, report_skip, rng, uniform};
use llm2comp_tensor::{DType, Device, Tensor, cuda};

const V: usize = 64;
const H: usize = 128;
const K: usize = 3;
const BOS: u32 = 1;
const TABLE: &str = "model.embed_tokens.weight";

/// (dtype, loss bound, gradient bound): see the module comment.
const BOUNDS: [(DType, f64, f64); 2] = [(DType::F32, 1e-4, 1e-3), (DType::BF16, 2e-2, 1e-1)];

fn device() -> Option<Device> {
    static POISON: Once = Once::new();
    if cuda::device_count() == 0 || cuda::device(0).is_err() {
        report_skip("no CUDA device");
        return None;
    }
    POISON.call_once(|| cuda::set_poison(true));
    Some(Device::Cuda(0))
}

fn compressor() -> Compressor {
    let json = format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "hidden_size": {H}, "intermediate_size": 192,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "vocab_size": {V}, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": true}}"#
    );
    let cfg = ModelConfig::from_json(&json, Path::new("tiny/config.json")).unwrap();
    let model = Transformer::random(&cfg, 21).unwrap();
    let c = CompressConfig {
        objective: Objective::Kl,
        memory_tokens: K,
        lora: LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.05,
            targets: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down],
        },
        train_embeddings: TrainEmbeddings::All,
        checkpoint: false,
    };
    let mut comp = Compressor::new(model, BOS, c, 22).unwrap();
    let mut r = rng(23);
    for p in comp.params() {
        if p.name.ends_with("lora_B.weight") {
            let n = p.value.numel();
            *p.value = Tensor::from_vec(uniform::<f32>(&mut r, n, 0.05), p.value.shape()).unwrap();
        }
    }
    comp
}

fn samples() -> Vec<Sample> {
    [(24usize, 11usize), (30, 14), (36, 12)]
        .iter()
        .enumerate()
        .map(|(i, &(len, split))| Sample {
            ids: (0..len)
                .map(|j| (2 + (i * 7 + j * 13) % (V - 2)) as u32)
                .collect(),
            split: Some(split),
        })
        .collect()
}

fn grads(c: &mut Compressor) -> Vec<(String, Vec<f32>)> {
    c.params()
        .into_iter()
        .map(|p| (p.name, p.grad.to_device(Device::Cpu).unwrap().to_vec_f32()))
        .collect()
}

#[test]
fn training_the_whole_table_matches_the_cpu() {
    let b = pack(&samples(), Objective::Kl, BOS, K, V).unwrap();
    let mut cpu = compressor();
    let want_loss = cpu.step(&b, Some(9), 0.5).unwrap().loss;
    let want = grads(&mut cpu);
    assert!(want.iter().any(|(n, _)| n == TABLE), "the table is trained");
    let Some(dev) = device() else { return };
    for (dtype, loss_bound, grad_bound) in BOUNDS {
        let tag = format!("kl, whole table trained, {dtype}");
        let mut gpu = cpu.to_device(dev, dtype).unwrap();
        let master = gpu
            .model()
            .embedding()
            .master()
            .expect("an f32 master on CUDA");
        assert_eq!(master.dtype(), DType::F32);
        let loss = gpu.step(&b, Some(9), 0.5).unwrap().loss;
        let rel = (loss - want_loss).abs() / want_loss.abs();
        eprintln!(
            "{tag}: loss {loss:.6} vs CPU {want_loss:.6}, rel {rel:.2e} (bound {loss_bound:.0e})"
        );
        assert!(rel <= loss_bound, "{tag}: loss {loss} vs {want_loss}");
        let got = grads(&mut gpu);
        assert_eq!(got.len(), want.len(), "{tag}");
        for ((name, g), (_, w)) in got.iter().zip(&want) {
            assert!(
                w.iter().any(|x| *x != 0.0),
                "{tag} {name}: zero CPU gradient"
            );
            let e = if g.iter().all(|x| x.is_finite()) {
                rel_err(g, w)
            } else {
                f64::INFINITY
            };
            eprintln!("{tag} {name}: gradient rel L2 err {e:.3e} (bound {grad_bound:.0e})");
            assert!(e <= grad_bound, "{tag} {name}: {e:.3e} > {grad_bound:.0e}");
        }

        // One AdamW step: the master moves, the compute table does not.
        let table_before = gpu.model().embedding().table().to_vec_f32();
        let master_before = gpu.model().embedding().trained_table().to_vec_f32();
        let opt = AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        for p in gpu.params() {
            let z = || Tensor::zeros(p.value.shape(), DType::F32, p.value.device());
            let (mut m, mut v) = (z(), z());
            adamw::step(p.value, p.grad, &mut m, &mut v, &opt, 1).unwrap();
        }
        let e = gpu.model().embedding();
        assert_eq!(
            e.table().to_vec_f32(),
            table_before,
            "{tag}: the bf16 table changed"
        );
        assert_eq!(gpu.base_table().to_vec_f32(), table_before);
        assert_ne!(
            e.trained_table().to_vec_f32(),
            master_before,
            "{tag}: the master did not train"
        );
    }
}
