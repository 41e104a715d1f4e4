//! Checked sizes and fallible allocation: a size that overflows or an allocation the machine
//! cannot make is a `ValueError` naming the argument, never a panic or an abort.

use crate::error::{Error, Result};

/// Largest allocation ever attempted, in bytes: the 47-bit user address space of x86-64 and
/// aarch64 Linux. Anything larger cannot succeed, whatever the overcommit policy.
pub const MAX_BYTES: usize = 1 << 47;

/// `a * b`, or an error naming `what` (the argument whose size it is) and both factors.
pub fn mul(what: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| {
        Error::value(format!("{what}: the size {a} * {b} overflows a 64-bit count"))
    })
}

/// A zero-filled `Vec<T>` of `len` elements for `what`, or a `ValueError` where it exceeds
/// [`MAX_BYTES`] or the allocator refuses it (instead of Rust's abort on allocation failure).
pub fn zeroed<T: Clone + Default>(what: &str, len: usize) -> Result<Vec<T>> {
    let mut v = with_capacity(what, len)?;
    v.resize(len, T::default());
    Ok(v)
}

/// An empty `Vec<T>` with room for `len` elements; errors as [`zeroed`].
pub fn with_capacity<T>(what: &str, len: usize) -> Result<Vec<T>> {
    let bytes = len.checked_mul(std::mem::size_of::<T>().max(1));
    let too_big = || {
        Error::value(format!(
            "{what} needs {len} elements ({} bytes), which cannot be allocated",
            bytes.map_or_else(|| "over 2^64".to_string(), |b| b.to_string())
        ))
    };
    if bytes.is_none_or(|b| b > MAX_BYTES) {
        return Err(too_big());
    }
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| too_big())?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_and_huge_allocations_are_errors() {
        assert!(mul("k", usize::MAX, 2).unwrap_err().to_string().starts_with("k:"));
        assert_eq!(mul("k", 3, 4).unwrap(), 12);
        assert!(zeroed::<i64>("histogram", usize::MAX / 4).is_err());
        assert!(zeroed::<i64>("histogram", MAX_BYTES / 8 + 1).is_err());
        assert_eq!(zeroed::<i64>("histogram", 3).unwrap(), vec![0, 0, 0]);
    }
}
