//! The demo domain (feature `demo`): notes in the host's database and jobs run
//! by the simulated worker, so a newcomer sees every event type live.

pub mod jobs;
pub mod notes;
pub mod store;
