//! Member keys (ed25519) and the messages they sign.
//!
//! ```text
//!   entry:       "cairn-entry/v2" || run id || version || kind || body length || body   (ZIP-215)
//!   checkpoint:  "cairn.run/<run id hex>\n<size>\n<base64 root>\n"          (RFC 8032, strict)
//! ```
//!
//! Entries carry a domain tag, and the run id keeps one run's signatures out of every other.
//! Checkpoints are C2SP signed notes (`crate::note`): the note text is signed as it is, with no
//! tag in front, so that any signed-note verifier checks it. The two can never be the same
//! message: an entry's starts with `cairn-entry/`, a checkpoint's with `cairn.run/`, and an
//! entry's version byte (0x02) is a control character no note may hold.
//!
//! Entry verification follows ZIP-215 (canonical `S`; any point encoding that decompresses,
//! small-order and non-canonical ones included; the cofactored equation `[8][S]B = [8]R + [8][k]A`).
//! Under ZIP-215 a batch of signatures passes exactly when each one passes on its own, so
//! [`verify`] and [`verify_batch`] accept the same set: every reader, on every machine and on
//! either path, accepts exactly the same signatures. Checkpoint signatures are checked by
//! [`verify_strict`] instead, the narrower rule every signed-note verifier applies, so that a
//! signature cairn counts is one that Go's `sumdb/note`, libsodium or RFC 8032 also accept.
//!
//! A key file holds one line, `cairn-secret-key-v1:<64 hex digits>`, the ed25519 seed; it is
//! created with mode 0600 and never overwritten.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey};

use crate::error::{LedgerError, Result};

/// The domain tag of entry signatures.
pub const ENTRY_DOMAIN: &[u8] = b"cairn-entry/v2";
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
        self.sign_message(&full)
    }

    /// Signs `message` as it is (RFC 8032): for formats whose text names its own purpose, the
    /// checkpoint notes.
    pub fn sign_message(&self, message: &[u8]) -> Signature {
        Signature(self.signing.sign(message).to_bytes())
    }
}

/// Whether `signature` by `key` verifies over `domain || message` (ZIP-215 verification).
pub fn verify(key: &PublicKey, domain: &[u8], message: &[u8], signature: &Signature) -> bool {
    item(key, domain, message, signature).verify_single().is_ok()
}

/// Whether `signature` by `key` verifies over `message` under RFC 8032 with strict encodings: the
/// key is the canonical encoding of a point that is not of small order, `R` is not of small order,
/// `S` is canonical, and `[S]B = R + [k]A` holds (the cofactorless equation, `R` compared as
/// bytes). Every signature this accepts also passes ZIP-215 and the checks of Go's
/// `crypto/ed25519`, libsodium and RFC 8032's own verifier; it is the rule for checkpoint notes.
pub fn verify_strict(key: &PublicKey, message: &[u8], signature: &Signature) -> bool {
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&key.0) else { return false };
    vk.to_edwards().compress().to_bytes() == key.0
        && vk.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature.0)).is_ok()
}

/// Whether `key` is a small-order point (any encoding of one). Under ZIP-215 such a key "signs"
/// every message with `R` small-order and `S = 0`, so the validity rule refuses it as a roster
/// key. Bytes that are not a point at all are not weak: no signature ever verifies against them.
pub fn is_weak(key: &PublicKey) -> bool {
    ed25519_dalek::VerifyingKey::from_bytes(&key.0).is_ok_and(|vk| vk.is_weak())
}

/// One signature to check: who signed, the message after the domain tag, and the signature.
#[derive(Debug, Clone, Copy)]
pub struct SignedItem<'a> {
    /// The signer's key.
    pub key: &'a PublicKey,
    /// The message, without the domain tag.
    pub message: &'a [u8],
    /// The signature over `domain || message`.
    pub signature: &'a Signature,
}

/// [`verify`] for each item, in order, checked as one batch (ZIP-215 batch verification). When
/// the batch fails, each item is checked on its own to find the bad ones. The result equals
/// `items.map(verify)`: under ZIP-215 a batch passes exactly when every signature in it does
/// (up to the 2^-128 chance of random batch coefficients cancelling a bad signature).
pub fn verify_batch(domain: &[u8], items: &[SignedItem<'_>]) -> Vec<bool> {
    let items: Vec<ed25519_zebra::batch::Item> =
        items.iter().map(|i| item(i.key, domain, i.message, i.signature)).collect();
    if items.len() > 1 {
        let mut batch = ed25519_zebra::batch::Verifier::new();
        for i in &items {
            batch.queue(i.clone());
        }
        if batch.verify(rand_batch::rng()).is_ok() {
            return vec![true; items.len()];
        }
    }
    items.into_iter().map(|i| i.verify_single().is_ok()).collect()
}

/// The ZIP-215 verification item for `domain || message` (hashes the message once).
fn item(key: &PublicKey, domain: &[u8], message: &[u8], signature: &Signature) -> ed25519_zebra::batch::Item {
    let mut full = Vec::with_capacity(domain.len() + message.len());
    full.extend_from_slice(domain);
    full.extend_from_slice(message);
    let signature = ed25519_zebra::Signature::from_bytes(&signature.0);
    ed25519_zebra::batch::Item::from((ed25519_zebra::VerificationKeyBytes::from(key.0), signature, &full))
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
        assert!(!verify(&k.public(), b"cairn-other/v1", b"hello", &sig));
        assert!(!verify(&k.public(), ENTRY_DOMAIN, b"hellp", &sig));
        assert!(!verify(&Keypair::from_seed([8; 32]).public(), ENTRY_DOMAIN, b"hello", &sig));
        // Not a curve point: rejected, not a panic.
        assert!(!verify(&PublicKey([0xff; 32]), ENTRY_DOMAIN, b"hello", &sig));
    }

    /// The encoding of the identity point (small order), canonical and not (y = 1 + p).
    const IDENTITY: [u8; 32] = {
        let mut b = [0u8; 32];
        b[0] = 1;
        b
    };
    const IDENTITY_NON_CANONICAL: [u8; 32] = {
        let mut b = [0xff; 32];
        b[0] = 0xee;
        b[31] = 0x7f;
        b
    };

    fn small_order_signature(r: [u8; 32]) -> Signature {
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r);
        Signature(sig)
    }

    fn dalek_verify_strict(key: &PublicKey, message: &[u8], signature: &Signature) -> bool {
        let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&key.0) else {
            return false;
        };
        let mut full = ENTRY_DOMAIN.to_vec();
        full.extend_from_slice(message);
        vk.verify_strict(&full, &ed25519_dalek::Signature::from_bytes(&signature.0)).is_ok()
    }

    /// The change of rule made explicit: a small-order key with `R` small-order and `S = 0`
    /// verifies any message under ZIP-215 (cofactored equation, small-order and non-canonical
    /// encodings allowed), where `verify_strict` refused it. Such keys cannot join a roster.
    #[test]
    fn zip215_accepts_small_order_signatures_that_verify_strict_refused() {
        for key in [IDENTITY, IDENTITY_NON_CANONICAL] {
            let key = PublicKey(key);
            for r in [IDENTITY, IDENTITY_NON_CANONICAL] {
                let sig = small_order_signature(r);
                for message in [&b"anything"[..], b"anything else"] {
                    assert!(verify(&key, ENTRY_DOMAIN, message, &sig));
                    assert!(!dalek_verify_strict(&key, message, &sig));
                }
            }
            assert!(is_weak(&key));
        }
        assert!(!is_weak(&Keypair::from_seed([3; 32]).public()));
        assert!(!is_weak(&PublicKey([0xff; 32])), "not a point: no signature verifies, nothing to refuse");
    }

    /// Both rules refuse a non-canonical `S` (`S + l`): a signature cannot be re-encoded into a
    /// second valid one, under either rule, singly or in a batch.
    #[test]
    fn non_canonical_s_is_refused_singly_and_in_a_batch() {
        // l, the group order, little-endian.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let k = Keypair::from_seed([5; 32]);
        let good = k.sign(ENTRY_DOMAIN, b"m");
        let mut malleated = good;
        let mut carry = 0u16;
        for (byte, l) in malleated.0[32..].iter_mut().zip(L) {
            let sum = u16::from(*byte) + u16::from(l) + carry;
            *byte = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0, "S + l fits in 256 bits");
        assert!(verify(&k.public(), ENTRY_DOMAIN, b"m", &good));
        assert!(dalek_verify_strict(&k.public(), b"m", &good));
        assert!(!verify(&k.public(), ENTRY_DOMAIN, b"m", &malleated));
        assert!(!dalek_verify_strict(&k.public(), b"m", &malleated));
        let key = k.public();
        let items = [
            SignedItem { key: &key, message: b"m", signature: &good },
            SignedItem { key: &key, message: b"m", signature: &malleated },
        ];
        assert_eq!(verify_batch(ENTRY_DOMAIN, &items), vec![true, false]);
    }

    /// `verify_batch` equals `verify` item by item: all good, one bad anywhere, bytes that are no
    /// point, a wrong domain, and the small-order signatures ZIP-215 accepts.
    #[test]
    fn batch_verification_equals_single_verification() {
        let keys: Vec<Keypair> = (0..6).map(|i| Keypair::from_seed([i + 10; 32])).collect();
        let messages: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; usize::from(i) + 1]).collect();
        let mut triples: Vec<(PublicKey, Vec<u8>, Signature)> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let k = &keys[i % keys.len()];
                (k.public(), m.clone(), k.sign(ENTRY_DOMAIN, m))
            })
            .collect();
        triples.push((PublicKey(IDENTITY), b"forged".to_vec(), small_order_signature(IDENTITY_NON_CANONICAL)));
        let check = |triples: &[(PublicKey, Vec<u8>, Signature)]| {
            let items: Vec<SignedItem<'_>> =
                triples.iter().map(|(key, message, signature)| SignedItem { key, message, signature }).collect();
            let single: Vec<bool> = triples.iter().map(|(k, m, s)| verify(k, ENTRY_DOMAIN, m, s)).collect();
            assert_eq!(verify_batch(ENTRY_DOMAIN, &items), single);
            single
        };
        assert!(check(&triples).iter().all(|ok| *ok));
        for bad in 0..triples.len() {
            for corrupt in 0..3 {
                let mut t = triples.clone();
                match corrupt {
                    0 => t[bad].2.0[40] ^= 1,
                    1 => t[bad].1.push(0),
                    _ => t[bad].0 = PublicKey([0xff; 32]),
                }
                // The small-order forgery (last) verifies every message: changing it changes nothing.
                let forged_message = corrupt == 1 && bad == t.len() - 1;
                let expected: Vec<bool> = (0..t.len()).map(|i| i != bad || forged_message).collect();
                assert_eq!(check(&t), expected, "corruption {corrupt} at {bad}");
            }
        }
        let items = [SignedItem { key: &triples[0].0, message: &triples[0].1, signature: &triples[0].2 }];
        assert_eq!(verify_batch(b"cairn-other/v1", &items), vec![false]);
        assert!(verify_batch(ENTRY_DOMAIN, &[]).is_empty());
    }

    /// A key with a small-order component (`A = [a]B + T`, `T` of order 8) lets its holder sign so
    /// that the cofactored equation holds and the cofactorless one does not: ZIP-215 (entries)
    /// accepts, `verify_strict` (checkpoints), Go's `crypto/ed25519` and libsodium refuse. Counted
    /// in a checkpoint, such a signature would let one member make the note cairn prints fail in
    /// every standard verifier.
    #[test]
    fn verify_strict_refuses_what_only_the_cofactored_equation_accepts() {
        use curve25519_dalek::{EdwardsPoint, Scalar, constants};
        use sha2::{Digest, Sha512};
        let a = Scalar::from_bytes_mod_order([3; 32]);
        let torsion = constants::EIGHT_TORSION[1];
        let key = PublicKey((EdwardsPoint::mul_base(&a) + torsion).compress().to_bytes());
        assert!(!is_weak(&key), "not small order: a roster accepts it");
        let r = Scalar::from_bytes_mod_order([4; 32]);
        let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();
        let mut tried = 0;
        for n in 0..64u8 {
            let message = [b"cairn.run/x\n".as_slice(), &[b'0' + n % 10, b'\n']].concat();
            let k = Scalar::from_hash(Sha512::new().chain_update(big_r).chain_update(key.0).chain_update(&message));
            if k * torsion == EdwardsPoint::default() {
                continue; // [k]T vanishes: an ordinary signature; try another message
            }
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&big_r);
            sig[32..].copy_from_slice(&(r + k * a).to_bytes());
            let sig = Signature(sig);
            assert!(verify(&key, b"", &message, &sig), "ZIP-215 accepts it");
            assert!(!verify_strict(&key, &message, &sig), "RFC 8032's cofactorless check refuses it");
            tried += 1;
        }
        assert!(tried > 0);
        // Honest signatures pass both; other messages and keys, and a small-order key, do not.
        let k = Keypair::from_seed([9; 32]);
        let sig = k.sign_message(b"note\n");
        assert!(verify_strict(&k.public(), b"note\n", &sig) && verify(&k.public(), b"", b"note\n", &sig));
        assert!(!verify_strict(&k.public(), b"note!\n", &sig));
        assert!(!verify_strict(&Keypair::from_seed([8; 32]).public(), b"note\n", &sig));
        assert!(!verify_strict(&PublicKey(IDENTITY), b"anything", &small_order_signature(IDENTITY)));
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
