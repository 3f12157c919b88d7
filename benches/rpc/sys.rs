//! What the bench needs from the OS: CPU pinning, resource usage, a count of write syscalls, and
//! the facts about the machine that go into the report.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use libc::{c_int, c_long, c_void, iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t};

/// Online CPUs (what `nproc` says when no affinity mask is set).
pub fn cpu_count() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as usize
}

/// Pins the calling thread to `cpu`. Threads inherit the mask of the thread that creates them,
/// so calling this before building a runtime pins the runtime's workers too.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    set_affinity(&[cpu])
}

/// Lets the calling thread run on every online CPU again.
pub fn unpin() -> io::Result<()> {
    let all: Vec<usize> = (0..cpu_count()).collect();
    set_affinity(&all)
}

fn set_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it; pid 0 is the
    // calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// CPU time (user + system, all threads) and peak resident set of this process.
pub struct Usage {
    pub cpu_us: u64,
    pub maxrss_kib: u64,
}

pub fn usage() -> Usage {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    Usage {
        cpu_us: us(ru.ru_utime) + us(ru.ru_stime),
        maxrss_kib: peak_rss_kib().unwrap_or(ru.ru_maxrss as u64),
    }
}

/// Peak RSS of this process's own address space: `VmHWM` from /proc/self/status, in KiB.
///
/// Not `ru_maxrss`: Linux carries it across execve, folding in the high-water mark of the
/// address space the process had before exec. The server is spawned with vfork semantics, so
/// that address space is the bench client's, and `ru_maxrss` reports the client's peak (seen
/// here: it grew run after run). `VmHWM` belongs to the address space exec created.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Counting write syscalls.
//
// `/proc/self/io`'s `syscw` only counts write(2)-family calls that go through the VFS write path
// (write, writev, pwrite, ...). Rust's std writes to a TcpStream with send(2) (MSG_NOSIGNAL), so
// for tokio sockets `syscw` stays at 0 for every plain `write` and only sees vectored writes
// (writev): it would credit tarpc's writev-based codec with syscalls and the others with none.
// Checked on this VM: 100 send() calls on a TCP socket move syscw by 0, 100 write() calls by 100.
//
// So the bench binary interposes the libc functions that can write to a socket. Calls from Rust
// code (std, mio, tokio, all three frameworks) bind to these definitions at link time, because a
// symbol defined in the executable wins over the one in libc.so. Each counts, then makes the
// same syscall directly. Plain write(2) is deliberately not counted: tokio never writes a socket
// with it, and it is what the runtime uses to wake its I/O driver (eventfd) and what stdout uses,
// neither of which is a frame leaving.

static SOCKET_WRITES: AtomicU64 = AtomicU64::new(0);

/// Socket write syscalls (send, sendto, sendmsg, writev) made by this process so far.
pub fn socket_writes() -> u64 {
    SOCKET_WRITES.load(Ordering::Relaxed)
}

fn counted(ret: c_long) -> ssize_t {
    SOCKET_WRITES.fetch_add(1, Ordering::Relaxed);
    ret as ssize_t
}

/// Counting replacement for libc's `send`.
///
/// # Safety
/// Same contract as send(2): `buf` must be valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
    // SAFETY: forwarded unchanged to the kernel; glibc's send is sendto without an address.
    counted(unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd as c_long,
            buf as c_long,
            len as c_long,
            flags as c_long,
            0 as c_long,
            0 as c_long,
        )
    })
}

/// Counting replacement for libc's `sendto`.
///
/// # Safety
/// Same contract as sendto(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    addr_len: socklen_t,
) -> ssize_t {
    // SAFETY: forwarded unchanged to the kernel.
    counted(unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd as c_long,
            buf as c_long,
            len as c_long,
            flags as c_long,
            addr as c_long,
            addr_len as c_long,
        )
    })
}

/// Counting replacement for libc's `sendmsg`.
///
/// # Safety
/// Same contract as sendmsg(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    // SAFETY: forwarded unchanged to the kernel.
    counted(unsafe {
        libc::syscall(
            libc::SYS_sendmsg,
            fd as c_long,
            msg as c_long,
            flags as c_long,
        )
    })
}

/// Counting replacement for libc's `writev` (what tokio uses for vectored socket writes).
///
/// # Safety
/// Same contract as writev(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t {
    // SAFETY: forwarded unchanged to the kernel.
    counted(unsafe {
        libc::syscall(
            libc::SYS_writev,
            fd as c_long,
            iov as c_long,
            iovcnt as c_long,
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Facts for the report.

#[path = "../common/machine.rs"]
mod machine;
pub use machine::{cpu_model, load_average, utc_date};
