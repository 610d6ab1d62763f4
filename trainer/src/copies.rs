//! A validator's copy check: an update that is nearly the same as another worker's update of this
//! round, or as one counted in the round before, is a copy (a free rider's, or a stale replay of
//! honest work), and fails whatever its loss score says.
//!
//! ```text
//!   decoded update ──► Sketch: the 256 smallest keyed hashes of its (tensor, chunk, index, sign)
//!                      entries (a bottom-k sketch; the key is this validator's own, random)
//!   CopyCheck::check(worker, sketch):
//!     the highest estimated Jaccard similarity with the sketches of other workers' updates, this
//!     round's judged before it and last round's counted ones ──► >= COPY_SIMILARITY: a copy
//!   CopyCheck::round_final(round, counted): this round's counted sketches become "last round's"
//! ```
//!
//! Why it is needed (docs/BENCHMARKS.md, "Copies"): a stale copy of an honest update, or a copy of
//! this round's best one, scores like work, so neither the loss score nor the relative threshold
//! fails it. Honest updates of different workers share some of their largest coordinates (at most
//! 0.64 of their entries, measured), a re-encoded copy nearly all (0.97 and more).
//!
//! This is a validator's judgement, not consensus: every validator keys its hashes at random, so a
//! copier cannot choose which few entries to change to slip under the sketch. What it does not
//! catch: a copy changed in enough entries to fall under the threshold (it then carries that much
//! less of the original), and a copy that lands in the ledger before the original in the same round
//! (the original is then the one failed; the copier must read the honest blob and append before its
//! author, who appends right after uploading).

use std::collections::HashSet;
use std::hash::BuildHasher;

use verify::{Round, Update, WorkerKey};

/// Hashes kept per sketch.
pub const SKETCH_SIZE: usize = 256;

/// Estimated Jaccard similarity of two updates' entry sets at or above which the later one is a
/// copy. Measured on `tiny` (docs/BENCHMARKS.md, "Copies"): honest pairs at most 0.64 of entries
/// alike (Jaccard 0.47), stale and current copies 0.97 to 1 (0.94 to 1); the sketch's error at 256
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
    /// [`SKETCH_SIZE`] hashes of the union, the share in both sketches.
    pub fn similarity(&self, other: &Sketch) -> f64 {
        let mine: HashSet<u64> = self.0.iter().copied().collect();
        let theirs: HashSet<u64> = other.0.iter().copied().collect();
        let mut union: Vec<u64> = mine.union(&theirs).copied().collect();
        union.sort_unstable();
        union.truncate(SKETCH_SIZE);
        if union.is_empty() {
            return 0.0;
        }
        let both = union.iter().filter(|h| mine.contains(h) && theirs.contains(h)).count();
        both as f64 / union.len() as f64
    }
}

/// What a copy was found to copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Copied {
    /// The worker whose update it matches.
    pub of: WorkerKey,
    /// The round of that update.
    pub round: Round,
    /// The estimated similarity.
    pub similarity: f64,
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let worker: String = self.of.0.iter().take(6).map(|b| format!("{b:02x}")).collect();
        write!(
            f,
            "a copy: {:.0}% alike with the update of worker {worker}.. in round {}",
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

    /// Judges `update` of `worker` in `round` (`id`: the caller's name for it, unique in the
    /// round): the closest other worker's update, if at or above [`COPY_SIMILARITY`]. The update
    /// is remembered for the rest of the round either way.
    pub fn check(&mut self, round: Round, id: u64, worker: WorkerKey, update: &Update) -> Option<Copied> {
        if self.round != Some(round) {
            // A round this check did not see end (or the first): nothing of it is comparable.
            self.round = Some(round);
            self.current.clear();
            if self.previous_round.and_then(|r| r.0.checked_add(1)) != Some(round.0) {
                self.previous.clear();
            }
        }
        let sketch = Sketch::of(update, &self.key);
        let previous_round = self.previous_round.unwrap_or(Round(0));
        let closest = self
            .current
            .iter()
            .map(|(_, w, s)| (w, round, s))
            .chain(self.previous.iter().map(|(w, s)| (w, previous_round, s)))
            .filter(|(w, _, _)| **w != worker)
            .map(|(w, r, s)| Copied { of: *w, round: r, similarity: sketch.similarity(s) })
            .max_by(|a, b| a.similarity.total_cmp(&b.similarity));
        self.current.push((id, worker, sketch));
        closest.filter(|c| c.similarity >= COPY_SIMILARITY)
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
        assert_eq!((copied.of, copied.round), (a, Round(0)));
        assert!(copied.similarity > 0.99);
        check.round_final(Round(0), &[10, 11]);
        // Round 1: c replays b's counted update of round 0 (stale); a does new work.
        assert_eq!(check.check(Round(1), 20, a, &honest(2)), None);
        let stale = check.check(Round(1), 21, c, &ub).unwrap();
        assert_eq!((stale.of, stale.round), (b, Round(0)));
        check.round_final(Round(1), &[20]);
        // A round not seen to its end leaves nothing to compare with.
        check.round_final(Round(5), &[]);
        assert_eq!(check.check(Round(6), 30, c, &honest(2)), None);
    }
}
