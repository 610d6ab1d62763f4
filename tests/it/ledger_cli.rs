//! `cairn keygen`, `cairn export` and `cairn checkpoint`; the export read back by pyarrow and the
//! checkpoint note checked by an independent verifier (infra/spec-check/signed_note.py), as a
//! user would.

use std::path::Path;
use std::process::{Command, Output};

use bytes::Bytes;
use ledger::{Appender, BlobId, Body, CloseVote, Contribution, Entry, Genesis, Keypair, Member, Role, Round, RunId};

fn cairn(args: &[&str]) -> Output {
    crate::cairn(args, &[])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn keygen_writes_a_private_key_prints_its_hex_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("member.key");
    let out = cairn(&["keygen", "--out", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let printed = stdout.trim_end();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let key = ledger::read_key_file(&path).unwrap();
    assert_eq!(printed, key.public().to_string(), "printed key is the file's, in the ledger's hex");
    assert_eq!(printed.parse::<ledger::PublicKey>().unwrap(), key.public());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let before = std::fs::read(&path).unwrap();
    let again = cairn(&["keygen", "--out", path.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).starts_with("error: "), "{}", text(&again.stderr));
    assert!(again.stdout.is_empty());
    assert_eq!(std::fs::read(&path).unwrap(), before, "the existing key is untouched");
}

/// A small run in a local folder: genesis, two contributions (one in a batch with a verdict-free
/// duplicate), a garbage slot, and a close vote. Returns the run id and the worker's key.
async fn small_run(url: &str) -> (RunId, Keypair) {
    let store = storage::open(url).await.unwrap();
    let admin = Keypair::from_seed([1; 32]);
    let worker = Keypair::from_seed([2; 32]);
    let roster = vec![
        Member { key: admin.public(), organisation: "org-admin".into(), role: Role::Admin },
        Member { key: worker.public(), organisation: "org-worker".into(), role: Role::Worker },
    ];
    let genesis = Genesis::new(b"cfg".to_vec(), roster, 1, ledger::StateHash([0; 32]), BlobId([3; 32]), 77);
    let run_id = genesis.run_id();
    let contribution = |n: u64| {
        let c = Contribution {
            round: Round(0),
            base_state: ledger::StateHash([0; 32]),
            assignment: vec![],
            blob: BlobId::of(&n.to_be_bytes()),
            blob_size: 1000 + n,
            metrics: vec![],
        };
        Entry::sign(run_id, Body::Contribution(c), &[&worker]).unwrap()
    };
    let mut a = Appender::new(store.clone());
    a.append(&[Entry::sign(run_id, Body::Genesis(genesis), &[&admin]).unwrap()]).await.unwrap(); // slot 0
    a.append(&[contribution(1)]).await.unwrap(); // slot 1
    a.append(&[contribution(2), contribution(2)]).await.unwrap(); // slot 2: valid, duplicate
    store.put_if_absent(&ledger::seq_key(ledger::Seq(3)), Bytes::from_static(b"garbage")).await.unwrap(); // slot 3
    let close = CloseVote { round: Round(0), seen: ledger::Seq(4) };
    a.append(&[Entry::sign(run_id, Body::CloseVote(close), &[&admin]).unwrap()]).await.unwrap(); // slot 4
    (run_id, worker)
}

fn python() -> String {
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/setup-python.sh"))
        .output()
        .expect("run infra/setup-python.sh");
    assert!(out.status.success(), "infra/setup-python.sh failed: {}", text(&out.stderr));
    format!("{}/bin/python", text(&out.stdout).trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_parquet_that_pyarrow_reads() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/run", dir.path().display());
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    let (run_id, worker) = small_run(&url).await;
    let file = dir.path().join("ledger.parquet");
    let out = cairn(&["export", "--store", &url, "--out", file.to_str().unwrap(), "--publish"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");

    let store = storage::open(&url).await.unwrap();
    let reader = ledger::Reader::replay(store.clone(), run_id).await.unwrap();
    let root = reader.root_at(5).unwrap();
    assert_eq!(last, format!("export: run={run_id} rows=6 size=5 root={root}"));
    let stored = store.get(&ledger::export::whole_export_key(5), 1 << 20).await.unwrap();
    assert_eq!(stored.bytes, Bytes::from(std::fs::read(&file).unwrap()), "the stored export is the file");

    let script = r#"
import sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
md = t.schema.metadata
footer = pq.read_metadata(sys.argv[1]).metadata
assert footer[b"cairn.root"] == md[b"cairn.root"], (footer, md)
print("rows", t.num_rows)
print("root", md[b"cairn.root"].decode())
print("size", md[b"cairn.size"].decode())
print("run", md[b"cairn.run_id"].decode())
print("kinds", ",".join(k or "-" for k in t.column("kind").to_pylist()))
print("signer1", t.column("signer")[1].as_py())
print("org1", t.column("organisation")[1].as_py())
print("blob_size1", t.column("blob_size")[1].as_py())
print("validity", "|".join(t.column("validity").to_pylist()))
print("seqs", ",".join(str(s) for s in t.column("seq").to_pylist()))
print("entry1", t.column("entry")[1].as_py().hex())
print("leaf3", t.column("leaf_hash")[4].as_py())
"#;
    let py = Command::new(python()).args(["-c", script, file.to_str().unwrap()]).output().expect("run python");
    assert!(py.status.success(), "pyarrow: {}", text(&py.stderr));
    let got = text(&py.stdout);
    let field = |name: &str| -> String {
        got.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} missing from {got}"))
            .to_string()
    };
    assert_eq!(field("rows"), "6");
    assert_eq!(field("root"), root.to_string());
    assert_eq!(field("size"), "5");
    assert_eq!(field("run"), run_id.to_string());
    assert_eq!(field("kinds"), "genesis,contribution,contribution,contribution,-,close_vote");
    assert_eq!(field("seqs"), "0,1,2,2,3,4");
    assert_eq!(field("signer1"), worker.public().to_string());
    assert_eq!(field("org1"), "org-worker");
    assert_eq!(field("blob_size1"), "1001");
    let validity = field("validity");
    let v: Vec<&str> = validity.split('|').collect();
    assert_eq!(v[..3], ["valid", "valid", "valid"]);
    assert_eq!(v[3], "duplicate of an accepted entry");
    assert!(v[4].starts_with("the slot is not a valid batch"), "{validity}");
    assert_eq!(v[5], "valid");
    assert_eq!(field("entry1"), hex(&reader.entries()[1].bytes));
    assert_eq!(field("leaf3"), reader.slots()[3].leaf.to_string());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn export_of_a_store_without_a_ledger_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let out = cairn(&["export", "--store", &url, "--out", dir.path().join("x.parquet").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: reading the genesis of"), "{err}");
}

/// `python3 infra/spec-check/signed_note.py NOTE VKEYS` (standard library only: RFC 8032 written
/// out, hashlib's SHA-256, no cairn code).
pub fn spec_check_note(note: &Path, vkeys: &Path) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/spec-check/signed_note.py");
    Command::new("python3")
        .arg(script)
        .args([note, vkeys])
        .output()
        .expect("python3 must be installed: infra/spec-check/signed_note.py checks cairn's notes with it")
}

#[test]
fn the_independent_verifier_accepts_the_golden_checkpoint_and_refuses_it_altered() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/spec-check");
    let out = spec_check_note(&dir.join("checkpoint.note"), &dir.join("checkpoint.vkeys"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = "05".repeat(32);
    assert!(
        text(&out.stdout).starts_with(&format!("origin=cairn.run/{run} size=7 root={} verified=2 ", "09".repeat(32)))
    );
    let tmp = tempfile::tempdir().unwrap();
    let altered = tmp.path().join("altered.note");
    let golden = std::fs::read_to_string(dir.join("checkpoint.note")).unwrap();
    std::fs::write(&altered, golden.replacen("\n7\n", "\n8\n", 1)).unwrap();
    let out = spec_check_note(&altered, &dir.join("checkpoint.vkeys"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("does not verify"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_prints_the_quorum_head_as_a_note_an_independent_verifier_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/run", dir.path().display());
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    let (run_id, worker) = small_run(&url).await;
    let no_checkpoint = |organisations: &str| {
        let out = cairn(&["checkpoint", "--store", &url, "--organisations", organisations]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        assert!(out.stdout.is_empty());
        // One error line, last (the reader's warnings about the garbage slot come before it).
        let err = text(&out.stderr);
        assert_eq!(err.lines().filter(|l| l.starts_with("error: ")).count(), 1, "{err}");
        let err = err.lines().last().unwrap_or_default();
        let expected = format!(
            "error: no checkpoint yet: no tree head of run {run_id} is signed by members of {organisations} organisation(s)"
        );
        assert!(err.starts_with(&expected), "{err}");
    };
    no_checkpoint("1");
    // The admin's organisation signs the head of the 5 slots: a quorum of one, not of two.
    let store = storage::open(&url).await.unwrap();
    let mut reader = ledger::Reader::replay(store.clone(), run_id).await.unwrap();
    reader.publish_checkpoint(&Keypair::from_seed([1; 32]), 5).await.unwrap();
    no_checkpoint("2");
    reader.publish_checkpoint(&worker, 5).await.unwrap();

    let out = cairn(&["checkpoint", "--store", &url, "--organisations", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let note_text = text(&out.stdout);
    let note = ledger::note::Note::parse(note_text.as_bytes()).unwrap();
    let cp = ledger::Checkpoint::from_note_text(&note.text).unwrap();
    assert_eq!((cp.run_id, cp.size, cp.root), (run_id, 5, reader.root_at(5).unwrap()));
    assert_eq!(note.signatures.len(), 2);
    let vkeys = cairn(&["checkpoint", "--store", &url, "--vkeys"]);
    assert!(vkeys.status.success(), "{}", text(&vkeys.stderr));
    assert_eq!(text(&vkeys.stdout).lines().count(), 2, "one vkey per member");

    let note_file = dir.path().join("checkpoint.note");
    let vkeys_file = dir.path().join("members.vkeys");
    std::fs::write(&note_file, &out.stdout).unwrap();
    std::fs::write(&vkeys_file, &vkeys.stdout).unwrap();
    let checked = spec_check_note(&note_file, &vkeys_file);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    let root_hex = reader.root_at(5).unwrap().to_string();
    assert!(
        text(&checked.stdout).starts_with(&format!("origin=cairn.run/{run_id} size=5 root={root_hex} verified=2 ")),
        "{}",
        text(&checked.stdout)
    );
    std::fs::write(&note_file, note_text.replacen("\n5\n", "\n4\n", 1)).unwrap();
    assert_eq!(spec_check_note(&note_file, &vkeys_file).status.code(), Some(1), "an altered size is refused");

    let json = cairn(&["checkpoint", "--store", &url, "--organisations", "2", "--json"]);
    assert!(json.status.success(), "{}", text(&json.stderr));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["note"].as_str(), Some(note_text.as_str()));
    assert_eq!(report["size"], 5);
    assert_eq!(report["root"].as_str(), Some(root_hex.as_str()));
    assert_eq!(report["origin"].as_str(), Some(format!("cairn.run/{run_id}").as_str()));
    assert_eq!(report["organisations"], serde_json::json!(["org-admin", "org-worker"]));
    assert_eq!(report["signers"].as_array().unwrap().len(), 2);
    assert_eq!(report["vkeys"][0]["vkey"].as_str(), text(&vkeys.stdout).lines().next());
}

#[test]
fn bench_ledger_ends_with_its_figures() {
    let out = cairn(&["bench", "ledger", "memory://", "--appends", "32", "--verify-entries", "600", "--proofs", "200"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let figures = crate::bench_figures(&text(&out.stdout), "ledger");
    for (k, v) in &figures {
        assert!(*v > 0.0, "{k}={v}");
    }
    for k in [
        "appends_per_s_1",
        "appends_per_s_16",
        "verify_entries_per_s",
        "verify_ratio_vs_strict_ed25519",
        "proofs_per_s",
    ] {
        assert!(figures.iter().any(|(key, _)| key == k), "{k} missing from the last line");
    }
}
