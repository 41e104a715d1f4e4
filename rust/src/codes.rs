//! Semantic-ID bookkeeping: packing code tuples into one integer, the collision suffix, and
//! per-codebook statistics.

use crate::error::{Error, Result};
use crate::{parallel, size};
use rayon::slice::ParallelSliceMut;
use std::collections::HashMap;
#[cfg(test)]
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// Pack each row of `codes (n, m)` into one u64, the first code in the highest bits, so that
/// sorting packed IDs sorts the tuples lexicographically.
pub fn pack_codes(codes: &[i64], m: usize, bits: u32) -> Result<Vec<u64>> {
    check_bits(m, bits)?;
    let limit = 1u128 << bits;
    let mut out = Vec::with_capacity(codes.len() / m.max(1));
    for (r, row) in codes.chunks_exact(m).enumerate() {
        let mut id = 0u64;
        for (j, &c) in row.iter().enumerate() {
            if c < 0 || c as u128 >= limit {
                return Err(Error::value(format!(
                    "codes[{r}, {j}] = {c} does not fit in {bits} bits: expected 0 <= code < {limit}"
                )));
            }
            id = if bits == 64 { c as u64 } else { (id << bits) | c as u64 };
        }
        out.push(id);
    }
    Ok(out)
}

/// Inverse of [`pack_codes`]: `(n, m)` codes from n packed IDs.
pub fn unpack_codes(ids: &[u64], m: usize, bits: u32) -> Result<Vec<i64>> {
    check_bits(m, bits)?;
    let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
    let used = bits as usize * m; // <= 64: check_bits
    let mut out = size::with_capacity("unpacked codes (len(ids) * m)", size::mul("m", ids.len(), m)?)?;
    for (r, &id) in ids.iter().enumerate() {
        if used < 64 && id >> used != 0 {
            return Err(Error::value(format!(
                "ids[{r}] = {id} has bits set above the {used} that m = {m} codes of {bits} bits use"
            )));
        }
        for j in 0..m {
            let shift = bits as usize * (m - 1 - j);
            out.push(((id >> shift) & mask) as i64);
        }
    }
    Ok(out)
}

fn check_bits(m: usize, bits: u32) -> Result<()> {
    if m == 0 {
        return Err(Error::value("m (codes per item) must be >= 1, got 0"));
    }
    if bits == 0 || (bits as usize).checked_mul(m).is_none_or(|b| b > 64) {
        return Err(Error::value(format!(
            "bits * m must be in 1..=64 to fit a u64: got bits = {bits}, m = {m}"
        )));
    }
    if bits == 64 && m != 1 {
        return Err(Error::value("bits = 64 allows only m = 1"));
    }
    Ok(())
}

/// A hasher for u64 keys: the splitmix64 finaliser, a few multiplies that spread every input
/// bit over the whole word (std's SipHash is DoS-resistant and several times slower here).
#[derive(Default, Clone, Copy)]
pub struct Mix64(u64);

impl Hasher for Mix64 {
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_i64(&mut self, v: i64) {
        self.write_u64(v as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Mix64>>;

/// One u64 key per row when the codes' value ranges fit 64 bits together (the usual case:
/// a few codes of at most a few thousand values), else None. Equal keys ⇔ equal rows.
fn row_keys(codes: &[i64], m: usize) -> Option<Vec<u64>> {
    let mut lo = vec![i64::MAX; m];
    let mut hi = vec![i64::MIN; m];
    for row in codes.chunks_exact(m) {
        for (j, &c) in row.iter().enumerate() {
            lo[j] = lo[j].min(c);
            hi[j] = hi[j].max(c);
        }
    }
    let mut bits = Vec::with_capacity(m);
    for j in 0..m {
        let span = (hi[j] as i128 - lo[j] as i128).max(0) as u128;
        bits.push(128 - span.leading_zeros());
    }
    if bits.iter().sum::<u32>() > 64 {
        return None;
    }
    Some(
        codes
            .chunks_exact(m)
            .map(|row| {
                row.iter().enumerate().fold(0u64, |key, (j, &c)| {
                    let v = (c as i128 - lo[j] as i128) as u64;
                    if bits[j] == 64 { v } else { (key << bits[j]) | v }
                })
            })
            .collect(),
    )
}

/// Append to each row of `codes (n, m)` its rank among earlier rows with the same tuple, so that
/// every `(n, m + 1)` row is unique (TIGER's collision code). Returns the new codes and the
/// largest group size. Where the rows pack into u64 keys, (key, row) pairs are sorted in
/// parallel and each row's rank is its place in its run; otherwise rows are hashed.
pub fn resolve_collisions(codes: &[i64], m: usize) -> Result<(Vec<i64>, usize)> {
    if m == 0 {
        return Err(Error::value("codes must have at least one column"));
    }
    let n = codes.len() / m;
    let mut ranks = vec![0i64; n];
    let mut largest = 0usize;
    if let Some(keys) = row_keys(codes, m) {
        let mut pairs: Vec<(u64, u64)> = keys.into_iter().zip(0..n as u64).collect();
        parallel::run(0, || pairs.par_sort_unstable())?;
        for run in pairs.chunk_by(|a, b| a.0 == b.0) {
            for (rank, &(_, row)) in run.iter().enumerate() {
                ranks[row as usize] = rank as i64;
            }
            largest = largest.max(run.len());
        }
    } else {
        let mut seen: FastMap<&[i64], i64> = FastMap::with_capacity_and_hasher(n, Default::default());
        for (row, rank) in codes.chunks_exact(m).zip(ranks.iter_mut()) {
            let count = seen.entry(row).or_insert(0);
            *rank = *count;
            *count += 1;
            largest = largest.max(*count as usize);
        }
    }
    let mut out = Vec::with_capacity(n * (m + 1));
    for (row, rank) in codes.chunks_exact(m).zip(ranks) {
        out.extend_from_slice(row);
        out.push(rank);
    }
    Ok((out, largest))
}

/// The number of distinct rows of `codes (n, m)` and the size of the largest group of equal rows.
pub fn group_sizes(codes: &[i64], m: usize) -> Result<(usize, usize)> {
    Ok(match row_keys(codes, m) {
        Some(mut keys) => {
            parallel::run(0, || keys.par_sort_unstable())?;
            keys.chunk_by(|a, b| a == b).fold((0, 0), |(u, l), run| (u + 1, l.max(run.len())))
        }
        None => {
            let mut counts: FastMap<&[i64], usize> = FastMap::default();
            for row in codes.chunks_exact(m) {
                *counts.entry(row).or_insert(0) += 1;
            }
            (counts.len(), counts.values().copied().max().unwrap_or(0))
        }
    })
}

/// Per-codebook histograms `(m, k)`, the number of distinct full tuples and the largest group
/// of equal tuples ([`group_sizes`]).
pub fn code_histograms(codes: &[i64], m: usize, k: usize) -> Result<(Vec<i64>, usize, usize)> {
    if m == 0 || k == 0 {
        return Err(Error::value(format!(
            "codes need m >= 1 columns and codebook_size >= 1, got m = {m}, codebook_size = {k}"
        )));
    }
    let mut hist = size::zeroed::<i64>("codebook_size", size::mul("codebook_size", m, k)?)?;
    for (r, row) in codes.chunks_exact(m).enumerate() {
        for (j, &c) in row.iter().enumerate() {
            if c < 0 || c as usize >= k {
                return Err(Error::value(format!(
                    "codes[{r}, {j}] = {c} is out of range: expected 0 <= code < codebook_size = {k}"
                )));
            }
            hist[j * k + c as usize] += 1;
        }
    }
    let (unique, largest) = group_sizes(codes, m)?;
    Ok((hist, unique, largest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_and_orders_lexicographically() {
        let codes = vec![1, 2, 3, 1, 3, 0, 0, 255, 255];
        let ids = pack_codes(&codes, 3, 8).unwrap();
        assert_eq!(unpack_codes(&ids, 3, 8).unwrap(), codes);
        assert!(ids[2] < ids[0] && ids[0] < ids[1]);
        assert_eq!(ids[0], (1 << 16) | (2 << 8) | 3);
    }

    #[test]
    fn pack_rejects_codes_that_do_not_fit() {
        assert!(pack_codes(&[256], 1, 8).unwrap_err().to_string().contains("codes[0, 0] = 256"));
        assert!(pack_codes(&[-1], 1, 8).is_err());
        assert!(pack_codes(&[1, 1, 1], 3, 22).is_err());
        assert_eq!(pack_codes(&[i64::MAX], 1, 64).unwrap(), vec![i64::MAX as u64]);
    }

    #[test]
    fn collision_suffix_makes_rows_unique() {
        let codes = vec![1, 1, 2, 2, 1, 1, 1, 1];
        let (out, largest) = resolve_collisions(&codes, 2).unwrap();
        assert_eq!(out, vec![1, 1, 0, 2, 2, 0, 1, 1, 1, 1, 1, 2]);
        assert_eq!(largest, 3);
    }

    #[test]
    fn packed_and_hashed_paths_agree() {
        // Random small codes take the packed-key path; the same rows shifted past 64 bits of
        // range take the row-hash path: identical suffixes and counts.
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 40) as i64 % 5
        };
        let codes: Vec<i64> = (0..3000).map(|_| next()).collect();
        let mut wide = codes.clone();
        for row in wide.chunks_exact_mut(3) {
            row[0] = if row[0] == 0 { i64::MIN } else { i64::MAX - row[0] };
            row[1] = if row[1] == 0 { i64::MIN } else { i64::MAX - row[1] };
        }
        assert!(row_keys(&codes, 3).is_some() && row_keys(&wide, 3).is_none());
        let (a, la) = resolve_collisions(&codes, 3).unwrap();
        let (b, lb) = resolve_collisions(&wide, 3).unwrap();
        let suffix = |v: &[i64]| v.chunks_exact(4).map(|r| r[3]).collect::<Vec<_>>();
        assert_eq!((suffix(&a), la), (suffix(&b), lb));
        let (_, ua, lg) = code_histograms(&codes, 3, 5).unwrap();
        let distinct: HashSet<&[i64]> = codes.chunks_exact(3).collect();
        assert_eq!((ua, lg), (distinct.len(), la));
        assert_eq!(group_sizes(&wide, 3).unwrap(), (ua, lb));
    }

    #[test]
    fn histograms_count_codes_and_tuples() {
        let (hist, unique, largest) = code_histograms(&[0, 1, 0, 1, 1, 0], 2, 2).unwrap();
        assert_eq!(hist, vec![2, 1, 1, 2]);
        assert_eq!((unique, largest), (2, 2));
        assert!(code_histograms(&[0, 2], 2, 2).is_err());
        for k in [1 << 62, usize::MAX, 10_000_000_000_000] {
            assert!(code_histograms(&[0, 1], 2, k).unwrap_err().to_string().contains("codebook_size"));
        }
    }

    #[test]
    fn extreme_sizes_are_errors_not_panics() {
        assert!(unpack_codes(&[0, 1], usize::MAX / 2 + 1, 2).is_err());
        assert!(unpack_codes(&[0, 1], 1 << 62, 1).is_err());
        assert!(pack_codes(&[0, 0], 2, u32::MAX).is_err());
    }
}
