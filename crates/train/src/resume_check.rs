//! What a checkpoint must hold before a run resumes from it. A checkpoint
//! missing a parameter's AdamW moments used to resume with that parameter's
//! moments silently restarted from zero (a different run than the one
//! saved), and a `trainer.json` whose step disagrees with its directory or
//! with the optimiser's step count would resume at the wrong schedule
//! position. Both are refused, naming the tensor or the steps.

use std::collections::BTreeMap;
use std::path::Path;

use llm2comp_tensor::Tensor;

use crate::checkpoint::{TRAINER_FILE, TrainerState};
use crate::{Result, TrainError};

/// Errors unless `state.step` agrees with the checkpoint directory's name
/// (`step-N`, when it has that form) and with the optimiser's step count
/// (the trainer takes one optimiser step per training step).
pub(crate) fn check_step(dir: &Path, state: &TrainerState) -> Result<()> {
    let json = dir.join(TRAINER_FILE);
    let named = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("step-"))
        .and_then(|n| n.parse::<u64>().ok());
    if let Some(n) = named
        && n != state.step
    {
        return Err(TrainError::checkpoint(
            json,
            format!(
                "says step {}, but its directory is the checkpoint of step {n}; \
                 the files do not belong together",
                state.step
            ),
        ));
    }
    if state.optimizer_t != state.step {
        return Err(TrainError::checkpoint(
            json,
            format!(
                "says step {} but optimizer_t {}; the AdamW state does not belong to that step",
                state.step, state.optimizer_t
            ),
        ));
    }
    Ok(())
}

/// Errors unless every parameter in `params` has both AdamW moments
/// (`m.<name>`, `v.<name>`) among the checkpoint's `moments`; any
/// checkpoint after step 0 has them all (each step updates every parameter).
pub(crate) fn check_moments<'a>(
    st_path: &Path,
    step: u64,
    params: impl IntoIterator<Item = &'a String>,
    moments: &BTreeMap<String, Tensor>,
) -> Result<()> {
    if step == 0 {
        return Ok(());
    }
    for name in params {
        for kind in ["m", "v"] {
            let key = format!("{kind}.{name}");
            if !moments.contains_key(&key) {
                return Err(TrainError::checkpoint(
                    st_path,
                    format!(
                        "has no AdamW moment `{key}` for parameter `{name}` (step {step}); \
                         resuming would restart it from zero, so the checkpoint is refused"
                    ),
                ));
            }
        }
    }
    Ok(())
}
