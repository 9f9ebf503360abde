//! The key-value buckets the instances share (consumer offsets, group
//! partition owners, topic retentions): each one's stream, made here as
//! async-nats' `create_key_value` would make it, because that call first
//! asks for the account's limits in a form NATS 2.9 does not answer.

use async_nats::jetstream::stream;

use crate::NatsConfig;

/// The stream behind bucket `bucket` (`KV_<bucket>`), stored like the
/// events' stream (on disk unless it is in memory, with its replicas): one
/// value per key, deletes as markers, reads from the leader. Callers add
/// their own bounds (`max_age`, `max_messages`, `max_message_size`).
pub(crate) fn bucket_stream(
    config: &NatsConfig,
    bucket: &str,
    description: &str,
) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: if config.memory_storage {
            stream::StorageType::Memory
        } else {
            stream::StorageType::File
        },
        num_replicas: config.replicas.max(1),
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        // Reads from the stream's leader, not any replica: an instance must
        // see what another one has just stored.
        allow_direct: false,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}
