//! The encoder's exp-heavy elementwise work, quick_gelu and softmax, in our own four-lane loops:
//! candle computes each exponential with scalar libm code, on one thread. In wasm these two took
//! about 25 ms of a ViT-L layer's 210 ms in headless Chromium; natively quick_gelu alone took
//! 9–12 ms of a layer's ~80 (2 threads). With `simd::exp` (wasm SIMD in the browser, four-element
//! arrays the compiler vectorises natively, split over the rayon pool there) they take a fraction
//! of that.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::policy::Policy;
use super::simd::{self, V};
#[cfg(target_arch = "x86_64")]
use super::wide;

/// Whether these loops can take `xs`: contiguous f32 values on the CPU.
fn takes(xs: &Tensor) -> bool {
    xs.dtype() == DType::F32 && xs.device().is_cpu() && xs.is_contiguous()
}

/// x · sigmoid(1.702 x), CLIP's activation: in these loops where `policy` has them on.
pub fn quick_gelu(policy: &Policy, xs: &Tensor) -> candle_core::Result<Tensor> {
    if policy.own_quick_gelu() && takes(xs) {
        return xs.apply_op1_no_bwd(&QuickGelu);
    }
    xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?
}

/// Softmax over the last dimension: in these loops where `policy` has them on (by default in
/// wasm only: natively candle's is already split over threads and no slower, and keeps the logits
/// nearer transformers', its exp being libm's).
pub fn softmax_last(policy: &Policy, xs: &Tensor) -> candle_core::Result<Tensor> {
    if policy.own_softmax() {
        return softmax_last_own(xs);
    }
    candle_nn::ops::softmax_last_dim(xs)
}

/// Softmax over the last dimension in these loops whatever `policy` says: for the attention of
/// the image encoder's many rows natively, where candle's scalar libm exp took 4% of git-large's
/// encoder (one thread, Intel Xeon).
pub fn softmax_last_own(xs: &Tensor) -> candle_core::Result<Tensor> {
    if takes(xs) {
        return xs.apply_op1_no_bwd(&SoftmaxLast);
    }
    candle_nn::ops::softmax_last_dim(xs)
}

/// The contiguous f32 data of a tensor the wrappers above have vetted.
fn data<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((start, end))) => Ok(&d[start..end]),
        _ => candle_core::bail!("expected contiguous f32 data"),
    }
}

/// `f` over `xs` in place, four lanes at a time, the tail through a zero-padded vector.
fn map_lanes(xs: &mut [f32], f: impl Fn(V) -> V) {
    let whole = xs.len() / 4 * 4;
    for i in (0..whole).step_by(4) {
        // SAFETY: i + 3 < whole ≤ xs.len().
        unsafe {
            let p = xs.as_mut_ptr().add(i);
            simd::store(p, f(simd::load(p)));
        }
    }
    if whole < xs.len() {
        let rest = &mut xs[whole..];
        let mut tail = [0f32; 4];
        tail[..rest.len()].copy_from_slice(rest);
        // SAFETY: tail holds four floats.
        let y = simd::lanes(f(unsafe { simd::load(tail.as_ptr()) }));
        let len = rest.len();
        rest.copy_from_slice(&y[..len]);
    }
}

/// `f` over `xs` in pieces for the pool natively (candle's own elementwise ops run on one
/// thread); in wasm the model's splitting already runs this per thread.
fn map_pieces(xs: &mut [f32], f: impl Fn(&mut [f32]) + Sync) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        const PIECE: usize = 16 * 1024;
        xs.par_chunks_mut(PIECE).for_each(&f);
    }
    #[cfg(target_arch = "wasm32")]
    f(xs);
}

/// quick_gelu of one value block in place: what `quick_gelu` computes, for the matrix kernel to
/// apply to the columns it has just finished.
pub fn quick_gelu_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(form) = wide::Form::best() {
        let whole = form.quick_gelu(xs);
        return map_lanes(&mut xs[whole..], quick_gelu_lanes);
    }
    map_lanes(xs, quick_gelu_lanes);
}

/// exp(x - shift) for each x of `xs` in place: sixteen values at a time natively where the CPU
/// has AVX-512 F, eight where it has AVX2, the rest four at a time; the same bits either way
/// (tested).
fn exp_shifted_in_place(xs: &mut [f32], shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if let Some(form) = wide::Form::best() {
        let whole = form.exp_shifted(xs, shift);
        let shift = simd::splat(shift);
        return map_lanes(&mut xs[whole..], |x| simd::exp(simd::sub(x, shift)));
    }
    let shift = simd::splat(shift);
    map_lanes(xs, |x| simd::exp(simd::sub(x, shift)));
}

#[inline(always)]
fn quick_gelu_lanes(x: V) -> V {
    simd::div(
        x,
        simd::add(
            simd::splat(1.0),
            simd::exp(simd::mul(x, simd::splat(-1.702))),
        ),
    )
}

struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "gitcap-quick-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let mut out = data(s, l)?.to_vec();
        map_pieces(&mut out, quick_gelu_in_place);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

struct SoftmaxLast;

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        "gitcap-softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let mut out = data(s, l)?.to_vec();
        let width = l.dims().last().copied().unwrap_or(1);
        if width == 0 {
            return Ok((CpuStorage::F32(out), l.shape().clone()));
        }
        // One thread: natively this runs only in the tests (softmax_last keeps candle's there),
        // and in wasm the model's head split already hands each thread its own rows.
        for row in out.chunks_exact_mut(width) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            exp_shifted_in_place(row, max);
            let scale = 1.0 / row.iter().sum::<f32>();
            row.iter_mut().for_each(|v| *v *= scale);
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each wide quick_gelu (AVX-512, AVX2) gives the four-lane loops' bits for every kind of
    /// value: ordinary, large (the exp clamps), tiny and subnormal, ±0, ±inf; NaN stays NaN.
    #[test]
    fn wide_quick_gelu_has_the_four_lane_bits() {
        #[cfg(target_arch = "x86_64")]
        for form in wide::Form::runnable() {
            let mut xs: Vec<f32> = (-20_000..20_000).map(|i| i as f32 * 0.003_7).collect();
            xs.extend([
                0.0,
                -0.0,
                1e-40,
                -1e-40,
                f32::MIN_POSITIVE,
                60.0,
                -60.0,
                200.0,
                -200.0,
                f32::MAX,
                f32::MIN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
            ]);
            // A length that leaves a tail for the four-lane loop.
            xs.extend([0.25, -0.5, 3.0, 7.0]);
            let mut wide = xs.clone();
            let whole = form.quick_gelu(&mut wide);
            assert!(
                whole > xs.len() - 16,
                "{form:?} did {whole} of {}",
                xs.len()
            );
            map_lanes(&mut wide[whole..], quick_gelu_lanes);
            let mut four = xs.clone();
            map_lanes(&mut four, quick_gelu_lanes);
            for ((x, w), f) in xs.iter().zip(&wide).zip(&four) {
                assert!(
                    w.to_bits() == f.to_bits() || (w.is_nan() && f.is_nan()),
                    "{form:?} quick_gelu({x}): {w} vs {f}"
                );
            }
        }
    }
    /// Each wide exp(x - shift) gives the four-lane loops' bits, tail included, for the values a
    /// softmax row meets: ordinary, far below the shift (underflow to 0), -inf (masked), ±0; NaN
    /// stays NaN.
    #[test]
    fn wide_softmax_exp_has_the_four_lane_bits() {
        let mut xs: Vec<f32> = (-3_000..3_000).map(|i| i as f32 * 0.037).collect();
        xs.extend([
            0.0,
            -0.0,
            -200.0,
            f32::NEG_INFINITY,
            88.0,
            1e-40,
            0.5,
            -0.25,
            3.0,
        ]);
        // NaN first: the last values fall to the four-lane tail.
        xs.insert(0, f32::NAN);
        for shift in [0.0f32, 3.5, -7.25, 111.0] {
            let s = simd::splat(shift);
            let mut four = xs.clone();
            map_lanes(&mut four, |x| simd::exp(simd::sub(x, s)));
            // The dispatcher (the widest form, or the four-lane loops alone), then each form.
            let mut wide = xs.clone();
            exp_shifted_in_place(&mut wide, shift);
            #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
            let mut each = vec![("exp_shifted_in_place".to_string(), wide)];
            #[cfg(target_arch = "x86_64")]
            for form in wide::Form::runnable() {
                let mut wide = xs.clone();
                let whole = form.exp_shifted(&mut wide, shift);
                map_lanes(&mut wide[whole..], |x| simd::exp(simd::sub(x, s)));
                each.push((format!("{form:?}"), wide));
            }
            for (what, wide) in each {
                for ((x, w), f) in xs.iter().zip(&wide).zip(&four) {
                    assert!(
                        w.to_bits() == f.to_bits() || (w.is_nan() && f.is_nan()),
                        "{what} exp({x} - {shift}): {w} vs {f}"
                    );
                }
            }
        }
    }

    use crate::model::max_abs_diff as max_diff;
    use candle_core::Device;

    /// Widths that are and are not multiples of four, large and masked (-inf) inputs.
    #[test]
    fn match_candle() {
        let own = Policy::default().with_own_elementwise(true);
        let dev = Device::Cpu;
        for width in [1usize, 3, 4, 7, 257] {
            let xs = (Tensor::randn(0f32, 4.0, (5, width), &dev).unwrap() * 3.0).unwrap();
            let want = candle_nn::ops::softmax_last_dim(&xs).unwrap();
            assert!(
                max_diff(&softmax_last(&own, &xs).unwrap(), &want) < 1e-6,
                "softmax {width}"
            );
            let want = (&xs * candle_nn::ops::sigmoid(&(&xs * 1.702).unwrap()).unwrap()).unwrap();
            assert!(
                max_diff(&quick_gelu(&own, &xs).unwrap(), &want) < 1e-5,
                "gelu {width}"
            );
        }
        let masked = Tensor::new(
            &[[0.5f32, f32::NEG_INFINITY, 2.0, f32::NEG_INFINITY, 1.0]],
            &dev,
        )
        .unwrap();
        let got = softmax_last(&own, &masked).unwrap();
        let want = candle_nn::ops::softmax_last_dim(&masked).unwrap();
        assert!(max_diff(&got, &want) < 1e-6);
    }
}
