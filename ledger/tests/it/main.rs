//! The ledger's integration tests: one binary, one module per concern.

mod common;
mod concurrency;
mod holes;
mod properties;
mod reading;
mod simulation;
mod tamper;
mod window;
