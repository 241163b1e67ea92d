//! Input checks shared by the library entry points and the command line.

use crate::element::Element;
use crate::error::{NsaError, NumericCause, Result};
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

/// The magnitudes of the inputs: the smallest and the largest of their largest absolute
/// entries (an input of only tiny entries underflows even beside a normal one).
#[derive(Clone, Copy, Debug)]
pub struct Magnitude {
    smallest: f64,
    largest: f64,
}

/// [`Magnitude`] of the given matrices (all-zero ones ignored).
pub fn magnitude(ms: &[Option<&DMatrix<f64>>]) -> Magnitude {
    let amaxes: Vec<f64> = ms
        .iter()
        .flatten()
        .map(|m| m.amax())
        .filter(|a| *a > 0.0)
        .collect();
    Magnitude {
        smallest: amaxes.iter().copied().fold(f64::INFINITY, f64::min),
        largest: amaxes.iter().copied().fold(0.0, f64::max),
    }
}

impl Magnitude {
    /// The magnitude of one matrix.
    pub fn of(m: &DMatrix<f64>) -> Self {
        magnitude(&[Some(m)])
    }

    /// The likely cause of a non-finite computation on inputs of this magnitude.
    pub fn cause(self, f32: bool) -> NumericCause {
        match NumericCause::of_magnitude(self.largest, f32) {
            NumericCause::Unknown if self.smallest.is_finite() => {
                NumericCause::of_magnitude(self.smallest, f32)
            }
            c => c,
        }
    }
}

/// Fills in the cause of a [`NsaError::NonFiniteComputation`] from the input's magnitude.
pub fn classify<T>(r: Result<T>, magnitude: Magnitude, f32: bool) -> Result<T> {
    r.map_err(|e| match e {
        NsaError::NonFiniteComputation {
            what,
            cause: NumericCause::Unknown,
        } => NsaError::NonFiniteComputation {
            what,
            cause: magnitude.cause(f32),
        },
        NsaError::InBatch { index, source } => NsaError::InBatch {
            index,
            source: Box::new(match classify::<()>(Err(*source), magnitude, f32) {
                Err(e) => e,
                Ok(()) => unreachable!(),
            }),
        },
        other => other,
    })
}

/// Rejects a result holding NaN or ±Inf.
pub fn finite_result(
    what: &'static str,
    m: &DMatrix<f64>,
    magnitude: Magnitude,
    f32: bool,
) -> Result<()> {
    if m.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    Err(NsaError::NonFiniteComputation {
        what,
        cause: magnitude.cause(f32),
    })
}
