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
//! repeated, as after the window). A key is claimed before its request
//! publishes, so two concurrent requests with one key publish once: the
//! second, arriving while the first is still publishing (waiting for the
//! event log's commit), is answered `409 idempotency_key_in_flight` and
//! may retry. A request that fails releases its key. Requests without a key
//! never take the lock. This memory is the instance's own; in a cluster the
//! JetStream stream recognises a retry that reaches another instance (the
//! publish handler derives message ids from the key, see
//! [`crate::publish::dedup_key`]).

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
    /// `None`: claimed, still publishing.
    answers: HashMap<(String, String), Entry>,
    /// Keys in the order they were first seen, for expiry and the cap.
    order: VecDeque<((String, String), Instant)>,
}

#[derive(Debug)]
struct Entry {
    request_hash: u64,
    /// When the key was claimed (its place in `Seen::order`).
    at: Instant,
    /// `None` while the claiming request is still publishing.
    events: Option<Vec<Published>>,
}

/// What the publish handler does for a request with a key.
pub enum Decision<'a> {
    /// Publish, then [`Claim::remember`] the answer (dropping the claim
    /// unremembered releases the key).
    Publish(Claim<'a>),
    /// Answer with these events, marked duplicate.
    Repeat(Vec<Published>),
}

/// A key claimed by a request that is publishing.
pub struct Claim<'a> {
    dedup: &'a Dedup,
    key: (String, String),
    remembered: bool,
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
        request: (&[u8], Option<&str>, Option<&str>),
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
        let mut seen = self.seen();
        seen.expire(Instant::now(), self.window);
        let key = (producer.to_owned(), key.to_owned());
        match seen.answers.get(&key) {
            Some(entry) if entry.request_hash != request_hash => Err(ServerError::Unprocessable {
                code: "idempotency_key_reused",
                message: "this Idempotency-Key was used with a different request within \
                          DEDUP_WINDOW_SECS; use a new key for a new request"
                    .to_owned(),
            }),
            Some(Entry { events: None, .. }) => Err(ServerError::Conflict {
                code: "idempotency_key_in_flight",
                message: "a request with this Idempotency-Key is still being published; \
                          retry shortly to get its answer"
                    .to_owned(),
            }),
            Some(Entry {
                events: Some(events),
                ..
            }) => Ok(Decision::Repeat(events.clone())),
            None => {
                // Released claims leave their place in the order behind:
                // the order is bounded too.
                while seen.answers.len() >= self.max_keys
                    || seen.order.len() >= self.max_keys.saturating_mul(2)
                {
                    match seen.order.pop_front() {
                        Some((oldest, at)) => {
                            if seen.answers.get(&oldest).is_some_and(|e| e.at == at) {
                                seen.answers.remove(&oldest);
                            }
                        }
                        None => break,
                    }
                }
                let at = Instant::now();
                seen.order.push_back((key.clone(), at));
                seen.answers.insert(
                    key.clone(),
                    Entry {
                        request_hash,
                        at,
                        events: None,
                    },
                );
                Ok(Decision::Publish(Claim {
                    dedup: self,
                    key,
                    remembered: false,
                }))
            }
        }
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Claim<'_> {
    /// Remembers what was published under the key.
    pub fn remember(mut self, events: &[Published]) {
        self.remembered = true;
        let mut seen = self.dedup.seen();
        // Gone only if forgotten meanwhile (the cap, the window): then the
        // key publishes again when repeated, as after the window.
        if let Some(entry) = seen.answers.get_mut(&self.key) {
            entry.events = Some(events.to_vec());
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.remembered {
            return;
        }
        let mut seen = self.dedup.seen();
        if seen
            .answers
            .get(&self.key)
            .is_some_and(|entry| entry.events.is_none())
        {
            seen.answers.remove(&self.key);
        }
    }
}

impl Seen {
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some((_, at)) = self.order.front() {
            if now.duration_since(*at) < window {
                break;
            }
            // A key released and claimed again has a newer place in the
            // order: only the entry this place belongs to expires.
            if let Some((key, at)) = self.order.pop_front()
                && self.answers.get(&key).is_some_and(|e| e.at == at)
            {
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
            .check(producer, key, (body, None, None))
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
            dedup.check("a", "k", (b"{\"other\":1}", None, None)),
            Err(ServerError::Unprocessable { .. })
        ));
        assert!(matches!(
            dedup.check("a", "k", (b"{}", Some("m"), None)),
            Err(ServerError::Unprocessable { .. })
        ));
    }

    #[test]
    fn keys_are_bounded_in_size_and_number() {
        let dedup = Dedup::new(Duration::from_secs(60), 2);
        for bad in ["", "caf\u{e9}", &"k".repeat(MAX_KEY_BYTES + 1)] {
            assert!(
                dedup.check("a", bad, (b"{}", None, None)).is_err(),
                "{bad:?}"
            );
        }
        publish(&dedup, "a", "1", b"{}", 1);
        publish(&dedup, "a", "2", b"{}", 2);
        publish(&dedup, "a", "3", b"{}", 3);
        // The oldest was forgotten to keep two.
        assert_eq!(publish(&dedup, "a", "1", b"{}", 4), None);
        assert_eq!(publish(&dedup, "a", "3", b"{}", 5), Some(3));
    }

    #[test]
    fn a_key_in_flight_is_a_conflict_and_a_failed_request_releases_it() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let Ok(Decision::Publish(claim)) = dedup.check("a", "k", (b"{}", None, None)) else {
            panic!("first use must publish");
        };
        assert!(matches!(
            dedup.check("a", "k", (b"{}", None, None)),
            Err(ServerError::Conflict {
                code: "idempotency_key_in_flight",
                ..
            })
        ));
        drop(claim); // the request failed
        assert_eq!(publish(&dedup, "a", "k", b"{}", 7), None);
        assert_eq!(publish(&dedup, "a", "k", b"{}", 8), Some(7));
    }

    #[test]
    fn answers_expire_after_the_window() {
        let dedup = Dedup::new(Duration::ZERO, 10);
        publish(&dedup, "a", "k", b"{}", 1);
        assert_eq!(publish(&dedup, "a", "k", b"{}", 2), None);
    }
}
