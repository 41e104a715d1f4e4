//! Exact top-k of a catalogue scored through its codes: item `n` scores
//! `Σ_m logp[m][codes[n][m]]` (summed in code order, from 0), the sum of its M codes'
//! log-probabilities under M parallel heads. The (N, M) code table is streamed once per call
//! in parallel chunks, each keeping a bounded heap per query row; nothing of size N is built.
//! Ties go to the lower item index, so the result does not depend on the thread count.

use crate::error::{Error, Result};
use crate::parallel;
use rayon::prelude::*;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Items per parallel task.
const CHUNK: usize = 1 << 14;

/// A candidate; `Ord` puts the *worse* candidate first (lower score, then higher index), so a
/// `BinaryHeap` of the k best has the one to evict on top.
#[derive(Clone, Copy, Debug)]
struct Cand {
    score: f32,
    item: usize,
}

impl Cand {
    /// Whether `self` ranks before `other` (higher score, then lower index).
    fn better(&self, other: &Cand) -> bool {
        match self.score.total_cmp(&other.score) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => self.item < other.item,
        }
    }
}

impl PartialEq for Cand {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        // Max-heap on "worse": the worst of the kept candidates is on top.
        if self.better(other) {
            Ordering::Less
        } else if other.better(self) {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    }
}

/// A code table element: any unsigned or signed integer the caller stores codes in.
pub trait Code: Copy + Send + Sync {
    /// One past the largest index the type can hold: codes need no range check when the
    /// codebook is at least this large (u8 codes with K = 256).
    const LIMIT: usize;
    /// The code as an index, or None where it is negative.
    fn index(self) -> Option<usize>;
}
impl Code for u8 {
    const LIMIT: usize = 1 << 8;
    fn index(self) -> Option<usize> {
        Some(self as usize)
    }
}
impl Code for u16 {
    const LIMIT: usize = 1 << 16;
    fn index(self) -> Option<usize> {
        Some(self as usize)
    }
}
impl Code for i32 {
    const LIMIT: usize = usize::MAX;
    fn index(self) -> Option<usize> {
        usize::try_from(self).ok()
    }
}
impl Code for i64 {
    const LIMIT: usize = usize::MAX;
    fn index(self) -> Option<usize> {
        usize::try_from(self).ok()
    }
}

/// For each of the `b` rows of `logp (b, m, kk)`, the `k` best items of `codes (n, m)`, best
/// first: `(items (b, k'), scores (b, k'))` with `k' = min(k, n)`.
#[allow(clippy::too_many_arguments)]
pub fn topk_codes<C: Code>(
    logp: &[f32],
    b: usize,
    m: usize,
    kk: usize,
    codes: &[C],
    n: usize,
    k: usize,
    threads: usize,
) -> Result<(Vec<i64>, Vec<f32>)> {
    if m == 0 || kk == 0 {
        return Err(Error::value(format!("logp must be (B, M, K) with M, K >= 1, got M = {m}, K = {kk}")));
    }
    if logp.len() != crate::size::mul("logp", crate::size::mul("logp", b, m)?, kk)? {
        return Err(Error::value(format!("logp must hold B*M*K = {b}*{m}*{kk} floats, got {}", logp.len())));
    }
    if codes.len() != crate::size::mul("codes", n, m)? {
        return Err(Error::value(format!("codes must be (N, M = {m}), got {} values for N = {n}", codes.len())));
    }
    // +inf is refused with NaN: an item with a +inf and a -inf term would score NaN, whose
    // sign (and so whether it ranks first or last) differs between x86 and aarch64.
    if logp.iter().any(|v| v.is_nan() || *v == f32::INFINITY) {
        return Err(Error::value("logp must not hold NaN or +inf (log-probabilities or logits are < +inf)"));
    }
    let k = k.min(n);
    let heaps = parallel::run(threads, || {
        codes
            .par_chunks(CHUNK * m)
            .enumerate()
            // Each worker carries its heaps (and so its floor) from chunk to chunk: a fresh
            // heap per chunk would start every chunk at -inf and let most of it in.
            .try_fold(
                || vec![BinaryHeap::with_capacity(k + 1); b],
                |mut heaps, (ci, chunk)| {
                    chunk_topk(&mut heaps, logp, m, kk, chunk, ci * CHUNK, k)?;
                    Ok::<_, Error>(heaps)
                },
            )
            .try_reduce(|| vec![BinaryHeap::new(); b], |mut acc, other| {
                for (h, o) in acc.iter_mut().zip(other) {
                    for c in o {
                        push(h, c, k);
                    }
                }
                Ok(acc)
            })
    })??;
    let mut items = crate::size::with_capacity::<i64>("top-k items", b * k)?;
    let mut scores = crate::size::with_capacity::<f32>("top-k scores", b * k)?;
    for heap in heaps {
        let sorted = heap.into_sorted_vec(); // ascending in Ord: best first
        items.extend(sorted.iter().map(|c| c.item as i64));
        scores.extend(sorted.iter().map(|c| c.score));
    }
    Ok((items, scores))
}

fn push(heap: &mut BinaryHeap<Cand>, c: Cand, k: usize) {
    if heap.len() < k {
        heap.push(c);
    } else if let Some(mut worst) = heap.peek_mut() {
        if c.better(&worst) {
            *worst = c;
        }
    }
}

/// Fold one chunk of items (first item `first`) into the k best kept so far, per query row.
fn chunk_topk<C: Code>(
    heaps: &mut [BinaryHeap<Cand>],
    logp: &[f32],
    m: usize,
    kk: usize,
    chunk: &[C],
    first: usize,
    k: usize,
) -> Result<()> {
    if C::LIMIT > kk {
        if let Some(i) = chunk.iter().position(|&c| c.index().is_none_or(|v| v >= kk)) {
            return Err(Error::value(format!(
                "codes must lie in [0, {kk}): item {} codebook {} is out of range",
                first + i / m,
                i % m
            )));
        }
    }
    for (q, heap) in heaps.iter_mut().enumerate() {
        let lp = &logp[q * m * kk..(q + 1) * m * kk];
        // Once k are kept, an item scoring below the worst kept can never enter: skip the
        // heap for it (nearly every item: the heaps, and so the floor, come from the chunks
        // this worker has already seen).
        let full = heap.len() == k;
        let mut floor = if full { heap.peek().map_or(f32::NEG_INFINITY, |w| w.score) } else { f32::NEG_INFINITY };
        for (r, row) in chunk.chunks_exact(m).enumerate() {
            let mut s = 0f32;
            for (j, &c) in row.iter().enumerate() {
                // in range: checked above for the whole chunk, or by the code type
                s += lp[j * kk + c.index().unwrap_or(0)];
            }
            if s < floor {
                continue;
            }
            push(heap, Cand { score: s, item: first + r }, k);
            if heap.len() == k {
                floor = heap.peek().map_or(f32::NEG_INFINITY, |w| w.score);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded stream of pseudo-random integers (a 64-bit LCG's high bits).
    fn lcg(mut s: u64) -> impl FnMut() -> usize {
        move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as usize
        }
    }

    fn brute(logp: &[f32], b: usize, m: usize, kk: usize, codes: &[u16], k: usize) -> Vec<(i64, f32)> {
        let n = codes.len() / m;
        let mut out = vec![];
        for q in 0..b {
            let mut all: Vec<(f32, usize)> = (0..n)
                .map(|i| {
                    let mut s = 0f32;
                    for j in 0..m {
                        s += logp[q * m * kk + j * kk + codes[i * m + j] as usize];
                    }
                    (s, i)
                })
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            out.extend(all.iter().take(k).map(|&(s, i)| (i as i64, s)));
        }
        out
    }

    #[test]
    fn equals_a_full_sort_with_ties_to_the_lower_index() {
        let mut next = lcg(7);
        for &(b, m, kk, n, k) in &[(1, 1, 3, 1, 5), (2, 3, 4, 200_000, 17), (3, 2, 2, 1000, 1000), (1, 4, 256, 70_001, 10)] {
            // few distinct codes and coarse log-probabilities: many exact ties
            let logp: Vec<f32> = (0..b * m * kk).map(|_| -((next() % 8) as f32) * 0.25).collect();
            let codes: Vec<u16> = (0..n * m).map(|_| (next() % kk) as u16).collect();
            let want = brute(&logp, b, m, kk, &codes, k);
            for threads in [1, 2] {
                let (items, scores) = topk_codes(&logp, b, m, kk, &codes, n, k, threads).unwrap();
                let got: Vec<(i64, f32)> = items.into_iter().zip(scores).collect();
                assert_eq!(got, want, "b={b} m={m} kk={kk} n={n} k={k}");
            }
        }
    }

    #[test]
    fn exact_for_peaked_rounding_and_infinite_log_probabilities() {
        // Peaked rows (what a trained decoder gives: the floor rises fast), rows of huge and
        // tiny terms where rounding decides near the floor, and rows with -inf terms;
        // 60,000 items span several chunks, each worker's floor carried across them.
        let mut next = lcg(11);
        let (m, kk, n) = (7, 256, 60_000);
        let codes: Vec<u8> = (0..n * m).map(|_| (next() % kk) as u8).collect();
        let peaked: Vec<f32> = (0..m * kk).map(|i| if i % 37 == 0 { -0.1 } else { -9.0 - (i % 5) as f32 }).collect();
        let rounding: Vec<f32> = (0..m * kk).map(|i| if i % 3 == 0 { 1.0e7 } else { (i % 7) as f32 * 0.3 }).collect();
        let mut infinite = peaked.clone();
        infinite[5] = f32::NEG_INFINITY;
        infinite[3 * kk + 9] = f32::NEG_INFINITY;
        let mut all_neg_inf = peaked.clone();
        all_neg_inf[6 * kk..].fill(f32::NEG_INFINITY);
        for (name, logp) in [("peaked", peaked), ("rounding", rounding), ("inf", infinite), ("-inf row", all_neg_inf)] {
            let codes16: Vec<u16> = codes.iter().map(|&c| c as u16).collect();
            for k in [1, 10, 500] {
                let want = brute(&logp, 1, m, kk, &codes16, k);
                let (items, scores) = topk_codes(&logp, 1, m, kk, &codes, n, k, 2).unwrap();
                let got: Vec<(i64, f32)> = items.into_iter().zip(scores).collect();
                assert_eq!(got, want, "{name} k={k}");
            }
        }
    }

    #[test]
    fn bad_codes_and_shapes_are_errors() {
        let logp = vec![0f32; 2 * 4];
        let err = topk_codes(&logp, 1, 2, 4, &[0u8, 1, 4, 0], 2, 1, 1).unwrap_err().to_string();
        assert!(err.contains("item 1 codebook 0"), "{err}");
        assert!(topk_codes(&logp, 1, 2, 4, &[0i64, -1], 1, 1, 1).is_err());
        for bad in [f32::NAN, f32::INFINITY] {
            let mut lp = logp.clone();
            lp[3] = bad;
            let err = topk_codes(&lp, 1, 2, 4, &[0u8, 1], 1, 1, 1).unwrap_err().to_string();
            assert!(err.contains("logp must not hold NaN or +inf"), "{err}");
        }
        assert!(topk_codes(&logp, 1, 2, 3, &[0u8, 1], 1, 1, 1).is_err());
        assert!(topk_codes(&logp, 1, 2, 4, &[0u8, 1, 2], 2, 1, 1).is_err());
        let (items, _) = topk_codes(&logp, 1, 2, 4, &[0u8; 0], 0, 5, 1).unwrap();
        assert!(items.is_empty());
    }
}
