//! Integration tests of cairn-verify: golden bytes and hashes, determinism across thread counts,
//! every decoder rejection, property tests against an independent dense f64 reference, the run
//! config, and the round rule and replay on real signed ledgers.

mod audit;
mod common;
mod config;
mod corruption;
mod determinism;
mod golden;
mod index_coding;
mod linear;
mod overrides;
mod props;
mod rejections;
mod replay;
mod round_rule;
mod run;
mod simulation;
mod step;
