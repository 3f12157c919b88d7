//! What hostile input costs the server: CPU time of the server runtime's own threads, and the
//! process's heap high-water mark.
//!
//! The server runs on a runtime of its own whose threads register themselves, so their CPU time
//! (from `/proc/self/task/<tid>/stat`) is the server's alone, whatever the client side and the
//! test harness do. Heap is measured process-wide by this test binary's global allocator
//! (live bytes and their peak): the tests of this binary take a lock so that only one runs at
//! a time, and each measures the rise of the peak above the live bytes when it started.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

struct Tracking;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// One test at a time in this binary: the heap meter is process-wide.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// The heap's rise above the live bytes at [`HeapMeter::start`].
pub struct HeapMeter {
    base: usize,
}

impl HeapMeter {
    pub fn start() -> HeapMeter {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        HeapMeter { base }
    }

    /// How far the heap rose above the start, at its highest, in bytes.
    pub fn peak_rise(&self) -> usize {
        PEAK.load(Ordering::Relaxed).saturating_sub(self.base)
    }
}

/// A multi-thread runtime for the server whose threads' CPU time can be read.
pub struct ServerRuntime {
    pub rt: tokio::runtime::Runtime,
    tids: Arc<Mutex<Vec<i32>>>,
}

impl ServerRuntime {
    pub fn new() -> ServerRuntime {
        let tids = Arc::new(Mutex::new(Vec::new()));
        let register = tids.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || register.lock().push(unsafe { libc::gettid() }))
            .build()
            .unwrap();
        ServerRuntime { rt, tids }
    }

    /// CPU time (user + system) the server's threads have used so far.
    pub fn cpu(&self) -> Duration {
        let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let ticks: u64 = self
            .tids
            .lock()
            .iter()
            .filter_map(|tid| std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok())
            .map(|stat| {
                // Fields after the command (which is in parentheses and may hold spaces):
                // state is field 3, utime 14, stime 15.
                let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
                let fields: Vec<&str> = after.split_whitespace().collect();
                let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
                field(14).unwrap_or(0) + field(15).unwrap_or(0)
            })
            .sum();
        Duration::from_millis(ticks * 1000 / ticks_per_s)
    }
}
