//! x · Wᵀ for q8_0 weights in integers: the activations are quantized on the fly, per row and
//! block of 32 inputs like GGML's q8_0 (scale = amax / levels, q = round(x / scale)), and every
//! block's 32 products are summed exactly in i32 before one float step scales them:
//! `acc += (sw · sx) · Σ qw · qx`. The image encoder is almost all such products.
//!
//! The integer sums are exact, and the float steps are the same operations in the same order in
//! every lane form, so every form gives the same bits (the tests check the AVX-512 form against
//! the portable one natively; the wasm tests check the SIMD forms against candle in Chromium):
//!
//! - portable: plain i32 arithmetic; what native tests check everywhere.
//! - wasm SIMD128: weights widened to i16 in the panel, `i32x4.dot_i16x8_s` of one broadcast pair
//!   of x values with four columns × two inputs.
//! - wasm relaxed SIMD: `i32x4.relaxed_dot_i8x16_i7x16_add_s` of four columns × four inputs with a
//!   broadcast four x values. The instruction is defined only while its second operand's top bit
//!   is clear; beyond that each engine does what its CPU's instruction does. So the engine's dot
//!   is probed once (`RelaxedDot`): where it multiplies all eight bits exactly (x86's `vpdpbusd`
//!   reads them unsigned, Arm's `sdot` signed) x keeps ±127, offset by 128 into u8 or as it is;
//!   elsewhere (a saturating `pmaddubsw` sequence) x is quantized to −63..=63 and offset by 64
//!   into 1..=127. Each block's sum starts from −offset · Σw (computed at packing), which removes
//!   the offset exactly.
//! - x86-64 AVX-512 VNNI (`vpdpbusd`, u8 × i8): x offset by 128 into u8, sums starting from
//!   −128 · Σw. Chosen at run time when the CPU has it; natively q8_0 products otherwise stay with
//!   candle's kernels.
//!
//! Layout as in `matmul`: for each `KC` inputs (the same `KC`, so that the float sums are cut in
//! the same places in every form) and each panel of a form's `NW` columns, the weight's blocks are
//! packed into the form's integer layout with one f32 scale and one starting sum per block and
//! column, then every few rows of x accumulate a tile of the output.

use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::matmul::{by_column_blocks_over, Epilogue, SharedOut};
use super::policy::{Policy, Stats};
use crate::Result;

/// Inputs per q8_0 block, for the weight and the quantized activations alike.
pub const BLOCK: usize = 32;
/// Inputs per scale step of a paired weight (`Q8_0Weight::paired`): two q8_0 blocks that share
/// their scale, multiplied by x quantized per 64 inputs, make one exact integer sum and one float
/// step instead of two. The float steps were a quarter of the relaxed SIMD kernel's time; with one
/// per 64 inputs an encode took 13% less (Chromium 156, AMD EPYC Zen 5).
pub const PAIR: usize = 2 * BLOCK;
const Q8_0_BYTES: usize = 2 + BLOCK;
/// Inputs per packed panel: as `matmul`'s kernel.
const KC: usize = 512;
/// Column blocks handed to a thread hold at least this many panels: x's quantized rows are read
/// once per panel.
const MIN_BLOCK_PANELS: usize = 2;

/// The lane forms of the integer kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Portable,
    Simd128,
    RelaxedSimd,
    Avx512Vnni,
}

impl Kernel {
    /// The fastest form this build and CPU can run.
    pub fn best() -> Kernel {
        if cfg!(all(
            target_arch = "wasm32",
            any(target_feature = "relaxed-simd", feature = "relaxed-simd")
        )) {
            return Kernel::RelaxedSimd;
        }
        if cfg!(all(target_arch = "wasm32", target_feature = "simd128")) {
            return Kernel::Simd128;
        }
        #[cfg(target_arch = "x86_64")]
        if x86::has_vnni() {
            return Kernel::Avx512Vnni;
        }
        Kernel::Portable
    }

    /// Whether this form beats the other ways of multiplying q8_0 here: natively the portable
    /// form does not beat candle's AVX2 int8 kernels, so it runs only when the tests ask.
    fn fast(self) -> bool {
        self != Kernel::Portable
    }

    /// The fastest form that takes activations at ±127 where this one does not: SIMD128's i16 dot
    /// (in the same build) where the engine's relaxed dot takes 7-bit x only.
    fn with_full_levels(self) -> Kernel {
        match self {
            Kernel::RelaxedSimd
                if cfg!(all(target_arch = "wasm32", target_feature = "simd128")) =>
            {
                Kernel::Simd128
            }
            Kernel::RelaxedSimd => Kernel::Portable,
            form => form,
        }
    }

    /// The largest |q| of the quantized activations this form takes.
    pub fn max_levels(self) -> i32 {
        match self {
            Kernel::RelaxedSimd => relaxed_dot().max_levels(),
            _ => 127,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kernel::Portable => "portable int8",
            Kernel::Simd128 => "wasm SIMD128 i16 dot",
            Kernel::RelaxedSimd => match relaxed_dot() {
                RelaxedDot::SevenBit => "wasm relaxed SIMD int8 dot, x at ±63",
                RelaxedDot::Unsigned => "wasm relaxed SIMD int8 dot, x at ±127 (u8 × i8)",
                RelaxedDot::Signed => "wasm relaxed SIMD int8 dot, x at ±127 (i8 × i8)",
            },
            Kernel::Avx512Vnni => "AVX-512 VNNI",
        }
    }
}

/// What this engine's relaxed SIMD dot (`i32x4.relaxed_dot_i8x16_i7x16_add_s`) does with a second
/// operand whose top bit is set, which the standard leaves to the engine: V8 on x86 with AVX-VNNI
/// emits `vpdpbusd` (bytes read unsigned, summed exactly), on Arm with dot products `sdot` (read
/// signed, exactly); other lowerings (`pmaddubsw`'s saturating pairs) are exact for 7-bit operands
/// only. Probed once per engine (`relaxed_dot`); the integer sums are exact in every case, so
/// each gives the portable form's bits at the same levels.
/// (The discriminants are what `RELAXED_DOT` holds; 0 there means not probed yet.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RelaxedDot {
    /// Exact for 7-bit operands only: x at ±63, offset by 64 into 1..=127.
    SevenBit = 1,
    /// Bytes as u8, exact: x at ±127, offset by 128 into 1..=255.
    Unsigned = 2,
    /// Bytes as i8, exact: x at ±127 as they are.
    Signed = 3,
}

impl RelaxedDot {
    fn offset(self) -> i32 {
        match self {
            RelaxedDot::SevenBit => 64,
            RelaxedDot::Unsigned => 128,
            RelaxedDot::Signed => 0,
        }
    }

    fn max_levels(self) -> i32 {
        match self {
            RelaxedDot::SevenBit => 63,
            RelaxedDot::Unsigned | RelaxedDot::Signed => 127,
        }
    }

    fn from_code(code: u8) -> Option<RelaxedDot> {
        [
            RelaxedDot::SevenBit,
            RelaxedDot::Unsigned,
            RelaxedDot::Signed,
        ]
        .into_iter()
        .find(|dot| *dot as u8 == code)
    }
}

/// The probed `RelaxedDot`, or the one `set_relaxed_dot` put in its place (0: not probed yet).
static RELAXED_DOT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// How this engine's relaxed dot treats full bytes; `SevenBit` (true everywhere) in builds without
/// relaxed SIMD.
pub fn relaxed_dot() -> RelaxedDot {
    use std::sync::atomic::Ordering;
    if let Some(dot) = RelaxedDot::from_code(RELAXED_DOT.load(Ordering::Relaxed)) {
        return dot;
    }
    #[cfg(all(
        target_arch = "wasm32",
        any(target_feature = "relaxed-simd", feature = "relaxed-simd")
    ))]
    // SAFETY: a relaxed SIMD build runs only in engines that validate relaxed SIMD.
    let dot = unsafe { wasm::probe_relaxed_dot() };
    #[cfg(not(all(
        target_arch = "wasm32",
        any(target_feature = "relaxed-simd", feature = "relaxed-simd")
    )))]
    let dot = RelaxedDot::SevenBit;
    RELAXED_DOT.store(dot as u8, Ordering::Relaxed);
    dot
}

/// Makes the relaxed SIMD form run as if the engine's dot were `dot`, or probes again (`None`):
/// for the tests, which check every encoding in one engine. `Unsigned` or `Signed` where the
/// engine does otherwise gives wrong products.
#[doc(hidden)]
pub fn set_relaxed_dot(dot: Option<RelaxedDot>) {
    RELAXED_DOT.store(
        dot.map_or(0, |dot| dot as u8),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// The form products run under `policy`: the best one, or the portable one where it asks for it;
/// where the policy holds its activation levels exactly (the text decoder's), the best form that
/// takes them.
pub fn kernel(policy: &Policy) -> Kernel {
    let form = if policy.portable_int8() {
        Kernel::Portable
    } else {
        Kernel::best()
    };
    if policy.int8_levels_exact() && form.max_levels() < policy.int8_activations().levels {
        form.with_full_levels()
    } else {
        form
    }
}

/// The forms `policy`'s products run, for the page to show: one, or the image encoder's and the
/// text decoder's where they differ (the relaxed SIMD build).
pub fn describe_forms(policy: &Policy) -> String {
    let (image, text) = (kernel(policy), kernel(&policy.for_text_decoder()));
    if image == text {
        image.describe().to_string()
    } else {
        format!(
            "{} (image encoder), {} (text decoder)",
            image.describe(),
            text.describe()
        )
    }
}

/// How the activations are quantized: the levels (|q| ≤ levels; capped by the form) and whether
/// one scale serves a whole row instead of each block of 32 (for the accuracy measurements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activations {
    pub levels: i32,
    pub per_row: bool,
}

impl Default for Activations {
    fn default() -> Self {
        Activations {
            levels: 127,
            per_row: false,
        }
    }
}

/// How `policy` has the activations of the form `kernel` quantized (levels capped by the form).
fn activations(policy: &Policy, kernel: Kernel) -> Activations {
    let a = policy.int8_activations();
    Activations {
        levels: a.levels.min(kernel.max_levels()),
        per_row: a.per_row,
    }
}

/// Products of at least this many rows go through the integer kernel where its form is fast,
/// unless the policy sets a bound of its own. In wasm every product does (decoding's single rows
/// through the few-rows loop: candle's q8_0 matrix-vector kernel gave 18.6 ms a token in the page,
/// on one thread only); natively decoding keeps candle's AVX2 int8 kernels, the VNNI form's tiles
/// being built for many rows.
const DEFAULT_MIN_ROWS: usize = if cfg!(target_arch = "wasm32") { 1 } else { 8 };

/// Whether a q8_0 product of `rows` rows goes to the integer kernel under `policy`.
pub fn takes(policy: &Policy, rows: usize) -> bool {
    match policy.int8_min_rows() {
        None => kernel(policy).fast() && rows >= DEFAULT_MIN_ROWS,
        Some(min) => rows >= min,
    }
}

/// x (m × k, row-major) quantized per row and block of `block` inputs (`BLOCK`, or `PAIR` for a
/// paired weight): `words` holds each row's values packed four bytes (or two i16) to a word in
/// the form's encoding, `scales` one f32 per row and block.
struct QuantizedX {
    words: Vec<u32>,
    words_per_row: usize,
    scales: Vec<f32>,
    block: usize,
    /// What was added to every value (`offset`): the packing's starting sums take it away.
    offset: i32,
}

/// Round half to even by adding and removing 1.5 · 2²³ (exact for |a| < 2²²): no libm call, so
/// the quantizing loop vectorises in every build.
#[inline(always)]
fn round_even(a: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (a + MAGIC) - MAGIC
}

/// x quantized row by row; over the pool's threads when `workers` > 1 (in the threaded page this
/// ran on one thread while the other waited: 0.24 s of a 1.6 s encode).
fn quantize_x(
    x: &[f32],
    m: usize,
    k: usize,
    kernel: Kernel,
    a: Activations,
    block: usize,
    workers: usize,
) -> QuantizedX {
    assert!((block == BLOCK || block == PAIR) && k.is_multiple_of(block));
    let blocks = k / block;
    let words_per_row = k / per_word(kernel);
    let offset = offset(kernel);
    let mut words = vec![0u32; m * words_per_row];
    let mut scales = vec![0f32; m * blocks];
    let rows = |x: &[f32], words: &mut [u32], scales: &mut [f32]| {
        for ((row, words), scales) in x
            .chunks_exact(k)
            .zip(words.chunks_exact_mut(words_per_row))
            .zip(scales.chunks_exact_mut(blocks))
        {
            quantize_row(row, words, scales, kernel, a, block, offset);
        }
    };
    if workers > 1 && m >= 2 * workers {
        use rayon::prelude::*;
        let chunk = m.div_ceil(4 * workers);
        x.par_chunks(chunk * k)
            .zip(words.par_chunks_mut(chunk * words_per_row))
            .zip(scales.par_chunks_mut(chunk * blocks))
            .for_each(|((x, words), scales)| rows(x, words, scales));
    } else {
        rows(x, &mut words, &mut scales);
    }
    QuantizedX {
        words,
        words_per_row,
        scales,
        block,
        offset,
    }
}

/// Quantized x values to a word: two i16 for the SIMD128 form, four bytes for the others.
fn per_word(kernel: Kernel) -> usize {
    if kernel == Kernel::Simd128 {
        2
    } else {
        4
    }
}

/// One row of x: per block of `block` inputs (or per row) scale = amax / levels and
/// q = x · (levels / amax) rounded half to even, written as the form's words.
fn quantize_row(
    row: &[f32],
    words: &mut [u32],
    scales: &mut [f32],
    kernel: Kernel,
    a: Activations,
    block: usize,
    offset: i32,
) {
    let levels = a.levels as f32;
    let row_amax = if a.per_row { amax(row) } else { 0.0 };
    let per = per_word(kernel);
    let offset = offset as i8;
    for ((xs, words), scale_out) in row
        .chunks_exact(block)
        .zip(words.chunks_exact_mut(block / per))
        .zip(scales.iter_mut())
    {
        let amax = if a.per_row { row_amax } else { amax(xs) };
        let (scale, inverse) = if amax > 0.0 {
            (amax / levels, levels / amax)
        } else {
            (0.0, 0.0)
        };
        *scale_out = scale;
        for (xs, words) in xs
            .chunks_exact(BLOCK)
            .zip(words.chunks_exact_mut(BLOCK / per))
        {
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            // SAFETY: xs holds BLOCK values and words BLOCK / per.
            unsafe {
                wasm::quantize_block(xs, inverse, words, per, offset)
            };
            #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
            quantize_block(xs, inverse, words, per, offset);
        }
    }
}

/// The largest |x| (NaN ignored, as f32::max does).
#[inline(always)]
fn amax(v: &[f32]) -> f32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if v.len().is_multiple_of(4) {
        return wasm::amax(v);
    }
    v.iter().fold(0f32, |m, &x| m.max(x.abs()))
}

/// One block's words, one value at a time: the definition the vector forms must equal bit for bit.
fn quantize_block(xs: &[f32], inverse: f32, words: &mut [u32], per: usize, offset: i8) {
    for (word, xs) in words.iter_mut().zip(xs.chunks_exact(per)) {
        let q = |l: usize| round_even(xs[l] * inverse) as i8;
        *word = if per == 2 {
            u32::from(q(0) as i16 as u16) | u32::from(q(1) as i16 as u16) << 16
        } else {
            u32::from_le_bytes(std::array::from_fn(|l| q(l).wrapping_add(offset) as u8))
        };
    }
}

/// Checks the quantizer this build runs against `quantize_block`, the scalar definition, on
/// `x` (m × k), activations quantized as `policy` says, per block of 32 inputs and (where k
/// allows) of 64, over its threads: the words and scales must be the same bits. For the wasm
/// tests, where the vector form runs.
#[doc(hidden)]
pub fn check_quantizer(
    policy: &Policy,
    x: &[f32],
    m: usize,
    k: usize,
) -> std::result::Result<(), String> {
    let kernel = Kernel::best();
    let a = activations(policy, kernel);
    let per = per_word(kernel);
    let offset = offset(kernel);
    let levels = a.levels as f32;
    for block in [BLOCK, PAIR].into_iter().filter(|b| k.is_multiple_of(*b)) {
        let got = quantize_x(x, m, k, kernel, a, block, policy.parts());
        if got.offset != offset {
            return Err(format!(
                "x offset by {}, the form's offset is {offset}",
                got.offset
            ));
        }
        for (i, row) in x.chunks_exact(k).enumerate() {
            let row_amax = row.iter().fold(0f32, |m, &x| m.max(x.abs()));
            for (b, xs) in row.chunks_exact(block).enumerate() {
                let amax = if a.per_row {
                    row_amax
                } else {
                    xs.iter().fold(0f32, |m, &x| m.max(x.abs()))
                };
                let inverse = if amax > 0.0 { levels / amax } else { 0.0 };
                let mut want = vec![0u32; block / per];
                for (xs, want) in xs
                    .chunks_exact(BLOCK)
                    .zip(want.chunks_exact_mut(BLOCK / per))
                {
                    quantize_block(xs, inverse, want, per, offset as i8);
                }
                let at = i * got.words_per_row + b * block / per;
                if got.words[at..at + block / per] != want[..] {
                    return Err(format!("row {i} block {b} of {block}: words differ"));
                }
                let scale = if amax > 0.0 { amax / levels } else { 0.0 };
                if got.scales[i * (k / block) + b].to_bits() != scale.to_bits() {
                    return Err(format!("row {i} block {b} of {block}: scale differs"));
                }
            }
        }
    }
    Ok(())
}

/// Checks the vector packing of the wasm forms (`wasm::pack`) against `Panel::pack`, the scalar
/// definition, on a q8_0 weight (n rows × k inputs, raw blocks): every panel's words, scales and
/// starting sums must be the same bits, in both forms' layouts. Natively there is no vector
/// packing and nothing to check. For the wasm tests.
#[doc(hidden)]
pub fn check_packing(blocks: &[u8], n: usize, k: usize) -> std::result::Result<(), String> {
    assert_eq!(blocks.len(), n * k / BLOCK * Q8_0_BYTES);
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        fn compare<E: Copy + Default + From<i8> + PartialEq + std::fmt::Debug>(
            w: &Q8_0Weight,
            per: usize,
            offset: i32,
        ) -> std::result::Result<(), String> {
            let (n, k) = (w.rows(), w.k);
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                for j0 in (0..n).step_by(wasm::NW) {
                    let nw = wasm::NW.min(n - j0);
                    let mut want = Panel::<E>::new(wasm::NW);
                    let mut got = Panel::<E>::new(wasm::NW);
                    want.pack(w, k0, kc, j0, nw, wasm::NW, per, offset);
                    wasm::pack(&mut got, w, k0, kc, j0, nw, per, offset);
                    let used = kc * wasm::NW;
                    let at = format!("per {per}, inputs {k0}.., columns {j0}..");
                    if got.values[..used] != want.values[..used] {
                        return Err(format!("{at}: values differ"));
                    }
                    let blocks = kc / BLOCK * wasm::NW;
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    if bits(&got.scales[..blocks]) != bits(&want.scales[..blocks]) {
                        return Err(format!("{at}: scales differ"));
                    }
                    if got.starts[..blocks] != want.starts[..blocks] {
                        return Err(format!("{at}: starting sums differ"));
                    }
                }
            }
            Ok(())
        }
        let w = Q8_0Weight { blocks, k };
        compare::<i16>(&w, 2, 0)?;
        for offset in [64, 128, 0] {
            compare::<i8>(&w, 4, offset)?;
        }
    }
    Ok(())
}

/// What the form adds to each quantized x value to make it an operand its instruction takes.
fn offset(kernel: Kernel) -> i32 {
    match kernel {
        Kernel::RelaxedSimd => relaxed_dot().offset(),
        Kernel::Avx512Vnni => 128,
        Kernel::Portable | Kernel::Simd128 => 0,
    }
}

/// A q8_0 weight (n rows of k / 32 blocks: an f16 scale and 32 signed bytes).
#[derive(Clone, Copy)]
pub struct Q8_0Weight<'a> {
    pub blocks: &'a [u8],
    pub k: usize,
}

impl Q8_0Weight<'_> {
    pub fn rows(&self) -> usize {
        self.blocks.len() / self.row_bytes()
    }

    fn row_bytes(&self) -> usize {
        self.k / BLOCK * Q8_0_BYTES
    }

    /// Whether every row's blocks go in pairs with the same scale (`PAIR`), as gitcap's
    /// quantizer writes the image encoder's weights: then x is quantized per 64 inputs and every
    /// pair makes one integer sum and one float step. Any q8_0 weight with that property takes
    /// the paired steps, so that the decision is the weight's, the same in every form; a scan of
    /// the scales (one in 34 bytes) is small beside a product of many rows.
    fn paired(&self) -> bool {
        self.k.is_multiple_of(PAIR)
            && self
                .blocks
                .chunks_exact(2 * Q8_0_BYTES)
                .all(|pair| pair[..2] == pair[Q8_0_BYTES..Q8_0_BYTES + 2])
    }
}

/// One panel of `nw_max` columns × `kc` inputs: integer values in the form's layout (`E`: i8 or
/// i16), and per block and column the weight's scale and the sum each block's accumulation starts
/// from (−offset · Σw).
struct Panel<E> {
    values: Vec<E>,
    scales: Vec<f32>,
    starts: Vec<i32>,
}

impl<E: Copy + Default + From<i8>> Panel<E> {
    fn new(nw_max: usize) -> Self {
        Panel {
            values: vec![E::default(); KC * nw_max],
            scales: vec![0.0; KC / BLOCK * nw_max],
            starts: vec![0; KC / BLOCK * nw_max],
        }
    }

    /// Makes the packed blocks of inputs 0..kc (`nw_max` columns) steps of `PAIR`: each pair's
    /// scale (the same for both, `Q8_0Weight::paired`) and the sum of its starting sums, at the
    /// pair's index. The values' layout does not depend on the block.
    fn merge_pairs(&mut self, kc: usize, nw_max: usize) {
        for s in 0..kc / PAIR {
            for b in 0..nw_max {
                let (first, second) = ((2 * s) * nw_max + b, (2 * s + 1) * nw_max + b);
                debug_assert_eq!(self.scales[first].to_bits(), self.scales[second].to_bits());
                self.scales[s * nw_max + b] = self.scales[first];
                self.starts[s * nw_max + b] = self.starts[first] + self.starts[second];
            }
        }
    }

    /// Packs columns j0..j0 + nw (zero past them, up to `nw_max`), inputs k0..k0 + kc, of w;
    /// inputs go `per` to a group of 4 bytes (4 for the byte layouts, 2 for i16): value (p, b)
    /// lies at (p / per · nw_max + b) · per + p % per, so each group is one word, copied whole
    /// (byte by byte, with the index arithmetic, the packing took a fifth of the kernel's time).
    #[allow(clippy::too_many_arguments)]
    fn pack(
        &mut self,
        w: &Q8_0Weight,
        k0: usize,
        kc: usize,
        j0: usize,
        nw: usize,
        nw_max: usize,
        per: usize,
        offset: i32,
    ) {
        assert!(std::mem::size_of::<E>() * per == 4 && nw <= nw_max);
        let groups = BLOCK / per;
        // Every word written below lies before this one.
        assert!(kc / per * nw_max * 4 <= self.values.len() * std::mem::size_of::<E>());
        if nw < nw_max {
            self.values.fill(E::default());
            self.scales.fill(0.0);
            self.starts.fill(0);
        }
        let words = self.values.as_mut_ptr() as *mut u32;
        let row_bytes = w.row_bytes();
        for b in 0..nw {
            let row = &w.blocks[(j0 + b) * row_bytes..][..row_bytes];
            for (bi, block) in row[k0 / BLOCK * Q8_0_BYTES..][..kc / BLOCK * Q8_0_BYTES]
                .chunks_exact(Q8_0_BYTES)
                .enumerate()
            {
                self.scales[bi * nw_max + b] =
                    half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                let q = &block[2..];
                let sum: i32 = q.iter().map(|&byte| i32::from(byte as i8)).sum();
                self.starts[bi * nw_max + b] = -offset * sum;
                for (g, group) in q.chunks_exact(per).enumerate() {
                    let word = if per == 4 {
                        u32::from_le_bytes([group[0], group[1], group[2], group[3]])
                    } else {
                        let wide = |byte: u8| u32::from(byte as i8 as i16 as u16);
                        wide(group[0]) | wide(group[1]) << 16
                    };
                    // SAFETY: (bi · groups + g) · nw_max + b < kc / per · nw_max, inside values
                    // (asserted above); the panel's element type is no wider than a word's part.
                    unsafe {
                        words
                            .add((bi * groups + g) * nw_max + b)
                            .write_unaligned(word)
                    };
                }
            }
        }
    }
}

/// One float step of the kernel, the same in every form: a block's exact integer sum, scaled by
/// the weight's and the activation's scales, added to the running sum.
#[inline(always)]
fn step(acc: f32, sw: f32, sx: f32, sum: i32) -> f32 {
    acc + (sw * sx) * sum as f32
}

/// Natively (where the model runs whole and candle threads its own kernels) products of at least
/// this many multiply-adds are shared out over the rayon pool.
const NATIVE_MIN_SPLIT_MACS: usize = 1 << 21;

/// `activation(x · wᵀ + bias)` for a q8_0 weight through the integer kernel in the form `policy`
/// asks for (`matmul::linear` sends it here when `takes`); `split` as there (the threaded wasm
/// build's decision).
pub fn linear(
    policy: &Policy,
    x: &Tensor,
    q: &QTensor,
    epilogue: Epilogue<'_>,
    split: bool,
) -> Result<Tensor> {
    let (_, k) = x.dims2()?;
    let data = q.data()?;
    let w = Q8_0Weight { blocks: &data, k };
    if q.shape().dims() != [w.rows(), k] {
        return Err(crate::Error::invalid(format!(
            "int8 linear: weight {:?} does not take {k} inputs",
            q.shape()
        )));
    }
    Ok(x.contiguous()?.apply_op1_no_bwd(&LinearOp {
        w,
        epilogue,
        split,
        policy,
    })?)
}

struct LinearOp<'a> {
    w: Q8_0Weight<'a>,
    epilogue: Epilogue<'a>,
    split: bool,
    policy: &'a Policy,
}

impl CustomOp1 for LinearOp<'_> {
    fn name(&self) -> &'static str {
        "gitcap-int8-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (&[m, k], CpuStorage::F32(xd), Some((x0, x1))) =
            (layout.dims(), xs, layout.contiguous_offsets())
        else {
            candle_core::bail!("int8 linear takes a contiguous f32 matrix")
        };
        let n = self.w.rows();
        if k != self.w.k || k % BLOCK != 0 {
            candle_core::bail!("int8 linear: x has {k} columns, w has {}", self.w.k)
        }
        self.epilogue.check("int8 linear", m, n)?;
        let out = multiply(
            self.policy,
            &xd[x0..x1],
            &self.w,
            m,
            self.epilogue,
            self.split,
        );
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// c (m × n) = epilogue(x (m × k) · wᵀ) through the integer kernel in the form `policy` asks for,
/// for a q8_0 weight (k a multiple of 32); when `split`, its column blocks are shared out over the
/// policy's threads like `matmul`'s kernel's. Counted in the policy's statistics.
pub fn multiply(
    policy: &Policy,
    x: &[f32],
    w: &Q8_0Weight,
    m: usize,
    epilogue: Epilogue<'_>,
    split: bool,
) -> Vec<f32> {
    policy.stats().count_int8_product();
    let workers = if cfg!(target_arch = "wasm32") {
        if split {
            policy.parts()
        } else {
            1
        }
    } else if m * w.k * w.rows() >= NATIVE_MIN_SPLIT_MACS {
        rayon::current_num_threads()
    } else {
        1
    };
    let kernel = kernel(policy);
    let a = activations(policy, kernel);
    multiply_with(x, w, m, kernel, a, epilogue, workers, policy.stats())
}

/// `multiply` in form `kernel`, activations quantized as `a`, over `workers` threads (a split
/// counted in `stats`).
#[allow(clippy::too_many_arguments)]
fn multiply_with(
    x: &[f32],
    w: &Q8_0Weight,
    m: usize,
    kernel: Kernel,
    a: Activations,
    epilogue: Epilogue<'_>,
    workers: usize,
    stats: &Stats,
) -> Vec<f32> {
    let k = w.k;
    assert!(k.is_multiple_of(BLOCK) && x.len() == m * k);
    assert!(a.levels >= 1 && a.levels <= kernel.max_levels());
    let few = few_rows(kernel, m);
    // The few-rows loop reads x as SIMD128's i16 pairs whatever the form: the integer sums, and so
    // the bits, are those of any form at the same levels.
    let encoding = if few { Kernel::Simd128 } else { kernel };
    // Decided by the weight and the row count alone, never by the form, so that every form makes
    // the same float steps (the few-rows loop, any form's below `FEW_ROWS_BELOW` rows, steps per
    // block).
    let block = if m >= FEW_ROWS_BELOW && w.paired() {
        PAIR
    } else {
        BLOCK
    };
    if block == PAIR {
        stats.count_int8_paired_product();
    }
    let xq = quantize_x(x, m, k, encoding, a, block, workers);
    let n = w.rows();
    let (unit, min_units) = if few {
        (FEW_COLUMNS, MIN_FEW_UNITS)
    } else {
        let nw = match kernel {
            Kernel::Portable => portable::NW,
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Kernel::Simd128 | Kernel::RelaxedSimd => wasm::NW,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => x86::NW,
            #[allow(unreachable_patterns)]
            _ => unreachable!("{kernel:?} is not built here"),
        };
        (nw, MIN_BLOCK_PANELS)
    };
    let block = |out: SharedOut, j_start: usize, j_end: usize| {
        // SAFETY: by_column_blocks_over hands each column range to one call only.
        unsafe { multiply_block(out, &xq, w, m, n, kernel, j_start, j_end, epilogue) }
    };
    by_column_blocks_over(stats, workers, m, n, unit, min_units, block)
}

/// Columns j_start..j_end of c (m × n): the bias, then every `KC` inputs' contribution (through the
/// few-rows loop for fewer than `FEW_ROWS_BELOW` rows), then the activation.
///
/// # Safety
/// `out` points to m × n floats of which no other thread touches columns `j_start..j_end` during
/// the call.
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_block(
    out: SharedOut,
    xq: &QuantizedX,
    w: &Q8_0Weight,
    m: usize,
    n: usize,
    kernel: Kernel,
    j_start: usize,
    j_end: usize,
    epilogue: Epilogue<'_>,
) {
    // SAFETY: the caller's contract.
    unsafe { out.start_block(m, n, j_start, j_end, epilogue.bias) };
    // SAFETY: row i's columns j_start..j_end lie inside the m × n output and are this call's.
    let row = |i: usize| unsafe { out.row(i, n, j_start, j_end) };
    let tiles = Tiles {
        c: out,
        xq,
        m,
        n,
        k: w.k,
    };
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match kernel {
            _ if few_rows(kernel, m) => few_block(&tiles, w, kernel, j_start, j_end),
            Kernel::Portable => portable::block(&tiles, w, j_start, j_end),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Kernel::Simd128 => wasm::block_i16(&tiles, w, j_start, j_end),
            #[cfg(all(
                target_arch = "wasm32",
                any(target_feature = "relaxed-simd", feature = "relaxed-simd")
            ))]
            Kernel::RelaxedSimd => wasm::block_relaxed(&tiles, w, j_start, j_end),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => x86::block(&tiles, w, j_start, j_end),
            #[allow(unreachable_patterns)]
            _ => unreachable!(),
        }
    }
    if epilogue.finishes() {
        for i in 0..m {
            epilogue.finish_row(row(i), i, n, j_start);
        }
    }
}

/// Products of fewer rows than this (decoding: one row a beam) take the few-rows loop where the
/// build has one (wasm SIMD128): a tile's panel is packed for every product, which for a single
/// row costs as much as the product itself, while the few-rows loop reads each weight block once,
/// as stored, and dots it with every row.
const FEW_ROWS_BELOW: usize = 8;
/// A split few-rows product's column blocks are multiples of `FEW_COLUMNS` columns, at least
/// `MIN_FEW_UNITS` of them.
const FEW_COLUMNS: usize = 4;
const MIN_FEW_UNITS: usize = 8;

/// Whether a product of `m` rows in form `kernel` takes the few-rows loop: every form's but the
/// VNNI one's (natively few rows reach the integer kernel only where a policy asks).
fn few_rows(kernel: Kernel, m: usize) -> bool {
    kernel != Kernel::Avx512Vnni && m < FEW_ROWS_BELOW
}

/// Columns j_start..j_end of every row through the few-rows loop (`t.xq` in SIMD128's encoding):
/// the wasm forms' vector loop, or the portable form's scalar one.
///
/// # Safety
/// As `multiply_block`'s tiles.
unsafe fn few_block(t: &Tiles, w: &Q8_0Weight, kernel: Kernel, j_start: usize, j_end: usize) {
    match kernel {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Kernel::Simd128 | Kernel::RelaxedSimd => {
            // SAFETY: the caller's contract, passed on.
            unsafe { wasm::few_i16(t, w, j_start, j_end) }
        }
        _ => {
            for j in j_start..j_end {
                for i in 0..t.m {
                    // SAFETY: the caller's contract, passed on.
                    unsafe { few_column(t, w, i, j) };
                }
            }
        }
    }
}

/// Column j of row i in the few-rows loop, in scalar steps: the portable form's loop.
///
/// # Safety
/// Row i's column j of c is the caller's; `t.xq` in SIMD128's encoding.
unsafe fn few_column(t: &Tiles, w: &Q8_0Weight, i: usize, j: usize) {
    assert_eq!(t.xq.block, BLOCK);
    let row = &w.blocks[j * w.row_bytes()..][..w.row_bytes()];
    let words = &t.xq.words[i * t.xq.words_per_row..][..t.xq.words_per_row];
    let sx = t.x_scales(i, 0);
    for k0 in (0..t.k).step_by(KC) {
        let mut acc = 0f32;
        for bi in k0 / BLOCK..(k0 + KC.min(t.k - k0)) / BLOCK {
            let block = &row[bi * Q8_0_BYTES..][..Q8_0_BYTES];
            let sw = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
            let mut sum = 0i32;
            for (p, &q) in block[2..].iter().enumerate() {
                let word = words[bi * BLOCK / 2 + p / 2];
                let xv = (word >> (16 * (p % 2))) as u16 as i16;
                sum += i32::from(q as i8) * i32::from(xv);
            }
            acc = step(acc, sw, sx[bi], sum);
        }
        // SAFETY: the caller's contract.
        unsafe { t.add_to_row(i, j, &[acc]) };
    }
}

/// What every form's tiles read and write.
struct Tiles<'a> {
    c: SharedOut,
    xq: &'a QuantizedX,
    m: usize,
    n: usize,
    k: usize,
}

impl Tiles<'_> {
    /// Row i's words for inputs k0.. (`per` inputs to a word).
    fn x_words(&self, i: usize, k0: usize, per: usize) -> &[u32] {
        &self.xq.words[i * self.xq.words_per_row + k0 / per..(i + 1) * self.xq.words_per_row]
    }

    /// Row i's activation scales for blocks (of `xq.block` inputs) from input k0 on.
    fn x_scales(&self, i: usize, k0: usize) -> &[f32] {
        let blocks = self.k / self.xq.block;
        &self.xq.scales[i * blocks + k0 / self.xq.block..(i + 1) * blocks]
    }

    /// Packs a panel as the tiles step through it: per q8_0 block, or per pair of blocks when x
    /// was quantized per `PAIR` inputs.
    #[allow(clippy::too_many_arguments)]
    fn pack<E: Copy + Default + From<i8>>(
        &self,
        panel: &mut Panel<E>,
        pack: impl FnOnce(&mut Panel<E>),
        kc: usize,
        nw_max: usize,
    ) {
        pack(panel);
        if self.xq.block == PAIR {
            panel.merge_pairs(kc, nw_max);
        }
    }

    /// Adds `sums` (one value per column j0..j0 + sums.len()) to row i of c.
    ///
    /// # Safety
    /// Those columns of row i are the caller's alone.
    unsafe fn add_to_row(&self, i: usize, j0: usize, sums: &[f32]) {
        // SAFETY: the caller's contract.
        let out = unsafe { self.c.row(i, self.n, j0, j0 + sums.len()) };
        for (o, s) in out.iter_mut().zip(sums) {
            *o += s;
        }
    }
}

/// Plain i32 arithmetic over the byte layout; the reference every other form must equal.
mod portable {
    use super::*;

    pub const NW: usize = 16;

    /// # Safety
    /// As `multiply_block`.
    pub unsafe fn block(t: &Tiles, w: &Q8_0Weight, j_start: usize, j_end: usize) {
        let mut panel = Panel::<i8>::new(NW);
        for k0 in (0..t.k).step_by(KC) {
            let kc = KC.min(t.k - k0);
            for j0 in (j_start..j_end).step_by(NW) {
                let nw = NW.min(j_end - j0);
                let block = t.xq.block;
                t.pack(
                    &mut panel,
                    |p| p.pack(w, k0, kc, j0, nw, NW, 4, t.xq.offset),
                    kc,
                    NW,
                );
                for i in 0..t.m {
                    let words = t.x_words(i, k0, 4);
                    let sx = t.x_scales(i, k0);
                    let mut acc = [0f32; NW];
                    for bi in 0..kc / block {
                        for (b, acc) in acc.iter_mut().enumerate() {
                            let mut sum = panel.starts[bi * NW + b];
                            for g in 0..block / 4 {
                                let word = words[bi * block / 4 + g].to_le_bytes();
                                let ws = &panel.values[((bi * block / 4 + g) * NW + b) * 4..][..4];
                                for l in 0..4 {
                                    sum += i32::from(word[l] as i8) * i32::from(ws[l]);
                                }
                            }
                            *acc = step(*acc, panel.scales[bi * NW + b], sx[bi], sum);
                        }
                    }
                    // SAFETY: row i, columns j0..j0 + nw: this call's.
                    unsafe { t.add_to_row(i, j0, &acc[..nw]) };
                }
            }
        }
    }
}

/// x86-64 with AVX-512 VNNI: `vpdpbusd` sums four u8 × i8 products into each of 16 i32 lanes (16
/// columns); a tile of `MR` rows × 32 columns keeps 8 integer and 8 float accumulators.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    const NV: usize = 2;
    pub const NW: usize = 16 * NV;
    const MR: usize = 4;

    pub fn has_vnni() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }

    /// # Safety
    /// As `multiply_block`, and the CPU has AVX-512 F, BW and VNNI (`has_vnni`).
    pub unsafe fn block(t: &Tiles, w: &Q8_0Weight, j_start: usize, j_end: usize) {
        let mut panel = Panel::<i8>::new(NW);
        for k0 in (0..t.k).step_by(KC) {
            let kc = KC.min(t.k - k0);
            for j0 in (j_start..j_end).step_by(NW) {
                let nw = NW.min(j_end - j0);
                t.pack(
                    &mut panel,
                    |p| p.pack(w, k0, kc, j0, nw, NW, 4, t.xq.offset),
                    kc,
                    NW,
                );
                let mut i = 0;
                while i + MR <= t.m {
                    // SAFETY: the caller's contract; rows i..i + MR.
                    unsafe { tile::<MR>(t, &panel, i, j0, nw, k0, kc) };
                    i += MR;
                }
                while i < t.m {
                    // SAFETY: as above, one row.
                    unsafe { tile::<1>(t, &panel, i, j0, nw, k0, kc) };
                    i += 1;
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const R: usize>(
        t: &Tiles,
        panel: &Panel<i8>,
        i: usize,
        j0: usize,
        nw: usize,
        k0: usize,
        kc: usize,
    ) {
        let words: [&[u32]; R] = std::array::from_fn(|a| &t.x_words(i + a, k0, 4)[..kc / 4]);
        let block = t.xq.block;
        let sx: [&[f32]; R] = std::array::from_fn(|a| &t.x_scales(i + a, k0)[..kc / block]);
        let values = &panel.values[..kc * NW];
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        let vp = values.as_ptr();
        // No closures here: they would not inherit the target features.
        for bi in 0..kc / block {
            // SAFETY: bi < kc / block, so every read below lies in the panel's first kc inputs
            // and the rows' first kc / 4 words, both checked by the slicings above.
            unsafe {
                let mut starts = [_mm512_setzero_si512(); NV];
                let mut sw = [_mm512_setzero_ps(); NV];
                for v in 0..NV {
                    let at = bi * NW + 16 * v;
                    starts[v] = _mm512_loadu_si512(panel.starts.as_ptr().add(at) as *const _);
                    sw[v] = _mm512_loadu_ps(panel.scales.as_ptr().add(at));
                }
                let mut sums = [starts; R];
                for g in 0..block / 4 {
                    let q = bi * block / 4 + g;
                    let mut ws = [_mm512_setzero_si512(); NV];
                    for (v, ws) in ws.iter_mut().enumerate() {
                        *ws = _mm512_loadu_si512(vp.add((q * NW + 16 * v) * 4) as *const _);
                    }
                    for a in 0..R {
                        let xs = _mm512_set1_epi32(*words[a].get_unchecked(q) as i32);
                        for v in 0..NV {
                            sums[a][v] = _mm512_dpbusd_epi32(sums[a][v], xs, ws[v]);
                        }
                    }
                }
                for a in 0..R {
                    let sx = _mm512_set1_ps(*sx[a].get_unchecked(bi));
                    for v in 0..NV {
                        // step(): acc + (sw · sx) · sum, unfused as in every form.
                        let scale = _mm512_mul_ps(sw[v], sx);
                        let term = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(sums[a][v]));
                        acc[a][v] = _mm512_add_ps(acc[a][v], term);
                    }
                }
            }
        }
        for (a, acc) in acc.iter().enumerate() {
            let mut out = [0f32; NW];
            for (v, &lanes) in acc.iter().enumerate() {
                // SAFETY: 16 · v + 15 < NW.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * v), lanes) };
            }
            // SAFETY: the caller's contract.
            unsafe { t.add_to_row(i + a, j0, &out[..nw]) };
        }
    }
}

/// The browser's forms: `MR` rows × `NV` four-column vectors per tile.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use super::*;
    use core::arch::wasm32::*;

    const NV: usize = 3;
    pub const NW: usize = 4 * NV;
    const MR: usize = 3;

    /// `amax` over a multiple of 4 values; `pmax` keeps the running value when x is NaN.
    #[inline(always)]
    pub fn amax(v: &[f32]) -> f32 {
        let mut acc = f32x4_splat(0.0);
        for c in v.chunks_exact(4) {
            // SAFETY: c holds 4 floats.
            let x = unsafe { v128_load(c.as_ptr() as *const v128) };
            acc = f32x4_pmax(acc, f32x4_abs(x));
        }
        let lanes = [
            f32x4_extract_lane::<0>(acc),
            f32x4_extract_lane::<1>(acc),
            f32x4_extract_lane::<2>(acc),
            f32x4_extract_lane::<3>(acc),
        ];
        lanes.iter().fold(0f32, |m, &x| m.max(x))
    }

    /// `super::quantize_block` four lanes at a time: `nearest` rounds half to even like
    /// `round_even`, and the saturating conversions and narrowings clamp as `as i8` does.
    ///
    /// # Safety
    /// xs holds BLOCK values and words BLOCK / per.
    #[inline(always)]
    pub unsafe fn quantize_block(
        xs: &[f32],
        inverse: f32,
        words: &mut [u32],
        per: usize,
        offset: i8,
    ) {
        let inv = f32x4_splat(inverse);
        // SAFETY: BLOCK floats at xs.
        let q: [v128; BLOCK / 4] = std::array::from_fn(|v| unsafe {
            let x = v128_load(xs.as_ptr().add(4 * v) as *const v128);
            i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(x, inv)))
        });
        let halves: [v128; BLOCK / 8] =
            std::array::from_fn(|h| i16x8_narrow_i32x4(q[2 * h], q[2 * h + 1]));
        let out = words.as_mut_ptr() as *mut v128;
        // SAFETY: BLOCK / per words at out.
        unsafe {
            if per == 2 {
                for (h, &half) in halves.iter().enumerate() {
                    v128_store(out.add(h), half);
                }
            } else {
                let offset = i8x16_splat(offset);
                for b in 0..BLOCK / 16 {
                    let bytes = i8x16_narrow_i16x8(halves[2 * b], halves[2 * b + 1]);
                    v128_store(out.add(b), i8x16_add(bytes, offset));
                }
            }
        }
    }

    /// `Panel::pack` for a whole panel (`NW` columns) four columns at a time: each group of four
    /// weight rows' words is transposed in registers (`transpose4`), the four blocks' sums come
    /// from the transposed words and their f16 scales are widened four lanes at a time
    /// (`f16x4_to_f32`). The scalar packing took 12% of an encode on 2 threads (Chromium 156,
    /// AMD EPYC: 953 → 836 ms with the packing skipped). Edge panels take the scalar packing; the
    /// wasm tests check that both give the same bits (`check_packing`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pack<E: Copy + Default + From<i8>>(
        panel: &mut Panel<E>,
        w: &Q8_0Weight,
        k0: usize,
        kc: usize,
        j0: usize,
        nw: usize,
        per: usize,
        offset: i32,
    ) {
        if nw < NW || !(per == 2 || per == 4) {
            panel.pack(w, k0, kc, j0, nw, NW, per, offset);
            return;
        }
        assert!(
            std::mem::size_of::<E>() * per == 4
                && k0.is_multiple_of(BLOCK)
                && kc.is_multiple_of(BLOCK)
        );
        let groups = BLOCK / per;
        let blocks = kc / BLOCK;
        let row_bytes = w.row_bytes();
        // Every read below lies in rows j0..j0 + NW, blocks k0 / BLOCK.. + blocks; every write
        // in the panel's first `blocks` blocks.
        assert!((j0 + NW) * row_bytes <= w.blocks.len() && k0 + kc <= w.k);
        assert!(blocks * groups * NW * 4 <= panel.values.len() * std::mem::size_of::<E>());
        assert!(blocks * NW <= panel.scales.len() && blocks * NW <= panel.starts.len());
        let words = panel.values.as_mut_ptr() as *mut u32;
        for c0 in (0..NW).step_by(4) {
            let rows: [*const u8; 4] = std::array::from_fn(|r| {
                // SAFETY: row j0 + c0 + r < j0 + NW, asserted inside the weight above.
                unsafe { w.blocks.as_ptr().add((j0 + c0 + r) * row_bytes) }
            });
            for bi in 0..blocks {
                let at = (k0 / BLOCK + bi) * Q8_0_BYTES;
                // SAFETY: block k0 / BLOCK + bi of each row lies in the weight (asserted); the
                // stores land in the panel's blocks 0..blocks (asserted).
                unsafe {
                    let halves: [u16; 4] = std::array::from_fn(|r| {
                        u16::from_le_bytes([*rows[r].add(at), *rows[r].add(at + 1)])
                    });
                    let scales = f16x4_to_f32(u32x4(
                        halves[0].into(),
                        halves[1].into(),
                        halves[2].into(),
                        halves[3].into(),
                    ));
                    v128_store(
                        panel.scales.as_mut_ptr().add(bi * NW + c0) as *mut v128,
                        scales,
                    );
                    let lo: [v128; 4] =
                        std::array::from_fn(|r| v128_load(rows[r].add(at + 2) as *const v128));
                    let hi: [v128; 4] =
                        std::array::from_fn(|r| v128_load(rows[r].add(at + 18) as *const v128));
                    // Each row's block as quads of words, in order.
                    let quads: [[v128; 4]; 4] = if per == 4 {
                        [lo, hi, lo, hi]
                    } else {
                        [
                            lo.map(|v| i16x8_extend_low_i8x16(v)),
                            lo.map(|v| i16x8_extend_high_i8x16(v)),
                            hi.map(|v| i16x8_extend_low_i8x16(v)),
                            hi.map(|v| i16x8_extend_high_i8x16(v)),
                        ]
                    };
                    let mut sums16 = i16x8_splat(0);
                    let mut sums32 = i32x4_splat(0);
                    for (h, quad) in quads.iter().take(groups / 4).enumerate() {
                        let columns = transpose4(*quad);
                        for (g, &column) in columns.iter().enumerate() {
                            let word = (bi * groups + 4 * h + g) * NW + c0;
                            v128_store(words.add(word) as *mut v128, column);
                            if per == 4 {
                                sums16 = i16x8_add(sums16, i16x8_extadd_pairwise_i8x16(column));
                            } else {
                                sums32 = i32x4_add(sums32, i32x4_extadd_pairwise_i16x8(column));
                            }
                        }
                    }
                    // At most 8 words of two bytes each per i16 lane: |sum| <= 2048.
                    let sums = if per == 4 {
                        i32x4_extadd_pairwise_i16x8(sums16)
                    } else {
                        sums32
                    };
                    v128_store(
                        panel.starts.as_mut_ptr().add(bi * NW + c0) as *mut v128,
                        i32x4_mul(sums, i32x4_splat(-offset)),
                    );
                }
            }
        }
    }

    /// The 4 × 4 block of words whose rows are `r`, transposed: lane j of `r[i]` becomes lane i of
    /// the result's vector j.
    #[inline(always)]
    fn transpose4(r: [v128; 4]) -> [v128; 4] {
        let t0 = i32x4_shuffle::<0, 4, 1, 5>(r[0], r[1]);
        let t1 = i32x4_shuffle::<2, 6, 3, 7>(r[0], r[1]);
        let t2 = i32x4_shuffle::<0, 4, 1, 5>(r[2], r[3]);
        let t3 = i32x4_shuffle::<2, 6, 3, 7>(r[2], r[3]);
        [
            i64x2_shuffle::<0, 2>(t0, t2),
            i64x2_shuffle::<1, 3>(t0, t2),
            i64x2_shuffle::<0, 2>(t1, t3),
            i64x2_shuffle::<1, 3>(t1, t3),
        ]
    }

    /// Four f16 values (the low half of each lane) as f32, as `half::f16::to_f32` gives them:
    /// exponent and mantissa moved into place and scaled by 2^112 (exact for normal and
    /// subnormal values alike), infinities and NaN (made quiet, as `half` does) set apart.
    #[inline(always)]
    fn f16x4_to_f32(h: v128) -> v128 {
        let sign = i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16);
        let magnitude = v128_and(h, u32x4_splat(0x7fff));
        let shifted = i32x4_shl(magnitude, 13);
        let finite = f32x4_mul(shifted, f32x4_splat(f32::from_bits(0x7780_0000)));
        let special = v128_or(shifted, u32x4_splat(0x7f80_0000));
        let nan = u32x4_gt(magnitude, u32x4_splat(0x7c00));
        let special = v128_or(special, v128_and(nan, u32x4_splat(0x0040_0000)));
        let is_special = u32x4_ge(magnitude, u32x4_splat(0x7c00));
        v128_or(v128_bitselect(special, finite, is_special), sign)
    }

    /// SIMD128: weights as i16 pairs, `i32x4.dot_i16x8_s` with a broadcast pair of x.
    ///
    /// # Safety
    /// As `multiply_block`.
    pub unsafe fn block_i16(t: &Tiles, w: &Q8_0Weight, j_start: usize, j_end: usize) {
        let mut panel = Panel::<i16>::new(NW);
        for k0 in (0..t.k).step_by(KC) {
            let kc = KC.min(t.k - k0);
            for j0 in (j_start..j_end).step_by(NW) {
                let nw = NW.min(j_end - j0);
                t.pack(
                    &mut panel,
                    |p| pack(p, w, k0, kc, j0, nw, 2, t.xq.offset),
                    kc,
                    NW,
                );
                let mut i = 0;
                while i + MR <= t.m {
                    // SAFETY: the caller's contract; rows i..i + MR.
                    unsafe { tile_i16::<MR>(t, &panel, i, j0, nw, k0, kc) };
                    i += MR;
                }
                while i < t.m {
                    // SAFETY: as above, one row.
                    unsafe { tile_i16::<1>(t, &panel, i, j0, nw, k0, kc) };
                    i += 1;
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn tile_i16<const R: usize>(
        t: &Tiles,
        panel: &Panel<i16>,
        i: usize,
        j0: usize,
        nw: usize,
        k0: usize,
        kc: usize,
    ) {
        let words: [&[u32]; R] = std::array::from_fn(|a| &t.x_words(i + a, k0, 2)[..kc / 2]);
        let block = t.xq.block;
        let sx: [&[f32]; R] = std::array::from_fn(|a| &t.x_scales(i + a, k0)[..kc / block]);
        let vp = panel.values[..kc * NW].as_ptr();
        let mut acc = [[f32x4_splat(0.0); NV]; R];
        for bi in 0..kc / block {
            // SAFETY: bi < kc / block: every read lies within the slices checked above.
            unsafe {
                let starts: [v128; NV] = std::array::from_fn(|v| {
                    v128_load(panel.starts.as_ptr().add(bi * NW + 4 * v) as *const v128)
                });
                let mut sums = [starts; R];
                for g in 0..block / 2 {
                    let q = bi * block / 2 + g;
                    let ws: [v128; NV] = std::array::from_fn(|v| {
                        v128_load(vp.add((q * NW + 4 * v) * 2) as *const v128)
                    });
                    for a in 0..R {
                        let xs = u32x4_splat(*words[a].get_unchecked(q));
                        for v in 0..NV {
                            sums[a][v] = i32x4_add(sums[a][v], i32x4_dot_i16x8(xs, ws[v]));
                        }
                    }
                }
                finish_block(&mut acc, &sums, panel, &sx, bi);
            }
        }
        // SAFETY: the caller's contract.
        unsafe { store(t, &acc, i, j0, nw) };
    }

    /// step() for one block of every accumulator.
    ///
    /// The accumulators are read and written as volatile memory, so that they stay in memory
    /// across the block's integer loop: held in registers, one of them took a register that V8
    /// then found short for the integer sums, three of which it spilled inside the loop, each
    /// reload adding a store-to-load delay to its chain of dots. In memory the loop keeps all
    /// nine sums in registers; an encode took 7% less (Chromium 156, AMD EPYC Zen 5, median of
    /// nine rounds side by side).
    ///
    /// # Safety
    /// bi indexes a packed block of the panel and of every row's scales.
    #[inline(always)]
    unsafe fn finish_block<E, const R: usize>(
        acc: &mut [[v128; NV]; R],
        sums: &[[v128; NV]; R],
        panel: &Panel<E>,
        sx: &[&[f32]; R],
        bi: usize,
    ) {
        // SAFETY: the caller's contract; `at` points into `acc`.
        unsafe {
            let sw: [v128; NV] = std::array::from_fn(|v| {
                v128_load(panel.scales.as_ptr().add(bi * NW + 4 * v) as *const v128)
            });
            for a in 0..R {
                let sx = f32x4_splat(*sx[a].get_unchecked(bi));
                for v in 0..NV {
                    let scale = f32x4_mul(sw[v], sx);
                    let term = f32x4_mul(scale, f32x4_convert_i32x4(sums[a][v]));
                    let at: *mut v128 = &mut acc[a][v];
                    at.write_volatile(f32x4_add(at.read_volatile(), term));
                }
            }
        }
    }

    /// Adds the tile's sums to c.
    ///
    /// # Safety
    /// As the tiles'.
    #[inline(always)]
    unsafe fn store<const R: usize>(
        t: &Tiles,
        acc: &[[v128; NV]; R],
        i: usize,
        j0: usize,
        nw: usize,
    ) {
        for (a, acc) in acc.iter().enumerate() {
            let mut out = [0f32; NW];
            for (v, &lanes) in acc.iter().enumerate() {
                // SAFETY: 4 · v + 3 < NW.
                unsafe { v128_store(out.as_mut_ptr().add(4 * v) as *mut v128, lanes) };
            }
            // SAFETY: the caller's contract.
            unsafe { t.add_to_row(i + a, j0, &out[..nw]) };
        }
    }

    /// The few-rows loop: each weight row's blocks read as stored (f16 scale, 32 bytes), widened
    /// to i16 and dotted (`i32x4.dot_i16x8_s`) with every row of x; four blocks' sums at a time
    /// are gathered into one vector for the float steps, whose results are then added to the
    /// row's sum one by one. Every float operation is the portable form's, in its order (blocks
    /// summed from zero within each `KC` inputs, then added to c), so the bits are the same.
    ///
    /// One weight row at a time, so that the weight is read as one stream: reading four rows'
    /// blocks side by side (one vector of four columns' sums per block) was held up by memory
    /// (git-large's decoder rows are 13 to 51 cache lines, too short for the prefetcher to follow
    /// four of them at once): 14.6 ms of an 18 ms token in Chromium on one thread.
    ///
    /// # Safety
    /// As `multiply_block`; `t.xq` in SIMD128's encoding (two i16 to a word).
    pub unsafe fn few_i16(t: &Tiles, w: &Q8_0Weight, j_start: usize, j_end: usize) {
        assert!(j_end <= w.rows() && w.k == t.k && t.k.is_multiple_of(BLOCK));
        assert!(t.xq.words_per_row * 2 == t.k && t.xq.words.len() >= t.m * t.xq.words_per_row);
        assert!(t.xq.block == BLOCK && t.xq.scales.len() >= t.m * (t.k / BLOCK));
        for j in j_start..j_end {
            let mut i = 0;
            while i + 2 <= t.m {
                // SAFETY: rows i, i + 1 and column j: the caller's.
                unsafe { few_row::<2>(t, w, i, j) };
                i += 2;
            }
            if i < t.m {
                // SAFETY: row i and column j: the caller's.
                unsafe { few_row::<1>(t, w, i, j) };
            }
        }
    }

    /// Column j of rows i..i + R.
    ///
    /// # Safety
    /// Those values of c are the caller's; rows i..i + R of x and row j of w exist (asserted by
    /// `few_i16`).
    #[inline(always)]
    unsafe fn few_row<const R: usize>(t: &Tiles, w: &Q8_0Weight, i: usize, j: usize) {
        let blocks = t.k / BLOCK;
        // SAFETY (all reads below): blocks bi < blocks of weight row j < w.rows(); words
        // bi · 16..bi · 16 + 16 and scales bi of x rows i..i + R < t.m (few_i16's asserts).
        let row = unsafe { w.blocks.as_ptr().add(j * w.row_bytes()) };
        let xs: [*const v128; R] = std::array::from_fn(|a| unsafe {
            t.xq.words.as_ptr().add((i + a) * t.xq.words_per_row) as *const v128
        });
        let sx: [*const f32; R] =
            std::array::from_fn(|a| unsafe { t.xq.scales.as_ptr().add((i + a) * blocks) });
        let scale = |bi: usize| unsafe {
            u32::from((row.add(bi * Q8_0_BYTES) as *const u16).read_unaligned())
        };
        let dots = |bi: usize| unsafe {
            let x: [*const v128; R] = std::array::from_fn(|a| xs[a].add(bi * 4));
            block_dots::<R>(row.add(bi * Q8_0_BYTES + 2), &x)
        };
        for k0 in (0..t.k).step_by(KC) {
            let end = (k0 + KC.min(t.k - k0)) / BLOCK;
            let mut acc = [0f32; R];
            let mut bi = k0 / BLOCK;
            while bi + 4 <= end {
                let sw = f16x4_to_f32(u32x4(
                    scale(bi),
                    scale(bi + 1),
                    scale(bi + 2),
                    scale(bi + 3),
                ));
                // Four calls, not a loop: looped, the partial sums went through memory.
                let (p0, p1, p2, p3) = (dots(bi), dots(bi + 1), dots(bi + 2), dots(bi + 3));
                for a in 0..R {
                    let sums = add_lanes4([p0[a], p1[a], p2[a], p3[a]]);
                    // SAFETY: scales bi..bi + 4 of row i + a.
                    let sx4 = unsafe { v128_load(sx[a].add(bi) as *const v128) };
                    let terms = f32x4_mul(f32x4_mul(sw, sx4), f32x4_convert_i32x4(sums));
                    acc[a] += f32x4_extract_lane::<0>(terms);
                    acc[a] += f32x4_extract_lane::<1>(terms);
                    acc[a] += f32x4_extract_lane::<2>(terms);
                    acc[a] += f32x4_extract_lane::<3>(terms);
                }
                bi += 4;
            }
            while bi < end {
                let sw = half::f16::from_bits(scale(bi) as u16).to_f32();
                let p = dots(bi);
                for a in 0..R {
                    let sum = i32x4_extract_lane::<0>(p[a])
                        + i32x4_extract_lane::<1>(p[a])
                        + i32x4_extract_lane::<2>(p[a])
                        + i32x4_extract_lane::<3>(p[a]);
                    // SAFETY: scale bi of row i + a.
                    acc[a] = step(acc[a], sw, unsafe { *sx[a].add(bi) }, sum);
                }
                bi += 1;
            }
            for (a, &acc) in acc.iter().enumerate() {
                // SAFETY: the caller's contract.
                unsafe { t.add_to_row(i + a, j, &[acc]) };
            }
        }
    }

    /// One weight block's 32 values (at `q`) dotted with each row's block of x (at `x[a]`), in
    /// four lanes each to be summed.
    ///
    /// # Safety
    /// 32 bytes at q, 64 at each x[a].
    #[inline(always)]
    unsafe fn block_dots<const R: usize>(q: *const u8, x: &[*const v128; R]) -> [v128; R] {
        // SAFETY: the caller's contract.
        unsafe {
            let lo = v128_load(q as *const v128);
            let hi = v128_load(q.add(16) as *const v128);
            let ws = [
                i16x8_extend_low_i8x16(lo),
                i16x8_extend_high_i8x16(lo),
                i16x8_extend_low_i8x16(hi),
                i16x8_extend_high_i8x16(hi),
            ];
            std::array::from_fn(|a| {
                let x = x[a];
                let d0 = i32x4_dot_i16x8(ws[0], v128_load(x));
                let d1 = i32x4_dot_i16x8(ws[1], v128_load(x.add(1)));
                let d2 = i32x4_dot_i16x8(ws[2], v128_load(x.add(2)));
                let d3 = i32x4_dot_i16x8(ws[3], v128_load(x.add(3)));
                i32x4_add(i32x4_add(d0, d1), i32x4_add(d2, d3))
            })
        }
    }

    /// Lane c of the result: the sum of `v[c]`'s four lanes.
    #[inline(always)]
    fn add_lanes4(v: [v128; 4]) -> v128 {
        let a = i32x4_add(
            i32x4_shuffle::<0, 4, 1, 5>(v[0], v[1]),
            i32x4_shuffle::<2, 6, 3, 7>(v[0], v[1]),
        );
        let b = i32x4_add(
            i32x4_shuffle::<0, 4, 1, 5>(v[2], v[3]),
            i32x4_shuffle::<2, 6, 3, 7>(v[2], v[3]),
        );
        i32x4_add(
            i32x4_shuffle::<0, 1, 4, 5>(a, b),
            i32x4_shuffle::<2, 3, 6, 7>(a, b),
        )
    }

    /// Asks the engine's relaxed dot for products whose x byte has its top bit set, at the ends of
    /// the ranges the kernel feeds it (weights −128..=127; x 1..=255 read unsigned, −127..=127
    /// signed), where a lowering through 16-bit pairs saturates: which `RelaxedDot` every answer
    /// matches exactly. The answer holds for the kernel as long as the engine lowers the
    /// instruction one way per CPU in all its tiers; in Chromium 156 on an AMD Zen 5 the
    /// optimized kernel's code was seen to use `vpdpbusd` (`perf annotate`) and the probe said
    /// `Unsigned`, and with V8's AVX-VNNI turned off (`--js-flags=--no-enable-avx-vnni`) it said
    /// `SevenBit`.
    #[cfg(any(target_feature = "relaxed-simd", feature = "relaxed-simd"))]
    #[target_feature(enable = "relaxed-simd")]
    pub unsafe fn probe_relaxed_dot() -> RelaxedDot {
        const W: [[i8; 16]; 4] = [
            [127; 16],
            [-128; 16],
            [
                127, -128, 1, -1, 0, 100, -100, 64, -64, 127, -127, 3, 77, -77, 126, -128,
            ],
            [
                -127, -127, 127, 127, 5, -6, 7, -8, 90, 91, -92, -93, 0, 1, 2, 3,
            ],
        ];
        const X: [[u8; 16]; 4] = [
            [255; 16],
            [
                128, 129, 255, 254, 1, 127, 128, 200, 56, 255, 255, 1, 130, 131, 255, 255,
            ],
            [
                255, 255, 255, 255, 128, 128, 128, 128, 129, 200, 250, 251, 1, 2, 3, 127,
            ],
            [1; 16],
        ];
        let (mut unsigned, mut signed) = (true, true);
        for w in &W {
            for x in &X {
                let wv = std::hint::black_box(v128_load(w.as_ptr() as *const v128));
                let xv = std::hint::black_box(v128_load(x.as_ptr() as *const v128));
                let got = i32x4_relaxed_dot_i8x16_i7x16_add(wv, xv, i32x4_splat(0));
                let lanes: [i32; 4] = [
                    i32x4_extract_lane::<0>(got),
                    i32x4_extract_lane::<1>(got),
                    i32x4_extract_lane::<2>(got),
                    i32x4_extract_lane::<3>(got),
                ];
                for (lane, &value) in lanes.iter().enumerate() {
                    let sum = |read: fn(u8) -> i32| -> i32 {
                        (4 * lane..4 * lane + 4)
                            .map(|l| i32::from(w[l]) * read(x[l]))
                            .sum()
                    };
                    unsigned &= value == sum(i32::from);
                    signed &= value == sum(|b| i32::from(b as i8));
                }
            }
        }
        match (unsigned, signed) {
            (true, _) => RelaxedDot::Unsigned,
            (false, true) => RelaxedDot::Signed,
            (false, false) => RelaxedDot::SevenBit,
        }
    }

    /// Relaxed SIMD: weights as bytes, `i32x4.relaxed_dot_i8x16_i7x16_add_s` with four broadcast
    /// x values in the engine's encoding (`RelaxedDot`).
    ///
    /// Compiled for relaxed SIMD function by function (`#[target_feature]`, the crate's
    /// `relaxed-simd` feature) rather than by a global target feature, so that the relaxed build
    /// shares every dependency's compiled code with the SIMD128 build: it costs build.sh one
    /// compile of this crate instead of a second build of the whole tree.
    ///
    /// # Safety
    /// As `multiply_block`, in an engine with relaxed SIMD (the module does not validate
    /// elsewhere).
    #[cfg(any(target_feature = "relaxed-simd", feature = "relaxed-simd"))]
    #[target_feature(enable = "relaxed-simd")]
    pub unsafe fn block_relaxed(t: &Tiles, w: &Q8_0Weight, j_start: usize, j_end: usize) {
        let mut panel = Panel::<i8>::new(NW);
        // The inner loop's trip count, hidden from the optimiser: nightly's LLVM (the threaded
        // build's) unrolled a constant 8 fully and hoisted every load of the block ahead of the
        // products (55 v128 locals against stable's 23), which V8 spilled: the same kernel took
        // 2.07 s of an encode there against 1.41 s with the count hidden (Chromium 156, AMD EPYC).
        let groups = std::hint::black_box(t.xq.block / 4);
        for k0 in (0..t.k).step_by(KC) {
            let kc = KC.min(t.k - k0);
            for j0 in (j_start..j_end).step_by(NW) {
                let nw = NW.min(j_end - j0);
                t.pack(
                    &mut panel,
                    |p| pack(p, w, k0, kc, j0, nw, 4, t.xq.offset),
                    kc,
                    NW,
                );
                let mut i = 0;
                while i + MR <= t.m {
                    // SAFETY: the caller's contract; rows i..i + MR.
                    unsafe { tile_relaxed::<MR>(t, &panel, i, j0, nw, k0, kc, groups) };
                    i += MR;
                }
                while i < t.m {
                    // SAFETY: as above, one row.
                    unsafe { tile_relaxed::<1>(t, &panel, i, j0, nw, k0, kc, groups) };
                    i += 1;
                }
            }
        }
    }

    #[cfg(any(target_feature = "relaxed-simd", feature = "relaxed-simd"))]
    #[target_feature(enable = "relaxed-simd")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_relaxed<const R: usize>(
        t: &Tiles,
        panel: &Panel<i8>,
        i: usize,
        j0: usize,
        nw: usize,
        k0: usize,
        kc: usize,
        groups: usize,
    ) {
        let words: [&[u32]; R] = std::array::from_fn(|a| &t.x_words(i + a, k0, 4)[..kc / 4]);
        let block = t.xq.block;
        let sx: [&[f32]; R] = std::array::from_fn(|a| &t.x_scales(i + a, k0)[..kc / block]);
        let vp = panel.values[..kc * NW].as_ptr();
        let mut acc = [[f32x4_splat(0.0); NV]; R];
        for bi in 0..kc / block {
            // SAFETY: bi < kc / block and g < block / 4: every read lies within the slices
            // checked above.
            unsafe {
                let starts: [v128; NV] = std::array::from_fn(|v| {
                    v128_load(panel.starts.as_ptr().add(bi * NW + 4 * v) as *const v128)
                });
                let mut sums = [starts; R];
                for g in 0..groups.min(block / 4) {
                    let q = bi * block / 4 + g;
                    let ws: [v128; NV] = std::array::from_fn(|v| {
                        v128_load(vp.add((q * NW + 4 * v) * 4) as *const v128)
                    });
                    for a in 0..R {
                        let xs = u32x4_splat(*words[a].get_unchecked(q));
                        for v in 0..NV {
                            sums[a][v] = i32x4_relaxed_dot_i8x16_i7x16_add(ws[v], xs, sums[a][v]);
                        }
                    }
                }
                finish_block(&mut acc, &sums, panel, &sx, bi);
            }
        }
        // SAFETY: the caller's contract.
        unsafe { store(t, &acc, i, j0, nw) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::Device;

    /// A q8_0 weight (n × k) of values of both signs, its blocks and its expansion.
    fn weight(n: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104_729) % 197) as f32 / 40.0 - 2.5 + (i % 7) as f32 * 0.013)
            .collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let expanded = q.dequantize(&Device::Cpu).unwrap();
        let expanded = expanded.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (q.data().unwrap().into_owned(), expanded)
    }

    /// `weight(n, k)` with every pair of blocks given its first block's scale, as gitcap's
    /// quantizer pairs the image encoder's weights; and its expansion.
    fn paired_weight(n: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
        let (mut blocks, _) = weight(n, k);
        for pair in blocks.chunks_exact_mut(2 * Q8_0_BYTES) {
            pair.copy_within(0..2, Q8_0_BYTES);
        }
        let expanded = blocks
            .chunks_exact(Q8_0_BYTES)
            .flat_map(|b| {
                let scale = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                b[2..].iter().map(move |&q| scale * f32::from(q as i8))
            })
            .collect();
        (blocks, expanded)
    }

    /// Activations with blocks of very different sizes, a zero block and exact ties.
    fn activations_for(m: usize, k: usize) -> Vec<f32> {
        (0..m * k)
            .map(|i| {
                let block = i / BLOCK;
                let size = [1.0, 0.01, 7.5, 0.0, 0.3][block % 5];
                (((i * 7919) % 211) as f32 / 50.0 - 2.0) * size
            })
            .collect()
    }

    /// x quantized and expanded again, by the definition: per block of `block` inputs (or per
    /// row), scale = amax / levels and q = x · (levels / amax) rounded half to even.
    fn expand_quantized(x: &[f32], k: usize, a: Activations, block: usize) -> Vec<f64> {
        let levels = a.levels as f32;
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(k) {
            let row_amax = row.iter().map(|v| v.abs()).fold(0.0, f32::max);
            for block in row.chunks(block) {
                let amax = if a.per_row {
                    row_amax
                } else {
                    block.iter().map(|v| v.abs()).fold(0.0, f32::max)
                };
                for &v in block {
                    out.push(if amax == 0.0 {
                        0.0
                    } else {
                        (v * (levels / amax)).round_ties_even() as f64 * (amax / levels) as f64
                    });
                }
            }
        }
        out
    }

    /// Asserts c (m × n) = act(x̂ · ŵᵀ + bias) to float rounding, x̂ and ŵ the quantized values
    /// expanded, summed in f64.
    fn assert_product(c: &[f32], xhat: &[f64], w: &[f32], bias: &[f32], m: usize, k: usize) {
        if let Err(e) = check_product(c, xhat, w, bias, m, k) {
            panic!("{e}");
        }
    }

    fn check_product(
        c: &[f32],
        xhat: &[f64],
        w: &[f32],
        bias: &[f32],
        m: usize,
        k: usize,
    ) -> std::result::Result<(), String> {
        let n = w.len() / k;
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|p| xhat[i * k + p] * w[j * k + p] as f64);
                let (sum, size) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                let want = sum + bias.get(j).copied().unwrap_or(0.0) as f64;
                let got = c[i * n + j] as f64;
                if (got - want).abs() > 2e-6 * (size + want.abs()) + 1e-30 {
                    return Err(format!("({m},{n},{k}) [{i},{j}]: {got} vs {want}"));
                }
            }
        }
        Ok(())
    }

    fn shapes() -> Vec<(usize, usize, usize)> {
        vec![
            (1, 1, 32),
            (2, 13, 64),
            (7, 25, KC + 3 * BLOCK),
            (3, 33, 2 * KC),
            (10, 40, 96),
            (9, 17, 2 * KC + BLOCK),
            (13, 70, 160),
        ]
    }

    /// Every edge (rows not a multiple of any tile's, columns not a multiple of any panel's,
    /// inputs spanning several KC with a remainder), per block and per row, at 127 and 63 levels:
    /// the portable form against the definition.
    #[test]
    fn quantizer_split_over_threads_equals_it_whole() {
        let (m, k) = (37, 3 * PAIR);
        let x = activations_for(m, k);
        // (check_quantizer would compare the scalar form with itself here: it runs in the wasm
        // tests, where the vector form is the one built.)
        let kernel = Kernel::best();
        let a = activations(&Policy::default(), kernel);
        for block in [BLOCK, PAIR] {
            let whole = quantize_x(&x, m, k, kernel, a, block, 1);
            let split = quantize_x(&x, m, k, kernel, a, block, 3);
            assert_eq!(whole.words, split.words);
            assert_eq!(whole.scales, split.scales);
        }
    }

    #[test]
    fn portable_form_matches_the_quantized_product() {
        let stats = Stats::default();
        for (m, n, k) in shapes() {
            let (blocks, expanded) = weight(n, k);
            let w = Q8_0Weight { blocks: &blocks, k };
            let x = activations_for(m, k);
            for a in [
                Activations::default(),
                Activations {
                    levels: 63,
                    per_row: false,
                },
                Activations {
                    levels: 127,
                    per_row: true,
                },
            ] {
                let c = multiply_with(
                    &x,
                    &w,
                    m,
                    Kernel::Portable,
                    a,
                    Epilogue::default(),
                    1,
                    &stats,
                );
                assert_product(&c, &expand_quantized(&x, k, a, BLOCK), &expanded, &[], m, k);
            }
        }
    }

    /// The few-rows loop (fewer than `FEW_ROWS_BELOW` rows) gives the bits of the tiled loop: x's
    /// blocks are quantized row by row, so each row alone through the few-rows loop must equal
    /// that row of a many-row product through the tiles, at both levels and over 3 threads.
    #[test]
    fn few_rows_loop_equals_the_tiled_one() {
        let stats = Stats::default();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let (m, n, k) = (FEW_ROWS_BELOW + 3, 70, 2 * KC + 3 * BLOCK);
        let (blocks, _) = weight(n, k);
        let w = Q8_0Weight { blocks: &blocks, k };
        // (A paired weight's tiles step per 64 inputs, the few-rows loop per 32.)
        assert!(!w.paired());
        let x = activations_for(m, k);
        let bias: Vec<f32> = (0..n).map(|j| (j % 5) as f32 - 2.0).collect();
        let epilogue = Epilogue {
            bias: Some(&bias),
            activation: None,
            residual: None,
        };
        for levels in [127, 63] {
            let a = Activations {
                levels,
                per_row: false,
            };
            let tiled = multiply_with(&x, &w, m, Kernel::Portable, a, epilogue, 1, &stats);
            for i in 0..m {
                let row = &x[i * k..][..k];
                let few = pool.install(|| {
                    multiply_with(row, &w, 1, Kernel::Portable, a, epilogue, 3, &stats)
                });
                assert!(
                    few == tiled[i * n..][..n],
                    "row {i} at {levels} levels differs"
                );
            }
        }
    }

    /// The best form here (AVX-512 VNNI on CPUs that have it), with a bias and an activation
    /// applied per column block, whole and over 3 threads: bit for bit the portable form.
    #[test]
    fn best_form_equals_the_portable_one() {
        let best = Kernel::best();
        if best == Kernel::Portable {
            eprintln!("note: no faster integer form on this CPU; only the portable one is tested");
        }
        let relu: crate::model::matmul::InPlace = &|xs: &mut [f32]| {
            xs.iter_mut().for_each(|x| *x = x.max(0.0));
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let stats = Stats::default();
        let paired = [
            (9, 17, 2 * KC + PAIR),
            (13, 70, 192),
            (37, 100, 1088),
            (8, 5, PAIR),
        ];
        let cases = shapes()
            .into_iter()
            .chain([(37, 100, 1088)])
            .map(|shape| (shape, weight(shape.1, shape.2)))
            .chain(paired.map(|shape| (shape, paired_weight(shape.1, shape.2))));
        for ((m, n, k), (blocks, expanded)) in cases {
            let w = Q8_0Weight { blocks: &blocks, k };
            let block = if w.paired() { PAIR } else { BLOCK };
            let x = activations_for(m, k);
            let bias: Vec<f32> = (0..n).map(|j| (j % 17) as f32 - 8.0).collect();
            let epilogue = Epilogue {
                bias: Some(&bias),
                activation: Some(relu),
                residual: None,
            };
            let a = Activations::default();
            let want = multiply_with(&x, &w, m, Kernel::Portable, a, epilogue, 1, &stats);
            let got = multiply_with(&x, &w, m, best, a, epilogue, 1, &stats);
            assert!(got == want, "({m},{n},{k}): {best:?} differs from portable");
            let shared = pool.install(|| multiply_with(&x, &w, m, best, a, epilogue, 3, &stats));
            assert!(
                shared == want,
                "({m},{n},{k}): {best:?} over 3 threads differs"
            );
            let xhat = expand_quantized(&x, k, a, block);
            let plain = multiply_with(&x, &w, m, best, a, Epilogue::default(), 1, &stats);
            assert_product(&plain, &xhat, &expanded, &[], m, k);
        }
    }

    /// A weight is paired when, and only when, every row's blocks go in pairs of one scale; its
    /// products of many rows then quantize x per 64 inputs (the expansion per 64 matches to
    /// float rounding, the one per 32 does not), and of few rows per 32, in every form.
    #[test]
    fn paired_weights_step_per_64_inputs_from_8_rows() {
        let stats = Stats::default();
        let (n, k) = (21, KC + 3 * PAIR);
        let (blocks, _) = weight(n, k);
        assert!(!Q8_0Weight { blocks: &blocks, k }.paired());
        let (mut blocks, expanded) = paired_weight(n, k);
        assert!(Q8_0Weight { blocks: &blocks, k }.paired());
        // Inputs that are not a whole number of pairs: not paired, whatever the scales.
        let odd = Q8_0Weight {
            blocks: &blocks[..n * (k - BLOCK) / BLOCK * Q8_0_BYTES],
            k: k - BLOCK,
        };
        assert!(!odd.paired());
        let w = Q8_0Weight { blocks: &blocks, k };
        let a = Activations::default();
        for (m, block) in [
            (FEW_ROWS_BELOW, PAIR),
            (FEW_ROWS_BELOW - 1, BLOCK),
            (23, PAIR),
        ] {
            let x = activations_for(m, k);
            for form in [Kernel::Portable, Kernel::best()] {
                let c = multiply_with(&x, &w, m, form, a, Epilogue::default(), 1, &stats);
                assert_product(&c, &expand_quantized(&x, k, a, block), &expanded, &[], m, k);
                let other = if block == PAIR { BLOCK } else { PAIR };
                let wrong = expand_quantized(&x, k, a, other);
                assert!(
                    check_product(&c, &wrong, &expanded, &[], m, k).is_err(),
                    "{m} rows: x per {other} matches too"
                );
            }
        }
        // One pair apart in the last row: the weight steps per block again.
        let last = blocks.len() - Q8_0_BYTES;
        blocks[last] ^= 1;
        assert!(!Q8_0Weight { blocks: &blocks, k }.paired());
    }

    /// Through `linear` (the model's entry), with a bias: the f32 product of x with the expanded
    /// weight, within the error that quantizing x allows, element by element: |x̂·ŵ − x·ŵ| ≤
    /// Σ |x̂ − x| · |ŵ| (plus float rounding). A wrong scale, offset or block order breaks it.
    #[test]
    fn linear_is_within_the_quantization_bound_of_the_f32_product() {
        let (m, n, k) = (20, 45, 2 * KC + 64);
        let (blocks, expanded) = weight(n, k);
        let q = QTensor::quantize(
            &Tensor::from_vec(expanded.clone(), (n, k), &Device::Cpu).unwrap(),
            GgmlDType::Q8_0,
        )
        .unwrap();
        // Quantizing the expansion again gives the same blocks, so the product's weight is ŵ.
        assert_eq!(q.data().unwrap().as_ref(), blocks.as_slice());
        let x = activations_for(m, k);
        let xhat = expand_quantized(&x, k, Activations::default(), BLOCK);
        let bias: Vec<f32> = (0..n).map(|j| (j % 11) as f32 * 0.25 - 1.0).collect();
        let epilogue = Epilogue {
            bias: Some(&bias),
            activation: None,
            residual: None,
        };
        let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
        let got = linear(&Policy::default(), &xt, &q, epilogue, false).unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut largest_error = 0f64;
        for i in 0..m {
            for j in 0..n {
                let (mut want, mut bound, mut size) = (bias[j] as f64, 0.0, 0.0);
                for p in 0..k {
                    let w = expanded[j * k + p] as f64;
                    want += x[i * k + p] as f64 * w;
                    bound += (xhat[i * k + p] - x[i * k + p] as f64).abs() * w.abs();
                    size += (xhat[i * k + p] * w).abs();
                }
                let error = (got[i * n + j] as f64 - want).abs();
                assert!(
                    error <= bound + 2e-6 * size,
                    "[{i},{j}]: {} vs {want}: off by {error}, bound {bound}",
                    got[i * n + j]
                );
                largest_error = largest_error.max(error);
            }
        }
        // And the quantization does change the result (else the bound proves nothing here).
        assert!(largest_error > 1e-4, "largest error {largest_error}");
    }
}
