//! Process facts for status reports, where the platform tells them cheaply (Linux `/proc`).

/// CPU time (user + system) the process has used so far, in milliseconds; `None` where unknown.
pub(crate) fn cpu_time_ms() -> Option<u64> {
    // Fields 14 and 15 of /proc/self/stat, in clock ticks. The command name (field 2) may hold
    // spaces, so fields are counted after its closing parenthesis.
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI.
    Some((utime + stime) * 10)
}

/// The process's resident memory, in bytes; `None` where unknown.
pub(crate) fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn linux_reports_cpu_and_memory() {
        // Burn a little CPU so the figure is very likely above zero.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(super::cpu_time_ms().is_some());
        assert!(super::rss_bytes().unwrap() > 1024 * 1024);
    }
}
