//! `cairn bench ledger URL`: appends, replay with signature verification, and Merkle proofs.
//!
//! In a fresh prefix of the store (`bench-ledger-<random>/`): a genesis, then
//! - `appends` single-entry slots by one appender, and as many by 16 appenders racing, against
//!   the baseline of the same number of raw put-if-absent writes to fresh keys (no head search,
//!   no contention): the storage floor;
//! - `verify_entries` contributions in batches of 256 per slot, replayed by a fresh reader
//!   (read, frame, decode, batch signature check per slot, validity rule, Merkle leaves, index),
//!   against the baseline of the rule's ZIP-215 signature check alone, one signature at a time,
//!   over the same signatures on one core; the rule alone (no store; single and batched checks),
//!   ZIP-215 batch verification and the former rule's `verify_strict` are printed for reference;
//! - inclusion proofs for random slots of the replayed log.

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use ledger::{Appender, BlobId, Body, Contribution, Entry, Genesis, Keypair, Member, Reader, Role, Round, RunId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Outcome;
use crate::store_cmd::absolute_url;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Store URL: file:///abs/dir, s3://bucket/prefix, memory://
    url: String,
    /// Single-entry appends measured for each of 1 and 16 appenders.
    #[arg(long, default_value_t = 480)]
    appends: u64,
    /// Entries written (in batches of 256) and then replayed with signature verification.
    #[arg(long, default_value_t = 20_000)]
    verify_entries: u64,
    /// Inclusion proofs generated.
    #[arg(long, default_value_t = 20_000)]
    proofs: u64,
}

const WORKERS: usize = 16;
const BATCH: usize = 256;

struct Run {
    run_id: RunId,
    admin: Keypair,
    workers: Vec<Keypair>,
}

impl Run {
    fn new(rng: &mut StdRng) -> Run {
        let mut run = Run {
            run_id: RunId([0; 32]),
            admin: Keypair::from_seed(rng.random()),
            workers: (0..WORKERS).map(|_| Keypair::from_seed(rng.random())).collect(),
        };
        run.run_id = run.genesis_body().run_id();
        run
    }

    fn genesis_body(&self) -> Genesis {
        let mut roster = vec![Member { key: self.admin.public(), organisation: "admin".into(), role: Role::Admin }];
        roster.extend(self.workers.iter().enumerate().map(|(i, k)| Member {
            key: k.public(),
            organisation: format!("org-{}", i % 4),
            role: Role::Worker,
        }));
        Genesis::new(vec![], roster, 1, ledger::StateHash([0; 32]), BlobId([0; 32]), 0)
    }

    fn genesis(&self) -> anyhow::Result<Entry> {
        Ok(Entry::sign(self.run_id, Body::Genesis(self.genesis_body()), &[&self.admin])?)
    }

    /// A distinct contribution: `tag` separates the phases, `n` the entries.
    fn contribution(&self, worker: usize, tag: u64, n: u64) -> anyhow::Result<Entry> {
        let c = Contribution {
            round: Round(tag),
            base_state: ledger::StateHash([0; 32]),
            assignment: n.to_be_bytes().to_vec(),
            blob: BlobId::of(&[tag.to_be_bytes(), n.to_be_bytes()].concat()),
            blob_size: 1 << 20,
            metrics: vec![("loss_milli".into(), 2400)],
        };
        Ok(Entry::sign(self.run_id, Body::Contribution(c), &[&self.workers[worker % WORKERS]])?)
    }
}

fn per_s(count: u64, secs: f64) -> f64 {
    count as f64 / secs.max(1e-9)
}

async fn appends(store: &storage::Store, run: &Run, appenders: usize, total: u64, tag: u64) -> anyhow::Result<f64> {
    let per = total / appenders as u64;
    let mut entries = Vec::with_capacity(appenders);
    for a in 0..appenders {
        // Bodies differ across appenders too: the same body signed by two workers is a duplicate.
        let first = a as u64 * per;
        entries.push((first..first + per).map(|n| run.contribution(a, tag, n)).collect::<anyhow::Result<Vec<_>>>()?);
    }
    let t = Instant::now();
    let tasks: Vec<_> = entries
        .into_iter()
        .map(|mine| {
            let mut appender = Appender::new(store.clone());
            tokio::spawn(async move {
                for e in mine {
                    appender.append(std::slice::from_ref(&e)).await?;
                }
                Ok::<_, ledger::LedgerError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.context("appender task")?.context("append")?;
    }
    Ok(per_s(per * appenders as u64, t.elapsed().as_secs_f64()))
}

pub async fn run(args: Args) -> anyhow::Result<Outcome> {
    let url = absolute_url(&args.url)?;
    let root = storage::open(&url).await.with_context(|| format!("opening {url}"))?;
    let prefix = format!("bench-ledger-{:016x}", rand::random::<u64>());
    let store = root.scoped(&prefix)?;
    let mut rng = StdRng::seed_from_u64(7);
    let run = Run::new(&mut rng);
    Appender::new(store.clone()).append(&[run.genesis()?]).await.context("genesis")?;
    println!("store {url}, prefix {prefix}/");

    // Appends, against raw put-if-absent writes of a slot-sized object to fresh keys.
    let slot = ledger::slot::encode_entries(&[run.contribution(0, 99, 0)?])?;
    let t = Instant::now();
    for i in 0..args.appends {
        store.put_if_absent(&format!("raw/{i:020}"), slot.clone()).await.context("raw put")?;
    }
    let raw_puts_per_s = per_s(args.appends, t.elapsed().as_secs_f64());
    let appends_1 = appends(&store, &run, 1, args.appends, 1).await?;
    let appends_16 = appends(&store, &run, 16, args.appends, 2).await?;
    println!(
        "appends: 1 appender {appends_1:.0}/s, 16 appenders {appends_16:.0}/s; raw put-if-absent {raw_puts_per_s:.0}/s"
    );

    // Entries for the replay, written as full batches.
    let entries: Vec<Entry> =
        (0..args.verify_entries).map(|n| run.contribution(n as usize, 3, n)).collect::<anyhow::Result<_>>()?;
    let mut appender = Appender::new(store.clone());
    for chunk in entries.chunks(BATCH) {
        appender.append(chunk).await.context("append batch")?;
    }

    // Replay: everything a reader does, from the store.
    let t = Instant::now();
    let reader = Reader::replay(store.clone(), run.run_id).await.context("replay")?;
    let replay_secs = t.elapsed().as_secs_f64();
    let replayed = reader.entries().len() as u64;
    let void = reader.entries().iter().filter(|e| !e.validity.is_accept()).count();
    anyhow::ensure!(void == 0, "{void} of {replayed} entries are void in the benchmark's own log");
    let verify_per_s = per_s(replayed, replay_secs);

    // The validity rule alone over the same raw entries, without the store: signatures checked one
    // by one, and a slot's worth at a time as one batch (what the reader does).
    let raws: Vec<(ledger::EntryPos, Bytes)> = reader.entries().iter().map(|e| (e.pos, e.bytes.clone())).collect();
    let t = Instant::now();
    let mut state = ledger::LedgerState::new(run.run_id);
    for (pos, bytes) in &raws {
        state.apply(ledger::RawEntry { pos: *pos, bytes });
    }
    let rule_per_s = per_s(raws.len() as u64, t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut state = ledger::LedgerState::new(run.run_id);
    for chunk in raws.chunks(BATCH) {
        let slot: Vec<&[u8]> = chunk.iter().map(|(_, b)| b.as_ref()).collect();
        for ((pos, _), checked) in chunk.iter().zip(ledger::Checked::batch(&slot)) {
            state.apply_checked(*pos, checked);
        }
    }
    let rule_batch_per_s = per_s(raws.len() as u64, t.elapsed().as_secs_f64());

    // Baselines over the same signatures: the rule's ZIP-215 check one by one (the baseline) and
    // as batches of one slot, and the former rule, ed25519-dalek's `verify_strict`, for reference.
    let signed: Vec<(ledger::PublicKey, Vec<u8>, ledger::Signature)> = reader
        .entries()
        .iter()
        .filter_map(|e| e.entry.as_ref())
        .flat_map(|e| {
            let message = e.signed_message();
            e.signatures.iter().map(move |s| (s.key, message.clone(), s.signature))
        })
        .collect();
    let domain = ledger::key::ENTRY_DOMAIN;
    let t = Instant::now();
    let single_ok = signed.iter().filter(|(k, m, s)| ledger::key::verify(k, domain, m, s)).count();
    let single_per_s = per_s(signed.len() as u64, t.elapsed().as_secs_f64());
    anyhow::ensure!(single_ok == signed.len(), "baseline: {} signatures failed", signed.len() - single_ok);
    let t = Instant::now();
    let mut batch_ok = 0;
    for chunk in signed.chunks(BATCH) {
        let items: Vec<ledger::key::SignedItem<'_>> =
            chunk.iter().map(|(key, message, signature)| ledger::key::SignedItem { key, message, signature }).collect();
        batch_ok += ledger::key::verify_batch(domain, &items).into_iter().filter(|ok| *ok).count();
    }
    let batch_per_s = per_s(signed.len() as u64, t.elapsed().as_secs_f64());
    anyhow::ensure!(batch_ok == signed.len(), "batch baseline: {} signatures failed", signed.len() - batch_ok);
    let t = Instant::now();
    let strict_ok = signed
        .iter()
        .filter(|(k, m, s)| {
            let mut full = domain.to_vec();
            full.extend_from_slice(m);
            ed25519_dalek::VerifyingKey::from_bytes(&k.0)
                .is_ok_and(|vk| vk.verify_strict(&full, &ed25519_dalek::Signature::from_bytes(&s.0)).is_ok())
        })
        .count();
    let strict_per_s = per_s(signed.len() as u64, t.elapsed().as_secs_f64());
    anyhow::ensure!(strict_ok == signed.len(), "strict reference: {} signatures failed", signed.len() - strict_ok);
    println!(
        "replay: {replayed} entries in {} slots, {verify_per_s:.0} entries/s (rule alone {rule_per_s:.0}/s \
         single, {rule_batch_per_s:.0}/s batched); ed25519 ZIP-215 single {single_per_s:.0}/s, \
         batch of {BATCH} {batch_per_s:.0}/s; former rule verify_strict {strict_per_s:.0}/s",
        reader.next_seq().0
    );

    // Inclusion proofs for random slots of the whole log.
    let size = reader.next_seq().0;
    let t = Instant::now();
    let mut path_hashes = 0usize;
    for _ in 0..args.proofs {
        let seq = ledger::Seq(rng.random_range(0..size));
        path_hashes += reader.inclusion_proof(seq, size).context("proof")?.len();
    }
    let proofs_per_s = per_s(args.proofs, t.elapsed().as_secs_f64());
    let t = Instant::now();
    let root_hash = reader.root_at(size).context("root")?;
    let root_secs = t.elapsed().as_secs_f64();
    println!(
        "proofs: {proofs_per_s:.0}/s over {size} slots ({:.1} hashes each); root {root_hash} in {:.3} ms",
        path_hashes as f64 / args.proofs.max(1) as f64,
        root_secs * 1e3
    );

    println!(
        "bench ledger: appends_per_s_1={appends_1:.0} appends_per_s_16={appends_16:.0} \
         appends_ratio_1_vs_raw_put={:.3} verify_entries_per_s={verify_per_s:.0} \
         verify_ratio_vs_zip215_single={:.3} zip215_single_per_s={single_per_s:.0} \
         zip215_batch_per_s={batch_per_s:.0} verify_ratio_vs_strict_ed25519={:.3} \
         strict_ed25519_per_s={strict_per_s:.0} proofs_per_s={proofs_per_s:.0}",
        appends_1 / raw_puts_per_s,
        verify_per_s / single_per_s,
        verify_per_s / strict_per_s
    );
    Ok(Outcome::Ok)
}
