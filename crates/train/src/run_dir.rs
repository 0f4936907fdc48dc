//! Who may train into an output directory, and when.
//!
//! A run holds an advisory lock (`flock` through `File::try_lock`) on
//! `OUT/.llm2comp-run.lock` for as long as it trains, so a second process
//! training into the same directory is refused, naming the directory and the
//! pid written in the lock file. The kernel drops the lock when the process
//! dies however it dies, so a stale lock file from a killed run never blocks
//! the next one (a pid-file-only lock would need guessing whether its pid
//! is still the same process).
//!
//! A fresh start takes an empty directory, or one holding only this tool's
//! run files without a complete checkpoint: a run killed before its first
//! checkpoint leaves `metrics.jsonl` (and maybe a half-built `.tmp-*`
//! checkpoint) and nothing to resume, so starting over is the only sane
//! continuation. A directory holding anything else (a user's files, another
//! tool's output) is refused rather than mixed into.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, CHECKPOINTS_DIR, LATEST_FILE};
use crate::metrics::METRICS_FILE;
use crate::trainer::LOSS_SVG;
use crate::{Result, TrainError};

/// The lock file every run holds in its output directory.
pub const LOCK_FILE: &str = ".llm2comp-run.lock";

/// A held run lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.to_path_buf();
    move |e| TrainError::io(action, path, e)
}

impl RunLock {
    /// Locks `out` (which must exist) for this process, writing its pid into the lock file.
    pub fn acquire(out: &Path) -> Result<Self> {
        let path = out.join(LOCK_FILE);
        // Opened without truncating: the holder's pid must stay readable until we hold it.
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(TrainError::checkpoint(
                &path,
                "is a symbolic link; a run's lock file must be a plain file",
            ));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(TrainError::RunLocked {
                    dir: out.to_path_buf(),
                    holder: match text.trim().parse::<u32>() {
                        Ok(pid) => format!("pid {pid}"),
                        Err(_) => "a process that has not written its pid yet".to_string(),
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io("lock", &path)(e)),
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.flush())
            .map_err(io("write", &path))?;
        Ok(Self { _file: file })
    }
}

/// Errors unless `out` may take a fresh run: empty, or holding only this
/// tool's run files and no complete checkpoint (a run stopped before it).
pub(crate) fn check_fresh(out: &Path) -> Result<()> {
    let ckpt_dir = out.join(CHECKPOINTS_DIR);
    let has_checkpoint = ckpt_dir.join(LATEST_FILE).exists()
        || (ckpt_dir.is_dir() && !checkpoint::list(&ckpt_dir)?.is_empty());
    if has_checkpoint {
        return Err(TrainError::RunExists {
            dir: out.to_path_buf(),
            found: format!("{CHECKPOINTS_DIR}/"),
        });
    }
    let mut foreign = Vec::new();
    for entry in std::fs::read_dir(out).map_err(io("list", out))? {
        let entry = entry.map_err(io("list", out))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ty = entry.file_type().map_err(io("stat", &entry.path()))?;
        let own = match name.as_str() {
            METRICS_FILE | LOSS_SVG | LOCK_FILE => ty.is_file(),
            CHECKPOINTS_DIR => ty.is_dir(),
            _ => false,
        };
        if !own {
            foreign.push(name);
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        return Err(TrainError::NotARunDir {
            dir: out.to_path_buf(),
            found: foreign.join(", "),
        });
    }
    Ok(())
}

/// The entries of `out` a fresh start replaces (for the note it prints).
pub(crate) fn leftovers(out: &Path) -> Vec<PathBuf> {
    [METRICS_FILE, LOSS_SVG, CHECKPOINTS_DIR]
        .iter()
        .map(|n| out.join(n))
        .filter(|p| p.exists())
        .collect()
}
