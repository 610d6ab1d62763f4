//! The fuzz targets' bodies: each takes arbitrary bytes, as a peer or the bucket could supply them,
//! and must return (never panic, never hang, never allocate beyond the decoder's limits). Where a
//! decoder accepts the bytes, its canonical encoding must decode to the same value again.
//! [`seeds`] gives one valid input per target, written as the starting corpus by
//! `examples/seeds.rs`.

use ledger::checkpoint::parse_checkpoint_key;
use ledger::note::{Note, VerifierKey, decode_base64};
use ledger::slot::{decode_slot, encode_entries};
use ledger::{Body, Checkpoint, CloseVote, Entry, Keypair, Round, RunId, Seq, SignedCheckpoint, Witness};
use verify::wire::{Compression, Expected, Header, IndexCoding, Transform, ValueEncoding};
use verify::{Layout, RunConfig, State, TensorSpec};

/// A signed entry (`Entry::decode`, the bytes of one entry in a slot).
pub fn ledger_entry(data: &[u8]) {
    if let Ok(entry) = Entry::decode(data) {
        let canonical = entry.encode();
        let again = Entry::decode(&canonical).expect("an accepted entry's encoding decodes");
        assert_eq!(again.encode(), canonical, "entry encoding is not stable");
    }
}

/// A ledger slot: its batch framing, then every entry in it.
pub fn ledger_slot(data: &[u8]) {
    if let Ok(entries) = decode_slot(data) {
        for bytes in entries {
            ledger_entry(bytes);
        }
    }
}

/// A checkpoint signature file and a witness file.
pub fn checkpoint(data: &[u8]) {
    if let Ok(c) = SignedCheckpoint::decode(data) {
        let canonical = c.encode();
        let again = SignedCheckpoint::decode(&canonical).expect("an accepted checkpoint's encoding decodes");
        assert_eq!(again.encode(), canonical, "checkpoint encoding is not stable");
        let _ = c.valid_signers();
    }
    if let Ok(w) = Witness::decode(data) {
        let canonical = w.encode();
        let again = Witness::decode(&canonical).expect("an accepted witness's encoding decodes");
        assert_eq!(again.encode(), canonical, "witness encoding is not stable");
    }
}

/// Signed-note text, verifier keys, checkpoint object keys, base64.
pub fn note(data: &[u8]) {
    let _ = Note::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = VerifierKey::parse(text);
        let _ = parse_checkpoint_key(text);
        let _ = decode_base64(text);
        let _ = Checkpoint::from_note_text(text);
    }
}

/// The fixed model the update target decodes against: three tensors, one of them smaller than a
/// chunk and one a scalar, so that every grid shape is reached.
pub fn update_layout() -> Layout {
    Layout::new(vec![
        TensorSpec { name: "embed".into(), shape: vec![16, 64] },
        TensorSpec { name: "norm".into(), shape: vec![5] },
        TensorSpec { name: "scale".into(), shape: vec![] },
    ])
    .expect("a valid layout")
}

/// The compression an update input asks for: its first byte picks values, transform and index
/// coding (every version of the wire format), the rest is the update.
pub fn update_compression(selector: u8) -> Compression {
    let values = [ValueEncoding::Sign, ValueEncoding::Int8, ValueEncoding::Bf16, ValueEncoding::TwoBit]
        [usize::from(selector & 3)];
    let mut c = Compression::uniform(64, 4, values);
    if selector & 4 != 0 {
        c.transform = Transform::Identity;
    }
    if selector & 8 != 0 {
        c.indices = IndexCoding::EliasFano;
    }
    c
}

fn update_expected(layout: &Layout, compression: Compression) -> Expected<'_> {
    Expected {
        run: verify::RunId([1; 32]),
        round: verify::Round(3),
        base: verify::StateHash([2; 32]),
        worker: verify::WorkerKey(Keypair::from_seed([3; 32]).public().0),
        layout,
        compression,
    }
}

/// An update blob (wire format versions 1 to 4), decoded against a fixed run, round, base, worker
/// and layout, with the compression its first byte selects.
pub fn update_wire(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let layout = update_layout();
    let expected = update_expected(&layout, update_compression(selector));
    if expected.compression.validate_for(&layout).is_err() {
        return;
    }
    if let Ok(update) = verify::wire::decode(bytes, &expected) {
        let canonical = update.to_bytes();
        let again = verify::wire::decode(&canonical, &expected).expect("an accepted update's encoding decodes");
        assert_eq!(again.to_bytes(), canonical, "update encoding is not stable");
    }
}

/// The run config in a Genesis entry.
pub fn run_config(data: &[u8]) {
    if let Ok(config) = RunConfig::decode(data) {
        let canonical = config.encode().expect("an accepted config encodes");
        assert_eq!(RunConfig::decode(&canonical).expect("and decodes"), config, "config round trip");
    }
}

/// A model state (safetensors): snapshots, the genesis state.
pub fn state(data: &[u8]) {
    if let Ok(state) = State::from_safetensors(data) {
        let canonical = state.to_safetensors().expect("an accepted state encodes");
        let again = State::from_safetensors(&canonical).expect("and decodes");
        assert_eq!(again.hash(), state.hash(), "state round trip");
    }
}

/// One Elias-Fano index block: the first 4 bytes give the chunk's entries and the kept count.
pub fn elias_fano(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let n = u32::from(u16::from_le_bytes([data[0], data[1]]));
    let k = u32::from(u16::from_le_bytes([data[2], data[3]]));
    let mut out = Vec::new();
    // decode promises k indices; their range and order are the caller's to check (the update
    // decoder does, with `IndexOutOfRange` and its ordering rule, which update_wire reaches).
    if verify::elias_fano::decode(&data[4..], n, k, &mut out) {
        assert_eq!(out.len() as u32, k, "a decoded block holds k indices");
    }
}

/// A round's step (`verify::step`, what a follower may download instead of the round's updates),
/// read against the fuzz layout: an accepted step's encoding is the bytes it was read from (a step
/// has one encoding).
pub fn round_step(data: &[u8]) {
    if let Ok(step) = verify::step::RoundStep::decode(data, &update_layout()) {
        assert_eq!(step.encode(), data, "a step has one encoding");
    }
}

/// One valid input per target (and, for updates, one per compression), as (target, name, bytes).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let key = Keypair::from_seed([3; 32]);
    let run = RunId([1; 32]);
    let vote = Entry::sign(run, Body::CloseVote(CloseVote { round: Round(3), seen: Seq(7) }), &[&key]).expect("sign");
    // A genesis with a window: the one optional field of the format.
    let member = ledger::Member { key: key.public(), organisation: "a".into(), role: ledger::Role::Admin };
    let genesis = ledger::Genesis {
        window: 64,
        ..ledger::Genesis::new(vec![], vec![member], 1, ledger::StateHash([2; 32]), ledger::BlobId([3; 32]), 9)
    };
    let genesis = Entry::sign(genesis.run_id(), Body::Genesis(genesis), &[&key]).expect("sign");
    let mut out = vec![
        ("ledger_entry", "close-vote".to_string(), vote.encode()),
        ("ledger_entry", "genesis-window".to_string(), genesis.encode()),
        ("ledger_slot", "one-vote".to_string(), encode_entries(std::slice::from_ref(&vote)).expect("slot").to_vec()),
    ];
    let signed = SignedCheckpoint::sign(Checkpoint { run_id: run, size: 2, root: ledger::Hash([4; 32]) }, &key);
    out.push(("checkpoint", "signed".to_string(), signed.encode()));
    out.push((
        "checkpoint",
        "witness".to_string(),
        Witness { checkpoint: signed.clone(), leaves: vec![ledger::Hash([5; 32]); 2] }.encode(),
    ));
    out.push(("note", "note".to_string(), signed.to_note().expect("note").encode().into_bytes()));
    let layout = update_layout();
    let mut state = State::zeros(layout.clone());
    for (t, data) in state.data_mut().iter_mut().enumerate() {
        for (i, v) in data.iter_mut().enumerate() {
            *v = ((i * 7 + t * 13) % 17) as f32 - 8.0;
        }
    }
    for selector in 0..16u8 {
        let compression = update_compression(selector);
        let header = Header {
            run: verify::RunId([1; 32]),
            round: verify::Round(3),
            base: verify::StateHash([2; 32]),
            worker: verify::WorkerKey(key.public().0),
            layout: layout.hash(),
            compression,
        };
        if let Ok(update) = verify::encode(&state, &header) {
            let mut bytes = vec![selector];
            bytes.extend(update.to_bytes());
            out.push(("update_wire", format!("compression-{selector:02}"), bytes));
        }
    }
    out.push(("state", "state".to_string(), state.to_safetensors().expect("safetensors")));
    // The step from `state` to its next sign round, every parameter moved by -lr, 0 or +lr.
    let sign = verify::Hyper {
        compression: update_compression(0),
        schedule: verify::Schedule::Constant { lr: verify::Ratio::new(1, 100) },
        weight_decay: verify::Ratio::new(1, 10),
        clip: verify::NormClip::Off,
        step: verify::StepRule::Sign,
    };
    let mut after = state.clone();
    for (t, data) in after.data_mut().iter_mut().enumerate() {
        for (i, v) in data.iter_mut().enumerate() {
            let s = ((i + t) % 3) as f32 - 1.0;
            *v = *v * (1.0f32 - 0.01f32 * 0.1f32) - 0.01f32 * s;
        }
    }
    let step = verify::step::RoundStep::derive(&state, &after, verify::Round(3), &sign).expect("one step");
    out.push(("round_step", "step".to_string(), step.encode()));
    let config = RunConfig {
        layout: layout.clone(),
        hyper: verify::Hyper {
            compression: update_compression(13),
            schedule: verify::Schedule::Constant { lr: verify::Ratio::new(1, 100) },
            weight_decay: verify::Ratio::new(1, 10),
            clip: verify::NormClip::Median,
            step: verify::StepRule::Linear,
        },
        rounds: verify::RoundRules { min_contributions: 1, max_contributions: 16, overlap: false },
        exclusion: verify::ExclusionRules::absolute(0, 3),
        extra: b"{\"preset\":\"tiny\"}".to_vec(),
    };
    out.push(("run_config", "config".to_string(), config.encode().expect("config")));
    // version 6: with the relative threshold
    let relative = RunConfig {
        exclusion: verify::ExclusionRules { min_score: -20, max_failures: 3, min_pct_of_median: 25 },
        ..config
    };
    out.push(("run_config", "config-relative".to_string(), relative.encode().expect("config v6")));
    // version 7: overlapping rounds
    let overlapping = RunConfig {
        rounds: verify::RoundRules { min_contributions: 1, max_contributions: 16, overlap: true },
        ..relative.clone()
    };
    out.push(("run_config", "config-overlap".to_string(), overlapping.encode().expect("config v7")));
    let mut ef = vec![0u8; 4];
    ef[0..2].copy_from_slice(&4096u16.to_le_bytes());
    ef[2..4].copy_from_slice(&3u16.to_le_bytes());
    let mut block = Vec::new();
    verify::elias_fano::encode(&[5, 900, 4000], 4096, &mut block);
    ef.extend(block);
    out.push(("elias_fano", "three".to_string(), ef));
    out
}
