//! Contrastive training data. Unsupervised: plain passages (token ids).
//! Supervised: JSONL lines `{"query", "positive", "negative"}` where the
//! negative is optional, a string or a list of strings; a task instruction
//! is prefixed to the query as `instruction: query` (METHOD.md, stage 3).
//! Parsing is separate from tokenising so the file format is tested
//! without a tokenizer.

use serde_json::Value;

use crate::{ContrastError, Result};

/// One supervised example as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTriple {
    /// The query (instruction already prefixed, when one was given).
    pub query: String,
    /// The matching document.
    pub positive: String,
    /// Hard negatives (possibly none).
    pub negatives: Vec<String>,
    /// The 1-based line of the file it came from (for later errors).
    pub line: usize,
}

/// One supervised example as token ids (no BOS, no memory tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triple {
    /// Query ids.
    pub query: Vec<u32>,
    /// Positive ids.
    pub positive: Vec<u32>,
    /// Hard negatives' ids.
    pub negatives: Vec<Vec<u32>>,
}

/// The training set of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContrastData {
    /// SimCSE passages.
    Unsupervised(Vec<Vec<u32>>),
    /// Supervised triples.
    Supervised(Vec<Triple>),
}

impl ContrastData {
    /// Items (passages or examples).
    pub fn len(&self) -> usize {
        match self {
            Self::Unsupervised(p) => p.len(),
            Self::Supervised(t) => t.len(),
        }
    }

    /// Whether there is no item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// "unsup" or "sup".
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Unsupervised(_) => "unsup",
            Self::Supervised(_) => "sup",
        }
    }
}

/// `instruction: query`, or the query alone.
pub fn with_instruction(instruction: Option<&str>, query: &str) -> String {
    match instruction {
        Some(i) if !i.is_empty() => format!("{i}: {query}"),
        _ => query.to_string(),
    }
}

/// [`parse_triples`] on the file's bytes: invalid UTF-8 is an error naming
/// its line rather than the whole file.
pub fn parse_triples_bytes(
    bytes: &[u8],
    source: &str,
    instruction: Option<&str>,
) -> Result<Vec<RawTriple>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        ContrastError::Data {
            source_name: format!("{source}:{line}"),
            message: "not valid UTF-8".into(),
        }
    })?;
    parse_triples(text, source, instruction)
}

/// Parses JSONL `text` (from `source`, for messages) into triples. Every
/// text must hold more than whitespace: an empty query, positive or hard
/// negative would train on a sequence of BOS and memory tokens alone.
pub fn parse_triples(
    text: &str,
    source: &str,
    instruction: Option<&str>,
) -> Result<Vec<RawTriple>> {
    let err = |line: usize, message: String| ContrastError::Data {
        source_name: format!("{source}:{line}"),
        message,
    };
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        if l.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(l).map_err(|e| err(line, format!("not JSON: {e}")))?;
        let field = |name: &str| -> Result<String> {
            match &v[name] {
                Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                Value::Null => Err(err(line, format!("missing \"{name}\""))),
                other => Err(err(
                    line,
                    format!("\"{name}\" must be a non-empty string, got {other}"),
                )),
            }
        };
        if !v.is_object() {
            return Err(err(line, format!("expected a JSON object, got {v}")));
        }
        let negative = |n: &Value, what: &str| match n {
            Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
            Value::String(_) => Err(err(line, format!("{what} is an empty string"))),
            other => Err(err(line, format!("{what} must be a string, got {other}"))),
        };
        // An absent negative or an empty list means none; an empty string
        // is a hole in the data and is refused.
        let negatives = match &v["negative"] {
            Value::Null => Vec::new(),
            s @ Value::String(_) => vec![negative(s, "\"negative\"")?],
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(j, n)| negative(n, &format!("\"negative\"[{j}]")))
                .collect::<Result<_>>()?,
            other => {
                return Err(err(
                    line,
                    format!("\"negative\" must be a string or a list, got {other}"),
                ));
            }
        };
        out.push(RawTriple {
            query: with_instruction(instruction, &field("query")?),
            positive: field("positive")?,
            negatives,
            line,
        });
    }
    if out.is_empty() {
        return Err(ContrastError::Data {
            source_name: source.to_string(),
            message: "no examples".into(),
        });
    }
    Ok(out)
}

/// Tokenises triples with `encode`, truncating each text to `max_tokens`;
/// `source` names the file in errors, which give the example's line.
pub fn tokenize_triples(
    raw: &[RawTriple],
    source: &str,
    max_tokens: usize,
    encode: &mut dyn FnMut(&str) -> Result<Vec<u32>>,
) -> Result<Vec<Triple>> {
    raw.iter()
        .map(|r| {
            let mut enc = |s: &str, what: &str| -> Result<Vec<u32>> {
                let at = |message: String| ContrastError::Data {
                    source_name: format!("{source}:{}", r.line),
                    message,
                };
                let mut ids = encode(s).map_err(|e| at(format!("{what}: {e}")))?;
                if ids.is_empty() {
                    return Err(at(format!("{what} {s:?} has no tokens")));
                }
                ids.truncate(max_tokens);
                Ok(ids)
            };
            Ok(Triple {
                query: enc(&r.query, "the query")?,
                positive: enc(&r.positive, "the positive")?,
                negatives: r
                    .negatives
                    .iter()
                    .map(|n| enc(n, "a negative"))
                    .collect::<Result<_>>()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negatives_may_be_absent_a_string_or_a_list() {
        let text = r#"{"query": "q1", "positive": "p1"}
{"query": "q2", "positive": "p2", "negative": "n2"}

{"query": "q3", "positive": "p3", "negative": ["a", "b"]}"#;
        let t = parse_triples(text, "x.jsonl", Some("Retrieve")).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].query, "Retrieve: q1");
        assert!(t[0].negatives.is_empty());
        assert_eq!(t[1].negatives, ["n2"]);
        assert_eq!(t[2].negatives, ["a", "b"]);
        assert_eq!(parse_triples(text, "x", None).unwrap()[2].query, "q3");
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let e = parse_triples("{\"query\": \"q\"}", "d.jsonl", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.jsonl:1") && e.contains("positive"), "{e}");
        let e = parse_triples(
            "{\"query\":\"q\",\"positive\":\"p\",\"negative\":3}\n",
            "d",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("negative"), "{e}");
        let e = parse_triples("\n{oops\n", "d", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("d:2") && e.contains("JSON"), "{e}");
        assert!(parse_triples("", "d", None).is_err());
    }

    #[test]
    fn tokenising_truncates() {
        let raw = [RawTriple {
            query: "abc".into(),
            positive: "de".into(),
            negatives: vec!["f".into()],
            line: 7,
        }];
        let mut enc = |s: &str| Ok(s.bytes().map(u32::from).collect());
        let t = tokenize_triples(&raw, "d.jsonl", 2, &mut enc).unwrap();
        assert_eq!(t[0].query, [97, 98]);
        assert_eq!(t[0].negatives, [vec![102]]);
        // A text that tokenises to nothing, or a tokenizer error, names the line.
        let mut none = |s: &str| Ok(if s == "f" { vec![] } else { vec![1] });
        let e = tokenize_triples(&raw, "d.jsonl", 2, &mut none)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d.jsonl:7") && e.contains("a negative \"f\" has no tokens"),
            "{e}"
        );
        let mut fail = |_: &str| Err(ContrastError::Config("boom".into()));
        let e = tokenize_triples(&raw, "d.jsonl", 2, &mut fail)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d.jsonl:7") && e.contains("the query: boom"),
            "{e}"
        );
    }

    #[test]
    fn empty_negatives_bad_utf8_and_non_objects_are_refused_by_line() {
        let ok = "{\"query\":\"q\",\"positive\":\"p\"}\n";
        for (bad, needle) in [
            (
                r#"{"query":"q","positive":"p","negative":""}"#,
                "\"negative\" is an empty string",
            ),
            (
                r#"{"query":"q","positive":"p","negative":["n", " "]}"#,
                "\"negative\"[1] is an empty string",
            ),
            (
                r#"{"query":"q","positive":"p","negative":[3]}"#,
                "\"negative\"[0] must be a string",
            ),
            (
                r#"{"query":"  ","positive":"p"}"#,
                "\"query\" must be a non-empty string",
            ),
            (r#"["q","p"]"#, "expected a JSON object"),
        ] {
            let e = parse_triples(&format!("{ok}{bad}\n"), "d.jsonl", None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("d.jsonl:2") && e.contains(needle), "{bad}: {e}");
        }
        // An empty list is "no negatives", as an absent field.
        let t = parse_triples(r#"{"query":"q","positive":"p","negative":[]}"#, "d", None).unwrap();
        assert!(t[0].negatives.is_empty());
        let mut bytes = ok.repeat(2).into_bytes();
        bytes.extend_from_slice(b"{\"query\":\"\xff\"}\n");
        let e = parse_triples_bytes(&bytes, "d.jsonl", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.jsonl:3") && e.contains("UTF-8"), "{e}");
    }
}
