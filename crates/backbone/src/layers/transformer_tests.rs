//! Whole-model checks on a tiny random model (2 layers, hidden 16, 4 query
//! heads and 2 KV heads of width 4, vocabulary 50, 3 extra rows): gradients
//! against finite differences for every kind of trainable tensor, packed
//! sequences not seeing each other, LoRA merging, checkpointing, and the
//! shared-weight semantics of clones.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::layers::grad_check::{check_f32, rand_tensor, weighted_sum};
use crate::layers::lora::LoraConfig;
use llm2comp_tensor::testing::{assert_close, rel_err};

pub(crate) fn tiny_config(arch: &str) -> ModelConfig {
    let json = format!(
        r#"{{"architectures": ["{arch}"], "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 50, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": true}}"#
    );
    ModelConfig::from_json(&json, Path::new("tiny/config.json")).unwrap()
}

const BASE_VOCAB: u32 = 50;

/// A tiny model with adapters on every projection (B made random so dA is
/// not identically zero) and 3 extra rows.
fn tiny_model(arch: &str) -> Transformer {
    let mut m = Transformer::random(&tiny_config(arch), 7).unwrap();
    let cfg = LoraConfig {
        r: 2,
        alpha: 4.0,
        dropout: 0.25,
        targets: LoraTarget::ALL.to_vec(),
    };
    m.add_lora(&cfg, 3).unwrap();
    for (l, b) in m.blocks_mut().iter_mut().enumerate() {
        for (j, t) in LoraTarget::ALL.into_iter().enumerate() {
            let lora = b.linear_mut(t).lora_mut().unwrap();
            lora.b = rand_tensor(lora.b.shape(), (l * 10 + j) as u64, 0.3);
        }
    }
    m.set_extra_rows(Some(rand_tensor(&[3, 16], 99, 1.0)))
        .unwrap();
    m
}

/// Two sequences (5 and 7 tokens) with extra ids at the end of each, as memory tokens sit.
fn batch() -> (Vec<u32>, Vec<u32>) {
    let ids = vec![1, 7, 30, 49, 50, 3, 3, 12, 44, 0, 51, 52];
    (ids, vec![0, 5, 12])
}

fn all_trainable() -> Trainable {
    Trainable {
        lora: true,
        extra_rows: true,
        final_norm: true,
        embedding: true,
    }
}

/// Overwrites the parameter `name` of `m` with `values`.
fn set_param(m: &mut Transformer, name: &str, values: &[f32]) {
    let mut g = m.zero_grads(&all_trainable());
    let p = m
        .params(&mut g)
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no parameter {name}"));
    *p.value = Tensor::from_vec(values.to_vec(), p.value.shape()).unwrap();
}

fn check_whole_model(pass: Pass) {
    let model = tiny_model("LlamaForCausalLM");
    let (ids, cu) = batch();
    let w = rand_tensor(&[ids.len(), 16], 5, 1.0);
    let loss =
        |m: &Transformer, input: Input| weighted_sum(&m.forward(input, &cu, &pass).unwrap().0, &w);

    // Gradients w.r.t. the input embeddings (inputs_embeds path).
    let x = model.embedding().forward(&ids).unwrap();
    let (_, cache) = model.forward(Input::Embeds(&x), &cu, &pass).unwrap();
    let dx = model.backward(&w, &cache, None).unwrap();
    check_f32(
        "inputs_embeds",
        |v| {
            loss(
                &model,
                Input::Embeds(&Tensor::from_vec(v.to_vec(), &[12, 16]).unwrap()),
            )
        },
        &x.to_vec_f32(),
        &dx.to_vec_f32(),
    );

    // Gradients w.r.t. every trainable tensor kind (id path).
    let mut grads = model.zero_grads(&all_trainable());
    let (_, cache) = model.forward(Input::Ids(&ids), &cu, &pass).unwrap();
    let dx_ids = model.backward(&w, &cache, Some(&mut grads)).unwrap();
    assert_close(
        "ids and embeds agree",
        &dx_ids.to_vec_f32(),
        &dx.to_vec_f32(),
        1e-6,
    );
    let mut probe = model.clone();
    let mut g2 = grads.clone();
    let named: Vec<(String, Vec<f32>, Vec<f32>)> = probe
        .params(&mut g2)
        .into_iter()
        .map(|p| (p.name, p.value.to_vec_f32(), p.grad.to_vec_f32()))
        .collect();
    assert_eq!(
        named.len(),
        2 * 7 * 2 + 3,
        "LoRA A/B x 7 x 2 layers + extra rows, norm, table"
    );
    for (name, value, grad) in &named {
        // Every kind once, and a different projection per layer to keep the test fast.
        let wanted = name.contains("layers.0.self_attn.q_proj")
            || name.contains("layers.0.self_attn.k_proj")
            || name.contains("layers.1.self_attn.o_proj")
            || name.contains("layers.1.mlp.gate_proj")
            || name.contains("layers.0.mlp.down_proj")
            || !name.contains("layers.");
        if !wanted {
            continue;
        }
        let mut m = model.clone();
        check_f32(
            name,
            |v| {
                set_param(&mut m, name, v);
                loss(&m, Input::Ids(&ids))
            },
            value,
            grad,
        );
    }
}

#[test]
fn whole_model_gradients_causal() {
    check_whole_model(Pass::causal().with_lora(true));
}

#[test]
fn whole_model_gradients_bidirectional_with_dropout() {
    check_whole_model(Pass::bidirectional().with_dropout(17, 0.2));
}

#[test]
fn packed_sequences_do_not_see_each_other() {
    let model = tiny_model("Qwen2ForCausalLM");
    let (ids, cu) = batch();
    for pass in [Pass::causal(), Pass::bidirectional()] {
        let packed = model
            .infer(Input::Ids(&ids), &cu, &pass)
            .unwrap()
            .to_vec_f32();
        let a = model
            .infer(Input::Ids(&ids[..5]), &[0, 5], &pass)
            .unwrap()
            .to_vec_f32();
        let b = model
            .infer(Input::Ids(&ids[5..]), &[0, 7], &pass)
            .unwrap()
            .to_vec_f32();
        assert_close("first alone", &packed[..5 * 16], &a, 1e-5);
        assert_close("second alone", &packed[5 * 16..], &b, 1e-5);
    }
    // And the mask matters: bidirectional differs from causal.
    let c = model.infer(Input::Ids(&ids), &cu, &Pass::causal()).unwrap();
    let b = model
        .infer(
            Input::Ids(&ids),
            &cu,
            &Pass::bidirectional().with_lora(false),
        )
        .unwrap();
    assert!(rel_err(&c.to_vec_f32(), &b.to_vec_f32()) > 1e-2);
}

#[test]
fn merging_lora_reproduces_the_side_path() {
    let model = tiny_model("Qwen2ForCausalLM");
    let (ids, cu) = batch();
    let pass = Pass::bidirectional();
    let side = model.infer(Input::Ids(&ids), &cu, &pass).unwrap();
    let mut merged = model.clone();
    merged.merge_lora().unwrap();
    let m = merged.infer(Input::Ids(&ids), &cu, &pass).unwrap();
    assert_close("merged", &m.to_vec_f32(), &side.to_vec_f32(), 1e-5);
    // The original's base weights are untouched: without LoRA it still differs.
    let base = model
        .infer(Input::Ids(&ids), &cu, &pass.with_lora(false))
        .unwrap();
    assert!(rel_err(&base.to_vec_f32(), &side.to_vec_f32()) > 1e-2);
}

/// A chained stage (stage 1's LoRA merged, a fresh LoRA of another rank
/// and alpha on top) equals the base model carrying the stacked adapter.
#[test]
fn stacked_adapters_equal_the_merged_chain() {
    let stage1 = tiny_model("LlamaForCausalLM");
    let (ids, cu) = batch();
    let pass = Pass::bidirectional();
    let earlier = stage1.loras();
    let mut stage2 = stage1.clone();
    stage2.merge_lora().unwrap();
    let cfg = LoraConfig {
        r: 3,
        alpha: 9.0,
        dropout: 0.0,
        targets: LoraTarget::ALL.to_vec(),
    };
    stage2.add_lora(&cfg, 11).unwrap();
    for (l, b) in stage2.blocks_mut().iter_mut().enumerate() {
        for (j, t) in LoraTarget::ALL.into_iter().enumerate() {
            let lora = b.linear_mut(t).lora_mut().unwrap();
            lora.b = rand_tensor(lora.b.shape(), 200 + 10 * l as u64 + j as u64, 0.3);
        }
    }
    let chained = stage2.infer(Input::Ids(&ids), &cu, &pass).unwrap();

    let mut stacked = stage2.clone();
    stacked.stack_loras(&earlier).unwrap();
    let mut on_base = Transformer::random(&tiny_config("LlamaForCausalLM"), 7).unwrap();
    on_base
        .set_extra_rows(stage1.embedding().extra().cloned())
        .unwrap();
    for (l, t, lo) in stacked.loras() {
        assert_eq!((lo.rank(), lo.scale), (5, 3.0));
        on_base.blocks_mut()[l].linear_mut(t).set_lora(lo).unwrap();
    }
    let out = on_base.infer(Input::Ids(&ids), &cu, &pass).unwrap();
    assert_close("stacked", &out.to_vec_f32(), &chained.to_vec_f32(), 1e-5);
    // Stage 2's own adapter alone on the base is not the chain.
    let mut alone = Transformer::random(&tiny_config("LlamaForCausalLM"), 7).unwrap();
    alone
        .set_extra_rows(stage1.embedding().extra().cloned())
        .unwrap();
    for (l, t, lo) in stage2.loras() {
        alone.blocks_mut()[l].linear_mut(t).set_lora(lo).unwrap();
    }
    let wrong = alone.infer(Input::Ids(&ids), &cu, &pass).unwrap();
    assert!(rel_err(&wrong.to_vec_f32(), &chained.to_vec_f32()) > 1e-3);
    // Different projections cannot be stacked.
    let mut partial = stage2.clone();
    assert!(partial.stack_loras(&earlier[1..]).is_err());
}

#[test]
fn checkpointing_and_infer_agree_with_the_full_cache() {
    let model = tiny_model("LlamaForCausalLM");
    let (ids, cu) = batch();
    let pass = Pass::bidirectional()
        .with_dropout(5, 0.1)
        .with_hidden_dropout(0.1);
    let w = rand_tensor(&[12, 16], 3, 1.0);
    let run = |p: Pass| {
        let mut g = model.zero_grads(&all_trainable());
        let (h, cache) = model.forward(Input::Ids(&ids), &cu, &p).unwrap();
        let dx = model.backward(&w, &cache, Some(&mut g)).unwrap();
        (h, dx, g)
    };
    let (h1, dx1, g1) = run(pass.clone());
    let (h2, dx2, g2) = run(pass.clone().with_checkpoint(true));
    assert_eq!(h1.to_vec_f32(), h2.to_vec_f32());
    assert_eq!(dx1.to_vec_f32(), dx2.to_vec_f32());
    assert_eq!(
        g1.blocks[1].mlp.up.as_ref().unwrap().a.to_vec_f32(),
        g2.blocks[1].mlp.up.as_ref().unwrap().a.to_vec_f32()
    );
    assert_eq!(
        g1.extra_rows.unwrap().to_vec_f32(),
        g2.extra_rows.unwrap().to_vec_f32()
    );
    let inf = model.infer(Input::Ids(&ids), &cu, &pass).unwrap();
    assert_eq!(inf.to_vec_f32(), h1.to_vec_f32());
    // Another dropout seed changes the output; no seed means no dropout.
    let other = model.infer(Input::Ids(&ids), &cu, &pass.clone().with_dropout(6, 0.1));
    assert!(rel_err(&other.unwrap().to_vec_f32(), &h1.to_vec_f32()) > 1e-3);
    // The hidden-dropout masks act: the same seed without them differs.
    let no_hidden = model.infer(Input::Ids(&ids), &cu, &pass.with_hidden_dropout(0.0));
    assert!(rel_err(&no_hidden.unwrap().to_vec_f32(), &h1.to_vec_f32()) > 1e-3);
}

#[test]
fn with_dropout_keys_a_sequence_runs_as_it_would_alone() {
    // Attention, hidden and LoRA dropout all on; sequence 1 (rows 5..12) is
    // keyed 22 in the pack and alone: same hidden states, and the pack's
    // gradients are the sum of each sequence's alone.
    let model = tiny_model("LlamaForCausalLM");
    let (ids, cu) = batch();
    let pass = Pass::bidirectional()
        .with_dropout(5, 0.2)
        .with_hidden_dropout(0.2);
    let w = rand_tensor(&[12, 16], 3, 1.0);
    let run = |ids: &[u32], cu: &[u32], keys: &[u64], w: &Tensor| {
        let p = pass.clone().with_dropout_keys(keys);
        let mut g = model.zero_grads(&all_trainable());
        let (h, cache) = model.forward(Input::Ids(ids), cu, &p).unwrap();
        model.backward(w, &cache, Some(&mut g)).unwrap();
        (h.to_vec_f32(), g)
    };
    let (h, g) = run(&ids, &cu, &[11, 22], &w);
    let rows = |t: &Tensor, r: std::ops::Range<usize>| {
        Tensor::from_vec(
            t.to_vec_f32()[r.start * 16..r.end * 16].to_vec(),
            &[r.len(), 16],
        )
        .unwrap()
    };
    let (h0, g0) = run(&ids[..5], &[0, 5], &[11], &rows(&w, 0..5));
    let (h1, g1) = run(&ids[5..], &[0, 7], &[22], &rows(&w, 5..12));
    // Equal up to GEMM rounding (other row counts block differently); a
    // different mask would move them by O(1).
    assert!(rel_err(&h[..5 * 16], &h0) < 1e-5);
    assert!(rel_err(&h[5 * 16..], &h1) < 1e-5);
    let a = |g: &TransformerGrads| g.blocks[1].mlp.up.as_ref().unwrap().a.to_vec_f32();
    let sum: Vec<f32> = a(&g0).iter().zip(a(&g1)).map(|(x, y)| x + y).collect();
    assert!(rel_err(&a(&g), &sum) < 1e-5, "{}", rel_err(&a(&g), &sum));
    // Other keys, other masks; a key count that does not fit is an error.
    assert!(rel_err(&run(&ids, &cu, &[11, 23], &w).0[5 * 16..], &h[5 * 16..]) > 1e-3);
    assert!(rel_err(&run(&ids, &cu, &[11, 23], &w).0[..5 * 16], &h[..5 * 16]) < 1e-5);
    let p = pass.clone().with_dropout_keys(&[1]);
    assert!(model.infer(Input::Ids(&ids), &cu, &p).is_err());
}

#[test]
fn clones_share_base_weights_and_copy_on_training() {
    let model = tiny_model("LlamaForCausalLM");
    let mut enc = model.clone();
    assert!(Arc::ptr_eq(
        model.blocks()[0].attn.q.weight(),
        enc.blocks()[0].attn.q.weight()
    ));
    assert!(Arc::ptr_eq(
        model.embedding().table(),
        enc.embedding().table()
    ));
    let mut g = enc.zero_grads(&Trainable {
        final_norm: true,
        ..Trainable::default()
    });
    for p in enc.params(&mut g) {
        *p.value = Tensor::zeros(
            p.value.shape(),
            llm2comp_tensor::DType::F32,
            llm2comp_tensor::Device::Cpu,
        );
    }
    assert!(
        model
            .final_norm()
            .weight()
            .to_vec_f32()
            .iter()
            .all(|&v| v != 0.0)
    );
    assert!(
        enc.final_norm()
            .weight()
            .to_vec_f32()
            .iter()
            .all(|&v| v == 0.0)
    );
    // The tied head is the embedding table.
    assert!(std::ptr::eq(model.lm_head(), &**model.embedding().table()));
}

#[test]
fn bad_inputs_are_errors() {
    let model = tiny_model("LlamaForCausalLM");
    let e = model
        .infer(Input::Ids(&[1, 2, 53]), &[0, 3], &Pass::causal())
        .unwrap_err()
        .to_string();
    assert!(e.contains("token id 53"), "{e}");
    let e = model
        .infer(Input::Ids(&[1, 2, 3]), &[0, 2], &Pass::causal())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cu_seqlens") && e.contains("3 tokens"), "{e}");
    let x = Tensor::zeros(
        &[3, 15],
        llm2comp_tensor::DType::F32,
        llm2comp_tensor::Device::Cpu,
    );
    let e = model
        .infer(Input::Embeds(&x), &[0, 3], &Pass::causal())
        .unwrap_err()
        .to_string();
    assert!(e.contains("inputs_embeds") && e.contains("[3, 16]"), "{e}");
    assert_eq!(BASE_VOCAB as usize, model.config().vocab_size);
}
