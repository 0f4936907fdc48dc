//! `Tensor`: a shape, a dtype, a device and contiguous row-major storage.
//!
//! Tensors are deliberately plain: no strides, no views, no autograd tape.
//! Layers call explicit `forward` / `backward` op functions and keep what
//! their backward needs themselves (see `docs/architecture.md`).

use std::sync::Arc;

use half::{bf16, f16};

use crate::cuda::{CudaDevice, DeviceBuffer};
use crate::{DType, Device, Element, Result, TensorError};

/// Host storage, one variant per dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuStorage {
    /// f32 elements.
    F32(Vec<f32>),
    /// bf16 elements.
    BF16(Vec<bf16>),
    /// f16 elements.
    F16(Vec<f16>),
}

impl CpuStorage {
    fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
        }
    }

    fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
        }
    }
}

/// Device memory: a buffer from the device's caching allocator and its dtype.
#[derive(Debug)]
pub struct CudaStorage {
    buf: DeviceBuffer,
    dtype: DType,
}

impl CudaStorage {
    /// The buffer.
    pub fn buffer(&self) -> &DeviceBuffer {
        &self.buf
    }

    fn try_clone(&self) -> Result<Self> {
        let dev = self.buf.device();
        let buf = dev.alloc(self.buf.len_bytes())?;
        dev.copy_device(self.buf.ptr(), buf.ptr(), self.buf.len_bytes())?;
        Ok(Self {
            buf,
            dtype: self.dtype,
        })
    }
}

/// A deep copy, like the CPU's; a device that cannot allocate the copy is a
/// panic here (use [`Tensor::try_clone`] to get an error instead).
impl Clone for CudaStorage {
    fn clone(&self) -> Self {
        self.try_clone()
            .unwrap_or_else(|e| panic!("cloning a CUDA tensor: {e}"))
    }
}

/// Device tensors compare equal only when they are the same buffer: comparing
/// contents would need a device round trip hidden in `==`.
impl PartialEq for CudaStorage {
    fn eq(&self, other: &Self) -> bool {
        self.buf.ptr() == other.buf.ptr() && self.dtype == other.dtype
    }
}

/// Where the elements are.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Storage {
    /// Host memory.
    Cpu(CpuStorage),
    /// CUDA device memory.
    Cuda(CudaStorage),
}

/// A dense, contiguous, row-major n-dimensional array.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// Wraps `data` as a tensor of `shape` on the CPU.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Self> {
        if data.len() != numel(shape) {
            return Err(TensorError::shape(
                "Tensor::from_vec",
                "data",
                format!("{} elements", numel(shape)),
                &[data.len()],
            ));
        }
        // Route through the concrete dtype without unsafe: Pod lets us cast the Vec.
        let storage = match T::DTYPE {
            DType::F32 => CpuStorage::F32(bytemuck::allocation::cast_vec(data)),
            DType::BF16 => CpuStorage::BF16(bytemuck::allocation::cast_vec(data)),
            DType::F16 => CpuStorage::F16(bytemuck::allocation::cast_vec(data)),
        };
        Ok(Self {
            shape: shape.to_vec(),
            storage: Storage::Cpu(storage),
        })
    }

    /// A tensor of zeros. On a CUDA device an allocation failure panics; use
    /// [`Tensor::try_zeros`] where that must be an error.
    pub fn zeros(shape: &[usize], dtype: DType, device: Device) -> Self {
        Self::try_zeros(shape, dtype, device)
            .unwrap_or_else(|e| panic!("Tensor::zeros on {device}: {e}"))
    }

    /// A tensor of zeros on any device.
    pub fn try_zeros(shape: &[usize], dtype: DType, device: Device) -> Result<Self> {
        let n = numel(shape);
        let storage = match (device, dtype) {
            (Device::Cpu, DType::F32) => Storage::Cpu(CpuStorage::F32(vec![0.0; n])),
            (Device::Cpu, DType::BF16) => Storage::Cpu(CpuStorage::BF16(vec![bf16::ZERO; n])),
            (Device::Cpu, DType::F16) => Storage::Cpu(CpuStorage::F16(vec![f16::ZERO; n])),
            (Device::Cuda(o), _) => {
                let dev = crate::cuda::device(o)?;
                Storage::Cuda(CudaStorage {
                    buf: dev.alloc_zeros(n * dtype.size_in_bytes())?,
                    dtype,
                })
            }
        };
        Ok(Self {
            shape: shape.to_vec(),
            storage,
        })
    }

    /// A tensor whose elements the caller will overwrite: zeros on the CPU,
    /// uninitialised on CUDA (NaN-poisoned under [`crate::cuda::set_poison`]).
    pub fn empty(shape: &[usize], dtype: DType, device: Device) -> Result<Self> {
        match device {
            Device::Cpu => Self::try_zeros(shape, dtype, device),
            Device::Cuda(o) => {
                let dev = crate::cuda::device(o)?;
                let buf = dev.alloc(numel(shape) * dtype.size_in_bytes())?;
                Ok(Self::from_device_buffer(buf, dtype, shape))
            }
        }
    }

    /// Wraps a device buffer (from a kernel launcher) as a tensor. The buffer
    /// must hold at least `numel(shape)` elements of `dtype`.
    pub fn from_device_buffer(buf: DeviceBuffer, dtype: DType, shape: &[usize]) -> Self {
        debug_assert!(buf.len_bytes() >= numel(shape) * dtype.size_in_bytes());
        Self {
            shape: shape.to_vec(),
            storage: Storage::Cuda(CudaStorage { buf, dtype }),
        }
    }

    /// A deep copy that reports a failed device allocation instead of panicking.
    pub fn try_clone(&self) -> Result<Self> {
        let storage = match &self.storage {
            Storage::Cpu(s) => Storage::Cpu(s.clone()),
            Storage::Cuda(s) => Storage::Cuda(s.try_clone()?),
        };
        Ok(Self {
            shape: self.shape.clone(),
            storage,
        })
    }

    /// The device address of a CUDA tensor, for kernel arguments.
    pub fn cuda_ptr(&self, op: &'static str, what: &'static str) -> Result<u64> {
        match &self.storage {
            Storage::Cuda(s) => Ok(s.buf.ptr()),
            Storage::Cpu(_) => Err(TensorError::Invalid {
                op,
                msg: format!("{what} is on the CPU, expected a CUDA tensor"),
            }),
        }
    }

    /// The CUDA device holding this tensor.
    pub fn cuda_device(&self, op: &'static str, what: &'static str) -> Result<Arc<CudaDevice>> {
        match &self.storage {
            Storage::Cuda(s) => Ok(s.buf.device().clone()),
            Storage::Cpu(_) => Err(TensorError::Invalid {
                op,
                msg: format!("{what} is on the CPU, expected a CUDA tensor"),
            }),
        }
    }

    /// Reads little-endian bytes (a model file's tensor data) as `dtype`.
    /// The bytes need not be aligned; their length must match the shape exactly.
    pub fn from_le_bytes(bytes: &[u8], dtype: DType, shape: &[usize]) -> Result<Self> {
        let want = numel(shape) * dtype.size_in_bytes();
        if bytes.len() != want {
            return Err(TensorError::Bytes {
                op: "Tensor::from_le_bytes",
                msg: format!(
                    "{} bytes for a {dtype} tensor of shape {shape:?}, expected {want}",
                    bytes.len()
                ),
            });
        }
        if cfg!(target_endian = "big") {
            return Err(TensorError::Bytes {
                op: "Tensor::from_le_bytes",
                msg: "big-endian hosts are not supported".into(),
            });
        }
        let storage = match dtype {
            DType::F32 => CpuStorage::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::BF16 => CpuStorage::BF16(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => CpuStorage::F16(bytemuck::pod_collect_to_vec(bytes)),
        };
        Ok(Self {
            shape: shape.to_vec(),
            storage: Storage::Cpu(storage),
        })
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype,
        }
    }

    /// The device holding the storage.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => Device::Cuda(s.buf.device().ordinal()),
        }
    }

    /// The raw storage, for backends.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Size of the storage in bytes.
    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype().size_in_bytes()
    }

    /// The same elements under a new shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        if numel(shape) != self.numel() {
            return Err(TensorError::shape(
                "Tensor::reshape",
                "new shape",
                format!("{} elements", self.numel()),
                shape,
            ));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Checks the shape is exactly `[a, b]` and returns the two dims.
    pub fn dims2(&self, op: &'static str, what: &'static str) -> Result<(usize, usize)> {
        match self.shape[..] {
            [a, b] => Ok((a, b)),
            _ => Err(TensorError::shape(op, what, "rank 2", &self.shape)),
        }
    }

    /// Checks the shape is exactly `[a, b, c]` and returns the three dims.
    pub fn dims3(&self, op: &'static str, what: &'static str) -> Result<(usize, usize, usize)> {
        match self.shape[..] {
            [a, b, c] => Ok((a, b, c)),
            _ => Err(TensorError::shape(op, what, "rank 3", &self.shape)),
        }
    }

    /// Borrows the elements as `T`; errors if the dtype or device differs.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        let found = self.dtype();
        let s = self.host("Tensor::as_slice")?;
        let bytes: &[u8] = match s {
            CpuStorage::F32(v) if T::DTYPE == DType::F32 => bytemuck::cast_slice(v),
            CpuStorage::BF16(v) if T::DTYPE == DType::BF16 => bytemuck::cast_slice(v),
            CpuStorage::F16(v) if T::DTYPE == DType::F16 => bytemuck::cast_slice(v),
            _ => {
                return Err(TensorError::DType {
                    op: "Tensor::as_slice",
                    what: "tensor",
                    expected: T::DTYPE,
                    found,
                });
            }
        };
        Ok(bytemuck::cast_slice(bytes))
    }

    /// Mutably borrows the elements as `T`; errors if the dtype or device differs.
    pub fn as_slice_mut<T: Element>(&mut self) -> Result<&mut [T]> {
        let found = self.dtype();
        let device = self.device();
        let Storage::Cpu(s) = &mut self.storage else {
            return Err(TensorError::Device {
                op: "Tensor::as_slice_mut",
                expected: Device::Cpu,
                found: device,
            });
        };
        let bytes: &mut [u8] = match s {
            CpuStorage::F32(v) if T::DTYPE == DType::F32 => bytemuck::cast_slice_mut(v),
            CpuStorage::BF16(v) if T::DTYPE == DType::BF16 => bytemuck::cast_slice_mut(v),
            CpuStorage::F16(v) if T::DTYPE == DType::F16 => bytemuck::cast_slice_mut(v),
            _ => {
                return Err(TensorError::DType {
                    op: "Tensor::as_slice_mut",
                    what: "tensor",
                    expected: T::DTYPE,
                    found,
                });
            }
        };
        Ok(bytemuck::cast_slice_mut(bytes))
    }

    /// Borrows f32 elements (the CPU compute dtype), naming `op` and `what` on error.
    pub fn f32s(&self, op: &'static str, what: &'static str) -> Result<&[f32]> {
        self.expect_dtype(op, what, DType::F32)?;
        self.as_slice::<f32>()
    }

    /// Mutably borrows f32 elements, naming `op` and `what` on error.
    pub fn f32s_mut(&mut self, op: &'static str, what: &'static str) -> Result<&mut [f32]> {
        self.expect_dtype(op, what, DType::F32)?;
        self.as_slice_mut::<f32>()
    }

    /// Errors unless the tensor has `dtype`.
    pub fn expect_dtype(&self, op: &'static str, what: &'static str, dtype: DType) -> Result<()> {
        if self.dtype() == dtype {
            Ok(())
        } else {
            Err(TensorError::DType {
                op,
                what,
                expected: dtype,
                found: self.dtype(),
            })
        }
    }

    /// Errors unless the shape equals `shape`.
    pub fn expect_shape(
        &self,
        op: &'static str,
        what: &'static str,
        shape: &[usize],
    ) -> Result<()> {
        if self.shape == shape {
            Ok(())
        } else {
            Err(TensorError::shape(
                op,
                what,
                format!("{shape:?}"),
                &self.shape,
            ))
        }
    }

    /// The host storage, or an error naming `op` for a device tensor.
    fn host(&self, op: &'static str) -> Result<&CpuStorage> {
        match &self.storage {
            Storage::Cpu(s) => Ok(s),
            Storage::Cuda(_) => Err(TensorError::Device {
                op,
                expected: Device::Cpu,
                found: self.device(),
            }),
        }
    }

    /// Copies the elements out as f32, widening bf16/f16. A CUDA tensor is
    /// copied to the host first (a driver failure there panics: use
    /// `to_device(Device::Cpu)` to get an error).
    pub fn to_vec_f32(&self) -> Vec<f32> {
        let s = match &self.storage {
            Storage::Cpu(s) => s,
            Storage::Cuda(_) => {
                return self
                    .to_device(Device::Cpu)
                    .unwrap_or_else(|e| panic!("Tensor::to_vec_f32: {e}"))
                    .to_vec_f32();
            }
        };
        match s {
            CpuStorage::F32(v) => v.clone(),
            CpuStorage::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            CpuStorage::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// Converts to `dtype` (round-to-nearest-even when narrowing). On CUDA a
    /// driver failure panics; [`Tensor::try_to_dtype`] returns it instead.
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        self.try_to_dtype(dtype)
            .unwrap_or_else(|e| panic!("Tensor::to_dtype: {e}"))
    }

    /// Converts to `dtype` on the tensor's own device.
    pub fn try_to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return self.try_clone();
        }
        if self.device().is_cuda() {
            return crate::cuda::cast::cast(self, dtype);
        }
        let f = self.to_vec_f32();
        let storage = match dtype {
            DType::F32 => CpuStorage::F32(f),
            DType::BF16 => CpuStorage::BF16(f.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => CpuStorage::F16(f.iter().map(|&x| f16::from_f32(x)).collect()),
        };
        debug_assert_eq!(storage.len(), self.numel());
        Ok(Tensor {
            shape: self.shape.clone(),
            storage: Storage::Cpu(storage),
        })
    }

    /// Overwrites rows `at..at + rows` of self with rows `from..from + rows` of
    /// `src` (rows along the first dimension; same dtype, device and row
    /// width). A host slice copy or one device-to-device copy: how layers
    /// place a few rows from a second table without a host round trip.
    pub fn copy_rows(&mut self, at: usize, src: &Tensor, from: usize, rows: usize) -> Result<()> {
        const OP: &str = "Tensor::copy_rows";
        let width = |t: &Tensor| t.shape.get(1..).map_or(0, numel);
        if self.rank() == 0 || src.rank() != self.rank() || width(src) != width(self) {
            return Err(TensorError::shape(
                OP,
                "src",
                format!("rows of {:?}", self.shape.get(1..).unwrap_or(&[])),
                &src.shape,
            ));
        }
        src.expect_dtype(OP, "src", self.dtype())?;
        if src.device() != self.device() {
            return Err(TensorError::Device {
                op: OP,
                expected: self.device(),
                found: src.device(),
            });
        }
        let (dst_rows, src_rows) = (self.shape[0], src.shape[0]);
        if at.checked_add(rows).is_none_or(|e| e > dst_rows)
            || from.checked_add(rows).is_none_or(|e| e > src_rows)
        {
            return Err(TensorError::invalid(
                OP,
                format!("rows {from}..+{rows} of {src_rows} into rows {at}..+{rows} of {dst_rows}"),
            ));
        }
        let w = width(self);
        let es = self.dtype().size_in_bytes();
        match (&mut self.storage, &src.storage) {
            (Storage::Cpu(d), Storage::Cpu(s)) => {
                let (d, s): (&mut [u8], &[u8]) = match (d, s) {
                    (CpuStorage::F32(d), CpuStorage::F32(s)) => {
                        (bytemuck::cast_slice_mut(d), bytemuck::cast_slice(s))
                    }
                    (CpuStorage::BF16(d), CpuStorage::BF16(s)) => {
                        (bytemuck::cast_slice_mut(d), bytemuck::cast_slice(s))
                    }
                    (CpuStorage::F16(d), CpuStorage::F16(s)) => {
                        (bytemuck::cast_slice_mut(d), bytemuck::cast_slice(s))
                    }
                    _ => unreachable!("dtypes checked equal above"),
                };
                d[at * w * es..(at + rows) * w * es]
                    .copy_from_slice(&s[from * w * es..(from + rows) * w * es]);
                Ok(())
            }
            (Storage::Cuda(d), Storage::Cuda(s)) => {
                let bytes = rows * w * es;
                let dev = d.buf.device().clone();
                dev.copy_device(
                    s.buf.ptr() + (from * w * es) as u64,
                    d.buf.ptr() + (at * w * es) as u64,
                    bytes,
                )
            }
            _ => unreachable!("devices checked equal above"),
        }
    }

    /// A copy on `device` (host <-> device through a synchronous copy).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        const OP: &str = "Tensor::to_device";
        match (&self.storage, device) {
            (_, d) if d == self.device() => self.try_clone(),
            (Storage::Cpu(s), Device::Cuda(o)) => {
                let dev = crate::cuda::device(o)?;
                let bytes: &[u8] = match s {
                    CpuStorage::F32(v) => bytemuck::cast_slice(v),
                    CpuStorage::BF16(v) => bytemuck::cast_slice(v),
                    CpuStorage::F16(v) => bytemuck::cast_slice(v),
                };
                let buf = dev.upload(bytes)?;
                Ok(Self::from_device_buffer(buf, self.dtype(), &self.shape))
            }
            (Storage::Cuda(s), Device::Cpu) => {
                let mut bytes = vec![0u8; self.size_in_bytes()];
                s.buf.device().copy_to_host(&s.buf, &mut bytes)?;
                Tensor::from_le_bytes(&bytes, s.dtype, &self.shape).map_err(|e| {
                    TensorError::cuda(OP, format!("reading back a device tensor: {e}"))
                })
            }
            (Storage::Cuda(_), Device::Cuda(_)) => self.to_device(Device::Cpu)?.to_device(device),
            (Storage::Cpu(_), Device::Cpu) => self.try_clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vec_checks_element_count() {
        let err = Tensor::from_vec(vec![1.0f32; 5], &[2, 3]).unwrap_err();
        assert!(err.to_string().contains("6 elements"), "{err}");
    }

    #[test]
    fn casts_round_trip_and_round_to_nearest() {
        let t = Tensor::from_vec(vec![1.0f32, -2.5, 1.0 + 1.0 / 256.0, 3.0e38], &[4]).unwrap();
        let b = t.to_dtype(DType::BF16);
        assert_eq!(b.dtype(), DType::BF16);
        let back = b.to_vec_f32();
        assert_eq!(back[0], 1.0);
        assert_eq!(back[1], -2.5);
        // 1 + 2^-8 is a tie between bf16 neighbours 1 and 1 + 2^-7: round to even gives 1.
        assert_eq!(back[2], 1.0);
        let h = t.to_dtype(DType::F16).to_vec_f32();
        assert!(h[3].is_infinite(), "3e38 overflows f16");
    }

    #[test]
    fn from_le_bytes_reads_unaligned_and_rejects_truncation() {
        let vals = [1.5f32, -0.25, 8.0];
        let mut bytes = vec![0u8];
        for v in vals {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let t = Tensor::from_le_bytes(&bytes[1..], DType::F32, &[3]).unwrap();
        assert_eq!(t.as_slice::<f32>().unwrap(), &vals);
        let err = Tensor::from_le_bytes(&bytes[1..12], DType::F32, &[3]).unwrap_err();
        assert!(err.to_string().contains("expected 12"), "{err}");
        let h = Tensor::from_le_bytes(&half::bf16::from_f32(2.0).to_le_bytes(), DType::BF16, &[1])
            .unwrap();
        assert_eq!(h.to_vec_f32(), vec![2.0]);
    }

    #[test]
    fn dtype_mismatch_is_an_error_naming_both() {
        let t = Tensor::zeros(&[2], DType::BF16, Device::Cpu);
        let err = t.f32s("rmsnorm", "x").unwrap_err().to_string();
        assert!(
            err.contains("rmsnorm") && err.contains("F32") && err.contains("BF16"),
            "{err}"
        );
    }

    #[test]
    fn reshape_keeps_elements() {
        let t = Tensor::from_vec((0..6).map(|x| x as f32).collect(), &[2, 3]).unwrap();
        let r = t.reshape(&[3, 2]).unwrap();
        assert_eq!(r.dims2("t", "r").unwrap(), (3, 2));
        assert!(r.reshape(&[4]).is_err());
    }

    #[test]
    fn copy_rows_copies_a_row_range_and_checks_bounds() {
        let mut dst = Tensor::from_vec((0..8).map(|x| x as f32).collect(), &[4, 2]).unwrap();
        let src = Tensor::from_vec(vec![-1.0f32, -2.0, -3.0, -4.0, -5.0, -6.0], &[3, 2]).unwrap();
        dst.copy_rows(1, &src, 1, 2).unwrap();
        assert_eq!(dst.to_vec_f32(), [0., 1., -3., -4., -5., -6., 6., 7.]);
        let e = dst.copy_rows(3, &src, 0, 2).unwrap_err().to_string();
        assert!(e.contains("copy_rows") && e.contains("of 4"), "{e}");
        let wide = Tensor::zeros(&[3, 3], DType::F32, Device::Cpu);
        assert!(dst.copy_rows(0, &wide, 0, 1).is_err());
        let bf = Tensor::zeros(&[3, 2], DType::BF16, Device::Cpu);
        let e = dst.copy_rows(0, &bf, 0, 1).unwrap_err().to_string();
        assert!(e.contains("BF16"), "{e}");
    }
}
