//! The GIT architecture: pure tensor code, no I/O, compiled for native targets and wasm32 alike.

pub mod config;
pub mod elementwise;
pub mod git;
pub mod int8;
pub mod matmul;
pub mod nn;
pub mod parallel;
pub mod policy;
mod simd;
pub mod text;
pub mod vision;
#[cfg(target_arch = "x86_64")]
mod wide;

pub use config::{GenerationConfig, GitConfig, VisionConfig};
pub use git::Git;
pub use nn::{QuantizedTensors, Weights};
pub use policy::{Policy, Stats, WideKernel};
pub use text::{ImagePrefix, TextCache};

/// x (m × k) and w (n × k) with varied values of both signs, none of them special, the same on
/// every run: the kernels' unit tests' operands.
#[cfg(test)]
pub(crate) fn test_matrices(m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
    let x = (0..m * k)
        .map(|i| ((i * 7919) % 211) as f32 / 50.0 - 2.0)
        .collect();
    let w = (0..n * k)
        .map(|i| ((i * 104729) % 197) as f32 / 40.0 - 2.5)
        .collect();
    (x, w)
}

/// max |a − b| over all elements, for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar())
        .expect("comparable tensors")
}
