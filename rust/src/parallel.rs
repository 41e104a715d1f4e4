//! Thread pools for the engine: explicit, per-process, safe after `fork`.
//!
//! Work never runs on rayon's global pool. A pool is built per (process id, thread count), so
//! a child forked from a parent that used the engine (a DataLoader worker, say) builds fresh
//! threads instead of waiting on the parent's, which do not exist in the child; the inherited
//! pools are forgotten, never dropped (dropping one would signal threads that are not there).
//! In a forked child the default is one thread, like PyTorch's workers, to avoid
//! oversubscription: the parent's pid is recorded when the module loads ([`record_pid`]).

use crate::error::{Error, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Pools by (process id, thread count).
type Pools = HashMap<(u32, usize), Arc<ThreadPool>>;

static POOLS: OnceLock<Mutex<Pools>> = OnceLock::new();
static FIRST_PID: OnceLock<u32> = OnceLock::new();

/// Remember this process as the parent of any later fork (call once at module load).
pub fn record_pid() {
    FIRST_PID.get_or_init(std::process::id);
}

/// Threads used when the caller passes 0: `MOC_FAST_NUM_THREADS`, else all cores (1 in a
/// forked child).
pub fn default_threads() -> usize {
    let pid = std::process::id();
    let first = *FIRST_PID.get_or_init(|| pid);
    if let Some(n) = std::env::var("MOC_FAST_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .map(|n| n.min(MAX_THREADS))
    {
        return n;
    }
    if pid != first {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pool(num_threads: usize) -> Result<Arc<ThreadPool>> {
    let key = (std::process::id(), num_threads);
    let pools = POOLS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut guard = pools.lock().unwrap_or_else(|e| e.into_inner());
    if guard.keys().any(|k| k.0 != key.0) {
        // Pools inherited through fork have no threads: forget them without running Drop.
        let inherited: Vec<_> = guard.keys().filter(|k| k.0 != key.0).copied().collect();
        for k in inherited {
            if let Some(p) = guard.remove(&k) {
                std::mem::forget(p);
            }
        }
    }
    if let Some(p) = guard.get(&key) {
        return Ok(p.clone());
    }
    let built = ThreadPoolBuilder::new()
        .num_threads(num_threads)
        .thread_name(|i| format!("moc-fast-{i}"))
        .build()
        .map_err(|e| Error::value(format!("cannot start {num_threads} worker threads: {e}")))?;
    let built = Arc::new(built);
    guard.insert(key, built.clone());
    Ok(built)
}

/// Most threads one call may ask for: beyond any core count, below the OS's thread limits.
pub const MAX_THREADS: usize = 4096;

/// Run `f` on a pool of `num_threads` threads (0 = [`default_threads`]).
pub fn run<R: Send>(num_threads: usize, f: impl FnOnce() -> R + Send) -> Result<R> {
    if num_threads > MAX_THREADS {
        return Err(Error::value(format!(
            "num_threads must be at most {MAX_THREADS}, got {num_threads}"
        )));
    }
    let n = if num_threads == 0 { default_threads() } else { num_threads };
    Ok(pool(n)?.install(f))
}
