//! Named points at which a test makes this process die, to check that a participant killed at the
//! worst moment of a write restarts and the run loses and double-counts nothing (issue 20, "crash
//! anywhere"; `tests/it/federation.rs`).
//!
//! `CAIRN_CRASH_AT=POINT` (or `POINT@N`) makes the process abort (SIGABRT: no destructors, no
//! flushing, as a `kill -9` or a power cut would leave it) the first (or Nth) time it reaches
//! `POINT`. Unset, every point costs one check of a value read once. The points are the moments
//! between two writes that depend on each other ([`POINTS`]). Nothing here is consensus: the
//! variable only decides when this process stops.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a crash point.
pub const ENV: &str = "CAIRN_CRASH_AT";

/// Every point, in the order a worker's round reaches them; `append:KIND` follows the ledger append
/// of an entry of that kind (`ledger::Kind::name`).
pub const POINTS: &[&str] = &[
    // A worker's update blob is in the store; its Contribution is not in the ledger yet.
    "worker:uploaded",
    "append:contribution",
    // The momentum file's new bytes are written and synced under the temporary name; the rename
    // that replaces the old file has not happened.
    "state:written",
    "state:saved",
    "append:verdict",
    "append:close_vote",
    "append:attestation",
    // The snapshot's state blob is in the store; its Snapshot entry is not in the ledger yet.
    "snapshot:uploaded",
    "append:snapshot",
    "append:evaluation",
    // With a gatherer (`trainer::gather`): a worker's signed Contribution is in its organisation's
    // pending folder, not in the ledger yet; a gatherer appended a slot of them and has not
    // deleted them from the pending folder yet.
    "worker:pending",
    "gather:appended",
];

struct Armed {
    point: String,
    nth: u64,
    hits: AtomicU64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

/// The point and visit `value` names; an error for a name outside [`POINTS`] or a visit of 0.
fn armed(value: &str) -> Result<Armed, String> {
    let (point, nth) = match value.split_once('@') {
        Some((p, n)) => {
            (p, n.parse().ok().filter(|&n: &u64| n > 0).ok_or(format!("{n:?} is not a visit (1, 2, ...)"))?)
        }
        None => (value, 1),
    };
    if !POINTS.contains(&point) {
        return Err(format!("{point:?} is not a crash point (one of {})", POINTS.join(", ")));
    }
    Ok(Armed { point: point.to_string(), nth, hits: AtomicU64::new(0) })
}

/// What the environment arms, said once on stderr: a stray variable must not go unnoticed.
fn from_env() -> Option<Armed> {
    let value = std::env::var(ENV).ok()?;
    match armed(&value) {
        Ok(a) => {
            eprintln!("{ENV}={value}: this process will abort at crash point {} (visit {})", a.point, a.nth);
            Some(a)
        }
        Err(why) => {
            eprintln!("{ENV}={value} ignored: {why}");
            None
        }
    }
}

/// Aborts the process if `point` is the armed point and this is its armed visit.
pub fn reached(point: &str) {
    let Some(a) = ARMED.get_or_init(from_env) else { return };
    if a.point == point && a.hits.fetch_add(1, Ordering::SeqCst) + 1 == a.nth {
        eprintln!("crash point {point} reached ({ENV}): aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_arms_with_an_optional_visit_count() {
        let a = armed("append:contribution@3").unwrap();
        assert_eq!((a.point.as_str(), a.nth), ("append:contribution", 3));
        assert_eq!(armed("state:written").unwrap().nth, 1);
        assert!(armed("state:written@x").is_err(), "a bad count arms nothing");
        assert!(armed("state:written@0").is_err(), "visit 0 would never come");
        assert!(armed("state:writen").is_err(), "a misspelt point is refused, not silently never reached");
        // Unarmed (this test process has no CAIRN_CRASH_AT), a point is passed through.
        reached("state:written");
    }
}
