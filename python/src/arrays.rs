//! The one array layer: numpy arrays (float64 or float32, any order or strides, read-only
//! ones such as memmaps included) in, numpy arrays out. The solvers work on owned
//! column-major `DMatrix<f64>`, so each input is read once, strided, straight into one; the
//! Python side converts other dtypes first (`np.asarray(x, float64)`, a copy only then).
//! Outputs hand their buffer to numpy without a copy (Fortran order).

use crate::errors::shape;
use nalgebra::DMatrix;
use numpy::ndarray::{Array2, Array3, ArrayView2, ShapeBuilder};
use numpy::{IntoPyArray, PyArray2, PyArray3, PyReadonlyArray2, PyReadonlyArray3};
use pyo3::prelude::*;

fn from_view<T: Copy + Into<f64>>(v: ArrayView2<'_, T>) -> DMatrix<f64> {
    let (r, c) = v.dim();
    DMatrix::from_fn(r, c, |i, j| v[[i, j]].into())
}

/// A 2-D float64/float32 numpy array as a matrix; `what` names it in errors.
pub fn matrix(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<DMatrix<f64>> {
    if let Ok(a) = obj.extract::<PyReadonlyArray2<'_, f64>>() {
        return Ok(from_view(a.as_array()));
    }
    if let Ok(a) = obj.extract::<PyReadonlyArray2<'_, f32>>() {
        return Ok(from_view(a.as_array()));
    }
    Err(shape(format!(
        "{what} must be a 2-D float64 or float32 array, got {}",
        describe(obj)
    )))
}

/// An optional matrix (`None` stays `None`).
pub fn opt_matrix(obj: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<DMatrix<f64>>> {
    match obj {
        Some(o) if !o.is_none() => matrix(o, what).map(Some),
        _ => Ok(None),
    }
}

/// A 3-D float array `[B, p, k]` as B matrices.
pub fn batch(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<DMatrix<f64>>> {
    fn split<T: Copy + Into<f64>>(a: numpy::ndarray::ArrayView3<'_, T>) -> Vec<DMatrix<f64>> {
        a.outer_iter().map(from_view).collect()
    }
    if let Ok(a) = obj.extract::<PyReadonlyArray3<'_, f64>>() {
        return Ok(split(a.as_array()));
    }
    if let Ok(a) = obj.extract::<PyReadonlyArray3<'_, f32>>() {
        return Ok(split(a.as_array()));
    }
    Err(shape(format!(
        "{what} must be a 3-D float64 or float32 array [B, p, k], got {}",
        describe(obj)
    )))
}

fn describe(obj: &Bound<'_, PyAny>) -> String {
    let ndim = obj.getattr("ndim").ok().map(|v| v.to_string());
    let dtype = obj.getattr("dtype").ok().map(|v| v.to_string());
    match (ndim, dtype) {
        (Some(n), Some(d)) => format!("a {n}-D array of {d}"),
        _ => obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "an object".into()),
    }
}

/// A matrix as a numpy array (no copy: the column-major buffer becomes a Fortran-order array).
pub fn to_numpy<'py>(py: Python<'py>, m: DMatrix<f64>) -> Bound<'py, PyArray2<f64>> {
    let (r, c) = m.shape();
    let data: Vec<f64> = m.data.into();
    Array2::from_shape_vec((r, c).f(), data)
        .expect("a DMatrix's buffer has rows × cols entries")
        .into_pyarray(py)
}

/// B matrices of one shape as a C-order `[B, p, k]` numpy array.
pub fn batch_to_numpy<'py>(py: Python<'py>, ms: &[DMatrix<f64>]) -> Bound<'py, PyArray3<f64>> {
    let (p, k) = ms.first().map_or((0, 0), |m| m.shape());
    Array3::from_shape_fn((ms.len(), p, k), |(b, i, j)| ms[b][(i, j)]).into_pyarray(py)
}
