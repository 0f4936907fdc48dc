//! The PTX of every `kernels/<family>.cu`, embedded at build time.
//!
//! The `.ptx` files are committed (built by `cargo xtask ptx`, checked stale in
//! CI), so compiling this crate never needs nvcc; the driver JIT-compiles the
//! PTX for the card the first time a module is used.

/// One kernel family's PTX module.
#[derive(Debug)]
pub struct Module {
    /// The family name (`kernels/<name>.cu`).
    pub name: &'static str,
    /// PTX source text.
    pub ptx: &'static str,
}

impl Module {
    /// A module from its name and PTX text.
    pub const fn new(name: &'static str, ptx: &'static str) -> Self {
        Self { name, ptx }
    }
}

/// dtype conversions.
pub const CAST: Module = Module::new("cast", include_str!("../../../../kernels/ptx/cast.ptx"));
/// AdamW optimiser step.
pub const ADAMW: Module = Module::new("adamw", include_str!("../../../../kernels/ptx/adamw.ptx"));
/// Dropout with the CPU's counter-based mask.
pub const DROPOUT: Module = Module::new(
    "dropout",
    include_str!("../../../../kernels/ptx/dropout.ptx"),
);
/// Token embedding gather and its scatter-add backward.
pub const EMBEDDING: Module = Module::new(
    "embedding",
    include_str!("../../../../kernels/ptx/embedding.ptx"),
);
/// Global-norm gradient clipping.
pub const GRAD_CLIP: Module = Module::new(
    "grad_clip",
    include_str!("../../../../kernels/ptx/grad_clip.ptx"),
);
/// Mean pooling over index sets.
pub const POOLING: Module = Module::new(
    "pooling",
    include_str!("../../../../kernels/ptx/pooling.ptx"),
);

/// Fused LM head + cross-entropy and KL(teacher ‖ student) tile kernels.
pub const LINEAR_XENT: Module = Module::new(
    "linear_xent",
    include_str!("../../../../kernels/ptx/linear_xent.ptx"),
);
/// RMSNorm forward/backward.
pub const RMSNORM: Module = Module::new(
    "rmsnorm",
    include_str!("../../../../kernels/ptx/rmsnorm.ptx"),
);
/// Rotary position embedding.
pub const ROPE: Module = Module::new("rope", include_str!("../../../../kernels/ptx/rope.ptx"));
/// SwiGLU forward/backward.
pub const SWIGLU: Module =
    Module::new("swiglu", include_str!("../../../../kernels/ptx/swiglu.ptx"));
/// Residual add, its backward and in-place accumulation.
pub const RESIDUAL: Module = Module::new(
    "residual",
    include_str!("../../../../kernels/ptx/residual.ptx"),
);
/// Packed varlen attention (FlashAttention-2 MMA and simple kernels).
pub const ATTENTION: Module = Module::new(
    "attention",
    include_str!("../../../../kernels/ptx/attention.ptx"),
);
/// Attention forward on Hopper's wgmma (compute_90a PTX: load only where
/// `CudaDevice::is_hopper`).
pub const ATTENTION_SM90A: Module = Module::new(
    "attention_sm90a",
    include_str!("../../../../kernels/ptx/attention_sm90a.ptx"),
);
