//! Four-lane f32 arithmetic for the WebAssembly build's own kernels (`matmul`, `elementwise`):
//! wasm SIMD in the browser build, plain arrays elsewhere. Natively the kernels run only in the
//! tests, which check in this portable form every line of the code the browser runs; the wasm
//! tests check the SIMD lanes in Chromium.

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod imp {
    use core::arch::wasm32::*;

    pub type V = v128;

    #[inline(always)]
    pub fn splat(x: f32) -> V {
        f32x4_splat(x)
    }

    /// # Safety
    /// Four f32 from `p` on must be readable (v128 loads need no alignment).
    #[inline(always)]
    pub unsafe fn load(p: *const f32) -> V {
        unsafe { v128_load(p as *const v128) }
    }

    /// # Safety
    /// Four f32 from `p` on must be writable.
    #[inline(always)]
    pub unsafe fn store(p: *mut f32, v: V) {
        unsafe { v128_store(p as *mut v128, v) }
    }

    #[inline(always)]
    pub fn add(a: V, b: V) -> V {
        f32x4_add(a, b)
    }

    #[inline(always)]
    pub fn sub(a: V, b: V) -> V {
        f32x4_sub(a, b)
    }

    #[inline(always)]
    pub fn mul(a: V, b: V) -> V {
        f32x4_mul(a, b)
    }

    #[inline(always)]
    pub fn div(a: V, b: V) -> V {
        f32x4_div(a, b)
    }

    #[inline(always)]
    pub fn max(a: V, b: V) -> V {
        f32x4_pmax(a, b)
    }

    #[inline(always)]
    pub fn min(a: V, b: V) -> V {
        f32x4_pmin(a, b)
    }

    /// a · b + c; fused where the build enables relaxed SIMD.
    #[inline(always)]
    pub fn madd(a: V, b: V, c: V) -> V {
        #[cfg(target_feature = "relaxed-simd")]
        {
            f32x4_relaxed_madd(a, b, c)
        }
        #[cfg(not(target_feature = "relaxed-simd"))]
        {
            f32x4_add(f32x4_mul(a, b), c)
        }
    }

    #[inline(always)]
    pub fn round(a: V) -> V {
        f32x4_nearest(a)
    }

    /// 2^n for integral n in the normal range.
    #[inline(always)]
    pub fn pow2(n: V) -> V {
        i32x4_shl(i32x4_add(i32x4_trunc_sat_f32x4(n), i32x4_splat(127)), 23)
    }

    #[inline(always)]
    pub fn lanes(v: V) -> [f32; 4] {
        [
            f32x4_extract_lane::<0>(v),
            f32x4_extract_lane::<1>(v),
            f32x4_extract_lane::<2>(v),
            f32x4_extract_lane::<3>(v),
        ]
    }
}

// Every helper is #[inline(always)] and spelled lane by lane: the tests build gitcap at opt-level 1,
// where calls to these (and to std::array::from_fn's iterator machinery) were most of a split
// test's time.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod imp {
    pub type V = [f32; 4];

    #[inline(always)]
    fn map2(a: V, b: V, f: impl Fn(f32, f32) -> f32) -> V {
        [f(a[0], b[0]), f(a[1], b[1]), f(a[2], b[2]), f(a[3], b[3])]
    }

    #[inline(always)]
    fn map(a: V, f: impl Fn(f32) -> f32) -> V {
        [f(a[0]), f(a[1]), f(a[2]), f(a[3])]
    }

    #[inline(always)]
    pub fn splat(x: f32) -> V {
        [x; 4]
    }

    /// # Safety
    /// Four f32 from `p` on must be readable.
    #[inline(always)]
    pub unsafe fn load(p: *const f32) -> V {
        unsafe { [*p, *p.add(1), *p.add(2), *p.add(3)] }
    }

    /// # Safety
    /// Four f32 from `p` on must be writable.
    #[inline(always)]
    pub unsafe fn store(p: *mut f32, v: V) {
        unsafe {
            *p = v[0];
            *p.add(1) = v[1];
            *p.add(2) = v[2];
            *p.add(3) = v[3];
        }
    }

    #[inline(always)]
    pub fn add(a: V, b: V) -> V {
        map2(a, b, |a, b| a + b)
    }

    #[inline(always)]
    pub fn sub(a: V, b: V) -> V {
        map2(a, b, |a, b| a - b)
    }

    #[inline(always)]
    pub fn mul(a: V, b: V) -> V {
        map2(a, b, |a, b| a * b)
    }

    #[inline(always)]
    pub fn div(a: V, b: V) -> V {
        map2(a, b, |a, b| a / b)
    }

    /// wasm's pmax: b < a ? a : b.
    #[inline(always)]
    pub fn max(a: V, b: V) -> V {
        map2(a, b, |a, b| if a < b { b } else { a })
    }

    /// wasm's pmin: b < a ? b : a.
    #[inline(always)]
    pub fn min(a: V, b: V) -> V {
        map2(a, b, |a, b| if b < a { b } else { a })
    }

    #[inline(always)]
    pub fn madd(a: V, b: V, c: V) -> V {
        add(mul(a, b), c)
    }

    /// Round to nearest even by adding and removing 1.5 · 2²³ (exact for |a| < 2²²; `exp`
    /// rounds values under 128): unlike `round_ties_even`, this needs no libm call on x86-64's
    /// baseline, so the loops that use it vectorise.
    #[inline(always)]
    pub fn round(a: V) -> V {
        use super::exp_consts::ROUNDING;
        map(a, |a| (a + ROUNDING) - ROUNDING)
    }

    #[inline(always)]
    pub fn pow2(n: V) -> V {
        map(n, |n| f32::from_bits(((n as i32 + 127) as u32) << 23))
    }

    #[inline(always)]
    pub fn lanes(v: V) -> [f32; 4] {
        v
    }
}

pub use imp::*;

/// `exp`'s constants, shared with the AVX-512 form (`elementwise`), which must give its bits.
pub mod exp_consts {
    /// The clamp: below, eˣ is 1e-38 (a masked -inf gives that, not NaN); above, it overflows.
    pub const MIN: f32 = -87.3;
    pub const MAX: f32 = 88.0;
    /// ln 2 in two parts, so that n · LN2_HI is exact.
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// The polynomial's coefficients in r, highest first; 1 + r is added last.
    pub const POLY: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];
    /// Adding and removing 1.5 · 2²³ rounds to the nearest even integer (the native `round`).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))] // wasm rounds with its own instruction
    pub const ROUNDING: f32 = 12_582_912.0;
}

/// eˣ to about 2 ulp for x in [-87.3, 88] (clamped outside, so a masked -inf gives 1e-38, not
/// NaN): Cephes' expf, x = n·ln 2 + r with |r| ≤ ln 2 / 2 and a degree-7 polynomial in r.
#[inline(always)]
pub fn exp(x: V) -> V {
    use exp_consts::*;
    let x = min(max(x, splat(MIN)), splat(MAX));
    let n = round(mul(x, splat(std::f32::consts::LOG2_E)));
    let r = sub(x, mul(n, splat(LN2_HI)));
    let r = sub(r, mul(n, splat(LN2_LO)));
    let mut p = splat(POLY[0]);
    for c in &POLY[1..] {
        p = madd(p, r, splat(*c));
    }
    let p = madd(mul(p, r), r, add(r, splat(1.0)));
    mul(p, pow2(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_std() {
        let mut worst = 0f64;
        for i in -87_000..87_900 {
            let x = i as f32 / 1000.0 + 0.000_37;
            let got = lanes(exp(splat(x)))[0] as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert!(lanes(exp(splat(f32::NEG_INFINITY)))[0] < 1e-37);
        assert_eq!(lanes(exp(splat(0.0)))[0], 1.0);
    }
}
