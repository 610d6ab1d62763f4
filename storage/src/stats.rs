//! Counts of the store requests this process made, by operation and outcome, for `/metrics`
//! (`cairn worker --metrics`, docs/DASHBOARD.md). One process-wide table: every `Store` of the
//! process adds to it. Each attempt is one request: `ok`, `retried` (a transient failure that was
//! retried), or the kind of the error the caller got.

use std::collections::BTreeMap;
use std::sync::Mutex;

static COUNTS: Mutex<BTreeMap<(&'static str, &'static str), u64>> = Mutex::new(BTreeMap::new());

/// Counts one request of `operation` that ended in `outcome`.
pub(crate) fn record(operation: &'static str, outcome: &'static str) {
    if let Ok(mut counts) = COUNTS.lock() {
        *counts.entry((operation, outcome)).or_default() += 1;
    }
}

static BYTES_READ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts `n` bytes of object bodies read (whole objects and ranges, ledger slots included).
pub(crate) fn record_read(n: usize) {
    BYTES_READ.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
}

/// Bytes of object bodies this process read from its stores so far: what it downloaded, less
/// request and header overhead.
pub fn bytes_read() -> u64 {
    BYTES_READ.load(std::sync::atomic::Ordering::Relaxed)
}

/// Every (operation, outcome) counted so far, with its count.
pub fn requests() -> Vec<((&'static str, &'static str), u64)> {
    COUNTS.lock().map(|c| c.iter().map(|(k, v)| (*k, *v)).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_operation_and_outcome() {
        let before = |op, outcome| requests().into_iter().find(|(k, _)| *k == (op, outcome)).map_or(0, |(_, n)| n);
        let (ok, retried) = (before("stats-test", "ok"), before("stats-test", "retried"));
        record("stats-test", "ok");
        record("stats-test", "ok");
        record("stats-test", "retried");
        assert_eq!(before("stats-test", "ok"), ok + 2);
        assert_eq!(before("stats-test", "retried"), retried + 1);
        let read = bytes_read();
        record_read(1000);
        assert!(bytes_read() >= read + 1000);
    }
}
