//! C2SP signed notes (c2sp.org/signed-note), the form cairn's checkpoints take outside the
//! bucket: Ed25519 key IDs, verifier keys ("vkeys"), and a parser and verifier for peer bytes.
//!
//! ```text
//!   note      = text | "\n" | sigline * n            1 <= n <= MAX_NOTE_SIGNATURES
//!   text      = UTF-8 ending in "\n"                 the signed bytes; the blank line is not
//!   sigline   = "— " key_name " " base64(key_id:[4] | signature) "\n"       (U+2014, a space)
//!   key_id    = SHA-256(key_name | 0x0A | 0x01 | public key:[32])[..4]      (0x01: Ed25519)
//!   vkey      = key_name "+" hex8(key_id) "+" base64(0x01 | public key:[32])
//!
//!   no byte below 0x20 but "\n" anywhere; at most MAX_NOTE_BYTES; base64 is RFC 4648 §4,
//!   padded, one spelling per value; a key name is non-empty, with no Unicode space and no "+"
//! ```
//!
//! [`Note::verify`] follows the specification's rule for verifiers: a signature line whose
//! (name, key ID) is not a known key is ignored; a known key's signature must verify or the whole
//! note is refused; a note with no verified known signature is refused. Signatures are checked
//! with [`crate::key::verify_strict`], the rule every signed-note verifier applies. Everything
//! here is a pure function of its input; no input panics.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

use crate::error::NoteError;
use crate::key::{Keypair, PublicKey, Signature, verify_strict};

/// Largest note, in bytes, this parser reads.
pub const MAX_NOTE_BYTES: usize = 64 * 1024;
/// Most signature lines in one note (Go's `sumdb/note` refuses more than 100).
pub const MAX_NOTE_SIGNATURES: usize = 100;
/// The signature type of Ed25519 in signed notes.
pub const ED25519_TYPE: u8 = 0x01;
/// What starts a signature line: an em dash (U+2014) and a space.
pub const SIGNATURE_LINE_PREFIX: &str = "\u{2014} ";

/// A signed-note key ID: the first 4 bytes of SHA-256 over the key name, a newline, the
/// signature type and the public key. Shown as 8 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 4]);

impl KeyId {
    /// The ID of the Ed25519 key `key` named `name`.
    pub fn ed25519(name: &str, key: &PublicKey) -> KeyId {
        let digest = Sha256::new()
            .chain_update(name.as_bytes())
            .chain_update([b'\n', ED25519_TYPE])
            .chain_update(key.0)
            .finalize();
        KeyId([digest[0], digest[1], digest[2], digest[3]])
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Whether `name` may name a key: non-empty, no Unicode white space, no `+`.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// A verifier key: a name, its key ID and the Ed25519 public key. Its text form is the vkey.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    id: KeyId,
    key: PublicKey,
}

impl VerifierKey {
    /// The verifier key of `key` under `name` (its key ID computed).
    pub fn new(name: &str, key: PublicKey) -> Result<VerifierKey, NoteError> {
        if !is_valid_key_name(name) {
            return Err(NoteError::BadKeyName { name: name.to_string() });
        }
        Ok(VerifierKey { name: name.to_string(), id: KeyId::ed25519(name, &key), key })
    }

    /// The verifier key of `key` under `name`, which the caller built from characters a key name
    /// allows.
    pub(crate) fn named(name: String, key: PublicKey) -> VerifierKey {
        debug_assert!(is_valid_key_name(&name), "{name}");
        VerifierKey { id: KeyId::ed25519(&name, &key), name, key }
    }

    /// Parses a vkey, `<name>+<8 hex digits>+<base64(0x01 | 32-byte key)>`; the key ID must be
    /// the one the name and key give.
    pub fn parse(vkey: &str) -> Result<VerifierKey, NoteError> {
        let bad = |reason| NoteError::BadVerifierKey { reason };
        // The name holds no '+'; the base64 may.
        let (name, rest) = vkey.split_once('+').ok_or(bad("no '+' after the name"))?;
        let (id_hex, key64) = rest.split_once('+').ok_or(bad("no '+' after the key ID"))?;
        if !is_valid_key_name(name) {
            return Err(NoteError::BadKeyName { name: name.to_string() });
        }
        let mut id = [0u8; 4];
        if id_hex.len() != 8 || hex::decode_to_slice(id_hex, &mut id).is_err() {
            return Err(bad("the key ID is not 8 hex digits"));
        }
        let raw = BASE64.decode(key64).map_err(|_| bad("the key is not base64"))?;
        let (&kind, key) = raw.split_first().ok_or(bad("the key is empty"))?;
        if kind != ED25519_TYPE {
            return Err(bad("not an Ed25519 key (type 0x01)"));
        }
        let key = PublicKey(<[u8; 32]>::try_from(key).map_err(|_| bad("an Ed25519 key is 32 bytes"))?);
        let parsed = VerifierKey::new(name, key)?;
        if parsed.id.0 != id {
            return Err(bad("the key ID is not SHA-256(name, 0x0A, 0x01, key)"));
        }
        Ok(parsed)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The public key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(ED25519_TYPE);
        raw.extend_from_slice(&self.key.0);
        write!(f, "{}+{}+{}", self.name, self.id, BASE64.encode(raw))
    }
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifierKey({self})")
    }
}

impl FromStr for VerifierKey {
    type Err = NoteError;
    fn from_str(s: &str) -> Result<VerifierKey, NoteError> {
        VerifierKey::parse(s)
    }
}

/// One signature line: who (name and key ID) and the signature bytes after the key ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name.
    pub name: String,
    /// The key ID.
    pub id: KeyId,
    /// The signature (64 bytes for Ed25519; other types may differ).
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The Ed25519 signature of `key`, named `name`, over `text`.
    pub fn sign(name: &str, key: &Keypair, text: &str) -> Result<NoteSignature, NoteError> {
        let vkey = VerifierKey::new(name, key.public())?;
        Ok(NoteSignature::of(&vkey, &key.sign_message(text.as_bytes())))
    }

    /// The line for an Ed25519 `signature` by the key `vkey` names.
    pub fn of(vkey: &VerifierKey, signature: &Signature) -> NoteSignature {
        NoteSignature { name: vkey.name.clone(), id: vkey.id, signature: signature.0.to_vec() }
    }

    /// The signature line, newline included.
    pub fn line(&self) -> String {
        let mut raw = Vec::with_capacity(4 + self.signature.len());
        raw.extend_from_slice(&self.id.0);
        raw.extend_from_slice(&self.signature);
        format!("{SIGNATURE_LINE_PREFIX}{} {}\n", self.name, BASE64.encode(raw))
    }
}

/// A note: its text and its signature lines, as parsed (not verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The text, ending in a newline: the bytes every signature covers.
    pub text: String,
    /// The signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

impl Note {
    /// The note with these signatures, refusing what [`Note::parse`] would refuse.
    pub fn new(text: &str, signatures: Vec<NoteSignature>) -> Result<Note, NoteError> {
        let note = Note { text: text.to_string(), signatures };
        // One rule for what a note is: whatever we write must read back the same.
        let parsed = Note::parse(note.encode().as_bytes())?;
        if parsed != note {
            return Err(NoteError::Malformed { reason: "it does not read back as itself" });
        }
        Ok(note)
    }

    /// The note's bytes: text, a blank line, the signature lines.
    pub fn encode(&self) -> String {
        let mut out = self.text.clone();
        out.push('\n');
        for s in &self.signatures {
            out.push_str(&s.line());
        }
        out
    }

    /// Parses a note (syntax only: see [`Note::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<Note, NoteError> {
        if bytes.len() > MAX_NOTE_BYTES {
            return Err(NoteError::TooLarge { size: bytes.len() as u64, limit: MAX_NOTE_BYTES as u64 });
        }
        let all = std::str::from_utf8(bytes).map_err(|_| NoteError::NotUtf8)?;
        if let Some(offset) = all.bytes().position(|b| b < 0x20 && b != b'\n') {
            return Err(NoteError::ControlCharacter { offset: offset as u64 });
        }
        // The text ends at the last blank line; the signature lines follow it.
        let split = all.rfind("\n\n").ok_or(NoteError::Malformed { reason: "no blank line before signatures" })?;
        let (text, lines) = (&all[..=split], &all[split + 2..]);
        if lines.is_empty() {
            return Err(NoteError::Malformed { reason: "no signature line" });
        }
        let lines = lines.strip_suffix('\n').ok_or(NoteError::Malformed { reason: "does not end in a newline" })?;
        let lines: Vec<&str> = lines.split('\n').collect();
        if lines.len() > MAX_NOTE_SIGNATURES {
            return Err(NoteError::TooManySignatures { count: lines.len() as u64, limit: MAX_NOTE_SIGNATURES as u64 });
        }
        let signatures = lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                parse_signature_line(line).map_err(|reason| NoteError::BadSignatureLine { line: i + 1, reason })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Note { text: text.to_string(), signatures })
    }

    /// The known keys among `verifiers` whose signature is on this note, each verified over the
    /// text, in the order of the lines. Lines of unknown keys are ignored; a known key's line that
    /// does not verify refuses the note, and so does a known key signing twice or no known key
    /// signing at all. Two verifier keys with the same name and key ID are refused as ambiguous.
    pub fn verify<'v>(&self, verifiers: &'v [VerifierKey]) -> Result<Vec<&'v VerifierKey>, NoteError> {
        let mut known: BTreeMap<(&str, KeyId), &VerifierKey> = BTreeMap::new();
        for v in verifiers {
            match known.insert((v.name.as_str(), v.id), v) {
                Some(other) if other.key != v.key => {
                    return Err(NoteError::AmbiguousVerifierKeys { name: v.name.clone(), id: v.id.to_string() });
                }
                _ => {}
            }
        }
        let mut verified: Vec<&VerifierKey> = Vec::new();
        for s in &self.signatures {
            let Some(v) = known.get(&(s.name.as_str(), s.id)) else { continue };
            if verified.iter().any(|seen| seen.name == s.name && seen.id == s.id) {
                return Err(NoteError::DuplicateSignature { name: s.name.clone() });
            }
            let ok = <[u8; 64]>::try_from(s.signature.as_slice())
                .is_ok_and(|sig| verify_strict(&v.key, self.text.as_bytes(), &Signature(sig)));
            if !ok {
                return Err(NoteError::BadSignature { name: s.name.clone() });
            }
            verified.push(v);
        }
        if verified.is_empty() {
            return Err(NoteError::NoKnownSignature);
        }
        Ok(verified)
    }
}

/// `— <name> <base64(key id | signature)>`, without its newline.
fn parse_signature_line(line: &str) -> Result<NoteSignature, &'static str> {
    let rest = line.strip_prefix(SIGNATURE_LINE_PREFIX).ok_or("does not start with an em dash and a space")?;
    let (name, sig64) = rest.split_once(' ').ok_or("no space between the key name and the signature")?;
    if !is_valid_key_name(name) {
        return Err("the key name is empty or holds a space or '+'");
    }
    let raw = BASE64.decode(sig64).map_err(|_| "the signature is not canonical base64")?;
    if raw.len() < 5 {
        return Err("the signature is shorter than a key ID and one byte");
    }
    let id = KeyId([raw[0], raw[1], raw[2], raw[3]]);
    Ok(NoteSignature { name: name.to_string(), id, signature: raw[4..].to_vec() })
}

/// Decodes canonical standard base64 (RFC 4648 §4, padded): the one spelling [`encode_base64`]
/// writes.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    BASE64.decode(text).ok()
}

/// Encodes standard base64 (RFC 4648 §4, padded).
pub fn encode_base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of Go's `sumdb/note` (its package documentation and `example_test.go`):
    /// a key, its vkey and a note it signed, all computed by Go, none by us.
    const GO_SEED_B64: &str = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_TEXT: &str =
        "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
        then you don't know what your problem is.\n\n\
        \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    fn go_key() -> Keypair {
        let raw = BASE64.decode(GO_SEED_B64).unwrap();
        assert_eq!(raw[0], ED25519_TYPE);
        Keypair::from_seed(raw[1..].try_into().unwrap())
    }

    #[test]
    fn go_s_example_parses_verifies_and_is_what_we_sign() {
        let vkey = VerifierKey::parse(GO_VKEY).unwrap();
        assert_eq!(vkey.name(), "PeterNeumann");
        assert_eq!(vkey.id().to_string(), "c74f20a3");
        assert_eq!(*vkey.key(), go_key().public());
        assert_eq!(vkey.to_string(), GO_VKEY);
        let note = Note::parse(GO_NOTE.as_bytes()).unwrap();
        assert_eq!(note.text, GO_TEXT);
        assert_eq!(note.verify(std::slice::from_ref(&vkey)).unwrap(), vec![&vkey]);
        // Ed25519 is deterministic: signing Go's text with Go's key gives Go's line.
        let ours = Note::new(GO_TEXT, vec![NoteSignature::sign("PeterNeumann", &go_key(), GO_TEXT).unwrap()]).unwrap();
        assert_eq!(ours.encode(), GO_NOTE);
    }

    #[test]
    fn key_ids_are_the_first_four_bytes_of_sha256_of_name_newline_type_key() {
        // Computed without KeyId: the bytes hashed in one piece.
        let key = go_key().public();
        let mut preimage = b"cairn.run/abc/0123".to_vec();
        preimage.push(0x0a);
        preimage.push(0x01);
        preimage.extend_from_slice(&key.0);
        let digest = Sha256::digest(&preimage);
        assert_eq!(KeyId::ed25519("cairn.run/abc/0123", &key).0, digest[..4]);
        assert_ne!(KeyId::ed25519("cairn.run/abc/0124", &key), KeyId::ed25519("cairn.run/abc/0123", &key));
    }

    #[test]
    fn verifier_keys_refuse_every_malformed_part() {
        let cases = [
            ("PeterNeumann", "no '+'"),
            ("PeterNeumann+c74f20a3", "no key"),
            ("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "empty name"),
            ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "space in the name"),
            ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "wrong key ID"),
            ("PeterNeumann+c74f20+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "short key ID"),
            ("PeterNeumann+c74f20a3+AhpcQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "not base64"),
            ("PeterNeumann+c74f20a3+Ahpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "type 0x02"),
            ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10Q=", "31 bytes"),
            ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TX", "non-canonical base64"),
        ];
        for (vkey, why) in cases {
            assert!(VerifierKey::parse(vkey).is_err(), "{why}: {vkey}");
        }
        // Upper-case hex is accepted (as Go does); we write lower case.
        let upper = VerifierKey::parse("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").unwrap();
        assert_eq!(upper.to_string(), GO_VKEY);
    }

    fn signed(text: &str, keys: &[(&str, &Keypair)]) -> (String, Vec<VerifierKey>) {
        let sigs = keys.iter().map(|(name, k)| NoteSignature::sign(name, k, text).unwrap()).collect();
        let vkeys = keys.iter().map(|(name, k)| VerifierKey::new(name, k.public()).unwrap()).collect();
        (Note::new(text, sigs).unwrap().encode(), vkeys)
    }

    #[test]
    fn tampered_notes_are_refused_with_their_reason() {
        let (a, b) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
        let text = "example.org/log\n7\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let (note, vkeys) = signed(text, &[("a.example", &a), ("b.example", &b)]);
        assert_eq!(Note::parse(note.as_bytes()).unwrap().verify(&vkeys).unwrap().len(), 2);
        let open = |bytes: &str| Note::parse(bytes.as_bytes()).and_then(|n| n.verify(&vkeys).map(|v| v.len()));

        // The text changed under the signatures: a known key's signature fails.
        let err = open(&note.replacen("\n7\n", "\n8\n", 1)).unwrap_err();
        assert!(matches!(err, NoteError::BadSignature { .. }), "{err}");
        // A key ID that matches no known key: that line is ignored, the other still verifies.
        let line_b = NoteSignature::sign("b.example", &b, text).unwrap();
        let wrong_id = NoteSignature { id: KeyId([0, 0, 0, 0]), ..line_b.clone() };
        assert_eq!(open(&note.replace(&line_b.line(), &wrong_id.line())), Ok(1));
        // Every line unknown: nothing verified.
        let (alone, _) = signed(text, &[("c.example", &Keypair::from_seed([3; 32]))]);
        assert_eq!(open(&alone), Err(NoteError::NoKnownSignature));
        // The same key twice.
        let twice = format!("{note}{}", line_b.line());
        assert!(matches!(open(&twice), Err(NoteError::DuplicateSignature { .. })));
        // Missing lines: no signature, no blank line, no final newline.
        assert!(matches!(open(text), Err(NoteError::Malformed { .. })));
        assert!(open(&format!("{text}\n")).is_err());
        assert!(matches!(open(note.trim_end_matches('\n')), Err(NoteError::Malformed { .. })));
        // An extra line in the signature block that is not a signature.
        assert!(matches!(open(&format!("{note}hello\n")), Err(NoteError::BadSignatureLine { line: 3, .. })));
        assert!(matches!(open(&format!("{note}\n")), Err(NoteError::Malformed { .. })));
        // A signature cut short, and a hyphen for the em dash.
        let cut = note.replace(&line_b.line(), "\u{2014} b.example AAAA\n");
        assert!(matches!(open(&cut), Err(NoteError::BadSignatureLine { .. })));
        assert!(open(&note.replace('\u{2014}', "-")).is_err());
        // A 63-byte signature by a known key.
        let short = NoteSignature { signature: line_b.signature[..63].to_vec(), ..line_b.clone() };
        assert!(matches!(open(&note.replace(&line_b.line(), &short.line())), Err(NoteError::BadSignature { .. })));
        // Control characters, invalid UTF-8, oversized notes, too many lines.
        assert!(matches!(
            open(&note.replacen("example.org", "exa\rmple.org", 1)),
            Err(NoteError::ControlCharacter { .. })
        ));
        let mut bytes = note.clone().into_bytes();
        bytes[3] = 0xff;
        assert_eq!(Note::parse(&bytes), Err(NoteError::NotUtf8));
        let big = format!("{}{note}", "x".repeat(MAX_NOTE_BYTES));
        assert!(matches!(open(&big), Err(NoteError::TooLarge { .. })));
        let many = format!("{note}{}", wrong_id.line().repeat(MAX_NOTE_SIGNATURES - 1));
        assert!(matches!(open(&many), Err(NoteError::TooManySignatures { count: 101, .. })));
        assert_eq!(open(&format!("{note}{}", wrong_id.line().repeat(MAX_NOTE_SIGNATURES - 2))), Ok(2));
        // Two verifier keys that share a name and key ID cannot be told apart.
        let clash = VerifierKey { key: b.public(), ..vkeys[0].clone() };
        let note = Note::parse(note.as_bytes()).unwrap();
        assert!(matches!(note.verify(&[vkeys[0].clone(), clash]), Err(NoteError::AmbiguousVerifierKeys { .. })));
    }

    #[test]
    fn only_what_reads_back_the_same_is_a_note() {
        let k = Keypair::from_seed([4; 32]);
        let sig = |text: &str| NoteSignature::sign("k.example", &k, text).unwrap();
        assert!(Note::new("a", vec![sig("a")]).is_err(), "the text must end in a newline");
        assert!(Note::new("a\tb\n", vec![sig("a\tb\n")]).is_err(), "no control character");
        assert!(Note::new("a\n", vec![]).is_err(), "no signature");
        assert!(NoteSignature::sign("k example", &k, "a\n").is_err(), "a space in the name");
        assert!(NoteSignature::sign("k+1", &k, "a\n").is_err(), "a plus in the name");
        // Blank lines inside the text are allowed: the last one ends it.
        let note = Note::new("a\n\nb\n", vec![sig("a\n\nb\n")]).unwrap();
        assert_eq!(Note::parse(note.encode().as_bytes()).unwrap(), note);
    }
}
