//! A connection's "asked to close" signal, also usable on its own (a
//! transport's "stop every connection" signal).
//!
//! # Why not a `CancellationToken`
//!
//! A connection task waits for its close signal in the same `select!` as
//! its outbox, and a `select!` polls every branch on every wake-up — for a
//! streaming client, once per write. A token's `cancelled()` future takes
//! the token's mutex on each of those polls (and its `Notified` another),
//! which showed as a few percent of a fan-out server's CPU. Here a poll
//! with the same waker as last time is one atomic load; the lock is taken
//! only to register a new waker and to close.
//!
//! # Model
//!
//! Built on [`crate::sync`], so `loom_model` below checks it under
//! `--cfg loom`: a waiter polling while another thread closes is always
//! woken (or sees the flag), including when it re-registers a new waker or
//! is dropped in the race.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Waiter-table capacity below which a signal never shrinks its table (a
/// connection's own signal has one waiter; a transport's has one per
/// connection).
const SHRINK_ABOVE: usize = 1024;

/// A signal closed once (a kick, a shutdown) that any number of
/// [`Closed`] futures wait on.
///
/// Waiters are kept by id, so one leaving (its connection ended for
/// another reason) costs the same with ten or ten thousand others waiting.
#[derive(Debug, Default)]
pub struct CloseSignal {
    closing: AtomicBool,
    waiters: Mutex<Waiters>,
    next_waiter: AtomicU64,
}

/// The wakers of a signal's waiting futures, by id.
///
/// Every connection has a signal of its own with one waiter (its task), so
/// the first waiter is kept inline: a table for it would be an allocation
/// of ~130 bytes per open connection (BENCHMARKS.md, issue 23). Further
/// waiters (a transport's signal has one per connection) go to the table,
/// created with the second.
#[derive(Debug, Default)]
struct Waiters {
    first: Option<(u64, Waker)>,
    #[allow(
        clippy::box_collection,
        reason = "8 bytes in every connection's signal instead of an empty table's 48; the table exists only on a transport's signal"
    )]
    rest: Option<Box<HashMap<u64, Waker>>>,
}

impl Waiters {
    /// Registers `waker` for `id`, replacing the one `id` had.
    fn insert(&mut self, id: u64, waker: Waker) {
        if let Some((first, kept)) = &mut self.first
            && *first == id
        {
            *kept = waker;
            return;
        }
        if let Some(kept) = self.rest.as_mut().and_then(|rest| rest.get_mut(&id)) {
            *kept = waker;
            return;
        }
        if self.first.is_none() {
            self.first = Some((id, waker));
        } else {
            self.rest.get_or_insert_default().insert(id, waker);
        }
    }

    /// Forgets `id`'s waker; a table that became mostly empty gives most
    /// of its room back.
    fn remove(&mut self, id: u64) {
        if self.first.as_ref().is_some_and(|(first, _)| *first == id) {
            self.first = None;
            return;
        }
        let Some(rest) = &mut self.rest else {
            return;
        };
        rest.remove(&id);
        // A transport's signal has a waiter per connection: after a mass
        // close its table would keep the peak's buckets for the process's
        // life. Give most of them back once it is a quarter full
        // (amortised, like its growth), as the connection registry does.
        if rest.capacity() > SHRINK_ABOVE && rest.len() < rest.capacity() / 4 {
            let keep = rest.len() * 2;
            rest.shrink_to(keep);
        }
    }

    /// Every waker.
    fn into_wakers(self) -> impl Iterator<Item = Waker> {
        let rest = self.rest.map(|rest| rest.into_values());
        self.first
            .map(|(_, waker)| waker)
            .into_iter()
            .chain(rest.into_iter().flatten())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.as_ref().map_or(0, |rest| rest.len())
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Room in the table (without the inline waiter).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.rest.as_ref().map_or(0, |rest| rest.capacity())
    }
}

impl CloseSignal {
    /// An open signal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Closes the signal and wakes every waiting future (idempotent).
    pub fn close(&self) {
        if self.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        // Out of the lock before waking.
        let waiters = std::mem::take(&mut *self.waiters());
        for waker in waiters.into_wakers() {
            waker.wake();
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// A future that resolves once the signal is closed. Polling it again
    /// with the same waker is one atomic load.
    pub fn closed(&self) -> Closed<'_> {
        Closed {
            signal: self,
            registered: None,
        }
    }

    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        // A panic while holding it cannot leave the list inconsistent.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes a waiter that leaves before the close.
    fn leave(&self, id: u64) {
        self.waiters().remove(id);
    }
}

/// Resolves when a [`CloseSignal`] is closed (for a connection: see
/// [`ConnectionEntry::closed`](super::ConnectionEntry::closed)).
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Closed<'a> {
    signal: &'a CloseSignal,
    /// This future's place in the waiter list and the waker it holds there.
    registered: Option<(u64, Waker)>,
}

impl Future for Closed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.signal.is_closed() {
            return Poll::Ready(());
        }
        if let Some((_, waker)) = &this.registered
            && waker.will_wake(cx.waker())
        {
            return Poll::Pending;
        }
        {
            let mut waiters = this.signal.waiters();
            let id = match this.registered.take() {
                Some((id, _)) => id,
                None => this.signal.next_waiter.fetch_add(1, Ordering::Relaxed),
            };
            waiters.insert(id, cx.waker().clone());
            this.registered = Some((id, cx.waker().clone()));
        }
        // Checked again after registering: a close that ran in between took
        // the list before this waker was in it.
        if this.signal.is_closed() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        if let Some((id, _)) = self.registered.take()
            && !self.signal.is_closed()
        {
            self.signal.leave(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn every_waiter_wakes_on_close_and_a_late_one_resolves_at_once() {
        let signal = Arc::new(CloseSignal::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = signal.clone();
                tokio::spawn(async move { s.closed().await })
            })
            .collect();
        // Every waiter is registered (and so really waits) before the close.
        for _ in 0..100 {
            if signal.waiters().len() == 3 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(signal.waiters().len(), 3);
        assert!(!signal.is_closed());
        signal.close();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a waiter was not woken")
                .expect("the waiter panicked");
        }
        signal.closed().await;
        signal.close();
        assert!(signal.is_closed());
    }

    #[test]
    fn the_waiter_table_shrinks_after_a_mass_close() {
        let signal = CloseSignal::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut waiting: Vec<_> = (0..20_000).map(|_| Box::pin(signal.closed())).collect();
        for closed in &mut waiting {
            assert!(closed.as_mut().poll(&mut cx).is_pending());
        }
        let peak = signal.waiters().capacity();
        assert!(peak >= 20_000);
        let kept = waiting.split_off(19_990);
        drop(waiting);
        assert_eq!(signal.waiters().len(), kept.len());
        assert!(
            signal.waiters().capacity() <= SHRINK_ABOVE * 2,
            "{} buckets kept after the close (peak {peak})",
            signal.waiters().capacity()
        );
        drop(kept);
        assert!(signal.waiters().is_empty());
    }

    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    #[test]
    fn one_waiter_needs_no_table_and_others_share_one() {
        let signal = CloseSignal::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = Box::pin(signal.closed());
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert_eq!(signal.waiters().len(), 1);
        assert!(
            signal.waiters().rest.is_none(),
            "a lone waiter is kept inline"
        );
        let mut others: Vec<_> = (0..3).map(|_| Box::pin(signal.closed())).collect();
        for closed in &mut others {
            assert!(closed.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(signal.waiters().len(), 4);
        // The inline place, once free, takes the next new waiter; a waiter
        // in the table polled again stays where it is (no second entry).
        drop(first);
        assert_eq!(signal.waiters().len(), 3);
        let moved = Waker::from(Arc::new(Noop));
        assert!(!moved.will_wake(cx.waker()));
        assert!(
            others[0]
                .as_mut()
                .poll(&mut Context::from_waker(&moved))
                .is_pending()
        );
        assert_eq!(signal.waiters().len(), 3);
        assert!(signal.waiters().first.is_none());
        let mut late = Box::pin(signal.closed());
        assert!(late.as_mut().poll(&mut cx).is_pending());
        assert!(signal.waiters().first.is_some());
        assert_eq!(signal.waiters().len(), 4);
        drop(others);
        assert_eq!(signal.waiters().len(), 1);
        signal.close();
        assert!(late.as_mut().poll(&mut cx).is_ready());
        assert!(signal.waiters().is_empty());
    }

    /// Each waker is woken on close, the inline one and the table's.
    #[test]
    fn close_wakes_the_inline_waiter_and_the_tables() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let signal = CloseSignal::default();
        let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut waiting: Vec<_> = (0..3).map(|_| Box::pin(signal.closed())).collect();
        for closed in &mut waiting {
            assert!(closed.as_mut().poll(&mut cx).is_pending());
        }
        signal.close();
        assert_eq!(count.0.load(Ordering::SeqCst), 3);
        for closed in &mut waiting {
            assert!(closed.as_mut().poll(&mut cx).is_ready());
        }
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_list() {
        let signal = CloseSignal::default();
        {
            let mut closed = std::pin::pin!(signal.closed());
            assert!(futures_util::poll!(closed.as_mut()).is_pending());
            assert_eq!(signal.waiters().len(), 1);
            // Polled again with the same waker: still one entry.
            assert!(futures_util::poll!(closed.as_mut()).is_pending());
            assert_eq!(signal.waiters().len(), 1);
        }
        assert!(signal.waiters().is_empty());
    }
}

/// Loom models (`RUSTFLAGS="--cfg loom" cargo test -p event-core --release
/// --lib loom_model`).
#[cfg(all(test, loom))]
mod loom_model {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll};

    use loom::sync::Arc;
    use loom::thread;

    use super::CloseSignal;

    /// A waiter that blocks on `closed()` while another thread closes:
    /// never a lost wake-up (loom reports a deadlock if the waiter parks
    /// for good), and the flag is set once it returns.
    #[test]
    fn close_is_always_observed() {
        loom::model(|| {
            let signal = Arc::new(CloseSignal::new());
            let closer = {
                let s = signal.clone();
                thread::spawn(move || s.close())
            };
            loom::future::block_on(signal.closed());
            assert!(signal.is_closed());
            closer.join().expect("closer");
        });
    }

    /// Two waiters and two closers: every waiter wakes, and a second
    /// `close` is harmless.
    #[test]
    fn every_waiter_wakes_with_racing_closers() {
        loom::model(|| {
            let signal = Arc::new(CloseSignal::new());
            let waiter = {
                let s = signal.clone();
                thread::spawn(move || loom::future::block_on(s.closed()))
            };
            let closer = {
                let s = signal.clone();
                thread::spawn(move || s.close())
            };
            signal.close();
            loom::future::block_on(signal.closed());
            waiter.join().expect("waiter");
            closer.join().expect("closer");
        });
    }

    /// A waiter polled once with one waker, then again with another (a
    /// `select!` moved to another task): the close wakes the second waker.
    #[test]
    fn a_new_waker_replaces_the_old_one() {
        loom::model(|| {
            let signal = Arc::new(CloseSignal::new());
            let closer = {
                let s = signal.clone();
                thread::spawn(move || s.close())
            };
            {
                let mut closed = pin!(signal.closed());
                let noop = std::task::Waker::noop();
                if closed.as_mut().poll(&mut Context::from_waker(noop)) == Poll::Pending {
                    loom::future::block_on(closed);
                }
            }
            assert!(signal.is_closed());
            closer.join().expect("closer");
        });
    }
}
