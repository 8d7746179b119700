//! x · Wᵀ for the WebAssembly build's large products, in our own blocked SIMD kernel.
//!
//! In wasm candle multiplies f32 matrices at 26–30 GFLOP/s on one thread (its `gemm` kernel for
//! simd128 measured in headless Chromium); the image encoder is almost all such products. This
//! kernel does 37–39 GFLOP/s on the same products (45–48 when built with relaxed SIMD's fused
//! multiply-add), see `bench/README-browser.md`. It is used for products with enough rows to pay
//! for packing the weight (the encoder's 257, a prompt). Products of fewer rows (decoding: one
//! row per beam) of f32 weights take a matrix-vector loop instead (`multiply_few`) that streams
//! each weight row once: 4.8 ms for the LM head's row in Chromium, candle's path 7.4 ms. q8_0
//! weights keep candle's int8 kernels for those rows, which beat an f32 loop over the blocks
//! (4.4 vs 6.2 ms).
//!
//! Natively candle's kernels are faster, so the kernel runs there only when the tests ask for it
//! (`set_min_rows`): the same blocking code compiles to plain four-lane arrays, so the native
//! tests check every edge of it against transformers' fixtures and the wasm tests check the SIMD
//! lanes in Chromium.
//!
//! Layout: for each block of `KC` inputs and each panel of `NW` output columns, the weight's panel
//! is packed input-major (`KC × NW`, zero-padded past the last column); then every `MR` rows of x
//! accumulate an `MR × NW` tile in registers, one broadcast x value times `NV` weight vectors per
//! input. 3 × 12 keeps 9 accumulators and 4 operands within the 16 vector registers V8 has on
//! x86-64: the larger tiles tried (4 × 12, 6 × 8, 3 × 16) spill and run at 21–23 GFLOP/s.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::simd;
use crate::Result;

const MR: usize = 3;
const NV: usize = 3;
const NW: usize = NV * 4;
/// Splitting a product by output columns at multiples of this wastes no lanes of the kernel.
pub const PANEL_COLUMNS: usize = NW;
const KC: usize = 512;

const DEFAULT_MIN_ROWS: usize = if cfg!(target_arch = "wasm32") {
    8
} else {
    usize::MAX
};
static MIN_ROWS: AtomicUsize = AtomicUsize::new(DEFAULT_MIN_ROWS);

/// Overrides (or restores, with `None`) the row count from which products use this kernel, so
/// that the native tests can run the wasm build's path.
pub fn set_min_rows(rows: Option<usize>) {
    MIN_ROWS.store(rows.unwrap_or(DEFAULT_MIN_ROWS), Ordering::Relaxed);
}

static PRODUCTS: AtomicUsize = AtomicUsize::new(0);

/// How many products this kernel has computed (lets the tests check that it ran).
pub fn products() -> usize {
    PRODUCTS.load(Ordering::Relaxed)
}

/// Whether a product of `rows` input rows goes to the blocked kernel.
pub fn applies(rows: usize) -> bool {
    rows >= MIN_ROWS.load(Ordering::Relaxed)
}

/// Products of fewer rows than this (decoding) take the matrix-vector loop. A bound of its own, so
/// that `?kernel_min=N` moves only the blocked kernel's: the rows between go to candle.
const DEFAULT_FEW_ROWS_BELOW: usize = if cfg!(target_arch = "wasm32") { 8 } else { 0 };
static FEW_ROWS_BELOW: AtomicUsize = AtomicUsize::new(DEFAULT_FEW_ROWS_BELOW);

/// Overrides (or restores, with `None`) the row count below which products take the
/// matrix-vector loop, so that the native tests can run the wasm build's decoding path.
pub fn set_few_rows_below(rows: Option<usize>) {
    FEW_ROWS_BELOW.store(rows.unwrap_or(DEFAULT_FEW_ROWS_BELOW), Ordering::Relaxed);
}

/// Whether a product of `rows` rows goes to one of this module's loops.
fn takes(rows: usize) -> bool {
    applies(rows) || rows < FEW_ROWS_BELOW.load(Ordering::Relaxed)
}

/// `x · wᵀ` for x (rows × k) and an f32 weight w (n × k).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let rows = x.dim(0)?;
    let f32s = x.dtype() == candle_core::DType::F32 && w.dtype() == candle_core::DType::F32;
    if !takes(rows) || !f32s || !x.device().is_cpu() {
        return Ok(x.matmul(&w.t()?)?);
    }
    Ok(x.contiguous()?.apply_op2_no_bwd(w, &MatmulT)?)
}

/// `x · wᵀ` for rows `start..start + len` of a q8_0 weight (n × k), its blocks expanded as the
/// kernel packs them; `None` where this kernel does not apply (another type, too few rows), for
/// the caller to take candle's way.
pub fn matmul_t_quantized(
    x: &Tensor,
    w: &QTensor,
    start: usize,
    len: usize,
) -> Option<Result<Tensor>> {
    let k = x.dim(1).ok()?;
    let usable = applies(x.dim(0).ok()?)
        && w.dtype() == GgmlDType::Q8_0
        && x.dtype() == candle_core::DType::F32
        && x.device().is_cpu()
        && k % Q8_0_BLOCK == 0;
    if !usable {
        return None;
    }
    Some((|| {
        let data = w.data()?;
        let row_bytes = k / Q8_0_BLOCK * Q8_0_BYTES;
        let blocks = data
            .get(start * row_bytes..(start + len) * row_bytes)
            .ok_or_else(|| crate::Error::invalid("quantized rows out of range"))?;
        Ok(x.contiguous()?
            .apply_op1_no_bwd(&MatmulTQ8_0 { blocks, k })?)
    })())
}

struct MatmulTQ8_0<'a> {
    blocks: &'a [u8],
    k: usize,
}

impl CustomOp1 for MatmulTQ8_0<'_> {
    fn name(&self) -> &'static str {
        "gitcap-matmul-t-q8_0"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        x_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (&[m, k], CpuStorage::F32(xd), Some((x0, x1))) =
            (x_layout.dims(), xs, x_layout.contiguous_offsets())
        else {
            candle_core::bail!("matmul_t_quantized takes a contiguous f32 matrix")
        };
        if k != self.k {
            candle_core::bail!("matmul_t_quantized: x has {k} columns, w has {}", self.k)
        }
        PRODUCTS.fetch_add(1, Ordering::Relaxed);
        let w = Q8_0Rows {
            blocks: self.blocks,
            k,
        };
        let n = w.rows();
        let out = multiply_blocked(&xd[x0..x1], &w, m, k);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

struct MatmulT;

impl CustomOp2 for MatmulT {
    fn name(&self) -> &'static str {
        "gitcap-matmul-t"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        x_layout: &Layout,
        ws: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (&[m, k], &[n, wk]) = (x_layout.dims(), w_layout.dims()) else {
            candle_core::bail!("matmul_t takes two matrices")
        };
        if k != wk {
            candle_core::bail!("matmul_t: x has {k} columns, w has {wk}")
        }
        let (CpuStorage::F32(xd), Some((x0, x1))) = (xs, x_layout.contiguous_offsets()) else {
            candle_core::bail!("matmul_t takes contiguous f32 matrices")
        };
        let (CpuStorage::F32(wd), Some((w0, w1))) = (ws, w_layout.contiguous_offsets()) else {
            candle_core::bail!("matmul_t takes contiguous f32 matrices")
        };
        PRODUCTS.fetch_add(1, Ordering::Relaxed);
        let w = DenseRows { w: &wd[w0..w1], k };
        debug_assert_eq!(w.rows(), n);
        let out = multiply(&xd[x0..x1], &w, m, k);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// A weight (n × k, row-major) the kernel can pack panels from.
trait WeightRows: Sync {
    fn rows(&self) -> usize;
    /// Writes w[j0 + b][k0 + p] to panel[p · NW + b] for b < nw and p < kc.
    fn pack(&self, panel: &mut [f32], k0: usize, kc: usize, j0: usize, nw: usize);
}

struct DenseRows<'a> {
    w: &'a [f32],
    k: usize,
}

impl WeightRows for DenseRows<'_> {
    fn rows(&self) -> usize {
        self.w.len() / self.k
    }

    fn pack(&self, panel: &mut [f32], k0: usize, kc: usize, j0: usize, nw: usize) {
        for b in 0..nw {
            let row = &self.w[(j0 + b) * self.k + k0..][..kc];
            for (p, &v) in row.iter().enumerate() {
                panel[p * NW + b] = v;
            }
        }
    }
}

/// GGML's q8_0 rows: blocks of an f16 scale and 32 signed bytes. Packing expands them straight
/// into the panel, so a quantized weight is never expanded whole.
struct Q8_0Rows<'a> {
    blocks: &'a [u8],
    k: usize,
}

const Q8_0_BLOCK: usize = 32;
const Q8_0_BYTES: usize = 2 + Q8_0_BLOCK;

impl WeightRows for Q8_0Rows<'_> {
    fn rows(&self) -> usize {
        self.blocks.len() / (self.k / Q8_0_BLOCK * Q8_0_BYTES)
    }

    fn pack(&self, panel: &mut [f32], k0: usize, kc: usize, j0: usize, nw: usize) {
        let row_bytes = self.k / Q8_0_BLOCK * Q8_0_BYTES;
        for b in 0..nw {
            let row = &self.blocks[(j0 + b) * row_bytes..][..row_bytes];
            // k0 and kc are multiples of the block (KC is, and so is k).
            for (bi, block) in row[k0 / Q8_0_BLOCK * Q8_0_BYTES..][..kc / Q8_0_BLOCK * Q8_0_BYTES]
                .chunks_exact(Q8_0_BYTES)
                .enumerate()
            {
                let scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                for (q, &byte) in block[2..].iter().enumerate() {
                    panel[(bi * Q8_0_BLOCK + q) * NW + b] = scale * f32::from(byte as i8);
                }
            }
        }
    }
}

/// c (m × n) = x (m × k) · w (n × k)ᵀ, all row-major.
fn multiply(x: &[f32], w: &DenseRows, m: usize, k: usize) -> Vec<f32> {
    if applies(m) {
        multiply_blocked(x, w, m, k)
    } else {
        multiply_few(x, w, m, k)
    }
}

fn multiply_blocked(x: &[f32], w: &impl WeightRows, m: usize, k: usize) -> Vec<f32> {
    let n = w.rows();
    assert!(x.len() == m * k);
    let mut c = vec![0f32; m * n];
    let mut panel = vec![0f32; KC * NW];
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        for j0 in (0..n).step_by(NW) {
            let nw = NW.min(n - j0);
            if nw < NW {
                panel.fill(0.0);
            }
            w.pack(&mut panel, k0, kc, j0, nw);
            let mut i = 0;
            while i + MR <= m {
                tile::<MR>(&mut c, x, &panel, i, j0, nw, k0, kc, n, k);
                i += MR;
            }
            while i < m {
                tile::<1>(&mut c, x, &panel, i, j0, nw, k0, kc, n, k);
                i += 1;
            }
        }
    }
    c
}

/// `multiply` for a few rows: each weight row is read from memory once and dotted with every row
/// of x while it is in L1.
fn multiply_few(x: &[f32], w: &DenseRows, m: usize, k: usize) -> Vec<f32> {
    let n = w.rows();
    assert!(x.len() == m * k && w.w.len() == n * k);
    let mut c = vec![0f32; m * n];
    for (j, row) in w.w.chunks_exact(k).enumerate() {
        for (i, xs) in x.chunks_exact(k).enumerate() {
            c[i * n + j] = dot(xs, row);
        }
    }
    c
}

/// Σ a·b in four independent four-lane sums (one would wait on each addition's latency).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let (whole, quads) = (len / 16 * 16, len / 4 * 4);
    let mut acc = [simd::splat(0.0); 4];
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: every load reads four floats below `whole` or `quads`, both at most `len`.
    unsafe {
        for p in (0..whole).step_by(16) {
            for (u, acc) in acc.iter_mut().enumerate() {
                let o = p + 4 * u;
                *acc = simd::madd(simd::load(pa.add(o)), simd::load(pb.add(o)), *acc);
            }
        }
        for p in (whole..quads).step_by(4) {
            acc[0] = simd::madd(simd::load(pa.add(p)), simd::load(pb.add(p)), acc[0]);
        }
    }
    let sum = simd::add(simd::add(acc[0], acc[1]), simd::add(acc[2], acc[3]));
    let tail: f32 = a[quads..len]
        .iter()
        .zip(&b[quads..len])
        .map(|(a, b)| a * b)
        .sum();
    simd::lanes(sum).iter().sum::<f32>() + tail
}

/// Adds x[i..i + R, k0..k0 + kc] · panel to c[i..i + R, j0..j0 + nw].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<const R: usize>(
    c: &mut [f32],
    x: &[f32],
    panel: &[f32],
    i: usize,
    j0: usize,
    nw: usize,
    k0: usize,
    kc: usize,
    n: usize,
    k: usize,
) {
    let rows: [&[f32]; R] = std::array::from_fn(|a| &x[(i + a) * k + k0..][..kc]);
    let panel = &panel[..kc * NW];
    let mut acc = [[simd::splat(0.0); NV]; R];
    // The bounds were checked by the two slicings above; the loop reads inside them only.
    let row_ptrs: [*const f32; R] = std::array::from_fn(|a| rows[a].as_ptr());
    let panel_ptr = panel.as_ptr();
    for p in 0..kc {
        // SAFETY: p < kc, so p * NW + v * 4 + 3 < kc * NW = panel.len() and p < rows[a].len().
        unsafe {
            let ws: [simd::V; NV] =
                std::array::from_fn(|v| simd::load(panel_ptr.add(p * NW + v * 4)));
            for a in 0..R {
                let xs = simd::splat(*row_ptrs[a].add(p));
                for v in 0..NV {
                    acc[a][v] = simd::madd(xs, ws[v], acc[a][v]);
                }
            }
        }
    }
    for (a, acc) in acc.iter().enumerate() {
        let out = &mut c[(i + a) * n + j0..][..nw];
        let mut sums = [0f32; NW];
        for (v, &lanes) in acc.iter().enumerate() {
            // SAFETY: v * 4 + 3 < NW.
            unsafe { simd::store(sums.as_mut_ptr().add(v * 4), lanes) };
        }
        for (o, s) in out.iter_mut().zip(sums) {
            *o += s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// q8_0 blocks packed straight into panels give the product with the expanded weight.
    #[test]
    fn q8_0_rows_match_their_expansion() {
        use candle_core::Device;
        let (n, k) = (29, 2 * KC + 64);
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let expanded = q.dequantize(&Device::Cpu).unwrap();
        let data = q.data().unwrap();
        let w = Q8_0Rows {
            blocks: &data[3 * (k / 32 * 34)..],
            k,
        };
        for m in [1, 7] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let want = x.matmul(&expanded.t().unwrap()).unwrap();
            let want = want.narrow(1, 3, n - 3).unwrap();
            let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let c = multiply_blocked(&x, &w, m, k);
            let got = Tensor::from_vec(c, (m, n - 3), &Device::Cpu).unwrap();
            let err = crate::model::max_abs_diff(&got, &want);
            assert!(err < 1e-3, "{m} rows: {err}");
        }
    }

    /// Every edge: rows not a multiple of MR, columns not a multiple of NW, inputs spanning
    /// several KC blocks with a remainder; against a plain f64 dot product.
    #[test]
    fn matches_dot_products_at_every_edge() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (2, 13, 5),
            (7, 25, KC + 3),
            (3, 12, 2 * KC),
            (10, 40, 77),
            (4, 30, 1024),
            (1, 7, 33),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 211) as f32 / 50.0 - 2.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 104729) % 197) as f32 / 40.0 - 2.5)
                .collect();
            let w = DenseRows { w: &w, k };
            for c in [multiply_blocked(&x, &w, m, k), multiply_few(&x, &w, m, k)] {
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|p| x[i * k + p] as f64 * w.w[j * k + p] as f64)
                            .sum();
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "({m},{n},{k}) [{i},{j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
