//! What `cairn dashboard` serves and `cairn status --json` prints: a run's figures computed from
//! its ledger alone, as one reader read it. A pure function of the entries, so two readers at the
//! same head show the same figures; every figure names the entry (`seq.index`) it comes from, so a
//! reader can check it against the log and its Merkle proof.
//!
//! Figures a worker reports about itself (`loss_milli`, `tokens`, timings, device) are signed by
//! that worker but not recomputed by anyone; they are shown as reported. What counts, the state
//! hashes and the audit's verdict come from the round rule and the replay (`verify::audit`).

use std::collections::BTreeMap;

use ledger::{Body, Reader, Role, SignedCheckpoint};
use serde::Serialize;

/// The whole view (`GET /api/run` holds it under `ledger`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LedgerView {
    /// The run id, hex.
    pub run: String,
    /// The run's settings as the genesis wrote them (None when the config does not decode: the
    /// audit says why).
    pub config: Option<ConfigView>,
    /// Slots read, entries in them, void entries, and the next slot number.
    pub ledger: LedgerCounts,
    /// The first round whose result is not final.
    pub open_round: u64,
    /// Where the open round stands.
    pub phase: Phase,
    /// Organisations that must agree to close a round or attest a result.
    pub org_quorum: u16,
    /// Rounds whose result is final.
    pub final_rounds: u64,
    /// Tokens reported by accepted contributions (their `tokens` metric).
    pub tokens_reported: u64,
    /// Every round that has an accepted contribution or a result, in order.
    pub rounds: Vec<RoundView>,
    /// Every member of the roster as it stands, by key.
    pub members: Vec<MemberView>,
    /// Every organisation of the roster, by name.
    pub organisations: Vec<OrganisationView>,
    /// Accepted Snapshot entries, in log order.
    pub snapshots: Vec<SnapshotView>,
    /// The newest tree head cosigned by a quorum of organisations and verified against this
    /// reading of the log.
    pub checkpoint: Option<CheckpointView>,
    /// Accepted and void entries per kind.
    pub kinds: BTreeMap<String, KindView>,
}

/// The run's settings from the genesis.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfigView {
    /// Model preset.
    pub preset: String,
    /// Parameters of the model.
    pub parameters: u64,
    /// What a dense f32 update of every parameter weighs: the bytes the compression is against.
    pub dense_update_bytes: u64,
    /// Rounds the run trains (0: no end).
    pub total_rounds: u64,
    /// Tokens a worker trains on per round.
    pub tokens_per_round: u64,
    /// Local optimizer steps per round (1: one gradient).
    pub local_steps: u32,
    /// The data source.
    pub data_source: String,
    /// Every `snapshot_every` rounds a snapshot (0: never).
    pub snapshot_every: u64,
}

/// Counts of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerCounts {
    /// Slots read.
    pub slots: u64,
    /// Entries in them.
    pub entries: u64,
    /// Of those, void.
    pub void: u64,
    /// The slot the next entry will take.
    pub next_seq: u64,
}

/// Where the open round stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Contributions are still taken; these organisations voted to close.
    Open {
        /// Voting organisations so far.
        voters: Vec<String>,
    },
    /// Closed, waiting for a quorum of attestations.
    Closed {
        /// The vote that closed it.
        close: String,
        /// Contributions in slots below this are its candidates.
        cut: u64,
    },
}

/// One round.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RoundView {
    /// The round.
    pub round: u64,
    /// Accepted contributions for it (counted or not: the audit decides).
    pub contributions: u64,
    /// Their positions, in log order.
    pub contribution_entries: Vec<String>,
    /// Mean of their `loss_milli` (training loss in milli-nats, as the workers reported it).
    pub loss_milli: Option<i64>,
    /// Accepted Evaluations of this round's result (held-out loss, signed by their evaluators).
    pub evaluations: Vec<EvaluationView>,
    /// Their mean `loss_milli`, rounded toward zero.
    pub eval_loss_milli: Option<i64>,
    /// Sum of their `tokens`.
    pub tokens: u64,
    /// Mean declared blob size of their updates.
    pub update_bytes: Option<u64>,
    /// Mean `train_ms` the workers reported for this round.
    pub train_ms: Option<i64>,
    /// Mean `upload_ms`.
    pub upload_ms: Option<i64>,
    /// Mean wait from a worker's contribution to this round's result, as the workers reported it in
    /// their next round's contribution (`wait_ms`).
    pub wait_ms: Option<i64>,
    /// Mean time to apply this round's result (`apply_ms`, reported the same way).
    pub apply_ms: Option<i64>,
    /// The vote that closed it.
    pub close: Option<String>,
    /// Its cut.
    pub cut: Option<u64>,
    /// The attestation that made it final.
    pub final_entry: Option<String>,
    /// The state after it.
    pub state: Option<String>,
    /// Contributions dropped as unreadable.
    pub dropped: Vec<String>,
}

/// One evaluation of a round's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EvaluationView {
    /// The entry.
    pub entry: String,
    /// The evaluator's key, hex.
    pub key: String,
    /// Its organisation.
    pub organisation: Option<String>,
    /// Held-out sequences evaluated.
    pub sequences: u32,
    /// The held-out loss, in milli-nats.
    pub loss_milli: i64,
}

/// One member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberView {
    /// Public key, hex.
    pub key: String,
    /// Organisation.
    pub organisation: String,
    /// `admin`, `worker` or `validator`.
    pub role: String,
    /// Accepted contributions.
    pub contributions: u64,
    /// Accepted verdicts.
    pub verdicts: u64,
    /// Its newest accepted entry.
    pub last_entry: Option<String>,
    /// The round of its newest contribution.
    pub last_round: Option<u64>,
    /// The device kind its newest contribution reported (`device` metric).
    pub device: Option<String>,
}

/// One organisation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OrganisationView {
    /// Its name.
    pub name: String,
    /// Members by role.
    pub workers: u64,
    /// Validators.
    pub validators: u64,
    /// Admins.
    pub admins: u64,
    /// Accepted contributions of its members.
    pub contributions: u64,
}

/// One snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotView {
    /// The entry.
    pub entry: String,
    /// The round whose result it holds.
    pub round: u64,
    /// The state, hex.
    pub state: String,
    /// Its blob, hex.
    pub blob: String,
    /// The blob's declared size.
    pub blob_size: u64,
}

/// The verified checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointView {
    /// Slots covered.
    pub size: u64,
    /// Merkle root, hex.
    pub root: String,
    /// Its cosigners that are members, with their organisations.
    pub cosigners: Vec<Cosigner>,
}

/// A checkpoint cosigner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cosigner {
    /// Public key, hex.
    pub key: String,
    /// Organisation.
    pub organisation: String,
}

/// Entries of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KindView {
    /// Accepted.
    pub accepted: u64,
    /// Void.
    pub void: u64,
}

/// The `device` metric of a contribution: which kind of device trained it.
pub fn device_name(code: i64) -> String {
    match code {
        0 => "cpu".into(),
        1 => "cuda".into(),
        2 => "mps".into(),
        3 => "other".into(),
        code => format!("unknown ({code})"),
    }
}

fn metric(metrics: &[(String, i64)], name: &str) -> Option<i64> {
    metrics.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// The mean of `values`, rounded toward zero (None when empty).
fn mean(values: &[i64]) -> Option<i64> {
    let n = i128::try_from(values.len()).ok().filter(|&n| n > 0)?;
    let sum: i128 = values.iter().map(|&v| i128::from(v)).sum();
    i64::try_from(sum / n).ok()
}

/// Per-round samples gathered before the means are taken.
#[derive(Default)]
struct RoundSamples {
    loss: Vec<i64>,
    bytes: Vec<i64>,
    train: Vec<i64>,
    upload: Vec<i64>,
    wait: Vec<i64>,
    apply: Vec<i64>,
}

/// The view of what `reader` read, with `checkpoint` (the newest verified one, if any).
pub fn ledger_view(reader: &Reader, checkpoint: Option<&SignedCheckpoint>) -> LedgerView {
    let state = reader.state();
    let entries = reader.entries();
    let config = state.genesis().and_then(|g| {
        let config = verify::RunConfig::decode(&g.config).ok()?;
        let train = trainer::run_spec::TrainSpec::from_extra(&config.extra).ok()?;
        let parameters = config.layout.elements();
        Some(ConfigView {
            preset: train.preset,
            parameters,
            dense_update_bytes: parameters.saturating_mul(4),
            total_rounds: train.total_rounds,
            tokens_per_round: train.tokens_per_round,
            local_steps: train.local_steps,
            data_source: train.data_source,
            snapshot_every: train.snapshot_every,
        })
    });

    let mut members: BTreeMap<ledger::PublicKey, MemberView> = state
        .roster()
        .values()
        .map(|m| {
            let view = MemberView {
                key: m.key.to_string(),
                organisation: m.organisation.clone(),
                role: m.role.name().to_string(),
                contributions: 0,
                verdicts: 0,
                last_entry: None,
                last_round: None,
                device: None,
            };
            (m.key, view)
        })
        .collect();
    let mut kinds: BTreeMap<String, KindView> = BTreeMap::new();
    let mut rounds: BTreeMap<u64, RoundView> = BTreeMap::new();
    let mut samples: BTreeMap<u64, RoundSamples> = BTreeMap::new();
    let mut snapshots = Vec::new();
    let mut tokens_reported = 0u64;
    let mut void = 0u64;
    for logged in entries {
        let Some(entry) = &logged.entry else {
            void += 1;
            kinds.entry("malformed".into()).or_default().void += 1;
            continue;
        };
        let kind = kinds.entry(entry.body.kind().name().to_string()).or_default();
        if !logged.validity.is_accept() {
            void += 1;
            kind.void += 1;
            continue;
        }
        kind.accepted += 1;
        let pos = logged.pos.to_string();
        if let Some(m) = members.get_mut(&entry.signer()) {
            m.last_entry = Some(pos.clone());
        }
        match &entry.body {
            Body::Contribution(c) => {
                let round =
                    rounds.entry(c.round.0).or_insert_with(|| RoundView { round: c.round.0, ..Default::default() });
                round.contributions += 1;
                round.contribution_entries.push(pos);
                let tokens = metric(&c.metrics, "tokens").and_then(|t| u64::try_from(t).ok()).unwrap_or(0);
                round.tokens = round.tokens.saturating_add(tokens);
                tokens_reported = tokens_reported.saturating_add(tokens);
                let s = samples.entry(c.round.0).or_default();
                s.bytes.push(i64::try_from(c.blob_size).unwrap_or(i64::MAX));
                s.loss.extend(metric(&c.metrics, "loss_milli"));
                s.train.extend(metric(&c.metrics, "train_ms"));
                s.upload.extend(metric(&c.metrics, "upload_ms"));
                // Reported one round later: the wait for, and the apply of, the previous round.
                if let Some(previous) = c.round.0.checked_sub(1) {
                    let p = samples.entry(previous).or_default();
                    p.wait.extend(metric(&c.metrics, "wait_ms"));
                    p.apply.extend(metric(&c.metrics, "apply_ms"));
                }
                if let Some(m) = members.get_mut(&entry.signer()) {
                    m.contributions += 1;
                    m.last_round = Some(c.round.0);
                    if let Some(code) = metric(&c.metrics, "device") {
                        m.device = Some(device_name(code));
                    }
                }
            }
            Body::Verdict(_) => {
                if let Some(m) = members.get_mut(&entry.signer()) {
                    m.verdicts += 1;
                }
            }
            Body::Evaluation(e) => {
                let round =
                    rounds.entry(e.round.0).or_insert_with(|| RoundView { round: e.round.0, ..Default::default() });
                round.evaluations.push(EvaluationView {
                    entry: pos,
                    key: entry.signer().to_string(),
                    organisation: logged.organisation.clone(),
                    sequences: e.sequences,
                    loss_milli: e.loss_milli,
                });
            }
            Body::Snapshot(s) => snapshots.push(SnapshotView {
                entry: pos,
                round: s.round.0,
                state: s.state.to_string(),
                blob: s.blob.to_string(),
                blob_size: s.blob_size,
            }),
            _ => {}
        }
    }

    let tally = state.rounds();
    for (round, result) in tally.finals() {
        let view = rounds.entry(round.0).or_insert_with(|| RoundView { round: round.0, ..Default::default() });
        view.final_entry = Some(result.pos.to_string());
        view.state = Some(result.state.to_string());
        view.dropped = result.dropped.iter().map(ToString::to_string).collect();
    }
    let closes = rounds.keys().copied().chain(std::iter::once(tally.open_round().0)).collect::<Vec<_>>();
    for round in closes {
        if let Some(close) = tally.close(ledger::Round(round)) {
            let view = rounds.entry(round).or_insert_with(|| RoundView { round, ..Default::default() });
            view.close = Some(close.pos.to_string());
            view.cut = Some(close.cut.0);
        }
    }
    for view in rounds.values_mut() {
        view.eval_loss_milli = mean(&view.evaluations.iter().map(|e| e.loss_milli).collect::<Vec<_>>());
    }
    for (round, s) in &samples {
        if let Some(view) = rounds.get_mut(round) {
            view.loss_milli = mean(&s.loss);
            view.update_bytes = mean(&s.bytes).and_then(|b| u64::try_from(b).ok());
            view.train_ms = mean(&s.train);
            view.upload_ms = mean(&s.upload);
            view.wait_ms = mean(&s.wait);
            view.apply_ms = mean(&s.apply);
        }
    }

    let mut organisations: BTreeMap<String, OrganisationView> = BTreeMap::new();
    for m in members.values() {
        let org = organisations.entry(m.organisation.clone()).or_insert_with(|| OrganisationView {
            name: m.organisation.clone(),
            workers: 0,
            validators: 0,
            admins: 0,
            contributions: 0,
        });
        match Role::from_name(&m.role) {
            Some(Role::Worker) => org.workers += 1,
            Some(Role::Validator) => org.validators += 1,
            Some(Role::Admin) => org.admins += 1,
            None => {}
        }
        org.contributions += m.contributions;
    }

    let phase = match tally.close(tally.open_round()) {
        Some(close) => Phase::Closed { close: close.pos.to_string(), cut: close.cut.0 },
        None => Phase::Open { voters: tally.voters().map(str::to_string).collect() },
    };
    let checkpoint = checkpoint.map(|cp| CheckpointView {
        size: cp.checkpoint.size,
        root: cp.checkpoint.root.to_string(),
        cosigners: cp
            .valid_signers()
            .iter()
            .filter_map(|k| {
                let organisation = state.organisation(k)?.to_string();
                Some(Cosigner { key: k.to_string(), organisation })
            })
            .collect(),
    });

    LedgerView {
        run: reader.run_id().to_string(),
        config,
        ledger: LedgerCounts {
            slots: reader.slots().len() as u64,
            entries: entries.len() as u64,
            void,
            next_seq: reader.next_seq().0,
        },
        open_round: tally.open_round().0,
        phase,
        org_quorum: tally.quorum(),
        final_rounds: tally.finals().count() as u64,
        tokens_reported,
        rounds: rounds.into_values().collect(),
        members: members.into_values().collect(),
        organisations: organisations.into_values().collect(),
        snapshots,
        checkpoint,
        kinds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_rounds_toward_zero_and_never_overflows() {
        assert_eq!(mean(&[]), None);
        assert_eq!(mean(&[1, 2]), Some(1));
        assert_eq!(mean(&[-1, -2]), Some(-1));
        assert_eq!(mean(&[i64::MAX, i64::MAX]), Some(i64::MAX));
    }

    #[test]
    fn device_codes_name_the_device_and_unknown_ones_say_so() {
        assert_eq!(device_name(0), "cpu");
        assert_eq!(device_name(1), "cuda");
        assert_eq!(device_name(3), "other");
        assert_eq!(device_name(7), "unknown (7)");
    }
}
