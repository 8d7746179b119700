//! `gitcap quantize`: one GGUF file holding a checkpoint's weights (q8_0, q4k or f16) and its
//! config, tokenizer and preprocessing settings, loadable natively and in the browser.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gitcap::gguf::{dtype_name, QuantType};
use gitcap::quantize::{quantize_checkpoint, Progress};
use indicatif::{ProgressBar, ProgressStyle};

use super::model_source::{ModelSource, DEFAULT_MODEL};

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint folder or Hugging Face hub id (owner/name[@revision]) to convert.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// The GGUF file to write.
    #[arg(long)]
    out: PathBuf,
    /// Weight type: q8_0 (8.5 bits per weight), q4k (4.5 bits) or f16.
    #[arg(long = "type", default_value = "q8_0", value_parser = parse_type)]
    quant_type: QuantType,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn parse_type(s: &str) -> Result<QuantType, String> {
    s.parse()
        .map_err(|_: gitcap::Error| "expected q8_0, q4k or f16".to_string())
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub fn run(args: Args) -> Result<ExitCode> {
    if args.out.exists() && !args.force {
        bail!("{} exists; pass --force to replace it", args.out.display());
    }
    if args.out.is_dir() {
        bail!(
            "--out {} is a folder; name a .gguf file",
            args.out.display()
        );
    }
    let source = ModelSource::parse(&args.model)?;
    if let ModelSource::Gguf(p) = &source {
        bail!(
            "{} is already a GGUF file; quantize from the original checkpoint folder or hub id",
            p.display()
        );
    }
    let dir = source.materialize()?;
    let started = Instant::now();

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    let convert_style =
        ProgressStyle::with_template("{prefix:>10} [{bar:40}] {percent:>3}% {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> ");
    let mut on_progress = |p: Progress<'_>| match p {
        Progress::Start { elements, .. } => {
            bar.set_style(convert_style.clone());
            bar.set_prefix("converting");
            bar.set_length(elements);
        }
        Progress::Converted { name, elements, .. } => {
            bar.set_message(name.to_string());
            bar.inc(elements);
        }
        Progress::Skipped { name, .. } => bar.set_message(name.to_string()),
    };
    let summary = quantize_checkpoint(
        &dir,
        &args.out,
        args.quant_type,
        &args.model,
        &mut on_progress,
    )
    .with_context(|| format!("cannot convert {}", dir.display()))?;
    bar.finish_and_clear();

    let s = &summary;
    eprintln!(
        "wrote {} ({}, {}; the f32 weights are {}, {:.1}× smaller) in {:.1} s",
        args.out.display(),
        s.quant_type,
        mb(s.file_bytes),
        mb(s.f32_bytes),
        s.f32_bytes as f64 / s.file_bytes.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    let per_type: Vec<String> = s
        .tensors
        .iter()
        .map(|(t, n)| {
            let values = *s.elements.get(t).unwrap_or(&0);
            if values >= 100_000 {
                format!("{n} {t} ({:.1} M values)", values as f64 / 1e6)
            } else {
                format!("{n} {t} ({values} values)")
            }
        })
        .collect();
    eprintln!("tensors: {}", per_type.join(", "));
    if !s.fallbacks.is_empty() {
        eprintln!(
            "{} matri{} kept in another type because their rows do not divide into {} blocks \
             (listed in the file's gitcap.fallback_tensors):",
            s.fallbacks.len(),
            if s.fallbacks.len() == 1 { "x" } else { "ces" },
            s.quant_type
        );
        for f in &s.fallbacks {
            eprintln!("  {} {:?} → {}", f.name, f.shape, dtype_name(f.dtype));
        }
    }
    if !s.skipped.is_empty() {
        eprintln!("not stored: {}", s.skipped.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
