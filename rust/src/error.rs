//! One error type for the engine; the bindings map it onto Python exceptions.

use std::fmt;

/// What went wrong, phrased for the caller: the argument, what was expected, what came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An argument has the wrong shape or an out-of-range value (Python `ValueError`).
    Value(String),
    /// An argument has the wrong type (Python `TypeError`).
    Type(String),
}

impl Error {
    pub fn value(msg: impl Into<String>) -> Self {
        Error::Value(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Value(m) | Error::Type(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Index of the first row of `x` (rows of `d` floats) holding NaN or ±inf, if any.
///
/// Parallel: call it inside [`crate::parallel::run`], never on rayon's global pool.
pub fn first_non_finite_row(x: &[f32], d: usize) -> Option<usize> {
    use rayon::prelude::*;
    if d == 0 {
        return None;
    }
    x.par_chunks(d).position_first(|row| row.iter().any(|v| !v.is_finite()))
}

/// Reject non-finite input, naming the argument and the first bad row.
pub fn check_finite(name: &str, x: &[f32], d: usize) -> Result<()> {
    not_finite(name, first_non_finite_row(x, d))
}

/// The error for `name`'s first non-finite row, if there is one.
pub fn not_finite(name: &str, row: Option<usize>) -> Result<()> {
    match row {
        Some(row) => Err(Error::value(format!("{name} must be finite: row {row} holds NaN or inf"))),
        None => Ok(()),
    }
}
