//! Bounded retries with exponential backoff and jitter, for transient failures only.
//!
//! object_store's own HTTP retries are switched off (see `store::open`), so this is the single
//! retry layer: one place decides what is transient, and tests that inject failures below the
//! `Store` exercise it.

use std::time::Duration;

/// How often and how patiently a `Store` retries a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 means no retry).
    pub max_attempts: u32,
    /// Delay before the first retry; it doubles on each further retry.
    pub base_delay_ms: u64,
    /// Upper bound on one delay.
    pub max_delay_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 5, base_delay_ms: 100, max_delay_ms: 3_000 }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based): exponential, capped, with "equal jitter"
    /// (between half and all of the capped value) so that racing clients spread out.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self.base_delay_ms.saturating_mul(1u64 << retry.saturating_sub(1).min(20));
        let capped = exp.min(self.max_delay_ms);
        let half = capped / 2;
        let jitter = if half == 0 { 0 } else { rand::random_range(0..=half) };
        Duration::from_millis(half + jitter)
    }
}

/// Whether an object_store error is worth retrying: network failures, timeouts, throttling and
/// 5xx answers, and a panicked blocking task. object_store types most 4xx answers itself, but a
/// failed listing arrives as `Generic` whatever its status, so the status is read from the error
/// chain: any other 4xx is an answer, and retrying it changes nothing.
pub(crate) fn is_transient(err: &object_store::Error) -> bool {
    match err {
        object_store::Error::JoinError { .. } => true,
        object_store::Error::Generic { .. } => {
            !matches!(http_status(err), Some(s) if (400..500).contains(&s) && s != 408 && s != 429)
        }
        _ => false,
    }
}

/// The HTTP status inside an object_store error, where the error carries one. object_store keeps
/// its HTTP error type private, so this reads the status from the chain's message
/// (`Server returned non-2xx status code: 403 Forbidden`).
pub(crate) fn http_status(err: &object_store::Error) -> Option<u16> {
    const MARK: &str = "non-2xx status code: ";
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if let Some(at) = text.find(MARK) {
            let digits: String = text[at + MARK.len()..].chars().take_while(char::is_ascii_digit).collect();
            return digits.parse().ok();
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_are_answers_and_server_errors_are_transient() {
        let with = |msg: &str| object_store::Error::Generic { store: "S3", source: msg.to_string().into() };
        let refused =
            with("Error performing GET in 2ms - Server returned non-2xx status code: 403 Forbidden: <Error/>");
        assert_eq!(http_status(&refused), Some(403));
        assert!(!is_transient(&refused));
        assert!(is_transient(&with("Server returned non-2xx status code: 503 Service Unavailable")));
        assert!(is_transient(&with("Server returned non-2xx status code: 429 Too Many Requests")));
        assert!(is_transient(&with("error sending request: connection refused")));
        assert!(!is_transient(&object_store::Error::NotFound { path: "x".into(), source: "gone".into() }));
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        let p = RetryPolicy { max_attempts: 10, base_delay_ms: 100, max_delay_ms: 1_000 };
        for retry in 1..=12 {
            let d = p.delay(retry).as_millis() as u64;
            let cap = (100u64 << (retry - 1).min(20)).min(1_000);
            assert!(d >= cap / 2 && d <= cap, "retry {retry}: {d} ms not in [{}, {cap}]", cap / 2);
        }
    }
}
