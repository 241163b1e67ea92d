//! Differentiable NSA-Flow: exact analytic gradients (vector-Jacobian products) of the
//! energy, the non-negativity maps and the retractions, composable by code that embeds
//! NSA-Flow in its own training loop, and [`nsa_flow_autograd`], the reference's
//! `nsa_flow_autograd`: minimise `E(nonneg(R_w(Z)))` over `Z` with an optimizer.
//!
//! No finite differences anywhere: the retraction's backward goes through `(YᵀY)^{-1/2}` by
//! the Daleckii–Krein formula on an eigendecomposition (CPU), or, for the reference's
//! fixed-step Newton–Schulz, through every step of the iteration; on the GPU by a
//! Newton–Schulz sign iteration for the Sylvester equation, made of matrix products.

mod flow;
pub(crate) mod grad;
mod stepper;

pub use flow::{
    nsa_flow_autograd, nsa_flow_autograd_with_callback, solve_autograd, AutogradParams,
    AutogradResult,
};
pub use grad::EnergySpec;

use crate::backend::Backend;
use crate::energy::{Energy, EnergyTerms, FidelityType, OrthType};
use crate::error::Result;
use crate::params::{Mode, NonNeg, Retraction};
use crate::retract::RetractOptions;
use crate::validate;
use nalgebra::DMatrix;

/// What the autograd loop needs of a backend beyond [`Backend`]: the energy's gradient and
/// the backward maps of the non-negativity and the retraction. Both backends implement it;
/// the flow's loop needs only [`Backend`].
pub trait DifferentiableBackend: Backend {
    /// `out ← ∇E(Y)`, the gradient of the energy `spec` at `y` against `x0`, given `terms`
    /// (the [`Reduction::EnergyTerms`](crate::backend::Reduction::EnergyTerms) of `y` against `x0`, already read) and `‖X0‖²`.
    #[allow(clippy::too_many_arguments)]
    fn energy_gradient(
        &mut self,
        y: &Self::Mat,
        x0: &Self::Mat,
        spec: &EnergySpec,
        terms: &EnergyTerms,
        x0_norm_sq: f64,
        out: &mut Self::Mat,
    );
    /// `g ← g ∘ J(pre)`: the backward of the non-negativity map `mode` applied to `pre`.
    fn nonneg_backward(&mut self, pre: &Self::Mat, mode: NonNeg, g: &mut Self::Mat);
    /// `out ← J_R(y)ᵀ·g`: the backward of the retraction `options` at `y`.
    fn retract_backward(
        &mut self,
        y: &Self::Mat,
        options: &RetractOptions,
        g: &Self::Mat,
        out: &mut Self::Mat,
    );
}

/// The energy `E(Y)` of `spec` and its exact gradient with respect to `Y`.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::autograd::{energy_and_grad, EnergySpec};
/// use nsa_flow::{FidelityType, OrthType};
/// let spec = EnergySpec { fidelity_type: FidelityType::Basic, orth_type: OrthType::Basic, fid_eta: 1.0, c_orth: 0.0 };
/// let x0 = DMatrix::from_element(3, 2, 1.0);
/// let y = DMatrix::from_element(3, 2, 2.0);
/// let (e, g) = energy_and_grad(&y, &x0, &spec).unwrap();
/// assert_eq!(e.total, 3.0); // ½‖Y − X0‖²
/// assert_eq!(g, &y - &x0);
/// ```
pub fn energy_and_grad(
    y: &DMatrix<f64>,
    x0: &DMatrix<f64>,
    spec: &EnergySpec,
) -> Result<(Energy, DMatrix<f64>)> {
    validate::finite_nonempty("Y", y)?;
    validate::finite_nonempty("X0", x0)?;
    validate::same_shape("X0", x0, y.shape())?;
    check_weights(spec)?;
    let mut gram = DMatrix::zeros(y.ncols(), y.ncols());
    let terms = EnergyTerms::compute(y, x0, &mut gram);
    let x0n = crate::linalg::sum_sq(x0.as_slice());
    let energy = spec.energy(&terms, x0n, y.ncols());
    let mut out = DMatrix::zeros(y.nrows(), y.ncols());
    grad::energy_grad_into(
        y,
        x0,
        &spec.gradient_coefficients(&terms, x0n),
        &mut gram,
        &mut out,
    );
    Ok((energy, out))
}

/// The vector-Jacobian product of the retraction: `J_R(Y)ᵀ·g` for `R = retract(·, options)`
/// at `Y` (both styles, every retraction and inverse-square-root method).
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::autograd::retract_backward;
/// use nsa_flow::{RetractOptions, Retraction};
/// let y = DMatrix::from_fn(6, 2, |i, j| 1.0 + (i * 2 + j) as f64);
/// let g = DMatrix::from_element(6, 2, 1.0);
/// let none = retract_backward(&y, &RetractOptions::reference(Retraction::None, 0.5), &g).unwrap();
/// assert_eq!(none, g); // the identity map
/// let soft = retract_backward(&y, &RetractOptions::reference(Retraction::SoftPolar, 0.5), &g).unwrap();
/// assert!(soft.iter().all(|v| v.is_finite()));
/// ```
pub fn retract_backward(
    y: &DMatrix<f64>,
    options: &RetractOptions,
    g: &DMatrix<f64>,
) -> Result<DMatrix<f64>> {
    validate::finite_nonempty("Y", y)?;
    validate::finite_nonempty("gradient", g)?;
    validate::same_shape("gradient", g, y.shape())?;
    grad::check_differentiable(y.nrows(), y.ncols(), options)?;
    Ok(grad::retract_backward_in(y, options, g))
}

/// The vector-Jacobian product of a non-negativity map applied to `pre`: `g ∘ J(pre)`.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::{autograd::nonneg_backward, NonNeg};
/// let pre = DMatrix::from_row_slice(1, 3, &[-1.0, 0.5, 2.0]);
/// let g = DMatrix::from_element(1, 3, 1.0);
/// assert_eq!(nonneg_backward(&pre, NonNeg::Hard, &g).unwrap(), DMatrix::from_row_slice(1, 3, &[0.0, 1.0, 1.0]));
/// ```
pub fn nonneg_backward(pre: &DMatrix<f64>, mode: NonNeg, g: &DMatrix<f64>) -> Result<DMatrix<f64>> {
    validate::finite_nonempty("input", pre)?;
    validate::finite_nonempty("gradient", g)?;
    validate::same_shape("gradient", g, pre.shape())?;
    let mut out = g.clone();
    grad::nonneg_backward_in_place(pre, mode, &mut out);
    Ok(out)
}

/// Hessian-vector product of the orthogonality functional at `y` in the direction `v`:
/// `∇²D(Y)·V` for the invariant defect `D(Y) = ‖offdiag(YᵀY)‖²/‖Y‖⁴`
/// ([`crate::invariant_orthogonality_defect`]), or with `simplified` for
/// `‖offdiag(YᵀY)‖²`. Analytic (no differences); the layer's backward
/// ([`crate::layer::NsaFlowLayer::backward`]) differentiates the energy's gradient with it.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::autograd::{energy_and_grad, orthogonality_hvp, EnergySpec};
/// use nsa_flow::{FidelityType, OrthType};
/// let y = DMatrix::from_fn(6, 2, |i, j| 1.0 + ((i * 3 + j * 5) % 4) as f64);
/// // D is 0-homogeneous, so ∇D(tY) = ∇D(Y)/t and H(Y)·Y = −∇D(Y)
/// let hy = orthogonality_hvp(&y, &y, false).unwrap();
/// let spec = EnergySpec { fidelity_type: FidelityType::Basic, orth_type: OrthType::ScaleInvariant, fid_eta: 0.0, c_orth: 4.0 };
/// let (_, grad_d) = energy_and_grad(&y, &y, &spec).unwrap();
/// assert!((hy + &grad_d).norm() <= 1e-12 * grad_d.norm());
/// ```
pub fn orthogonality_hvp(
    y: &DMatrix<f64>,
    v: &DMatrix<f64>,
    simplified: bool,
) -> Result<DMatrix<f64>> {
    validate::finite_nonempty("Y", y)?;
    validate::finite_nonempty("direction", v)?;
    validate::same_shape("direction", v, y.shape())?;
    Ok(grad::orth_hvp(y, v, simplified))
}

/// The composite objective `E(nonneg(R_w(Z)))` that [`nsa_flow_autograd`] minimises.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompositeSpec {
    /// Retraction weight.
    pub w: f64,
    /// Which retraction.
    pub retraction: Retraction,
    /// The non-negativity map after the retraction.
    pub nonneg: NonNeg,
    /// Reference-style (renormalised) or corrected (scale-invariant) retraction.
    pub style: Mode,
    /// Fidelity functional.
    pub fidelity_type: FidelityType,
    /// Orthogonality functional.
    pub orth_type: OrthType,
    /// Fidelity weight.
    pub fid_eta: f64,
    /// Orthogonality weight.
    pub c_orth: f64,
}

impl CompositeSpec {
    /// The retraction options of this objective.
    pub fn retract_options(&self) -> RetractOptions {
        match self.style {
            Mode::Reference => RetractOptions::reference(self.retraction, self.w),
            Mode::Corrected => RetractOptions::corrected(self.retraction, self.w),
        }
    }

    /// The energy part.
    pub fn energy_spec(&self) -> EnergySpec {
        EnergySpec {
            fidelity_type: self.fidelity_type,
            orth_type: self.orth_type,
            fid_eta: self.fid_eta,
            c_orth: self.c_orth,
        }
    }
}

fn check_weights(spec: &EnergySpec) -> Result<()> {
    for (name, v) in [("fid_eta", spec.fid_eta), ("c_orth", spec.c_orth)] {
        if !v.is_finite() {
            return Err(crate::NsaError::InvalidParameter {
                name,
                reason: format!("{v} is not finite"),
            });
        }
    }
    Ok(())
}

/// `E(nonneg(R_w(Z)))` and its exact gradient with respect to `Z` (the chain of
/// [`energy_and_grad`], [`nonneg_backward`] and [`retract_backward`]).
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::autograd::{composite_energy_and_grad, CompositeSpec};
/// use nsa_flow::{FidelityType, Mode, NonNeg, OrthType, Retraction};
/// let z = DMatrix::from_fn(8, 3, |i, j| ((i * 5 + j * 3) % 7) as f64 - 2.0);
/// let x0 = z.map(|v: f64| v.max(0.0));
/// let spec = CompositeSpec {
///     w: 0.5, retraction: Retraction::SoftPolar, nonneg: NonNeg::Hard, style: Mode::Reference,
///     fidelity_type: FidelityType::Basic, orth_type: OrthType::ScaleInvariant, fid_eta: 1.0, c_orth: 1.0,
/// };
/// let (e, g) = composite_energy_and_grad(&z, &x0, &spec).unwrap();
/// assert!(e.total.is_finite() && g.iter().all(|v| v.is_finite()));
/// ```
pub fn composite_energy_and_grad(
    z: &DMatrix<f64>,
    x0: &DMatrix<f64>,
    spec: &CompositeSpec,
) -> Result<(Energy, DMatrix<f64>)> {
    validate::finite_nonempty("Z", z)?;
    validate::finite_nonempty("X0", x0)?;
    validate::same_shape("X0", x0, z.shape())?;
    let o = spec.retract_options();
    grad::check_differentiable(z.nrows(), z.ncols(), &o)?;
    check_weights(&spec.energy_spec())?;
    let r = crate::retract::retract(z, &o)?;
    let y = crate::energy::apply_nonnegativity(&r, spec.nonneg);
    let (e, g) = energy_and_grad(&y, x0, &spec.energy_spec())?;
    let mut g = g;
    grad::nonneg_backward_in_place(&r, spec.nonneg, &mut g);
    Ok((e, grad::retract_backward_in(z, &o, &g)))
}
