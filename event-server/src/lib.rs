//! The reference host binary: picks its sinks through Cargo features.
