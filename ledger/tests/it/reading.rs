//! Replaying and following the log: garbage never stalls it, the validity rule voids what it
//! must, and the index finds entries by round and signer.

use std::time::Duration;

use bytes::Bytes;
use ledger::{
    Appender, Body, Change, Entry, Member, Reader, Role, RosterChange, RunId, Seq, Validity, VoidReason, seq_key,
};

use crate::common::{TestRun, memory_store};

fn void_reason(reader: &Reader, seq: u64) -> Option<VoidReason> {
    let slot = &reader.slots()[seq as usize];
    if let Some(v) = &slot.void {
        return Some(v.clone());
    }
    match &reader.entries()[slot.entries.start].validity {
        Validity::Accept => None,
        Validity::Void(r) => Some(r.clone()),
    }
}

#[tokio::test]
async fn garbage_and_oversized_slots_are_void_and_the_log_moves_on() {
    let run = TestRun::new(1);
    let store = memory_store().await;
    let mut a = Appender::new(store.clone());
    a.append(&[run.genesis()]).await.unwrap();
    store.put_if_absent(&seq_key(Seq(1)), Bytes::from_static(b"not a slot")).await.unwrap();
    let huge = vec![1u8; (ledger::slot::MAX_SLOT_BYTES + 1) as usize];
    store.put_if_absent(&seq_key(Seq(2)), Bytes::from(huge)).await.unwrap();
    assert_eq!(a.append(&[run.contribution(0, 0, 0)]).await.unwrap(), Seq(3));

    let reader = Reader::replay(store, run.run_id).await.unwrap();
    assert_eq!(reader.next_seq(), Seq(4));
    assert!(matches!(void_reason(&reader, 1), Some(VoidReason::MalformedSlot(_))));
    assert!(matches!(void_reason(&reader, 2), Some(VoidReason::MalformedSlot(ledger::DecodeError::TooLong { .. }))));
    assert_eq!(reader.slots()[2].size, ledger::slot::MAX_SLOT_BYTES + 1);
    assert_eq!(void_reason(&reader, 3), None);
}

#[tokio::test]
async fn the_validity_rule_voids_forged_misplaced_and_replayed_entries() {
    let run = TestRun::new(2);
    let store = memory_store().await;
    let mut a = Appender::new(store.clone());
    let mut append = async |e: Entry| a.append(&[e]).await.unwrap();
    append(run.genesis()).await; // 0
    append(run.contribution(0, 0, 0)).await; // 1 ok
    append(run.contribution(0, 0, 0)).await; // 2 duplicate
    let other_run = TestRun { run_id: RunId([0x77; 32]), ..TestRun::new(2) };
    append(other_run.contribution(1, 0, 1)).await; // 3 wrong run
    append(run.genesis()).await; // 4 genesis again
    let as_validator = Entry::sign(run.run_id, run.contribution(0, 0, 5).body, &[&run.validator]).unwrap();
    append(as_validator).await; // 5 wrong role
    let stranger = ledger::Keypair::from_seed([0xcc; 32]);
    append(Entry::sign(run.run_id, run.contribution(0, 0, 6).body, &[&stranger]).unwrap()).await; // 6 unknown
    let mut forged = run.contribution(1, 0, 7);
    forged.signatures[0].signature.0[5] ^= 1;
    append(forged).await; // 7 bad signature
    let blob = match &run.contribution(0, 0, 0).body {
        Body::Contribution(c) => c.blob,
        _ => unreachable!(),
    };
    append(run.verdict(0, blob, 87)).await; // 8 ok
    append(run.verdict(0, ledger::BlobId([9; 32]), 1)).await; // 9 unknown target
    append(run.close(0)).await; // 10 ok
    append(run.close(0)).await; // 11 already closed (a new signature over the same body is a duplicate)
    append(run.contribution(1, 0, 12)).await; // 12 round closed

    let reader = Reader::replay(store, run.run_id).await.unwrap();
    let reasons: Vec<Option<VoidReason>> = (0..13).map(|s| void_reason(&reader, s)).collect();
    assert_eq!(reasons[0], None);
    assert_eq!(reasons[1], None);
    assert_eq!(reasons[2], Some(VoidReason::Duplicate));
    assert_eq!(reasons[3], Some(VoidReason::WrongRun(RunId([0x77; 32]))));
    assert_eq!(reasons[4], Some(VoidReason::GenesisNotFirst));
    assert!(matches!(reasons[5], Some(VoidReason::WrongRole { role: Role::Validator, .. })));
    assert_eq!(reasons[6], Some(VoidReason::UnknownSigner(stranger.public())));
    assert_eq!(reasons[7], Some(VoidReason::BadSignature(run.workers[1].public())));
    assert_eq!(reasons[8], None);
    assert_eq!(reasons[9], Some(VoidReason::UnknownTarget(ledger::Round(0))));
    assert_eq!(reasons[10], None);
    assert_eq!(reasons[11], Some(VoidReason::Duplicate));
    assert_eq!(reasons[12], Some(VoidReason::RoundClosed(ledger::Round(0))));
    assert!(reader.state().rounds().close(ledger::Round(0)).is_some());
}

/// Rounds close and become final only with a quorum of organisations: one organisation, however
/// many members it has and however often it writes, can do neither; votes for rounds other than
/// the open one, second votes of an organisation, snapshots of rounds that are not final or with
/// another state are void.
#[tokio::test]
async fn closes_and_results_need_a_quorum_of_organisations() {
    use ledger::rounds::RoundError;
    let run = TestRun::with_org_quorum(4, 2);
    let store = memory_store().await;
    let mut a = Appender::new(store.clone());
    let mut append = async |e: Entry| a.append(&[e]).await.unwrap();
    let w0 = &run.workers[0];
    append(run.genesis()).await; // 0
    append(run.contribution(0, 0, 0)).await; // 1 org-0
    append(run.contribution(1, 0, 1)).await; // 2 org-1
    append(run.vote(w0, 1, 3)).await; // 3 not the open round
    append(run.vote(w0, 0, 9)).await; // 4 seen past its own slot
    append(run.vote(w0, 0, 3)).await; // 5 org-0 votes: not closed yet
    append(run.vote(&run.workers[1], 0, 6)).await; // 6 org-1 votes: closed, cut = max(3, 6) = 6
    append(run.contribution(2, 0, 2)).await; // 7 round closed
    append(run.vote(&run.workers[2], 0, 7)).await; // 8 already closed
    let snapshot = |state: u8| ledger::Snapshot {
        round: ledger::Round(0),
        state: ledger::StateHash([state; 32]),
        blob: ledger::BlobId([1; 32]),
        blob_size: 1,
    };
    append(Entry::sign(run.run_id, Body::Snapshot(snapshot(7)), &[w0]).unwrap()).await; // 9 not final
    append(run.attest(w0, 0, 7, vec![])).await; // 10 org-0 attests
    append(run.attest(w0, 0, 8, vec![])).await; // 11 org-0 changes its mind (its latest counts)
    append(run.attest(&run.workers[1], 0, 7, vec![])).await; // 12 org-1 agrees with org-0's first: not final
    let stranger_drop = vec![ledger::EntryPos { seq: ledger::Seq(3), index: 0 }];
    append(run.attest(&run.workers[1], 0, 8, stranger_drop)).await; // 13 drops a non-contribution
    append(run.attest(&run.workers[1], 0, 8, vec![])).await; // 14 org-1 agrees with org-0's latest: final
    append(Entry::sign(run.run_id, Body::Snapshot(snapshot(7)), &[w0]).unwrap()).await; // 15 wrong state
    append(Entry::sign(run.run_id, Body::Snapshot(snapshot(8)), &[w0]).unwrap()).await; // 16 ok
    append(run.vote(w0, 1, 17)).await; // 17 round 1 is open now

    let reader = Reader::replay(store, run.run_id).await.unwrap();
    let reasons: Vec<Option<VoidReason>> = (0..18).map(|s| void_reason(&reader, s)).collect();
    let rounds = |e| Some(VoidReason::Rounds(e));
    assert_eq!(reasons[3], rounds(RoundError::NotOpen { round: ledger::Round(1), open: ledger::Round(0) }));
    assert_eq!(reasons[4], rounds(RoundError::SeenAhead { at: ledger::Seq(4), seen: ledger::Seq(9) }));
    assert_eq!(reasons[5], None);
    assert_eq!(reasons[6], None);
    assert_eq!(reasons[7], Some(VoidReason::RoundClosed(ledger::Round(0))));
    assert_eq!(reasons[8], rounds(RoundError::AlreadyClosed(ledger::Round(0))));
    assert_eq!(reasons[9], Some(VoidReason::NotFinal(ledger::Round(0))));
    assert_eq!(reasons[10..13], [None, None, None]);
    assert_eq!(reasons[13], rounds(RoundError::BadDrop(ledger::EntryPos { seq: ledger::Seq(3), index: 0 })));
    assert_eq!(reasons[14], None);
    assert_eq!(reasons[15], Some(VoidReason::WrongState(ledger::Round(0))));
    assert_eq!(reasons[16], None);
    assert_eq!(reasons[17], None);
    let tally = reader.state().rounds();
    assert_eq!(tally.close(ledger::Round(0)).map(|c| (c.pos.seq, c.cut)), Some((ledger::Seq(6), ledger::Seq(6))));
    let result = tally.final_result(ledger::Round(0)).unwrap();
    assert_eq!((result.pos.seq, result.state), (ledger::Seq(14), ledger::StateHash([8; 32])));
    assert_eq!(tally.open_round(), ledger::Round(1));
}

/// Two members of different organisations that write the same body (the same attestation, the
/// same score) each make their own entry: the duplicate check covers the signer too.
#[tokio::test]
async fn the_same_body_from_two_members_is_not_a_duplicate() {
    let run = TestRun::with_org_quorum(2, 2);
    let store = memory_store().await;
    let mut a = Appender::new(store.clone());
    let mut append = async |e: Entry| a.append(&[e]).await.unwrap();
    append(run.genesis()).await; // 0
    append(run.vote(&run.workers[0], 0, 1)).await; // 1
    append(run.vote(&run.workers[1], 0, 1)).await; // 2: same body, another organisation
    append(run.attest(&run.workers[0], 0, 3, vec![])).await; // 3
    append(run.attest(&run.workers[0], 0, 3, vec![])).await; // 4: the same signer again
    append(run.attest(&run.workers[1], 0, 3, vec![])).await; // 5: same body, final
    let reader = Reader::replay(store, run.run_id).await.unwrap();
    let reasons: Vec<Option<VoidReason>> = (0..6).map(|s| void_reason(&reader, s)).collect();
    assert_eq!(reasons, [None, None, None, None, Some(VoidReason::Duplicate), None]);
    assert!(reader.state().rounds().final_result(ledger::Round(0)).is_some());
}

#[tokio::test]
async fn roster_changes_need_a_quorum_of_admins_and_cannot_be_replayed() {
    let run = TestRun::new(1);
    let store = memory_store().await;
    let mut a = Appender::new(store.clone());
    a.append(&[run.genesis()]).await.unwrap();
    let newcomer = ledger::Keypair::from_seed([0xab; 32]);
    let add = |epoch| {
        Body::RosterChange(RosterChange {
            epoch,
            change: Change::Add(Member { key: newcomer.public(), organisation: "newco".into(), role: Role::Worker }),
        })
    };
    let one = Entry::sign(run.run_id, add(0), &[&run.admins[0]]).unwrap();
    let two = Entry::sign(run.run_id, add(0), &[&run.admins[0], &run.admins[1]]).unwrap();
    let worker_signed = Entry::sign(run.run_id, add(0), &[&run.admins[0], &run.workers[0]]).unwrap();
    let contribution = |n| {
        let body = run.contribution(0, 0, n).body;
        Entry::sign(run.run_id, body, &[&newcomer]).unwrap()
    };
    // A different change, signed at epoch 0 but landing after the first one applied.
    let other = ledger::Keypair::from_seed([0xac; 32]);
    let late = Body::RosterChange(RosterChange {
        epoch: 0,
        change: Change::Add(Member { key: other.public(), organisation: "newco".into(), role: Role::Worker }),
    });
    let stale = Entry::sign(run.run_id, late, &[&run.admins[0], &run.admins[1]]).unwrap();
    for e in [contribution(1), one, worker_signed, two.clone(), contribution(2), two, stale] {
        a.append(&[e]).await.unwrap();
    }
    let reader = Reader::replay(store, run.run_id).await.unwrap();
    assert_eq!(void_reason(&reader, 1), Some(VoidReason::UnknownSigner(newcomer.public())));
    assert_eq!(void_reason(&reader, 2), Some(VoidReason::NoQuorum { have: 1, need: 2 }));
    assert!(matches!(void_reason(&reader, 3), Some(VoidReason::WrongRole { role: Role::Worker, .. })));
    assert_eq!(void_reason(&reader, 4), None);
    assert_eq!(void_reason(&reader, 5), None, "the newcomer may contribute once added");
    assert_eq!(void_reason(&reader, 6), Some(VoidReason::Duplicate));
    assert_eq!(void_reason(&reader, 7), Some(VoidReason::StaleEpoch { expected: 1, found: 0 }));
    assert_eq!(reader.state().roster_epoch(), 1);
    assert_eq!(reader.entries()[5].organisation.as_deref(), Some("newco"));
    assert_eq!(reader.entries()[1].organisation, None, "not a member when it wrote");
    assert_eq!(reader.entries()[0].organisation.as_deref(), Some("admin-org-0"));
    assert_eq!(reader.state().member(&newcomer.public()).map(|m| m.role), Some(Role::Worker));
}

/// Issue 16 (SECURITY.md): one organisation that holds `quorum` admin keys cannot change the
/// roster alone; admins of `org_quorum` organisations must sign (or of every organisation that
/// has an admin, when fewer do).
#[tokio::test]
async fn roster_changes_need_admins_of_a_quorum_of_organisations() {
    let run = TestRun::with_org_quorum(1, 2);
    let mut genesis = run.genesis_body();
    let second = run.admins[1].public();
    genesis.roster.iter_mut().filter(|m| m.key == second).for_each(|m| m.organisation = "admin-org-0".into());
    let run_id = genesis.run_id();
    let store = memory_store().await;
    let mut a = Appender::new(store.clone());
    a.append(&[Entry::sign(run_id, Body::Genesis(genesis), &[&run.admins[0]]).unwrap()]).await.unwrap();
    let newcomer = ledger::Keypair::from_seed([0xab; 32]);
    let add = Body::RosterChange(RosterChange {
        epoch: 0,
        change: Change::Add(Member { key: newcomer.public(), organisation: "admin-org-0".into(), role: Role::Worker }),
    });
    let one_org = Entry::sign(run_id, add.clone(), &[&run.admins[0], &run.admins[1]]).unwrap();
    let two_orgs = Entry::sign(run_id, add, &[&run.admins[1], &run.admins[2]]).unwrap();
    a.append(&[one_org]).await.unwrap();
    a.append(&[two_orgs]).await.unwrap();
    let reader = Reader::replay(store, run_id).await.unwrap();
    assert_eq!(void_reason(&reader, 1), Some(VoidReason::NoOrganisationQuorum { have: 1, need: 2 }));
    assert_eq!(void_reason(&reader, 2), None);
    assert_eq!(reader.state().roster_epoch(), 1);

    // Every admin in one organisation: that organisation is the roster's authority, as the
    // genesis everyone joined says; a change by its admins counts.
    let mut genesis = run.genesis_body();
    for m in genesis.roster.iter_mut().filter(|m| m.role == Role::Admin) {
        m.organisation = "admin-org-0".into();
    }
    let run_id = genesis.run_id();
    let store = memory_store().await;
    let mut a = Appender::new(store.clone());
    a.append(&[Entry::sign(run_id, Body::Genesis(genesis), &[&run.admins[0]]).unwrap()]).await.unwrap();
    let add = Body::RosterChange(RosterChange {
        epoch: 0,
        change: Change::Add(Member { key: newcomer.public(), organisation: "newco".into(), role: Role::Worker }),
    });
    a.append(&[Entry::sign(run_id, add, &[&run.admins[0], &run.admins[1]]).unwrap()]).await.unwrap();
    let reader = Reader::replay(store, run_id).await.unwrap();
    assert_eq!(void_reason(&reader, 1), None);
}

#[tokio::test]
async fn index_by_round_and_signer() {
    let run = TestRun::new(3);
    let store = memory_store().await;
    let mut a = Appender::new(store.clone());
    a.append(&[run.genesis()]).await.unwrap();
    for round in 0..3u64 {
        let batch: Vec<Entry> = (0..3).map(|w| run.contribution(w, round, round)).collect();
        a.append(&batch).await.unwrap();
        a.append(&[run.close(round), run.attest(&run.validator, round, round as u8, vec![])]).await.unwrap();
    }
    let reader = Reader::replay(store, run.run_id).await.unwrap();
    assert_eq!(reader.by_round(ledger::Round(1)).count(), 5);
    let kinds: Vec<_> =
        reader.by_round(ledger::Round(2)).map(|e| e.entry.as_ref().unwrap().body.kind().name()).collect();
    assert_eq!(kinds, ["contribution", "contribution", "contribution", "close_vote", "attestation"]);
    let by_w1: Vec<_> = reader.by_signer(&run.workers[1].public()).map(|e| e.pos).collect();
    assert_eq!(by_w1.len(), 3);
    assert!(by_w1.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(reader.by_signer(&run.validator.public()).count(), 6, "a vote and an attestation per round");
}

#[tokio::test(start_paused = true)]
async fn a_follower_sees_new_slots_within_its_poll_interval() {
    let run = std::sync::Arc::new(TestRun::new(1));
    let store = memory_store().await;
    Appender::new(store.clone()).append(&[run.genesis()]).await.unwrap();
    let mut follower = Reader::replay(store.clone(), run.run_id).await.unwrap();
    let writer = {
        let (store, run) = (store.clone(), run.clone());
        tokio::spawn(async move {
            let mut a = Appender::new(store);
            for n in 0..3 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                a.append(&[run.contribution(0, 0, n)]).await.unwrap();
            }
        })
    };
    let start = tokio::time::Instant::now();
    let mut seen = 0;
    while seen < 3 {
        seen += follower.wait_for_new(Duration::from_millis(500)).await.unwrap();
    }
    writer.await.unwrap();
    assert_eq!(follower.next_seq(), Seq(4));
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(15) && waited <= Duration::from_millis(15_500), "{waited:?}");
}

#[tokio::test]
async fn the_head_is_found_without_listing_and_despite_a_lying_hint() {
    let run = TestRun::new(1);
    let store = memory_store().await;
    let mut a = Appender::new(store.clone());
    a.append(&[run.genesis()]).await.unwrap();
    for n in 0..40 {
        a.append(&[run.contribution(0, 0, n)]).await.unwrap();
    }
    assert_eq!(ledger::find_head(&store, Seq(0)).await.unwrap(), Seq(41));
    assert_eq!(ledger::find_head(&store, Seq(17)).await.unwrap(), Seq(41));
    // A hint far ahead (slot hint-1 absent) is ignored; one behind only costs probes.
    for hint in [1_000u64, 3] {
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&hint.to_be_bytes());
        store.put(ledger::log::HEAD_HINT_KEY, Bytes::from(bytes)).await.unwrap();
        assert_eq!(ledger::find_head(&store, Seq(0)).await.unwrap(), Seq(41));
    }
    store.put(ledger::log::HEAD_HINT_KEY, Bytes::from_static(b"garbage")).await.unwrap();
    assert_eq!(ledger::find_head(&store, Seq(0)).await.unwrap(), Seq(41));
}

#[tokio::test]
async fn a_run_has_one_genesis_at_slot_zero() {
    let run = TestRun::new(1);
    let store = memory_store().await;
    ledger::write_genesis(&store, &run.genesis()).await.unwrap();
    ledger::write_genesis(&store, &run.genesis()).await.unwrap();
    let other = TestRun { run_id: RunId([0x33; 32]), ..TestRun::new(1) };
    let err = ledger::write_genesis(&store, &other.genesis()).await.unwrap_err();
    assert!(matches!(err, ledger::LedgerError::SlotTaken(Seq(0))), "{err}");
    let reader = Reader::replay(store, run.run_id).await.unwrap();
    assert_eq!(reader.next_seq(), Seq(1));
    assert_eq!(reader.state().genesis().map(|g| g.quorum), Some(2));
}

/// An evaluation counts only for a final round with its attested state, once per signer and
/// round, from a member; its held-out sequences are between 1 and the limit, or it does not decode.
#[tokio::test]
async fn evaluations_name_a_final_state_once_per_signer_and_round() {
    let run = TestRun::with_org_quorum(4, 2);
    let store = memory_store().await;
    let mut a = Appender::new(store.clone());
    let mut append = async |e: Entry| a.append(&[e]).await.unwrap();
    let (w0, w1) = (&run.workers[0], &run.workers[1]);
    let evaluation = |state: u8, loss_milli: i64| {
        Body::Evaluation(ledger::Evaluation {
            round: ledger::Round(0),
            state: ledger::StateHash([state; 32]),
            sequences: 64,
            loss_milli,
        })
    };
    append(run.genesis()).await; // 0
    append(run.contribution(0, 0, 0)).await; // 1
    append(run.vote(w0, 0, 2)).await; // 2
    append(run.vote(w1, 0, 3)).await; // 3 closed
    append(Entry::sign(run.run_id, evaluation(8, 2500), &[w0]).unwrap()).await; // 4 not final yet
    append(run.attest(w0, 0, 8, vec![])).await; // 5
    append(run.attest(w1, 0, 8, vec![])).await; // 6 final: state 8
    append(Entry::sign(run.run_id, evaluation(7, 2500), &[w0]).unwrap()).await; // 7 another state
    append(Entry::sign(run.run_id, evaluation(8, 2500), &[w0]).unwrap()).await; // 8 ok
    append(Entry::sign(run.run_id, evaluation(8, 2400), &[w0]).unwrap()).await; // 9 a second one by w0
    append(Entry::sign(run.run_id, evaluation(8, 2600), &[w1]).unwrap()).await; // 10 ok: another signer
    let stranger = ledger::Keypair::from_seed([0x55; 32]);
    append(Entry::sign(run.run_id, evaluation(8, 1), &[&stranger]).unwrap()).await; // 11 not a member

    let reader = Reader::replay(store, run.run_id).await.unwrap();
    let reasons: Vec<Option<VoidReason>> = (4..12).map(|s| void_reason(&reader, s)).collect();
    assert_eq!(reasons[0], Some(VoidReason::NotFinal(ledger::Round(0))));
    assert_eq!(reasons[3], Some(VoidReason::WrongState(ledger::Round(0))));
    assert_eq!(reasons[4], None);
    assert_eq!(reasons[5], Some(VoidReason::AlreadyEvaluated(ledger::Round(0))));
    assert_eq!(reasons[6], None);
    assert_eq!(reasons[7], Some(VoidReason::UnknownSigner(stranger.public())));

    // 0 and more than MAX_EVAL_SEQUENCES held-out sequences do not decode (the u32 follows the
    // state, FORMAT of the body: round u64 | state [32] | sequences u32 | loss i64).
    let max = ledger::entry::MAX_EVAL_SEQUENCES;
    for (sequences, ok) in [(0u32, false), (1, true), (max, true), (max + 1, false)] {
        let body = Body::Evaluation(ledger::Evaluation {
            round: ledger::Round(0),
            state: ledger::StateHash([8; 32]),
            sequences: 1,
            loss_milli: 1,
        });
        let mut bytes = Entry::sign(run.run_id, body, &[w0]).unwrap().encode();
        let at = bytes.windows(32).position(|w| w == [8u8; 32]).unwrap() + 32;
        assert_eq!(bytes[at..at + 4], 1u32.to_be_bytes());
        bytes[at..at + 4].copy_from_slice(&sequences.to_be_bytes());
        assert_eq!(Entry::decode(&bytes).is_ok(), ok, "{sequences} held-out sequences");
    }
}
