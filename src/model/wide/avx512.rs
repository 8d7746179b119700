//! The AVX-512 F form of the wide kernel (`mod.rs`): a 12 × 32 tile of the output in 24 of the 32
//! zmm registers, 16 × 16 register transposes for packing, a 16-lane matrix-vector loop.

use std::arch::x86_64::*;

use super::{Prefetch, LINE, PREFETCH_EVERY};

/// Output rows per microkernel tile (broadcast operands).
pub const MR: usize = 12;
/// Output columns per microkernel tile: two 16-lane vectors.
pub const NR: usize = 32;
/// Whether this CPU runs the kernel (AVX-512 F).
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

// The lane operations of `lane_loops!` (mod.rs), which writes this form's `add_dots`,
// `quick_gelu` and `exp_shifted`.

type V = __m512;
const LANES: usize = 16;
type Mask = __mmask16;

/// # Safety
/// LANES floats at `p`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load(p: *const f32) -> V {
    // SAFETY: the caller's contract.
    unsafe { _mm512_loadu_ps(p) }
}
/// # Safety
/// The masked lanes' floats at `p`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_masked(p: *const f32, mask: Mask) -> V {
    // SAFETY: the caller's contract.
    unsafe { _mm512_maskz_loadu_ps(mask, p) }
}
/// # Safety
/// LANES floats at `p`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store(p: *mut f32, v: V) {
    // SAFETY: the caller's contract.
    unsafe { _mm512_storeu_ps(p, v) }
}
#[target_feature(enable = "avx512f")]
#[inline]
fn zero() -> V {
    _mm512_setzero_ps()
}
#[target_feature(enable = "avx512f")]
#[inline]
fn splat(v: f32) -> V {
    _mm512_set1_ps(v)
}
#[target_feature(enable = "avx512f")]
#[inline]
fn add(a: V, b: V) -> V {
    _mm512_add_ps(a, b)
}
#[target_feature(enable = "avx512f")]
#[inline]
fn sub(a: V, b: V) -> V {
    _mm512_sub_ps(a, b)
}
#[target_feature(enable = "avx512f")]
#[inline]
fn mul(a: V, b: V) -> V {
    _mm512_mul_ps(a, b)
}
#[target_feature(enable = "avx512f")]
#[inline]
fn div(a: V, b: V) -> V {
    _mm512_div_ps(a, b)
}
#[target_feature(enable = "avx512f")]
#[inline]
fn min(a: V, b: V) -> V {
    _mm512_min_ps(a, b)
}
#[target_feature(enable = "avx512f")]
#[inline]
fn max(a: V, b: V) -> V {
    _mm512_max_ps(a, b)
}
/// # Safety
/// The masked lanes' floats at `p` are writable.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_masked(p: *mut f32, mask: Mask, v: V) {
    // SAFETY: the caller's contract.
    unsafe { _mm512_mask_storeu_ps(p, mask, v) }
}
/// a · b + c, fused.
#[target_feature(enable = "avx512f")]
#[inline]
fn fmadd(a: V, b: V, c: V) -> V {
    _mm512_fmadd_ps(a, b, c)
}
/// The sum of v's lanes.
#[target_feature(enable = "avx512f")]
#[inline]
fn sum(v: V) -> f32 {
    _mm512_reduce_add_ps(v)
}
/// simd::pow2: ((n as i32 + 127) as u32) << 23, n integral and within ±128.
#[target_feature(enable = "avx512f")]
#[inline]
fn pow2(n: V) -> V {
    let biased = _mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127));
    _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased))
}

lane_loops!("avx512f");

/// The 16 × 16 block whose rows are `r` transposed: element j of `r[i]` becomes element i of
/// the result's vector j.
#[target_feature(enable = "avx512f")]
fn transpose(r: [V; LANES]) -> [V; LANES] {
    // Pairs of rows interleaved, then pairs of pairs: u[4g + c], 128-bit lane L, holds rows
    // 4g..4g + 4 of column 4L + c.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, c) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + c / 2], t[4 * g + 2 + c / 2]);
        if c % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xEE>(a, b)
        }
    });
    // Then the four groups' lanes gathered: column 4L + c from lane L of u[c], u[4 + c], ...
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let p = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
        let q = _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]);
        let r = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
        let s = _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(p, r);
        out[4 + c] = _mm512_shuffle_f32x4::<0xDD>(p, r);
        out[8 + c] = _mm512_shuffle_f32x4::<0x88>(q, s);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(q, s);
    }
    out
}

/// c[0..rows, 0..cols] (row stride ldc) += a_tile (kc × MR) · panel (kc × NR), fetching up to
/// kc / PREFETCH_EVERY of `prefetch`'s lines into L2 on the way (a hint: it changes no value).
///
/// # Safety
/// AVX-512 F; `a` holds kc · MR floats and `panel` kc · NR; c's rows and columns as given are
/// writable; `prefetch.from` is followed by `prefetch.lines` lines of one allocation.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile(
    a: *const f32,
    panel: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    prefetch: Prefetch,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..kc {
        // SAFETY: p < kc, inside both packed blocks; the prefetched line is one of prefetch's.
        unsafe {
            if p % PREFETCH_EVERY == 0 && p / PREFETCH_EVERY < prefetch.lines {
                let line = prefetch.from.add(p / PREFETCH_EVERY * LINE);
                _mm_prefetch::<_MM_HINT_T1>(line.cast());
            }
            let w0 = _mm512_loadu_ps(panel.add(p * NR));
            let w1 = _mm512_loadu_ps(panel.add(p * NR + 16));
            let xs = a.add(p * MR);
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*xs.add(r));
                acc[0] = _mm512_fmadd_ps(x, w0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, w1, acc[1]);
            }
        }
    }
    let masks: [__mmask16; 2] = [lanes_below(cols), lanes_below(cols.saturating_sub(16))];
    for (r, acc) in acc.iter().enumerate().take(rows) {
        for (v, &sum) in acc.iter().enumerate() {
            // SAFETY: the masked lanes are columns below `cols` of row r.
            unsafe {
                let out = c.add(r * ldc + v * 16);
                let old = _mm512_maskz_loadu_ps(masks[v], out);
                _mm512_mask_storeu_ps(out, masks[v], _mm512_add_ps(old, sum));
            }
        }
    }
}

/// A mask of the first min(n, 16) lanes.
fn lanes_below(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}
