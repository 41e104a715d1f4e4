//! NEON micro-kernels (aarch64, where NEON is always present). Thirty-two q registers hold a
//! 6×16 sub-tile (24 accumulators, four codeword vectors, one broadcast); the MR×NR tile is
//! four such sub-tiles. Each product is one fused multiply-add per k in the same order as the
//! x86 kernels, so all three give bit-identical scores.

use super::{a_at, a_step, Epilogue, LANES, MR, NR};
use std::arch::aarch64::*;

/// Rows and codewords of one sub-tile (four vectors of 4 codewords per row).
const SR: usize = 6;
const SC: usize = 16;

/// The products of rows `i0..i0+SR` and codewords `j0..j0+SC` of the tile, started from `c`
/// when `acc`.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn sub_tile<const L: u8>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *const f32,
    ldc: usize,
    acc: bool,
    i0: usize,
    j0: usize,
) -> [[float32x4_t; 4]; SR] {
    let mut s = [[vdupq_n_f32(0.0); 4]; SR];
    if acc {
        for (i, row) in s.iter_mut().enumerate() {
            for (q, v) in row.iter_mut().enumerate() {
                *v = vld1q_f32(c.add((i0 + i) * ldc + j0 + 4 * q));
            }
        }
    }
    let (mut ap, mut bp) = (a.add(a_at::<L>(i0, 0, lda)), b.add(j0));
    for _ in 0..kc {
        let bq = [vld1q_f32(bp), vld1q_f32(bp.add(4)), vld1q_f32(bp.add(8)), vld1q_f32(bp.add(12))];
        for (i, row) in s.iter_mut().enumerate() {
            let ai = vdupq_n_f32(*ap.add(a_at::<L>(i, 0, lda)));
            for (v, &bv) in row.iter_mut().zip(&bq) {
                *v = vfmaq_f32(*v, ai, bv);
            }
        }
        ap = ap.add(a_step::<L>());
        bp = bp.add(NR);
    }
    s
}

/// # Safety
/// As [`super::tile_portable`].
#[target_feature(enable = "neon")]
pub unsafe fn tile<const L: u8>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    for i0 in (0..MR).step_by(SR) {
        for j0 in (0..NR).step_by(SC) {
            let s = sub_tile::<L>(kc, a, lda, b, c, ldc, acc, i0, j0);
            for (i, row) in s.iter().enumerate() {
                for (q, &v) in row.iter().enumerate() {
                    vst1q_f32(c.add((i0 + i) * ldc + j0 + 4 * q), v);
                }
            }
        }
    }
}

/// # Safety
/// As [`super::tile_argmin_portable`].
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_argmin<const L: u8>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *const f32,
    ldc: usize,
    acc: bool,
    epi: &Epilogue,
    best_v: *mut f32,
    best_i: *mut i32,
) {
    let va = vdupq_n_f32(epi.alpha);
    let step: [i32; 4] = [0, 1, 2, 3];
    let step = vld1q_s32(step.as_ptr());
    for i0 in (0..MR).step_by(SR) {
        // Codewords j0..j0+16 land in lanes 0..16 (j mod LANES), visited in increasing order.
        for j0 in (0..NR).step_by(SC) {
            let s = sub_tile::<L>(kc, a, lda, b, c, ldc, acc, i0, j0);
            for (i, row) in s.iter().enumerate() {
                let pv = best_v.add((i0 + i) * LANES);
                let pi = best_i.add((i0 + i) * LANES);
                for (q, &sq) in row.iter().enumerate() {
                    let bias = vld1q_f32(epi.bias.add(j0 + 4 * q));
                    let v = vfmaq_f32(bias, va, sq);
                    let code = vaddq_s32(vdupq_n_s32(epi.base + (j0 + 4 * q) as i32), step);
                    let (bv, bi) = (vld1q_f32(pv.add(4 * q)), vld1q_s32(pi.add(4 * q)));
                    let lt = vcltq_f32(v, bv); // false where either is NaN, like _CMP_LT_OQ
                    vst1q_f32(pv.add(4 * q), vbslq_f32(lt, v, bv));
                    vst1q_s32(pi.add(4 * q), vbslq_s32(lt, code, bi));
                }
            }
        }
    }
}
