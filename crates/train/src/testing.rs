//! What tests of trainers compare to show a resumed run equals an
//! uninterrupted one: the loss curve and the parameters, bit for bit.

use std::path::Path;

use crate::Task;
use crate::metrics::METRICS_FILE;

/// The bits of every step's loss in `out_dir`'s metrics file (panics on a
/// missing or malformed file: a test helper).
pub fn loss_bits(out_dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(out_dir.join(METRICS_FILE))
        .expect("metrics.jsonl is readable")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["loss"].as_f64().expect("a numeric loss").to_bits()
        })
        .collect()
}

/// Every trainable tensor of `task` by name, as raw f32 bits.
pub fn param_bits(task: &mut impl Task) -> Vec<(String, Vec<u32>)> {
    task.params()
        .into_iter()
        .map(|p| {
            let bits = p.value.to_vec_f32().iter().map(|x| x.to_bits()).collect();
            (p.name, bits)
        })
        .collect()
}
