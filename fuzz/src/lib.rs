//! The fuzz targets' bodies live in `../targets.rs`, shared with the corpus replay test.
#[path = "../targets.rs"]
mod targets;
pub use targets::*;
