//! Member keys (ed25519) and the domain-separated messages they sign.
//!
//! ```text
//!   entry:       "cairn-entry/v1"      || run id || version || kind || body length || body
//!   checkpoint:  "cairn-checkpoint/v1" || canonical checkpoint body (which starts with the run id)
//! ```
//!
//! The domain tag keeps an entry signature from ever being read as a checkpoint signature (or
//! anything else cairn signs later), and the run id keeps one run's signatures out of every other.
//! Verification is `verify_strict` (canonical S, no small-order keys) so that every reader, on
//! every machine, accepts exactly the same signatures.
//!
//! A key file holds one line, `cairn-secret-key-v1:<64 hex digits>`, the ed25519 seed; it is
//! created with mode 0600 and never overwritten.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::error::{LedgerError, Result};

/// The domain tag of entry signatures.
pub const ENTRY_DOMAIN: &[u8] = b"cairn-entry/v1";
/// The domain tag of checkpoint signatures.
pub const CHECKPOINT_DOMAIN: &[u8] = b"cairn-checkpoint/v1";
/// The first line of a key file, before the hex seed.
pub const KEY_FILE_PREFIX: &str = "cairn-secret-key-v1:";

/// A member's ed25519 public key, as 32 bytes (not checked to be a curve point until a signature
/// is verified against it). Shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<PublicKey, hex::FromHexError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(PublicKey(out))
    }
}

/// An ed25519 signature, as 64 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(self.0))
    }
}

/// A signing key. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({})", self.public())
    }
}

impl Keypair {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Keypair {
        Keypair::from_seed(rand::random())
    }

    /// The key with this 32-byte seed (tests and simulations derive seeds from their RNG).
    pub fn from_seed(seed: [u8; 32]) -> Keypair {
        Keypair { signing: SigningKey::from_bytes(&seed) }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// Signs `domain || message`.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> Signature {
        let mut full = Vec::with_capacity(domain.len() + message.len());
        full.extend_from_slice(domain);
        full.extend_from_slice(message);
        Signature(self.signing.sign(&full).to_bytes())
    }
}

/// Whether `signature` by `key` verifies over `domain || message` (strict verification).
pub fn verify(key: &PublicKey, domain: &[u8], message: &[u8], signature: &Signature) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(&key.0) else {
        return false;
    };
    let mut full = Vec::with_capacity(domain.len() + message.len());
    full.extend_from_slice(domain);
    full.extend_from_slice(message);
    vk.verify_strict(&full, &ed25519_dalek::Signature::from_bytes(&signature.0)).is_ok()
}

/// Creates a new key file at `path` (mode 0600, refusing to overwrite) and returns the key.
/// This is what `cairn keygen --out FILE` does; the binary prints [`Keypair::public`].
pub fn write_key_file(path: &Path) -> Result<Keypair> {
    let key = Keypair::generate();
    let io = |operation, source| LedgerError::Io { operation, path: path.display().to_string(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| io("create key file", e))?;
    let line = format!("{KEY_FILE_PREFIX}{}\n", hex::encode(key.signing.to_bytes()));
    file.write_all(line.as_bytes()).map_err(|e| io("write key file", e))?;
    file.sync_all().map_err(|e| io("sync key file", e))?;
    Ok(key)
}

/// Reads a key file written by [`write_key_file`].
pub fn read_key_file(path: &Path) -> Result<Keypair> {
    let text = std::fs::read_to_string(path).map_err(|source| LedgerError::Io {
        operation: "read key file",
        path: path.display().to_string(),
        source,
    })?;
    parse_key(text.trim_end())
}

fn parse_key(text: &str) -> Result<Keypair> {
    use crate::error::DecodeError;
    let malformed = |reason| LedgerError::Malformed { what: "key file", reason };
    let hex_seed = text
        .strip_prefix(KEY_FILE_PREFIX)
        .ok_or(malformed(DecodeError::UnknownVersion { what: "key file", version: 0 }))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(hex_seed, &mut seed)
        .map_err(|_| malformed(DecodeError::OutOfRange { field: "seed", reason: "not 64 hex digits" }))?;
    Ok(Keypair::from_seed(seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_bound_to_their_domain_and_message() {
        let k = Keypair::from_seed([7; 32]);
        let sig = k.sign(ENTRY_DOMAIN, b"hello");
        assert!(verify(&k.public(), ENTRY_DOMAIN, b"hello", &sig));
        assert!(!verify(&k.public(), CHECKPOINT_DOMAIN, b"hello", &sig));
        assert!(!verify(&k.public(), ENTRY_DOMAIN, b"hellp", &sig));
        assert!(!verify(&Keypair::from_seed([8; 32]).public(), ENTRY_DOMAIN, b"hello", &sig));
        // Not a curve point: rejected, not a panic.
        assert!(!verify(&PublicKey([0xff; 32]), ENTRY_DOMAIN, b"hello", &sig));
    }

    #[test]
    fn key_file_is_private_round_trips_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("member.key");
        let key = write_key_file(&path).unwrap();
        assert_eq!(read_key_file(&path).unwrap().public(), key.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(write_key_file(&path), Err(LedgerError::Io { .. })));
        assert_eq!(read_key_file(&path).unwrap().public(), key.public());
        std::fs::write(&path, "nonsense").unwrap();
        assert!(matches!(read_key_file(&path), Err(LedgerError::Malformed { .. })));
    }

    #[test]
    fn public_keys_print_as_hex() {
        let k = Keypair::from_seed([1; 32]).public();
        assert_eq!(k.to_string().len(), 64);
        assert_eq!(k.to_string().parse::<PublicKey>().unwrap(), k);
    }
}
