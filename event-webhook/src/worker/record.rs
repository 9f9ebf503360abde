//! The recorder: one task that writes attempt results in batches.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::handoff::Inserted;
use crate::model::AttemptRecord;
use crate::service::Shared;

/// Most attempt results written in one transaction. The stores write a
/// batch with a fixed number of set-based statements, so a large batch
/// costs little more than a small one: under load the recorder keeps up by
/// writing more per transaction, not by adding round trips.
pub(super) const RECORD_BATCH: usize = 1024;

/// How long the recorder waits for more results before writing a small
/// batch. A result only has to be durable before its claim runs out, so
/// waiting costs nothing but a slightly longer window in which a crash
/// would send the delivery again, and it turns hundreds of small
/// transactions a second into a few large ones.
const RECORD_LINGER: Duration = Duration::from_millis(10);

/// Most results kept waiting for their rows' inserts.
const WAITING_MAX: usize = RECORD_BATCH * 4;

/// Writes attempt results in batches: whatever arrived while the previous
/// transaction ran goes into the next one.
///
/// A result of a row the sink handed over before its insert committed
/// (`handoff`) can only be written once that commit is in: it waits, but
/// not in the way of the others, which are written meanwhile. If the
/// insert failed there is no row to record it on, and it is dropped.
pub(super) async fn record_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<(AttemptRecord, Option<Inserted>)>,
) {
    let mut arrived = Vec::with_capacity(RECORD_BATCH);
    let mut waiting: Vec<(AttemptRecord, Inserted)> = Vec::new();
    let mut batch: Vec<AttemptRecord> = Vec::with_capacity(RECORD_BATCH);
    let mut open = true;
    while open || !waiting.is_empty() {
        if !open || waiting.len() >= WAITING_MAX {
            // Shut down, or too much waits already: the oldest insert first
            // (the channel fills meanwhile, and the attempts wait for room).
            if let Some((_, inserted)) = waiting.first() {
                inserted.committed().await;
            }
        } else if let Some((_, inserted)) = waiting.first() {
            tokio::select! {
                n = rx.recv_many(&mut arrived, RECORD_BATCH) => open = n > 0,
                _ = inserted.committed() => {}
            }
        } else {
            open = rx.recv_many(&mut arrived, RECORD_BATCH).await > 0;
        }
        if open && !arrived.is_empty() {
            let until = Instant::now() + RECORD_LINGER;
            while arrived.len() < RECORD_BATCH {
                let room = RECORD_BATCH - arrived.len();
                match tokio::time::timeout_at(until, rx.recv_many(&mut arrived, room)).await {
                    Ok(n) if n > 0 => {}
                    Ok(_) => {
                        // Every sender is gone (shutdown).
                        open = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        let mut still = Vec::new();
        let pending = waiting
            .drain(..)
            .map(|(r, i)| (r, Some(i)))
            .chain(arrived.drain(..));
        for (record, inserted) in pending {
            match inserted {
                None => batch.push(record),
                Some(inserted) => match inserted.settled() {
                    Some(true) => batch.push(record),
                    Some(false) => {}
                    None => still.push((record, inserted)),
                },
            }
        }
        waiting = still;
        if batch.len() > RECORD_BATCH {
            // Written in two transactions rather than one too large.
            let rest = batch.split_off(RECORD_BATCH);
            write(&shared, &batch).await;
            batch = rest;
        }
        if !batch.is_empty() {
            write(&shared, &batch).await;
            batch.clear();
        }
    }
}

/// Writes one batch of results (retrying a few times) and acts on what it
/// did to the webhooks.
async fn write(shared: &Shared, batch: &[AttemptRecord]) {
    let mut tries = 0u64;
    let started = Instant::now();
    let effects = loop {
        match shared.store.complete_attempts(batch).await {
            Ok(effects) => break effects,
            Err(error) if tries < 3 => {
                tries += 1;
                tracing::warn!(%error, "recording webhook attempts failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * tries)).await;
            }
            Err(error) => {
                // The claims expire and the deliveries are sent again:
                // at-least-once.
                tracing::error!(%error, attempts = batch.len(), "recording webhook attempts failed");
                break Vec::new();
            }
        }
    };
    tracing::debug!(
        target: "matric::webhooks::timing",
        records = batch.len(),
        record_us = started.elapsed().as_micros() as u64,
        "webhook record"
    );
    let mut disabled = false;
    for (record, effect) in batch.iter().zip(&effects) {
        if effect.lost_claim {
            tracing::warn!(delivery_id = %record.delivery_id, "webhook attempt not recorded: the claim expired or the delivery was deleted");
        }
        if effect.webhook_disabled {
            tracing::warn!(webhook_id = %record.webhook_id, "webhook disabled");
            disabled = true;
        }
    }
    if disabled {
        shared.refresh_index().await;
    }
}
