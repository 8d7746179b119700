//! Decoding strategies with transformers' semantics: greedy, beam search (`num_beams`,
//! `length_penalty`, EOS handling and the early-stop heuristic of `GenerationMixin._beam_search`
//! with `early_stopping=False`), and seeded sampling (temperature, top-k, top-p).
//!
//! Generation works on an image's prefix (its keys and values in every decoder layer, computed
//! once), so a token costs one decoder position per beam. Callers see each token as soon as it
//! is decided and may stop generation between tokens.

use candle_core::{DType, Tensor};

use crate::model::{Git, ImagePrefix, TextCache};
use crate::sampling::Sampler;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Decoding {
    Greedy,
    /// `length_penalty` divides a finished beam's log-probability by `length ** length_penalty`.
    Beam {
        num_beams: usize,
        length_penalty: f64,
    },
    Sample {
        temperature: f64,
        top_k: Option<usize>,
        top_p: Option<f64>,
        seed: u64,
    },
}

impl Decoding {
    /// The GIT paper's decoding: 4 beams, length penalty 0.6.
    pub fn paper() -> Self {
        Decoding::Beam {
            num_beams: 4,
            length_penalty: 0.6,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub decoding: Decoding,
    pub bos_token_id: u32,
    pub eos_token_ids: Vec<u32>,
}

/// What one step of generation produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A token was appended to the (only) sequence: greedy or sampling.
    Token(u32),
    /// Beam search advanced its beams by one token; nothing is final yet.
    Pending,
    /// Beam search settled on this whole sequence ([CLS], prompt, generated ids).
    Final(Vec<u32>),
}

/// Generation as a state machine: each `step` decides one token (beam search: advances all beams
/// by one), so a caller can report progress, yield to an event loop, or stop between tokens.
pub struct Generator {
    opts: GenerateOptions,
    state: State,
    finished: Option<Vec<u32>>,
}

enum State {
    Single {
        seq: Vec<u32>,
        feed: Vec<u32>,
        cache: TextCache,
        sampler: Option<Box<Sampler>>,
        max_length: usize,
    },
    Beam(Box<BeamSearch>),
}

impl Generator {
    /// Prepares to generate after `prompt` (without [CLS]).
    pub fn new(model: &Git, prompt: &[u32], opts: &GenerateOptions) -> Result<Self> {
        let mut input: Vec<u32> = Vec::with_capacity(prompt.len() + 1 + opts.max_new_tokens);
        input.push(opts.bos_token_id);
        input.extend_from_slice(prompt);
        if input.len() + opts.max_new_tokens > model.max_positions() {
            return Err(Error::invalid(format!(
                "prompt ({} tokens) plus max_new_tokens ({}) exceeds the model's {} text positions",
                input.len(),
                opts.max_new_tokens,
                model.max_positions()
            )));
        }
        let max_length = input.len() + opts.max_new_tokens;
        let single = |sampler| State::Single {
            seq: input.clone(),
            feed: input.clone(),
            cache: TextCache::new(),
            sampler,
            max_length,
        };
        let state = match &opts.decoding {
            Decoding::Greedy => single(None),
            Decoding::Beam { num_beams: 0, .. } => {
                return Err(Error::invalid("num_beams must be at least 1"))
            }
            Decoding::Beam { num_beams: 1, .. } => single(None),
            Decoding::Beam {
                num_beams,
                length_penalty,
            } => State::Beam(Box::new(BeamSearch::new(
                input.clone(),
                opts,
                *num_beams,
                *length_penalty,
            ))),
            Decoding::Sample {
                temperature,
                top_k,
                top_p,
                seed,
            } => {
                let valid = temperature.is_finite() && *temperature > 0.0;
                if !valid {
                    return Err(Error::invalid("temperature must be a positive number"));
                }
                if let Some(p) = top_p {
                    let valid = *p > 0.0 && *p <= 1.0;
                    if !valid {
                        return Err(Error::invalid("top_p must be in (0, 1]"));
                    }
                }
                if *top_k == Some(0) {
                    return Err(Error::invalid("top_k must be at least 1"));
                }
                single(Some(Box::new(Sampler::new(
                    *seed,
                    *temperature,
                    *top_k,
                    *top_p,
                ))))
            }
        };
        let finished = (opts.max_new_tokens == 0).then(|| input.clone());
        Ok(Self {
            opts: opts.clone(),
            state,
            finished,
        })
    }

    pub fn is_done(&self) -> bool {
        self.finished.is_some()
    }

    /// The whole sequence once done: [CLS], prompt, generated ids (with EOS when one came).
    pub fn output(&self) -> Option<&[u32]> {
        self.finished.as_deref()
    }

    /// Advances by one token; `None` once done.
    pub fn step(&mut self, model: &Git, prefix: &ImagePrefix) -> Result<Option<Step>> {
        if self.finished.is_some() {
            return Ok(None);
        }
        match &mut self.state {
            State::Single {
                seq,
                feed,
                cache,
                sampler,
                max_length,
            } => {
                let logits = model.next_logits(&ids_tensor(model, &[feed])?, prefix, cache)?;
                let logits = logits.squeeze(0)?.to_dtype(DType::F32)?;
                let next = match sampler.as_mut() {
                    Some(s) => s.sample(&logits)?,
                    None => argmax(&logits.to_vec1::<f32>()?),
                };
                seq.push(next);
                *feed = vec![next];
                if self.opts.eos_token_ids.contains(&next) || seq.len() >= *max_length {
                    self.finished = Some(seq.clone());
                }
                Ok(Some(Step::Token(next)))
            }
            State::Beam(search) => {
                let done = search.step(model, prefix)?;
                match done {
                    Some(out) => {
                        self.finished = Some(out.clone());
                        Ok(Some(Step::Final(out)))
                    }
                    None => Ok(Some(Step::Pending)),
                }
            }
        }
    }
}

fn ids_tensor(model: &Git, rows: &[&[u32]]) -> Result<Tensor> {
    let width = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Ok(Tensor::from_vec(flat, (rows.len(), width), model.device())?)
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
struct BeamSearch {
    num_beams: usize,
    beams_to_keep: usize,
    length_penalty: f64,
    prompt_len: usize,
    max_length: usize,
    eos: Vec<u32>,
    running: Vec<Vec<u32>>,
    running_scores: Vec<f32>,
    finished: Vec<Vec<u32>>,
    finished_scores: Vec<f32>,
    finished_flags: Vec<bool>,
    improvable: bool,
    cache: TextCache,
    /// Log-probabilities of the next token for each running beam; `None` before the prefill.
    rows: Option<Vec<Vec<f32>>>,
}

impl BeamSearch {
    fn new(input: Vec<u32>, opts: &GenerateOptions, num_beams: usize, length_penalty: f64) -> Self {
        let prompt_len = input.len();
        Self {
            num_beams,
            beams_to_keep: 2.max(1 + opts.eos_token_ids.len()) * num_beams,
            length_penalty,
            prompt_len,
            max_length: prompt_len + opts.max_new_tokens,
            eos: opts.eos_token_ids.clone(),
            running: vec![input.clone(); num_beams],
            running_scores: (0..num_beams)
                .map(|i| if i == 0 { 0.0 } else { NEG })
                .collect(),
            finished: vec![input; num_beams],
            finished_scores: vec![NEG; num_beams],
            finished_flags: vec![false; num_beams],
            improvable: true,
            cache: TextCache::new(),
            rows: None,
        }
    }

    fn penalty(&self, len: usize) -> f32 {
        (len as f64).powf(self.length_penalty) as f32
    }

    /// Runs the model for the running beams, then selects; returns the result once finished.
    fn step(&mut self, model: &Git, prefix: &ImagePrefix) -> Result<Option<Vec<u32>>> {
        let device = model.device().clone();
        let nb = self.num_beams;
        let rows = match self.rows.take() {
            None => {
                // Prefill once (all beams are identical), then give every beam its own cache rows.
                let input = self.running[0].clone();
                let logits =
                    model.next_logits(&ids_tensor(model, &[&input])?, prefix, &mut self.cache)?;
                self.cache.select_rows(&vec![0u32; nb], &device)?;
                let first =
                    log_softmax(&logits.to_dtype(DType::F32)?.squeeze(0)?.to_vec1::<f32>()?);
                vec![first; nb]
            }
            Some(rows) => rows,
        };
        let cur_len = self.running[0].len();
        let vocab = rows[0].len();
        let mut flat = Vec::with_capacity(nb * vocab);
        for (b, row) in rows.iter().enumerate() {
            flat.extend(row.iter().map(|&lp| lp + self.running_scores[b]));
        }
        let cand = top_k(&flat, self.beams_to_keep);
        let cand_scores: Vec<f32> = cand.iter().map(|&i| flat[i]).collect();
        let cand_seqs: Vec<Vec<u32>> = cand
            .iter()
            .map(|&i| {
                let mut s = self.running[i / vocab].clone();
                s.push((i % vocab) as u32);
                s
            })
            .collect();
        let hits: Vec<bool> = cand_seqs
            .iter()
            .map(|s| s.len() >= self.max_length || self.eos.contains(s.last().expect("non-empty")))
            .collect();

        // Running beams for the next step: the best candidates that did not stop.
        let running_pool: Vec<f32> = cand_scores
            .iter()
            .zip(&hits)
            .map(|(&s, &h)| if h { s + NEG } else { s })
            .collect();
        let keep = top_k(&running_pool, nb);
        let sources: Vec<u32> = keep.iter().map(|&k| (cand[k] / vocab) as u32).collect();

        // Finished beams: only candidates among the top `num_beams` that just stopped may enter.
        let denom = self.penalty(cur_len + 1 - self.prompt_len);
        let mut merged_scores = self.finished_scores.clone();
        let mut merged_seqs = std::mem::take(&mut self.finished);
        let mut merged_flags = self.finished_flags.clone();
        for k in 0..cand.len() {
            let just_finished = hits[k] && k < nb;
            let mut s = cand_scores[k] / denom;
            if !self.improvable {
                s += NEG;
            }
            if !just_finished {
                s += NEG;
            }
            merged_scores.push(s);
            merged_seqs.push(cand_seqs[k].clone());
            merged_flags.push(just_finished);
        }
        let best = top_k(&merged_scores, nb);
        self.finished = best.iter().map(|&i| merged_seqs[i].clone()).collect();
        self.finished_scores = best.iter().map(|&i| merged_scores[i]).collect();
        self.finished_flags = best.iter().map(|&i| merged_flags[i]).collect();
        self.running = keep.iter().map(|&k| cand_seqs[k].clone()).collect();
        self.running_scores = keep.iter().map(|&k| running_pool[k]).collect();

        let best_possible = self.running_scores[0] / self.penalty(cur_len + 1 - self.prompt_len);
        let worst_finished = self
            .finished_scores
            .iter()
            .copied()
            .fold(f32::INFINITY, f32::min);
        self.improvable = self.improvable
            && self
                .finished_flags
                .iter()
                .any(|&done| best_possible > if done { worst_finished } else { NEG });
        if !self.improvable || hits.iter().all(|&h| h) {
            return Ok(Some(self.finished[0].clone()));
        }

        self.cache.select_rows(&sources, &device)?;
        let last: Vec<u32> = self
            .running
            .iter()
            .map(|s| *s.last().expect("non-empty"))
            .collect();
        let ids = Tensor::from_vec(last, (nb, 1), &device)?;
        let logits = model
            .next_logits(&ids, prefix, &mut self.cache)?
            .to_dtype(DType::F32)?;
        self.rows = Some(
            logits
                .to_vec2::<f32>()?
                .iter()
                .map(|r| log_softmax(r))
                .collect(),
        );
        Ok(None)
    }
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
