//! The backbone's tokenizer: text to ids and back, from a Hugging Face
//! `tokenizer.json` or from a GGUF's metadata.
//!
//! It wraps the `tokenizers` crate so ids equal the reference tokenizer's by
//! construction. The wrapper pins down the behaviour llm2comp relies on and
//! that a `tokenizer.json` would otherwise decide silently:
//! - nothing is added to the ids but what the caller asks for: the file's
//!   post-processor (BOS/EOS/CLS templates) is never run, `add_bos` prepends
//!   the BOS id and nothing else;
//! - the file's padding and truncation settings are dropped at load (some
//!   ship fixed at 128 tokens): batching and length limits are the caller's;
//! - special tokens written literally in the text (`<|im_start|>`) are
//!   matched whole, as Hugging Face does, so chat templates encode right.
//!
//! BOS/EOS/PAD are not part of `tokenizer.json`; Hugging Face keeps them in
//! the `tokenizer_config.json` beside it, so that is where `from_file` reads
//! and `save` writes them.

use std::path::{Path, PathBuf};

use tokenizers::{AddedToken, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

use crate::{BackboneError, GgufFile, Result};

/// The `tokenizer_config.json` keys holding the special tokens, in Hugging Face's spelling.
const CONFIG: &str = "tokenizer_config.json";
const BOS_KEY: &str = "bos_token";
const EOS_KEY: &str = "eos_token";
const PAD_KEY: &str = "pad_token";

/// A text tokenizer with its special-token ids.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Where it was loaded from; named by every error.
    source: PathBuf,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    /// One past the largest id, added tokens included.
    vocab_size: usize,
    /// The longest token's text in bytes (at least 1): no token covers
    /// more input than that in the byte-level BPEs models use.
    max_token_bytes: usize,
}

/// How many times the bytes `tokens` tokens can cover a text is cut to
/// before tokenising ([`Tokenizer::cut_for`]): room for a normaliser that
/// grows the text (NFC expands a few characters up to 3×).
const CUT_MARGIN: usize = 4;
/// Texts this short are never cut.
const MIN_CUT_BYTES: usize = 4096;

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .finish()
    }
}

fn invalid(path: &Path, msg: impl Into<String>) -> BackboneError {
    BackboneError::Invalid {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The start of a text for an error message (a passage can be megabytes).
fn preview(text: &str) -> String {
    const SHOWN: usize = 80;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}... ({} bytes)", &text[..end], text.len()),
        None => text.to_string(),
    }
}

fn io(path: &Path, source: std::io::Error) -> BackboneError {
    BackboneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Tokenizer {
    fn new(
        inner: tokenizers::Tokenizer,
        source: &Path,
        bos: Option<u32>,
        eos: Option<u32>,
        pad: Option<u32>,
    ) -> Self {
        let vocab = inner.get_vocab(true);
        let vocab_size = vocab.values().max().map_or(0, |&m| m as usize + 1);
        let max_token_bytes = vocab.keys().map(String::len).max().unwrap_or(1).max(1);
        Self {
            inner,
            source: source.to_path_buf(),
            bos,
            eos,
            pad,
            vocab_size,
            max_token_bytes,
        }
    }

    /// The bytes of text [`Self::cut_for`] keeps for `tokens` tokens (for
    /// readers that cut while reading).
    pub fn cut_bytes(&self, tokens: usize) -> usize {
        tokens
            .saturating_mul(self.max_token_bytes)
            .saturating_mul(CUT_MARGIN)
            .max(MIN_CUT_BYTES)
    }

    /// The start of `text` that still holds its first `tokens` tokens, cut
    /// at a character boundary, and whether anything was cut. Tokenising a
    /// whole text to keep its first 512 tokens made one 50 MB line take
    /// 6.6 GB; this keeps `CUT_MARGIN` × `tokens` × the longest token's
    /// bytes. A text that long holds more than `tokens` tokens (each token
    /// covers at most the longest token's bytes), so callers truncate or
    /// filter exactly as before; the first `tokens` ids are those of the
    /// whole text except where one pre-tokenizer piece (a word) runs across
    /// the cut, far past them.
    pub fn cut_for<'t>(&self, text: &'t str, tokens: usize) -> (&'t str, bool) {
        let max = self.cut_bytes(tokens);
        if text.len() <= max {
            return (text, false);
        }
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        (&text[..end], true)
    }

    /// Loads a Hugging Face `tokenizer.json`, and the special tokens of the
    /// `tokenizer_config.json` beside it if there is one (else they are unset).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
        let mut inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| invalid(path, format!("not a loadable tokenizer.json: {e}")))?;
        inner
            .with_truncation(None)
            .map_err(|e| invalid(path, format!("removing truncation: {e}")))?;
        inner.with_padding(None);
        let mut t = Self::new(inner, path, None, None, None);
        let config = path.with_file_name(CONFIG);
        if config.exists() {
            t.read_special_tokens(&config)?;
        }
        Ok(t)
    }

    /// Builds the tokenizer a GGUF's `tokenizer.ggml.*` metadata describes
    /// (byte-level BPE, `tokenizer.ggml.model` = `gpt2`), with its BOS/EOS/PAD.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let g = crate::gguf_tokenizer::from_gguf(gguf)?;
        Ok(Self::new(g.tokenizer, gguf.path(), g.bos, g.eos, g.pad))
    }

    fn read_special_tokens(&mut self, config: &Path) -> Result<()> {
        let text = std::fs::read_to_string(config).map_err(|e| io(config, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| invalid(config, e.to_string()))?;
        let id = |key: &str| -> Result<Option<u32>> {
            // Either "<s>" or {"content": "<s>", ...}; null means none.
            let token = match json.get(key) {
                None | Some(serde_json::Value::Null) => return Ok(None),
                Some(serde_json::Value::String(s)) => s.as_str(),
                Some(v) => match v.get("content").and_then(|c| c.as_str()) {
                    Some(s) => s,
                    None => return Err(invalid(config, format!("`{key}` is {v}, not a token"))),
                },
            };
            self.token_to_id(token).map(Some).ok_or_else(|| {
                invalid(
                    config,
                    format!("`{key}` {token:?} is not in the vocabulary"),
                )
            })
        };
        (self.bos, self.eos, self.pad) = (id(BOS_KEY)?, id(EOS_KEY)?, id(PAD_KEY)?);
        Ok(())
    }

    /// The ids of `text`; with `add_bos`, the BOS id first (an error if the
    /// tokenizer has none). Nothing else is added; `""` gives `[]` or `[BOS]`.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| invalid(&self.source, format!("encoding {:?}: {e}", preview(text))))?;
        self.with_bos(enc.get_ids(), add_bos)
    }

    /// [`Tokenizer::encode`] of each text, in parallel.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S], add_bos: bool) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encs = self
            .inner
            .encode_batch(inputs, false)
            .map_err(|e| invalid(&self.source, format!("encoding a batch: {e}")))?;
        encs.iter()
            .map(|e| self.with_bos(e.get_ids(), add_bos))
            .collect()
    }

    fn with_bos(&self, ids: &[u32], add_bos: bool) -> Result<Vec<u32>> {
        if !add_bos {
            return Ok(ids.to_vec());
        }
        let bos = self.bos.ok_or_else(|| {
            invalid(
                &self.source,
                "add_bos was asked but the tokenizer has no BOS token",
            )
        })?;
        Ok(std::iter::once(bos).chain(ids.iter().copied()).collect())
    }

    /// The text of `ids`, special tokens included. Bytes that do not form
    /// valid UTF-8 (a character cut between ids) come out as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.vocab_size) {
            return Err(invalid(
                &self.source,
                format!(
                    "decoding: id {bad} is outside the vocabulary of {}",
                    self.vocab_size
                ),
            ));
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| invalid(&self.source, format!("decoding: {e}")))
    }

    /// The pieces the normalizer and pre-tokenizer cut `text` into, before
    /// BPE, in the byte-level spelling (`Ġ` for a space). Special tokens are
    /// not looked for here (`encode` matches them first). For checking
    /// splits and debugging.
    pub fn pre_tokenize(&self, text: &str) -> Result<Vec<String>> {
        let err = |e: tokenizers::Error| invalid(&self.source, format!("pre-tokenizing: {e}"));
        let mut pts = PreTokenizedString::from(text);
        if let Some(n) = self.inner.get_normalizer() {
            pts.normalize(|s| tokenizers::Normalizer::normalize(n, s))
                .map_err(err)?;
        }
        if let Some(p) = self.inner.get_pre_tokenizer() {
            p.pre_tokenize(&mut pts).map_err(err)?;
        }
        Ok(pts
            .get_splits(OffsetReferential::Original, OffsetType::None)
            .into_iter()
            .map(|(s, _, _)| s.to_string())
            .collect())
    }

    /// One past the largest id, added tokens included: the embedding rows needed.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The beginning-of-sequence id, if the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence id, if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The padding id, if the tokenizer has one.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// Sets the BOS/EOS/PAD ids (e.g. for a `tokenizer.json` without a config).
    pub fn set_special_ids(
        &mut self,
        bos: Option<u32>,
        eos: Option<u32>,
        pad: Option<u32>,
    ) -> Result<()> {
        for (name, id) in [("BOS", bos), ("EOS", eos), ("PAD", pad)] {
            if let Some(id) = id.filter(|&i| i as usize >= self.vocab_size) {
                return Err(invalid(
                    &self.source,
                    format!(
                        "{name} id {id} is outside the vocabulary of {}",
                        self.vocab_size
                    ),
                ));
            }
        }
        (self.bos, self.eos, self.pad) = (bos, eos, pad);
        Ok(())
    }

    /// The id of `token` (vocabulary or added), spelled as the vocabulary
    /// spells it (`Ġthe` in a byte-level vocabulary).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token of `id`, as the vocabulary spells it.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Appends `tokens` as new special tokens (never split, matched whole in
    /// text) and returns their ids: consecutive, from the old `vocab_size()`.
    /// A token that already exists, repeats, or is empty is an error, since a
    /// memory token sharing an id with real text would be silently wrong.
    pub fn add_tokens(&mut self, tokens: &[String]) -> Result<Vec<u32>> {
        let mut seen = std::collections::HashSet::new();
        for t in tokens {
            if t.is_empty() {
                return Err(invalid(&self.source, "add_tokens: empty token"));
            }
            if let Some(id) = self.token_to_id(t) {
                return Err(invalid(
                    &self.source,
                    format!("add_tokens: {t:?} already exists with id {id}"),
                ));
            }
            if !seen.insert(t) {
                return Err(invalid(
                    &self.source,
                    format!("add_tokens: {t:?} given twice"),
                ));
            }
        }
        let first = self.vocab_size as u32;
        let added: Vec<AddedToken> = tokens
            .iter()
            .map(|t| AddedToken::from(t.clone(), true).normalized(false))
            .collect();
        self.inner.add_special_tokens(&added);
        let ids: Vec<u32> = tokens
            .iter()
            .map(|t| self.token_to_id(t).unwrap_or(u32::MAX))
            .collect();
        let expected: Vec<u32> = (first..first + tokens.len() as u32).collect();
        if ids != expected {
            // The tokenizers crate chose other ids (it would if the added
            // vocabulary already ran past the model's): report, never guess.
            return Err(invalid(
                &self.source,
                format!("add_tokens: got ids {ids:?}, expected {expected:?}"),
            ));
        }
        self.vocab_size += tokens.len();
        Ok(ids)
    }

    /// Writes the tokenizer (added tokens included) as a Hugging Face
    /// `tokenizer.json` at `path`, and its BOS/EOS/PAD into the
    /// `tokenizer_config.json` beside it, keeping that file's other keys.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.inner
            .save(path, false)
            .map_err(|e| invalid(path, format!("writing the tokenizer: {e}")))?;
        let config = path.with_file_name(CONFIG);
        let mut json = if config.exists() {
            let text = std::fs::read_to_string(&config).map_err(|e| io(&config, e))?;
            match serde_json::from_str(&text).map_err(|e| invalid(&config, e.to_string()))? {
                serde_json::Value::Object(m) => m,
                _ => return Err(invalid(&config, "not a JSON object")),
            }
        } else {
            serde_json::Map::new()
        };
        for (key, id) in [
            (BOS_KEY, self.bos),
            (EOS_KEY, self.eos),
            (PAD_KEY, self.pad),
        ] {
            let value = id
                .and_then(|i| self.id_to_token(i))
                .map_or(serde_json::Value::Null, serde_json::Value::String);
            json.insert(key.to_string(), value);
        }
        let text = serde_json::to_string_pretty(&json).expect("a JSON map serialises");
        std::fs::write(&config, text + "\n").map_err(|e| io(&config, e))
    }
}
