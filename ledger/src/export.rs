//! The log as a Parquet file, for DuckDB, pandas or Spark users (feature `parquet`).
//!
//! ```text
//!   Reader (replayed) ──rows()──► one row per entry, one per void slot ──► Arrow RecordBatches
//!                                                                            │ ArrowWriter (snappy)
//!   file metadata: cairn.export_version, cairn.run_id, cairn.size, cairn.root ▼
//!                                   a local file  (write_file)
//!                                   <run>/exports/{N:020}.parquet  (write_to_store, plain put)
//! ```
//!
//! An export is derived, never authoritative: it says what one reader read, and anyone can check
//! it by replaying the log (the root in its metadata is the Merkle root over the `size` slots it
//! covers). The columns are specified in docs/LEDGER.md ("Parquet export").

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
/// The export format version, in the file metadata under `cairn.export_version`.
pub const EXPORT_VERSION: u32 = 1;
/// Rows per Arrow batch (and so at most this many per Parquet row group).
pub const ROWS_PER_BATCH: usize = 65_536;
/// The `validity` value of an accepted entry.
pub const VALID: &str = "valid";

/// The key of the export of the first `size` slots: `exports/{size:020}.parquet`.
pub fn export_key(size: u64) -> String {
    format!("{EXPORT_PREFIX}/{size:020}.parquet")
}

/// What an export covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    /// Rows written: one per entry, plus one per slot that is not a batch.
    pub rows: u64,
    /// Slots covered (the log's size as read).
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

fn rows(reader: &Reader) -> Vec<Row<'_>> {
    let mut rows = Vec::with_capacity(reader.entries().len());
    for slot in reader.slots() {
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
    let summary = ExportSummary {
        rows: 0,
        size: reader.next_seq().0,
        root: reader.root_at(reader.next_seq().0).unwrap_or_else(crate::merkle::empty_root),
    };
    let metadata = [
        ("cairn.export_version", EXPORT_VERSION.to_string()),
        ("cairn.run_id", reader.run_id().to_string()),
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
    let rows = rows(reader);
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

/// Writes the export to `exports/{size:020}.parquet` in the run's store (a plain put: the export
/// is derived, and two honest exports of the same size hold the same rows). Returns the key.
pub async fn write_to_store(reader: &Reader, store: &Store) -> Result<(String, ExportSummary)> {
    let (bytes, summary) = to_parquet(reader)?;
    let key = export_key(summary.size);
    store.put(&key, bytes).await?;
    Ok((key, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_keys_are_zero_padded() {
        assert_eq!(export_key(42), "exports/00000000000000000042.parquet");
        assert!(export_key(9) < export_key(10));
    }
}
