//! The object in one log slot: a batch of one or more encoded entries.
//!
//! ```text
//!   slot = version:u8 (=1) | count:u16 (1..=MAX_BATCH_ENTRIES) | (entry_len:u32 | entry) * count
//! ```
//!
//! The slot format only frames entries; each entry is then judged on its own by the validity
//! rule, so one bad entry in a batch voids that entry only. Bytes that are not a slot at all
//! (garbage, an unknown version, over [`MAX_SLOT_BYTES`]) make the whole slot void: it stays taken,
//! it still has a Merkle leaf, and the log moves on past it.

use bytes::Bytes;

use crate::entry::{Entry, MAX_ENTRY_BYTES};
use crate::error::{DecodeError, LedgerError, Result};
use crate::wire::{Reader, Writer};

/// The slot format version this crate reads and writes.
pub const SLOT_VERSION: u8 = 1;
/// Most entries in one slot.
pub const MAX_BATCH_ENTRIES: u16 = 256;
/// Largest slot object; a reader never downloads more than this from one slot.
pub const MAX_SLOT_BYTES: u64 = 4 << 20;

/// The filler: the one slot object that holds no entry (version 1, count 0). A participant that
/// finds a hole in the log (an absent slot with a present one shortly after it) writes this there
/// with put-if-absent, so that readers move on; it is void for everyone. Any other bytes with a
/// count of 0 are a malformed slot.
pub const FILLER: &[u8] = &[SLOT_VERSION, 0, 0];

/// [`FILLER`] as bytes to put.
pub fn filler() -> Bytes {
    Bytes::from_static(FILLER)
}

/// Frames already-encoded entries as one slot object.
pub fn encode_slot(entries: &[Vec<u8>]) -> Result<Bytes> {
    if entries.is_empty() || entries.len() > usize::from(MAX_BATCH_ENTRIES) {
        return Err(LedgerError::TooLarge {
            what: "batch (entries)",
            size: entries.len() as u64,
            limit: MAX_BATCH_ENTRIES.into(),
        });
    }
    let mut w = Writer::new();
    w.u8(SLOT_VERSION).u16(entries.len() as u16);
    for e in entries {
        if e.len() as u64 > u64::from(MAX_ENTRY_BYTES) {
            return Err(LedgerError::TooLarge {
                what: "entry (bytes)",
                size: e.len() as u64,
                limit: MAX_ENTRY_BYTES.into(),
            });
        }
        w.bytes32(e);
    }
    let bytes = w.finish();
    if bytes.len() as u64 > MAX_SLOT_BYTES {
        return Err(LedgerError::TooLarge { what: "slot (bytes)", size: bytes.len() as u64, limit: MAX_SLOT_BYTES });
    }
    Ok(Bytes::from(bytes))
}

/// Frames entries as one slot object.
pub fn encode_entries(entries: &[Entry]) -> Result<Bytes> {
    encode_slot(&entries.iter().map(Entry::encode).collect::<Vec<_>>())
}

/// Splits a slot object into its raw entries (not yet decoded).
pub fn decode_slot(bytes: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    if bytes.len() as u64 > MAX_SLOT_BYTES {
        return Err(DecodeError::TooLong { field: "slot", len: bytes.len() as u64, max: MAX_SLOT_BYTES });
    }
    let mut r = Reader::new(bytes);
    let version = r.field("slot version").u8()?;
    if version != SLOT_VERSION {
        return Err(DecodeError::UnknownVersion { what: "slot", version });
    }
    let count = r.field("batch count").u16()?;
    if count == 0 {
        return Err(DecodeError::TooShort { field: "batch", len: 0, min: 1 });
    }
    if count > MAX_BATCH_ENTRIES {
        return Err(DecodeError::TooLong { field: "batch", len: count.into(), max: MAX_BATCH_ENTRIES.into() });
    }
    let mut entries = Vec::with_capacity(count.into());
    for _ in 0..count {
        entries.push(r.field("batch entry").bytes32(MAX_ENTRY_BYTES.into())?);
    }
    r.finish()?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_frame_entries_and_refuse_garbage() {
        let slot = encode_slot(&[b"one".to_vec(), b"two".to_vec()]).unwrap();
        assert_eq!(decode_slot(&slot).unwrap(), vec![&b"one"[..], &b"two"[..]]);
        assert!(matches!(encode_slot(&[]), Err(LedgerError::TooLarge { .. })));
        assert!(decode_slot(b"").is_err());
        assert!(decode_slot(&[1, 0, 0]).is_err());
        let mut trailing = slot.to_vec();
        trailing.push(0);
        assert_eq!(decode_slot(&trailing), Err(DecodeError::TrailingBytes { count: 1 }));
        let mut v2 = slot.to_vec();
        v2[0] = 2;
        assert_eq!(decode_slot(&v2), Err(DecodeError::UnknownVersion { what: "slot", version: 2 }));
    }

    /// The batch and entry limits (SECURITY.md, per-member limits), on the writing and the reading
    /// side: slots built by hand, byte by byte, as a hostile writer would.
    #[test]
    fn a_batch_of_257_entries_and_an_entry_over_the_limit_are_refused() {
        let tiny = vec![b"e".to_vec(); 257];
        assert!(matches!(encode_slot(&tiny), Err(LedgerError::TooLarge { size: 257, limit: 256, .. })));
        assert!(encode_slot(&tiny[..256]).is_ok());
        // version 1, count 257, then 257 entries of one byte each.
        let mut raw = vec![1u8, 0x01, 0x01];
        for _ in 0..257 {
            raw.extend_from_slice(&[0, 0, 0, 1, b'e']);
        }
        assert_eq!(decode_slot(&raw), Err(DecodeError::TooLong { field: "batch", len: 257, max: 256 }));
        // One entry of 256 KiB + 1 byte: refused when framing, and when reading a hand-made slot.
        let over = vec![0u8; 256 * 1024 + 1];
        assert!(matches!(encode_slot(std::slice::from_ref(&over)), Err(LedgerError::TooLarge { size: 262_145, .. })));
        let mut raw = vec![1u8, 0, 1];
        raw.extend_from_slice(&262_145u32.to_be_bytes());
        raw.extend_from_slice(&over);
        assert!(matches!(decode_slot(&raw), Err(DecodeError::TooLong { len: 262_145, max: 262_144, .. })));
    }
}
