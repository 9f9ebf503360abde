//! One consumer's dispatcher: reads the log after the consumer's position
//! and hands each event to one member (see the module docs of
//! [`consumer`](super)).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::member::{Delivery, MemberQueue};
use super::{
    AckMode, AttachRequest, ConsumerConfig, ConsumerError, ConsumerRecord, Control, LogMark,
    OffsetStore, info_of, lag_of,
};
use crate::auth::Principal;
use crate::bus::EventBus;
use crate::event::Event;
use crate::filter::EventFilter;
use crate::log::EventLog;
use crate::ring::Cursor;

mod gaps;

/// Events read from the log per page.
const PAGE: usize = 256;
/// Wait before retrying after the log or the store failed.
const RETRY: Duration = Duration::from_secs(1);

/// An attached member.
struct Slot {
    id: u64,
    queue: Arc<MemberQueue>,
    principal: Principal,
}

/// A delivered, unacknowledged event.
struct Pending {
    event: Arc<Event>,
    /// The member holding it; `None` while it waits to be delivered again.
    member: Option<u64>,
    /// How many times it was handed out.
    deliveries: u32,
}

pub(super) struct Dispatcher {
    record: ConsumerRecord,
    bus: EventBus,
    log: Arc<dyn EventLog>,
    store: Arc<dyn OffsetStore>,
    config: ConsumerConfig,
    mailbox: mpsc::UnboundedReceiver<Control>,
    committed_out: Arc<AtomicU64>,
    redelivered: Counter<u64>,
    /// The members' shared filter (set by the first member).
    filter: EventFilter,
    members: Vec<Slot>,
    /// Every event at or below this was handed out or skipped.
    cursor: u64,
    pending: BTreeMap<u64, Pending>,
    pending_bytes: usize,
    ids: HashMap<Uuid, u64>,
    /// Ack deadlines in the order they were set: `(deadline, seq, delivery)`.
    timers: VecDeque<(Instant, u64, u32)>,
    /// Pending events waiting for a member, oldest first.
    redeliver: VecDeque<u64>,
    /// The committed offset last stored, and when.
    saved: u64,
    saved_at: Instant,
    dirty: bool,
    retry_at: Option<Instant>,
    logged: Option<watch::Receiver<u64>>,
    mark: Option<LogMark>,
    /// The members were told they missed events (a topic's retention) up to
    /// this sequence.
    told_through: u64,
}

impl Dispatcher {
    pub(super) fn new(
        record: ConsumerRecord,
        inner: &super::Inner,
        mailbox: mpsc::UnboundedReceiver<Control>,
        committed_out: Arc<AtomicU64>,
    ) -> Self {
        let (bus, log, mark) = (inner.bus.clone(), inner.log.clone(), inner.mark.clone());
        let (store, config) = (inner.store.clone(), inner.config.clone());
        let redelivered = crate::metrics::meter()
            .u64_counter(crate::metrics::CONSUMER_REDELIVERED)
            .with_description("Consumer events delivered again (ack wait expired or member left)")
            .build();
        // From 0, so rate() sees the series before the first redelivery.
        redelivered.add(0, &[KeyValue::new("consumer", record.name.clone())]);
        // A log fed from elsewhere (JetStream) says itself how far it holds
        // the bus's events; else this process's log writer does.
        let logged = match &mark {
            Some(mark) => Some(mark.through.clone()),
            None => bus.watch_logged(),
        };
        Dispatcher {
            cursor: record.committed,
            saved: record.committed,
            record,
            bus,
            log,
            store,
            config,
            mailbox,
            committed_out,
            redelivered,
            filter: EventFilter::all(),
            members: Vec::new(),
            pending: BTreeMap::new(),
            pending_bytes: 0,
            ids: HashMap::new(),
            timers: VecDeque::new(),
            redeliver: VecDeque::new(),
            saved_at: Instant::now(),
            dirty: false,
            retry_at: None,
            logged,
            mark,
            told_through: 0,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            self.dispatch().await;
            self.save(false).await;
            let wake = self.next_wake();
            let want_more = !self.members.is_empty() && self.has_room();
            let logged = self.logged.as_mut();
            tokio::select! {
                biased;
                msg = self.mailbox.recv() => {
                    let Some(msg) = msg else {
                        self.save(true).await;
                        return;
                    };
                    if !self.handle(msg).await {
                        return;
                    }
                }
                _ = changed(logged), if want_more => {}
                _ = sleep_until(wake) => {}
            }
            self.expire();
        }
    }

    /// The committed offset: below every pending event.
    fn committed(&self) -> u64 {
        // The logged sequence before the oldest pending event (on a
        // strided log, the one a stride below: the numbers in between are
        // never logged).
        let stride = self.mark.as_ref().map_or(1, |m| m.stride.max(1));
        self.pending
            .first_key_value()
            .map(|(seq, _)| (seq - 1) / stride * stride)
            .unwrap_or(self.cursor)
    }

    fn has_room(&self) -> bool {
        self.pending.len() < self.config.max_ack_pending
            && self.pending_bytes < self.config.max_pending_bytes
    }

    /// What the log holds: this process's commits, and everything before
    /// its first event.
    fn logged_through(&mut self) -> u64 {
        let committed = self.logged.as_mut().map(|w| *w.borrow_and_update());
        committed
            .unwrap_or(0)
            .max(self.bus.first_seq().saturating_sub(1))
    }

    fn next_wake(&self) -> Option<Instant> {
        let timer = self.timers.front().map(|t| t.0);
        let save = (self.dirty || self.committed() != self.saved)
            .then_some(self.saved_at + self.config.save_interval);
        [timer, save, self.retry_at].into_iter().flatten().min()
    }

    /// Hands out redeliveries, then new events from the log, while there
    /// are members and room.
    async fn dispatch(&mut self) {
        if self.members.is_empty() {
            return;
        }
        if let Some(at) = self.retry_at {
            if Instant::now() < at {
                return;
            }
            self.retry_at = None;
        }
        while let Some(seq) = self.redeliver.pop_front() {
            self.redeliver_one(seq);
        }
        while self.has_room() {
            let through = self.logged_through();
            if through <= self.cursor {
                return;
            }
            let room = self.config.max_ack_pending - self.pending.len();
            let page = match self.log.read_after(self.cursor, PAGE.min(room)).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(consumer = %self.record.name, error = %e, "consumer cannot read the event log; retrying");
                    self.retry_at = Some(Instant::now() + RETRY);
                    return;
                }
            };
            let Some(first) = page.first() else {
                // Nothing stored up to `through` (sequence gaps: a restart's
                // jump, events the log refused, or a topic's retention
                // removed them).
                if self.cursor > 0 {
                    self.check_topics(self.cursor).await;
                }
                self.cursor = through;
                return;
            };
            if self.cursor > 0 && first.seq() > self.next_after(self.cursor) {
                self.check_gap(first.seq()).await;
            }
            let mut before: Option<u64> = None;
            for event in page {
                // A topic's retention removes events from the middle of the
                // log: the page itself may skip some, told where they were.
                if let Some(prev) = before
                    && event.seq() > self.next_after(prev)
                {
                    self.check_topics(prev).await;
                }
                before = Some(event.seq());
                self.dispatch_one(event);
            }
        }
    }

    /// The member an event goes to.
    fn owner(&self, event: &Event) -> usize {
        member_index(event, self.members.len())
    }

    fn dispatch_one(&mut self, event: Arc<Event>) {
        let seq = event.seq();
        if seq <= self.cursor {
            return;
        }
        self.cursor = seq;
        self.dirty = true;
        if !self.filter.matches(&event) {
            return;
        }
        let slot = &self.members[self.owner(&event)];
        if !slot.principal.can_see(&event) {
            return;
        }
        let (member, queue) = (slot.id, slot.queue.clone());
        self.pending_bytes += event.envelope_json().len();
        self.ids.insert(event.id(), seq);
        self.pending.insert(
            seq,
            Pending {
                event: event.clone(),
                member: Some(member),
                deliveries: 1,
            },
        );
        if self.record.mode == AckMode::Explicit {
            self.timers
                .push_back((Instant::now() + self.record.ack_wait, seq, 1));
        }
        queue.push(Delivery::Event {
            event,
            redelivered: 0,
        });
    }

    fn redeliver_one(&mut self, seq: u64) {
        let Some(p) = self.pending.get(&seq) else {
            return;
        };
        if p.member.is_some() {
            return;
        }
        let event = p.event.clone();
        let slot = &self.members[self.owner(&event)];
        if !slot.principal.can_see(&event) {
            self.remove(seq);
            return;
        }
        let (member, queue) = (slot.id, slot.queue.clone());
        let Some(p) = self.pending.get_mut(&seq) else {
            return;
        };
        p.member = Some(member);
        p.deliveries += 1;
        let deliveries = p.deliveries;
        if self.record.mode == AckMode::Explicit {
            self.timers
                .push_back((Instant::now() + self.record.ack_wait, seq, deliveries));
        }
        self.redelivered
            .add(1, &[KeyValue::new("consumer", self.record.name.clone())]);
        queue.push(Delivery::Event {
            event,
            redelivered: deliveries - 1,
        });
    }

    fn remove(&mut self, seq: u64) -> bool {
        match self.pending.remove(&seq) {
            Some(p) => {
                self.pending_bytes -= p.event.envelope_json().len();
                self.ids.remove(&p.event.id());
                self.dirty = true;
                true
            }
            None => false,
        }
    }

    /// Ack deadlines that passed: those events wait for a member again.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, seq, delivery)) = self.timers.front() {
            if deadline > now {
                break;
            }
            self.timers.pop_front();
            if let Some(p) = self.pending.get_mut(&seq)
                && p.deliveries == delivery
                && p.member.is_some()
            {
                p.member = None;
                self.redeliver.push_back(seq);
            }
        }
    }

    /// Gives a member's pending events back, oldest first.
    fn release(&mut self, member: u64) {
        for (seq, p) in self.pending.iter_mut() {
            if p.member == Some(member) {
                p.member = None;
                self.redeliver.push_back(*seq);
            }
        }
        let mut seqs: Vec<_> = self.redeliver.drain(..).collect();
        seqs.sort_unstable();
        seqs.dedup();
        self.redeliver.extend(seqs);
    }

    /// Takes over the stored offset when another instance moved it while
    /// this dispatcher had no member (cluster mode: the store is shared, a
    /// client may have consumed on another instance meanwhile). `false`
    /// when the record is gone (deleted on another instance).
    async fn reload(&mut self) -> bool {
        match self.store.load(&self.record.name).await {
            Ok(Some(stored)) => {
                if stored.committed != self.saved {
                    tracing::debug!(consumer = %self.record.name, from = self.saved, to = stored.committed, "consumer moved on another instance");
                    self.reposition(stored.committed);
                    self.saved = stored.committed;
                    self.dirty = false;
                    self.record.committed = stored.committed;
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(consumer = %self.record.name, error = %e, "consumer offset not reloaded; continuing from this instance's");
                true
            }
        }
    }

    fn reposition(&mut self, after: u64) {
        self.pending.clear();
        self.pending_bytes = 0;
        self.ids.clear();
        self.timers.clear();
        self.redeliver.clear();
        self.cursor = after;
        self.dirty = true;
    }

    /// Handles one message; `false` ends the dispatcher.
    async fn handle(&mut self, msg: Control) -> bool {
        match msg {
            Control::Join {
                request,
                queue,
                id,
                reply,
            } => {
                let result = self.join(*request, queue, id).await;
                let _ = reply.send(result);
            }
            Control::Leave(id) => {
                if let Some(at) = self.members.iter().position(|m| m.id == id) {
                    self.members.remove(at);
                    self.release(id);
                    self.record.updated_at = OffsetDateTime::now_utc();
                    self.dirty = true;
                    if self.members.is_empty() {
                        self.save(true).await;
                    }
                }
            }
            Control::Ack { acks, reply } => {
                let mut acked = 0;
                for ack in acks {
                    let seq = match ack {
                        Cursor::Seq(seq) => Some(seq),
                        Cursor::Id(id) => self.ids.get(&id).copied(),
                    };
                    if seq.is_some_and(|seq| self.remove(seq)) {
                        acked += 1;
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(acked);
                }
            }
            Control::Info(reply) => {
                // Idle here, it may be reading on another instance, or be
                // deleted there: then it is not listed and stops here.
                if self.members.is_empty() && self.mark.is_some() && !self.reload().await {
                    return false;
                }
                let mut record = self.record.clone();
                record.committed = self.committed();
                let lag = match &self.mark {
                    Some(mark) => lag_of(&self.bus, Some(mark), record.committed),
                    None => self.logged_through().saturating_sub(record.committed),
                };
                let _ = reply.send(info_of(
                    &record,
                    lag,
                    self.pending.len(),
                    self.members.len(),
                ));
            }
            Control::Delete(reply) => {
                for m in self.members.drain(..) {
                    m.queue.close();
                }
                let _ = reply.send(());
                return false;
            }
            Control::Shutdown(reply) => {
                self.save(true).await;
                for m in self.members.drain(..) {
                    m.queue.close();
                }
                let _ = reply.send(());
                return false;
            }
        }
        true
    }

    async fn join(
        &mut self,
        request: AttachRequest,
        queue: Arc<MemberQueue>,
        id: u64,
    ) -> Result<(), ConsumerError> {
        if self.members.is_empty() && self.mark.is_some() && !self.reload().await {
            // Deleted on another instance: this join creates it again.
            let start = match request.start {
                super::StartAt::Latest => self.bus.last_seq(),
                super::StartAt::Earliest => 0,
            };
            tracing::info!(consumer = %self.record.name, "consumer deleted elsewhere; created again");
            self.reposition(start);
            self.saved = start;
            self.record.committed = start;
        }
        let name = &self.record.name;
        let mismatch = |reason: String| ConsumerError::Mismatch {
            name: name.clone(),
            reason,
        };
        if !self.members.is_empty() {
            if request.shared != self.record.shared {
                return Err(mismatch(format!(
                    "{} members",
                    if self.record.shared {
                        "group"
                    } else {
                        "single-consumer"
                    }
                )));
            }
            if request.mode != self.record.mode {
                return Err(mismatch(format!("ack={}", self.record.mode.as_str())));
            }
            if request.shared && request.filter != self.filter {
                return Err(mismatch("another filter".to_owned()));
            }
            if request.shared && self.members.len() >= self.config.max_members {
                return Err(ConsumerError::TooManyMembers {
                    name: name.clone(),
                    max: self.config.max_members,
                });
            }
        }
        if !request.shared {
            // A single consumer's new connection takes over from the old.
            for old in std::mem::take(&mut self.members) {
                old.queue.close();
                self.release(old.id);
            }
        }
        if self.members.is_empty() {
            self.filter = request.filter.clone();
            if (self.record.shared, self.record.mode) != (request.shared, request.mode) {
                // Pending events of the old mode are settled as they are.
                self.record.shared = request.shared;
                self.record.mode = request.mode;
            }
            if let Some(wait) = request.ack_wait {
                self.record.ack_wait = wait;
            }
            self.dirty = true;
        }
        if !request.shared
            && let Some(cursor) = &request.cursor
        {
            let after = match cursor {
                Cursor::Seq(seq) => Some(*seq),
                Cursor::Id(id) => self.log.seq_of(*id).await.ok().flatten(),
            };
            if let Some(after) = after {
                self.reposition(after);
            }
        }
        self.members.push(Slot {
            id,
            queue,
            principal: request.principal,
        });
        self.members.sort_by_key(|m| m.id);
        self.record.updated_at = OffsetDateTime::now_utc();
        // Rebalance what waits for a member.
        let waiting: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.member.is_none())
            .map(|(seq, _)| *seq)
            .collect();
        self.redeliver = waiting.into();
        Ok(())
    }

    /// Stores the committed offset if it moved (at most every
    /// `save_interval` unless `now`).
    async fn save(&mut self, now: bool) {
        let committed = self.committed();
        self.committed_out.store(committed, Ordering::Relaxed);
        if !self.dirty && committed == self.saved {
            return;
        }
        if !now && self.saved_at.elapsed() < self.config.save_interval {
            return;
        }
        let mut record = self.record.clone();
        record.committed = committed;
        match self.store.save(&record).await {
            Ok(()) => {
                self.saved = committed;
                self.dirty = false;
            }
            Err(e) => {
                tracing::warn!(consumer = %self.record.name, error = %e, "consumer offset not stored; retrying");
            }
        }
        self.saved_at = Instant::now();
    }
}

/// The index, among `members` members sorted by id, of the one an event
/// goes to: by its entity, so one entity's events stay on one member.
pub(super) fn member_index(event: &Event, members: usize) -> usize {
    let key = event
        .payload()
        .entity()
        .map(|(_, id)| id.as_u128())
        .unwrap_or(0);
    let mixed = (key as u64 ^ (key >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 32) as usize % members.max(1)
}

async fn changed(watch: Option<&mut watch::Receiver<u64>>) {
    match watch {
        Some(w) => {
            if w.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
