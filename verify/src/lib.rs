//! The reproducible core of cairn: wire format, aggregation, state hashes (issue: verify). Nothing here yet.
