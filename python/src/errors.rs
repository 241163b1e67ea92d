//! The one error layer: every `NsaError` becomes a Python exception of `nsa_flow_rs` (all
//! subclasses of `ValueError`, defined in `nsa_flow_rs/_errors.py` so that they pickle), and a
//! Rust panic becomes `NsaFlowError` instead of crossing into Python.

use nsa_flow::NsaError;
use pyo3::prelude::*;

pyo3::import_exception!(nsa_flow_rs._errors, NsaFlowError);
pyo3::import_exception!(nsa_flow_rs._errors, NonFiniteError);
pyo3::import_exception!(nsa_flow_rs._errors, ShapeError);
pyo3::import_exception!(nsa_flow_rs._errors, InvalidParameterError);
pyo3::import_exception!(nsa_flow_rs._errors, UnknownNameError);
pyo3::import_exception!(nsa_flow_rs._errors, BackendError);
pyo3::import_exception!(nsa_flow_rs._errors, NotDifferentiableError);
pyo3::import_exception!(nsa_flow_rs._errors, ResourceError);

/// The Python exception for a Rust error, carrying its message.
pub fn to_py(e: NsaError) -> PyErr {
    let msg = e.full_message();
    let inner = match &e {
        NsaError::InBatch { source, .. } => source.as_ref(),
        other => other,
    };
    match inner {
        NsaError::NonFinite { .. } | NsaError::NonFiniteComputation { .. } => {
            NonFiniteError::new_err(msg)
        }
        NsaError::ShapeMismatch { .. }
        | NsaError::Empty { .. }
        | NsaError::ZeroMatrix { .. }
        | NsaError::KGreaterThanP { .. } => ShapeError::new_err(msg),
        NsaError::InvalidWeight(_) | NsaError::InvalidParameter { .. } => {
            InvalidParameterError::new_err(msg)
        }
        NsaError::UnknownName { .. } => UnknownNameError::new_err(msg),
        NsaError::BackendUnavailable { .. } | NsaError::Gpu { .. } => BackendError::new_err(msg),
        NsaError::NotDifferentiable { .. } => NotDifferentiableError::new_err(msg),
        NsaError::MemoryBudget { .. }
        | NsaError::OutOfMemory { .. }
        | NsaError::SizeOverflow { .. } => ResourceError::new_err(msg),
        // an internal error is NsaFlowError, the class a caught Rust panic also becomes
        _ => NsaFlowError::new_err(msg),
    }
}

/// An invalid argument found by the binding itself (before the library sees it).
pub fn invalid(name: &str, reason: impl std::fmt::Display) -> PyErr {
    InvalidParameterError::new_err(format!("invalid value for {name}: {reason}"))
}

/// A shape problem found by the binding itself.
pub fn shape(reason: impl std::fmt::Display) -> PyErr {
    ShapeError::new_err(reason.to_string())
}

/// Runs `f`, turning a panic into `NsaFlowError` (a panic must never cross into Python).
pub fn no_panic<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(NsaFlowError::new_err(format!(
                "internal error in nsa-flow (please report it): {what}"
            )))
        }
    }
}

/// `Result<T, NsaError>` → `PyResult<T>`.
pub trait IntoPy<T> {
    /// Converts the error.
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for nsa_flow::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
