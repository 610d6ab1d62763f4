//! The log as a Parquet file, for DuckDB, pandas or Spark users (feature `parquet`).
//!
//! ```text
//!   Reader (replayed) ──rows()──► one row per entry, one per void slot ──► Arrow RecordBatches
//!                                                                            │ ArrowWriter (snappy)
//!   file metadata: cairn.export_version, cairn.run_id, cairn.from, cairn.size, cairn.root ▼
//!                                   a local file  (write_file)
//!                   a part:         <run>/exports/{from:020}-{to:020}.parquet  (plain put)
//!                   the whole log:  <run>/exports/whole/{size:020}.parquet
//! ```
//!
//! An export covers the slots `from..to`: the whole log (`cairn export`), or one part (what the
//! member that finalises a snapshot round publishes: the slots since the previous snapshot round's
//! result, so the parts of a run follow each other without overlap and no member holds the whole
//! log to write one). An export is derived, never authoritative: it says what one reader read, and
//! anyone can check it by replaying the log (the root in its metadata is the Merkle root over the
//! first `to` slots). The columns are specified in docs/LEDGER.md ("Parquet export").

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray, UInt16Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use storage::Store;

use crate::error::{LedgerError, Result};
use crate::log::Reader;
use crate::merkle::Hash;
use crate::validity::Validity;

/// Folder of the exports in the run's prefix.
pub const EXPORT_PREFIX: &str = "exports";
/// The export format version, in the file metadata under `cairn.export_version` (2: a part of the
/// log, `cairn.from..cairn.size`).
pub const EXPORT_VERSION: u32 = 2;
/// Rows per Arrow batch (and so at most this many per Parquet row group).
pub const ROWS_PER_BATCH: usize = 65_536;
/// The `validity` value of an accepted entry.
pub const VALID: &str = "valid";

/// The key of the export part of slots `from..to`: `exports/{from:020}-{to:020}.parquet` (so keys
/// sort in log order).
pub fn export_key(from: u64, to: u64) -> String {
    format!("{EXPORT_PREFIX}/{from:020}-{to:020}.parquet")
}

/// The key of an export of the whole log of `size` slots: `exports/whole/{size:020}.parquet`, in
/// its own folder so that `exports/*.parquet` holds the parts alone, each row once.
pub fn whole_export_key(size: u64) -> String {
    format!("{EXPORT_PREFIX}/whole/{size:020}.parquet")
}

/// The parts present in the store, as `(from, to)` slot ranges in key order (other objects under
/// `exports/` are skipped).
pub async fn parts_present(store: &Store) -> Result<Vec<(u64, u64)>> {
    let listed = store.list(&format!("{EXPORT_PREFIX}/"), None).await?;
    Ok(listed
        .iter()
        .filter_map(|o| {
            let name = o.key.strip_prefix(EXPORT_PREFIX)?.strip_prefix('/')?.strip_suffix(".parquet")?;
            let (from, to) = name.split_once('-')?;
            Some((from.parse().ok()?, to.parse().ok()?))
        })
        .collect())
}

/// What an export covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    /// Rows written: one per entry, plus one per slot that is not a batch.
    pub rows: u64,
    /// The first slot covered.
    pub from: u64,
    /// The end of the slots covered (the log's size as read, for a whole export).
    pub size: u64,
    /// The Merkle root over those slots.
    pub root: Hash,
}

/// The Arrow schema of an export.
pub fn schema() -> SchemaRef {
    let utf8 = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::UInt64, false),
        Field::new("index", DataType::UInt16, true),
        utf8("kind", true),
        Field::new("round", DataType::UInt64, true),
        utf8("signer", true),
        utf8("organisation", true),
        utf8("blob_id", true),
        Field::new("blob_size", DataType::UInt64, true),
        utf8("validity", false),
        Field::new("entry", DataType::Binary, true),
        utf8("leaf_hash", false),
    ]))
}

/// One row, before it becomes columns.
struct Row<'a> {
    seq: u64,
    index: Option<u16>,
    kind: Option<&'static str>,
    round: Option<u64>,
    signer: Option<String>,
    organisation: Option<&'a str>,
    blob_id: Option<String>,
    blob_size: Option<u64>,
    validity: String,
    entry: Option<&'a [u8]>,
    leaf_hash: String,
}

fn rows(reader: &Reader, from: u64, to: u64) -> Vec<Row<'_>> {
    let mut rows = Vec::with_capacity(reader.entries().len());
    for slot in reader.slots().iter().filter(|s| (from..to).contains(&s.seq.0)) {
        let leaf_hash = slot.leaf.to_string();
        if let Some(reason) = &slot.void {
            rows.push(Row {
                seq: slot.seq.0,
                index: None,
                kind: None,
                round: None,
                signer: None,
                organisation: None,
                blob_id: None,
                blob_size: None,
                validity: reason.to_string(),
                entry: None,
                leaf_hash,
            });
            continue;
        }
        for logged in reader.entries().get(slot.entries.clone()).unwrap_or_default() {
            let entry = logged.entry.as_ref();
            let blob = entry.and_then(|e| e.body.blob());
            rows.push(Row {
                seq: logged.pos.seq.0,
                index: Some(logged.pos.index),
                kind: entry.map(|e| e.body.kind().name()),
                round: entry.and_then(|e| e.body.round()).map(|r| r.0),
                signer: entry.map(|e| e.signer().to_string()),
                organisation: logged.organisation.as_deref(),
                blob_id: blob.map(|(id, _)| id.to_string()),
                blob_size: blob.map(|(_, size)| size),
                validity: match &logged.validity {
                    Validity::Accept => VALID.to_string(),
                    Validity::Void(reason) => reason.to_string(),
                },
                entry: Some(&logged.bytes),
                leaf_hash: leaf_hash.clone(),
            });
        }
    }
    rows
}

fn batch(schema: &SchemaRef, rows: &[Row<'_>]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.seq))),
        Arc::new(UInt16Array::from(rows.iter().map(|r| r.index).collect::<Vec<_>>())),
        Arc::new(StringArray::from(rows.iter().map(|r| r.kind).collect::<Vec<_>>())),
        Arc::new(UInt64Array::from(rows.iter().map(|r| r.round).collect::<Vec<_>>())),
        Arc::new(StringArray::from(rows.iter().map(|r| r.signer.as_deref()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(rows.iter().map(|r| r.organisation).collect::<Vec<_>>())),
        Arc::new(StringArray::from(rows.iter().map(|r| r.blob_id.as_deref()).collect::<Vec<_>>())),
        Arc::new(UInt64Array::from(rows.iter().map(|r| r.blob_size).collect::<Vec<_>>())),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.validity.as_str()))),
        Arc::new(BinaryArray::from(rows.iter().map(|r| r.entry).collect::<Vec<_>>())),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.leaf_hash.as_str()))),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Writes the export of every slot `reader` has read to `out`, and says what it covers.
pub fn write_parquet<W: Write + Send>(reader: &Reader, out: W) -> Result<ExportSummary> {
    write_parquet_part(reader, 0, reader.next_seq().0, out)
}

/// Writes the export of slots `from..to` to `out`. Fails with [`LedgerError::NotHeld`] unless
/// the reader read them all and still holds every entry of them and the tree of `to` slots.
pub fn write_parquet_part<W: Write + Send>(reader: &Reader, from: u64, to: u64, out: W) -> Result<ExportSummary> {
    let kept_from = reader.complete_from().0;
    // `root_at` is `None` beyond the slots read and below the tree still held.
    let Some(root) = reader.root_at(to).filter(|_| kept_from <= from && from <= to) else {
        return Err(LedgerError::NotHeld { from, to, kept_from: kept_from.max(reader.leaves_from().0) });
    };
    let summary = ExportSummary { rows: 0, from, size: to, root };
    let metadata = [
        ("cairn.export_version", EXPORT_VERSION.to_string()),
        ("cairn.run_id", reader.run_id().to_string()),
        ("cairn.from", summary.from.to_string()),
        ("cairn.size", summary.size.to_string()),
        ("cairn.root", summary.root.to_string()),
    ];
    // In the Parquet footer (DuckDB's parquet_kv_metadata, pyarrow's read_metadata) and in the
    // Arrow schema too (what pyarrow and pandas show as the table's schema metadata).
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(metadata.iter().map(|(k, v)| KeyValue::new(k.to_string(), v.clone())).collect()))
        .build();
    let schema = Arc::new(schema().as_ref().clone().with_metadata(metadata.clone()));
    let mut writer = ArrowWriter::try_new(out, schema.clone(), Some(props))?;
    let rows = rows(reader, from, to);
    for chunk in rows.chunks(ROWS_PER_BATCH) {
        writer.write(&batch(&schema, chunk)?)?;
    }
    writer.close()?;
    Ok(ExportSummary { rows: rows.len() as u64, ..summary })
}

/// The export as bytes.
pub fn to_parquet(reader: &Reader) -> Result<(Bytes, ExportSummary)> {
    let mut buf = Vec::new();
    let summary = write_parquet(reader, &mut buf)?;
    Ok((Bytes::from(buf), summary))
}

/// Writes the export to a local file at `path` (through a temporary file beside it, renamed into
/// place, so a reader never sees half a file).
pub fn write_file(reader: &Reader, path: &Path) -> Result<ExportSummary> {
    let io = |operation, source| LedgerError::Io { operation, path: path.display().to_string(), source };
    let (bytes, summary) = to_parquet(reader)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, &bytes).map_err(|e| io("write export", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename export into place", e))?;
    Ok(summary)
}

/// Writes the export of the whole log as read to `exports/whole/{size:020}.parquet` in the run's
/// store. Returns the key.
pub async fn write_to_store(reader: &Reader, store: &Store) -> Result<(String, ExportSummary)> {
    let (bytes, summary) = to_parquet(reader)?;
    let key = whole_export_key(summary.size);
    store.put(&key, bytes).await?;
    Ok((key, summary))
}

/// Writes the export of slots `from..to` to `exports/{from:020}-{to:020}.parquet` in the run's
/// store (a plain put: the export is derived, and two honest exports of one range hold the same
/// rows). Returns the key.
pub async fn write_part_to_store(
    reader: &Reader,
    store: &Store,
    from: u64,
    to: u64,
) -> Result<(String, ExportSummary)> {
    let mut buf = Vec::new();
    let summary = write_parquet_part(reader, from, to, &mut buf)?;
    let key = export_key(from, to);
    store.put(&key, Bytes::from(buf)).await?;
    Ok((key, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Attestation, Body, CloseVote, Contribution, Entry, Genesis, Member, Role};
    use crate::id::{Round, Seq, StateHash};
    use crate::key::Keypair;
    use crate::log::{Appender, write_genesis};
    use storage::BlobId;

    /// A part exported by a reader that forgot behind a window of 1 (keeping what it must export)
    /// is byte for byte the same part exported by a reader that keeps everything; a part reaching
    /// below what the reader holds is refused.
    #[tokio::test]
    async fn a_part_from_a_forgetting_reader_is_the_part_from_a_full_one() {
        let (admin, worker) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
        let roster = vec![
            Member { key: admin.public(), organisation: "a".into(), role: Role::Admin },
            Member { key: worker.public(), organisation: "a".into(), role: Role::Worker },
        ];
        let g = Genesis { window: 1, ..Genesis::new(vec![], roster, 1, StateHash([0; 32]), BlobId([0; 32]), 0) };
        let run = g.run_id();
        let store = storage::open("memory://").await.unwrap();
        write_genesis(&store, &Entry::sign(run, Body::Genesis(g), &[&admin]).unwrap()).await.unwrap();
        let mut appender = Appender::new(store.clone());
        let mut reader = Reader::new(store.clone(), run);
        let mut part_from = Seq(0);
        let mut parts = vec![];
        for r in 0..12u64 {
            let c = Contribution {
                round: Round(r),
                base_state: StateHash([0; 32]),
                assignment: vec![],
                blob: BlobId([r as u8; 32]),
                blob_size: 1,
                metrics: vec![],
            };
            appender.append(&[Entry::sign(run, Body::Contribution(c), &[&worker]).unwrap()]).await.unwrap();
            appender.append_slot(Bytes::from_static(b"garbage")).await.unwrap();
            let vote = Body::CloseVote(CloseVote { round: Round(r), seen: Seq(0) });
            appender.append(&[Entry::sign(run, vote, &[&admin]).unwrap()]).await.unwrap();
            let a =
                Body::Attestation(Attestation { round: Round(r), state: StateHash([r as u8; 32]), dropped: vec![] });
            let at = appender.append(&[Entry::sign(run, a, &[&admin]).unwrap()]).await.unwrap();
            reader.poll().await.unwrap();
            // Every 4 rounds a part ends with the round's result, as a snapshot round's does.
            if r % 4 == 3 {
                let to = at.0 + 1;
                let mut bytes = vec![];
                write_parquet_part(&reader, part_from.0, to, &mut bytes).unwrap();
                parts.push((part_from.0, to, bytes));
                part_from = Seq(to);
            }
            reader.forget_before(Round(r + 1), part_from);
        }
        assert!(reader.complete_from() > Seq(0), "the reader forgot nothing");
        let full = Reader::replay(store.clone(), run).await.unwrap();
        assert_eq!(parts.len(), 3);
        for (from, to, bytes) in &parts {
            let mut expected = vec![];
            let summary = write_parquet_part(&full, *from, *to, &mut expected).unwrap();
            assert_eq!(bytes, &expected, "part {from}..{to}");
            assert!(summary.rows > 0);
        }
        // The parts follow each other from slot 0 to the end (the last round's result ends the log)
        // and hold the whole export's rows between them.
        assert!(parts.windows(2).all(|w| w[0].1 == w[1].0) && parts[0].0 == 0);
        assert_eq!(parts.last().map(|p| p.1), Some(full.next_seq().0));
        let whole = write_parquet(&full, std::io::sink()).unwrap();
        let rows = |(f, t): (u64, u64)| write_parquet_part(&full, f, t, std::io::sink()).unwrap().rows;
        assert_eq!(parts.iter().map(|(f, t, _)| rows((*f, *t))).sum::<u64>(), whole.rows);
        assert!(matches!(
            write_parquet_part(&reader, 0, reader.next_seq().0, std::io::sink()),
            Err(LedgerError::NotHeld { from: 0, .. })
        ));
    }

    #[test]
    fn export_keys_are_zero_padded() {
        assert_eq!(export_key(7, 42), "exports/00000000000000000007-00000000000000000042.parquet");
        assert!(export_key(9, 10) < export_key(10, 11));
        assert_eq!(whole_export_key(42), "exports/whole/00000000000000000042.parquet");
    }

    #[tokio::test]
    async fn only_parts_are_listed_as_parts() {
        let store = storage::open("memory://").await.unwrap();
        for key in [export_key(5, 9), export_key(0, 5), whole_export_key(9), "exports/junk.parquet".into()] {
            store.put(&key, Bytes::from_static(b"x")).await.unwrap();
        }
        let mut parts = parts_present(&store).await.unwrap();
        parts.sort_unstable();
        assert_eq!(parts, vec![(0, 5), (5, 9)]);
    }
}
