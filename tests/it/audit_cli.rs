//! `cairn audit`, `cairn status` and `cairn gc` on a real run in a local folder, written with the
//! ledger and verify libraries (real signatures, real update blobs, honest round closes).

use bytes::Bytes;
use ledger::{Appender, Attestation, Body, CloseVote, Contribution, Entry, Genesis, Keypair, Member, Role, Snapshot};
use verify::config::{ExclusionRules, RoundRules};
use verify::{
    Compression, Header, Hyper, Layout, NormClip, Ratio, Round, RunConfig, Schedule, State, TensorSpec, ValueEncoding,
    WorkerKey, aggregate, encode,
};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn last_line(out: &std::process::Output) -> String {
    text(&out.stdout).lines().last().unwrap_or("").to_string()
}

/// A deterministic state of `layout`, values in [-scale, scale).
fn state(layout: &Layout, seed: u64, scale: f32) -> State {
    let data = layout
        .tensors()
        .iter()
        .map(|t| {
            (0..t.elements())
                .map(|i| {
                    let x = (i.wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(40_503))) % 2000;
                    (x as f32 / 1000.0 - 1.0) * scale
                })
                .collect()
        })
        .collect();
    State::from_parts(layout.clone(), data).unwrap()
}

/// Two rounds of two workers (organisations alpha and beta), a snapshot after round 0, both
/// rounds closed with the honest hash. Returns the final state.
pub(crate) async fn two_rounds(url: &str) -> State {
    two_rounds_with(url, "beta").await
}

/// [`two_rounds`] with the second organisation named `beta`.
pub(crate) async fn two_rounds_with(url: &str, beta: &str) -> State {
    let store = storage::open(url).await.unwrap();
    let layout = Layout::new(vec![
        TensorSpec { name: "w".into(), shape: vec![8, 12] },
        TensorSpec { name: "b".into(), shape: vec![5] },
    ])
    .unwrap();
    let config = RunConfig {
        layout: layout.clone(),
        hyper: Hyper {
            compression: Compression::uniform(4, 3, ValueEncoding::Bf16),
            schedule: Schedule::Constant { lr: Ratio::new(1, 100) },
            weight_decay: Ratio::new(1, 10),
            clip: NormClip::Median,
            step: verify::StepRule::Sign,
        },
        rounds: RoundRules { min_contributions: 2, max_contributions: 8, overlap: false },
        exclusion: ExclusionRules::absolute(0, 0),
        extra: b"preset=tiny".to_vec(),
    };
    let admin = Keypair::from_seed([1; 32]);
    let workers = [Keypair::from_seed([10; 32]), Keypair::from_seed([11; 32])];
    let roster = vec![
        Member { key: admin.public(), organisation: "alpha".into(), role: Role::Admin },
        Member { key: workers[0].public(), organisation: "alpha".into(), role: Role::Worker },
        Member { key: workers[1].public(), organisation: beta.into(), role: Role::Worker },
    ];
    let initial = state(&layout, 1, 0.5);
    let bytes = Bytes::from(initial.to_safetensors().unwrap());
    let size = bytes.len() as u64;
    let blob = store.put_blob(bytes).await.unwrap();
    let genesis = Genesis::new(config.encode().unwrap(), roster, 1, ledger::StateHash(initial.hash().0), blob, size);
    let run = genesis.run_id();
    ledger::write_genesis(&store, &Entry::sign(run, Body::Genesis(genesis), &[&admin]).unwrap()).await.unwrap();
    let mut appender = Appender::new(store.clone());
    let mut current = initial;
    for round in 0..2u64 {
        let mut updates = Vec::new();
        for (i, w) in workers.iter().enumerate() {
            let header = Header {
                run: verify::RunId(run.0),
                round: Round(round),
                base: current.hash(),
                worker: WorkerKey(w.public().0),
                layout: layout.hash(),
                compression: config.hyper.compression,
            };
            let update = encode(&state(&layout, 100 + round * 10 + i as u64, 0.01), &header).unwrap();
            let bytes = update.to_bytes();
            let size = bytes.len() as u64;
            let blob = store.put_blob(Bytes::from(bytes)).await.unwrap();
            let body = Body::Contribution(Contribution {
                round: ledger::Round(round),
                base_state: ledger::StateHash(current.hash().0),
                assignment: vec![],
                blob,
                blob_size: size,
                metrics: vec![("loss_milli".into(), 2400 - 100 * round as i64 - i as i64)],
            });
            appender.append(&[Entry::sign(run, body, &[w]).unwrap()]).await.unwrap();
            updates.push(update);
        }
        current = aggregate(&current, Round(round), &updates, &config.hyper).unwrap();
        // The admin's organisation is the quorum (1): its vote closes the round (having read every
        // slot written so far), its attestation makes the result final.
        let seen = ledger::Reader::replay(store.clone(), run).await.unwrap().next_seq();
        let vote = Body::CloseVote(CloseVote { round: ledger::Round(round), seen });
        appender.append(&[Entry::sign(run, vote, &[&admin]).unwrap()]).await.unwrap();
        let attestation = Body::Attestation(Attestation {
            round: ledger::Round(round),
            state: ledger::StateHash(current.hash().0),
            dropped: vec![],
        });
        appender.append(&[Entry::sign(run, attestation, &[&admin]).unwrap()]).await.unwrap();
        if round == 0 {
            let bytes = Bytes::from(current.to_safetensors().unwrap());
            let size = bytes.len() as u64;
            let blob = store.put_blob(bytes).await.unwrap();
            let body = Body::Snapshot(Snapshot {
                round: ledger::Round(0),
                state: ledger::StateHash(current.hash().0),
                blob,
                blob_size: size,
            });
            appender.append(&[Entry::sign(run, body, &[&admin]).unwrap()]).await.unwrap();
        }
    }
    current
}

#[tokio::test]
async fn audit_status_and_gc_on_a_local_run() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let last = two_rounds(&url).await;
    let state = last.hash().to_hex();

    let out = crate::cairn(&["audit", "--store", &url], &[]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(last_line(&out), format!("audit: OK rounds=2 entries=10 state={state}"));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("checkpoint  none cosigned by 1 organisation(s) yet"), "{stdout}");
    assert!(stdout.contains("not a training spec this auditor knows"), "a hand-made config: {stdout}");

    let out = crate::cairn(&["audit", "--store", &url, "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 1, "only the JSON object");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"], state.as_str());
    assert_eq!(json["rounds_replayed"], 2);
    assert!(json["first_problem"].is_null());

    let out = crate::cairn(&["status", "--store", &url], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(last_line(&out), "status: round=2 entries=10 members=3");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("round 1      loss 2.299 (2 contribution(s))"), "{stdout}");

    // A dry run deletes nothing; --delete removes round 0's two update blobs.
    let out = crate::cairn(&["gc", "--store", &url], &[]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(last_line(&out).starts_with("gc: dry-run blobs=2 bytes="), "{}", text(&out.stdout));
    let out = crate::cairn(&["gc", "--store", &url, "--delete"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(last_line(&out).starts_with("gc: deleted blobs=2 bytes="), "{}", text(&out.stdout));
    assert!(last_line(&out).ends_with(" absent=0"), "{}", text(&out.stdout));

    // From the snapshot the run still audits to the same state; from genesis it no longer can.
    let out = crate::cairn(&["audit", "--store", &url, "--from-snapshot"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(last_line(&out), format!("audit: OK rounds=1 entries=10 state={state}"));
    let out = crate::cairn(&["audit", "--store", &url], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(last_line(&out).starts_with("audit: FAIL round 0: blob "), "{}", last_line(&out));
    assert!(last_line(&out).ends_with(" unavailable: absent"), "{}", last_line(&out));
    let out = crate::cairn(&["gc", "--store", &url, "--delete"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(last_line(&out).starts_with("gc: REFUSED the audit fails"), "{}", last_line(&out));
}

#[test]
fn audit_of_a_store_without_a_run_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let out = crate::cairn(&["audit", "--store", &url], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: auditing"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
}

/// Issue 16, finding 9: a Genesis whose initial state is not the one its preset and seed give
/// (an admin planting a start) fails the audit, and workers refuse to join it. The same run with
/// the honest start passes and can be joined.
#[tokio::test]
async fn a_planted_initial_state_fails_the_audit_and_nobody_joins() {
    let spec = trainer::run_spec::RunSpec::parse(trainer::run_spec::RunSpec::EXAMPLE).unwrap();
    let mut parts = spec.genesis_parts(trainer::model::BYTE_VOCAB).unwrap();
    let admin = Keypair::from_seed([1; 32]);
    parts.roster = vec![Member { key: admin.public(), organisation: "alpha".into(), role: Role::Admin }];
    let model = parts.train.model_config().unwrap();
    let honest = trainer::model::init_state(&model, parts.train.seed).unwrap();
    let planted = trainer::model::init_state(&model, parts.train.seed + 1).unwrap();
    for (start, is_honest) in [(planted, false), (honest, true)] {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = storage::open(&url).await.unwrap();
        let bytes = Bytes::from(start.to_safetensors().unwrap());
        let size = bytes.len() as u64;
        let blob = store.put_blob(bytes).await.unwrap();
        let hash = ledger::StateHash(start.hash().0);
        let genesis = Genesis {
            org_quorum: 1,
            ..Genesis::new(parts.config.encode().unwrap(), parts.roster.clone(), 1, hash, blob, size)
        };
        let run = genesis.run_id();
        ledger::write_genesis(&store, &Entry::sign(run, Body::Genesis(genesis), &[&admin]).unwrap()).await.unwrap();

        let out = crate::cairn(&["audit", "--store", &url], &[]);
        let joined = trainer::follow::Follower::join(store.clone()).await;
        if is_honest {
            assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
            let Ok(mut follower) = joined else { panic!("the honest start is joined") };
            // A member stages large uploads in its organisation's folder (blake3("alpha"), first 8
            // bytes, from the Python blake3 package); a key outside the roster keeps the default.
            assert_eq!(follower.info().store.staging_prefix(), "tmp/");
            follower.stage_as(&Keypair::from_seed([9; 32]).public()).unwrap();
            assert_eq!(follower.info().store.staging_prefix(), "tmp/");
            follower.stage_as(&admin.public()).unwrap();
            assert_eq!(follower.info().store.staging_prefix(), "tmp/644a9bc57c6063e2/");
        } else {
            assert_eq!(out.status.code(), Some(1), "{}{}", text(&out.stdout), text(&out.stderr));
            let want =
                format!("audit: FAIL genesis: its initial state {} is not the one its config gives", start.hash());
            assert!(last_line(&out).starts_with(&want), "{}", last_line(&out));
            let Err(err) = joined else { panic!("a planted start is refused") };
            let err = err.to_string();
            assert!(err.contains("refusing a start nobody can recompute"), "{err}");
        }
    }
}
