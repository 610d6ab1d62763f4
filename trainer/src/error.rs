//! The trainer crate's one error type.

use tch::TchError;
use verify::VerifyError;

/// What can go wrong on the worker side.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// libtorch refused an operation (a device, kind or shape problem in our own tensors).
    #[error("libtorch: {0}")]
    Torch(#[from] TchError),
    /// verify rejected what the trainer built (or a layout or hyperparameter check failed).
    #[error("verify: {0}")]
    Verify(#[from] VerifyError),
    /// The tensors handed in do not match the model layout.
    #[error("tensor {index} ({name}): {problem}")]
    Shape {
        /// Position in layout order.
        index: usize,
        /// Tensor name from the layout.
        name: String,
        /// What does not match.
        problem: String,
    },
    /// A tensor to encode holds NaN or an infinity.
    #[error("tensor {name} holds a non-finite value")]
    NonFinite {
        /// Tensor name from the layout.
        name: String,
    },
    /// A model, data or training configuration that cannot work (unknown preset, inconsistent shape,
    /// a sequence longer than the model takes, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Validators' verdicts excluded this worker (verify's exclusion rule): nothing it sends counts.
    #[error("excluded by validators' verdicts (the verdict at {since}); this key's contributions no longer count")]
    Excluded {
        /// The verdict that excluded it.
        since: String,
    },
    /// The ledger refused an append or a read (contention, a tampered log, an unreadable slot).
    #[error("ledger: {0}")]
    Ledger(#[from] ledger::LedgerError),
    /// The object store refused to hand over a data file.
    #[error("storage: {0}")]
    Storage(#[from] storage::StoreError),
    /// A local data file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A data file over the configured size limit.
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// What was being read.
        what: String,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// A loss or gradient came out NaN or infinite (a diverged step).
    #[error("non-finite {what} in a training step")]
    Diverged {
        /// Which quantity: `loss` or `gradient norm`.
        what: &'static str,
    },
    /// A local file could not be written (worker state).
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A saved worker-state file is torn or damaged (framing, length or body hash).
    #[error("worker state {path} is damaged: {problem}")]
    WorkerStateCorrupt {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// Safetensors bytes could not be built (an export).
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// A Parquet data file is damaged, or has no usable text column.
    #[error("parquet {what}: {problem}")]
    Parquet {
        /// The file or object.
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// An HF `tokenizer.json` could not be loaded, or refused to encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A saved worker-state file belongs to another run or model layout.
    #[error("worker state is for another run or model: {what} differs")]
    ForeignWorkerState {
        /// Which field differs: `run id` or `layout hash`.
        what: &'static str,
    },
}

impl TrainerError {
    /// Whether the error may pass if the same work is tried again later: the store was unreachable
    /// (after the storage layer's own retries), an append stayed contended or uncertain, or a blob
    /// could not be read right now. A worker or validator rejoins the run after such an error;
    /// every other error is for a person to fix.
    pub fn is_transient(&self) -> bool {
        use ledger::LedgerError;
        use storage::StoreError;
        matches!(
            self,
            TrainerError::Storage(StoreError::Unavailable { .. })
                | TrainerError::Ledger(
                    LedgerError::Store(StoreError::Unavailable { .. })
                        | LedgerError::Contended { .. }
                        | LedgerError::AppendUncertain { .. }
                )
                | TrainerError::Verify(VerifyError::BlobUnavailable { .. })
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_passing_failures_are_transient() {
        let contended = ledger::LedgerError::Contended { attempts: 512, last_seq: ledger::Seq(9) };
        assert!(TrainerError::Ledger(contended).is_transient());
        assert!(
            TrainerError::Ledger(ledger::LedgerError::AppendUncertain { seq: ledger::Seq(9), cause: "down".into() })
                .is_transient()
        );
        let blob = VerifyError::BlobUnavailable { blob: "b".into(), reason: "timeout".into() };
        assert!(TrainerError::Verify(blob).is_transient());
        assert!(!TrainerError::InvalidConfig("x".into()).is_transient());
        assert!(!TrainerError::Excluded { since: "3.0".into() }.is_transient());
        assert!(!TrainerError::Storage(storage::StoreError::NotFound { key: "k".into() }).is_transient());
    }
}
