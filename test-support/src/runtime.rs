//! Runtimes whose only worker a test can occupy (feature `runtime`).
//!
//! A host that runs part of its work on a runtime of its own (event-server's
//! intake, its event log's writer) promises that this part does not wait for
//! the main runtime, which a saturated fan-out keeps busy. A test states that
//! promise by building two [`one_worker`] runtimes, occupying the main one's
//! only worker with [`occupy`], and checking that the other still gets its
//! work done: anything that still depended on the main runtime (its timer,
//! its I/O driver, a task spawned there) would not make progress.
//!
//! ```
//! use std::time::Duration;
//!
//! let main = event_test_support::runtime::one_worker("doc-main");
//! let other = event_test_support::runtime::one_worker("doc-other");
//! let stuck = event_test_support::runtime::occupy(&main, Duration::from_secs(20));
//! // `other` still runs its timers while `main`'s worker is occupied.
//! other.block_on(async { tokio::time::sleep(Duration::from_millis(1)).await });
//! drop(stuck);
//! main.shutdown_background();
//! other.shutdown_background();
//! ```

use std::sync::mpsc;
use std::time::Duration;

use tokio::runtime::Runtime;

/// A multi-threaded runtime with one worker thread named `name`, with
/// I/O and time enabled.
///
/// # Panics
///
/// If the runtime cannot be built.
pub fn one_worker(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("building a one-worker runtime: {e}"))
}

/// Keeps a runtime's worker occupied until it is dropped (or its limit
/// passes); from [`occupy`].
#[must_use = "the worker is released when this is dropped"]
pub struct Occupied {
    release: mpsc::Sender<()>,
}

impl Drop for Occupied {
    fn drop(&mut self) {
        let _ = self.release.send(());
    }
}

/// Occupies `runtime`'s worker (a one-worker runtime's only one) with a
/// blocking wait, and returns once it is occupied. The worker is released
/// when the guard drops, or after `limit` at the latest, so that a test
/// that panics first does not leave it occupied for good.
///
/// # Panics
///
/// If the worker is not occupied within `limit` (it was busy elsewhere).
pub fn occupy(runtime: &Runtime, limit: Duration) -> Occupied {
    let (release, released) = mpsc::channel::<()>();
    let (occupied, is_occupied) = mpsc::channel::<()>();
    runtime.spawn(async move {
        let _ = occupied.send(());
        let _ = released.recv_timeout(limit);
    });
    is_occupied
        .recv_timeout(limit)
        .unwrap_or_else(|e| panic!("the runtime's worker was not occupied in time: {e}"));
    Occupied { release }
}
