//! Pinning threads to CPU cores.

use std::io;
use std::sync::OnceLock;

/// The CPUs this process may run on, as first seen by netio (taken from the
/// calling thread's affinity mask at the first call). Empty if unknown.
fn allowed_cpus() -> &'static [usize] {
    static ALLOWED: OnceLock<Vec<usize>> = OnceLock::new();
    ALLOWED.get_or_init(|| {
        let mut set = empty_set();
        // SAFETY: we pass a pointer to a live cpu_set_t and its exact size;
        // the kernel writes at most that many bytes.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `cpu` is below CPU_SETSIZE, the capacity of `set`.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect()
    })
}

fn empty_set() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    unsafe { std::mem::zeroed() }
}

/// Pins the calling thread to one CPU core.
///
/// `core` counts the CPUs the process is allowed to use (its affinity mask at
/// the first call into this module), so `0..available_cores()` is always
/// valid, also under `taskset` or a cpuset; on an unrestricted machine core
/// `n` is CPU `n`. Errors with `InvalidInput` if `core` is out of range.
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    let allowed = allowed_cpus();
    let cpu = if allowed.is_empty() {
        core
    } else {
        *allowed.get(core).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("core {core} out of range: {} CPUs allowed", allowed.len()),
            )
        })?
    };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} out of range"),
        ));
    }
    let mut set = empty_set();
    // SAFETY: `cpu` is below CPU_SETSIZE, the capacity of `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: we pass a pointer to a live, initialised cpu_set_t and its
    // exact size; the kernel only reads it. pid 0 means the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How many cores the process can use: its affinity mask, further limited by
/// a cgroup CPU quota (`std::thread::available_parallelism`). At least 1.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
