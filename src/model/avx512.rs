//! x · Wᵀ for f32 weights at AVX-512 width, for native builds on CPUs that have it.
//!
//! candle's `gemm` dispatches to its AVX2 kernel even where the CPU has AVX-512 (its `x86-v4`
//! kernels sit behind a feature that candle does not turn on), so on a CPU with two full-width
//! FMA units (Intel Xeon since Skylake-SP) it runs at about half of what torch and ONNX Runtime
//! get. This kernel is chosen at run time (`available`) and takes the products of the image
//! encoder and of prompts; everything else stays candle's.
//!
//! Blocking: for each `KC` inputs, the rows of x are packed once into tiles of `MR` rows stored
//! input-major (one cache line per input for the 12 rows), then each panel of `NR` = 32 output
//! columns of the weight is packed input-major (`KC × 32` floats, 32 KiB: it stays in L1 while
//! every row tile passes over it). The microkernel keeps a 12 × 32 tile of the output in 24 of
//! the 32 zmm registers and adds one broadcast x value times two weight vectors per input and row.
//! Rows past the last are zero in the packed tiles and never stored; columns past the last are
//! zero in the panel and masked off when stored.
//!
//! Compiled for x86_64 only (`model/mod.rs`).

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Output rows per microkernel tile (broadcast operands).
pub const MR: usize = 12;
// `pack_rows` transposes a tile's rows in one 16-lane block.
const _: () = assert!(MR <= 16);
/// Output columns per microkernel tile: two 16-lane vectors.
pub const NR: usize = 32;
/// Inputs per packed block: a 32 KiB weight panel, and 12 KiB per row tile.
const KC: usize = 256;

/// Whether this CPU runs the kernel (AVX-512 F).
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

/// x (m × k) packed for `add_product`: for each `KC` inputs, its row tiles (`pack_rows`). Packed
/// once per product and shared by every column block: each block packing its own copy made the
/// packing a third of the product's time (perf, git-large's encoder on 2 threads).
pub struct PackedX {
    data: Vec<f32>,
    m: usize,
    k: usize,
}

impl PackedX {
    pub fn new(x: &[f32], m: usize, k: usize) -> PackedX {
        assert!(x.len() >= m * k);
        let per_input = m.div_ceil(MR) * MR;
        // Not zeroed first (a pass on one thread): `pack_rows` writes every value.
        let mut data = Vec::with_capacity(per_input * k);
        let pack = |(b, block): (usize, &mut [MaybeUninit<f32>])| {
            let k0 = b * KC;
            // SAFETY: PackedX is made only where `available()` (the kernel's callers check it).
            unsafe { pack_rows(block, x, m, k, k0, KC.min(k - k0)) };
        };
        let spare = &mut data.spare_capacity_mut()[..per_input * k];
        if k > KC && m * k >= 1 << 16 {
            use rayon::prelude::*;
            spare
                .par_chunks_mut(per_input * KC)
                .enumerate()
                .for_each(pack);
        } else {
            spare.chunks_mut(per_input * KC).enumerate().for_each(pack);
        }
        // SAFETY: the chunks cover the first per_input · k values, each written by pack_rows.
        unsafe { data.set_len(per_input * k) };
        PackedX { data, m, k }
    }
}

/// A weight for `add_product`: its rows as stored (n × k, row-major), each panel packed as it is
/// needed, or packed once ahead (`PackedWeight`).
#[derive(Clone, Copy)]
pub enum Weight<'a> {
    Rows(&'a [f32]),
    Packed(&'a PackedWeight),
}

/// A weight (n × k) packed once into the panels `add_product` reads, in the order it reads them:
/// for each `KC` inputs, each panel of `NR` columns (zero past n). Packing a panel per product
/// was 5% of git-large's image encoder natively (perf, 2 threads); the encoder's weights serve
/// only its 257-row products, so the model keeps them in this form alone (the same size, n
/// rounded up to a multiple of NR).
pub struct PackedWeight {
    data: Vec<f32>,
    n: usize,
    k: usize,
}

impl PackedWeight {
    /// Packs w (n × k, row-major). The caller checks `available()` first.
    pub fn new(w: &[f32], n: usize, k: usize) -> PackedWeight {
        assert!(available() && w.len() == n * k);
        let width = n.div_ceil(NR) * NR;
        let mut data = vec![0f32; width * k];
        use rayon::prelude::*;
        // Each block of KC inputs is a whole chunk (k0 · width values precede it).
        data.par_chunks_mut(width * KC)
            .enumerate()
            .for_each(|(b, block)| {
                let (k0, kc) = (b * KC, KC.min(k - b * KC));
                for (p, panel) in block.chunks_exact_mut(kc * NR).enumerate() {
                    let j0 = p * NR;
                    // SAFETY: available() (asserted above).
                    unsafe { pack_panel(panel, w, k, k0, kc, j0, NR.min(n - j0)) };
                }
            });
        PackedWeight { data, n, k }
    }

    /// The panel of inputs k0.. (a multiple of KC) and columns j0.. (a multiple of NR).
    fn panel(&self, k0: usize, j0: usize) -> &[f32] {
        let kc = KC.min(self.k - k0);
        let width = self.n.div_ceil(NR) * NR;
        &self.data[k0 * width + j0 * kc..][..kc * NR]
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn inputs(&self) -> usize {
        self.k
    }

    /// The weight as it was given (n × k, row-major).
    pub fn unpack(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut w = vec![0f32; n * k];
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for j0 in (0..n).step_by(NR) {
                let panel = self.panel(k0, j0);
                for b in 0..NR.min(n - j0) {
                    for p in 0..kc {
                        w[(j0 + b) * k + k0 + p] = panel[p * NR + b];
                    }
                }
            }
        }
        w
    }
}

/// Adds x (m × k) · w[j_start..j_end]ᵀ to columns `j_start..j_end` of c (m × n, row-major); a
/// packed weight's column range starts at a multiple of NR. The caller checks `available()` first.
///
/// # Safety
/// The CPU supports AVX-512 F; `c` points to m × n floats of which no other thread touches
/// columns `j_start..j_end` during the call; w has at least j_end × k floats.
pub unsafe fn add_product(
    c: *mut f32,
    x: &PackedX,
    w: Weight,
    n: usize,
    j_start: usize,
    j_end: usize,
) {
    let (m, k) = (x.m, x.k);
    match w {
        Weight::Rows(w) => assert!(w.len() >= j_end * k),
        Weight::Packed(w) => assert!(w.k == k && w.n == n && j_start.is_multiple_of(NR)),
    }
    assert!(j_end <= n);
    let tiles = m.div_ceil(MR);
    let mut scratch = match w {
        Weight::Rows(_) => vec![0f32; KC * NR],
        Weight::Packed(_) => Vec::new(),
    };
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let packed_x = &x.data[tiles * MR * k0..][..tiles * MR * kc];
        for j0 in (j_start..j_end).step_by(NR) {
            let nr = NR.min(j_end - j0);
            let panel: &[f32] = match w {
                Weight::Rows(w) => {
                    // SAFETY: the caller's contract: the CPU has AVX-512 F.
                    unsafe { pack_panel(&mut scratch, w, k, k0, kc, j0, nr) };
                    &scratch
                }
                Weight::Packed(w) => w.panel(k0, j0),
            };
            // The panel after this one, fetched into L2 a share per row tile while this one is
            // used, so that its first tile does not wait on memory: 122 → 147 GFLOP/s for the
            // encoder's products on one thread of an Intel Xeon (AVX-512 at two FMAs a cycle).
            let next: &[f32] = match w {
                Weight::Packed(w) if j0 + NR < j_end => w.panel(k0, j0 + NR),
                Weight::Packed(w) if k0 + kc < k => w.panel(k0 + kc, j_start),
                _ => &[],
            };
            let lines = next.len() / LINE;
            let share = lines.div_ceil(tiles);
            for t in 0..tiles {
                let i0 = t * MR;
                let rows = MR.min(m - i0);
                let first = (t * share).min(lines);
                let prefetch = Prefetch {
                    from: next[first * LINE..].as_ptr(),
                    lines: share.min(lines - first),
                };
                // SAFETY: the tile lies inside packed_x; rows i0..i0 + rows, columns j0..j0 + nr
                // are inside this call's part of c (the caller's contract); the prefetched lines
                // lie inside `next`.
                unsafe {
                    tile(
                        packed_x.as_ptr().add(t * MR * kc),
                        panel.as_ptr(),
                        kc,
                        c.add(i0 * n + j0),
                        n,
                        rows,
                        nr,
                        prefetch,
                    )
                };
            }
        }
    }
}

/// Adds x (m × k, row-major) · w[j_start..j_end]ᵀ to columns `j_start..j_end` of c (m × n), for
/// decoding's few rows: each weight row is read from memory once and dotted with every row of x,
/// four weight rows at a time, sixteen inputs a step (the inputs past the last whole sixteen
/// masked). Each value's sum is reduced the same way whichever call and group holds its column.
///
/// # Safety
/// The CPU supports AVX-512 F; `c` points to m × n floats of which no other thread touches
/// columns `j_start..j_end` during the call.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn add_dots(
    c: *mut f32,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    j_start: usize,
    j_end: usize,
) {
    assert!(x.len() >= m * k && w.len() >= j_end * k && j_start <= j_end && j_end <= n);
    if k == 0 {
        return;
    }
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

/// x[.., k0..k0 + kc] into row tiles: tile t holds rows t·MR.. as kc groups of MR values, one
/// per row (zero for rows past m). Writes all of `packed`'s first MR · ⌈m / MR⌉ · kc values.
/// Sixteen inputs of a tile at a time through a register transpose (one value at a time, the
/// packing took 5% of git-large's encoder on one thread of an Intel Xeon), the rest one by one.
#[target_feature(enable = "avx512f")]
fn pack_rows(packed: &mut [MaybeUninit<f32>], x: &[f32], m: usize, k: usize, k0: usize, kc: usize) {
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
        for r in 0..MR {
            if r < rows {
                let row = &x[(t * MR + r) * k + k0..][..kc];
                for p in whole_inputs..kc {
                    tile[p * MR + r].write(row[p]);
                }
            } else {
                for p in whole_inputs..kc {
                    tile[p * MR + r].write(0.0);
                }
            }
        }
    }
}

/// w[j0..j0 + nr, k0..k0 + kc] transposed into panel[p · NR + b], zero past nr: 16 × 16 blocks
/// through registers where whole, one value at a time at the edges (one value at a time
/// throughout, the packing took a quarter of the kernel's time).
#[target_feature(enable = "avx512f")]
fn pack_panel(panel: &mut [f32], w: &[f32], k: usize, k0: usize, kc: usize, j0: usize, nr: usize) {
    let panel = &mut panel[..kc * NR];
    if nr < NR {
        panel.fill(0.0);
    }
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
        for b in b0..b0 + 16 {
            let row = &w[(j0 + b) * k + k0..][..kc];
            for p in whole_inputs..kc {
                panel[p * NR + b] = row[p];
            }
        }
    }
    for b in whole_rows..nr {
        let row = &w[(j0 + b) * k + k0..][..kc];
        for (p, &v) in row.iter().enumerate() {
            panel[p * NR + b] = v;
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

/// Floats per cache line.
const LINE: usize = 16;

/// Cache lines for `tile` to fetch into L2 as it goes, one every `PREFETCH_EVERY` inputs.
#[derive(Clone, Copy)]
struct Prefetch {
    from: *const f32,
    lines: usize,
}

const PREFETCH_EVERY: usize = 8;

/// c[0..rows, 0..cols] (row stride ldc) += a_tile (kc × MR) · panel (kc × NR), fetching up to
/// kc / PREFETCH_EVERY of `prefetch`'s lines into L2 on the way (a hint: it changes no value).
///
/// # Safety
/// AVX-512 F; `a` holds kc · MR floats and `panel` kc · NR; c's rows and columns as given are
/// writable; `prefetch.from` is followed by `prefetch.lines` lines of one allocation.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The register transpose packs the same panel as one value at a time, at every edge.
    #[test]
    fn panel_packing_matches_the_definition() {
        if !available() {
            eprintln!("no AVX-512 F on this CPU: kernel not run");
            return;
        }
        for &(n, k, k0, kc, j0, nr) in &[
            (32usize, 256usize, 0usize, 256usize, 0usize, 32usize),
            (70, 300, 16, 37, 3, 32),
            (40, 64, 0, 64, 20, 20),
            (17, 48, 32, 16, 0, 17),
            (5, 9, 0, 9, 0, 5),
        ] {
            let w: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
            let mut got = vec![f32::NAN; KC * NR];
            // SAFETY: available() above.
            unsafe { pack_panel(&mut got, &w, k, k0, kc, j0, nr) };
            for p in 0..kc {
                for b in 0..NR {
                    let want = if b < nr {
                        w[(j0 + b) * k + k0 + p]
                    } else {
                        0.0
                    };
                    assert_eq!(
                        got[p * NR + b],
                        want,
                        "({n},{k},{k0},{kc},{j0},{nr}) [{p},{b}]"
                    );
                }
            }
        }
    }

    /// The register transpose packs x's row tiles as one value at a time would: rows past m
    /// zero, inputs past the last whole 16, several KC blocks with a remainder.
    #[test]
    fn row_packing_matches_the_definition() {
        if !available() {
            eprintln!("no AVX-512 F on this CPU: kernel not run");
            return;
        }
        for &(m, k) in &[
            (1usize, 1usize),
            (5, 3),
            (12, 16),
            (13, KC + 7),
            (257, 2 * KC + 37),
        ] {
            let x: Vec<f32> = (0..m * k).map(|i| i as f32 + 0.5).collect();
            let packed = PackedX::new(&x, m, k);
            let tiles = m.div_ceil(MR);
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                let block = &packed.data[tiles * MR * k0..][..tiles * MR * kc];
                for i in 0..tiles * MR {
                    for p in 0..kc {
                        let want = if i < m { x[i * k + k0 + p] } else { 0.0 };
                        let got = block[i / MR * MR * kc + p * MR + i % MR];
                        assert_eq!(got, want, "({m},{k}) row {i} input {}", k0 + p);
                    }
                }
            }
        }
    }

    use crate::model::test_matrices as operands;

    /// A weight packed ahead gives the same bits as one packed per product, and unpacks to
    /// itself: whole and partial panels, several KC blocks with a remainder, a column range
    /// that starts at a later panel.
    #[test]
    fn packed_weight_matches_packing_per_product() {
        if !available() {
            eprintln!("no AVX-512 F on this CPU: kernel not run");
            return;
        }
        for &(m, n, k, j_start, j_end) in &[
            (1, 1, 1, 0, 1),
            (13, 70, 2 * KC + 9, 0, 70),
            (25, 64, KC, 32, 64),
            (257, 100, 1024, 32, 97),
        ] {
            let (x, w) = operands(m, n, k);
            let packed_w = PackedWeight::new(&w, n, k);
            assert_eq!(packed_w.unpack(), w, "({n}, {k}) unpacked");
            let packed_x = PackedX::new(&x, m, k);
            let (mut want, mut got) = (vec![0.5f32; m * n], vec![0.5f32; m * n]);
            // SAFETY: available() above; each output is m × n and only this thread's.
            unsafe {
                add_product(
                    want.as_mut_ptr(),
                    &packed_x,
                    Weight::Rows(&w),
                    n,
                    j_start,
                    j_end,
                );
                add_product(
                    got.as_mut_ptr(),
                    &packed_x,
                    Weight::Packed(&packed_w),
                    n,
                    j_start,
                    j_end,
                );
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&got),
                bits(&want),
                "({m}, {n}, {k}, {j_start}..{j_end})"
            );
        }
    }

    /// c (m × n) is `start` plus x · w[j_range]ᵀ in the columns of `j_range` (within 1e-4 of
    /// f64 dot products) and `start` elsewhere.
    fn assert_adds_product(
        c: &[f32],
        start: &[f32],
        x: &[f32],
        w: &[f32],
        (m, n, k): (usize, usize, usize),
        j_range: std::ops::Range<usize>,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut want = start[i * n + j] as f64;
                if j_range.contains(&j) {
                    want += (0..k)
                        .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                        .sum::<f64>();
                }
                let got = c[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "({m},{n},{k}) [{i},{j}]: {got} vs {want}"
                );
            }
        }
    }

    /// The matrix-vector loop against f64 dot products: one and several rows, inputs below,
    /// at and past a multiple of 16, weight groups short of four, a column range inside the
    /// weight; columns outside the range keep their values.
    #[test]
    fn dots_match_f64_at_every_edge() {
        if !available() {
            eprintln!("no AVX-512 F on this CPU: kernel not run");
            return;
        }
        for &(m, n, k, j_start, j_end) in &[
            (1usize, 1usize, 1usize, 0usize, 1usize),
            (1, 7, 15, 0, 7),
            (1, 70, 768, 3, 69),
            (3, 33, 37, 0, 33),
            (7, 9, 3072, 2, 9),
        ] {
            let (x, w) = operands(m, n, k);
            let start: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32).collect();
            let mut c = start.clone();
            // SAFETY: available() above; c is m × n and only this thread's.
            unsafe { add_dots(c.as_mut_ptr(), &x, m, k, &w, n, j_start, j_end) };
            assert_adds_product(&c, &start, &x, &w, (m, n, k), j_start..j_end);
        }
    }

    /// Every edge: rows not a multiple of MR, columns not a multiple of NR, several KC blocks with
    /// a remainder, a column range that starts inside the weight; against f64 dot products.
    #[test]
    fn matches_dot_products_at_every_edge() {
        if !available() {
            eprintln!("no AVX-512 F on this CPU: kernel not run");
            return;
        }
        for &(m, n, k, j_start, j_end) in &[
            (1, 1, 1, 0, 1),
            (5, 40, 3, 0, 40),
            (13, 33, KC + 7, 0, 33),
            (25, 70, 2 * KC, 32, 70),
            (12, 32, 64, 0, 32),
            (257, 100, 1024, 3, 97),
        ] {
            let (x, w) = operands(m, n, k);
            let start: Vec<f32> = (0..m * n).map(|i| (i % 13) as f32).collect();
            let mut c = start.clone();
            // SAFETY: available() above; c is m × n and only this thread's.
            let packed = PackedX::new(&x, m, k);
            unsafe { add_product(c.as_mut_ptr(), &packed, Weight::Rows(&w), n, j_start, j_end) };
            assert_adds_product(&c, &start, &x, &w, (m, n, k), j_start..j_end);
        }
    }
}
