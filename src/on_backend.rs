//! The single-call functions of the reference (`nsa_flow_retract_auto`,
//! `invariant_orthogonality_defect`, the energy) on any backend, a GPU included: the input is
//! uploaded, the work runs there, and only the result (or a few scalars) comes back.

use crate::backend::{Backend, Reduction};
use crate::energy::{Energy, FidelityType, OrthType};
use crate::error::Result;
use crate::retract::RetractOptions;
use crate::validate;
use nalgebra::DMatrix;

/// [`crate::retract`] computed on `be`.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::backend::cpu::CpuBackend;
/// use nsa_flow::{retract, retract_on, RetractOptions, Retraction};
/// let y = DMatrix::from_fn(6, 3, |i, j| 1.0 + ((i * 3 + j * 7) % 5) as f64);
/// let o = RetractOptions::corrected(Retraction::SoftPolar, 0.7);
/// let on = retract_on(&mut CpuBackend::<f64>::new(), &y, &o).unwrap();
/// assert_eq!(on, retract(&y, &o).unwrap());
/// ```
pub fn retract_on<B: Backend>(
    be: &mut B,
    y: &DMatrix<f64>,
    options: &RetractOptions,
) -> Result<DMatrix<f64>> {
    validate::finite_nonempty("Y", y)?;
    options.validate()?;
    crate::retract::check_retract_input(y, 8, options.style)?;
    let src = be.upload(y)?;
    let mut dst = be.zeros(y.nrows(), y.ncols())?;
    be.retract(&src, &mut dst, options);
    let out = be.download(&dst)?;
    validate::finite_result(
        "retraction of this input",
        &out,
        validate::Magnitude::of(y),
        be.precision() == crate::Precision::F32,
    )?;
    Ok(out)
}

/// [`crate::invariant_orthogonality_defect`] (= `defect_fast`) computed on `be`: one Gram
/// product and one readback of four scalars.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::backend::cpu::CpuBackend;
/// let v = DMatrix::from_fn(5, 3, |i, j| ((i * 3 + j) % 4) as f64);
/// let d = nsa_flow::invariant_orthogonality_defect_on(&mut CpuBackend::<f64>::new(), &v).unwrap();
/// assert!((d - nsa_flow::invariant_orthogonality_defect(&v)).abs() < 1e-15);
/// ```
pub fn invariant_orthogonality_defect_on<B: Backend>(be: &mut B, y: &DMatrix<f64>) -> Result<f64> {
    validate::finite_nonempty("Y", y)?;
    validate::nonzero("Y", y, "the invariant defect divides by ‖Y‖⁴")?;
    let m = be.upload(y)?;
    let t = be.reduce(&[Reduction::EnergyTerms { y: &m, target: &m }])?;
    let n = t[3];
    Ok(if n <= 1e-12 {
        0.0
    } else {
        (t[1] - t[2]) / (n * n)
    })
}

/// [`crate::compute_energy`] computed on `be`: one readback.
pub fn compute_energy_on<B: Backend>(
    be: &mut B,
    y: &DMatrix<f64>,
    x0: &DMatrix<f64>,
    fidelity_type: FidelityType,
    orth_type: OrthType,
    fid_eta: f64,
    c_orth: f64,
) -> Result<Energy> {
    validate::finite_nonempty("Y", y)?;
    validate::same_shape("X0", x0, y.shape())?;
    validate::finite_nonempty("X0", x0)?;
    let ym = be.upload(y)?;
    let xm = be.upload(x0)?;
    let t = be.reduce(&[
        Reduction::EnergyTerms {
            y: &ym,
            target: &xm,
        },
        Reduction::NormSq(&xm),
    ])?;
    let (d2, fro, diag, ny, nx) = (t[0], t[1], t[2], t[3], t[4]);
    let half = 0.5 * d2;
    let fidelity = match fidelity_type {
        FidelityType::Basic => fid_eta * half,
        FidelityType::ScaleInvariant => fid_eta * half / nx.max(1e-12),
        FidelityType::Symmetric => fid_eta * half / (0.5 * (nx + ny).max(1e-12)),
    };
    let orthogonality = match orth_type {
        // ‖YᵀY − I‖² = ‖S‖² − 2·tr S + k, tr S = ‖Y‖²
        OrthType::Basic => 0.25 * c_orth * (fro - 2.0 * ny + y.ncols() as f64).max(0.0),
        OrthType::ScaleInvariant => {
            0.25 * c_orth
                * if ny <= 1e-12 {
                    0.0
                } else {
                    (fro - diag) / (ny * ny)
                }
        }
    };
    Ok(Energy {
        fidelity,
        orthogonality,
        total: fidelity + orthogonality,
    })
}
