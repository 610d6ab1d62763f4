//! Tests of the `cairn` command as users run it: exit codes, last lines, one-line errors.

mod ledger_cli;
mod store;
mod train_cli;
