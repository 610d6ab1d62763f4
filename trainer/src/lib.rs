//! The worker side of cairn: the only crate that links libtorch (through tch).
//!
//! Modules: [`model`] (the Llama-style decoder, its presets and deterministic initial state),
//! [`data`] (the synthetic corpus with a known loss floor, text from a path or store URL, the
//! train/eval split and the per-(round, worker) assignment), [`step`] (gradient accumulation,
//! clipping, evaluation and the AdamW baseline), [`demo`] (DeMo momentum, DCT top-k encoding into
//! verify's wire format, error feedback, and the dense libtorch aggregation used as a benchmark
//! baseline). The libtorch probe below is what `cairn` and CI use to prove that libtorch links and
//! runs; [`set_torch_threads`] applies the configured thread count (tests use one).

pub mod copies;
pub mod crashpoint;
pub mod data;
pub mod demo;
mod error;
pub mod evaluate;
pub mod follow;
pub mod gather;
pub mod hf;
pub mod local;
pub mod model;
pub mod pace;
pub mod peers;
pub mod poison;
pub mod run_spec;
pub mod score;
pub mod simulate;
pub mod step;
pub mod steps;
pub mod validator;
pub mod worker;
pub mod worker_state;

pub use error::TrainerError;

/// What the linked libtorch reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchInfo {
    /// Whether a CUDA device is usable from this process.
    pub cuda_available: bool,
    /// Number of threads libtorch uses for intra-op parallelism.
    pub threads: i32,
}

/// Asks libtorch about itself (a cheap call that proves the library loaded). Loads libtorch's CUDA
/// backend first where one is on the library path ([`load_cuda_backend`]).
pub fn torch_info() -> TorchInfo {
    let _ = load_cuda_backend();
    TorchInfo { cuda_available: tch::Cuda::is_available(), threads: tch::get_num_threads() }
}

/// The library that registers libtorch's CUDA backend when it loads.
const CUDA_BACKEND: &str = "libtorch_cuda.so";

/// Loads libtorch's CUDA backend into this process, once, so that one binary serves CPUs and GPUs.
///
/// `cairn` links only `libtorch_cpu.so` and `libc10.so` (what `make setup` unpacks from the PyPI
/// torch wheel). The same wheel's `libtorch_cuda.so` registers the CUDA backend with libtorch when
/// it is loaded, so on a machine where that wheel is installed, pointing `LD_LIBRARY_PATH` at its
/// `torch/lib` and loading the library here is all a GPU needs (README, "GPU"). Returns why it could
/// not be loaded (not on the library path, or a missing dependency); the result of the first call
/// is kept.
pub fn load_cuda_backend() -> Result<(), String> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let name = std::ffi::CString::new(CUDA_BACKEND).map_err(|e| e.to_string())?;
            // SAFETY: `name` is a valid NUL-terminated string that outlives the call. The handle is
            // never closed: the backend's registrations must live as long as the process. dlerror is
            // read on this thread right after the failed call, as its contract requires.
            unsafe {
                let handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
                if handle.is_null() {
                    let why = libc::dlerror();
                    return Err(if why.is_null() {
                        format!("{CUDA_BACKEND} could not be loaded")
                    } else {
                        std::ffi::CStr::from_ptr(why).to_string_lossy().into_owned()
                    });
                }
            }
            Ok(())
        })
        .clone()
}

pub use tch::Device;

/// The device named `cpu`, `cuda` or `cuda:N` (what `--device` takes); a CUDA device must be
/// visible to this libtorch.
pub fn parse_device(name: &str) -> Result<Device, TrainerError> {
    let device = match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => Device::Cuda(n),
            None => {
                return Err(TrainerError::InvalidConfig(format!("device must be cpu, cuda or cuda:N, not {other:?}")));
            }
        },
    };
    if let Device::Cuda(n) = device {
        let loaded = load_cuda_backend();
        let count = tch::Cuda::device_count();
        if i64::try_from(n).unwrap_or(i64::MAX) >= count {
            let why = match loaded {
                Ok(()) => format!("libtorch sees {count} CUDA devices"),
                Err(e) => format!("no CUDA backend ({e}); put a CUDA torch wheel's torch/lib on LD_LIBRARY_PATH"),
            };
            return Err(TrainerError::InvalidConfig(format!("device {name}: {why} (README, \"GPU\")")));
        }
    }
    Ok(device)
}

/// Sets the number of threads libtorch uses for intra-op parallelism (at least 1).
pub fn set_torch_threads(threads: usize) {
    tch::set_num_threads(i32::try_from(threads.max(1)).unwrap_or(i32::MAX));
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    /// CI's proof that libtorch links and computes: a small matmul against a known answer.
    #[test]
    fn libtorch_multiplies_matrices() {
        tch::set_num_threads(1);
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let b = Tensor::from_slice(&[5.0f32, 6.0, 7.0, 8.0]).reshape([2, 2]);
        let c = a.matmul(&b).to_device(Device::Cpu).to_kind(Kind::Float);
        let got: Vec<f32> = Vec::<f32>::try_from(c.flatten(0, -1)).expect("tensor to vec");
        assert_eq!(got, vec![19.0, 22.0, 43.0, 50.0]);
        assert!(super::torch_info().threads >= 1);
    }

    /// A CUDA device asked of a libtorch without its CUDA backend fails in one line that says why
    /// and what to do (CI has no GPU, so this is the path it can check).
    #[test]
    fn cuda_without_a_backend_says_how_to_get_one() {
        if super::torch_info().cuda_available {
            assert!(super::parse_device("cuda").is_ok());
            return;
        }
        let err = super::parse_device("cuda:0").unwrap_err().to_string();
        assert!(err.contains("cuda:0") && err.contains("LD_LIBRARY_PATH"), "{err}");
        assert!(super::parse_device("gpu").is_err());
        assert_eq!(super::parse_device("cpu").unwrap(), Device::Cpu);
    }
}
