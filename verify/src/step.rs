//! The step of a sign round: what one round did to every parameter, one trit each.
//!
//! Under the sign rule ([`crate::aggregate`]) a round sets each parameter `p` to
//! `p * decay - lr * s` with `s` in {-1, 0, +1}. Given the state before and the state after, the
//! `s` that reproduces each parameter's bits is a trit, so the whole round fits in one trit per
//! parameter whatever the number of updates: 195 MB at 1b parameters, where 1,000 updates take
//! 1.7 GB (docs/SCALE.md, item 2). A follower that holds the state before can apply the step and
//! check the result against the state hash a quorum attested, instead of downloading every counted
//! update. Nothing here is consensus: a step is derived data, and it is only as good as the state
//! hash it reproduces; the updates stay the authority, and the audit replays from them.
//!
//! ```text
//!   step  = magic "cairnstp" | version:u16 (1) | round:u64 | elements:u64 | base:[32] | result:[32]
//!           | trits: ceil(elements / 5) bytes                         (integers little-endian)
//!   byte i = d(5i) + 3 d(5i+1) + 9 d(5i+2) + 27 d(5i+3) + 81 d(5i+4),  d(j) = s(j) + 1 in {0, 1, 2}
//! ```
//!
//! Parameters `j` run over the layout's tensors in order, each row-major. The last byte's digits
//! past the end are 1 (`s = 0`), so every byte is below 243 and each step has one encoding.
//! `lr` and `decay` are the aggregation's ([`crate::aggregate::decayed_step`]): `lr` is the schedule's
//! rate for `round` rounded to f32, `decay = 1 - lr * wd` in f32, and each parameter is
//! `(p * decay) - (lr * s)` with each operation rounded to f32 on its own. Where two trits give the
//! same bits (a rate of 0, or a parameter at ±0 whose step is 0), the step holds the first of 0,
//! +1, -1 that does; any of them reproduces the state.

use rayon::prelude::*;

use crate::aggregate::{Hyper, StepRule, decayed_step, step_factors};
use crate::id::{Round, StateHash};
use crate::state::{Layout, State};

/// The first bytes of every step.
pub const STEP_MAGIC: [u8; 8] = *b"cairnstp";
/// The step format version this module reads and writes.
pub const STEP_VERSION: u16 = 1;
/// The bytes before the trits.
pub const STEP_HEADER_BYTES: usize = 8 + 2 + 8 + 8 + 32 + 32;
/// Trits per byte (3^5 = 243 <= 256).
const TRITS_PER_BYTE: usize = 5;
/// The trits each candidate `s` is tried in, as digits `s + 1`: 0, then +1, then -1.
const TRIED: [(f32, u8); 3] = [(0.0, 1), (1.0, 2), (-1.0, 0)];

/// Why a step cannot be derived, read or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Only the sign rule's rounds are steps of one trit a parameter.
    #[error("the run's step rule is not sign: its rounds move parameters by a magnitude")]
    NotSignRule,
    /// The two states, or the step and the state, are of different layouts.
    #[error("layout mismatch: {0}")]
    LayoutMismatch(String),
    /// No trit takes this parameter from the state before to the state after.
    #[error("tensor {tensor} element {index}: no step of -lr, 0 or +lr gives the state after")]
    NotOneStep {
        /// Tensor position in the layout.
        tensor: usize,
        /// Element in the tensor.
        index: usize,
    },
    /// Shorter than its header says.
    #[error("step is {len} bytes, expected {expected}")]
    WrongLength {
        /// The bytes offered.
        len: usize,
        /// What the header and the layout make it.
        expected: usize,
    },
    /// Not a step.
    #[error("not a cairn step (bad magic)")]
    BadMagic,
    /// A version this module does not read.
    #[error("unsupported step format version {0}")]
    UnsupportedVersion(u16),
    /// A step of another number of parameters than the layout's.
    #[error("step of {got} parameters, the layout has {expected}")]
    WrongElements {
        /// The header's count.
        got: u64,
        /// The layout's.
        expected: u64,
    },
    /// A byte that is not 5 trits, or padding that is not the zero step.
    #[error("byte {at} ({byte}) is not 5 trits, or pads with a step other than 0")]
    BadTrits {
        /// Its position after the header.
        at: usize,
        /// Its value.
        byte: u8,
    },
    /// The step is for another round than the one asked.
    #[error("step is for round {got}, expected round {expected}")]
    WrongRound {
        /// The round asked.
        expected: u64,
        /// The step's.
        got: u64,
    },
    /// The state it is applied to is not its base.
    #[error("the state is {got}, the step's base is {expected}")]
    WrongBase {
        /// The step's base.
        expected: StateHash,
        /// The state's hash.
        got: StateHash,
    },
    /// The step leads to another state than the one a quorum attested for its round.
    #[error("the step leads to {step}, the round's attested result is {attested}")]
    NotTheAttested {
        /// The step's result hash.
        step: StateHash,
        /// The attested result.
        attested: StateHash,
    },
    /// The round is not final: there is no attested result for a step to reproduce.
    #[error("round {0} has no attested result yet")]
    NotFinal(u64),
    /// Applied, it does not give the state it claims.
    #[error("applied, the step gives {computed}, not the {claimed} it claims")]
    WrongResult {
        /// The step's result hash.
        claimed: StateHash,
        /// What applying it gave.
        computed: StateHash,
    },
}

/// One sign round's step from the state `base` to the state `result`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundStep {
    /// The round.
    pub round: Round,
    /// The state hash before it.
    pub base: StateHash,
    /// The state hash after it.
    pub result: StateHash,
    elements: u64,
    /// The packed trits (the encoding's body).
    trits: Vec<u8>,
}

impl RoundStep {
    /// The step that takes `before` to `after` in `round` under `hyper` (which must use the sign
    /// rule): for each parameter, the first of 0, +1, -1 whose step gives `after`'s bits.
    pub fn derive(before: &State, after: &State, round: Round, hyper: &Hyper) -> Result<RoundStep, StepError> {
        RoundStep::derive_hashed((before, before.hash()), (after, after.hash()), round, hyper)
    }

    /// [`RoundStep::derive`] from states whose hashes the caller holds (hashing a large state
    /// takes seconds): each pair is a state and its hash, which the step names as its base and
    /// result.
    pub fn derive_hashed(
        (before, base): (&State, StateHash),
        (after, result): (&State, StateHash),
        round: Round,
        hyper: &Hyper,
    ) -> Result<RoundStep, StepError> {
        if hyper.step != StepRule::Sign {
            return Err(StepError::NotSignRule);
        }
        if before.layout() != after.layout() {
            return Err(StepError::LayoutMismatch("the states before and after differ in layout".into()));
        }
        let (lr, decay) = step_factors(round, hyper);
        let digits: Vec<Vec<u8>> = before
            .data()
            .par_iter()
            .zip(after.data())
            .enumerate()
            .map(|(tensor, (ps, qs))| {
                ps.iter()
                    .zip(qs)
                    .enumerate()
                    .map(|(index, (&p, &q))| {
                        TRIED
                            .iter()
                            .find(|(s, _)| decayed_step(p, decay, lr, *s).to_bits() == q.to_bits())
                            .map(|&(_, d)| d)
                            .ok_or(StepError::NotOneStep { tensor, index })
                    })
                    .collect()
            })
            .collect::<Result<_, _>>()?;
        Ok(RoundStep {
            round,
            base,
            result,
            elements: before.layout().elements(),
            trits: pack(digits.iter().flatten().copied()),
        })
    }

    /// The bytes of every step of a state of `layout`: what a reader may fetch at most.
    pub fn encoded_len(layout: &Layout) -> u64 {
        (STEP_HEADER_BYTES as u64).saturating_add(layout.elements().div_ceil(TRITS_PER_BYTE as u64))
    }

    /// Its bytes (the format in the module's documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STEP_HEADER_BYTES + self.trits.len());
        out.extend_from_slice(&RoundStep::header(self.round, self.elements, self.base, self.result));
        out.extend_from_slice(&self.trits);
        out
    }

    /// The header of the step of `round` from `base` to `result` over `elements` parameters:
    /// enough to tell whether a published step is this one without deriving it.
    pub fn header(round: Round, elements: u64, base: StateHash, result: StateHash) -> [u8; STEP_HEADER_BYTES] {
        let mut out = [0u8; STEP_HEADER_BYTES];
        out[..8].copy_from_slice(&STEP_MAGIC);
        out[8..10].copy_from_slice(&STEP_VERSION.to_le_bytes());
        out[10..18].copy_from_slice(&round.0.to_le_bytes());
        out[18..26].copy_from_slice(&elements.to_le_bytes());
        out[26..58].copy_from_slice(&base.0);
        out[58..90].copy_from_slice(&result.0);
        out
    }

    /// Reads a step of a state of `layout` (its size is bounded by the layout's: a peer's bytes
    /// are checked for length before anything else is read).
    pub fn decode(bytes: &[u8], layout: &Layout) -> Result<RoundStep, StepError> {
        let elements = layout.elements();
        let expected = usize::try_from(RoundStep::encoded_len(layout)).unwrap_or(usize::MAX);
        if bytes.len() != expected {
            return Err(StepError::WrongLength { len: bytes.len(), expected });
        }
        let (header, trits) = bytes.split_at(STEP_HEADER_BYTES);
        if header[..8] != STEP_MAGIC {
            return Err(StepError::BadMagic);
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let version = u16::from_le_bytes([header[8], header[9]]);
        if version != STEP_VERSION {
            return Err(StepError::UnsupportedVersion(version));
        }
        let (round, got) = (Round(u64_at(10)), u64_at(18));
        if got != elements {
            return Err(StepError::WrongElements { got, expected: elements });
        }
        let hash_at = |at: usize| {
            let mut h = [0u8; 32];
            h.copy_from_slice(&header[at..at + 32]);
            StateHash(h)
        };
        // The last byte's digits past the end must be 1 (s = 0): its value is then fixed above
        // the real digits.
        let tail = (elements % TRITS_PER_BYTE as u64) as u32;
        for (at, &byte) in trits.iter().enumerate() {
            let last = at + 1 == trits.len();
            let bad = byte >= 243 || (last && tail > 0 && u32::from(byte) / 3u32.pow(tail) != padding(tail));
            if bad {
                return Err(StepError::BadTrits { at, byte });
            }
        }
        Ok(RoundStep { round, base: hash_at(26), result: hash_at(58), elements, trits: trits.to_vec() })
    }

    /// The state after this step, from `before` (whose hash must be the step's base), checked
    /// against the step's result hash: a step that does not reproduce the state it claims is an
    /// error, never a state.
    pub fn apply(&self, before: &State, round: Round, hyper: &Hyper) -> Result<State, StepError> {
        self.apply_hashed(before, before.hash(), round, hyper)
    }

    /// [`RoundStep::apply`] to a state whose hash the caller holds (`before_hash`; a follower
    /// keeps its state's): only the state after is hashed, and checked against the step's result.
    pub fn apply_hashed(
        &self,
        before: &State,
        before_hash: StateHash,
        round: Round,
        hyper: &Hyper,
    ) -> Result<State, StepError> {
        if hyper.step != StepRule::Sign {
            return Err(StepError::NotSignRule);
        }
        if round != self.round {
            return Err(StepError::WrongRound { expected: round.0, got: self.round.0 });
        }
        if before.layout().elements() != self.elements {
            return Err(StepError::WrongElements { got: self.elements, expected: before.layout().elements() });
        }
        let got = before_hash;
        if got != self.base {
            return Err(StepError::WrongBase { expected: self.base, got });
        }
        let (lr, decay) = step_factors(round, hyper);
        let mut after = before.clone();
        // Each tensor starts at its own parameter offset in the trit stream.
        let mut starts = Vec::with_capacity(after.data().len());
        let mut offset = 0usize;
        for tensor in after.data() {
            starts.push(offset);
            offset += tensor.len();
        }
        after.data_mut().par_iter_mut().zip(starts).for_each(|(tensor, start)| {
            for (i, p) in tensor.iter_mut().enumerate() {
                let s = f32::from(self.digit(start + i)) - 1.0;
                *p = decayed_step(*p, decay, lr, s);
            }
        });
        let computed = after.hash();
        if computed != self.result {
            return Err(StepError::WrongResult { claimed: self.result, computed });
        }
        Ok(after)
    }

    /// The digit `s + 1` of parameter `j`.
    fn digit(&self, j: usize) -> u8 {
        let byte = self.trits[j / TRITS_PER_BYTE];
        (byte / 3u8.pow((j % TRITS_PER_BYTE) as u32)) % 3
    }
}

/// The value of `TRITS_PER_BYTE - used` padding digits of 1, as the high part of the last byte.
fn padding(used: u32) -> u32 {
    (0..TRITS_PER_BYTE as u32 - used).map(|k| 3u32.pow(k)).sum()
}

/// Digits (0, 1, 2) packed 5 to a byte, the last byte padded with 1s.
fn pack(digits: impl Iterator<Item = u8>) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut byte, mut k) = (0u32, 0u32);
    for d in digits {
        byte += u32::from(d) * 3u32.pow(k);
        k += 1;
        if k as usize == TRITS_PER_BYTE {
            out.push(byte as u8);
            (byte, k) = (0, 0);
        }
    }
    if k > 0 {
        out.push((byte + padding(k) * 3u32.pow(k)) as u8);
    }
    out
}
