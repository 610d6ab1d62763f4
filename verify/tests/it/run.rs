//! A small real run for the round rule and replay tests: a `memory://` store, a signed Genesis with
//! the run config, real signed entries appended one per slot, real encoded update blobs.

use bytes::Bytes;
use ledger::{
    Appender, Attestation, BlobId, Body, CloseVote, Contribution, Entry, EntryPos, Genesis, Keypair, LoggedEntry,
    Member, Reader, Role, Seq, Snapshot, Target, Verdict, write_genesis,
};
use rand_chacha::ChaCha8Rng;
use storage::Store;
use verify::config::{ExclusionRules, RoundRules};
use verify::{
    Compression, Header, Hyper, Layout, NormClip, Ratio, Round, RunConfig, RunId, Schedule, State, StateHash, Update,
    ValueEncoding, WorkerKey, aggregate, encode,
};

use crate::common::{random_state, rng, spec};

pub const WORKERS: usize = 8;

pub fn tiny_layout() -> Layout {
    Layout::new(vec![spec("w", &[8, 12]), spec("b", &[5])]).unwrap()
}

pub fn run_config(max_contributions: u32, max_failures: u32) -> RunConfig {
    RunConfig {
        layout: tiny_layout(),
        hyper: Hyper {
            compression: Compression::uniform(4, 3, ValueEncoding::Bf16),
            schedule: Schedule::Constant { lr: Ratio::new(1, 100) },
            weight_decay: Ratio::new(1, 10),
            clip: NormClip::Median,
            step: verify::StepRule::Sign,
        },
        rounds: RoundRules { min_contributions: 2, max_contributions, overlap: false },
        exclusion: ExclusionRules::absolute(0, max_failures),
        extra: b"preset=tiny".to_vec(),
    }
}

pub struct TestRun {
    pub store: Store,
    pub run: ledger::RunId,
    pub config: RunConfig,
    pub admin: Keypair,
    pub workers: Vec<Keypair>,
    pub validator: Keypair,
    pub appender: Appender,
    /// Slots written so far (the next entry lands here).
    pub slots: u64,
    pub initial: State,
    pub rng: ChaCha8Rng,
}

/// Where a round closed and was made final (an organisation quorum of 1: the validator's vote and
/// attestation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The close vote.
    pub vote: EntryPos,
    /// The attestation that made the result final.
    pub attestation: EntryPos,
}

fn org(i: usize) -> String {
    if i.is_multiple_of(2) { "alpha".into() } else { "beta".into() }
}

impl TestRun {
    pub async fn new(config: RunConfig) -> TestRun {
        let store = storage::testing::memory_store().await;
        let admin = Keypair::from_seed([1; 32]);
        let validator = Keypair::from_seed([2; 32]);
        let workers: Vec<Keypair> = (0..WORKERS).map(|i| Keypair::from_seed([10 + i as u8; 32])).collect();
        let mut roster = vec![
            Member { key: admin.public(), organisation: "alpha".into(), role: Role::Admin },
            Member { key: validator.public(), organisation: "beta".into(), role: Role::Validator },
        ];
        for (i, w) in workers.iter().enumerate() {
            roster.push(Member { key: w.public(), organisation: org(i), role: Role::Worker });
        }
        let mut rng = rng(99);
        let initial = random_state(&config.layout, &mut rng, 0.5);
        let snapshot = Bytes::from(initial.to_safetensors().unwrap());
        let size = snapshot.len() as u64;
        let blob = store.put_blob(snapshot).await.unwrap();
        let genesis =
            Genesis::new(config.encode().unwrap(), roster, 1, ledger::StateHash(initial.hash().0), blob, size);
        let run = genesis.run_id();
        let entry = Entry::sign(run, Body::Genesis(genesis), &[&admin]).unwrap();
        write_genesis(&store, &entry).await.unwrap();
        let appender = Appender::new(store.clone());
        TestRun { store, run, config, admin, workers, validator, appender, slots: 1, initial, rng }
    }

    pub fn hyper(&self) -> Hyper {
        self.config.hyper
    }

    pub fn worker_key(&self, worker: usize) -> WorkerKey {
        WorkerKey(self.workers[worker].public().0)
    }

    /// Appends one entry as its own slot and returns its position.
    pub async fn append(&mut self, entry: Entry) -> EntryPos {
        let seq = self.appender.append(&[entry]).await.unwrap();
        self.slots = self.slots.max(seq.0 + 1);
        EntryPos { seq, index: 0 }
    }

    /// An honest update of `worker` for `round` from `base`, from a fresh random momentum.
    pub fn update(&mut self, worker: usize, round: u64, base: StateHash) -> Update {
        let momentum = random_state(&self.config.layout, &mut self.rng, 0.01);
        let header = Header {
            run: RunId(self.run.0),
            round: Round(round),
            base,
            worker: self.worker_key(worker),
            layout: self.config.layout.hash(),
            compression: self.config.hyper.compression,
        };
        encode(&momentum, &header).unwrap()
    }

    /// Uploads `blob` and appends `worker`'s Contribution entry naming it, for `round` from `base`.
    pub async fn contribute_bytes(&mut self, worker: usize, round: u64, base: StateHash, blob: Vec<u8>) -> EntryPos {
        let size = blob.len() as u64;
        let id = self.store.put_blob(Bytes::from(blob)).await.unwrap();
        self.contribute_entry(worker, round, base, id, size).await
    }

    /// Appends a Contribution entry naming blob `id` (which may not exist).
    pub async fn contribute_entry(
        &mut self,
        worker: usize,
        round: u64,
        base: StateHash,
        id: BlobId,
        size: u64,
    ) -> EntryPos {
        let body = Body::Contribution(Contribution {
            round: ledger::Round(round),
            base_state: ledger::StateHash(base.0),
            assignment: vec![worker as u8],
            blob: id,
            blob_size: size,
            metrics: vec![("loss_milli".into(), 2400)],
        });
        let entry = Entry::sign(self.run, body, &[&self.workers[worker]]).unwrap();
        self.append(entry).await
    }

    /// An honest contribution: returns its position and its update.
    pub async fn contribute(&mut self, worker: usize, round: u64, base: StateHash) -> (EntryPos, Update) {
        let update = self.update(worker, round, base);
        let pos = self.contribute_bytes(worker, round, base, update.to_bytes()).await;
        (pos, update)
    }

    pub async fn verdict(&mut self, round: u64, target: EntryPos, score: i64) -> EntryPos {
        let body = Body::Verdict(Verdict { round: ledger::Round(round), target: Target::Entry(target), score });
        let entry = Entry::sign(self.run, body, &[&self.validator]).unwrap();
        self.append(entry).await
    }

    /// Closes `round` with everything written so far counted, and makes `claimed` its result.
    pub async fn close(&mut self, round: u64, claimed: StateHash) -> Closed {
        self.close_dropping(round, claimed, Vec::new()).await
    }

    /// [`TestRun::close`], with `dropped` left out as unreadable.
    pub async fn close_dropping(&mut self, round: u64, claimed: StateHash, dropped: Vec<EntryPos>) -> Closed {
        let vote = self.vote(round).await;
        let attestation = self.attest(round, claimed, dropped).await;
        Closed { vote, attestation }
    }

    /// The validator's vote to close `round`, with every slot written so far read.
    pub async fn vote(&mut self, round: u64) -> EntryPos {
        let vote = Body::CloseVote(CloseVote { round: ledger::Round(round), seen: Seq(self.slots) });
        self.append(Entry::sign(self.run, vote, &[&self.validator]).unwrap()).await
    }

    /// The validator's attestation of `round`'s result.
    pub async fn attest(&mut self, round: u64, claimed: StateHash, dropped: Vec<EntryPos>) -> EntryPos {
        let attestation = Body::Attestation(Attestation {
            round: ledger::Round(round),
            state: ledger::StateHash(claimed.0),
            dropped,
        });
        self.append(Entry::sign(self.run, attestation, &[&self.validator]).unwrap()).await
    }

    pub async fn snapshot(&mut self, round: u64, state: &State) -> EntryPos {
        let bytes = Bytes::from(state.to_safetensors().unwrap());
        let size = bytes.len() as u64;
        let blob = self.store.put_blob(bytes).await.unwrap();
        let body = Body::Snapshot(Snapshot {
            round: ledger::Round(round),
            state: ledger::StateHash(state.hash().0),
            blob,
            blob_size: size,
        });
        let entry = Entry::sign(self.run, body, &[&self.admin]).unwrap();
        self.append(entry).await
    }

    /// Every entry of the log, read back by a fresh reader.
    pub async fn entries(&self) -> Vec<LoggedEntry> {
        Reader::replay(self.store.clone(), self.run).await.unwrap().entries().to_vec()
    }
}

/// Three final rounds of three honest workers each (workers 0 and 2 of organisation alpha,
/// worker 1 of beta), a snapshot after round 1, and a fourth, open round with one contribution.
/// Returns the run, the state after each closed round and where each closed and became final.
pub async fn three_rounds(wrong_claim_at: Option<u64>) -> (TestRun, Vec<State>, Vec<Closed>) {
    let mut run = TestRun::new(run_config(16, 0)).await;
    let h = run.hyper();
    let mut states = vec![run.initial.clone()];
    let mut closes = Vec::new();
    for round in 0..3u64 {
        let base = states.last().unwrap().clone();
        let mut updates = Vec::new();
        for w in 0..3 {
            updates.push(run.contribute(w, round, base.hash()).await.1);
        }
        let next = aggregate(&base, Round(round), &updates, &h).unwrap();
        let claim = if wrong_claim_at == Some(round) { StateHash([0xEE; 32]) } else { next.hash() };
        closes.push(run.close(round, claim).await);
        if round == 1 {
            run.snapshot(1, &next).await;
        }
        states.push(next);
    }
    run.contribute(0, 3, states[3].hash()).await;
    (run, states, closes)
}
