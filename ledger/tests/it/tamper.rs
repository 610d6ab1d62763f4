//! A member with write access rewrites history after a checkpoint: readers notice, and name
//! the slot.

use bytes::Bytes;
use ledger::checkpoint::{CHECKPOINT_PREFIX, checkpoint_key, member_verifier_key, open_checkpoint_note};
use ledger::note::{MAX_NOTE_SIGNATURES, VerifierKey};
use ledger::{Appender, LedgerError, Reader, Seq, SignedCheckpoint, Tamper, seq_key};
use storage::Store;

use crate::common::{TestRun, memory_store};

const SLOTS: u64 = 10;

/// A log of genesis + 9 contributions, checkpointed and cosigned.
async fn checkpointed_log() -> (TestRun, Store, Reader, SignedCheckpoint) {
    let run = TestRun::new(3);
    let store = memory_store().await;
    let mut a = Appender::new(store.clone());
    a.append(&[run.genesis()]).await.unwrap();
    for n in 1..SLOTS {
        a.append(&[run.contribution((n % 3) as usize, 0, n)]).await.unwrap();
    }
    let mut reader = Reader::replay(store.clone(), run.run_id).await.unwrap();
    reader.publish_checkpoint(&run.admins[0], SLOTS).await.unwrap();
    let mut cosigner = Reader::replay(store.clone(), run.run_id).await.unwrap();
    let cp = cosigner.publish_checkpoint(&run.admins[1], SLOTS).await.unwrap();
    assert_eq!(cp.signatures.len(), 2, "the second admin cosigned the same tree head");
    // Two organisations (admin-org-0, admin-org-1) signed it.
    assert_eq!(reader.check_checkpoint(2).await.unwrap(), Some(cp.clone()));
    (run, store, reader, cp)
}

async fn swap(store: &Store, a: Seq, b: Seq) {
    let x = store.get(&seq_key(a), u64::MAX).await.unwrap().bytes;
    let y = store.get(&seq_key(b), u64::MAX).await.unwrap().bytes;
    store.put(&seq_key(a), y).await.unwrap();
    store.put(&seq_key(b), x).await.unwrap();
}

#[tokio::test]
async fn overwritten_slot_is_named_by_the_reader_that_verified_it() {
    let (run, store, reader, _) = checkpointed_log().await;
    let forged = ledger::slot::encode_entries(&[run.contribution(0, 0, 999)]).unwrap();
    store.put(&seq_key(Seq(4)), forged).await.unwrap();
    let err = reader.audit().await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Tampered { seq: Seq(4), how: Tamper::Rewritten, checkpoint_size: SLOTS }),
        "{err}"
    );
    assert!(err.to_string().contains("slot 4 was rewritten"), "{err}");
}

#[tokio::test]
async fn deleted_slot_is_named_by_the_old_reader_and_by_a_fresh_one() {
    let (run, store, reader, cp) = checkpointed_log().await;
    store.delete(&seq_key(Seq(6))).await.unwrap();
    let err = reader.audit().await.unwrap_err();
    assert!(matches!(err, LedgerError::Tampered { seq: Seq(6), how: Tamper::Deleted, .. }), "{err}");
    // A new process that kept only the checkpoint bytes.
    let kept = SignedCheckpoint::decode(&cp.encode()).unwrap();
    let err = Reader::replay_from_checkpoint(store, run.run_id, kept).await.unwrap_err();
    assert!(matches!(err, LedgerError::Tampered { seq: Seq(6), how: Tamper::Deleted, .. }), "{err}");
}

#[tokio::test]
async fn reordered_slots_are_named_and_break_the_checkpoint() {
    let (run, store, reader, cp) = checkpointed_log().await;
    swap(&store, Seq(2), Seq(7)).await;
    let err = reader.audit().await.unwrap_err();
    assert!(matches!(err, LedgerError::Tampered { seq: Seq(2), how: Tamper::Rewritten, .. }), "{err}");
    let err = Reader::replay_from_checkpoint(store, run.run_id, cp).await.unwrap_err();
    assert!(matches!(err, LedgerError::CheckpointMismatch { size: SLOTS, .. }), "{err}");
}

#[tokio::test]
async fn a_forked_checkpoint_over_rewritten_history_is_refused_with_the_slot() {
    let (run, store, mut reader, honest) = checkpointed_log().await;
    // An admin rewrites slot 3 and signs the same size over the forged log: one organisation.
    let forged = ledger::slot::encode_entries(&[run.contribution(1, 0, 777)]).unwrap();
    store.put(&seq_key(Seq(3)), forged).await.unwrap();
    let mut forger = Reader::replay(store.clone(), run.run_id).await.unwrap();
    let fork = forger.publish_checkpoint(&run.admins[2], SLOTS).await.unwrap();
    assert_eq!(fork.signatures.len(), 1, "nobody else signed the forged root");
    // At a quorum of two organisations the honest head stands; the reader that read the slots
    // before names the rewritten one, a fresh reader knows that history was rewritten.
    assert_eq!(reader.check_checkpoint(2).await.unwrap(), Some(honest));
    let err = reader.audit().await.unwrap_err();
    assert!(matches!(err, LedgerError::Tampered { seq: Seq(3), how: Tamper::Rewritten, .. }), "{err}");
    let mut fresh = Reader::new(store.clone(), run.run_id);
    fresh.poll().await.unwrap();
    let err = fresh.check_checkpoint(2).await.unwrap_err();
    assert!(matches!(err, LedgerError::CheckpointMismatch { size: SLOTS }), "{err}");
    // A reader at a quorum of one sees two heads of the same size, each "signed by a quorum".
    let mut careless = Reader::new(store.clone(), run.run_id);
    careless.poll().await.unwrap();
    let err = careless.check_checkpoint(1).await.unwrap_err();
    assert!(matches!(err, LedgerError::CheckpointMismatch { size: SLOTS }), "{err}");
}

#[tokio::test]
async fn a_smaller_checkpoint_is_a_rollback() {
    let (run, store, mut reader, cp) = checkpointed_log().await;
    // Someone with write access deletes the signatures over the newest head; an older head
    // (size 5, signed by two organisations) is all that is left.
    for admin in &run.admins[..2] {
        store.delete(&checkpoint_key(SLOTS, &admin.public())).await.unwrap();
    }
    let mut old = Reader::new(store.clone(), run.run_id);
    old.poll().await.unwrap();
    old.publish_checkpoint(&run.admins[1], 5).await.unwrap();
    old.publish_checkpoint(&run.admins[2], 5).await.unwrap();
    let err = reader.check_checkpoint(2).await.unwrap_err();
    assert!(matches!(err, LedgerError::CheckpointRollback { trusted: SLOTS, found: 5 }), "{err}");
    assert_eq!(reader.trusted_checkpoint(), Some(&cp));
}

/// Issue 16, finding 7: one member (or a bucket writer) stores tree heads that no quorum signed,
/// strangers' signatures, garbage under a member's name, and a head far beyond the log. Readers
/// skip all of it, and other members still sign.
#[tokio::test]
async fn heads_without_a_quorum_of_organisations_are_skipped() {
    let (run, store, mut reader, cp) = checkpointed_log().await;
    let stranger = ledger::Keypair::from_seed([0xee; 32]);
    let leaves = reader.leaves().to_vec();
    let head = |size: u64| ledger::Checkpoint { run_id: run.run_id, size, root: ledger::merkle::root(&leaves) };
    let put = |key: String, bytes: Vec<u8>| {
        let store = store.clone();
        async move { store.put(&key, Bytes::from(bytes)).await.unwrap() }
    };
    // A head beyond the log, signed by one admin; the same by a stranger.
    put(checkpoint_key(1000, &run.admins[2].public()), SignedCheckpoint::sign(head(1000), &run.admins[2]).encode())
        .await;
    put(checkpoint_key(1000, &stranger.public()), SignedCheckpoint::sign(head(1000), &stranger).encode()).await;
    // The stranger's signature stored under a member's name, and garbage under another's.
    put(checkpoint_key(2000, &run.admins[0].public()), SignedCheckpoint::sign(head(2000), &stranger).encode()).await;
    put(checkpoint_key(2000, &run.admins[1].public()), b"not a checkpoint".to_vec()).await;
    put(format!("{CHECKPOINT_PREFIX}junk"), b"x".to_vec()).await;
    // A head in the retired format (version 1) signed by two organisations: not read any more.
    for admin in &run.admins[..2] {
        let mut v1 = SignedCheckpoint::sign(head(SLOTS), admin).encode();
        v1[0] = 1;
        put(checkpoint_key(SLOTS + 1, &admin.public()), v1).await;
    }

    assert_eq!(reader.check_checkpoint(2).await.unwrap(), Some(cp.clone()));
    let mut fresh = Reader::new(store.clone(), run.run_id);
    fresh.poll().await.unwrap();
    assert_eq!(fresh.check_checkpoint(2).await.unwrap(), Some(cp.clone()));
    // A worker still signs the honest head; the garbage does not stand in its way.
    let signed = fresh.publish_checkpoint(&run.workers[0], SLOTS).await.unwrap();
    assert_eq!(signed.signatures.len(), 3);
}

/// The reader's quorum checkpoint as one signed note: every roster member's vkey verifies it, an
/// outsider's vkey alone does not, and the note states the checkpoint the reader verified.
#[tokio::test]
async fn the_quorum_checkpoint_is_a_signed_note_its_members_vkeys_verify() {
    let (run, _, reader, cp) = checkpointed_log().await;
    let note = reader.checkpoint_note(&cp).unwrap().encode();
    let vkeys: Vec<VerifierKey> = reader.state().roster().keys().map(|k| member_verifier_key(run.run_id, k)).collect();
    let (checkpoint, signers) = open_checkpoint_note(note.as_bytes(), &vkeys).unwrap();
    assert_eq!(checkpoint, cp.checkpoint);
    let mut expected = vec![run.admins[0].public(), run.admins[1].public()];
    expected.sort();
    assert_eq!(signers.iter().map(|v| *v.key()).collect::<Vec<_>>(), expected, "one line each, in key order");
    let stranger = member_verifier_key(run.run_id, &ledger::Keypair::from_seed([0xee; 32]).public());
    assert!(matches!(open_checkpoint_note(note.as_bytes(), &[stranger]), Err(ledger::NoteError::NoKnownSignature)));
    // Another run's vkeys for the same members name other keys: nothing verifies.
    let other: Vec<VerifierKey> =
        reader.state().roster().keys().map(|k| member_verifier_key(ledger::RunId([9; 32]), k)).collect();
    assert!(open_checkpoint_note(note.as_bytes(), &other).is_err());
}

/// More members sign a head than one note holds (a note keeps at most 100 signatures, what Go's
/// verifier accepts): the note keeps one signature of every organisation, and the witness keeps
/// them all.
#[tokio::test]
async fn a_head_signed_by_more_members_than_a_note_holds_keeps_every_organisation_in_the_note() {
    let run = crate::common::TestRun::new(120);
    let store = memory_store().await;
    let mut a = Appender::new(store.clone());
    a.append(&[run.genesis()]).await.unwrap();
    a.append(&[run.contribution(0, 0, 1)]).await.unwrap();
    let mut reader = Reader::replay(store.clone(), run.run_id).await.unwrap();
    for key in run.admins.iter().chain(&run.workers).chain([&run.validator]) {
        reader.publish_checkpoint(key, 2).await.unwrap();
    }
    let cp = reader.check_checkpoint(2).await.unwrap().unwrap();
    assert_eq!(cp.signatures.len(), 124);
    let witness = reader.witness().unwrap();
    assert_eq!(ledger::Witness::decode(&witness.encode()).unwrap(), witness, "a witness holds all 124");
    let note = reader.checkpoint_note(&cp).unwrap();
    assert_eq!(note.signatures.len(), MAX_NOTE_SIGNATURES);
    let vkeys: Vec<VerifierKey> = reader.state().roster().keys().map(|k| member_verifier_key(run.run_id, k)).collect();
    let (_, signers) = open_checkpoint_note(note.encode().as_bytes(), &vkeys).unwrap();
    let organisations: std::collections::BTreeSet<&str> =
        signers.iter().filter_map(|v| reader.state().organisation(v.key())).collect();
    assert_eq!(organisations.len(), 8, "admin-org-0..2, org-0..3 and audit: {organisations:?}");
}

/// The tail of the log is deleted after a quorum signed a head over it: a fresh reader that
/// never saw those slots still learns that they existed.
#[tokio::test]
async fn a_quorum_head_beyond_the_log_reveals_deleted_slots() {
    let (run, store, _, _) = checkpointed_log().await;
    for seq in [SLOTS - 2, SLOTS - 1] {
        store.delete(&seq_key(Seq(seq))).await.unwrap();
    }
    let mut fresh = Reader::new(store.clone(), run.run_id);
    fresh.poll().await.unwrap();
    assert_eq!(fresh.next_seq(), Seq(SLOTS - 2));
    let err = fresh.check_checkpoint(2).await.unwrap_err();
    assert!(matches!(err, LedgerError::LogTooShort { needed: SLOTS, .. }), "{err}");
}

/// A bucket writer stores bytes at a member's own checkpoint key before the member signs: that
/// member's signature for that size is lost (with a clear error), nothing else is.
#[tokio::test]
async fn a_taken_checkpoint_key_costs_one_signature() {
    let (run, store, mut reader, _) = checkpointed_log().await;
    store.put(&checkpoint_key(SLOTS, &run.workers[1].public()), Bytes::from_static(b"squatted")).await.unwrap();
    let err = reader.publish_checkpoint(&run.workers[1], SLOTS).await.unwrap_err();
    assert!(matches!(err, LedgerError::CheckpointKeyTaken { size: SLOTS }), "{err}");
    // Publishing again, once ours is there, is not an error.
    reader.publish_checkpoint(&run.admins[0], SLOTS).await.unwrap();
}

#[tokio::test]
async fn an_honest_extension_is_accepted_and_proved() {
    let (run, store, mut reader, old) = checkpointed_log().await;
    let mut a = Appender::new(store.clone());
    for n in 0..5 {
        a.append(&[run.contribution(2, 1, n)]).await.unwrap();
    }
    reader.poll().await.unwrap();
    let new = reader.publish_checkpoint(&run.admins[0], SLOTS + 5).await.unwrap();
    assert_eq!(new.checkpoint.size, SLOTS + 5);
    let proof = reader.consistency_proof(old.checkpoint.size, new.checkpoint.size).unwrap();
    ledger::verify_extension(&old.checkpoint, &new.checkpoint, &proof).unwrap();
    // A light client checks that slot 12 is in the new tree.
    let leaf = reader.leaves()[12];
    let path = reader.inclusion_proof(Seq(12), new.checkpoint.size).unwrap();
    assert!(ledger::merkle::verify_inclusion(&leaf, 12, new.checkpoint.size, &path, &new.checkpoint.root));
    assert!(reader.check_checkpoint(1).await.unwrap().is_some());
}

#[tokio::test]
async fn a_new_process_with_a_witness_names_rewritten_and_reordered_slots() {
    let (run, store, reader, _) = checkpointed_log().await;
    let kept = reader.witness().unwrap().encode();
    let witness = || ledger::Witness::decode(&kept).unwrap();
    // Untouched: the replay goes through.
    Reader::replay_from_witness(store.clone(), run.run_id, witness()).await.unwrap();

    let original = store.get(&seq_key(Seq(4)), u64::MAX).await.unwrap().bytes;
    store.put(&seq_key(Seq(4)), ledger::slot::encode_entries(&[run.contribution(0, 0, 999)]).unwrap()).await.unwrap();
    let err = Reader::replay_from_witness(store.clone(), run.run_id, witness()).await.unwrap_err();
    assert!(matches!(err, LedgerError::Tampered { seq: Seq(4), how: Tamper::Rewritten, .. }), "{err}");
    store.put(&seq_key(Seq(4)), original).await.unwrap();

    swap(&store, Seq(3), Seq(8)).await;
    let err = Reader::replay_from_witness(store.clone(), run.run_id, witness()).await.unwrap_err();
    assert!(matches!(err, LedgerError::Tampered { seq: Seq(3), how: Tamper::Rewritten, .. }), "{err}");
}

#[test]
fn a_witness_whose_leaves_do_not_match_its_root_is_refused() {
    let leaves: Vec<ledger::Hash> = (0..4u8).map(|i| ledger::merkle::leaf_hash(&[i])).collect();
    let cp = ledger::Checkpoint { run_id: ledger::RunId([1; 32]), size: 4, root: ledger::merkle::root(&leaves) };
    let checkpoint = SignedCheckpoint::sign(cp, &ledger::Keypair::from_seed([1; 32]));
    let good = ledger::Witness { checkpoint: checkpoint.clone(), leaves: leaves.clone() };
    assert_eq!(ledger::Witness::decode(&good.encode()).unwrap(), good);
    let mut wrong = leaves;
    wrong.swap(0, 1);
    let bad = ledger::Witness { checkpoint, leaves: wrong };
    assert!(ledger::Witness::decode(&bad.encode()).is_err());
    let mut short = good.encode();
    short.truncate(short.len() - 1);
    assert!(ledger::Witness::decode(&short).is_err());
}
