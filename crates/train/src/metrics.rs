//! `OUT/metrics.jsonl`: one JSON object per optimiser step, flushed per line
//! so a crash loses at most the line being written.
//!
//! On resume the file is cut back to the checkpoint's step (lines of steps
//! the resumed run will redo are dropped, and a torn last line from a crash is
//! discarded) and rewritten atomically, so after the run it holds exactly what
//! an uninterrupted run would have written, timing fields aside.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::checkpoint::write_atomic;
use crate::{Result, TrainError};

/// File name of the metrics log in the output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// What one optimiser step reports.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    /// Steps completed, counting this one (1-based).
    pub step: u64,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate the step used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens the step processed.
    pub tokens: u64,
    /// Tokens per second of this step.
    pub tokens_per_s: f64,
    /// Wall-clock seconds of training so far (over all sessions).
    pub elapsed_s: f64,
    /// The task's own fields; the standard names above take precedence.
    pub extra: Map<String, Value>,
}

impl StepMetrics {
    /// The JSON object written as one line.
    pub fn to_json(&self) -> Value {
        let mut m = self.extra.clone();
        let num = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
        m.insert("step".into(), self.step.into());
        m.insert("loss".into(), num(self.loss));
        m.insert("lr".into(), num(self.lr));
        m.insert("grad_norm".into(), num(self.grad_norm));
        m.insert("tokens".into(), self.tokens.into());
        m.insert("tokens_per_s".into(), num(self.tokens_per_s));
        m.insert("elapsed_s".into(), num(self.elapsed_s));
        Value::Object(m)
    }
}

/// Appends metric lines to `OUT/metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsWriter {
    path: PathBuf,
    file: fs::File,
    lines: u64,
}

impl MetricsWriter {
    /// Starts an empty metrics file in `out_dir` (replacing any).
    pub fn create(out_dir: &Path) -> Result<Self> {
        let path = out_dir.join(METRICS_FILE);
        // Removed and created anew (create_new), so a symlink planted under the name is
        // replaced, not written through.
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(TrainError::io("replace", &path, e));
            }
            _ => {}
        }
        let file = fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| TrainError::io("create", &path, e))?;
        Ok(Self {
            path,
            file,
            lines: 0,
        })
    }

    /// Opens `out_dir`'s metrics file for a run resumed after `step` steps: drops the lines of
    /// later steps (atomically) and returns the writer with the (step, loss) pairs kept.
    pub fn resume(out_dir: &Path, step: u64) -> Result<(Self, Vec<(u64, f64)>)> {
        let path = out_dir.join(METRICS_FILE);
        if !path.exists() {
            return Ok((Self::create(out_dir)?, Vec::new()));
        }
        let text = fs::read_to_string(&path).map_err(|e| TrainError::io("read", &path, e))?;
        let lines: Vec<&str> = text.lines().collect();
        let mut kept = String::new();
        let mut losses = Vec::new();
        let mut count = 0;
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = parse_line(line);
            let (s, loss) = match parsed {
                Some(x) => x,
                // A torn final line is what a crash mid-write leaves: drop it.
                None if i + 1 == lines.len() => break,
                None => {
                    return Err(TrainError::Metrics {
                        path,
                        msg: format!(
                            "line {} is not a metrics object with a step and loss",
                            i + 1
                        ),
                    });
                }
            };
            if s <= step {
                kept.push_str(line);
                kept.push('\n');
                losses.push((s, loss));
                count += 1;
            }
        }
        write_atomic(&path, kept.as_bytes())?;
        let file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io("open", &path, e))?;
        Ok((
            Self {
                path,
                file,
                lines: count,
            },
            losses,
        ))
    }

    /// Writes one line and flushes it.
    pub fn append(&mut self, m: &StepMetrics) -> Result<()> {
        let mut line = m.to_json().to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| TrainError::io("append to", &self.path, e))?;
        self.lines += 1;
        Ok(())
    }

    /// Lines in the file.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn parse_line(line: &str) -> Option<(u64, f64)> {
    let v: Value = serde_json::from_str(line).ok()?;
    Some((v.get("step")?.as_u64()?, v.get("loss")?.as_f64()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(step: u64) -> StepMetrics {
        let mut extra = Map::new();
        extra.insert("acc".into(), Value::from(0.5));
        extra.insert("loss".into(), Value::from("shadowed"));
        StepMetrics {
            step,
            loss: 1.0 / step as f64,
            lr: 1e-3,
            grad_norm: 2.0,
            tokens: 100,
            tokens_per_s: 1e4,
            elapsed_s: step as f64,
            extra,
        }
    }

    #[test]
    fn lines_carry_every_field_and_extras() {
        let v = metrics(4).to_json();
        for k in [
            "step",
            "loss",
            "lr",
            "grad_norm",
            "tokens",
            "tokens_per_s",
            "elapsed_s",
            "acc",
        ] {
            assert!(v.get(k).is_some(), "{k} missing from {v}");
        }
        assert_eq!(v["loss"], 0.25);
    }

    #[test]
    fn resume_drops_later_lines_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = MetricsWriter::create(dir.path()).unwrap();
        for s in 1..=5 {
            w.append(&metrics(s)).unwrap();
        }
        assert_eq!(w.lines(), 5);
        drop(w);
        let path = dir.path().join(METRICS_FILE);
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("{\"step\": 6, \"lo");
        fs::write(&path, text).unwrap();
        let (mut w, losses) = MetricsWriter::resume(dir.path(), 3).unwrap();
        assert_eq!(losses.iter().map(|l| l.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(w.lines(), 3);
        w.append(&metrics(4)).unwrap();
        let steps: Vec<u64> = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| parse_line(l).unwrap().0)
            .collect();
        assert_eq!(steps, [1, 2, 3, 4]);
    }

    #[test]
    fn resume_rejects_a_corrupt_middle_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        fs::write(
            &path,
            "{\"step\":1,\"loss\":1}\nnot json\n{\"step\":2,\"loss\":1}\n",
        )
        .unwrap();
        let err = MetricsWriter::resume(dir.path(), 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("metrics.jsonl") && err.contains("line 2"),
            "{err}"
        );
    }
}
