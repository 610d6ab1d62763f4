//! Replay on real ledgers: it reproduces direct aggregation, names a wrong claim by round and
//! position, gives the same result from a snapshot as from genesis, and is deterministic.

use std::collections::HashMap;

use bytes::Bytes;
use ledger::BlobId;
use verify::replay::{Discrepancy, replay_from_genesis, replay_from_latest_snapshot};
use verify::round::ClaimKind;
use verify::{Replay, Round, Start, StateHash, VerifyError, replay};

use crate::run::three_rounds;

#[tokio::test]
async fn replay_reproduces_direct_aggregation() {
    let (run, states, closes) = three_rounds(None).await;
    let entries = run.entries().await;
    let replayed = replay_from_genesis(&entries, &run.store).await.unwrap();
    let report = &replayed.report;
    assert_eq!(replayed.state, states[3]);
    assert_eq!(report.state, states[3].hash());
    assert_eq!((report.first_round, report.next_round), (Round(0), Round(3)));
    for (i, r) in report.rounds.iter().enumerate() {
        assert_eq!(r.round, Round(i as u64));
        assert_eq!(r.close, closes[i].vote);
        assert_eq!((r.base, r.state), (states[i].hash(), states[i + 1].hash()));
        assert_eq!(r.counted.len(), 3);
        assert!(r.not_counted.is_empty());
    }
    assert!(report.discrepancies.is_empty(), "{:?}", report.discrepancies);
    assert_eq!(report.first_discrepancy(), None);
}

/// With overlapping rounds, one round may count updates trained on its base and on the state a
/// round earlier side by side: replay decodes each against the base it names, applies them all to
/// the round's state, and reaches what aggregating the same updates directly gives.
#[tokio::test]
async fn a_round_that_mixes_both_bases_under_overlap_replays_to_the_direct_aggregation() {
    let mut config = crate::run::run_config(16, 0);
    config.rounds.overlap = true;
    let mut run = crate::run::TestRun::new(config).await;
    let h = run.hyper();
    let mut states = vec![run.initial.clone()];
    for round in 0..3u64 {
        let base = states.last().unwrap().clone();
        let behind = if round == 0 { base.hash() } else { states[states.len() - 2].hash() };
        let mut updates = Vec::new();
        // Worker 0 trained ahead (one round behind, from round 1 on); workers 1 and 2 did not.
        updates.push(run.contribute(0, round, behind).await.1);
        for w in 1..3 {
            updates.push(run.contribute(w, round, base.hash()).await.1);
        }
        let next = verify::aggregate(&base, Round(round), &updates, &h).unwrap();
        run.close(round, next.hash()).await;
        states.push(next);
    }
    let entries = run.entries().await;
    let replayed = replay_from_genesis(&entries, &run.store).await.unwrap();
    assert_eq!(replayed.state, states[3]);
    for r in &replayed.report.rounds {
        assert_eq!(r.counted.len(), 3, "round {}: {:?}", r.round, r.not_counted);
    }
    assert!(replayed.report.discrepancies.is_empty(), "{:?}", replayed.report.discrepancies);
    // The same log under a config without overlap: worker 0's updates from round 1 on are stale.
    let mut strict = run.config.clone();
    strict.rounds.overlap = false;
    let rule = verify::RoundRule::new(&entries, &strict);
    let plan = rule.round(Round(1), states[1].hash()).unwrap();
    assert_eq!(plan.counted.len(), 2);
    assert!(matches!(plan.not_counted[..], [(_, verify::NotCounted::StaleBase { .. })]), "{:?}", plan.not_counted);
}

#[tokio::test]
async fn a_quorum_attesting_a_wrong_hash_is_reported_with_its_round_and_seq() {
    let (run, states, closes) = three_rounds(Some(1)).await;
    let entries = run.entries().await;
    let replayed = replay_from_genesis(&entries, &run.store).await.unwrap();
    let expected = Discrepancy {
        round: Round(1),
        pos: closes[1].attestation,
        kind: ClaimKind::Final,
        claimed: StateHash([0xEE; 32]),
        computed: states[2].hash(),
    };
    assert_eq!(replayed.report.discrepancies, [expected]);
    assert_eq!(replayed.report.first_discrepancy(), Some(&expected));
    assert_eq!(expected.kind.name(), "final");
    // The replay went on from the computed state, which the workers had built on.
    assert_eq!(replayed.state, states[3]);
}

#[tokio::test]
async fn replay_from_a_snapshot_equals_replay_from_genesis() {
    let (run, states, _) = three_rounds(None).await;
    let entries = run.entries().await;
    let full = replay_from_genesis(&entries, &run.store).await.unwrap();
    let (resumed, skipped) = replay_from_latest_snapshot(&entries, &run.store).await.unwrap();
    assert!(skipped.is_empty());
    assert_eq!(resumed.state, full.state);
    assert_eq!(resumed.report.state, full.report.state);
    assert_eq!(resumed.report.first_round, Round(2));
    assert_eq!(resumed.report.rounds, full.report.rounds[2..]);
    assert!(resumed.report.discrepancies.is_empty());

    // A state that is not the snapshot's is refused, not replayed.
    let pos = entries
        .iter()
        .find(|e| matches!(e.entry.as_ref().map(|x| &x.body), Some(ledger::Body::Snapshot(_))))
        .unwrap()
        .pos;
    let err = Replay::new(&entries, Start::Snapshot { pos, state: states[1].clone() }).unwrap_err();
    assert_eq!(err, VerifyError::StartMismatch { claimed: states[2].hash(), actual: states[1].hash() });
    let err = Replay::new(&entries, Start::Genesis(states[1].clone())).unwrap_err();
    assert!(matches!(err, VerifyError::StartMismatch { .. }));
    let not_a_snapshot = entries[1].pos;
    assert!(matches!(
        Replay::new(&entries, Start::Snapshot { pos: not_a_snapshot, state: states[2].clone() }),
        Err(VerifyError::NoSnapshot(_))
    ));
    // A worker continuing from its own state gets the same.
    let cont =
        replay(&entries, Start::Continue { next: Round(2), state: states[2].clone() }, &run.store).await.unwrap();
    assert_eq!(cont.state, full.state);
}

#[tokio::test]
async fn replay_is_deterministic_and_the_blob_source_does_not_matter() {
    let (run, _, _) = three_rounds(Some(2)).await;
    let entries = run.entries().await;
    let a = replay_from_genesis(&entries, &run.store).await.unwrap();
    let b = replay_from_genesis(&entries, &run.store).await.unwrap();
    assert_eq!(a.report, b.report);
    assert_eq!(a.state, b.state);
    // The same blobs from a map: the same report.
    let mut map: HashMap<BlobId, Bytes> = HashMap::new();
    for info in run.store.list("blobs/", None).await.unwrap() {
        let id: BlobId = info.key.trim_start_matches("blobs/").parse().unwrap();
        map.insert(id, run.store.get_blob(id, u64::MAX).await.unwrap());
    }
    let c = replay_from_genesis(&entries, &map).await.unwrap();
    assert_eq!(c.report, a.report);
    assert_eq!(a.report.discrepancies.len(), 1);
}

#[tokio::test]
async fn an_unreadable_blob_stops_the_replay_instead_of_voiding_the_contribution() {
    struct Flaky;
    impl verify::BlobSource for Flaky {
        async fn blob(&self, _: BlobId, _: u64) -> Result<Bytes, verify::BlobFault> {
            Err(verify::BlobFault::Unavailable("connection reset".into()))
        }
    }
    let (run, _, _) = three_rounds(None).await;
    let entries = run.entries().await;
    let err = replay(&entries, Start::Genesis(run.initial.clone()), &Flaky).await.unwrap_err();
    assert!(matches!(err, VerifyError::BlobUnavailable { .. }), "{err:?}");
}

#[tokio::test]
async fn an_attester_claims_the_provisional_hash_and_replay_agrees() {
    let (mut run, states, _) = three_rounds(None).await;
    for w in 0..2 {
        run.contribute(w + 1, 3, states[3].hash()).await;
    }
    let entries = run.entries().await;
    let open = Replay::new(&entries, Start::Continue { next: Round(3), state: states[3].clone() }).unwrap();
    assert!(open.next_plan().is_none() && open.provisional_plan().is_none(), "round 3 is open");
    let vote = run.vote(3).await;
    let entries = run.entries().await;
    let mut attester = Replay::new(&entries, Start::Continue { next: Round(3), state: states[3].clone() }).unwrap();
    assert!(attester.next_plan().is_none(), "round 3 is closed, not final");
    let plan = attester.provisional_plan().unwrap();
    assert_eq!((plan.close, plan.cut), (vote, vote.seq));
    assert_eq!(plan.counted.len(), 3);
    let blobs = verify::replay::fetch_blobs(&run.store, &plan).await;
    attester.apply(plan, blobs).unwrap();
    let claim = attester.state().hash();
    run.attest(3, claim, Vec::new()).await;
    let entries = run.entries().await;
    let audited = replay_from_genesis(&entries, &run.store).await.unwrap();
    assert!(audited.report.discrepancies.is_empty(), "{:?}", audited.report.discrepancies);
    assert_eq!(audited.state.hash(), claim);
    assert_eq!(audited.report.next_round, Round(4));
}
