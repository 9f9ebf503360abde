//! The intake of a sink that asked for one ([`EventSink::intake_capacity`]):
//! a queue the publisher fills through a bus [`Tap`], so a burst cannot
//! outrun the sink however slow its deliveries are.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::EventSink;
use crate::bus::{Received, Tap};
use crate::event::Event;

/// An intake queue (see [`EventSink::intake_capacity`]): events the sink
/// accepts, in order, with the overflow marked where it happened.
pub(super) struct Intake {
    sink: Arc<dyn EventSink>,
    capacity: usize,
    queue: Mutex<IntakeQueue>,
    ready: Notify,
}

#[derive(Default)]
struct IntakeQueue {
    /// Events, and `Lagged(n)` where `n` events did not fit.
    items: VecDeque<Received>,
    /// Events in `items` (not counting the markers).
    events: usize,
}

impl Intake {
    pub(super) fn new(sink: Arc<dyn EventSink>, capacity: usize) -> Self {
        Intake {
            sink,
            capacity: capacity.max(1),
            queue: Mutex::default(),
            ready: Notify::new(),
        }
    }

    fn queue(&self) -> MutexGuard<'_, IntakeQueue> {
        // Every update is a single push or pop: a panic elsewhere cannot
        // leave the queue inconsistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn pop(&self) -> Option<Received> {
        let mut q = self.queue();
        let item = q.items.pop_front()?;
        if matches!(item, Received::Event(_)) {
            q.events -= 1;
        }
        Some(item)
    }

    pub(super) async fn recv(&self) -> Received {
        loop {
            // A push between this look and the wait leaves a permit
            // behind (`notify_one`), so it is not missed.
            let ready = self.ready.notified();
            if let Some(item) = self.pop() {
                return item;
            }
            ready.await;
        }
    }
}

impl Tap for Intake {
    fn take(&self, event: &Arc<Event>) {
        if !self.sink.accepts(event) {
            return;
        }
        let mut q = self.queue();
        // The consumer empties the queue before it waits, so only the first
        // item after that needs a wake-up; the rest would be spurious wakes
        // paid on the publisher's thread, inside the bus's lock.
        let was_empty = q.items.is_empty();
        if q.events < self.capacity {
            q.items.push_back(Received::Event(event.clone()));
            q.events += 1;
        } else if let Some(Received::Lagged(n)) = q.items.back_mut() {
            *n += 1;
        } else {
            q.items.push_back(Received::Lagged(1));
        }
        drop(q);
        if was_empty {
            self.ready.notify_one();
        }
    }
}
