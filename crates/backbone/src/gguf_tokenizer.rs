//! A Hugging Face tokenizer rebuilt from a GGUF's `tokenizer.ggml.*` metadata.
//!
//! A GGUF carries the vocabulary, the merges and the token types, but not the
//! pre-tokenizer: only its name (`tokenizer.ggml.pre`). The split rules each
//! name stands for are restated here as the model's own `tokenizer.json`
//! states them, because that is what the ids must match. This matters: for
//! "smollm" transformers' GGUF loader falls back to the plain GPT-2 split,
//! while SmolLM2's tokenizer.json (and llama.cpp) first isolate every numeric
//! character; the two disagree on " ½". Names we cannot state with confidence
//! are refused rather than guessed, since a wrong split still yields valid
//! ids, just not the ones the model was trained on.
//!
//! Control tokens (type 3) become special added tokens and user-defined ones
//! (type 4) plain added tokens, matched whole before any splitting, as
//! llama.cpp and transformers do. Token strings are taken as spelled: in a
//! byte-level vocabulary they already are in the byte alphabet.

use std::path::Path;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{NFC, NormalizerWrapper};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::{BackboneError, GgufArray, GgufFile, GgufValue, Result};

/// llama.cpp's token types that change how a token is matched.
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// Meta's Llama 3 split (the tiktoken cl100k pattern): numbers in groups of
/// up to three, letters with one leading non-letter, newlines kept apart.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split: Llama 3's with every digit on its own.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer names this module knows, for error messages.
pub(crate) const SUPPORTED_PRE: &[&str] = &["smollm", "gpt2", "llama-bpe", "qwen2"];

/// A tokenizer built from GGUF metadata, with the special ids the file names.
pub(crate) struct GgufTokenizer {
    pub(crate) tokenizer: tokenizers::Tokenizer,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) pad: Option<u32>,
}

fn invalid(path: &Path, msg: impl Into<String>) -> BackboneError {
    BackboneError::Invalid {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn get<'a>(g: &'a GgufFile, key: &str) -> Result<&'a GgufValue> {
    g.get(key).ok_or_else(|| {
        invalid(
            g.path(),
            format!("metadata `{key}` is missing; the file carries no usable tokenizer"),
        )
    })
}

fn get_str<'a>(g: &'a GgufFile, key: &str) -> Result<&'a str> {
    match get(g, key)? {
        GgufValue::Str(s) => Ok(s),
        other => Err(invalid(
            g.path(),
            format!("metadata `{key}` should be a string, found {other:?}"),
        )),
    }
}

fn get_array<'a>(g: &'a GgufFile, key: &str) -> Result<&'a GgufArray> {
    match get(g, key)? {
        GgufValue::Array(v) => Ok(v),
        other => Err(invalid(
            g.path(),
            format!("metadata `{key}` should be an array, found {other:?}"),
        )),
    }
}

fn strings<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let a = get_array(g, key)?;
    match a.strs() {
        Some(s) => Ok(s.iter().collect()),
        None => Err(invalid(
            g.path(),
            format!(
                "metadata `{key}` should be an array of strings, found an array of {} {}",
                a.len(),
                a.item_type()
            ),
        )),
    }
}

/// An optional token id, checked against the vocabulary size.
fn token_id(g: &GgufFile, key: &str, n_tokens: usize) -> Result<Option<u32>> {
    let id = match g.get(key) {
        None => return Ok(None),
        Some(GgufValue::U64(x)) => *x as i128,
        Some(GgufValue::I64(x)) => *x as i128,
        Some(other) => {
            return Err(invalid(
                g.path(),
                format!("metadata `{key}` should be an integer, found {other:?}"),
            ));
        }
    };
    if !(0..n_tokens as i128).contains(&id) {
        return Err(invalid(
            g.path(),
            format!("metadata `{key}` = {id} is outside the {n_tokens}-token vocabulary"),
        ));
    }
    Ok(Some(id as u32))
}

/// The normalizer and pre-tokenizer that `tokenizer.ggml.pre` = `name` stands for.
fn pre_tokenizer(
    g: &GgufFile,
    name: &str,
) -> Result<(Option<NormalizerWrapper>, PreTokenizerWrapper)> {
    // GPT-2's byte-level regex split, then bytes mapped to printable characters.
    let gpt2 = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    let split_then_bytes = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| invalid(g.path(), format!("pre-tokenizer `{name}`: {e}")))?;
        Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
        ])))
    };
    Ok(match name {
        "smollm" => (
            None,
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                gpt2(),
            ])),
        ),
        "gpt2" => (None, gpt2()),
        "llama-bpe" => (None, split_then_bytes(LLAMA3_SPLIT)?),
        "qwen2" => (
            Some(NormalizerWrapper::NFC(NFC)),
            split_then_bytes(QWEN2_SPLIT)?,
        ),
        other => {
            return Err(BackboneError::Unsupported {
                path: g.path().to_path_buf(),
                what: format!(
                    "tokenizer.ggml.pre `{other}` (known: {})",
                    SUPPORTED_PRE.join(", ")
                ),
            });
        }
    })
}

/// Builds the tokenizer `g`'s metadata describes (byte-level BPE only).
pub(crate) fn from_gguf(g: &GgufFile) -> Result<GgufTokenizer> {
    let path = g.path();
    let model = get_str(g, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(BackboneError::Unsupported {
            path: path.to_path_buf(),
            what: format!(
                "tokenizer.ggml.model `{model}` (only `gpt2`, byte-level BPE, is implemented{})",
                if model == "llama" {
                    "; SentencePiece is not yet"
                } else {
                    ""
                }
            ),
        });
    }
    let pre = get_str(g, "tokenizer.ggml.pre")?;
    let (normalizer, pre_tok) = pre_tokenizer(g, pre)?;

    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let mut vocab = Vocab::default();
    vocab.reserve(tokens.len());
    for (id, &t) in tokens.iter().enumerate() {
        if let Some(first) = vocab.insert(t.to_string(), id as u32) {
            return Err(invalid(
                path,
                format!(
                    "token {t:?} appears twice in tokenizer.ggml.tokens (ids {first} and {id})"
                ),
            ));
        }
    }
    let merges = strings(g, "tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                Ok((a.to_string(), b.to_string()))
            }
            _ => Err(invalid(
                path,
                format!("tokenizer.ggml.merges[{i}] = {m:?} is not two tokens joined by one space"),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        // Llama 3's tokenizer.json looks a whole pre-token up before merging.
        .ignore_merges(pre == "llama-bpe")
        .build()
        .map_err(|e| invalid(path, format!("building the BPE model: {e}")))?;

    let types = match g.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(_) => {
            let a = get_array(g, "tokenizer.ggml.token_type")?;
            let bad = || {
                invalid(
                    path,
                    format!(
                        "tokenizer.ggml.token_type holds {} items, expected integers",
                        a.item_type()
                    ),
                )
            };
            // A u64 past i64::MAX is no token type either: mapped to one that is none.
            a.ints()
                .ok_or_else(bad)?
                .into_iter()
                .map(|x| x.unwrap_or(i64::MIN))
                .collect()
        }
    };
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(invalid(
            path,
            format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            ),
        ));
    }

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_normalizer(normalizer);
    tokenizer.with_pre_tokenizer(Some(pre_tok));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));
    let added = |wanted: i64, special: bool| -> Vec<AddedToken> {
        types
            .iter()
            .zip(&tokens)
            .filter(|(ty, _)| **ty == wanted)
            .map(|(_, t)| AddedToken::from(t.to_string(), special).normalized(false))
            .collect()
    };
    tokenizer.add_special_tokens(&added(TOKEN_CONTROL, true));
    tokenizer.add_tokens(&added(TOKEN_USER_DEFINED, false));

    let n = tokens.len();
    // Byte-level BPE never needs an unknown token; the id is only checked.
    token_id(g, "tokenizer.ggml.unknown_token_id", n)?;
    Ok(GgufTokenizer {
        tokenizer,
        bos: token_id(g, "tokenizer.ggml.bos_token_id", n)?,
        eos: token_id(g, "tokenizer.ggml.eos_token_id", n)?,
        pad: token_id(g, "tokenizer.ggml.padding_token_id", n)?,
    })
}
