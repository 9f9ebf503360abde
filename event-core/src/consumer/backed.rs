//! The dispatcher of a group whose events come from a [`GroupBackend`]:
//! pulls from the group's feed and hands each event to one local member
//! (see the module docs of [`backend`](super::backend)).
//!
//! Compared with the log dispatcher ([`dispatch`](super::dispatch)) it
//! keeps no position and schedules no redelivery of its own: the backend
//! does both. What it keeps is what this process holds: each pulled event
//! until its member settles it, to map the `Control` messages onto the
//! feed (a member's ack is the backend ack; a leaving member's events are
//! given back with a nak; with no member left it stops pulling).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::backend::{
    AckHandle, GroupBackend, GroupFeed, GroupMessage, GroupPull, GroupSpec, Settle,
};
use super::dispatch::member_index;
use super::member::{Delivery, MemberQueue};
use super::{AckMode, AttachRequest, ConsumerConfig, ConsumerError, ConsumerInfo, Control};
use crate::auth::Principal;
use crate::event::Event;
use crate::ring::Cursor;

/// Most events asked for in one pull.
const BATCH: usize = 256;
/// Wait before pulling again after the backend failed.
const RETRY: Duration = Duration::from_secs(1);
/// How long a stopping dispatcher waits for its last pull to end (so what
/// it brings is given back at once rather than after `ack_wait`).
const DRAIN: Duration = Duration::from_secs(5);

struct Slot {
    id: u64,
    queue: Arc<MemberQueue>,
    principal: Principal,
}

/// An event a local member holds, until it is settled.
struct Held {
    event: Arc<Event>,
    member: u64,
    delivered: u32,
    handle: Box<dyn AckHandle>,
}

pub(super) struct BackedDispatcher {
    spec: GroupSpec,
    backend: Arc<dyn GroupBackend>,
    feed: Arc<dyn GroupFeed>,
    config: ConsumerConfig,
    mailbox: mpsc::UnboundedReceiver<Control>,
    redelivered: Counter<u64>,
    members: Vec<Slot>,
    held: BTreeMap<u64, Held>,
    held_bytes: usize,
    ids: HashMap<Uuid, u64>,
    /// Local ack deadlines `(deadline, seq, delivered)`: past one, the
    /// backend delivers the event again by itself, so this process forgets
    /// it (and its room is free again).
    timers: VecDeque<(Instant, u64, u32)>,
    pull: Option<GroupPull>,
    /// Pulled while no member was attached: given back when the pull ends,
    /// not at once, or the backend would hand them straight back to the
    /// same pull.
    returning: Vec<Box<dyn AckHandle>>,
    /// Acks forwarded by other processes, for events this one may hold.
    forwarded: Option<BoxStream<'static, Vec<Cursor>>>,
    /// The backend's notices of lost events ([`GroupFeed::gaps`]).
    gaps: Option<BoxStream<'static, u64>>,
    retry_at: Option<Instant>,
    updated_at: OffsetDateTime,
    /// The backend no longer has the group.
    gone: bool,
}

impl BackedDispatcher {
    pub(super) fn new(
        spec: GroupSpec,
        backend: Arc<dyn GroupBackend>,
        feed: Arc<dyn GroupFeed>,
        config: ConsumerConfig,
        mailbox: mpsc::UnboundedReceiver<Control>,
    ) -> Self {
        let redelivered = crate::metrics::meter()
            .u64_counter(crate::metrics::CONSUMER_REDELIVERED)
            .with_description("Consumer events delivered again (ack wait expired or member left)")
            .build();
        redelivered.add(0, &[KeyValue::new("consumer", spec.name.clone())]);
        let forwarded = feed.forwarded_acks();
        let gaps = feed.gaps();
        BackedDispatcher {
            forwarded,
            gaps,
            returning: Vec::new(),
            spec,
            backend,
            feed,
            config,
            mailbox,
            redelivered,
            members: Vec::new(),
            held: BTreeMap::new(),
            held_bytes: 0,
            ids: HashMap::new(),
            timers: VecDeque::new(),
            pull: None,
            retry_at: None,
            updated_at: OffsetDateTime::now_utc(),
            gone: false,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            if self.pull.is_none() && self.wants_more() {
                self.start_pull().await;
            }
            if self.gone {
                // Deleted (by another process): its members end.
                tracing::info!(group = %self.spec.name, "group deleted; closing its members");
                for m in self.members.drain(..) {
                    m.queue.close();
                }
                return;
            }
            let wake = [self.timers.front().map(|t| t.0), self.retry_at]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                biased;
                msg = self.mailbox.recv() => {
                    let Some(msg) = msg else {
                        self.stop().await;
                        return;
                    };
                    if !self.handle(msg).await {
                        return;
                    }
                }
                item = next_of(&mut self.pull) => match item {
                    Some(Ok(message)) => self.take(message).await,
                    Some(Err(e)) => {
                        self.pull_ended().await;
                        self.failed(e);
                    }
                    None => self.pull_ended().await,
                },
                acks = next_of(&mut self.forwarded) => match acks {
                    Some(acks) => {
                        self.apply_acks(acks, false).await;
                    }
                    None => self.forwarded = None,
                },
                after = next_of(&mut self.gaps) => match after {
                    Some(after) => {
                        tracing::warn!(group = %self.spec.name, after, "group lost events a topic's retention removed; members told to resync");
                        for m in &self.members {
                            m.queue.push(Delivery::Gap { after });
                        }
                    }
                    None => self.gaps = None,
                },
                _ = sleep_until(wake) => {}
            }
            self.expire();
        }
    }

    /// Members to feed, room for more, and no failure to wait out.
    fn wants_more(&mut self) -> bool {
        if let Some(at) = self.retry_at {
            if Instant::now() < at {
                return false;
            }
            self.retry_at = None;
        }
        !self.members.is_empty()
            && self.held.len() < self.config.max_ack_pending
            && self.held_bytes < self.config.max_pending_bytes
    }

    async fn start_pull(&mut self) {
        let room = self.config.max_ack_pending - self.held.len();
        match self.feed.pull(room.min(BATCH)).await {
            Ok(pull) => self.pull = Some(pull),
            Err(e) => self.failed(e),
        }
    }

    fn failed(&mut self, error: ConsumerError) {
        if matches!(error, ConsumerError::NotFound(_)) {
            self.gone = true;
            return;
        }
        tracing::warn!(group = %self.spec.name, %error, "group pull failed; retrying");
        self.retry_at = Some(Instant::now() + RETRY);
    }

    /// Hands a pulled event to its local member, or settles it at once.
    async fn take(&mut self, message: GroupMessage) {
        let GroupMessage {
            event,
            delivered,
            handle,
        } = message;
        if self.members.is_empty() {
            // Everyone left while the pull was out: back to the others once
            // it ends.
            self.returning.push(handle);
            return;
        }
        let slot = &self.members[member_index(&event, self.members.len())];
        if !self.spec.filter.matches(&event) || !slot.principal.can_see(&event) {
            // Not for this group's members: done with, as the log dispatcher
            // skips it.
            settle(&self.spec.name, handle.as_ref(), Settle::Ack).await;
            return;
        }
        let (member, queue) = (slot.id, slot.queue.clone());
        let seq = event.seq();
        // The backend delivering again what a member still holds: its
        // `ack_wait` passed. The new delivery replaces the old.
        self.forget(seq);
        self.held_bytes += event.envelope_json().len();
        self.ids.insert(event.id(), seq);
        if self.spec.mode == AckMode::Explicit {
            self.timers
                .push_back((Instant::now() + self.spec.ack_wait, seq, delivered));
        }
        if delivered > 1 {
            self.redelivered
                .add(1, &[KeyValue::new("consumer", self.spec.name.clone())]);
        }
        self.held.insert(
            seq,
            Held {
                event: event.clone(),
                member,
                delivered,
                handle,
            },
        );
        queue.push(Delivery::Event {
            event,
            redelivered: delivered.saturating_sub(1),
        });
    }

    async fn pull_ended(&mut self) {
        self.pull = None;
        for handle in std::mem::take(&mut self.returning) {
            settle(&self.spec.name, handle.as_ref(), Settle::Nak).await;
        }
    }

    /// Drops an event from what this process holds, unsettled.
    fn forget(&mut self, seq: u64) -> Option<Held> {
        let held = self.held.remove(&seq)?;
        self.held_bytes -= held.event.envelope_json().len();
        self.ids.remove(&held.event.id());
        Some(held)
    }

    /// Local deadlines that passed: the backend redelivers those events on
    /// its own.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, seq, delivered)) = self.timers.front() {
            if deadline > now {
                break;
            }
            self.timers.pop_front();
            if self
                .held
                .get(&seq)
                .is_some_and(|h| h.delivered == delivered)
            {
                self.forget(seq);
            }
        }
    }

    /// Gives back at once every event a member holds.
    async fn release(&mut self, member: Option<u64>) {
        let seqs: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| member.is_none_or(|m| h.member == m))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in seqs {
            if let Some(held) = self.forget(seq) {
                settle(&self.spec.name, held.handle.as_ref(), Settle::Nak).await;
            }
        }
    }

    /// Ends: members closed, what is held and what the last pull brings
    /// given back.
    async fn stop(&mut self) {
        for m in self.members.drain(..) {
            m.queue.close();
        }
        self.feed.members_changed(0);
        self.release(None).await;
        if let Some(mut pull) = self.pull.take() {
            let returning = &mut self.returning;
            let _ = tokio::time::timeout(DRAIN, async {
                while let Some(item) = pull.next().await {
                    if let Ok(message) = item {
                        returning.push(message.handle);
                    }
                }
            })
            .await;
        }
        self.pull_ended().await;
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
                    self.feed.members_changed(self.members.len());
                    self.updated_at = OffsetDateTime::now_utc();
                    if self.members.is_empty() && self.pull.is_some() {
                        // Given back when the pull ends, so that they go to
                        // other processes instead of into this pull.
                        let seqs: Vec<u64> = self.held.keys().copied().collect();
                        for seq in seqs {
                            if let Some(held) = self.forget(seq) {
                                self.returning.push(held.handle);
                            }
                        }
                    } else {
                        self.release(Some(id)).await;
                    }
                }
            }
            Control::Ack { acks, reply } => {
                let acked = self.apply_acks(acks, true).await;
                if let Some(reply) = reply {
                    let _ = reply.send(acked);
                }
            }
            Control::Info(reply) => {
                let _ = reply.send(self.info().await);
            }
            Control::Delete(reply) => {
                // The backend forgets the group (and what it tracked).
                for m in self.members.drain(..) {
                    m.queue.close();
                }
                let _ = reply.send(());
                return false;
            }
            Control::Shutdown(reply) => {
                self.stop().await;
                let _ = reply.send(());
                return false;
            }
        }
        true
    }

    /// Settles the acked events this process holds; with `forward`, passes
    /// the others on to the processes that may hold them. How many were
    /// held here.
    async fn apply_acks(&mut self, acks: Vec<Cursor>, forward: bool) -> usize {
        let mut acked = 0;
        let mut elsewhere = Vec::new();
        for ack in acks {
            let seq = match ack {
                Cursor::Seq(seq) => Some(seq),
                Cursor::Id(id) => self.ids.get(&id).copied(),
            };
            match seq.and_then(|seq| self.forget(seq)) {
                Some(held) => {
                    settle(&self.spec.name, held.handle.as_ref(), Settle::Ack).await;
                    acked += 1;
                }
                None => elsewhere.push(ack),
            }
        }
        if forward && !elsewhere.is_empty() {
            forward_acks(self.backend.as_ref(), &self.spec.name, &elsewhere).await;
        }
        acked
    }

    async fn info(&mut self) -> ConsumerInfo {
        let state = match self.backend.info(&self.spec.name).await {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(group = %self.spec.name, error = %e, "group state unavailable");
                None
            }
        };
        ConsumerInfo {
            name: self.spec.name.clone(),
            kind: "group",
            // The backend's: another process may have changed them.
            ack: state.as_ref().map_or(self.spec.mode, |s| s.mode),
            ack_wait_ms: u64::try_from(
                state
                    .as_ref()
                    .map_or(self.spec.ack_wait, |s| s.ack_wait)
                    .as_millis(),
            )
            .unwrap_or(u64::MAX),
            committed_seq: state.as_ref().map_or(0, |s| s.committed),
            lag: state.as_ref().map_or(0, |s| s.lag),
            pending: state.as_ref().map_or(self.held.len(), |s| s.pending),
            members: self.members.len(),
            last_seen: state.map_or(self.updated_at, |s| s.last_active.max(self.updated_at)),
        }
    }

    async fn join(
        &mut self,
        request: AttachRequest,
        queue: Arc<MemberQueue>,
        id: u64,
    ) -> Result<(), ConsumerError> {
        let mismatch = |reason: String| ConsumerError::Mismatch {
            name: self.spec.name.clone(),
            reason,
        };
        if !request.shared {
            return Err(mismatch("group members".to_owned()));
        }
        let ack_wait = request.ack_wait.unwrap_or(self.spec.ack_wait);
        if !self.members.is_empty() {
            if request.mode != self.spec.mode {
                return Err(mismatch(format!("ack={}", self.spec.mode.as_str())));
            }
            if request.filter != self.spec.filter {
                return Err(mismatch("another filter".to_owned()));
            }
            if self.members.len() >= self.config.max_members {
                return Err(ConsumerError::TooManyMembers {
                    name: self.spec.name.clone(),
                    max: self.config.max_members,
                });
            }
        } else if (request.mode, ack_wait) != (self.spec.mode, self.spec.ack_wait)
            || request.filter != self.spec.filter
        {
            // The first local member sets the settings; the backend checks
            // them against the other processes' use of the group.
            let spec = GroupSpec {
                mode: request.mode,
                ack_wait,
                filter: request.filter.clone(),
                start: request.start,
                ..self.spec.clone()
            };
            self.feed = self.backend.open(&spec).await?;
            self.forwarded = self.feed.forwarded_acks();
            self.gaps = self.feed.gaps();
            self.spec = spec;
        }
        self.members.push(Slot {
            id,
            queue,
            principal: request.principal,
        });
        self.members.sort_by_key(|m| m.id);
        self.feed.members_changed(self.members.len());
        self.updated_at = OffsetDateTime::now_utc();
        Ok(())
    }
}

async fn settle(group: &str, handle: &dyn AckHandle, how: Settle) {
    if let Err(e) = handle.settle(how).await {
        // Unsettled, the event is delivered again after `ack_wait`.
        tracing::debug!(group, error = %e, ?how, "group settlement not sent");
    }
}

/// Passes acks on to the other processes (see [`GroupBackend::forward_acks`]).
pub(super) async fn forward_acks(backend: &dyn GroupBackend, group: &str, acks: &[Cursor]) {
    match backend.forward_acks(group, acks).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(
                group,
                acks = acks.len(),
                "acks of events not held here are dropped"
            )
        }
        Err(e) => {
            tracing::warn!(group, error = %e, "acks not forwarded; those events come again after ack_wait")
        }
    }
}

async fn next_of<S: futures_util::Stream + Unpin>(stream: &mut Option<S>) -> Option<S::Item> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
