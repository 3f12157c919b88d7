//! What the bench reads from `/proc`: a process's resident memory and CPU time (the registry's,
//! and its own), and facts about the machine for the report. Linux only.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// The first "model name" of /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The 1-minute load average when the run started: how busy the machine was besides the bench.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// Today's date (UTC) as YYYY-MM-DD, without a date crate: days since the epoch to a civil date
/// (Howard Hinnant's algorithm, as in the rpc bench).
pub fn utc_date() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
