//! Fused, cache-blocked nearest-codeword search: distance and argmin in one pass.
//!
//! The N×K distance matrix is never built. Rows go in blocks (48 rows for d ≤ 128, else
//! [`MB`]); for each block and chunk of at most [`NB`] codewords, k-blocks of at most [`KC`]
//! keep the operands in L1/L2; partial inner products of earlier k-blocks wait in a small
//! scratch tile and the last k-block's kernel folds `bias - alpha·dot` straight into 16-lane
//! running minima (no tile at all when d ≤ KC). Rows of x are packed k-major for d ≤ 32
//! (measured: packing wins only at the smallest d), read in place below d = 1024 and copied
//! at a fixed stride from there, with the next k-block's chunks prefetched (a row apart, too
//! far for the hardware prefetcher). x is read from memory once: each row is checked for NaN
//! and inf, and its ‖x‖² summed, as it comes into cache for the kernels, not in passes of its
//! own (three passes over x cost a third of the time at K = 256). For L2, `bias = ‖c‖²` and `alpha = 2`
//! (‖x‖² is constant per row and only added back to report the distance); for inner product,
//! `bias = 0` and `alpha = 1`. Padding codewords carry `bias = +inf` and never win.
//!
//! Every row's result depends only on that row and the codebook (fixed summation order, ties to
//! the lowest index), so it does not change with the thread count or the block a row falls in.

use crate::error::{check_finite, not_finite, Error, Result};
use crate::kernel::{self, Epilogue, Isa, ReduceFn, TileArgminFn, TileFn, KC, LANES, MR, NR, PACKED, PANEL, ROWS};
use crate::parallel;
use rayon::prelude::*;

/// Most rows per block (a multiple of MR): the unit of parallel work.
pub const MB: usize = 192;

/// Rows per block for dimension `d`: small blocks keep small-d work cache-hot; large blocks
/// reuse each streamed codebook panel across more rows when d is large.
pub fn block_rows(d: usize) -> usize {
    if d <= 128 {
        48
    } else {
        MB
    }
}
/// Largest d whose row panels are packed (contiguous broadcasts); above it rows are read in
/// place, where packing would cost a sizeable share of the work.
const PACK_MAX_D: usize = 32;
/// Smallest d whose row panels are copied (memcpy per row) rather than read in place.
const COPY_MIN_D: usize = 1024;
/// Codewords per chunk of the scratch tile (a multiple of NR).
const NB: usize = 1024;
/// Row stride of the scratch tile: NB plus a cache line, so rows do not alias in L1.
const LDC: usize = NB + 16;

/// How "nearest" is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Smallest squared Euclidean distance.
    L2,
    /// Largest inner product (cosine on normalised inputs).
    InnerProduct,
}

impl Metric {
    pub fn parse(name: &str) -> Result<Metric> {
        match name {
            "l2" => Ok(Metric::L2),
            "ip" => Ok(Metric::InnerProduct),
            other => Err(Error::value(format!("metric must be 'l2' or 'ip', got {other:?}"))),
        }
    }
}

/// A codebook `(K, d)` laid out for the tile kernel: panels of NR codewords, k-major.
pub(crate) struct PackedCodebook {
    panels: Vec<f32>,
    bias: Vec<f32>,
    alpha: f32,
    metric: Metric,
    k: usize,
    kp: usize,
    d: usize,
}

impl PackedCodebook {
    pub fn new(codebook: &[f32], k: usize, d: usize, metric: Metric) -> Self {
        let kp = k.div_ceil(NR) * NR;
        let mut panels = vec![0f32; kp * d];
        for (c, word) in codebook.chunks_exact(d).take(k).enumerate() {
            let (p, j) = (c / NR, c % NR);
            let panel = &mut panels[p * d * NR..(p + 1) * d * NR];
            for (kk, &v) in word.iter().enumerate() {
                panel[kk * NR + j] = v;
            }
        }
        let mut bias = codeword_bias(codebook, k, d, metric);
        bias.resize(kp, f32::INFINITY);
        let alpha = match metric {
            Metric::L2 => -2.0,
            Metric::InnerProduct => -1.0,
        };
        PackedCodebook { panels, bias, alpha, metric, k, kp, d }
    }
}

/// Each codeword's score offset: ‖c‖² for L2 (the score is ‖c‖² - 2x·c), 0 for inner product.
pub(crate) fn codeword_bias(codebook: &[f32], k: usize, d: usize, metric: Metric) -> Vec<f32> {
    codebook
        .chunks_exact(d)
        .take(k)
        .map(|word| match metric {
            Metric::L2 => sum_squares(word),
            Metric::InnerProduct => 0.0,
        })
        .collect()
}

/// Per-thread scratch: a padded copy of a partial row panel, a tile of inner products, the
/// running argmin lanes and the rows' squared norms.
pub(crate) struct Scratch {
    apack: Vec<f32>,
    norms: Vec<RowNorm>,
    dot: Vec<f32>,
    best_v: Vec<f32>,
    best_i: Vec<i32>,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            apack: vec![0.0; MB * KC],
            norms: vec![RowNorm::default(); MB],
            dot: vec![0.0; MB * LDC],
            best_v: vec![0.0; MB * LANES],
            best_i: vec![0; MB * LANES],
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// Σ v², summed in 16 fixed lanes so that it vectorises and is reproducible.
pub fn sum_squares(v: &[f32]) -> f32 {
    let mut norm = RowNorm::default();
    norm.add(v, 0, v.len());
    norm.value()
}

/// [`sum_squares`] of one row of `d` floats, taken a chunk at a time in any split: element `j`
/// goes to lane `j % 16` while `j < d - d % 16`, the rest to a sequential tail, so every split
/// gives the same bits as one call over the whole row.
#[derive(Clone, Copy, Default)]
pub(crate) struct RowNorm {
    lanes: [f32; 16],
    tail: f32,
}

impl RowNorm {
    /// Add `chunk`, the row's elements `start..start + chunk.len()` of a row of `d`.
    pub fn add(&mut self, chunk: &[f32], start: usize, d: usize) {
        let d16 = d - d % 16;
        let split = d16.clamp(start, start + chunk.len()) - start;
        let (main, tail) = chunk.split_at(split);
        if start.is_multiple_of(16) && main.len().is_multiple_of(16) {
            for ch in main.chunks_exact(16) {
                for (l, &x) in self.lanes.iter_mut().zip(ch) {
                    *l += x * x;
                }
            }
        } else {
            for (j, &x) in main.iter().enumerate() {
                self.lanes[(start + j) % 16] += x * x;
            }
        }
        for &x in tail {
            self.tail += x * x;
        }
    }

    pub fn value(&self) -> f32 {
        self.lanes.iter().sum::<f32>() + self.tail
    }
}

/// Whether every element is finite, without an early exit per element (so it vectorises).
pub(crate) fn all_finite(v: &[f32]) -> bool {
    v.chunks(64).all(|ch| ch.iter().fold(true, |ok, x| ok & x.is_finite()))
}

/// The kernels one call uses, picked once: for packed panels and for rows read in place.
pub(crate) struct KernelSet {
    packed: (TileFn, TileArgminFn, ReduceFn),
    rows: (TileFn, TileArgminFn, ReduceFn),
    panel: (TileFn, TileArgminFn, ReduceFn),
}

impl KernelSet {
    /// The kernels of `isa` (portable where this CPU cannot run `isa`).
    pub fn of(isa: Isa) -> Self {
        KernelSet { packed: isa.kernels(PACKED), rows: isa.kernels(ROWS), panel: isa.kernels(PANEL) }
    }

    /// The kernels of this process's kernel ([`kernel::selected`]).
    pub fn selected() -> Result<Self> {
        Ok(Self::of(kernel::selected()?))
    }
}

/// Nearest codeword for `rows` rows (at most MB) of `x`, row stride `lda`, first row at `x[0]`.
///
/// Writes the code and the score: the squared distance for L2, the inner product for IP.
/// Returns the first of the rows that holds NaN or ±inf, if any (their outputs are garbage):
/// each row is checked, and its ‖x‖² summed, while it is in cache for the kernels (as it is
/// copied, at large d), so x is read from memory once rather than in three passes.
/// Crate-private: its callers guarantee the slice sizes the unsafe kernels read, and the
/// asserts below (checked in release builds too, once per block) hold them to it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn assign_rows(
    x: &[f32],
    rows: usize,
    lda: usize,
    cb: &PackedCodebook,
    kernels: &KernelSet,
    s: &mut Scratch,
    codes: &mut [i64],
    score: &mut [f32],
) -> Option<usize> {
    let d = cb.d;
    assert!(rows <= MB && codes.len() >= rows && score.len() >= rows, "assign_rows: output too short");
    assert!(lda >= d && (rows == 0 || x.len() >= (rows - 1) * lda + d), "assign_rows: x too short");
    let packed = d <= PACK_MAX_D;
    let panels_m = rows.div_ceil(MR);
    s.best_v[..panels_m * MR * LANES].fill(f32::INFINITY);
    s.best_i[..panels_m * MR * LANES].fill(0);
    // Split d into equal k-blocks of at most KC (384 -> 2 x 192, not 256 + 128), in whole
    // multiples of 16 where rows are copied, so each copied chunk adds to the norm's lanes in
    // whole vectors.
    let kstep = d.div_ceil(d.div_ceil(KC));
    let copied = !packed && d >= COPY_MIN_D;
    let kstep = if copied { kstep.next_multiple_of(16) } else { kstep };
    let l2 = cb.metric == Metric::L2;
    let mut bad = None;
    s.norms[..rows].fill(RowNorm::default());
    if !copied {
        // Rows not copied chunk by chunk: check (and measure) each whole row now, which also
        // brings it into cache for the kernels.
        for r in 0..rows {
            let row = &x[r * lda..r * lda + d];
            if bad.is_none() && !all_finite(row) {
                bad = Some(r);
            }
            if l2 {
                s.norms[r].add(row, 0, d);
            }
        }
    }
    // Small d: pack every panel k-major. Middle d: read full panels of MR rows in place and copy
    // only a partial last panel, zero-padded, so no read passes the block. Large d: copy every
    // panel's rows (memcpy) at the fixed stride KC, whose kernels need no address arithmetic.
    let full = if packed || d >= COPY_MIN_D { 0 } else { rows / MR };
    let (pk, pan, inplace) = (kernels.packed, kernels.panel, kernels.rows);
    let reduce = if packed { pk.2 } else { pan.2 };
    for c0 in (0..cb.kp).step_by(NB) {
        let nb = NB.min(cb.kp - c0);
        for k0 in (0..d).step_by(kstep) {
            let kc = kstep.min(d - k0);
            let last = k0 + kc == d;
            for ip in full..panels_m {
                let panel = &mut s.apack[ip * KC * MR..(ip + 1) * KC * MR];
                for i in 0..MR {
                    let r = ip * MR + i;
                    if packed {
                        for kk in 0..kc {
                            panel[kk * MR + i] = if r < rows { x[r * lda + k0 + kk] } else { 0.0 };
                        }
                    } else if r < rows {
                        let chunk = &mut panel[i * KC..i * KC + kc];
                        chunk.copy_from_slice(&x[r * lda + k0..r * lda + k0 + kc]);
                        if copied && c0 == 0 {
                            if !all_finite(chunk) {
                                bad = Some(bad.map_or(r, |b: usize| b.min(r)));
                            }
                            if l2 {
                                s.norms[r].add(chunk, k0, d);
                            }
                        }
                    } else {
                        panel[i * KC..i * KC + kc].fill(0.0);
                    }
                }
            }
            let calls = nb / NR * panels_m;
            let next = if copied && !last { kstep.min(d - k0 - kc) } else { 0 };
            for p in c0 / NR..(c0 + nb) / NR {
                let b = &cb.panels[p * d * NR + k0 * NR..p * d * NR + (k0 + kc) * NR];
                let epi = Epilogue { bias: cb.bias[p * NR..].as_ptr(), alpha: cb.alpha, base: (p * NR) as i32 };
                for ip in 0..panels_m {
                    if next > 0 {
                        // Spread over this k-block's calls, fetch the rows' next chunks into L2:
                        // at large d they lie a row apart, too far for the hardware prefetcher.
                        let t = (p - c0 / NR) * panels_m + ip;
                        for r in t * rows / calls..(t + 1) * rows / calls {
                            kernel::prefetch_l2(&x[r * lda + k0 + kc..r * lda + k0 + kc + next]);
                        }
                    }
                    let (a, a_ld, (tile, tile_argmin, _)) = if ip < full {
                        (x[ip * MR * lda + k0..].as_ptr(), lda, inplace)
                    } else {
                        (s.apack[ip * KC * MR..].as_ptr(), KC, if packed { pk } else { pan })
                    };
                    let c = &mut s.dot[ip * MR * LDC + (p * NR - c0)..];
                    debug_assert!(c.len() >= (MR - 1) * LDC + NR);
                    // SAFETY: a addresses MR rows of kc floats at stride a_ld in x, or the padded
                    // copy (a k-major panel of kc*MR, or MR rows at stride KC); b holds kc*NR
                    // floats; c spans MR rows of NR at stride LDC; the bias has NR floats from
                    // p*NR; best_* hold MR*LANES from ip*MR*LANES.
                    unsafe {
                        if last {
                            let lane = ip * MR * LANES;
                            let (bv, bi) = (s.best_v[lane..].as_mut_ptr(), s.best_i[lane..].as_mut_ptr());
                            tile_argmin(kc, a, a_ld, b.as_ptr(), c.as_ptr(), LDC, k0 > 0, &epi, bv, bi);
                        } else {
                            tile(kc, a, a_ld, b.as_ptr(), c.as_mut_ptr(), LDC, k0 > 0);
                        }
                    }
                }
            }
        }
    }
    for r in 0..rows {
        // SAFETY: best_v, best_i hold LANES values from r*LANES.
        let (j, best) = unsafe { reduce(s.best_v[r * LANES..].as_ptr(), s.best_i[r * LANES..].as_ptr()) };
        codes[r] = j.min(cb.k - 1) as i64;
        score[r] = match cb.metric {
            Metric::L2 => (s.norms[r].value() + best).max(0.0),
            Metric::InnerProduct => -best,
        };
    }
    bad
}

fn check_len(name: &str, got: usize, want: usize, shape: &str) -> Result<()> {
    if got != want {
        return Err(Error::value(format!(
            "{name} must hold {shape} = {want} floats, got {got}"
        )));
    }
    Ok(())
}

fn check_codebook(codebook: &[f32], k: usize, d: usize) -> Result<()> {
    if k == 0 {
        return Err(Error::value("codebook must have at least one codeword (K >= 1), got K = 0"));
    }
    if d == 0 {
        return Err(Error::value("codewords must have dimension d >= 1, got d = 0"));
    }
    check_len("codebook", codebook.len(), k * d, "K*d")
}

/// Nearest codeword of each row of `x (n, d)` in `codebook (k, d)`: codes and scores.
pub fn assign(
    x: &[f32],
    n: usize,
    d: usize,
    codebook: &[f32],
    k: usize,
    metric: Metric,
    threads: usize,
) -> Result<(Vec<i64>, Vec<f32>)> {
    assign_using(kernel::selected()?, x, n, d, codebook, k, metric, threads)
}

/// [`assign`] with the kernels of `isa` (portable where this CPU cannot run them), whatever
/// this process selected: for comparing kernels in one process.
#[allow(clippy::too_many_arguments)]
pub fn assign_using(
    isa: Isa,
    x: &[f32],
    n: usize,
    d: usize,
    codebook: &[f32],
    k: usize,
    metric: Metric,
    threads: usize,
) -> Result<(Vec<i64>, Vec<f32>)> {
    check_codebook(codebook, k, d)?;
    check_len("x", x.len(), n * d, "N*d")?;
    let mut codes = vec![0i64; n];
    let mut score = vec![0f32; n];
    parallel::run(threads, || -> Result<()> {
        check_finite("codebook", codebook, d)?;
        let cb = PackedCodebook::new(codebook, k, d, metric);
        let ks = KernelSet::of(isa);
        let mb = block_rows(d);
        let bad = codes
            .par_chunks_mut(mb)
            .zip(score.par_chunks_mut(mb))
            .enumerate()
            .map_init(Scratch::new, |s, (b, (c, sc))| {
                assign_rows(&x[b * mb * d..], c.len(), d, &cb, &ks, s, c, sc).map(|r| b * mb + r)
            })
            .flatten()
            .min();
        not_finite("x", bad)
    })??;
    Ok((codes, score))
}

/// Codes of `x` against `m` independent codebooks `(m, k, d)`, as an `(n, m)` row-major array.
///
/// `x` is `(n, m, d)` (one latent per codebook) or, with `shared`, `(n, d)` (one latent for all).
#[allow(clippy::too_many_arguments)]
pub fn assign_multi(
    x: &[f32],
    n: usize,
    m: usize,
    d: usize,
    shared: bool,
    codebooks: &[f32],
    k: usize,
    metric: Metric,
    threads: usize,
) -> Result<Vec<i64>> {
    if m == 0 {
        return Err(Error::value("codebooks must hold at least one codebook (M >= 1), got M = 0"));
    }
    check_codebook(codebooks, m * k, d)?;
    let lda = if shared { d } else { m * d };
    check_len("x", x.len(), n * lda, if shared { "N*d" } else { "N*M*d" })?;
    let mut out = vec![0i64; n * m];
    parallel::run(threads, || -> Result<()> {
        check_finite("codebooks", codebooks, d)?;
        let cbs: Vec<PackedCodebook> = codebooks
            .chunks_exact(k * d)
            .map(|c| PackedCodebook::new(c, k, d, metric))
            .collect();
        let ks = KernelSet::selected()?;
        let mb = block_rows(d);
        let bad = out.par_chunks_mut(mb * m).enumerate().map_init(
            || (Scratch::new(), vec![0i64; MB], vec![0f32; MB]),
            |(s, codes, score), (b, block)| {
                let rows = block.len() / m;
                let mut bad: Option<usize> = None;
                for (j, cb) in cbs.iter().enumerate() {
                    let offset = if shared { 0 } else { j * d };
                    let xb = &x[b * mb * lda + offset..];
                    let found = assign_rows(xb, rows, lda, cb, &ks, s, codes, score);
                    bad = bad.into_iter().chain(found).min();
                    for r in 0..rows {
                        block[r * m + j] = codes[r];
                    }
                }
                bad.map(|r| b * mb + r)
            },
        );
        not_finite("x", bad.flatten().min())
    })??;
    Ok(out)
}

/// Residual quantisation of `x (n, d)` through `levels` codebooks `(levels, k, d)`, level by level.
///
/// Returns the codes `(n, levels)` and the final residual `(n, d)`. Always L2.
pub fn assign_residual(
    x: &[f32],
    n: usize,
    d: usize,
    codebooks: &[f32],
    levels: usize,
    k: usize,
    threads: usize,
) -> Result<(Vec<i64>, Vec<f32>)> {
    if levels == 0 {
        return Err(Error::value("codebooks must hold at least one level (L >= 1), got L = 0"));
    }
    check_codebook(codebooks, levels * k, d)?;
    check_len("x", x.len(), n * d, "N*d")?;
    let mut out = vec![0i64; n * levels];
    let mut residual = x.to_vec();
    parallel::run(threads, || -> Result<()> {
        check_finite("codebooks", codebooks, d)?;
        let cbs: Vec<(&[f32], PackedCodebook)> = codebooks
            .chunks_exact(k * d)
            .map(|c| (c, PackedCodebook::new(c, k, d, Metric::L2)))
            .collect();
        let ks = KernelSet::selected()?;
        let mb = block_rows(d);
        let bad = out
            .par_chunks_mut(mb * levels)
            .zip(residual.par_chunks_mut(mb * d))
            .enumerate()
            .map_init(
                || (Scratch::new(), vec![0i64; MB], vec![0f32; MB]),
                |(s, codes, score), (b, (block, res))| {
                    let rows = block.len() / levels;
                    let mut bad: Option<(usize, usize)> = None;
                    for (l, (raw, cb)) in cbs.iter().enumerate() {
                        if let Some(r) = assign_rows(res, rows, d, cb, &ks, s, codes, score) {
                            bad = bad.or(Some((l, b * mb + r)));
                        }
                        for r in 0..rows {
                            let c = codes[r] as usize;
                            block[r * levels + l] = codes[r];
                            let word = &raw[c * d..(c + 1) * d];
                            for (v, w) in res[r * d..(r + 1) * d].iter_mut().zip(word) {
                                *v -= w;
                            }
                        }
                    }
                    bad
                },
            )
            .flatten()
            .min();
        match bad {
            Some((0, row)) => not_finite("x", Some(row)),
            Some((l, row)) => Err(Error::value(format!(
                "x row {row}: its residual after level {l} overflowed to inf (x and codebooks hold values too large for float32 arithmetic)"
            ))),
            None => Ok(()),
        }
    })??;
    Ok((out, residual))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_add(99);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// Exact score in f64: the squared distance for L2, the inner product for IP.
    fn exact(row: &[f32], w: &[f32], metric: Metric) -> f64 {
        match metric {
            Metric::L2 => row.iter().zip(w).map(|(a, b)| ((a - b) as f64).powi(2)).sum(),
            Metric::InnerProduct => row.iter().zip(w).map(|(a, b)| (a * b) as f64).sum(),
        }
    }

    #[test]
    fn matches_brute_force_on_awkward_shapes() {
        let shapes = [(1, 1, 1), (13, 3, 5), (100, 17, 33), (49, 300, 70), (61, 8, 1500), (7, 1100, 40), (200, 1024, 33), (9, 1030, 2100)];
        for (isa, &(n, d, k)) in Isa::available().into_iter().flat_map(|i| shapes.iter().map(move |s| (i, s))) {
            for metric in [Metric::L2, Metric::InnerProduct] {
                let x = lcg(n * d, n as u64);
                let cb = lcg(k * d, k as u64 + 7);
                let (codes, score) = assign_using(isa, &x, n, d, &cb, k, metric, 2).unwrap();
                for (i, row) in x.chunks(d).enumerate() {
                    let all: Vec<f64> = cb.chunks(d).map(|w| exact(row, w, metric)).collect();
                    let best = match metric {
                        Metric::L2 => all.iter().copied().fold(f64::INFINITY, f64::min),
                        Metric::InnerProduct => all.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    };
                    let chosen = all[codes[i] as usize];
                    // The chosen code is optimal up to float32 rounding, and its score is reported.
                    assert!((chosen - best).abs() < 1e-4 * (1.0 + best.abs()), "{isa:?} row {i}");
                    assert!((score[i] as f64 - chosen).abs() < 1e-3 * (1.0 + best.abs()), "{isa:?} row {i}");
                }
            }
        }
    }

    #[test]
    fn same_codes_whatever_the_thread_count() {
        // Small d (rows read in place) and large d (rows copied chunk by chunk), over several blocks.
        for isa in Isa::available() {
            for &(n, d, k) in &[(1000, 24, 300), (2100, 1030, 20)] {
                let x = lcg(n * d, 3);
                let cb = lcg(k * d, 4);
                let one = assign_using(isa, &x, n, d, &cb, k, Metric::L2, 1).unwrap();
                let two = assign_using(isa, &x, n, d, &cb, k, Metric::L2, 2).unwrap();
                assert_eq!(one, two, "{isa:?} d={d}");
            }
        }
    }

    #[test]
    fn ties_go_to_the_lowest_index_on_every_path() {
        // Codewords 0..5 repeated three times: every row's nearest appears at j, j+5, j+10.
        for isa in Isa::available() {
            for d in [8, 1100] {
                let base = lcg(5 * d, 21);
                let cb: Vec<f32> = base.iter().chain(&base).chain(&base).copied().collect();
                let x = lcg(40 * d, 22);
                let (codes, _) = assign_using(isa, &x, 40, d, &cb, 15, Metric::L2, 2).unwrap();
                assert!(codes.iter().all(|&c| c < 5), "{isa:?} d={d}: {codes:?}");
            }
        }
    }

    #[test]
    fn simd_kernels_give_identical_codes_and_scores() {
        // Every SIMD path sums each product term with one FMA in the same order, at every d.
        let simd: Vec<Isa> = Isa::available().into_iter().filter(|&i| i != Isa::Portable).collect();
        for &(n, d, k) in &[(301, 16, 1000), (97, 384, 256), (13, 1000, 40), (29, 1500, 70)] {
            let (x, cb) = (lcg(n * d, 11), lcg(k * d, 12));
            let runs: Vec<_> = simd.iter().map(|&i| assign_using(i, &x, n, d, &cb, k, Metric::L2, 2).unwrap()).collect();
            for pair in runs.windows(2) {
                assert_eq!(pair[0], pair[1], "({n}, {d}, {k})");
            }
        }
    }

    #[test]
    fn multi_equals_separate_assigns() {
        let (n, m, d, k) = (77, 3, 10, 40);
        let x = lcg(n * m * d, 5);
        let cbs = lcg(m * k * d, 6);
        let got = assign_multi(&x, n, m, d, false, &cbs, k, Metric::L2, 2).unwrap();
        for j in 0..m {
            let xj: Vec<f32> = x.chunks(d).skip(j).step_by(m).flatten().copied().collect();
            let (codes, _) = assign(&xj, n, d, &cbs[j * k * d..(j + 1) * k * d], k, Metric::L2, 1).unwrap();
            for r in 0..n {
                assert_eq!(got[r * m + j], codes[r]);
            }
        }
    }

    #[test]
    fn residual_subtracts_the_chosen_codewords() {
        let (n, d, l, k) = (50, 6, 3, 9);
        let x = lcg(n * d, 8);
        let cbs = lcg(l * k * d, 9);
        let (codes, res) = assign_residual(&x, n, d, &cbs, l, k, 2).unwrap();
        for r in 0..n {
            for t in 0..d {
                let mut v = x[r * d + t];
                for lv in 0..l {
                    v -= cbs[(lv * k + codes[r * l + lv] as usize) * d + t];
                }
                assert!((v - res[r * d + t]).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn row_norm_is_the_same_for_any_split() {
        for d in [1, 15, 16, 37, 1037, 4096] {
            let row = lcg(d, d as u64);
            let whole = sum_squares(&row);
            for step in [1, 5, 16, 48, 208, 1000] {
                let mut norm = RowNorm::default();
                for (i, chunk) in row.chunks(step).enumerate() {
                    norm.add(chunk, i * step, d);
                }
                assert_eq!(norm.value().to_bits(), whole.to_bits(), "d={d} step={step}");
            }
            let f64_sum: f64 = row.iter().map(|&v| v as f64 * v as f64).sum();
            assert!((whole as f64 - f64_sum).abs() <= 1e-5 * f64_sum.max(1e-30), "d={d}");
        }
    }

    #[test]
    fn non_finite_rows_are_found_in_every_row_layout() {
        // d = 8: packed panels; 100: rows read in place; 1500: rows copied a k-block at a time
        // (the bad values sit in the last k-block). The first bad row is named, whatever the
        // block it falls in and the thread count.
        for d in [8, 100, 1500] {
            let (n, k) = (500, 40);
            let cb = lcg(k * d, 7);
            for (bad_value, metric) in [(f32::NAN, Metric::L2), (f32::INFINITY, Metric::InnerProduct)] {
                let mut x = lcg(n * d, 8);
                x[321 * d + d - 1] = bad_value;
                x[400 * d] = bad_value;
                for threads in [1, 2] {
                    let err = assign(&x, n, d, &cb, k, metric, threads).unwrap_err().to_string();
                    assert!(err.contains("x must be finite: row 321 "), "d={d}: {err}");
                }
                let err = assign_multi(&x, n, 1, d, true, &cb, k, metric, 2).unwrap_err().to_string();
                assert!(err.contains("row 321 "), "multi d={d}: {err}");
                let err = assign_residual(&x, n, d, &cb, 1, k, 2).unwrap_err().to_string();
                assert!(err.contains("x must be finite: row 321 "), "residual d={d}: {err}");
            }
        }
        // Finite x whose residual overflows after level 0 is named as such.
        let (x, cb) = (vec![3e38f32; 4], vec![-3e38f32, -3e38, 3e38, 3e38]);
        let err = assign_residual(&x, 2, 2, &cb, 2, 1, 1).unwrap_err().to_string();
        assert!(err.contains("residual after level 1"), "{err}");
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        assert!(matches!(assign(&[0.0; 4], 2, 2, &[], 0, Metric::L2, 1), Err(Error::Value(_))));
        assert!(assign(&[0.0; 3], 2, 2, &[0.0; 2], 1, Metric::L2, 1).is_err());
        let err = assign(&[0.0, 1.0, f32::NAN, 0.0], 2, 2, &[0.0; 2], 1, Metric::L2, 1).unwrap_err();
        assert!(err.to_string().contains("row 1"), "{err}");
        assert_eq!(assign(&[], 0, 2, &[0.0; 2], 1, Metric::L2, 1).unwrap().0.len(), 0);
    }
}
