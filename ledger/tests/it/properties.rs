//! Property tests: canonical encodings, signatures bound to their run, Merkle proofs.

use ledger::checkpoint::{member_verifier_key, open_checkpoint_note};
use ledger::entry::{MAX_ORG_BYTES, Target};
use ledger::note::{Note, VerifierKey};
use ledger::{
    BlobId, Body, Change, Contribution, DecodeError, Entry, EntryPos, Genesis, Keypair, Member, Role, RosterChange,
    Round, RunId, Seq, Snapshot, StateHash, Verdict, merkle, slot,
};
use ledger::{Checkpoint, SignedCheckpoint};
use proptest::prelude::*;

fn arb_role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Admin), Just(Role::Worker), Just(Role::Validator)]
}

fn arb_member() -> impl Strategy<Value = Member> {
    (any::<[u8; 32]>(), "[a-zA-Zé ]{1,20}", arb_role()).prop_map(|(k, organisation, role)| Member {
        key: ledger::PublicKey(k),
        organisation: organisation.chars().take(usize::from(MAX_ORG_BYTES) / 2).collect(),
        role,
    })
}

fn arb_hash() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn arb_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(arb_member(), 0..6),
            any::<u16>(),
            arb_hash(),
            arb_hash(),
            any::<u64>()
        )
            .prop_map(|(config, mut roster, quorum, s, b, size)| {
                roster.sort_by_key(|m| m.key);
                roster.dedup_by(|a, b| a.key == b.key);
                let g = Genesis::new(config, roster, quorum, StateHash(s), BlobId(b), size);
                // A window on some (0, none, on the others): both encodings round-trip.
                let window = u32::from(quorum % 3) * 7;
                Body::Genesis(Genesis {
                    org_quorum: quorum.rotate_left(3),
                    salt: s[..16].try_into().unwrap(),
                    window,
                    ..g
                })
            }),
        (
            any::<u64>(),
            arb_hash(),
            proptest::collection::vec(any::<u8>(), 0..40),
            arb_hash(),
            any::<u64>(),
            proptest::collection::btree_map("[a-z_]{1,12}", any::<i64>(), 0..5)
        )
            .prop_map(|(round, base, assignment, blob, blob_size, metrics)| {
                Body::Contribution(Contribution {
                    round: Round(round),
                    base_state: StateHash(base),
                    assignment,
                    blob: BlobId(blob),
                    blob_size,
                    metrics: metrics.into_iter().collect(),
                })
            }),
        (any::<u64>(), any::<bool>(), any::<u64>(), any::<u16>(), arb_hash(), any::<i64>()).prop_map(
            |(round, by_pos, seq, index, blob, score)| {
                let target =
                    if by_pos { Target::Entry(EntryPos { seq: Seq(seq), index }) } else { Target::Blob(BlobId(blob)) };
                Body::Verdict(Verdict { round: Round(round), target, score })
            }
        ),
        (any::<u64>(), any::<u64>())
            .prop_map(|(r, seen)| Body::CloseVote(ledger::CloseVote { round: Round(r), seen: Seq(seen) })),
        (any::<u64>(), arb_hash(), proptest::collection::btree_set((any::<u64>(), any::<u16>()), 0..6)).prop_map(
            |(r, s, dropped)| Body::Attestation(ledger::Attestation {
                round: Round(r),
                state: StateHash(s),
                dropped: dropped.into_iter().map(|(seq, index)| EntryPos { seq: Seq(seq), index }).collect(),
            })
        ),
        (any::<u64>(), arb_hash(), arb_hash(), any::<u64>()).prop_map(|(r, s, b, n)| Body::Snapshot(Snapshot {
            round: Round(r),
            state: StateHash(s),
            blob: BlobId(b),
            blob_size: n
        })),
        (any::<u64>(), arb_hash(), 1..=ledger::entry::MAX_EVAL_SEQUENCES, any::<i64>()).prop_map(|(r, s, n, loss)| {
            Body::Evaluation(ledger::Evaluation {
                round: Round(r),
                state: StateHash(s),
                sequences: n,
                loss_milli: loss,
            })
        }),
        (
            any::<u64>(),
            prop_oneof![
                arb_member().prop_map(Change::Add),
                arb_hash().prop_map(|k| Change::Remove(ledger::PublicKey(k))),
                any::<u16>().prop_map(Change::SetQuorum),
            ]
        )
            .prop_map(|(epoch, change)| Body::RosterChange(RosterChange { epoch, change })),
    ]
}

fn arb_entry() -> impl Strategy<Value = Entry> {
    (arb_hash(), arb_body(), proptest::collection::btree_set(any::<u8>(), 1..4)).prop_map(|(run, body, seeds)| {
        let keys: Vec<Keypair> = seeds.into_iter().map(|s| Keypair::from_seed([s; 32])).collect();
        let refs: Vec<&Keypair> = keys.iter().collect();
        Entry::sign(RunId(run), body, &refs).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn entries_round_trip_and_verify(entry in arb_entry()) {
        let bytes = entry.encode();
        let back = Entry::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &entry);
        prop_assert_eq!(back.encode(), bytes);
        prop_assert!(back.bad_signers().is_empty());
    }

    #[test]
    fn any_flipped_bit_is_refused_or_breaks_a_signature(entry in arb_entry(), bit in any::<prop::sample::Index>()) {
        let mut bytes = entry.encode();
        let i = bit.index(bytes.len() * 8);
        bytes[i / 8] ^= 1 << (i % 8);
        match Entry::decode(&bytes) {
            Err(_) => {}
            Ok(mutated) => {
                // Whatever decodes is canonical: it re-encodes to exactly these bytes...
                prop_assert_eq!(mutated.encode(), bytes);
                // ...and no longer carries valid signatures throughout.
                prop_assert!(!mutated.bad_signers().is_empty());
            }
        }
    }

    #[test]
    fn truncated_or_extended_entries_are_refused(entry in arb_entry(), cut in any::<prop::sample::Index>(), extra in any::<u8>()) {
        let bytes = entry.encode();
        let n = cut.index(bytes.len());
        prop_assert!(Entry::decode(&bytes[..n]).is_err());
        let mut longer = bytes.clone();
        longer.push(extra);
        prop_assert_eq!(Entry::decode(&longer), Err(DecodeError::TrailingBytes { count: 1 }));
    }

    #[test]
    fn random_bytes_never_panic_and_decode_only_canonically(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(e) = Entry::decode(&bytes) {
            prop_assert_eq!(e.encode(), bytes.clone());
        }
        if let Ok(entries) = slot::decode_slot(&bytes) {
            let owned: Vec<Vec<u8>> = entries.iter().map(|e| e.to_vec()).collect();
            prop_assert_eq!(slot::encode_slot(&owned).unwrap().to_vec(), bytes.clone());
        }
        let _ = SignedCheckpoint::decode(&bytes);
        if let Ok(note) = Note::parse(&bytes) {
            prop_assert_eq!(note.encode().into_bytes(), bytes.clone());
        }
    }

    /// Peer text: notes, vkeys and checkpoint texts built from the characters that matter (em
    /// dashes, newlines, '+', base64) never panic, and what parses re-encodes to itself.
    #[test]
    fn random_note_text_never_panics_and_parses_only_canonically(text in "[a-z0-9+/=\u{2014} \n\t.]{0,200}") {
        if let Ok(note) = Note::parse(text.as_bytes()) {
            prop_assert_eq!(note.encode(), text.clone());
            let _ = note.verify(&[]);
        }
        if let Ok(vkey) = VerifierKey::parse(&text) {
            prop_assert_eq!(VerifierKey::parse(&vkey.to_string()), Ok(vkey));
        }
        if let Ok(cp) = Checkpoint::from_note_text(&text) {
            prop_assert_eq!(cp.note_text(), text.clone());
        }
    }

    /// Domain separation between the two things member keys sign. An entry's signed bytes start
    /// with `cairn-entry/v2` and hold its version byte, 0x02, at offset 46: no signed note may
    /// hold that byte, so no note verifier takes an entry signature for a note signature. A
    /// checkpoint's note text starts with `cairn.run/` and is printable: never an entry message.
    #[test]
    fn entry_messages_and_checkpoint_note_texts_never_coincide(entry in arb_entry(), run in arb_hash(), size in any::<u64>(), root in arb_hash()) {
        let signed = [ledger::key::ENTRY_DOMAIN, &entry.signed_message()].concat();
        prop_assert_eq!(signed[46], 0x02);
        let mut as_note = signed.clone();
        as_note.extend_from_slice("\n\n\u{2014} k AAAAAAA=\n".as_bytes());
        let refused = matches!(Note::parse(&as_note), Err(ledger::NoteError::ControlCharacter { .. } | ledger::NoteError::NotUtf8));
        prop_assert!(refused, "an entry message read as a note");
        let text = Checkpoint { run_id: RunId(run), size, root: merkle::Hash(root) }.note_text();
        prop_assert!(text.starts_with("cairn.run/") && !text.as_bytes().starts_with(b"cairn-entry/"));
        prop_assert!(text.bytes().all(|b| b == b'\n' || (0x20..0x7f).contains(&b)));
    }

    /// Any checkpoint signed by any members converts to a note that their vkeys verify, and back
    /// to the same checkpoint; a note over another size or root verifies for nobody.
    #[test]
    fn checkpoint_notes_round_trip_and_verify(run in arb_hash(), size in any::<u64>(), root in arb_hash(), seeds in proptest::collection::btree_set(any::<[u8; 32]>(), 1..6)) {
        let keys: Vec<Keypair> = seeds.into_iter().map(Keypair::from_seed).collect();
        let cp = Checkpoint { run_id: RunId(run), size, root: merkle::Hash(root) };
        let mut signed = SignedCheckpoint::sign(cp, &keys[0]);
        for k in &keys[1..] {
            signed.cosign(k);
        }
        let vkeys: Vec<VerifierKey> = keys.iter().map(|k| member_verifier_key(cp.run_id, &k.public())).collect();
        let note = signed.to_note().unwrap().encode();
        let (back, signers) = open_checkpoint_note(note.as_bytes(), &vkeys).unwrap();
        prop_assert_eq!(back, cp);
        prop_assert_eq!(signers.len(), keys.len());
        let moved = Checkpoint { size: size.wrapping_add(1), ..cp };
        let forged = note.replacen(&cp.note_text(), &moved.note_text(), 1);
        prop_assert!(open_checkpoint_note(forged.as_bytes(), &vkeys).is_err());
    }

    #[test]
    fn a_signature_from_one_run_never_verifies_in_another(entry in arb_entry(), other in arb_hash()) {
        prop_assume!(RunId(other) != entry.run_id);
        let moved = Entry { run_id: RunId(other), ..entry.clone() };
        prop_assert_eq!(moved.bad_signers().len(), entry.signatures.len());
    }

    #[test]
    fn slots_round_trip(entries in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..20)) {
        let framed = slot::encode_slot(&entries).unwrap();
        let back: Vec<Vec<u8>> = slot::decode_slot(&framed).unwrap().iter().map(|e| e.to_vec()).collect();
        prop_assert_eq!(back, entries);
    }

    #[test]
    fn inclusion_proofs_verify_and_fail_on_any_flipped_bit(n in 1usize..200, i in any::<prop::sample::Index>(), bit in any::<prop::sample::Index>()) {
        let leaves: Vec<merkle::Hash> = (0..n as u64).map(|k| merkle::leaf_hash(&k.to_be_bytes())).collect();
        let root = merkle::root(&leaves);
        let i = i.index(n);
        let proof = merkle::inclusion_proof(i, &leaves);
        prop_assert!(merkle::verify_inclusion(&leaves[i], i as u64, n as u64, &proof, &root));
        // Flip one bit somewhere in (leaf, proof, root).
        let mut leaf = leaves[i];
        let (mut proof2, mut root2) = (proof.clone(), root);
        let total_bits = (proof.len() + 2) * 256;
        let b = bit.index(total_bits);
        let (which, byte, mask) = (b / 256, (b % 256) / 8, 1u8 << (b % 8));
        if which == 0 { leaf.0[byte] ^= mask } else if which == 1 { root2.0[byte] ^= mask } else { proof2[which - 2].0[byte] ^= mask }
        prop_assert!(!merkle::verify_inclusion(&leaf, i as u64, n as u64, &proof2, &root2));
    }

    #[test]
    fn consistency_proofs_verify_and_fail_on_any_flipped_bit(n in 1usize..200, m in any::<prop::sample::Index>(), bit in any::<prop::sample::Index>()) {
        let leaves: Vec<merkle::Hash> = (0..n as u64).map(|k| merkle::leaf_hash(&k.to_be_bytes())).collect();
        let m = m.index(n) + 1; // 1..=n
        let (old, new) = (merkle::root(&leaves[..m]), merkle::root(&leaves));
        let proof = merkle::consistency_proof(m, &leaves);
        prop_assert!(merkle::verify_consistency(m as u64, &old, n as u64, &new, &proof));
        let total_bits = (proof.len() + 2) * 256;
        let b = bit.index(total_bits);
        let (which, byte, mask) = (b / 256, (b % 256) / 8, 1u8 << (b % 8));
        let (mut old2, mut new2, mut proof2) = (old, new, proof.clone());
        if which == 0 { old2.0[byte] ^= mask } else if which == 1 { new2.0[byte] ^= mask } else { proof2[which - 2].0[byte] ^= mask }
        prop_assert!(!merkle::verify_consistency(m as u64, &old2, n as u64, &new2, &proof2));
    }
}

/// One step of a random log history.
#[derive(Debug, Clone)]
enum Op {
    Contribute { worker: usize, round: u64 },
    ContributeAsValidator { round: u64 },
    Close { round: u64 },
    Garbage(Vec<u8>),
    Batch { round: u64, size: usize },
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..3u64).prop_map(|(worker, round)| Op::Contribute { worker, round }),
        1 => (0..3u64).prop_map(|round| Op::ContributeAsValidator { round }),
        1 => (0..3u64).prop_map(|round| Op::Close { round }),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Garbage),
        1 => (0..3u64, 1..5usize).prop_map(|(round, size)| Op::Batch { round, size }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A follower that polls after every append ends where a one-shot replay does: same leaves,
    /// same verdicts, same index.
    #[test]
    fn following_the_log_equals_replaying_it(ops in proptest::collection::vec(arb_op(), 1..25)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async move {
            let run = crate::common::TestRun::new(3);
            let store = crate::common::memory_store().await;
            ledger::write_genesis(&store, &run.genesis()).await.unwrap();
            let mut follower = ledger::Reader::replay(store.clone(), run.run_id).await.unwrap();
            let mut appender = ledger::Appender::new(store.clone());
            for (n, op) in ops.iter().enumerate() {
                let n = n as u64;
                match op {
                    Op::Contribute { worker, round } => {
                        appender.append(&[run.contribution(*worker, *round, n)]).await.unwrap();
                    }
                    Op::ContributeAsValidator { round } => {
                        let body = run.contribution(0, *round, n).body;
                        appender.append(&[Entry::sign(run.run_id, body, &[&run.validator]).unwrap()]).await.unwrap();
                    }
                    Op::Close { round } => {
                        appender.append(&[run.close(*round)]).await.unwrap();
                    }
                    Op::Garbage(bytes) => {
                        appender.append_slot(bytes::Bytes::from(bytes.clone())).await.unwrap();
                    }
                    Op::Batch { round, size } => {
                        let batch: Vec<Entry> =
                            (0..*size).map(|i| run.contribution(i % 3, *round, n * 10 + i as u64)).collect();
                        appender.append(&batch).await.unwrap();
                    }
                }
                follower.poll().await.unwrap();
            }
            let replayed = ledger::Reader::replay(store, run.run_id).await.unwrap();
            assert_eq!(follower.leaves(), replayed.leaves());
            let verdicts = |r: &ledger::Reader| r.entries().iter().map(|e| (e.pos, e.validity.clone())).collect::<Vec<_>>();
            assert_eq!(verdicts(&follower), verdicts(&replayed));
            for round in 0..3 {
                let positions = |r: &ledger::Reader| r.by_round(Round(round)).map(|e| e.pos).collect::<Vec<_>>();
                assert_eq!(positions(&follower), positions(&replayed));
            }
            assert_eq!(follower.next_seq().0, ops.len() as u64 + 1);
        });
    }
}
