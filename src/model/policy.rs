//! How a model computes: which kernel takes which product, whether the model shares its products
//! out over threads itself, and how many times each path ran.
//!
//! A `Policy` is a plain value the model is given at load (`Git::new`) and may be given anew
//! (`Git::set_policy`); the model passes it down its forward path to every layer and kernel, so
//! two models in one process can run different policies at the same time (the tests do). The
//! defaults are the fastest choices measured for the target the crate is built for; the setters
//! exist for the front ends' tuning knobs and for the tests, which run the wasm build's paths
//! natively and compare each kernel with candle's.
//!
//! Every product gives the same bits whichever thread computes it and however a policy shares it
//! out (tests/split.rs); a policy that sends a product to another kernel changes only float
//! rounding.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;

use super::int8::Activations;

/// Products smaller than this many multiply-adds run whole even when the model is split: handing
/// work to the pool costs more than it saves (decoding one token's 1024×1024 projections).
const DEFAULT_MIN_SPLIT_MACS: usize = 1 << 21;

/// Products of fewer input rows than this run whole even when the model is split: decoding (one
/// row per beam) streams each weight once and is bound by memory, not arithmetic; in Chromium on 2
/// threads, splitting it made f32 tokens slower (13–21 ms against 11–17 ms on one thread).
const DEFAULT_MIN_SPLIT_ROWS: usize = 8;

/// q8_0 products through the integer kernel split from this many rows, decoding's included: its
/// few-rows loop reads each weight row as one stream, and two threads read two. In Chromium on 2
/// threads (Intel Xeon, git-large q8_0) a token took 12.2–14.4 ms split, 16.3–17.3 ms whole;
/// splitting products from 2¹⁹ multiply-adds (the attention's projections too) rather than 2²¹
/// was no better (13.5–13.9 ms).
const DEFAULT_MIN_SPLIT_ROWS_INT8: usize = 1;

/// In wasm, from this many input rows on, a quantized weight is expanded to f32 for the product
/// (one weight, or one thread's block of it, at a time, so memory stays quantized): there candle's
/// quantized kernels run at about half the speed of its f32 matrix kernel, which wins once the
/// expansion is shared by enough rows (the image encoder's 257); decoding a token, or a few beams,
/// keeps the quantized kernels, which read 4× fewer bytes. Natively the same bound holds for q8_0
/// weights on x86-64 CPUs without VNNI (`expands_q8_0_natively`); elsewhere weights stay quantized.
const DEFAULT_DEQUANTIZE_MIN_ROWS: usize = 32;

/// Whether, natively, q8_0 products of many rows are better expanded to f32. candle's q8_0 kernels
/// repack the weight into VNNI tiles on CPUs with AVX-512 VNNI or AVX-VNNI (the encoder in q8_0
/// as fast as in f32: 0.65 s both, AMD EPYC with AVX-512, 2 threads); without VNNI they fall back
/// to a block-by-block dot product that, on an AVX2-only AMD EPYC, took the encoder 9.1 s against
/// 2.4 s in f32. Other types keep candle's kernels (q4_K repacks on AVX2 too).
fn expands_q8_0_natively() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = (std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vnni"))
            || (std::is_x86_feature_detected!("avxvnni") && std::is_x86_feature_detected!("avx2"));
        !vnni
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// In wasm, products of this many rows or more (the encoder's 257, a prompt) go to the model's
/// own blocked SIMD kernel (`matmul`), which beats candle's f32 kernel there; natively candle's
/// kernels are faster, so the kernel runs only when the tests ask for it.
const DEFAULT_KERNEL_MIN_ROWS: usize = if cfg!(target_arch = "wasm32") {
    8
} else {
    usize::MAX
};

/// In wasm, products of fewer rows than this (decoding) take `matmul`'s matrix-vector loop,
/// which streams each weight row once. A bound of its own, so that the page's `?kernel_min=N`
/// moves only the blocked kernel's: the rows between go to candle.
const DEFAULT_FEW_ROWS_BELOW: usize = if cfg!(target_arch = "wasm32") { 8 } else { 0 };

/// Which form of the native wide f32 kernel a policy lets products take (x86-64 only;
/// elsewhere every choice means candle's kernels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WideKernel {
    /// Candle's kernels.
    Off,
    /// The AVX2 + FMA form, also where the CPU has AVX-512 (candle's kernels without AVX2).
    Avx2,
    /// The widest form this CPU runs: AVX-512 F, else AVX2 with FMA, else candle's kernels.
    Widest,
}

/// The knobs of the model's computation; see the module's documentation. Cloning a policy is
/// cheap, and a clone shares the original's statistics (`stats`): a model counts into the policy
/// value it was given and into every clone of it. `Policy::default()` starts statistics of its own.
#[derive(Clone, Debug)]
pub struct Policy {
    parts: usize,
    min_split_macs: usize,
    min_split_rows: Option<usize>,
    dequantize_min_rows: Option<usize>,
    kernel_min_rows: usize,
    few_rows_below: usize,
    wide_kernel: WideKernel,
    portable_int8: bool,
    int8_min_rows: Option<usize>,
    int8_activations: Activations,
    text_int8_activations: Activations,
    int8_levels_exact: bool,
    own_quick_gelu: bool,
    own_softmax: bool,
    stats: Arc<Stats>,
}

impl Default for Policy {
    /// The fastest choices for this target: natively the model runs whole on candle's kernels (the
    /// AVX-512 and integer kernels where the CPU has them); in wasm on its own SIMD kernels.
    fn default() -> Self {
        Policy {
            parts: 1,
            min_split_macs: DEFAULT_MIN_SPLIT_MACS,
            min_split_rows: None,
            dequantize_min_rows: None,
            kernel_min_rows: DEFAULT_KERNEL_MIN_ROWS,
            few_rows_below: DEFAULT_FEW_ROWS_BELOW,
            wide_kernel: WideKernel::Widest,
            portable_int8: false,
            int8_min_rows: None,
            int8_activations: Activations::default(),
            text_int8_activations: Activations::default(),
            int8_levels_exact: false,
            own_quick_gelu: true,
            own_softmax: cfg!(target_arch = "wasm32"),
            stats: Arc::default(),
        }
    }
}

impl Policy {
    /// Makes the model split its large products into `n` parts (0 or 1: whole), sharing out each
    /// large linear layer's output columns and each attention's heads over the rayon pool
    /// (`parallel`). For the threaded wasm build, whose candle kernels see one CPU (`startThreads`
    /// sets it), and for the native tests of that path; natively candle threads its own kernels.
    pub fn with_parts(mut self, n: usize) -> Self {
        self.parts = n;
        self
    }

    /// Products of fewer multiply-adds than `macs` run whole even when the model is split (default
    /// 2²¹): the test fixtures' products are all small, and the tests must run the split path.
    pub fn with_min_split_macs(mut self, macs: usize) -> Self {
        self.min_split_macs = macs;
        self
    }

    /// Products of fewer input rows than `rows` run whole even when the model is split, whatever
    /// their kernel (default: 8, so decoding's are not split, but 1 for the integer kernel's), so
    /// that the tests can split decoding's products too and the page can move the bound.
    pub fn with_min_split_rows(mut self, rows: usize) -> Self {
        self.min_split_rows = Some(rows);
        self
    }

    /// From `rows` input rows on, a quantized weight of any type is expanded to f32 for the product
    /// (default: 32 in wasm; natively 32 for q8_0 on x86-64 CPUs without VNNI, otherwise never),
    /// so that the native tests can run the wasm build's path.
    pub fn with_dequantize_min_rows(mut self, rows: usize) -> Self {
        self.dequantize_min_rows = Some(rows);
        self
    }

    /// Products of `rows` input rows or more go to the model's own blocked kernel (`matmul`; wasm:
    /// 8, natively never), so that the native tests can run the wasm build's path and the page can
    /// move the bound (`?kernel_min=`; a huge value turns the kernel off, for comparisons).
    pub fn with_kernel_min_rows(mut self, rows: usize) -> Self {
        self.kernel_min_rows = rows;
        self
    }

    /// Products of fewer input rows than `rows` take `matmul`'s matrix-vector loop (wasm: 8,
    /// natively none), so that the native tests can run the wasm build's decoding path.
    pub fn with_few_rows_below(mut self, rows: usize) -> Self {
        self.few_rows_below = rows;
        self
    }

    /// Which form of the wide f32 kernel (natively on x86-64: `matmul`'s `wide/`) products of a
    /// few rows or more take (default: the widest this CPU runs). `Off` keeps them on candle's
    /// kernels, for comparisons (the tests, `GITCAP_WIDE=off` in the CLI); `Avx2` measures and
    /// tests the AVX2 form on CPUs that also have AVX-512. The image encoder's weights are packed
    /// at load in the form the policy given then chooses; a later policy keeps that form, or,
    /// turning the kernel off, gives the same results more slowly.
    pub fn with_wide_kernel(mut self, kernel: WideKernel) -> Self {
        self.wide_kernel = kernel;
        self
    }

    /// Makes q8_0 products through the integer kernel run its portable form (`true`) instead of
    /// the fastest one this build and CPU have (`false`, the default), so that the tests can
    /// compare them and the CLI can give the browser's bits (`GITCAP_INT8=portable`).
    pub fn with_portable_int8(mut self, portable: bool) -> Self {
        self.portable_int8 = portable;
        self
    }

    /// Makes q8_0 products of `rows` input rows or more take the integer kernel (`int8`) in
    /// whatever form it runs, so that the tests can run it anywhere and the page can move the
    /// bound (a huge value turns it off, for comparisons). By default every product takes it in
    /// both wasm builds, products of 8 rows or more on CPUs with AVX-512 VNNI, others never.
    pub fn with_int8_min_rows(mut self, rows: usize) -> Self {
        self.int8_min_rows = Some(rows.max(1));
        self
    }

    /// How the integer kernel quantizes the activations (levels clamped to 1..=127, and capped by
    /// the form: relaxed SIMD takes 63 where the engine's dot is exact for 7-bit operands only,
    /// `int8::RelaxedDot`), for the accuracy measurements and to give that relaxed SIMD page's
    /// bits natively (`GITCAP_INT8=relaxed`).
    pub fn with_int8_activations(mut self, a: Activations) -> Self {
        self.int8_activations = Activations {
            levels: a.levels.clamp(1, 127),
            ..a
        };
        self
    }

    /// How the integer kernel quantizes the text decoder's activations (default ±127 per block of
    /// 32). Unlike the image encoder's, these levels are not capped by the fastest form: the text
    /// decoder's products take a form that can hold them (in the relaxed SIMD build, where the
    /// engine's dot is exact for 7-bit operands only, SIMD128's i16 dot instead of relaxed SIMD's
    /// ±63; where it multiplies full bytes exactly, relaxed SIMD). The decoder's quantization is most of the final
    /// logits' error: on git-large (random weights, the shared images) ±63 everywhere gave
    /// 2.15e-2 mean / 2.34e-2 max relative error against f32, above ONNX Runtime's int8 model's
    /// 1.78e-2 / 2.12e-2, and ±63 in the encoder with ±127 in the decoder 1.66e-2 / 1.94e-2
    /// (bench/peer/README.md), for the cost of the decoder's image rows (a seventh of the
    /// integer work) in the slower form.
    pub fn with_text_int8_activations(mut self, a: Activations) -> Self {
        self.text_int8_activations = Activations {
            levels: a.levels.clamp(1, 127),
            ..a
        };
        self
    }

    /// The policy for the text decoder's products: this one (sharing its statistics) with the
    /// text decoder's activation levels, held exactly (see `with_text_int8_activations`).
    pub fn for_text_decoder(&self) -> Policy {
        Policy {
            int8_activations: self.text_int8_activations,
            int8_levels_exact: true,
            ..self.clone()
        }
    }

    /// Whether quick_gelu and softmax run in the model's own four-lane loops (`elementwise`)
    /// rather than candle's ops (`false`), so that the tests can compare them. By default
    /// quick_gelu runs in them everywhere and softmax in wasm only: natively candle's softmax is
    /// already split over threads and no slower, and keeps the logits nearer transformers'.
    /// `true` runs both in them natively too (the wasm build's choices).
    pub fn with_own_elementwise(mut self, on: bool) -> Self {
        self.own_quick_gelu = on;
        self.own_softmax = on;
        self
    }

    /// How many parts the model splits its large products into (at least 1).
    pub fn parts(&self) -> usize {
        self.parts.max(1)
    }

    pub fn min_split_macs(&self) -> usize {
        self.min_split_macs
    }

    /// The fewest rows of a split product (`with_min_split_rows`).
    pub fn min_split_rows(&self) -> usize {
        self.min_split_rows.unwrap_or(DEFAULT_MIN_SPLIT_ROWS)
    }

    /// The fewest rows of a split product through the integer kernel.
    pub fn min_split_rows_int8(&self) -> usize {
        self.min_split_rows.unwrap_or(DEFAULT_MIN_SPLIT_ROWS_INT8)
    }

    /// From how many input rows a quantized weight of type `dtype` is expanded to f32 for the
    /// product (`with_dequantize_min_rows`).
    pub fn dequantize_min_rows(&self, dtype: GgmlDType) -> usize {
        if let Some(rows) = self.dequantize_min_rows {
            return rows;
        }
        let expands =
            cfg!(target_arch = "wasm32") || (dtype == GgmlDType::Q8_0 && expands_q8_0_natively());
        if expands {
            DEFAULT_DEQUANTIZE_MIN_ROWS
        } else {
            usize::MAX
        }
    }

    pub fn kernel_min_rows(&self) -> usize {
        self.kernel_min_rows
    }

    pub fn few_rows_below(&self) -> usize {
        self.few_rows_below
    }

    pub fn wide_kernel(&self) -> WideKernel {
        self.wide_kernel
    }

    pub fn portable_int8(&self) -> bool {
        self.portable_int8
    }

    /// The integer kernel's row bound if one was set; `None`: the default rule.
    pub fn int8_min_rows(&self) -> Option<usize> {
        self.int8_min_rows
    }

    pub fn int8_activations(&self) -> Activations {
        self.int8_activations
    }

    /// Whether the integer kernel must quantize activations at `int8_activations`' levels,
    /// choosing a form that can (the text decoder's policy), rather than at most at them.
    pub fn int8_levels_exact(&self) -> bool {
        self.int8_levels_exact
    }

    pub fn own_quick_gelu(&self) -> bool {
        self.own_quick_gelu
    }

    pub fn own_softmax(&self) -> bool {
        self.own_softmax
    }

    /// What the model has done under this policy and its clones so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// Counts of the paths products took, so that the tests can check which path ran and the page can
/// report it. Shared by a policy's clones.
#[derive(Debug, Default)]
pub struct Stats {
    kernel_products: AtomicUsize,
    int8_products: AtomicUsize,
    int8_paired_products: AtomicUsize,
    splits: AtomicUsize,
}

impl Stats {
    /// Products computed by `matmul`'s own f32 loops (blocked, few rows, AVX-512).
    pub fn kernel_products(&self) -> usize {
        self.kernel_products.load(Ordering::Relaxed)
    }

    /// Products computed by the integer kernel (`int8`).
    pub fn int8_products(&self) -> usize {
        self.int8_products.load(Ordering::Relaxed)
    }

    /// Of those, the ones that stepped per pair of blocks (`int8::PAIR`: a paired weight, many
    /// rows).
    pub fn int8_paired_products(&self) -> usize {
        self.int8_paired_products.load(Ordering::Relaxed)
    }

    /// Times work was shared out over more than one thread.
    pub fn splits(&self) -> usize {
        self.splits.load(Ordering::Relaxed)
    }

    pub(crate) fn count_kernel_product(&self) {
        self.kernel_products.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_int8_product(&self) {
        self.int8_products.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_int8_paired_product(&self) {
        self.int8_paired_products.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_split(&self) {
        self.splits.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_statistics_and_new_policies_start_their_own() {
        let a = Policy::default().with_parts(3);
        let b = a.clone().with_parts(1);
        b.stats().count_split();
        assert_eq!(a.stats().splits(), 1);
        assert_eq!((a.parts(), b.parts()), (3, 1));
        assert_eq!(Policy::default().stats().splits(), 0);
    }

    #[test]
    fn whole_is_one_part_and_int8_bounds_are_at_least_one() {
        assert_eq!(Policy::default().with_parts(0).parts(), 1);
        let p = Policy::default().with_int8_min_rows(0);
        assert_eq!(p.int8_min_rows(), Some(1));
        let a = Policy::default()
            .with_int8_activations(Activations {
                levels: 500,
                per_row: true,
            })
            .int8_activations();
        assert_eq!((a.levels, a.per_row), (127, true));
    }

    /// A bound set by hand holds for every quantized type; by default natively only q8_0 weights
    /// are ever expanded (candle's other kernels are kept), and never for decoding's single rows.
    #[test]
    fn dequantize_bounds() {
        let set = Policy::default().with_dequantize_min_rows(5);
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            assert_eq!(set.dequantize_min_rows(dtype), 5);
        }
        let default = Policy::default();
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            assert!(default.dequantize_min_rows(dtype) > 1);
        }
        if cfg!(not(target_arch = "wasm32")) {
            assert_eq!(default.dequantize_min_rows(GgmlDType::Q4K), usize::MAX);
        }
    }
}
