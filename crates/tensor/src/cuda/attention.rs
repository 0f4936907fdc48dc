//! Launchers for `kernels/attention.cu` (contract and algorithm in its header).
//!
//! Two kernel sets, picked per call by [`Kernel`]: the FlashAttention-2 MMA
//! kernels (bf16, head dim 64 or 128; the current v3, or v1, v2 for
//! comparison; on Hopper also the v4 wgmma forward of
//! `kernels/attention_sm90a.cu`, whose backward is v3's)
//! and the simple warp-per-row kernels
//! (bf16 or f32, head dim ≤ 256). The simple set is the slow, obviously correct
//! one: `LLM2COMP_ATTN_SIMPLE=1` forces it, so a wrong answer on a new card
//! can be pinned on the MMA code or not, and it also serves f32 tensors and
//! head dims the MMA kernels are not instantiated for.
//!
//! The host does the sequence bookkeeping: `cu_seqlens` becomes a table of
//! tiles (start, sequence start, sequence end; 128 query rows for the v2
//! forward, 64 rows otherwise), one CTA each, sorted
//! longest-work first so the causal tail does not run alone at the end.
//! Host tables and scratch (delta, the f32 dq accumulator) are dropped right
//! after the launches: the device's single stream orders the frees after the
//! kernels (see `cuda::alloc`).

use crate::cuda::{self, modules};
use crate::shared::attention::{
    AttentionGrads, AttentionKernel as Kernel, AttentionOpts, AttentionOut,
};
use crate::shared::dropout::keep_threshold;
use crate::{DType, Result, Tensor, TensorError};
use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
use cudarc::driver::{CudaFunction, PushKernelArg};

const OP: &str = "attention";
/// Rows per tile of the MMA kernels (query tiles of the v1 forward, key tiles backward).
const TILE: usize = 64;
/// Query rows per tile of the v2 forward (4 warps × 2 m-tiles of 16; `Fwd2Tile`).
const FWD2_ROWS: usize = 128;
/// Key rows per tile of the v2 forward (`Fwd2Tile::BC`).
const FWD2_KEYS: usize = 32;
/// Key rows per tile of the v3 backward (8 warps × 16 keys).
const BWD3_KEYS: usize = 128;
/// Largest head dimension of the simple kernels (8 values × 32 lanes).
const MAX_SIMPLE_D: usize = 256;
/// Threads per block of every attention kernel.
const THREADS: u32 = 128;

/// The kernel set that runs: `Auto` becomes MMA where it applies (bf16, D 64
/// or 128; the wgmma forward on Hopper) unless `LLM2COMP_ATTN_SIMPLE=1`, else
/// simple.
/// `hopper`: the device has compute capability 9.x (`CudaDevice::is_hopper`).
fn resolve(kernel: Kernel, dtype: DType, d: usize, hopper: bool) -> Result<Kernel> {
    let mma_fits = dtype == DType::BF16 && (d == 64 || d == 128);
    match kernel {
        Kernel::Auto if simple_forced() || !mma_fits => resolve(Kernel::Simple, dtype, d, hopper),
        // On Hopper the wgmma forward (its backward is v3's either way).
        Kernel::Auto if hopper => Ok(Kernel::Wgmma),
        Kernel::Auto => Ok(Kernel::Mma),
        Kernel::Wgmma | Kernel::WgmmaV4 if !hopper => Err(TensorError::invalid(
            OP,
            "the wgmma attention kernel needs a Hopper GPU (compute capability 9.x)".to_string(),
        )),
        Kernel::Mma | Kernel::MmaV1 | Kernel::MmaV2 | Kernel::Wgmma | Kernel::WgmmaV4
            if mma_fits =>
        {
            Ok(kernel)
        }
        Kernel::Mma | Kernel::MmaV1 | Kernel::MmaV2 | Kernel::Wgmma | Kernel::WgmmaV4 => {
            Err(TensorError::invalid(
                OP,
                format!("the MMA kernels need bf16 and head_dim 64 or 128, got {dtype:?} and {d}"),
            ))
        }
        Kernel::Simple if d <= MAX_SIMPLE_D => Ok(Kernel::Simple),
        Kernel::Simple => Err(TensorError::invalid(
            OP,
            format!("CUDA attention supports head_dim <= {MAX_SIMPLE_D}, got {d}"),
        )),
    }
}

fn simple_forced() -> bool {
    std::env::var("LLM2COMP_ATTN_SIMPLE").is_ok_and(|v| v == "1")
}

/// Geometry of a call, checked by `ops::attention`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub tokens: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Dropout as kernel arguments (seed, offset, keep threshold, 1/(1 − p), on),
/// and, with per-sequence keys, each sequence's keyed stream seed (the
/// kernels take them per tile or per sequence: [`DropArgs::seeds_arg`]).
struct DropArgs {
    seed: u64,
    offset: u64,
    thr: u64,
    inv_keep: f32,
    on: i32,
    seq_seeds: Option<Vec<u64>>,
}

impl DropArgs {
    /// `opts`' mask; its keys (already checked by `ops::attention` to match
    /// the call's `cu_seqlens`) become one seed per sequence, as
    /// `cpu::attention`'s `Dropper::at`.
    fn new(opts: &AttentionOpts) -> Self {
        match opts.dropout.as_ref().filter(|m| m.p > 0.0) {
            Some(m) => Self {
                seed: m.seed,
                offset: m.offset,
                thr: keep_threshold(m.p),
                // As the CPU's f32 path: 1/(1 − p) in f64, then rounded.
                inv_keep: (1.0 / (1.0 - m.p as f64)) as f32,
                on: 1,
                seq_seeds: m
                    .keys
                    .as_ref()
                    .map(|k| (0..k.keys().len()).map(|s| k.seed(m.seed, s)).collect()),
            },
            None => Self {
                seed: 0,
                offset: 0,
                thr: 0,
                inv_keep: 1.0,
                on: 0,
                seq_seeds: None,
            },
        }
    }

    /// The kernels' `seeds` argument: null without keys; else uploaded
    /// (kept alive in the returned buffer) per sequence (`tiles` None: the
    /// simple kernels) or per tile of the host's (start, seq_start, seq_end)
    /// table (the MMA kernels).
    fn seeds_arg(
        &self,
        dev: &std::sync::Arc<cuda::CudaDevice>,
        cu: &[u32],
        tiles: Option<&[i32]>,
    ) -> Result<(Option<cuda::DeviceBuffer>, u64)> {
        let Some(seq) = &self.seq_seeds else {
            return Ok((None, 0));
        };
        let seeds: Vec<u64> = match tiles {
            None => seq.clone(),
            Some(t) => t
                .chunks(3)
                .map(|tile| seq[seq_of(cu, tile[1] as u32)])
                .collect(),
        };
        let buf = dev.upload(&seeds)?;
        let ptr = buf.ptr();
        Ok((Some(buf), ptr))
    }
}

/// The sequence whose rows start at `s0` and are not empty: the last b with
/// cu[b] <= s0 (empty sequences before it share its start).
fn seq_of(cu: &[u32], s0: u32) -> usize {
    cu.partition_point(|&c| c <= s0) - 1
}

/// Elements are bf16 or f32 and all tensors of a call share the dtype.
fn element_dtype(ts: &[(&'static str, &Tensor)]) -> Result<DType> {
    let dtype = ts[0].1.dtype();
    if !matches!(dtype, DType::BF16 | DType::F32) {
        return Err(TensorError::DType {
            op: OP,
            what: ts[0].0,
            expected: DType::BF16,
            found: dtype,
        });
    }
    for &(what, t) in ts {
        t.expect_dtype(OP, what, dtype)?;
    }
    Ok(dtype)
}

/// The tile table (start, seq_start, seq_end) of `rows`-row tiles, heaviest
/// first. `work` gives a tile's cost from (start, seq_start, seq_end).
fn tile_table(cu: &[u32], rows: usize, work: impl Fn(usize, usize, usize) -> usize) -> Vec<i32> {
    let mut tiles = Vec::new();
    for w in cu.windows(2) {
        let (s0, s1) = (w[0] as usize, w[1] as usize);
        tiles.extend((s0..s1).step_by(rows).map(|t| (t, s0, s1)));
    }
    tiles.sort_by_key(|&(t, s0, s1)| std::cmp::Reverse(work(t, s0, s1)));
    tiles
        .into_iter()
        .flat_map(|(t, s0, s1)| [t as i32, s0 as i32, s1 as i32])
        .collect()
}

fn cu_i32(cu: &[u32]) -> Vec<i32> {
    cu.iter().map(|&x| x as i32).collect()
}

/// Query rows per backward query tile of the MMA kernel (mirrors `BwdTile`).
fn bwd_rows(d: usize) -> usize {
    if d == 128 { 32 } else { 64 }
}

/// v1: K, V [64][D+8] bf16.
fn fwd_smem_v1(d: usize) -> u32 {
    (2 * TILE * (d + 8) * 2) as u32
}

/// v2: Q [128][D+8], K, V [32][D+8] bf16.
fn fwd_smem_v2(d: usize) -> u32 {
    ((FWD2_ROWS + 2 * FWD2_KEYS) * (d + 8) * 2) as u32
}

/// v4 (wgmma): two stages of K and V [64][D] bf16 (swizzled, unpadded), plus
/// 1024 bytes to align the window to the swizzle's 1024-byte period.
fn fwd_smem_v4(d: usize) -> u32 {
    (2 * 2 * TILE * d * 2 + 1024) as u32
}

/// v5 (wgmma, pipelined): three stages of K and V [64][D], plus the slack.
fn fwd_smem_v5(d: usize) -> u32 {
    (3 * 2 * TILE * d * 2 + 1024) as u32
}

/// The forward kernel of a version: (module, name, query rows per tile, shared
/// bytes). v3 is v1's layout with the fused exponent: v2's 128-row tiles were
/// not faster on the H100 (docs/kernels.md).
fn fwd_kernel(kernel: Kernel, d: usize) -> (&'static modules::Module, String, usize, u32) {
    match kernel {
        Kernel::Wgmma => {
            return (
                &modules::ATTENTION_SM90A,
                format!("attention_fwd_wgmma_pipe_d{d}"),
                TILE,
                fwd_smem_v5(d),
            );
        }
        Kernel::WgmmaV4 => {
            return (
                &modules::ATTENTION_SM90A,
                format!("attention_fwd_wgmma_d{d}"),
                TILE,
                fwd_smem_v4(d),
            );
        }
        _ => {}
    }
    let (name, rows, smem) = match kernel {
        Kernel::MmaV1 => (format!("attention_fwd_mma_v1_d{d}"), TILE, fwd_smem_v1(d)),
        Kernel::MmaV2 => (
            format!("attention_fwd_mma_v2_d{d}"),
            FWD2_ROWS,
            fwd_smem_v2(d),
        ),
        _ => (format!("attention_fwd_mma_d{d}"), TILE, fwd_smem_v1(d)),
    };
    (&modules::ATTENTION, name, rows, smem)
}

/// K, V [keys][D+8]; `buffers` × (Q, dO [BR][D+8]); dS [BR][keys+8] bf16;
/// `buffers` × (lse, delta [BR]) f32. v2 and v3 double-buffer (2), v1 does not.
fn bwd_smem(d: usize, keys: usize, buffers: usize) -> u32 {
    let br = bwd_rows(d);
    ((2 * keys * (d + 8) + buffers * 2 * br * (d + 8) + br * (keys + 8)) * 2 + buffers * 2 * br * 4)
        as u32
}

/// The backward kernel of a version: (name, keys per tile, threads, shared bytes).
fn bwd_kernel(kernel: Kernel, d: usize) -> (String, usize, u32, u32) {
    match kernel {
        Kernel::MmaV1 => (
            format!("attention_bwd_mma_v1_d{d}"),
            TILE,
            THREADS,
            bwd_smem(d, TILE, 1),
        ),
        Kernel::MmaV2 => (
            format!("attention_bwd_mma_v2_d{d}"),
            TILE,
            THREADS,
            bwd_smem(d, TILE, 2),
        ),
        _ => (
            format!("attention_bwd_mma_d{d}"),
            BWD3_KEYS,
            2 * BWD3_KEYS as u32,
            bwd_smem(d, BWD3_KEYS, 2),
        ),
    }
}

/// Allows `bytes` of dynamic shared memory (beyond the default 48 KiB).
fn allow_smem(f: &CudaFunction, bytes: u32) -> Result<()> {
    f.set_attribute(
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .map_err(cuda::launch_err(OP))
}

/// Blocks of [`THREADS`] for one warp per row.
fn warp_grid(rows: usize) -> u32 {
    (rows * 32).div_ceil(THREADS as usize) as u32
}

fn suffix(dtype: DType) -> &'static str {
    if dtype == DType::BF16 { "bf16" } else { "f32" }
}

fn check_tokens(t: usize) -> Result<()> {
    if t > i32::MAX as usize {
        return Err(TensorError::invalid(
            OP,
            format!("{t} tokens exceed the CUDA kernels' i32 indices"),
        ));
    }
    Ok(())
}

/// Forward on CUDA: o [T, Hq, D] in q's dtype, lse [Hq, T] f32.
pub(crate) fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &[u32],
    opts: &AttentionOpts,
    dims: Dims,
    kernel: Kernel,
) -> Result<AttentionOut> {
    let dtype = element_dtype(&[("q", q), ("k", k), ("v", v)])?;
    let Dims {
        tokens: t,
        q_heads: hq,
        kv_heads: hkv,
        head_dim: d,
    } = dims;
    check_tokens(t)?;
    let dev = q.cuda_device(OP, "q")?;
    let kernel = resolve(kernel, dtype, d, dev.is_hopper())?;
    let o = Tensor::empty(q.shape(), dtype, q.device())?;
    let lse = Tensor::empty(&[hq, t], DType::F32, q.device())?;
    if t == 0 {
        return Ok(AttentionOut { o, lse });
    }
    let drop = DropArgs::new(opts);
    let (qp, kp, vp) = (
        q.cuda_ptr(OP, "q")?,
        k.cuda_ptr(OP, "k")?,
        v.cuda_ptr(OP, "v")?,
    );
    let (op, lp) = (o.cuda_ptr(OP, "o")?, lse.cuda_ptr(OP, "lse")?);
    let (t32, hq32, hkv32, d32) = (t as i32, hq as i32, hkv as i32, d as i32);
    let causal = opts.causal as i32;
    match kernel {
        Kernel::Mma | Kernel::MmaV1 | Kernel::MmaV2 | Kernel::Wgmma | Kernel::WgmmaV4 => {
            let causal_b = opts.causal;
            let (module, name, rows, smem) = fwd_kernel(kernel, d);
            let tiles = tile_table(cu_seqlens, rows, |t0, s0, s1| {
                if causal_b { t0 + rows - s0 } else { s1 - s0 }
            });
            let n_tiles = (tiles.len() / 3) as u32;
            let tiles_buf = dev.upload(&tiles)?;
            let tp = tiles_buf.ptr();
            let (_seeds_buf, sp) = drop.seeds_arg(&dev, cu_seqlens, Some(&tiles))?;
            let f = dev.function(module, &name)?;
            allow_smem(&f, smem)?;
            let scale_log2 = opts.scale * std::f32::consts::LOG2_E;
            let mut b = dev.stream().launch_builder(&f);
            b.arg(&qp).arg(&kp).arg(&vp).arg(&op).arg(&lp).arg(&tp);
            b.arg(&t32)
                .arg(&hq32)
                .arg(&hkv32)
                .arg(&scale_log2)
                .arg(&causal);
            b.arg(&drop.seed).arg(&drop.offset).arg(&drop.thr);
            b.arg(&drop.inv_keep).arg(&drop.on).arg(&sp);
            unsafe { b.launch(cuda::cfg((n_tiles, hq as u32, 1), THREADS, smem)) }
                .map_err(cuda::launch_err(OP))?;
        }
        Kernel::Simple | Kernel::Auto => {
            let cu = dev.upload(&cu_i32(cu_seqlens))?;
            let (_seeds_buf, sp) = drop.seeds_arg(&dev, cu_seqlens, None)?;
            let (cp, nseq) = (cu.ptr(), (cu_seqlens.len() - 1) as i32);
            let name = format!("attention_fwd_simple_{}", suffix(dtype));
            let f = dev.function(&modules::ATTENTION, &name)?;
            let mut b = dev.stream().launch_builder(&f);
            b.arg(&qp)
                .arg(&kp)
                .arg(&vp)
                .arg(&op)
                .arg(&lp)
                .arg(&cp)
                .arg(&nseq);
            b.arg(&t32)
                .arg(&hq32)
                .arg(&hkv32)
                .arg(&d32)
                .arg(&opts.scale)
                .arg(&causal);
            b.arg(&drop.seed).arg(&drop.offset).arg(&drop.thr);
            b.arg(&drop.inv_keep).arg(&drop.on).arg(&sp);
            unsafe { b.launch(cuda::cfg(warp_grid(t * hq), THREADS, 0)) }
                .map_err(cuda::launch_err(OP))?;
        }
    }
    Ok(AttentionOut { o, lse })
}

/// Backward on CUDA: dq, dk, dv in q's dtype.
pub(crate) fn backward(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    cu_seqlens: &[u32],
    opts: &AttentionOpts,
    dims: Dims,
    kernel: Kernel,
) -> Result<AttentionGrads> {
    let dtype = element_dtype(&[("q", q), ("k", k), ("v", v), ("dout", dout), ("o", o)])?;
    lse.expect_dtype(OP, "lse", DType::F32)?;
    let Dims {
        tokens: t,
        q_heads: hq,
        kv_heads: hkv,
        head_dim: d,
    } = dims;
    check_tokens(t)?;
    let dev = q.cuda_device(OP, "q")?;
    // v4 and v5 are forward kernels: their backward is v3's.
    let kernel = match resolve(kernel, dtype, d, dev.is_hopper())? {
        Kernel::Wgmma | Kernel::WgmmaV4 => Kernel::Mma,
        k => k,
    };
    let dev_of = q.device();
    let dk = Tensor::empty(k.shape(), dtype, dev_of)?;
    let dv = Tensor::empty(v.shape(), dtype, dev_of)?;
    if t == 0 {
        let dq = Tensor::empty(q.shape(), dtype, dev_of)?;
        return Ok(AttentionGrads { dq, dk, dv });
    }
    let drop = DropArgs::new(opts);
    let ptr = |x: &Tensor, what| x.cuda_ptr(OP, what);
    let (qp, kp, vp) = (ptr(q, "q")?, ptr(k, "k")?, ptr(v, "v")?);
    let (dop, opp, lp) = (ptr(dout, "dout")?, ptr(o, "o")?, ptr(lse, "lse")?);
    let (dkp, dvp) = (ptr(&dk, "dk")?, ptr(&dv, "dv")?);
    let (t32, hq32, hkv32, d32) = (t as i32, hq as i32, hkv as i32, d as i32);
    let causal = opts.causal as i32;

    // delta = rowsum(dO ∘ O), shared by both kernel sets.
    let delta = Tensor::empty(&[hq, t], DType::F32, dev_of)?;
    let deltap = ptr(&delta, "delta")?;
    let f = dev.function(
        &modules::ATTENTION,
        &format!("attention_bwd_delta_{}", suffix(dtype)),
    )?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&dop)
        .arg(&opp)
        .arg(&deltap)
        .arg(&t32)
        .arg(&hq32)
        .arg(&d32);
    unsafe { b.launch(cuda::cfg(warp_grid(t * hq), THREADS, 0)) }.map_err(cuda::launch_err(OP))?;

    let dq = match kernel {
        Kernel::Mma | Kernel::MmaV1 | Kernel::MmaV2 | Kernel::Wgmma | Kernel::WgmmaV4 => {
            let causal_b = opts.causal;
            let (name, keys, threads, smem) = bwd_kernel(kernel, d);
            let tiles = tile_table(
                cu_seqlens,
                keys,
                |k0, s0, s1| {
                    if causal_b { s1 - k0 } else { s1 - s0 }
                },
            );
            let n_tiles = (tiles.len() / 3) as u32;
            let tiles_buf = dev.upload(&tiles)?;
            let tp = tiles_buf.ptr();
            let (_seeds_buf, sp) = drop.seeds_arg(&dev, cu_seqlens, Some(&tiles))?;
            let acc = Tensor::try_zeros(q.shape(), DType::F32, dev_of)?;
            let accp = ptr(&acc, "dq accumulator")?;

            let f = dev.function(&modules::ATTENTION, &name)?;
            allow_smem(&f, smem)?;
            let scale_log2 = opts.scale * std::f32::consts::LOG2_E;
            let mut b = dev.stream().launch_builder(&f);
            b.arg(&qp)
                .arg(&kp)
                .arg(&vp)
                .arg(&dop)
                .arg(&lp)
                .arg(&deltap)
                .arg(&accp);
            b.arg(&dkp)
                .arg(&dvp)
                .arg(&tp)
                .arg(&t32)
                .arg(&hq32)
                .arg(&hkv32);
            b.arg(&opts.scale).arg(&scale_log2).arg(&causal);
            b.arg(&drop.seed).arg(&drop.offset).arg(&drop.thr);
            b.arg(&drop.inv_keep).arg(&drop.on).arg(&sp);
            unsafe { b.launch(cuda::cfg((n_tiles, hkv as u32, 1), threads, smem)) }
                .map_err(cuda::launch_err(OP))?;

            let dq = Tensor::empty(q.shape(), dtype, dev_of)?;
            let dqp = ptr(&dq, "dq")?;
            let n = acc.numel() as i64;
            let f = dev.function(&modules::ATTENTION, "attention_dq_cast_bf16")?;
            let mut b = dev.stream().launch_builder(&f);
            b.arg(&accp).arg(&dqp).arg(&n);
            let blocks = (acc.numel().div_ceil(THREADS as usize)).min(65_535) as u32;
            unsafe { b.launch(cuda::cfg(blocks, THREADS, 0)) }.map_err(cuda::launch_err(OP))?;
            dq
        }
        Kernel::Simple | Kernel::Auto => {
            let cu = dev.upload(&cu_i32(cu_seqlens))?;
            let (_seeds_buf, sp) = drop.seeds_arg(&dev, cu_seqlens, None)?;
            let (cp, nseq) = (cu.ptr(), (cu_seqlens.len() - 1) as i32);
            let dq = Tensor::empty(q.shape(), dtype, dev_of)?;
            let dqp = ptr(&dq, "dq")?;
            let sfx = suffix(dtype);
            let f = dev.function(
                &modules::ATTENTION,
                &format!("attention_bwd_simple_dq_{sfx}"),
            )?;
            let mut b = dev.stream().launch_builder(&f);
            b.arg(&qp)
                .arg(&kp)
                .arg(&vp)
                .arg(&dop)
                .arg(&lp)
                .arg(&deltap)
                .arg(&dqp);
            b.arg(&cp)
                .arg(&nseq)
                .arg(&t32)
                .arg(&hq32)
                .arg(&hkv32)
                .arg(&d32);
            b.arg(&opts.scale).arg(&causal);
            b.arg(&drop.seed).arg(&drop.offset).arg(&drop.thr);
            b.arg(&drop.inv_keep).arg(&drop.on).arg(&sp);
            unsafe { b.launch(cuda::cfg(warp_grid(t * hq), THREADS, 0)) }
                .map_err(cuda::launch_err(OP))?;
            let f = dev.function(
                &modules::ATTENTION,
                &format!("attention_bwd_simple_dkv_{sfx}"),
            )?;
            let mut b = dev.stream().launch_builder(&f);
            b.arg(&qp)
                .arg(&kp)
                .arg(&vp)
                .arg(&dop)
                .arg(&lp)
                .arg(&deltap)
                .arg(&dkp)
                .arg(&dvp);
            b.arg(&cp)
                .arg(&nseq)
                .arg(&t32)
                .arg(&hq32)
                .arg(&hkv32)
                .arg(&d32);
            b.arg(&opts.scale).arg(&causal);
            b.arg(&drop.seed).arg(&drop.offset).arg(&drop.thr);
            b.arg(&drop.inv_keep).arg(&drop.on).arg(&sp);
            unsafe { b.launch(cuda::cfg(warp_grid(t * hkv), THREADS, 0)) }
                .map_err(cuda::launch_err(OP))?;
            dq
        }
    };
    Ok(AttentionGrads { dq, dk, dv })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_table_covers_every_sequence_heaviest_first() {
        let cu = [0u32, 1, 1, 130, 200];
        let t = tile_table(&cu, TILE, |t0, s0, _| t0 + TILE - s0);
        let tiles: Vec<[i32; 3]> = t.chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
        let mut sorted = tiles.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            vec![
                [0, 0, 1],
                [1, 1, 130],
                [65, 1, 130],
                [129, 1, 130],
                [130, 130, 200],
                [194, 130, 200],
            ]
        );
        // Work t0 + 64 − s0 decreases along the table.
        let work: Vec<i32> = tiles.iter().map(|x| x[0] + 64 - x[1]).collect();
        assert!(work.windows(2).all(|w| w[0] >= w[1]), "{work:?}");
    }

    #[test]
    fn shared_memory_sizes_mirror_the_kernels() {
        // v1 forward: K, V [64][D+8] bf16; v2 forward: Q [128][D+8], K, V [32][D+8].
        assert_eq!(fwd_smem_v1(128), 34_816);
        assert_eq!(fwd_smem_v2(128), 52_224);
        assert_eq!(fwd_smem_v2(64), 27_648);
        // Backward: K, V [keys][D+8]; Q, dO [BR][D+8], dS [BR][keys+8], lse,
        // delta, once (v1) or twice (v2, v3).
        assert_eq!(bwd_smem(128, 64, 1), 57_088);
        assert_eq!(bwd_smem(64, 64, 1), 46_592);
        assert_eq!(bwd_smem(128, 64, 2), 57_088 + 2 * 32 * 136 * 2 + 2 * 32 * 4);
        assert_eq!(bwd_smem(64, 64, 2), 46_592 + 2 * 64 * 72 * 2 + 2 * 64 * 4);
        // v3 at D = 128: K, V [128][136], 2 × Q, dO [32][136], dS [32][136].
        let v3 = (2 * 128 * 136 + 2 * 2 * 32 * 136 + 32 * 136) * 2 + 2 * 2 * 32 * 4;
        assert_eq!(bwd_smem(128, 128, 2), v3 as u32);
        assert_eq!(bwd_kernel(Kernel::Mma, 128).3, v3 as u32);
        assert_eq!(bwd_kernel(Kernel::Mma, 128).2, 256);
    }

    #[test]
    fn kernel_choice_follows_dtype_and_head_dim() {
        if simple_forced() {
            crate::testing::report_skip("LLM2COMP_ATTN_SIMPLE=1 forces the simple kernels");
            return;
        }
        assert_eq!(
            resolve(Kernel::Auto, DType::BF16, 128, false).unwrap(),
            Kernel::Mma
        );
        assert_eq!(
            resolve(Kernel::Auto, DType::BF16, 96, false).unwrap(),
            Kernel::Simple
        );
        assert_eq!(
            resolve(Kernel::Auto, DType::F32, 64, false).unwrap(),
            Kernel::Simple
        );
        assert!(resolve(Kernel::Mma, DType::F32, 64, false).is_err());
        assert!(resolve(Kernel::MmaV1, DType::F32, 64, false).is_err());
        assert!(resolve(Kernel::MmaV2, DType::BF16, 96, false).is_err());
        assert_eq!(
            resolve(Kernel::MmaV1, DType::BF16, 64, false).unwrap(),
            Kernel::MmaV1
        );
        assert!(resolve(Kernel::Simple, DType::BF16, 264, false).is_err());
        assert_eq!(
            resolve(Kernel::Auto, DType::BF16, 64, true).unwrap(),
            Kernel::Wgmma
        );
        assert_eq!(
            resolve(Kernel::Auto, DType::F32, 64, true).unwrap(),
            Kernel::Simple
        );
        // The wgmma forward: Hopper only, and only where the MMA kernels fit.
        let e = resolve(Kernel::Wgmma, DType::BF16, 128, false).unwrap_err();
        assert!(e.to_string().contains("Hopper"), "{e}");
        assert_eq!(
            resolve(Kernel::Wgmma, DType::BF16, 64, true).unwrap(),
            Kernel::Wgmma
        );
        assert!(resolve(Kernel::Wgmma, DType::F32, 64, true).is_err());
        assert!(resolve(Kernel::Wgmma, DType::BF16, 96, true).is_err());
    }

    /// v4's window: 2 stages × (K, V) × 64 × D bf16 + the 1024-byte alignment
    /// slack; v5's three stages.
    #[test]
    fn wgmma_forward_shared_memory() {
        assert_eq!(fwd_smem_v4(128), 2 * 2 * 64 * 128 * 2 + 1024);
        assert_eq!(
            fwd_kernel(Kernel::WgmmaV4, 64).3,
            2 * 2 * 64 * 64 * 2 + 1024
        );
        assert_eq!(
            fwd_kernel(Kernel::WgmmaV4, 128).1,
            "attention_fwd_wgmma_d128"
        );
        assert_eq!(
            fwd_kernel(Kernel::Wgmma, 128).3,
            3 * 2 * 64 * 128 * 2 + 1024
        );
        assert_eq!(
            fwd_kernel(Kernel::Wgmma, 64).1,
            "attention_fwd_wgmma_pipe_d64"
        );
        // Two v5 CTAs fit one SM's 227 KiB at D = 128.
        assert!(2 * fwd_smem_v5(128) <= 227 * 1024);
    }
}
