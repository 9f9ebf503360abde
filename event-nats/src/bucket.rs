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

/// `prefix` then `name`'s bytes as lowercase hex: any name (a consumer, a
/// topic, an instance id) as a valid key token, and distinct names as
/// distinct keys.
pub(crate) fn hex_key(prefix: &str, name: &str) -> String {
    use std::fmt::Write as _;
    let mut key = String::with_capacity(prefix.len() + name.len() * 2);
    key.push_str(prefix);
    for b in name.bytes() {
        let _ = write!(key, "{b:02x}");
    }
    key
}

/// The name `hex_key("", name)` wrote, read back.
pub(crate) fn unhex(token: &str) -> Option<String> {
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_from_their_key_token() {
        assert_eq!(hex_key("c_", "a.b"), "c_612e62");
        for id in ["a", "instance-7f3e", "ünïcode id"] {
            let token = hex_key("", id);
            assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(unhex(&token).as_deref(), Some(id));
        }
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("abc"), None);
    }
}
