//! A small run to test with: keys, a genesis, and entry factories.

use ledger::{
    BlobId, Body, Contribution, Entry, Genesis, Keypair, Member, Role, Round, RoundClose, RunId, StateHash, Verdict,
};
use storage::Store;

/// The members of a test run, from fixed seeds.
pub struct TestRun {
    pub run_id: RunId,
    pub admins: Vec<Keypair>,
    pub workers: Vec<Keypair>,
    pub validator: Keypair,
}

impl TestRun {
    pub fn new(workers: usize) -> TestRun {
        let key = |tag: u8, i: usize| {
            let mut seed = [tag; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            Keypair::from_seed(seed)
        };
        TestRun {
            run_id: RunId([0x5a; 32]),
            admins: (0..3).map(|i| key(1, i)).collect(),
            workers: (0..workers).map(|i| key(2, i)).collect(),
            validator: key(3, 0),
        }
    }

    /// Genesis: 3 admins (quorum 2), the workers, one validator.
    pub fn genesis(&self) -> Entry {
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
        Entry::sign(self.run_id, Body::Genesis(g), &[&self.admins[0]]).unwrap()
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

    pub fn close(&self, round: u64) -> Entry {
        let rc = RoundClose { round: Round(round), state: StateHash([round as u8 + 1; 32]) };
        Entry::sign(self.run_id, Body::RoundClose(rc), &[&self.validator]).unwrap()
    }
}

/// A fresh in-memory store, scoped to a run the way the binary scopes it.
pub async fn memory_store() -> Store {
    storage::open("memory://").await.unwrap().scoped("runs/test").unwrap()
}
