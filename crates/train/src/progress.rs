//! Progress display: an indicatif bar when stderr is a terminal; otherwise
//! (logs, CI, `nohup`) one plain line every `log_every` steps, because a bar's
//! carriage returns turn a log file into one unreadable line.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Nothing.
    Quiet,
    /// An animated bar.
    Bar,
    /// A plain line every `log_every` steps.
    Lines,
}

/// Reports training progress.
#[derive(Debug)]
pub struct Progress {
    mode: ProgressMode,
    bar: Option<ProgressBar>,
    total: u64,
    first: u64,
    log_every: u64,
    start: Instant,
}

impl Progress {
    /// A display for a run of `total` steps of which `done` are already complete; `enabled =
    /// false` is quiet, otherwise a bar on a terminal and plain lines elsewhere.
    pub fn new(total: u64, done: u64, enabled: bool, log_every: u64) -> Self {
        let mode = match (enabled, std::io::stderr().is_terminal()) {
            (false, _) => ProgressMode::Quiet,
            (true, true) => ProgressMode::Bar,
            (true, false) => ProgressMode::Lines,
        };
        Self::with_mode(mode, total, done, log_every)
    }

    /// A display in an explicit mode.
    pub fn with_mode(mode: ProgressMode, total: u64, done: u64, log_every: u64) -> Self {
        let bar = (mode == ProgressMode::Bar).then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
            )
            .expect("static template");
            bar.set_style(style.progress_chars("=> "));
            bar.set_position(done);
            bar.reset_eta();
            bar
        });
        Self {
            mode,
            bar,
            total,
            first: done,
            log_every: log_every.max(1),
            start: Instant::now(),
        }
    }

    /// The mode in use.
    pub fn mode(&self) -> ProgressMode {
        self.mode
    }

    /// Records that `step` steps are complete; returns the plain line when one is due.
    pub fn update(&mut self, step: u64, loss: f64, lr: f64, tokens_per_s: f64) -> Option<String> {
        match self.mode {
            ProgressMode::Quiet => None,
            ProgressMode::Bar => {
                if let Some(bar) = &self.bar {
                    bar.set_position(step);
                    bar.set_message(format!(
                        "loss {loss:.4} lr {lr:.2e} {tokens_per_s:.0} tok/s"
                    ));
                }
                None
            }
            ProgressMode::Lines => {
                if !step.is_multiple_of(self.log_every) && step != self.total {
                    return None;
                }
                let line = self.line(step, loss, lr, tokens_per_s);
                eprintln!("{line}");
                Some(line)
            }
        }
    }

    fn line(&self, step: u64, loss: f64, lr: f64, tokens_per_s: f64) -> String {
        let elapsed = self.start.elapsed();
        let done = step.saturating_sub(self.first);
        let eta = if done == 0 {
            "?".to_string()
        } else {
            let per = elapsed.as_secs_f64() / done as f64;
            hms(Duration::from_secs_f64(
                per * self.total.saturating_sub(step) as f64,
            ))
        };
        format!(
            "step {step}/{} loss {loss:.4} lr {lr:.3e} tok/s {tokens_per_s:.0} elapsed {} eta {eta}",
            self.total,
            hms(elapsed)
        )
    }

    /// Prints a message without breaking the bar.
    pub fn println(&self, msg: &str) {
        match (&self.bar, self.mode) {
            (_, ProgressMode::Quiet) => {}
            (Some(bar), _) => bar.println(msg),
            (None, _) => eprintln!("{msg}"),
        }
    }

    /// Removes the bar (if any).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_every_log_every_steps_and_at_the_end() {
        let mut p = Progress::with_mode(ProgressMode::Lines, 10, 2, 4);
        let logged: Vec<u64> = (3..=10)
            .filter(|&s| p.update(s, 1.25, 3e-4, 1000.0).is_some())
            .collect();
        assert_eq!(logged, [4, 8, 10]);
        let line = p.update(8, 1.25, 3e-4, 1000.0).unwrap();
        assert!(
            line.starts_with("step 8/10 loss 1.2500 lr 3.000e-4 tok/s 1000"),
            "{line}"
        );
        assert!(line.contains("eta 0:00:0"), "{line}");
        let mut q = Progress::with_mode(ProgressMode::Quiet, 10, 0, 1);
        assert!(q.update(1, 1.0, 1.0, 1.0).is_none());
        assert_eq!(hms(Duration::from_secs(3723)), "1:02:03");
    }
}
