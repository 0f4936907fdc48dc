//! Writing embeddings: `.npy` (float32 [N, D], what NumPy and PyTorch load
//! directly) or `.jsonl` (one `{"index", "embedding"}` object a line); and
//! reading a 2-D `.npy` back (`llm2comp eval --embeddings`).
//!
//! The NPY header is a dozen lines, so it is written and parsed here rather
//! than pulled in with a crate. The reader takes what NumPy writes for a
//! C-ordered little-endian float32 or float64 matrix (v1, v2 or v3 header)
//! and refuses anything else by name. Files are written to a temporary name beside the
//! target and renamed, so an interrupted run never leaves a truncated file
//! that looks complete.

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

/// Writes `bytes` to `path` atomically, through an exclusively created
/// temporary file and a rename (`llm2comp_backbone::atomic`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    llm2comp_backbone::atomic::write_atomic(path, bytes)
        .with_context(|| format!("writing {}", path.display()))
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

/// The value of `key` in an NPY header dict (`'key': value,`).
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}':"))? + key.len() + 3;
    let rest = header[at..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

/// (row, column, value) of the first NaN or infinity in `rows`, if any.
pub fn first_non_finite(rows: &[Vec<f32>]) -> Option<(usize, usize, f32)> {
    rows.iter().enumerate().find_map(|(r, row)| {
        let c = row.iter().position(|x| !x.is_finite())?;
        Some((r, c, row[c]))
    })
}

/// Reads a 2-D float32 (or float64, converted) C-ordered .npy into rows;
/// a NaN or infinite value is refused naming its row (nothing computed from
/// it would mean anything).
pub fn read_npy_rows(path: &Path) -> Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let rows = parse_npy_rows(&bytes)
        .with_context(|| format!("{}: not a 2-D float .npy array", path.display()))?;
    if let Some((r, c, x)) = first_non_finite(&rows) {
        bail!(
            "{}: row {r} (0-based) holds {x} at column {c}; non-finite embeddings cannot be \
             scored",
            path.display()
        );
    }
    Ok(rows)
}

/// [`read_npy_rows`] on bytes.
pub fn parse_npy_rows(b: &[u8]) -> Result<Vec<Vec<f32>>> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        bail!("no NPY magic");
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => bail!("NPY version {v} is not supported"),
    };
    let header = b
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .context("truncated or non-UTF-8 header")?;
    let descr = header_value(header, "descr").context("header has no 'descr'")?;
    let width = match descr.trim_matches(['\'', '"']) {
        "<f4" => 4,
        "<f8" => 8,
        other => bail!("dtype {other} (expected <f4 float32 or <f8 float64)"),
    };
    if header_value(header, "fortran_order") != Some("False") {
        bail!("Fortran-ordered arrays are not supported (save with np.ascontiguousarray)");
    }
    let shape_txt = header_value(header, "shape").context("header has no 'shape'")?;
    let dims: Vec<usize> = shape_txt
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().with_context(|| format!("bad shape {shape_txt}")))
        .collect::<Result<_>>()?;
    let [n, d] = dims[..] else {
        bail!("shape {shape_txt} is not 2-D [N, D]");
    };
    if d == 0 {
        bail!("shape {shape_txt} has rows of 0 values");
    }
    let data = &b[start + hlen..];
    // The shape is the file's word: its product may overflow (checked, so
    // it cannot wrap into a size that happens to match).
    let need = n.checked_mul(d).and_then(|x| x.checked_mul(width));
    if need != Some(data.len()) {
        bail!(
            "shape {shape_txt} needs {} data bytes, the file has {}",
            need.map_or("more than 2^64".to_string(), |x| x.to_string()),
            data.len()
        );
    }
    let values: Vec<f32> = if width == 4 {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect()
    };
    Ok(values
        .chunks(d.max(1))
        .take(n)
        .map(<[f32]>::to_vec)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_reads_back_what_it_writes_and_refuses_the_rest() {
        let rows = parse_npy_rows(&npy_bytes(&[1.0, -2.5, 3.0, 4.0, 5.0, 6.5], &[3, 2])).unwrap();
        assert_eq!(rows, vec![vec![1.0, -2.5], vec![3.0, 4.0], vec![5.0, 6.5]]);
        // float64 as NumPy writes it (v1 header padded to 128 bytes).
        let mut f8 = b"\x93NUMPY\x01\x00".to_vec();
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }";
        let h = format!("{h}{}\n", " ".repeat(128 - 10 - h.len() - 1));
        f8.extend_from_slice(&(h.len() as u16).to_le_bytes());
        f8.extend_from_slice(h.as_bytes());
        f8.extend_from_slice(&0.25f64.to_le_bytes());
        f8.extend_from_slice(&(-8.0f64).to_le_bytes());
        assert_eq!(parse_npy_rows(&f8).unwrap(), vec![vec![0.25, -8.0]]);
        let err = |b: &[u8]| format!("{:#}", parse_npy_rows(b).unwrap_err());
        assert!(err(&npy_bytes(&[1.0, 2.0], &[2])).contains("not 2-D"));
        let mut short = npy_bytes(&[1.0, 2.0], &[1, 2]);
        short.pop();
        assert!(err(&short).contains("needs 8 data bytes"));
        // Same-length edits of the header.
        let swap = |from: &str, to: &str| {
            let mut b = npy_bytes(&[1.0], &[1, 1]);
            let at = b
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .unwrap();
            b[at..at + from.len()].copy_from_slice(to.as_bytes());
            b
        };
        assert!(err(&swap("<f4", "<i4")).contains("dtype <i4"));
        assert!(err(&swap("False", "True ")).contains("Fortran"));
        assert!(err(b"hello world").contains("magic"));
        // Shapes whose byte size overflows, or rows of nothing.
        assert!(err(&swap("(1, 1)", "(1, 0)")).contains("rows of 0 values"));
        let huge = |shape: &str| {
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            let h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
            b.extend_from_slice(&(h.len() as u16).to_le_bytes());
            b.extend_from_slice(h.as_bytes());
            b.extend_from_slice(&[0u8; 8]);
            b
        };
        let e = err(&huge("(4611686018427387904, 4)"));
        assert!(e.contains("more than 2^64"), "{e}");
        let e = err(&huge("(1000000000000, 1000000000000)"));
        assert!(e.contains("more than 2^64"), "{e}");
    }

    #[test]
    fn non_finite_rows_are_refused_naming_the_file_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stsb.npy");
        std::fs::write(&p, npy_bytes(&[1.0, 2.0, 3.0, f32::NAN], &[2, 2])).unwrap();
        let e = format!("{:#}", read_npy_rows(&p).unwrap_err());
        assert!(
            e.contains("stsb.npy") && e.contains("row 1 (0-based) holds NaN at column 1"),
            "{e}"
        );
        assert_eq!(
            first_non_finite(&[vec![0.0, f32::INFINITY]]),
            Some((0, 1, f32::INFINITY))
        );
        assert_eq!(first_non_finite(&[vec![f32::MAX]]), None);
    }

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
