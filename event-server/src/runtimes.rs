//! Runtimes of their own for work that must not wait behind the fan-out.
//!
//! The main runtime serves every connection. Under saturation its workers
//! are busy writing events to thousands of sockets, and a task woken there
//! waits behind all of them. Work whose latency other clients wait on gets a
//! small runtime of its own: the event log's group commit (every durable
//! publish waits for it) and, with `INTAKE_THREADS`, the publish API's
//! connections and, in cluster mode, the link to NATS (the JetStream
//! acknowledgement every awaited publish waits for; the stream's events
//! are still injected into the bus on the main runtime). The operating
//! system then shares the cores between these threads and the main
//! runtime's workers, so neither starves.

use crate::error::ServerError;

/// A multi-thread runtime with named threads, shut down in the background
/// when dropped (it may be dropped from async code, where a blocking
/// shutdown would panic).
pub struct Dedicated(Option<tokio::runtime::Runtime>);

impl Dedicated {
    /// `threads` workers named `name`; `threads == 0` is no runtime (its
    /// work stays on the caller's runtime).
    pub fn start(name: &'static str, threads: usize) -> Result<Dedicated, ServerError> {
        if threads == 0 {
            return Ok(Dedicated(None));
        }
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()
            .map(|rt| Dedicated(Some(rt)))
            .map_err(|e| ServerError::Startup(format!("{name} runtime: {e}")))
    }

    /// Where to spawn its work, or `None` for the caller's runtime.
    pub fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.0.as_ref().map(|rt| rt.handle().clone())
    }
}

impl std::fmt::Debug for Dedicated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Dedicated").field(&self.0.is_some()).finish()
    }
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
