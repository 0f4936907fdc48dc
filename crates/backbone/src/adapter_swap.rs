//! Saving an adapter as one unit. An adapter is several files (LoRA, memory
//! rows, maybe the embedding table, two JSON files) in a directory that also
//! holds a run's other files, so it cannot be swapped by renaming one
//! directory. Saving writes every file into a fresh temporary directory
//! beside them, fsyncs it, then renames the files into place with
//! `llm2comp.json` last. Each save also gets an export id (a hash of its
//! contents: `content_id`), written into
//! `llm2comp.json` and into the metadata of every safetensors file it
//! writes; loading refuses files whose ids differ. So a reader sees the old
//! complete adapter, the new complete one, or a refusal naming the mixed
//! file, never (as a kill mid-save used to leave) step-8 LoRA with step-6
//! memory rows accepted as one adapter.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{BackboneError, Result};

/// The safetensors metadata key holding the export id.
pub const EXPORT_ID_KEY: &str = "llm2comp_export_id";

/// Largest safetensors header read for the id (the format caps headers at 100 MB).
const MAX_HEADER: u64 = 100 << 20;

fn invalid(path: &Path, msg: impl Into<String>) -> BackboneError {
    BackboneError::Invalid {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackboneError + '_ {
    move |source| BackboneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The export id of a save: a 64-bit hash of everything the save writes
/// (each tensor's name, shape and bytes, and the meta without its id). Two
/// saves share an id only when they write the same adapter, so an id tells
/// saves apart while an unchanged adapter still saves to identical bytes
/// (a resumed run's adapter equals the uninterrupted run's, file for file).
/// Not a checksum against tampering: it only ties one save's files together.
pub(crate) fn content_id<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    // FNV-1a's constants over 8-byte words (plus a length per part, so
    // moving bytes between parts changes the id); fast enough for an
    // embedding table of 100+ MB per save.
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |w: u64| h = (h ^ w).wrapping_mul(PRIME);
    for p in parts {
        mix(p.len() as u64);
        let words = p.chunks_exact(8);
        let tail = words.remainder();
        for w in words {
            mix(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let mut last = [0u8; 8];
        last[..tail.len()].copy_from_slice(tail);
        mix(u64::from_le_bytes(last));
    }
    format!("{h:016x}")
}

/// The `__metadata__` a safetensors file of export `id` carries.
pub(crate) fn file_metadata(id: &str) -> HashMap<String, String> {
    HashMap::from([
        // transformers and PEFT expect the PyTorch format tag.
        ("format".to_string(), "pt".to_string()),
        (EXPORT_ID_KEY.to_string(), id.to_string()),
    ])
}

/// Rewrites the `__metadata__` of a serialised file of export `id` with its
/// keys in a fixed order. `safetensors` writes that map in `HashMap` order,
/// which differs from process to process: the same adapter saved twice
/// would differ in its header bytes. Same keys and values, so same length.
pub(crate) fn sort_metadata(file: &mut [u8], id: &str) -> std::result::Result<(), String> {
    let written = file_metadata(id);
    let sorted: std::collections::BTreeMap<_, _> = written.iter().collect();
    let want = serde_json::to_string(&sorted).map_err(|e| e.to_string())?;
    let n = file
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or("no header")?;
    let header = file.get_mut(8..8 + n).ok_or("header past the end")?;
    let key = b"\"__metadata__\":";
    let at = header
        .windows(key.len())
        .position(|w| w == key)
        .ok_or("no __metadata__ in the header")?
        + key.len();
    // Our keys and values hold no braces, so the map ends at the first `}`.
    let end = at
        + header[at..]
            .iter()
            .position(|&b| b == b'}')
            .ok_or("unterminated __metadata__")?
        + 1;
    let found: HashMap<String, String> =
        serde_json::from_slice(&header[at..end]).map_err(|e| e.to_string())?;
    if found != written || end - at != want.len() {
        return Err(format!("unexpected __metadata__ {found:?}"));
    }
    header[at..end].copy_from_slice(want.as_bytes());
    Ok(())
}

/// The export id in a safetensors file's header, if it has one.
fn read_export_id(path: &Path) -> Result<Option<String>> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io(path))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(invalid(path, format!("safetensors header of {n} bytes")));
    }
    let mut header = Vec::new();
    f.take(n).read_to_end(&mut header).map_err(io(path))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| invalid(path, format!("safetensors header: {e}")))?;
    Ok(v.get("__metadata__")
        .and_then(|m| m.get(EXPORT_ID_KEY))
        .and_then(|s| s.as_str())
        .map(str::to_string))
}

/// Errors unless every file in `files` was written by export `id` (the one
/// `meta_path` names). Adapters saved before ids existed have none: not checked.
pub(crate) fn check_export_ids(
    meta_path: &Path,
    id: Option<&str>,
    files: &[PathBuf],
) -> Result<()> {
    let Some(id) = id else { return Ok(()) };
    for f in files {
        let found = read_export_id(f)?;
        if found.as_deref() != Some(id) {
            return Err(invalid(
                f,
                format!(
                    "written by export {}, but {} belongs to export {id}: the directory mixes \
                     two saves (one interrupted?); save the adapter again, or use a complete \
                     copy such as the run's newest checkpoints/step-N",
                    found.as_deref().unwrap_or("(none)"),
                    meta_path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Moves `names` from the temporary directory `tmp` into `dir` in order
/// (the meta last), fsyncs `dir`, removes `stale` names the new adapter
/// lacks (after the meta: the new meta does not read them), and `tmp`.
pub(crate) fn publish(tmp: &Path, dir: &Path, names: &[&str], stale: &[&str]) -> Result<()> {
    crate::atomic::fsync_tree(tmp)?;
    for name in names {
        let dst = dir.join(name);
        std::fs::rename(tmp.join(name), &dst).map_err(io(&dst))?;
    }
    crate::atomic::fsync_dir(dir)?;
    for name in stale {
        let p = dir.join(name);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&p)(e)),
            _ => {}
        }
    }
    std::fs::remove_dir(tmp).map_err(io(tmp))
}

#[cfg(test)]
mod tests {
    use super::content_id;

    #[test]
    fn content_ids_depend_on_every_byte_and_on_part_boundaries() {
        let a = content_id([&b"abcdefghij"[..], b"k"]);
        assert_eq!(a, content_id([&b"abcdefghij"[..], b"k"]));
        assert_ne!(a, content_id([&b"abcdefghiJ"[..], b"k"]));
        assert_ne!(a, content_id([&b"abcdefghijk"[..]]));
        assert_ne!(a, content_id([&b"abcdefghij"[..], b"k\0"]));
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn metadata_is_written_in_one_order() {
        let id = content_id([&b"x"[..]]);
        let bytes = |seed: u64| {
            // Different insertion histories give HashMaps different orders.
            let mut m = super::file_metadata(&id);
            for i in 0..seed {
                m.insert(format!("k{i}"), String::new());
                m.remove(&format!("k{i}"));
            }
            let data = [0u8; 4];
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &data)
                .unwrap();
            let mut b = safetensors::tensor::serialize([("t", v)], Some(m)).unwrap();
            super::sort_metadata(&mut b, &id).unwrap();
            b
        };
        let first = bytes(0);
        for s in 1..20 {
            assert_eq!(bytes(s), first);
        }
        let text = String::from_utf8_lossy(&first);
        assert!(
            text.contains(r#""__metadata__":{"format":"pt","llm2comp_export_id":"#),
            "{text}"
        );
    }
}
