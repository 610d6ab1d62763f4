//! Training data: the corpus, its train/eval split, and which sequences each worker trains on.
//!
//! ```text
//!   corpus ── Synthetic(MarkovSource)   sequence i = a fresh draw from the source, seeded by (seed, i)
//!          └─ Tokens(Vec<u32>)          sequence i = tokens [i·T, i·T + T + 1)   (byte-level text)
//!
//!   sequence index space (u64), T = seq_len, each sequence T + 1 tokens (T inputs, T targets):
//!     synthetic:  [0, E) eval  |  [E, 2^64) train
//!     text:       [0, W - E - 1) train  |  1 guard window  |  [W - E, W) eval    (W = windows in the text)
//!
//!   assignment(seed, round, worker, n) = n train indices:
//!     x_j  = u64 little-endian from blake3 XOF, derive_key("cairn data assignment v1",
//!            seed_le64 || round_le64 || worker key (32 bytes)), read 8 bytes at a time
//!     idx_j = train.start + ((x_j · train_len) >> 64)                 (multiply-shift, j = 0..n)
//! ```
//!
//! The assignment is a pure function of (seed, round, worker key, count, train range): a validator or
//! auditor recomputes exactly what a worker was given. Indices are drawn with replacement, so two
//! workers (or one worker in two rounds) can share a sequence, rarely on text and practically never on
//! the synthetic corpus. Eval indices are never in the train range, so no worker trains on them; on
//! text the guard window keeps the last train target and the first eval input apart too.
//!
//! ## The synthetic corpus
//! A sparse random order-`k` Markov source over `alphabet` printable bytes (so it is valid byte-level
//! text). Each context (the last `k` symbols) allows `branching` next symbols: the "ring" successor
//! (last symbol + 1, mod alphabet) and `branching - 1` others drawn at random, with Dirichlet(1)
//! probabilities. The ring edge makes every context reach one cycle, so the chain has one closed class
//! and one stationary distribution π over contexts, found by power iteration of the lazy chain
//! `(I + P) / 2` in f64. Each sequence starts from a context drawn from π, so every position is
//! stationary and the best possible loss is known exactly:
//! - entropy rate `H = Σ_c π(c) · H(P(·|c))` nats per token: the floor for positions j ≥ k;
//! - positions j < k see less context: `H(X_j | X_<j) = H_{j+1} - H_j`, with `H_m` the entropy of the
//!   first m symbols of a π-distributed context;
//! - [`MarkovSource::loss_floor_nats`] averages these over the T targets of a sequence: no model can
//!   score a lower expected eval loss (cross-entropy is at least the conditional entropy).

use std::ops::Range;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use tch::{Device, Tensor};
use verify::{Round, WorkerKey};

use crate::error::TrainerError;

/// The printable bytes the synthetic corpus writes, symbol i as byte `SYMBOLS[i]`.
pub const SYMBOLS: &[u8] = b"etaoinshrdlucmfwypvbgkqjxz ,.;:!?'-()ETAOINSHRDLUCMFWYPVBGKQJXZ0123456789";
/// Most contexts a synthetic source may have (alphabet^order).
pub const MAX_CONTEXTS: u64 = 1 << 20;
/// Default size limit for a text file read from disk or a store: 1 GiB.
pub const MAX_TEXT_BYTES: u64 = 1 << 30;

/// Bound on the power iteration for the stationary distribution (it stops earlier, at an L1 change
/// below 1e-13 between iterations).
const MAX_POWER_ITERATIONS: usize = 100_000;

const TABLE_CONTEXT: &str = "cairn synthetic table v1";
const SEQUENCE_CONTEXT: &str = "cairn synthetic sequence v1";
const ASSIGNMENT_CONTEXT: &str = "cairn data assignment v1";

/// The synthetic source's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkovSpec {
    /// Symbols of context (k), 1 or more.
    pub order: u8,
    /// Distinct symbols, 2 to `SYMBOLS.len()`.
    pub alphabet: u16,
    /// Allowed next symbols per context, 1 to `alphabet`.
    pub branching: u16,
}

impl Default for MarkovSpec {
    /// Order 2 over 32 symbols with 4 successors per context: 1024 contexts, a floor near 1 nat/token.
    fn default() -> MarkovSpec {
        MarkovSpec { order: 2, alphabet: 32, branching: 4 }
    }
}

/// A seeded sparse Markov source with its exact entropy (see the module docs).
#[derive(Clone, Debug)]
pub struct MarkovSource {
    spec: MarkovSpec,
    seed: u64,
    /// alphabet^order.
    contexts: usize,
    /// Per context: `branching` successor symbols, ascending.
    successors: Vec<u16>,
    /// Per context: the cumulative probabilities matching `successors` (last = 1).
    cumulative: Vec<f64>,
    /// Per context: the transition probabilities matching `successors`.
    probs: Vec<f64>,
    /// The stationary distribution over contexts.
    stationary: Vec<f64>,
    stationary_cumulative: Vec<f64>,
    entropy_rate: f64,
    /// `H(X_j | X_<j)` for j = 1..order (index j - 1).
    prefix_entropy: Vec<f64>,
}

impl MarkovSource {
    /// Builds the source for `spec` from `seed` and solves for its stationary distribution.
    pub fn new(spec: MarkovSpec, seed: u64) -> Result<MarkovSource, TrainerError> {
        let a = u64::from(spec.alphabet);
        let contexts = (0..spec.order).try_fold(1u64, |n, _| n.checked_mul(a)).filter(|&n| n <= MAX_CONTEXTS);
        let contexts = match contexts {
            Some(n) if spec.order >= 1 && (2..=SYMBOLS.len() as u64).contains(&a) => n as usize,
            _ => {
                return Err(TrainerError::InvalidConfig(format!(
                    "synthetic corpus {spec:?}: need order >= 1, 2 <= alphabet <= {}, alphabet^order <= {MAX_CONTEXTS}",
                    SYMBOLS.len()
                )));
            }
        };
        if spec.branching == 0 || spec.branching > spec.alphabet {
            return Err(TrainerError::InvalidConfig(format!("synthetic corpus {spec:?}: 1 <= branching <= alphabet")));
        }
        let (alphabet, branching) = (usize::from(spec.alphabet), usize::from(spec.branching));
        let mut rng = ChaCha8Rng::from_seed(blake3::derive_key(TABLE_CONTEXT, &seed.to_le_bytes()));
        let mut successors = Vec::with_capacity(contexts * branching);
        let mut probs = Vec::with_capacity(contexts * branching);
        let mut cumulative = Vec::with_capacity(contexts * branching);
        for c in 0..contexts {
            let ring = ((c % alphabet + 1) % alphabet) as u16;
            let mut next = vec![ring];
            while next.len() < branching {
                let s = (rng.next_u64() % alphabet as u64) as u16;
                if !next.contains(&s) {
                    next.push(s);
                }
            }
            next.sort_unstable();
            let weights: Vec<f64> = (0..branching).map(|_| -libm::log(unit_open_closed(rng.next_u64()))).collect();
            let total: f64 = weights.iter().sum();
            let mut acc = 0.0;
            for (i, w) in weights.iter().enumerate() {
                let p = w / total;
                acc += p;
                probs.push(p);
                cumulative.push(if i + 1 == branching { 1.0 } else { acc });
            }
            successors.extend(next);
        }
        let mut source = MarkovSource {
            spec,
            seed,
            contexts,
            successors,
            cumulative,
            probs,
            stationary: Vec::new(),
            stationary_cumulative: Vec::new(),
            entropy_rate: 0.0,
            prefix_entropy: Vec::new(),
        };
        source.solve();
        Ok(source)
    }

    fn contexts(&self) -> usize {
        self.contexts
    }

    fn next_context(&self, c: usize, symbol: u16) -> usize {
        (c * usize::from(self.spec.alphabet) + usize::from(symbol)) % self.contexts()
    }

    /// Stationary distribution (lazy power iteration), entropy rate and prefix entropies.
    fn solve(&mut self) {
        let n = self.contexts();
        let b = usize::from(self.spec.branching);
        let mut pi = vec![1.0 / n as f64; n];
        let mut next = vec![0.0; n];
        for _ in 0..MAX_POWER_ITERATIONS {
            next.iter_mut().zip(&pi).for_each(|(x, p)| *x = 0.5 * p);
            for (c, p) in pi.iter().enumerate() {
                let mass = 0.5 * p;
                if mass == 0.0 {
                    continue;
                }
                for i in c * b..(c + 1) * b {
                    let to = self.next_context(c, self.successors[i]);
                    next[to] += mass * self.probs[i];
                }
            }
            let change: f64 = next.iter().zip(&pi).map(|(x, p)| (x - p).abs()).sum();
            std::mem::swap(&mut pi, &mut next);
            if change < 1e-13 {
                break;
            }
        }
        let total: f64 = pi.iter().sum();
        pi.iter_mut().for_each(|p| *p /= total);
        self.entropy_rate = (0..n).map(|c| pi[c] * (0..b).map(|i| -xlogx(self.probs[c * b + i])).sum::<f64>()).sum();
        // H_m: entropy of the first m symbols of a π-distributed context (m = 1..=order).
        let a = usize::from(self.spec.alphabet);
        let order = usize::from(self.spec.order);
        let mut h = vec![0.0; order + 1];
        for (m, hm) in h.iter_mut().enumerate().skip(1) {
            let groups = a.pow(m as u32);
            let mut marginal = vec![0.0; groups];
            let stride = n / groups;
            for (c, p) in pi.iter().enumerate() {
                marginal[c / stride] += p;
            }
            *hm = marginal.iter().map(|&p| -xlogx(p)).sum();
        }
        self.prefix_entropy = (1..order).map(|j| h[j + 1] - h[j]).collect();
        let mut acc = 0.0;
        self.stationary_cumulative = pi
            .iter()
            .map(|p| {
                acc += p;
                acc
            })
            .collect();
        if let Some(last) = self.stationary_cumulative.last_mut() {
            *last = 1.0;
        }
        self.stationary = pi;
    }

    /// The shape.
    pub fn spec(&self) -> MarkovSpec {
        self.spec
    }

    /// The entropy rate in nats per token: the best possible loss once a full context is visible.
    pub fn entropy_rate_nats(&self) -> f64 {
        self.entropy_rate
    }

    /// The best possible mean loss (nats) over the `seq_len` targets of one sequence: positions with
    /// fewer than `order` symbols of context cost more than the entropy rate (see the module docs).
    pub fn loss_floor_nats(&self, seq_len: usize) -> f64 {
        if seq_len == 0 {
            return 0.0;
        }
        let total: f64 =
            (1..=seq_len).map(|j| self.prefix_entropy.get(j - 1).copied().unwrap_or(self.entropy_rate)).sum();
        total / seq_len as f64
    }

    /// The probability the source gives `next` after the context ending with `history` (at least
    /// `order` symbols long; symbols, not bytes). Zero for a disallowed symbol.
    pub fn probability(&self, history: &[u16], next: u16) -> f64 {
        let order = usize::from(self.spec.order);
        let a = usize::from(self.spec.alphabet);
        let c = history[history.len() - order..].iter().fold(0usize, |c, &s| c * a + usize::from(s));
        let b = usize::from(self.spec.branching);
        (0..b).find(|&i| self.successors[c * b + i] == next).map_or(0.0, |i| self.probs[c * b + i])
    }

    /// Sequence `index` as `len` symbols (0..alphabet): a context drawn from π, then its successors.
    pub fn symbols(&self, index: u64, len: usize) -> Vec<u16> {
        let mut key = Vec::with_capacity(16);
        key.extend_from_slice(&self.seed.to_le_bytes());
        key.extend_from_slice(&index.to_le_bytes());
        let mut rng = ChaCha8Rng::from_seed(blake3::derive_key(SEQUENCE_CONTEXT, &key));
        let u = unit_open_closed(rng.next_u64());
        let mut c = self.stationary_cumulative.partition_point(|&x| x < u).min(self.contexts() - 1);
        let (a, order, b) =
            (usize::from(self.spec.alphabet), usize::from(self.spec.order), usize::from(self.spec.branching));
        let mut out = Vec::with_capacity(len.max(order));
        for i in (0..order).rev() {
            out.push(((c / a.pow(i as u32)) % a) as u16);
        }
        while out.len() < len {
            let u = unit_open_closed(rng.next_u64());
            let row = &self.cumulative[c * b..(c + 1) * b];
            let i = row.partition_point(|&x| x < u).min(b - 1);
            let s = self.successors[c * b + i];
            out.push(s);
            c = self.next_context(c, s);
        }
        out.truncate(len);
        out
    }

    /// Sequence `index` as `len` byte-level tokens.
    pub fn tokens(&self, index: u64, len: usize) -> Vec<u32> {
        self.symbols(index, len).into_iter().map(|s| u32::from(SYMBOLS[usize::from(s)])).collect()
    }
}

/// `p ln p`, 0 at 0.
fn xlogx(p: f64) -> f64 {
    if p > 0.0 { p * libm::log(p) } else { 0.0 }
}

/// The top 53 bits of `x` as a uniform value in (0, 1].
fn unit_open_closed(x: u64) -> f64 {
    ((x >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Byte-level tokens: one token per byte, vocabulary 256.
pub fn byte_tokens(bytes: &[u8]) -> Vec<u32> {
    bytes.iter().map(|&b| u32::from(b)).collect()
}

/// Reads a local file, refusing one over `limit_bytes`.
pub fn read_text_file(path: &std::path::Path, limit_bytes: u64) -> Result<Vec<u8>, TrainerError> {
    let read_err = |source| TrainerError::Read { path: path.display().to_string(), source };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    if size > limit_bytes {
        return Err(TrainerError::TooLarge { what: path.display().to_string(), size, limit: limit_bytes });
    }
    std::fs::read(path).map_err(read_err)
}

/// Reads one object named by a full URL (`file:///dir/name.txt`, `s3://bucket/prefix/name.txt`, ...):
/// the store is everything before the last `/`, the key what follows. Refuses objects over
/// `limit_bytes` before reading their body.
pub async fn fetch_text(url: &str, limit_bytes: u64) -> Result<Vec<u8>, TrainerError> {
    let (store_url, key) = url
        .rsplit_once('/')
        .filter(|(store, key)| !key.is_empty() && store.contains("://") && !store.ends_with(":/"))
        .ok_or_else(|| TrainerError::InvalidConfig(format!("{url:?} does not name an object in a store")))?;
    let store = storage::open(store_url).await?;
    Ok(store.get(key, limit_bytes).await?.bytes.to_vec())
}

/// Reads text from a store URL (anything with `://`) or a local path, up to `limit_bytes`.
pub async fn load_text(source: &str, limit_bytes: u64) -> Result<Vec<u8>, TrainerError> {
    if source.contains("://") {
        fetch_text(source, limit_bytes).await
    } else {
        read_text_file(std::path::Path::new(source), limit_bytes)
    }
}

/// Where the tokens come from.
#[derive(Clone, Debug)]
pub enum Corpus {
    /// The seeded synthetic source: unbounded, with a known loss floor.
    Synthetic(MarkovSource),
    /// A tokenised text (byte-level from [`byte_tokens`]).
    Tokens(Vec<u32>),
}

/// A corpus cut into sequences of `seq_len + 1` tokens, with a held-out eval split.
#[derive(Clone, Debug)]
pub struct Dataset {
    corpus: Corpus,
    seed: u64,
    seq_len: usize,
    train: Range<u64>,
    eval: Range<u64>,
}

impl Dataset {
    /// The synthetic corpus of `spec` from the run `seed`, with `eval_sequences` held out.
    pub fn synthetic(
        spec: MarkovSpec,
        seed: u64,
        seq_len: usize,
        eval_sequences: u64,
    ) -> Result<Dataset, TrainerError> {
        if seq_len == 0 || eval_sequences == 0 || eval_sequences == u64::MAX {
            return Err(TrainerError::InvalidConfig("seq_len and eval_sequences must be positive".into()));
        }
        Ok(Dataset {
            corpus: Corpus::Synthetic(MarkovSource::new(spec, seed)?),
            seed,
            seq_len,
            train: eval_sequences..u64::MAX,
            eval: 0..eval_sequences,
        })
    }

    /// A tokenised text: the last `eval_fraction` of its windows (at least one) are held out, after a
    /// guard window.
    pub fn text(tokens: Vec<u32>, seed: u64, seq_len: usize, eval_fraction: f64) -> Result<Dataset, TrainerError> {
        if seq_len == 0 || !(eval_fraction > 0.0 && eval_fraction < 1.0) {
            return Err(TrainerError::InvalidConfig("seq_len > 0 and 0 < eval_fraction < 1 needed".into()));
        }
        let windows = (tokens.len().saturating_sub(1) / seq_len) as u64;
        let eval = ((windows as f64 * eval_fraction).ceil() as u64).max(1);
        if windows < eval + 2 {
            return Err(TrainerError::InvalidConfig(format!(
                "{} tokens make {windows} windows of {seq_len}: too few to split",
                tokens.len()
            )));
        }
        Ok(Dataset {
            corpus: Corpus::Tokens(tokens),
            seed,
            seq_len,
            train: 0..windows - eval - 1,
            eval: windows - eval..windows,
        })
    }

    /// The corpus.
    pub fn corpus(&self) -> &Corpus {
        &self.corpus
    }

    /// Inputs per sequence (each sequence holds `seq_len + 1` tokens).
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// The indices workers train on.
    pub fn train_range(&self) -> Range<u64> {
        self.train.clone()
    }

    /// The held-out indices.
    pub fn eval_range(&self) -> Range<u64> {
        self.eval.clone()
    }

    /// The best possible eval loss, for the synthetic corpus.
    pub fn loss_floor_nats(&self) -> Option<f64> {
        match &self.corpus {
            Corpus::Synthetic(source) => Some(source.loss_floor_nats(self.seq_len)),
            Corpus::Tokens(_) => None,
        }
    }

    /// For a text corpus, the token positions sequence `index` covers.
    pub fn token_range(&self, index: u64) -> Option<Range<u64>> {
        match self.corpus {
            Corpus::Tokens(_) => {
                let start = index * self.seq_len as u64;
                Some(start..start + self.seq_len as u64 + 1)
            }
            Corpus::Synthetic(_) => None,
        }
    }

    /// Sequence `index`: `seq_len + 1` tokens.
    pub fn sequence(&self, index: u64) -> Result<Vec<u32>, TrainerError> {
        let len = self.seq_len + 1;
        match &self.corpus {
            Corpus::Synthetic(source) => Ok(source.tokens(index, len)),
            Corpus::Tokens(tokens) => {
                let start = usize::try_from(index).ok().and_then(|i| i.checked_mul(self.seq_len));
                start
                    .and_then(|s| tokens.get(s..s.checked_add(len)?))
                    .map(<[u32]>::to_vec)
                    .ok_or_else(|| TrainerError::InvalidConfig(format!("sequence {index} is past the end of the text")))
            }
        }
    }

    /// The sequences a worker trains on in `round`: `count` train indices ([`assignment`]).
    pub fn assignment(&self, round: Round, worker: &WorkerKey, count: usize) -> Vec<u64> {
        assignment(self.seed, round, worker, count, self.train.clone())
    }

    /// The first `count` eval indices (all of them if there are fewer): the fixed held-out set.
    pub fn eval_indices(&self, count: usize) -> Vec<u64> {
        self.eval.clone().take(count).collect()
    }

    /// The sequences at `indices` as an i64 tensor `[indices.len(), seq_len + 1]` on `device`.
    pub fn batch(&self, indices: &[u64], device: Device) -> Result<Tensor, TrainerError> {
        let mut flat = Vec::with_capacity(indices.len() * (self.seq_len + 1));
        for &i in indices {
            flat.extend(self.sequence(i)?.into_iter().map(i64::from));
        }
        let rows = indices.len() as i64;
        Ok(Tensor::f_from_slice(&flat)?.f_reshape([rows, self.seq_len as i64 + 1])?.f_to_device(device)?)
    }
}

/// Sequences needed to cover `tokens` target tokens at `seq_len` per sequence (rounded up, at least 1).
pub fn sequences_for_tokens(tokens: u64, seq_len: usize) -> usize {
    usize::try_from(tokens.div_ceil(seq_len.max(1) as u64)).unwrap_or(usize::MAX).max(1)
}

/// The `count` sequence indices in `train` assigned to `worker` in `round` (see the module docs).
/// A pure function: anyone with the run seed recomputes it. Empty if `train` is empty.
pub fn assignment(seed: u64, round: Round, worker: &WorkerKey, count: usize, train: Range<u64>) -> Vec<u64> {
    let len = train.end.saturating_sub(train.start);
    if len == 0 {
        return Vec::new();
    }
    let mut h = blake3::Hasher::new_derive_key(ASSIGNMENT_CONTEXT);
    h.update(&seed.to_le_bytes());
    h.update(&round.0.to_le_bytes());
    h.update(&worker.0);
    let mut xof = h.finalize_xof();
    let mut buf = [0u8; 8];
    (0..count)
        .map(|_| {
            xof.fill(&mut buf);
            let x = u64::from_le_bytes(buf);
            train.start + ((u128::from(x) * u128::from(len)) >> 64) as u64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn key(b: u8) -> WorkerKey {
        WorkerKey([b; 32])
    }

    #[test]
    fn assignment_is_deterministic_and_separates_workers_and_rounds() {
        let ds = Dataset::synthetic(MarkovSpec::default(), 5, 32, 64).unwrap();
        let a = ds.assignment(Round(3), &key(1), 100);
        assert_eq!(a, ds.assignment(Round(3), &key(1), 100));
        assert_eq!(a, assignment(5, Round(3), &key(1), 100, 64..u64::MAX));
        assert_ne!(a, ds.assignment(Round(4), &key(1), 100));
        assert_ne!(a, ds.assignment(Round(3), &key(2), 100));
        assert_ne!(a, assignment(6, Round(3), &key(1), 100, 64..u64::MAX));
        // A prefix of a longer assignment: a worker that trains on more tokens extends its share.
        assert_eq!(&ds.assignment(Round(3), &key(1), 250)[..100], &a[..]);
        assert!(a.iter().all(|i| !ds.eval_range().contains(i) && ds.train_range().contains(i)));
        assert!(assignment(1, Round(0), &key(0), 4, 7..7).is_empty());
        // Pinned: a change to the rule is a protocol change.
        assert_eq!(assignment(0, Round(0), &key(0), 3, 0..1000), [615, 135, 494]);
    }

    #[test]
    fn text_split_keeps_eval_tokens_out_of_training() {
        let tokens = byte_tokens(&(0..10_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let ds = Dataset::text(tokens, 9, 64, 0.1).unwrap();
        let (train, eval) = (ds.train_range(), ds.eval_range());
        assert_eq!((train.clone(), eval.clone()), (0..139, 140..156));
        let eval_tokens: HashSet<u64> = eval.clone().flat_map(|i| ds.token_range(i).unwrap()).collect();
        for round in 0..20 {
            for i in ds.assignment(Round(round), &key(round as u8), 50) {
                assert!(train.contains(&i));
                assert!(ds.token_range(i).unwrap().all(|t| !eval_tokens.contains(&t)), "sequence {i} overlaps eval");
            }
        }
        assert_eq!(ds.sequence(155).unwrap().len(), 65);
        assert!(ds.sequence(156).is_err());
        let batch = ds.batch(&[0, 2], Device::Cpu).unwrap();
        assert_eq!(batch.size(), [2, 65]);
        assert_eq!(i64::try_from(batch.get(1).get(0)).unwrap(), 128);
        assert!(Dataset::text(vec![1; 100], 0, 64, 0.1).is_err());
    }

    #[test]
    fn synthetic_sequences_are_reproducible_printable_text() {
        let ds = Dataset::synthetic(MarkovSpec::default(), 11, 48, 8).unwrap();
        let a = ds.sequence(1234).unwrap();
        assert_eq!(a, Dataset::synthetic(MarkovSpec::default(), 11, 48, 8).unwrap().sequence(1234).unwrap());
        assert_ne!(a, ds.sequence(1235).unwrap());
        assert_eq!(a.len(), 49);
        assert!(a.iter().all(|&t| SYMBOLS.contains(&(t as u8))));
        let other_seed = Dataset::synthetic(MarkovSpec::default(), 12, 48, 8).unwrap();
        assert_ne!(a, other_seed.sequence(1234).unwrap());
        assert!(MarkovSource::new(MarkovSpec { order: 0, ..MarkovSpec::default() }, 0).is_err());
        assert!(MarkovSource::new(MarkovSpec { branching: 33, ..MarkovSpec::default() }, 0).is_err());
        assert!(MarkovSource::new(MarkovSpec { order: 5, alphabet: 73, branching: 2 }, 0).is_err());
    }

    #[test]
    fn synthetic_entropy_converges_to_the_computed_rate() {
        let source = MarkovSource::new(MarkovSpec::default(), 2).unwrap();
        let rate = source.entropy_rate_nats();
        assert!(rate > 0.3 && rate < 4f64.ln(), "rate {rate}");
        // Plug-in estimate of H(X_j | previous two symbols) from counts over many sequences: it does
        // not use the source's probabilities, only its output.
        let mut pairs: HashMap<(u16, u16, u16), u64> = HashMap::new();
        let mut contexts: HashMap<(u16, u16), u64> = HashMap::new();
        let mut model_nll = 0.0;
        let mut n = 0u64;
        for index in 0..2_000 {
            let s = source.symbols(index, 200);
            for j in 2..s.len() {
                *pairs.entry((s[j - 2], s[j - 1], s[j])).or_default() += 1;
                *contexts.entry((s[j - 2], s[j - 1])).or_default() += 1;
                model_nll -= source.probability(&s[..j], s[j]).ln();
                n += 1;
            }
        }
        let plug_in: f64 = pairs
            .iter()
            .map(|(&(a, b, _), &k)| {
                let p = k as f64 / contexts[&(a, b)] as f64;
                -(k as f64 / n as f64) * p.ln()
            })
            .sum();
        let model_nll = model_nll / n as f64;
        assert!((plug_in - rate).abs() < 0.01, "plug-in {plug_in}, rate {rate}");
        assert!((model_nll - rate).abs() < 0.01, "empirical {model_nll}, rate {rate}");
        // The first target sees one symbol of context: it costs more than the rate.
        assert!(source.loss_floor_nats(1) > rate);
        assert!(source.loss_floor_nats(64) > rate && source.loss_floor_nats(64) < source.loss_floor_nats(8));
    }

    #[tokio::test]
    async fn tinyshakespeare_loads_through_a_store_url() {
        // ../shared beside the repository (CI lays it there too); a missing file fails, loudly.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/tinyshakespeare.txt");
        let path = path
            .canonicalize()
            .unwrap_or_else(|e| panic!("{}: {e} (shared/ must sit beside the repo)", path.display()));
        let bytes = load_text(&format!("file://{}", path.display()), MAX_TEXT_BYTES).await.unwrap();
        assert_eq!(bytes.len(), 1_115_394);
        assert!(bytes.starts_with(b"First Citizen:"));
        let ds = Dataset::text(byte_tokens(&bytes), 0, 256, 0.1).unwrap();
        assert_eq!(ds.eval_range().end, 1_115_393 / 256);
        assert_eq!(ds.sequence(0).unwrap()[..5], [70, 105, 114, 115, 116]);
    }

    #[tokio::test]
    async fn text_loads_from_a_path_and_a_store_url_with_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("corpus.txt"), b"hello, cairn").unwrap();
        let path = dir.path().join("corpus.txt");
        assert_eq!(load_text(path.to_str().unwrap(), 100).await.unwrap(), b"hello, cairn");
        let url = format!("file://{}", path.display());
        assert_eq!(load_text(&url, 100).await.unwrap(), b"hello, cairn");
        assert!(matches!(load_text(&url, 5).await, Err(TrainerError::Storage(_))));
        assert!(matches!(load_text(path.to_str().unwrap(), 5).await, Err(TrainerError::TooLarge { .. })));
        assert!(matches!(load_text("s3://bucket", 5).await, Err(TrainerError::InvalidConfig(_))));
        assert!(matches!(load_text("/no/such/file", 5).await, Err(TrainerError::Read { .. })));
        assert_eq!(byte_tokens(b"hi"), [104, 105]);
    }
}
