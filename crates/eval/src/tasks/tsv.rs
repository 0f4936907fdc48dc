//! Reading the data sets' TSV files: a header naming the columns, then rows
//! with exactly that many fields (no quoting: the files hold no TAB, CR or
//! LF inside a field). Checking the header catches a file of the wrong kind
//! before its rows are misread.

use std::path::Path;

use crate::{EvalError, Result};

/// Reads a whole file as UTF-8.
pub fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The data rows of `path` with their 1-based line numbers; the header must
/// be `header` joined by TABs.
pub fn read_tsv(path: &Path, header: &[&str]) -> Result<Vec<(usize, Vec<String>)>> {
    let text = read_to_string(path)?;
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    if first.split('\t').collect::<Vec<_>>() != header {
        return Err(EvalError::Parse {
            path: path.to_path_buf(),
            line: 1,
            msg: format!(
                "expected the header {:?}, found {first:?}",
                header.join("\t")
            ),
        });
    }
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let line_no = i + 2;
        if line.is_empty() {
            continue;
        }
        let fields: Vec<String> = line.split('\t').map(str::to_string).collect();
        if fields.len() != header.len() {
            return Err(EvalError::Parse {
                path: path.to_path_buf(),
                line: line_no,
                msg: format!(
                    "expected {} TAB-separated fields, found {}",
                    header.len(),
                    fields.len()
                ),
            });
        }
        rows.push((line_no, fields));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_field_count_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tsv");
        std::fs::write(&p, "label\ttext\nx\thello world\n\ny\t second \n").unwrap();
        let rows = read_tsv(&p, &["label", "text"]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1], (4, vec!["y".to_string(), " second ".to_string()]));
        let err = read_tsv(&p, &["score", "s1", "s2"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.tsv:1") && err.contains("header"), "{err}");
        std::fs::write(&p, "label\ttext\nx\ty\tz\n").unwrap();
        let err = read_tsv(&p, &["label", "text"]).unwrap_err().to_string();
        assert!(err.contains("a.tsv:2") && err.contains("found 3"), "{err}");
    }
}
