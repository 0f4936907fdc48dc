//! LLM2Comp adapters on disk: a save/load round trip restores LoRA, memory
//! rows and (when trained) the embedding table bit for bit, files use PEFT's
//! names and schema exactly, and every malformed directory is refused with
//! an error naming the file and the problem, leaving the model untouched.

mod support;

use std::path::{Path, PathBuf};

use llm2comp_backbone::adapter::{
    ADAPTER_FORMAT, EMBED_FILE, MEMORY_FILE, META_FILE, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE,
    peft_key,
};
use llm2comp_backbone::{
    AdapterMeta, Input, LoraTarget, Pass, SafetensorsFiles, TrainEmbeddings, Transformer,
    load_adapter, save_adapter,
};
use llm2comp_tensor::Tensor;
use serde_json::Value;
use support::*;

const K: usize = 3;

/// A base model, the same model with a seeded adapter, and the adapter's meta.
fn adapted(tied: bool) -> (Transformer, Transformer, AdapterMeta) {
    let cfg = tiny_config(40, tied);
    let base = Transformer::random(&cfg, 11).unwrap();
    let mut m = base.clone();
    let lc = lora_config();
    attach_adapter(&mut m, &lc, K, 5);
    let mut meta = AdapterMeta::new("tiny/base", &m, K, &lc, TrainEmbeddings::Memory);
    meta.stage = Some("pretrain".into());
    meta.max_length = Some(64);
    (base, m, meta)
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec_f32().iter().map(|v| v.to_bits()).collect()
}

fn has_adapter(m: &Transformer) -> bool {
    m.embedding().extra().is_some()
        || m.blocks().iter().any(|b| {
            LoraTarget::ALL
                .iter()
                .any(|&t| b.linear(t).lora().is_some())
        })
}

fn hidden(m: &Transformer, ids: &[u32]) -> Vec<f32> {
    m.infer(
        Input::Ids(ids),
        &[0, ids.len() as u32],
        &Pass::bidirectional(),
    )
    .unwrap()
    .to_vec_f32()
}

#[test]
fn adapter_round_trip_is_bit_identical() {
    for (tied, train) in [
        (false, TrainEmbeddings::Memory),
        (true, TrainEmbeddings::All),
    ] {
        let (base, mut m, mut meta) = adapted(tied);
        meta.train_embeddings = train;
        if train == TrainEmbeddings::All {
            let t = m.embedding_mut().table_mut();
            let n = t.numel();
            *t = Tensor::from_vec(uniform(99, n, 1.0), t.shape()).unwrap();
        }
        let dir = tmp_dir(&format!("adapter-rt-{tied}"));
        let sub = dir.join("nested/adapter");
        save_adapter(&sub, &m, &meta).unwrap();
        assert_eq!(sub.join(EMBED_FILE).exists(), train == TrainEmbeddings::All);
        let mut loaded = base.clone();
        // An adapter already on a projection the saved one does not target is replaced.
        loaded.blocks_mut()[0]
            .linear_mut(LoraTarget::K)
            .add_lora(&lora_config(), 1)
            .unwrap();
        let got = load_adapter(&sub, &mut loaded).unwrap();
        // The save stamps its export id; everything else is the meta given.
        assert!(got.export_id.is_some());
        assert_eq!(
            AdapterMeta {
                export_id: None,
                ..got
            },
            meta
        );
        for (bm, bl) in m.blocks().iter().zip(loaded.blocks()) {
            for t in LoraTarget::ALL {
                match (bm.linear(t).lora(), bl.linear(t).lora()) {
                    (None, None) => {}
                    (Some(a), Some(b)) => {
                        assert_eq!(bits(&a.a), bits(&b.a));
                        assert_eq!(bits(&a.b), bits(&b.b));
                        assert_eq!(a.scale.to_bits(), b.scale.to_bits());
                        assert_eq!(a.dropout, b.dropout);
                    }
                    (a, b) => panic!("{t:?}: {} vs {}", a.is_some(), b.is_some()),
                }
            }
        }
        assert_eq!(
            bits(m.embedding().extra().unwrap()),
            bits(loaded.embedding().extra().unwrap())
        );
        assert_eq!(
            bits(m.embedding().table()),
            bits(loaded.embedding().table())
        );
        let ids = [1, 7, 3, 40, 41, 42];
        assert_eq!(hidden(&m, &ids), hidden(&loaded, &ids));
        // The base model is what the adapter changes: the outputs differ from it.
        let mut plain = base.clone();
        plain
            .set_extra_rows(m.embedding().extra().cloned())
            .unwrap();
        assert_ne!(hidden(&plain, &ids), hidden(&m, &ids));
        // A second save over the first (memory only now) removes the stale table.
        meta.train_embeddings = TrainEmbeddings::Memory;
        save_adapter(&sub, &m, &meta).unwrap();
        assert!(!sub.join(EMBED_FILE).exists());
        let leftovers: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn adapter_files_use_peft_names_and_schema_exactly() {
    let (_, m, meta) = adapted(false);
    let dir = tmp_dir("adapter-peft");
    save_adapter(&dir, &m, &meta).unwrap();
    let files = SafetensorsFiles::open(dir.join(PEFT_WEIGHTS_FILE)).unwrap();
    let mut want = Vec::new();
    for l in 0..2 {
        for (part, proj) in [
            ("self_attn", "q_proj"),
            ("self_attn", "v_proj"),
            ("self_attn", "o_proj"),
            ("mlp", "gate_proj"),
            ("mlp", "up_proj"),
            ("mlp", "down_proj"),
        ] {
            for ab in ["A", "B"] {
                want.push(format!(
                    "base_model.model.model.layers.{l}.{part}.{proj}.lora_{ab}.weight"
                ));
            }
        }
    }
    want.sort();
    assert_eq!(files.names(), want);
    assert!(want.contains(&peft_key(1, LoraTarget::Down, "B")));
    // f32, A [r, in], B [out, r].
    let (dt, shape) = files
        .dtype_and_shape("base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight")
        .unwrap();
    assert_eq!((dt.as_str(), shape.as_slice()), ("F32", &[4, 16][..]));
    let (_, shape) = files
        .dtype_and_shape("base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight")
        .unwrap();
    assert_eq!(shape, [24, 4]);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(PEFT_CONFIG_FILE)).unwrap())
            .unwrap();
    let want_cfg = serde_json::json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "tiny/base", "r": 4, "lora_alpha": 8.0,
        "lora_dropout": 0.05, "bias": "none", "fan_in_fan_out": false,
        "inference_mode": true, "modules_to_save": null,
        "target_modules": ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    });
    assert_eq!(cfg, want_cfg);
    let mem = SafetensorsFiles::open(dir.join(MEMORY_FILE)).unwrap();
    assert_eq!(mem.names(), ["memory_tokens"]);
    assert_eq!(mem.dtype_and_shape("memory_tokens").unwrap().1, [K, 16]);
    let meta_json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(META_FILE)).unwrap()).unwrap();
    assert_eq!(meta_json["format"], ADAPTER_FORMAT);
    assert_eq!(
        meta_json["memory_token_ids"],
        serde_json::json!([40, 41, 42])
    );
    assert_eq!(meta_json["train_embeddings"], "memory");
    assert_eq!(meta_json["pooling"], "memory");
    assert_eq!(meta_json["attention"], "bidirectional");
    assert_eq!(meta_json["hidden_size"], 16);
    assert_eq!(meta_json["vocab_size"], 40);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes `tensors` (name, shape) with seeded values as a safetensors file.
fn write_st(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, s)| {
            uniform(3, s.iter().product(), 0.5)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<_> = tensors
        .iter()
        .zip(&data)
        .map(|((n, s), d)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                .unwrap();
            (n.clone(), v)
        })
        .collect();
    // Edited files keep the save's export id, so each case reaches the check it is about.
    let meta = path.with_file_name(META_FILE);
    let id = std::fs::read_to_string(&meta)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v["export_id"].as_str().map(str::to_string));
    let info =
        id.map(|id| std::collections::HashMap::from([("llm2comp_export_id".to_string(), id)]));
    std::fs::write(path, safetensors::tensor::serialize(views, info).unwrap()).unwrap();
}

/// The LoRA tensors of the saved adapter, with `edit` applied to the list.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>)>)) {
    let path = dir.join(PEFT_WEIGHTS_FILE);
    let files = SafetensorsFiles::open(&path).unwrap();
    let mut list: Vec<(String, Vec<usize>)> = files
        .names()
        .into_iter()
        .map(|n| (n.to_string(), files.dtype_and_shape(n).unwrap().1))
        .collect();
    drop(files);
    edit(&mut list);
    write_st(&path, &list);
}

fn edit_json(path: PathBuf, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

/// Overwrites the last element of an f32 safetensors file (its data section
/// ends with the last tensor's last value).
fn set_last_f32(path: &Path, x: f32) {
    let mut b = std::fs::read(path).unwrap();
    let n = b.len();
    b[n - 4..].copy_from_slice(&x.to_le_bytes());
    std::fs::write(path, b).unwrap();
}

type Break = Box<dyn Fn(&Path)>;

#[test]
fn adapter_load_refuses_every_broken_directory_and_leaves_the_model_alone() {
    let (base, m, meta) = adapted(false);
    let good = tmp_dir("adapter-good");
    save_adapter(&good, &m, &meta).unwrap();
    let cases: Vec<(&str, Break, &[&str])> = vec![
        (
            "no meta",
            Box::new(|d| std::fs::remove_file(d.join(META_FILE)).unwrap()),
            &[META_FILE, "No such file"],
        ),
        (
            "no peft config",
            Box::new(|d| std::fs::remove_file(d.join(PEFT_CONFIG_FILE)).unwrap()),
            &[PEFT_CONFIG_FILE, "No such file"],
        ),
        (
            "no weights",
            Box::new(|d| std::fs::remove_file(d.join(PEFT_WEIGHTS_FILE)).unwrap()),
            &[PEFT_WEIGHTS_FILE, "No such file"],
        ),
        (
            "no memory rows",
            Box::new(|d| std::fs::remove_file(d.join(MEMORY_FILE)).unwrap()),
            &[MEMORY_FILE, "No such file"],
        ),
        (
            "no table though trained",
            Box::new(|d| edit_json(d.join(META_FILE), |v| v["train_embeddings"] = "all".into())),
            &[EMBED_FILE, "No such file"],
        ),
        (
            "malformed meta",
            Box::new(|d| std::fs::write(d.join(META_FILE), "{\"format\": ").unwrap()),
            &[META_FILE, "malformed"],
        ),
        (
            "malformed peft config",
            Box::new(|d| std::fs::write(d.join(PEFT_CONFIG_FILE), "[1,").unwrap()),
            &[PEFT_CONFIG_FILE, "malformed"],
        ),
        (
            "other format",
            Box::new(|d| edit_json(d.join(META_FILE), |v| v["format"] = "x".into())),
            &[META_FILE, "format"],
        ),
        (
            "future version",
            Box::new(|d| edit_json(d.join(META_FILE), |v| v["version"] = 2.into())),
            &[META_FILE, "version 2"],
        ),
        (
            "memory ids not after V",
            Box::new(|d| {
                edit_json(d.join(META_FILE), |v| {
                    v["memory_token_ids"] = serde_json::json!([39, 40, 41])
                })
            }),
            &[META_FILE, "memory_token_ids"],
        ),
        (
            "k = 2^61",
            Box::new(|d| {
                edit_json(d.join(META_FILE), |v| {
                    v["memory_tokens"] = (1u64 << 61).into()
                })
            }),
            &[META_FILE, "memory_tokens 2305843009213693952", "32 bits"],
        ),
        (
            "k = 1e12",
            Box::new(|d| {
                edit_json(d.join(META_FILE), |v| {
                    v["memory_tokens"] = 1_000_000_000_000u64.into()
                })
            }),
            &[META_FILE, "memory_tokens 1000000000000", "32 bits"],
        ),
        (
            "V + k overflows",
            Box::new(|d| edit_json(d.join(META_FILE), |v| v["vocab_size"] = u64::MAX.into())),
            &[META_FILE, "vocab_size 18446744073709551615"],
        ),
        (
            "NaN in the memory rows",
            Box::new(|d| set_last_f32(&d.join(MEMORY_FILE), f32::NAN)),
            &[MEMORY_FILE, "tensor `memory_tokens` holds NaN at element"],
        ),
        (
            "an infinity in the LoRA weights",
            Box::new(|d| set_last_f32(&d.join(PEFT_WEIGHTS_FILE), f32::INFINITY)),
            &[PEFT_WEIGHTS_FILE, "lora_", "holds inf at element"],
        ),
        (
            "truncated weights",
            Box::new(|d| {
                let p = d.join(PEFT_WEIGHTS_FILE);
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 10]).unwrap();
            }),
            &[PEFT_WEIGHTS_FILE, "truncated"],
        ),
        (
            "truncated memory rows",
            Box::new(|d| {
                let p = d.join(MEMORY_FILE);
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() / 2]).unwrap();
            }),
            &[MEMORY_FILE, "truncated"],
        ),
        (
            "wrong A shape",
            Box::new(|d| {
                rewrite_weights(d, |l| {
                    let e = l
                        .iter_mut()
                        .find(|(n, _)| n.ends_with("0.mlp.up_proj.lora_A.weight"));
                    e.unwrap().1 = vec![4, 17];
                })
            }),
            &[PEFT_WEIGHTS_FILE, "up_proj.lora_A", "[4, 17]", "[4, 16]"],
        ),
        (
            "missing B",
            Box::new(|d| {
                rewrite_weights(d, |l| {
                    l.retain(|(n, _)| !n.contains("1.self_attn.o_proj.lora_B"))
                })
            }),
            &[
                PEFT_WEIGHTS_FILE,
                "layers.1.self_attn.o_proj.lora_B.weight is missing",
            ],
        ),
        (
            "layer the model lacks",
            Box::new(|d| {
                rewrite_weights(d, |l| {
                    l.push((peft_key(5, LoraTarget::Q, "A"), vec![4, 16]));
                })
            }),
            &[PEFT_WEIGHTS_FILE, "layer 5", "2 layers"],
        ),
        (
            "projection not targeted",
            Box::new(|d| {
                rewrite_weights(d, |l| {
                    l.push((peft_key(0, LoraTarget::K, "A"), vec![4, 16]));
                })
            }),
            &[PEFT_WEIGHTS_FILE, "k_proj", "target_modules"],
        ),
        (
            "not a LoRA key",
            Box::new(|d| {
                rewrite_weights(d, |l| {
                    l.push((
                        "base_model.model.model.layers.0.mlp.q_proj.lora_A.weight".into(),
                        vec![4, 16],
                    ));
                })
            }),
            &[PEFT_WEIGHTS_FILE, "not a LoRA key"],
        ),
        (
            "rank differs from the config",
            Box::new(|d| {
                edit_json(d.join(META_FILE), |v| v["lora"]["r"] = 3.into());
                edit_json(d.join(PEFT_CONFIG_FILE), |v| v["r"] = 3.into());
            }),
            &[PEFT_WEIGHTS_FILE, "rank 4", "says r 3"],
        ),
        (
            "peft config disagrees with meta",
            Box::new(|d| edit_json(d.join(PEFT_CONFIG_FILE), |v| v["r"] = 8.into())),
            &[PEFT_CONFIG_FILE, "r is 8", "r 4"],
        ),
        (
            "peft targets disagree",
            Box::new(|d| {
                edit_json(d.join(PEFT_CONFIG_FILE), |v| {
                    v["target_modules"] = serde_json::json!(["q_proj"])
                })
            }),
            &[PEFT_CONFIG_FILE, "target_modules"],
        ),
        (
            "rslora",
            Box::new(|d| edit_json(d.join(PEFT_CONFIG_FILE), |v| v["use_rslora"] = true.into())),
            &[PEFT_CONFIG_FILE, "use_rslora"],
        ),
        (
            "unknown target",
            Box::new(|d| {
                edit_json(d.join(META_FILE), |v| {
                    v["lora"]["targets"] = serde_json::json!(["q_proj", "qkv_proj"])
                })
            }),
            &[META_FILE, "qkv_proj"],
        ),
        (
            "memory rows of the wrong width",
            Box::new(|d| {
                write_st(
                    &d.join(MEMORY_FILE),
                    &[("memory_tokens".into(), vec![K, 15])],
                )
            }),
            &[MEMORY_FILE, "memory_tokens", "[3, 15]"],
        ),
        (
            "other base vocabulary",
            Box::new(|d| {
                edit_json(d.join(META_FILE), |v| {
                    v["vocab_size"] = 50.into();
                    v["memory_token_ids"] = serde_json::json!([50, 51, 52]);
                })
            }),
            &[META_FILE, "vocabulary 50", "vocabulary 40"],
        ),
        (
            "other hidden size",
            Box::new(|d| edit_json(d.join(META_FILE), |v| v["hidden_size"] = 32.into())),
            &[META_FILE, "hidden size 32", "hidden size 16"],
        ),
        (
            "a merged model directory",
            Box::new(|d| edit_json(d.join(META_FILE), |v| v["merged"] = true.into())),
            &[META_FILE, "merged model"],
        ),
    ];
    let scratch = tmp_dir("adapter-broken");
    for (what, breakit, needles) in cases {
        let d = scratch.join(what.replace(' ', "_"));
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        breakit(&d);
        let mut model = base.clone();
        let err = load_adapter(&d, &mut model)
            .err()
            .unwrap_or_else(|| panic!("{what}: loaded"))
            .to_string();
        for n in needles {
            assert!(err.contains(n), "{what}: `{n}` not in: {err}");
        }
        assert!(!has_adapter(&model), "{what}: the model was changed");
    }
    std::fs::remove_dir_all(&scratch).unwrap();
    std::fs::remove_dir_all(&good).unwrap();
}

#[test]
fn adapter_save_refuses_inconsistent_input_and_leaves_no_partial_files() {
    let (base, m, meta) = adapted(false);
    let root = tmp_dir("adapter-save");
    // A meta that does not describe the model: refused before the directory exists.
    let target = root.join("never");
    let mut wrong = meta.clone();
    wrong.lora.r = 8;
    let e = save_adapter(&target, &m, &wrong).unwrap_err().to_string();
    assert!(e.contains("rank 4") && e.contains("r 8"), "{e}");
    let mut wrong = meta.clone();
    wrong.lora.targets.retain(|t| t != "up_proj");
    let e = save_adapter(&target, &m, &wrong).unwrap_err().to_string();
    assert!(e.contains("up_proj") && e.contains("omit"), "{e}");
    let e = save_adapter(&target, &base, &meta).unwrap_err().to_string();
    assert!(e.contains("no LoRA adapter"), "{e}");
    let mut no_rows = m.clone();
    no_rows.set_extra_rows(None).unwrap();
    let e = save_adapter(&target, &no_rows, &meta)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no memory-token rows"), "{e}");
    assert!(!target.exists());
    // A save that fails at a rename (a directory squats the name): the
    // temporary directory is removed and no meta appears, so the directory is
    // not an adapter (files renamed before the failure carry an id no meta names).
    let d = root.join("blocked");
    std::fs::create_dir_all(d.join(MEMORY_FILE)).unwrap();
    std::fs::write(d.join(MEMORY_FILE).join("x"), b"x").unwrap();
    let e = save_adapter(&d, &m, &meta).unwrap_err().to_string();
    assert!(e.contains(MEMORY_FILE), "{e}");
    let names: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
    assert!(!names.contains(&META_FILE.to_string()), "{names:?}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A save interrupted between its renames (here: one file of a later save
/// copied over, as a kill after the first rename leaves it) used to load as
/// one adapter mixing two steps; its files' export ids now disagree with the
/// meta's and the load is refused, naming the file, with the model untouched.
#[test]
fn a_directory_mixing_two_saves_is_refused() {
    let (base, m, meta) = adapted(false);
    let root = tmp_dir("adapter-mix");
    let (run, later) = (root.join("run"), root.join("later"));
    save_adapter(&run, &m, &meta).unwrap();
    let mut m2 = base.clone();
    attach_adapter(&mut m2, &lora_config(), K, 6);
    save_adapter(&later, &m2, &meta).unwrap();
    // A whole second save into the same directory replaces the first and loads.
    save_adapter(&run, &m2, &meta).unwrap();
    let mut loaded = base.clone();
    load_adapter(&run, &mut loaded).unwrap();
    assert_eq!(
        bits(loaded.embedding().extra().unwrap()),
        bits(m2.embedding().extra().unwrap())
    );
    let names: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
    // Back to the first save, then the later save's LoRA lands alone.
    save_adapter(&run, &m, &meta).unwrap();
    std::fs::copy(later.join(PEFT_WEIGHTS_FILE), run.join(PEFT_WEIGHTS_FILE)).unwrap();
    let mut b = base.clone();
    let e = load_adapter(&run, &mut b).unwrap_err().to_string();
    assert!(
        e.contains(PEFT_WEIGHTS_FILE) && e.contains("the directory mixes two saves"),
        "{e}"
    );
    assert!(!has_adapter(&b));
    std::fs::remove_dir_all(&root).unwrap();
}

/// An adapter of LoRA alone (k = 0: the MNTP baseline's) saves without a
/// memory file, loads back bit-identical with no extra rows, and replaces
/// an earlier adapter's memory rows rather than leaving them beside it.
#[test]
fn a_lora_only_adapter_round_trips_without_memory_rows() {
    let (base, with_rows, meta_k) = adapted(false);
    let mut m = with_rows.clone();
    m.set_extra_rows(None).unwrap();
    let meta = AdapterMeta::new("tiny/base", &m, 0, &lora_config(), TrainEmbeddings::Memory);
    let root = tmp_dir("adapter-k0");
    let d = root.join("a");
    save_adapter(&d, &with_rows, &meta_k).unwrap();
    assert!(d.join(MEMORY_FILE).is_file());
    save_adapter(&d, &m, &meta).unwrap();
    assert!(
        !d.join(MEMORY_FILE).exists(),
        "the earlier save's memory rows stay behind"
    );
    let mut loaded = base.clone();
    let got = load_adapter(&d, &mut loaded).unwrap();
    assert_eq!(got.memory_tokens, 0);
    assert!(loaded.embedding().extra().is_none());
    let ids = [3, 9, 17, 4];
    assert_eq!(hidden(&loaded, &ids), hidden(&m, &ids));
    // A model with memory rows cannot be saved as a k = 0 adapter, nor the reverse.
    let e = save_adapter(&root.join("b"), &with_rows, &meta)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 memory-token rows, the meta says 0"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}
