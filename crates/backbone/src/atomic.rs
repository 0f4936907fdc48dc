//! Atomic, exclusive file writes: every file llm2comp publishes goes through
//! here, so a reader sees the old content or the new, never a torn file, and
//! a file or symlink planted under the temporary name is never followed or
//! overwritten.
//!
//! A temporary file is created with `create_new` (O_CREAT|O_EXCL: fails on
//! any existing entry, a dangling symlink included) under a name unique to
//! this process and call (`.tmp-<name>-<pid>-<counter>`), in the destination
//! directory so the rename stays on one file system. It is written, fsynced,
//! renamed over the destination and the directory fsynced, so the rename
//! survives a crash too. On error the temporary file is removed. Temporary
//! directories are made the same way with `create_dir`, which is exclusive
//! by nature.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of every temporary name made here (leftovers of a crash can be
/// recognised and removed by it).
pub const TMP_PREFIX: &str = ".tmp-";

/// Attempts at a fresh name before giving up (each taken name is a leftover
/// or a planted entry; a new counter value is tried).
const ATTEMPTS: u32 = 64;

/// A file-system operation that failed, with the path and what was being done.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct FsError {
    /// What was being done ("create", "rename into place", ...).
    pub action: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// What the OS said.
    pub source: std::io::Error,
}

/// Result of this module.
pub type FsResult<T> = std::result::Result<T, FsError>;

fn err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FsError {
    let path = path.to_path_buf();
    move |source| FsError {
        action,
        path,
        source,
    }
}

/// A name for a temporary sibling of `name`, unique within this process.
fn temp_name(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{TMP_PREFIX}{name}-{}-{n}", std::process::id())
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn file_name_of(path: &Path) -> FsResult<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| FsError {
            action: "write",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        })
}

/// Creates a new, empty temporary file in `dir` for `name`, exclusively.
pub fn create_temp_file(dir: &Path, name: &str) -> FsResult<(PathBuf, File)> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let path = dir.join(temp_name(name));
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some((path, e)),
            Err(e) => return Err(err("create", &path)(e)),
        }
    }
    let (path, e) = last.expect("ATTEMPTS > 0");
    Err(err("create (every temporary name taken)", &path)(e))
}

/// Creates a new temporary directory in `parent` for `name`, exclusively.
pub fn create_temp_dir(parent: &Path, name: &str) -> FsResult<PathBuf> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let path = parent.join(temp_name(name));
        match fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some((path, e)),
            Err(e) => return Err(err("create", &path)(e)),
        }
    }
    let (path, e) = last.expect("ATTEMPTS > 0");
    Err(err("create (every temporary name taken)", &path)(e))
}

/// fsyncs a directory, so renames and creations in it survive a crash.
pub fn fsync_dir(dir: &Path) -> FsResult<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(err("fsync", dir))
}

/// fsyncs every file under `dir`, then the directories, deepest first.
pub fn fsync_tree(dir: &Path) -> FsResult<()> {
    for entry in fs::read_dir(dir).map_err(err("list", dir))? {
        let entry = entry.map_err(err("list", dir))?;
        let path = entry.path();
        // file_type does not follow symlinks: a link inside is synced as itself, not walked.
        let ty = entry.file_type().map_err(err("stat", &path))?;
        if ty.is_dir() {
            fsync_tree(&path)?;
        } else if ty.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(err("fsync", &path))?;
        }
    }
    fsync_dir(dir)
}

/// Writes `path` atomically with `write` (given a buffered writer on the new
/// temporary file): readers see the old file or the whole new one.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
) -> FsResult<()> {
    let dir = parent_of(path);
    let (tmp, file) = create_temp_file(dir, &file_name_of(path)?)?;
    let result = (|| {
        let mut w = BufWriter::new(&file);
        write(&mut w)
            .and_then(|()| w.flush())
            .map_err(err("write", &tmp))?;
        drop(w);
        file.sync_all().map_err(err("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(err("rename into place", path))
    })();
    drop(file);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    fsync_dir(dir)
}

/// Writes `bytes` to `path` atomically (see [`write_atomic_with`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> FsResult<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("llm2comp-atomic-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_replace_and_leave_no_temporary_files() {
        let d = scratch("replace");
        let p = d.join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(names(&d), ["a.json"]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn temporary_names_are_unique_and_created_exclusively() {
        let d = scratch("unique");
        let (a, _fa) = create_temp_file(&d, "x").unwrap();
        let (b, _fb) = create_temp_file(&d, "x").unwrap();
        assert_ne!(a, b);
        assert!(
            a.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(TMP_PREFIX)
        );
        let da = create_temp_dir(&d, "x").unwrap();
        assert!(da.is_dir() && da != a && da != b);
        fs::remove_dir_all(&d).unwrap();
    }

    /// A symlink planted under the next temporary name (a fixed name used to
    /// be followed by File::create, writing through the link) is skipped: the
    /// link's target is untouched and the write still lands.
    #[cfg(unix)]
    #[test]
    fn a_planted_symlink_is_not_followed() {
        let d = scratch("symlink");
        let victim = d.join("victim");
        fs::write(&victim, b"keep").unwrap();
        // Plant links under the next few names this process will try.
        static_names_ahead(&d, &victim, 8);
        let p = d.join("out.txt");
        write_atomic(&p, b"new").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
        fs::remove_dir_all(&d).unwrap();
    }

    /// Plants symlinks to `target` under the next `n` temporary names of `out.txt`.
    #[cfg(unix)]
    fn static_names_ahead(d: &Path, target: &Path, n: u32) {
        // Peek at the counter by taking a name, then plant the ones after it. Other tests of
        // this binary may take names concurrently, which only makes some plants unused.
        let probe = temp_name("probe");
        let next: u64 = probe.rsplit('-').next().unwrap().parse().unwrap();
        for i in 1..=u64::from(n) {
            let name = format!("{TMP_PREFIX}out.txt-{}-{}", std::process::id(), next + i);
            std::os::unix::fs::symlink(target, d.join(name)).unwrap();
        }
    }

    #[test]
    fn a_failed_write_removes_its_temporary_file_and_keeps_the_old_one() {
        let d = scratch("fail");
        let p = d.join("a.bin");
        write_atomic(&p, b"old").unwrap();
        let e = write_atomic_with(&p, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("cannot write"), "{e}");
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(names(&d), ["a.bin"]);
        // A rename that fails (a directory squats the name) also cleans up.
        let squat = d.join("sq");
        fs::create_dir(&squat).unwrap();
        fs::write(squat.join("f"), b"").unwrap();
        let e = write_atomic(&squat, b"x").unwrap_err();
        assert!(e.to_string().contains("cannot rename into place"), "{e}");
        assert_eq!(names(&d), ["a.bin", "sq"]);
        fs::remove_dir_all(&d).unwrap();
    }
}
