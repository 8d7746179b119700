//! Loops of `i32x4.relaxed_dot_i8x16_i7x16_add_s` for `run.mjs` to time in Chromium:
//!
//! - `chains9`: nine independent sums, operands in registers (the dot's throughput);
//! - `chain1`: one sum (its latency);
//! - `groups`: the integer kernel's inner loop (src/model/int8.rs, `tile_relaxed`): per group of
//!   four inputs, three 16-byte weight loads, three broadcast x words, nine dots;
//! - `tile`: the same with the kernel's per-block float step (32 inputs a block: the sums
//!   converted, scaled by the weights' and x's scales, added to nine float sums).
//!
//! Each takes a count and returns a value made from the sums, so that nothing is optimised away.
#![no_std]
#![allow(static_mut_refs)]

use core::arch::wasm32::*;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// # Safety
/// An engine with relaxed SIMD.
#[no_mangle]
#[target_feature(enable = "relaxed-simd")]
pub unsafe extern "C" fn chains9(iters: u32, seed: i32) -> i32 {
    let w = [
        i32x4_splat(seed),
        i32x4_splat(seed + 1),
        i32x4_splat(seed + 2),
    ];
    let x = [
        i32x4_splat(seed ^ 0x0101_0101),
        i32x4_splat(seed ^ 0x0202_0202),
        i32x4_splat(seed ^ 0x0303_0303),
    ];
    let mut s = [i32x4_splat(0); 9];
    for _ in 0..core::hint::black_box(iters) {
        for a in 0..3 {
            for v in 0..3 {
                s[a * 3 + v] = i32x4_relaxed_dot_i8x16_i7x16_add(w[v], x[a], s[a * 3 + v]);
            }
        }
    }
    let t = s.iter().fold(i32x4_splat(0), |t, &v| i32x4_add(t, v));
    i32x4_extract_lane::<0>(t)
}

/// # Safety
/// An engine with relaxed SIMD.
#[no_mangle]
#[target_feature(enable = "relaxed-simd")]
pub unsafe extern "C" fn chain1(iters: u32, seed: i32) -> i32 {
    let (w, x) = (i32x4_splat(seed), i32x4_splat(seed ^ 0x0101_0101));
    let mut s = i32x4_splat(0);
    for _ in 0..core::hint::black_box(iters) {
        for _ in 0..9 {
            s = i32x4_relaxed_dot_i8x16_i7x16_add(w, x, s);
        }
    }
    i32x4_extract_lane::<0>(s)
}

/// Groups of four inputs in one 512-input panel of 12 columns, as the kernel packs it.
const GROUPS: usize = 128;
static mut PANEL: [u8; GROUPS * 48] = [1; GROUPS * 48];
static mut X_WORDS: [[u32; GROUPS]; 3] = [[0x0102_0304; GROUPS]; 3];
static mut STARTS: [i32; 16 * 12] = [0; 16 * 12];
static mut SCALES: [f32; 16 * 12] = [0.5; 16 * 12];
static mut X_SCALES: [[f32; 16]; 3] = [[0.25; 16]; 3];
static mut OUT: [f32; 36] = [0.0; 36];

/// Nine dots of group q into `s` (3 rows × 3 four-column vectors).
///
/// # Safety
/// q < GROUPS; an engine with relaxed SIMD.
#[inline(always)]
unsafe fn group(s: &mut [v128; 9], q: usize) {
    let vp = PANEL.as_ptr();
    let ws: [v128; 3] = core::array::from_fn(|v| v128_load(vp.add(q * 48 + 16 * v) as *const v128));
    for a in 0..3 {
        let xs = u32x4_splat(*X_WORDS[a].get_unchecked(q));
        for v in 0..3 {
            s[a * 3 + v] = i32x4_relaxed_dot_i8x16_i7x16_add(ws[v], xs, s[a * 3 + v]);
        }
    }
}

/// # Safety
/// An engine with relaxed SIMD.
#[no_mangle]
#[target_feature(enable = "relaxed-simd")]
pub unsafe extern "C" fn groups(iters: u32) -> i32 {
    let mut t = i32x4_splat(0);
    let groups = core::hint::black_box(GROUPS);
    for _ in 0..core::hint::black_box(iters) {
        let mut s = [i32x4_splat(0); 9];
        for q in 0..groups {
            group(&mut s, q);
        }
        t = s.iter().fold(t, |t, &v| i32x4_add(t, v));
    }
    i32x4_extract_lane::<0>(t)
}

/// # Safety
/// An engine with relaxed SIMD.
#[no_mangle]
#[target_feature(enable = "relaxed-simd")]
pub unsafe extern "C" fn tile(iters: u32) -> i32 {
    // The kernel hides the inner count from the optimiser too (see tile_relaxed).
    let per_block = core::hint::black_box(8usize);
    for _ in 0..core::hint::black_box(iters) {
        let mut acc = [f32x4_splat(0.0); 9];
        for bi in 0..GROUPS / 8 {
            let starts: [v128; 3] = core::array::from_fn(|v| {
                v128_load(STARTS.as_ptr().add(bi * 12 + 4 * v) as *const v128)
            });
            let mut s: [v128; 9] = core::array::from_fn(|i| starts[i % 3]);
            for g in 0..per_block {
                group(&mut s, bi * 8 + g);
            }
            let sw: [v128; 3] = core::array::from_fn(|v| {
                v128_load(SCALES.as_ptr().add(bi * 12 + 4 * v) as *const v128)
            });
            for a in 0..3 {
                let sx = f32x4_splat(*X_SCALES[a].get_unchecked(bi));
                for v in 0..3 {
                    let scale = f32x4_mul(sw[v], sx);
                    let term = f32x4_mul(scale, f32x4_convert_i32x4(s[a * 3 + v]));
                    acc[a * 3 + v] = f32x4_add(acc[a * 3 + v], term);
                }
            }
        }
        for (i, v) in acc.iter().enumerate() {
            v128_store(OUT.as_mut_ptr().add(4 * i) as *mut v128, *v);
        }
    }
    OUT[0] as i32
}
