//! Compare-and-swap for the file:// store, which object_store's LocalFileSystem lacks.
//!
//! ```text
//!   lock  DIR/.cairn-locks/<blake3(path)>.lock   (flock: released by the OS if we die)
//!   read  DIR/path  ──► blake3 == expected? ── no ──► Conflict
//!   write DIR/.cairn-locks/<tmp>, fsync, rename over DIR/path, fsync the folder
//!   unlock
//! ```
//!
//! The version of a local object is the blake3 of its content, so every reader computes it
//! the same way and no clock or inode number is involved. Writers of the same key in other
//! processes serialise on the lock; readers never see a partial file because of the rename.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path as FsPath;

use object_store::path::Path;

use crate::error::{Result, StoreError};
use crate::store::Version;

/// Folder (at the store root) that holds lock and staging files; never listed, never a key.
pub(crate) const LOCK_DIR: &str = ".cairn-locks";

/// The version the file:// store reports for an object with this content.
pub(crate) fn content_version(bytes: &[u8]) -> Version {
    version_of_hash(blake3::hash(bytes).as_bytes())
}

/// The version of an object whose content hashes to `hash` (blake3).
pub(crate) fn version_of_hash(hash: &[u8; 32]) -> Version {
    Version { e_tag: Some(format!("b3-{}", hex::encode(hash))), version: None }
}

fn io<'a>(operation: &'static str, path: &'a FsPath) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { operation, path: path.display().to_string(), source }
}

/// Replaces `dir/path` with `bytes` if its content is still at `expected`; `Ok(None)` on conflict.
pub(crate) fn compare_and_swap(dir: &FsPath, path: &Path, expected: &Version, bytes: &[u8]) -> Result<Option<Version>> {
    let target = path.parts().fold(dir.to_path_buf(), |p, part| p.join(part.as_ref()));
    let locks = dir.join(LOCK_DIR);
    fs::create_dir_all(&locks).map_err(io("create lock folder", &locks))?;
    let lock_path = locks.join(format!("{}.lock", blake3::hash(path.as_ref().as_bytes()).to_hex()));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("open lock", &lock_path))?;
    lock.lock().map_err(io("lock", &lock_path))?;

    let current = match fs::read(&target) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &target)(e)),
    };
    if &content_version(&current) != expected {
        return Ok(None);
    }
    let staging = locks.join(format!("{}.{}.tmp", blake3::hash(path.as_ref().as_bytes()).to_hex(), std::process::id()));
    let mut f = File::create(&staging).map_err(io("create staging file", &staging))?;
    f.write_all(bytes).map_err(io("write staging file", &staging))?;
    f.sync_all().map_err(io("sync staging file", &staging))?;
    fs::rename(&staging, &target).map_err(io("rename into place", &target))?;
    if let Some(parent) = target.parent() {
        File::open(parent).and_then(|d| d.sync_all()).map_err(io("sync folder", parent))?;
    }
    drop(lock); // releases the flock
    Ok(Some(content_version(bytes)))
}
