//! Register-blocked micro-kernels: the inner product tile and the row argmin, one module per
//! instruction set behind one dispatch point ([`selected`]).
//!
//! The SIMD kernels (AVX-512, AVX2 + FMA, NEON) are chosen at run time; the portable versions
//! (plain Rust that the compiler vectorises) serve every other CPU and are the reference the
//! tests compare each kernel with.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;

use crate::error::{Error, Result};

/// Rows of `x` per micro-tile.
pub const MR: usize = 12;
/// Codewords per micro-tile: two 16-lane vectors.
pub const NR: usize = 32;

/// `c[i*ldc + j] (+)= sum_k A[i][k] * b[k*NR + j]` for `i < MR`, `j < NR`.
///
/// `b` is an NR-codeword panel packed k-major. `A` is read in one of three layouts
/// ([`PACKED`], [`ROWS`], [`PANEL`]), fixed per kernel instantiation.
pub type TileFn =
    unsafe fn(kc: usize, a: *const f32, lda: usize, b: *const f32, c: *mut f32, ldc: usize, acc: bool);

/// Lanes of the running minimum: lane `l` of a row holds the best value, and its code, among
/// the codes `≡ l (mod 16)` seen so far. Visiting codes in increasing order with a strict `<`
/// keeps the lowest index of each lane's minimum. The AVX2 kernel folds into lanes 0..8 only
/// (codes `≡ l (mod 8)`), leaving lanes 8..16 at +inf, which every reduction then passes over.
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

/// An instruction set with its own micro-kernels. Every kernel is tested against the portable
/// one; the SIMD kernels use one fused multiply-add per product term, in the same order, so they
/// agree bit for bit with each other (the portable loop rounds each product, so it may differ
/// in the last bits, and so pick the other of two near-tied codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Neon,
    Portable,
}

/// Every kernel, fastest first.
pub const ALL: [Isa; 4] = [Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Portable];

/// The variable that forces a kernel (`avx512`, `avx2`, `neon` or `portable`).
pub const KERNEL_ENV: &str = "MOC_FAST_KERNEL";

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Neon => "neon",
            Isa::Portable => "portable",
        }
    }

    /// Whether this CPU can run the kernel (read from the CPU at each call).
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => true,
            Isa::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The kernels this CPU can run, fastest first.
    pub fn available() -> Vec<Isa> {
        ALL.into_iter().filter(|k| k.supported()).collect()
    }

    /// The kernel named by `MOC_FAST_KERNEL`'s value, checked against this CPU.
    pub fn forced(value: &str) -> Result<Isa> {
        let names: Vec<&str> = ALL.iter().map(|k| k.name()).collect();
        let isa = ALL.into_iter().find(|k| k.name() == value.trim().to_ascii_lowercase()).ok_or_else(|| {
            Error::value(format!("{KERNEL_ENV} must be one of {names:?}, got {value:?}"))
        })?;
        if !isa.supported() {
            let here: Vec<&str> = Isa::available().iter().map(|k| k.name()).collect();
            return Err(Error::value(format!(
                "{KERNEL_ENV}={value} forces the {} kernel, which this CPU cannot run; it can run {here:?}",
                isa.name()
            )));
        }
        Ok(isa)
    }

    /// The kernels of this ISA (tile, tile + argmin, lane reduction) for the layout of A
    /// ([`PACKED`], [`ROWS`] or [`PANEL`]). Falls back to the portable kernels when the CPU
    /// cannot run them, so a caller can never reach an illegal instruction.
    pub fn kernels(self, layout: u8) -> (TileFn, TileArgminFn, ReduceFn) {
        if !self.supported() {
            return Isa::Portable.kernels(layout);
        }
        macro_rules! pick {
            ($($tile:ident)::+, $($argmin:ident)::+, $reduce:path) => {
                match layout {
                    PACKED => ($($tile)::+::<PACKED> as TileFn, $($argmin)::+::<PACKED> as TileArgminFn, $reduce as ReduceFn),
                    ROWS => ($($tile)::+::<ROWS> as TileFn, $($argmin)::+::<ROWS> as TileArgminFn, $reduce as ReduceFn),
                    _ => ($($tile)::+::<PANEL> as TileFn, $($argmin)::+::<PANEL> as TileArgminFn, $reduce as ReduceFn),
                }
            };
        }
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => pick!(avx512::tile, avx512::tile_argmin, avx512::reduce),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => pick!(avx2::tile, avx2::tile_argmin, avx2::reduce),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => pick!(neon::tile, neon::tile_argmin, reduce_portable),
            _ => pick!(tile_portable, tile_argmin_portable, reduce_portable),
        }
    }
}

/// The kernel every call in this process uses: `MOC_FAST_KERNEL` if set (an error where the
/// CPU cannot run it), `portable` if the older `MOC_FAST_PORTABLE` is set, else the fastest
/// this CPU runs. Decided once per process: the environment and the CPU are read on the first
/// call only.
pub fn selected() -> Result<Isa> {
    static SELECTED: std::sync::OnceLock<Result<Isa>> = std::sync::OnceLock::new();
    SELECTED
        .get_or_init(|| match std::env::var(KERNEL_ENV) {
            Ok(v) if !v.trim().is_empty() => Isa::forced(&v),
            _ if std::env::var_os("MOC_FAST_PORTABLE").is_some() => Ok(Isa::Portable),
            _ => Ok(Isa::available()[0]),
        })
        .clone()
}

/// Ask for the cache lines of `v` to be brought into L2 (a hint: a no-op off x86-64).
#[inline]
pub fn prefetch_l2(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in v.chunks(16).chain(v.last().map(std::slice::from_ref)) {
        // SAFETY: a prefetch never faults, and the address is inside `v`.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(line.as_ptr() as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// How a micro-kernel reads `A` (MR rows of x): packed k-major, `A[i][k] = a[k*MR + i]`
/// (contiguous broadcasts, best for small d where packing is cheap next to the kernel's fixed
/// costs; `lda` unused).
pub const PACKED: u8 = 0;
/// Rows in place at a run-time stride, `A[i][k] = a[i*lda + k]`.
pub const ROWS: u8 = 1;
/// Rows of a copied panel at the compile-time stride [`KC`], `A[i][k] = a[i*KC + k]`: every
/// broadcast address is the row pointer plus a constant, so no integer work competes with the
/// FMAs for issue ports (`lda` unused).
pub const PANEL: u8 = 2;

/// Largest depth of one k-block, and the row stride of [`PANEL`] copies.
pub const KC: usize = 256;

/// Offset of `A[i][k]` in layout `L`.
#[inline(always)]
pub(crate) fn a_at<const L: u8>(i: usize, k: usize, lda: usize) -> usize {
    match L {
        PACKED => k * MR + i,
        ROWS => i * lda + k,
        _ => i * KC + k,
    }
}

/// How far `A`'s pointer moves per k in layout `L`.
#[inline(always)]
pub(crate) fn a_step<const L: u8>() -> usize {
    if L == PACKED {
        MR
    } else {
        1
    }
}

/// # Safety
/// `a` addresses MR rows of `kc` floats at stride `lda`, `b` holds `kc*NR`, `c` addresses `MR`
/// rows of `NR` at stride `ldc`.
pub unsafe fn tile_portable<const L: u8>(
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
            let ai = *a.add(a_at::<L>(i, k, lda));
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
pub unsafe fn tile_argmin_portable<const L: u8>(
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
    tile_portable::<L>(kc, a, lda, b, sum.as_mut_ptr(), NR, true);
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

    fn simd() -> Vec<Isa> {
        Isa::available().into_iter().filter(|&k| k != Isa::Portable).collect()
    }

    #[test]
    fn every_kernel_matches_portable() {
        let here = simd();
        #[cfg(target_arch = "aarch64")]
        assert_eq!(here, vec![Isa::Neon]);
        for isa in here {
            for layout in [PACKED, ROWS, PANEL] {
                let (tile, tile_argmin, reduce) = isa.kernels(layout);
                let (slow_tile, slow_argmin, _) = Isa::Portable.kernels(layout);
                for &kc in &[1usize, 2, 7, 64, 255, KC] {
                    // Enough for every layout: MR rows at stride KC (lda = kc for ROWS).
                    let a = rand_vec(KC * MR, 1 + kc as u64);
                    let b = rand_vec(kc * NR, 2);
                    let mut c1 = rand_vec(MR * NR, 3);
                    let mut c2 = c1.clone();
                    unsafe {
                        tile(kc, a.as_ptr(), kc, b.as_ptr(), c1.as_mut_ptr(), NR, true);
                        slow_tile(kc, a.as_ptr(), kc, b.as_ptr(), c2.as_mut_ptr(), NR, true);
                    }
                    for (x, y) in c1.iter().zip(&c2) {
                        assert!((x - y).abs() < 1e-4, "{isa:?} layout {layout} kc={kc}: {x} vs {y}");
                    }
                    let bias = rand_vec(NR, 4);
                    let fast = run_argmin(tile_argmin, reduce, kc, &a, &b, &bias);
                    let slow = run_argmin(slow_argmin, reduce_portable, kc, &a, &b, &bias);
                    for (f, s) in fast.iter().zip(&slow) {
                        assert!(f.0 == s.0 || (f.1 - s.1).abs() < 1e-5, "{isa:?}: {f:?} vs {s:?}");
                        assert!(f.0 >= 64 && f.0 < 64 + NR);
                    }
                }
            }
        }
    }

    #[test]
    fn simd_kernels_agree_bit_for_bit() {
        // One FMA per product term in one order: every SIMD kernel gives the same bits.
        let here = simd();
        for pair in here.windows(2) {
            for layout in [PACKED, ROWS, PANEL] {
                let (t0, m0, r0) = pair[0].kernels(layout);
                let (t1, m1, r1) = pair[1].kernels(layout);
                let kc = 37;
                let (a, b) = (rand_vec(KC * MR, 8), rand_vec(kc * NR, 9));
                let (mut c0, mut c1) = (vec![0f32; MR * NR], vec![0f32; MR * NR]);
                unsafe {
                    t0(kc, a.as_ptr(), kc, b.as_ptr(), c0.as_mut_ptr(), NR, false);
                    t1(kc, a.as_ptr(), kc, b.as_ptr(), c1.as_mut_ptr(), NR, false);
                }
                assert_eq!(c0, c1, "{pair:?}");
                let bias = rand_vec(NR, 10);
                assert_eq!(run_argmin(m0, r0, kc, &a, &b, &bias), run_argmin(m1, r1, kc, &a, &b, &bias));
            }
        }
    }

    #[test]
    fn every_lane_reduction_picks_the_lowest_code_of_the_minimum() {
        let mut cases: Vec<(Vec<f32>, Vec<i32>)> = vec![(vec![f32::INFINITY; LANES], (0..LANES as i32).rev().collect())];
        for seed in 0..200u64 {
            // Few distinct values, so the minimum is often shared by several lanes.
            let v: Vec<f32> = rand_vec(LANES, seed).iter().map(|x| (x * 4.0).round()).collect();
            let i: Vec<i32> = rand_vec(LANES, seed + 1000).iter().map(|x| ((x + 0.5) * 5000.0) as i32).collect();
            cases.push((v, i));
        }
        for isa in simd() {
            let (_, _, reduce) = isa.kernels(ROWS);
            for (v, i) in &cases {
                let got = unsafe { reduce(v.as_ptr(), i.as_ptr()) };
                assert_eq!(got, unsafe { reduce_portable(v.as_ptr(), i.as_ptr()) }, "{isa:?} {v:?} {i:?}");
            }
        }
    }

    #[test]
    fn forcing_a_kernel_is_checked_against_the_cpu() {
        for isa in ALL {
            assert_eq!(Isa::forced(isa.name()).is_ok(), isa.supported(), "{isa:?}");
        }
        assert_eq!(Isa::forced(" AVX2 ").ok(), Isa::forced("avx2").ok());
        let err = Isa::forced("sse9").unwrap_err().to_string();
        assert!(err.contains("MOC_FAST_KERNEL") && err.contains("portable"), "{err}");
        #[cfg(target_arch = "x86_64")]
        assert!(Isa::forced("neon").unwrap_err().to_string().contains("cannot run"));
        // A kernel the CPU lacks is never handed out: its slot falls back to portable.
        for isa in ALL.into_iter().filter(|k| !k.supported()) {
            assert!(isa.kernels(ROWS).0 as usize == Isa::Portable.kernels(ROWS).0 as usize);
        }
    }

    #[test]
    fn the_three_layouts_compute_the_same_tile() {
        // Row-major A (MR x kc), its k-major packing and its copy at stride KC: one product.
        let kc = 9;
        let rows = rand_vec(MR * kc, 5);
        let packed: Vec<f32> = (0..kc).flat_map(|k| (0..MR).map(move |i| (i, k))).map(|(i, k)| rows[i * kc + k]).collect();
        let mut panel = vec![0f32; MR * KC];
        for i in 0..MR {
            panel[i * KC..i * KC + kc].copy_from_slice(&rows[i * kc..(i + 1) * kc]);
        }
        let b = rand_vec(kc * NR, 6);
        let mut c = [vec![0f32; MR * NR], vec![0f32; MR * NR], vec![0f32; MR * NR]];
        unsafe {
            tile_portable::<ROWS>(kc, rows.as_ptr(), kc, b.as_ptr(), c[0].as_mut_ptr(), NR, false);
            tile_portable::<PACKED>(kc, packed.as_ptr(), 0, b.as_ptr(), c[1].as_mut_ptr(), NR, false);
            tile_portable::<PANEL>(kc, panel.as_ptr(), 0, b.as_ptr(), c[2].as_mut_ptr(), NR, false);
        }
        assert_eq!(c[0], c[1]);
        assert_eq!(c[0], c[2]);
    }

    #[test]
    fn a_nan_score_never_wins_and_never_hides_a_neighbour() {
        // Scores are the bias (the products are 0). A NaN beside the minimum, in the same lane
        // or as its j +/- 8 partner (which the AVX2 kernel compares in registers), is skipped.
        let (a, b) = (vec![0f32; MR], vec![0f32; NR]);
        for (best, nans) in [(9, &[1usize][..]), (1, &[9][..]), (17, &[1, 9, 25]), (0, &[8, 16, 24]), (30, &[31])] {
            let mut bias: Vec<f32> = (0..NR).map(|j| 100.0 + j as f32).collect();
            bias[best] = -1.0;
            for &j in nans {
                bias[j] = f32::NAN;
            }
            for isa in Isa::available() {
                let (_, f, r) = isa.kernels(ROWS);
                let got = run_argmin(f, r, 1, &a, &b, &bias);
                assert!(got.iter().all(|&g| g == (64 + best, -1.0)), "{isa:?} {nans:?}: {got:?}");
            }
        }
    }

    #[test]
    fn argmin_breaks_ties_to_lowest_index() {
        // All inner products are 0, so the value is the bias: the codes of each set tie at -1
        // (within a lane, across lanes, and a code j against j + 8, which AVX2 pairs up).
        let (a, b) = (vec![0f32; MR], vec![0f32; NR]);
        for ties in [&[29, 17, 21][..], &[29, 21], &[25, 9], &[24, 8, 16], &[31, 7], &[15, 23, 31]] {
            let mut bias = vec![1.0f32; NR];
            for &j in ties {
                bias[j] = -1.0;
            }
            let want = 64 + *ties.iter().min().unwrap();
            for isa in Isa::available() {
                let (_, f, r) = isa.kernels(ROWS);
                let got = run_argmin(f, r, 1, &a, &b, &bias);
                assert!(got.iter().all(|&g| g == (want, -1.0)), "{isa:?} {ties:?}: {got:?}");
            }
        }
    }
}
