//! Integration tests of the storage crate against the real backends: memory, a local folder, and
//! a real S3 server (SeaweedFS, started by `make test` or by the harness itself).

mod backends;
mod faults;
mod s3;
