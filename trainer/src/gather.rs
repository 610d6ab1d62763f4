//! An organisation's gatherer (`cairn gather`): one ledger slot for the organisation's
//! contributions to a round, instead of one slot per worker.
//!
//! ```text
//!   worker (with --gatherer-wait-ms W): sign Contribution(r) ─▶ PUT tmp/<org folder>/pending/<r>/<key hex>
//!       └─ not in the ledger after W (or the PUT failed) ─▶ append it itself, as without a gatherer
//!   gatherer: LIST tmp/<org folder>/pending/<open round>/ ─▶ GET the keys of the organisation's
//!       workers that have no contribution in the round yet ─▶ check each entry ─▶ when every
//!       missing worker's is in, or the oldest waited the window: append them as one slot
//! ```
//!
//! Nothing here is consensus. Every entry stays its signer's (signed over the run id and the
//! body), so whoever appends it adds nothing and can forge nothing; the gatherer holds no key.
//! What a hostile or broken gatherer can do is delay an entry until its worker's wait runs out,
//! or append it twice (the second copy is void as a duplicate): docs/SECURITY.md.
//!
//! Why: at 1,000 workers, one slot per contribution makes every append race the others for the
//! head (docs/SCALE.md item 4); an organisation's workers share one slot per round this way.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use ledger::{Appender, Body, Entry, PublicKey, Reader, Role, RunId};
use storage::Store;

use crate::TrainerError;
use crate::run_spec::TrainSpec;

/// The folder, under an organisation's staging folder ([`verify::replay::staging_prefix`]), where
/// its workers leave signed contributions for its gatherer.
pub const PENDING_FOLDER: &str = "pending/";

/// Most objects one listing of a round's pending folder reads: one key per roster member is all
/// the folder should hold; anything beyond is junk that must not make a listing grow.
pub const MAX_PENDING_LISTED: usize = ledger::entry::MAX_ROSTER_MEMBERS as usize;

/// The folder of `organisation`'s pending contributions, a sub-folder per round.
pub fn pending_folder(organisation: &str) -> String {
    format!("{}{PENDING_FOLDER}", verify::replay::staging_prefix(organisation))
}

/// The folder of `organisation`'s pending contributions to `round`.
pub fn pending_prefix(organisation: &str, round: ledger::Round) -> String {
    format!("{}{:020}/", pending_folder(organisation), round.0)
}

/// Where `signer` of `organisation` leaves its contribution to `round` for the gatherer.
pub fn pending_key(organisation: &str, round: ledger::Round, signer: &PublicKey) -> String {
    format!("{}{signer}", pending_prefix(organisation, round))
}

/// Why a pending object is not appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PendingRefused {
    /// Over [`ledger::entry::MAX_ENTRY_BYTES`].
    #[error("{size} bytes, over the entry limit of {limit}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Not an entry.
    #[error("does not decode as an entry: {0}")]
    Decode(ledger::DecodeError),
    /// An entry of another run.
    #[error("an entry of another run")]
    OtherRun,
    /// Not one signature by the key its name says, or a signature that does not verify.
    #[error("not signed by {expected} alone, or its signature fails")]
    Signer {
        /// The key the object's name says.
        expected: PublicKey,
    },
    /// Not a contribution to the round its folder says.
    #[error("not a contribution to round {expected}")]
    NotTheRound {
        /// The round of the folder.
        expected: u64,
    },
    /// Not named for a worker of the organisation (lowercase hex of its key): deleted unread.
    #[error("not named for a worker of the organisation; deleted unread")]
    NotAWorker,
    /// The store would not hand it over (refused, not merely away).
    #[error("unreadable: {0}")]
    Unreadable(String),
}

/// Checks a pending object before it is appended: a contribution to `round` of run `run_id`,
/// signed by `signer` alone with a signature that verifies. The validity rule would void anything
/// else; this keeps the gatherer from spending a slot on it.
pub fn check_pending(
    bytes: &[u8],
    run_id: RunId,
    round: ledger::Round,
    signer: &PublicKey,
) -> Result<Entry, PendingRefused> {
    let limit = u64::from(ledger::entry::MAX_ENTRY_BYTES);
    if bytes.len() as u64 > limit {
        return Err(PendingRefused::TooLarge { size: bytes.len() as u64, limit });
    }
    let entry = Entry::decode(bytes).map_err(PendingRefused::Decode)?;
    if entry.run_id != run_id {
        return Err(PendingRefused::OtherRun);
    }
    if entry.signatures.len() != 1 || entry.signer() != *signer || !entry.bad_signers().is_empty() {
        return Err(PendingRefused::Signer { expected: *signer });
    }
    match &entry.body {
        Body::Contribution(c) if c.round == round => Ok(entry),
        _ => Err(PendingRefused::NotTheRound { expected: round.0 }),
    }
}

/// Splits `entries` into slots of at most [`ledger::slot::MAX_BATCH_ENTRIES`], in order. (A
/// contribution's fields are bounded to under 3 KB, so a full slot stays far below
/// [`ledger::slot::MAX_SLOT_BYTES`].)
pub fn into_slots(entries: Vec<Entry>) -> Vec<Vec<Entry>> {
    entries.chunks(usize::from(ledger::slot::MAX_BATCH_ENTRIES)).map(<[Entry]>::to_vec).collect()
}

/// Whose contributions a gatherer appends.
#[derive(Clone, Debug)]
pub enum Organisation {
    /// The organisation of this name in the roster.
    Named(String),
    /// The organisation of this member (found in the roster the gatherer reads anyway).
    OfMember(PublicKey),
}

/// How a gatherer runs.
#[derive(Clone, Debug)]
pub struct GatherOptions {
    /// The organisation whose workers' contributions it appends.
    pub organisation: Organisation,
    /// How long the first pending contribution of a round waits for the organisation's other
    /// workers before the gatherer appends what it has.
    pub window: Duration,
    /// Pause between polls of the ledger and the pending folder.
    pub poll: Duration,
}

/// What a gatherer reports as it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatherEvent {
    /// Read the ledger; gathers for `workers` workers of `organisation` from round `round` on.
    Joined {
        /// The organisation.
        organisation: String,
        /// The open round.
        round: u64,
        /// The organisation's workers in the roster.
        workers: usize,
    },
    /// Appended pending contributions as one slot.
    Appended {
        /// Their round.
        round: u64,
        /// The slot.
        seq: u64,
        /// How many.
        entries: usize,
        /// How long the oldest of them waited in the pending folder, in milliseconds.
        waited_ms: u64,
    },
    /// Left a pending object out.
    Refused {
        /// Its key.
        key: String,
        /// Why.
        why: PendingRefused,
    },
}

/// A pending contribution read and checked, waiting for its slot.
struct Waiting {
    entry: Entry,
    key: String,
    /// When this gatherer first read it, and when the store says it was written: a slot is in
    /// that order, so the first of two updates (what validators' copy check keeps) stays first.
    since: Instant,
    modified_ms: i64,
}

/// Pending objects read at once.
const PARALLEL_READS: usize = 16;

/// What one pass of the gatherer did.
enum Pass {
    /// The run's last round is final.
    Ended,
    /// It appended: look again at once.
    Appended,
    /// Nothing due: wait a poll.
    Idle,
}

/// One organisation's gatherer between polls.
struct Gatherer<'a> {
    store: Store,
    run_id: RunId,
    options: &'a GatherOptions,
    /// The organisation's name in the roster.
    org: String,
    train: TrainSpec,
    reader: Reader,
    round: Option<ledger::Round>,
    waiting: BTreeMap<PublicKey, Waiting>,
    /// Objects refused this round, with their sizes and tags: not read again unless they change.
    refused: HashMap<String, (u64, Option<String>)>,
    /// Objects to delete unread at the end of the listing.
    junk: Vec<String>,
}

/// Runs the gatherer of `options.organisation` on the run in `store` until the run's last round
/// is final (its events say what it did). A store error that may pass (unavailable, contended)
/// is logged and the pass tried again after a poll; any other ends it.
pub async fn run_gatherer(
    store: Store,
    options: &GatherOptions,
    events: &mut (dyn FnMut(GatherEvent) + Send),
) -> Result<(), TrainerError> {
    let run_id = ledger::genesis_run_id(&store).await?;
    let reader = Reader::replay(store.clone(), run_id).await?;
    let (_, config, _) = verify::replay::genesis_config(reader.entries())?;
    let train = TrainSpec::from_extra(&config.extra)?;
    let org = match &options.organisation {
        Organisation::Named(name) => name.clone(),
        Organisation::OfMember(key) => reader.state().organisation(key).map(str::to_string).ok_or_else(|| {
            TrainerError::InvalidConfig(format!("key {key} is not in this run's roster (ask an admin to add it)"))
        })?,
    };
    let workers = organisation_workers(&reader, &org);
    if workers.is_empty() {
        return Err(TrainerError::InvalidConfig(format!(
            "organisation {org:?} has no worker in this run's roster (names are case-sensitive)"
        )));
    }
    let joined = reader.state().rounds().open_round();
    events(GatherEvent::Joined { organisation: org.clone(), round: joined.0, workers: workers.len() });
    let mut g = Gatherer {
        store,
        run_id,
        options,
        org,
        train,
        reader,
        round: None,
        waiting: BTreeMap::new(),
        refused: HashMap::new(),
        junk: Vec::new(),
    };
    loop {
        match g.pass(events).await {
            Ok(Pass::Ended) => return Ok(()),
            Ok(Pass::Appended) => continue,
            Ok(Pass::Idle) => {}
            Err(e) if e.is_transient() => tracing::warn!(error = %e, "gatherer: trying again after a poll"),
            Err(e) => return Err(e),
        }
        tokio::time::sleep(options.poll).await;
    }
}

impl Gatherer<'_> {
    /// Reads the ledger and the open round's pending folder; appends what is due.
    async fn pass(&mut self, events: &mut (dyn FnMut(GatherEvent) + Send)) -> Result<Pass, TrainerError> {
        let org = self.org.as_str();
        self.reader.poll().await?;
        // A gatherer answers for the open round only: nothing behind the window is asked again.
        let horizon = self.reader.state().horizon();
        self.reader.forget_before(horizon, ledger::Seq(u64::MAX));
        let open = self.reader.state().rounds().open_round();
        if self.round != Some(open) {
            // What the rounds before left (this gatherer's, or one's that stopped before it could
            // delete what it appended).
            clear_rounds_before(&self.store, org, open).await;
            if self.train.is_past_end(open.0) {
                return Ok(Pass::Ended);
            }
            self.waiting.clear();
            self.refused.clear();
            self.round = Some(open);
        }
        let rounds = self.reader.state().rounds();
        if rounds.close(open).is_some() {
            return Ok(Pass::Idle);
        }
        // A close vote means a member's clock passed the round's deadline (or every worker is in):
        // what waits goes out now.
        let voting = rounds.voters().next().is_some();
        let contributed = contributors(&self.reader, open);
        let missing: BTreeSet<PublicKey> =
            organisation_workers(&self.reader, org).into_iter().filter(|k| !contributed.contains(k)).collect();
        // Whom the slot waits for: the missing workers that contributed to the round before, when
        // this gatherer holds it and some did. A worker that stopped (offline, excluded) then
        // holds the others up for one round, not every round; a new one's entry goes out in a
        // later slot of the round when it comes.
        let before = open.0.checked_sub(1).map(|r| contributors(&self.reader, ledger::Round(r))).unwrap_or_default();
        let awaited: Vec<&PublicKey> = if missing.iter().any(|k| before.contains(k)) {
            missing.iter().filter(|k| before.contains(*k)).collect()
        } else {
            missing.iter().collect()
        };
        self.waiting.retain(|k, _| missing.contains(k));
        if missing.len() > self.waiting.len() {
            self.read_pending(open, &missing, events).await?;
        }
        let oldest = self.waiting.values().map(|w| w.since).min();
        let all_in = awaited.iter().all(|k| self.waiting.contains_key(*k));
        let due = oldest.is_some_and(|t| all_in || voting || t.elapsed() >= self.options.window);
        if !due {
            return Ok(Pass::Idle);
        }
        let waited_ms = oldest.map_or(0, |t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        let mut taken: Vec<Waiting> = std::mem::take(&mut self.waiting).into_values().collect();
        taken.sort_by(|a, b| (a.since, a.modified_ms, &a.key).cmp(&(b.since, b.modified_ms, &b.key)));
        let keys: Vec<String> = taken.iter().map(|w| w.key.clone()).collect();
        let mut appender = Appender::starting_at(self.store.clone(), self.reader.next_seq());
        for slot in into_slots(taken.into_iter().map(|w| w.entry).collect()) {
            let seq = appender.append(&slot).await?;
            crate::crashpoint::reached("gather:appended");
            events(GatherEvent::Appended { round: open.0, seq: seq.0, entries: slot.len(), waited_ms });
        }
        delete_all(&self.store, keys).await;
        Ok(Pass::Appended)
    }

    /// Lists the round's pending folder and reads, [`PARALLEL_READS`] at a time, the objects named
    /// for `missing` workers not read yet. Deletes what no worker of the round would write there
    /// (other names, workers already in the ledger), so junk does not outlive one listing.
    async fn read_pending(
        &mut self,
        open: ledger::Round,
        missing: &BTreeSet<PublicKey>,
        events: &mut (dyn FnMut(GatherEvent) + Send),
    ) -> Result<(), TrainerError> {
        let prefix = pending_prefix(&self.org, open);
        let mut to_read = Vec::new();
        for object in self.store.list_at_most(&prefix, None, MAX_PENDING_LISTED).await? {
            let name = object.key.get(prefix.len()..).unwrap_or_default();
            // Only the canonical name (lowercase hex) of a worker still missing is read.
            let signer = name.parse::<PublicKey>().ok().filter(|k| k.to_string() == name);
            match signer {
                Some(k) if missing.contains(&k) => {
                    let seen = self.refused.get(&object.key) == Some(&(object.size, object.e_tag.clone()));
                    if !self.waiting.contains_key(&k) && !seen {
                        to_read.push((k, object));
                    }
                }
                Some(k) if self.reader.state().organisation(&k) == Some(self.org.as_str()) => {
                    // Its worker's contribution is in the ledger: what it left is done with.
                    self.junk.push(object.key);
                }
                _ => {
                    self.refuse(object, PendingRefused::NotAWorker, events);
                }
            }
        }
        for batch in to_read.chunks(PARALLEL_READS) {
            let mut reads = tokio::task::JoinSet::new();
            for (signer, object) in batch.iter().cloned() {
                let store = self.store.clone();
                reads.spawn(async move {
                    let got = store.get(&object.key, u64::from(ledger::entry::MAX_ENTRY_BYTES)).await;
                    (signer, object, got)
                });
            }
            while let Some(joined) = reads.join_next().await {
                let Ok((signer, object, got)) = joined else { continue };
                let checked = match got {
                    Ok(got) => check_pending(&got.bytes, self.run_id, open, &signer),
                    Err(storage::StoreError::TooLarge { size, limit, .. }) => {
                        Err(PendingRefused::TooLarge { size, limit })
                    }
                    // Gone between the listing and the read (its worker appended it itself), or
                    // the store is briefly away: the next pass lists it again.
                    Err(storage::StoreError::NotFound { .. } | storage::StoreError::Unavailable { .. }) => continue,
                    Err(e) => Err(PendingRefused::Unreadable(e.to_string())),
                };
                match checked {
                    Ok(entry) => {
                        let (key, modified_ms) = (object.key, object.modified_ms);
                        self.waiting.insert(signer, Waiting { entry, key, since: Instant::now(), modified_ms });
                    }
                    Err(why) => self.refuse(object, why, events),
                }
            }
        }
        delete_all(&self.store, std::mem::take(&mut self.junk)).await;
        Ok(())
    }

    /// Leaves `object` out for this round unless it changes (a name no worker writes: deleted).
    fn refuse(
        &mut self,
        object: storage::ObjectInfo,
        why: PendingRefused,
        events: &mut (dyn FnMut(GatherEvent) + Send),
    ) {
        if why == PendingRefused::NotAWorker {
            self.junk.push(object.key.clone());
        } else {
            self.refused.insert(object.key.clone(), (object.size, object.e_tag));
        }
        events(GatherEvent::Refused { key: object.key, why });
    }
}

/// The signers of the accepted contributions to `round`, as `reader` holds it.
fn contribution_signers(reader: &Reader, round: ledger::Round) -> impl Iterator<Item = PublicKey> + '_ {
    reader
        .by_round(round)
        .filter_map(|e| e.entry.as_ref())
        .filter(|x| matches!(x.body, Body::Contribution(_)))
        .map(Entry::signer)
}

/// [`contribution_signers`] as a set.
fn contributors(reader: &Reader, round: ledger::Round) -> HashSet<PublicKey> {
    contribution_signers(reader, round).collect()
}

/// The workers of `organisation` in the roster as read so far.
pub fn organisation_workers(reader: &Reader, organisation: &str) -> Vec<PublicKey> {
    reader
        .state()
        .roster()
        .values()
        .filter(|m| m.role == Role::Worker && m.organisation == organisation)
        .map(|m| m.key)
        .collect()
}

/// Whether the log, as `reader` holds it, has an accepted contribution to `round` signed by `key`
/// (another would be void).
pub fn has_contribution(reader: &Reader, key: &PublicKey, round: ledger::Round) -> bool {
    contribution_signers(reader, round).any(|k| k == *key)
}

/// Deletes the pending objects of `organisation`'s rounds before `round`, as far as one listing
/// reaches.
async fn clear_rounds_before(store: &Store, organisation: &str, round: ledger::Round) {
    let folder = pending_folder(organisation);
    match store.list_at_most(&folder, None, MAX_PENDING_LISTED).await {
        Ok(objects) => {
            let before = |key: &str| {
                let of = key.strip_prefix(&folder).and_then(|k| k.split('/').next()?.parse::<u64>().ok());
                of.is_some_and(|r| r < round.0)
            };
            delete_all(store, objects.into_iter().map(|o| o.key).filter(|k| before(k)).collect()).await;
        }
        Err(e) => tracing::warn!(folder, error = %e, "could not list the pending folder to clear it"),
    }
}

/// Deletes `keys`, [`PARALLEL_READS`] at a time, logging failures.
async fn delete_all(store: &Store, keys: Vec<String>) {
    for batch in keys.chunks(PARALLEL_READS) {
        let mut deletes = tokio::task::JoinSet::new();
        for key in batch {
            let (store, key) = (store.clone(), key.clone());
            deletes.spawn(async move { delete_quietly(&store, &key).await });
        }
        while deletes.join_next().await.is_some() {}
    }
}

/// Deletes `key`, logging a failure: a pending object left behind costs storage, nothing else.
async fn delete_quietly(store: &Store, key: &str) {
    if let Err(e) = store.delete(key).await {
        tracing::warn!(key, error = %e, "could not delete a pending object");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::{BlobId, Contribution, Keypair};

    fn contribution(run: RunId, round: u64, key: &Keypair, metrics: usize) -> Entry {
        let body = Body::Contribution(Contribution {
            round: ledger::Round(round),
            base_state: ledger::StateHash([1; 32]),
            assignment: vec![0; 8],
            blob: BlobId([2; 32]),
            blob_size: 10,
            metrics: (0..metrics).map(|i| (format!("m{i:02}"), i as i64)).collect(),
        });
        Entry::sign(run, body, &[key]).unwrap()
    }

    #[test]
    fn a_pending_contribution_is_taken_only_as_its_signers_to_its_round_in_its_run() {
        let (run, other_run) = (RunId([7; 32]), RunId([8; 32]));
        let (key, other) = (Keypair::generate(), Keypair::generate());
        let round = ledger::Round(3);
        let good = contribution(run, 3, &key, 2);
        assert_eq!(check_pending(&good.encode(), run, round, &key.public()), Ok(good.clone()));
        // Each way the object can be wrong, and the reason given.
        let cases: Vec<(Vec<u8>, PendingRefused)> = vec![
            (contribution(other_run, 3, &key, 2).encode(), PendingRefused::OtherRun),
            (good.encode(), PendingRefused::Signer { expected: other.public() }),
            (contribution(run, 4, &key, 2).encode(), PendingRefused::NotTheRound { expected: 3 }),
            (
                Entry::sign(run, ledger::Body::CloseVote(ledger::CloseVote { round, seen: ledger::Seq(1) }), &[&key])
                    .unwrap()
                    .encode(),
                PendingRefused::NotTheRound { expected: 3 },
            ),
        ];
        for (bytes, why) in cases {
            let signer = match why {
                PendingRefused::Signer { .. } => other.public(),
                _ => key.public(),
            };
            assert_eq!(check_pending(&bytes, run, round, &signer), Err(why));
        }
        // A flipped signature byte, two signatures, garbage, and too many bytes.
        let mut forged = good.clone();
        forged.signatures[0].signature.0[0] ^= 1;
        assert!(matches!(
            check_pending(&forged.encode(), run, round, &key.public()),
            Err(PendingRefused::Signer { .. })
        ));
        let mut cosigned = good.clone();
        cosigned.cosign(&other).unwrap();
        assert!(matches!(
            check_pending(&cosigned.encode(), run, round, &key.public()),
            Err(PendingRefused::Signer { .. })
        ));
        assert!(matches!(check_pending(b"junk", run, round, &key.public()), Err(PendingRefused::Decode(_))));
        let huge = vec![0u8; ledger::entry::MAX_ENTRY_BYTES as usize + 1];
        assert_eq!(
            check_pending(&huge, run, round, &key.public()),
            Err(PendingRefused::TooLarge { size: huge.len() as u64, limit: u64::from(ledger::entry::MAX_ENTRY_BYTES) })
        );
    }

    #[test]
    fn entries_are_split_into_slots_within_the_slot_limits_in_order() {
        let run = RunId([7; 32]);
        let key = Keypair::generate();
        // 600 small entries: 256 + 256 + 88 (the count limit).
        let small: Vec<Entry> = (0..600).map(|r| contribution(run, r, &key, 0)).collect();
        let slots = into_slots(small.clone());
        assert_eq!(slots.iter().map(Vec::len).collect::<Vec<_>>(), [256, 256, 88]);
        assert_eq!(slots.concat(), small, "in order, none lost");
        for slot in &slots {
            ledger::slot::encode_entries(slot).unwrap();
        }
        // The largest contribution the format allows still fits 256 to a slot.
        let mut largest = contribution(run, 0, &key, ledger::entry::MAX_METRICS as usize);
        if let Body::Contribution(c) = &mut largest.body {
            c.assignment = vec![0; ledger::entry::MAX_ASSIGNMENT_BYTES as usize];
            for (i, (name, _)) in c.metrics.iter_mut().enumerate() {
                *name = format!("{i:0>width$}", width = ledger::entry::MAX_METRIC_NAME_BYTES as usize);
            }
        }
        let full = vec![largest; 256];
        ledger::slot::encode_entries(&into_slots(full)[0]).unwrap();
        assert!(into_slots(Vec::new()).is_empty());
    }
}
