//! The CUDA backend: one context, one stream, one cuBLAS handle and one
//! caching allocator per device, and the launchers of the hand-written
//! kernels in `kernels/` (one file here per family, same name).
//!
//! Why a single stream: every op of a training step depends on the previous
//! one, so more streams would buy nothing but cross-stream synchronisation;
//! with one stream, stream order alone makes buffer reuse safe (see `alloc`),
//! and cudarc's per-buffer event tracking is switched off.
//!
//! The driver, cuBLAS and NVRTC are loaded at run time (cudarc's
//! `dynamic-loading`), so this module compiles everywhere. cudarc panics when
//! a library is missing, so [`device`] checks for each one first and returns
//! an error that says what is missing instead.

pub mod adamw;
mod alloc;
pub mod attention;
pub mod cast;
pub mod dropout;
pub mod embedding;
pub mod grad_clip;
pub mod linear_kl;
pub mod linear_xent;
pub mod matmul;
pub mod modules;
pub mod pooling;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DriverError, LaunchConfig,
};

pub use alloc::DeviceBuffer;
pub use modules::Module;

use crate::{DType, Result, Tensor, TensorError};

/// A CUDA device as the tensor core uses it.
pub struct CudaDevice {
    ordinal: usize,
    name: String,
    /// (major, minor) compute capability: picks the Hopper-only kernels.
    capability: (i32, i32),
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: Mutex<CudaBlas>,
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    pool: Mutex<alloc::Pool>,
    counters: alloc::Counters,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice(cuda:{} {})", self.ordinal, self.name)
    }
}

static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
static POISON: AtomicBool = AtomicBool::new(false);

/// When on, every uninitialised allocation is filled with 0xFF bytes (NaN in
/// f32, bf16 and f16), so a kernel that leaves part of its output unwritten
/// fails its test instead of passing on stale zeros. GPU tests turn it on.
pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

/// Whether a CUDA driver library can be loaded on this machine (no panic).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Number of CUDA devices, 0 where there is no driver.
pub fn device_count() -> usize {
    if !driver_present() {
        return 0;
    }
    CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

/// The device `ordinal`, initialised on first use (context, stream, cuBLAS).
pub fn device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    let map = DEVICES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map
        .lock()
        .map_err(|_| TensorError::cuda("cuda::device", "device table lock poisoned"))?;
    if let Some(d) = map.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Arc::new(init(ordinal)?);
    map.insert(ordinal, d.clone());
    Ok(d)
}

fn init(ordinal: usize) -> Result<CudaDevice> {
    const OP: &str = "cuda::device";
    if !driver_present() {
        return Err(TensorError::cuda(
            OP,
            "no CUDA driver found (libcuda.so could not be loaded); use --device cpu",
        ));
    }
    let count = CudaContext::device_count().map_err(driver_err(OP))?;
    if ordinal >= count.max(0) as usize {
        return Err(TensorError::cuda(
            OP,
            format!("cuda:{ordinal} requested but this machine has {count} CUDA device(s)"),
        ));
    }
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(TensorError::cuda(
            OP,
            "the CUDA driver is present but cuBLAS (libcublas.so.13) was not found; add its \
             directory to LD_LIBRARY_PATH",
        ));
    }
    let ctx = CudaContext::new(ordinal).map_err(driver_err(OP))?;
    // SAFETY: with one stream per device, stream order is the only ordering we
    // need; no buffer is ever used from a second stream.
    unsafe { ctx.disable_event_tracking() };
    let name = ctx.name().unwrap_or_else(|_| "unknown".into());
    let capability = ctx.compute_capability().map_err(driver_err(OP))?;
    let stream = ctx.new_stream().map_err(driver_err(OP))?;
    let blas = CudaBlas::new(stream.clone())
        .map_err(|e| TensorError::cuda(OP, format!("cuBLAS init: {e}")))?;
    Ok(CudaDevice {
        ordinal,
        name,
        capability,
        ctx,
        stream,
        blas: Mutex::new(blas),
        functions: Mutex::new(HashMap::new()),
        modules: Mutex::new(HashMap::new()),
        pool: Mutex::new(alloc::Pool::default()),
        counters: alloc::Counters::default(),
    })
}

/// Maps a driver error to a [`TensorError`] naming `op`.
pub fn driver_err(op: &'static str) -> impl Fn(DriverError) -> TensorError {
    move |e| TensorError::cuda(op, e.to_string())
}

/// The same, for kernel launches.
pub fn launch_err(op: &'static str) -> impl Fn(DriverError) -> TensorError {
    move |e| TensorError::cuda(op, format!("kernel launch failed: {e}"))
}

/// A launch configuration: `grid` blocks of `block` threads, `shared` dynamic bytes.
pub fn cfg(grid: impl Into<Grid>, block: u32, shared: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid.into().0,
        block_dim: (block, 1, 1),
        shared_mem_bytes: shared,
    }
}

/// Grid dimensions: a block count or an (x, y, z) triple.
#[derive(Debug, Clone, Copy)]
pub struct Grid(pub (u32, u32, u32));

impl From<u32> for Grid {
    fn from(x: u32) -> Self {
        Grid((x, 1, 1))
    }
}

impl From<(u32, u32, u32)> for Grid {
    fn from(g: (u32, u32, u32)) -> Self {
        Grid(g)
    }
}

/// The kernel-name suffix for `t`'s dtype (`f32` or `bf16`, the dtypes the
/// CUDA kernels are instantiated for); any other dtype is an error naming `what`.
pub(crate) fn kernel_dtype(op: &'static str, t: &Tensor, what: &str) -> Result<&'static str> {
    match t.dtype() {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        found => Err(TensorError::invalid(
            op,
            format!("{what} is {found}; the CUDA kernels take f32 or bf16"),
        )),
    }
}

/// Threads for a block that strides over a row of `n` columns: a warp
/// multiple covering `n`, at most 256, so short rows idle few threads.
pub(crate) fn row_block(n: usize) -> u32 {
    (n.div_ceil(32) * 32).clamp(32, 256) as u32
}

/// `v` as a kernel's i32 argument (sizes and counts below 2³¹).
pub(crate) fn as_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        TensorError::invalid(op, format!("{what} = {v} exceeds the kernels' i32 range"))
    })
}

/// Blocks for a grid-stride loop over `n` elements with `block` threads:
/// enough to fill the card, never zero, capped so the count fits a grid dim.
pub fn blocks_for(n: usize, block: u32) -> u32 {
    n.div_ceil(block as usize).clamp(1, 65_535) as u32
}

impl CudaDevice {
    /// The device ordinal (`cuda:N`).
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The card's name as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// (major, minor) compute capability, e.g. (9, 0) for an H100 or H200.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.capability
    }

    /// Whether the Hopper-only kernels (`kernels/*_sm90a.cu`: wgmma) run here.
    pub fn is_hopper(&self) -> bool {
        self.capability.0 == 9
    }

    /// The device's single stream; every kernel and copy goes on it.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The driver context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The cuBLAS handle (bound to the stream), locked for the caller.
    pub fn blas(&self) -> Result<MutexGuard<'_, CudaBlas>> {
        self.blas
            .lock()
            .map_err(|_| TensorError::cuda("cuda::blas", "cuBLAS handle lock poisoned"))
    }

    /// A kernel of `module`, loading the module on first use.
    pub fn function(&self, module: &'static Module, name: &str) -> Result<CudaFunction> {
        let key = (module.name, name.to_string());
        let mut fns = self
            .functions
            .lock()
            .map_err(|_| TensorError::cuda("cuda::function", "function table lock poisoned"))?;
        if let Some(f) = fns.get(&key) {
            return Ok(f.clone());
        }
        let m = {
            let mut mods = self
                .modules
                .lock()
                .map_err(|_| TensorError::cuda("cuda::function", "module table lock poisoned"))?;
            match mods.get(module.name) {
                Some(m) => m.clone(),
                None => {
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_src(module.ptx))
                        .map_err(|e| {
                            TensorError::cuda(
                                "cuda::function",
                                format!("loading kernels/{}.ptx: {e}", module.name),
                            )
                        })?;
                    mods.insert(module.name, m.clone());
                    m
                }
            }
        };
        let f = m.load_function(name).map_err(|e| {
            TensorError::cuda(
                "cuda::function",
                format!("kernel `{name}` in kernels/{}.ptx: {e}", module.name),
            )
        })?;
        fns.insert(key, f.clone());
        Ok(f)
    }

    /// Waits for all queued work; surfaces asynchronous kernel errors.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver_err("cuda::synchronize"))
    }

    /// `bytes` of uninitialised device memory (poisoned when [`set_poison`] is on).
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuffer> {
        let b = alloc::alloc(self, bytes)?;
        if POISON.load(Ordering::Relaxed) {
            self.memset(&b, 0xFF)?;
        }
        Ok(b)
    }

    /// `bytes` of zeroed device memory.
    pub fn alloc_zeros(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuffer> {
        let b = alloc::alloc(self, bytes)?;
        self.memset(&b, 0)?;
        Ok(b)
    }

    /// Fills a buffer with one byte value.
    pub fn memset(&self, b: &DeviceBuffer, value: u8) -> Result<()> {
        const OP: &str = "cuda::memset";
        self.ctx.bind_to_thread().map_err(driver_err(OP))?;
        // SAFETY: the range is the buffer's own allocation.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                b.ptr(),
                value,
                b.len_bytes(),
                self.stream.cu_stream(),
            )
        }
        .map_err(driver_err(OP))
    }

    /// Copies host data into a fresh device buffer.
    pub fn upload<T: bytemuck::Pod>(self: &Arc<Self>, data: &[T]) -> Result<DeviceBuffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let b = alloc::alloc(self, bytes.len())?;
        self.copy_to_device(bytes, &b)?;
        Ok(b)
    }

    /// Copies `src` into the start of `dst` (which must be at least as long).
    pub fn copy_to_device(&self, src: &[u8], dst: &DeviceBuffer) -> Result<()> {
        const OP: &str = "cuda::upload";
        if src.len() > dst.len_bytes() {
            return Err(TensorError::cuda(OP, "source longer than destination"));
        }
        if src.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(driver_err(OP))?;
        // SAFETY: dst holds at least src.len() bytes; the copy is synchronised
        // before returning, so `src` may be freed afterwards.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(dst.ptr(), src, self.stream.cu_stream())
        }
        .map_err(driver_err(OP))?;
        self.synchronize()
    }

    /// Copies the start of `src` into `dst` (waits for queued work first).
    pub fn copy_to_host(&self, src: &DeviceBuffer, dst: &mut [u8]) -> Result<()> {
        const OP: &str = "cuda::download";
        if dst.len() > src.len_bytes() {
            return Err(TensorError::cuda(OP, "destination longer than source"));
        }
        if dst.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(driver_err(OP))?;
        // SAFETY: src holds at least dst.len() bytes; synchronised before return.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(dst, src.ptr(), self.stream.cu_stream())
        }
        .map_err(driver_err(OP))?;
        self.synchronize()
    }

    /// Device-to-device copy of `bytes` from `src` to `dst`.
    pub fn copy_device(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        const OP: &str = "cuda::copy";
        if bytes == 0 {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(driver_err(OP))?;
        // SAFETY: callers pass ranges inside live buffers of this device.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream())
        }
        .map_err(driver_err(OP))
    }

    /// Bytes currently handed out by the allocator.
    pub fn in_use_bytes(&self) -> usize {
        self.counters.in_use()
    }

    /// The most bytes handed out at once since the last [`Self::reset_peak`].
    pub fn peak_bytes(&self) -> usize {
        self.counters.peak()
    }

    /// Restarts the peak counter from the bytes in use now.
    pub fn reset_peak(&self) {
        self.counters.reset_peak()
    }

    /// Bytes held in the allocator's free lists.
    pub fn cached_bytes(&self) -> usize {
        self.pool.lock().map_or(0, |p| p.cached_bytes())
    }

    /// Returns every cached block to the driver.
    pub fn empty_cache(&self) {
        if let Ok(mut p) = self.pool.lock() {
            p.release_all();
        }
    }
}
