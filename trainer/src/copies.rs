//! A validator's copy check: an update nearly the same as another worker's update counted in the
//! round before (a stale replay of honest work) fails as unusable; one nearly the same as an update
//! earlier in this round's ledger scores `min_score` (see [`copy_score`]).
//!
//! ```text
//!   decoded update ──► Sketch: the 256 smallest keyed hashes of its (tensor, chunk, index, sign)
//!                      entries (a bottom-k sketch; the key is this validator's own, random)
//!   CopyCheck::check(worker, sketch), a worker's first update of the round only:
//!     the highest estimated Jaccard similarity with other workers' updates, this round's earlier
//!     in the ledger and last round's counted ones ──► >= COPY_SIMILARITY: a copy (stale or not)
//!   CopyCheck::round_final(round, counted): this round's counted sketches become "last round's"
//! ```
//!
//! Why it is needed (docs/BENCHMARKS.md, "Copies"): a stale copy of an honest update, or a copy of
//! this round's best one, scores like work, so neither the loss score nor the relative threshold
//! fails it. On `tiny` at 1,024 tokens a worker and round, honest updates of different workers
//! share at most 0.65 of their entries; the copies measured share all of them.
//!
//! This is a validator's judgement, not consensus: every validator keys its hashes at random, so a
//! copier cannot choose which few entries to change to slip under the sketch. Its limits are in
//! docs/SECURITY.md, row 40: a front-runner that recomputes or races its victim's update takes the
//! credit for it in that round (hence `min_score`, not exclusion, for a copy within the round);
//! blends of two updates, a worker's replay of its own update, copies of older or uncounted
//! updates and anything across a validator restart are not caught; and the threshold is measured
//! at small batches only.

use std::collections::HashSet;
use std::hash::BuildHasher;

use verify::{Round, Update, WorkerKey};

/// The score a validator gives a copy: a stale one fails as unusable (below any `min_score`,
/// so three in a row exclude its sender); one of this round's earlier updates scores exactly
/// `min_score`, which never counts toward exclusion and is rejected by the relative threshold
/// (the default) when the round's median is positive, since which of the two is the copy cannot
/// be told.
pub fn copy_score(copied: &Copied, min_score: i64) -> i64 {
    if copied.stale { crate::validator::UNUSABLE_SCORE } else { min_score }
}

/// Hashes kept per sketch.
pub const SKETCH_SIZE: usize = 256;

/// Estimated Jaccard similarity of two updates' entry sets at or above which the later one is a
/// copy (about 86% of entries alike). Measured on `tiny` (docs/BENCHMARKS.md, "Copies"): honest
/// pairs at most 0.65 of entries alike (Jaccard 0.48), copies 1.0; the sketch's error at 256
/// hashes is about 0.03.
pub const COPY_SIMILARITY: f64 = 0.75;

/// A bottom-k sketch of an update's entries: the smallest [`SKETCH_SIZE`] hashes, ascending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sketch(Vec<u64>);

impl Sketch {
    /// The sketch of `update` under `key` (one validator's hasher; sketches compare only under the
    /// same key).
    pub fn of(update: &Update, key: &impl BuildHasher) -> Sketch {
        let mut smallest = std::collections::BinaryHeap::with_capacity(SKETCH_SIZE + 1);
        for (t, tensor) in update.tensors().iter().enumerate() {
            let k = tensor.kept() as usize;
            if k == 0 {
                continue;
            }
            for (e, index) in tensor.indices().iter().enumerate() {
                let chunk = e / k;
                let negative = tensor.values().value(chunk, e) < 0.0;
                let h = key.hash_one((t, chunk, *index, negative));
                if smallest.len() < SKETCH_SIZE {
                    smallest.push(h);
                } else if smallest.peek().is_some_and(|top| h < *top) {
                    smallest.pop();
                    smallest.push(h);
                }
            }
        }
        let mut hashes = smallest.into_vec();
        hashes.sort_unstable();
        hashes.dedup();
        Sketch(hashes)
    }

    /// The estimated Jaccard similarity of the two entry sets (0 to 1): among the smallest
    /// [`SKETCH_SIZE`] hashes of the union, the share in both sketches (a merge of the two sorted
    /// sketches).
    pub fn similarity(&self, other: &Sketch) -> f64 {
        let (a, b) = (&self.0, &other.0);
        let (mut i, mut j, mut taken, mut both) = (0, 0, 0usize, 0usize);
        while taken < SKETCH_SIZE && (i < a.len() || j < b.len()) {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x == y => {
                    both += 1;
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x < y => i += 1,
                (Some(_), None) => i += 1,
                _ => j += 1,
            }
            taken += 1;
        }
        if taken == 0 { 0.0 } else { both as f64 / taken as f64 }
    }
}

/// What a copy was found to copy. A copy of the round before's counted update (`stale`) is
/// unambiguous: its original was final before it could be sent. A copy of this round's earlier
/// update is not: the earlier one in the ledger may be the copy (a front-runner that recomputed or
/// raced its victim's update), so a validator fails it without excluding anyone.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Copied {
    /// The worker whose update it matches.
    pub of: WorkerKey,
    /// The round of that update.
    pub round: Round,
    /// The estimated similarity.
    pub similarity: f64,
    /// Whether the original is the round before's.
    pub stale: bool,
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let worker: String = self.of.0.iter().take(6).map(|b| format!("{b:02x}")).collect();
        let which = if self.stale { "counted" } else { "earlier" };
        write!(
            f,
            "a copy: {:.0}% alike (Jaccard) with the {which} update of worker {worker}.. in round {}",
            100.0 * self.similarity,
            self.round.0
        )
    }
}

/// One validator's memory of the sketches it compares against: this round's, and the round
/// before's counted ones. Bounded by two rounds of contributions.
#[derive(Debug)]
pub struct CopyCheck<K> {
    key: K,
    round: Option<Round>,
    /// This round's sketches, in the order judged, with an id the caller gives (a ledger
    /// position) to pick the counted ones by.
    current: Vec<(u64, WorkerKey, Sketch)>,
    /// The round before's counted updates.
    previous: Vec<(WorkerKey, Sketch)>,
    previous_round: Option<Round>,
}

impl<K: BuildHasher> CopyCheck<K> {
    /// A check with nothing seen, hashing under `key` (a validator takes
    /// `std::collections::hash_map::RandomState::new()`: random, and its own).
    pub fn new(key: K) -> CopyCheck<K> {
        CopyCheck { key, round: None, current: Vec::new(), previous: Vec::new(), previous_round: None }
    }

    /// Judges `update` of `worker` in `round` (`id`: the caller's name for it, increasing in
    /// ledger order): the closest other worker's update, among this round's with a lower id and
    /// the round before's counted ones, if at or above [`COPY_SIMILARITY`]. Only a worker's first
    /// update of the round is judged and remembered (a second one never counts, and must not
    /// serve as the original that fails someone else's); a copy is not remembered either. The
    /// caller passes only updates that can count (not an excluded worker's).
    pub fn check(&mut self, round: Round, id: u64, worker: WorkerKey, update: &Update) -> Option<Copied> {
        if self.round != Some(round) {
            // A round this check did not see end (or the first): nothing of it is comparable.
            self.round = Some(round);
            self.current.clear();
            if self.previous_round.and_then(|r| r.0.checked_add(1)) != Some(round.0) {
                self.previous.clear();
            }
        }
        if self.current.iter().any(|(_, w, _)| *w == worker) {
            return None;
        }
        let sketch = Sketch::of(update, &self.key);
        let previous_round = self.previous_round.unwrap_or(Round(0));
        let closest = self
            .current
            .iter()
            .filter(|(earlier, _, _)| *earlier < id)
            .map(|(_, w, s)| (w, false, s))
            .chain(self.previous.iter().map(|(w, s)| (w, true, s)))
            .filter(|(w, _, _)| **w != worker)
            .map(|(w, stale, s)| Copied {
                of: *w,
                round: if stale { previous_round } else { round },
                similarity: sketch.similarity(s),
                stale,
            })
            .max_by(|a, b| a.similarity.total_cmp(&b.similarity))
            .filter(|c| c.similarity >= COPY_SIMILARITY);
        if closest.is_none() {
            self.current.push((id, worker, sketch));
        }
        closest
    }

    /// `round` became final with the updates named `counted` (the ids given to
    /// [`CopyCheck::check`]): they are what the next round's updates are compared against.
    pub fn round_final(&mut self, round: Round, counted: &[u64]) {
        if self.round != Some(round) {
            self.previous.clear();
        } else {
            let counted: HashSet<u64> = counted.iter().copied().collect();
            self.previous = std::mem::take(&mut self.current)
                .into_iter()
                .filter(|(id, _, _)| counted.contains(id))
                .map(|(_, w, s)| (w, s))
                .collect();
        }
        self.previous_round = Some(round);
        self.round = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::RandomState;
    use verify::wire::Values;

    /// An update of one tensor of `chunks` chunks of 64 keeping `k` entries each: entry `e` of
    /// chunk `c` at index `index(c, e)` (ascending in `e`), negative when `negative(c, e)`.
    fn update(
        chunks: usize,
        k: usize,
        index: impl Fn(usize, usize) -> u16,
        negative: impl Fn(usize, usize) -> bool,
    ) -> Update {
        let spec = verify::TensorSpec { name: "w".into(), shape: vec![(chunks * 64) as u64] };
        let layout = verify::Layout::new(vec![spec]).unwrap();
        let compression = verify::wire::Compression::uniform(64, k as u16, verify::wire::ValueEncoding::Sign);
        let header = verify::Header {
            run: verify::RunId([1; 32]),
            round: Round(0),
            base: verify::StateHash([2; 32]),
            worker: WorkerKey([3; 32]),
            layout: layout.hash(),
            compression,
        };
        let (mut indices, mut signs) = (Vec::new(), Vec::new());
        for c in 0..chunks {
            for e in 0..k {
                indices.push(index(c, e));
                signs.push(negative(c, e));
            }
        }
        Update::new(header, &layout, vec![(indices, Values::Sign(signs))]).unwrap()
    }

    #[test]
    fn similarity_estimates_the_share_of_entries_alike() {
        let key = RandomState::new();
        // 64 chunks of 32 entries: 2,048 entries, indices 0, 2, 4, ... in every chunk.
        let base = update(64, 32, |_, e| (2 * e) as u16, |c, e| (c + e).is_multiple_of(3));
        let same = Sketch::of(&base, &key);
        assert_eq!(same.similarity(&same), 1.0);
        // A re-encoding that flips one sign in sixteen: 15/16 alike, Jaccard 15/17 = 0.88.
        let near = update(64, 32, |_, e| (2 * e) as u16, |c, e| ((c + e).is_multiple_of(3)) != (e.is_multiple_of(16)));
        let s = same.similarity(&Sketch::of(&near, &key));
        assert!((s - 15.0 / 17.0).abs() < 0.08, "{s}");
        // Half the entries moved to odd indices: Jaccard 1/3.
        let half = update(
            64,
            32,
            |_, e| if e.is_multiple_of(2) { (2 * e) as u16 } else { (2 * e + 1) as u16 },
            |c, e| (c + e).is_multiple_of(3),
        );
        let s = same.similarity(&Sketch::of(&half, &key));
        assert!((s - 1.0 / 3.0).abs() < 0.08, "{s}");
        // Nothing alike: the odd indices.
        let other = update(64, 32, |_, e| (2 * e + 1) as u16, |_, _| false);
        assert_eq!(same.similarity(&Sketch::of(&other, &key)), 0.0);
    }

    #[test]
    fn a_copy_of_this_round_or_of_last_rounds_counted_update_is_caught_and_honest_work_is_not() {
        let mut check = CopyCheck::new(RandomState::new());
        let (a, b, c) = (WorkerKey([1; 32]), WorkerKey([2; 32]), WorkerKey([3; 32]));
        let honest = |shift: usize| {
            update(
                64,
                32,
                move |_, e| (2 * e + (shift + e) % 2) as u16,
                move |ch, e| (ch + e + shift).is_multiple_of(5),
            )
        };
        let (ua, ub) = (honest(0), honest(1));
        // Round 0: two workers' own work; a third sends a's update under its own name.
        assert_eq!(check.check(Round(0), 10, a, &ua), None);
        assert_eq!(check.check(Round(0), 11, b, &ub), None);
        // A worker's own update sent twice is not a copy of anyone.
        assert_eq!(check.check(Round(0), 12, a, &ua), None);
        let copied = check.check(Round(0), 13, c, &ua).unwrap();
        assert_eq!((copied.of, copied.round, copied.stale), (a, Round(0), false));
        assert!(copied.similarity > 0.99);
        // Only updates earlier in the ledger are originals: one judged late (its blob was not
        // readable at first) is not failed for matching a later one.
        let d = WorkerKey([4; 32]);
        assert_eq!(check.check(Round(0), 9, d, &ub), None);
        check.round_final(Round(0), &[10, 11]);
        // Round 1: c replays b's counted update of round 0 (stale); a does new work.
        assert_eq!(check.check(Round(1), 20, a, &honest(2)), None);
        let stale = check.check(Round(1), 21, c, &ub).unwrap();
        assert_eq!((stale.of, stale.round, stale.stale), (b, Round(0), true));
        // A copy is not remembered as an original: a third copy of b's is b's copy, not c's.
        let e = WorkerKey([5; 32]);
        assert_eq!(check.check(Round(1), 22, e, &ub).map(|c| c.of), Some(b));
        check.round_final(Round(1), &[20]);
        // A round not seen to its end leaves nothing to compare with.
        check.round_final(Round(5), &[]);
        assert_eq!(check.check(Round(6), 30, c, &honest(2)), None);
    }
}
