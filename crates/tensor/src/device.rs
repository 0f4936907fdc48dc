//! Where a tensor's storage lives. Only the CPU exists today; the CUDA backend
//! adds `Cuda(ordinal)` and a storage variant, and callers that match on
//! `Device` through the op functions do not change.

/// A compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Device {
    /// Host memory; ops run on the rayon thread pool.
    #[default]
    Cpu,
}

impl Device {
    /// Parses `cpu` (and, once the CUDA backend exists, `cuda` / `cuda:N`).
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            other if other.starts_with("cuda") => Err(crate::TensorError::invalid(
                "Device::parse",
                format!("`{s}`: this build has no CUDA backend yet; use `cpu`"),
            )),
            _ => Err(crate::TensorError::invalid(
                "Device::parse",
                format!("unknown device `{s}` (expected `cpu` or `cuda[:N]`)"),
            )),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
        }
    }
}
