//! The tokenizer against Hugging Face's: golden ids for ~40 varied texts made
//! by `scripts/golden_tokenizer.py` (transformers' GGUF loader with SmolLM2's
//! own pre-tokenizer), reproduced both from the metadata-only SmolLM2 GGUF
//! and from the tokenizer.json transformers wrote; the pre-tokenizer splits of
//! every supported `tokenizer.ggml.pre`; added tokens; saving; and errors.

use std::path::{Path, PathBuf};

use llm2comp_backbone::{GgufFile, Tokenizer};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn golden() -> Value {
    let text = std::fs::read_to_string(fixture("tokenizer_golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn smollm_from_gguf() -> Tokenizer {
    let g = GgufFile::open(fixture("smollm2-tokenizer.gguf")).unwrap();
    assert!(g.tensors.is_empty());
    Tokenizer::from_gguf(&g).unwrap()
}

fn smollm_from_file() -> Tokenizer {
    Tokenizer::from_file(fixture("smollm2-tokenizer/tokenizer.json")).unwrap()
}

/// Every golden case, the special ids and the vocabulary size (plus `added` tokens).
fn check_golden(t: &Tokenizer, who: &str, added: u64) {
    let g = golden();
    assert_eq!(
        t.vocab_size() as u64,
        g["vocab_size"].as_u64().unwrap() + added,
        "{who}"
    );
    assert_eq!(t.bos_id().map(u64::from), g["bos_id"].as_u64(), "{who}");
    assert_eq!(t.eos_id().map(u64::from), g["eos_id"].as_u64(), "{who}");
    assert_eq!(t.pad_id().map(u64::from), g["pad_id"].as_u64(), "{who}");
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    let bos = t.bos_id().unwrap();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        assert_eq!(t.encode(text, false).unwrap(), want, "{who}: {text:?}");
        let with_bos = t.encode(text, true).unwrap();
        assert_eq!((with_bos[0], &with_bos[1..]), (bos, &want[..]), "{who}");
        assert_eq!(
            t.decode(&want).unwrap(),
            case["decoded"].as_str().unwrap(),
            "{who}: {text:?}"
        );
    }
}

#[test]
fn gguf_metadata_gives_hugging_face_ids() {
    let t = smollm_from_gguf();
    assert_eq!(
        t.encode("The capital of France is", false).unwrap(),
        vec![504, 3575, 282, 4649, 314]
    );
    check_golden(&t, "from_gguf", 0);
}

#[test]
fn tokenizer_json_gives_hugging_face_ids() {
    check_golden(&smollm_from_file(), "from_file", 0);
}

#[test]
fn details_of_encoding() {
    let t = smollm_from_gguf();
    assert_eq!(t.encode("", false).unwrap(), Vec::<u32>::new());
    assert_eq!(t.encode("", true).unwrap(), vec![1]);
    // Special tokens written in the text are matched whole, and nothing else is added.
    assert_eq!(t.encode("<|im_start|>", false).unwrap(), vec![1]);
    assert_eq!(t.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(t.id_to_token(504).as_deref(), Some("The"));
    assert_eq!(t.token_to_id("Ġcapital"), Some(3575));
    // Text round-trips, including bytes split across tokens.
    for text in ["héllo wörld ✓ 😀", "a\tb\n\nc  d"] {
        assert_eq!(t.decode(&t.encode(text, false).unwrap()).unwrap(), text);
    }
    let texts = ["one", "", "two three", "<|im_end|>"];
    let batch = t.encode_batch(&texts, true).unwrap();
    for (text, got) in texts.iter().zip(&batch) {
        assert_eq!(got, &t.encode(text, true).unwrap());
    }
    let e = t.decode(&[504, 49152]).unwrap_err().to_string();
    assert!(
        e.contains("id 49152") && e.contains("smollm2-tokenizer.gguf"),
        "{e}"
    );
}

#[test]
fn added_tokens_get_consecutive_ids_and_are_never_split() {
    let mut t = smollm_from_gguf();
    let mem: Vec<String> = (0..4).map(|i| format!("<mem_{i}>")).collect();
    let new = t.add_tokens(&mem).unwrap();
    assert_eq!(new, vec![49152, 49153, 49154, 49155]);
    assert_eq!(t.vocab_size(), 49156);
    let a = t.encode("a", false).unwrap();
    let b = t.encode(" b", false).unwrap();
    let got = t.encode("a<mem_0><mem_1> b<mem_3>", false).unwrap();
    let want: Vec<u32> = [&a[..], &[49152, 49153], &b[..], &[49155]].concat();
    assert_eq!(got, want);
    assert_eq!(t.decode(&got).unwrap(), "a<mem_0><mem_1> b<mem_3>");
    // The original vocabulary is untouched.
    assert_eq!(
        t.encode("The capital of France is", false).unwrap(),
        vec![504, 3575, 282, 4649, 314]
    );

    for (bad, want) in [
        (vec!["<mem_2>".to_string()], "already exists with id 49154"),
        (vec!["<|im_end|>".to_string()], "already exists with id 2"),
        (vec!["<x>".to_string(), "<x>".to_string()], "given twice"),
        (vec![String::new()], "empty token"),
    ] {
        let e = t.add_tokens(&bad).unwrap_err().to_string();
        assert!(e.contains(want), "wanted `{want}` in: {e}");
    }
    assert_eq!(t.vocab_size(), 49156, "a refused call adds nothing");
}

#[test]
fn save_writes_the_extended_vocabulary_and_special_tokens() {
    let mut t = smollm_from_gguf();
    let mem: Vec<String> = (0..3).map(|i| format!("<mem_{i}>")).collect();
    t.add_tokens(&mem).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    // An existing config keeps its other keys.
    let config = dir.path().join("tokenizer_config.json");
    std::fs::write(
        &config,
        r#"{"chat_template": "x", "bos_token": "<|endoftext|>"}"#,
    )
    .unwrap();
    t.save(&path).unwrap();
    let back = Tokenizer::from_file(&path).unwrap();
    assert_eq!(back.vocab_size(), 49155);
    assert_eq!(
        (back.bos_id(), back.eos_id(), back.pad_id()),
        (Some(1), Some(2), Some(2))
    );
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(cfg["chat_template"], "x");
    assert_eq!(cfg["bos_token"], "<|im_start|>");
    let text = "<mem_2>x2 + y² = ½ and <|im_end|> café 日本";
    assert_eq!(
        back.encode(text, true).unwrap(),
        t.encode(text, true).unwrap()
    );
    assert_eq!(back.encode("<mem_1>", false).unwrap(), vec![49153]);
    check_golden(&back, "saved", 3);
}

#[test]
fn file_errors_name_the_file() {
    let e = Tokenizer::from_file("/nonexistent/tokenizer.json")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/nonexistent/tokenizer.json: "), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, "{\"not\": \"a tokenizer\"}").unwrap();
    let e = Tokenizer::from_file(&p).unwrap_err().to_string();
    assert!(
        e.contains(&p.display().to_string()) && e.contains("not a loadable"),
        "{e}"
    );

    // A bare tokenizer.json: no config, so no BOS, and add_bos says so.
    std::fs::copy(fixture("smollm2-tokenizer/tokenizer.json"), &p).unwrap();
    let mut t = Tokenizer::from_file(&p).unwrap();
    assert_eq!((t.bos_id(), t.eos_id(), t.pad_id()), (None, None, None));
    let e = t.encode("hi", true).unwrap_err().to_string();
    assert!(e.contains("no BOS"), "{e}");
    t.set_special_ids(Some(1), Some(2), None).unwrap();
    assert_eq!(t.encode("hi", true).unwrap()[0], 1);
    assert!(t.set_special_ids(Some(49152), None, None).is_err());
    // A config naming a token the vocabulary lacks.
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": {"content": "</s>"}}"#,
    )
    .unwrap();
    let e = Tokenizer::from_file(&p).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("\"</s>\""),
        "{e}"
    );
}

// ---- GGUF files written here: metadata only, a 256-token byte-level vocabulary.

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

enum Meta<'a> {
    Str(&'a str),
    U32(u32),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

fn write_gguf(dir: &Path, kvs: &[(&str, Meta)]) -> PathBuf {
    let mut f = Vec::new();
    f.extend(b"GGUF");
    f.extend(3u32.to_le_bytes());
    f.extend(0u64.to_le_bytes());
    f.extend((kvs.len() as u64).to_le_bytes());
    for (key, v) in kvs {
        put_str(&mut f, key);
        match v {
            Meta::Str(s) => {
                f.extend(8u32.to_le_bytes());
                put_str(&mut f, s);
            }
            Meta::U32(x) => {
                f.extend(4u32.to_le_bytes());
                f.extend(x.to_le_bytes());
            }
            Meta::Strs(v) => {
                f.extend(9u32.to_le_bytes());
                f.extend(8u32.to_le_bytes());
                f.extend((v.len() as u64).to_le_bytes());
                v.iter().for_each(|s| put_str(&mut f, s));
            }
            Meta::I32s(v) => {
                f.extend(9u32.to_le_bytes());
                f.extend(5u32.to_le_bytes());
                f.extend((v.len() as u64).to_le_bytes());
                v.iter().for_each(|x| f.extend(x.to_le_bytes()));
            }
        }
    }
    let p = dir.join("t.gguf");
    std::fs::write(&p, f).unwrap();
    p
}

/// GPT-2's printable spelling of each byte: printable Latin-1 stands for
/// itself, the other bytes take the code points from 256 up, in order.
fn byte_alphabet() -> Vec<String> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut next = 256;
    (0u32..256)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect()
}

fn byte_level_gguf<'a>(
    model: &'a str,
    pre: &'a str,
    extra: Vec<(&'a str, Meta<'a>)>,
) -> Vec<(&'a str, Meta<'a>)> {
    let mut tokens = byte_alphabet();
    tokens.push("<|end|>".into());
    let mut types = vec![1; 256];
    types.push(3);
    let mut kvs = vec![
        ("general.architecture", Meta::Str("llama")),
        ("tokenizer.ggml.model", Meta::Str(model)),
        ("tokenizer.ggml.pre", Meta::Str(pre)),
        ("tokenizer.ggml.tokens", Meta::Strs(tokens)),
        ("tokenizer.ggml.token_type", Meta::I32s(types)),
        ("tokenizer.ggml.merges", Meta::Strs(vec![])),
        ("tokenizer.ggml.eos_token_id", Meta::U32(256)),
    ];
    // An extra key replaces the default: a GGUF with a key twice is refused.
    for (k, v) in extra {
        match kvs.iter_mut().find(|kv| kv.0 == k) {
            Some(kv) => kv.1 = v,
            None => kvs.push((k, v)),
        }
    }
    kvs
}

fn open_tokenizer(dir: &Path, kvs: &[(&str, Meta)]) -> Result<Tokenizer, String> {
    let p = write_gguf(dir, kvs);
    Tokenizer::from_gguf(&GgufFile::open(&p).unwrap()).map_err(|e| e.to_string())
}

#[test]
fn pre_tokenizers_split_like_the_references() {
    let g = golden();
    let texts: Vec<&str> = g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    let splits = g["pre_tokenizer_splits"].as_object().unwrap();
    assert_eq!(splits.len(), 4);
    let dir = tempfile::tempdir().unwrap();
    for (pre, want) in splits {
        let t = open_tokenizer(dir.path(), &byte_level_gguf("gpt2", pre, vec![])).unwrap();
        for (text, want) in texts.iter().zip(want.as_array().unwrap()) {
            let want: Vec<&str> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            assert_eq!(t.pre_tokenize(text).unwrap(), want, "{pre}: {text:?}");
        }
        // Without merges every byte is its own token, and the control token stays whole.
        let ids = t.encode("a é<|end|>", false).unwrap();
        assert_eq!(ids, vec![97, 32, 0xc3, 0xa9, 256], "{pre}");
        assert_eq!(t.decode(&ids).unwrap(), "a é<|end|>");
        assert_eq!(
            (t.bos_id(), t.eos_id(), t.vocab_size()),
            (None, Some(256), 257)
        );
    }
    // The split rules differ where they should: digits.
    let t = |pre| open_tokenizer(dir.path(), &byte_level_gguf("gpt2", pre, vec![])).unwrap();
    assert_eq!(
        t("smollm").pre_tokenize("x 2024").unwrap(),
        ["x", "Ġ", "2", "0", "2", "4"]
    );
    assert_eq!(t("gpt2").pre_tokenize("x 2024").unwrap(), ["x", "Ġ2024"]);
    assert_eq!(
        t("llama-bpe").pre_tokenize("x 2024").unwrap(),
        ["x", "Ġ", "202", "4"]
    );
}

#[test]
fn unusable_gguf_tokenizers_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.gguf").display().to_string();
    let cases: Vec<(Vec<(&str, Meta)>, &str)> = vec![
        (
            vec![("general.architecture", Meta::Str("llama"))],
            "`tokenizer.ggml.model` is missing",
        ),
        (
            byte_level_gguf("gpt2", "foo-bar", vec![]),
            "tokenizer.ggml.pre `foo-bar`",
        ),
        (byte_level_gguf("llama", "default", vec![]), "SentencePiece"),
        (
            byte_level_gguf(
                "gpt2",
                "smollm",
                vec![("tokenizer.ggml.bos_token_id", Meta::U32(999))],
            ),
            "bos_token_id` = 999 is outside the 257-token vocabulary",
        ),
        (
            byte_level_gguf(
                "gpt2",
                "smollm",
                vec![("tokenizer.ggml.merges", Meta::Strs(vec!["a".into()]))],
            ),
            "merges[0] = \"a\"",
        ),
    ];
    for (kvs, want) in cases {
        let e = open_tokenizer(dir.path(), &kvs).expect_err(want);
        assert!(
            e.contains(&file) && e.contains(want),
            "wanted `{want}` in: {e}"
        );
    }
}
