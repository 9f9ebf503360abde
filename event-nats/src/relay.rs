//! Acks of a single named consumer that reach another instance.
//!
//! An SSE consumer in `ack=explicit` mode acknowledges with a separate HTTP
//! request, which a load balancer may send to any instance. The instance
//! that runs the consumer listens on the core NATS subject
//! `_matric_consumers.<stream>.<name>.ack` (the name encoded as in
//! [`consumer_name`](crate::consumer_name), since `.` separates subject
//! tokens) for as long as its dispatcher lives; an instance that cannot
//! apply an ack publishes it there. Nothing is stored: an ack nobody
//! listens for is lost, and its event is delivered again after `ack_wait`,
//! as before. Groups forward their acks through [`JetStreamGroups`](crate::JetStreamGroups).

use event_core::{AckRelay, ConsumerError, Cursor, async_trait};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::groups::{MAX_FORWARDED_ACKS, parse_acks};
use crate::{Error, NatsCluster};

/// The cluster's [`AckRelay`] for single consumers; give it to
/// `Consumers::with_ack_relay`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct NatsAckRelay {
    cluster: NatsCluster,
}

impl NatsAckRelay {
    /// Relays acks between the instances of `cluster`.
    pub fn new(cluster: &NatsCluster) -> Self {
        NatsAckRelay {
            cluster: cluster.clone(),
        }
    }

    fn subject(&self, name: &str) -> String {
        // The group encoding without its prefix: reversible and free of `.`.
        let token = crate::consumer_name(name);
        let token = token
            .strip_prefix(crate::GROUP_CONSUMER_PREFIX)
            .unwrap_or(&token);
        format!(
            "_matric_consumers.{}.{token}.ack",
            self.cluster.config().stream
        )
    }
}

fn relay_error(e: impl std::fmt::Display) -> ConsumerError {
    ConsumerError::Backend(Box::new(Error::Group(e.to_string())))
}

#[async_trait]
impl AckRelay for NatsAckRelay {
    async fn forward(&self, name: &str, acks: &[Cursor]) -> Result<bool, ConsumerError> {
        let client = &self.cluster.shared().client;
        for chunk in acks.chunks(MAX_FORWARDED_ACKS) {
            let text: Vec<String> = chunk.iter().map(Cursor::to_string).collect();
            let payload = serde_json::to_vec(&text).map_err(relay_error)?;
            client
                .publish(self.subject(name), payload.into())
                .await
                .map_err(relay_error)?;
        }
        Ok(true)
    }

    async fn listen(&self, name: &str) -> Option<BoxStream<'static, Vec<Cursor>>> {
        let client = &self.cluster.shared().client;
        let subscriber = match client.subscribe(self.subject(name)).await {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(consumer = %name, %error, "cannot listen for relayed acks");
                return None;
            }
        };
        // The subscription is at the server before the consumer serves, so
        // an ack relayed right after the first delivery is not missed.
        if let Err(error) = client.flush().await {
            tracing::debug!(consumer = %name, %error, "flush after subscribing failed");
        }
        Some(
            subscriber
                .map(|message| parse_acks(&message.payload))
                .filter(|acks| std::future::ready(!acks.is_empty()))
                .boxed(),
        )
    }
}
