//! The lists a stream's drain fills and empties, lent per worker thread
//! ([`event_core::fanout::thread_list`]) instead of kept per connection.
//!
//! A drain fills and empties them between two `.await`s (in
//! [`Connection::drain_chunk`](crate::stream::Connection)), so one list per
//! thread serves every connection it runs.

use std::cell::Cell;

use event_core::fanout::thread_list;
use event_core::{Event, Outgoing};

use crate::stream::Item;

thread_local! {
    /// What a feed of the bus's events gives a drain ([`lend_items`]).
    static ITEMS: Cell<Vec<Item<Event>>> = const { Cell::new(Vec::new()) };
    /// What the hub feed drains its outbox into ([`lend_outgoing`]).
    static OUTGOING: Cell<Vec<Outgoing>> = const { Cell::new(Vec::new()) };
}

/// This thread's list of stream items.
pub(crate) fn lend_items() -> Vec<Item<Event>> {
    thread_list::lend(&ITEMS)
}

/// Gives back a list from [`lend_items`], emptied.
pub(crate) fn give_back_items(list: Vec<Item<Event>>) {
    thread_list::give_back(&ITEMS, list);
}

/// This thread's list for an outbox drain.
pub(crate) fn lend_outgoing() -> Vec<Outgoing> {
    thread_list::lend(&OUTGOING)
}

/// Gives back a list from [`lend_outgoing`], emptied.
pub(crate) fn give_back_outgoing(list: Vec<Outgoing>) {
    thread_list::give_back(&OUTGOING, list);
}
