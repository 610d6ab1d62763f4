//! The round rule on real ledgers: exactly the right contributions count, each other one with the
//! right reason, and the state equals direct aggregation of the counted updates.

use ledger::{EntryPos, LoggedEntry};
use verify::replay::replay_from_genesis;
use verify::{NotCounted, Round, RoundRule, RunConfig, StateHash, VerifyError, WorkerKey, aggregate};

use crate::run::{TestRun, run_config};

fn reasons(report: &verify::ReplayReport, round: usize) -> Vec<(EntryPos, NotCounted)> {
    report.rounds[round].not_counted.iter().map(|(c, r)| (c.pos, r.clone())).collect()
}

/// Everything the round rule answers, round by round, for `rounds` rounds and these workers (each
/// round's base: the attested state of the round before, the genesis state for round 0).
fn answers(rule: &RoundRule, rounds: u64, workers: &[WorkerKey]) -> Vec<String> {
    let mut out = vec![format!("{:?} {:?} {:?}", rule.end(), rule.genesis(), rule.exclusions())];
    let mut base = rule.genesis().map_or(StateHash([0; 32]), |g| g.state);
    for r in (0..rounds).map(Round) {
        out.push(format!(
            "{r:?} {:?} {:?} {:?} {:?}",
            rule.close(r),
            rule.final_result(r),
            rule.claims(r),
            rule.candidates(r).collect::<Vec<_>>()
        ));
        out.push(format!("{:?} {:?} {:?}", rule.round(r, base), rule.provisional(r, base), rule.prospective(r, base)));
        out.push(format!("{:?}", workers.iter().map(|w| rule.excluded_in(w, r)).collect::<Vec<_>>()));
        if let Some(f) = rule.final_result(r) {
            base = StateHash(f.state.0);
        }
    }
    out
}

/// A follower extends its index after every poll ([`RoundRule::extend`]); whatever the prefixes it
/// was extended over (one entry at a time, the whole list again), it must answer exactly as the
/// index built at once from the same entries.
fn assert_extending_matches(entries: &[LoggedEntry], config: &RunConfig, workers: &[WorkerKey]) {
    let rounds = 5;
    let mut extended = RoundRule::empty(config);
    for k in 0..=entries.len() {
        extended.extend(&entries[..k]);
        let at_once = RoundRule::new(&entries[..k], config);
        assert_eq!(answers(&extended, rounds, workers), answers(&at_once, rounds, workers), "after {k} entries");
    }
    extended.extend(entries);
    assert_eq!(answers(&extended, rounds, workers), answers(&RoundRule::new(entries, config), rounds, workers));
}

fn counted(report: &verify::ReplayReport, round: usize) -> Vec<EntryPos> {
    report.rounds[round].counted.iter().map(|c| c.pos).collect()
}

#[tokio::test]
async fn every_kind_of_bad_contribution_gets_its_reason() {
    let mut run = TestRun::new(run_config(16, 0)).await;
    let s0 = run.initial.clone();
    let base = s0.hash();

    let (good0, u0) = run.contribute(0, 0, base).await;
    let (good1, u1) = run.contribute(1, 0, base).await;
    let (dup, _) = run.contribute(0, 0, base).await;
    let (stale, _) = run.contribute(2, 0, StateHash([9; 32])).await;
    let len = run.update(3, 0, base).to_bytes().len();
    let garbage = run.contribute_bytes(3, 0, base, vec![0xAB; len]).await;
    // NaN: an honest bf16 update with one value replaced by a NaN pattern (the last two bytes are
    // the last value of the last chunk).
    let mut nan = run.update(4, 0, base).to_bytes();
    let n = nan.len();
    nan[n - 2..].copy_from_slice(&0x7FC0u16.to_le_bytes());
    let nan = run.contribute_bytes(4, 0, base, nan).await;
    // The entry says round 0, the blob was made for round 1.
    let wrong_round_blob = run.update(5, 1, base).to_bytes();
    let wrong_round = run.contribute_bytes(5, 0, base, wrong_round_blob).await;
    let (rejected, _) = run.contribute(6, 0, base).await;
    let verdict = run.verdict(0, rejected, -3).await;
    run.verdict(0, good1, 7).await; // passing: no effect
    let missing_blob = run.update(7, 0, base).to_bytes();
    let missing = run.contribute_entry(7, 0, base, ledger::BlobId::of(&missing_blob), len as u64).await;

    let expected = aggregate(&s0, Round(0), &[u0, u1], &run.hyper()).unwrap();
    // The attesting organisation could not read the missing blob: it drops it.
    let close = run.close_dropping(0, expected.hash(), vec![missing]).await;
    let late = run.contribute(2, 0, base).await.0;
    let wrong_size = run.contribute_bytes(2, 1, expected.hash(), vec![1, 2, 3]).await;

    let entries = run.entries().await;
    let workers: Vec<WorkerKey> = (0..crate::run::WORKERS).map(|w| run.worker_key(w)).collect();
    assert_extending_matches(&entries, &run.config, &workers);
    let replayed = replay_from_genesis(&entries, &run.store).await.unwrap();
    let report = &replayed.report;
    assert_eq!(report.rounds.len(), 1, "round 1 is open");
    assert_eq!(report.next_round, Round(1));
    assert_eq!(counted(report, 0), [good0, good1]);
    let got = reasons(report, 0);
    let expect_reason = |pos: EntryPos| got.iter().find(|(p, _)| *p == pos).map(|(_, r)| r.clone()).unwrap();
    assert_eq!(expect_reason(dup), NotCounted::Duplicate { first: good0 });
    assert_eq!(expect_reason(stale), NotCounted::StaleBase { expected: base, got: StateHash([9; 32]) });
    assert_eq!(expect_reason(garbage), NotCounted::Undecodable(VerifyError::BadMagic));
    assert!(matches!(expect_reason(nan), NotCounted::Undecodable(VerifyError::NonFiniteValue { .. })));
    assert!(matches!(expect_reason(wrong_round), NotCounted::Undecodable(VerifyError::WrongRound { .. })));
    assert_eq!(expect_reason(rejected), NotCounted::Rejected { verdict, score: -3, orgs: 1 });
    assert_eq!(expect_reason(missing), NotCounted::Unavailable);
    assert_eq!(expect_reason(late), NotCounted::Late { cut: close.vote.seq });
    assert_eq!(got.len(), 8, "{got:?}");
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "ledger order");
    assert_eq!(replayed.state.hash(), expected.hash());
    assert!(report.discrepancies.is_empty(), "{:?}", report.discrepancies);
    assert!(!report.rounds[0].under_minimum);
    // alpha: workers 0, 2, 4, 6; beta: 1, 3, 5, 7
    let alpha = report.organisations[&Some("alpha".to_string())];
    let beta = report.organisations[&Some("beta".to_string())];
    assert_eq!((alpha.counted, alpha.not_counted), (1, 5));
    assert_eq!((beta.counted, beta.not_counted), (1, 3));

    // The wrong-size contribution is for round 1, still open: the rule says so once it closes.
    run.close(1, StateHash([0; 32])).await;
    let entries = run.entries().await;
    let replayed = replay_from_genesis(&entries, &run.store).await.unwrap();
    let r1 = reasons(&replayed.report, 1);
    assert_eq!(r1.len(), 1);
    assert!(matches!(r1[0], (p, NotCounted::WrongSize { declared: 3, .. }) if p == wrong_size));
    assert!(replayed.report.rounds[1].under_minimum);
}

#[tokio::test]
async fn failing_verdicts_reject_then_exclude_and_the_limit_cuts_the_rest() {
    let mut run = TestRun::new(run_config(2, 2)).await;
    let h = run.hyper();
    let s0 = run.initial.clone();

    // Round 0: worker 0 fails (verdict before the close); worker 1's failing verdict comes after
    // the close, so it changes nothing.
    let (a0, _) = run.contribute(0, 0, s0.hash()).await;
    let (b0, ub0) = run.contribute(1, 0, s0.hash()).await;
    let v_a0 = run.verdict(0, a0, -1).await;
    let s1 = aggregate(&s0, Round(0), &[ub0], &h).unwrap();
    run.close(0, s1.hash()).await;
    run.verdict(0, b0, -1).await;

    // Round 1: worker 0 fails a second round in a row: excluded from the next round on.
    let (a1, _) = run.contribute(0, 1, s1.hash()).await;
    let (b1, ub1) = run.contribute(1, 1, s1.hash()).await;
    let v_a1 = run.verdict(1, a1, i64::MIN).await;
    let s2 = aggregate(&s1, Round(1), &[ub1], &h).unwrap();
    run.close(1, s2.hash()).await;

    // Round 2: worker 0 is excluded; workers 1 and 2 count; worker 3 is over the limit of 2.
    let (a2, _) = run.contribute(0, 2, s2.hash()).await;
    let (b2, ub2) = run.contribute(1, 2, s2.hash()).await;
    let (c2, uc2) = run.contribute(2, 2, s2.hash()).await;
    let (d2, _) = run.contribute(3, 2, s2.hash()).await;
    let s3 = aggregate(&s2, Round(2), &[ub2, uc2], &h).unwrap();
    run.close(2, s3.hash()).await;

    let entries = run.entries().await;
    let workers: Vec<WorkerKey> = (0..crate::run::WORKERS).map(|w| run.worker_key(w)).collect();
    assert_extending_matches(&entries, &run.config, &workers);
    let replayed = replay_from_genesis(&entries, &run.store).await.unwrap();
    let report = &replayed.report;
    assert_eq!(counted(report, 0), [b0]);
    assert_eq!(reasons(report, 0), [(a0, NotCounted::Rejected { verdict: v_a0, score: -1, orgs: 1 })]);
    assert_eq!(counted(report, 1), [b1]);
    assert_eq!(reasons(report, 1), [(a1, NotCounted::Rejected { verdict: v_a1, score: i64::MIN, orgs: 1 })]);
    assert_eq!(counted(report, 2), [b2, c2]);
    assert_eq!(
        reasons(report, 2),
        [(a2, NotCounted::Excluded { since: v_a1 }), (d2, NotCounted::OverLimit { max: 2 })]
    );
    assert_eq!(report.exclusions, [(run.worker_key(0), v_a1)]);
    assert_eq!(replayed.state.hash(), s3.hash());
    assert!(report.discrepancies.is_empty(), "{:?}", report.discrepancies);
}

/// A run whose config has a relative threshold (a version 6 config in its genesis): the validator
/// scores four updates 100, 90, 110 and 5; its lower median is 90, so the threshold is
/// 90 * 25 / 100 = 22 and the 5 is rejected although it passes `min_score` = 0; replay gives the
/// aggregate of the other three.
#[tokio::test]
async fn a_relative_threshold_rejects_the_update_far_below_the_validators_median() {
    let mut config = run_config(16, 0);
    config.exclusion.min_pct_of_median = 25;
    let mut run = TestRun::new(config).await;
    let s0 = run.initial.clone();
    let base = s0.hash();
    let mut contributions = Vec::new();
    for worker in 0..4 {
        contributions.push(run.contribute(worker, 0, base).await);
    }
    let mut low = None;
    for ((pos, _), score) in contributions.iter().zip([100, 90, 110, 5]) {
        let verdict = run.verdict(0, *pos, score).await;
        if score == 5 {
            low = Some(verdict);
        }
    }
    let kept: Vec<_> = contributions[..3].iter().map(|(_, u)| u.clone()).collect();
    let expected = aggregate(&s0, Round(0), &kept, &run.hyper()).unwrap();
    run.close(0, expected.hash()).await;

    let entries = run.entries().await;
    let workers: Vec<WorkerKey> = (0..crate::run::WORKERS).map(|w| run.worker_key(w)).collect();
    assert_extending_matches(&entries, &run.config, &workers);
    let replayed = replay_from_genesis(&entries, &run.store).await.unwrap();
    let report = &replayed.report;
    assert_eq!(counted(report, 0), contributions[..3].iter().map(|(p, _)| *p).collect::<Vec<_>>());
    assert_eq!(
        reasons(report, 0),
        [(contributions[3].0, NotCounted::Rejected { verdict: low.unwrap(), score: 5, orgs: 1 })]
    );
    assert_eq!(replayed.state.hash(), expected.hash());
    assert!(report.discrepancies.is_empty(), "{:?}", report.discrepancies);
}
