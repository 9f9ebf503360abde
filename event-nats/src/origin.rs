//! Which events this instance originated, and a sink wrapper that passes
//! only those: the way to run a once-per-event side effect (e.g. enqueueing
//! webhook deliveries) on exactly one instance of the cluster.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use event_core::{Event, EventSink, SinkError, async_trait};
use uuid::Uuid;

/// A bounded set of recent event ids.
#[derive(Debug)]
pub(crate) struct RecentIds {
    inner: Mutex<(HashSet<Uuid>, VecDeque<Uuid>)>,
    capacity: usize,
}

impl RecentIds {
    pub(crate) fn new(capacity: usize) -> Self {
        RecentIds {
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn insert(&self, id: Uuid) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *guard;
        if set.insert(id) {
            order.push_back(id);
            if order.len() > self.capacity
                && let Some(old) = order.pop_front()
            {
                set.remove(&old);
            }
        }
    }

    pub(crate) fn contains(&self, id: &Uuid) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .contains(id)
    }

    /// Removes `id`; whether it was there.
    pub(crate) fn take(&self, id: &Uuid) -> bool {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *guard;
        if set.remove(id) {
            order.retain(|x| x != id);
            true
        } else {
            false
        }
    }
}

/// Wraps a sink so it sees only the events whose ids are in a set: those
/// this instance originated ([`crate::NatsCluster::local_origin_only`]) or
/// those it delivered locally only ([`crate::NatsCluster::local_only_events`]).
pub struct LocalOriginOnly {
    inner: Arc<dyn EventSink>,
    origins: Arc<RecentIds>,
}

impl LocalOriginOnly {
    pub(crate) fn new(inner: Arc<dyn EventSink>, origins: Arc<RecentIds>) -> Self {
        LocalOriginOnly { inner, origins }
    }
}

#[async_trait]
impl EventSink for LocalOriginOnly {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn accepts(&self, event: &Event) -> bool {
        self.origins.contains(&event.id()) && self.inner.accepts(event)
    }

    async fn deliver(&self, event: Arc<Event>) -> Result<(), SinkError> {
        self.inner.deliver(event).await
    }

    async fn deliver_batch(&self, events: Vec<Arc<Event>>) -> Result<(), SinkError> {
        self.inner.deliver_batch(events).await
    }

    // Forwarded so the wrapped sink keeps its loss protection (ring refill,
    // an intake queue filled by the publisher) in cluster mode.
    fn recover_lagged(&self) -> bool {
        self.inner.recover_lagged()
    }

    fn intake_capacity(&self) -> Option<usize> {
        self.inner.intake_capacity()
    }

    async fn on_lag(&self, missed: u64) {
        self.inner.on_lag(missed).await;
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Protected;

    #[async_trait]
    impl EventSink for Protected {
        fn name(&self) -> &str {
            "protected"
        }
        async fn deliver(&self, _event: Arc<Event>) -> Result<(), SinkError> {
            Ok(())
        }
        fn recover_lagged(&self) -> bool {
            true
        }
        fn intake_capacity(&self) -> Option<usize> {
            Some(7)
        }
    }

    #[test]
    fn wrapper_keeps_the_sinks_loss_protection() {
        let wrapped = LocalOriginOnly::new(Arc::new(Protected), Arc::new(RecentIds::new(4)));
        assert!(wrapped.recover_lagged());
        assert_eq!(wrapped.intake_capacity(), Some(7));
    }

    #[test]
    fn recent_ids_are_bounded() {
        let ids = RecentIds::new(2);
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        ids.insert(a);
        ids.insert(b);
        ids.insert(c);
        assert!(!ids.contains(&a));
        assert!(ids.contains(&b) && ids.contains(&c));
        assert!(ids.take(&b));
        assert!(!ids.take(&b));
        assert!(ids.contains(&c));
    }
}
