//! Weights in safetensors files, memory-mapped: one `model.safetensors`, or
//! shards listed by `model.safetensors.index.json`.
//!
//! Opening a checkpoint maps every file and parses and validates every header
//! up front (offsets inside the file, file length matching the header), so a
//! truncated download is reported when the model is opened, naming the file,
//! not as garbage halfway through a run. Tensor bytes are then read straight
//! from the map; nothing is copied until a tensor is asked for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use llm2comp_tensor::{DType, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors};

use crate::{BackboneError, Result};

/// One mapped file and its parsed header.
struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Bytes before the data section (8-byte length + JSON header).
    data_start: usize,
    meta: Metadata,
}

/// A checkpoint's safetensors files, opened and validated.
pub struct SafetensorsFiles {
    shards: Vec<Shard>,
    /// Tensor name → index into `shards`.
    owner: HashMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFiles")
            .field(
                "files",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.owner.len())
            .finish()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackboneError + '_ {
    move |source| BackboneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, msg: impl Into<String>) -> BackboneError {
    BackboneError::Invalid {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

impl SafetensorsFiles {
    /// Opens `path`: a `.safetensors` file, a shard index
    /// (`*.safetensors.index.json`) with its shards, or a model directory
    /// holding `model.safetensors` or `model.safetensors.index.json`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let index = if path.is_dir() {
            Some(path.join("model.safetensors.index.json")).filter(|i| i.is_file())
        } else {
            // An index handed over directly must not be mapped as a shard:
            // its JSON would be read as a length prefix ("header too large").
            Some(path.to_path_buf()).filter(|p| p.to_string_lossy().ends_with(".index.json"))
        };
        let (files, weight_map) = match &index {
            Some(index) => shard_list(index)?,
            None if path.is_dir() => (vec![path.join("model.safetensors")], Vec::new()),
            None => (vec![path.to_path_buf()], Vec::new()),
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut owner = HashMap::new();
        for file in files {
            let shard = map_shard(&file)?;
            for name in shard.meta.tensors().keys() {
                if let Some(&other) = owner.get(name.as_str()) {
                    let first: &Shard = &shards[other];
                    return Err(invalid(
                        &file,
                        format!("tensor `{name}` is also in {}", first.path.display()),
                    ));
                }
                owner.insert(name.clone(), shards.len());
            }
            shards.push(shard);
        }
        if let Some(index) = &index {
            check_weight_map(index, &weight_map, &shards, &owner)?;
        }
        Ok(Self { shards, owner })
    }

    /// Names of every tensor, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.owner.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// The header's dtype name (`F32`, `BF16`, ...) and shape of `name`.
    pub fn dtype_and_shape(&self, name: &str) -> Option<(String, Vec<usize>)> {
        let shard = &self.shards[*self.owner.get(name)?];
        let info = shard.meta.info(name)?;
        Some((format!("{:?}", info.dtype), info.shape.clone()))
    }

    /// The files, in load order.
    pub fn paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// The file holding `name`, if any.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.owner.get(name).map(|&i| self.shards[i].path.as_path())
    }

    /// Reads tensor `name`, checking it has exactly `shape`; f32, bf16 and
    /// f16 keep their dtype (callers widen with `Tensor::to_dtype`).
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let Some(&i) = self.owner.get(name) else {
            let files: Vec<String> = self
                .shards
                .iter()
                .map(|s| s.path.display().to_string())
                .collect();
            return Err(BackboneError::Invalid {
                path: self
                    .shards
                    .first()
                    .map(|s| s.path.clone())
                    .unwrap_or_default(),
                msg: format!("tensor `{name}` is missing (searched {})", files.join(", ")),
            });
        };
        let shard = &self.shards[i];
        let info = shard
            .meta
            .info(name)
            .expect("owner map lists only names in the header");
        if info.shape != shape {
            return Err(invalid(
                &shard.path,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    info.shape
                ),
            ));
        }
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            other => {
                return Err(invalid(
                    &shard.path,
                    format!("tensor `{name}` is {other:?}; expected F32, BF16 or F16"),
                ));
            }
        };
        let (a, b) = info.data_offsets;
        let bytes = &shard.map[shard.data_start + a..shard.data_start + b];
        Tensor::from_le_bytes(bytes, dtype, shape)
            .map_err(|e| invalid(&shard.path, format!("tensor `{name}`: {e}")))
    }
}

/// Every tensor the index lists must be in the shard it names: a stale
/// index (shards re-split without rewriting it) would otherwise load
/// whatever the shards happen to hold.
fn check_weight_map(
    index: &Path,
    weight_map: &[(String, PathBuf)],
    shards: &[Shard],
    owner: &HashMap<String, usize>,
) -> Result<()> {
    for (tensor, file) in weight_map {
        match owner.get(tensor) {
            Some(&i) if shards[i].path == *file => {}
            Some(&i) => {
                return Err(invalid(
                    index,
                    format!(
                        "weight_map puts tensor `{tensor}` in {}, but it is in {}",
                        file.display(),
                        shards[i].path.display()
                    ),
                ));
            }
            None => {
                return Err(invalid(
                    index,
                    format!(
                        "weight_map lists tensor `{tensor}` in {}, which does not hold it",
                        file.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Tensor name → shard file pairs of an index.
type WeightMap = Vec<(String, PathBuf)>;

/// The shard files named by an index's `weight_map`, in first-seen order,
/// and the map itself.
fn shard_list(index: &Path) -> Result<(Vec<PathBuf>, WeightMap)> {
    let text = std::fs::read_to_string(index).map_err(io(index))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid(index, e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| invalid(index, "no `weight_map` object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    let mut pairs = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            invalid(
                index,
                format!("weight_map entry `{tensor}` is not a file name"),
            )
        })?;
        if file.contains('/') || file.contains('\\') || file.starts_with("..") {
            return Err(invalid(
                index,
                format!("shard name `{file}` must be a plain file name"),
            ));
        }
        let p = dir.join(file);
        if !files.contains(&p) {
            files.push(p.clone());
        }
        pairs.push((tensor.clone(), p));
    }
    if files.is_empty() {
        return Err(invalid(index, "`weight_map` is empty"));
    }
    Ok((files, pairs))
}

fn map_shard(path: &Path) -> Result<Shard> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    // SAFETY: the map is read-only and private to this process; a checkpoint
    // file changed by another process while mapped is outside our contract
    // (as for every mmap-based loader).
    let map = unsafe { Mmap::map(&file) }.map_err(io(path))?;
    let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
        invalid(
            path,
            format!("not a valid safetensors file ({e}); truncated or corrupt download?"),
        )
    })?;
    Ok(Shard {
        path: path.to_path_buf(),
        map,
        data_start: 8 + n,
        meta,
    })
}
