//! The training loop on a toy task: least squares y ≈ W·x + b with two
//! parameter tensors, whose rows and "dropout" mask come from a counter-based
//! hash of (seed, step, row), as a real task must derive them for exact resume.

use std::fs;
use std::path::{Path, PathBuf};

use llm2comp_tensor::{DType, Device, Tensor};
use llm2comp_train::checkpoint::{CHECKPOINTS_DIR, STATE_FILE};
use llm2comp_train::{
    AdamWConfig, Decay, MicroStats, Param, Schedule, Task, TrainConfig, TrainError, train,
};
use serde_json::{Map, Value, json};

const IN: usize = 5;
const OUT: usize = 3;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in [-1, 1) from the counter (seed, stream, step, row, col).
fn unif(seed: u64, stream: u64, step: u64, row: u64, col: u64) -> f32 {
    let h = splitmix(seed ^ splitmix(stream ^ splitmix(step ^ splitmix(row ^ splitmix(col)))));
    ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

struct Toy {
    seed: u64,
    /// Rows per optimiser step, split evenly over the micro-batches.
    rows: usize,
    grad_accum: usize,
    w: Tensor,
    gw: Tensor,
    b: Tensor,
    gb: Tensor,
    extra: Option<(Tensor, Tensor)>,
    rows_seen: u64,
    nan_loss_at: Option<u64>,
    inf_grad_at: Option<u64>,
}

impl Toy {
    fn new(seed: u64, rows: usize, grad_accum: usize) -> Self {
        let z = |s: &[usize]| Tensor::zeros(s, DType::F32, Device::Cpu);
        Self {
            seed,
            rows,
            grad_accum,
            w: z(&[OUT, IN]),
            gw: z(&[OUT, IN]),
            b: z(&[OUT]),
            gb: z(&[OUT]),
            extra: None,
            rows_seen: 0,
            nan_loss_at: None,
            inf_grad_at: None,
        }
    }

    fn params_f32(&self) -> (Vec<f32>, Vec<f32>) {
        (self.w.to_vec_f32(), self.b.to_vec_f32())
    }
}

impl Task for Toy {
    fn micro_step(
        &mut self,
        step: u64,
        micro: usize,
        grad_scale: f32,
    ) -> Result<MicroStats, TrainError> {
        let per = self.rows / self.grad_accum;
        let (w, b) = (self.w.to_vec_f32(), self.b.to_vec_f32());
        let mut gw = self.gw.to_vec_f32();
        let mut gb = self.gb.to_vec_f32();
        let mut loss = 0.0f64;
        for i in 0..per {
            let r = (micro * per + i) as u64;
            // Inputs with inverted dropout (p = 0.25) from the same counter-based stream.
            let x: Vec<f32> = (0..IN as u64)
                .map(|c| {
                    let keep = unif(self.seed, 1, step, r, c) > -0.5;
                    if keep {
                        unif(self.seed, 0, step, r, c) / 0.75
                    } else {
                        0.0
                    }
                })
                .collect();
            for o in 0..OUT {
                let target: f32 = (0..IN)
                    .map(|c| x[c] * (o as f32 - c as f32 * 0.5))
                    .sum::<f32>()
                    + 0.1 * unif(self.seed, 2, step, r, o as u64);
                let pred: f32 = (0..IN).map(|c| w[o * IN + c] * x[c]).sum::<f32>() + b[o];
                let e = pred - target;
                loss += 0.5 * f64::from(e * e) / (per * OUT) as f64;
                let g = e / (per * OUT) as f32 * grad_scale;
                for c in 0..IN {
                    gw[o * IN + c] += g * x[c];
                }
                gb[o] += g;
            }
        }
        if self.inf_grad_at == Some(step) {
            gb[1] = f32::INFINITY;
        }
        self.gw = Tensor::from_vec(gw, &[OUT, IN])?;
        self.gb = Tensor::from_vec(gb, &[OUT])?;
        self.rows_seen += per as u64;
        if self.nan_loss_at == Some(step) {
            loss = f64::NAN;
        }
        let mut extra = Map::new();
        extra.insert("rows_seen".into(), json!(self.rows_seen));
        Ok(MicroStats {
            loss,
            tokens: (per * IN) as u64,
            extra,
        })
    }

    fn params(&mut self) -> Vec<Param<'_>> {
        let mut v = vec![
            Param {
                name: "toy.w".into(),
                value: &mut self.w,
                grad: &mut self.gw,
            },
            Param {
                name: "toy.b".into(),
                value: &mut self.b,
                grad: &mut self.gb,
            },
        ];
        if let Some((c, gc)) = &mut self.extra {
            v.push(Param {
                name: "toy.c".into(),
                value: c,
                grad: gc,
            });
        }
        v
    }

    fn zero_grads(&mut self) {
        self.gw = Tensor::zeros(&[OUT, IN], DType::F32, Device::Cpu);
        self.gb = Tensor::zeros(&[OUT], DType::F32, Device::Cpu);
        if let Some((c, gc)) = &mut self.extra {
            *gc = Tensor::zeros(c.shape(), DType::F32, Device::Cpu);
        }
    }

    fn config(&self) -> Value {
        json!({ "rows": self.rows, "in": IN, "out": OUT })
    }

    fn task_state(&self) -> Value {
        json!({ "rows_seen": self.rows_seen })
    }

    fn restore_task_state(&mut self, v: &Value) -> Result<(), TrainError> {
        self.rows_seen = v["rows_seen"]
            .as_u64()
            .ok_or_else(|| TrainError::task(format!("bad task state {v}")))?;
        Ok(())
    }

    fn export(&mut self, dir: &Path) -> Result<(), TrainError> {
        let body = json!({ "w": self.w.to_vec_f32(), "b": self.b.to_vec_f32() });
        fs::write(dir.join("adapter.json"), body.to_string())
            .map_err(|e| TrainError::io("write", dir, e))
    }
}

fn cfg(out: &Path, steps: u64, grad_accum: usize) -> TrainConfig {
    let schedule = Schedule {
        lr: 0.05,
        warmup_steps: 2,
        warmup_init_lr: 0.01,
        total_steps: 8,
        decay: Decay::Cosine,
        min_lr: 0.005,
    };
    TrainConfig {
        grad_accum,
        clip: Some(0.5),
        adamw: AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        },
        save_every: Some(2),
        seed: 11,
        progress: false,
        ..TrainConfig::new(out, steps, schedule)
    }
}

/// metrics.jsonl with the timing fields removed.
fn metrics(out: &Path) -> Vec<Value> {
    fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let m = v.as_object_mut().unwrap();
            m.remove("tokens_per_s");
            m.remove("elapsed_s");
            v
        })
        .collect()
}

fn ckpt(out: &Path, step: u64) -> PathBuf {
    out.join(CHECKPOINTS_DIR).join(format!("step-{step:08}"))
}

#[test]
fn resume_is_bit_identical_to_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut ta = Toy::new(11, 6, 1);
    let sa = train(&mut ta, &cfg(&a, 8, 1), None).unwrap();
    assert_eq!((sa.steps, sa.steps_run), (8, 8));
    assert_eq!(sa.last_checkpoint.as_deref(), Some(ckpt(&a, 8).as_path()));

    // Run b stops at 6, then resumes from its step-4 checkpoint: lines 5 and 6 must be dropped.
    let mut tb = Toy::new(11, 6, 1);
    train(&mut tb, &cfg(&b, 6, 1), None).unwrap();
    assert_eq!(metrics(&b).len(), 6);
    let mut tb = Toy::new(11, 6, 1);
    let sb = train(&mut tb, &cfg(&b, 8, 1), Some(&ckpt(&b, 4))).unwrap();
    assert_eq!((sb.steps, sb.steps_run), (8, 4));

    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), 8);
    assert_eq!(ma, mb, "metrics differ after resume");
    assert_eq!(mb[7]["rows_seen"], 48.0, "task state restored");
    assert_eq!(ta.params_f32(), tb.params_f32(), "final params differ");
    assert_eq!(sa.final_loss.to_bits(), sb.final_loss.to_bits());
    // The loss actually fell and the exports landed in OUT and in the checkpoint.
    assert!(ma[7]["loss"].as_f64().unwrap() < ma[0]["loss"].as_f64().unwrap());
    assert!(a.join("adapter.json").is_file() && ckpt(&a, 8).join("adapter.json").is_file());
}

#[test]
fn leftover_tmp_and_stale_checkpoints_do_not_break_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut t = Toy::new(3, 4, 1);
    train(&mut t, &cfg(&out, 4, 1), None).unwrap();
    let ck = out.join(CHECKPOINTS_DIR);
    // A crash mid-save leaves a .tmp dir; a stale later directory is not what `latest` names.
    let junk = ck.join(".tmp-step-00000006-4242");
    fs::create_dir(&junk).unwrap();
    fs::write(junk.join(STATE_FILE), b"half").unwrap();
    let stale = ck.join("step-00000099");
    fs::create_dir(&stale).unwrap();
    fs::write(stale.join("trainer.json"), b"{").unwrap();

    let mut t2 = Toy::new(3, 4, 1);
    train(&mut t2, &cfg(&out, 8, 1), Some(&out)).unwrap();
    let mut t3 = Toy::new(3, 4, 1);
    train(&mut t3, &cfg(&tmp.path().join("ref"), 8, 1), None).unwrap();
    assert_eq!(t2.params_f32(), t3.params_f32());
    assert!(!junk.exists() && !stale.exists());
    let mut left: Vec<String> = fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["latest", "step-00000006", "step-00000008"]);
}

#[test]
fn grad_accumulation_equals_one_big_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut one = Toy::new(5, 8, 1);
    train(&mut one, &cfg(&tmp.path().join("one"), 6, 1), None).unwrap();
    let mut two = Toy::new(5, 8, 2);
    train(&mut two, &cfg(&tmp.path().join("two"), 6, 2), None).unwrap();
    let (m1, m2) = (
        metrics(&tmp.path().join("one")),
        metrics(&tmp.path().join("two")),
    );
    for (a, b) in m1.iter().zip(&m2) {
        for k in ["loss", "grad_norm"] {
            let (x, y) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-3), "{k}: {x} vs {y}");
        }
        assert_eq!(a["tokens"], b["tokens"]);
    }
    let ((w1, b1), (w2, b2)) = (one.params_f32(), two.params_f32());
    for (x, y) in w1.iter().chain(&b1).zip(w2.iter().chain(&b2)) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    // And with a different batch split the data would differ: 2×4 is not 1×4.
    let mut half = Toy::new(5, 4, 1);
    train(&mut half, &cfg(&tmp.path().join("half"), 6, 1), None).unwrap();
    assert!((half.params_f32().0[0] - w1[0]).abs() > 1e-6);
}

#[test]
fn non_finite_stops_at_that_step_before_updating() {
    let tmp = tempfile::tempdir().unwrap();
    for (nan_loss, what) in [(true, "loss (NaN)"), (false, "gradient norm (inf)")] {
        let out = tmp.path().join(format!("bad-{nan_loss}"));
        let mut t = Toy::new(9, 4, 1);
        if nan_loss {
            t.nan_loss_at = Some(4);
        } else {
            t.inf_grad_at = Some(4);
        }
        let err = train(&mut t, &cfg(&out, 8, 1), None).unwrap_err();
        let TrainError::NonFinite {
            step,
            last_checkpoint,
            ..
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!(*step, 5);
        assert_eq!(last_checkpoint.as_deref(), Some(ckpt(&out, 4).as_path()));
        let msg = err.to_string();
        assert!(
            msg.contains("step 5") && msg.contains(what) && msg.contains("step-00000004"),
            "{msg}"
        );
        // Parameters are those after 4 good steps.
        let mut good = Toy::new(9, 4, 1);
        train(
            &mut good,
            &cfg(&tmp.path().join(format!("good-{nan_loss}")), 4, 1),
            None,
        )
        .unwrap();
        assert_eq!(t.params_f32(), good.params_f32());
        assert_eq!(metrics(&out).len(), 4);
    }
    let out = tmp.path().join("first");
    let mut t = Toy::new(9, 4, 1);
    t.nan_loss_at = Some(0);
    let msg = train(&mut t, &cfg(&out, 8, 1), None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("step 1") && msg.contains("No checkpoint"),
        "{msg}"
    );
}

#[test]
fn resume_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    train(&mut Toy::new(1, 4, 1), &cfg(&out, 2, 1), None).unwrap();

    // Starting over in a directory that holds a run is refused.
    let err = train(&mut Toy::new(1, 4, 1), &cfg(&out, 2, 1), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already holds a training run") && err.contains("--resume"),
        "{err}"
    );

    // Different settings: every differing key is listed; free ones are not.
    let mut c = cfg(&out, 4, 1);
    c.schedule.lr = 0.1;
    c.save_every = Some(3);
    let err = train(&mut Toy::new(1, 6, 1), &c, Some(&out))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("task.rows: checkpoint 4, now 6") && err.contains("train.schedule.lr"),
        "{err}"
    );
    assert!(
        !err.contains("save_every") && !err.contains("train.steps"),
        "{err}"
    );

    // A task with a parameter the checkpoint lacks, and one lacking a stored parameter.
    let mut extra = Toy::new(1, 4, 1);
    let z = Tensor::zeros(&[2], DType::F32, Device::Cpu);
    extra.extra = Some((z.clone(), z));
    let err = train(&mut extra, &cfg(&out, 4, 1), Some(&out))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("state.safetensors") && err.contains("no tensor for parameter `toy.c`"),
        "{err}"
    );
    let other = tmp.path().join("other");
    train(&mut extra, &cfg(&other, 2, 1), None).unwrap();
    let err = train(&mut Toy::new(1, 4, 1), &cfg(&other, 4, 1), Some(&other))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("holds `toy.c`, which the task does not have"),
        "{err}"
    );

    // Truncated tensors file.
    let st = ckpt(&out, 2).join(STATE_FILE);
    let bytes = fs::read(&st).unwrap();
    fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let err = train(&mut Toy::new(1, 4, 1), &cfg(&out, 4, 1), Some(&out))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&st.display().to_string()) && err.contains("truncated"),
        "{err}"
    );

    // Not a run at all.
    let err = train(&mut Toy::new(1, 4, 1), &cfg(&out, 4, 1), Some(tmp.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot resume"), "{err}");
}

#[test]
fn loss_svg_plots_every_step() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    train(&mut Toy::new(2, 4, 1), &cfg(&out, 7, 1), None).unwrap();
    let svg = fs::read_to_string(out.join("loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let start = svg.find(r#"<polyline class="loss""#).expect("a loss line");
    let pts = &svg[start..];
    let pts = &pts[pts.find("points=\"").unwrap() + 8..];
    let pts = &pts[..pts.find('"').unwrap()];
    assert_eq!(pts.split(' ').count(), 7);
}

/// Rewrites a checkpoint's state.safetensors without the tensors `drop`.
fn drop_tensors(ck: &Path, drop: &[&str]) {
    let loaded = llm2comp_train::checkpoint::load(ck).unwrap();
    let kept: Vec<(String, Vec<usize>, Vec<u8>)> = loaded
        .tensors
        .iter()
        .filter(|(n, _)| !drop.contains(&n.as_str()))
        .map(|(n, t)| {
            let bytes = t
                .to_vec_f32()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            (n.clone(), t.shape().to_vec(), bytes)
        })
        .collect();
    assert_eq!(
        kept.len() + drop.len(),
        loaded.tensors.len(),
        "{drop:?} were there"
    );
    let views = kept.iter().map(|(n, s, b)| {
        let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
        (n.clone(), v.unwrap())
    });
    fs::write(
        ck.join(STATE_FILE),
        safetensors::tensor::serialize(views, None).unwrap(),
    )
    .unwrap();
}

#[test]
fn resume_refuses_missing_moments_and_steps_that_disagree() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    train(&mut Toy::new(1, 4, 1), &cfg(&out, 4, 1), None).unwrap();

    // Missing moments (both of a parameter) used to restart its AdamW state from zero.
    let ck4 = ckpt(&out, 4);
    let saved = fs::read(ck4.join(STATE_FILE)).unwrap();
    drop_tensors(&ck4, &["m.toy.b", "v.toy.b"]);
    let err = train(&mut Toy::new(1, 4, 1), &cfg(&out, 6, 1), Some(&out))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("state.safetensors")
            && err.contains("no AdamW moment `m.toy.b` for parameter `toy.b`"),
        "{err}"
    );
    fs::write(ck4.join(STATE_FILE), &saved).unwrap();

    // trainer.json's step against the directory, and against the optimiser's t.
    let json_path = ck4.join("trainer.json");
    let original = fs::read_to_string(&json_path).unwrap();
    let mut v: Value = serde_json::from_str(&original).unwrap();
    v["step"] = json!(3);
    fs::write(&json_path, v.to_string()).unwrap();
    let err = train(&mut Toy::new(1, 4, 1), &cfg(&out, 6, 1), Some(&out))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("trainer.json")
            && err.contains("says step 3, but its directory is the checkpoint of step 4"),
        "{err}"
    );
    let mut v: Value = serde_json::from_str(&original).unwrap();
    v["optimizer_t"] = json!(2);
    fs::write(&json_path, v.to_string()).unwrap();
    let err = train(&mut Toy::new(1, 4, 1), &cfg(&out, 6, 1), Some(&out))
        .unwrap_err()
        .to_string();
    assert!(err.contains("says step 4 but optimizer_t 2"), "{err}");

    // Restored, the same checkpoint resumes.
    fs::write(&json_path, &original).unwrap();
    train(&mut Toy::new(1, 4, 1), &cfg(&out, 6, 1), Some(&out)).unwrap();
}
