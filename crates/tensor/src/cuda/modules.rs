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

include!("modules_table.rs");
