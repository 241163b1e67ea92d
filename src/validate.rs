//! Input checks shared by the library entry points and the command line.

use crate::element::Element;
use crate::error::{NsaError, Result};
use nalgebra::DMatrix;

/// Rejects empty matrices and matrices holding NaN or ±Inf.
pub fn finite_nonempty<T: Element>(what: &'static str, m: &DMatrix<T>) -> Result<()> {
    let (r, c) = m.shape();
    if r == 0 || c == 0 {
        return Err(NsaError::Empty {
            what,
            rows: r,
            cols: c,
        });
    }
    if let Some(idx) = m.iter().position(|v| !v.is_finite()) {
        return Err(NsaError::NonFinite {
            what,
            row: idx % r,
            col: idx / r,
            value: m.as_slice()[idx].as_f64(),
        });
    }
    Ok(())
}

/// Rejects a matrix whose shape is not `shape`.
pub fn same_shape<T: Element>(
    what: &'static str,
    m: &DMatrix<T>,
    shape: (usize, usize),
) -> Result<()> {
    if m.shape() != shape {
        return Err(NsaError::ShapeMismatch {
            what,
            expected_rows: shape.0,
            expected_cols: shape.1,
            got_rows: m.nrows(),
            got_cols: m.ncols(),
        });
    }
    Ok(())
}

/// Rejects an identically zero matrix.
pub fn nonzero<T: Element>(what: &'static str, m: &DMatrix<T>, why: &'static str) -> Result<()> {
    if m.iter().all(|v| *v == T::zero()) {
        return Err(NsaError::ZeroMatrix { what, why });
    }
    Ok(())
}
