//! k-means (k-means++ or random init, Lloyd iterations) and residual k-means on the fused
//! assignment path.
//!
//! Reproducible for a seed: the random stream is our own (SplitMix64 / xoshiro256**), sums run
//! in a fixed order (members of a cluster in row order, in f64), and empty clusters are
//! repaired deterministically with the points farthest from their centroids.

use crate::assign::{assign, Metric};
use crate::error::{check_finite, Error, Result};
use crate::{parallel, size};
use rayon::prelude::*;

/// A small, fast, seedable generator (xoshiro256**), seeded through SplitMix64.
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut v = z;
            v = (v ^ (v >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            v = (v ^ (v >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            v ^ (v >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// How the first centroids are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// D²-weighted seeding (Arthur & Vassilvitskii).
    KMeansPlusPlus,
    /// k distinct rows drawn uniformly (as FAISS does).
    Random,
}

impl Init {
    pub fn parse(name: &str) -> Result<Init> {
        match name {
            "k-means++" => Ok(Init::KMeansPlusPlus),
            "random" => Ok(Init::Random),
            other => Err(Error::value(format!(
                "init must be 'k-means++' or 'random', got {other:?}"
            ))),
        }
    }
}

/// What [`kmeans`] returns.
#[derive(Debug, Clone)]
pub struct KMeans {
    /// `(k, d)` row-major.
    pub centroids: Vec<f32>,
    /// Cluster of each row, under the returned centroids.
    pub labels: Vec<i64>,
    /// Σ squared distance of each row to its centroid (L2), or Σ (1 - cosine) (IP).
    pub inertia: f64,
    /// Lloyd iterations run (fewer than asked when the labels stopped changing).
    pub iterations: usize,
}

fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| (x - y) * (x - y)).sum();
    for (u, v) in ca.zip(cb) {
        for l in 0..16 {
            let t = u[l] - v[l];
            lanes[l] += t * t;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

fn normalize_rows(x: &mut [f32], d: usize) {
    x.par_chunks_mut(d).for_each(|row| {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    });
}

/// k-means++ seeding: each next centroid is a row drawn with probability ∝ D² to the nearest
/// centroid so far.
fn seed_plus_plus(x: &[f32], n: usize, d: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    let mut centroids = Vec::with_capacity(k * d);
    let first = rng.below(n);
    centroids.extend_from_slice(&x[first * d..(first + 1) * d]);
    let mut mind: Vec<f32> = x.par_chunks(d).map(|r| sq_dist(r, &centroids[..d])).collect();
    for _ in 1..k {
        // Block sums in a fixed order, so the draw does not depend on the thread count.
        let sums: Vec<f64> = mind.par_chunks(4096).map(|c| c.iter().map(|&v| v as f64).sum()).collect();
        let total: f64 = sums.iter().sum();
        let pick = if total > 0.0 {
            let mut target = rng.next_f64() * total;
            let mut chosen = n - 1;
            'outer: for (b, &s) in sums.iter().enumerate() {
                if target >= s {
                    target -= s;
                    continue;
                }
                for (i, &v) in mind[b * 4096..(b * 4096 + 4096).min(n)].iter().enumerate() {
                    target -= v as f64;
                    if target < 0.0 && v > 0.0 {
                        chosen = b * 4096 + i;
                        break 'outer;
                    }
                }
            }
            chosen
        } else {
            rng.below(n)
        };
        let c = x[pick * d..(pick + 1) * d].to_vec();
        mind.par_iter_mut().zip(x.par_chunks(d)).for_each(|(m, r)| *m = m.min(sq_dist(r, &c)));
        centroids.extend_from_slice(&c);
    }
    centroids
}

/// k distinct rows, uniformly (Floyd's sampling, then sorted for locality).
fn seed_random(x: &[f32], n: usize, d: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    let mut chosen = std::collections::BTreeSet::new();
    for j in n - k..n {
        let t = rng.below(j + 1);
        if !chosen.insert(t) {
            chosen.insert(j);
        }
    }
    chosen.iter().flat_map(|&i| x[i * d..(i + 1) * d].iter().copied()).collect()
}

/// New centroids from the labels; empty clusters take the farthest points from their centroids.
fn update(x: &[f32], d: usize, k: usize, labels: &mut [i64], dist: &[f32], metric: Metric) -> Vec<f32> {
    let n = labels.len();
    let mut counts = vec![0usize; k];
    for &l in labels.iter() {
        counts[l as usize] += 1;
    }
    let empties: Vec<usize> = (0..k).filter(|&c| counts[c] == 0).collect();
    if !empties.is_empty() {
        // "Far" is a large distance for L2 and a small inner product for IP.
        let key = |i: usize| if metric == Metric::L2 { -dist[i] } else { dist[i] };
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(a.cmp(&b)));
        let mut next = 0;
        for &e in &empties {
            // Take the farthest point whose cluster can spare it.
            while next < n {
                let i = order[next];
                next += 1;
                let from = labels[i] as usize;
                if counts[from] > 1 {
                    counts[from] -= 1;
                    counts[e] = 1;
                    labels[i] = e as i64;
                    break;
                }
            }
        }
    }
    // Members of each cluster in row order (counting sort), then per-cluster sums in f64.
    let mut start = vec![0usize; k + 1];
    for c in 0..k {
        start[c + 1] = start[c] + counts[c];
    }
    let mut fill = start.clone();
    let mut members = vec![0usize; n];
    for (i, &l) in labels.iter().enumerate() {
        members[fill[l as usize]] = i;
        fill[l as usize] += 1;
    }
    let mut centroids = vec![0f32; k * d];
    centroids.par_chunks_mut(d).enumerate().for_each(|(c, out)| {
        let rows = &members[start[c]..start[c + 1]];
        if rows.is_empty() {
            return; // only when n < k, which callers reject
        }
        let mut acc = vec![0f64; d];
        for &i in rows {
            for (a, &v) in acc.iter_mut().zip(&x[i * d..(i + 1) * d]) {
                *a += v as f64;
            }
        }
        let inv = 1.0 / rows.len() as f64;
        for (o, a) in out.iter_mut().zip(&acc) {
            *o = (a * inv) as f32;
        }
    });
    if metric == Metric::InnerProduct {
        normalize_rows(&mut centroids, d);
    }
    centroids
}

fn inertia_of(dist: &[f32], metric: Metric) -> f64 {
    let sums: Vec<f64> = dist
        .par_chunks(4096)
        .map(|c| match metric {
            Metric::L2 => c.iter().map(|&v| v as f64).sum::<f64>(),
            Metric::InnerProduct => c.iter().map(|&v| 1.0 - v as f64).sum::<f64>(),
        })
        .collect();
    sums.iter().sum()
}

/// Lloyd's k-means of `x (n, d)` into `k` clusters. With `Metric::InnerProduct` it is spherical
/// k-means: rows and centroids are normalised and rows go to the largest inner product.
#[allow(clippy::too_many_arguments)]
pub fn kmeans(
    x: &[f32],
    n: usize,
    d: usize,
    k: usize,
    iters: usize,
    seed: u64,
    init: Init,
    metric: Metric,
    threads: usize,
) -> Result<KMeans> {
    lloyd(x, n, d, k, iters, Start::Seeded(seed, init), metric, threads)
}

/// [`kmeans`] from given initial centroids `(k, d)` (to compare with another library from the
/// same start, or to continue a run).
#[allow(clippy::too_many_arguments)]
pub fn kmeans_from(
    x: &[f32],
    n: usize,
    d: usize,
    centroids: &[f32],
    k: usize,
    iters: usize,
    metric: Metric,
    threads: usize,
) -> Result<KMeans> {
    if centroids.len() != k * d || k == 0 {
        return Err(Error::value(format!(
            "init centroids must be (k, d) = ({k}, {d}) with k >= 1, got {} floats",
            centroids.len()
        )));
    }
    check_finite("init centroids", centroids, d)?;
    lloyd(x, n, d, k, iters, Start::Given(centroids), metric, threads)
}

enum Start<'a> {
    Seeded(u64, Init),
    Given(&'a [f32]),
}

#[allow(clippy::too_many_arguments)]
fn lloyd(
    x: &[f32],
    n: usize,
    d: usize,
    k: usize,
    iters: usize,
    start: Start<'_>,
    metric: Metric,
    threads: usize,
) -> Result<KMeans> {
    if k == 0 {
        return Err(Error::value("k must be >= 1, got 0"));
    }
    if d == 0 {
        return Err(Error::value("x must have at least one column (d >= 1), got d = 0"));
    }
    if x.len() != n * d {
        return Err(Error::value(format!("x must hold N*d = {} floats, got {}", n * d, x.len())));
    }
    if n < k {
        return Err(Error::value(format!(
            "x has {n} rows but k-means needs at least k = {k} rows"
        )));
    }
    parallel::run(threads, || -> Result<KMeans> {
        check_finite("x", x, d)?;
        let owned;
        let x = if metric == Metric::InnerProduct {
            let mut v = x.to_vec();
            normalize_rows(&mut v, d);
            owned = v;
            &owned[..]
        } else {
            x
        };
        let mut centroids = match start {
            Start::Seeded(seed, Init::KMeansPlusPlus) => {
                seed_plus_plus(x, n, d, k, &mut Rng::new(seed))
            }
            Start::Seeded(seed, Init::Random) => seed_random(x, n, d, k, &mut Rng::new(seed)),
            Start::Given(c) => c.to_vec(),
        };
        if metric == Metric::InnerProduct {
            normalize_rows(&mut centroids, d);
        }
        // Already inside the pool: threads = 0 would pick a pool by default, so pass ours on.
        let inner = rayon::current_num_threads();
        let mut prev: Option<Vec<i64>> = None;
        let mut iterations = 0;
        for _ in 0..iters {
            let (mut labels, dist) = assign(x, n, d, &centroids, k, metric, inner)?;
            if prev.as_ref() == Some(&labels) {
                break; // converged: another update would reproduce the same centroids
            }
            prev = Some(labels.clone());
            centroids = update(x, d, k, &mut labels, &dist, metric);
            iterations += 1;
        }
        let (labels, dist) = assign(x, n, d, &centroids, k, metric, inner)?;
        Ok(KMeans { centroids, labels, inertia: inertia_of(&dist, metric), iterations })
    })?
}

/// What [`rq_kmeans`] returns.
#[derive(Debug, Clone)]
pub struct ResidualKMeans {
    /// `(levels, k, d)` row-major.
    pub codebooks: Vec<f32>,
    /// `(n, levels)` row-major.
    pub codes: Vec<i64>,
    /// Σ ‖final residual‖² over rows.
    pub inertia: f64,
}

/// Residual k-means: level l clusters what levels < l left unexplained (L2).
#[allow(clippy::too_many_arguments)]
pub fn rq_kmeans(
    x: &[f32],
    n: usize,
    d: usize,
    levels: usize,
    k: usize,
    iters: usize,
    seed: u64,
    init: Init,
    threads: usize,
) -> Result<ResidualKMeans> {
    if levels == 0 {
        return Err(Error::value("levels must be >= 1, got 0"));
    }
    if n < k || k == 0 {
        return Err(Error::value(format!(
            "k must be in 1..={n} (x has {n} rows), got k = {k}"
        )));
    }
    let mut codebooks = size::with_capacity("levels", size::mul("levels", levels, size::mul("k", k, d)?)?)?;
    let mut codes = size::zeroed::<i64>("levels", size::mul("levels", n, levels)?)?;
    let mut residual = x.to_vec();
    let mut inertia = 0.0;
    for l in 0..levels {
        let km = kmeans(&residual, n, d, k, iters, seed.wrapping_add(l as u64), init, Metric::L2, threads)?;
        for (i, row) in residual.chunks_mut(d).enumerate() {
            let c = km.labels[i] as usize;
            codes[i * levels + l] = km.labels[i];
            for (v, w) in row.iter_mut().zip(&km.centroids[c * d..(c + 1) * d]) {
                *v -= w;
            }
        }
        inertia = km.inertia;
        codebooks.extend_from_slice(&km.centroids);
    }
    Ok(ResidualKMeans { codebooks, codes, inertia })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(n_per: usize, centers: &[[f32; 2]], seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let mut x = Vec::new();
        for c in centers {
            for _ in 0..n_per {
                x.push(c[0] + (rng.next_f64() as f32 - 0.5) * 0.1);
                x.push(c[1] + (rng.next_f64() as f32 - 0.5) * 0.1);
            }
        }
        x
    }

    #[test]
    fn finds_well_separated_blobs() {
        let centers = [[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]];
        let x = blobs(100, &centers, 1);
        for init in [Init::KMeansPlusPlus, Init::Random] {
            let km = kmeans(&x, 300, 2, 3, 25, 0, init, Metric::L2, 2).unwrap();
            assert!(km.inertia < 300.0 * 0.01, "inertia {}", km.inertia);
            for b in 0..3 {
                let l = km.labels[b * 100];
                assert!(km.labels[b * 100..(b + 1) * 100].iter().all(|&v| v == l));
            }
        }
    }

    #[test]
    fn reproducible_and_thread_count_free() {
        let x = blobs(200, &[[0.0, 0.0], [1.0, 0.3], [0.2, 0.9], [2.0, 2.0]], 2);
        let a = kmeans(&x, 800, 2, 16, 10, 7, Init::KMeansPlusPlus, Metric::L2, 1).unwrap();
        let b = kmeans(&x, 800, 2, 16, 10, 7, Init::KMeansPlusPlus, Metric::L2, 2).unwrap();
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.centroids, b.centroids);
    }

    #[test]
    fn empty_clusters_take_the_farthest_points() {
        // Cluster 2 is empty; row 3 is the farthest from its centroid, so it moves there.
        let x = [0.0f32, 0.1, 0.2, 5.0, 9.0, 9.1];
        let mut labels = vec![0i64, 0, 0, 0, 1, 1];
        let dist = [0.1f32, 0.0, 0.1, 20.0, 0.0, 0.0];
        let c = update(&x, 1, 3, &mut labels, &dist, Metric::L2);
        assert_eq!(labels, vec![0, 0, 0, 2, 1, 1]);
        assert_eq!(c[2], 5.0);
        assert!((c[0] - 0.1).abs() < 1e-6);
    }

    #[test]
    fn rejects_fewer_rows_than_clusters() {
        let err = kmeans(&[0.0; 4], 2, 2, 3, 5, 0, Init::Random, Metric::L2, 1).unwrap_err();
        assert!(err.to_string().contains("at least k = 3"));
    }

    #[test]
    fn rq_rejects_extreme_sizes_before_allocating() {
        let x = [0.0f32; 6];
        let err = rq_kmeans(&x, 3, 2, 1 << 46, 2, 1, 0, Init::Random, 1).unwrap_err();
        assert!(err.to_string().starts_with("levels"), "{err}");
        let err = rq_kmeans(&x, 3, 2, 2, 1 << 62, 1, 0, Init::Random, 1).unwrap_err();
        assert!(err.to_string().contains("k must be in 1..=3"), "{err}");
    }
}
