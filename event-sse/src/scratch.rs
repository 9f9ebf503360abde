//! Lists a stream fills and empties within one drain, lent per worker
//! thread instead of kept per connection.
//!
//! An idle connection gets an event every few seconds (the job bridge's
//! `QueueStatus`); with lists of its own, every connection kept two small
//! buffers for good after its first event (~190 bytes with malloc's
//! headers, allocated by all connections at the same tick, so freeing them
//! afterwards does not lower the heap's peak; BENCHMARKS.md, `cd35798`).
//! A drain fills and empties them between two `.await`s (in
//! [`Connection::drain_chunk`](crate::stream::Connection)), so one list
//! per thread serves every connection it runs.

use std::cell::Cell;
use std::thread::LocalKey;

use event_core::{Event, Outgoing};

use crate::stream::Item;

/// The most items a thread keeps room for between drains (a drain of a
/// full default outbox); a larger list, from a burst past it, is freed.
const KEEP_ITEMS: usize = 1024;

thread_local! {
    /// What a feed of the bus's events gives a drain ([`lend_items`]).
    static ITEMS: Cell<Vec<Item<Event>>> = const { Cell::new(Vec::new()) };
    /// What the hub feed drains its outbox into ([`lend_outgoing`]).
    static OUTGOING: Cell<Vec<Outgoing>> = const { Cell::new(Vec::new()) };
}

/// This thread's list of stream items (empty, with the room an earlier
/// drain left).
pub(crate) fn lend_items() -> Vec<Item<Event>> {
    lend(&ITEMS)
}

/// Gives back a list from [`lend_items`], emptied.
pub(crate) fn give_back_items(list: Vec<Item<Event>>) {
    give_back(&ITEMS, list);
}

/// This thread's list for an outbox drain.
pub(crate) fn lend_outgoing() -> Vec<Outgoing> {
    lend(&OUTGOING)
}

/// Gives back a list from [`lend_outgoing`], emptied.
pub(crate) fn give_back_outgoing(list: Vec<Outgoing>) {
    give_back(&OUTGOING, list);
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
        let mut list = lend_outgoing();
        list.push(Outgoing::Lagged(1));
        let (room, at) = (list.capacity(), list.as_ptr());
        give_back_outgoing(list);
        let again = lend_outgoing();
        assert!(again.is_empty());
        assert_eq!((again.capacity(), again.as_ptr()), (room, at));
        // Lent out: the next one is a new, empty list.
        assert_eq!(lend_outgoing().capacity(), 0);
        give_back_outgoing(again);
    }

    #[test]
    fn a_burst_sized_list_is_not_kept() {
        let mut list = lend_items();
        list.reserve(KEEP_ITEMS + 1);
        give_back_items(list);
        assert_eq!(lend_items().capacity(), 0);
    }
}
