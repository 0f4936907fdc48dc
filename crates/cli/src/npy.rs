//! Writing embeddings: `.npy` (float32 [N, D], what NumPy and PyTorch load
//! directly) or `.jsonl` (one `{"index", "embedding"}` object a line).
//!
//! The NPY v1.0 header is a dozen lines, so it is written here rather than
//! pulled in with a crate. Files are written to a temporary name beside the
//! target and renamed, so an interrupted run never leaves a truncated file
//! that looks complete.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Builds the bytes of a little-endian f32 .npy array of `shape`.
pub fn npy_bytes(data: &[f32], shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' is padded to 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// The output layouts `llm2comp embed` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// float32 [N, D] .npy.
    Npy,
    /// One `{"index", "embedding"}` object a line.
    Jsonl,
}

/// The format `path`'s extension names; checked before any work is done, so
/// a typo in the output name does not cost a whole embedding run.
pub fn output_format(path: &Path) -> Result<OutputFormat> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => Ok(OutputFormat::Npy),
        Some("jsonl") => Ok(OutputFormat::Jsonl),
        _ => bail!(
            "{}: unknown output format; use a .npy or .jsonl file name",
            path.display()
        ),
    }
}

/// Writes embeddings in the format `path`'s extension names.
pub fn write_embeddings(path: &Path, rows: &[Vec<f32>]) -> Result<()> {
    let dim = rows.first().map_or(0, Vec::len);
    match output_format(path)? {
        OutputFormat::Npy => {
            let flat: Vec<f32> = rows.concat();
            write_atomic(path, &npy_bytes(&flat, &[rows.len(), dim]))
        }
        OutputFormat::Jsonl => {
            let mut out = Vec::new();
            for (i, r) in rows.iter().enumerate() {
                serde_json::to_writer(&mut out, &serde_json::json!({"index": i, "embedding": r}))?;
                out.push(b'\n');
            }
            write_atomic(path, &out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_the_array() {
        let b = npy_bytes(&[1.0, -2.5, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(header.contains("'descr': '<f4'") && header.contains("'shape': (2, 3)"));
        assert!(header.ends_with('\n'));
        let data = &b[10 + hlen..];
        assert_eq!(data.len(), 24);
        assert_eq!(f32::from_le_bytes(data[4..8].try_into().unwrap()), -2.5);
        assert!(
            std::str::from_utf8(&npy_bytes(&[1.0], &[1])[10..64])
                .unwrap()
                .contains("(1,)")
        );
    }

    #[test]
    fn unknown_extension_is_an_error() {
        let err = write_embeddings(Path::new("/tmp/x.csv"), &[vec![1.0]])
            .unwrap_err()
            .to_string();
        assert!(err.contains(".npy or .jsonl"), "{err}");
    }
}
