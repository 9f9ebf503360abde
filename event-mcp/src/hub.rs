//! The endpoint's one consumer of the bus: it tells subscribed sessions
//! which resources changed and wakes `wait_for_job` calls.
//!
//! It is registered as an [`EventSink`], so the cost of a publish does not
//! grow with the number of sessions. Delivery to a session never waits: a
//! changed resource is marked dirty in the session's set (at most one entry
//! per subscribed resource, whatever the event rate) and the session's own
//! task sends the notifications; a waiting tool call keeps only the newest
//! event of its job.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use event_core::{Event, EventSink, Principal, SinkError, Uuid, async_trait};
use tokio::sync::{Notify, watch};

use crate::resource::ResourceId;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One session's subscriptions and the resources changed since it was last
/// told.
#[derive(Debug)]
pub(crate) struct Subscriber {
    principal: Principal,
    subscribed: Mutex<HashSet<ResourceId>>,
    dirty: Mutex<HashSet<ResourceId>>,
    /// Wakes the session's notifier task.
    pub(crate) wake: Notify,
}

impl Subscriber {
    /// Adds a subscription; `false` when `max` are held already.
    pub(crate) fn subscribe(&self, id: ResourceId, max: usize) -> bool {
        let mut subs = lock(&self.subscribed);
        if subs.len() >= max && !subs.contains(&id) {
            return false;
        }
        subs.insert(id);
        true
    }

    /// Removes a subscription (and a pending update of it).
    pub(crate) fn unsubscribe(&self, id: &ResourceId) {
        lock(&self.subscribed).remove(id);
        lock(&self.dirty).remove(id);
    }

    /// Takes the changed resources whose `due` returns true, leaving the rest.
    pub(crate) fn take_due(&self, mut due: impl FnMut(&ResourceId) -> bool) -> Vec<ResourceId> {
        let mut dirty = lock(&self.dirty);
        let taken: Vec<ResourceId> = dirty.iter().filter(|id| due(id)).copied().collect();
        for id in &taken {
            dirty.remove(id);
        }
        taken
    }

    /// The changed resources not yet sent.
    pub(crate) fn pending(&self) -> Vec<ResourceId> {
        lock(&self.dirty).iter().copied().collect()
    }

    fn offer(&self, event: &Event) {
        if !self.principal.can_see(event) {
            return;
        }
        let changed: Vec<ResourceId> = lock(&self.subscribed)
            .iter()
            .filter(|id| id.affected_by(event))
            .copied()
            .collect();
        if changed.is_empty() {
            return;
        }
        lock(&self.dirty).extend(changed);
        self.wake.notify_one();
    }
}

/// A `wait_for_job` call: the newest visible event of its job.
#[derive(Debug)]
pub(crate) struct Waiter {
    principal: Principal,
    latest: watch::Sender<Option<Arc<Event>>>,
}

#[derive(Default)]
struct HubInner {
    next: AtomicU64,
    subscribers: RwLock<BTreeMap<u64, Weak<Subscriber>>>,
    waiters: Mutex<HashMap<Uuid, Vec<Weak<Waiter>>>>,
}

/// The dispatcher. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Hub {
    inner: Arc<HubInner>,
}

/// Keeps a subscriber registered; dropping it removes it.
#[derive(Debug)]
pub(crate) struct SubscriberHandle {
    hub: Weak<HubInner>,
    key: u64,
    pub(crate) subscriber: Arc<Subscriber>,
}

impl Drop for SubscriberHandle {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.subscribers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.key);
        }
    }
}

impl Hub {
    /// Registers a session's subscriber.
    pub(crate) fn subscriber(&self, principal: Principal) -> SubscriberHandle {
        let subscriber = Arc::new(Subscriber {
            principal,
            subscribed: Mutex::new(HashSet::new()),
            dirty: Mutex::new(HashSet::new()),
            wake: Notify::new(),
        });
        let key = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner
            .subscribers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Arc::downgrade(&subscriber));
        SubscriberHandle {
            hub: Arc::downgrade(&self.inner),
            key,
            subscriber,
        }
    }

    /// Registers a wait for `job`; the receiver sees its newest visible event.
    pub(crate) fn wait(
        &self,
        job: Uuid,
        principal: Principal,
    ) -> (Arc<Waiter>, watch::Receiver<Option<Arc<Event>>>) {
        let (latest, rx) = watch::channel(None);
        let waiter = Arc::new(Waiter { principal, latest });
        let mut waiters = lock(&self.inner.waiters);
        let list = waiters.entry(job).or_default();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(&waiter));
        (waiter, rx)
    }

    fn dispatch(&self, event: &Arc<Event>) {
        // Sessions: mark what changed; their tasks do the sending.
        let subscribers: Vec<Arc<Subscriber>> = self
            .inner
            .subscribers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for s in subscribers {
            s.offer(event);
        }
        // Waiting tool calls of this job.
        if let Some(job) = event.payload().job_id() {
            let mut waiters = lock(&self.inner.waiters);
            if let Some(list) = waiters.get_mut(&job) {
                list.retain(|w| match w.upgrade() {
                    Some(w) => {
                        if w.principal.can_see(event) {
                            w.latest.send_replace(Some(event.clone()));
                        }
                        true
                    }
                    None => false,
                });
                if list.is_empty() {
                    waiters.remove(&job);
                }
            }
        }
    }

    /// Registered sessions (with a live subscriber).
    #[cfg(test)]
    pub(crate) fn subscribers(&self) -> usize {
        self.inner
            .subscribers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[async_trait]
impl EventSink for Hub {
    fn name(&self) -> &str {
        "mcp"
    }

    async fn deliver(&self, event: Arc<Event>) -> Result<(), SinkError> {
        self.dispatch(&event);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_core::{EventBus, JobProgress, QueueStatus};

    #[tokio::test]
    async fn updates_coalesce_per_resource_and_respect_scope() {
        let bus = EventBus::default();
        let hub = Hub::default();
        let job = Uuid::now_v7();
        let handle = hub.subscriber(Principal::anonymous());
        let s = handle.subscriber.clone();
        assert!(s.subscribe(ResourceId::Job(job), 2));
        assert!(s.subscribe(ResourceId::Queue, 2));
        assert!(!s.subscribe(ResourceId::Recent, 2), "over the limit");
        for p in 0..10 {
            let ev = bus.publish(JobProgress {
                job_id: job,
                note_id: None,
                progress: p * 10,
                message: None,
            });
            hub.dispatch(&ev);
        }
        assert_eq!(s.pending(), vec![ResourceId::Job(job)]);
        hub.dispatch(&bus.publish(QueueStatus::new(1, 0)));
        let mut taken = s.take_due(|_| true);
        taken.sort_by_key(|r| r.uri());
        assert_eq!(taken.len(), 2);
        assert!(s.pending().is_empty());
        drop(handle);
        assert_eq!(hub.subscribers(), 0);
    }
}
