//! What the bench reads from `/proc`: a process's resident memory and CPU time (the registry's,
//! and its own), and facts about the machine for the report. Linux only.

use std::time::Duration;

/// A process to read figures of: a child's pid, or this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    Own,
    Of(u32),
}

impl Pid {
    fn path(self, file: &str) -> String {
        match self {
            Pid::Own => format!("/proc/self/{file}"),
            Pid::Of(pid) => format!("/proc/{pid}/{file}"),
        }
    }

    /// Resident memory now (`VmRSS`), in bytes; `None` once the process is gone.
    pub fn rss(self) -> Option<u64> {
        self.status_kib("VmRSS:").map(|kib| kib * 1024)
    }

    /// Peak resident memory over the process's life (`VmHWM`), in bytes.
    pub fn peak_rss(self) -> Option<u64> {
        self.status_kib("VmHWM:").map(|kib| kib * 1024)
    }

    /// Starts this process's peak RSS afresh (writing 5 to `clear_refs`, Linux 4.0+), so the
    /// next [`peak_rss`](Self::peak_rss) covers what came after; `false` if the kernel refused.
    pub fn reset_own_peak() -> bool {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }

    fn status_kib(self, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(self.path("status")).ok()?;
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// CPU time used so far, user and system, all threads.
    pub fn cpu(self) -> Option<Duration> {
        let stat = std::fs::read_to_string(self.path("stat")).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut fields = rest.split_whitespace();
        // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
        let utime: u64 = fields.nth(11)?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(Duration::from_secs_f64(
            (utime + stime) as f64 / clock_ticks(),
        ))
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Online CPUs.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[path = "../common/machine.rs"]
mod machine;
pub use machine::{cpu_model, load_average, utc_date};
