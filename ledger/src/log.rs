//! The log in the bucket: sequencing by put-if-absent, finding the head, reading and following.
//!
//! ```text
//!   ledger/seq/00000000000000000000   slot 0: the Genesis (in a batch of one)
//!   ledger/seq/00000000000000000001   slot 1: a batch of entries
//!   ...
//!   ledger/seq/{N:020}                the first absent key is the head: the next free slot
//!   ledger/head                       hint: "the head is at least here"; never trusted
//!
//!   append(batch)
//!     n := find_head(from the appender's last slot, helped by the hint)
//!     loop (at most MAX_APPEND_ATTEMPTS):
//!       put_if_absent(seq/n, slot) ── Created ──────────► landed at n (also: our own earlier
//!            │                                              write whose reply was lost)
//!            ├─ AlreadyExists ─► n += 1 (every REPROBE_AFTER_LOSSES losses: n := find_head(n)),
//!            │                   unless an earlier try at n failed in transit: then re-read it
//!            └─ unavailable ───► re-read seq/n: ours ─► landed at n; someone else's ─► n += 1;
//!                                               absent or unreadable ─► try n again
//!
//!   find_head(known)        all slots below `known` are present
//!     lo := max(known, hint if slot hint-1 exists)    (fresh appenders only)
//!     probe lo; if present, probe windows of HOLE_LOOKAHEAD slots at once: the first absent wins
//!
//!   reader at an absent slot n
//!     any of n+1 ..= n+HOLE_LOOKAHEAD present? ── yes ─► put_if_absent(seq/n, FILLER), read n again
//!                                              └─ no ──► n is the head
//! ```
//!
//! Honest appenders only write the first absent slot they see, so the present slots form a
//! prefix. A member with write access can still break it (write far ahead, delete a slot); readers
//! take the present prefix, and fill a hole they find with the filler (void for everyone), so a
//! hole never stalls them. Every slot they read is hashed into the Merkle tree (garbage too), and
//! every entry goes through the validity rule.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use storage::{PutOutcome, Store, StoreError};
use tracing::{debug, warn};

use crate::checkpoint::{SignedCheckpoint, Witness};
use crate::entry::Entry;
use crate::error::{LedgerError, Result, Tamper};
use crate::id::{EntryPos, Round, RunId, Seq};
use crate::key::PublicKey;
use crate::merkle::{self, Hash};
use crate::slot::{self, MAX_SLOT_BYTES};
use crate::validity::{Checked, LedgerState, Validity, VoidReason};

/// Folder of the slot objects.
pub const SEQ_PREFIX: &str = "ledger/seq";
/// The head hint object.
pub const HEAD_HINT_KEY: &str = "ledger/head";
/// Slots one append tries before giving up with [`LedgerError::Contended`].
pub const MAX_APPEND_ATTEMPTS: u32 = 512;
/// Writes in a row whose outcome stayed unknown (the write failed after the storage layer's
/// retries, and reading the slot back failed or found it empty) after which an append stops with
/// [`LedgerError::AppendUncertain`]: the store is down, and the caller should say so and come back
/// (participants rejoin and find their entry if it landed) rather than spend its 512 attempts
/// silently (about 25 minutes at the default retry policy).
pub const MAX_UNKNOWN_IN_A_ROW: u32 = 2;
/// Consecutive lost races after which an appender searches for the head again.
pub const REPROBE_AFTER_LOSSES: u32 = 8;
/// An appender updates the head hint when it lands on a multiple of this (a power of two).
pub const HINT_EVERY: u64 = 16;
const _: () = assert!(HINT_EVERY.is_power_of_two());
/// Slot reads in flight while replaying.
pub const READ_CONCURRENCY: usize = 16;
/// Bounds on the poll interval of [`Reader::wait_for_new`].
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// See [`MIN_POLL_INTERVAL`].
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// How far past an absent slot readers look for a present one (that makes the absent slot a
/// hole, which they fill), and the largest run of absent slots an appender's head search may
/// skip. A slot written further ahead than this stays out of the log until the log reaches it.
pub const HOLE_LOOKAHEAD: u64 = 16;
/// A reader that finds nothing new looks for a hole at the head only on every this many such
/// polls (and on every poll that read something first), so following a quiet log costs one read
/// per poll most of the time instead of `1 + HOLE_LOOKAHEAD`.
pub const HOLE_CHECK_EVERY_IDLE_POLLS: u32 = 8;

const HINT_VERSION: u8 = 1;

/// The hole rule, pure: an absent slot N is a hole when one of the slots N+1..=N+[`HOLE_LOOKAHEAD`]
/// is present; `present_after[i]` says whether slot N+1+i is (entries past the look-ahead are
/// ignored). A hole is filled with [`slot::FILLER`] by whoever finds it; otherwise N is the head.
pub fn is_hole(present_after: &[bool]) -> bool {
    present_after.iter().take(HOLE_LOOKAHEAD as usize).any(|&p| p)
}

/// If absent slot `seq` is a hole ([`is_hole`]), writes the filler there with put-if-absent and
/// returns true (the slot is now present: the filler, or whatever won it first); false when
/// `seq` is the head.
///
/// A look-ahead check that fails counts as absent: the hole, if it is one, is filled by a later
/// poll. A store that refuses the write (read-only access) leaves the hole: the reader stops
/// there. Any other failure to write the filler is an error (the next poll tries again).
pub async fn fill_hole(store: &Store, seq: Seq) -> Result<bool> {
    let present_after: Vec<bool> = futures::stream::iter(1..=HOLE_LOOKAHEAD)
        .map(|d| {
            let store = store.clone();
            async move {
                let Some(n) = seq.0.checked_add(d) else { return false };
                present(&store, Seq(n)).await.unwrap_or_else(|e| {
                    debug!(seq = n, error = %e, "look-ahead check failed; counted as absent");
                    false
                })
            }
        })
        .buffered(READ_CONCURRENCY)
        .collect()
        .await;
    if !is_hole(&present_after) {
        return Ok(false);
    }
    match store.put_if_absent(&seq_key(seq), slot::filler()).await {
        Ok(PutOutcome::Created(_)) => warn!(seq = seq.0, "filled a hole in the log"),
        Ok(PutOutcome::AlreadyExists) => debug!(seq = seq.0, "a hole was filled by someone else"),
        // A reader with read access only (an auditor) stops at the hole, as if it were the head.
        Err(e @ (StoreError::PermissionDenied { .. } | StoreError::Unsupported { .. })) => {
            warn!(seq = seq.0, error = %e, "cannot fill the hole in the log; reading stops there");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(true)
}

/// The key of slot `seq`.
pub fn seq_key(seq: Seq) -> String {
    format!("{SEQ_PREFIX}/{:020}", seq.0)
}

async fn present(store: &Store, seq: Seq) -> Result<bool> {
    Ok(store.head(&seq_key(seq)).await?.is_some())
}

/// Reads the head hint; anything unreadable counts as no hint.
pub async fn read_hint(store: &Store) -> Option<Seq> {
    let obj = store.get(HEAD_HINT_KEY, 64).await.ok()?;
    match obj.bytes.as_ref() {
        [HINT_VERSION, rest @ ..] => <[u8; 8]>::try_from(rest).ok().map(|b| Seq(u64::from_be_bytes(b))),
        _ => None,
    }
}

async fn write_hint(store: &Store, head: Seq) {
    let mut bytes = vec![HINT_VERSION];
    bytes.extend_from_slice(&head.0.to_be_bytes());
    if let Err(e) = store.put(HEAD_HINT_KEY, Bytes::from(bytes)).await {
        debug!(error = %e, "head hint not updated");
    }
}

/// The first absent slot at or after `known`, where every slot below `known` is known to be
/// present. The hint only ever moves the search forward, and only once slot `hint - 1` is seen.
pub async fn find_head(store: &Store, known: Seq) -> Result<Seq> {
    let mut known = known;
    search_head(store, &mut known, true).await
}

/// [`find_head`], raising `known` as slots are seen, so that a search cut short by a failed
/// request still leaves its progress behind for the next try. It never skips a slot: past
/// `known` it reads windows of [`HOLE_LOOKAHEAD`] slots at once and returns the first absent
/// one, so an appender never lands beyond a hole (a rogue write ahead, a deleted slot): it
/// lands in it.
async fn search_head(store: &Store, known: &mut Seq, use_hint: bool) -> Result<Seq> {
    if use_hint {
        match read_hint(store).await {
            Some(hint) if hint > *known && present(store, Seq(hint.0 - 1)).await? => *known = hint,
            _ => {}
        }
    }
    // The common case, an appender at the head: one request.
    if !present(store, *known).await? {
        return Ok(*known);
    }
    let overflow = || LedgerError::TooLarge { what: "log (slots)", size: u64::MAX, limit: u64::MAX - 1 };
    *known = known.next().ok_or_else(overflow)?;
    loop {
        let from = known.0;
        let mut window = std::pin::pin!(
            futures::stream::iter(0..HOLE_LOOKAHEAD)
                .map(|d| {
                    let store = store.clone();
                    async move { present(&store, Seq(from.saturating_add(d))).await }
                })
                .buffered(READ_CONCURRENCY)
        );
        // In slot order, so that a failed request keeps the progress made before it.
        while let Some(is_present) = window.try_next().await? {
            if !is_present {
                return Ok(*known);
            }
            *known = known.next().ok_or_else(overflow)?;
        }
    }
}

/// Starts a run: writes `genesis` (a batch of one) at slot 0, and nowhere else. A run whose slot 0
/// holds other bytes fails with [`LedgerError::SlotTaken`]; writing the same genesis twice is fine.
pub async fn write_genesis(store: &Store, genesis: &Entry) -> Result<()> {
    let slot = slot::encode_entries(std::slice::from_ref(genesis))?;
    let key = seq_key(Seq(0));
    match store.put_if_absent(&key, slot.clone()).await? {
        PutOutcome::Created(_) => Ok(()),
        PutOutcome::AlreadyExists => match slot_state(store, &key, &slot).await? {
            SlotState::Ours => Ok(()),
            SlotState::Taken | SlotState::Unknown => Err(LedgerError::SlotTaken(Seq(0))),
        },
    }
}

/// The run id of slot 0's first entry, for a reader that only has the store (the command line's
/// `--store URL`): the id derived from its body when it is a Genesis ([`crate::Genesis::run_id`]),
/// whatever id it was signed for otherwise. Whether that genesis is valid is still the validity
/// rule's call (a Genesis signed for another id than its derived one is void).
pub async fn genesis_run_id(store: &Store) -> Result<RunId> {
    let malformed = |reason| LedgerError::Malformed { what: "genesis slot", reason };
    match read_slot(store, Seq(0)).await? {
        None => Err(LedgerError::LogTooShort { head: Seq(0), needed: 1 }),
        Some(SlotObject::Oversized(size)) => {
            Err(malformed(crate::error::DecodeError::TooLong { field: "slot", len: size, max: MAX_SLOT_BYTES }))
        }
        Some(SlotObject::Bytes(bytes)) => {
            let raws = slot::decode_slot(&bytes).map_err(malformed)?;
            let first = raws.first().ok_or(malformed(crate::error::DecodeError::TooShort {
                field: "batch",
                len: 0,
                min: 1,
            }))?;
            let entry = Entry::decode(first).map_err(malformed)?;
            Ok(match &entry.body {
                crate::Body::Genesis(g) => g.run_id(),
                _ => entry.run_id,
            })
        }
    }
}

/// Writes slots. One per writer task; cheap to create.
#[derive(Debug, Clone)]
pub struct Appender {
    store: Store,
    /// Every slot below this one is present.
    next: Seq,
    /// Whether the head hint may move `next` forward (only for an appender that knows nothing).
    use_hint: bool,
}

impl Appender {
    /// An appender on a store scoped to the run, that knows nothing of the log yet: it starts
    /// from the head hint when slot `hint - 1` is present (see docs/LEDGER.md, "Holes").
    pub fn new(store: Store) -> Appender {
        Appender { store, next: Seq(0), use_hint: true }
    }

    /// An appender that starts from `next`, a point below which the caller saw every slot (a
    /// [`Reader::next_seq`]). It never follows the hint, which a member with write access can
    /// forge, so it never lands beyond a hole it did not see.
    pub fn starting_at(store: Store, next: Seq) -> Appender {
        Appender { store, next, use_hint: false }
    }

    /// Appends `entries` as one slot and returns the slot they landed in.
    pub async fn append(&mut self, entries: &[Entry]) -> Result<Seq> {
        self.append_slot(slot::encode_entries(entries)?).await
    }

    /// Appends an already framed slot object (see [`slot::encode_slot`]).
    #[tracing::instrument(level = "debug", skip_all, fields(len = slot.len()))]
    pub async fn append_slot(&mut self, slot: Bytes) -> Result<Seq> {
        let mut seq = search_head(&self.store, &mut self.next, self.use_hint).await?;
        let mut losses = 0u32;
        let mut until_probe = REPROBE_AFTER_LOSSES;
        // Whether an earlier attempt at `seq` failed in transit, and so may have landed.
        let mut uncertain = false;
        let mut unknown_in_a_row = 0u32;
        // The store's last error of a write that may have landed, for the caller's message.
        let mut cause = String::new();
        for _ in 0..MAX_APPEND_ATTEMPTS {
            let key = seq_key(seq);
            let state = match self.store.put_if_absent(&key, slot.clone()).await {
                Ok(PutOutcome::Created(_)) => SlotState::Ours,
                Ok(PutOutcome::AlreadyExists) if uncertain => slot_state(&self.store, &key, &slot).await?,
                Ok(PutOutcome::AlreadyExists) => SlotState::Taken,
                Err(e @ StoreError::Unavailable { .. }) => {
                    uncertain = true;
                    cause = e.to_string();
                    slot_state(&self.store, &key, &slot).await?
                }
                Err(e) => return Err(e.into()),
            };
            match state {
                SlotState::Ours => {
                    debug!(seq = seq.0, losses, "slot appended");
                    self.next = seq.next().unwrap_or(seq);
                    if self.next.0 & (HINT_EVERY - 1) == 0 {
                        write_hint(&self.store, self.next).await;
                    }
                    return Ok(seq);
                }
                SlotState::Taken => {
                    losses += 1;
                    uncertain = false;
                    unknown_in_a_row = 0;
                    let after = seq.next().ok_or(LedgerError::TooLarge {
                        what: "log (slots)",
                        size: u64::MAX,
                        limit: u64::MAX - 1,
                    })?;
                    self.next = self.next.max(after);
                    until_probe -= 1;
                    seq = if until_probe == 0 {
                        until_probe = REPROBE_AFTER_LOSSES;
                        search_head(&self.store, &mut self.next, self.use_hint).await?
                    } else {
                        after
                    };
                }
                SlotState::Unknown => {
                    unknown_in_a_row += 1;
                    if unknown_in_a_row >= MAX_UNKNOWN_IN_A_ROW {
                        warn!(
                            seq = seq.0,
                            unknown_in_a_row, "the store failed every write and read of the slot; giving up"
                        );
                        return Err(LedgerError::AppendUncertain { seq, cause });
                    }
                    debug!(seq = seq.0, "slot state unknown after a failed write; trying it again");
                }
            }
        }
        warn!(last_seq = seq.0, uncertain, "append gave up");
        if uncertain {
            return Err(LedgerError::AppendUncertain { seq, cause });
        }
        Err(LedgerError::Contended { attempts: MAX_APPEND_ATTEMPTS, last_seq: seq })
    }
}

/// What a slot holds, as seen by the appender that tried to write `slot` there.
enum SlotState {
    /// Our bytes.
    Ours,
    /// Someone else's.
    Taken,
    /// Absent, or unreadable right now.
    Unknown,
}

async fn slot_state(store: &Store, key: &str, slot: &Bytes) -> Result<SlotState> {
    match store.get(key, MAX_SLOT_BYTES).await {
        Ok(obj) if obj.bytes == *slot => Ok(SlotState::Ours),
        Ok(_) | Err(StoreError::TooLarge { .. }) => Ok(SlotState::Taken),
        Err(StoreError::NotFound { .. } | StoreError::Unavailable { .. }) => Ok(SlotState::Unknown),
        Err(e) => Err(e.into()),
    }
}

/// One slot as read.
#[derive(Debug, Clone)]
pub struct SlotRecord {
    /// The slot.
    pub seq: Seq,
    /// Its Merkle leaf hash.
    pub leaf: Hash,
    /// Its size in bytes.
    pub size: u64,
    /// Its entries, as indices into [`Reader::entries`].
    pub entries: Range<usize>,
    /// Why the whole slot is void, when it is not a batch.
    pub void: Option<VoidReason>,
}

/// One entry as read, with the validity rule's verdict.
#[derive(Debug, Clone)]
pub struct LoggedEntry {
    /// Where it is.
    pub pos: EntryPos,
    /// Its raw bytes.
    pub bytes: Bytes,
    /// Decoded, when it decodes.
    pub entry: Option<Entry>,
    /// Whether it counts.
    pub validity: Validity,
    /// The organisation of its first signer in the roster as it stood when the entry was read
    /// (a Genesis: its own roster), if the signer was a member then.
    pub organisation: Option<String>,
}

/// What a slot key holds, as far as a reader is concerned.
pub(crate) enum SlotObject {
    /// The bytes (at most [`MAX_SLOT_BYTES`]).
    Bytes(Bytes),
    /// An object too large to download, of this size.
    Oversized(u64),
}

impl SlotObject {
    pub(crate) fn leaf(&self) -> Hash {
        match self {
            SlotObject::Bytes(b) => merkle::leaf_hash(b),
            SlotObject::Oversized(size) => merkle::oversized_leaf_hash(*size),
        }
    }
}

pub(crate) async fn read_slot(store: &Store, seq: Seq) -> Result<Option<SlotObject>> {
    let key = seq_key(seq);
    match store.get(&key, MAX_SLOT_BYTES).await {
        Ok(obj) => Ok(Some(SlotObject::Bytes(obj.bytes))),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(StoreError::TooLarge { size, .. }) => {
            Ok(Some(SlotObject::Oversized(store.head(&key).await?.map_or(size, |info| info.size))))
        }
        Err(e) => Err(e.into()),
    }
}

/// Replays the log of one run and follows its head, keeping the Merkle leaves, the validity
/// state and an index by round and signer.
#[derive(Debug)]
pub struct Reader {
    pub(crate) store: Store,
    pub(crate) state: LedgerState,
    /// The slots read, less those [`Reader::forget_before`] dropped.
    pub(crate) slots: Vec<SlotRecord>,
    /// The entries read, less those [`Reader::forget_before`] dropped.
    pub(crate) entries: Vec<LoggedEntry>,
    /// The slots' Merkle leaves with the complete subtrees, for roots and proofs in O(log² n); below
    /// the slot where the forgotten rounds end, only what roots of later sizes need.
    tree: merkle::Subtrees,
    /// Entries of rounds before this one were forgotten (see [`Reader::forget_before`]).
    forgotten_before: Round,
    /// Every entry in a slot at or after this one is held: what was forgotten lies below.
    complete_from: Seq,
    /// The `keep_from` of the last [`Reader::forget_before`] that did anything.
    kept_from: Seq,
    by_round: HashMap<Round, Vec<usize>>,
    by_signer: HashMap<PublicKey, Vec<usize>>,
    pub(crate) trusted: Option<SignedCheckpoint>,
    /// Whether the slots read so far were checked against `trusted` (done once per checkpoint).
    pub(crate) trusted_prefix_ok: bool,
    /// Leaves remembered from an earlier process (see [`Witness`]), until checked.
    remembered: Vec<Hash>,
    /// Polls in a row that found nothing new (see [`HOLE_CHECK_EVERY_IDLE_POLLS`]).
    idle_polls: u32,
}

impl Reader {
    /// A reader of run `run_id` on a store scoped to the run; nothing read yet.
    pub fn new(store: Store, run_id: RunId) -> Reader {
        Reader {
            store,
            state: LedgerState::new(run_id),
            slots: Vec::new(),
            entries: Vec::new(),
            tree: merkle::Subtrees::default(),
            forgotten_before: Round(0),
            complete_from: Seq(0),
            kept_from: Seq(u64::MAX),
            by_round: HashMap::new(),
            by_signer: HashMap::new(),
            trusted: None,
            trusted_prefix_ok: false,
            remembered: Vec::new(),
            idle_polls: 0,
        }
    }

    /// Replays the whole log from genesis.
    pub async fn replay(store: Store, run_id: RunId) -> Result<Reader> {
        let mut reader = Reader::new(store, run_id);
        reader.poll().await?;
        Ok(reader)
    }

    /// Replays the whole log, refusing it unless it extends `trusted`, a checkpoint this reader
    /// verified before (kept by the caller, e.g. in a local file, as [`SignedCheckpoint::encode`]).
    pub async fn replay_from_checkpoint(store: Store, run_id: RunId, trusted: SignedCheckpoint) -> Result<Reader> {
        let mut reader = Reader::new(store, run_id);
        reader.trusted = Some(trusted);
        reader.poll().await?;
        Ok(reader)
    }

    /// Like [`Reader::replay_from_checkpoint`], with the leaf hashes this reader saw as well
    /// (a [`Witness`], from [`Reader::witness`]): a slot rewritten since is then named.
    pub async fn replay_from_witness(store: Store, run_id: RunId, witness: Witness) -> Result<Reader> {
        let mut reader = Reader::new(store, run_id);
        reader.trusted = Some(witness.checkpoint);
        reader.remembered = witness.leaves;
        reader.poll().await?;
        Ok(reader)
    }

    /// What to remember for [`Reader::replay_from_witness`]: the verified checkpoint and the
    /// leaves it covers. `None` without a checkpoint, or when some of those leaves were forgotten
    /// ([`Reader::forget_before`]; an auditor never forgets).
    pub fn witness(&self) -> Option<Witness> {
        let checkpoint = self.trusted.clone()?;
        let size = usize::try_from(checkpoint.checkpoint.size).ok()?;
        if self.tree.leaves_from() > 0 {
            return None;
        }
        let leaves = self.leaves().get(..size)?.to_vec();
        Some(Witness { checkpoint, leaves })
    }

    /// Reads every slot written since the last call; returns how many were new.
    ///
    /// At the first absent slot it looks [`HOLE_LOOKAHEAD`] slots further (see [`is_hole`]): if
    /// one of them is present, the absent slot is a hole, and the reader writes the filler there
    /// (put-if-absent: whatever landed first stays) and reads on. Below a verified checkpoint it
    /// never fills: an absent slot there was deleted, and is reported.
    ///
    /// Reads run ahead in a window that doubles while every slot in it is present (up to
    /// [`READ_CONCURRENCY`]) and falls back to one read at the head. The hole check runs when the
    /// poll read something before the absent slot, and otherwise on every
    /// [`HOLE_CHECK_EVERY_IDLE_POLLS`]th idle poll, so following a quiet log costs one read per poll
    /// most of the time. Each slot is taken in as soon as it and all before it are read, so a
    /// failed poll keeps its progress and the next one resumes where it stopped.
    pub async fn poll(&mut self) -> Result<u64> {
        let start = self.next_seq();
        let mut window = 1u64;
        let mut filled = None;
        loop {
            let from = self.next_seq().0;
            let store = self.store.clone();
            let mut fetched = std::pin::pin!(
                futures::stream::iter((from..from.saturating_add(window)).map(Seq))
                    .map(|seq| {
                        let store = store.clone();
                        async move { read_slot(&store, seq).await.map(|obj| (seq, obj)) }
                    })
                    .buffered(READ_CONCURRENCY)
            );
            let mut absent = None;
            while let Some((seq, obj)) = fetched.try_next().await? {
                match obj {
                    Some(obj) => self.ingest(seq, obj),
                    None => {
                        absent = Some(seq);
                        break;
                    }
                }
            }
            if let Some(seq) = absent {
                // Below a verified checkpoint an absent slot is a deletion, reported as such;
                // above it, a hole is filled and read again like any other slot.
                // A slot filled but absent again (deleted as fast as it is filled) ends the poll.
                let below_checkpoint = self.trusted.as_ref().is_some_and(|t| seq.0 < t.checkpoint.size);
                let idle = seq == start;
                let look = !idle || self.idle_polls % HOLE_CHECK_EVERY_IDLE_POLLS == HOLE_CHECK_EVERY_IDLE_POLLS - 1;
                if below_checkpoint || filled == Some(seq) || !look || !fill_hole(&self.store, seq).await? {
                    break;
                }
                filled = Some(seq);
                window = 1;
                continue;
            }
            window = (window * 2).min(READ_CONCURRENCY as u64);
        }
        self.check_trusted_prefix()?;
        let read = self.next_seq().0 - start.0;
        self.idle_polls = if read == 0 { self.idle_polls.wrapping_add(1) } else { 0 };
        Ok(read)
    }

    /// Polls until at least one new slot arrives, sleeping `poll_interval` (clamped to
    /// [`MIN_POLL_INTERVAL`]..=[`MAX_POLL_INTERVAL`]) between polls. Returns how many arrived.
    pub async fn wait_for_new(&mut self, poll_interval: Duration) -> Result<u64> {
        let interval = poll_interval.clamp(MIN_POLL_INTERVAL, MAX_POLL_INTERVAL);
        loop {
            let n = self.poll().await?;
            if n > 0 {
                return Ok(n);
            }
            tokio::time::sleep(interval).await;
        }
    }

    fn ingest(&mut self, seq: Seq, obj: SlotObject) {
        let leaf = obj.leaf();
        let first = self.entries.len();
        let (size, void) = match &obj {
            SlotObject::Oversized(size) => (
                *size,
                Some(VoidReason::MalformedSlot(crate::error::DecodeError::TooLong {
                    field: "slot",
                    len: *size,
                    max: MAX_SLOT_BYTES,
                })),
            ),
            SlotObject::Bytes(bytes) if bytes.as_ref() == slot::FILLER => {
                (bytes.len() as u64, Some(VoidReason::Filler))
            }
            SlotObject::Bytes(bytes) => {
                let size = bytes.len() as u64;
                match slot::decode_slot(bytes) {
                    Err(e) => (size, Some(VoidReason::MalformedSlot(e))),
                    Ok(raws) => {
                        // The slot's signatures are checked as one batch first; the rule then
                        // consumes the per-entry results, which equal single checks.
                        let checked = Checked::batch(&raws);
                        for (index, (raw, checked)) in raws.into_iter().zip(checked).enumerate() {
                            let pos = EntryPos { seq, index: index as u16 };
                            let (validity, entry) = self.state.apply_checked(pos, checked);
                            if let Validity::Void(reason) = &validity {
                                debug!(seq = seq.0, index, %reason, "void entry");
                            }
                            // After `apply`: a Genesis brings its roster, a member removed by this
                            // very entry is gone (rare; it is then looked up as a stranger).
                            let organisation = entry
                                .as_ref()
                                .and_then(|e| self.state.member(&e.signer()))
                                .map(|m| m.organisation.clone());
                            let bytes = bytes.slice_ref(raw);
                            self.push_entry(LoggedEntry { pos, bytes, entry, validity, organisation });
                        }
                        (size, None)
                    }
                }
            }
        };
        match &void {
            Some(VoidReason::Filler) => debug!(seq = seq.0, "filler slot"),
            Some(reason) => warn!(seq = seq.0, %reason, "void slot"),
            None => {}
        }
        self.tree.push(leaf);
        self.slots.push(SlotRecord { seq, leaf, size, entries: first..self.entries.len(), void });
    }

    fn push_entry(&mut self, logged: LoggedEntry) {
        self.entries.push(logged);
        self.index_entry(self.entries.len() - 1);
    }

    /// Adds entry `i` to the indices by round and by signer, if it counts.
    fn index_entry(&mut self, i: usize) {
        let Some(logged) = self.entries.get(i) else { return };
        if let (true, Some(entry)) = (logged.validity.is_accept(), &logged.entry) {
            if let Some(round) = entry.body.round() {
                self.by_round.entry(round).or_default().push(i);
            }
            for s in &entry.signatures {
                self.by_signer.entry(s.key).or_default().push(i);
            }
        }
    }

    /// A fresh reader that remembered a checkpoint must find at least that many slots, hashing
    /// to its root.
    fn check_trusted_prefix(&mut self) -> Result<()> {
        let Some(trusted) = &self.trusted else { return Ok(()) };
        if self.trusted_prefix_ok {
            return Ok(());
        }
        let size = trusted.checkpoint.size;
        // Nothing is forgotten before this check passes (see `forget_before`), so every leaf is held.
        let first_rewritten =
            self.remembered.iter().enumerate().position(|(i, was)| self.tree.leaf(i).is_some_and(|now| now != *was));
        if let Some(i) = first_rewritten {
            return Err(LedgerError::Tampered { seq: Seq(i as u64), how: Tamper::Rewritten, checkpoint_size: size });
        }
        if self.next_seq().0 < size {
            return Err(LedgerError::Tampered { seq: self.next_seq(), how: Tamper::Deleted, checkpoint_size: size });
        }
        if self.root_at(size) != Some(trusted.checkpoint.root) {
            return Err(LedgerError::CheckpointMismatch { size });
        }
        self.trusted_prefix_ok = true;
        self.remembered = Vec::new();
        Ok(())
    }

    /// Re-reads every slot whose leaf is held (every slot read, unless [`Reader::forget_before`]
    /// dropped the oldest) and compares it with what was read before: a slot that was deleted or
    /// rewritten since (by a member with write access) is named.
    pub async fn audit(&self) -> Result<()> {
        let checkpoint_size = self.trusted.as_ref().map_or(0, |c| c.checkpoint.size);
        let store = self.store.clone();
        let from = self.tree.leaves_from();
        let mut fetched = std::pin::pin!(
            futures::stream::iter(self.leaves().iter().enumerate().map(|(i, leaf)| (Seq((from + i) as u64), *leaf)))
                .map(|(seq, leaf)| {
                    let store = store.clone();
                    async move { read_slot(&store, seq).await.map(|obj| (seq, leaf, obj)) }
                })
                .buffered(READ_CONCURRENCY)
        );
        while let Some((seq, leaf, obj)) = fetched.try_next().await? {
            match obj {
                None => return Err(LedgerError::Tampered { seq, how: Tamper::Deleted, checkpoint_size }),
                Some(obj) if obj.leaf() != leaf => {
                    return Err(LedgerError::Tampered { seq, how: Tamper::Rewritten, checkpoint_size });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The run.
    pub fn run_id(&self) -> RunId {
        self.state.run_id()
    }

    /// The store, scoped to the run.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The validity state after the last slot read.
    pub fn state(&self) -> &LedgerState {
        &self.state
    }

    /// The next slot to read (the number of slots read).
    pub fn next_seq(&self) -> Seq {
        Seq(self.tree.len() as u64)
    }

    /// Every slot read, in order (less those [`Reader::forget_before`] dropped).
    pub fn slots(&self) -> &[SlotRecord] {
        &self.slots
    }

    /// Every entry read, in order (less those [`Reader::forget_before`] dropped).
    pub fn entries(&self) -> &[LoggedEntry] {
        &self.entries
    }

    /// Every entry in slots from this one on is held (none was forgotten there).
    pub fn complete_from(&self) -> Seq {
        self.complete_from
    }

    /// Drops the entries a participant that has taken in every round before `round` no longer
    /// needs, so that its memory is bounded by the run's window instead of growing with the log;
    /// nothing in slots at or after `keep_from` is dropped (what the participant must still
    /// export). It never goes past the validity rule's horizon (see [`LedgerState::horizon`]): in
    /// a run without a window it drops nothing. Dropped: accepted entries of rounds before the
    /// horizon, void entries from before the horizon round opened, slot records left without
    /// entries, and the Merkle leaves and nodes that only trees ending before the horizon round
    /// opened (or before `keep_from`, or the trusted checkpoint) need: roots, proofs and
    /// checkpoints of sizes from there on still work; older ones answer `None`, and
    /// [`Reader::audit`] re-reads only the slots whose leaves are held; and the closes and results
    /// of rounds more than `w + 1` rounds before the horizon (`w` the window). Kept: the genesis
    /// and roster changes. An auditor never calls it. Costs one pass over the entries held, when the
    /// horizon has moved.
    pub fn forget_before(&mut self, round: Round, keep_from: Seq) {
        let horizon = round.min(self.state.horizon());
        // Nothing new to drop unless the horizon or the start of what must stay moved on.
        if horizon <= self.forgotten_before && keep_from <= self.kept_from {
            return;
        }
        self.forgotten_before = self.forgotten_before.max(horizon);
        self.kept_from = keep_from;
        // Where the horizon round opened: the position of the previous round's result.
        let opened = horizon.0.checked_sub(1).and_then(|r| self.state.rounds().final_result(Round(r))).map(|f| f.pos);
        let before_opening = |pos: EntryPos| opened.is_some_and(|o| pos < o);
        let keep = |e: &LoggedEntry| {
            e.pos.seq >= keep_from
                || match (&e.validity, e.entry.as_ref().and_then(|x| x.body.round())) {
                    (Validity::Accept, Some(r)) => r >= horizon,
                    (Validity::Accept, None) => true,
                    (Validity::Void(_), _) => !before_opening(e.pos),
                }
        };
        // kept_before[i]: how many of the first i entries are kept, to map the slots' ranges.
        let mut kept_before = Vec::with_capacity(self.entries.len() + 1);
        kept_before.push(0usize);
        let mut kept = Vec::new();
        for e in std::mem::take(&mut self.entries) {
            if keep(&e) {
                kept.push(e);
            } else {
                self.complete_from = self.complete_from.max(e.pos.seq.next().unwrap_or(e.pos.seq));
            }
            kept_before.push(kept.len());
        }
        self.entries = kept;
        let remap = |i: usize| kept_before.get(i).copied().unwrap_or(0);
        for slot in &mut self.slots {
            slot.entries = remap(slot.entries.start)..remap(slot.entries.end);
        }
        let held = |s: &SlotRecord| {
            !s.entries.is_empty() || s.seq >= keep_from || !before_opening(EntryPos { seq: s.seq, index: u16::MAX })
        };
        // A slot record dropped (a void slot, or one whose entries all went) is forgotten too.
        if let Some(seq) = self.slots.iter().filter(|s| !held(s)).map(|s| s.seq.next().unwrap_or(s.seq)).max() {
            self.complete_from = self.complete_from.max(seq);
        }
        self.slots.retain(held);
        // The tree keeps what checkpoints from the horizon round's opening on need, what the
        // export part still to publish needs, and all of it until a remembered checkpoint is
        // checked (`check_trusted_prefix` compares every leaf).
        let trusted_floor = match &self.trusted {
            Some(_) if !self.trusted_prefix_ok => 0,
            Some(t) => t.checkpoint.size,
            None => u64::MAX,
        };
        let floor = opened.map_or(0, |o| o.seq.0).min(keep_from.0).min(trusted_floor);
        self.tree.forget_below(usize::try_from(floor).unwrap_or(usize::MAX));
        // Each round's close and result stay for `w + 1` rounds behind the horizon: the result
        // that opened the horizon round, and the previous snapshot round's, where a follower's
        // next export part starts (`snapshot_every <= w`), are among them.
        let w = u64::from(self.state.window());
        self.state.forget_results_before(Round(horizon.0.saturating_sub(w + 1)));
        self.by_round.clear();
        self.by_signer.clear();
        for i in 0..self.entries.len() {
            self.index_entry(i);
        }
    }

    /// Accepted entries of `round` (contributions, verdicts, closes, snapshots), in log order.
    pub fn by_round(&self, round: Round) -> impl Iterator<Item = &LoggedEntry> {
        self.by_round.get(&round).into_iter().flatten().filter_map(|&i| self.entries.get(i))
    }

    /// The entry at `pos`, if read (a binary search: entries are in log order).
    pub fn entry_at(&self, pos: EntryPos) -> Option<&LoggedEntry> {
        let i = self.entries.partition_point(|e| e.pos < pos);
        self.entries.get(i).filter(|e| e.pos == pos)
    }

    /// Accepted entries signed by `key`, in log order.
    pub fn by_signer(&self, key: &PublicKey) -> impl Iterator<Item = &LoggedEntry> {
        self.by_signer.get(key).into_iter().flatten().filter_map(|&i| self.entries.get(i))
    }

    /// The Merkle leaf hashes of the slots read from [`Reader::leaves_from`] on: every slot, unless
    /// [`Reader::forget_before`] dropped the oldest.
    pub fn leaves(&self) -> &[Hash] {
        self.tree.leaves()
    }

    /// The first slot whose leaf [`Reader::leaves`] holds (0 for a reader that never forgot).
    pub fn leaves_from(&self) -> Seq {
        Seq(self.tree.leaves_from() as u64)
    }

    /// The Merkle root over the first `size` slots, if that many were read (and, after
    /// [`Reader::forget_before`], the tree of that size is still held).
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        self.tree.root(usize::try_from(size).ok()?)
    }

    /// The inclusion proof of slot `seq` in the tree of the first `size` slots.
    pub fn inclusion_proof(&self, seq: Seq, size: u64) -> Option<Vec<Hash>> {
        self.tree.inclusion_proof(usize::try_from(seq.0).ok()?, usize::try_from(size).ok()?)
    }

    /// The consistency proof from the tree of `old_size` slots to that of `new_size` slots.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Option<Vec<Hash>> {
        self.tree.consistency_proof(usize::try_from(old_size).ok()?, usize::try_from(new_size).ok()?)
    }

    /// The checkpoint this reader verified last, if any.
    pub fn trusted_checkpoint(&self) -> Option<&SignedCheckpoint> {
        self.trusted.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keys_are_zero_padded_so_listings_come_back_in_order() {
        assert_eq!(seq_key(Seq(0)), "ledger/seq/00000000000000000000");
        assert_eq!(seq_key(Seq(u64::MAX)), "ledger/seq/18446744073709551615");
        assert!(seq_key(Seq(9)) < seq_key(Seq(10)));
    }

    #[tokio::test]
    async fn the_hint_is_read_back_and_garbage_is_no_hint() {
        let store = storage::open("memory://").await.unwrap();
        assert_eq!(read_hint(&store).await, None);
        write_hint(&store, Seq(48)).await;
        assert_eq!(read_hint(&store).await, Some(Seq(48)));
        store.put(HEAD_HINT_KEY, Bytes::from_static(&[2, 0, 0, 0, 0, 0, 0, 0, 1])).await.unwrap();
        assert_eq!(read_hint(&store).await, None);
        store.put(HEAD_HINT_KEY, Bytes::from_static(&[1, 0])).await.unwrap();
        assert_eq!(read_hint(&store).await, None);
    }
}
