//! A small run to test with: keys, a genesis, and entry factories.

use ledger::{
    Attestation, BlobId, Body, CloseVote, Contribution, Entry, EntryPos, Genesis, Keypair, Member, Role, Round, RunId,
    Seq, StateHash, Verdict,
};
use storage::Store;

/// The members of a test run, from fixed seeds.
pub struct TestRun {
    /// Derived from the genesis body ([`Genesis::run_id`]).
    pub run_id: RunId,
    /// The run's organisation quorum.
    pub org_quorum: u16,
    pub admins: Vec<Keypair>,
    pub workers: Vec<Keypair>,
    pub validator: Keypair,
}

impl TestRun {
    pub fn new(workers: usize) -> TestRun {
        TestRun::with_org_quorum(workers, 1)
    }

    /// A run whose rounds need `org_quorum` organisations.
    pub fn with_org_quorum(workers: usize, org_quorum: u16) -> TestRun {
        let key = |tag: u8, i: usize| {
            let mut seed = [tag; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            Keypair::from_seed(seed)
        };
        let mut run = TestRun {
            run_id: RunId([0; 32]),
            org_quorum,
            admins: (0..3).map(|i| key(1, i)).collect(),
            workers: (0..workers).map(|i| key(2, i)).collect(),
            validator: key(3, 0),
        };
        run.run_id = run.genesis_body().run_id();
        run
    }

    /// Genesis: 3 admins (quorum 2), the workers, one validator.
    pub fn genesis(&self) -> Entry {
        Entry::sign(self.run_id, Body::Genesis(self.genesis_body()), &[&self.admins[0]]).unwrap()
    }

    /// The genesis body: admins in organisations admin-org-0..2, worker i in org-(i % 4), the
    /// validator in `audit`.
    pub fn genesis_body(&self) -> Genesis {
        let mut roster: Vec<Member> = self
            .admins
            .iter()
            .enumerate()
            .map(|(i, k)| Member { key: k.public(), organisation: format!("admin-org-{i}"), role: Role::Admin })
            .collect();
        roster.extend(self.workers.iter().enumerate().map(|(i, k)| Member {
            key: k.public(),
            organisation: format!("org-{}", i % 4),
            role: Role::Worker,
        }));
        roster.push(Member { key: self.validator.public(), organisation: "audit".into(), role: Role::Validator });
        let g = Genesis::new(b"{\"model\":\"tiny\"}".to_vec(), roster, 2, StateHash([1; 32]), BlobId([2; 32]), 1234);
        Genesis { org_quorum: self.org_quorum, salt: [0x5a; 16], ..g }
    }

    /// A unique contribution by worker `w`, number `n`, in `round`.
    pub fn contribution(&self, w: usize, round: u64, n: u64) -> Entry {
        let c = Contribution {
            round: Round(round),
            base_state: StateHash([round as u8; 32]),
            assignment: n.to_be_bytes().to_vec(),
            blob: BlobId::of(format!("update {w} {round} {n}").as_bytes()),
            blob_size: 1000 + n,
            metrics: vec![("loss_milli".into(), 2400 - n as i64), ("tokens".into(), 4096)],
        };
        Entry::sign(self.run_id, Body::Contribution(c), &[&self.workers[w]]).unwrap()
    }

    pub fn verdict(&self, round: u64, blob: BlobId, score: i64) -> Entry {
        let v = Verdict { round: Round(round), target: ledger::Target::Blob(blob), score };
        Entry::sign(self.run_id, Body::Verdict(v), &[&self.validator]).unwrap()
    }

    /// The validator's vote to close `round`, having read nothing (a cut at slot 0).
    pub fn close(&self, round: u64) -> Entry {
        self.vote(&self.validator, round, 0)
    }

    /// `key`'s vote to close `round`, having read the slots below `seen`.
    pub fn vote(&self, key: &Keypair, round: u64, seen: u64) -> Entry {
        let v = CloseVote { round: Round(round), seen: Seq(seen) };
        Entry::sign(self.run_id, Body::CloseVote(v), &[key]).unwrap()
    }

    /// `key`'s attestation that `round` ends in state `[state; 32]`, dropping `dropped`.
    pub fn attest(&self, key: &Keypair, round: u64, state: u8, dropped: Vec<EntryPos>) -> Entry {
        let a = Attestation { round: Round(round), state: StateHash([state; 32]), dropped };
        Entry::sign(self.run_id, Body::Attestation(a), &[key]).unwrap()
    }
}

/// A fresh in-memory store, scoped to a run the way the binary scopes it.
pub async fn memory_store() -> Store {
    storage::open("memory://").await.unwrap().scoped("runs/test").unwrap()
}
