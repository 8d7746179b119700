//! The GIT architecture: pure tensor code, no I/O, compiled for native targets and wasm32 alike.

pub mod config;
pub mod elementwise;
pub mod git;
pub mod matmul;
pub mod nn;
pub mod parallel;
mod simd;
pub mod text;
pub mod vision;

pub use config::{GenerationConfig, GitConfig, VisionConfig};
pub use git::Git;
pub use nn::Weights;
pub use text::{ImagePrefix, TextCache};
