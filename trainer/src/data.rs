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
//! ## Real data
//! ```text
//!   text:     path | store URL                       -> bytes            (load_text)
//!   Parquet:  file.parquet | dir/ | store URL (.parquet or a prefix ending in /)
//!             -> column `text` (configurable), row order, files in sorted key order,
//!                documents taken while their total fits the byte budget  (load_parquet -> Documents)
//!   tokens:   Tokenizer::Bytes (default: one token per byte, vocabulary 256)
//!           | Tokenizer::Hf(tokenizer.json, through the `tokenizers` crate; vocabulary from the file)
//!             each document's tokens, then the document separator   (Tokenizer::tokenize_documents)
//! ```
//! The separator is byte 0xFF for byte-level tokens (a byte that valid UTF-8 never holds, so it
//! cannot be confused with text), and for an HF tokenizer its end-of-text token (`<|endoftext|>`,
//! `</s>`, `<|end_of_text|>` or `<eos>`, the first it has), else its tokens for `"\n\n"`. The model's
//! vocabulary is [`Tokenizer::vocab_size`] (`ModelConfig::with_vocab`).
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
    /// `H(X)`: the entropy of one symbol on its own, under the stationary distribution.
    unigram_entropy: f64,
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
            unigram_entropy: 0.0,
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
        self.unigram_entropy = h[1];
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

    /// The unigram plateau in nats per token: the best loss of a model that ignores the context and
    /// predicts every symbol from the symbol frequencies alone. A model stuck there has learned
    /// nothing about the sequence.
    pub fn unigram_entropy_nats(&self) -> f64 {
        self.unigram_entropy
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

/// The text column of HF datasets (FineWeb and most others).
pub const DEFAULT_TEXT_COLUMN: &str = "text";
/// Most Parquet files one source (a directory or store prefix) may name.
pub const MAX_PARQUET_FILES: usize = 10_000;
/// Largest Parquet object fetched from a store (read whole into memory): 4 GiB, above the ~2 GiB of a
/// FineWeb shard. Local files are streamed from disk and need no such limit.
pub const MAX_PARQUET_OBJECT_BYTES: u64 = 4 << 30;
/// Largest `tokenizer.json` read: 64 MiB (Llama 3's is 9 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;
/// The byte-level document separator: 0xFF, which valid UTF-8 never holds.
pub const BYTE_DOCUMENT_SEPARATOR: u8 = 0xFF;

/// Rows decoded per Parquet record batch.
const PARQUET_BATCH_ROWS: usize = 1024;
/// End-of-text tokens looked for in an HF tokenizer, in this order, to separate documents.
const END_OF_TEXT_TOKENS: [&str; 4] = ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"];
/// Text handed to an HF tokenizer in one call is cut after a newline once it reaches this size.
const TOKENIZE_PIECE_BYTES: usize = 1 << 20;

/// Documents read from Parquet files, in order, within a budget on their total size in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Documents {
    texts: Vec<String>,
    bytes: u64,
    limit_bytes: u64,
    full: bool,
}

impl Documents {
    /// An empty set that takes documents while their total stays within `limit_bytes`.
    pub fn new(limit_bytes: u64) -> Documents {
        Documents { limit_bytes, ..Documents::default() }
    }

    /// Takes `text` if it fits the budget; once one does not, the set is full and takes no more (so
    /// what it holds is always a prefix of the source's documents).
    pub fn push(&mut self, text: &str) -> bool {
        let size = text.len() as u64;
        if self.full || self.bytes.saturating_add(size) > self.limit_bytes {
            self.full = true;
            return false;
        }
        self.bytes += size;
        self.texts.push(text.to_owned());
        true
    }

    /// The documents, in source order.
    pub fn texts(&self) -> &[String] {
        &self.texts
    }

    /// Their total size in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the budget cut the source short.
    pub fn is_full(&self) -> bool {
        self.full
    }
}

/// Appends the non-null values of `column` (a UTF-8 string column) of one Parquet file to `docs`, in
/// row order, stopping once `docs` is full. `what` names the file in errors. A damaged file, a
/// missing column or one that is not text is a [`TrainerError::Parquet`], never a panic.
pub fn parquet_documents<R: parquet::file::reader::ChunkReader + 'static>(
    what: &str,
    file: R,
    column: &str,
    docs: &mut Documents,
) -> Result<(), TrainerError> {
    use arrow::array::{Array, AsArray};
    use parquet::arrow::ProjectionMask;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let bad = |problem: String| TrainerError::Parquet { what: what.to_owned(), problem };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(e.to_string()))?;
    let index = builder.schema().fields().iter().position(|f| f.name() == column).ok_or_else(|| {
        let names: Vec<&str> = builder.schema().fields().iter().map(|f| f.name().as_str()).collect();
        bad(format!("no column {column:?} (columns: {})", names.join(", ")))
    })?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let reader =
        builder.with_projection(mask).with_batch_size(PARQUET_BATCH_ROWS).build().map_err(|e| bad(e.to_string()))?;
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let Some(values) = batch.columns().first() else { continue };
        let mut take = |text: Option<&str>| text.is_none_or(|t| docs.push(t));
        let more = if let Some(a) = values.as_string_opt::<i32>() {
            a.iter().all(&mut take)
        } else if let Some(a) = values.as_string_opt::<i64>() {
            a.iter().all(&mut take)
        } else if let Some(a) = values.as_string_view_opt() {
            a.iter().all(&mut take)
        } else {
            return Err(bad(format!("column {column:?} is {}, not text", values.data_type())));
        };
        if !more {
            break;
        }
    }
    Ok(())
}

/// Whether `source` names Parquet data: a `.parquet` file or object, a local directory, or a store
/// prefix (a URL ending in `/`).
pub fn is_parquet_source(source: &str) -> bool {
    source.ends_with(".parquet")
        || (source.contains("://") && source.ends_with('/'))
        || (!source.contains("://") && std::path::Path::new(source).is_dir())
}

/// The documents of `column` in the Parquet data at `source` (see [`is_parquet_source`]; a directory
/// or prefix means its `.parquet` files in sorted order), up to `limit_bytes` of text.
pub async fn load_parquet(source: &str, column: &str, limit_bytes: u64) -> Result<Documents, TrainerError> {
    let mut docs = Documents::new(limit_bytes);
    if let Some(prefix_url) = source.strip_suffix('/').filter(|_| source.contains("://")) {
        let store = storage::open(prefix_url).await?;
        let keys: Vec<String> =
            store.list("", None).await?.into_iter().map(|o| o.key).filter(|k| k.ends_with(".parquet")).collect();
        check_file_count(source, keys.len())?;
        for key in keys {
            let bytes = store.get(&key, MAX_PARQUET_OBJECT_BYTES).await?.bytes;
            parquet_blocking(format!("{prefix_url}/{key}"), bytes, column, &mut docs).await?;
            if docs.is_full() {
                break;
            }
        }
    } else if source.contains("://") {
        let bytes = bytes::Bytes::from(fetch_text(source, MAX_PARQUET_OBJECT_BYTES).await?);
        parquet_blocking(source.to_owned(), bytes, column, &mut docs).await?;
    } else {
        let path = std::path::Path::new(source);
        let read_err = |source| TrainerError::Read { path: path.display().to_string(), source };
        let files = if path.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(path).map_err(read_err)? {
                let p = entry.map_err(read_err)?.path();
                if p.extension().is_some_and(|e| e == "parquet") && p.is_file() {
                    files.push(p);
                }
                check_file_count(source, files.len())?;
            }
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        for file in files {
            let what = file.display().to_string();
            let f = std::fs::File::open(&file).map_err(|source| TrainerError::Read { path: what.clone(), source })?;
            parquet_blocking(what, f, column, &mut docs).await?;
            if docs.is_full() {
                break;
            }
        }
    }
    if docs.texts().is_empty() && !docs.is_full() {
        return Err(TrainerError::Parquet { what: source.to_owned(), problem: format!("no {column:?} documents") });
    }
    if docs.is_full() {
        tracing::info!(source, limit_bytes, documents = docs.texts().len(), "parquet text cut at the size limit");
    }
    Ok(docs)
}

fn check_file_count(source: &str, n: usize) -> Result<(), TrainerError> {
    if n > MAX_PARQUET_FILES {
        return Err(TrainerError::InvalidConfig(format!("{source} holds over {MAX_PARQUET_FILES} parquet files")));
    }
    Ok(())
}

/// [`parquet_documents`] off the async runtime (decoding is CPU work and local reads block).
async fn parquet_blocking<R: parquet::file::reader::ChunkReader + 'static>(
    what: String,
    file: R,
    column: &str,
    docs: &mut Documents,
) -> Result<(), TrainerError> {
    let column = column.to_owned();
    let mut taken = std::mem::take(docs);
    let name = what.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let r = parquet_documents(&name, file, &column, &mut taken);
        (r, taken)
    })
    .await;
    // A panic inside the decoder on a malformed file is still a rejection of that file.
    let (result, taken) =
        joined.map_err(|e| TrainerError::Parquet { what, problem: format!("the decoder failed: {e}") })?;
    *docs = taken;
    result
}

/// How text becomes token ids.
#[derive(Clone, Debug, Default)]
pub enum Tokenizer {
    /// One token per byte, vocabulary 256 (the default).
    #[default]
    Bytes,
    /// An HF `tokenizer.json`.
    Hf(Box<tokenizers::Tokenizer>),
}

impl Tokenizer {
    /// An HF tokenizer from the bytes of a `tokenizer.json`.
    pub fn from_json(json: &[u8]) -> Result<Tokenizer, TrainerError> {
        let t = tokenizers::Tokenizer::from_bytes(json).map_err(|e| TrainerError::Tokenizer(e.to_string()))?;
        let tokenizer = Tokenizer::Hf(Box::new(t));
        if tokenizer.vocab_size() == 0 {
            return Err(TrainerError::Tokenizer("the tokenizer has an empty vocabulary".into()));
        }
        Ok(tokenizer)
    }

    /// An HF tokenizer from a `tokenizer.json` at a local path or store URL.
    pub async fn load(source: &str) -> Result<Tokenizer, TrainerError> {
        Tokenizer::from_json(&load_text(source, MAX_TOKENIZER_BYTES).await?)
    }

    /// The vocabulary size the model needs: one more than the largest id the tokenizer can produce.
    pub fn vocab_size(&self) -> u32 {
        match self {
            Tokenizer::Bytes => crate::model::BYTE_VOCAB,
            Tokenizer::Hf(t) => t.get_vocab(true).values().max().map_or(0, |&id| id.saturating_add(1)),
        }
    }

    /// The ids put between two documents (see the module docs).
    pub fn document_separator(&self) -> Result<Vec<u32>, TrainerError> {
        match self {
            Tokenizer::Bytes => Ok(vec![u32::from(BYTE_DOCUMENT_SEPARATOR)]),
            Tokenizer::Hf(t) => match END_OF_TEXT_TOKENS.iter().find_map(|tok| t.token_to_id(tok)) {
                Some(id) => Ok(vec![id]),
                None => self.encode_str("\n\n"),
            },
        }
    }

    /// The ids of `text` (no special tokens added). An HF tokenizer needs UTF-8; long text is encoded
    /// in pieces cut after a newline.
    pub fn encode(&self, text: &[u8]) -> Result<Vec<u32>, TrainerError> {
        match self {
            Tokenizer::Bytes => Ok(byte_tokens(text)),
            Tokenizer::Hf(_) => {
                let text = std::str::from_utf8(text).map_err(|e| {
                    TrainerError::Tokenizer(format!(
                        "text is not UTF-8 (byte {}): an HF tokenizer needs UTF-8",
                        e.valid_up_to()
                    ))
                })?;
                let mut ids = Vec::new();
                for piece in split_after_newlines(text, TOKENIZE_PIECE_BYTES) {
                    ids.extend(self.encode_str(piece)?);
                }
                Ok(ids)
            }
        }
    }

    fn encode_str(&self, text: &str) -> Result<Vec<u32>, TrainerError> {
        match self {
            Tokenizer::Bytes => Ok(byte_tokens(text.as_bytes())),
            Tokenizer::Hf(t) => {
                Ok(t.encode(text, false).map_err(|e| TrainerError::Tokenizer(e.to_string()))?.get_ids().to_vec())
            }
        }
    }

    /// The text of `ids` (byte-level: the bytes, lossily as UTF-8).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TrainerError> {
        match self {
            Tokenizer::Bytes => {
                let bytes = ids
                    .iter()
                    .map(|&id| u8::try_from(id))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| TrainerError::Tokenizer("byte-level ids must be below 256".into()))?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Tokenizer::Hf(t) => t.decode(ids, false).map_err(|e| TrainerError::Tokenizer(e.to_string())),
        }
    }

    /// Each document's ids followed by [`Tokenizer::document_separator`], in order.
    pub fn tokenize_documents(&self, docs: &[String]) -> Result<Vec<u32>, TrainerError> {
        let separator = self.document_separator()?;
        let mut ids = Vec::new();
        match self {
            Tokenizer::Bytes => {
                for doc in docs {
                    ids.extend(byte_tokens(doc.as_bytes()));
                    ids.extend(&separator);
                }
            }
            Tokenizer::Hf(t) => {
                for group in docs.chunks(PARQUET_BATCH_ROWS) {
                    let inputs: Vec<&str> = group.iter().map(String::as_str).collect();
                    let encodings =
                        t.encode_batch(inputs, false).map_err(|e| TrainerError::Tokenizer(e.to_string()))?;
                    for e in encodings {
                        ids.extend(e.get_ids());
                        ids.extend(&separator);
                    }
                }
            }
        }
        Ok(ids)
    }
}

/// `text` cut into pieces of at least `size` bytes (except the last), each ending after a newline.
fn split_after_newlines(text: &str, size: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // A newline byte is always a character boundary in UTF-8, so cutting after one is safe.
        let newline = rest.as_bytes().get(size..).and_then(|tail| tail.iter().position(|&b| b == b'\n'));
        let cut = newline.map_or(rest.len(), |i| size + i + 1);
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
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

    /// The blake3 of a text corpus's tokens (each a u32, little-endian), lowercase hex: what a run's
    /// training spec pins so every member trains on the same tokens. `None` for the synthetic
    /// corpus, which the run seed determines.
    pub fn tokens_blake3(&self) -> Option<String> {
        match &self.corpus {
            Corpus::Synthetic(_) => None,
            Corpus::Tokens(tokens) => {
                let mut hasher = blake3::Hasher::new();
                for t in tokens {
                    hasher.update(&t.to_le_bytes());
                }
                Some(hasher.finalize().to_hex().to_string())
            }
        }
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

    /// The loss of predicting every token from the symbol frequencies alone, for the synthetic
    /// corpus ([`MarkovSource::unigram_entropy_nats`]).
    pub fn unigram_plateau_nats(&self) -> Option<f64> {
        match &self.corpus {
            Corpus::Synthetic(source) => Some(source.unigram_entropy_nats()),
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
        // The unigram plateau, from symbol counts alone.
        let mut counts: HashMap<u16, u64> = HashMap::new();
        for index in 0..2_000 {
            for s in source.symbols(index, 200) {
                *counts.entry(s).or_default() += 1;
            }
        }
        let total: u64 = counts.values().sum();
        let unigram: f64 = counts.values().map(|&k| k as f64 / total as f64).map(|p| -p * p.ln()).sum();
        let plateau = source.unigram_entropy_nats();
        assert!((unigram - plateau).abs() < 0.01, "plug-in {unigram}, computed {plateau}");
        assert!(plateau > rate && plateau <= 32f64.ln() + 1e-12, "plateau {plateau}");
        // The first target sees one symbol of context: it costs more than the rate.
        assert!(source.loss_floor_nats(1) > rate);
        assert!(source.loss_floor_nats(64) > rate && source.loss_floor_nats(64) < source.loss_floor_nats(8));
    }

    #[tokio::test]
    async fn a_text_file_loads_through_a_store_url_and_splits_by_arithmetic() {
        // The test writes its own text: it must not depend on anything outside the clone.
        let line = "First Citizen:\nBefore we proceed any further, hear me speak.\n";
        assert_eq!(line.len(), 15 + 46);
        let text = line.repeat(10_000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corpus.txt");
        std::fs::write(&path, &text).unwrap();
        let bytes = load_text(&format!("file://{}", path.display()), MAX_TEXT_BYTES).await.unwrap();
        assert_eq!(bytes.len(), 610_000);
        assert!(bytes.starts_with(b"First Citizen:"));
        let ds = Dataset::text(byte_tokens(&bytes), 0, 256, 0.1).unwrap();
        // 609,999 next-token targets make 2,382 windows of 256; 10% of them, rounded up, are held out.
        let windows = 609_999 / 256;
        assert_eq!(windows, 2_382);
        assert_eq!(ds.eval_range().end, windows);
        assert_eq!(ds.eval_range().end - ds.eval_range().start, 239);
        // "First" in bytes.
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

    /// Writes `docs` as a Parquet file with an `id` column and a `text` column (None: a null).
    fn write_parquet(path: &std::path::Path, docs: &[Option<&str>]) {
        use std::sync::Arc;

        use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        use parquet::arrow::ArrowWriter;

        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, true),
        ]));
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..docs.len() as i64));
        let texts: ArrayRef = Arc::new(StringArray::from(docs.to_vec()));
        let batch = RecordBatch::try_new(schema.clone(), vec![ids, texts]).unwrap();
        let mut writer = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    #[tokio::test]
    async fn parquet_text_loads_from_files_directories_and_store_urls() {
        let dir = tempfile::tempdir().unwrap();
        let shards = dir.path().join("shards");
        std::fs::create_dir(&shards).unwrap();
        // Written out of order: the directory is read in sorted name order.
        write_parquet(&shards.join("b.parquet"), &[Some("third"), Some("fourth é")]);
        write_parquet(&shards.join("a.parquet"), &[Some("first"), None, Some("second")]);
        std::fs::write(shards.join("notes.txt"), b"not parquet").unwrap();

        let one = shards.join("a.parquet");
        let docs = load_parquet(one.to_str().unwrap(), DEFAULT_TEXT_COLUMN, MAX_TEXT_BYTES).await.unwrap();
        assert_eq!(docs.texts(), ["first", "second"]);
        let tokens = Tokenizer::Bytes.tokenize_documents(docs.texts()).unwrap();
        assert_eq!(tokens, [&byte_tokens(b"first\xffsecond")[..], &[255]].concat());

        let all = load_parquet(shards.to_str().unwrap(), "text", MAX_TEXT_BYTES).await.unwrap();
        assert_eq!(all.texts(), ["first", "second", "third", "fourth é"]);
        assert_eq!((all.total_bytes(), all.is_full()), (25, false));
        // The limit keeps a prefix of whole documents.
        let cut = load_parquet(shards.to_str().unwrap(), "text", 15).await.unwrap();
        assert_eq!((cut.texts(), cut.is_full()), (&["first".to_string(), "second".to_string()][..], true));

        // The same through store URLs: one object, and a prefix.
        let url = format!("file://{}", one.display());
        assert_eq!(load_parquet(&url, "text", MAX_TEXT_BYTES).await.unwrap(), docs);
        let prefix = format!("file://{}/", shards.display());
        assert_eq!(load_parquet(&prefix, "text", MAX_TEXT_BYTES).await.unwrap().texts(), all.texts());
        assert!(is_parquet_source(&url) && is_parquet_source(&prefix) && is_parquet_source(shards.to_str().unwrap()));
        assert!(!is_parquet_source("file:///data/corpus.txt"));
    }

    #[tokio::test]
    async fn bad_parquet_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.parquet");
        write_parquet(&good, &[Some("x")]);
        let good = good.to_str().unwrap();
        assert!(matches!(load_parquet(good, "content", MAX_TEXT_BYTES).await, Err(TrainerError::Parquet { .. })));
        // `id` is an integer column, not text.
        assert!(matches!(load_parquet(good, "id", MAX_TEXT_BYTES).await, Err(TrainerError::Parquet { .. })));
        let garbage = dir.path().join("garbage.parquet");
        std::fs::write(&garbage, b"PAR1 this is not a parquet file PAR1").unwrap();
        let garbage = garbage.to_str().unwrap();
        assert!(matches!(load_parquet(garbage, "text", MAX_TEXT_BYTES).await, Err(TrainerError::Parquet { .. })));
        // A truncated file (the footer cut off).
        let bytes = std::fs::read(good).unwrap();
        let torn = dir.path().join("torn.parquet");
        std::fs::write(&torn, &bytes[..bytes.len() - 10]).unwrap();
        assert!(matches!(load_parquet(torn.to_str().unwrap(), "text", 100).await, Err(TrainerError::Parquet { .. })));
        // Damaged bytes anywhere: the file loads or is rejected as Parquet, nothing else.
        let flipped = dir.path().join("flipped.parquet");
        for i in (0..bytes.len()).step_by(7) {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x5A;
            std::fs::write(&flipped, &damaged).unwrap();
            match load_parquet(flipped.to_str().unwrap(), "text", 100).await {
                Ok(_) | Err(TrainerError::Parquet { .. }) => {}
                Err(e) => panic!("byte {i}: {e}"),
            }
        }
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(matches!(load_parquet(empty.to_str().unwrap(), "text", 100).await, Err(TrainerError::Parquet { .. })));
        assert!(matches!(load_parquet("/no/such.parquet", "text", 100).await, Err(TrainerError::Read { .. })));
    }

    /// GPT-2's map from bytes to printable characters (what the ByteLevel pre-tokenizer emits).
    fn byte_level_char(b: u8) -> char {
        let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        if printable(b) {
            return char::from(b);
        }
        let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + rank).unwrap()
    }

    /// A byte-level BPE `tokenizer.json`: the 256 bytes (id = byte), merges that spell " cairn"
    /// (ids 256..=260), and `<|endoftext|>` (261) as an added special token.
    fn tiny_bpe_json() -> Vec<u8> {
        let mut vocab = serde_json::Map::new();
        for b in 0..=255u8 {
            vocab.insert(byte_level_char(b).to_string(), b.into());
        }
        let space = byte_level_char(b' ');
        let merges = [
            (format!("{space}"), "c"),
            ("a".into(), "i"),
            (format!("{space}c"), "ai"),
            ("r".into(), "n"),
            (format!("{space}cai"), "rn"),
        ];
        for (i, (a, b)) in merges.iter().enumerate() {
            vocab.insert(format!("{a}{b}"), (256 + i).into());
        }
        let merges: Vec<String> = merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
        let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        serde_json::to_vec(&serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [{"id": 261, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null,
            "pre_tokenizer": byte_level,
            "post_processor": null,
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": merges},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn hf_tokenizer_json_round_trips_and_sets_the_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, tiny_bpe_json()).unwrap();
        let tok = Tokenizer::load(path.to_str().unwrap()).await.unwrap();
        assert_eq!(tok.vocab_size(), 262);
        let ids = tok.encode(b"hello cairn").unwrap();
        assert_eq!(ids, [104, 101, 108, 108, 111, 260]);
        assert_eq!(tok.decode(&ids).unwrap(), "hello cairn");
        let text = "Ünïcødé, tabs\tand\nnewlines: cairn cairns";
        assert_eq!(tok.decode(&tok.encode(text.as_bytes()).unwrap()).unwrap(), text);
        assert_eq!(tok.document_separator().unwrap(), [261]);
        let docs = ["a cairn".to_string(), "b".to_string()];
        assert_eq!(tok.tokenize_documents(&docs).unwrap(), [97, 260, 261, 98, 261]);
        // The vocabulary flows into the model: ids above 255 are embedded.
        let config =
            crate::model::ModelConfig { layers: 1, ..crate::model::ModelConfig::preset(crate::model::Preset::Tiny) }
                .with_vocab(tok.vocab_size());
        let ds = Dataset::text(tok.encode("a cairn ".repeat(40).as_bytes()).unwrap(), 0, 8, 0.2).unwrap();
        let model = crate::model::Model::new(&config, 0, Device::Cpu).unwrap();
        tch::set_num_threads(1);
        assert!(f64::try_from(model.loss(&ds.batch(&[0, 1], Device::Cpu).unwrap()).unwrap()).unwrap().is_finite());
        // Long text is encoded in pieces cut after newlines, with the same result here.
        let long = "one cairn\n".repeat(3);
        let pieces: Vec<&str> = split_after_newlines(&long, 4).collect();
        assert_eq!(pieces, ["one cairn\n"; 3]);
        assert_eq!(split_after_newlines("abc", 1).collect::<Vec<_>>(), ["abc"]);
        assert_eq!(split_after_newlines("", 1).count(), 0);
        // Bad input is a typed error, never a panic.
        assert!(matches!(tok.encode(b"\xff\xfe"), Err(TrainerError::Tokenizer(_))));
        assert!(matches!(Tokenizer::from_json(b"{\"model\": 3}"), Err(TrainerError::Tokenizer(_))));
        assert!(matches!(Tokenizer::from_json(b"not json"), Err(TrainerError::Tokenizer(_))));
        assert!(matches!(Tokenizer::Bytes.decode(&[300]), Err(TrainerError::Tokenizer(_))));
        assert_eq!(Tokenizer::Bytes.vocab_size(), 256);
        assert_eq!(Tokenizer::Bytes.decode(&[104, 105]).unwrap(), "hi");
    }
}
