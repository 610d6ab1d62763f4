//! The conformance check behind `cairn store check`: does this backend give the guarantees the
//! ledger relies on? Some S3 look-alikes accept several winners of a put-if-absent race; the
//! ledger must refuse them, and this is how an operator finds out before starting a run.
//!
//! Every check works under a fresh scratch prefix (`_cairn-check/<random>/`) and removes what it
//! wrote.
//!
//! [`check_protection`] asks a second question: can the caller's credentials replace or delete
//! history? The ledger's slots, checkpoint signatures and blobs are written once, with
//! put-if-absent; a bucket policy can deny every other write and every delete under their
//! prefixes (S3: deny `s3:PutObject` when the `s3:if-none-match` condition key is absent, and deny
//! `s3:DeleteObject`/`s3:DeleteObjectVersion`). Object Lock alone does not: it keeps old versions,
//! while a plain PUT makes a new current version and a DELETE a delete marker, and readers read
//! the current version. The check writes one probe object under each prefix and tries to replace
//! it and to delete it; when the store denies both, the probes stay (harmless: nothing refers to
//! them).

use std::time::Instant;

use bytes::Bytes;
use futures::future::join_all;

use crate::error::Result;
use crate::store::{CasOutcome, PutOutcome, Store};

/// Where `check` works: a fresh folder under this prefix for each run of the check.
pub const SCRATCH_PREFIX: &str = "_cairn-check/";

/// Key prefixes that hold history: written once with put-if-absent, never replaced or deleted.
/// (The ledger's slots and checkpoint signatures, update and snapshot blobs, and mirrored blobs.)
pub const HISTORY_PREFIXES: [&str; 4] = ["ledger/seq/", "ledger/checkpoints/", "blobs/", "mirrors/"];

/// Racers in the put-if-absent race.
pub const RACERS: usize = 8;
/// Rounds of the race.
pub const RACE_ROUNDS: usize = 5;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Short name, e.g. `put-if-absent race`.
    pub name: &'static str,
    /// Whether the backend behaved as required.
    pub passed: bool,
    /// What was seen.
    pub detail: String,
    /// Wall time of the check in milliseconds.
    pub elapsed_ms: u64,
}

/// Runs every check in order and returns their results; an error means the store could not be
/// used at all (unreachable, bad credentials), not that a check failed.
pub async fn check(store: &Store) -> Result<Vec<CheckResult>> {
    let scratch = store.scoped(&format!("{SCRATCH_PREFIX}{}", hex::encode(rand::random::<[u8; 8]>())))?;
    let mut results = Vec::new();
    let outcome = run_checks(&scratch, &mut results).await;
    // Clean up whatever the checks left, even after a failure.
    for info in scratch.list("", None).await.unwrap_or_default() {
        let _ = scratch.delete(&info.key).await;
    }
    outcome.map(|()| results)
}

async fn timed<F: std::future::Future<Output = Result<(bool, String)>>>(
    name: &'static str,
    results: &mut Vec<CheckResult>,
    f: F,
) -> Result<()> {
    let start = Instant::now();
    let (passed, detail) = f.await?;
    results.push(CheckResult { name, passed, detail, elapsed_ms: start.elapsed().as_millis() as u64 });
    Ok(())
}

async fn run_checks(s: &Store, results: &mut Vec<CheckResult>) -> Result<()> {
    timed("put-if-absent twice", results, async {
        let first = s.put_if_absent("once", Bytes::from_static(b"first")).await?;
        let second = s.put_if_absent("once", Bytes::from_static(b"second")).await?;
        let kept = s.get("once", 1 << 10).await?.bytes;
        let passed =
            matches!(first, PutOutcome::Created(_)) && second == PutOutcome::AlreadyExists && kept.as_ref() == b"first";
        Ok((
            passed,
            format!("first={} second={} kept={:?}", label(&first), label(&second), String::from_utf8_lossy(&kept)),
        ))
    })
    .await?;

    timed("put-if-absent race", results, async {
        let mut bad_rounds = Vec::new();
        for round in 0..RACE_ROUNDS {
            let key = format!("race/{round}");
            let racers = (0..RACERS).map(|i| {
                let (s, key) = (s.clone(), key.clone());
                async move { s.put_if_absent(&key, Bytes::from(format!("racer {i}"))).await }
            });
            let outcomes: Vec<PutOutcome> = join_all(racers).await.into_iter().collect::<Result<_>>()?;
            let winners: Vec<usize> = outcomes
                .iter()
                .enumerate()
                .filter(|(_, o)| matches!(o, PutOutcome::Created(_)))
                .map(|(i, _)| i)
                .collect();
            let stored = s.get(&key, 1 << 10).await?.bytes;
            let consistent = winners.len() == 1 && stored == format!("racer {}", winners[0]).as_bytes();
            if !consistent {
                bad_rounds.push(format!("round {round}: {} winners", winners.len()));
            }
        }
        let detail = if bad_rounds.is_empty() {
            format!("{RACE_ROUNDS} rounds x {RACERS} racers: exactly one winner each")
        } else {
            bad_rounds.join(", ")
        };
        Ok((bad_rounds.is_empty(), detail))
    })
    .await?;

    timed("compare-and-swap", results, async {
        let v1 = match s.compare_and_swap("pointer", None, Bytes::from_static(b"v1")).await? {
            CasOutcome::Swapped(v) => v,
            CasOutcome::Conflict => return Ok((false, "creating the pointer conflicted".into())),
        };
        let to_v2 = s.compare_and_swap("pointer", Some(&v1), Bytes::from_static(b"v2")).await?;
        let stale = s.compare_and_swap("pointer", Some(&v1), Bytes::from_static(b"v3")).await?;
        let kept = s.get("pointer", 1 << 10).await?.bytes;
        let passed = matches!(to_v2, CasOutcome::Swapped(_)) && stale == CasOutcome::Conflict && kept.as_ref() == b"v2";
        Ok((
            passed,
            format!(
                "fresh version={} stale version={} kept={:?}",
                cas_label(&to_v2),
                cas_label(&stale),
                String::from_utf8_lossy(&kept)
            ),
        ))
    })
    .await?;

    timed("read-after-write", results, async {
        let mut misses = 0;
        for i in 0..10 {
            let body = Bytes::from(format!("value {i}"));
            s.put(&format!("raw/{i}"), body.clone()).await?;
            if s.get(&format!("raw/{i}"), 1 << 10).await?.bytes != body {
                misses += 1;
            }
        }
        let listed = s.list("raw", None).await?.len();
        Ok((misses == 0 && listed == 10, format!("{misses} stale reads of 10, {listed} of 10 listed")))
    })
    .await?;

    timed("list order", results, async {
        let order = [7u32, 2, 9, 0, 5, 11, 3, 10, 1, 8, 4, 6];
        for n in order {
            s.put_if_absent(&format!("seq/{n:020}"), Bytes::from(n.to_string())).await?;
        }
        let all: Vec<String> = s.list("seq", None).await?.into_iter().map(|i| i.key).collect();
        let want: Vec<String> = (0..12).map(|n| format!("seq/{n:020}")).collect();
        let after: Vec<String> = s.list("seq", Some(&want[8])).await?.into_iter().map(|i| i.key).collect();
        let passed = all == want && after == want[9..];
        Ok((passed, format!("{} keys in order, {} after the 9th", all.len(), after.len())))
    })
    .await?;
    Ok(())
}

/// For each of [`HISTORY_PREFIXES`]: a probe is created with put-if-absent (which members must be
/// able to do), then replaced with a plain PUT and deleted. Passed: the probe still holds its
/// first bytes after both. Then a blob larger than one PUT is stored (multipart to `tmp/`, then a
/// create-only copy), which a policy must still allow. An error means the store could not be used
/// at all.
pub async fn check_protection(store: &Store) -> Result<Vec<CheckResult>> {
    let tag = hex::encode(rand::random::<[u8; 8]>());
    let mut results = Vec::new();
    for prefix in HISTORY_PREFIXES {
        let start = Instant::now();
        let key = format!("{prefix}_cairn-probe-{tag}");
        let first = Bytes::from(format!("cairn store check probe {tag}: first bytes"));
        let (passed, detail) = probe(store, &key, first).await?;
        results.push(CheckResult {
            name: protection_name(prefix),
            passed,
            detail,
            elapsed_ms: start.elapsed().as_millis() as u64,
        });
    }
    // The policy must not stop what members do: a blob too large for one PUT goes up in parts
    // and lands with a create-only copy. Always the same bytes, so it is stored at most once.
    let start = Instant::now();
    let len = crate::SINGLE_PUT_MAX_BYTES + 1;
    let large = Bytes::from(LARGE_PROBE.iter().copied().cycle().take(len).collect::<Vec<u8>>());
    let (passed, detail) = match store.put_blob(large).await {
        Ok(id) => {
            let unprotected = results.iter().any(|r| r.name == "protected blobs/" && !r.passed);
            if unprotected {
                let _ = store.delete(&id.key()).await;
            }
            (true, format!("a {len}-byte blob went up in parts and landed create-only"))
        }
        Err(e) => (false, format!("a {len}-byte blob could not be stored: {e}")),
    };
    results.push(CheckResult {
        name: "large blob still lands",
        passed,
        detail,
        elapsed_ms: start.elapsed().as_millis() as u64,
    });
    Ok(results)
}

/// The repeated pattern of the large-blob probe.
const LARGE_PROBE: &[u8] = b"cairn store check: a blob too large for one PUT\n";

fn protection_name(prefix: &str) -> &'static str {
    match prefix {
        "ledger/seq/" => "protected ledger/seq/",
        "ledger/checkpoints/" => "protected checkpoints/",
        "blobs/" => "protected blobs/",
        _ => "protected mirrors/",
    }
}

async fn probe(store: &Store, key: &str, first: Bytes) -> Result<(bool, String)> {
    match store.put_if_absent(key, first.clone()).await {
        Ok(PutOutcome::Created(_)) => {}
        Ok(PutOutcome::AlreadyExists) => return Ok((false, format!("{key} already exists (run the check again)"))),
        Err(e) => return Ok((false, format!("creating {key} with put-if-absent was refused: {e}"))),
    }
    let holds_first =
        || async { Ok::<_, crate::StoreError>(matches!(store.get(key, 1 << 10).await, Ok(o) if o.bytes == first)) };
    let replace = store.put(key, Bytes::from_static(b"replaced")).await;
    let overwrite_denied = holds_first().await?;
    let delete = store.delete(key).await;
    let delete_denied = holds_first().await?;
    let said = |r: &Result<(), crate::StoreError>| match r {
        Ok(()) => "accepted".to_string(),
        Err(e) => format!("refused ({})", e.to_string().lines().next().unwrap_or("")),
    };
    let replace = replace.map(|_| ());
    let detail = format!(
        "overwrite {}: {}; delete {}: {}",
        if overwrite_denied { "denied" } else { "ALLOWED" },
        said(&replace),
        if delete_denied { "denied" } else { "ALLOWED" },
        said(&delete),
    );
    if !delete_denied || !overwrite_denied {
        let _ = store.delete(key).await; // best effort: leave no probe where nothing protects it
    }
    Ok((overwrite_denied && delete_denied, detail))
}

fn label(o: &PutOutcome) -> &'static str {
    match o {
        PutOutcome::Created(_) => "created",
        PutOutcome::AlreadyExists => "already-exists",
    }
}

fn cas_label(o: &CasOutcome) -> &'static str {
    match o {
        CasOutcome::Swapped(_) => "swapped",
        CasOutcome::Conflict => "conflict",
    }
}
