//! Cross-crate end-to-end tests (conformance suite).
