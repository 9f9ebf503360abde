//! Lists a connection fills and empties within one poll, lent per worker
//! thread instead of kept per connection.
//!
//! An idle connection gets an event every few seconds (the job bridge's
//! `QueueStatus`) and a pong every ping interval; with a list of its own
//! for each, every connection kept a small buffer for good once it had
//! used it (~200 bytes, and all of them allocate it at the same tick, so
//! freeing it afterwards does not lower the heap's peak; BENCHMARKS.md,
//! `cd35798`). The drain and the read fill and empty their list without
//! crossing an `.await`, so one list per thread serves every connection it
//! runs. A connection whose list cannot be emptied in the same poll (a
//! write the socket did not take, messages behind a `refresh`) keeps it
//! until it is, then gives it back.

use std::cell::Cell;
use std::thread::LocalKey;

use event_core::Outgoing;

use crate::frame::Incoming;

/// The most items a thread keeps room for between uses: what a drain of a
/// full default outbox holds (16 bytes each, 16 KiB per thread). A larger
/// list, from a burst past it, is freed.
const KEEP_ITEMS: usize = 1024;

thread_local! {
    /// The drained batch (see [`lend_batch`]).
    static BATCH: Cell<Vec<Outgoing>> = const { Cell::new(Vec::new()) };
    /// The client messages just read (see [`lend_incoming`]).
    static INCOMING: Cell<Vec<Incoming>> = const { Cell::new(Vec::new()) };
}

/// This thread's list for a drain of the outbox (empty; with the room an
/// earlier drain left, unless another connection holds it).
pub(crate) fn lend_batch() -> Vec<Outgoing> {
    lend(&BATCH)
}

/// Gives back a list from [`lend_batch`] (or any other), emptied.
pub(crate) fn give_back_batch(list: Vec<Outgoing>) {
    give_back(&BATCH, list);
}

/// This thread's list for client messages.
pub(crate) fn lend_incoming() -> Vec<Incoming> {
    lend(&INCOMING)
}

/// Gives back a list from [`lend_incoming`], emptied.
pub(crate) fn give_back_incoming(list: Vec<Incoming>) {
    give_back(&INCOMING, list);
}

fn lend<T: 'static>(key: &'static LocalKey<Cell<Vec<T>>>) -> Vec<T> {
    // Gone only while the thread exits: a list of its own then.
    key.try_with(Cell::take).unwrap_or_default()
}

fn give_back<T: 'static>(key: &'static LocalKey<Cell<Vec<T>>>, mut list: Vec<T>) {
    list.clear();
    if list.capacity() == 0 || list.capacity() > KEEP_ITEMS {
        return;
    }
    // The thread keeps the larger of its list and this one.
    let _ = key.try_with(|cell| {
        let kept = cell.take();
        cell.set(if kept.capacity() >= list.capacity() {
            kept
        } else {
            list
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_given_back_is_lent_again_with_its_room() {
        let mut list = lend_batch();
        list.push(Outgoing::Lagged(1));
        let room = list.capacity();
        let at = list.as_ptr();
        give_back_batch(list);
        let again = lend_batch();
        assert!(again.is_empty());
        assert_eq!((again.capacity(), again.as_ptr()), (room, at));
        // Lent out: the next one is a new, empty list.
        assert_eq!(lend_batch().capacity(), 0);
        give_back_batch(again);
    }

    #[test]
    fn a_burst_sized_list_is_not_kept() {
        let mut list = lend_incoming();
        list.reserve(KEEP_ITEMS + 1);
        give_back_incoming(list);
        assert_eq!(lend_incoming().capacity(), 0);
    }
}
