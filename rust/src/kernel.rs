//! Register-blocked micro-kernels: the inner product tile and the row argmin.
//!
//! The AVX-512 versions are chosen at run time; the portable versions (plain Rust that the
//! compiler vectorises) serve every other CPU and are the reference the tests compare with.

/// Rows of `x` per micro-tile.
pub const MR: usize = 12;
/// Codewords per micro-tile: two 16-lane vectors.
pub const NR: usize = 32;

/// `c[i*ldc + j] (+)= sum_k A[i][k] * b[k*NR + j]` for `i < MR`, `j < NR`.
///
/// `b` is an NR-codeword panel packed k-major. `A` is read either in place, MR rows of x at
/// stride `lda` (`ROWS = true`: no packing, best for large d), or from a panel packed k-major,
/// `A[i][k] = a[k*MR + i]` (`ROWS = false`; `lda` unused: contiguous broadcasts, best for small
/// d where the packing is cheap next to the kernel's fixed costs).
pub type TileFn =
    unsafe fn(kc: usize, a: *const f32, lda: usize, b: *const f32, c: *mut f32, ldc: usize, acc: bool);

/// Lanes of the running minimum: lane `l` of a row holds the best value, and its code, among
/// the codes `≡ l (mod 16)` seen so far. Visiting codes in increasing order with a strict `<`
/// keeps the lowest index of each lane's minimum.
pub const LANES: usize = 16;

/// As [`TileFn`], then fold `bias[j] + alpha * dot[i][j]` (code `base + j`) into the running
/// minimum of each of the MR rows (`best_v`, `best_i`: MR rows of LANES) instead of storing.
pub type TileArgminFn = unsafe fn(
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
);

/// The lowest code attaining the smallest value over one row's LANES, and that value.
pub type ReduceFn = unsafe fn(best_v: *const f32, best_i: *const i32) -> (usize, f32);

/// The scoring of one NR-panel of codewords: `bias[j] + alpha * dot`, codes from `base`.
pub struct Epilogue {
    pub bias: *const f32,
    pub alpha: f32,
    pub base: i32,
}

/// Whether the AVX-512 kernels run here (never when `MOC_FAST_PORTABLE` is set). Decided
/// once per process: the environment and the CPU are read on the first call only.
pub fn use_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX512.get_or_init(|| {
            std::env::var_os("MOC_FAST_PORTABLE").is_none()
                && std::arch::is_x86_feature_detected!("avx512f")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The kernels this CPU runs fastest (tile, tile + argmin, lane reduction), reading the rows
/// of x in place (`rows = true`) or from packed panels.
pub fn kernels(rows: bool) -> (TileFn, TileArgminFn, ReduceFn) {
    #[cfg(target_arch = "x86_64")]
    {
        if use_avx512() {
            return if rows {
                (tile_avx512::<true>, tile_argmin_avx512::<true>, reduce_avx512)
            } else {
                (tile_avx512::<false>, tile_argmin_avx512::<false>, reduce_avx512)
            };
        }
    }
    if rows {
        (tile_portable::<true>, tile_argmin_portable::<true>, reduce_portable)
    } else {
        (tile_portable::<false>, tile_argmin_portable::<false>, reduce_portable)
    }
}

/// Offset of `A[i][k]` in the two layouts.
#[inline(always)]
fn a_at<const ROWS: bool>(i: usize, k: usize, lda: usize) -> usize {
    if ROWS {
        i * lda + k
    } else {
        k * MR + i
    }
}

/// # Safety
/// `a` addresses MR rows of `kc` floats at stride `lda`, `b` holds `kc*NR`, `c` addresses `MR`
/// rows of `NR` at stride `ldc`.
pub unsafe fn tile_portable<const ROWS: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    let mut sum = [[0f32; NR]; MR];
    if acc {
        for (i, row) in sum.iter_mut().enumerate() {
            row.copy_from_slice(std::slice::from_raw_parts(c.add(i * ldc), NR));
        }
    }
    for k in 0..kc {
        let bk = &*(b.add(k * NR) as *const [f32; NR]);
        for (i, row) in sum.iter_mut().enumerate() {
            let ai = *a.add(a_at::<ROWS>(i, k, lda));
            for (s, &bj) in row.iter_mut().zip(bk) {
                *s += ai * bj;
            }
        }
    }
    for (i, row) in sum.iter().enumerate() {
        std::slice::from_raw_parts_mut(c.add(i * ldc), NR).copy_from_slice(row);
    }
}

/// # Safety
/// As [`tile_portable`]; `epi.bias` holds NR floats; `best_v`, `best_i` hold MR*LANES values.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_argmin_portable<const ROWS: bool>(
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
    let mut sum = [0f32; MR * NR];
    if acc {
        for i in 0..MR {
            sum[i * NR..(i + 1) * NR].copy_from_slice(std::slice::from_raw_parts(c.add(i * ldc), NR));
        }
    }
    tile_portable::<ROWS>(kc, a, lda, b, sum.as_mut_ptr(), NR, true);
    for i in 0..MR {
        for j in 0..NR {
            // alpha is -1 or -2: the product is exact, so this matches the fused AVX-512 form.
            let v = *epi.bias.add(j) + epi.alpha * sum[i * NR + j];
            let slot = i * LANES + j % LANES;
            if v < *best_v.add(slot) {
                *best_v.add(slot) = v;
                *best_i.add(slot) = epi.base + j as i32;
            }
        }
    }
}

/// # Safety
/// `best_v`, `best_i` hold LANES values.
pub unsafe fn reduce_portable(best_v: *const f32, best_i: *const i32) -> (usize, f32) {
    let (mut bj, mut bv) = (i32::MAX, f32::INFINITY);
    for l in 0..LANES {
        let (v, id) = (*best_v.add(l), *best_i.add(l));
        if v < bv || (v == bv && id < bj) {
            bv = v;
            bj = id;
        }
    }
    if bj == i32::MAX {
        (0, f32::INFINITY)
    } else {
        (bj as usize, bv)
    }
}

/// # Safety
/// As [`tile_portable`]; the CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn tile_avx512<const ROWS: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    use std::arch::x86_64::*;
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
            let ai = _mm512_set1_ps(*ap.add(a_at::<ROWS>(i, 0, lda)));
            s0[i] = _mm512_fmadd_ps(ai, b0, s0[i]);
            s1[i] = _mm512_fmadd_ps(ai, b1, s1[i]);
        }
        ap = ap.add(if ROWS { 1 } else { MR });
        bp = bp.add(NR);
    }
    for i in 0..MR {
        _mm512_storeu_ps(c.add(i * ldc), s0[i]);
        _mm512_storeu_ps(c.add(i * ldc + 16), s1[i]);
    }
}

/// # Safety
/// As [`tile_argmin_portable`]; the CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_argmin_avx512<const ROWS: bool>(
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
    use std::arch::x86_64::*;
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
            let ai = _mm512_set1_ps(*ap.add(a_at::<ROWS>(i, 0, lda)));
            s0[i] = _mm512_fmadd_ps(ai, b0, s0[i]);
            s1[i] = _mm512_fmadd_ps(ai, b1, s1[i]);
        }
        ap = ap.add(if ROWS { 1 } else { MR });
        bp = bp.add(NR);
    }
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
/// As [`reduce_portable`]; the CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn reduce_avx512(best_v: *const f32, best_i: *const i32) -> (usize, f32) {
    use std::arch::x86_64::*;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    fn run_argmin(f: TileArgminFn, reduce: ReduceFn, kc: usize, a: &[f32], b: &[f32], bias: &[f32]) -> Vec<(usize, f32)> {
        let mut bv = vec![f32::INFINITY; MR * LANES];
        let mut bi = vec![0i32; MR * LANES];
        let epi = Epilogue { bias: bias.as_ptr(), alpha: -2.0, base: 64 };
        unsafe {
            let (bvp, bip) = (bv.as_mut_ptr(), bi.as_mut_ptr());
            f(kc, a.as_ptr(), kc, b.as_ptr(), std::ptr::null(), 0, false, &epi, bvp, bip);
            (0..MR).map(|i| reduce(bv.as_ptr().add(i * LANES), bi.as_ptr().add(i * LANES))).collect()
        }
    }

    #[test]
    fn fast_kernels_match_portable() {
        for rows in [true, false] {
            let (tile, tile_argmin, reduce) = kernels(rows);
            let (slow_tile, slow_argmin): (TileFn, TileArgminFn) = if rows {
                (tile_portable::<true>, tile_argmin_portable::<true>)
            } else {
                (tile_portable::<false>, tile_argmin_portable::<false>)
            };
            for &kc in &[1usize, 7, 64] {
                let a = rand_vec(kc * MR, 1);
                let b = rand_vec(kc * NR, 2);
                let mut c1 = rand_vec(MR * NR, 3);
                let mut c2 = c1.clone();
                unsafe {
                    tile(kc, a.as_ptr(), kc, b.as_ptr(), c1.as_mut_ptr(), NR, true);
                    slow_tile(kc, a.as_ptr(), kc, b.as_ptr(), c2.as_mut_ptr(), NR, true);
                }
                for (x, y) in c1.iter().zip(&c2) {
                    assert!((x - y).abs() < 1e-4, "{x} vs {y}");
                }
                let bias = rand_vec(NR, 4);
                let fast = run_argmin(tile_argmin, reduce, kc, &a, &b, &bias);
                let slow = run_argmin(slow_argmin, reduce_portable, kc, &a, &b, &bias);
                for (f, s) in fast.iter().zip(&slow) {
                    assert!(f.0 == s.0 || (f.1 - s.1).abs() < 1e-5, "{f:?} vs {s:?}");
                    assert!(f.0 >= 64 && f.0 < 64 + NR);
                }
            }
        }
    }

    #[test]
    fn the_two_layouts_compute_the_same_tile() {
        // Row-major A (MR x kc) and its k-major packing must give identical products.
        let kc = 9;
        let rows = rand_vec(MR * kc, 5);
        let packed: Vec<f32> = (0..kc).flat_map(|k| (0..MR).map(move |i| (i, k))).map(|(i, k)| rows[i * kc + k]).collect();
        let b = rand_vec(kc * NR, 6);
        let (mut c1, mut c2) = (vec![0f32; MR * NR], vec![0f32; MR * NR]);
        unsafe {
            tile_portable::<true>(kc, rows.as_ptr(), kc, b.as_ptr(), c1.as_mut_ptr(), NR, false);
            tile_portable::<false>(kc, packed.as_ptr(), 0, b.as_ptr(), c2.as_mut_ptr(), NR, false);
        }
        assert_eq!(c1, c2);
    }

    #[test]
    fn argmin_breaks_ties_to_lowest_index() {
        let (_, tile_argmin, reduce) = kernels(true);
        // All inner products are 0, so the value is the bias: three codes tie at -1.
        let (a, b) = (vec![0f32; MR], vec![0f32; NR]);
        let mut bias = vec![1.0f32; NR];
        for j in [29, 17, 21] {
            bias[j] = -1.0;
        }
        for (f, r) in [(tile_argmin, reduce), (tile_argmin_portable::<true> as TileArgminFn, reduce_portable as ReduceFn)] {
            let got = run_argmin(f, r, 1, &a, &b, &bias);
            assert!(got.iter().all(|&g| g == (64 + 17, -1.0)), "{got:?}");
        }
    }
}
