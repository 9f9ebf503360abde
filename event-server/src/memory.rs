//! Giving memory back to the system after many connections close.
//!
//! Each connection's buffers and tasks are small allocations spread over
//! glibc malloc's arenas. When the connections close, malloc keeps the
//! freed pages for reuse: after 100,000 connections closed, the process's
//! RSS stayed at three to four times its start (BENCHMARKS.md, scale), so a
//! burst of connections would cost its peak memory for the rest of the
//! process's life. `malloc_trim(0)` hands the free pages of every arena
//! back (`madvise(MADV_DONTNEED)`), so RSS falls back towards what the
//! live connections need.
//!
//! A trim walks every arena under its lock, so it is not run on a timer:
//! a task watches the connection gauge and trims once the count has fallen
//! by at least [`MEMORY_TRIM_CLOSED`](crate::Config::memory_trim_closed)
//! connections (and at least half of them) from its peak since the last
//! trim, a second after the fall, on a blocking thread. `0` turns it off;
//! on other allocators than glibc's there is nothing to do.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long the count must have fallen before a trim: a mass close takes a
/// moment, and one trim after it is enough.
const SETTLE: Duration = Duration::from_secs(1);

/// Watches `total` (the connection gauge) until `stop`, and calls `trim`
/// after the count fell by at least `min_closed` (and by half) from its
/// peak since the last trim.
pub(crate) async fn reclaim_after_closes(
    mut total: watch::Receiver<usize>,
    min_closed: usize,
    stop: CancellationToken,
    trim: impl Fn() + Send + Sync + Clone + 'static,
) {
    if min_closed == 0 {
        return;
    }
    let mut peak = *total.borrow_and_update();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = total.changed() => if changed.is_err() { return },
        }
        let now = *total.borrow_and_update();
        peak = peak.max(now);
        if !fell_enough(peak, now, min_closed) {
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SETTLE) => {}
        }
        let trim = trim.clone();
        let _ = tokio::task::spawn_blocking(trim).await;
        // The count now is the new base: the next trim needs another fall.
        peak = *total.borrow_and_update();
    }
}

/// Whether the count fell from `peak` to `now` by at least `min_closed`
/// and by at least half of `peak`.
fn fell_enough(peak: usize, now: usize, min_closed: usize) -> bool {
    let closed = peak.saturating_sub(now);
    closed >= min_closed && closed >= peak / 2
}

/// Returns malloc's free pages to the system (glibc), logging how much
/// the RSS fell. The workspace's only `unsafe`: a call into the C library
/// std already links, with no pointer or invariant to uphold.
#[cfg_attr(
    all(target_os = "linux", target_env = "gnu"),
    expect(unsafe_code, reason = "the malloc_trim FFI call")
)]
pub(crate) fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let before = rss_kib();
        let started = std::time::Instant::now();
        // SAFETY: `malloc_trim` takes no pointers; it locks and walks
        // malloc's own arenas and returns their free pages, with no
        // precondition on the caller.
        unsafe {
            libc::malloc_trim(0);
        }
        tracing::info!(
            rss_before_kib = before,
            rss_after_kib = rss_kib(),
            took_ms = started.elapsed().as_millis() as u64,
            "connections closed: free memory returned to the system"
        );
    }
}

/// The process's resident set, KiB (0 where unknown).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_fall_counts_when_it_is_large_and_at_least_half() {
        assert!(fell_enough(10_000, 0, 1_000));
        assert!(fell_enough(2_000, 1_000, 1_000));
        // Large but less than half of the peak.
        assert!(!fell_enough(10_000, 6_000, 1_000));
        // Half, but fewer than the minimum.
        assert!(!fell_enough(1_000, 100, 1_000));
    }

    /// Waits (paused clock) until `trims` reaches `n`.
    async fn trims_reach(trims: &AtomicUsize, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while trims.load(Ordering::SeqCst) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no trim: {}",
                trims.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_mass_close_trims_once_and_a_small_one_does_not() {
        let (tx, rx) = watch::channel(0usize);
        let trims = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let counted = trims.clone();
        let task = tokio::spawn(reclaim_after_closes(rx, 100, stop.clone(), move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        // Up to 1,000 and down by 50: no trim.
        tx.send_replace(1_000);
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send_replace(950);
        tokio::time::sleep(SETTLE * 3).await;
        assert_eq!(trims.load(Ordering::SeqCst), 0);
        // Down to 10: one trim, a second later.
        tx.send_replace(10);
        trims_reach(&trims, 1).await;
        tokio::time::sleep(SETTLE * 3).await;
        assert_eq!(trims.load(Ordering::SeqCst), 1);
        // The base is now 10: up to 300 and back to 0 trims again.
        tx.send_replace(300);
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send_replace(0);
        trims_reach(&trims, 2).await;
        stop.cancel();
        task.await.unwrap();
    }

    /// The mass close of the test above, with `MEMORY_TRIM_CLOSED=0`: no
    /// trim, however long it is watched.
    #[tokio::test(start_paused = true)]
    async fn zero_turns_it_off() {
        let (tx, rx) = watch::channel(0usize);
        let trims = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let counted = trims.clone();
        let task = tokio::spawn(reclaim_after_closes(rx, 0, stop.clone(), move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        tx.send_replace(1_000);
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send_replace(10);
        tokio::time::sleep(SETTLE * 3).await;
        tx.send_replace(300);
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send_replace(0);
        tokio::time::sleep(SETTLE * 3).await;
        assert_eq!(trims.load(Ordering::SeqCst), 0);
        stop.cancel();
        tokio::time::timeout(SETTLE, task)
            .await
            .expect("the task ends when stopped")
            .unwrap();
    }
}
