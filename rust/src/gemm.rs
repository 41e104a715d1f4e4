//! Nearest codeword for large d through a maintained GEMM: matrixmultiply's sgemm computes a
//! block of inner products, then one pass folds `bias + alpha·dot` into each row's argmin.
//!
//! Used by the `avx512` path at d ≥ [`GEMM_MIN_D`], where it measured 15–30% faster than the
//! fused tile kernel (interleaved runs, 1 thread, Sapphire Rapids, (1024 | 4096, 256)); at
//! d = 384 the two were level, and matrixmultiply's AVX2 kernel was no faster than ours, so
//! every other path stays fused. matrixmultiply picks its own kernel at run time, and picks
//! AVX-512 exactly where the `avx512` path runs, so forcing `avx2` never reaches it. Its
//! summation order differs from the tile kernels', so codes may differ from theirs only on
//! near-ties (the tie contract); they are still the same for any thread count, since every
//! row's result depends only on that row.

use crate::assign::{sum_squares, Metric};
use crate::kernel::Isa;

/// Smallest d that takes the GEMM path (on the `avx512` path only).
pub const GEMM_MIN_D: usize = 1024;
/// Rows per block: the unit of parallel work.
pub const GEMM_ROWS: usize = 1024;
/// Codewords per GEMM call, bounding the scratch block to GEMM_ROWS × GEMM_CODES floats.
const GEMM_CODES: usize = 1024;

/// Whether `assign` at dimension `d` with kernel `isa` goes through the GEMM.
pub fn uses_gemm(isa: Isa, d: usize) -> bool {
    cfg!(target_arch = "x86_64") && isa == Isa::Avx512 && isa.supported() && d >= GEMM_MIN_D
}

/// Codes and scores of `rows` rows of `x (rows, d)` against `codebook (k, d)` whose scores are
/// `bias[j] + alpha·dot` (`bias` = ‖c‖² and alpha = -2 for L2, 0 and -1 for inner product);
/// `scratch` is reused between calls.
#[allow(clippy::too_many_arguments)]
pub(crate) fn assign_block(
    x: &[f32],
    rows: usize,
    d: usize,
    codebook: &[f32],
    bias: &[f32],
    metric: Metric,
    scratch: &mut Vec<f32>,
    codes: &mut [i64],
    score: &mut [f32],
) {
    let k = bias.len();
    assert!(x.len() >= rows * d && codebook.len() >= k * d && codes.len() >= rows && score.len() >= rows);
    let alpha = match metric {
        Metric::L2 => -2.0f32,
        Metric::InnerProduct => -1.0,
    };
    let mut best = vec![(f32::INFINITY, 0usize); rows];
    for c0 in (0..k).step_by(GEMM_CODES) {
        let nb = GEMM_CODES.min(k - c0);
        scratch.resize(rows * nb, 0.0);
        // SAFETY: x holds rows×d (row stride d), the codebook slice from c0 holds nb×d (read as
        // its transpose: row stride 1, column stride d), scratch holds rows×nb (row stride nb);
        // the assert above and the resize guarantee the sizes.
        unsafe {
            matrixmultiply::sgemm(
                rows, d, nb, 1.0,
                x.as_ptr(), d as isize, 1,
                codebook[c0 * d..].as_ptr(), 1, d as isize,
                0.0, scratch.as_mut_ptr(), nb as isize, 1,
            );
        }
        for (r, dots) in scratch.chunks_exact(nb).enumerate() {
            let (bv, bj) = &mut best[r];
            for (j, &dot) in dots.iter().enumerate() {
                // alpha is -1 or -2: the product is exact, so this rounds once, like an FMA.
                let v = bias[c0 + j] + alpha * dot;
                if v < *bv {
                    (*bv, *bj) = (v, c0 + j); // strict <, codes in increasing order: lowest wins
                }
            }
        }
    }
    for (r, &(bv, bj)) in best.iter().enumerate() {
        codes[r] = bj as i64;
        score[r] = match metric {
            Metric::L2 => (sum_squares(&x[r * d..(r + 1) * d]) + bv).max(0.0),
            Metric::InnerProduct => -bv,
        };
    }
}
