//! Checkpoints: `OUT/checkpoints/step-00000100/{state.safetensors, trainer.json}`.
//!
//! Crash safety comes from never exposing a half-written directory: a
//! checkpoint is built in `.tmp-step-…-<pid>/`, every file is fsynced, the
//! directory is renamed to its final name (atomic on one file system), and only
//! then is `latest` replaced (temp file + rename). A crash at any point leaves
//! `latest` naming a complete checkpoint; the `.tmp-*` leftovers are ignored
//! by resume and removed by the next save. Old checkpoints are pruned only
//! after the new one is in place.
//!
//! Parameter values are stored under their own names and the optimiser's
//! moments under `m.<name>` / `v.<name>`; loading takes the task's parameter
//! names first, so a parameter that itself starts with `m.` stays unambiguous.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use llm2comp_backbone::atomic;
use llm2comp_tensor::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Result, Schedule, TrainError};

/// Sub-directory of the output directory holding the checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// File in [`CHECKPOINTS_DIR`] naming the newest complete checkpoint.
pub const LATEST_FILE: &str = "latest";
/// Tensors of a checkpoint (parameters and optimiser moments, f32).
pub const STATE_FILE: &str = "state.safetensors";
/// Everything else a checkpoint holds, as JSON.
pub const TRAINER_FILE: &str = "trainer.json";
/// Version of the checkpoint layout written by this crate.
pub const FORMAT_VERSION: u32 = 1;

/// Temporary names start like `atomic`'s, so one sweep removes both kinds of leftovers.
const TMP_PREFIX: &str = atomic::TMP_PREFIX;
const STEP_PREFIX: &str = "step-";

/// The contents of `trainer.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Optimiser steps completed.
    pub step: u64,
    /// The optimiser's step count (bias correction).
    pub optimizer_t: u64,
    /// The run's seed.
    pub seed: u64,
    /// The learning-rate schedule.
    pub schedule: Schedule,
    /// Settings a resumed run must share (trainer and task); see [`config_diff`].
    pub config: Value,
    /// The task's own resumable state (data position, ...).
    pub task_state: Value,
    /// Lines of metrics.jsonl written when the checkpoint was taken.
    pub metrics_lines: u64,
    /// Wall-clock seconds of training so far, over all sessions.
    pub elapsed_s: f64,
}

/// A checkpoint read back from disk.
#[derive(Debug)]
pub struct Checkpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// trainer.json.
    pub state: TrainerState,
    /// state.safetensors, on the CPU, by name.
    pub tensors: BTreeMap<String, Tensor>,
}

/// The directory name of the checkpoint after `step` steps (`step-00000100`).
pub fn dir_name(step: u64) -> String {
    format!("{STEP_PREFIX}{step:08}")
}

fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix(STEP_PREFIX)?.parse().ok()
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.to_path_buf();
    move |e| TrainError::io(action, path, e)
}

fn fsync(path: &Path) -> Result<()> {
    Ok(atomic::fsync_dir(path)?)
}

/// fsyncs every file under `dir`, then the directories, deepest first.
fn fsync_tree(dir: &Path) -> Result<()> {
    Ok(atomic::fsync_tree(dir)?)
}

/// Writes `bytes` to `path` through an exclusively created temp file and a rename, so readers
/// see the old or the new file (`llm2comp_backbone::atomic`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(atomic::write_atomic(path, bytes)?)
}

/// A tensor as safetensors sees it: f32 little-endian bytes made on demand, so
/// only one tensor's bytes exist at a time while the file is written.
struct F32View<'a> {
    tensor: Cow<'a, Tensor>,
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.tensor.shape()
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let v = self
            .tensor
            .f32s("checkpoint", "tensor")
            .expect("checked f32 on the CPU before writing");
        Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * 4
    }
}

/// A checkpoint being built in a temporary directory; [`PendingCheckpoint::commit`] publishes it.
#[derive(Debug)]
pub struct PendingCheckpoint {
    ckpt_dir: PathBuf,
    tmp: PathBuf,
    step: u64,
}

impl PendingCheckpoint {
    /// Removes leftovers of interrupted saves and creates the temporary directory for `step`.
    pub fn begin(out_dir: &Path, step: u64) -> Result<Self> {
        let ckpt_dir = out_dir.join(CHECKPOINTS_DIR);
        fs::create_dir_all(&ckpt_dir).map_err(io("create", &ckpt_dir))?;
        for entry in fs::read_dir(&ckpt_dir).map_err(io("list", &ckpt_dir))? {
            let entry = entry.map_err(io("list", &ckpt_dir))?;
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                remove_any(&entry.path())?;
            }
        }
        let tmp = ckpt_dir.join(format!(
            "{TMP_PREFIX}{}-{}",
            dir_name(step),
            std::process::id()
        ));
        fs::create_dir(&tmp).map_err(io("create", &tmp))?;
        Ok(Self {
            ckpt_dir,
            tmp,
            step,
        })
    }

    /// The temporary directory; files written here (a task's export) become part of the checkpoint.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// Writes state.safetensors from named f32 tensors (any device); names must be unique.
    pub fn write_tensors(&self, tensors: &[(String, &Tensor)]) -> Result<()> {
        let path = self.tmp.join(STATE_FILE);
        let mut seen = std::collections::HashSet::new();
        let mut views = Vec::with_capacity(tensors.len());
        for (name, t) in tensors {
            if !seen.insert(name.as_str()) {
                return Err(TrainError::checkpoint(
                    &path,
                    format!("two tensors are named `{name}`"),
                ));
            }
            if t.dtype() != DType::F32 {
                return Err(TrainError::checkpoint(
                    &path,
                    format!("tensor `{name}` is {:?}; checkpoints hold f32", t.dtype()),
                ));
            }
            let tensor = if t.device() == Device::Cpu {
                Cow::Borrowed(*t)
            } else {
                Cow::Owned(t.to_device(Device::Cpu)?)
            };
            views.push((name.clone(), F32View { tensor }));
        }
        safetensors::serialize_to_file(views, None, &path)
            .map_err(|e| TrainError::checkpoint(&path, format!("cannot write: {e}")))
    }

    /// Writes trainer.json.
    pub fn write_state(&self, state: &TrainerState) -> Result<()> {
        let path = self.tmp.join(TRAINER_FILE);
        let json = serde_json::to_vec_pretty(state)
            .map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
        fs::write(&path, json).map_err(io("write", &path))
    }

    /// fsyncs, renames the directory into place, points `latest` at it and prunes to the newest
    /// `keep` checkpoints (dropping any numbered after this one: a resume from an earlier
    /// checkpoint abandoned them). Returns the final directory.
    pub fn commit(self, keep: usize) -> Result<PathBuf> {
        for file in [STATE_FILE, TRAINER_FILE] {
            if !self.tmp.join(file).is_file() {
                return Err(TrainError::checkpoint(
                    &self.tmp,
                    format!("cannot commit without {file}"),
                ));
            }
        }
        fsync_tree(&self.tmp)?;
        let name = dir_name(self.step);
        let dest = self.ckpt_dir.join(&name);
        // An existing checkpoint of this step (from an abandoned branch of the run) is moved
        // aside rather than deleted first, so a crash never leaves neither.
        let aside = self.ckpt_dir.join(format!(
            "{TMP_PREFIX}replaced-{name}-{}",
            std::process::id()
        ));
        let replaced = dest.exists();
        if replaced {
            fs::rename(&dest, &aside).map_err(io("move aside", &dest))?;
        }
        fs::rename(&self.tmp, &dest).map_err(io("rename into place", &dest))?;
        fsync(&self.ckpt_dir)?;
        write_atomic(
            &self.ckpt_dir.join(LATEST_FILE),
            format!("{name}\n").as_bytes(),
        )?;
        if replaced {
            remove_any(&aside)?;
        }
        prune(&self.ckpt_dir, self.step, keep)?;
        Ok(dest)
    }
}

fn remove_any(path: &Path) -> Result<()> {
    let r = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    r.map_err(io("remove", path))
}

/// The complete checkpoints in `ckpt_dir` by step (`.tmp-*` excluded).
pub fn list(ckpt_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(ckpt_dir).map_err(io("list", ckpt_dir))? {
        let entry = entry.map_err(io("list", ckpt_dir))?;
        if let Some(step) = step_of(&entry.file_name().to_string_lossy())
            && entry.path().is_dir()
        {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn prune(ckpt_dir: &Path, current: u64, keep: usize) -> Result<()> {
    let all = list(ckpt_dir)?;
    let kept_from = all
        .iter()
        .filter(|(s, _)| *s <= current)
        .count()
        .saturating_sub(keep.max(1));
    for (i, (step, path)) in all.iter().enumerate() {
        if *step > current || (*step < current && i < kept_from) {
            remove_any(path)?;
        }
    }
    Ok(())
}

/// The checkpoint directory `path` names: a checkpoint directory itself (has trainer.json),
/// a run's output directory (uses `checkpoints/latest`) or its `checkpoints` directory.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(TRAINER_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    let ckpt_dir = if path.join(LATEST_FILE).is_file() {
        path.to_path_buf()
    } else {
        path.join(CHECKPOINTS_DIR)
    };
    let latest = ckpt_dir.join(LATEST_FILE);
    if !latest.is_file() {
        let found = if ckpt_dir.is_dir() {
            let names: Vec<String> = list(&ckpt_dir)?
                .iter()
                .map(|(_, p)| p.display().to_string())
                .collect();
            if names.is_empty() {
                "it holds no checkpoint yet (the run stopped before its first one); run the same \
                 command without --resume to start over"
                    .to_string()
            } else {
                format!(
                    "pass one of these checkpoint directories: {}",
                    names.join(", ")
                )
            }
        } else if path.exists() {
            format!(
                "it is neither a checkpoint directory (no {TRAINER_FILE}) nor a run directory \
                 (no {CHECKPOINTS_DIR}/{LATEST_FILE})"
            )
        } else {
            "it does not exist".to_string()
        };
        return Err(TrainError::checkpoint(
            path,
            format!("cannot resume from here: {found}"),
        ));
    }
    let text = fs::read_to_string(&latest).map_err(io("read", &latest))?;
    let name = text.trim();
    if step_of(name).is_none() {
        return Err(TrainError::checkpoint(
            &latest,
            format!("does not name a checkpoint directory (holds {name:?})"),
        ));
    }
    let dir = ckpt_dir.join(name);
    if !dir.is_dir() {
        return Err(TrainError::checkpoint(
            &latest,
            format!("names {}, which does not exist", dir.display()),
        ));
    }
    Ok(dir)
}

/// Reads a checkpoint directory (trainer.json and state.safetensors).
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let json_path = dir.join(TRAINER_FILE);
    if !json_path.is_file() {
        return Err(TrainError::checkpoint(
            &json_path,
            "missing (not a checkpoint directory, or an incomplete one)",
        ));
    }
    let text = fs::read(&json_path).map_err(io("read", &json_path))?;
    let version: Value = serde_json::from_slice(&text)
        .map_err(|e| TrainError::checkpoint(&json_path, format!("not valid JSON: {e}")))?;
    let found = version.get("format_version").and_then(Value::as_u64);
    if found != Some(u64::from(FORMAT_VERSION)) {
        return Err(TrainError::checkpoint(
            &json_path,
            format!("format_version is {found:?}; this build reads version {FORMAT_VERSION}"),
        ));
    }
    let state: TrainerState = serde_json::from_value(version)
        .map_err(|e| TrainError::checkpoint(&json_path, format!("unexpected content: {e}")))?;

    let st_path = dir.join(STATE_FILE);
    if !st_path.is_file() {
        return Err(TrainError::checkpoint(&st_path, "missing"));
    }
    let bytes = fs::read(&st_path).map_err(io("read", &st_path))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        TrainError::checkpoint(
            &st_path,
            format!("not a valid safetensors file ({e}); truncated or corrupt?"),
        )
    })?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(TrainError::checkpoint(
                &st_path,
                format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
            ));
        }
        let t = Tensor::from_le_bytes(view.data(), DType::F32, view.shape())
            .map_err(|e| TrainError::checkpoint(&st_path, format!("tensor `{name}`: {e}")))?;
        // Training stops before it saves a non-finite step, so this is a
        // corrupt or foreign file; resuming would train on NaN.
        if let Some((i, x)) = llm2comp_backbone::finite::first_non_finite(&t) {
            return Err(TrainError::checkpoint(
                &st_path,
                format!(
                    "tensor `{name}` holds {x} at element {i} (shape {:?}); a corrupt \
                     checkpoint cannot be resumed",
                    t.shape()
                ),
            ));
        }
        tensors.insert(name, t);
    }
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        state,
        tensors,
    })
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

/// The keys (dotted paths) whose values differ between a checkpoint's config and the current
/// one, as `key: checkpoint X, now Y` lines; keys whose last component is in `free` are skipped.
pub fn config_diff(saved: &Value, now: &Value, free: &[&str]) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", saved, &mut a);
    flatten("", now, &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let show = |v: Option<&Value>| v.map_or("(absent)".to_string(), Value::to_string);
    keys.into_iter()
        .filter(|k| !free.contains(&k.rsplit('.').next().unwrap_or(k)))
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: checkpoint {}, now {}", show(a.get(k)), show(b.get(k))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(step: u64) -> TrainerState {
        TrainerState {
            format_version: FORMAT_VERSION,
            step,
            optimizer_t: step,
            seed: 7,
            schedule: Schedule::constant(0.1, 10),
            config: json!({"a": 1}),
            task_state: json!({"pos": step * 3}),
            metrics_lines: step,
            elapsed_s: 1.5,
        }
    }

    fn save(out: &Path, step: u64, keep: usize) -> PathBuf {
        let w = Tensor::from_vec(vec![1.0f32, -2.5, f32::MIN_POSITIVE], &[3]).unwrap();
        let m = Tensor::from_vec(vec![step as f32; 4], &[2, 2]).unwrap();
        let p = PendingCheckpoint::begin(out, step).unwrap();
        p.write_tensors(&[("w".into(), &w), ("m.w".into(), &m)])
            .unwrap();
        p.write_state(&state(step)).unwrap();
        fs::write(p.dir().join("adapter.txt"), "exported").unwrap();
        p.commit(keep).unwrap()
    }

    #[test]
    fn round_trips_and_prunes_to_keep() {
        let out = tempfile::tempdir().unwrap();
        for step in [1, 2, 3] {
            let dir = save(out.path(), step, 2);
            assert!(dir.ends_with(format!("checkpoints/step-0000000{step}")));
        }
        let ck = out.path().join(CHECKPOINTS_DIR);
        let steps: Vec<u64> = list(&ck).unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [2, 3]);
        let dir = resolve(out.path()).unwrap();
        assert_eq!(dir, ck.join("step-00000003"));
        assert_eq!(resolve(&ck).unwrap(), dir);
        assert_eq!(resolve(&dir).unwrap(), dir);
        let c = load(&dir).unwrap();
        assert_eq!(c.state, state(3));
        assert_eq!(c.tensors["w"].to_vec_f32(), [1.0, -2.5, f32::MIN_POSITIVE]);
        assert_eq!(c.tensors["m.w"].shape(), [2, 2]);
        assert!(dir.join("adapter.txt").is_file());
        // Nothing temporary is left behind.
        let names: Vec<String> = fs::read_dir(&ck)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
    }

    #[test]
    fn leftovers_are_ignored_then_removed_and_later_steps_dropped() {
        let out = tempfile::tempdir().unwrap();
        save(out.path(), 4, 3);
        let ck = out.path().join(CHECKPOINTS_DIR);
        let junk = ck.join(".tmp-step-00000005-1");
        fs::create_dir(&junk).unwrap();
        fs::write(junk.join(STATE_FILE), b"partial").unwrap();
        assert_eq!(resolve(out.path()).unwrap(), ck.join("step-00000004"));
        // A re-save of an earlier step (resumed from step 2) replaces the later branch.
        save(out.path(), 2, 3);
        assert!(!junk.exists());
        let steps: Vec<u64> = list(&ck).unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [2]);
        save(out.path(), 2, 3);
        assert_eq!(resolve(out.path()).unwrap(), ck.join("step-00000002"));
    }

    #[test]
    fn a_state_holding_nan_is_refused_naming_the_tensor() {
        let out = tempfile::tempdir().unwrap();
        let dir = save(out.path(), 1, 2);
        let st = dir.join(STATE_FILE);
        let mut bytes = fs::read(&st).unwrap();
        let n = bytes.len();
        // The data section ends with the last tensor's last element.
        bytes[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
        fs::write(&st, &bytes).unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("state.safetensors") && err.contains("holds NaN at element"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_file() {
        let out = tempfile::tempdir().unwrap();
        let err = resolve(out.path()).unwrap_err().to_string();
        assert!(err.contains("neither a checkpoint directory"), "{err}");
        let dir = save(out.path(), 1, 2);
        let st = dir.join(STATE_FILE);
        let bytes = fs::read(&st).unwrap();
        fs::write(&st, &bytes[..bytes.len() - 5]).unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("state.safetensors") && err.contains("truncated"),
            "{err}"
        );
        fs::remove_file(&st).unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(err.contains("state.safetensors: missing"), "{err}");
        fs::write(dir.join(TRAINER_FILE), "{\"format_version\": 9}").unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("trainer.json") && err.contains("version 1"),
            "{err}"
        );
        fs::write(
            out.path().join(CHECKPOINTS_DIR).join(LATEST_FILE),
            "step-00000042",
        )
        .unwrap();
        let err = resolve(out.path()).unwrap_err().to_string();
        assert!(
            err.contains("latest") && err.contains("does not exist"),
            "{err}"
        );
    }

    #[test]
    fn config_diff_lists_differing_keys_except_free_ones() {
        let a = json!({"train": {"lr": 1.0, "steps": 10, "clip": null}, "task": {"k": 4}});
        let b =
            json!({"train": {"lr": 2.0, "steps": 20, "clip": 1.0}, "task": {"k": 4, "new": true}});
        let d = config_diff(&a, &b, &["steps"]);
        assert_eq!(
            d,
            [
                "task.new: checkpoint (absent), now true",
                "train.clip: checkpoint null, now 1.0",
                "train.lr: checkpoint 1.0, now 2.0",
            ]
        );
        assert!(config_diff(&a, &a, &[]).is_empty());
    }
}
