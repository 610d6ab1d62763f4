//! The auditor on real signed runs: an honest run passes with the right hash and counts, a wrong
//! claim, an overwritten blob, a rewritten slot under a checkpoint and a corrupt snapshot fail and
//! are named, void and not-counted entries are listed without failing, and gc deletes only what a
//! confirmed snapshot makes unnecessary.

use bytes::Bytes;
use ledger::{Body, Contribution, Entry, Reader, Seq};
use verify::audit::{
    AuditOptions, AuditProgress, AuditReport, CheckpointStatus, StartPoint, audit, collect_garbage, plan_gc,
};
use verify::{Round, StateHash, aggregate};

use crate::run::{TestRun, run_config, three_rounds};

/// Uploads `blob_state` and appends, signed by `signer`, a Snapshot of `round` claiming `claimed`.
async fn append_snapshot(
    run: &mut TestRun,
    round: u64,
    blob_state: &verify::State,
    claimed: StateHash,
    signer: &ledger::Keypair,
) -> ledger::EntryPos {
    let bytes = Bytes::from(blob_state.to_safetensors().unwrap());
    let blob_size = bytes.len() as u64;
    let blob = run.store.put_blob(bytes).await.unwrap();
    let state = ledger::StateHash(claimed.0);
    let body = Body::Snapshot(ledger::Snapshot { round: ledger::Round(round), state, blob, blob_size });
    run.append(Entry::sign(run.run, body, &[signer]).unwrap()).await
}

async fn audit_run(run: &TestRun, from_snapshot: bool) -> (AuditReport, Vec<AuditProgress>) {
    let mut seen = Vec::new();
    let options = AuditOptions { from_snapshot, ..AuditOptions::default() };
    let report = audit(&run.store, &options, &mut |p| seen.push(p)).await.unwrap();
    (report, seen)
}

fn org<'a>(report: &'a AuditReport, name: &str) -> &'a verify::audit::OrganisationSummary {
    report.organisations.iter().find(|o| o.organisation.as_deref() == Some(name)).unwrap()
}

#[tokio::test]
async fn an_honest_run_audits_ok_with_its_state_hash_and_counts() {
    let (run, states, closes) = three_rounds(None).await;
    let (report, progress) = audit_run(&run, false).await;
    assert!(report.passed(), "{:?}", report.problems);
    assert_eq!(report.first_problem, None);
    assert_eq!(report.run, run.run.to_string());
    assert_eq!(report.start, StartPoint::Genesis);
    assert_eq!(report.state, states[3].hash().to_hex());
    assert_eq!((report.first_round, report.open_round, report.rounds_replayed), (0, 3, 3));
    // Genesis, 9 + 1 contributions, 3 close votes and 3 attestations, 1 snapshot: one entry per slot.
    assert_eq!((report.slots, report.entries), (18, 18));
    assert_eq!(report.kinds["contribution"].accepted, 10);
    assert_eq!(report.kinds["close_vote"].accepted, 3);
    assert_eq!(report.kinds["attestation"].accepted, 3);
    assert!(report.void_entries.is_empty(), "{:?}", report.void_entries);
    for (i, r) in report.rounds.iter().enumerate() {
        assert_eq!(r.close, closes[i].vote.to_string());
        assert_eq!(r.cut, closes[i].vote.seq.0);
        assert_eq!(r.state, states[i + 1].hash().to_hex());
        assert_eq!(r.counted, 3);
        assert!(r.not_counted.is_empty());
    }
    assert_eq!((org(&report, "alpha").counted, org(&report, "beta").counted), (6, 3));
    assert_eq!(report.checkpoint, CheckpointStatus::Missing { required_organisations: 1 });
    assert_eq!(report.snapshots.len(), 1);
    assert_eq!(report.snapshots[0].blob_ok, Some(true));
    assert!(report.snapshots[0].attested);
    // Progress: the ledger, the checkpoint, the re-read, then one event per round.
    assert_eq!(progress[0], AuditProgress::LedgerRead { slots: 18, entries: 18 });
    assert!(progress.contains(&AuditProgress::ReplayStarted { first: Round(0), rounds: 3 }));
    let rounds: Vec<_> = progress.iter().filter(|p| matches!(p, AuditProgress::RoundReplayed { .. })).collect();
    assert_eq!(rounds.len(), 3);
    assert_eq!(*rounds[2], AuditProgress::RoundReplayed { round: Round(2), done: 3, total: 3 });

    // From the snapshot: only round 2 is replayed, to the same state.
    let (resumed, _) = audit_run(&run, true).await;
    assert!(resumed.passed(), "{:?}", resumed.problems);
    assert!(matches!(resumed.start, StartPoint::Snapshot { round: 1, .. }));
    assert_eq!((resumed.first_round, resumed.rounds_replayed), (2, 1));
    assert_eq!(resumed.state, report.state);

    // The report is one JSON object with the fields the docs name.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["state"], report.state);
    assert_eq!(json["checkpoint"]["status"], "missing");
    assert_eq!(json["start"]["from"], "genesis");
    assert!(json["first_problem"].is_null());
}

#[tokio::test]
async fn a_quorum_attesting_a_wrong_hash_fails_naming_its_round_position_and_signer() {
    let (run, states, closes) = three_rounds(Some(1)).await;
    let (report, _) = audit_run(&run, false).await;
    let problem = report.first_problem.clone().expect("a wrong attested result fails the audit");
    let expected = format!(
        "round 1: the final at {} (signed by {}, organisation beta)",
        closes[1].attestation,
        run.validator.public()
    );
    assert!(problem.starts_with(&expected), "{problem}");
    assert!(problem.contains(&states[2].hash().to_hex()), "{problem}");
    assert_eq!(report.discrepancies.len(), 1);
    assert_eq!(report.discrepancies[0].pos, closes[1].attestation.to_string());
    assert_eq!(report.discrepancies[0].organisation.as_deref(), Some("beta"));
    // The snapshot of round 1 holds the honest state, which is not the attested one: the ledger
    // voids it, so no joiner can start from it.
    assert!(report.snapshots.is_empty());
    assert!(report.void_entries.iter().any(|v| v.reason_kind == "wrong_state"), "{:?}", report.void_entries);
}

#[tokio::test]
async fn a_blob_overwritten_in_the_store_fails_the_audit() {
    let (run, _, _) = three_rounds(None).await;
    let entries = run.entries().await;
    let blob = entries
        .iter()
        .find_map(|e| match e.entry.as_ref().map(|x| &x.body) {
            Some(Body::Contribution(c)) if c.round.0 == 1 => Some(c.blob),
            _ => None,
        })
        .unwrap();
    let size = run.store.head(&blob.key()).await.unwrap().unwrap().size;
    run.store.put(&blob.key(), Bytes::from(vec![0x42; size as usize])).await.unwrap();
    let (report, _) = audit_run(&run, false).await;
    let problem = report.first_problem.expect("an overwritten blob fails the audit");
    assert!(problem.starts_with(&format!("round 1: blob {blob}")), "{problem}");
    assert!(problem.contains("hash"), "{problem}");
    // The replay stops there: it never guesses what the round would have been without it.
    assert_eq!(report.rounds_replayed, 1);
}

#[tokio::test]
async fn void_and_not_counted_entries_are_listed_with_reasons_and_the_audit_passes() {
    let mut run = TestRun::new(run_config(16, 0)).await;
    let h = run.hyper();
    let base = run.initial.clone();
    let mut updates = Vec::new();
    for w in 0..2 {
        updates.push(run.contribute(w, 0, base.hash()).await.1);
    }
    // A forged signature: worker 3's entry with a flipped signature bit.
    let update = run.update(3, 0, base.hash());
    let bytes = update.to_bytes();
    let blob = run.store.put_blob(Bytes::from(bytes.clone())).await.unwrap();
    let body = Body::Contribution(Contribution {
        round: ledger::Round(0),
        base_state: ledger::StateHash(base.hash().0),
        assignment: vec![3],
        blob,
        blob_size: bytes.len() as u64,
        metrics: vec![],
    });
    let mut forged = Entry::sign(run.run, body, &[&run.workers[3]]).unwrap();
    forged.signatures[0].signature.0[0] ^= 1;
    let forged_pos = run.append(forged).await;
    // A stale base: worker 5 trained on another state.
    let stale = run.contribute(5, 0, StateHash([7; 32])).await.0;
    let next = aggregate(&base, Round(0), &updates, &h).unwrap();
    run.close(0, next.hash()).await;
    // A straggler: worker 4 after the close.
    let late = run.contribute(4, 0, base.hash()).await.0;

    let (report, _) = audit_run(&run, false).await;
    assert!(report.passed(), "{:?}", report.problems);
    assert_eq!(report.state, next.hash().to_hex());
    let void: Vec<_> = report.void_entries.iter().map(|v| (v.pos.clone(), v.reason_kind.as_str())).collect();
    assert_eq!(void, [(forged_pos.to_string(), "bad_signature"), (late.to_string(), "round_closed")]);
    assert_eq!(report.void_entries[0].kind.as_deref(), Some("contribution"));
    assert_eq!(report.void_entries[0].signer, Some(run.workers[3].public().to_string()));
    assert!(report.void_entries[0].reason.starts_with("bad signature by"), "{}", report.void_entries[0].reason);
    assert_eq!(report.void_by_reason["bad_signature"], 1);
    let round = &report.rounds[0];
    assert_eq!(round.counted, 2);
    let reasons: Vec<_> = round.not_counted.iter().map(|n| (n.pos.clone(), n.reason_kind.as_str())).collect();
    assert_eq!(
        reasons,
        [(forged_pos.to_string(), "void"), (stale.to_string(), "stale_base"), (late.to_string(), "late")]
    );
    assert!(round.not_counted[1].reason.starts_with("stale base"), "{}", round.not_counted[1].reason);
    // Workers 3 and 5 are beta, 4 is alpha; the forged and late entries are void.
    assert_eq!((org(&report, "beta").counted, org(&report, "beta").not_counted, org(&report, "beta").void), (1, 2, 1));
    assert_eq!(
        (org(&report, "alpha").counted, org(&report, "alpha").not_counted, org(&report, "alpha").void),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn a_checkpoint_is_verified_and_a_slot_rewritten_under_it_fails() {
    let (run, _, _) = three_rounds(None).await;
    let mut reader = Reader::replay(run.store.clone(), run.run).await.unwrap();
    let size = reader.leaves().len() as u64;
    let cp = reader.publish_checkpoint(&run.admin, size).await.unwrap();
    let (report, _) = audit_run(&run, false).await;
    assert!(report.passed(), "{:?}", report.problems);
    let CheckpointStatus::Verified { size, signers, organisations, .. } = &report.checkpoint else {
        panic!("{:?}", report.checkpoint)
    };
    assert_eq!((*size, signers.clone()), (cp.checkpoint.size, vec![run.admin.public().to_string()]));
    assert_eq!(organisations, &vec!["alpha".to_string()]);
    let witness = report.witness.clone();
    assert_eq!(witness.as_ref().map(|w| w.leaves.len() as u64), Some(cp.checkpoint.size));

    // A member with write access rewrites slot 2 (a contribution) with another valid entry.
    let body = Body::Contribution(Contribution {
        round: ledger::Round(0),
        base_state: ledger::StateHash(run.initial.hash().0),
        assignment: vec![],
        blob: ledger::BlobId([1; 32]),
        blob_size: 10,
        metrics: vec![],
    });
    let entry = Entry::sign(run.run, body, &[&run.workers[1]]).unwrap();
    let slot = ledger::slot::encode_entries(&[entry]).unwrap();
    run.store.put(&ledger::log::seq_key(Seq(2)), slot).await.unwrap();
    let (report, _) = audit_run(&run, false).await;
    let problem = report.first_problem.clone().expect("a rewritten slot fails the audit");
    assert!(problem.starts_with("checkpoint:"), "{problem}");
    assert!(matches!(report.checkpoint, CheckpointStatus::Bad { .. }));

    // An auditor that kept the witness of its last audit names the slot.
    let options = AuditOptions { witness: witness.clone(), ..AuditOptions::default() };
    let report = audit(&run.store, &options, &mut |_| {}).await.unwrap();
    let problem = report.first_problem.expect("a rewritten slot fails the audit");
    assert!(problem.starts_with("ledger: slot 2 was rewritten"), "{problem}");
}

#[tokio::test]
async fn a_snapshot_whose_blob_is_not_its_state_is_named_and_skipped() {
    let (mut run, states, _) = three_rounds(None).await;
    // A second snapshot of round 2 whose blob holds round 1's state but claims round 2's hash.
    let admin = run.admin.clone();
    let pos = append_snapshot(&mut run, 2, &states[2], states[3].hash(), &admin).await;
    let (report, _) = audit_run(&run, false).await;
    // Any member can publish such a snapshot: it is named with its publisher, not a failure.
    assert!(report.passed(), "{:?}", report.problems);
    let note =
        report.notes.iter().find(|n| n.starts_with(&format!("snapshot at {pos} (round 2) by {}", run.admin.public())));
    assert!(note.is_some_and(|n| n.contains("its blob holds state")), "{:?}", report.notes);
    let bad = report.snapshots.iter().find(|s| s.pos == pos.to_string()).unwrap();
    assert_eq!(bad.blob_ok, Some(false));
    // A --from-snapshot audit skips it for the good one of round 1, and says so.
    let (resumed, _) = audit_run(&run, true).await;
    assert!(resumed.passed(), "{:?}", resumed.problems);
    assert!(matches!(resumed.start, StartPoint::Snapshot { round: 1, .. }), "{:?}", resumed.start);
    assert!(resumed.notes.iter().any(|n| n.contains("skipped for an older start")), "{:?}", resumed.notes);
}

#[tokio::test]
async fn gc_deletes_only_update_blobs_behind_a_confirmed_snapshot() {
    let (mut run, states, _) = three_rounds(None).await;
    let blobs_before = run.store.list("blobs/", None).await.unwrap().len();
    // Genesis state, 10 updates, 1 snapshot.
    assert_eq!(blobs_before, 12);
    let plan = plan_gc(&run.store, &AuditOptions::default(), &mut |_| {}).await.unwrap();
    assert_eq!(plan.refused, None);
    assert_eq!(plan.snapshot.as_ref().map(|s| s.1), Some(1));
    // The 6 updates of rounds 0 and 1; the genesis and snapshot blobs are protected.
    assert_eq!(plan.blobs.len(), 6);
    assert!(plan.blobs.iter().all(|b| b.round <= 1));
    assert_eq!(plan.protected, 2 + 4);
    // An organisation had re-published one of them under its mirror: the copy goes with it.
    let copied = plan.blobs[0].blob;
    let bytes = run.store.get_blob(copied, 1 << 30).await.unwrap();
    let mirror = verify::replay::mirror_prefix("beta");
    run.store.put_blob_under(&mirror, bytes.clone()).await.unwrap();
    let mut ticks = 0;
    let done = collect_garbage(&run.store, &plan, &mut |_| ticks += 1).await.unwrap();
    assert_eq!((done.deleted, done.absent, ticks), (7, 0, 6));
    assert_eq!(done.bytes, plan.declared_bytes() + bytes.len() as u64);
    assert_eq!(run.store.list("blobs/", None).await.unwrap().len(), 6);
    assert!(run.store.list("mirrors", None).await.unwrap().is_empty(), "the copy went with its original");

    // After gc: from the snapshot the audit still passes to the same state; from genesis it cannot.
    let (resumed, _) = audit_run(&run, true).await;
    assert!(resumed.passed(), "{:?}", resumed.problems);
    assert_eq!(resumed.state, states[3].hash().to_hex());
    let (full, _) = audit_run(&run, false).await;
    assert!(!full.passed());
    // A second gc from genesis refuses; from the snapshot it finds nothing left to delete.
    let again = plan_gc(&run.store, &AuditOptions::default(), &mut |_| {}).await.unwrap();
    assert!(again.refused.as_deref().unwrap().starts_with("the audit fails"), "{:?}", again.refused);
    assert_eq!(collect_garbage(&run.store, &again, &mut |_| {}).await.unwrap().deleted, 0);
    let options = AuditOptions { from_snapshot: true, ..AuditOptions::default() };
    let again = plan_gc(&run.store, &options, &mut |_| {}).await.unwrap();
    assert_eq!(again.refused, None);
    let done = collect_garbage(&run.store, &again, &mut |_| {}).await.unwrap();
    assert_eq!((done.deleted, done.absent), (0, 6));

    // Issue 16, finding 5: after the gc, a member appends a valid snapshot of an older round
    // (round 0's attested state, in a readable blob). Replay, audit and gc take the newest
    // snapshot by round, not the last one in the ledger, so they still start from round 1.
    let worker = run.workers[0].clone();
    append_snapshot(&mut run, 0, &states[1], states[1].hash(), &worker).await;
    let (resumed, _) = audit_run(&run, true).await;
    assert!(resumed.passed(), "{:?}", resumed.problems);
    assert!(matches!(resumed.start, StartPoint::Snapshot { round: 1, .. }), "{:?}", resumed.start);
    assert_eq!(resumed.state, states[3].hash().to_hex());
    let again = plan_gc(&run.store, &options, &mut |_| {}).await.unwrap();
    assert_eq!((again.refused.as_deref(), again.snapshot.as_ref().map(|s| s.1)), (None, Some(1)));
}

#[tokio::test]
async fn gc_refuses_when_the_audit_fails_or_no_snapshot_is_confirmed() {
    let (run, _, _) = three_rounds(Some(1)).await;
    let plan = plan_gc(&run.store, &AuditOptions::default(), &mut |_| {}).await.unwrap();
    assert!(plan.refused.is_some());
    assert!(plan.blobs.is_empty());

    let mut run = TestRun::new(run_config(16, 0)).await;
    let base = run.initial.clone();
    let update = run.contribute(0, 0, base.hash()).await.1;
    let next = aggregate(&base, Round(0), &[update], &run.hyper()).unwrap();
    run.close(0, next.hash()).await;
    let plan = plan_gc(&run.store, &AuditOptions::default(), &mut |_| {}).await.unwrap();
    assert!(plan.audit.passed(), "{:?}", plan.audit.problems);
    assert_eq!(plan.refused.as_deref(), Some("no snapshot confirmed by the audit: nothing may be deleted"));
    assert_eq!(collect_garbage(&run.store, &plan, &mut |_| {}).await.unwrap().deleted, 0);
}
