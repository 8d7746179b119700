//! The AVX2 + FMA form of the wide kernel (`mod.rs`), for CPUs without AVX-512 (AMD before Zen 4,
//! Intel client cores): a 6 × 16 tile of the output in 12 of the 16 ymm registers (the other
//! four hold two weight vectors and a broadcast x value), 8 × 8 register transposes for packing,
//! an 8-lane matrix-vector loop.

use std::arch::x86_64::*;

use super::{Prefetch, LINE, PREFETCH_EVERY};

/// Output rows per microkernel tile (broadcast operands).
pub const MR: usize = 6;
/// Output columns per microkernel tile: two 8-lane vectors.
pub const NR: usize = 16;

/// Whether this CPU runs the form (AVX2 and FMA).
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

// The lane operations of `lane_loops!` (mod.rs), which writes this form's `add_dots`,
// `quick_gelu` and `exp_shifted`.

type V = __m256;
const LANES: usize = 8;
type Mask = __m256i;

/// # Safety
/// LANES floats at `p`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load(p: *const f32) -> V {
    // SAFETY: the caller's contract.
    unsafe { _mm256_loadu_ps(p) }
}
/// # Safety
/// The masked lanes' floats at `p`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load_masked(p: *const f32, mask: Mask) -> V {
    // SAFETY: the caller's contract.
    unsafe { _mm256_maskload_ps(p, mask) }
}
/// # Safety
/// LANES floats at `p`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn store(p: *mut f32, v: V) {
    // SAFETY: the caller's contract.
    unsafe { _mm256_storeu_ps(p, v) }
}
#[target_feature(enable = "avx2,fma")]
#[inline]
fn zero() -> V {
    _mm256_setzero_ps()
}
#[target_feature(enable = "avx2,fma")]
#[inline]
fn splat(v: f32) -> V {
    _mm256_set1_ps(v)
}
#[target_feature(enable = "avx2,fma")]
#[inline]
fn add(a: V, b: V) -> V {
    _mm256_add_ps(a, b)
}
#[target_feature(enable = "avx2,fma")]
#[inline]
fn sub(a: V, b: V) -> V {
    _mm256_sub_ps(a, b)
}
#[target_feature(enable = "avx2,fma")]
#[inline]
fn mul(a: V, b: V) -> V {
    _mm256_mul_ps(a, b)
}
#[target_feature(enable = "avx2,fma")]
#[inline]
fn div(a: V, b: V) -> V {
    _mm256_div_ps(a, b)
}
/// `_mm256_min_ps(a, b)` is `a < b ? a : b`, b when either is NaN: as `_mm512_min_ps`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn min(a: V, b: V) -> V {
    _mm256_min_ps(a, b)
}
#[target_feature(enable = "avx2,fma")]
#[inline]
fn max(a: V, b: V) -> V {
    _mm256_max_ps(a, b)
}
/// # Safety
/// The masked lanes' floats at `p` are writable.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn store_masked(p: *mut f32, mask: Mask, v: V) {
    // SAFETY: the caller's contract.
    unsafe { _mm256_maskstore_ps(p, mask, v) }
}
/// a · b + c, fused.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn fmadd(a: V, b: V, c: V) -> V {
    _mm256_fmadd_ps(a, b, c)
}
/// The sum of v's lanes: halves added, then quarters, then the last pair.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn sum(v: V) -> f32 {
    let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)))
}
/// simd::pow2: ((n as i32 + 127) as u32) << 23, n integral and within ±128.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn pow2(n: V) -> V {
    let biased = _mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127));
    _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased))
}

lane_loops!("avx2,fma");

/// The 8 × 8 block whose rows are `r` transposed: element j of `r[i]` becomes element i of the
/// result's vector j.
#[target_feature(enable = "avx2,fma")]
fn transpose(r: [V; LANES]) -> [V; LANES] {
    // Pairs of rows interleaved, then pairs of pairs: u[4g + c], 128-bit half H, holds rows
    // 4g..4g + 4 of column 4H + c.
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    let u: [__m256; 8] = std::array::from_fn(|i| {
        let (g, c) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + c / 2], t[4 * g + 2 + c / 2]);
        if c % 2 == 0 {
            _mm256_shuffle_ps::<0x44>(a, b)
        } else {
            _mm256_shuffle_ps::<0xEE>(a, b)
        }
    });
    // Then the two groups' halves joined: column c from the low halves of u[c] and u[4 + c],
    // column 4 + c from their high halves.
    std::array::from_fn(|j| {
        let c = j % 4;
        if j < 4 {
            _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c])
        } else {
            _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c])
        }
    })
}

/// c[0..rows, 0..cols] (row stride ldc) += a_tile (kc × MR) · panel (kc × NR), fetching up to
/// kc / PREFETCH_EVERY of `prefetch`'s lines into L2 on the way (a hint: it changes no value).
///
/// # Safety
/// AVX2 and FMA; `a` holds kc · MR floats and `panel` kc · NR; c's rows and columns as given are
/// writable; `prefetch.from` is followed by `prefetch.lines` lines of one allocation.
#[target_feature(enable = "avx2,fma")]
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
    // The tile's rows of c are read once, at the end, from wherever the last k block left
    // them (often L3: c is rows × n and the k loop sweeps all of it per block); asking for them
    // now overlaps that wait with the products.
    for r in 0..rows {
        // SAFETY: a hint inside c's row r, columns below `cols` (the caller's contract).
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc).cast());
            _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc + cols - 1).cast());
        }
    }
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    // One step: the panel's input p times the tile's MR x values, broadcast.
    let step = |acc: &mut [[__m256; 2]; MR], p: usize| {
        // SAFETY: p < kc, inside both packed blocks (the caller's contract).
        unsafe {
            let w0 = _mm256_loadu_ps(panel.add(p * NR));
            let w1 = _mm256_loadu_ps(panel.add(p * NR + 8));
            let xs = a.add(p * MR);
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*xs.add(r));
                acc[0] = _mm256_fmadd_ps(x, w0, acc[0]);
                acc[1] = _mm256_fmadd_ps(x, w1, acc[1]);
            }
        }
    };
    // Whole groups of PREFETCH_EVERY inputs with one prefetch each, so that the inner loop
    // has a fixed count and no test; with c's rows asked for early and unmasked stores, the
    // encoder's products went from 82-96 to 104-106 GFLOP/s on one core of an AMD EPYC (Zen 5,
    // examples/int8_bench).
    let groups = kc / PREFETCH_EVERY;
    for g in 0..groups {
        if g < prefetch.lines {
            // SAFETY: line g of prefetch's (the caller's contract).
            unsafe { _mm_prefetch::<_MM_HINT_T1>(prefetch.from.add(g * LINE).cast()) };
        }
        for p in g * PREFETCH_EVERY..(g + 1) * PREFETCH_EVERY {
            step(&mut acc, p);
        }
    }
    for p in groups * PREFETCH_EVERY..kc {
        step(&mut acc, p);
    }
    if cols == NR {
        for (r, acc) in acc.iter().enumerate().take(rows) {
            // SAFETY: row r's NR columns are the caller's.
            unsafe {
                let out = c.add(r * ldc);
                _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), acc[0]));
                let out = out.add(8);
                _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), acc[1]));
            }
        }
        return;
    }
    // A panel at the right edge: masked loads and stores (slow on AMD, so only here).
    let masks = [lanes_below(cols), lanes_below(cols.saturating_sub(8))];
    for (r, acc) in acc.iter().enumerate().take(rows) {
        for (v, &sum) in acc.iter().enumerate() {
            // SAFETY: the masked lanes are columns below `cols` of row r.
            unsafe {
                let out = c.add(r * ldc + v * 8);
                let old = _mm256_maskload_ps(out, masks[v]);
                _mm256_maskstore_ps(out, masks[v], _mm256_add_ps(old, sum));
            }
        }
    }
}

/// A mask of the first min(n, 8) lanes (each lane's sign bit).
#[target_feature(enable = "avx2,fma")]
fn lanes_below(n: usize) -> __m256i {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), lanes)
}
