//! AVX-512F micro-kernels: the whole MR×NR tile in 24 zmm accumulators (two 16-lane vectors
//! per row).

use super::{a_at, a_step, Epilogue, LANES, MR, NR};
use std::arch::x86_64::*;

/// # Safety
/// As [`super::tile_portable`]; the CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn tile<const L: u8>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    let (s0, s1) = products::<L>(kc, a, lda, b, c, ldc, acc);
    for i in 0..MR {
        _mm512_storeu_ps(c.add(i * ldc), s0[i]);
        _mm512_storeu_ps(c.add(i * ldc + 16), s1[i]);
    }
}

/// The tile's products, started from `c` when `acc`.
#[target_feature(enable = "avx512f")]
unsafe fn products<const L: u8>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *const f32,
    ldc: usize,
    acc: bool,
) -> ([__m512; MR], [__m512; MR]) {
    let mut s0 = [_mm512_setzero_ps(); MR];
    let mut s1 = [_mm512_setzero_ps(); MR];
    if acc {
        for i in 0..MR {
            s0[i] = _mm512_loadu_ps(c.add(i * ldc));
            s1[i] = _mm512_loadu_ps(c.add(i * ldc + 16));
        }
    }
    let (mut ap, mut bp) = (a, b);
    for _ in 0..kc {
        let b0 = _mm512_loadu_ps(bp);
        let b1 = _mm512_loadu_ps(bp.add(16));
        for i in 0..MR {
            let ai = _mm512_set1_ps(*ap.add(a_at::<L>(i, 0, lda)));
            s0[i] = _mm512_fmadd_ps(ai, b0, s0[i]);
            s1[i] = _mm512_fmadd_ps(ai, b1, s1[i]);
        }
        ap = ap.add(a_step::<L>());
        bp = bp.add(NR);
    }
    (s0, s1)
}

/// # Safety
/// As [`super::tile_argmin_portable`]; the CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
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
    let (s0, s1) = products::<L>(kc, a, lda, b, c, ldc, acc);
    let va = _mm512_set1_ps(epi.alpha);
    let (bias0, bias1) = (_mm512_loadu_ps(epi.bias), _mm512_loadu_ps(epi.bias.add(16)));
    let i0 = _mm512_add_epi32(
        _mm512_set1_epi32(epi.base),
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
    );
    let i1 = _mm512_add_epi32(i0, _mm512_set1_epi32(16));
    for i in 0..MR {
        let (pv, pi) = (best_v.add(i * LANES), best_i.add(i * LANES) as *mut __m512i);
        let mut bv = _mm512_loadu_ps(pv);
        let mut bi = _mm512_loadu_si512(pi);
        let v0 = _mm512_fmadd_ps(va, s0[i], bias0);
        let lt0 = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v0, bv);
        bv = _mm512_mask_mov_ps(bv, lt0, v0);
        bi = _mm512_mask_mov_epi32(bi, lt0, i0);
        let v1 = _mm512_fmadd_ps(va, s1[i], bias1);
        let lt1 = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v1, bv);
        bv = _mm512_mask_mov_ps(bv, lt1, v1);
        bi = _mm512_mask_mov_epi32(bi, lt1, i1);
        _mm512_storeu_ps(pv, bv);
        _mm512_storeu_si512(pi, bi);
    }
}

/// # Safety
/// As [`super::reduce_portable`]; the CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn reduce(best_v: *const f32, best_i: *const i32) -> (usize, f32) {
    let bv = _mm512_loadu_ps(best_v);
    let m = _mm512_reduce_min_ps(bv);
    let at_min = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(bv, _mm512_set1_ps(m));
    let bi = _mm512_loadu_si512(best_i as *const __m512i);
    let j = _mm512_reduce_min_epi32(_mm512_mask_mov_epi32(_mm512_set1_epi32(i32::MAX), at_min, bi));
    if j == i32::MAX {
        (0, f32::INFINITY) // every value was +inf or NaN
    } else {
        (j as usize, m)
    }
}
