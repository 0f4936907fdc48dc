//! A model written back as a Hugging Face directory (`config.json`,
//! `model.safetensors`, `tokenizer.json`): how a trained LLM2Comp encoder
//! leaves llm2comp, for `transformers` or for `llm2comp embed --model`.
//!
//! The k memory tokens become ordinary vocabulary entries V..V+k: their rows
//! are appended to the embedding table, an untied LM head gets k zero rows
//! (they are never predicted), and the tokenizer gets k special tokens whose
//! ids must land exactly there. A tokenizer with fewer than V entries (Qwen2
//! pads its embedding past the tokenizer) is first filled up to V with
//! placeholder special tokens, otherwise `<|mem_0|>` would get an id below V
//! and read a base row. `llm2comp.json` (with `merged: true`) records k and
//! the pooling so `embed` appends the tokens and pools bidirectionally.
//!
//! The directory is built under a temporary sibling name and renamed into
//! place, so a failed export never leaves a half-written model under `out`.
//! Tensors are converted one at a time while the file is written (no second
//! copy of the whole model in memory).

use std::borrow::Cow;
use std::path::Path;

use llm2comp_tensor::{DType, Device};
use safetensors::tensor::View;
use serde_json::Value;

use crate::adapter::{AdapterMeta, META_FILE};
use crate::layers::lora::LoraTarget;
use crate::{BackboneError, Result, Tokenizer, Transformer};

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

/// The name of memory token `i` in an exported tokenizer.
pub fn memory_token(i: usize) -> String {
    format!("<|mem_{i}|>")
}

/// The placeholder for vocabulary slot `id` that the tokenizer lacks.
pub fn filler_token(id: usize) -> String {
    format!("<|llm2comp_pad_{id}|>")
}

/// Part of an exported tensor's rows: model data or zero rows.
enum Part<'a> {
    Data(&'a [f32]),
    Zeros(usize),
}

/// A tensor converted to the file's dtype only when the writer asks for it.
struct Lazy<'a> {
    parts: Vec<Part<'a>>,
    shape: Vec<usize>,
    dtype: DType,
}

impl View for Lazy<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self.dtype {
            DType::BF16 => safetensors::Dtype::BF16,
            _ => safetensors::Dtype::F32,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let mut out = Vec::with_capacity(self.data_len());
        let mut put = |v: f32| match self.dtype {
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            _ => out.extend_from_slice(&v.to_le_bytes()),
        };
        for p in &self.parts {
            match p {
                Part::Data(s) => s.iter().for_each(|&v| put(v)),
                Part::Zeros(n) => (0..*n).for_each(|_| put(0.0)),
            }
        }
        Cow::Owned(out)
    }

    fn data_len(&self) -> usize {
        let width = if self.dtype == DType::BF16 { 2 } else { 4 };
        self.shape.iter().product::<usize>() * width
    }
}

/// The tokenizer with the memory tokens at V..V+k (after fillers up to V).
fn export_tokenizer(tokenizer: &Tokenizer, v: usize, k: usize, out: &Path) -> Result<Tokenizer> {
    let mut tok = tokenizer.clone();
    if k == 0 {
        return Ok(tok);
    }
    let have = tok.vocab_size();
    if have > v {
        return Err(invalid(
            out,
            format!(
                "the tokenizer has {have} ids but the model only {v} embedding rows: memory \
                 token ids {v}.. would collide with the tokenizer's own tokens"
            ),
        ));
    }
    let fillers: Vec<String> = (have..v).map(filler_token).collect();
    tok.add_tokens(&fillers)?;
    let mems: Vec<String> = (0..k).map(memory_token).collect();
    let ids = tok.add_tokens(&mems)?;
    let want: Vec<u32> = (v..v + k).map(|i| i as u32).collect();
    if ids != want {
        return Err(invalid(
            out,
            format!("memory tokens got ids {ids:?}, expected {want:?}"),
        ));
    }
    Ok(tok)
}

/// Writes the files of the export into `dir` (an empty directory).
fn write_files(
    dir: &Path,
    model: &Transformer,
    tokenizer: &Tokenizer,
    meta: Option<&AdapterMeta>,
    dtype: DType,
    out: &Path,
) -> Result<()> {
    let v = model.embedding().base_vocab();
    let extra = model.embedding().extra();
    let k = extra.map_or(0, |e| e.shape()[0]);

    // The tokenizer first: a vocabulary mismatch should fail before gigabytes are written.
    let tok = export_tokenizer(tokenizer, v, k, out)?;
    let mut config = model.config().clone();
    config.vocab_size = v + k;
    config.torch_dtype = Some(
        if dtype == DType::BF16 {
            "bfloat16"
        } else {
            "float32"
        }
        .into(),
    );
    let json = config.to_hf_json()?;
    let cpath = dir.join("config.json");
    let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("JSON values serialise") + "\n";
    std::fs::write(&cpath, pretty(&json)).map_err(io(&cpath))?;

    let wpath = dir.join("model.safetensors");
    let mut views = Vec::new();
    for (name, t) in model.named_weights() {
        let data = t
            .as_slice::<f32>()
            .map_err(|e| invalid(&wpath, format!("tensor `{name}`: {e}")))?;
        let mut parts = vec![Part::Data(data)];
        let mut shape = t.shape().to_vec();
        if k > 0 && (name == "model.embed_tokens.weight" || name == "lm_head.weight") {
            let h = shape[1];
            parts.push(match (name.as_str(), extra) {
                ("model.embed_tokens.weight", Some(rows)) => Part::Data(
                    rows.as_slice::<f32>()
                        .map_err(|e| invalid(&wpath, format!("memory rows: {e}")))?,
                ),
                _ => Part::Zeros(k * h),
            });
            shape[0] += k;
        }
        views.push((
            name,
            Lazy {
                parts,
                shape,
                dtype,
            },
        ));
    }
    let info = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(info), &wpath)
        .map_err(|e| invalid(&wpath, format!("writing: {e}")))?;
    // The safetensors writer creates the file owner-only; the model is as
    // shareable as the other files in the directory.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&wpath, std::fs::Permissions::from_mode(0o644))
            .map_err(io(&wpath))?;
    }

    let tpath = dir.join("tokenizer.json");
    tok.save(&tpath)?;
    // `save` wrote BOS/EOS/PAD; name the class so AutoTokenizer takes the
    // tokenizer.json as it is instead of a model-specific slow class.
    let tcpath = dir.join("tokenizer_config.json");
    let text = std::fs::read_to_string(&tcpath).map_err(io(&tcpath))?;
    let mut tc: Value = serde_json::from_str(&text).map_err(|e| invalid(&tcpath, e.to_string()))?;
    tc["tokenizer_class"] = "PreTrainedTokenizerFast".into();
    tc["model_max_length"] = config.max_position_embeddings.into();
    tc["clean_up_tokenization_spaces"] = false.into();
    std::fs::write(&tcpath, pretty(&tc)).map_err(io(&tcpath))?;

    if let Some(m) = meta {
        let merged = AdapterMeta {
            merged: true,
            // The id ties an adapter's files together; a merged directory has none of them.
            export_id: None,
            ..m.clone()
        };
        let mpath = dir.join(META_FILE);
        let json = serde_json::to_value(&merged).expect("the meta serialises");
        std::fs::write(&mpath, pretty(&json)).map_err(io(&mpath))?;
    }
    Ok(())
}

/// Errors unless `model` can be exported as it is: on the CPU in f32, every
/// adapter merged, and the memory rows matching `meta`.
fn check_exportable(model: &Transformer, meta: Option<&AdapterMeta>, out: &Path) -> Result<()> {
    if model.device() != Device::Cpu || model.dtype() != DType::F32 {
        return Err(invalid(
            out,
            format!(
                "export needs the model on the CPU in f32, it is on {} in {}",
                model.device(),
                model.dtype()
            ),
        ));
    }
    for (l, b) in model.blocks().iter().enumerate() {
        if let Some(t) = LoraTarget::ALL
            .into_iter()
            .find(|&t| b.linear(t).lora().is_some())
        {
            return Err(invalid(
                out,
                format!(
                    "layer {l} {} still has a LoRA adapter: merge it (merge_lora) before \
                     exporting",
                    t.module_name()
                ),
            ));
        }
    }
    let k = model.embedding().extra().map_or(0, |e| e.shape()[0]);
    match meta {
        None if k > 0 => Err(invalid(
            out,
            format!(
                "the model has {k} memory-token rows but no adapter meta: embed would not know \
                 to append them"
            ),
        )),
        Some(m) if m.memory_tokens != k => Err(invalid(
            out,
            format!(
                "the meta says {} memory tokens, the model has {k} memory rows",
                m.memory_tokens
            ),
        )),
        Some(m) => m.check_base(model, out),
        None => Ok(()),
    }
}

/// Writes `model` (LoRA already merged), its tokenizer with the memory tokens
/// added, and `meta` (marked merged) as a Hugging Face directory `out` in
/// `dtype` (f32 or bf16). A non-empty existing `out` is replaced only with
/// `overwrite`, and only when it is an earlier export (`export_replace`);
/// the directory appears whole or not at all.
pub fn write_hf_dir(
    out: &Path,
    model: &Transformer,
    tokenizer: &Tokenizer,
    meta: Option<&AdapterMeta>,
    dtype: DType,
    overwrite: bool,
) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::BF16) {
        return Err(invalid(
            out,
            format!("export dtype {dtype}: only f32 and bf16"),
        ));
    }
    check_exportable(model, meta, out)?;
    let existing = match std::fs::metadata(out) {
        Ok(m) if !m.is_dir() => {
            return Err(invalid(out, "exists and is not a directory"));
        }
        Ok(_) => {
            let empty = std::fs::read_dir(out).map_err(io(out))?.next().is_none();
            if !empty && !overwrite {
                return Err(invalid(
                    out,
                    "exists and is not empty (pass --force to replace an earlier merge output)",
                ));
            }
            if !empty {
                crate::export_replace::check_replaceable(out)?;
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(out)(e)),
    };
    let name = out
        .file_name()
        .ok_or_else(|| invalid(out, "the output path has no directory name"))?
        .to_string_lossy()
        .into_owned();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    // A fresh, exclusively created sibling: nothing planted there is followed or reused.
    let tmp = crate::atomic::create_temp_dir(parent, &name)?;
    let written = write_files(&tmp, model, tokenizer, meta, dtype, out).and_then(|()| {
        crate::atomic::fsync_tree(&tmp)?;
        if existing {
            // Move the old directory aside first: rename cannot replace a
            // non-empty directory, and the old one stays whole until the new
            // one is in place.
            let old = crate::atomic::create_temp_dir(parent, &format!("{name}.old"))?;
            std::fs::rename(out, &old).map_err(io(out))?;
            std::fs::rename(&tmp, out).map_err(io(out))?;
            crate::atomic::fsync_dir(parent)?;
            std::fs::remove_dir_all(&old).map_err(io(&old))
        } else {
            std::fs::rename(&tmp, out).map_err(io(out))?;
            Ok(crate::atomic::fsync_dir(parent)?)
        }
    });
    if written.is_err() && tmp.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}
