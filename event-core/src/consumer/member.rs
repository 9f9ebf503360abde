//! One attached connection of a consumer: its queue of deliveries.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use super::{AckMode, Control};
use crate::event::Event;
use crate::ring::Cursor;

/// What a member's transport writes.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// An event for this member.
    Event {
        /// The event.
        event: Arc<Event>,
        /// 0 on the first delivery; then how many times it was delivered
        /// before (to this member or another) without an ack.
        redelivered: u32,
    },
    /// The consumer's position fell out of the log's retention: events
    /// after `after` were removed before it read them. Transports send
    /// their resync signal naming it.
    Gap {
        /// The last event the consumer had reached.
        after: u64,
    },
}

/// The deliveries handed to one member and not yet taken by its transport.
/// The dispatcher pushes, the transport drains; bounded by the consumer's
/// `max_ack_pending` (every queued delivery is pending).
#[derive(Debug, Default)]
pub(crate) struct MemberQueue {
    items: Mutex<Queued>,
    notify: Notify,
    closed: AtomicBool,
    closed_notify: Notify,
}

#[derive(Debug, Default)]
struct Queued {
    items: VecDeque<Delivery>,
    /// When the oldest queued item was pushed (the stall clock).
    since: Option<Instant>,
}

impl MemberQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn push(&self, delivery: Delivery) {
        {
            let mut q = self.lock();
            if q.items.is_empty() {
                q.since = Some(Instant::now());
            }
            q.items.push_back(delivery);
        }
        self.notify.notify_one();
    }

    /// Ends the member: its transport closes the connection.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
        self.closed_notify.notify_waiters();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// A connection attached to a named consumer ([`Consumers::attach`](super::Consumers::attach)).
///
/// The transport waits for [`ready`](Self::ready), takes what is queued with
/// [`drain`](Self::drain) and writes it. In [`AckMode::Auto`] draining is the
/// acknowledgement; in [`AckMode::Explicit`] the client acknowledges each
/// event ([`ack`](Self::ack), or [`Consumers::ack`](super::Consumers::ack)
/// from another request). Dropping the member detaches it: what it had not
/// acknowledged goes to the other members (or waits for the next one).
#[derive(Debug)]
pub struct Member {
    pub(crate) id: u64,
    pub(crate) name: Arc<str>,
    pub(crate) mode: AckMode,
    pub(crate) shared: bool,
    pub(crate) queue: Arc<MemberQueue>,
    pub(crate) control: mpsc::UnboundedSender<Control>,
}

impl Member {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This member's id (unique in the process).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The consumer's acknowledgement mode.
    pub fn mode(&self) -> AckMode {
        self.mode
    }

    /// Whether the consumer is a group.
    pub fn is_group(&self) -> bool {
        self.shared
    }

    /// Resolves when deliveries are queued or the member was closed
    /// (cancel-safe; no wake-up is lost).
    pub async fn ready(&self) {
        self.readiness().await;
    }

    /// [`ready`](Self::ready) as a future that owns what it needs, for a
    /// transport that keeps it beside the member (a hand-written poll loop).
    pub fn readiness(&self) -> impl Future<Output = ()> + Send + 'static {
        let queue = self.queue.clone();
        async move {
            loop {
                let notified = queue.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if queue.is_closed() || !queue.lock().items.is_empty() {
                    return;
                }
                notified.await;
            }
        }
    }

    /// Moves every queued delivery into `out`. In [`AckMode::Auto`] they are
    /// acknowledged by being taken.
    pub fn drain(&self, out: &mut Vec<Delivery>) {
        let start = out.len();
        {
            let mut q = self.queue.lock();
            out.extend(q.items.drain(..));
            q.since = None;
        }
        self.taken(&out[start..]);
    }

    /// In [`AckMode::Auto`], acknowledges what the transport took.
    fn taken(&self, deliveries: &[Delivery]) {
        if self.mode != AckMode::Auto {
            return;
        }
        let acks: Vec<Cursor> = deliveries
            .iter()
            .filter_map(|d| match d {
                Delivery::Event { event, .. } => Some(Cursor::Seq(event.seq())),
                Delivery::Gap { .. } => None,
            })
            .collect();
        self.ack(acks);
    }

    /// Waits for the next delivery; `None` once the member is closed (taken
    /// over by another connection, the consumer deleted, shutdown).
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            {
                let mut q = self.queue.lock();
                if let Some(d) = q.items.pop_front() {
                    q.since = if q.items.is_empty() {
                        None
                    } else {
                        Some(Instant::now())
                    };
                    drop(q);
                    self.taken(std::slice::from_ref(&d));
                    return Some(d);
                }
            }
            if self.queue.is_closed() {
                return None;
            }
            self.ready().await;
        }
    }

    /// How long the oldest queued delivery has waited, if any is queued:
    /// a transport closes a member whose client stopped reading, so that
    /// its events go to the others.
    pub fn stalled_for(&self) -> Option<Duration> {
        self.queue.lock().since.map(|t| t.elapsed())
    }

    /// Whether the member was closed (its transport should end).
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Resolves when the member is closed. Owns what it needs, so a
    /// transport can hold it beside the member.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let queue = self.queue.clone();
        async move {
            loop {
                let notified = queue.closed_notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if queue.is_closed() {
                    return;
                }
                notified.await;
            }
        }
    }

    /// Acknowledges events delivered to this consumer (by sequence number
    /// or id). Acks of events that are not pending are ignored.
    pub fn ack(&self, acks: Vec<Cursor>) {
        if !acks.is_empty() {
            let _ = self.control.send(Control::Ack { acks, reply: None });
        }
    }
}

impl Member {
    /// [`ack`](Self::ack), resolving once the consumer has applied the acks
    /// (or is gone): a transport that waits for it before reading the next
    /// client message bounds the acks in flight to one message.
    pub fn ack_applied(&self, acks: Vec<Cursor>) -> impl Future<Output = ()> + Send + 'static {
        let (reply, applied) = tokio::sync::oneshot::channel();
        let sent = !acks.is_empty()
            && self
                .control
                .send(Control::Ack {
                    acks,
                    reply: Some(reply),
                })
                .is_ok();
        async move {
            if sent {
                let _ = applied.await;
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Leave(self.id));
    }
}
