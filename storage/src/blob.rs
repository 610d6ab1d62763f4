//! Content-addressed blobs: `blobs/<blake3-hex>`, written once, re-hashed on every read.
//!
//! ```text
//!   put_blob(bytes)       hash ─► small: put_if_absent(blobs/<hex>)
//!                                 large: head ─► absent: multipart upload to tmp/<random>
//!                                        ─► copy_if_absent to blobs/<hex> ─► delete tmp
//!   put_blob_reader(r)    multipart to tmp/<random>, hashing while streaming
//!                         ─► copy_if_absent to blobs/<hex> ─► delete tmp
//!
//! Nothing under blobs/ is ever written without a create-only condition, so a bucket policy that
//! refuses every other write there (docs/SECURITY.md) does not get in the way.
//!   get_blob(id, limit)   get with limit ─► blake3 ─► HashMismatch unless equal
//! ```

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use object_store::WriteMultipart;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::debug;

use crate::error::{Result, StoreError};
use crate::store::{PutOutcome, Store};

/// Blobs up to this size go up in one request; larger ones in parts.
pub const SINGLE_PUT_MAX_BYTES: usize = 16 << 20;
/// Size of one part of a multipart upload.
pub const PART_BYTES: usize = 8 << 20;
/// Parts in flight at once during a multipart upload.
pub const PARTS_IN_FLIGHT: usize = 4;

/// The blake3 hash of a blob's bytes, which is also its name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// The id of these bytes.
    pub fn of(bytes: &[u8]) -> BlobId {
        BlobId(*blake3::hash(bytes).as_bytes())
    }

    /// The key the blob lives at.
    pub fn key(&self) -> String {
        format!("blobs/{self}")
    }

    /// The key of a copy of the blob under `prefix` (a mirror: `<prefix>/blobs/<hex>`).
    pub fn key_under(&self, prefix: &str) -> String {
        format!("{}/blobs/{self}", prefix.trim_end_matches('/'))
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

impl FromStr for BlobId {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<BlobId, hex::FromHexError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(BlobId(out))
    }
}

/// Where uploads in progress are staged by default (not history: replaced and deleted freely);
/// [`Store::staging_in`] gives a store its own folder.
pub const STAGING_PREFIX: &str = "tmp/";

impl Store {
    /// A fresh key under this store's staging prefix for an upload in progress.
    fn staging_key(&self) -> String {
        format!("{}{}", self.staging_prefix(), hex::encode(rand::random::<[u8; 16]>()))
    }

    /// Stores `bytes` as a blob and returns its id. Storing the same bytes twice is harmless.
    #[tracing::instrument(level = "debug", skip(self, bytes), fields(len = bytes.len()))]
    pub async fn put_blob(&self, bytes: Bytes) -> Result<BlobId> {
        let id = BlobId::of(&bytes);
        let key = id.key();
        if bytes.len() <= SINGLE_PUT_MAX_BYTES {
            return match self.put_if_absent_hashed(&key, bytes.clone(), Some(id.0)).await? {
                PutOutcome::Created(_) => Ok(id),
                // Stored before (by us or anyone): fine if it is plausibly the same blob; readers
                // re-hash everything anyway.
                PutOutcome::AlreadyExists => match self.blob_present(id, bytes.len() as u64).await? {
                    true => Ok(id),
                    false => Err(StoreError::BlobSlotCorrupt { id, key, size: 0 }),
                },
            };
        }
        if self.blob_present(id, bytes.len() as u64).await? {
            return Ok(id);
        }
        let staging = self.staging_key();
        let upload = self.multipart(&staging).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        for part in bytes.chunks(PART_BYTES) {
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = writer.abort().await;
                return Err(self.upload_error(&staging, e));
            }
            writer.put(bytes.slice_ref(part));
        }
        writer.finish().await.map_err(|e| self.upload_error(&staging, e))?;
        let placed = self.place_staged(&staging, id, bytes.len() as u64).await;
        self.delete(&staging).await?;
        placed?;
        Ok(id)
    }

    /// Copies a fully uploaded staging object to `blobs/<id>` with a create-only copy; a blob
    /// already there must have the same size.
    async fn place_staged(&self, staging: &str, id: BlobId, size: u64) -> Result<()> {
        match self.copy_if_absent(staging, &id.key()).await? {
            PutOutcome::Created(_) => Ok(()),
            PutOutcome::AlreadyExists => match self.blob_present(id, size).await? {
                true => Ok(()),
                false => Err(StoreError::BlobSlotCorrupt { id, key: id.key(), size: 0 }),
            },
        }
    }

    /// Whether blob `id` of `size` bytes is already stored; an object of another size at its key
    /// is an error (someone overwrote it).
    async fn blob_present(&self, id: BlobId, size: u64) -> Result<bool> {
        let key = id.key();
        match self.head(&key).await? {
            None => Ok(false),
            Some(info) if info.size == size => Ok(true),
            Some(info) => Err(StoreError::BlobSlotCorrupt { id, key, size: info.size }),
        }
    }

    /// Streams a blob of unknown hash from `reader` in parts, hashing while it uploads, refusing
    /// more than `limit_bytes`. Nothing appears under `blobs/` unless the whole upload succeeded.
    pub async fn put_blob_reader<R: AsyncRead + Unpin>(
        &self,
        mut reader: R,
        limit_bytes: u64,
    ) -> Result<(BlobId, u64)> {
        let staging = self.staging_key();
        let upload = self.multipart(&staging).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut hasher = blake3::Hasher::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        let streamed: Result<()> = async {
            loop {
                let n = reader.read(&mut buf).await.map_err(|source| StoreError::Io {
                    operation: "read blob source",
                    path: staging.clone(),
                    source,
                })?;
                if n == 0 {
                    return Ok(());
                }
                total += n as u64;
                if total > limit_bytes {
                    return Err(StoreError::TooLarge { key: staging.clone(), size: total, limit: limit_bytes });
                }
                hasher.update(&buf[..n]);
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(|e| self.upload_error(&staging, e))?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        if let Err(e) = streamed {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer.finish().await.map_err(|e| self.upload_error(&staging, e))?;
        let id = BlobId(*hasher.finalize().as_bytes());
        let placed = match self.blob_present(id, total).await {
            Ok(true) => Ok(()),
            Ok(false) => self.place_staged(&staging, id, total).await,
            Err(e) => Err(e),
        };
        self.delete(&staging).await?;
        placed?;
        debug!(blob = %id, bytes = total, "streamed blob stored");
        Ok((id, total))
    }

    /// Fetches blob `id` (at most `limit_bytes`) and checks that it hashes to its name.
    pub async fn get_blob(&self, id: BlobId, limit_bytes: u64) -> Result<Bytes> {
        self.get_blob_at(&id.key(), id, limit_bytes).await
    }

    /// Fetches the copy of blob `id` kept under `prefix` ([`BlobId::key_under`]), re-hashed like
    /// [`Store::get_blob`].
    pub async fn get_blob_under(&self, prefix: &str, id: BlobId, limit_bytes: u64) -> Result<Bytes> {
        self.get_blob_at(&id.key_under(prefix), id, limit_bytes).await
    }

    /// Stores a copy of `bytes` under `prefix` ([`BlobId::key_under`]) with put-if-absent: anyone
    /// who holds a blob's bytes can re-publish it, and readers re-hash whatever they find.
    pub async fn put_blob_under(&self, prefix: &str, bytes: Bytes) -> Result<BlobId> {
        let id = BlobId::of(&bytes);
        self.put_if_absent(&id.key_under(prefix), bytes).await?;
        Ok(id)
    }

    async fn get_blob_at(&self, key: &str, id: BlobId, limit_bytes: u64) -> Result<Bytes> {
        let (bytes, _, _) = self.fetch(key, limit_bytes).await?;
        let actual = BlobId::of(&bytes);
        if actual != id {
            return Err(StoreError::HashMismatch { expected: id, actual });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_id_round_trips_through_hex() {
        let id = BlobId::of(b"cairn");
        assert_eq!(id.to_string().parse::<BlobId>().unwrap(), id);
        assert_eq!(id.key(), format!("blobs/{}", blake3::hash(b"cairn").to_hex()));
        assert_eq!(id.key_under("mirrors/ab/"), format!("mirrors/ab/blobs/{}", blake3::hash(b"cairn").to_hex()));
        assert!("xyz".parse::<BlobId>().is_err());
        assert!("00".parse::<BlobId>().is_err());
    }
}
