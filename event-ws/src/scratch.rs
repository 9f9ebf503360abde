//! The drained batch and the client-message list, lent per worker thread
//! ([`event_core::fanout::thread_list`]) instead of kept per connection.
//!
//! The drain and the read fill and empty their list without crossing an
//! `.await`. A connection whose list cannot be emptied in the same poll (a
//! write the socket did not take, messages behind a `refresh`) keeps it
//! until it is, then gives it back.

use std::cell::Cell;

use event_core::Outgoing;
use event_core::fanout::thread_list;

use crate::frame::Incoming;

thread_local! {
    /// The drained batch (see [`lend_batch`]).
    static BATCH: Cell<Vec<Outgoing>> = const { Cell::new(Vec::new()) };
    /// The client messages just read (see [`lend_incoming`]).
    static INCOMING: Cell<Vec<Incoming>> = const { Cell::new(Vec::new()) };
}

/// This thread's list for a drain of the outbox.
pub(crate) fn lend_batch() -> Vec<Outgoing> {
    thread_list::lend(&BATCH)
}

/// Gives back a list from [`lend_batch`] (or any other), emptied.
pub(crate) fn give_back_batch(list: Vec<Outgoing>) {
    thread_list::give_back(&BATCH, list);
}

/// This thread's list for client messages.
pub(crate) fn lend_incoming() -> Vec<Incoming> {
    thread_list::lend(&INCOMING)
}

/// Gives back a list from [`lend_incoming`], emptied.
pub(crate) fn give_back_incoming(list: Vec<Incoming>) {
    thread_list::give_back(&INCOMING, list);
}
