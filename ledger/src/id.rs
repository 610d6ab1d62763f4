//! Typed identifiers: sequence numbers, rounds, run ids and state hashes.
//!
//! Each is a thin wrapper so that a round can never be passed where a slot number is expected.
//! All of them print as decimal (numbers) or lowercase hex (byte strings).

use std::fmt;
use std::str::FromStr;

/// A slot number in the log: the `N` of `ledger/seq/{N:020}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// The slot after this one, or `None` at the end of the number space.
    pub fn next(self) -> Option<Seq> {
        self.0.checked_add(1).map(Seq)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A training round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Round(pub u64);

impl fmt::Display for Round {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The position of one entry: its slot and its index inside that slot's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryPos {
    /// The slot.
    pub seq: Seq,
    /// The index inside the slot's batch (0 for a single-entry slot).
    pub index: u16,
}

impl fmt::Display for EntryPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.seq, self.index)
    }
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 32]);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = hex::FromHexError;
            fn from_str(s: &str) -> Result<$name, hex::FromHexError> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out)?;
                Ok($name(out))
            }
        }
    };
}

hex_id!(
    /// The identity of a run: 32 bytes chosen at genesis (random, or a hash of a name). Every
    /// signature covers it, so nothing signed for one run verifies in another.
    RunId
);

hex_id!(
    /// The hash of a model state. The ledger only carries it; `verify` computes it.
    StateHash
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse_as_hex() {
        let id = RunId([0xab; 32]);
        assert_eq!(id.to_string(), "ab".repeat(32));
        assert_eq!(id.to_string().parse::<RunId>().unwrap(), id);
        assert!("abc".parse::<StateHash>().is_err());
        assert_eq!(Seq(u64::MAX).next(), None);
        assert_eq!(Seq(4).next(), Some(Seq(5)));
    }
}
