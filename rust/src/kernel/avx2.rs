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
        // Codewords j0..j0+16 land in lanes 0..8 (j mod 8; lanes 8..16 stay at +inf), visited
        // in increasing order.
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
                // Codes j and j + 8 first meet in registers: j + 8 wins only where strictly
                // smaller (or where j's value is NaN, which a fold would skip).
                let hi = _mm256_or_ps(
                    _mm256_cmp_ps::<_CMP_LT_OQ>(v1, v0),
                    _mm256_cmp_ps::<_CMP_UNORD_Q>(v0, v0),
                );
                let v = _mm256_blendv_ps(v0, v1, hi);
                let code = _mm256_castps_si256(_mm256_blendv_ps(
                    _mm256_castsi256_ps(code0),
                    _mm256_castsi256_ps(code1),
                    hi,
                ));
                fold(pv, pi, v, code);
            }
        }
    }
}

/// Keep `v` (codes `code`) in the 8 lanes at `pv`/`pi` where it is strictly smaller.
///
/// The value is kept with `min` (`v < bv ? v : bv`, the same lanes as the blend), not a blend
/// of the loaded minima: LLVM 22 turns that store-of-a-blend into `vmaskmovps`, which is
/// slow on AMD Zen (an assign at d = 32, K = 256 ran 1.4x faster without it on Zen 4).
#[target_feature(enable = "avx2,fma")]
unsafe fn fold(pv: *mut f32, pi: *mut __m256i, v: __m256, code: __m256i) {
    let bv = _mm256_loadu_ps(pv);
    let bi = _mm256_loadu_si256(pi);
    let lt = _mm256_cmp_ps::<_CMP_LT_OQ>(v, bv);
    _mm256_storeu_ps(pv, _mm256_min_ps(v, bv));
    let bi = _mm256_castps_si256(_mm256_blendv_ps(
        _mm256_castsi256_ps(bi),
        _mm256_castsi256_ps(code),
        lt,
    ));
    _mm256_storeu_si256(pi, bi);
}

/// # Safety
/// As [`super::reduce_portable`]; the CPU supports AVX2. Branch-free: the portable loop's
/// branches mispredict often enough to cost ~7% of an assign at d = 32.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn reduce(best_v: *const f32, best_i: *const i32) -> (usize, f32) {
    let (v0, v1) = (_mm256_loadu_ps(best_v), _mm256_loadu_ps(best_v.add(8)));
    let mut m = _mm256_min_ps(v0, v1);
    m = _mm256_min_ps(m, _mm256_permute2f128_ps::<1>(m, m));
    m = _mm256_min_ps(m, _mm256_permute_ps::<0b0100_1110>(m));
    m = _mm256_min_ps(m, _mm256_permute_ps::<0b1011_0001>(m));
    let none = _mm256_set1_epi32(i32::MAX);
    let pick = |v: __m256, i: __m256i| {
        let at = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, m));
        _mm256_blendv_epi8(none, i, at)
    };
    let i0 = pick(v0, _mm256_loadu_si256(best_i as *const __m256i));
    let i1 = pick(v1, _mm256_loadu_si256(best_i.add(8) as *const __m256i));
    let mut j = _mm256_min_epi32(i0, i1);
    j = _mm256_min_epi32(j, _mm256_permute2x128_si256::<1>(j, j));
    j = _mm256_min_epi32(j, _mm256_shuffle_epi32::<0b0100_1110>(j));
    j = _mm256_min_epi32(j, _mm256_shuffle_epi32::<0b1011_0001>(j));
    let j = _mm256_cvtsi256_si32(j);
    if j == i32::MAX {
        (0, f32::INFINITY) // every value was +inf or NaN
    } else {
        (j as usize, _mm256_cvtss_f32(m))
    }
}
