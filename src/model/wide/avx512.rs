//! The AVX-512 F form of the wide kernel (`mod.rs`): a 12 × 32 tile of the output in 24 of the 32
//! zmm registers, 16 × 16 register transposes for packing, a 16-lane matrix-vector loop.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::{Prefetch, LINE, PREFETCH_EVERY};

/// Output rows per microkernel tile (broadcast operands).
pub const MR: usize = 12;
// `pack_rows` transposes a tile's rows in one 16-lane block.
const _: () = assert!(MR <= 16);
/// Output columns per microkernel tile: two 16-lane vectors.
pub const NR: usize = 32;
/// Whether this CPU runs the kernel (AVX-512 F).
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

/// `Form::add_dots` at 16 lanes.
///
/// # Safety
/// AVX-512 F; x holds m × k floats, w j_end × k, j_start <= j_end <= n, k > 0; `c` points to m × n
/// floats of which no other thread touches columns `j_start..j_end` during the call.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn add_dots(
    c: *mut f32,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    j_start: usize,
    j_end: usize,
) {
    let whole = k / 16 * 16;
    let tail = lanes_below(k - whole);
    let mut j = j_start;
    while j < j_end {
        let rows = 4.min(j_end - j);
        // A group short of four repeats its last row; those sums are not stored.
        let wr: [*const f32; 4] = std::array::from_fn(|r| w[(j + r.min(rows - 1)) * k..].as_ptr());
        for i in 0..m {
            let xr = x[i * k..].as_ptr();
            let mut acc = [_mm512_setzero_ps(); 4];
            // SAFETY: x's row i and the weight rows have k values (asserted above); the loads
            // read below `whole`, the masked ones below k.
            unsafe {
                for p in (0..whole).step_by(16) {
                    let xv = _mm512_loadu_ps(xr.add(p));
                    for (acc, w) in acc.iter_mut().zip(wr) {
                        *acc = _mm512_fmadd_ps(_mm512_loadu_ps(w.add(p)), xv, *acc);
                    }
                }
                if whole < k {
                    let xv = _mm512_maskz_loadu_ps(tail, xr.add(whole));
                    for (acc, w) in acc.iter_mut().zip(wr) {
                        let wv = _mm512_maskz_loadu_ps(tail, w.add(whole));
                        *acc = _mm512_fmadd_ps(wv, xv, *acc);
                    }
                }
                for (r, acc) in acc.iter().enumerate().take(rows) {
                    // SAFETY: row i, column j + r < j_end: this call's (the caller's contract).
                    *c.add(i * n + j + r) += _mm512_reduce_add_ps(*acc);
                }
            }
        }
        j += rows;
    }
}

/// `Form::pack_rows`' whole groups of 16 inputs, through a register transpose.
#[target_feature(enable = "avx512f")]
pub(super) fn pack_rows(
    packed: &mut [MaybeUninit<f32>],
    x: &[f32],
    m: usize,
    k: usize,
    k0: usize,
    kc: usize,
) {
    let whole_inputs = kc / 16 * 16;
    for t in 0..m.div_ceil(MR) {
        let tile = &mut packed[t * MR * kc..][..MR * kc];
        let rows = MR.min(m - t * MR);
        // The tile's rows' values k0..k0 + kc, checked once.
        let _ = &x[(t * MR + rows - 1) * k + k0..][..kc];
        for p0 in (0..whole_inputs).step_by(16) {
            // SAFETY: rows t·MR.. t·MR + rows have kc values from k0 (checked above) and
            // p0 + 16 <= kc; the twelve-lane stores land at (p0 + i) · MR.. + MR <= kc · MR.
            unsafe {
                let block: [__m512; 16] = std::array::from_fn(|r| {
                    if r < rows {
                        _mm512_loadu_ps(x.as_ptr().add((t * MR + r) * k + k0 + p0))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                let columns = transpose16(block);
                let first_rows: __mmask16 = (1 << MR) - 1;
                for (i, column) in columns.iter().enumerate() {
                    let out = tile.as_mut_ptr().add((p0 + i) * MR).cast::<f32>();
                    _mm512_mask_storeu_ps(out, first_rows, *column);
                }
            }
        }
    }
}

/// `Form::pack_panel`'s whole 16 × 16 blocks, through registers; `panel` holds kc · NR values.
#[target_feature(enable = "avx512f")]
pub(super) fn pack_panel(
    panel: &mut [f32],
    w: &[f32],
    k: usize,
    k0: usize,
    kc: usize,
    j0: usize,
    nr: usize,
) {
    let panel = &mut panel[..kc * NR];
    let whole_rows = nr / 16 * 16;
    let whole_inputs = kc / 16 * 16;
    for b0 in (0..whole_rows).step_by(16) {
        // The 16 rows' values k0..k0 + kc, checked once.
        let _ = &w[(j0 + b0 + 15) * k + k0..][..kc];
        for p0 in (0..whole_inputs).step_by(16) {
            // SAFETY: `pack_panel` runs only where `available()` (add_product's contract); rows
            // j0 + b0..j0 + b0 + 16 have kc values from k0 (checked above) and p0 + 16 <= kc;
            // the stores land at (p0 + i) · NR + b0.. + 16 <= kc · NR.
            unsafe {
                let rows: [__m512; 16] = std::array::from_fn(|i| {
                    _mm512_loadu_ps(w.as_ptr().add((j0 + b0 + i) * k + k0 + p0))
                });
                let columns = transpose16(rows);
                for (i, column) in columns.iter().enumerate() {
                    _mm512_storeu_ps(panel.as_mut_ptr().add((p0 + i) * NR + b0), *column);
                }
            }
        }
    }
}

/// The 16 × 16 block whose rows are `r` transposed: element j of `r[i]` becomes element i of
/// the result's vector j.
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
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
