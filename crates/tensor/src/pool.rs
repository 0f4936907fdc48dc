//! The CPU thread pool. Every parallel CPU op runs on rayon's global pool,
//! sized to the machine's cores unless the user sets a count first (the CLI's
//! `--threads`, or `RAYON_NUM_THREADS`). GEMM calls take the same count so the
//! two never oversubscribe the cores.

use std::sync::OnceLock;

static CONFIGURED: OnceLock<usize> = OnceLock::new();

/// Sizes the global pool. Only the first call has an effect; later calls
/// return the size already in force.
pub fn init(threads: Option<usize>) -> usize {
    *CONFIGURED.get_or_init(|| {
        let mut builder = rayon::ThreadPoolBuilder::new();
        // Without an explicit count rayon reads RAYON_NUM_THREADS, else the core count.
        if let Some(n) = threads.filter(|&n| n > 0) {
            builder = builder.num_threads(n);
        }
        // Fails only if something built the global pool already; its size is then the truth.
        let _ = builder.build_global();
        rayon::current_num_threads()
    })
}

/// Number of worker threads CPU ops use (initialising the pool on first use).
pub fn num_threads() -> usize {
    init(None)
}
