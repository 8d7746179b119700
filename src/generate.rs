//! Decoding strategies with transformers' semantics: greedy, beam search (`num_beams`,
//! `length_penalty`, EOS handling and the early-stop heuristic of `GenerationMixin._beam_search`
//! with `early_stopping=False`), and seeded sampling (temperature, top-k, top-p).
//!
//! Generation works on an image's prefix (its keys and values in every decoder layer, computed
//! once), so a token costs one decoder position per beam. Callers see each token as soon as it
//! is decided and may stop generation between tokens.

use candle_core::{DType, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};

use crate::model::{Git, ImagePrefix, TextCache};
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Decoding {
    Greedy,
    /// `length_penalty` divides a finished beam's log-probability by `length ** length_penalty`.
    Beam { num_beams: usize, length_penalty: f64 },
    Sample { temperature: f64, top_k: Option<usize>, top_p: Option<f64>, seed: u64 },
}

impl Decoding {
    /// The GIT paper's decoding: 4 beams, length penalty 0.6.
    pub fn paper() -> Self {
        Decoding::Beam { num_beams: 4, length_penalty: 0.6 }
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub decoding: Decoding,
    pub bos_token_id: u32,
    pub eos_token_ids: Vec<u32>,
}

/// What a caller hears while generating.
pub enum Step<'a> {
    /// A token was appended to the (only) sequence: greedy or sampling.
    Token(u32),
    /// Beam search settled on this sequence of generated ids (sent once, at the end).
    Final(&'a [u32]),
}

/// Returns `false` from the callback to cancel.
pub type OnStep<'a> = dyn FnMut(Step<'_>) -> bool + 'a;

/// Generates after `prompt` (without [CLS]); returns the whole sequence as transformers'
/// `generate` does: [CLS], the prompt, the generated ids (with the EOS id when one was produced).
pub fn generate(
    model: &Git,
    prefix: &ImagePrefix,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_step: &mut OnStep<'_>,
) -> Result<Vec<u32>> {
    let mut input: Vec<u32> = Vec::with_capacity(prompt.len() + 1 + opts.max_new_tokens);
    input.push(opts.bos_token_id);
    input.extend_from_slice(prompt);
    let total = input.len() + opts.max_new_tokens;
    if total > model.max_positions() {
        return Err(Error::invalid(format!(
            "prompt ({} tokens) plus max_new_tokens ({}) exceeds the model's {} text positions",
            input.len(),
            opts.max_new_tokens,
            model.max_positions()
        )));
    }
    if opts.max_new_tokens == 0 {
        return Ok(input);
    }
    match &opts.decoding {
        Decoding::Greedy => single(model, prefix, input, opts, None, on_step),
        Decoding::Sample { temperature, top_k, top_p, seed } => {
            if !(*temperature > 0.0) {
                return Err(Error::invalid("temperature must be greater than 0"));
            }
            let sampling = match (top_k, top_p) {
                (None, None) => Sampling::All { temperature: *temperature },
                (Some(k), None) => Sampling::TopK { k: *k, temperature: *temperature },
                (None, Some(p)) => Sampling::TopP { p: *p, temperature: *temperature },
                (Some(k), Some(p)) => Sampling::TopKThenTopP { k: *k, p: *p, temperature: *temperature },
            };
            let processor = LogitsProcessor::from_sampling(*seed, sampling);
            single(model, prefix, input, opts, Some(processor), on_step)
        }
        Decoding::Beam { num_beams, length_penalty } => {
            if *num_beams == 0 {
                return Err(Error::invalid("num_beams must be at least 1"));
            }
            if *num_beams == 1 {
                return single(model, prefix, input, opts, None, on_step);
            }
            let out = beam_search(model, prefix, input, opts, *num_beams, *length_penalty)?;
            if !on_step(Step::Final(&out)) {
                return Err(Error::Cancelled);
            }
            Ok(out)
        }
    }
}

fn ids_tensor(model: &Git, rows: &[&[u32]]) -> Result<Tensor> {
    let width = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Ok(Tensor::from_vec(flat, (rows.len(), width), model.device())?)
}

fn single(
    model: &Git,
    prefix: &ImagePrefix,
    mut seq: Vec<u32>,
    opts: &GenerateOptions,
    mut sampler: Option<LogitsProcessor>,
    on_step: &mut OnStep<'_>,
) -> Result<Vec<u32>> {
    let mut cache = TextCache::new();
    let mut feed = seq.clone();
    for _ in 0..opts.max_new_tokens {
        let logits = model.next_logits(&ids_tensor(model, &[&feed])?, prefix, &mut cache)?;
        let logits = logits.squeeze(0)?.to_dtype(DType::F32)?;
        let next = match sampler.as_mut() {
            Some(s) => s.sample(&logits)?,
            None => argmax(&logits.to_vec1::<f32>()?),
        };
        seq.push(next);
        if !on_step(Step::Token(next)) {
            return Err(Error::Cancelled);
        }
        if opts.eos_token_ids.contains(&next) {
            break;
        }
        feed = vec![next];
    }
    Ok(seq)
}

/// First index of the maximum, as torch.argmax.
fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    let lse = max + sum.ln();
    row.iter().map(|&x| x - lse).collect()
}

/// Indices of the `k` largest values, largest first; ties keep the lower index first.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let k = k.min(values.len());
    let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

const NEG: f32 = -1.0e9;

/// A port of transformers' vectorised `_beam_search` for one input, `early_stopping=False`.
fn beam_search(
    model: &Git,
    prefix: &ImagePrefix,
    input: Vec<u32>,
    opts: &GenerateOptions,
    num_beams: usize,
    length_penalty: f64,
) -> Result<Vec<u32>> {
    let prompt_len = input.len();
    let max_length = prompt_len + opts.max_new_tokens;
    let beams_to_keep = 2.max(1 + opts.eos_token_ids.len()) * num_beams;
    let penalty = |len: usize| (len as f64).powf(length_penalty) as f32;

    let mut running: Vec<Vec<u32>> = vec![input.clone(); num_beams];
    let mut running_scores: Vec<f32> = (0..num_beams).map(|i| if i == 0 { 0.0 } else { NEG }).collect();
    let mut finished: Vec<Vec<u32>> = vec![input.clone(); num_beams];
    let mut finished_scores = vec![NEG; num_beams];
    let mut finished_flags = vec![false; num_beams];
    let mut improvable = true;
    let mut cache = TextCache::new();
    let device = model.device().clone();

    // Prefill once (all beams are identical), then give every beam its own copy of the cache.
    let logits = model.next_logits(&ids_tensor(model, &[&input])?, prefix, &mut cache)?;
    cache.select_rows(&vec![0u32; num_beams], &device)?;
    let first = logits.to_dtype(DType::F32)?.squeeze(0)?.to_vec1::<f32>()?;
    let mut rows: Vec<Vec<f32>> = vec![log_softmax(&first); num_beams];
    let mut cur_len = prompt_len;

    loop {
        let vocab = rows[0].len();
        let mut flat = Vec::with_capacity(num_beams * vocab);
        for (b, row) in rows.iter().enumerate() {
            flat.extend(row.iter().map(|&lp| lp + running_scores[b]));
        }
        let cand = top_k(&flat, beams_to_keep);
        let cand_scores: Vec<f32> = cand.iter().map(|&i| flat[i]).collect();
        let cand_seqs: Vec<Vec<u32>> = cand
            .iter()
            .map(|&i| {
                let mut s = running[i / vocab].clone();
                s.push((i % vocab) as u32);
                s
            })
            .collect();
        let cand_source: Vec<u32> = cand.iter().map(|&i| (i / vocab) as u32).collect();
        let hits: Vec<bool> = cand_seqs
            .iter()
            .map(|s| s.len() >= max_length || opts.eos_token_ids.contains(s.last().expect("non-empty")))
            .collect();

        // Running beams for the next step: the best candidates that did not stop.
        let running_pool: Vec<f32> =
            cand_scores.iter().zip(&hits).map(|(&s, &h)| if h { s + NEG } else { s }).collect();
        let keep = top_k(&running_pool, num_beams);
        let next_running: Vec<Vec<u32>> = keep.iter().map(|&k| cand_seqs[k].clone()).collect();
        let next_scores: Vec<f32> = keep.iter().map(|&k| running_pool[k]).collect();
        let sources: Vec<u32> = keep.iter().map(|&k| cand_source[k]).collect();

        // Finished beams: only candidates among the top `num_beams` that just stopped may enter.
        let denom = penalty(cur_len + 1 - prompt_len);
        let mut merged_scores = finished_scores.clone();
        let mut merged_seqs = finished.clone();
        let mut merged_flags = finished_flags.clone();
        for k in 0..beams_to_keep.min(cand.len()) {
            let just_finished = hits[k] && k < num_beams;
            let mut s = cand_scores[k] / denom;
            if !improvable {
                s += NEG;
            }
            if !just_finished {
                s += NEG;
            }
            merged_scores.push(s);
            merged_seqs.push(cand_seqs[k].clone());
            merged_flags.push(just_finished);
        }
        let best = top_k(&merged_scores, num_beams);
        finished = best.iter().map(|&i| merged_seqs[i].clone()).collect();
        finished_scores = best.iter().map(|&i| merged_scores[i]).collect();
        finished_flags = best.iter().map(|&i| merged_flags[i]).collect();

        running = next_running;
        running_scores = next_scores;
        cur_len += 1;

        let best_possible = running_scores[0] / penalty(cur_len - prompt_len);
        let worst_finished = finished_scores.iter().copied().fold(f32::INFINITY, f32::min);
        improvable = improvable
            && finished_flags.iter().any(|&done| best_possible > if done { worst_finished } else { NEG });
        let all_hit = hits.iter().all(|&h| h);
        if !improvable || all_hit {
            break;
        }

        cache.select_rows(&sources, &device)?;
        let last: Vec<u32> = running.iter().map(|s| *s.last().expect("non-empty")).collect();
        let ids = Tensor::from_vec(last, (num_beams, 1), &device)?;
        let logits = model.next_logits(&ids, prefix, &mut cache)?.to_dtype(DType::F32)?;
        rows = logits.to_vec2::<f32>()?.iter().map(|r| log_softmax(r)).collect();
    }
    Ok(finished.swap_remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_value_then_index() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 2.0], 3), vec![1, 2, 3]);
        assert_eq!(top_k(&[5.0], 3), vec![0]);
    }

    #[test]
    fn log_softmax_normalises() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f32 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(lp[2] > lp[1] && lp[1] > lp[0]);
    }
}
