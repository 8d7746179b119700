//! gitcap: Microsoft's GIT (GenerativeImage2Text) image captioner on candle.
//!
//! The model code (`model`, `generate`) is pure computation and compiles for native targets and
//! wasm32 alike; reading weights, decoding images and tokenizing live at the edges (`weights`,
//! `image`, `tokenizer`); `captioner` ties them together for the front ends (the CLI in
//! `main.rs`, the browser bindings in `wasm`).

pub mod captioner;
#[cfg(not(target_arch = "wasm32"))]
pub mod checkpoint;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod image;
pub mod model;
pub mod quantize;
pub mod quantize_stream;
mod sampling;
pub mod stream_load;
pub mod tokenizer;
#[cfg(target_arch = "wasm32")]
pub mod wasm;
pub mod weights;

pub use captioner::{Caption, CaptionOptions, Captioner, ModelFiles};
pub use error::{Error, Result};
pub use generate::Decoding;
