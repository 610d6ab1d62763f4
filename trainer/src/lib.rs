//! The worker side of cairn: the only crate that links libtorch (through tch).
//!
//! For now it holds the libtorch probe used by `cairn` and CI to prove that libtorch links and
//! runs; the model, data pipeline and DeMo encoder arrive with the trainer issue.

/// What the linked libtorch reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchInfo {
    /// Whether a CUDA device is usable from this process.
    pub cuda_available: bool,
    /// Number of threads libtorch uses for intra-op parallelism.
    pub threads: i32,
}

/// Asks libtorch about itself (a cheap call that proves the library loaded).
pub fn torch_info() -> TorchInfo {
    TorchInfo { cuda_available: tch::Cuda::is_available(), threads: tch::get_num_threads() }
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
}
