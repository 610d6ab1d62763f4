//! The signed, append-only ledger of a cairn run (issue: ledger). Nothing here yet.
