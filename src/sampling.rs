//! Seeded sampling of the next token: temperature, then top-k, then top-p (nucleus).
//!
//! The semantics and the random stream are those of candle-transformers' `LogitsProcessor`
//! (0.11), which gitcap used before: the same seed gives the same caption as it did. gitcap keeps
//! its own copy because that function was the only reason to compile all of candle-transformers
//! (some 300 model files) in every build.

use candle_core::{DType, Tensor};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::{Error, Result};

pub struct Sampler {
    rng: StdRng,
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
}

impl Sampler {
    /// `temperature` must be positive and `top_p`, when given, in (0, 1]: the caller checks both
    /// with messages in its own terms.
    pub fn new(seed: u64, temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            temperature,
            top_k,
            top_p,
        }
    }

    /// Draws a token id from `logits` (one row over the vocabulary).
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        let logits = (logits.to_dtype(DType::F32)? / self.temperature)?;
        let mut probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec1::<f32>()?;
        // A top-p of 1 keeps every token: plain sampling, as in candle's `TopP`.
        let top_p = self.top_p.filter(|&p| p < 1.0).map(|p| p as f32);
        // A top-k of the whole vocabulary or more keeps every token.
        let top_k = self.top_k.filter(|&k| k < probs.len());
        match (top_k, top_p) {
            (None, None) => self.multinomial(&probs),
            (None, Some(p)) => self.nucleus(&mut probs, p),
            (Some(k), p) => {
                let mut order: Vec<usize> = (0..probs.len()).collect();
                let (best, _, _) =
                    order.select_nth_unstable_by(k, |&i, &j| probs[j].total_cmp(&probs[i]));
                let mut kept: Vec<f32> = best.iter().map(|&i| probs[i]).collect();
                let kept_mass: f32 = kept.iter().sum();
                let index = match p {
                    Some(p) if p < kept_mass => self.nucleus(&mut kept, p)?,
                    _ => self.multinomial(&kept)?,
                };
                Ok(best[index as usize] as u32)
            }
        }
    }

    /// Samples from the smallest set of most likely tokens whose mass reaches `top_p`.
    fn nucleus(&mut self, probs: &mut [f32], top_p: f32) -> Result<u32> {
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&i, &j| probs[j].total_cmp(&probs[i]));
        let mut mass = 0.0;
        for &i in &order {
            if mass >= top_p {
                probs[i] = 0.0;
            } else {
                mass += probs[i];
            }
        }
        self.multinomial(probs)
    }

    fn multinomial(&mut self, probs: &[f32]) -> Result<u32> {
        let index = WeightedIndex::new(probs)
            .map_err(|e| Error::model(format!("cannot sample from these logits: {e}")))?;
        Ok(index.sample(&mut self.rng) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn logits(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    #[test]
    fn top_k_of_one_always_takes_the_most_likely_token() {
        let row = logits(&[0.1, 3.0, 2.9, -1.0, 0.5]);
        for seed in 0..50 {
            let mut s = Sampler::new(seed, 5.0, Some(1), None);
            assert_eq!(s.sample(&row).unwrap(), 1);
        }
    }

    #[test]
    fn top_k_and_top_p_never_draw_outside_their_sets() {
        // Probabilities at temperature 1: token 3 ~0.64, token 0 ~0.24, token 4 ~0.09, rest tiny.
        let row = logits(&[2.0, -3.0, -4.0, 3.0, 1.0]);
        let mut k2 = Sampler::new(7, 1.0, Some(2), None);
        let mut p70 = Sampler::new(7, 1.0, None, Some(0.7));
        let mut k3p70 = Sampler::new(7, 1.0, Some(3), Some(0.7));
        let mut drawn_k2 = std::collections::BTreeSet::new();
        let mut drawn_p = std::collections::BTreeSet::new();
        for _ in 0..400 {
            drawn_k2.insert(k2.sample(&row).unwrap());
            drawn_p.insert(p70.sample(&row).unwrap());
            drawn_p.insert(k3p70.sample(&row).unwrap());
        }
        assert_eq!(drawn_k2.into_iter().collect::<Vec<_>>(), [0, 3]);
        // 0.64 < 0.7, so the nucleus is {3, 0}; token 4 (0.09) is cut.
        assert_eq!(drawn_p.into_iter().collect::<Vec<_>>(), [0, 3]);
    }

    #[test]
    fn a_seed_repeats_and_frequencies_follow_the_probabilities() {
        let row = logits(&[0.0, (3.0f32).ln()]); // probabilities 1/4, 3/4
        let draw = |seed| {
            let mut s = Sampler::new(seed, 1.0, None, None);
            (0..4000)
                .map(|_| s.sample(&row).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(3);
        assert_eq!(a, draw(3));
        assert_ne!(a, draw(4));
        let ones = a.iter().filter(|&&t| t == 1).count() as f64 / a.len() as f64;
        assert!(
            (ones - 0.75).abs() < 0.03,
            "token 1 drawn {ones} of the time"
        );
    }
}
