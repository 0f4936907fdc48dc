//! LLM2Comp adapters on disk: LoRA in PEFT's layout (so `peft` can load the
//! same directory), the k memory-token rows, optionally the whole retrained
//! embedding table, and `llm2comp.json` saying how to use them (append the k
//! memory ids, attend bidirectionally, pool over the memory positions).
//!
//! Loading validates the whole directory before touching the model: every
//! key is parsed and matched to a layer and projection, every shape checked
//! against the model and the rank in `adapter_config.json`, so a bad file
//! leaves the model as it was and the error names the file and the tensor.
//! Each file is written to a temporary name in the same directory and
//! renamed, so a crash never leaves a half-written file under the real name;
//! `llm2comp.json` goes last, so a directory that has it has the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use llm2comp_tensor::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::adapter_swap;
use crate::layers::lora::{Lora, LoraConfig, LoraTarget};
use crate::{BackboneError, Result, SafetensorsFiles, Transformer};

/// `format` of every `llm2comp.json`.
pub const ADAPTER_FORMAT: &str = "llm2comp-adapter";
/// The `version` this code writes and reads.
pub const ADAPTER_VERSION: u32 = 1;
/// The adapter's description (ours).
pub const META_FILE: &str = "llm2comp.json";
/// PEFT's adapter config.
pub const PEFT_CONFIG_FILE: &str = "adapter_config.json";
/// PEFT's adapter weights.
pub const PEFT_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The memory-token rows (tensor `memory_tokens`, [k, H]).
pub const MEMORY_FILE: &str = "memory_tokens.safetensors";
/// The retrained embedding table (tensor `weight`, [V, H]), when `train_embeddings` = all.
pub const EMBED_FILE: &str = "embed_tokens.safetensors";

/// Which embedding rows the adapter trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainEmbeddings {
    /// Only the k memory rows (the base table is unchanged).
    Memory,
    /// The memory rows and the whole base table.
    All,
}

impl TrainEmbeddings {
    /// The name used on the command line and in `llm2comp.json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::All => "all",
        }
    }
}

impl std::fmt::Display for TrainEmbeddings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TrainEmbeddings {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "memory" => Ok(Self::Memory),
            "all" => Ok(Self::All),
            _ => Err(format!(
                "unknown embedding choice {s:?}: expected memory or all"
            )),
        }
    }
}

/// The LoRA settings, as `llm2comp.json` records them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraMeta {
    /// Rank.
    pub r: usize,
    /// alpha (scale alpha / r).
    #[serde(serialize_with = "shortest_f32")]
    pub alpha: f32,
    /// Dropout used in training.
    #[serde(serialize_with = "shortest_f32")]
    pub dropout: f32,
    /// PEFT module names (`q_proj`, ...).
    pub targets: Vec<String>,
    /// The rank of one stage when this adapter stacks several chained
    /// stages' adapters (r is then their sum); absent for a single stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_r: Option<usize>,
}

/// `llm2comp.json`: what the adapter is and how to embed with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterMeta {
    /// Always [`ADAPTER_FORMAT`].
    pub format: String,
    /// Always [`ADAPTER_VERSION`].
    pub version: u32,
    /// The base model as the user named it (path or hub name).
    pub base_model: String,
    /// k, the number of memory tokens.
    pub memory_tokens: usize,
    /// Their ids: V..V+k of the base vocabulary V.
    pub memory_token_ids: Vec<u32>,
    /// Pooling: "memory" (mean over the k memory positions).
    pub pooling: String,
    /// Attention: "bidirectional".
    pub attention: String,
    /// Whether only the memory rows or the whole table were trained.
    pub train_embeddings: TrainEmbeddings,
    /// The adapters' settings.
    pub lora: LoraMeta,
    /// Longest input (text plus memory tokens) used in training, if fixed.
    pub max_length: Option<usize>,
    /// Training stage, free text.
    pub stage: Option<String>,
    /// Training objective, free text.
    pub objective: Option<String>,
    /// The adapter this stage continued from (chained stages; informational:
    /// the adapter already holds the earlier stages' update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Hidden size of the base model.
    pub hidden_size: usize,
    /// Vocabulary size V of the base model (memory tokens excluded).
    pub vocab_size: usize,
    /// True in a merged model directory (LoRA folded into the weights, the
    /// memory rows appended to the vocabulary); false in an adapter directory.
    #[serde(default)]
    pub merged: bool,
    /// Which save wrote this directory; every safetensors file of that save
    /// carries the same id, so a directory mixing two saves is refused
    /// (`adapter_swap`). Absent in adapters saved before ids existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_id: Option<String>,
}

fn invalid(path: &Path, msg: impl Into<String>) -> BackboneError {
    BackboneError::Invalid {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackboneError + '_ {
    move |source| BackboneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The target named `name` (`q_proj` ...), if any.
pub fn target_from_name(name: &str) -> Option<LoraTarget> {
    LoraTarget::ALL
        .into_iter()
        .find(|t| t.module_name() == name)
}

/// `self_attn` or `mlp`: the block part holding `t`.
fn part(t: LoraTarget) -> &'static str {
    match t {
        LoraTarget::Gate | LoraTarget::Up | LoraTarget::Down => "mlp",
        _ => "self_attn",
    }
}

/// PEFT's key of layer `l`'s adapter on `t`, matrix `ab` ("A" or "B").
pub fn peft_key(l: usize, t: LoraTarget, ab: &str) -> String {
    format!(
        "base_model.model.model.layers.{l}.{}.{}.lora_{ab}.weight",
        part(t),
        t.module_name()
    )
}

/// (layer, target, is_b) of a PEFT key. Keys from a PEFT model wrapped around
/// the bare decoder (`AutoModel`, no `.model.` level) are read too.
fn parse_peft_key(key: &str) -> Option<(usize, LoraTarget, bool)> {
    let rest = key
        .strip_prefix("base_model.model.model.layers.")
        .or_else(|| key.strip_prefix("base_model.model.layers."))?;
    let mut it = rest.split('.');
    let l = it.next()?.parse().ok()?;
    let p = it.next()?;
    let t = target_from_name(it.next()?)?;
    let is_b = match it.next()? {
        "lora_A" => false,
        "lora_B" => true,
        _ => return None,
    };
    (it.next()? == "weight" && it.next().is_none() && p == part(t)).then_some((l, t, is_b))
}

impl AdapterMeta {
    /// The description of an adapter over `model` with `k` memory tokens and
    /// LoRA `lora`, trained on `base_model` (as the user named it).
    pub fn new(
        base_model: impl Into<String>,
        model: &Transformer,
        k: usize,
        lora: &LoraConfig,
        train_embeddings: TrainEmbeddings,
    ) -> Self {
        let v = model.embedding().base_vocab();
        Self {
            format: ADAPTER_FORMAT.into(),
            version: ADAPTER_VERSION,
            base_model: base_model.into(),
            memory_tokens: k,
            memory_token_ids: (v..v + k).map(|i| i as u32).collect(),
            pooling: "memory".into(),
            attention: "bidirectional".into(),
            train_embeddings,
            lora: LoraMeta {
                r: lora.r,
                alpha: lora.alpha,
                dropout: lora.dropout,
                targets: lora
                    .targets
                    .iter()
                    .map(|t| t.module_name().to_string())
                    .collect(),
                stage_r: None,
            },
            max_length: None,
            stage: None,
            objective: None,
            parent: None,
            hidden_size: model.embedding().hidden(),
            vocab_size: v,
            merged: false,
            export_id: None,
        }
    }

    /// The LoRA targets, parsed (an unknown module name is an error naming `origin`).
    pub fn targets(&self, origin: &Path) -> Result<Vec<LoraTarget>> {
        let mut out = Vec::new();
        for name in &self.lora.targets {
            let t = target_from_name(name).ok_or_else(|| {
                invalid(
                    origin,
                    format!(
                        "lora target `{name}` is not a projection (q_proj, k_proj, v_proj, \
                         o_proj, gate_proj, up_proj, down_proj)"
                    ),
                )
            })?;
            if out.contains(&t) {
                return Err(invalid(origin, format!("lora target `{name}` repeats")));
            }
            out.push(t);
        }
        Ok(out)
    }

    /// The LoRA config this meta describes.
    pub fn lora_config(&self, origin: &Path) -> Result<LoraConfig> {
        let cfg = LoraConfig {
            r: self.lora.r,
            alpha: self.lora.alpha,
            dropout: self.lora.dropout,
            targets: self.targets(origin)?,
        };
        cfg.validate().map_err(|e| invalid(origin, e.to_string()))?;
        Ok(cfg)
    }

    /// Checks the fields against each other (format, version, k, ids, pooling).
    pub fn validate(&self, origin: &Path) -> Result<()> {
        if self.format != ADAPTER_FORMAT {
            return Err(invalid(
                origin,
                format!("format is {:?}, expected {ADAPTER_FORMAT:?}", self.format),
            ));
        }
        if self.version != ADAPTER_VERSION {
            return Err(invalid(
                origin,
                format!(
                    "version {} is not supported (this llm2comp reads version {ADAPTER_VERSION})",
                    self.version
                ),
            ));
        }
        let (k, v) = (self.memory_tokens, self.vocab_size);
        // k and V come from the file: V + k must fit a token id (u32) before
        // any range is built from them (k = 2^61 would otherwise allocate,
        // and V + k wrap). The ids are compared one by one, never collected.
        let end = v.checked_add(k).filter(|&e| e <= u32::MAX as usize + 1);
        // k = 0 is an adapter of LoRA alone (the MNTP baseline's).
        let Some(end) = end else {
            return Err(invalid(
                origin,
                format!(
                    "memory_tokens {k} with vocab_size {v}: need V + k token ids that fit in 32 \
                     bits"
                ),
            ));
        };
        let ids_ok = self.memory_token_ids.len() == k
            && self
                .memory_token_ids
                .iter()
                .zip(v..end)
                .all(|(&id, want)| id as usize == want);
        if !ids_ok {
            let shown: Vec<u32> = self.memory_token_ids.iter().take(16).copied().collect();
            return Err(invalid(
                origin,
                format!(
                    "memory_token_ids must be the {k} ids after the base vocabulary of {v} \
                     ({v}..{end}); found {} ids, starting {shown:?}",
                    self.memory_token_ids.len()
                ),
            ));
        }
        if self.pooling != "memory" || self.attention != "bidirectional" {
            return Err(invalid(
                origin,
                format!(
                    "pooling {:?} / attention {:?}: only \"memory\" / \"bidirectional\" are \
                     implemented",
                    self.pooling, self.attention
                ),
            ));
        }
        self.lora_config(origin)?;
        Ok(())
    }

    /// Reads and validates a `llm2comp.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let meta: Self = serde_json::from_str(&text)
            .map_err(|e| invalid(path, format!("malformed {META_FILE}: {e}")))?;
        meta.validate(path)?;
        Ok(meta)
    }

    /// Errors unless the base model the meta was made for has `model`'s
    /// hidden size and base vocabulary.
    pub fn check_base(&self, model: &Transformer, origin: &Path) -> Result<()> {
        let (h, v) = (model.embedding().hidden(), model.embedding().base_vocab());
        if self.hidden_size != h || self.vocab_size != v {
            return Err(invalid(
                origin,
                format!(
                    "made for a base model with hidden size {} and vocabulary {}, but the \
                     model has hidden size {h} and vocabulary {v} (a different base model?)",
                    self.hidden_size, self.vocab_size
                ),
            ));
        }
        Ok(())
    }
}

/// Writes `bytes` to `dir/name` atomically and exclusively ([`crate::atomic`]).
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    Ok(crate::atomic::write_atomic(&dir.join(name), bytes)?)
}

/// A tensor as little-endian f32 bytes on the host.
fn f32_bytes(t: &Tensor, origin: &Path, what: &str) -> Result<Vec<u8>> {
    let host = t
        .to_device(Device::Cpu)
        .and_then(|h| h.try_to_dtype(DType::F32))
        .map_err(|e| invalid(origin, format!("{what}: {e}")))?;
    let s = host
        .as_slice::<f32>()
        .map_err(|e| invalid(origin, format!("{what}: {e}")))?;
    Ok(s.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// Writes f32 tensors (name, shape, bytes) as one safetensors file.
fn write_f32_safetensors(
    dir: &Path,
    name: &str,
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    export_id: &str,
) -> Result<()> {
    let path = dir.join(name);
    let views = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| invalid(&path, format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let info = adapter_swap::file_metadata(export_id);
    let mut bytes = safetensors::tensor::serialize(views, Some(info))
        .map_err(|e| invalid(&path, format!("serialising: {e}")))?;
    adapter_swap::sort_metadata(&mut bytes, export_id)
        .map_err(|msg| invalid(&path, format!("serialising: {msg}")))?;
    write_atomic(dir, name, &bytes)
}

/// Errors unless the model's adapters are exactly those `meta` describes:
/// every targeted projection of every layer has one of rank r and scale
/// alpha/r, and no other projection has one.
fn check_model_lora(model: &Transformer, meta: &AdapterMeta, origin: &Path) -> Result<()> {
    let cfg = meta.lora_config(origin)?;
    for (l, block) in model.blocks().iter().enumerate() {
        for t in LoraTarget::ALL {
            let lora = block.linear(t).lora();
            match (cfg.targets.contains(&t), lora) {
                (true, None) => {
                    return Err(invalid(
                        origin,
                        format!(
                            "layer {l} {} has no LoRA adapter but the meta targets it",
                            t.module_name()
                        ),
                    ));
                }
                (false, Some(_)) => {
                    return Err(invalid(
                        origin,
                        format!(
                            "layer {l} {} has a LoRA adapter the meta's targets {:?} omit",
                            t.module_name(),
                            meta.lora.targets
                        ),
                    ));
                }
                (true, Some(lo)) => {
                    let want = cfg.alpha / cfg.r as f32;
                    if lo.rank() != cfg.r || (lo.scale - want).abs() > 1e-6 * want.abs().max(1.0) {
                        return Err(invalid(
                            origin,
                            format!(
                                "layer {l} {}: rank {} scale {}, the meta says r {} alpha {} \
                                 (scale {want})",
                                t.module_name(),
                                lo.rank(),
                                lo.scale,
                                cfg.r,
                                cfg.alpha
                            ),
                        ));
                    }
                }
                (false, None) => {}
            }
        }
    }
    Ok(())
}

/// An f32 as the f64 of its shortest decimal (0.05, not 0.05000000074505806).
fn short(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// Writes an f32 as its shortest decimal (0.05, not 0.05000000074505806).
fn shortest_f32<S: serde::Serializer>(x: &f32, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(short(*x))
}

/// Writes `model`'s adapter (LoRA, memory rows, and the embedding table when
/// `meta.train_embeddings` is all) and `meta` into `dir`, created if missing.
pub fn save_adapter(dir: &Path, model: &Transformer, meta: &AdapterMeta) -> Result<()> {
    let meta_path = dir.join(META_FILE);
    meta.validate(&meta_path)?;
    if meta.merged {
        return Err(invalid(
            &meta_path,
            "an adapter's meta must not say merged: true",
        ));
    }
    meta.check_base(model, &meta_path)?;
    check_model_lora(model, meta, &meta_path)?;
    let k = meta.memory_tokens;
    let has = model.embedding().extra().map_or(0, |r| r.shape()[0]);
    if has != k {
        let msg = match has {
            0 => "the model has no memory-token rows to save".to_string(),
            _ => format!("the model has {has} memory-token rows, the meta says {k}"),
        };
        return Err(invalid(&meta_path, msg));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // Every file goes into a fresh directory first and is renamed in with the meta last
    // (adapter_swap): a kill mid-save leaves the old adapter, or files whose ids disagree.
    let tmp = crate::atomic::create_temp_dir(dir, "adapter")?;
    let written = write_adapter_files(&tmp, model, meta).and_then(|names| {
        // Files left from an earlier save would contradict this meta.
        let stale: Vec<&str> = [
            (meta.train_embeddings == TrainEmbeddings::Memory).then_some(EMBED_FILE),
            (k == 0).then_some(MEMORY_FILE),
        ]
        .into_iter()
        .flatten()
        .collect();
        adapter_swap::publish(&tmp, dir, &names, &stale)
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

/// Writes the adapter's files into the empty directory `dir`; returns their
/// names in publishing order (the meta last).
fn write_adapter_files(
    dir: &Path,
    model: &Transformer,
    meta: &AdapterMeta,
) -> Result<Vec<&'static str>> {
    let rows = model.embedding().extra();
    // CAUSAL_LM: PEFT then wraps a *ForCausalLM, whose state-dict keys are
    // exactly ours (`base_model.model.model.layers...`); FEATURE_EXTRACTION
    // would wrap the bare model and expect `base_model.model.layers...`.
    let peft = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": meta.base_model,
        "r": meta.lora.r,
        "lora_alpha": short(meta.lora.alpha),
        "lora_dropout": short(meta.lora.dropout),
        "target_modules": meta.lora.targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "modules_to_save": null,
    });
    let weights_path = dir.join(PEFT_WEIGHTS_FILE);
    let mut tensors = Vec::new();
    for (l, block) in model.blocks().iter().enumerate() {
        for t in LoraTarget::ALL {
            if let Some(lo) = block.linear(t).lora() {
                for (ab, m) in [("A", &lo.a), ("B", &lo.b)] {
                    let key = peft_key(l, t, ab);
                    let bytes = f32_bytes(m, &weights_path, &key)?;
                    tensors.push((key, m.shape().to_vec(), bytes));
                }
            }
        }
    }
    let mut files = vec![(PEFT_WEIGHTS_FILE, tensors)];
    if let Some(rows) = rows {
        let mem = f32_bytes(rows, &dir.join(MEMORY_FILE), "memory_tokens")?;
        files.push((
            MEMORY_FILE,
            vec![("memory_tokens".into(), rows.shape().to_vec(), mem)],
        ));
    }
    if meta.train_embeddings == TrainEmbeddings::All {
        // The master when the table trained as one (CUDA), not its bf16 copy.
        let table = model.embedding().trained_table();
        let bytes = f32_bytes(table, &dir.join(EMBED_FILE), "weight")?;
        files.push((
            EMBED_FILE,
            vec![("weight".into(), table.shape().to_vec(), bytes)],
        ));
    }
    let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("JSON values serialise") + "\n";
    let meta_json = |m: &AdapterMeta| serde_json::to_value(m).expect("the meta serialises");
    let unstamped = AdapterMeta {
        export_id: None,
        ..meta.clone()
    };
    let unstamped = pretty(&meta_json(&unstamped));
    let shapes: Vec<String> = files
        .iter()
        .flat_map(|(f, ts)| ts.iter().map(move |(n, s, _)| format!("{f}/{n}{s:?}")))
        .collect();
    let id = adapter_swap::content_id(
        std::iter::once(unstamped.as_bytes())
            .chain(shapes.iter().map(|s| s.as_bytes()))
            .chain(
                files
                    .iter()
                    .flat_map(|(_, ts)| ts.iter().map(|(_, _, b)| b.as_slice())),
            ),
    );
    let mut names = Vec::new();
    for (name, tensors) in &files {
        write_f32_safetensors(dir, name, tensors, &id)?;
        names.push(*name);
    }
    write_atomic(dir, PEFT_CONFIG_FILE, pretty(&peft).as_bytes())?;
    let meta = AdapterMeta {
        export_id: Some(id),
        ..meta.clone()
    };
    let meta_json = meta_json(&meta);
    write_atomic(dir, META_FILE, pretty(&meta_json).as_bytes())?;
    names.extend([PEFT_CONFIG_FILE, META_FILE]);
    Ok(names)
}

/// `adapter_config.json`, checked against the meta: a LoRA of rank r, alpha
/// and targets as the meta says, and no PEFT option we would ignore.
fn check_peft_config(path: &Path, meta: &AdapterMeta) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| invalid(path, format!("malformed {PEFT_CONFIG_FILE}: {e}")))?;
    if v.get("peft_type").and_then(Value::as_str) != Some("LORA") {
        return Err(invalid(
            path,
            format!("peft_type is {}, expected \"LORA\"", v["peft_type"]),
        ));
    }
    let r = v.get("r").and_then(Value::as_u64);
    if r != Some(meta.lora.r as u64) {
        return Err(invalid(
            path,
            format!("r is {}, but {META_FILE} says r {}", v["r"], meta.lora.r),
        ));
    }
    let alpha = v.get("lora_alpha").and_then(Value::as_f64);
    if alpha.is_none_or(|a| (a - meta.lora.alpha as f64).abs() > 1e-6 * a.abs().max(1.0)) {
        return Err(invalid(
            path,
            format!(
                "lora_alpha is {}, but {META_FILE} says {}",
                v["lora_alpha"], meta.lora.alpha
            ),
        ));
    }
    let targets: Option<BTreeSet<&str>> = v
        .get("target_modules")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_str).collect());
    let want: BTreeSet<&str> = meta.lora.targets.iter().map(String::as_str).collect();
    if targets.as_ref() != Some(&want) {
        return Err(invalid(
            path,
            format!(
                "target_modules is {}, but {META_FILE} says {:?}",
                v["target_modules"], meta.lora.targets
            ),
        ));
    }
    for (key, off) in [
        ("use_rslora", Value::Bool(false)),
        ("use_dora", Value::Bool(false)),
        ("fan_in_fan_out", Value::Bool(false)),
    ] {
        if v.get(key).is_some_and(|x| !x.is_null() && *x != off) {
            return Err(invalid(
                path,
                format!("{key} = {} is not supported", v[key]),
            ));
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if v.get(key)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(invalid(
                path,
                format!("a non-empty {key} (per-module rank or alpha) is not supported"),
            ));
        }
    }
    if v.get("bias")
        .and_then(Value::as_str)
        .is_some_and(|b| b != "none")
    {
        return Err(invalid(
            path,
            format!("bias = {} is not supported (only \"none\")", v["bias"]),
        ));
    }
    Ok(())
}

/// Opens a safetensors file that must exist (a missing one is an I/O error naming it).
fn open_required(path: &Path) -> Result<SafetensorsFiles> {
    std::fs::metadata(path).map_err(io(path))?;
    SafetensorsFiles::open(path)
}

/// Reads `name` [shape] from `files` as f32 (F32/BF16/F16 stored).
fn read_f32(files: &SafetensorsFiles, path: &Path, name: &str, shape: &[usize]) -> Result<Tensor> {
    let t = files.tensor(name, shape)?;
    crate::finite::check_finite(&t, name, path)?;
    Ok(if t.dtype() == DType::F32 {
        t
    } else {
        t.try_to_dtype(DType::F32)
            .map_err(|e| invalid(path, format!("tensor `{name}`: {e}")))?
    })
}

/// The adapters of `files`, validated against `model` and `cfg`: one (A, B)
/// per (layer, target), every one present, every shape right.
fn read_loras(
    files: &SafetensorsFiles,
    path: &Path,
    model: &Transformer,
    cfg: &LoraConfig,
) -> Result<BTreeMap<(usize, LoraTarget), Lora>> {
    let layers = model.blocks().len();
    let mut seen: BTreeMap<(usize, LoraTarget), [Option<String>; 2]> = BTreeMap::new();
    for name in files.names() {
        let (l, t, is_b) = parse_peft_key(name).ok_or_else(|| {
            invalid(
                path,
                format!(
                    "tensor `{name}` is not a LoRA key \
                     (base_model.model.model.layers.<l>.<self_attn|mlp>.<proj>.lora_<A|B>.weight)"
                ),
            )
        })?;
        if l >= layers {
            return Err(invalid(
                path,
                format!("tensor `{name}` is for layer {l}, the model has {layers} layers"),
            ));
        }
        if !cfg.targets.contains(&t) {
            return Err(invalid(
                path,
                format!(
                    "tensor `{name}` adapts {}, which target_modules does not list",
                    t.module_name()
                ),
            ));
        }
        let slot = seen.entry((l, t)).or_default();
        slot[is_b as usize] = Some(name.to_string());
    }
    let mut out = BTreeMap::new();
    for l in 0..layers {
        for &t in &cfg.targets {
            let lin = model.blocks()[l].linear(t);
            let (d_out, d_in) = (lin.out_features(), lin.in_features());
            let names = seen.remove(&(l, t)).unwrap_or_default();
            let [Some(na), Some(nb)] = names else {
                return Err(invalid(
                    path,
                    format!(
                        "{} is missing",
                        if names[0].is_none() {
                            peft_key(l, t, "A")
                        } else {
                            peft_key(l, t, "B")
                        }
                    ),
                ));
            };
            let shape_of = |n: &str| files.dtype_and_shape(n).map(|d| d.1).unwrap_or_default();
            let (sa, sb) = (shape_of(&na), shape_of(&nb));
            if sa.len() == 2 && sa[0] != cfg.r {
                return Err(invalid(
                    path,
                    format!(
                        "tensor `{na}` has rank {} (shape {sa:?}), {PEFT_CONFIG_FILE} says r {}",
                        sa[0], cfg.r
                    ),
                ));
            }
            if sb.len() == 2 && sb[1] != cfg.r {
                return Err(invalid(
                    path,
                    format!(
                        "tensor `{nb}` has rank {} (shape {sb:?}), {PEFT_CONFIG_FILE} says r {}",
                        sb[1], cfg.r
                    ),
                ));
            }
            let a = read_f32(files, path, &na, &[cfg.r, d_in])?;
            let b = read_f32(files, path, &nb, &[d_out, cfg.r])?;
            out.insert(
                (l, t),
                Lora {
                    a,
                    b,
                    scale: cfg.alpha / cfg.r as f32,
                    dropout: cfg.dropout,
                },
            );
        }
    }
    Ok(out)
}

/// A tensor in the model's dtype and on its device.
fn to_model(t: Tensor, model: &Transformer, path: &Path) -> Result<Tensor> {
    t.try_to_dtype(model.dtype())
        .and_then(|t| t.to_device(model.device()))
        .map_err(|e| invalid(path, e.to_string()))
}

/// Reads the adapter in `dir` and attaches it to `model` (LoRA on the
/// targeted projections, replacing any there; memory rows as the extra
/// embedding rows; the embedding table when trained). Nothing changes in the
/// model unless the whole directory is valid. The model must be on the CPU
/// (LoRA side paths run there; merge before moving a model to a GPU).
pub fn load_adapter(dir: &Path, model: &mut Transformer) -> Result<AdapterMeta> {
    let meta_path = dir.join(META_FILE);
    let meta = AdapterMeta::read(&meta_path)?;
    if meta.merged {
        return Err(invalid(
            &meta_path,
            "this is a merged model directory, not an adapter: pass it as --model",
        ));
    }
    meta.check_base(model, &meta_path)?;
    if model.device() != Device::Cpu {
        return Err(invalid(
            dir,
            format!(
                "the model is on {}: load adapters on the CPU (and merge them before moving \
                 the model)",
                model.device()
            ),
        ));
    }
    let cfg = meta.lora_config(&meta_path)?;
    check_peft_config(&dir.join(PEFT_CONFIG_FILE), &meta)?;

    let k = meta.memory_tokens;
    let mut files = vec![dir.join(PEFT_WEIGHTS_FILE)];
    if k > 0 {
        files.push(dir.join(MEMORY_FILE));
    }
    if meta.train_embeddings == TrainEmbeddings::All {
        files.push(dir.join(EMBED_FILE));
    }
    adapter_swap::check_export_ids(&meta_path, meta.export_id.as_deref(), &files)?;
    let wpath = dir.join(PEFT_WEIGHTS_FILE);
    let loras = read_loras(&open_required(&wpath)?, &wpath, model, &cfg)?;

    let h = meta.hidden_size;
    let rows = match k {
        0 => None,
        _ => {
            let mpath = dir.join(MEMORY_FILE);
            let mfiles = open_required(&mpath)?;
            let rows = read_f32(&mfiles, &mpath, "memory_tokens", &[k, h])?;
            Some(to_model(rows, model, &mpath)?)
        }
    };

    let table = match meta.train_embeddings {
        TrainEmbeddings::Memory => None,
        TrainEmbeddings::All => {
            let epath = dir.join(EMBED_FILE);
            let efiles = open_required(&epath)?;
            let t = read_f32(&efiles, &epath, "weight", &[meta.vocab_size, h])?;
            Some(to_model(t, model, &epath)?)
        }
    };

    // Everything is valid: now change the model.
    let wrap = |e: llm2comp_tensor::TensorError| invalid(dir, e.to_string());
    for block in model.blocks_mut() {
        for t in LoraTarget::ALL {
            block.linear_mut(t).take_lora();
        }
    }
    for ((l, t), lora) in loras {
        model.blocks_mut()[l]
            .linear_mut(t)
            .set_lora(lora)
            .map_err(wrap)?;
    }
    model.set_extra_rows(rows).map_err(wrap)?;
    if let Some(t) = table {
        let e = model.embedding_mut();
        *e.table_mut() = t;
        // A master of the previous table would shadow the loaded one.
        e.set_master(None).map_err(wrap)?;
    }
    Ok(meta)
}

/// The `llm2comp.json` of a model directory, if it has one (a merged model).
pub fn merged_meta(model_dir: &Path) -> Result<Option<AdapterMeta>> {
    let path: PathBuf = model_dir.join(META_FILE);
    if !model_dir.is_dir() || !path.is_file() {
        return Ok(None);
    }
    let meta = AdapterMeta::read(&path)?;
    if !meta.merged {
        return Err(invalid(
            &path,
            "this directory is an adapter, not a merged model: pass it as --adapter with the \
             base model as --model",
        ));
    }
    Ok(Some(meta))
}
