//! Where a tensor's storage lives. Op functions dispatch on it, so callers
//! never name a backend; `Device::Cuda(n)` exists in every build, and using it
//! on a machine without a driver or GPU is an error, not a panic.

/// A compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Device {
    /// Host memory; ops run on the rayon thread pool.
    #[default]
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl Device {
    /// Parses `cpu`, `cuda` (device 0) or `cuda:N`. Does not touch the driver:
    /// [`Device::check`] does, when the device is first needed.
    pub fn parse(s: &str) -> crate::Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(crate::TensorError::invalid(
                    "Device::parse",
                    format!("unknown device `{s}` (expected `cpu`, `cuda` or `cuda:N`)"),
                )),
            },
        }
    }

    /// Errors (without panicking) unless the device can be used here: for CUDA
    /// this loads the driver and cuBLAS and creates the context.
    pub fn check(self) -> crate::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(n) => crate::cuda::device(n).map(|_| ()),
        }
    }

    /// Whether this is a CUDA device.
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!(Device::parse("CPU").unwrap(), Device::Cpu);
        assert_eq!(Device::parse("cuda").unwrap(), Device::Cuda(0));
        assert_eq!(Device::parse("cuda:3").unwrap(), Device::Cuda(3));
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        for bad in ["cuda:", "cuda:x", "tpu", "cuda:-1"] {
            let err = Device::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn cuda_without_a_driver_is_an_error_not_a_panic() {
        if crate::cuda::driver_present() && crate::cuda::device_count() > 0 {
            crate::testing::report_skip(
                "a CUDA device is present: the no-driver error path cannot be exercised",
            );
            return;
        }
        let err = Device::Cuda(0).check().unwrap_err().to_string();
        assert!(err.contains("cuda"), "{err}");
    }
}
