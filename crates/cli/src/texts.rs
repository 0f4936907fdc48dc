//! Reading the passages to embed: plain text (one passage a line) or JSONL
//! with a string field, from a file or stdin.
//!
//! Every rejection names the source and the line, because the usual input is
//! a large file produced by another tool, and "invalid input" without a line
//! number sends the user bisecting it by hand.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// How the input is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// `.jsonl` / `.json` → JSONL, anything else → plain text.
    Auto,
    /// One passage per line.
    Text,
    /// One JSON object per line with a string field (`--text-field`).
    Jsonl,
}

/// The passages and what was dropped on the way.
#[derive(Debug)]
pub struct Texts {
    /// The passages, in input order.
    pub texts: Vec<String>,
    /// 1-based input line of each passage.
    pub lines: Vec<usize>,
    /// Empty lines dropped (only with `skip_empty`).
    pub skipped_empty: usize,
}

/// Reads `source` (`-` is stdin) line by line, keeping at most `keep`
/// bytes of each passage (cut at a character boundary; `None` keeps all):
/// a reader that only needs a passage's first tokens holds no more of it
/// than that, however long the line.
pub fn read(
    source: &str,
    format: InputFormat,
    field: &str,
    skip_empty: bool,
    keep: Option<usize>,
) -> Result<Texts> {
    let name = if source == "-" { "stdin" } else { source };
    let format = match format {
        InputFormat::Auto => {
            let ext = Path::new(source)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("");
            if matches!(ext, "jsonl" | "json" | "ndjson") {
                InputFormat::Jsonl
            } else {
                InputFormat::Text
            }
        }
        f => f,
    };
    if source == "-" {
        parse_reader(
            name,
            std::io::stdin().lock(),
            format,
            field,
            skip_empty,
            keep,
        )
    } else {
        let f = std::fs::File::open(source).with_context(|| format!("reading {source}"))?;
        parse_reader(name, BufReader::new(f), format, field, skip_empty, keep)
    }
}

/// Parses the bytes of `name` (all of every passage kept).
#[cfg(test)]
pub fn parse(
    name: &str,
    bytes: &[u8],
    format: InputFormat,
    field: &str,
    skip_empty: bool,
) -> Result<Texts> {
    parse_reader(name, bytes, format, field, skip_empty, None)
}

/// The start of `s` of at most `keep` bytes, at a character boundary.
fn cut(s: &str, keep: Option<usize>) -> &str {
    match keep {
        Some(k) if s.len() > k => {
            let mut end = k;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        }
        _ => s,
    }
}

/// Parses lines from `input`: one line in memory at a time beside the
/// (cut) passages kept.
fn parse_reader(
    name: &str,
    mut input: impl BufRead,
    format: InputFormat,
    field: &str,
    skip_empty: bool,
    keep: Option<usize>,
) -> Result<Texts> {
    let mut out = Texts {
        texts: Vec::new(),
        lines: Vec::new(),
        skipped_empty: 0,
    };
    let mut empty_lines = Vec::new();
    let mut raw = Vec::new();
    let mut line_no = 0;
    let mut only_newline = false;
    loop {
        raw.clear();
        let n = input
            .read_until(b'\n', &mut raw)
            .with_context(|| format!("reading {name}"))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        // A file of one newline is as empty as a file of nothing.
        only_newline = line_no == 1 && raw == b"\n";
        let line = raw.strip_suffix(b"\n").unwrap_or(&raw);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|e| {
            anyhow::anyhow!(
                "{name}: line {line_no} is not valid UTF-8 (invalid byte at column {})",
                e.valid_up_to() + 1
            )
        })?;
        let text = match format {
            InputFormat::Jsonl => {
                if line.trim().is_empty() {
                    None
                } else {
                    let v: serde_json::Value = serde_json::from_str(line)
                        .with_context(|| format!("{name}: line {line_no} is not valid JSON"))?;
                    match v.get(field) {
                        Some(serde_json::Value::String(s)) => Some(cut(s, keep).to_string()),
                        Some(other) => bail!(
                            "{name}: line {line_no}: field `{field}` is {}, expected a string",
                            kind(other)
                        ),
                        None => bail!("{name}: line {line_no} has no `{field}` field"),
                    }
                }
            }
            _ => Some(cut(line, keep).to_string()),
        };
        match text {
            Some(t) if !t.trim().is_empty() => {
                out.texts.push(t);
                out.lines.push(line_no);
            }
            _ => empty_lines.push(line_no),
        }
    }
    if line_no == 0 || (line_no == 1 && only_newline) {
        bail!("{name}: no input (the file is empty)");
    }
    if !empty_lines.is_empty() {
        if !skip_empty {
            let shown: Vec<String> = empty_lines.iter().take(5).map(|l| l.to_string()).collect();
            bail!(
                "{name}: {} empty passage(s) (line {}{}); every line must hold text, or pass \
                 --skip-empty to drop them (output rows then follow the remaining lines)",
                empty_lines.len(),
                shown.join(", "),
                if empty_lines.len() > 5 { ", ..." } else { "" }
            );
        }
        out.skipped_empty = empty_lines.len();
    }
    if out.texts.is_empty() {
        bail!("{name}: no non-empty passages");
    }
    Ok(out)
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(bytes: &[u8], format: InputFormat) -> String {
        parse("in.txt", bytes, format, "text", false)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn plain_text_keeps_lines_and_crlf() {
        let t = parse("in.txt", b"a b\r\nc\n", InputFormat::Text, "text", false).unwrap();
        assert_eq!(t.texts, vec!["a b", "c"]);
        assert_eq!(t.lines, vec![1, 2]);
    }

    #[test]
    fn empty_lines_are_named_or_skipped() {
        let e = err(b"a\n\nb\n  \n", InputFormat::Text);
        assert!(
            e.contains("2 empty") && e.contains("line 2, 4") && e.contains("--skip-empty"),
            "{e}"
        );
        let t = parse("in.txt", b"a\n\nb\n", InputFormat::Text, "text", true).unwrap();
        assert_eq!(
            (t.texts.len(), t.skipped_empty, t.lines.clone()),
            (2, 1, vec![1, 3])
        );
        assert!(err(b"", InputFormat::Text).contains("empty"));
    }

    #[test]
    fn invalid_utf8_names_line_and_column() {
        let e = err(b"ok\nab\xffc\n", InputFormat::Text);
        assert!(
            e.contains("line 2") && e.contains("UTF-8") && e.contains("column 3"),
            "{e}"
        );
    }

    #[test]
    fn jsonl_reads_the_field_and_names_bad_lines() {
        let t = parse(
            "in.jsonl",
            b"{\"text\": \"x\", \"id\": 1}\n{\"text\": \"y\"}\n",
            InputFormat::Jsonl,
            "text",
            false,
        )
        .unwrap();
        assert_eq!(t.texts, vec!["x", "y"]);
        assert!(err(b"{\"text\": 3}\n", InputFormat::Jsonl).contains("a number"));
        assert!(err(b"{\"body\": \"x\"}\n", InputFormat::Jsonl).contains("no `text`"));
        assert!(
            err(b"{\"text\": \"x\"}\n{oops\n", InputFormat::Jsonl)
                .contains("line 2 is not valid JSON")
        );
    }

    #[test]
    fn passages_are_cut_to_the_bytes_kept_at_a_character_boundary() {
        let t = parse_reader(
            "in",
            &b"h\xc3\xa9llo w\xc3\xb6rld\nab\n"[..],
            InputFormat::Text,
            "text",
            false,
            Some(2),
        )
        .unwrap();
        // "hé" is 3 bytes: the cut backs off to "h".
        assert_eq!(t.texts, vec!["h".to_string(), "ab".to_string()]);
        let j = br#"{"text": "\u00e9\u00e9\u00e9"}"#;
        let t = parse_reader("in", &j[..], InputFormat::Jsonl, "text", false, Some(5)).unwrap();
        assert_eq!(t.texts, vec!["\u{e9}\u{e9}".to_string()]);
        // Invalid UTF-8 past the cut is still an error: the whole line is checked.
        let e = parse_reader(
            "in",
            &b"abcdef\xff\n"[..],
            InputFormat::Text,
            "text",
            false,
            Some(2),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 1") && e.contains("column 7"), "{e}");
    }
}
