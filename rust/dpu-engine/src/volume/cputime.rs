//! The calling thread's CPU clock, for lock hold statistics.

/// CPU time the calling thread has used, in nanoseconds (0 if the clock
/// cannot be read).
pub(crate) fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` through the pointer,
    // which points to a live, writable local of that type;
    // CLOCK_THREAD_CPUTIME_ID needs nothing else, and a failure leaves
    // the local as it was and returns nonzero, handled below.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_thread_clock_counts_work_not_sleep() {
        let start = super::thread_cpu_ns();
        assert!(start > 0);
        std::thread::sleep(std::time::Duration::from_millis(30));
        let slept = super::thread_cpu_ns() - start;
        assert!(slept < 20_000_000, "sleeping used {slept} ns of CPU");
        let mut x = 0u64;
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(super::thread_cpu_ns() - start > slept, "{x}");
    }
}
