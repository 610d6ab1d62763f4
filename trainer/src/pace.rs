//! How often a waiting participant reads the ledger: every `--poll-ms` while the ledger moves,
//! and less often while it does not (docs/SCALE.md, item 3).
//!
//! ```text
//!   poll read new slots                  ─▶ wait the base interval
//!   poll read nothing, up to 8 in a row      ─▶ wait the base interval
//!   poll read nothing, 9 or more in a row    ─▶ wait twice the last wait, at most the cap
//! ```
//!
//! At 1,000 workers most of a round is quiet for the ledger: every member downloads and aggregates
//! the updates, and the result comes long after the last verdict. Polling at the base interval
//! through that phase was a third of the ledger prefix's reads with gathering. The cost is latency: a result
//! that lands in a quiet phase is seen up to one cap later. The first [`QUIET_POLLS_AT_BASE`]
//! empty polls keep the base pace: a round's short lulls (a validator scoring, a member
//! computing its attestation; under a second in the demo) stay at full speed, and each step that
//! waits for the one before is not delayed by a cap. (Backing off from the first empty poll made
//! the demo's 40 rounds take 97 s instead of 38 s.) Local behaviour only: when a member reads
//! decides nothing.

use std::time::Duration;

/// Empty polls in a row after which the pause is still the base; after the next, it doubles.
pub const QUIET_POLLS_AT_BASE: u32 = 8;

/// The wait between polls of the ledger, given what the last poll read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollPace {
    base: Duration,
    max: Duration,
    current: Duration,
    /// Polls in a row that read nothing.
    empty: u32,
}

impl PollPace {
    /// Waits of `base` while the ledger moves, doubling up to `max` (at least `base`) while it
    /// does not.
    pub fn new(base: Duration, max: Duration) -> PollPace {
        PollPace { base, max: max.max(base), current: base, empty: 0 }
    }

    /// The wait before the next poll, after one that read `read` new slots.
    pub fn after(&mut self, read: u64) -> Duration {
        self.empty = if read > 0 { 0 } else { self.empty.saturating_add(1) };
        self.current =
            if self.empty <= QUIET_POLLS_AT_BASE { self.base } else { self.current.saturating_mul(2).min(self.max) };
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_after_eight_empty_polls_up_to_the_cap_and_drop_back_when_something_is_read() {
        let ms = Duration::from_millis;
        let mut pace = PollPace::new(ms(250), ms(2000));
        let quiet: Vec<Duration> = (0..13).map(|_| pace.after(0)).collect();
        // 8 empty polls each followed by the base wait, then the doubling.
        let mut want = vec![ms(250); 8];
        want.extend([ms(500), ms(1000), ms(2000), ms(2000), ms(2000)]);
        assert_eq!(quiet, want);
        assert_eq!(pace.after(3), ms(250));
        assert_eq!(pace.after(0), ms(250), "the count of empty polls starts again");
        // A cap below the base is the base: no backoff.
        let mut flat = PollPace::new(ms(250), ms(100));
        assert_eq!((flat.after(0), flat.after(0)), (ms(250), ms(250)));
    }
}
