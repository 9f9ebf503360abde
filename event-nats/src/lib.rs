//! Several server instances as one, over NATS JetStream.
