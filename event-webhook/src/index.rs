//! The in-memory subscriber index: which active webhooks want which event
//! kind. The sink consults it for every event, so finding subscribers costs
//! no database query; it is rebuilt from the store after every change made
//! through the API or by the worker (410, auto-disable), and periodically
//! to pick up changes made by other instances.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use event_core::EventKind;
use uuid::Uuid;

use crate::error::Result;
use crate::model::Webhook;
use crate::store::{WebhookStore, WebhooksFingerprint};

#[derive(Debug, Default)]
struct Snapshot {
    by_kind: [Vec<Arc<Webhook>>; 7],
    by_id: HashMap<Uuid, Arc<Webhook>>,
    /// When the reload that built it started (`None` before the first).
    loaded_at: Option<time::OffsetDateTime>,
    /// The list's fingerprint, as the store computes it.
    fingerprint: Option<WebhooksFingerprint>,
}

/// Active webhooks by event kind, swapped atomically on reload.
#[derive(Debug, Default)]
pub struct SubscriberIndex {
    current: RwLock<Arc<Snapshot>>,
    // Serializes reloads so an older list never replaces a newer one.
    reload: tokio::sync::Mutex<()>,
}

impl SubscriberIndex {
    fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rebuilds the index from the store.
    pub async fn reload(&self, store: &dyn WebhookStore) -> Result<()> {
        let _one_at_a_time = self.reload.lock().await;
        let started = time::OffsetDateTime::now_utc();
        let all = store.list_webhooks().await?;
        let mut snap = Snapshot {
            loaded_at: Some(started),
            fingerprint: Some(WebhooksFingerprint {
                count: all.len() as u64,
                updated_at: all.iter().map(|w| w.updated_at).max(),
            }),
            ..Snapshot::default()
        };
        for w in all {
            let w = Arc::new(w);
            if w.active {
                for kind in EventKind::ALL {
                    if w.subscribes_to(kind) {
                        snap.by_kind[kind.index()].push(w.clone());
                    }
                }
            }
            snap.by_id.insert(w.id, w);
        }
        let snap = Arc::new(snap);
        match self.current.write() {
            Ok(mut g) => *g = snap,
            Err(poisoned) => *poisoned.into_inner() = snap,
        }
        Ok(())
    }

    /// The active webhooks subscribed to `kind`.
    pub fn subscribers(&self, kind: EventKind) -> Vec<Arc<Webhook>> {
        self.snapshot().by_kind[kind.index()].clone()
    }

    /// Whether any active webhook wants `kind`. Called by the publisher for
    /// every event (the sink's intake filter), so it only reads under the
    /// lock instead of cloning the snapshot.
    pub fn has_subscribers(&self, kind: EventKind) -> bool {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        !current.by_kind[kind.index()].is_empty()
    }

    /// When the reload the index is from started: it holds every change
    /// committed before then (`None` before the first reload).
    pub fn loaded_at(&self) -> Option<time::OffsetDateTime> {
        self.snapshot().loaded_at
    }

    /// The fingerprint of the list the index was built from (see
    /// [`WebhookStore::webhooks_fingerprint`]).
    pub fn fingerprint(&self) -> Option<WebhooksFingerprint> {
        self.snapshot().fingerprint
    }

    /// A webhook by id, as of the last reload.
    pub fn get(&self, id: Uuid) -> Option<Arc<Webhook>> {
        self.snapshot().by_id.get(&id).cloned()
    }

    /// Number of webhooks known (active or not).
    pub fn len(&self) -> usize {
        self.snapshot().by_id.len()
    }

    /// Whether no webhook is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
