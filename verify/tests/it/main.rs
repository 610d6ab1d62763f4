//! Integration tests of cairn-verify: golden bytes and hashes, determinism across thread counts,
//! every decoder rejection, and property tests against an independent dense f64 reference.

mod common;
mod corruption;
mod determinism;
mod golden;
mod props;
mod rejections;
