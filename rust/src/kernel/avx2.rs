//! AVX2 + FMA micro-kernels (x86-64-v3). Sixteen ymm registers hold a 6×16 sub-tile (12
//! accumulators, two codeword vectors, one broadcast), as in BLIS's Haswell kernel; the MR×NR
//! tile is four such sub-tiles over operands that stay in L1. Each product is one FMA per k in
//! the same order as the AVX-512 kernel, so the two give bit-identical scores.

use super::{a_at, a_step, Epilogue, LANES, MR, NR};
use std::arch::x86_64::*;

/// Rows and codewords of one sub-tile.
const SR: usize = 6;
const SC: usize = 16;

/// The products of rows `i0..i0+SR` and codewords `j0..j0+SC` of the tile, started from `c`
/// when `acc`: low and high 8 codewords per row.
#[target_feature(enable = "avx2,fma")]
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
) -> ([__m256; SR], [__m256; SR]) {
    let mut s0 = [_mm256_setzero_ps(); SR];
    let mut s1 = [_mm256_setzero_ps(); SR];
    if acc {
        for i in 0..SR {
            s0[i] = _mm256_loadu_ps(c.add((i0 + i) * ldc + j0));
            s1[i] = _mm256_loadu_ps(c.add((i0 + i) * ldc + j0 + 8));
        }
    }
    let (mut ap, mut bp) = (a.add(a_at::<L>(i0, 0, lda)), b.add(j0));
    for _ in 0..kc {
        let b0 = _mm256_loadu_ps(bp);
        let b1 = _mm256_loadu_ps(bp.add(8));
        for i in 0..SR {
            let ai = _mm256_broadcast_ss(&*ap.add(a_at::<L>(i, 0, lda)));
            s0[i] = _mm256_fmadd_ps(ai, b0, s0[i]);
            s1[i] = _mm256_fmadd_ps(ai, b1, s1[i]);
        }
        ap = ap.add(a_step::<L>());
        bp = bp.add(NR);
    }
    (s0, s1)
}

/// # Safety
/// As [`super::tile_portable`]; the CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
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
            let (s0, s1) = sub_tile::<L>(kc, a, lda, b, c, ldc, acc, i0, j0);
            for i in 0..SR {
                _mm256_storeu_ps(c.add((i0 + i) * ldc + j0), s0[i]);
                _mm256_storeu_ps(c.add((i0 + i) * ldc + j0 + 8), s1[i]);
            }
        }
    }
}

/// # Safety
/// As [`super::tile_argmin_portable`]; the CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
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
    let va = _mm256_set1_ps(epi.alpha);
    let step = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for i0 in (0..MR).step_by(SR) {
        // Codewords j0..j0+16 land in lanes 0..16 (j mod LANES), visited in increasing order.
        for j0 in (0..NR).step_by(SC) {
            let (s0, s1) = sub_tile::<L>(kc, a, lda, b, c, ldc, acc, i0, j0);
            let bias0 = _mm256_loadu_ps(epi.bias.add(j0));
            let bias1 = _mm256_loadu_ps(epi.bias.add(j0 + 8));
            let code0 = _mm256_add_epi32(_mm256_set1_epi32(epi.base + j0 as i32), step);
            let code1 = _mm256_add_epi32(code0, _mm256_set1_epi32(8));
            for i in 0..SR {
                let pv = best_v.add((i0 + i) * LANES);
                let pi = best_i.add((i0 + i) * LANES) as *mut __m256i;
                let v0 = _mm256_fmadd_ps(va, s0[i], bias0);
                let v1 = _mm256_fmadd_ps(va, s1[i], bias1);
                fold(pv, pi, v0, code0);
                fold(pv.add(8), pi.add(1), v1, code1);
            }
        }
    }
}

/// Keep `v` (codes `code`) in the 8 lanes at `pv`/`pi` where it is strictly smaller.
#[target_feature(enable = "avx2,fma")]
unsafe fn fold(pv: *mut f32, pi: *mut __m256i, v: __m256, code: __m256i) {
    let bv = _mm256_loadu_ps(pv);
    let bi = _mm256_loadu_si256(pi);
    let lt = _mm256_cmp_ps::<_CMP_LT_OQ>(v, bv);
    _mm256_storeu_ps(pv, _mm256_blendv_ps(bv, v, lt));
    let bi = _mm256_castps_si256(_mm256_blendv_ps(
        _mm256_castsi256_ps(bi),
        _mm256_castsi256_ps(code),
        lt,
    ));
    _mm256_storeu_si256(pi, bi);
}
