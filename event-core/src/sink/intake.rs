//! The intake of a sink that asked for one ([`EventSink::intake_capacity`]):
//! a queue the publisher fills through a bus [`Tap`], so a burst cannot
//! outrun the sink however slow its deliveries are.
//!
//! # Model
//!
//! The queue's lock comes from [`crate::sync`], so `loom_model` below
//! checks, under `--cfg loom`, that the consumer is never left waiting
//! with items queued although the publisher wakes it only on empty →
//! non-empty, and that it gets every event once, in order. The wake-up
//! itself is a `tokio::sync::Notify`, which loom cannot see into: the model
//! takes each of its calls as one atomic step (Tokio model-checks it).

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::Notify;

use super::EventSink;
use crate::bus::{Received, Tap};
use crate::event::Event;
use crate::sync::{Mutex, MutexGuard, Unmodelled};

/// An intake queue (see [`EventSink::intake_capacity`]): events the sink
/// accepts, in order, with the overflow marked where it happened.
pub(super) struct Intake {
    sink: Arc<dyn EventSink>,
    capacity: usize,
    queue: Mutex<IntakeQueue>,
    ready: Notify,
    /// `ready`'s calls, for the loom model (zero-sized otherwise).
    ready_calls: Unmodelled,
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
            ready_calls: Unmodelled::new(),
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
            self.ready_calls.step();
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
            self.ready_calls.step();
            self.ready.notify_one();
        }
    }
}

/// Loom models (`RUSTFLAGS="--cfg loom" cargo test -p event-core --release
/// --lib loom_model`).
#[cfg(all(test, loom))]
mod loom_model {
    use std::sync::Arc;

    use loom::thread;
    use time::OffsetDateTime;
    use uuid::Uuid;

    use super::Intake;
    use crate::bus::{Received, Tap};
    use crate::event::{Event, EventMeta};
    use crate::payload::QueueStatus;
    use crate::sink::{EventSink, SinkError};

    struct Sink;

    #[async_trait::async_trait]
    impl EventSink for Sink {
        fn name(&self) -> &str {
            "model"
        }
        async fn deliver(&self, _: Arc<Event>) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn ev(seq: u64) -> Arc<Event> {
        Arc::new(Event::new(
            seq,
            Uuid::nil(),
            OffsetDateTime::UNIX_EPOCH,
            EventMeta::default(),
            QueueStatus::new(seq, 0).into(),
        ))
    }

    fn seq(item: Received) -> u64 {
        match item {
            Received::Event(e) => e.seq(),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The publisher takes two events while the consumer receives them:
    /// the consumer never waits with an event queued (loom reports the
    /// deadlock), and gets 1, 2 exactly once each.
    #[test]
    fn no_lost_wake_up_and_order_kept() {
        loom::model(|| {
            let intake = loom::sync::Arc::new(Intake::new(Arc::new(Sink), 8));
            let publisher = {
                let intake = intake.clone();
                thread::spawn(move || {
                    for s in 1..=2 {
                        intake.take(&ev(s));
                    }
                })
            };
            let got: Vec<u64> = (0..2)
                .map(|_| seq(loom::future::block_on(intake.recv())))
                .collect();
            assert_eq!(got, [1, 2]);
            publisher.join().expect("publisher");
            assert!(intake.pop().is_none(), "nothing delivered twice");
        });
    }

    /// A full intake marks the overflow in place: the consumer gets the
    /// events that fit, then the count of those that did not, and is woken
    /// for them.
    #[test]
    fn overflow_is_marked_and_woken() {
        loom::model(|| {
            let intake = loom::sync::Arc::new(Intake::new(Arc::new(Sink), 1));
            let publisher = {
                let intake = intake.clone();
                thread::spawn(move || {
                    for s in 1..=2 {
                        intake.take(&ev(s));
                    }
                })
            };
            // Whatever the interleaving: events in order, each lost one
            // counted, 2 in all.
            let mut last = 0;
            let mut seen = 0;
            while seen < 2 {
                match loom::future::block_on(intake.recv()) {
                    Received::Event(e) => {
                        assert!(e.seq() > last, "out of order or twice");
                        last = e.seq();
                        seen += 1;
                    }
                    Received::Lagged(n) => seen += n,
                    Received::Closed => unreachable!(),
                }
            }
            assert_eq!(seen, 2);
            publisher.join().expect("publisher");
        });
    }
}
