//! Replies from a connection's reader to its writer.
//!
//! Both halves of a connection are polled by the same task, so the queue
//! between them lives inside that task's future: no allocation until a
//! client actually sends a request. (A `tokio::sync::mpsc` channel here cost
//! every connection about 2 KiB for a block of slots and the shared channel
//! state, though most clients never send anything.)

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use axum::extract::ws::Message;
use tokio::sync::Notify;

/// Replies waiting for the writer. Small: a client that floods requests
/// without reading the answers is slowed down by TCP, not buffered.
const CAPACITY: usize = 8;

/// A bounded queue of control messages (replies) for one connection.
#[derive(Debug, Default)]
pub(crate) struct ControlQueue {
    queue: Mutex<VecDeque<Message>>,
    /// Signalled after a push (a permit is kept if the writer is not waiting).
    pushed: Notify,
    /// Signalled after a drain made room.
    room: Notify,
}

impl ControlQueue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Message>> {
        // Queue operations cannot leave it inconsistent; ignore poisoning.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `message`, first waiting while the queue is full.
    pub(crate) async fn push(&self, message: Message) {
        loop {
            {
                let mut queue = self.lock();
                if queue.len() < CAPACITY {
                    queue.push_back(message);
                    drop(queue);
                    self.pushed.notify_one();
                    return;
                }
            }
            // `notify_one` keeps a permit, so a drain between the check and
            // this wait still wakes it.
            self.room.notified().await;
        }
    }

    /// Moves every queued message into `out` (appending).
    pub(crate) fn drain_into(&self, out: &mut Vec<Message>) {
        let mut queue = self.lock();
        if queue.is_empty() {
            return;
        }
        out.extend(queue.drain(..));
        drop(queue);
        self.room.notify_one();
    }

    /// Resolves when something may have been pushed since the last drain
    /// (cancel-safe; a push before the wait is not lost).
    pub(crate) async fn ready(&self) {
        self.pushed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Waker};
    use std::time::Duration;

    use super::*;

    fn text(i: usize) -> Message {
        Message::Text(i.to_string().into())
    }

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_lost() {
        let q = ControlQueue::default();
        q.push(text(1)).await;
        tokio::time::timeout(Duration::from_secs(5), q.ready())
            .await
            .expect("ready after a push");
        let mut out = Vec::new();
        q.drain_into(&mut out);
        assert_eq!(out, vec![text(1)]);
    }

    #[tokio::test]
    async fn a_full_queue_holds_the_pusher_until_a_drain() {
        let q = ControlQueue::default();
        for i in 0..CAPACITY {
            q.push(text(i)).await;
        }
        let mut extra = Box::pin(q.push(text(CAPACITY)));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            extra.as_mut().poll(&mut cx).is_pending(),
            "a push into a full queue must wait"
        );
        let mut out = Vec::new();
        q.drain_into(&mut out);
        assert_eq!(out.len(), CAPACITY);
        tokio::time::timeout(Duration::from_secs(5), extra)
            .await
            .expect("the waiting push completes after a drain");
        out.clear();
        q.drain_into(&mut out);
        assert_eq!(out, vec![text(CAPACITY)]);
    }
}
