//! Semantic-ID bookkeeping: packing code tuples into one integer, the collision suffix, and
//! per-codebook statistics.

use crate::error::{Error, Result};
use std::collections::HashMap;

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
    let used = bits as usize * m;
    let mut out = Vec::with_capacity(ids.len() * m);
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
    if bits == 0 || bits as usize * m > 64 {
        return Err(Error::value(format!(
            "bits * m must be in 1..=64 to fit a u64: got bits = {bits}, m = {m}"
        )));
    }
    if bits == 64 && m != 1 {
        return Err(Error::value("bits = 64 allows only m = 1"));
    }
    Ok(())
}

/// Append to each row of `codes (n, m)` its rank among earlier rows with the same tuple, so that
/// every `(n, m + 1)` row is unique (TIGER's collision code). Returns the new codes and the
/// largest group size.
pub fn resolve_collisions(codes: &[i64], m: usize) -> Result<(Vec<i64>, usize)> {
    if m == 0 {
        return Err(Error::value("codes must have at least one column"));
    }
    let n = codes.len() / m;
    let mut seen: HashMap<&[i64], i64> = HashMap::with_capacity(n);
    let mut out = Vec::with_capacity(n * (m + 1));
    let mut largest = 0usize;
    for row in codes.chunks_exact(m) {
        let rank = seen.entry(row).or_insert(0);
        out.extend_from_slice(row);
        out.push(*rank);
        *rank += 1;
        largest = largest.max(*rank as usize);
    }
    Ok((out, largest))
}

/// Per-codebook histograms `(m, k)` and the number of distinct full tuples.
pub fn code_histograms(codes: &[i64], m: usize, k: usize) -> Result<(Vec<i64>, usize)> {
    if m == 0 || k == 0 {
        return Err(Error::value(format!(
            "codes need m >= 1 columns and codebook_size >= 1, got m = {m}, codebook_size = {k}"
        )));
    }
    let mut hist = vec![0i64; m * k];
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
    let unique: std::collections::HashSet<&[i64]> = codes.chunks_exact(m).collect();
    Ok((hist, unique.len()))
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
    fn histograms_count_codes_and_tuples() {
        let (hist, unique) = code_histograms(&[0, 1, 0, 1, 1, 0], 2, 2).unwrap();
        assert_eq!(hist, vec![2, 1, 1, 2]);
        assert_eq!(unique, 2);
        assert!(code_histograms(&[0, 2], 2, 2).is_err());
    }
}
