//! A simulated worker feeding the job bridge; prints what clients would
//! receive (flat docs/protocol.md §1 JSON), including an AI revision that updates
//! its note before completing.
//!
//! `cargo run -p event-bridge-jobs --features simulator --example simulated_jobs`

use std::time::Duration;

use event_bridge_jobs::simulator::{SimulatedJob, SimulatedWorker, SimulatorConfig};
use event_bridge_jobs::{JobBridge, JobBridgeConfig, NoteChange, NoteEvents};
use event_core::{ConnectionRegistry, EventBus, NoteOperation, Received};

#[tokio::main]
async fn main() {
    let bus = EventBus::default();
    let registry = ConnectionRegistry::new();
    let mut sub = bus.subscribe();

    let worker = SimulatedWorker::start(SimulatorConfig {
        steps: 4,
        step_duration: Duration::from_millis(150),
        failure_rate: 0.3,
        retries: 1,
        seed: Some(42),
        ..SimulatorConfig::default()
    });
    let bridge = JobBridge::new(&bus, &registry, JobBridgeConfig::default())
        .with_queue_stats(worker.stats_source())
        .spawn(worker.subscribe());

    // The AI revision edits its note (here without a database; a real host
    // commits through `AfterCommit`) before the job reports completion.
    let notes = NoteEvents::new(&bus);
    worker.on_complete("AiRevision", move |job: SimulatedJob| {
        let notes = notes.clone();
        async move {
            if let Some(note_id) = job.note_id {
                notes.updated(NoteChange::new(note_id, NoteOperation::Updated).ai_content(true));
            }
            Ok(())
        }
    });

    let printer = tokio::spawn(async move {
        while let Received::Event(ev) = sub.recv().await {
            println!("{}", String::from_utf8_lossy(ev.json()));
        }
    });

    for i in 0..4 {
        let job_type = if i == 0 { "AiRevision" } else { "Embedding" };
        if let Err(error) = worker.submit(job_type, Some(uuid::Uuid::now_v7())) {
            eprintln!("submit failed: {error}");
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    worker.shutdown().await;
    let stats = bridge.join().await;
    printer.abort();
    eprintln!("{stats:?}");
}
