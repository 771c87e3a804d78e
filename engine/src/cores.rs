//! The CPU cores this process may run on, and pinning a thread to one of them.
//!
//! The set comes from `sched_getaffinity`, so it already reflects systemd's
//! `CPUAffinity=`, `taskset` and cgroup cpusets: serving starts one runtime per
//! core in this set and never assumes cores `0..nproc`.

use std::io;

/// Bits in one word of the kernel's CPU mask.
const WORD_BITS: usize = libc::c_ulong::BITS as usize;

/// The cores this process may run on, ascending.
///
/// Reads the mask of the process's main thread (pid == tid), not the calling
/// thread's, so a thread that has already pinned itself still sees every core the
/// service was given.
pub fn allowed_cores() -> io::Result<Vec<usize>> {
    // SAFETY: getpid has no preconditions and cannot fail.
    let pid = unsafe { libc::getpid() };
    affinity_of(pid)
}

/// The cores the calling thread may run on, ascending (one core once pinned).
pub fn current_thread_cores() -> io::Result<Vec<usize>> {
    affinity_of(0)
}

/// Restrict the calling thread to `core`.
///
/// A core outside [`allowed_cores`] is an [`io::ErrorKind::InvalidInput`] error
/// naming the allowed set, rather than the kernel's bare `EINVAL`.
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    let mut mask = vec![0 as libc::c_ulong; core / WORD_BITS + 1];
    mask[core / WORD_BITS] |= 1 << (core % WORD_BITS);
    let size = std::mem::size_of_val(mask.as_slice());
    // SAFETY: `mask` is a live buffer of `size` bytes, which is all the kernel reads;
    // the kernel accepts any multiple of the word size as the mask length.
    let rc = unsafe { libc::sched_setaffinity(0, size, mask.as_ptr().cast()) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) {
        let allowed = allowed_cores().unwrap_or_default();
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("core {core} is not one this process may run on (allowed: {allowed:?})"),
        ));
    }
    Err(err)
}

fn affinity_of(pid: libc::pid_t) -> io::Result<Vec<usize>> {
    // Start at the size glibc's cpu_set_t uses (1024 CPUs) and grow on EINVAL,
    // which the kernel returns when the buffer is smaller than its own mask.
    let mut words = 1024 / WORD_BITS;
    loop {
        let mut mask = vec![0 as libc::c_ulong; words];
        let size = std::mem::size_of_val(mask.as_slice());
        // SAFETY: `mask` is a live, writable buffer of `size` bytes.
        let rc = unsafe { libc::sched_getaffinity(pid, size, mask.as_mut_ptr().cast()) };
        if rc == 0 {
            let cores = mask
                .iter()
                .enumerate()
                .flat_map(|(w, &bits)| {
                    (0..WORD_BITS)
                        .filter(move |b| bits & (1 << b) != 0)
                        .map(move |b| w * WORD_BITS + b)
                })
                .collect();
            return Ok(cores);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINVAL) && words < (1 << 16) {
            words *= 2;
            continue;
        }
        return Err(err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_cores_are_sorted_distinct_and_online() {
        let cores = allowed_cores().unwrap();
        assert!(!cores.is_empty());
        assert!(cores.windows(2).all(|w| w[0] < w[1]), "{cores:?}");
        let online = std::thread::available_parallelism().unwrap().get();
        // available_parallelism itself honours the affinity mask, so the counts agree.
        assert_eq!(cores.len(), online, "{cores:?}");
    }

    #[test]
    fn pinning_restricts_the_thread_to_that_core() {
        for core in allowed_cores().unwrap() {
            let seen = std::thread::spawn(move || {
                pin_current_thread(core).unwrap();
                // SAFETY: sched_getcpu has no preconditions.
                let running_on = unsafe { libc::sched_getcpu() };
                (
                    current_thread_cores().unwrap(),
                    running_on,
                    allowed_cores().unwrap(),
                )
            })
            .join()
            .unwrap();
            assert_eq!(seen.0, vec![core]);
            assert_eq!(seen.1, core as i32);
            // The process-wide view is unaffected by one thread pinning itself.
            assert_eq!(seen.2, allowed_cores().unwrap());
        }
    }

    #[test]
    fn pinning_to_a_core_outside_the_set_is_a_clear_error() {
        let outside = allowed_cores().unwrap().last().unwrap() + 4096;
        let err = std::thread::spawn(move || pin_current_thread(outside))
            .join()
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            err.to_string().contains(&format!("core {outside}")),
            "{err}"
        );
    }

    /// Also the child of `a_restricted_affinity_mask_is_respected`, which reads what it prints.
    #[test]
    fn affinity_child_probe() {
        let cores = allowed_cores().unwrap();
        assert!(!cores.is_empty());
        println!("ALLOWED={cores:?}");
    }

    #[test]
    fn a_restricted_affinity_mask_is_respected() {
        // taskset sets the mask the same way systemd's CPUAffinity= does: before exec.
        let first = allowed_cores().unwrap()[0];
        let out = std::process::Command::new("taskset")
            .args(["-c", &first.to_string()])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "cores::tests::affinity_child_probe",
                "--nocapture",
                "--test-threads=1",
            ])
            .output()
            .expect("taskset (util-linux) must be installed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("ALLOWED=[{first}]")), "{stdout}");
    }
}
