//! The window of rounds: entries naming rounds too far from the open one are void, and the state
//! forgets what it held about rounds behind the window without changing any verdict.

use bytes::Bytes;
use ledger::entry::{Attestation, CloseVote, Evaluation, Target};
use ledger::{
    Appender, BlobId, Body, Contribution, DecodeError, Entry, EntryPos, Genesis, Keypair, LedgerState, Member,
    RawEntry, Reader, Role, Round, RunId, Seq, Snapshot, StateHash, Validity, Verdict, VoidReason,
};

/// One organisation (so one vote closes a round and one attestation makes it final): an admin, a
/// worker and a validator.
struct Run {
    run: RunId,
    genesis: Entry,
    state: LedgerState,
    next: u64,
    admin: Keypair,
    worker: Keypair,
    validator: Keypair,
}

impl Run {
    /// A run with a window of `window` rounds, and the once-per-round limits when it has one (as
    /// `cairn genesis` makes them).
    fn new(window: u32) -> Run {
        Run::with(window, window != 0)
    }

    fn with(window: u32, once_per_round: bool) -> Run {
        let admin = Keypair::from_seed([1; 32]);
        let worker = Keypair::from_seed([2; 32]);
        let validator = Keypair::from_seed([3; 32]);
        let member = |k: &Keypair, role| Member { key: k.public(), organisation: "a".into(), role };
        let roster =
            vec![member(&admin, Role::Admin), member(&worker, Role::Worker), member(&validator, Role::Validator)];
        let g = Genesis {
            window,
            once_per_round,
            ..Genesis::new(vec![], roster, 1, StateHash([0; 32]), BlobId([0; 32]), 0)
        };
        let run = g.run_id();
        let mut state = LedgerState::new(run);
        let genesis = Entry::sign(run, Body::Genesis(g), &[&admin]).unwrap();
        let pos = EntryPos { seq: Seq(0), index: 0 };
        assert_eq!(state.apply(RawEntry { pos, bytes: &genesis.encode() }).0, Validity::Accept);
        Run { run, genesis, state, next: 1, admin, worker, validator }
    }

    fn sign(&self, body: Body, signer: Who) -> Entry {
        let key = match signer {
            Who::Admin => &self.admin,
            Who::Worker => &self.worker,
            Who::Validator => &self.validator,
        };
        Entry::sign(self.run, body, &[key]).unwrap()
    }

    /// Signs `body` by `signer` (deterministic: the same body gives the same bytes) and applies
    /// it at the next position, or at `pos` when given.
    fn apply_at(&mut self, pos: EntryPos, body: Body, signer: &Keypair) -> Validity {
        let bytes = Entry::sign(self.run, body, &[signer]).unwrap().encode();
        self.state.apply(RawEntry { pos, bytes: &bytes }).0
    }

    fn push(&mut self, body: Body, signer: Who) -> (EntryPos, Validity) {
        let pos = EntryPos { seq: Seq(self.next), index: 0 };
        self.next += 1;
        let key = match signer {
            Who::Admin => self.admin.clone(),
            Who::Worker => self.worker.clone(),
            Who::Validator => self.validator.clone(),
        };
        (pos, self.apply_at(pos, body, &key))
    }

    fn open(&self) -> u64 {
        self.state.rounds().open_round().0
    }
}

#[derive(Clone, Copy)]
enum Who {
    Admin,
    Worker,
    Validator,
}

fn blob(round: u64, salt: u64) -> BlobId {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&round.to_be_bytes());
    b[8..16].copy_from_slice(&salt.to_be_bytes());
    BlobId(b)
}

fn contribution(round: u64, salt: u64) -> Body {
    Body::Contribution(Contribution {
        round: Round(round),
        base_state: StateHash([0; 32]),
        assignment: vec![],
        blob: blob(round, salt),
        blob_size: 1,
        metrics: vec![],
    })
}

fn state_of(round: u64) -> StateHash {
    let mut s = [0xaa; 32];
    s[..8].copy_from_slice(&round.to_be_bytes());
    StateHash(s)
}

fn verdict(round: u64, target: Target, score: i64) -> Body {
    Body::Verdict(Verdict { round: Round(round), target, score })
}

fn snapshot(round: u64, salt: u64) -> Body {
    Body::Snapshot(Snapshot { round: Round(round), state: state_of(round), blob: blob(round, salt), blob_size: 1 })
}

fn evaluation(round: u64, loss_milli: i64) -> Body {
    Body::Evaluation(Evaluation { round: Round(round), state: state_of(round), sequences: 1, loss_milli })
}

/// Closes and finalises the open round of `run`.
fn finish_round(run: &mut Run) {
    let round = Round(run.open());
    let seen = Seq(run.next);
    assert_eq!(run.push(Body::CloseVote(CloseVote { round, seen }), Who::Admin).1, Validity::Accept);
    let attestation = Attestation { round, state: state_of(round.0), dropped: vec![] };
    assert_eq!(run.push(Body::Attestation(attestation), Who::Admin).1, Validity::Accept);
    assert_eq!(run.open(), round.0 + 1);
}

/// One round as the product writes it: a contribution, a verdict on it, the close, the result,
/// a snapshot and an evaluation of it. Returns the contribution's position.
fn full_round(run: &mut Run) -> EntryPos {
    let r = run.open();
    let (c, v) = run.push(contribution(r, 0), Who::Worker);
    assert_eq!(v, Validity::Accept);
    assert_eq!(run.push(verdict(r, Target::Entry(c), 10), Who::Validator).1, Validity::Accept);
    finish_round(run);
    assert_eq!(run.push(snapshot(r, 0), Who::Admin).1, Validity::Accept);
    assert_eq!(run.push(evaluation(r, 1000), Who::Validator).1, Validity::Accept);
    c
}

fn outside(round: u64, open: u64, window: u32) -> Validity {
    Validity::Void(VoidReason::OutsideWindow { round: Round(round), open: Round(open), window })
}

#[test]
fn a_window_voids_rounds_too_far_from_the_open_one_and_bounds_the_state() {
    let mut run = Run::new(2);
    let contributions: Vec<EntryPos> = (0..30).map(|_| full_round(&mut run)).collect();
    assert_eq!(run.open(), 30);
    assert_eq!(run.state.horizon(), Round(28));

    // Replays: bytes accepted once. Behind the window the reason is the window, inside it the
    // duplicate (both void, so the forgetting cannot let one through).
    let worker = run.worker.clone();
    let at = EntryPos { seq: Seq(1_000), index: 0 };
    assert_eq!(run.apply_at(at, contribution(10, 0), &worker), outside(10, 30, 2));
    assert_eq!(run.apply_at(at, contribution(28, 0), &worker), Validity::Void(VoidReason::Duplicate));

    // A verdict, a snapshot and an evaluation: for the oldest round in the window, one per signer
    // and round (per target for verdicts) is accepted and a second is void; one round older, all
    // are void for the window.
    let v28 = verdict(28, Target::Entry(contributions[28]), 7);
    assert_eq!(run.push(v28, Who::Validator).1, once(ledger::Kind::Verdict, 28), "full_round judged it");
    assert_eq!(run.push(verdict(27, Target::Entry(contributions[27]), 7), Who::Validator).1, outside(27, 30, 2));
    assert_eq!(run.push(verdict(28, Target::Blob(blob(28, 0)), 8), Who::Validator).1, Validity::Accept);
    assert_eq!(run.push(verdict(28, Target::Blob(blob(28, 0)), 9), Who::Validator).1, once(ledger::Kind::Verdict, 28));
    assert_eq!(run.push(verdict(27, Target::Blob(blob(27, 0)), 8), Who::Validator).1, outside(27, 30, 2));
    assert_eq!(run.push(snapshot(28, 1), Who::Admin).1, once(ledger::Kind::Snapshot, 28), "full_round wrote one");
    assert_eq!(run.push(snapshot(28, 1), Who::Validator).1, Validity::Accept);
    assert_eq!(run.push(snapshot(27, 1), Who::Admin).1, outside(27, 30, 2));
    assert_eq!(run.push(evaluation(28, 5), Who::Admin).1, Validity::Accept);
    assert_eq!(run.push(evaluation(27, 5), Who::Admin).1, outside(27, 30, 2));
    // Still remembered inside the window: one evaluation per signer and round.
    assert_eq!(run.push(evaluation(29, 5), Who::Validator).1, Validity::Void(VoidReason::AlreadyEvaluated(Round(29))));

    // Ahead: at most `window` rounds past the open one.
    assert_eq!(run.push(contribution(32, 0), Who::Worker).1, Validity::Accept);
    assert_eq!(run.push(contribution(32, 1), Who::Worker).1, once(ledger::Kind::Contribution, 32));
    assert_eq!(run.push(contribution(33, 0), Who::Worker).1, outside(33, 30, 2));

    // The state holds rounds 28, 29 and 32; the same run without a window holds all 33.
    assert_eq!(run.state.rounds_held(), 3);
    let mut unbounded = Run::new(0);
    for _ in 0..30 {
        full_round(&mut unbounded);
    }
    assert_eq!(unbounded.state.rounds_held(), 30);
    assert_eq!(unbounded.push(contribution(10_000, 0), Who::Worker).1, Validity::Accept);
    // Without a window a worker's second contribution to a round is accepted (the round rule
    // counts the first), as in runs made before the limit.
    assert_eq!(unbounded.push(contribution(10_000, 1), Who::Worker).1, Validity::Accept);
    assert_eq!(unbounded.push(snapshot(29, 9), Who::Admin).1, Validity::Accept);
    // Nor in a windowed run whose genesis does not set the limits (one made before they existed):
    // its verdicts stay what they were.
    let mut before_limits = Run::with(2, false);
    let c = full_round(&mut before_limits);
    let r = before_limits.open();
    assert_eq!(before_limits.push(contribution(r, 0), Who::Worker).1, Validity::Accept);
    assert_eq!(before_limits.push(contribution(r, 1), Who::Worker).1, Validity::Accept);
    assert_eq!(before_limits.push(verdict(r - 1, Target::Entry(c), 3), Who::Validator).1, Validity::Accept);
    assert_eq!(before_limits.push(snapshot(r - 1, 5), Who::Admin).1, Validity::Accept);
}

fn once(kind: ledger::Kind, round: u64) -> Validity {
    Validity::Void(VoidReason::OncePerRound { kind, round: Round(round) })
}

/// A blob's round is the first accepted contribution's that carried it; when that round leaves the
/// window the blob is forgotten, and a later contribution carrying it gives it its own round.
#[test]
fn a_blob_leaves_with_its_round_and_may_come_back_with_a_new_one() {
    let mut run = Run::new(1);
    let r0 = run.open();
    assert_eq!(run.push(contribution(r0, 0), Who::Worker).1, Validity::Accept);
    finish_round(&mut run);
    // The same blob in round 1, while round 0 is still in the window: the blob stays round 0's.
    let shared = blob(r0, 0);
    assert_eq!(run.push(carrying(1, shared), Who::Worker).1, Validity::Accept);
    assert_eq!(
        run.push(verdict(1, Target::Blob(shared), 1), Who::Validator).1,
        Validity::Void(VoidReason::UnknownTarget(Round(1)))
    );
    assert_eq!(run.push(verdict(0, Target::Blob(shared), 1), Who::Validator).1, Validity::Accept);
    // Round 0 leaves the window (open 2, horizon 1): its blob is forgotten, and round 1's copy
    // did not take it over, since it came while round 0 held it.
    finish_round(&mut run);
    assert_eq!(run.state.horizon(), Round(1));
    assert_eq!(
        run.push(verdict(1, Target::Blob(shared), 2), Who::Validator).1,
        Validity::Void(VoidReason::UnknownTarget(Round(1)))
    );
    // A contribution carrying it after the forgetting gives it its round.
    assert_eq!(run.push(carrying(2, shared), Who::Worker).1, Validity::Accept);
    assert_eq!(run.push(verdict(2, Target::Blob(shared), 1), Who::Validator).1, Validity::Accept);
}

/// A contribution to `round` carrying `blob`.
fn carrying(round: u64, blob: BlobId) -> Body {
    Body::Contribution(Contribution {
        round: Round(round),
        base_state: StateHash([round as u8; 32]),
        assignment: vec![],
        blob,
        blob_size: 1,
        metrics: vec![],
    })
}

/// A small deterministic generator (xorshift), so the test needs no seed from outside.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The forgetting changes no verdict: every entry of a long random log, hostile ones included
/// (replays, verdicts on old contributions, snapshots and evaluations of old rounds, contributions
/// far ahead), gets from a windowed state what a state that forgets nothing gives it, except that
/// what names a round outside the window is void for that reason, and a signer's second
/// contribution or snapshot of a round, or second verdict on a target, is void for the windowed
/// run's limit (the test keeps its own record of what was taken, to say when). The reference is
/// fed only the entries the windowed state accepted, so that the two agree on what the run holds.
#[test]
fn a_windowed_state_gives_the_verdicts_of_a_state_that_forgets_nothing() {
    for window in [1u32, 3] {
        let mut windowed = Run::new(window);
        let mut reference = Run::new(0);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(window));
        let mut contributions: Vec<(u64, EntryPos, BlobId)> = vec![];
        let mut accepted: Vec<(Body, Who)> = vec![];
        let mut outside_seen = 0;
        let mut limited_seen = 0;
        // (round, kind, verdict target) of the accepted entries a signer may write once a round;
        // each kind has one signer in this test.
        let mut taken: std::collections::HashSet<(u64, ledger::Kind, Option<Target>)> = Default::default();
        let once_key = |body: &Body| match body {
            Body::Contribution(c) => Some((c.round.0, ledger::Kind::Contribution, None)),
            Body::Snapshot(s) => Some((s.round.0, ledger::Kind::Snapshot, None)),
            Body::Verdict(v) => Some((v.round.0, ledger::Kind::Verdict, Some(v.target))),
            _ => None,
        };
        for step in 0..3_000u64 {
            let open = windowed.open();
            assert_eq!(open, reference.open());
            let back = |rng: &mut Rng| open.saturating_sub(rng.below(u64::from(window) + 3));
            let (body, who) = match rng.below(10) {
                0..=2 => {
                    let round = (open + rng.below(u64::from(window) + 3)).saturating_sub(2);
                    (contribution(round, step), Who::Worker)
                }
                3 | 4 if !contributions.is_empty() => {
                    let (round, pos, blob) = contributions[rng.below(contributions.len() as u64) as usize];
                    let target = if rng.below(2) == 0 { Target::Entry(pos) } else { Target::Blob(blob) };
                    (verdict(round, target, rng.below(100) as i64), Who::Validator)
                }
                5 if !accepted.is_empty() => accepted[rng.below(accepted.len() as u64) as usize].clone(),
                6 => (snapshot(back(&mut rng), step), Who::Admin),
                7 => (evaluation(back(&mut rng), rng.below(3) as i64), Who::Validator),
                _ => {
                    finish_round(&mut windowed);
                    reference.next = windowed.next - 2;
                    finish_round(&mut reference);
                    continue;
                }
            };
            let round = body.round().map_or(open, |r| r.0);
            let pos = EntryPos { seq: Seq(windowed.next), index: 0 };
            let (_, got) = windowed.push(body.clone(), who);
            reference.next = windowed.next;
            let too_old = round + u64::from(window) < open;
            let too_new = round > open + u64::from(window);
            if too_old || too_new {
                assert_eq!(got, outside(round, open, window), "step {step}");
                outside_seen += 1;
                continue;
            }
            let key = match who {
                Who::Admin => reference.admin.clone(),
                Who::Worker => reference.worker.clone(),
                Who::Validator => reference.validator.clone(),
            };
            let key_once = once_key(&body);
            let expected = if key_once.is_some_and(|k| taken.contains(&k)) {
                // What the reference, which has no such limit, says on every other check; it is
                // not fed the entry.
                let mut probe = reference.state.clone();
                let bytes = Entry::sign(reference.run, body.clone(), &[&key]).unwrap().encode();
                match probe.apply(RawEntry { pos, bytes: &bytes }).0 {
                    Validity::Accept => {
                        limited_seen += 1;
                        let kind = body.kind();
                        once(kind, round)
                    }
                    void => void,
                }
            } else {
                reference.apply_at(pos, body.clone(), &key)
            };
            assert_eq!(got, expected, "step {step}, window {window}: {body:?}");
            if let (true, Some(k)) = (got.is_accept(), key_once) {
                taken.insert(k);
            }
            if got.is_accept() {
                if let Body::Contribution(c) = &body {
                    contributions.push((c.round.0, pos, c.blob));
                }
                accepted.push((body, who));
            }
        }
        // The log exercised both sides, and the windowed state stayed bounded.
        assert!(outside_seen > 100, "{outside_seen} entries outside the window");
        assert!(limited_seen > 50, "{limited_seen} second entries of a signer in a round");
        assert!(windowed.open() > 300, "only {} rounds", windowed.open());
        assert!(windowed.state.rounds_held() <= 2 * window as usize + 1, "{}", windowed.state.rounds_held());
        assert!(reference.state.rounds_held() > 300);
    }
}

#[test]
fn a_genesis_window_is_encoded_only_when_set_and_zero_is_refused() {
    let admin = Keypair::from_seed([1; 32]);
    let roster = vec![Member { key: admin.public(), organisation: "a".into(), role: Role::Admin }];
    let plain = Genesis::new(vec![], roster, 1, StateHash([0; 32]), BlobId([0; 32]), 0);
    let windowed = Genesis { window: 64, ..plain.clone() };
    let encode = |g: &Genesis| Entry::sign(g.run_id(), Body::Genesis(g.clone()), &[&admin]).unwrap().encode();
    let (a, b) = (encode(&plain), encode(&windowed));
    // Four more body bytes (u32), and the body length field says so.
    assert_eq!(b.len(), a.len() + 4);
    assert_ne!(plain.run_id(), windowed.run_id());
    let decoded = Entry::decode(&b).unwrap();
    assert_eq!(decoded.body, Body::Genesis(windowed.clone()));
    assert_eq!(Entry::decode(&a).unwrap().body, Body::Genesis(plain.clone()));

    // A window of zero written out: a second encoding of "none", refused. Built by hand: the
    // body with four zero bytes after the salt, re-signed so only the body is at fault.
    let body_len_at = 1 + 1 + 32;
    let body_len = u32::from_be_bytes(a[body_len_at..body_len_at + 4].try_into().unwrap()) as usize;
    let body = [&a[body_len_at + 4..body_len_at + 4 + body_len], &[0u8; 4][..]].concat();
    let mut forged = a[..body_len_at].to_vec();
    forged.extend_from_slice(&(body.len() as u32).to_be_bytes());
    forged.extend_from_slice(&body);
    forged.extend_from_slice(&a[body_len_at + 4 + body_len..]);
    assert!(matches!(Entry::decode(&forged), Err(DecodeError::OutOfRange { field: "window", .. })));
    // The same bytes with a window of 5 decode: the refusal above is about the zero.
    let mut five = forged;
    five[body_len_at + 4 + body.len() - 1] = 5;
    match Entry::decode(&five) {
        Ok(e) => assert!(matches!(e.body, Body::Genesis(Genesis { window: 5, .. }))),
        Err(e) => panic!("a window of 5 should decode (signature aside): {e}"),
    }

    // The once-per-round limits: one byte 1 after the window, only when set.
    let limited = Genesis { once_per_round: true, ..windowed.clone() };
    let c = encode(&limited);
    assert_eq!(c.len(), b.len() + 1);
    assert_ne!(limited.run_id(), windowed.run_id());
    assert_eq!(Entry::decode(&c).unwrap().body, Body::Genesis(limited.clone()));
    assert_eq!(Entry::decode(&b).unwrap().body, Body::Genesis(windowed.clone()), "unset: the bytes of before");
    // Any other byte there is refused (0 would be a second "unset"), and so are the limits without
    // a window (written as a window of zero, which is refused).
    let flag_at = body_len_at + 4 + (body.len() + 1) - 1;
    for bad in [0u8, 2, 255] {
        let mut other = c.clone();
        other[flag_at] = bad;
        assert!(matches!(Entry::decode(&other), Err(DecodeError::OutOfRange { field: "once per round", .. })), "{bad}");
    }
    // Signing checks that the body decodes, so such a genesis cannot even be signed.
    let without_window = Genesis { once_per_round: true, ..plain.clone() };
    let refused = Entry::sign(without_window.run_id(), Body::Genesis(without_window), &[&admin]);
    assert!(refused.is_err_and(|e| e.to_string().contains("window")));
}

/// A reader that forgets behind the window holds a bounded number of entries and slot records,
/// and still agrees with a reader that keeps everything on what it holds, on the leaves, the root
/// and the audit. The expected set is computed from the positions this test wrote, not by the
/// reader.
#[tokio::test]
async fn a_reader_that_forgets_keeps_the_window_and_agrees_with_one_that_keeps_everything() {
    let window = 2u32;
    let run = Run::new(window);
    let store = crate::common::memory_store().await;
    ledger::write_genesis(&store, &run.genesis).await.unwrap();
    let mut appender = Appender::new(store.clone());
    let mut forgetting = Reader::new(store.clone(), run.run);
    // Per round: where its result (the attestation) landed.
    let mut results: Vec<EntryPos> = vec![];
    let mut held = vec![];
    for r in 0..40u64 {
        let contribution = run.sign(contribution(r, 0), Who::Worker);
        let c = appender.append(std::slice::from_ref(&contribution)).await.unwrap();
        let target = Target::Entry(EntryPos { seq: c, index: 0 });
        // A verdict and a garbage slot (void, no round), then the close and the result.
        appender.append(&[run.sign(verdict(r, target, 3), Who::Validator)]).await.unwrap();
        appender.append_slot(Bytes::from_static(b"not a slot")).await.unwrap();
        let vote = CloseVote { round: Round(r), seen: ledger::find_head(&store, Seq(0)).await.unwrap() };
        appender.append(&[run.sign(Body::CloseVote(vote), Who::Admin)]).await.unwrap();
        let attestation = Attestation { round: Round(r), state: state_of(r), dropped: vec![] };
        let a = appender.append(&[run.sign(Body::Attestation(attestation), Who::Admin)]).await.unwrap();
        results.push(EntryPos { seq: a, index: 0 });
        appender.append(&[run.sign(snapshot(r, 0), Who::Admin)]).await.unwrap();
        forgetting.poll().await.unwrap();
        // A participant that has taken in every round up to the open one.
        forgetting.forget_before(forgetting.state().rounds().open_round(), Seq(u64::MAX));
        held.push((forgetting.entries().len(), forgetting.slots().len(), forgetting.leaves().len()));
    }
    let full = Reader::replay(store.clone(), run.run).await.unwrap();
    assert_eq!(forgetting.next_seq(), full.next_seq());
    forgetting.audit().await.unwrap();

    // Open round 40, horizon 38: entries of rounds 38 and 39, the genesis, and the void slots
    // from round 38's opening (round 37's result) on.
    let horizon = forgetting.state().horizon();
    assert_eq!(horizon, Round(38));
    let opened = results[37];

    // The tree: the leaves from round 38's opening on (and the one before: its aligned block), the
    // same roots and proofs as a full reader's for every size from there, none below.
    let head = full.next_seq().0;
    let from = forgetting.leaves_from().0 as usize;
    assert!(from > 0 && from <= opened.seq.0 as usize, "leaves from {from}, opened at {}", opened.seq.0);
    assert_eq!(forgetting.leaves(), &full.leaves()[from..]);
    for size in opened.seq.0..=head {
        assert_eq!(forgetting.root_at(size), full.root_at(size), "root of {size}");
        assert_eq!(forgetting.consistency_proof(opened.seq.0, size), full.consistency_proof(opened.seq.0, size));
        for seq in opened.seq.0..size {
            assert_eq!(forgetting.inclusion_proof(Seq(seq), size), full.inclusion_proof(Seq(seq), size));
        }
    }
    assert_eq!(forgetting.root_at(opened.seq.0 - 1), None);
    // Each round's close and result: kept from w + 1 = 3 rounds before the horizon on, as a full
    // reader has them; older ones are gone.
    let tally = forgetting.state().rounds();
    assert_eq!(tally.finals().map(|(r, _)| r.0).collect::<Vec<_>>(), (35..40).collect::<Vec<_>>());
    for r in (35..40).map(Round) {
        assert_eq!(tally.final_result(r), full.state().rounds().final_result(r));
        assert_eq!(tally.close(r), full.state().rounds().close(r));
    }
    assert_eq!(tally.close(Round(34)), None);
    assert_eq!(forgetting.inclusion_proof(Seq(opened.seq.0 - 1), head), None);
    let expected: Vec<EntryPos> = full
        .entries()
        .iter()
        .filter(|e| match (e.validity.is_accept(), e.entry.as_ref().and_then(|x| x.body.round())) {
            (true, Some(r)) => r >= horizon,
            (true, None) => true,
            (false, _) => e.pos >= opened,
        })
        .map(|e| e.pos)
        .collect();
    let kept: Vec<EntryPos> = forgetting.entries().iter().map(|e| e.pos).collect();
    assert_eq!(kept, expected);
    for r in 38..40 {
        let a: Vec<EntryPos> = forgetting.by_round(Round(r)).map(|e| e.pos).collect();
        let b: Vec<EntryPos> = full.by_round(Round(r)).map(|e| e.pos).collect();
        assert_eq!(a, b, "round {r}");
        assert!(!a.is_empty());
    }
    assert_eq!(forgetting.by_round(Round(37)).count(), 0);
    assert!(forgetting.entry_at(results[39]).is_some());
    assert!(forgetting.entry_at(results[10]).is_none());
    // Every slot record left holds an entry or is newer than the opening; each range points at
    // the entries of its own slot.
    for slot in forgetting.slots() {
        assert!(!slot.entries.is_empty() || slot.seq >= opened.seq, "slot {}", slot.seq.0);
        assert!(forgetting.entries()[slot.entries.clone()].iter().all(|e| e.pos.seq == slot.seq));
    }
    // Bounded: the same size after round 10 as after round 39 (6 slots a round).
    assert_eq!(held[10], held[39], "{held:?}");
    assert!(full.entries().len() > 5 * held[39].0);
    // Everything from `complete_from` on is held, and something below it is not.
    let complete = forgetting.complete_from();
    let from_there =
        |r: &Reader| r.entries().iter().filter(|e| e.pos.seq >= complete).map(|e| e.pos).collect::<Vec<_>>();
    assert_eq!(from_there(&forgetting), from_there(&full));
    // Round 37's snapshot comes after round 38 opened and went with round 37: the first complete
    // slot is the one after it.
    assert_eq!(complete, Seq(opened.seq.0 + 2));
}

/// What a participant still has to export stays, whatever the window says: nothing in slots from
/// `keep_from` on is dropped.
#[tokio::test]
async fn a_reader_keeps_every_slot_from_keep_from_on() {
    let run = Run::new(1);
    let store = crate::common::memory_store().await;
    ledger::write_genesis(&store, &run.genesis).await.unwrap();
    let mut appender = Appender::new(store.clone());
    let mut reader = Reader::new(store.clone(), run.run);
    let mut keep_from = None;
    for r in 0..20u64 {
        appender.append(&[run.sign(contribution(r, 0), Who::Worker)]).await.unwrap();
        let seen = ledger::find_head(&store, Seq(0)).await.unwrap();
        let vote = run.sign(Body::CloseVote(CloseVote { round: Round(r), seen }), Who::Admin);
        appender.append(&[vote]).await.unwrap();
        let attestation = Attestation { round: Round(r), state: state_of(r), dropped: vec![] };
        appender.append(&[run.sign(Body::Attestation(attestation), Who::Admin)]).await.unwrap();
        if r == 5 {
            keep_from = Some(ledger::find_head(&store, Seq(0)).await.unwrap());
        }
        reader.poll().await.unwrap();
        reader.forget_before(Round(r + 1), keep_from.unwrap_or(Seq(u64::MAX)));
    }
    let keep_from = keep_from.unwrap();
    let full = Reader::replay(store.clone(), run.run).await.unwrap();
    let after = |r: &Reader| r.entries().iter().filter(|e| e.pos.seq >= keep_from).count();
    assert_eq!(after(&reader), after(&full));
    assert_eq!(after(&full), 14 * 3);
    // Below it, the window did its work: round 3's entries are gone, the genesis stays.
    assert_eq!(reader.entries().iter().filter(|e| e.pos.seq < keep_from).count(), 1);
    assert!(reader.complete_from() <= keep_from);
}
