//! Deciding that the registry collapsed, and telling every wait of the bench at once.
//!
//! A thread samples the registry's resident memory (and this process's) every 100 ms: the
//! "before" registry grew to ~10 GB at the full one-service shape, so past a cap the registry is
//! killed before it takes the machine with it. Phases that overrun their deadline declare a
//! collapse too. The first reason wins; every bounded wait of the bench selects on
//! [`Watchdog::collapsed`] and ends early.
//!
//! The restart phase kills the registry on purpose: it [pauses](Watchdog::pause) the watchdog
//! first and has it [follow](Watchdog::follow) the new process afterwards, so a deliberate kill is
//! not taken for the registry dying.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::procfs::Pid;
use crate::registry_process;

const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Watches one registry process for the life of one shape.
pub struct Watchdog {
    collapse: Arc<watch::Sender<Option<String>>>,
    /// The largest registry RSS sampled: its peak when it was killed (no `VmHWM` to read then).
    peak: Arc<AtomicU64>,
    /// The registry's pid; `None` while paused. Locked by the sampler for the whole of one
    /// sample, so once [`pause`](Self::pause) returns no sample of the old process is under way.
    registry: Arc<Mutex<Option<u32>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(registry: u32, rss_cap: u64) -> Watchdog {
        let (tx, _) = watch::channel(None);
        let collapse = Arc::new(tx);
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let registry = Arc::new(Mutex::new(Some(registry)));
        let thread = {
            let (collapse, stop, peak) = (collapse.clone(), stop.clone(), peak.clone());
            let registry = registry.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut pid = registry.lock();
                    if let Some(p) = *pid
                        && !sample(p, rss_cap, &collapse, &peak)
                    {
                        // Gone, or killed for its size: nothing left to watch.
                        *pid = None;
                    }
                    drop(pid);
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        Watchdog {
            collapse,
            peak,
            registry,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching the registry process (it is about to be killed on purpose).
    pub fn pause(&self) {
        *self.registry.lock() = None;
    }

    /// Watches the registry process `pid` from now on (the restarted one).
    pub fn follow(&self, pid: u32) {
        *self.registry.lock() = Some(pid);
    }

    /// Records a collapse (unless one was recorded already).
    pub fn declare(&self, reason: impl Into<String>) {
        declare(&self.collapse, reason.into());
    }

    /// Why the registry collapsed, if it did.
    pub fn reason(&self) -> Option<String> {
        self.collapse.borrow().clone()
    }

    /// The largest registry RSS seen so far, in bytes.
    pub fn peak_sampled(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Resolves once a collapse is recorded (never, if none is).
    pub fn collapsed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.collapse.subscribe();
        async move {
            if rx.wait_for(Option::is_some).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn declare(collapse: &watch::Sender<Option<String>>, reason: String) {
    collapse.send_if_modified(|now| {
        if now.is_some() {
            return false;
        }
        eprintln!("discovery bench: COLLAPSE: {reason}");
        *now = Some(reason);
        true
    });
}

/// Samples the registry (and this process) once; `false` once there is no point sampling the
/// registry again (it exited, or was killed for its size).
fn sample(
    registry: u32,
    rss_cap: u64,
    collapse: &watch::Sender<Option<String>>,
    peak: &AtomicU64,
) -> bool {
    let mb = |b: u64| b / (1024 * 1024);
    let rss = Pid::Of(registry).rss();
    if let Some(rss) = rss {
        peak.fetch_max(rss, Ordering::Relaxed);
    }
    match rss {
        // A zombie has no VmRSS: the process is gone.
        None => {
            declare(collapse, "the registry process exited".into());
            return false;
        }
        Some(rss) if rss > rss_cap => {
            declare(
                collapse,
                format!(
                    "registry RSS {} MB over the cap of {} MB (STARDUST_DISCOVERY_RSS_CAP_MB): killed",
                    mb(rss),
                    mb(rss_cap)
                ),
            );
            registry_process::kill(registry);
            return false;
        }
        Some(_) => {}
    }
    if let Some(own) = Pid::Own.rss().filter(|&own| own > rss_cap) {
        declare(
            collapse,
            format!(
                "the load generator's RSS {} MB is over the cap of {} MB (pushes pile up faster than it reads them)",
                mb(own),
                mb(rss_cap)
            ),
        );
        registry_process::kill(registry);
        return false;
    }
    true
}
