//! Acks of a single consumer that reach the wrong process.
//!
//! An SSE client in `ack=explicit` mode acknowledges with a separate HTTP
//! request, which a load balancer may send to any instance, while the
//! consumer's pending events live in the process that holds its stream.
//! Without a relay such an ack is dropped: nothing is lost, but the events
//! are delivered again after `ack_wait` and the offset stalls until then.
//!
//! With an [`AckRelay`] set ([`Consumers::with_ack_relay`](super::Consumers::with_ack_relay)),
//! a process that does not run the consumer [`forward`](AckRelay::forward)s
//! the acks, and the process that runs it [`listen`](AckRelay::listen)s for
//! them while its dispatcher lives and applies them as its own. Groups kept
//! in a [`GroupBackend`](super::GroupBackend) forward their acks through the
//! backend instead.

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::mpsc;

use super::ConsumerError;
use super::Control;
use crate::ring::Cursor;

/// Carries acks of a single consumer to the process that runs it (event-nats
/// implements it over core NATS).
#[async_trait]
pub trait AckRelay: Send + Sync + 'static {
    /// Sends `acks` of consumer `name` to whichever process listens for
    /// them; `false` when no process could be reached (the acks are then
    /// lost, and the events delivered again after `ack_wait`).
    async fn forward(&self, name: &str, acks: &[Cursor]) -> Result<bool, ConsumerError>;

    /// The acks other processes forward for `name`, for as long as the
    /// stream is held; `None` when this relay cannot listen.
    async fn listen(&self, name: &str) -> Option<BoxStream<'static, Vec<Cursor>>>;
}

/// Starts listening for the acks forwarded for `name` (before it returns,
/// so an ack forwarded after the consumer started is not missed) and
/// applies them through `control` until the consumer's dispatcher stops
/// (its mailbox closes) or the relay ends.
pub(super) async fn listen_for(
    relay: &dyn AckRelay,
    name: String,
    control: mpsc::UnboundedSender<Control>,
) {
    let Some(mut acks) = relay.listen(&name).await else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = control.closed() => return,
                next = acks.next() => match next {
                    Some(acks) => {
                        tracing::debug!(consumer = %name, acks = acks.len(), "forwarded acks applied");
                        if control.send(Control::Ack { acks, reply: None }).is_err() {
                            return;
                        }
                    }
                    None => return,
                },
            }
        }
    });
}
