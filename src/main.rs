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
    let policy = match cli::policy::from_env() {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Caption(args) => cli::caption::run(args, policy),
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
