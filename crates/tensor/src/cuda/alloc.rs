//! A caching device allocator with in-use and peak counters.
//!
//! Every buffer is used on the device's single stream, so a freed block can be
//! handed to the next allocation at once: stream order guarantees the kernels
//! that read it have finished before any later kernel writes it. That lets us
//! keep freed blocks in per-size free lists instead of paying `cuMemFree`'s
//! implicit synchronisation on every drop (a training step frees thousands).
//! Sizes are rounded up (512 B granules below 1 MiB, 2 MiB above) so blocks
//! of nearby sizes are shared. When the driver reports out-of-memory, the
//! cached blocks are released and the allocation retried once.
//!
//! The peak counter counts bytes handed out (rounded), not bytes cached: it is
//! what a test or benchmark uses to show a kernel never held an [N, V] buffer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cudarc::driver::{CudaSlice, DevicePtr};

use super::CudaDevice;
use crate::{Result, TensorError};

const SMALL_GRANULE: usize = 512;
const LARGE_GRANULE: usize = 2 << 20;

/// Rounds a request up to the block size the pool stores it under.
pub(crate) fn round_size(bytes: usize) -> usize {
    let g = if bytes < (1 << 20) {
        SMALL_GRANULE
    } else {
        LARGE_GRANULE
    };
    bytes.max(1).div_ceil(g) * g
}

/// Free blocks by rounded size, and the counters.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    free: HashMap<usize, Vec<CudaSlice<u8>>>,
    cached_bytes: usize,
}

/// Counters shared by every buffer of a device.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    in_use: AtomicUsize,
    peak: AtomicUsize,
}

impl Counters {
    fn add(&self, bytes: usize) {
        let now = self.in_use.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.in_use.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub(crate) fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    pub(crate) fn reset_peak(&self) {
        self.peak.store(self.in_use(), Ordering::Relaxed);
    }
}

impl Pool {
    fn take(&mut self, size: usize) -> Option<CudaSlice<u8>> {
        let s = self.free.get_mut(&size)?.pop()?;
        self.cached_bytes -= size;
        Some(s)
    }

    fn put(&mut self, size: usize, s: CudaSlice<u8>) {
        self.cached_bytes += size;
        self.free.entry(size).or_default().push(s);
    }

    /// Drops every cached block (returning it to the driver).
    pub(crate) fn release_all(&mut self) {
        self.free.clear();
        self.cached_bytes = 0;
    }

    /// Bytes held in free lists.
    pub(crate) fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }
}

/// A block of device memory, returned to its device's pool when dropped.
pub struct DeviceBuffer {
    slice: Option<CudaSlice<u8>>,
    ptr: u64,
    bytes: usize,
    size: usize,
    dev: Arc<CudaDevice>,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer({} bytes at {:#x} on cuda:{})",
            self.bytes,
            self.ptr,
            self.dev.ordinal()
        )
    }
}

impl DeviceBuffer {
    /// The device address, passed to kernels as a `u64` argument.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The requested size in bytes.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// The device owning the block.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if let Some(s) = self.slice.take() {
            self.dev.counters.sub(self.size);
            if let Ok(mut pool) = self.dev.pool.lock() {
                pool.put(self.size, s);
            }
        }
    }
}

/// Allocates `bytes` (uninitialised) on `dev`, reusing a cached block when one fits.
pub(crate) fn alloc(dev: &Arc<CudaDevice>, bytes: usize) -> Result<DeviceBuffer> {
    let size = round_size(bytes);
    let cached = dev
        .pool
        .lock()
        .map_err(|_| TensorError::cuda("alloc", "allocator lock poisoned"))?
        .take(size);
    let slice = match cached {
        Some(s) => s,
        None => {
            // SAFETY: the block is handed out uninitialised; every op writes its
            // outputs before reading them (tests poison fresh blocks to prove it).
            match unsafe { dev.stream.alloc::<u8>(size) } {
                Ok(s) => s,
                Err(_) => {
                    // Out of memory is the likely cause: give the cache back and retry once.
                    dev.pool
                        .lock()
                        .map_err(|_| TensorError::cuda("alloc", "allocator lock poisoned"))?
                        .release_all();
                    unsafe { dev.stream.alloc::<u8>(size) }.map_err(|e| {
                        TensorError::cuda(
                            "alloc",
                            format!(
                                "cannot allocate {bytes} bytes on cuda:{} ({} in use): {e}",
                                dev.ordinal(),
                                dev.counters.in_use()
                            ),
                        )
                    })?
                }
            }
        }
    };
    let ptr = slice.device_ptr(&dev.stream).0;
    dev.counters.add(size);
    Ok(DeviceBuffer {
        slice: Some(slice),
        ptr,
        bytes,
        size,
        dev: dev.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_to_granules() {
        assert_eq!(round_size(0), 512);
        assert_eq!(round_size(1), 512);
        assert_eq!(round_size(513), 1024);
        assert_eq!(round_size(1 << 20), 2 << 20);
        assert_eq!(round_size((2 << 20) + 1), 4 << 20);
    }
}
