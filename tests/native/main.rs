//! gitcap's native integration tests, one binary for all the files that leave process-wide
//! settings alone. Every test binary is a compile and a link of its own, each costing CI's two
//! cores about a minute; `split.rs` and `native_kernels.rs` stay binaries of their own, because
//! they switch kernels and split settings for the whole process.

// Native only: these tests read fixtures from disk (the wasm tests are tests/wasm.rs).
#![cfg(not(target_arch = "wasm32"))]

#[path = "../common/mod.rs"]
mod common;

// The CLI exists only with the native feature.
#[cfg(feature = "native")]
mod cli;
mod errors;
mod fuzz_corpus;
mod image_preprocess;
mod parity;
mod quantize;
mod quantize_stream;
#[cfg(feature = "native")]
mod serve;
mod stream_load;
mod tokenizer;
