//! Moving a model to a device and compute dtype.
//!
//! Every frozen matrix (embedding table, projections, biases, LM head) takes
//! the compute dtype, so the GEMMs see one dtype; norm weights stay f32
//! because the CUDA rmsnorm reads an f32 weight beside bf16 activations, and
//! keeping them exact costs nothing. The copy is built tensor by tensor (cast
//! on the device after an f32 upload, so a large model needs no host-side
//! bf16 pass), and the result holds one copy of each base weight: a tied LM
//! head stays the embedding table. The source model is untouched; a caller
//! that only wants the device copy drops it.
//!
//! The trainable tensors, LoRA adapters and extra embedding rows, move as
//! f32: an optimiser updates those master copies, and the layers cast them to
//! the compute dtype where they are used (mixed-precision training). For
//! inference alone, merging the adapter first is faster.

use std::sync::Arc;

use llm2comp_tensor::{DType, Device, Result, Tensor, TensorError};

use super::attention::Attention;
use super::block::Block;
use super::linear::Linear;
use super::mlp::Mlp;
use super::rmsnorm::RmsNorm;
use super::transformer::Transformer;

const OP: &str = "Transformer::to_device";

/// `t` on `device` as `dtype`; a narrowing cast runs on the device after the upload.
fn moved(t: &Tensor, device: Device, dtype: DType) -> Result<Tensor> {
    if t.device() == device {
        return t.try_to_dtype(dtype);
    }
    match device {
        Device::Cuda(_) if t.device() == Device::Cpu => {
            let d = t.to_device(device)?;
            if d.dtype() == dtype {
                Ok(d)
            } else {
                d.try_to_dtype(dtype)
            }
        }
        _ => t.to_device(device)?.try_to_dtype(dtype),
    }
}

fn linear(l: &Linear, device: Device, dtype: DType) -> Result<Linear> {
    let w = Arc::new(moved(l.weight(), device, dtype)?);
    let b = match l.bias() {
        Some(b) => Some(Arc::new(moved(b, device, dtype)?)),
        None => None,
    };
    let mut out = Linear::shared(w, b)?;
    if let Some(l) = l.lora() {
        // Adapters stay f32 (an optimiser's master copies); the side path
        // casts them to the activations' dtype where it uses them.
        let mut lora = l.clone();
        lora.a = moved(&l.a, device, DType::F32)?;
        lora.b = moved(&l.b, device, DType::F32)?;
        out.set_lora(lora)?;
    }
    Ok(out)
}

fn norm(n: &RmsNorm, device: Device) -> Result<RmsNorm> {
    RmsNorm::new(Arc::new(moved(n.weight(), device, DType::F32)?), n.eps())
}

impl Transformer {
    /// A copy of the model on `device` computing in `dtype` (f32 anywhere;
    /// bf16 on CUDA only). Errors, without panicking, when the device is
    /// unavailable, the dtype unsupported there, or an adapter is attached.
    pub fn to_device(&self, device: Device, dtype: DType) -> Result<Transformer> {
        match (device, dtype) {
            (_, DType::F32) | (Device::Cuda(_), DType::BF16) => {}
            _ => {
                return Err(TensorError::invalid(
                    OP,
                    format!("{dtype} on {device}: the CPU computes in f32, CUDA in f32 or bf16"),
                ));
            }
        }
        device.check()?;
        let c = self.config();
        let embedding = Arc::new(moved(self.embedding().table(), device, dtype)?);
        let mut blocks = Vec::with_capacity(self.blocks().len());
        for b in self.blocks() {
            let a = &b.attn;
            blocks.push(Block {
                attn_norm: norm(&b.attn_norm, device)?,
                attn: Attention::new(
                    linear(&a.q, device, dtype)?,
                    linear(&a.k, device, dtype)?,
                    linear(&a.v, device, dtype)?,
                    linear(&a.o, device, dtype)?,
                    c.num_heads,
                    c.num_kv_heads,
                    c.head_dim,
                )?,
                mlp_norm: norm(&b.mlp_norm, device)?,
                mlp: Mlp {
                    gate: linear(&b.mlp.gate, device, dtype)?,
                    up: linear(&b.mlp.up, device, dtype)?,
                    down: linear(&b.mlp.down, device, dtype)?,
                },
            });
        }
        let lm_head = if self.is_tied() {
            None
        } else {
            Some(Arc::new(moved(self.lm_head(), device, dtype)?))
        };
        let mut out = Transformer::from_parts(
            c.clone(),
            embedding,
            blocks,
            norm(self.final_norm(), device)?,
            lm_head,
        )?;
        if let Some(rows) = self.embedding().extra() {
            // Trainable like the adapters: f32, cast per lookup.
            out.set_extra_rows(Some(moved(rows, device, DType::F32)?))?;
        }
        if let Some(m) = self.embedding().master() {
            out.embedding_mut()
                .set_master(Some(moved(m, device, DType::F32)?))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::transformer::Input;
    use crate::layers::{Pass, lora::LoraConfig};

    /// Without a GPU the CPU is the only target, so what runs here is the
    /// copy itself (every weight, extra rows, untied head) and the refusals;
    /// the CUDA run is `scripts/gpu-check.sh`'s embed step.
    #[test]
    fn a_cpu_copy_computes_the_same_and_bad_targets_are_errors() {
        let cfg = crate::layers::transformer::tests::tiny_config("Qwen2ForCausalLM");
        let mut m = Transformer::random(&cfg, 5).unwrap();
        let h = cfg.hidden_size;
        let rows =
            Tensor::from_vec(crate::layers::uniform_from_seed(9, 2 * h, 1.0), &[2, h]).unwrap();
        m.set_extra_rows(Some(rows)).unwrap();
        let v = cfg.vocab_size as u32;
        let ids = [1, 2, v, v + 1, 3, v + 1];
        let cu = [0, 4, 6];
        let want = m.infer(Input::Ids(&ids), &cu, &Pass::causal()).unwrap();
        let c = m.to_device(Device::Cpu, DType::F32).unwrap();
        assert!(!Arc::ptr_eq(c.embedding().table(), m.embedding().table()));
        assert_eq!(c.is_tied(), m.is_tied());
        let got = c.infer(Input::Ids(&ids), &cu, &Pass::causal()).unwrap();
        assert_eq!(got.to_vec_f32(), want.to_vec_f32());

        let e = m
            .to_device(Device::Cpu, DType::BF16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bf16") || e.contains("BF16"), "{e}");
        // Adapters travel (as f32 masters): a copy with a non-zero LoRA path
        // computes what the original does, and the adapter is its own copy.
        m.add_lora(&LoraConfig::llm2comp(), 1).unwrap();
        for b in m.blocks_mut() {
            let l = b.attn.v.lora_mut().unwrap();
            let n = l.b.numel();
            l.b =
                Tensor::from_vec(crate::layers::uniform_from_seed(3, n, 0.5), l.b.shape()).unwrap();
        }
        let pass = Pass::causal().with_lora(true);
        let want = m.infer(Input::Ids(&ids), &cu, &pass).unwrap();
        let c = m.to_device(Device::Cpu, DType::F32).unwrap();
        let got = c.infer(Input::Ids(&ids), &cu, &pass).unwrap();
        assert_eq!(got.to_vec_f32(), want.to_vec_f32());
        let (a0, a1) = (
            &m.blocks()[0].attn.v.lora().unwrap().a,
            &c.blocks()[0].attn.v.lora().unwrap().a,
        );
        assert_eq!(a0.to_vec_f32(), a1.to_vec_f32());
        let base = m.infer(Input::Ids(&ids), &cu, &Pass::causal()).unwrap();
        assert_ne!(base.to_vec_f32(), want.to_vec_f32(), "the side path ran");
    }

    /// A CUDA target on a machine without one is an error naming the problem.
    #[test]
    fn cuda_without_a_device_is_an_error_not_a_panic() {
        if llm2comp_tensor::cuda::device_count() > 0 {
            llm2comp_tensor::testing::report_skip(
                "a CUDA device is present: the no-device error path cannot be exercised",
            );
            return;
        }
        let cfg = crate::layers::transformer::tests::tiny_config("LlamaForCausalLM");
        let m = Transformer::random(&cfg, 5).unwrap();
        let e = m
            .to_device(Device::Cuda(0), DType::BF16)
            .unwrap_err()
            .to_string();
        assert!(e.to_lowercase().contains("cuda"), "{e}");
    }
}
