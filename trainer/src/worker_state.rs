//! The worker's private DeMo state on disk, so that a restarted worker continues where it was.
//!
//! ```text
//!   offset size  field                      (all integers little-endian)
//!   0      8     magic "CAIRNWST"
//!   8      2     version = 1
//!   10     32    run id
//!   42     32    layout hash
//!   74     8     round: the last round whose update this momentum has fed (error feedback applied)
//!   82     8     body length in bytes
//!   90     32    blake3 of the body
//!   122          body: the momentum as safetensors (verify::State::to_safetensors: deterministic,
//!                one F32 tensor per parameter, named and shaped as the layout)
//!
//!   save: bytes ──write──▶ <file>.tmp ──fsync──▶ rename(<file>.tmp, <file>) ──fsync dir──▶ done
//!   load: missing ─────────────────────────────────────────────▶ Fresh(NoFile)
//!         bad magic / version / length / body hash ────────────▶ Err(WorkerStateCorrupt)
//!         other run id or layout hash ─────────────────────────▶ Err(ForeignWorkerState)
//!         saved round > current, or current - saved > max_rounds_behind ─▶ Fresh(reason), logged
//!         otherwise ───────────────────────────────────────────▶ Resumed(DemoState)
//! ```
//!
//! A worker killed mid-save leaves at worst a stray `.tmp` file beside an intact previous save: the
//! rename is the commit point. The body hash also catches a file truncated or damaged afterwards.
//! The state is private (never consensus), so this format only has to be safe, not canonical; zeros
//! come back as `+0.0` (the restore adds the saved values to a zero momentum).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use tch::Device;
use verify::{Layout, LayoutHash, Round, RunId, State};

use crate::demo::{DemoState, tensors_from_state, tensors_to_host};
use crate::error::TrainerError;

/// First 8 bytes of a worker-state file.
pub const MAGIC: [u8; 8] = *b"CAIRNWST";
/// The format version this module writes and reads.
pub const VERSION: u16 = 1;
/// Bytes before the body.
pub const HEADER_BYTES: usize = 122;
/// Allowance for the safetensors JSON header, on top of 4 bytes per parameter and 512 bytes per
/// tensor: a file larger than that for the expected layout is refused unread.
const SAFETENSORS_SLACK_BYTES: u64 = 1 << 16;

/// The state as saved: what [`save`] writes and [`load`] restores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    /// The run the momentum belongs to.
    pub run: RunId,
    /// The layout of the model.
    pub layout: LayoutHash,
    /// The last round whose update this momentum has fed.
    pub round: Round,
}

/// When [`load`] keeps a saved state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumePolicy {
    /// Most rounds the saved round may lag the current one: with saved round `s` and current round
    /// `c`, the state is resumed if `s <= c <= s + max_rounds_behind`. Momentum older than that
    /// points at a model the run has moved away from; a fresh start is better.
    pub max_rounds_behind: u64,
}

impl Default for ResumePolicy {
    /// Up to 8 rounds behind.
    fn default() -> ResumePolicy {
        ResumePolicy { max_rounds_behind: 8 }
    }
}

/// Why [`load`] started from zero momentum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreshReason {
    /// No saved file.
    NoFile,
    /// The saved round is more than `max_rounds_behind` behind the current one.
    Stale {
        /// Round in the file.
        saved: Round,
        /// Round the worker is about to contribute to.
        current: Round,
    },
    /// The saved round is ahead of the current one (the file outlived a reset of the run's view).
    Ahead {
        /// Round in the file.
        saved: Round,
        /// Round the worker is about to contribute to.
        current: Round,
    },
}

impl std::fmt::Display for FreshReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FreshReason::NoFile => write!(f, "no saved worker state"),
            FreshReason::Stale { saved, current } => {
                write!(f, "saved worker state is for round {saved}, too far behind round {current}")
            }
            FreshReason::Ahead { saved, current } => {
                write!(f, "saved worker state is for round {saved}, ahead of round {current}")
            }
        }
    }
}

/// What [`load`] found.
#[derive(Debug)]
pub enum Restored {
    /// The saved momentum, on the requested device.
    Resumed {
        /// The worker's DeMo state.
        state: DemoState,
        /// The file's header.
        saved: Saved,
    },
    /// Zero momentum, and why.
    Fresh {
        /// The worker's DeMo state (zero momentum).
        state: DemoState,
        /// Why the file was not used.
        reason: FreshReason,
    },
}

impl Restored {
    /// The DeMo state, resumed or fresh.
    pub fn into_state(self) -> DemoState {
        match self {
            Restored::Resumed { state, .. } | Restored::Fresh { state, .. } => state,
        }
    }
}

fn corrupt(path: &Path, problem: impl Into<String>) -> TrainerError {
    TrainerError::WorkerStateCorrupt { path: path.display().to_string(), problem: problem.into() }
}

fn write_err(path: &Path, source: std::io::Error) -> TrainerError {
    TrainerError::Write { path: path.display().to_string(), source }
}

/// The file's bytes for `demo`'s momentum (see the module docs).
pub fn to_bytes(demo: &DemoState, layout: &Layout, saved: &Saved) -> Result<Vec<u8>, TrainerError> {
    if saved.layout != layout.hash() {
        return Err(TrainerError::ForeignWorkerState { what: "layout hash" });
    }
    let state = State::from_parts(layout.clone(), tensors_to_host(demo.momentum())?)?;
    let body = state.to_safetensors()?;
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&saved.run.0);
    out.extend_from_slice(&saved.layout.0);
    out.extend_from_slice(&saved.round.0.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(&body).as_bytes());
    assert_eq!(out.len(), HEADER_BYTES);
    out.extend_from_slice(&body);
    Ok(out)
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&bytes[at..at + N]);
    a
}

/// Parses a file's bytes: checks the framing and body hash, then that it is for `run` and `layout`.
/// Returns the header and the momentum (host, layout order). `path` only names the file in errors.
pub fn from_bytes(bytes: &[u8], path: &Path, run: RunId, layout: &Layout) -> Result<(Saved, State), TrainerError> {
    if bytes.len() < HEADER_BYTES {
        return Err(corrupt(path, format!("{} bytes, shorter than the {HEADER_BYTES}-byte header", bytes.len())));
    }
    if bytes[..8] != MAGIC {
        return Err(corrupt(path, "not a worker-state file (magic)"));
    }
    let version = u16::from_le_bytes(array(bytes, 8));
    if version != VERSION {
        return Err(corrupt(path, format!("version {version}, this build reads {VERSION}")));
    }
    let saved = Saved {
        run: RunId(array(bytes, 10)),
        layout: LayoutHash(array(bytes, 42)),
        round: Round(u64::from_le_bytes(array(bytes, 74))),
    };
    let body_len = u64::from_le_bytes(array(bytes, 82));
    let body = &bytes[HEADER_BYTES..];
    if body.len() as u64 != body_len {
        return Err(corrupt(path, format!("body of {} bytes, header says {body_len}", body.len())));
    }
    if *blake3::hash(body).as_bytes() != array::<32>(bytes, 90) {
        return Err(corrupt(path, "body hash mismatch"));
    }
    if saved.run != run {
        return Err(TrainerError::ForeignWorkerState { what: "run id" });
    }
    if saved.layout != layout.hash() {
        return Err(TrainerError::ForeignWorkerState { what: "layout hash" });
    }
    let state = State::from_safetensors(body).map_err(|e| corrupt(path, e.to_string()))?;
    if state.layout() != layout {
        return Err(corrupt(path, "tensors do not match the layout its header names"));
    }
    Ok((saved, state))
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Saves `demo`'s momentum for `run` and `round` to `path`, atomically: the bytes go to
/// `<path>.tmp`, are synced, and replace `path` by a rename (then the directory is synced).
pub fn save(path: &Path, demo: &DemoState, layout: &Layout, run: RunId, round: Round) -> Result<(), TrainerError> {
    let bytes = to_bytes(demo, layout, &Saved { run, layout: layout.hash(), round })?;
    let tmp = temp_path(path);
    {
        let mut f = fs::File::create(&tmp).map_err(|e| write_err(&tmp, e))?;
        f.write_all(&bytes).map_err(|e| write_err(&tmp, e))?;
        f.sync_all().map_err(|e| write_err(&tmp, e))?;
    }
    crate::crashpoint::reached("state:written");
    fs::rename(&tmp, path).map_err(|e| write_err(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Makes the rename durable; directories cannot be opened for sync on every platform.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    crate::crashpoint::reached("state:saved");
    tracing::debug!(path = %path.display(), round = round.0, bytes = bytes.len(), "saved worker state");
    Ok(())
}

/// Restores the worker state from `path` for `run` and `layout`, on `device`, for a worker about to
/// contribute to round `current`. A missing, stale or future file gives zero momentum with a
/// logged reason; a damaged file or one for another run or layout is an error (the caller decides
/// whether to delete it).
pub fn load(
    path: &Path,
    run: RunId,
    layout: &Layout,
    current: Round,
    policy: ResumePolicy,
    device: Device,
) -> Result<Restored, TrainerError> {
    let fresh = |reason: FreshReason| -> Result<Restored, TrainerError> {
        tracing::info!(path = %path.display(), round = current.0, %reason, "starting with zero momentum");
        Ok(Restored::Fresh { state: DemoState::new(layout, device)?, reason })
    };
    let size = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return fresh(FreshReason::NoFile),
        Err(source) => return Err(TrainerError::Read { path: path.display().to_string(), source }),
    };
    let limit =
        HEADER_BYTES as u64 + 4 * layout.elements() + 512 * layout.tensors().len() as u64 + SAFETENSORS_SLACK_BYTES;
    if size > limit {
        return Err(TrainerError::TooLarge { what: path.display().to_string(), size, limit });
    }
    let bytes = fs::read(path).map_err(|source| TrainerError::Read { path: path.display().to_string(), source })?;
    let (saved, momentum) = from_bytes(&bytes, path, run, layout)?;
    if saved.round > current {
        return fresh(FreshReason::Ahead { saved: saved.round, current });
    }
    if current.0 - saved.round.0 > policy.max_rounds_behind {
        return fresh(FreshReason::Stale { saved: saved.round, current });
    }
    let mut state = DemoState::new(layout, device)?;
    // m = 0 * 0 + 1 * saved: exactly the saved values (a -0.0 comes back as +0.0).
    state.accumulate(&tensors_from_state(&momentum, device)?, layout, 0.0, 1.0)?;
    tracing::info!(path = %path.display(), saved = saved.round.0, round = current.0, "resumed worker state");
    Ok(Restored::Resumed { state, saved })
}

#[cfg(test)]
mod tests {
    use verify::TensorSpec;

    use super::*;

    fn layout() -> Layout {
        Layout::new(vec![
            TensorSpec { name: "a.weight".into(), shape: vec![16, 24] },
            TensorSpec { name: "b.bias".into(), shape: vec![10] },
            TensorSpec { name: "c.scalar".into(), shape: vec![] },
        ])
        .unwrap()
    }

    /// A DeMo state with non-trivial momentum: two accumulations of deterministic "gradients".
    fn demo(layout: &Layout) -> DemoState {
        let grads = |seed: u32| {
            let data = layout
                .tensors()
                .iter()
                .map(|t| (0..t.elements() as u32).map(|i| ((i * 7 + seed * 13) % 29) as f32 / 7.0 - 2.0).collect())
                .collect();
            tensors_from_state(&State::from_parts(layout.clone(), data).unwrap(), Device::Cpu).unwrap()
        };
        let mut d = DemoState::new(layout, Device::Cpu).unwrap();
        d.accumulate(&grads(1), layout, 0.9, 0.3).unwrap();
        d.accumulate(&grads(2), layout, 0.9, 0.3).unwrap();
        d
    }

    const RUN: RunId = RunId([5; 32]);

    #[test]
    fn save_then_load_restores_identical_momentum() {
        crate::set_torch_threads(1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.state");
        let l = layout();
        let d = demo(&l);
        save(&path, &d, &l, RUN, Round(7)).unwrap();
        assert!(!temp_path(&path).exists(), "the temp file is renamed away");
        let policy = ResumePolicy { max_rounds_behind: 2 };
        for current in [7, 8, 9] {
            let Restored::Resumed { state, saved } = load(&path, RUN, &l, Round(current), policy, Device::Cpu).unwrap()
            else {
                panic!("round {current}: not resumed");
            };
            assert_eq!(saved, Saved { run: RUN, layout: l.hash(), round: Round(7) });
            let (want, got) = (tensors_to_host(d.momentum()).unwrap(), tensors_to_host(state.momentum()).unwrap());
            assert_eq!(want, got);
            assert!(want.iter().flatten().any(|v| *v != 0.0));
        }
        // Saving again replaces the file whole.
        save(&path, &d, &l, RUN, Round(8)).unwrap();
        let Restored::Resumed { saved, .. } = load(&path, RUN, &l, Round(8), policy, Device::Cpu).unwrap() else {
            panic!("not resumed after a second save");
        };
        assert_eq!(saved.round, Round(8));
    }

    #[test]
    fn stale_future_or_missing_file_starts_clean() {
        crate::set_torch_threads(1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.state");
        let l = layout();
        let policy = ResumePolicy { max_rounds_behind: 2 };
        let zero =
            |r: Restored| tensors_to_host(r.into_state().momentum()).unwrap().iter().flatten().all(|v| *v == 0.0);
        let got = load(&path, RUN, &l, Round(3), policy, Device::Cpu).unwrap();
        assert!(matches!(got, Restored::Fresh { reason: FreshReason::NoFile, .. }), "{got:?}");
        save(&path, &demo(&l), &l, RUN, Round(10)).unwrap();
        let got = load(&path, RUN, &l, Round(13), policy, Device::Cpu).unwrap();
        assert!(
            matches!(got, Restored::Fresh { reason: FreshReason::Stale { saved: Round(10), current: Round(13) }, .. }),
            "{got:?}"
        );
        assert!(zero(got));
        let got = load(&path, RUN, &l, Round(9), policy, Device::Cpu).unwrap();
        assert!(matches!(got, Restored::Fresh { reason: FreshReason::Ahead { .. }, .. }), "{got:?}");
        assert!(zero(got));
    }

    #[test]
    fn torn_or_foreign_file_is_refused() {
        crate::set_torch_threads(1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.state");
        let l = layout();
        let policy = ResumePolicy::default();
        save(&path, &demo(&l), &l, RUN, Round(4)).unwrap();
        let good = fs::read(&path).unwrap();
        // another run, another layout
        let other = load(&path, RunId([6; 32]), &l, Round(4), policy, Device::Cpu);
        assert!(matches!(other, Err(TrainerError::ForeignWorkerState { what: "run id" })), "{other:?}");
        let l2 = Layout::new(vec![TensorSpec { name: "a.weight".into(), shape: vec![24, 16] }]).unwrap();
        let other = load(&path, RUN, &l2, Round(4), policy, Device::Cpu);
        assert!(matches!(other, Err(TrainerError::ForeignWorkerState { what: "layout hash" })), "{other:?}");
        // torn at several points, and a flipped body bit
        for cut in [0, 7, HEADER_BYTES - 1, HEADER_BYTES, good.len() / 2, good.len() - 1] {
            fs::write(&path, &good[..cut]).unwrap();
            let got = load(&path, RUN, &l, Round(4), policy, Device::Cpu);
            assert!(matches!(got, Err(TrainerError::WorkerStateCorrupt { .. })), "cut at {cut}: {got:?}");
        }
        let mut flipped = good.clone();
        flipped[HEADER_BYTES + 200] ^= 1;
        fs::write(&path, &flipped).unwrap();
        let got = load(&path, RUN, &l, Round(4), policy, Device::Cpu);
        assert!(matches!(got, Err(TrainerError::WorkerStateCorrupt { .. })), "{got:?}");
        // a stray temp file from a killed save does not affect the committed file
        fs::write(&path, &good).unwrap();
        fs::write(temp_path(&path), &good[..good.len() / 3]).unwrap();
        assert!(matches!(load(&path, RUN, &l, Round(4), policy, Device::Cpu), Ok(Restored::Resumed { .. })));
    }
}
