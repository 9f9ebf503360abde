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

#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard, atomic};

#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard, atomic};
