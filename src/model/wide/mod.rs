//! x · Wᵀ for f32 weights through gitcap's own blocked kernel, natively on x86-64, in the widest
//! form the CPU runs: AVX-512 F (`avx512.rs`) or AVX2 with FMA (`avx2.rs`), chosen at run time
//! (`Form::best`).
//!
//! candle's `gemm` dispatches to its AVX2 kernel even where the CPU has AVX-512 (its `x86-v4`
//! kernels sit behind a feature that candle does not turn on), so on a CPU with two full-width
//! FMA units (Intel Xeon since Skylake-SP) it runs at about half of what torch and ONNX Runtime
//! get. Where AVX2 is the widest, gemm packs both operands on every product: a sixth of the
//! image encoder's time on an AVX2-only AMD EPYC (perf, 2 threads), which this kernel saves by
//! packing the encoder's weights once at load. The kernel takes the products of the image
//! encoder and of prompts, and its matrix-vector loop (`add_dots`) decoding's; everything else
//! stays candle's.
//!
//! Blocking: for each `KC` inputs, the rows of x are packed once into tiles of `MR` rows stored
//! input-major, then each panel of `NR` output columns of the weight is packed input-major
//! (`KC × NR` floats: it stays in L1 while every row tile passes over it). The microkernel keeps an
//! `MR × NR` tile of the output in registers (AVX-512: 12 × 32 in 24 of the 32 zmm registers;
//! AVX2: 6 × 16 in 12 of the 16 ymm registers) and adds one broadcast x value times two weight
//! vectors per input and row. Rows past the last are zero in the packed tiles and never stored;
//! columns past the last are zero in the panel and masked off when stored. Both forms add the
//! same products in the same order along k, but their lanes hold other columns: they agree to
//! rounding, not bit for bit.
//!
//! Compiled for x86_64 only (`model/mod.rs`).

/// The loops both forms share, written once over the lane operations of the module that invokes
/// it (`MR`, `NR`, `V`, `LANES`, `Mask`, `lanes_below`, `load`, `load_masked`, `store`,
/// `store_masked`, `transpose`, `zero`, `splat`, `add`, `sub`, `mul`, `div`, `min`, `max`,
/// `fmadd`, `sum`, `pow2`), compiled for `$feature`: the packing's register-transposed blocks,
/// the matrix-vector loop `add_dots` and the elementwise `quick_gelu` and `exp_shifted`
/// (`elementwise.rs`). The microkernel tile stays per form: its loop was tuned per instruction
/// set (see avx2.rs).
macro_rules! lane_loops {
    ($feature:literal) => {
        /// `Form::pack_rows`' whole groups of `LANES` inputs, through a register transpose.
        #[target_feature(enable = $feature)]
        pub(super) fn pack_rows(
            packed: &mut [std::mem::MaybeUninit<f32>],
            x: &[f32],
            m: usize,
            k: usize,
            k0: usize,
            kc: usize,
        ) {
            const _: () = assert!(MR <= LANES, "a tile's rows are transposed in one block");
            let whole_inputs = kc / LANES * LANES;
            let first_rows = lanes_below(MR);
            for t in 0..m.div_ceil(MR) {
                let tile = &mut packed[t * MR * kc..][..MR * kc];
                let rows = MR.min(m - t * MR);
                // The tile's rows' values k0..k0 + kc, checked once.
                let _ = &x[(t * MR + rows - 1) * k + k0..][..kc];
                for p0 in (0..whole_inputs).step_by(LANES) {
                    // SAFETY: rows t·MR.. t·MR + rows have kc values from k0 (checked above)
                    // and p0 + LANES <= kc; the MR-lane stores land at (p0 + i) · MR.. + MR
                    // <= kc · MR.
                    unsafe {
                        let block: [V; LANES] = std::array::from_fn(|r| {
                            if r < rows {
                                load(x.as_ptr().add((t * MR + r) * k + k0 + p0))
                            } else {
                                zero()
                            }
                        });
                        for (i, column) in transpose(block).iter().enumerate() {
                            let out = tile.as_mut_ptr().add((p0 + i) * MR).cast::<f32>();
                            store_masked(out, first_rows, *column);
                        }
                    }
                }
            }
        }

        /// `Form::pack_panel`'s whole `LANES` × `LANES` blocks, through registers; `panel`
        /// holds kc · NR values.
        #[target_feature(enable = $feature)]
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
            let whole_rows = nr / LANES * LANES;
            let whole_inputs = kc / LANES * LANES;
            for b0 in (0..whole_rows).step_by(LANES) {
                // The block's rows' values k0..k0 + kc, checked once.
                let _ = &w[(j0 + b0 + LANES - 1) * k + k0..][..kc];
                for p0 in (0..whole_inputs).step_by(LANES) {
                    // SAFETY: rows j0 + b0..j0 + b0 + LANES have kc values from k0 (checked
                    // above) and p0 + LANES <= kc; the stores land at (p0 + i) · NR + b0..
                    // + LANES <= kc · NR.
                    unsafe {
                        let rows: [V; LANES] = std::array::from_fn(|i| {
                            load(w.as_ptr().add((j0 + b0 + i) * k + k0 + p0))
                        });
                        for (i, column) in transpose(rows).iter().enumerate() {
                            store(panel.as_mut_ptr().add((p0 + i) * NR + b0), *column);
                        }
                    }
                }
            }
        }

        /// `Form::add_dots` at `LANES` lanes.
        ///
        /// # Safety
        /// The CPU runs the form; x holds m × k floats, w j_end × k, j_start <= j_end <= n,
        /// k > 0; `c` points to m × n floats of which no other thread touches columns
        /// `j_start..j_end` during the call.
        #[target_feature(enable = $feature)]
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
            let whole = k / LANES * LANES;
            let tail = lanes_below(k - whole);
            let mut j = j_start;
            while j < j_end {
                let rows = 4.min(j_end - j);
                // A group short of four repeats its last row; those sums are not stored.
                let wr: [*const f32; 4] =
                    std::array::from_fn(|r| w[(j + r.min(rows - 1)) * k..].as_ptr());
                for i in 0..m {
                    let xr = x[i * k..].as_ptr();
                    let mut acc = [zero(); 4];
                    // SAFETY: x's row i and the weight rows have k values (the caller's
                    // contract); the loads read below `whole`, the masked ones below k.
                    unsafe {
                        for p in (0..whole).step_by(LANES) {
                            let xv = load(xr.add(p));
                            for (acc, w) in acc.iter_mut().zip(wr) {
                                *acc = fmadd(load(w.add(p)), xv, *acc);
                            }
                        }
                        if whole < k {
                            let xv = load_masked(xr.add(whole), tail);
                            for (acc, w) in acc.iter_mut().zip(wr) {
                                *acc = fmadd(load_masked(w.add(whole), tail), xv, *acc);
                            }
                        }
                        for (r, acc) in acc.iter().enumerate().take(rows) {
                            // SAFETY: row i, column j + r < j_end: this call's (the caller's
                            // contract).
                            *c.add(i * n + j + r) += sum(*acc);
                        }
                    }
                }
                j += rows;
            }
        }

        /// `Form::quick_gelu` at `LANES` lanes.
        ///
        /// # Safety
        /// The CPU runs the form.
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn quick_gelu(xs: &mut [f32]) -> usize {
            let whole = xs.len() / LANES * LANES;
            for chunk in xs[..whole].chunks_exact_mut(LANES) {
                // SAFETY: LANES floats in `chunk`.
                unsafe {
                    let x = load(chunk.as_ptr());
                    let e = exp(mul(x, splat(-1.702)));
                    store(chunk.as_mut_ptr(), div(x, add(splat(1.0), e)));
                }
            }
            whole
        }

        /// `Form::exp_shifted` at `LANES` lanes.
        ///
        /// # Safety
        /// The CPU runs the form.
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn exp_shifted(xs: &mut [f32], shift: f32) -> usize {
            let whole = xs.len() / LANES * LANES;
            let shift = splat(shift);
            for chunk in xs[..whole].chunks_exact_mut(LANES) {
                // SAFETY: LANES floats in `chunk`.
                unsafe { store(chunk.as_mut_ptr(), exp(sub(load(chunk.as_ptr()), shift))) };
            }
            whole
        }

        /// `simd::exp`, operation for operation (no fused multiply-adds), so the same bits.
        #[target_feature(enable = $feature)]
        fn exp(x: V) -> V {
            use super::super::simd::exp_consts::*;
            // simd::max(x, lo) is `x < lo ? lo : x`, which is max(lo, x) (x when NaN); min
            // alike.
            let x = min(splat(MAX), max(splat(MIN), x));
            // simd::round.
            let magic = splat(ROUNDING);
            let n = sub(add(mul(x, splat(std::f32::consts::LOG2_E)), magic), magic);
            let r = sub(x, mul(n, splat(LN2_HI)));
            let r = sub(r, mul(n, splat(LN2_LO)));
            let mut p = splat(POLY[0]);
            for &c in &POLY[1..] {
                p = add(mul(p, r), splat(c));
            }
            let p = add(mul(mul(p, r), r), add(r, splat(1.0)));
            mul(p, pow2(n))
        }
    };
}

mod avx2;
mod avx512;

use std::mem::MaybeUninit;

/// Inputs per packed block. AVX-512: a 32 KiB weight panel and 12 KiB per row tile; AVX2: a
/// 16 KiB panel and 6 KiB per row tile (Zen 3's L1 holds 32 KiB).
const KC: usize = 256;

/// One instruction set's form of the kernel: its tile shape and its loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Avx512,
    Avx2,
}

impl Form {
    /// Every form, widest first.
    pub const ALL: [Form; 2] = [Form::Avx512, Form::Avx2];

    /// The forms this CPU runs, for tests over each; says which it leaves out.
    #[cfg(test)]
    pub fn runnable() -> Vec<Form> {
        Form::ALL
            .into_iter()
            .filter(|f| {
                let runs = f.available();
                if !runs {
                    eprintln!("{f:?}: not on this CPU, not run");
                }
                runs
            })
            .collect()
    }

    /// The widest form this CPU runs, if any.
    pub fn best() -> Option<Form> {
        Form::ALL.into_iter().find(|f| f.available())
    }

    /// Whether this CPU runs the form (std caches the CPU's features: the check costs a load).
    pub fn available(self) -> bool {
        match self {
            Form::Avx512 => avx512::available(),
            Form::Avx2 => avx2::available(),
        }
    }

    /// The instruction set, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Form::Avx512 => "AVX-512 F",
            Form::Avx2 => "AVX2 + FMA",
        }
    }

    /// Output rows per microkernel tile (broadcast operands).
    pub fn mr(self) -> usize {
        match self {
            Form::Avx512 => avx512::MR,
            Form::Avx2 => avx2::MR,
        }
    }

    /// Output columns per microkernel tile (two vectors).
    pub fn nr(self) -> usize {
        match self {
            Form::Avx512 => avx512::NR,
            Form::Avx2 => avx2::NR,
        }
    }

    /// The side of the form's register transposes (`pack_rows`, `pack_panel`).
    fn block(self) -> usize {
        match self {
            Form::Avx512 => 16,
            Form::Avx2 => 8,
        }
    }

    /// x[.., k0..k0 + kc] into row tiles: tile t holds rows t·mr.. as kc groups of mr values,
    /// one per row (zero for rows past m). Writes all of `packed`'s first mr · ⌈m / mr⌉ · kc
    /// values: the form the whole groups of `block()` inputs, through register transposes (one
    /// value at a time, the packing took 5% of git-large's encoder on one thread of an Intel
    /// Xeon), then the rest here one by one.
    ///
    /// # Safety
    /// The CPU runs the form.
    unsafe fn pack_rows(
        self,
        packed: &mut [MaybeUninit<f32>],
        x: &[f32],
        m: usize,
        k: usize,
        k0: usize,
        kc: usize,
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            match self {
                Form::Avx512 => avx512::pack_rows(packed, x, m, k, k0, kc),
                Form::Avx2 => avx2::pack_rows(packed, x, m, k, k0, kc),
            }
        }
        let mr = self.mr();
        let whole_inputs = kc / self.block() * self.block();
        for t in 0..m.div_ceil(mr) {
            let tile = &mut packed[t * mr * kc..][..mr * kc];
            let rows = mr.min(m - t * mr);
            for r in 0..mr {
                if r < rows {
                    let row = &x[(t * mr + r) * k + k0..][..kc];
                    for p in whole_inputs..kc {
                        tile[p * mr + r].write(row[p]);
                    }
                } else {
                    for p in whole_inputs..kc {
                        tile[p * mr + r].write(0.0);
                    }
                }
            }
        }
    }

    /// w[j0..j0 + nr, k0..k0 + kc] transposed into panel[p · NR + b], zero past nr: the form the
    /// whole `block()` × `block()` blocks through registers (one value at a time throughout, the
    /// packing took a quarter of the kernel's time), the edges here one value at a time.
    ///
    /// # Safety
    /// The CPU runs the form.
    #[allow(clippy::too_many_arguments)]
    unsafe fn pack_panel(
        self,
        panel: &mut [f32],
        w: &[f32],
        k: usize,
        k0: usize,
        kc: usize,
        j0: usize,
        nr: usize,
    ) {
        let width = self.nr();
        let panel = &mut panel[..kc * width];
        if nr < width {
            panel.fill(0.0);
        }
        // SAFETY: the caller's contract.
        unsafe {
            match self {
                Form::Avx512 => avx512::pack_panel(panel, w, k, k0, kc, j0, nr),
                Form::Avx2 => avx2::pack_panel(panel, w, k, k0, kc, j0, nr),
            }
        }
        let block = self.block();
        let (whole_rows, whole_inputs) = (nr / block * block, kc / block * block);
        for b in 0..nr {
            let row = &w[(j0 + b) * k + k0..][..kc];
            let from = if b < whole_rows { whole_inputs } else { 0 };
            for p in from..kc {
                panel[p * width + b] = row[p];
            }
        }
    }

    /// Adds x (m × k, row-major) · w[j_start..j_end]ᵀ to columns `j_start..j_end` of c (m × n), for
    /// decoding's few rows: each weight row is read from memory once and dotted with every row of
    /// x, four weight rows at a time, a vector of inputs a step (the inputs past the last whole
    /// vector masked). Each value's sum is reduced the same way whichever call and group holds
    /// its column.
    ///
    /// # Safety
    /// The CPU runs the form; `c` points to m × n floats of which no other thread touches
    /// columns `j_start..j_end` during the call.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn add_dots(
        self,
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
        // SAFETY: the caller's contract; the operands' sizes are asserted above.
        unsafe {
            match self {
                Form::Avx512 => avx512::add_dots(c, x, m, k, w, n, j_start, j_end),
                Form::Avx2 => avx2::add_dots(c, x, m, k, w, n, j_start, j_end),
            }
        }
    }

    /// quick_gelu (x · sigmoid(1.702 x)) in place over the whole vectors at the front of `xs`,
    /// with the four-lane loops' bits (`elementwise.rs` does the rest); returns how many values
    /// it did. Panics where the CPU does not run the form.
    pub fn quick_gelu(self, xs: &mut [f32]) -> usize {
        assert!(self.available(), "{self:?} on a CPU without it");
        // SAFETY: the CPU runs the form (asserted above).
        unsafe {
            match self {
                Form::Avx512 => avx512::quick_gelu(xs),
                Form::Avx2 => avx2::quick_gelu(xs),
            }
        }
    }

    /// exp(x - shift) in place over the whole vectors at the front of `xs`, with the four-lane
    /// loops' bits; returns how many values it did. Panics where the CPU does not run the form.
    pub fn exp_shifted(self, xs: &mut [f32], shift: f32) -> usize {
        assert!(self.available(), "{self:?} on a CPU without it");
        // SAFETY: the CPU runs the form (asserted above).
        unsafe {
            match self {
                Form::Avx512 => avx512::exp_shifted(xs, shift),
                Form::Avx2 => avx2::exp_shifted(xs, shift),
            }
        }
    }
}

/// x (m × k) packed for `add_product`: for each `KC` inputs, its row tiles (`pack_rows`). Packed
/// once per product and shared by every column block: each block packing its own copy made the
/// packing a third of the product's time (perf, git-large's encoder on 2 threads).
pub struct PackedX {
    data: Vec<f32>,
    form: Form,
    m: usize,
    k: usize,
}

impl PackedX {
    /// Packs x for `form`, which the CPU must run (asserted).
    pub fn new(form: Form, x: &[f32], m: usize, k: usize) -> PackedX {
        assert!(form.available() && x.len() >= m * k);
        let per_input = m.div_ceil(form.mr()) * form.mr();
        // Not zeroed first (a pass on one thread): `pack_rows` writes every value.
        let mut data = Vec::with_capacity(per_input * k);
        let pack = |(b, block): (usize, &mut [MaybeUninit<f32>])| {
            let k0 = b * KC;
            // SAFETY: the CPU runs the form (asserted above).
            unsafe { form.pack_rows(block, x, m, k, k0, KC.min(k - k0)) };
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
        PackedX { data, form, m, k }
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
    form: Form,
    n: usize,
    k: usize,
}

impl PackedWeight {
    /// Packs w (n × k, row-major) for `form`, which the CPU must run (asserted).
    pub fn new(form: Form, w: &[f32], n: usize, k: usize) -> PackedWeight {
        assert!(form.available() && w.len() == n * k);
        let nr = form.nr();
        let width = n.div_ceil(nr) * nr;
        let mut data = vec![0f32; width * k];
        use rayon::prelude::*;
        // Each block of KC inputs is a whole chunk (k0 · width values precede it).
        data.par_chunks_mut(width * KC)
            .enumerate()
            .for_each(|(b, block)| {
                let (k0, kc) = (b * KC, KC.min(k - b * KC));
                for (p, panel) in block.chunks_exact_mut(kc * nr).enumerate() {
                    let j0 = p * nr;
                    // SAFETY: the CPU runs the form (asserted above).
                    unsafe { form.pack_panel(panel, w, k, k0, kc, j0, nr.min(n - j0)) };
                }
            });
        PackedWeight { data, form, n, k }
    }

    pub fn form(&self) -> Form {
        self.form
    }

    /// The panel of inputs k0.. (a multiple of KC) and columns j0.. (a multiple of NR).
    fn panel(&self, k0: usize, j0: usize) -> &[f32] {
        let nr = self.form.nr();
        let kc = KC.min(self.k - k0);
        let width = self.n.div_ceil(nr) * nr;
        &self.data[k0 * width + j0 * kc..][..kc * nr]
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn inputs(&self) -> usize {
        self.k
    }

    /// The weight as it was given (n × k, row-major).
    pub fn unpack(&self) -> Vec<f32> {
        let (n, k, nr) = (self.n, self.k, self.form.nr());
        let mut w = vec![0f32; n * k];
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for j0 in (0..n).step_by(nr) {
                let panel = self.panel(k0, j0);
                for b in 0..nr.min(n - j0) {
                    for p in 0..kc {
                        w[(j0 + b) * k + k0 + p] = panel[p * nr + b];
                    }
                }
            }
        }
        w
    }
}

/// Adds x (m × k) · w[j_start..j_end]ᵀ to columns `j_start..j_end` of c (m × n, row-major), in
/// x's form (a packed weight's must be the same); a packed weight's column range starts at a
/// multiple of NR.
///
/// # Safety
/// `c` points to m × n floats of which no other thread touches columns `j_start..j_end` during
/// the call; w has at least j_end × k floats.
pub unsafe fn add_product(
    c: *mut f32,
    x: &PackedX,
    w: Weight,
    n: usize,
    j_start: usize,
    j_end: usize,
) {
    let (m, k, form) = (x.m, x.k, x.form);
    let (mr, nr) = (form.mr(), form.nr());
    match w {
        Weight::Rows(w) => assert!(w.len() >= j_end * k),
        Weight::Packed(w) => {
            assert!(w.form == form && w.k == k && w.n == n && j_start.is_multiple_of(nr))
        }
    }
    assert!(j_end <= n);
    let tiles = m.div_ceil(mr);
    let mut scratch = match w {
        Weight::Rows(_) => vec![0f32; KC * nr],
        Weight::Packed(_) => Vec::new(),
    };
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let packed_x = &x.data[tiles * mr * k0..][..tiles * mr * kc];
        for j0 in (j_start..j_end).step_by(nr) {
            let cols = nr.min(j_end - j0);
            let panel: &[f32] = match w {
                Weight::Rows(w) => {
                    // SAFETY: x was packed in this form, which PackedX::new checked the CPU runs.
                    unsafe { form.pack_panel(&mut scratch, w, k, k0, kc, j0, cols) };
                    &scratch
                }
                Weight::Packed(w) => w.panel(k0, j0),
            };
            // The panel after this one, fetched into L2 a share per row tile while this one is
            // used, so that its first tile does not wait on memory: 122 → 147 GFLOP/s for the
            // encoder's products on one thread of an Intel Xeon (AVX-512 at two FMAs a cycle).
            let next: &[f32] = match w {
                Weight::Packed(w) if j0 + nr < j_end => w.panel(k0, j0 + nr),
                Weight::Packed(w) if k0 + kc < k => w.panel(k0 + kc, j_start),
                _ => &[],
            };
            let lines = next.len() / LINE;
            let share = lines.div_ceil(tiles);
            for t in 0..tiles {
                let i0 = t * mr;
                let rows = mr.min(m - i0);
                let first = (t * share).min(lines);
                let prefetch = Prefetch {
                    from: next[first * LINE..].as_ptr(),
                    lines: share.min(lines - first),
                };
                let a = packed_x[t * mr * kc..].as_ptr();
                // SAFETY: the CPU runs the form (checked by PackedX::new); the tile lies inside
                // packed_x; rows i0..i0 + rows, columns j0..j0 + cols are inside this call's part
                // of c (the caller's contract); the prefetched lines lie inside `next`.
                unsafe {
                    let c = c.add(i0 * n + j0);
                    match form {
                        Form::Avx512 => {
                            avx512::tile(a, panel.as_ptr(), kc, c, n, rows, cols, prefetch)
                        }
                        Form::Avx2 => avx2::tile(a, panel.as_ptr(), kc, c, n, rows, cols, prefetch),
                    }
                };
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_matrices as operands;

    /// The register transposes pack the same panel as one value at a time, at every edge.
    #[test]
    fn panel_packing_matches_the_definition() {
        for form in Form::runnable() {
            let nr = form.nr();
            for &(n, k, k0, kc, j0, cols) in &[
                (nr, 256usize, 0usize, 256usize, 0usize, nr),
                (70, 300, 16, 37, 3, nr),
                (40, 64, 0, 64, 20, nr.min(20)),
                (17, 48, 32, 16, 0, nr.min(17)),
                (13, 48, 8, 40, 0, 13),
                (5, 9, 0, 9, 0, 5),
            ] {
                let w: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
                let mut got = vec![f32::NAN; KC * nr];
                // SAFETY: forms() holds the CPU's.
                unsafe { form.pack_panel(&mut got, &w, k, k0, kc, j0, cols) };
                for p in 0..kc {
                    for b in 0..nr {
                        let want = if b < cols {
                            w[(j0 + b) * k + k0 + p]
                        } else {
                            0.0
                        };
                        assert_eq!(
                            got[p * nr + b],
                            want,
                            "{form:?} ({n},{k},{k0},{kc},{j0},{cols}) [{p},{b}]"
                        );
                    }
                }
            }
        }
    }

    /// The register transposes pack x's row tiles as one value at a time would: rows past m
    /// zero, inputs past the last whole vector, several KC blocks with a remainder.
    #[test]
    fn row_packing_matches_the_definition() {
        for form in Form::runnable() {
            let mr = form.mr();
            for &(m, k) in &[
                (1usize, 1usize),
                (5, 3),
                (6, 8),
                (7, 17),
                (12, 16),
                (13, KC + 7),
                (257, 2 * KC + 37),
            ] {
                let x: Vec<f32> = (0..m * k).map(|i| i as f32 + 0.5).collect();
                let packed = PackedX::new(form, &x, m, k);
                let tiles = m.div_ceil(mr);
                assert_eq!(packed.data.len(), tiles * mr * k);
                for k0 in (0..k).step_by(KC) {
                    let kc = KC.min(k - k0);
                    let block = &packed.data[tiles * mr * k0..][..tiles * mr * kc];
                    for i in 0..tiles * mr {
                        for p in 0..kc {
                            let want = if i < m { x[i * k + k0 + p] } else { 0.0 };
                            let got = block[i / mr * mr * kc + p * mr + i % mr];
                            assert_eq!(got, want, "{form:?} ({m},{k}) row {i} input {}", k0 + p);
                        }
                    }
                    // Nothing written past the block: packed into a longer buffer, its tail
                    // keeps what was there (a store wider than a tile's rows would not).
                    let need = tiles * mr * kc;
                    let mut longer = vec![MaybeUninit::new(-7.0f32); need + 64];
                    // SAFETY: the CPU runs the form (`Form::runnable`).
                    unsafe { form.pack_rows(&mut longer, &x, m, k, k0, kc) };
                    for (o, v) in longer[need..].iter().enumerate() {
                        // SAFETY: written with -7.0 above.
                        let v = unsafe { v.assume_init() };
                        assert_eq!(v, -7.0, "{form:?} ({m},{k}) wrote {o} past the block");
                    }
                }
            }
        }
    }

    /// A weight packed ahead gives the same bits as one packed per product, and unpacks to
    /// itself: whole and partial panels, several KC blocks with a remainder, a column range
    /// that starts at a later panel.
    #[test]
    fn packed_weight_matches_packing_per_product() {
        for form in Form::runnable() {
            for &(m, n, k, j_start, j_end) in &[
                (1, 1, 1, 0, 1),
                (13, 70, 2 * KC + 9, 0, 70),
                (25, 64, KC, 32, 64),
                (257, 100, 1024, 32, 97),
            ] {
                let (x, w) = operands(m, n, k);
                let packed_w = PackedWeight::new(form, &w, n, k);
                assert_eq!(packed_w.unpack(), w, "{form:?} ({n}, {k}) unpacked");
                let packed_x = PackedX::new(form, &x, m, k);
                let (mut want, mut got) = (vec![0.5f32; m * n], vec![0.5f32; m * n]);
                // SAFETY: each output is m × n and only this thread's.
                unsafe {
                    let rows = Weight::Rows(&w);
                    add_product(want.as_mut_ptr(), &packed_x, rows, n, j_start, j_end);
                    let packed = Weight::Packed(&packed_w);
                    add_product(got.as_mut_ptr(), &packed_x, packed, n, j_start, j_end);
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{form:?} ({m}, {n}, {k}, {j_start}..{j_end})"
                );
            }
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
    /// at and past a multiple of the vector width, weight groups short of four, a column range
    /// inside the weight; columns outside the range keep their values.
    #[test]
    fn dots_match_f64_at_every_edge() {
        for form in Form::runnable() {
            for &(m, n, k, j_start, j_end) in &[
                (1usize, 1usize, 1usize, 0usize, 1usize),
                (1, 7, 7, 0, 7),
                (1, 7, 15, 0, 7),
                (2, 5, 8, 1, 5),
                (1, 70, 768, 3, 69),
                (3, 33, 37, 0, 33),
                (7, 9, 3072, 2, 9),
            ] {
                let (x, w) = operands(m, n, k);
                let start: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32).collect();
                let mut c = start.clone();
                // SAFETY: forms() holds the CPU's; c is m × n and only this thread's.
                unsafe { form.add_dots(c.as_mut_ptr(), &x, m, k, &w, n, j_start, j_end) };
                assert_adds_product(&c, &start, &x, &w, (m, n, k), j_start..j_end);
            }
        }
    }

    /// Every edge: rows not a multiple of MR, columns not a multiple of NR, several KC blocks with
    /// a remainder, a column range that starts inside the weight; against f64 dot products.
    #[test]
    fn matches_dot_products_at_every_edge() {
        for form in Form::runnable() {
            for &(m, n, k, j_start, j_end) in &[
                (1, 1, 1, 0, 1),
                (5, 40, 3, 0, 40),
                (6, 16, 8, 0, 16),
                (7, 17, 9, 0, 17),
                (13, 33, KC + 7, 0, 33),
                (25, 70, 2 * KC, 32, 70),
                (12, 32, 64, 0, 32),
                (257, 100, 1024, 3, 97),
            ] {
                let (x, w) = operands(m, n, k);
                let start: Vec<f32> = (0..m * n).map(|i| (i % 13) as f32).collect();
                let mut c = start.clone();
                let packed = PackedX::new(form, &x, m, k);
                // SAFETY: c is m × n and only this thread's.
                unsafe {
                    add_product(c.as_mut_ptr(), &packed, Weight::Rows(&w), n, j_start, j_end)
                };
                assert_adds_product(&c, &start, &x, &w, (m, n, k), j_start..j_end);
            }
        }
    }
}
