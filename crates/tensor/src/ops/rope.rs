//! Rotary position embedding of query/key heads. Kernels: `cpu/rope.rs`,
//! `cuda/rope.rs`. x is f32 on the CPU, f32 or bf16 on CUDA; the tables are f32.
//!
//! The cos/sin tables are built once per model on the host (in f64, then
//! stored as f32 tensors on the target device) and shared by every layer.
//! Positions are a host slice because they come from the batch packer on the
//! host; packed batches restart them at 0 for every sequence.

use crate::{DType, Device, Result, Tensor, TensorError, cpu, cuda};

pub use crate::shared::rope::{RopeConfig, RopeScaling, RopeTable};

const OP: &str = "rope";

fn check(x: &Tensor, what: &'static str, positions: &[u32], table: &RopeTable) -> Result<()> {
    let (tokens, _, d) = x.dims3(OP, what)?;
    if d != table.head_dim() {
        return Err(TensorError::shape(
            OP,
            what,
            format!(
                "[tokens, heads, {}] (the table's head_dim)",
                table.head_dim()
            ),
            x.shape(),
        ));
    }
    if positions.len() != tokens {
        return Err(TensorError::invalid(
            OP,
            format!(
                "{} positions for {tokens} tokens of {what}",
                positions.len()
            ),
        ));
    }
    if let Some((t, &p)) = positions
        .iter()
        .enumerate()
        .find(|&(_, &p)| p as usize >= table.max_positions())
    {
        return Err(TensorError::invalid(
            OP,
            format!(
                "position {p} of token {t} is beyond the table (max_positions {})",
                table.max_positions()
            ),
        ));
    }
    if x.device() == Device::Cpu {
        x.expect_dtype(OP, what, DType::F32)?;
    }
    if x.device() != table.device() {
        return Err(TensorError::Device {
            op: OP,
            expected: table.device(),
            found: x.device(),
        });
    }
    Ok(())
}

/// Rotates x in place (the CPU path, and CUDA's `_inplace` entry points).
fn rotate(x: &mut Tensor, positions: &[u32], table: &RopeTable, inverse: bool) -> Result<()> {
    let d = table.head_dim();
    match x.device() {
        Device::Cpu => {
            let cos = table.cos().f32s(OP, "cos table")?;
            let sin = table.sin().f32s(OP, "sin table")?;
            let x = x.f32s_mut(OP, "x")?;
            if inverse {
                cpu::rope::backward(x, d, positions, cos, sin);
            } else {
                cpu::rope::forward(x, d, positions, cos, sin);
            }
            Ok(())
        }
        Device::Cuda(_) => cuda::rope::rotate_inplace(x, positions, table, inverse),
    }
}

/// A rotated copy of x. On CUDA the kernel writes the copy directly (no
/// device-to-device clone first).
fn rotated(x: &Tensor, positions: &[u32], table: &RopeTable, inverse: bool) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => {
            let mut y = x.try_clone()?;
            rotate(&mut y, positions, table, inverse)?;
            Ok(y)
        }
        Device::Cuda(_) => cuda::rope::rotate(x, positions, table, inverse),
    }
}

/// Rotates x: [tokens, heads, head_dim] by the angles of each token's position.
pub fn forward(x: &Tensor, positions: &[u32], table: &RopeTable) -> Result<Tensor> {
    check(x, "x", positions, table)?;
    rotated(x, positions, table, false)
}

/// [`forward`] overwriting x (saves a copy when x is not needed afterwards).
pub fn forward_inplace(x: &mut Tensor, positions: &[u32], table: &RopeTable) -> Result<()> {
    check(x, "x", positions, table)?;
    rotate(x, positions, table, false)
}

/// dx from dy: the rotation by the negated angles.
pub fn backward(dy: &Tensor, positions: &[u32], table: &RopeTable) -> Result<Tensor> {
    check(dy, "dy", positions, table)?;
    rotated(dy, positions, table, true)
}

/// [`backward`] turning dy into dx in place.
pub fn backward_inplace(grad: &mut Tensor, positions: &[u32], table: &RopeTable) -> Result<()> {
    check(grad, "dy", positions, table)?;
    rotate(grad, positions, table, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(d: usize) -> RopeConfig {
        RopeConfig {
            head_dim: d,
            theta: 10_000.0,
            scaling: None,
        }
    }

    #[test]
    fn rejects_bad_configs() {
        let odd = RopeTable::new(&cfg(7), 8, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(odd.contains("rope") && odd.contains("even"), "{odd}");
        let theta = RopeTable::new(
            &RopeConfig {
                theta: f64::NAN,
                ..cfg(8)
            },
            8,
            Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(theta.contains("theta"), "{theta}");
        let bands = RopeTable::new(
            &RopeConfig {
                scaling: Some(RopeScaling {
                    factor: 8.0,
                    low_freq_factor: 4.0,
                    high_freq_factor: 1.0,
                    original_max_position_embeddings: 8192,
                }),
                ..cfg(8)
            },
            8,
            Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(bands.contains("high_freq_factor"), "{bands}");
    }

    #[test]
    fn rejects_positions_beyond_table_and_shape_mismatches() {
        let table = RopeTable::new(&cfg(8), 4, Device::Cpu).unwrap();
        let x = Tensor::zeros(&[3, 2, 8], DType::F32, Device::Cpu);
        let err = forward(&x, &[0, 1, 4], &table).unwrap_err().to_string();
        assert!(
            err.contains("position 4") && err.contains("max_positions 4"),
            "{err}"
        );
        let err = forward(&x, &[0, 1], &table).unwrap_err().to_string();
        assert!(err.contains("2 positions for 3 tokens"), "{err}");
        let wrong_d = Tensor::zeros(&[3, 2, 6], DType::F32, Device::Cpu);
        let err = backward(&wrong_d, &[0, 1, 2], &table)
            .unwrap_err()
            .to_string();
        assert!(err.contains("dy") && err.contains("head_dim"), "{err}");
        let bf = Tensor::zeros(&[3, 2, 8], DType::BF16, Device::Cpu);
        assert!(forward(&bf, &[0, 1, 2], &table).is_err());
        let rank2 = Tensor::zeros(&[3, 16], DType::F32, Device::Cpu);
        assert!(forward(&rank2, &[0, 1, 2], &table).is_err());
    }

    #[test]
    fn backward_undoes_forward_through_tensors() {
        let table = RopeTable::new(&cfg(6), 10, Device::Cpu).unwrap();
        let data: Vec<f32> = (0..2 * 3 * 6).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Tensor::from_vec(data.clone(), &[2, 3, 6]).unwrap();
        let y = forward(&x, &[9, 3], &table).unwrap();
        assert_ne!(y.to_vec_f32(), data);
        let back = backward(&y, &[9, 3], &table).unwrap().to_vec_f32();
        crate::testing::assert_close("rope round trip", &back, &data, 1e-6);
    }
}
