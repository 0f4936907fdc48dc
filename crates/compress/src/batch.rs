//! One step's passages packed into the three varlen batches the step runs:
//! the encoder's `[BOS] text m_1..m_k`, the decoder's
//! `[BOS] m̃_1..m̃_k target_1..target_{L-1}` and, for `kl`, the teacher's
//! `[BOS] t_1..t_{T-1}`. Packing is pure index bookkeeping, kept apart from
//! the model so the row arithmetic (which hidden row predicts which token)
//! is tested on its own.
//!
//! Row conventions (0-based within a sequence): the decoder's row k (the last
//! memory slot) predicts target_1 and row k + j predicts target_{j+1}; the
//! teacher's row i holds t_i and predicts t_{i+1}, so for a split at s the
//! teacher rows s..T−1 line up with the student's suffix rows. Final tokens
//! are never fed in: nothing is predicted from them.

use crate::encoder_input::{memory_ids, push_encoder_input};
use crate::{CompressError, Objective, Result};

/// One passage of a step: its text tokens (no BOS) and, for `nll`/`kl`, the split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Text token ids t_1..t_T.
    pub ids: Vec<u32>,
    /// Prefix length s (the encoder reads t_1..t_s); `None` for `rc`.
    pub split: Option<usize>,
}

/// The packed index data of one micro-batch.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedBatch {
    /// Memory tokens per passage.
    pub k: usize,
    /// Encoder ids: `[BOS] text m_1..m_k` per passage (memory ids V..V+k).
    pub enc_ids: Vec<u32>,
    /// Encoder sequence offsets.
    pub enc_cu: Vec<u32>,
    /// Per passage, the encoder row of m_1 (its k memory rows follow).
    pub enc_mem: Vec<usize>,
    /// Decoder ids, with the memory slots holding 0 (they are filled with memory states).
    pub dec_ids: Vec<u32>,
    /// Decoder sequence offsets.
    pub dec_cu: Vec<u32>,
    /// Per passage, the decoder row of m̃_1.
    pub dec_mem: Vec<usize>,
    /// Decoder rows whose next-token distributions are scored, in order.
    pub student_rows: Vec<usize>,
    /// The token each scored row must predict (`rc`, `nll`).
    pub targets: Vec<i64>,
    /// The loss weight of each scored row (they sum to 1).
    pub row_weights: Vec<f32>,
    /// The teacher's input (`kl` only).
    pub teacher: Option<TeacherBatch>,
    /// Text tokens t_1..t_T over all passages.
    pub text_tokens: usize,
}

/// The frozen teacher's packed input for `kl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeacherBatch {
    /// `[BOS] t_1..t_{T-1}` per passage.
    pub ids: Vec<u32>,
    /// Sequence offsets.
    pub cu: Vec<u32>,
    /// Teacher rows aligned one to one with `student_rows`.
    pub rows: Vec<usize>,
}

impl PackedBatch {
    /// Tokens run through a forward pass (encoder + decoder + teacher).
    pub fn forward_tokens(&self) -> usize {
        self.enc_ids.len() + self.dec_ids.len() + self.teacher.as_ref().map_or(0, |t| t.ids.len())
    }
}

/// Packs `samples` for `objective` with `k` memory tokens (ids `vocab..vocab+k`).
///
/// Loss weights: `rc` and `nll` average the cross-entropy over every target
/// token of the batch (a token-level mean, what Hugging Face's loss does);
/// `kl` averages over the suffix positions of each passage, then over
/// passages (METHOD.md).
pub fn pack(
    samples: &[Sample],
    objective: Objective,
    bos: u32,
    k: usize,
    vocab: usize,
) -> Result<PackedBatch> {
    if samples.is_empty() {
        return Err(CompressError::Config(
            "a batch needs at least one passage".into(),
        ));
    }
    if k == 0 {
        return Err(CompressError::Config(
            "at least one memory token is needed".into(),
        ));
    }
    let mem_ids = memory_ids(vocab, k);
    let mut b = PackedBatch {
        k,
        enc_ids: Vec::new(),
        enc_cu: vec![0],
        enc_mem: Vec::new(),
        dec_ids: Vec::new(),
        dec_cu: vec![0],
        dec_mem: Vec::new(),
        student_rows: Vec::new(),
        targets: Vec::new(),
        row_weights: Vec::new(),
        teacher: (objective == Objective::Kl).then(|| TeacherBatch {
            ids: Vec::new(),
            cu: vec![0],
            rows: Vec::new(),
        }),
        text_tokens: 0,
    };
    let mut total_targets = 0usize;
    for (i, s) in samples.iter().enumerate() {
        let t = s.ids.len();
        if let Some(&bad) = s.ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(CompressError::Config(format!(
                "passage {i}: token id {bad} is outside the base vocabulary of {vocab}"
            )));
        }
        let split = match (objective.splits(), s.split) {
            (false, _) => 0,
            (true, Some(sp)) if (1..t).contains(&sp) => sp,
            (true, sp) => {
                return Err(CompressError::Config(format!(
                    "passage {i} ({t} tokens): objective {objective} needs a split in 1..{t}, got {sp:?}"
                )));
            }
        };
        let (prefix, target) = if objective.splits() {
            (&s.ids[..split], &s.ids[split..])
        } else {
            (&s.ids[..], &s.ids[..])
        };
        if target.is_empty() {
            return Err(CompressError::Config(format!("passage {i} is empty")));
        }
        b.text_tokens += t;

        let m1 = push_encoder_input(&mut b.enc_ids, &mut b.enc_cu, bos, prefix, &mem_ids);
        b.enc_mem.push(m1);

        let dec_start = b.dec_ids.len();
        b.dec_ids.push(bos);
        b.dec_mem.push(dec_start + 1);
        b.dec_ids.extend(std::iter::repeat_n(0, k));
        b.dec_ids.extend_from_slice(&target[..target.len() - 1]);
        b.dec_cu.push(b.dec_ids.len() as u32);
        let l = target.len();
        for j in 0..l {
            b.student_rows.push(dec_start + k + j);
            b.targets.push(target[j] as i64);
        }
        total_targets += l;
        if objective == Objective::Kl {
            b.row_weights
                .extend(std::iter::repeat_n(1.0 / (l * samples.len()) as f32, l));
        }
        if let Some(tb) = b.teacher.as_mut() {
            let start = tb.ids.len();
            tb.ids.push(bos);
            tb.ids.extend_from_slice(&s.ids[..t - 1]);
            tb.cu.push(tb.ids.len() as u32);
            tb.rows.extend((0..l).map(|j| start + split + j));
        }
    }
    if objective != Objective::Kl {
        b.row_weights = vec![1.0 / total_targets as f32; total_targets];
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: usize = 50;

    #[test]
    fn rc_rows_predict_the_whole_text() {
        let s = [Sample {
            ids: vec![5, 6, 7],
            split: None,
        }];
        let b = pack(&s, Objective::Rc, 1, 2, V).unwrap();
        assert_eq!(b.enc_ids, vec![1, 5, 6, 7, 50, 51]);
        assert_eq!(b.enc_mem, vec![4]);
        // [BOS] m m 5 6: row 2 (last memory) predicts 5, rows 3, 4 predict 6, 7.
        assert_eq!(b.dec_ids, vec![1, 0, 0, 5, 6]);
        assert_eq!(b.dec_mem, vec![1]);
        assert_eq!(b.student_rows, vec![2, 3, 4]);
        assert_eq!(b.targets, vec![5, 6, 7]);
        assert!(b.teacher.is_none());
        assert_eq!(b.text_tokens, 3);
    }

    #[test]
    fn kl_teacher_rows_align_with_student_rows() {
        let ids: Vec<u32> = (10..16).collect(); // t_1..t_6
        let s = [
            Sample {
                ids: ids.clone(),
                split: Some(4),
            },
            Sample {
                ids: vec![20, 21, 22],
                split: Some(1),
            },
        ];
        let b = pack(&s, Objective::Kl, 1, 1, V).unwrap();
        // Passage 0: encoder [BOS] t1..t4 m; decoder [BOS] m t5; targets t5 t6.
        assert_eq!(&b.enc_ids[..6], &[1, 10, 11, 12, 13, 50]);
        assert_eq!(&b.dec_ids[..3], &[1, 0, 14]);
        assert_eq!(&b.targets[..2], &[14, 15]);
        assert_eq!(&b.student_rows[..2], &[1, 2]);
        let t = b.teacher.as_ref().unwrap();
        // Teacher [BOS] t1..t5: row 4 holds t4 and predicts t5.
        assert_eq!(&t.ids[..6], &[1, 10, 11, 12, 13, 14]);
        assert_eq!(&t.rows[..2], &[4, 5]);
        for (&r, &target) in t.rows.iter().zip(&b.targets) {
            let next = s
                .iter()
                .flat_map(|p| std::iter::once(1).chain(p.ids.iter().copied()));
            let _ = next;
            // The token after teacher row r is the target.
            let seq = t.cu.iter().rposition(|&c| c as usize <= r).unwrap();
            let local = r - t.cu[seq] as usize;
            assert_eq!(s[seq].ids[local] as i64, target);
        }
        // Passage 1: split 1, targets t2 t3; teacher rows 1, 2 of its sequence.
        assert_eq!(t.rows[2..], [t.cu[1] as usize + 1, t.cu[1] as usize + 2]);
        // Weights: mean over each passage's suffix, then over passages.
        let w: f32 = b.row_weights.iter().sum();
        assert!((w - 1.0).abs() < 1e-6);
        assert_eq!(b.row_weights[0], 0.25);
        assert_eq!(b.row_weights[2], 0.25);
    }

    #[test]
    fn nll_weights_are_a_token_mean_and_bad_input_is_refused() {
        let s = [
            Sample {
                ids: vec![3; 5],
                split: Some(2),
            },
            Sample {
                ids: vec![4; 3],
                split: Some(2),
            },
        ];
        let b = pack(&s, Objective::Nll, 1, 3, V).unwrap();
        assert_eq!(b.row_weights, vec![0.25; 4]);
        assert!(b.teacher.is_none());
        assert!(
            pack(
                &[Sample {
                    ids: vec![3; 5],
                    split: None
                }],
                Objective::Nll,
                1,
                3,
                V
            )
            .is_err()
        );
        assert!(
            pack(
                &[Sample {
                    ids: vec![3; 5],
                    split: Some(5)
                }],
                Objective::Kl,
                1,
                3,
                V
            )
            .is_err()
        );
        assert!(
            pack(
                &[Sample {
                    ids: vec![60],
                    split: None
                }],
                Objective::Rc,
                1,
                3,
                V
            )
            .is_err()
        );
        assert!(pack(&[], Objective::Rc, 1, 3, V).is_err());
        assert!(
            pack(
                &[Sample {
                    ids: vec![],
                    split: None
                }],
                Objective::Rc,
                1,
                3,
                V
            )
            .is_err()
        );
    }
}
