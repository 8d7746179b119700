//! x · Wᵀ for the WebAssembly build's large products, in our own blocked SIMD kernel.
//!
//! In wasm candle multiplies f32 matrices at 26–30 GFLOP/s on one thread (its `gemm` kernel for
//! simd128 measured in headless Chromium); the image encoder is almost all such products. This
//! kernel does 37–39 GFLOP/s on the same products (45–48 when built with relaxed SIMD's fused
//! multiply-add), see `bench/README-browser.md`. It is used for products with enough rows to pay
//! for packing the weight (the encoder's 257, a prompt). Products of fewer rows (decoding: one
//! row per beam) of f32 weights take a matrix-vector loop instead (`multiply_few`) that streams
//! each weight row once: 4.8 ms for the LM head's row in Chromium, candle's path 7.4 ms.
//!
//! q8_0 weights go to the integer kernel instead (`int8`: activations quantized per block, exact
//! integer sums) wherever it has a fast form: every product in both wasm builds (decoding's few
//! rows through its own row-at-a-time loop over the blocks as stored), and natively products of
//! 8 rows or more on CPUs with AVX-512 VNNI; `linear` hands them over.
//!
//! A linear layer's product goes through `linear`, which adds the bias and applies the activation
//! to each block of output columns as it finishes it; in the threaded build those blocks are handed
//! out over the threads, all writing into one output.
//!
//! Natively candle's kernels are faster, so the kernel runs there only when the tests ask for it
//! (`Policy::with_kernel_min_rows`): the same blocking code compiles to plain four-lane arrays, so
//! the native tests check every edge of it against transformers' fixtures and the wasm tests check
//! the SIMD lanes in Chromium.
//!
//! Layout: for each block of `KC` inputs and each panel of `NW` output columns, the weight's panel
//! is packed input-major (`KC × NW`, zero-padded past the last column); then every `MR` rows of x
//! accumulate an `MR × NW` tile in registers, one broadcast x value times `NV` weight vectors per
//! input. 3 × 12 keeps 9 accumulators and 4 operands within the 16 vector registers V8 has on
//! x86-64: the larger tiles tried (4 × 12, 6 × 8, 3 × 16) spill and run at 21–23 GFLOP/s.

use candle_core::quantized::GgmlDType;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::policy::{Policy, Stats};
use super::simd;
use crate::Result;

const MR: usize = 3;
const NV: usize = 3;
const NW: usize = NV * 4;
/// Splitting a product by output columns at multiples of this wastes no lanes of the kernel.
pub const PANEL_COLUMNS: usize = NW;
const KC: usize = 512;
/// Each block packs `KC` inputs of x once into cache and reuses them for all its panels: blocks of
/// fewer panels would re-read x more often than they compute with it.
const MIN_BLOCK_PANELS: usize = 4;
/// Decoding's products are shared out in blocks of at least this many weight rows (each read
/// once from memory): fewer would cost more in hand-outs than they save.
const MIN_FEW_BLOCK_COLUMNS: usize = 32;

/// Whether a product of `rows` input rows goes to the blocked kernel under `policy`.
pub fn applies(policy: &Policy, rows: usize) -> bool {
    rows >= policy.kernel_min_rows()
}

/// Whether a product of `rows` rows goes to one of this module's loops under `policy`.
pub fn takes(policy: &Policy, rows: usize) -> bool {
    applies(policy, rows) || rows < policy.few_rows_below()
}

/// Natively, products of this many rows or more with f32 weights go through the wide kernel
/// (`wide/`: AVX-512 or AVX2 with FMA) on CPUs that have either, unless the policy turns it off: the image encoder's 257
/// rows, prompts. Products of fewer than `FEW_WIDE_BELOW` rows (decoding a token, a few beams)
/// take the matrix-vector loop instead (`few_wide`), which `MatmulT` asks first.
#[cfg(target_arch = "x86_64")]
const WIDE_MIN_ROWS: usize = 2;

/// Whether f32 products of `rows` rows run on the wide kernel under `policy` (on this CPU).
pub fn wide(policy: &Policy, rows: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        rows >= WIDE_MIN_ROWS && wide_form(policy).is_some()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (policy, rows);
        false
    }
}

/// The form of the wide kernel `policy` chooses on this CPU, if any (std caches the CPU's
/// features: the check costs a load).
#[cfg(target_arch = "x86_64")]
fn wide_form(policy: &Policy) -> Option<super::wide::Form> {
    use super::policy::WideKernel;
    use super::wide::Form;
    match policy.wide_kernel() {
        WideKernel::Off => None,
        WideKernel::Avx2 => Some(Form::Avx2).filter(|form| form.available()),
        WideKernel::Widest => Form::best(),
    }
}

/// Natively, f32 products of fewer rows than this (decoding a token, a few beams) run through
/// the wide kernel's matrix-vector loop on CPUs that have it, shared out over rayon's pool: candle ran
/// them on the calling thread alone, whose share of the memory bandwidth bounds a token (25–32 ms
/// on an Intel Xeon against transformers' 15–20 ms on 2 threads).
#[cfg(target_arch = "x86_64")]
const FEW_WIDE_BELOW: usize = 8;

/// Whether an f32 product of `rows` rows runs on the wide matrix-vector loop under `policy`:
/// natively on CPUs with AVX-512 F or AVX2 with FMA, few rows, and not taken by the wasm build's loops.
pub fn few_wide(policy: &Policy, rows: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (1..FEW_WIDE_BELOW).contains(&rows)
            && !applies(policy, rows)
            && rows >= policy.few_rows_below()
            && wide_form(policy).is_some()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (policy, rows);
        false
    }
}

/// Whether an f32 product of `rows` rows runs on the wide kernel: `wide`, and not taken by
/// the wasm build's loops (which the native tests can turn on for every product).
pub fn wide_takes(policy: &Policy, rows: usize) -> bool {
    wide(policy, rows) && !applies(policy, rows) && rows >= policy.few_rows_below()
}

/// `x · wᵀ` for x (rows × k) and an f32 weight w (n × k), through this module's kernels where
/// `policy` sends the product to them.
pub fn matmul_t(policy: &Policy, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !kernel_takes(policy, x, w)? {
        return Ok(x.matmul(&w.t()?)?);
    }
    Ok(x.contiguous()?.apply_op2_no_bwd(
        w,
        &MatmulT {
            epilogue: Epilogue::default(),
            split: false,
            policy,
        },
    )?)
}

/// Whether this module's kernels take the product x · wᵀ (f32 on the CPU, rows they take).
fn kernel_takes(policy: &Policy, x: &Tensor, w: &Tensor) -> Result<bool> {
    let rows = x.dim(0)?;
    let f32s = x.dtype() == candle_core::DType::F32 && w.dtype() == candle_core::DType::F32;
    Ok((takes(policy, rows) || wide(policy, rows)) && f32s && x.device().is_cpu())
}

/// `(x · wᵀ) · scale` (attention's scores): where the kernel takes the product, the scaling is
/// done on each block of it as the block finishes, as candle's affine op computes it
/// (`v · scale + 0`, the same bits), instead of in a pass of its own; natively such a pass is
/// handed to candle's spinning thread pool, which then competes with the products' threads.
pub fn matmul_t_scaled(policy: &Policy, x: &Tensor, w: &Tensor, scale: f64) -> Result<Tensor> {
    if !kernel_takes(policy, x, w)? {
        return Ok((x.matmul(&w.t()?)? * scale)?);
    }
    let factor = scale as f32;
    let scale_in_place = move |row: &mut [f32]| {
        for v in row {
            *v = *v * factor + 0.0;
        }
    };
    let epilogue = Epilogue {
        bias: None,
        activation: Some(&scale_in_place),
        residual: None,
    };
    Ok(x.contiguous()?.apply_op2_no_bwd(
        w,
        &MatmulT {
            epilogue,
            split: false,
            policy,
        },
    )?)
}

/// What a linear layer does to its product, done by the kernel to each block of output columns as
/// soon as that block is complete: a product shared out over threads is then never joined or
/// passed over again. Output = residual + activation(x · wᵀ + bias), each part optional.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Added to every row (one value per output column).
    pub bias: Option<&'a [f32]>,
    /// Applied in place to a run of one row's finished columns.
    pub activation: Option<InPlace<'a>>,
    /// Added last, value by value (m × n, row-major): a residual connection. The sum is the one
    /// candle's add computes on the finished output (the same bits: addition commutes), without
    /// the pass of its own over the output that natively goes to candle's spinning thread pool,
    /// where the main thread then waited for a pool thread that the products' threads kept off
    /// the cores (a tenth of git-large's image encoder on 2 threads, perf).
    pub residual: Option<&'a [f32]>,
}

impl Epilogue<'_> {
    /// An error naming `op` unless the bias has n values and the residual m × n.
    pub(super) fn check(&self, op: &str, m: usize, n: usize) -> candle_core::Result<()> {
        if self.bias.is_some_and(|b| b.len() != n) {
            candle_core::bail!("{op}: bias does not match the {n} columns")
        }
        if self.residual.is_some_and(|r| r.len() != m * n) {
            candle_core::bail!("{op}: residual does not match the {m} × {n} output")
        }
        Ok(())
    }

    /// Whether anything is left to do to a block once its product is complete.
    pub(super) fn finishes(&self) -> bool {
        self.activation.is_some() || self.residual.is_some()
    }

    /// Finishes row i's columns j_start..j_start + row.len() of an n-column output: the
    /// activation, then the residual.
    pub(super) fn finish_row(&self, row: &mut [f32], i: usize, n: usize, j_start: usize) {
        if let Some(activation) = self.activation {
            activation(row);
        }
        if let Some(residual) = self.residual {
            let residual = &residual[i * n + j_start..][..row.len()];
            for (v, &r) in row.iter_mut().zip(residual) {
                // v + r: residual + v's bits, as addition commutes.
                *v += r;
            }
        }
    }
}

/// An elementwise function applied in place (an activation), callable from any thread.
pub type InPlace<'a> = &'a (dyn Fn(&mut [f32]) + Sync);

/// `activation(x · wᵀ + bias)` for a linear layer's weight through this module's loops: a dense
/// f32 weight through the blocked kernel or, for few rows, the matrix-vector loop; a q8_0 one
/// through the integer kernel where `int8::takes`, else through the blocked kernel from the
/// policy's `dequantize_min_rows(Q8_0)` rows on. When `split`, the output's column blocks are handed
/// out over the policy's threads as they come free (`parallel::for_each_piece_over`), all writing
/// into one output. `None` where `policy` does not send this product to the kernels, for the
/// caller to take another way. Each output value is computed the same way however the columns
/// are shared out, so the result does not depend on the number of threads.
pub fn linear(
    policy: &Policy,
    x: &Tensor,
    weight: &candle_core::quantized::QMatMul,
    epilogue: Epilogue<'_>,
    split: bool,
) -> Option<Result<Tensor>> {
    use candle_core::quantized::QMatMul;
    let (rows, k) = x.dims2().ok()?;
    if x.dtype() != candle_core::DType::F32 || !x.device().is_cpu() {
        return None;
    }
    if let QMatMul::QTensor(q) = weight {
        if to_int8(policy, weight, rows, k) {
            return Some(super::int8::linear(policy, x, q, epilogue, split));
        }
    }
    let f32_weight = matches!(weight, QMatMul::Tensor(w) if w.dtype() == candle_core::DType::F32);
    if !(takes(policy, rows) || (f32_weight && (wide(policy, rows) || few_wide(policy, rows)))) {
        return None;
    }
    match weight {
        QMatMul::Tensor(w) if w.dtype() == candle_core::DType::F32 => Some((|| {
            Ok(x.contiguous()?.apply_op2_no_bwd(
                w,
                &MatmulT {
                    epilogue,
                    split,
                    policy,
                },
            )?)
        })()),
        QMatMul::QTensor(q)
            if q.dtype() == GgmlDType::Q8_0
                && k % Q8_0_BLOCK == 0
                && applies(policy, rows)
                && rows >= policy.dequantize_min_rows(GgmlDType::Q8_0) =>
        {
            Some((|| {
                let data = q.data()?;
                Ok(x.contiguous()?.apply_op1_no_bwd(&MatmulTQ8_0 {
                    blocks: &data,
                    k,
                    epilogue,
                    split,
                    policy,
                })?)
            })())
        }
        _ => None,
    }
}

/// Whether `linear` hands a product of `rows` rows of `k` inputs with this weight to the integer
/// kernel.
fn to_int8(
    policy: &Policy,
    weight: &candle_core::quantized::QMatMul,
    rows: usize,
    k: usize,
) -> bool {
    matches!(weight, candle_core::quantized::QMatMul::QTensor(q)
        if q.dtype() == GgmlDType::Q8_0 && k.is_multiple_of(Q8_0_BLOCK) && super::int8::takes(policy, rows))
}

/// Whether `linear`'s product of `rows` rows of `k` inputs with this weight of `n` outputs is
/// worth splitting over the policy's threads (`parallel::splits_product`, with the integer
/// kernel's bound on rows for the products it takes).
pub fn splits(
    policy: &Policy,
    weight: &candle_core::quantized::QMatMul,
    rows: usize,
    k: usize,
    n: usize,
) -> bool {
    let min_rows = if to_int8(policy, weight, rows, k) {
        policy.min_split_rows_int8()
    } else {
        policy.min_split_rows()
    };
    super::parallel::splits_product(policy, rows, min_rows, rows * k * n)
}

/// An f32 weight packed once, at load, for the wide kernel (`wide::PackedWeight`): for the
/// image encoder's weights, which serve only its many-row products. Natively on CPUs with
/// AVX-512 F or AVX2 with FMA only, in the widest form the CPU runs; the layer keeps this form alone (`unpack` gives the rows back where another
/// path must take the product, e.g. a test that turns the kernel off).
pub struct PackedWeight {
    #[cfg(target_arch = "x86_64")]
    inner: super::wide::PackedWeight,
}

impl PackedWeight {
    /// `w` (n × k, f32 on the CPU) packed where products of `rows` rows take the wide kernel
    /// under `policy`; `None` elsewhere.
    pub fn new(policy: &Policy, w: &Tensor, rows: usize) -> Result<Option<PackedWeight>> {
        if !wide(policy, rows) || w.dtype() != candle_core::DType::F32 || !w.device().is_cpu() {
            return Ok(None);
        }
        #[cfg(target_arch = "x86_64")]
        {
            let form = wide_form(policy).expect("wide() checked the CPU");
            let (n, k) = w.dims2()?;
            let rows = w.flatten_all()?.to_vec1::<f32>()?;
            Ok(Some(PackedWeight {
                inner: super::wide::PackedWeight::new(form, &rows, n, k),
            }))
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("wide() is false off x86-64")
    }

    /// The kernel form the weight is packed for ("AVX-512 F", "AVX2 + FMA"), for reports.
    pub fn describe(&self) -> &'static str {
        #[cfg(target_arch = "x86_64")]
        {
            self.inner.form().describe()
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("a PackedWeight is made on x86-64 only")
    }

    /// The weight's rows again (n × k), on the CPU.
    pub fn unpack(&self) -> Result<Tensor> {
        #[cfg(target_arch = "x86_64")]
        {
            let (n, k) = (self.inner.rows(), self.inner.inputs());
            Ok(Tensor::from_vec(
                self.inner.unpack(),
                (n, k),
                &candle_core::Device::Cpu,
            )?)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("a PackedWeight is made on x86-64 only")
    }
}

/// `activation(x · wᵀ + bias)` for a packed weight through the wide kernel; `None` where this
/// product does not take the kernel (`wide` false under `policy`), for the caller to take another
/// way.
pub fn linear_packed(
    policy: &Policy,
    x: &Tensor,
    w: &PackedWeight,
    epilogue: Epilogue<'_>,
) -> Option<Result<Tensor>> {
    let (rows, _) = x.dims2().ok()?;
    if x.dtype() != candle_core::DType::F32 || !x.device().is_cpu() || !wide(policy, rows) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        Some((|| {
            Ok(x.contiguous()?.apply_op1_no_bwd(&MatmulTPacked {
                w,
                epilogue,
                stats: policy.stats(),
            })?)
        })())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, epilogue);
        unreachable!("wide() is false off x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
struct MatmulTPacked<'a> {
    w: &'a PackedWeight,
    epilogue: Epilogue<'a>,
    stats: &'a Stats,
}

#[cfg(target_arch = "x86_64")]
impl CustomOp1 for MatmulTPacked<'_> {
    fn name(&self) -> &'static str {
        "gitcap-matmul-t-packed"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        x_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let w = &self.w.inner;
        let (&[m, k], CpuStorage::F32(xd), Some((x0, x1))) =
            (x_layout.dims(), xs, x_layout.contiguous_offsets())
        else {
            candle_core::bail!("matmul_t_packed takes a contiguous f32 matrix")
        };
        if k != w.inputs() {
            candle_core::bail!("matmul_t_packed: x has {k} columns, w has {}", w.inputs())
        }
        let n = w.rows();
        self.epilogue.check("matmul_t_packed", m, n)?;
        self.stats.count_kernel_product();
        let out = multiply_wide(
            &xd[x0..x1],
            w.form(),
            super::wide::Weight::Packed(w),
            n,
            m,
            k,
            self.epilogue,
        );
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

struct MatmulTQ8_0<'a> {
    blocks: &'a [u8],
    k: usize,
    epilogue: Epilogue<'a>,
    split: bool,
    policy: &'a Policy,
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
        self.policy.stats().count_kernel_product();
        let w = Q8_0Rows {
            blocks: self.blocks,
            k,
        };
        let n = w.rows();
        self.epilogue.check("matmul_t_quantized", m, n)?;
        let out = multiply_blocked(
            self.policy,
            &xd[x0..x1],
            &w,
            m,
            k,
            self.epilogue,
            self.split,
        );
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

struct MatmulT<'a> {
    epilogue: Epilogue<'a>,
    split: bool,
    /// Which loop takes the product, over how many threads, and where it is counted.
    policy: &'a Policy,
}

impl CustomOp2 for MatmulT<'_> {
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
        let policy = self.policy;
        policy.stats().count_kernel_product();
        let w = DenseRows { w: &wd[w0..w1], k };
        debug_assert_eq!(w.rows(), n);
        self.epilogue.check("matmul_t", m, n)?;
        // The wasm build's loops first: natively they run only when the tests ask for them.
        let out = if applies(policy, m) {
            multiply_blocked(policy, &xd[x0..x1], &w, m, k, self.epilogue, self.split)
        } else if few_wide(policy, m) {
            #[cfg(target_arch = "x86_64")]
            {
                let form = wide_form(policy).expect("few_wide() checked the CPU");
                multiply_few_wide(&xd[x0..x1], form, w.w, n, m, k, self.epilogue)
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("few_wide() is false off x86-64")
        } else if wide_takes(policy, m) {
            #[cfg(target_arch = "x86_64")]
            {
                multiply_wide(
                    &xd[x0..x1],
                    wide_form(policy).expect("wide() checked the CPU"),
                    super::wide::Weight::Rows(w.w),
                    n,
                    m,
                    k,
                    self.epilogue,
                )
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("wide() is false off x86-64")
        } else {
            multiply_few(policy, &xd[x0..x1], &w, m, k, self.epilogue, self.split)
        };
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

/// c (m × n) = epilogue(x (m × k) · w (n × k)ᵀ), all row-major, one block of output columns at a
/// time: for each `KC` inputs, each panel of the block is packed and every row accumulated into it.
/// When `split`, the blocks are shared out over the policy's threads.
fn multiply_blocked(
    policy: &Policy,
    x: &[f32],
    w: &impl WeightRows,
    m: usize,
    k: usize,
    epilogue: Epilogue<'_>,
    split: bool,
) -> Vec<f32> {
    assert!(x.len() == m * k);
    let n = w.rows();
    let p = Product {
        x,
        m,
        k,
        n,
        epilogue,
    };
    by_column_blocks(
        policy,
        split,
        m,
        n,
        NW,
        MIN_BLOCK_PANELS,
        |out, j_start, j_end| {
            // SAFETY: by_column_blocks hands each column range to one call only.
            unsafe { out.multiply_block(&p, w, j_start, j_end) };
        },
    )
}

/// c (m × n) = epilogue(x (m × k) · w (n × k)ᵀ) through the wide kernel, in blocks of output
/// columns shared out over rayon's pool (candle's, which natively has one thread per core): each
/// block starts from the bias, gets the product added and then the activation. Every output value
/// is computed the same way whichever block holds it, so the result does not depend on the
/// number of threads.
#[cfg(target_arch = "x86_64")]
fn multiply_wide(
    x: &[f32],
    form: super::wide::Form,
    w: super::wide::Weight,
    n: usize,
    m: usize,
    k: usize,
    epilogue: Epilogue<'_>,
) -> Vec<f32> {
    {
        use super::wide;
        let mut c = Vec::with_capacity(m * n);
        let out = SharedOut(c.as_mut_ptr());
        let packed_x = wide::PackedX::new(form, x, m, k);
        let block = |j_start: usize, j_end: usize| {
            // SAFETY: each column range goes to one call only; rows are inside the output.
            unsafe { out.start_block(m, n, j_start, j_end, epilogue.bias) };
            let row = |i: usize| unsafe { out.row(i, n, j_start, j_end) };
            // SAFETY: `wide` checked the CPU; this call owns columns j_start..j_end.
            unsafe { wide::add_product(out.0, &packed_x, w, n, j_start, j_end) };
            if epilogue.finishes() {
                for i in 0..m {
                    epilogue.finish_row(row(i), i, n, j_start);
                }
            }
        };
        let nr = form.nr();
        let units = n.div_ceil(nr);
        let threads = rayon::current_num_threads();
        // A few blocks per thread, so that a thread slowed by something else takes fewer; none
        // narrower than 4 panels, which would re-pack x more often than they compute with it.
        let blocks = (threads * 4).min(units / 4).max(1);
        if blocks == 1 || threads == 1 {
            block(0, n);
        } else {
            use rayon::prelude::*;
            (0..blocks).into_par_iter().for_each(|b| {
                let start = (units * b / blocks * nr).min(n);
                let end = (units * (b + 1) / blocks * nr).min(n);
                if start < end {
                    block(start, end);
                }
            });
        }
        // SAFETY: the blocks cover columns 0..n (the last ends at units · NR clipped to n) and
        // each wrote all of its values first.
        unsafe { c.set_len(m * n) };
        c
    }
}

/// c (m × n) = epilogue(x (m × k) · w (n × k)ᵀ) for few rows through the wide matrix-vector
/// loop, in blocks of output columns (weight rows) shared out over rayon's pool, each block
/// starting from the bias. Every output value is computed the same way whichever block holds
/// it, so the result does not depend on the number of threads.
#[cfg(target_arch = "x86_64")]
fn multiply_few_wide(
    x: &[f32],
    form: super::wide::Form,
    w: &[f32],
    n: usize,
    m: usize,
    k: usize,
    epilogue: Epilogue<'_>,
) -> Vec<f32> {
    /// Weight rows per block at least: each block is one hand-out to the pool.
    const MIN_BLOCK_ROWS: usize = 64;
    let mut c = Vec::with_capacity(m * n);
    let out = SharedOut(c.as_mut_ptr());
    let block = |j_start: usize, j_end: usize| {
        // SAFETY: each column range goes to one call only; rows are inside the output.
        unsafe { out.start_block(m, n, j_start, j_end, epilogue.bias) };
        // SAFETY: few_wide checked the CPU; this call owns columns j_start..j_end.
        unsafe { form.add_dots(out.0, x, m, k, w, n, j_start, j_end) };
        if epilogue.finishes() {
            for i in 0..m {
                // SAFETY: as above.
                epilogue.finish_row(unsafe { out.row(i, n, j_start, j_end) }, i, n, j_start);
            }
        }
    };
    let threads = rayon::current_num_threads();
    let blocks = (threads * 8).min(n / MIN_BLOCK_ROWS).max(1);
    if blocks == 1 || threads == 1 {
        block(0, n);
    } else {
        use rayon::prelude::*;
        (0..blocks).into_par_iter().for_each(|b| {
            let (start, end) = (n * b / blocks, n * (b + 1) / blocks);
            if start < end {
                block(start, end);
            }
        });
    }
    // SAFETY: the blocks cover columns 0..n and each wrote all of its values first.
    unsafe { c.set_len(m * n) };
    c
}

/// An m × n output filled by `block(out, start, end)` over column ranges that cover 0..n once, each
/// a whole number of `unit` columns (and at least `min_units` of them) but the last; shared out
/// over the policy's threads when `split` (`parallel::for_each_piece_over`). The output is not
/// zeroed first: a block writes every value of its columns before reading any
/// (`SharedOut::start_block`).
pub(super) fn by_column_blocks(
    policy: &Policy,
    split: bool,
    m: usize,
    n: usize,
    unit: usize,
    min_units: usize,
    block: impl Fn(SharedOut, usize, usize) + Sync,
) -> Vec<f32> {
    let workers = if split { policy.parts() } else { 1 };
    by_column_blocks_over(policy.stats(), workers, m, n, unit, min_units, block)
}

/// `by_column_blocks` shared out over `workers` threads of the pool, counted in `stats`.
pub(super) fn by_column_blocks_over(
    stats: &Stats,
    workers: usize,
    m: usize,
    n: usize,
    unit: usize,
    min_units: usize,
    block: impl Fn(SharedOut, usize, usize) + Sync,
) -> Vec<f32> {
    let mut c = Vec::with_capacity(m * n);
    let out = SharedOut(c.as_mut_ptr());
    super::parallel::for_each_piece_over(stats, workers, n, unit, min_units, |start, len| {
        block(out, start, start + len)
    });
    // SAFETY: every block has returned, having written each value of its columns (`block`'s
    // contract), and the blocks cover 0..n: c is initialised and this thread's alone again.
    unsafe { c.set_len(m * n) };
    c
}

/// x (m × k) times an n-row weight, and what to do with the result.
struct Product<'a> {
    x: &'a [f32],
    m: usize,
    k: usize,
    n: usize,
    epilogue: Epilogue<'a>,
}

/// A product's output shared by the threads that fill disjoint column blocks of it.
#[derive(Clone, Copy)]
pub(super) struct SharedOut(*mut f32);

// SAFETY: every thread writes only its own columns (see `by_column_blocks`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Writes columns `j_start..j_end` of every row of an m × n output: the bias's values, or
    /// zero. A block's first step: outputs are allocated without being zeroed, since zeroing the
    /// whole of one was a pass on one thread before the product (1% of git-large's image
    /// encoder natively), and each block now starts its own columns on its own thread.
    ///
    /// # Safety
    /// The columns lie inside the output and no other thread touches them during the call.
    pub(super) unsafe fn start_block(
        &self,
        m: usize,
        n: usize,
        j_start: usize,
        j_end: usize,
        bias: Option<&[f32]>,
    ) {
        let len = j_end - j_start;
        for i in 0..m {
            // SAFETY: the caller's contract; raw writes, since the values may not be initialised.
            unsafe {
                let dst = self.0.add(i * n + j_start);
                match bias {
                    Some(bias) => {
                        std::ptr::copy_nonoverlapping(bias[j_start..j_end].as_ptr(), dst, len)
                    }
                    None => std::ptr::write_bytes(dst, 0, len),
                }
            }
        }
    }

    /// Row i's columns j_start..j_end of an n-column output.
    ///
    /// # Safety
    /// They lie inside the output and no other thread touches them while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn row(
        &self,
        i: usize,
        n: usize,
        j_start: usize,
        j_end: usize,
    ) -> &mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(i * n + j_start), j_end - j_start) }
    }

    /// Columns `j_start..j_end` of c (m × n) for few rows: each weight row dotted with every row
    /// of x, plus the bias, then the activation.
    ///
    /// # Safety
    /// As `multiply_block`.
    unsafe fn dot_block(self, p: &Product, w: &DenseRows, j_start: usize, j_end: usize) {
        let &Product {
            x,
            m,
            k,
            n,
            epilogue,
        } = p;
        let rows = w.w[j_start * k..j_end * k].chunks_exact(k);
        for (j, row) in (j_start..j_end).zip(rows) {
            let bias = epilogue.bias.map_or(0.0, |b| b[j]);
            for (i, xs) in x.chunks_exact(k).enumerate() {
                // SAFETY: the caller's contract; one value of this block's columns.
                unsafe { *self.0.add(i * n + j) = dot(xs, row) + bias };
            }
        }
        if epilogue.finishes() {
            for i in 0..m {
                // SAFETY: the caller's contract.
                epilogue.finish_row(unsafe { self.row(i, n, j_start, j_end) }, i, n, j_start);
            }
        }
    }

    /// Columns `j_start..j_end` of c (m × n): the bias, then every `KC` inputs' contribution, then
    /// the activation.
    ///
    /// # Safety
    /// `self.0` points to m × n floats of which no other thread touches columns `j_start..j_end`
    /// during the call.
    unsafe fn multiply_block(self, p: &Product, w: &impl WeightRows, j_start: usize, j_end: usize) {
        let &Product {
            x,
            m,
            k,
            n,
            epilogue,
        } = p;
        // SAFETY: the caller's contract.
        unsafe { self.start_block(m, n, j_start, j_end, epilogue.bias) };
        // SAFETY: row i's columns j_start..j_end lie inside the m × n output and are this call's.
        let row = |i: usize| unsafe { self.row(i, n, j_start, j_end) };
        let mut panel = vec![0f32; KC * NW];
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for j0 in (j_start..j_end).step_by(NW) {
                let nw = NW.min(j_end - j0);
                if nw < NW {
                    panel.fill(0.0);
                }
                w.pack(&mut panel, k0, kc, j0, nw);
                let mut i = 0;
                while i + MR <= m {
                    // SAFETY: rows i..i + MR, columns j0..j0 + nw: inside this call's block.
                    unsafe { tile::<MR>(self.0, x, &panel, i, j0, nw, k0, kc, n, k) };
                    i += MR;
                }
                while i < m {
                    // SAFETY: as above, one row.
                    unsafe { tile::<1>(self.0, x, &panel, i, j0, nw, k0, kc, n, k) };
                    i += 1;
                }
            }
        }
        if epilogue.finishes() {
            for i in 0..m {
                epilogue.finish_row(row(i), i, n, j_start);
            }
        }
    }
}

/// `multiply_blocked` for a few rows: each weight row is read from memory once and dotted with
/// every row of x while it is in L1.
fn multiply_few(
    policy: &Policy,
    x: &[f32],
    w: &DenseRows,
    m: usize,
    k: usize,
    epilogue: Epilogue<'_>,
    split: bool,
) -> Vec<f32> {
    let n = w.rows();
    assert!(x.len() == m * k && w.w.len() == n * k);
    let p = Product {
        x,
        m,
        k,
        n,
        epilogue,
    };
    by_column_blocks(
        policy,
        split,
        m,
        n,
        1,
        MIN_FEW_BLOCK_COLUMNS,
        |out, j_start, j_end| {
            // SAFETY: by_column_blocks hands each column range to one call only.
            unsafe { out.dot_block(&p, w, j_start, j_end) };
        },
    )
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
///
/// # Safety
/// c points to an n-column matrix of at least i + R rows, whose rows i..i + R, columns
/// j0..j0 + nw no other thread touches during the call.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile<const R: usize>(
    c: *mut f32,
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
        // SAFETY: the caller's contract.
        let out = unsafe { std::slice::from_raw_parts_mut(c.add((i + a) * n + j0), nw) };
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

    /// Attention's scaled scores: the scaling done in the kernel's epilogue gives the bits of the
    /// product scaled by candle's op afterwards, with a scale that is not a power of two and rows
    /// that are not a multiple of any tile. Natively the product runs on the wide kernel where
    /// the CPU has it, on candle's otherwise (both sides the same way).
    #[test]
    fn scaled_scores_have_the_bits_of_scaling_after() {
        use candle_core::Device;
        let x = Tensor::randn(0f32, 3.0, (257, 64), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 3.0, (131, 64), &Device::Cpu).unwrap();
        let scale = 0.1;
        let policy = Policy::default();
        let want = (matmul_t(&policy, &x, &w).unwrap() * scale).unwrap();
        let got = matmul_t_scaled(&policy, &x, &w, scale).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        assert_eq!(bits(&got), bits(&want));
    }

    /// A residual in the epilogue is added after the bias and the activation, with the bits of
    /// candle's add on the finished output, in every loop (blocked, few rows, the wide kernel with rows
    /// or a packed weight, the integer kernel) and however the columns are shared out; a
    /// residual of the wrong size is refused.
    #[test]
    fn residual_is_added_last_with_the_bits_of_candles_add() {
        use candle_core::quantized::QTensor;
        use candle_core::Device;
        let relu: InPlace = &|xs: &mut [f32]| {
            xs.iter_mut().for_each(|x| *x = x.max(0.0));
        };
        for &(m, n, k) in &[(10, 1000, 64), (9, 100, 608), (3, 13, 32), (27, 70, 96)] {
            let (x, wv) = matrices(m, n, k);
            let bias: Vec<f32> = (0..n).map(|j| (j % 17) as f32 - 8.0).collect();
            let residual: Vec<f32> = (0..m * n)
                .map(|i| ((i * 6151) % 101) as f32 * 0.37 - 17.0)
                .collect();
            let plain = Epilogue {
                bias: Some(&bias),
                activation: Some(relu),
                residual: None,
            };
            let with = Epilogue {
                residual: Some(&residual),
                ..plain
            };
            let added = |c: Vec<f32>| -> Vec<u32> {
                let r = Tensor::from_vec(residual.clone(), (m, n), &Device::Cpu).unwrap();
                let c = Tensor::from_vec(c, (m, n), &Device::Cpu).unwrap();
                let sum = (r + c).unwrap().flatten_all().unwrap();
                sum.to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            let bits = |c: Vec<f32>| -> Vec<u32> { c.iter().map(|v| v.to_bits()).collect() };
            let w = DenseRows { w: &wv, k };
            let q = QTensor::quantize(
                &Tensor::from_vec(wv.clone(), (n, k), &Device::Cpu).unwrap(),
                GgmlDType::Q8_0,
            )
            .unwrap();
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            for parts in [1, 3] {
                let policy = Policy::default().with_parts(parts);
                let split = parts > 1;
                let what = format!("({m},{n},{k}) over {parts}");
                let blocked = |e| multiply_blocked(&policy, &x, &w, m, k, e, split);
                assert_eq!(bits(blocked(with)), added(blocked(plain)), "blocked {what}");
                let few = |e| multiply_few(&policy, &x, &w, m, k, e, split);
                assert_eq!(bits(few(with)), added(few(plain)), "few rows {what}");
                let int8 = |epilogue| -> Vec<f32> {
                    let c = crate::model::int8::linear(&policy, &xt, &q, epilogue, split).unwrap();
                    c.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                };
                assert_eq!(bits(int8(with)), added(int8(plain)), "int8 {what}");
            }
            #[cfg(target_arch = "x86_64")]
            for form in super::super::wide::Form::ALL
                .into_iter()
                .filter(|f| f.available())
            {
                use super::super::wide::{PackedWeight, Weight};
                let packed = PackedWeight::new(form, &wv, n, k);
                for weight in [Weight::Rows(&wv), Weight::Packed(&packed)] {
                    let wide = |e| multiply_wide(&x, form, weight, n, m, k, e);
                    assert_eq!(
                        bits(wide(with)),
                        added(wide(plain)),
                        "{form:?} ({m},{n},{k})"
                    );
                }
            }
            let short = &residual[1..];
            let err = crate::model::int8::linear(
                &Policy::default(),
                &xt,
                &q,
                Epilogue {
                    residual: Some(short),
                    ..plain
                },
                false,
            )
            .unwrap_err();
            assert!(err.to_string().contains("residual does not match"), "{err}");
        }
    }

    /// q8_0 blocks packed straight into panels give the product with the expanded weight.
    #[test]
    fn q8_0_rows_match_their_expansion() {
        use candle_core::quantized::QTensor;
        use candle_core::Device;
        let policy = Policy::default();
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
            let c = multiply_blocked(&policy, &x, &w, m, k, Epilogue::default(), false);
            let got = Tensor::from_vec(c, (m, n - 3), &Device::Cpu).unwrap();
            let err = crate::model::max_abs_diff(&got, &want);
            assert!(err < 1e-3, "{m} rows: {err}");
        }
    }

    use crate::model::test_matrices as matrices;

    /// Asserts c (m × n) is act(x · wᵀ + bias) by f64 dot products, to f32 accuracy.
    fn assert_product(c: &[f32], x: &[f32], w: &DenseRows, m: usize, bias: &[f32], relu: bool) {
        let (n, k) = (w.rows(), w.k);
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|p| x[i * k + p] as f64 * w.w[j * k + p] as f64)
                    .sum::<f64>()
                    + bias.get(j).copied().unwrap_or(0.0) as f64;
                let want = if relu { dot.max(0.0) } else { dot };
                let got = c[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "({m},{n},{k}) [{i},{j}]: {got} vs {want}"
                );
            }
        }
    }

    /// Shared out over threads in column blocks (ragged last block and panel, more threads than
    /// blocks), with the bias and an activation applied per block: bit for bit what one thread
    /// computes, and that is act(x · wᵀ + b); for both loops.
    #[test]
    fn column_blocks_over_threads_give_one_threads_result() {
        let relu: InPlace = &|xs: &mut [f32]| {
            xs.iter_mut().for_each(|x| *x = x.max(0.0));
        };
        for &(m, n, k, parts) in &[(10, 1000, 70, 2), (9, 100, 600, 3), (8, 13, 5, 4)] {
            let (x, w) = matrices(m, n, k);
            let bias: Vec<f32> = (0..n).map(|j| (j % 17) as f32 - 8.0).collect();
            let w = DenseRows { w: &w, k };
            let epilogue = Epilogue {
                bias: Some(&bias),
                activation: Some(relu),
                residual: None,
            };
            for few_rows in [false, true] {
                let multiply = |policy: &Policy, split| match few_rows {
                    false => multiply_blocked(policy, &x, &w, m, k, epilogue, split),
                    true => multiply_few(policy, &x, &w, m, k, epilogue, split),
                };
                let splits_here = match few_rows {
                    false => n.div_ceil(NW) >= 2 * MIN_BLOCK_PANELS,
                    true => n >= 2 * MIN_FEW_BLOCK_COLUMNS,
                };
                let one = multiply(&Policy::default(), false);
                let threads = Policy::default().with_parts(parts);
                let shared = multiply(&threads, true);
                let split = threads.stats().splits() > 0;
                assert_eq!(split, splits_here, "({m},{n},{k})");
                assert!(one == shared, "({m},{n},{k}) over {parts} threads");
                assert_product(&one, &x, &w, m, &bias, true);
            }
        }
    }

    /// A split policy shares out decoding's single row for q8_0 weights through the integer
    /// kernel, not for f32 ones; `?split_rows` moves both bounds.
    #[test]
    fn decoding_splits_only_through_the_integer_kernel() {
        use candle_core::quantized::{QMatMul, QTensor};
        use candle_core::{DType, Device};
        let (n, k) = (2048, 1024);
        let w = Tensor::ones((n, k), DType::F32, &Device::Cpu).unwrap();
        let q8_0 = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap();
        let f32 = QMatMul::Tensor(w);
        let threads = Policy::default().with_parts(2).with_int8_min_rows(1);
        assert!(splits(&threads, &q8_0, 1, k, n));
        assert!(!splits(&threads, &f32, 1, k, n));
        assert!(splits(&threads, &f32, 8, k, n));
        let moved = threads.clone().with_min_split_rows(4);
        assert!(!splits(&moved, &q8_0, 1, k, n));
        assert!(splits(&moved, &q8_0, 4, k, n));
        // Still too small to be worth handing out, or only one thread.
        assert!(!splits(&threads, &q8_0, 1, k, 64));
        assert!(!splits(
            &Policy::default().with_int8_min_rows(1),
            &q8_0,
            1,
            k,
            n
        ));
    }

    /// Every edge: rows not a multiple of MR, columns not a multiple of NW, inputs spanning
    /// several KC blocks with a remainder; against a plain f64 dot product.
    #[test]
    fn matches_dot_products_at_every_edge() {
        let policy = Policy::default();
        for &(m, n, k) in &[
            (1, 1, 1),
            (2, 13, 5),
            (7, 25, KC + 3),
            (3, 12, 2 * KC),
            (10, 40, 77),
            (4, 30, 1024),
            (1, 7, 33),
        ] {
            let (x, w) = matrices(m, n, k);
            let w = DenseRows { w: &w, k };
            for c in [
                multiply_blocked(&policy, &x, &w, m, k, Epilogue::default(), false),
                multiply_few(&policy, &x, &w, m, k, Epilogue::default(), false),
            ] {
                assert_product(&c, &x, &w, m, &[], false);
            }
        }
    }
}
