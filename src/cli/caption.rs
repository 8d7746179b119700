//! `gitcap caption`: one caption per image, streamed as it is generated, or JSON lines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gitcap::image::{decode_image, ImageLimits};
use gitcap::model::Policy;
use gitcap::{CaptionOptions, Captioner, Decoding};
use image::RgbImage;

use super::model_source::{self, DEFAULT_MODEL};

/// Files larger than this are refused before reading: no photo needs it, and it bounds memory.
const MAX_IMAGE_FILE_BYTES: u64 = 256 * 1024 * 1024;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint folder, .gguf file, or Hugging Face hub id (owner/name[@revision]).
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Most tokens to generate per caption.
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    /// Beam search with this many beams (1 = greedy).
    #[arg(long, default_value_t = 1)]
    beams: usize,
    /// Beam search length penalty (score / length^penalty).
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f64,
    /// The GIT paper's decoding: 4 beams, length penalty 0.6.
    #[arg(long, conflicts_with_all = ["beams", "length_penalty", "sample"])]
    paper: bool,
    /// Sample instead of searching (see --temperature, --top-k, --top-p, --seed).
    #[arg(long, conflicts_with = "beams")]
    sample: bool,
    #[arg(long, default_value_t = 1.0, requires = "sample")]
    temperature: f64,
    #[arg(long, requires = "sample")]
    top_k: Option<usize>,
    #[arg(long, requires = "sample")]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 0, requires = "sample")]
    seed: u64,
    /// Text the caption continues; for VQA checkpoints, the question.
    #[arg(long)]
    prompt: Option<String>,
    /// All images are the frames of one clip (video checkpoints such as git-base-vatex).
    #[arg(long)]
    video: bool,
    /// One JSON object per line: {"image", "text", "token_ids"}.
    #[arg(long)]
    json: bool,
    /// Where the model runs: cpu, cuda (GPU 0; needs the CUDA build, ./build.sh --cuda), or auto
    /// (CUDA when this build has it and a GPU is present, else the CPU).
    #[arg(long, value_enum, default_value_t = model_source::DeviceChoice::Auto)]
    device: model_source::DeviceChoice,
    /// Print how long loading, image encoding and each token took (to stderr).
    #[arg(long)]
    timings: bool,
    /// Images to caption (JPEG, PNG, GIF, WebP, BMP).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

impl Args {
    fn options(&self) -> Result<CaptionOptions> {
        let decoding = if self.paper {
            Decoding::paper()
        } else if self.sample {
            Decoding::Sample {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
            }
        } else if self.beams > 1 {
            Decoding::Beam {
                num_beams: self.beams,
                length_penalty: self.length_penalty,
            }
        } else if self.beams == 1 {
            Decoding::Greedy
        } else {
            bail!("--beams must be at least 1");
        };
        Ok(CaptionOptions {
            max_new_tokens: self.max_new_tokens,
            decoding,
            prompt: self.prompt.clone(),
        })
    }
}

pub fn read_image(path: &Path) -> Result<RgbImage> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > MAX_IMAGE_FILE_BYTES {
        bail!(
            "{} is {} MB; gitcap reads images up to {} MB",
            path.display(),
            meta.len() >> 20,
            MAX_IMAGE_FILE_BYTES >> 20
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(decode_image(&bytes, &ImageLimits::default())?)
}

/// Captions as `args` say, the model computing by `policy`.
pub fn run(args: Args, policy: Policy) -> Result<ExitCode> {
    let opts = args.options()?;
    let device = model_source::device(args.device)?;
    let started = Instant::now();
    let captioner = model_source::load(&args.model, &device, policy)?;
    if args.timings {
        eprintln!(
            "timing: model loaded in {:.1} ms on the {}",
            ms(started),
            model_source::device_name(&device)
        );
    }
    if args.video != (captioner.frames() > 1) {
        if args.video {
            bail!("--video needs a video checkpoint (such as microsoft/git-base-vatex); this one takes single images");
        }
        bail!(
            "this is a video checkpoint taking {} frames: pass them with --video",
            captioner.frames()
        );
    }
    let jobs: Vec<Vec<PathBuf>> = if args.video {
        vec![args.images.clone()]
    } else {
        args.images.iter().map(|p| vec![p.clone()]).collect()
    };
    let mut failures = 0;
    for job in &jobs {
        if let Err(e) = caption_one(&captioner, job, &opts, &args, jobs.len() > 1) {
            failures += 1;
            let name = names(job);
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"image": image_field(job, args.video), "error": format!("{e:#}")})
                );
            } else {
                eprintln!("error: {name}: {e:#}");
            }
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn image_field(paths: &[PathBuf], video: bool) -> serde_json::Value {
    if video {
        serde_json::json!(paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>())
    } else {
        serde_json::json!(paths[0].display().to_string())
    }
}

fn caption_one(
    captioner: &Captioner,
    paths: &[PathBuf],
    opts: &CaptionOptions,
    args: &Args,
    label: bool,
) -> Result<()> {
    let frames = paths
        .iter()
        .map(|p| read_image(p))
        .collect::<Result<Vec<_>>>()?;
    // Encoding by stage, so that --timings can set the image encoder's time beside transformers'
    // (which times image_encoder + visual_projection on preprocessed pixels).
    let t0 = Instant::now();
    let (mut stage_start, mut stage_ms) = (t0, [0f64; 3]);
    let prefix = captioner.encode_observed(&frames, &mut |stage| {
        stage_ms[stage as usize] = ms(stage_start);
        stage_start = Instant::now();
    })?;
    let [preprocess_ms, features_ms, prefix_ms] = stage_ms;
    let encode_ms = ms(t0);
    let t1 = Instant::now();
    let mut out = std::io::stdout().lock();
    let mut started = false;
    let caption = captioner.caption_encoded(&prefix, opts, &mut |fragment| {
        if !args.json {
            if !started && label {
                let _ = write!(out, "{}: ", names(paths));
            }
            started = true;
            let _ = write!(out, "{fragment}");
            let _ = out.flush();
        }
        true
    })?;
    if args.timings {
        let decode_ms = ms(t1);
        let generated = caption.generated_ids().len();
        eprintln!(
            "timing: {}: encode {encode_ms:.1} ms (preprocess {preprocess_ms:.1}, image encoder {features_ms:.1}, image prefix {prefix_ms:.1}), {generated} tokens in {decode_ms:.1} ms ({:.2} ms/token), total {:.1} ms",
            names(paths),
            decode_ms / generated.max(1) as f64,
            encode_ms + decode_ms
        );
    }
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"image": image_field(paths, args.video), "text": caption.text, "token_ids": caption.token_ids})
        )?;
    } else {
        if !started && label {
            write!(out, "{}: ", names(paths))?;
        }
        writeln!(out)?;
    }
    Ok(())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}
