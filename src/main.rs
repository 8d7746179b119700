//! The `gitcap` command line: caption images, quantize checkpoints, serve the web page.

mod cli;

/// Every tensor op allocates its output; glibc's malloc hands large blocks back to the kernel and
/// refaults them on the next op (about 10% of image encoding), mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gitcap",
    version,
    about = "Caption images with Microsoft's GIT, entirely on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Caption one or more images (or the frames of one clip with --video).
    Caption(cli::caption::Args),
    /// Convert a checkpoint into a single GGUF file (quantized or f16 weights plus everything else).
    Quantize(cli::quantize::Args),
    /// Serve the in-browser captioner (www/) on 127.0.0.1.
    Serve(cli::serve::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // For comparisons, and for CPUs whose AVX-512 is slower than their AVX2.
    if std::env::var_os("GITCAP_NO_AVX512").is_some_and(|v| v != "0") {
        gitcap::model::matmul::disable_wide();
    }
    let result = match cli.command {
        Command::Caption(args) => cli::caption::run(args),
        Command::Quantize(args) => cli::quantize::run(args),
        Command::Serve(args) => cli::serve::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
