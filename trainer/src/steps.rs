//! The rounds' published steps (issue 21, item 2: egress): members that compute a round publish
//! its step ([`verify::step`], one trit a parameter), and members that follow take each final
//! round through a step instead of downloading every counted update.
//!
//! ```text
//!   publish (an attesting member, StepPolicy::publish): state before r ─┐
//!            its computed state after r ─────────────────────────────────┴▶ RoundStep::derive
//!            ─▶ unless its organisation's folder holds these bytes for r already:
//!               PUT steps/<organisation folder>/<r, 20 digits>          (then the attestation)
//!   follow (StepPolicy::follow), round r final with attested result R:
//!            publishers = organisations whose attestation of r says R, own organisation first,
//!                         less those this follower caught publishing a bad step
//!            for each: GET its 90-byte header: another round, base or result ─▶ next, no blame
//!                      GET its step (at most RoundStep::encoded_len bytes) ─▶ decode
//!                      ─▶ Replay::apply_step: base = our state, result = R, applied hash = R
//!                      ─▶ the first that passes is the round; a step under the right header
//!                         that fails puts its organisation on this follower's distrust list
//!                         for good (so do 3 rounds in a row of read errors)
//!            none passes ─▶ the round from its updates, as without steps
//! ```
//!
//! A step is derived data: the ledger never names one, and a follower takes one only when it
//! reproduces the result a quorum of organisations attested (the same trust a joiner puts in an
//! attested snapshot). The audit replays the updates. Only the sign rule's rounds are steps.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use ledger::Reader;
use storage::{Store, StoreError};
use verify::replay::{Replayed, RunBlobs, fetch_blobs, step_key};
use verify::round::ClaimKind;
use verify::step::{RoundStep, STEP_HEADER_BYTES};
use verify::{Hyper, Replay, RoundPlan, State, StepRule, VerifyError};

use crate::TrainerError;

/// A state with its hash (computed once by the caller).
pub type Hashed<'a> = (&'a State, verify::StateHash);

/// What a participant does with the rounds' steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepPolicy {
    /// Publish the step of every round this member computes to attest it, under its
    /// organisation's folder (validators by default; `--steps publish`).
    pub publish: bool,
    /// Take final rounds through a published step, falling back to the updates (workers with
    /// `--steps follow`). Such a member does not attest a round until it has waited for the
    /// round's result [`FOLLOWER_ATTESTS_AFTER`] times the round's deadline and verdict wait.
    pub follow: bool,
    /// With `follow`: take a round through its step only when the step is smaller than the
    /// round's counted updates (their sizes are in the ledger), else from the updates
    /// (`--steps auto`): a follower then never downloads more than one that does not follow.
    pub when_smaller: bool,
}

/// A member that follows steps attests only a round that stayed without a result this many times
/// its deadline plus verdict wait (on its own clock): the members that compute are then missing,
/// and the run must not stall for want of attestations.
pub const FOLLOWER_ATTESTS_AFTER: u32 = 2;

/// Rounds in a row whose step an organisation's folder could not be read for (not absent: an
/// error the storage layer's retries did not clear) before a follower reads it no more.
pub const MAX_READ_FAILURES: u32 = 3;

/// What following steps did, since joining.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepCounts {
    /// Rounds applied through a step.
    pub applied: u64,
    /// Bytes of the steps read (those refused included).
    pub bytes_read: u64,
    /// Rounds this follower took from the updates because no step passed.
    pub fallbacks: u64,
    /// Steps refused (malformed, or not leading to the attested result).
    pub refused: u64,
    /// Steps published by this member.
    pub published: u64,
    /// Rounds taken from the updates because they were smaller than the step (`when_smaller`).
    pub updates_smaller: u64,
}

/// A follower's use of the steps: its policy, its organisation, whom it no longer reads.
#[derive(Debug)]
pub struct Steps {
    policy: StepPolicy,
    /// The member's organisation (published under; read first).
    organisation: Option<String>,
    /// Organisations caught publishing a step that failed: never read again by this follower.
    distrusted: HashSet<String>,
    /// Organisations whose step could not be read, rounds in a row.
    read_failures: HashMap<String, u32>,
    /// The round and result of the step this member last published or found published.
    last_published: Option<(verify::Round, verify::StateHash)>,
    counts: StepCounts,
}

impl Steps {
    /// Steps under `policy` for a member of `organisation` (none: read only others', publish
    /// nothing). A run whose step rule is not sign has no steps: the policy is then off.
    pub fn new(policy: StepPolicy, organisation: Option<String>, hyper: &Hyper) -> Steps {
        let policy = if hyper.step == StepRule::Sign {
            policy
        } else {
            if policy != StepPolicy::default() {
                tracing::warn!("the run's step rule is not sign: its rounds are not steps; following the updates");
            }
            StepPolicy::default()
        };
        Steps {
            policy,
            organisation,
            distrusted: HashSet::new(),
            read_failures: HashMap::new(),
            last_published: None,
            counts: StepCounts::default(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> StepPolicy {
        self.policy
    }

    /// What following and publishing did so far.
    pub fn counts(&self) -> StepCounts {
        self.counts
    }

    /// Whether a member under this policy attests a round it has seen open for `open_for`, given
    /// the run's deadline and verdict wait.
    pub fn may_attest(&self, open_for: Duration, deadline: Duration, verdict_wait: Duration) -> bool {
        !self.policy.follow || open_for >= deadline.saturating_add(verdict_wait).saturating_mul(FOLLOWER_ATTESTS_AFTER)
    }

    /// Publishes the step from `before` to `after` (round `round`, which this member computed)
    /// under its organisation's folder, unless publishing is off or the folder holds this step
    /// already (another member of the organisation published it: compared byte for byte when
    /// the header matches). A failure is logged, never returned, and not retried: a missing step
    /// costs followers their fallback, not the attestation.
    pub async fn publish(
        &mut self,
        store: &Store,
        round: verify::Round,
        before: Hashed<'_>,
        after: Hashed<'_>,
        hyper: &Hyper,
    ) {
        let Some(organisation) = self.organisation.as_deref().filter(|_| self.policy.publish) else { return };
        if self.last_published == Some((round, after.1)) {
            return; // a member that recomputes a round (it dropped blobs) has published it
        }
        let key = step_key(organisation, round);
        let header = RoundStep::header(round, before.0.layout().elements(), before.1, after.1);
        let same_header = matches!(store.get_range(&key, 0..STEP_HEADER_BYTES as u64).await,
            Ok(there) if there[..] == header[..]);
        let step = match tokio::task::block_in_place(|| RoundStep::derive_hashed(before, after, round, hyper)) {
            Ok(step) => step,
            Err(e) => {
                tracing::warn!(round = round.0, error = %e, "cannot derive the round's step; not publishing it");
                return;
            }
        };
        let bytes = step.encode();
        // Another member of the organisation may have published it; anything else there (a
        // true header over other trits, say) is replaced.
        if same_header
            && let Ok(there) = store.get(&key, bytes.len() as u64).await
            && there.bytes[..] == bytes[..]
        {
            self.last_published = Some((round, after.1));
            return;
        }
        let size = bytes.len();
        match store.put(&key, Bytes::from(bytes)).await {
            Ok(_) => {
                self.counts.published += 1;
                self.last_published = Some((round, after.1));
                tracing::info!(round = round.0, bytes = size, key, "published the round's step");
            }
            Err(e) => tracing::warn!(round = round.0, error = %e, key, "could not publish the round's step"),
        }
    }

    /// The organisations whose step for `plan`'s round may hold its `attested` result: those
    /// whose attestation says that result (the one that completed the quorum first, then in
    /// ledger order), this member's own first, less the distrusted.
    fn publishers(&self, plan: &RoundPlan, attested: verify::StateHash, reader: &Reader) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for claim in plan.claims.iter().filter(|c| c.state == attested && c.kind != ClaimKind::Snapshot) {
            let Some(org) = reader.entry_at(claim.pos).and_then(|e| e.organisation.clone()) else { continue };
            if !out.contains(&org) && !self.distrusted.contains(&org) {
                out.push(org);
            }
        }
        if let Some(own) = &self.organisation
            && let Some(at) = out.iter().position(|o| o == own)
        {
            let own = out.remove(at);
            out.insert(0, own);
        }
        out
    }

    /// Applies `plan` (the replay's next round, final) through the first published step that
    /// passes; `false` when none did (the caller then applies the updates).
    ///
    /// Each candidate's 90-byte header is read first: a step for another round, base or result
    /// (an organisation that revised its attestation, or a member of it that attested other
    /// drops) is passed over at that cost, without blame. A step whose header is right and whose
    /// body is not (too long, malformed, or not reproducing the result) is refused, and its
    /// organisation is read no more; so is one whose step cannot be read [`MAX_READ_FAILURES`]
    /// rounds in a row for another reason than its absence.
    async fn apply_through_step(
        &mut self,
        replay: &mut Replay<'_>,
        plan: &RoundPlan,
        reader: &Reader,
        store: &Store,
    ) -> Result<bool, TrainerError> {
        let Some(attested) = plan.attested() else { return Ok(false) };
        let layout = replay.config().layout.clone();
        let limit = RoundStep::encoded_len(&layout);
        let header = RoundStep::header(plan.round, layout.elements(), plan.base, attested);
        for org in self.publishers(plan, attested, reader) {
            let key = step_key(&org, plan.round);
            // Any answer, absence included, ends a run of read errors.
            match store.get_range(&key, 0..STEP_HEADER_BYTES as u64).await {
                Ok(there) => {
                    self.read_failures.remove(&org);
                    if there[..] != header[..] {
                        continue;
                    }
                }
                Err(StoreError::NotFound { .. }) => {
                    self.read_failures.remove(&org);
                    continue;
                }
                Err(e) => {
                    self.read_failed(&org, plan.round, &e);
                    continue;
                }
            }
            let bytes = match store.get(&key, limit).await {
                Ok(object) => object.bytes,
                Err(StoreError::NotFound { .. }) => continue,
                Err(e @ StoreError::TooLarge { .. }) => {
                    self.refuse(&org, plan.round, &e.to_string());
                    continue;
                }
                Err(e) => {
                    self.read_failed(&org, plan.round, &e);
                    continue;
                }
            };
            self.counts.bytes_read += bytes.len() as u64;
            let step = match RoundStep::decode(&bytes, &layout) {
                Ok(step) => step,
                Err(e) => {
                    self.refuse(&org, plan.round, &e.to_string());
                    continue;
                }
            };
            if (step.round, step.base, step.result) != (plan.round, plan.base, attested) {
                // Replaced between the two reads by another step (a member of the organisation
                // that attested other drops): not this round's, and no fault.
                continue;
            }
            match tokio::task::block_in_place(|| replay.apply_step(plan.clone(), &step)) {
                Ok(()) => {
                    self.counts.applied += 1;
                    tracing::debug!(round = plan.round.0, organisation = org, "applied the round through a step");
                    return Ok(true);
                }
                Err(VerifyError::Step(e)) => self.refuse(&org, plan.round, &e.to_string()),
                Err(e) => return Err(e.into()),
            }
        }
        self.counts.fallbacks += 1;
        Ok(false)
    }

    /// A step that could not be read for another reason than its absence: after
    /// [`MAX_READ_FAILURES`] in a row, its organisation is read no more.
    fn read_failed(&mut self, organisation: &str, round: verify::Round, error: &StoreError) {
        let failures = self.read_failures.entry(organisation.to_string()).or_default();
        *failures += 1;
        tracing::warn!(round = round.0, organisation, error = %error, failures = *failures, "could not read a step");
        if *failures >= MAX_READ_FAILURES {
            self.refuse(organisation, round, &format!("{MAX_READ_FAILURES} rounds in a row unreadable: {error}"));
        }
    }

    fn refuse(&mut self, organisation: &str, round: verify::Round, why: &str) {
        self.counts.refused += 1;
        self.distrusted.insert(organisation.to_string());
        tracing::warn!(
            round = round.0,
            organisation,
            why,
            "refused the organisation's step; reading no more of its steps, taking the round from the updates or another step"
        );
    }
}

/// Whether a step of `step_bytes` downloads less than a round's counted updates, `update_bytes`
/// in all (a step also costs its 90-byte header read, so a tie goes to the updates).
pub fn step_is_smaller(step_bytes: u64, update_bytes: u64) -> bool {
    step_bytes.saturating_add(STEP_HEADER_BYTES as u64) < update_bytes
}

/// Applies every final round from `replay`'s next on: through a published step where `steps`
/// follows them and one passes, else from the counted updates (fetched from `blobs`).
pub async fn apply_final_rounds(
    mut replay: Replay<'_>,
    blobs: &RunBlobs,
    reader: &Reader,
    steps: &mut Steps,
) -> Result<Replayed, TrainerError> {
    while let Some(plan) = replay.next_plan() {
        if steps.policy.follow {
            let updates_smaller = steps.policy.when_smaller && {
                let updates = plan.counted.iter().fold(0u64, |sum, c| sum.saturating_add(c.blob_size));
                !step_is_smaller(RoundStep::encoded_len(&replay.config().layout), updates)
            };
            if updates_smaller {
                steps.counts.updates_smaller += 1;
            } else if steps.apply_through_step(&mut replay, &plan, reader, blobs.store()).await? {
                continue;
            }
        }
        let fetched = fetch_blobs(blobs, &plan).await;
        replay.apply(plan, fetched)?;
    }
    Ok(replay.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_spec::RunSpec;

    fn hyper() -> Hyper {
        RunSpec::parse(RunSpec::EXAMPLE).unwrap().genesis_parts(crate::model::BYTE_VOCAB).unwrap().config.hyper
    }

    #[test]
    fn a_follower_attests_only_after_twice_the_deadline_and_verdict_wait() {
        let follow = Steps::new(StepPolicy { publish: false, follow: true, when_smaller: false }, None, &hyper());
        let secs = Duration::from_secs;
        // deadline 30 s and verdict wait 60 s: 2 x 90 s = 180 s.
        assert!(!follow.may_attest(secs(179), secs(30), secs(60)));
        assert!(follow.may_attest(secs(180), secs(30), secs(60)));
        assert!(!follow.may_attest(secs(1 << 40), Duration::MAX, secs(1)), "a deadline past the range: never");
        let compute = Steps::new(StepPolicy { publish: true, follow: false, when_smaller: false }, None, &hyper());
        assert!(compute.may_attest(Duration::ZERO, secs(30), secs(60)));
    }

    /// The publisher replaces what is not its step under its step's header (a planted body,
    /// SECURITY.md row 46 (g)), writes its step once, and leaves a copy another member wrote.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_publisher_writes_its_step_once_and_replaces_a_planted_body() {
        let h = hyper();
        let layout = verify::Layout::new(vec![verify::TensorSpec { name: "w".into(), shape: vec![7] }]).unwrap();
        let before = State::from_parts(layout, vec![vec![0.5, -1.0, 2.0, 0.0, 3.0, -0.25, 1.5]]).unwrap();
        // A round that counted nothing: only the decay, a step of 0 for every parameter.
        let after = verify::aggregate(&before, verify::Round(3), &[], &h).unwrap();
        let hashed = |s: &State| (s.hash(), s.clone());
        let ((bh, b), (ah, a)) = (hashed(&before), hashed(&after));
        let store = storage::testing::memory_store().await;
        let mut steps =
            Steps::new(StepPolicy { publish: true, follow: false, when_smaller: false }, Some("alpha".into()), &h);
        let key = step_key("alpha", verify::Round(3));
        let want = RoundStep::derive(&before, &after, verify::Round(3), &h).unwrap().encode();

        // Planted before the publisher writes: the step's true header over another body.
        let mut planted = want.clone();
        let last = planted.len() - 1;
        planted[last] = if planted[last] == 0 { 1 } else { 0 };
        store.put(&key, Bytes::from(planted)).await.unwrap();
        steps.publish(&store, verify::Round(3), (&b, bh), (&a, ah), &h).await;
        assert_eq!(steps.counts().published, 1);
        assert_eq!(store.get(&key, 1 << 20).await.unwrap().bytes[..], want[..], "the planted body is replaced");
        // Published once: a member that computes the round again does not publish it again, and
        // another member of the organisation finds the same bytes there and writes nothing.
        steps.publish(&store, verify::Round(3), (&b, bh), (&a, ah), &h).await;
        let mut other =
            Steps::new(StepPolicy { publish: true, follow: false, when_smaller: false }, Some("alpha".into()), &h);
        other.publish(&store, verify::Round(3), (&b, bh), (&a, ah), &h).await;
        assert_eq!((steps.counts().published, other.counts().published), (1, 0));

        let mut off = Steps::new(StepPolicy::default(), Some("alpha".into()), &h);
        store.delete(&key).await.unwrap();
        off.publish(&store, verify::Round(3), (&b, bh), (&a, ah), &h).await;
        assert!(store.head(&key).await.unwrap().is_none(), "publishing off writes nothing");
    }

    #[test]
    fn auto_takes_the_step_only_when_it_and_its_header_read_are_smaller_than_the_updates() {
        // 2,000 bytes of step, 90 of header read: the updates must weigh more than 2,090.
        assert!(!step_is_smaller(2_000, 2_000));
        assert!(!step_is_smaller(2_000, 2_090));
        assert!(step_is_smaller(2_000, 2_091));
        // tiny's step (183,822 bytes) against two and against sixty 3,104-byte updates.
        assert!(!step_is_smaller(183_822, 2 * 3_104));
        assert!(step_is_smaller(183_822, 60 * 3_104));
        assert!(!step_is_smaller(u64::MAX, u64::MAX), "no overflow");
    }

    #[test]
    fn a_run_whose_rounds_are_not_steps_has_the_policy_off() {
        let mut linear = hyper();
        linear.step = StepRule::Linear;
        let steps =
            Steps::new(StepPolicy { publish: true, follow: true, when_smaller: true }, Some("alpha".into()), &linear);
        assert_eq!(steps.policy(), StepPolicy::default());
        assert!(steps.may_attest(Duration::ZERO, Duration::from_secs(30), Duration::from_secs(60)));
    }
}
