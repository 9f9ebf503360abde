//! `Idempotency-Key` on `POST /api/v1/events`: a producer that retries a
//! publish (a timeout, a lost answer) does not publish twice.
//!
//! The first request with a key publishes and its answer is remembered for
//! `DEDUP_WINDOW_SECS`; a repeat of the same key by the same producer within
//! the window is answered `202` with the original events and
//! `"duplicate": true`, and publishes nothing. The same key with a
//! different body (or `memory`) is a client bug: `422
//! idempotency_key_reused`. Keys are at most [`MAX_KEY_BYTES`] bytes of
//! visible ASCII (`400 invalid_idempotency_key` otherwise).
//!
//! Memory is bounded: at most `DEDUP_MAX_KEYS` answers are kept, the
//! oldest forgotten first (a key forgotten early publishes again when
//! repeated, as after the window). The check and the publish happen under
//! one lock, so two concurrent requests with one key publish once; requests
//! without a key never take it. The window is this instance's: in a
//! cluster, a retry that reaches another instance is not recognised.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::ServerError;
use crate::publish::Published;

/// Longest `Idempotency-Key`, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// The remembered answers (one per host).
#[derive(Debug)]
pub struct Dedup {
    window: Duration,
    max_keys: usize,
    hasher: RandomState,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    answers: HashMap<(String, String), Answer>,
    /// Keys in the order they were first seen, for expiry and the cap.
    order: VecDeque<((String, String), Instant)>,
}

#[derive(Debug)]
struct Answer {
    request_hash: u64,
    events: Vec<Published>,
}

/// What the publish handler does for a request with a key.
pub enum Decision<'a> {
    /// Publish, then [`Claim::remember`] the answer (the lock is held until
    /// then).
    Publish(Claim<'a>),
    /// Answer with these events, marked duplicate.
    Repeat(Vec<Published>),
}

/// A key being published under the lock.
pub struct Claim<'a> {
    dedup: &'a Dedup,
    seen: MutexGuard<'a, Seen>,
    key: (String, String),
    request_hash: u64,
}

impl Dedup {
    /// Answers kept `window` long, at most `max_keys` of them.
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Dedup {
            window,
            max_keys: max_keys.max(1),
            hasher: RandomState::new(),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Checks `key` of `producer` for a request whose body and memory are
    /// `request`.
    ///
    /// # Errors
    ///
    /// `400` for a malformed key, `422` when the key was used with another
    /// request.
    pub fn check<'a>(
        &'a self,
        producer: &str,
        key: &str,
        request: (&[u8], Option<&str>),
    ) -> Result<Decision<'a>, ServerError> {
        if key.is_empty()
            || key.len() > MAX_KEY_BYTES
            || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(ServerError::bad_request(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1 to {MAX_KEY_BYTES} bytes of visible ASCII"),
            ));
        }
        let request_hash = self.hasher.hash_one(request);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.expire(Instant::now(), self.window);
        let key = (producer.to_owned(), key.to_owned());
        match seen.answers.get(&key) {
            Some(answer) if answer.request_hash != request_hash => {
                Err(ServerError::Unprocessable {
                    code: "idempotency_key_reused",
                    message: "this Idempotency-Key was used with a different request within \
                          DEDUP_WINDOW_SECS; use a new key for a new request"
                        .to_owned(),
                })
            }
            Some(answer) => Ok(Decision::Repeat(answer.events.clone())),
            None => Ok(Decision::Publish(Claim {
                dedup: self,
                seen,
                key,
                request_hash,
            })),
        }
    }
}

impl Claim<'_> {
    /// Remembers what was published under the key and releases the lock.
    pub fn remember(mut self, events: &[Published]) {
        let now = Instant::now();
        let seen = &mut *self.seen;
        while seen.answers.len() >= self.dedup.max_keys {
            match seen.order.pop_front() {
                Some((oldest, _)) => {
                    seen.answers.remove(&oldest);
                }
                None => break,
            }
        }
        seen.order.push_back((self.key.clone(), now));
        seen.answers.insert(
            self.key,
            Answer {
                request_hash: self.request_hash,
                events: events.to_vec(),
            },
        );
    }
}

impl Seen {
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some((_, at)) = self.order.front() {
            if now.duration_since(*at) < window {
                break;
            }
            if let Some((key, _)) = self.order.pop_front() {
                self.answers.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(n: u64) -> Vec<Published> {
        vec![Published {
            seq: Some(n),
            event_id: uuid::Uuid::from_u128(u128::from(n)),
        }]
    }

    fn publish(dedup: &Dedup, producer: &str, key: &str, body: &[u8], n: u64) -> Option<u64> {
        match dedup
            .check(producer, key, (body, None))
            .expect("a usable key")
        {
            Decision::Publish(claim) => {
                claim.remember(&published(n));
                None
            }
            Decision::Repeat(events) => events[0].seq,
        }
    }

    #[test]
    fn a_repeat_gets_the_first_answer_and_other_producers_their_own() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        assert_eq!(publish(&dedup, "a", "k", b"{}", 1), None);
        assert_eq!(publish(&dedup, "a", "k", b"{}", 2), Some(1));
        assert_eq!(
            publish(&dedup, "b", "k", b"{}", 3),
            None,
            "keys are per producer"
        );
        assert!(matches!(
            dedup.check("a", "k", (b"{\"other\":1}", None)),
            Err(ServerError::Unprocessable { .. })
        ));
        assert!(matches!(
            dedup.check("a", "k", (b"{}", Some("m"))),
            Err(ServerError::Unprocessable { .. })
        ));
    }

    #[test]
    fn keys_are_bounded_in_size_and_number() {
        let dedup = Dedup::new(Duration::from_secs(60), 2);
        for bad in ["", "caf\u{e9}", &"k".repeat(MAX_KEY_BYTES + 1)] {
            assert!(dedup.check("a", bad, (b"{}", None)).is_err(), "{bad:?}");
        }
        publish(&dedup, "a", "1", b"{}", 1);
        publish(&dedup, "a", "2", b"{}", 2);
        publish(&dedup, "a", "3", b"{}", 3);
        // The oldest was forgotten to keep two.
        assert_eq!(publish(&dedup, "a", "1", b"{}", 4), None);
        assert_eq!(publish(&dedup, "a", "3", b"{}", 5), Some(3));
    }

    #[test]
    fn answers_expire_after_the_window() {
        let dedup = Dedup::new(Duration::ZERO, 10);
        publish(&dedup, "a", "k", b"{}", 1);
        assert_eq!(publish(&dedup, "a", "k", b"{}", 2), None);
    }
}
