//! Saving an adapter as one unit. An adapter is several files (LoRA, memory
//! rows, maybe the embedding table, two JSON files) in a directory that also
//! holds a run's other files, so it cannot be swapped by renaming one
//! directory. Saving writes every file into a fresh temporary directory
//! beside them, fsyncs it, then renames the files into place with
//! `llm2comp.json` last. Each save also gets an export id, written into
//! `llm2comp.json` and into the metadata of every safetensors file it
//! writes; loading refuses files whose ids differ. So a reader sees the old
//! complete adapter, the new complete one, or a refusal naming the mixed
//! file, never (as a kill mid-save used to leave) step-8 LoRA with step-6
//! memory rows accepted as one adapter.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

/// An id no other save (of this or another process) shares: pid, time, counter.
pub(crate) fn new_export_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{nanos}-{n}", std::process::id())
}

/// The `__metadata__` a safetensors file of export `id` carries.
pub(crate) fn file_metadata(id: &str) -> HashMap<String, String> {
    HashMap::from([
        // transformers and PEFT expect the PyTorch format tag.
        ("format".to_string(), "pt".to_string()),
        (EXPORT_ID_KEY.to_string(), id.to_string()),
    ])
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
