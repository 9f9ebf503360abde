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
//! by at least [`MEMORY_TRIM_CLOSED`](crate::config::Config::memory_trim_closed)
//! connections (and at least half of them) from its peak since the last
//! trim, once the count has not changed for a second (at most ten seconds
//! after the fall), on a blocking thread. `0` turns it off; on other
//! allocators than glibc's there is nothing to do.
//!
//! Waiting for the count to settle rather than a fixed second after the
//! fall matters when the close itself takes seconds (several instances on
//! two cores, the cluster mode of the scale bench): a trim in the middle of
//! it left the memory of the connections that closed after it resident,
//! and a fall too small for another trim kept it for good (BENCHMARKS.md,
//! branch `cluster-close`).
//!
//! # Memory freed after the count settled
//!
//! The gauge counts a connection out when its guard drops, but on a
//! saturated instance much of what the connections held is freed seconds
//! later, up to half a minute (measured with six instances on two cores
//! after a fan-out to 100,000 connections: one instance's trim left 97.8 MB,
//! and 55 MB more were freed 20 seconds after it). A trim returns only what
//! is free when it runs: what is freed after it stays resident, and a
//! minute after the close instances stood up to 66 % above their start; a
//! `malloc_trim` then brought all six to within 5 % (BENCHMARKS.md, "what
//! the connections held is freed after the trim"). So a mass close's trim
//! is followed by `FOLLOW_UPS` more, 5, 15, 30 and 60 seconds after it.
//! Each costs what the first does (milliseconds of one blocking thread,
//! under each arena's lock in turn).
//!
//! # The replay ring's events
//!
//! The events the replay ring keeps (`EVENT_REPLAY_SIZE`) are legitimate
//! data, but where they sit matters: each one's renderings were cached by
//! the worker thread that delivered it first, in the middle of the
//! per-connection buffers of a fan-out. After those connections closed,
//! every surviving rendering kept its page resident, so a cluster
//! instance ended 8–21 % above its start instead of 1–2 % (BENCHMARKS.md,
//! branch `close-fanout`). So before trimming, `relocate_and_trim`
//! has the bus copy its retained events on the trim's own (blocking)
//! thread ([`EventBus::relocate_retained`]), whose memory is not the
//! workers', and the originals' pages become free for the trim. The
//! copies keep each event's data but not its renderings, most of its
//! memory: a client that replays one after the close has it rendered
//! again (BENCHMARKS.md, "the retained events' renderings").
//!
//! # Thread caches
//!
//! `malloc_trim` cannot return everything: each thread keeps a cache of
//! freed chunks of its own (glibc's *tcache*, by default up to 7 chunks
//! for each of 64 sizes up to 1 KiB), which the allocator counts as in
//! use. The Tokio workers free most of a closed connection's small
//! allocations, so each keeps up to 448 of them, scattered over the peak's
//! pages: they pin the pages they sit on and keep the free space around
//! them from merging into whole pages that a trim could return. Only the
//! thread itself empties its cache, when it exits, and the workers never
//! do. Measured (BENCHMARKS.md, "RSS back within 10 % after a mass close
//! — malloc's thread caches"): after 19,000 connections closed, RSS
//! stayed 13–15 % above the start with glibc's default caches and 2.9–4.5 %
//! with 2 chunks per size (two instances on NATS: 9–10.5 % and 1.3–1.6 %);
//! the fan-out's cost did not change measurably (it allocates nothing per
//! delivery), a connect and close cycle cost 3–6 % more server CPU.
//!
//! glibc reads its tunables (`GLIBC_TUNABLES`) only when a program is
//! loaded, and no call changes the cache size of a running process or
//! empties another thread's cache. So [`limit_thread_caches`], the first
//! thing `main` does once the settings are parsed (before any thread
//! exists), re-executes the binary in place (`execve` of
//! `/proc/self/exe`, the same arguments, the same process id) with
//! [`TCACHE_TUNABLE`] added to `GLIBC_TUNABLES`. It does not when trimming
//! is off (`MEMORY_TRIM_CLOSED=0`), when the operator set
//! `glibc.malloc.tcache_count` in `GLIBC_TUNABLES` themselves (their
//! value is kept), or in the re-executed process ([`REEXEC_MARKER`] is in
//! its environment: a loader that ignores `GLIBC_TUNABLES`, as for a
//! set-user-ID program, cannot make it loop). Under a tool that runs the
//! program itself and lets an `execve` escape it (`valgrind` without
//! `--trace-children=yes`), set one of the two.

use std::ffi::OsStr;
use std::time::Duration;

use event_core::EventBus;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The environment variable glibc reads its tunables from.
const GLIBC_TUNABLES: &str = "GLIBC_TUNABLES";

/// The tunable that sets the chunks a thread caches per size.
const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";

/// What the server adds to `GLIBC_TUNABLES` when it re-executes itself:
/// 2 chunks per size instead of 7 (see the module docs).
pub const TCACHE_TUNABLE: &str = "glibc.malloc.tcache_count=2";

/// Set in the environment of the re-executed process, which then does
/// not re-execute again.
pub const REEXEC_MARKER: &str = "EVENT_SERVER_MALLOC_REEXEC";

/// The server could not re-execute itself with small thread caches; it
/// runs on with glibc's defaults (and keeps more memory after a mass
/// close).
#[derive(Debug, thiserror::Error)]
#[error("could not re-execute /proc/self/exe with {TCACHE_TUNABLE}")]
pub struct ReexecError {
    #[source]
    source: std::io::Error,
}

/// Re-executes the server in place with smaller malloc thread caches
/// (module docs), unless `trim_closed` (`MEMORY_TRIM_CLOSED`) is 0, the
/// operator chose the cache size in `GLIBC_TUNABLES`, or this process is
/// the re-executed one. Call it before starting any thread: on success
/// it does not return. On other platforms than Linux with glibc it does
/// nothing.
pub fn limit_thread_caches(trim_closed: usize) -> Result<(), ReexecError> {
    let Some(tunables) = tunables_for_reexec(
        trim_closed,
        std::env::var_os(GLIBC_TUNABLES).as_deref(),
        std::env::var_os(REEXEC_MARKER).is_some(),
    ) else {
        return Ok(());
    };
    reexec(&tunables)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn reexec(tunables: &str) -> Result<(), ReexecError> {
    use std::os::unix::process::CommandExt;

    let mut args = std::env::args_os();
    let mut command = std::process::Command::new("/proc/self/exe");
    if let Some(name) = args.next() {
        command.arg0(name);
    }
    // `exec` returns only if the `execve` failed.
    let source = command
        .args(args)
        .env(GLIBC_TUNABLES, tunables)
        .env(REEXEC_MARKER, "1")
        .exec();
    Err(ReexecError { source })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn reexec(_tunables: &str) -> Result<(), ReexecError> {
    // No glibc: no thread caches of its kind to limit.
    Ok(())
}

/// The `GLIBC_TUNABLES` to re-execute with, given the current one, or
/// `None` not to re-execute: trimming off (`trim_closed == 0`), already
/// re-executed (`marker`), the tcache size set by the operator, or a value
/// that is not UTF-8 (left alone).
fn tunables_for_reexec(
    trim_closed: usize,
    current: Option<&OsStr>,
    marker: bool,
) -> Option<String> {
    if trim_closed == 0 || marker {
        return None;
    }
    let current = match current {
        Some(value) => value.to_str()?,
        None => "",
    };
    // glibc's syntax: `name=value` items separated by `:`.
    let chosen = current.split(':').any(|item| {
        item.split_once('=')
            .is_some_and(|(name, _)| name == TCACHE_COUNT)
    });
    if chosen {
        None
    } else if current.is_empty() {
        Some(TCACHE_TUNABLE.to_owned())
    } else {
        Some(format!("{current}:{TCACHE_TUNABLE}"))
    }
}

/// How long the count must have stayed unchanged before a trim: a mass
/// close takes a moment, and one trim after it is enough.
const SETTLE: Duration = Duration::from_secs(1);

/// The longest a trim waits for the count to settle: connections that keep
/// opening or closing postpone it at most this long.
const MAX_SETTLE: Duration = Duration::from_secs(10);

/// The trims that follow a mass close's trim, each this long after the one
/// before it (module docs, "Memory freed after the count settled").
pub(crate) const FOLLOW_UPS: [Duration; 4] = [
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(15),
    Duration::from_secs(30),
];

/// Watches `total` (the connection gauge) until `stop`, and calls `trim`
/// after the count fell by at least `min_closed` (and by half) from its
/// peak since the last trim, once it has not changed for [`SETTLE`] (or
/// [`MAX_SETTLE`] after the fall, if it keeps changing); then again after
/// each of [`FOLLOW_UPS`], on a task of their own, while the gauge is
/// watched for the next fall.
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
        // Trim once the closes are over, not a fixed second after the
        // count crossed the threshold: closing thousands can take seconds
        // on a busy machine, and the connections that closed after the
        // trim kept their pages (module docs).
        let give_up = tokio::time::Instant::now() + MAX_SETTLE;
        loop {
            let quiet = tokio::time::sleep(SETTLE);
            tokio::select! {
                () = stop.cancelled() => return,
                () = quiet => break,
                () = tokio::time::sleep_until(give_up) => break,
                changed = total.changed() => if changed.is_err() { return },
            }
        }
        let _ = tokio::task::spawn_blocking(trim.clone()).await;
        tokio::spawn(follow_up(trim.clone(), stop.clone()));
        // The count now is the new base: the next trim needs another fall.
        peak = *total.borrow_and_update();
    }
}

/// The [`FOLLOW_UPS`] of one mass close's trim, until `stop`.
async fn follow_up(trim: impl Fn() + Send + Sync + Clone + 'static, stop: CancellationToken) {
    for wait in FOLLOW_UPS {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let _ = tokio::task::spawn_blocking(trim.clone()).await;
    }
}

/// Whether the count fell from `peak` to `now` by at least `min_closed`
/// and by at least half of `peak`.
fn fell_enough(peak: usize, now: usize, min_closed: usize) -> bool {
    let closed = peak.saturating_sub(now);
    closed >= min_closed && closed >= peak / 2
}

/// Copies the replay ring's events away from the freed connections'
/// pages, then [`trim`]s. Runs on a blocking thread (module docs, "The
/// replay ring's events").
pub(crate) fn relocate_and_trim(bus: &EventBus) {
    trim(bus.relocate_retained());
}

/// Returns malloc's free pages to the system (glibc), logging how much
/// the RSS fell and how many retained events were copied before
/// (`relocated`). The workspace's only `unsafe`: a call into the C library
/// std already links, with no pointer or invariant to uphold.
#[cfg_attr(
    all(target_os = "linux", target_env = "gnu"),
    expect(unsafe_code, reason = "the malloc_trim FFI call")
)]
pub(crate) fn trim(relocated: usize) {
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = relocated;
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
            relocated_events = relocated,
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
    fn the_trim_first_moves_the_retained_events_into_copies() {
        let bus = EventBus::default();
        let originals: Vec<_> = (0..3)
            .map(|i| bus.publish(event_core::QueueStatus::new(i, 0)))
            .collect();
        relocate_and_trim(&bus);
        let retained = bus.history(None, 10).expect("retained");
        assert_eq!(retained.len(), 3);
        for (now, before) in retained.iter().zip(&originals) {
            assert_eq!(now.seq(), before.seq());
            assert!(!Arc::ptr_eq(now, before), "seq {} not moved", now.seq());
        }
    }

    #[test]
    fn the_tcache_tunable_is_added_unless_chosen_or_off() {
        let tunables =
            |current: Option<&str>| tunables_for_reexec(1_000, current.map(OsStr::new), false);
        assert_eq!(tunables(None).as_deref(), Some(TCACHE_TUNABLE));
        assert_eq!(tunables(Some("")).as_deref(), Some(TCACHE_TUNABLE));
        // The operator's other tunables are kept.
        assert_eq!(
            tunables(Some("glibc.malloc.arena_max=2")),
            Some(format!("glibc.malloc.arena_max=2:{TCACHE_TUNABLE}"))
        );
        // Their own tcache size wins, wherever it is in the list.
        assert_eq!(tunables(Some("glibc.malloc.tcache_count=7")), None);
        assert_eq!(
            tunables(Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0")),
            None
        );
        // A name that only starts like it is another tunable.
        assert!(tunables(Some("glibc.malloc.tcache_count_x=1")).is_some());
        // Trimming off, or already re-executed: nothing to do.
        assert_eq!(tunables_for_reexec(0, None, false), None);
        assert_eq!(tunables_for_reexec(1_000, None, true), None);
        // A value that is not UTF-8 is left alone.
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            assert_eq!(
                tunables_for_reexec(1_000, Some(OsStr::from_bytes(b"\xff")), false),
                None
            );
        }
    }

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

    /// A mass close trims once the count settles, then [`FOLLOW_UPS`] more
    /// times, and no more; a small close does not trim.
    #[tokio::test(start_paused = true)]
    async fn a_mass_close_trims_then_follows_up_and_a_small_one_does_not() {
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
        let first = tokio::time::Instant::now();
        // Then one after each follow-up's wait, and no more.
        let mut after = Duration::ZERO;
        for (n, wait) in FOLLOW_UPS.into_iter().enumerate() {
            after += wait;
            tokio::time::sleep_until(first + after - SETTLE / 2).await;
            assert_eq!(trims.load(Ordering::SeqCst), n + 1, "early follow-up");
            trims_reach(&trims, n + 2).await;
        }
        tokio::time::sleep(FOLLOW_UPS.iter().sum::<Duration>() * 3).await;
        let all = 1 + FOLLOW_UPS.len();
        assert_eq!(trims.load(Ordering::SeqCst), all);
        // The base is now 10: up to 300 and back to 0 trims again.
        tx.send_replace(300);
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send_replace(0);
        trims_reach(&trims, all + 1).await;
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

    /// A close spread over seconds (a busy machine, several instances):
    /// one trim, after the last close rather than in the middle of it; and
    /// a count that never settles is trimmed after `MAX_SETTLE`.
    #[tokio::test(start_paused = true)]
    async fn a_slow_close_trims_once_after_the_count_settles() {
        let (tx, rx) = watch::channel(0usize);
        let trims = Arc::new(AtomicUsize::new(0));
        let at_trim = Arc::new(AtomicUsize::new(usize::MAX));
        let stop = CancellationToken::new();
        let counted = trims.clone();
        let seen = at_trim.clone();
        let gauge = rx.clone();
        let task = tokio::spawn(reclaim_after_closes(rx, 100, stop.clone(), move || {
            seen.store(*gauge.borrow(), Ordering::SeqCst);
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        tx.send_replace(5_000);
        tokio::time::sleep(Duration::from_millis(10)).await;
        // 5,000 → 0 over 4 s, 250 every 200 ms: half are closed after 2 s.
        for left in (0..5_000).step_by(250).rev() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            tx.send_replace(left);
            assert_eq!(trims.load(Ordering::SeqCst), 0, "trimmed at {left}");
        }
        trims_reach(&trims, 1).await;
        assert_eq!(at_trim.load(Ordering::SeqCst), 0);
        tokio::time::sleep(SETTLE * 3).await;
        assert_eq!(trims.load(Ordering::SeqCst), 1);
        // Its follow-ups, out of the way of what comes next.
        tokio::time::sleep(FOLLOW_UPS.iter().sum::<Duration>()).await;
        let base = 1 + FOLLOW_UPS.len();
        assert_eq!(trims.load(Ordering::SeqCst), base);

        // Up again, down by half, then a count that changes every 500 ms:
        // trimmed MAX_SETTLE after the fall all the same.
        tx.send_replace(4_000);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let fell = tokio::time::Instant::now();
        tx.send_replace(1_000);
        let churn = async {
            for i in 0..40 {
                tokio::time::sleep(SETTLE / 2).await;
                tx.send_replace(1_000 + i % 2);
            }
        };
        tokio::select! {
            () = churn => panic!("no trim while the count kept changing"),
            () = trims_reach(&trims, base + 1) => {}
        }
        let waited = fell.elapsed();
        assert!(
            waited >= MAX_SETTLE && waited < MAX_SETTLE + SETTLE,
            "trimmed {waited:?} after the fall"
        );
        stop.cancel();
        task.await.unwrap();
    }
}
