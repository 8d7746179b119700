//! Subcommands of the `gitcap` binary; each module owns one.

pub mod caption;
pub mod model_source;
pub mod policy;
pub mod quantize;
pub mod serve;
