//! Token embeddings with extra trainable rows appended to the vocabulary:
//! ids below the base vocabulary read the (frozen, shared) table, ids
//! V..V+k read a separate small [k, hidden] tensor (LLM2Comp's memory
//! tokens). Keeping the k rows apart means training them never copies or
//! touches the V-row table the decoder also reads, and their gradient is a
//! [k, hidden] buffer rather than a [V + k, hidden] one.
//!
//! Beside a bf16 table on CUDA the extra rows may be f32 (a trainer's master
//! copy): lookups cast them to the table's dtype, their gradient is f32.
//!
//! A trained table on CUDA works the same way: an f32 `master` copy of the
//! table beside the bf16 one. Lookups gather from the master and cast the
//! gathered rows (never the whole table), the optimiser updates the master,
//! and the bf16 table stays the original, which the model's dtype, the
//! stage-1 decoder and a tied LM head keep reading.

use std::sync::Arc;

use llm2comp_tensor::ops::embedding;
use llm2comp_tensor::{DType, Result, Tensor, TensorError};

const OP: &str = "TokenEmbedding";

/// The base table [V, H] and optional extra rows [k, H] for ids V..V+k.
#[derive(Debug, Clone)]
pub struct TokenEmbedding {
    table: Arc<Tensor>,
    extra: Option<Tensor>,
    master: Option<Tensor>,
}

impl TokenEmbedding {
    /// A lookup over `table` [V, H] (f32, or bf16 on CUDA) without extra rows.
    pub fn new(table: Arc<Tensor>) -> Result<Self> {
        super::check_weight(OP, "table", &table)?;
        table.dims2(OP, "table [V, H]")?;
        Ok(Self {
            table,
            extra: None,
            master: None,
        })
    }

    /// The base table [V, H].
    pub fn table(&self) -> &Arc<Tensor> {
        &self.table
    }

    /// The base table, mutably (copied first if another model shares it).
    pub fn table_mut(&mut self) -> &mut Tensor {
        Arc::make_mut(&mut self.table)
    }

    /// Base vocabulary size V.
    pub fn base_vocab(&self) -> usize {
        self.table.shape()[0]
    }

    /// Width H.
    pub fn hidden(&self) -> usize {
        self.table.shape()[1]
    }

    /// The extra rows [k, H], if any.
    pub fn extra(&self) -> Option<&Tensor> {
        self.extra.as_ref()
    }

    /// The extra rows, mutably (an optimiser updates them in place).
    pub fn extra_mut(&mut self) -> Option<&mut Tensor> {
        self.extra.as_mut()
    }

    /// The table training updates, when `table` (the f32 master if one is
    /// kept, else the table, copied first if shared), and the extra rows,
    /// both mutably.
    pub fn parts_mut(&mut self, table: bool) -> (Option<&mut Tensor>, Option<&mut Tensor>) {
        let t = match (table, self.master.as_mut()) {
            (false, _) => None,
            (true, Some(m)) => Some(m),
            (true, None) => Some(Arc::make_mut(&mut self.table)),
        };
        (t, self.extra.as_mut())
    }

    /// The f32 master copy of the table that lookups read, if one is kept.
    pub fn master(&self) -> Option<&Tensor> {
        self.master.as_ref()
    }

    /// The table as trained: the master when one is kept, else the table
    /// (what an adapter that trains the whole table saves).
    pub fn trained_table(&self) -> &Tensor {
        self.master.as_ref().unwrap_or(&self.table)
    }

    /// Sets (or with `None` removes) the f32 master [V, H] of the table, on
    /// the table's device: lookups then read it, and an optimiser given
    /// [`Self::parts_mut`] updates it, while the table keeps its values.
    pub fn set_master(&mut self, master: Option<Tensor>) -> Result<()> {
        if let Some(m) = &master {
            m.expect_dtype(OP, "master table", DType::F32)?;
            m.expect_shape(OP, "master table", self.table.shape())?;
            if m.device() != self.table.device() {
                return Err(TensorError::Device {
                    op: OP,
                    expected: self.table.device(),
                    found: m.device(),
                });
            }
        }
        self.master = master;
        Ok(())
    }

    /// Sets (or with `None` removes) the extra rows [k, H] read for ids V..V+k
    /// (the table's dtype or f32, on its device).
    pub fn set_extra(&mut self, rows: Option<Tensor>) -> Result<()> {
        if let Some(r) = &rows {
            if r.dtype() != DType::F32 {
                r.expect_dtype(OP, "extra rows", self.table.dtype())?;
            }
            if r.device() != self.table.device() {
                return Err(TensorError::Device {
                    op: OP,
                    expected: self.table.device(),
                    found: r.device(),
                });
            }
            let (_, h) = r.dims2(OP, "extra rows [k, H]")?;
            if h != self.hidden() {
                return Err(TensorError::shape(
                    OP,
                    "extra rows",
                    format!("[k, {}]", self.hidden()),
                    r.shape(),
                ));
            }
        }
        self.extra = rows;
        Ok(())
    }

    /// Total ids accepted: V + k.
    pub fn vocab(&self) -> usize {
        self.base_vocab() + self.extra.as_ref().map_or(0, |e| e.shape()[0])
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let v = self.vocab();
        match ids.iter().position(|&i| i as usize >= v) {
            Some(p) => Err(TensorError::invalid(
                OP,
                format!(
                    "token id {} at position {p} is out of range: {} base ids + {} extra rows",
                    ids[p],
                    self.base_vocab(),
                    v - self.base_vocab()
                ),
            )),
            None => Ok(()),
        }
    }

    /// Base ids with extra ids replaced by 0, and the (position, extra row) of each extra id.
    fn split(&self, ids: &[u32]) -> (Vec<u32>, Vec<(usize, usize)>) {
        let v = self.base_vocab();
        let mut base = ids.to_vec();
        let mut extra = Vec::new();
        for (p, id) in base.iter_mut().enumerate() {
            if *id as usize >= v {
                extra.push((p, *id as usize - v));
                *id = 0;
            }
        }
        (base, extra)
    }

    /// out [ids.len(), H]: table rows for base ids, extra rows for ids ≥ V.
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        self.check_ids(ids)?;
        let (base, extra) = self.split(ids);
        let mut out = match &self.master {
            // Gathered in f32, then only these rows cast to the compute dtype.
            Some(m) => {
                super::in_dtype(&embedding::forward(&base, m)?, self.table.dtype())?.into_owned()
            }
            None => embedding::forward(&base, &self.table)?,
        };
        if let Some(rows) = &self.extra {
            let rows = super::in_dtype(rows, out.dtype())?;
            // Memory tokens come as runs (k consecutive positions reading rows
            // 0..k), so each run is one row-range copy, on whichever device.
            let mut i = 0;
            while i < extra.len() {
                let (p, r) = extra[i];
                let mut n = 1;
                while extra.get(i + n) == Some(&(p + n, r + n)) {
                    n += 1;
                }
                out.copy_rows(p, &rows, r, n)?;
                i += n;
            }
        }
        Ok(out)
    }

    /// Adds dout's rows into `dtable` [V, H] (base ids) and `dextra` [k, H]
    /// (extra ids) where given; a frozen part passes `None`.
    pub fn backward(
        &self,
        ids: &[u32],
        dout: &Tensor,
        dtable: Option<&mut Tensor>,
        dextra: Option<&mut Tensor>,
    ) -> Result<()> {
        self.check_ids(ids)?;
        let h = self.hidden();
        dout.expect_shape(OP, "dout", &[ids.len(), h])?;
        let (base, extra) = self.split(ids);
        if dout.device().is_cuda() {
            return self.backward_device(&base, &extra, dout, dtable, dextra);
        }
        if let Some(dt) = dtable {
            if extra.is_empty() {
                embedding::backward(&base, dout, dt)?;
            } else {
                // Rows of extra ids must not land on base row 0.
                let mut masked = dout.clone();
                let m = masked.f32s_mut(OP, "dout")?;
                for &(p, _) in &extra {
                    m[p * h..(p + 1) * h].fill(0.0);
                }
                embedding::backward(&base, &masked, dt)?;
            }
        }
        if let (Some(de), Some(rows)) = (dextra, &self.extra) {
            de.expect_shape(OP, "dextra", rows.shape())?;
            let src = dout.f32s(OP, "dout")?;
            let dst = de.f32s_mut(OP, "dextra")?;
            for (p, r) in extra {
                for (d, s) in dst[r * h..(r + 1) * h]
                    .iter_mut()
                    .zip(&src[p * h..(p + 1) * h])
                {
                    *d += s;
                }
            }
        }
        Ok(())
    }

    /// [`Self::backward`] with device ops (CUDA): the rows of dout are
    /// gathered by kind (base or extra id) and scattered into `dtable` and
    /// `dextra` by the embedding op, with no host round trip.
    fn backward_device(
        &self,
        base: &[u32],
        extra: &[(usize, usize)],
        dout: &Tensor,
        dtable: Option<&mut Tensor>,
        dextra: Option<&mut Tensor>,
    ) -> Result<()> {
        if let Some(dt) = dtable {
            dt.expect_shape(OP, "dtable", self.table.shape())?;
            if extra.is_empty() {
                embedding::backward(base, dout, dt)?;
            } else {
                // Only base ids' rows: an extra id's row must not land on row 0.
                let mut is_extra = vec![false; base.len()];
                extra.iter().for_each(|&(p, _)| is_extra[p] = true);
                let (positions, ids): (Vec<u32>, Vec<u32>) = base
                    .iter()
                    .enumerate()
                    .filter(|&(p, _)| !is_extra[p])
                    .map(|(p, &id)| (p as u32, id))
                    .unzip();
                if !positions.is_empty() {
                    let picked = embedding::forward(&positions, dout)?;
                    embedding::backward(&ids, &picked, dt)?;
                }
            }
        }
        if let (Some(de), Some(rows)) = (dextra, &self.extra)
            && !extra.is_empty()
        {
            de.expect_shape(OP, "dextra", rows.shape())?;
            let positions: Vec<u32> = extra.iter().map(|&(p, _)| p as u32).collect();
            let which: Vec<u32> = extra.iter().map(|&(_, r)| r as u32).collect();
            let picked = embedding::forward(&positions, dout)?;
            embedding::backward(&which, &picked, de)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llm2comp_tensor::{DType, Device};

    #[test]
    fn extra_rows_are_read_and_trained_apart_from_the_table() {
        let table = Tensor::from_vec((0..8).map(|v| v as f32).collect(), &[4, 2]).unwrap();
        let mut e = TokenEmbedding::new(Arc::new(table)).unwrap();
        e.set_extra(Some(
            Tensor::from_vec(vec![-1.0f32, -2.0, -3.0, -4.0], &[2, 2]).unwrap(),
        ))
        .unwrap();
        assert_eq!(e.vocab(), 6);
        let ids = [5, 1, 4, 5];
        let out = e.forward(&ids).unwrap();
        assert_eq!(out.to_vec_f32(), [-3., -4., 2., 3., -1., -2., -3., -4.]);
        let dout = Tensor::from_vec((1..=8).map(|v| v as f32).collect(), &[4, 2]).unwrap();
        let mut dt = Tensor::zeros(&[4, 2], DType::F32, Device::Cpu);
        let mut dx = Tensor::zeros(&[2, 2], DType::F32, Device::Cpu);
        e.backward(&ids, &dout, Some(&mut dt), Some(&mut dx))
            .unwrap();
        assert_eq!(dt.to_vec_f32(), [0., 0., 3., 4., 0., 0., 0., 0.]);
        assert_eq!(dx.to_vec_f32(), [5., 6., 1. + 7., 2. + 8.]);
        let err = e.forward(&[6]).unwrap_err().to_string();
        assert!(
            err.contains("token id 6") && err.contains("2 extra rows"),
            "{err}"
        );
        assert!(
            e.set_extra(Some(Tensor::zeros(&[1, 3], DType::F32, Device::Cpu)))
                .is_err()
        );
    }

    /// A master table is what lookups read and what training updates; the
    /// table keeps its values. The gradient skips extra ids' rows as without one.
    #[test]
    fn a_master_table_is_read_and_trained_in_place_of_the_table() {
        let table = Tensor::from_vec((0..8).map(|v| v as f32).collect(), &[4, 2]).unwrap();
        let mut e = TokenEmbedding::new(Arc::new(table)).unwrap();
        e.set_extra(Some(
            Tensor::from_vec(vec![-1.0f32, -2.0], &[1, 2]).unwrap(),
        ))
        .unwrap();
        let master = Tensor::from_vec((10..18).map(|v| v as f32).collect(), &[4, 2]).unwrap();
        e.set_master(Some(master)).unwrap();
        let out = e.forward(&[2, 4, 0]).unwrap();
        assert_eq!(out.to_vec_f32(), [14., 15., -1., -2., 10., 11.]);
        let dout = Tensor::from_vec((1..=6).map(|v| v as f32).collect(), &[3, 2]).unwrap();
        let mut dt = Tensor::zeros(&[4, 2], DType::F32, Device::Cpu);
        e.backward(&[2, 4, 0], &dout, Some(&mut dt), None).unwrap();
        assert_eq!(dt.to_vec_f32(), [5., 6., 0., 0., 1., 2., 0., 0.]);
        let (t, _) = e.parts_mut(true);
        t.unwrap().f32s_mut("test", "master").unwrap()[0] = 99.0;
        assert_eq!(e.trained_table().to_vec_f32()[0], 99.0);
        assert_eq!(e.table().to_vec_f32()[0], 0.0, "the table keeps its values");
        let bad = Tensor::zeros(&[3, 2], DType::F32, Device::Cpu);
        assert!(e.set_master(Some(bad)).is_err());
        let bad = Tensor::zeros(&[4, 2], DType::BF16, Device::Cpu);
        assert!(e.set_master(Some(bad)).is_err());
        e.set_master(None).unwrap();
        assert_eq!(e.forward(&[2]).unwrap().to_vec_f32(), [4., 5.]);
    }
}
