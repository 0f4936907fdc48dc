//! Output files checked before the work: a missing directory, a path that
//! is a directory or a directory we cannot write into is reported at once,
//! not after minutes of embedding or evaluation whose results are then lost.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Errors unless a file can be written at `path` (given as `flag`): its
/// directory exists and takes a new file, and `path` is not a directory.
pub fn check_file(path: &Path, flag: &str) -> Result<()> {
    let shown = path.display();
    if path.is_dir() {
        bail!("{flag} {shown} is a directory; give a file name inside it");
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{flag} {shown}: {} is not a directory", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{flag} {shown}: the directory {} does not exist; create it first (nothing was \
             computed)",
            dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("{flag} {shown}: {}", dir.display())),
    }
    // The file is published by a temporary file and a rename in the same
    // directory (backbone::atomic): try exactly that now.
    let name = path
        .file_name()
        .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
    let (tmp, file) = llm2comp_backbone::atomic::create_temp_file(dir, &name)
        .with_context(|| format!("{flag} {shown}: cannot write into {}", dir.display()))?;
    drop(file);
    let _ = std::fs::remove_file(tmp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_directories_and_directories_are_refused() {
        let d = tempfile::tempdir().unwrap();
        check_file(&d.path().join("e.npy"), "--output").unwrap();
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        let e = check_file(&d.path().join("no/e.npy"), "--output").unwrap_err();
        assert!(format!("{e:#}").contains("does not exist"), "{e:#}");
        let e = check_file(d.path(), "--output").unwrap_err();
        assert!(format!("{e:#}").contains("is a directory"), "{e:#}");
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let e = check_file(&d.path().join("f/e.npy"), "--output").unwrap_err();
        assert!(format!("{e:#}").contains("is not a directory"), "{e:#}");
    }
}
