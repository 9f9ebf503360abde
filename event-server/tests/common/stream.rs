//! One test's JetStream stream (its stream, subject prefix and consumer
//! bucket on one NATS, deleted when dropped) and host instances on it: in
//! this process, or (with [`TestStream::env`]) as `event-server`
//! processes.

#![allow(dead_code)]

use event_server::testing::Server;

/// One test's stream and the hosts started on it.
pub struct TestStream(event_nats::testing::TestStream);

impl TestStream {
    /// A stream of its own on the NATS at `url`.
    pub fn new(url: &str) -> TestStream {
        TestStream(event_nats::testing::TestStream::new(url))
    }

    /// The environment that puts an `event-server` process (`host.rs`) on
    /// this stream as instance `id`.
    pub fn env(&self, id: &str) -> Vec<(&'static str, String)> {
        let s = &self.0;
        vec![
            ("NATS_URL", s.url().to_owned()),
            ("NATS_STREAM", s.stream().to_owned()),
            ("NATS_SUBJECT_PREFIX", s.subject_prefix().to_owned()),
            ("NATS_CONSUMERS_BUCKET", s.consumers_bucket().to_owned()),
            ("NATS_INSTANCE_ID", id.to_owned()),
            ("NATS_MAX_AGE_SECS", "600".to_owned()),
        ]
    }

    /// Starts a host on this stream with a replay ring of `replay` events.
    pub async fn instance(&self, replay: usize) -> Server {
        let replay = replay.to_string();
        self.with_flags(&["--event-replay-size", &replay]).await
    }

    /// Starts a host on this stream with `extra` flags.
    pub async fn with_flags(&self, extra: &[&str]) -> Server {
        let s = &self.0;
        let mut args = vec![
            "--nats-url",
            s.url(),
            "--nats-stream",
            s.stream(),
            "--nats-subject-prefix",
            s.subject_prefix(),
            "--nats-consumers-bucket",
            s.consumers_bucket(),
        ];
        args.extend_from_slice(extra);
        Server::start(&args).await
    }
}
