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
    if let Err(e) = int8_from_env() {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
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

/// `GITCAP_INT8` chooses how q8_0 products of 8 rows or more are computed, to compare with the
/// browser (whose forms give the same bits as the portable one) or with candle: `off` (candle's
/// q8_0 kernels, what CPUs without AVX-512 VNNI run), `portable` (the integer kernel in plain
/// integer arithmetic: the SIMD128 page's results), `relaxed` (the same with activations at ±63:
/// the relaxed SIMD page's results). Unset: the fastest form for this CPU.
fn int8_from_env() -> Result<(), String> {
    use gitcap::model::int8;
    let Some(value) = std::env::var_os("GITCAP_INT8") else {
        return Ok(());
    };
    match value.to_str() {
        Some("off") => int8::set_min_rows(Some(usize::MAX)),
        Some(form @ ("portable" | "relaxed")) => {
            int8::set_portable(true);
            int8::set_min_rows(Some(8));
            int8::set_activations(Some(int8::Activations {
                levels: if form == "relaxed" { 63 } else { 127 },
                per_row: false,
            }));
        }
        _ => {
            return Err(format!(
                "GITCAP_INT8={} is not one of off, portable, relaxed",
                value.to_string_lossy()
            ))
        }
    }
    Ok(())
}
