//! Which existing directory a merge export may replace. `--force` used to
//! delete any non-empty directory, user files included; now it replaces
//! only an earlier export: a directory whose `llm2comp.json` says
//! `merged: true` and that holds nothing but the files an export writes.

use std::path::Path;

use crate::adapter::META_FILE;
use crate::{BackboneError, Result};

/// Every name an export writes (the tokenizer's two files included).
pub(crate) const EXPORT_FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    META_FILE,
];

fn refuse(out: &Path, why: String) -> BackboneError {
    BackboneError::Invalid {
        path: out.to_path_buf(),
        msg: format!(
            "{why}; --force replaces only an earlier merge output, so nothing was touched"
        ),
    }
}

/// Errors unless the non-empty directory `out` is an earlier merge export.
pub(crate) fn check_replaceable(out: &Path) -> Result<()> {
    let marker = out.join(META_FILE);
    let is_merge = std::fs::read(&marker)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("merged") == Some(&serde_json::Value::Bool(true)));
    if !is_merge {
        return Err(refuse(
            out,
            format!("is not a merged model directory (no {META_FILE} saying \"merged\": true)"),
        ));
    }
    let mut foreign = Vec::new();
    for entry in std::fs::read_dir(out).map_err(|source| BackboneError::Io {
        path: out.to_path_buf(),
        source,
    })? {
        let entry = entry.map_err(|source| BackboneError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        if !(regular && EXPORT_FILES.contains(&name.as_str())) {
            foreign.push(name);
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        return Err(refuse(
            out,
            format!(
                "holds files a merge does not write ({}), which replacing it would delete",
                foreign.join(", ")
            ),
        ));
    }
    Ok(())
}
