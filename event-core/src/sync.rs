//! The synchronization primitives of event-core's hand-written concurrency,
//! swapped for [`loom`](https://docs.rs/loom)'s when built with
//! `RUSTFLAGS="--cfg loom"`.
//!
//! In a normal build these are the `std` types themselves (re-exports, no
//! wrapper), so the hot path is unchanged. Under `--cfg loom` the model
//! tests (`cargo test -p event-core --release --lib loom_model`, a
//! `cargo xtask ci` step) run the real structures under every interleaving
//! loom explores:
//!
//! | structure | what uses this module | model |
//! |---|---|---|
//! | [`CloseSignal`](crate::CloseSignal) | the flag, the waiter list, the id counter | `registry::close::loom_model` |
//! | [`Outbox`](crate::Outbox) | the queue's lock | `fanout::loom_model` |
//! | the sink intake | the queue's lock | `sink::intake::loom_model` |
//! | [`EventBus`](crate::EventBus) | the publish critical section (which also guards the [`ReplayRing`](crate::ReplayRing)) | `bus::loom_model` |
//!
//! Tokio's primitives (`Notify`, `broadcast`) are not loom-aware: the
//! models treat each of their calls as one atomic step, so they check the
//! protocol event-core builds on them (what is done under which lock, and
//! in which order the state change and the wake-up happen), not Tokio.

//!
//! Loom switches threads only at its own operations, and orders only the
//! operations it sees. So each structure that calls into Tokio holds an
//! [`Unmodelled`] and marks every such call with
//! [`step`](Unmodelled::step): in a model that is an operation on one
//! shared loom atomic, so loom explores the calls' orders against each
//! other and against the locks (without it a model would never see, say, a
//! publisher's send land between a lock's release and a subscribe). In a
//! normal build it is a zero-sized type and `step` does nothing.
//!
//! Only the unit-test build swaps (`cfg(all(test, loom))`): loom is a
//! dev-dependency, and the library other targets link stays on `std`.

#[cfg(not(all(test, loom)))]
pub(crate) use std::sync::{Mutex, MutexGuard, atomic};

#[cfg(all(test, loom))]
pub(crate) use loom::sync::{Mutex, MutexGuard, atomic};

/// Stands for a primitive loom cannot see into (Tokio's `Notify`,
/// `broadcast`) in a model; see the module doc. Zero-sized outside the
/// model tests.
#[derive(Debug)]
pub(crate) struct Unmodelled {
    #[cfg(all(test, loom))]
    clock: loom::sync::atomic::AtomicUsize,
}

impl Unmodelled {
    pub(crate) fn new() -> Self {
        Unmodelled {
            #[cfg(all(test, loom))]
            clock: loom::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Marks a call into the primitive (a send, a subscribe, a notify, a
    /// wait). Nothing at all outside the model tests.
    #[inline(always)]
    pub(crate) fn step(&self) {
        #[cfg(all(test, loom))]
        self.clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}
