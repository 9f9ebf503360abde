//! Lists a transport fills and empties within one poll, lent per worker
//! thread instead of kept per connection.
//!
//! An idle connection gets an event every few seconds (the job bridge's
//! periodic `QueueStatus`) and, on WebSocket, a pong per ping. With a list
//! of its own for each drain or read, every connection kept a small buffer
//! for good once it had used it (~200 bytes with malloc's headers), and all
//! of them allocate it at the same tick, so freeing it afterwards does not
//! lower the heap's peak (BENCHMARKS.md, `cd35798` and branch
//! `lone-event`). A drain of an [`Outbox`](super::Outbox) fills and empties
//! its list without crossing an `.await`, so one list per thread serves
//! every connection the thread runs: the transport declares a
//! `thread_local!` `Cell<Vec<T>>` and borrows it with [`lend`] and
//! [`give_back`].

use std::cell::Cell;
use std::thread::LocalKey;

/// The most items a thread keeps room for between uses: a drain of a full
/// default outbox (1,024 messages). A larger list, from a burst past it,
/// is freed when given back.
pub const KEEP_ITEMS: usize = 1024;

/// The thread's list in `key`: empty, with the room an earlier use left,
/// or a new empty list while another user holds it (or the thread exits).
pub fn lend<T: 'static>(key: &'static LocalKey<Cell<Vec<T>>>) -> Vec<T> {
    key.try_with(Cell::take).unwrap_or_default()
}

/// Gives `list` back to the thread's `key`, emptied. The thread keeps the
/// larger of its list and this one, up to [`KEEP_ITEMS`].
pub fn give_back<T: 'static>(key: &'static LocalKey<Cell<Vec<T>>>, mut list: Vec<T>) {
    list.clear();
    if list.capacity() == 0 || list.capacity() > KEEP_ITEMS {
        return;
    }
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

    thread_local! {
        static LIST: Cell<Vec<u64>> = const { Cell::new(Vec::new()) };
    }

    #[test]
    fn a_list_given_back_is_lent_again_with_its_room() {
        let mut list = lend(&LIST);
        list.push(1);
        let (room, at) = (list.capacity(), list.as_ptr());
        give_back(&LIST, list);
        let again = lend(&LIST);
        assert!(again.is_empty());
        assert_eq!((again.capacity(), again.as_ptr()), (room, at));
        // Lent out: the next one is a new, empty list.
        assert_eq!(lend(&LIST).capacity(), 0);
        // The larger of two lists given back is kept.
        let small = vec![2];
        give_back(&LIST, again);
        give_back(&LIST, small);
        assert_eq!(lend(&LIST).capacity(), room);
    }

    #[test]
    fn a_burst_sized_list_is_not_kept() {
        let mut list = lend(&LIST);
        list.reserve(KEEP_ITEMS + 1);
        give_back(&LIST, list);
        assert_eq!(lend(&LIST).capacity(), 0);
    }
}
