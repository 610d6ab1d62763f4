//! Typed identifiers. Plain 32-byte newtypes for now; the ledger's own types convert to and from them
//! with `.0`.

use std::fmt;

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Lower-case hex of the 32 bytes.
            pub fn to_hex(&self) -> String {
                let mut s = String::with_capacity(64);
                for b in self.0 {
                    s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
                    s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
                }
                s
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

hash_id!(
    /// Identifies a run (from its genesis entry).
    RunId
);
hash_id!(
    /// A worker's ed25519 public key.
    WorkerKey
);
hash_id!(
    /// blake3 commitment to a model state: see [`crate::state::State::hash`].
    StateHash
);
hash_id!(
    /// blake3 commitment to a tensor layout (names and shapes): see [`crate::state::Layout::hash`].
    LayoutHash
);

/// A training round number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Round(pub u64);

impl fmt::Display for Round {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
