//! The retraction `nsa_flow_retract_auto` and the inverse square root `inv_sqrt_sym`.

use crate::element::{cast_from_f64, cast_to_f64, Element};
use crate::error::{NsaError, Result};
use crate::linalg;
use crate::params::{InvSqrtMethod, Mode, Retraction};
use crate::setters::with_setters;
use crate::validate;
use nalgebra::DMatrix;

with_setters! {
    /// Options of [`retract`]; `Default` reproduces the reference's `nsa_flow_retract_auto`
    /// defaults (`w = 1`, soft-polar, `eps_rf = 1e-8`, `inv_method = "auto"`, `ns_iter = 4`,
    /// `eig_thresh = 128`, `diag_thresh = 8192`), in reference style.
    #[derive(Clone, Debug, PartialEq)]
    #[non_exhaustive]
    pub struct RetractOptions {
        /// Which retraction.
        pub retraction: Retraction,
        /// Blend weight (`≤ 0` returns the input unchanged; the reference does not clamp `w > 1`).
        pub w: f64,
        /// How the inverse square root of `YᵀY` is computed.
        pub inv_method: InvSqrtMethod,
        /// Newton–Schulz iterations. Reference style: exactly this many (`None` = 4, the value
        /// the reference passes). Corrected style: the cap of the residual-stopped iteration
        /// (`None` = 100).
        pub ns_iter: Option<usize> => Some(usize),
        /// The reference's `eps_rf` (added to `YᵀY`, and once more on its Newton–Schulz path).
        /// Corrected style uses a relative regularisation `16·ε_mach·tr(YᵀY)/k` instead and rejects
        /// a non-default value.
        pub eps: f64,
        /// `auto` uses the eigendecomposition for `k ≤ eig_thresh`.
        pub eig_thresh: usize,
        /// The additive SVD fallback is taken when `k > diag_thresh` and `p < k` (reference style;
        /// corrected style has no such branch and rejects a non-default value).
        pub diag_thresh: usize,
        /// Reference style (renormalised to `‖Y‖_F`, scale-dependent blend) or corrected style
        /// (blend with the scaled polar factor `c·Q`, `c = ⟨Q,Y⟩/‖Q‖²`, no renormalisation,
        /// accurate Newton–Schulz).
        pub style: Mode,
    }
}

impl Default for RetractOptions {
    fn default() -> Self {
        RetractOptions {
            retraction: Retraction::SoftPolar,
            w: 1.0,
            inv_method: InvSqrtMethod::Auto,
            ns_iter: None,
            eps: 1e-8,
            eig_thresh: 128,
            diag_thresh: 8192,
            style: Mode::Reference,
        }
    }
}

impl RetractOptions {
    /// The retraction the corrected solver uses, with blend weight `w`.
    pub fn corrected(retraction: Retraction, w: f64) -> Self {
        RetractOptions {
            retraction,
            w,
            style: Mode::Corrected,
            ..Default::default()
        }
    }

    /// The retraction the reference solver uses, with blend weight `w`.
    pub fn reference(retraction: Retraction, w: f64) -> Self {
        RetractOptions {
            retraction,
            w,
            ..Default::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        // the reference returns Y for w ≤ 0 and extrapolates past the polar factor for w > 1;
        // neither is a retraction, so both styles take w in [0, 1] only
        if !(self.w.is_finite() && (0.0..=1.0).contains(&self.w)) {
            return Err(NsaError::InvalidWeight(self.w));
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(NsaError::InvalidParameter {
                name: "eps",
                reason: format!("{} is not a finite non-negative number", self.eps),
            });
        }
        let d = RetractOptions::default();
        if self.style == Mode::Corrected && (self.eps != d.eps || self.diag_thresh != d.diag_thresh)
        {
            return Err(NsaError::InvalidParameter {
                name: "eps / diag_thresh",
                reason: "these tune the reference's branches (an absolute εI added to YᵀY, the additive SVD \
                         fallback); the corrected retraction regularises relative to tr(YᵀY) and has no \
                         fallback branch, so they must keep their defaults in corrected style"
                    .into(),
            });
        }
        if self.ns_iter == Some(0) && self.style == Mode::Corrected {
            return Err(NsaError::InvalidParameter {
                name: "ns_iter",
                reason: "the iteration cap must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// Reusable k×k storage of the retraction (sized once per shape).
#[derive(Clone, Debug)]
pub(crate) struct RetractWorkspace<T: Element> {
    gram: DMatrix<T>,
    tw: DMatrix<T>,
}

impl<T: Element> RetractWorkspace<T> {
    pub(crate) fn new(k: usize) -> Self {
        RetractWorkspace {
            gram: DMatrix::zeros(k, k),
            tw: DMatrix::zeros(k, k),
        }
    }
}

/// The inverse square root of the reference's `inv_sqrt_sym_adaptive`.
fn inv_sqrt_reference<T: Element>(a: &DMatrix<T>, o: &RetractOptions) -> DMatrix<T> {
    let eps = T::of(o.eps);
    let method = match o.inv_method {
        InvSqrtMethod::Auto if a.nrows() <= o.eig_thresh => InvSqrtMethod::Eig,
        InvSqrtMethod::Auto => InvSqrtMethod::NewtonSchulz,
        m => m,
    };
    match method {
        // Eigenvalues below 16·ε_mach·tr(A)/k are rounding noise from the eigensolver (in f32
        // they are ~1e-7·λ_max): inverting them gives arbitrary results, so they are clamped
        // there as well as at ε. In f64 at ordinary scales the floor is far below ε and
        // changes nothing; the GPU lifts them the same way.
        InvSqrtMethod::Eig | InvSqrtMethod::Auto => {
            let k = a.nrows().max(1);
            let floor = (16.0 * T::EPS * linalg::trace(a) / k as f64).max(o.eps);
            linalg::inv_sqrt_eig(a, T::of(floor))
        }
        InvSqrtMethod::NewtonSchulz => {
            linalg::inv_sqrt_ns_reference(a, eps, o.ns_iter.unwrap_or(4))
                .unwrap_or_else(|| linalg::inv_sqrt_eig(a, eps))
        }
        InvSqrtMethod::Diag => linalg::inv_sqrt_diag(a, eps),
    }
}

/// The corrected inverse square root of `S + δI`, `δ = 16·ε_mach·tr(S)/k`: `auto` is the
/// eigendecomposition for `k ≤ eig_thresh` and the residual-stopped Newton–Schulz (capped at
/// `ns_cap` iterations, 100 by default) above.
pub(crate) fn inv_sqrt_corrected<T: Element>(
    s: &DMatrix<T>,
    inv_method: InvSqrtMethod,
    eig_thresh: usize,
    ns_cap: Option<usize>,
) -> DMatrix<T> {
    let k = s.nrows();
    let tr = linalg::trace(s);
    let delta = 16.0 * T::EPS * tr / k as f64;
    let mut a = s.clone();
    for j in 0..k {
        a[(j, j)] += T::of(delta);
    }
    let method = match inv_method {
        InvSqrtMethod::Auto if k <= eig_thresh => InvSqrtMethod::Eig,
        InvSqrtMethod::Auto => InvSqrtMethod::NewtonSchulz,
        m => m,
    };
    let floor = T::of(delta.max(f64::MIN_POSITIVE));
    match method {
        InvSqrtMethod::Eig | InvSqrtMethod::Auto => linalg::inv_sqrt_eig(&a, floor),
        InvSqrtMethod::NewtonSchulz => {
            let tol = 8.0 * T::EPS * (k as f64).sqrt();
            let (z, info) = linalg::inv_sqrt_ns_accurate(&a, tol, ns_cap.unwrap_or(100));
            if info.residual.is_finite() {
                z
            } else {
                linalg::inv_sqrt_eig(&a, floor)
            }
        }
        InvSqrtMethod::Diag => linalg::inv_sqrt_diag(&a, floor),
    }
}

/// `dst ← R_w(src)` without allocating p×k storage.
pub(crate) fn retract_into<T: Element>(
    src: &DMatrix<T>,
    dst: &mut DMatrix<T>,
    o: &RetractOptions,
    ws: &mut RetractWorkspace<T>,
) {
    let (p, k) = src.shape();
    if o.retraction == Retraction::None || o.w <= 0.0 {
        dst.copy_from(src);
        return;
    }
    match o.style {
        Mode::Reference => {
            let additive = o.retraction == Retraction::Polar || (k > o.diag_thresh && p < k);
            if additive {
                let norm_y = linalg::fro(src);
                if norm_y.as_f64() < 1e-12 {
                    dst.copy_from(src);
                    return;
                }
                let q = linalg::polar_factor_svd(src);
                if o.retraction == Retraction::Polar {
                    dst.copy_from(&q);
                } else {
                    let w = T::of(o.w);
                    dst.zip_zip_apply(src, &q, |d, y, qv| *d = (T::one() - w) * y + w * qv);
                }
                let n = linalg::fro(dst);
                if n.as_f64() > 1e-12 {
                    dst.iter_mut().for_each(|v| *v = *v / n * norm_y);
                }
                return;
            }
            linalg::gram_into(src, src, &mut ws.gram);
            // ‖Y‖² = tr(YᵀY): no extra pass over Y
            let norm_y = linalg::trace(&ws.gram).max(0.0).sqrt();
            if norm_y < 1e-12 {
                dst.copy_from(src);
                return;
            }
            let eps = T::of(o.eps);
            for j in 0..k {
                ws.gram[(j, j)] += eps;
            }
            let t = inv_sqrt_reference(&ws.gram, o);
            let w = T::of(o.w);
            ws.tw.copy_from(&t);
            ws.tw.scale_mut(w);
            for j in 0..k {
                ws.tw[(j, j)] += T::one() - w;
            }
            // Renormalise from the product itself: folding it into T_w through k×k traces
            // loses accuracy when Y is rank deficient (T then has entries ~1/√eps).
            linalg::mul_small_into(src, &ws.tw, T::one(), T::zero(), dst);
            let n = linalg::fro(dst);
            if n.as_f64() > 1e-12 {
                let s = T::of(norm_y) / n;
                dst.as_mut_slice().iter_mut().for_each(|v| *v *= s);
            }
        }
        Mode::Corrected => {
            linalg::gram_into(src, src, &mut ws.gram);
            if linalg::trace(&ws.gram) == 0.0 {
                dst.copy_from(src);
                return;
            }
            let t = inv_sqrt_corrected(&ws.gram, o.inv_method, o.eig_thresh, o.ns_iter);
            // c = ⟨Q, Y⟩ / ‖Q‖² with Q = Y·T: both from k×k products, no pass over Y.
            let ts = &t * &ws.gram;
            let tst = &ts * &t;
            let num = linalg::trace(&ts);
            let den = linalg::trace(&tst);
            let c = if den > 0.0 { num / den } else { 0.0 };
            let w = if o.retraction == Retraction::Polar {
                1.0
            } else {
                o.w
            };
            ws.tw.copy_from(&t);
            ws.tw.scale_mut(T::of(w * c));
            for j in 0..k {
                ws.tw[(j, j)] += T::of(1.0 - w);
            }
            linalg::mul_small_into(src, &ws.tw, T::one(), T::zero(), dst);
        }
    }
}

/// The retraction of the reference, `nsa_flow_retract_auto(Y, w, retraction_type, eps_rf,
/// inv_method, ns_iter, eig_thresh, diag_thresh)`, every branch:
/// `none` (or `w ≤ 0`) returns `Y`; `polar` returns `U·Vᵀ` scaled to `‖Y‖_F`; `soft_polar`
/// returns `Y·((1−w)I + w·(YᵀY+εI)^{-1/2})` renormalised to `‖Y‖_F`, with the inverse square
/// root by eig / Newton–Schulz / diag / auto, and the additive SVD blend when `k > diag_thresh`
/// and `p < k`. With `style = Mode::Corrected` the blend is scale-invariant (see
/// [`RetractOptions::style`]).
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::{retract, invariant_orthogonality_defect, RetractOptions, Retraction};
/// let y = DMatrix::from_fn(6, 3, |i, j| 1.0 + ((i * 3 + j * 7) % 5) as f64);
/// let full = retract(&y, &RetractOptions::reference(Retraction::SoftPolar, 1.0)).unwrap();
/// assert!(invariant_orthogonality_defect(&full) < 1e-12);
/// assert!((full.norm() - y.norm()).abs() < 1e-9 * y.norm());
/// let half = retract(&y, &RetractOptions::reference(Retraction::SoftPolar, 0.5)).unwrap();
/// assert!(invariant_orthogonality_defect(&half) < invariant_orthogonality_defect(&y));
/// ```
pub fn retract(y: &DMatrix<f64>, options: &RetractOptions) -> Result<DMatrix<f64>> {
    retract_in::<f64>(y, options)
}

/// [`retract`] computed in element type `T` (input and output in `f64`): what the `f32`
/// backends compute, for comparisons.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::{retract, retract_in, RetractOptions, Retraction};
/// let y = DMatrix::from_fn(6, 2, |i, j| 1.0 + ((i + j) % 3) as f64);
/// let o = RetractOptions::corrected(Retraction::SoftPolar, 0.5);
/// let (r32, r64) = (retract_in::<f32>(&y, &o).unwrap(), retract(&y, &o).unwrap());
/// assert!((r32 - &r64).norm() <= 1e-5 * r64.norm());
/// ```
pub fn retract_in<T: Element>(y: &DMatrix<f64>, options: &RetractOptions) -> Result<DMatrix<f64>> {
    validate::finite_nonempty("Y", y)?;
    options.validate()?;
    check_retract_input(y, std::mem::size_of::<T>(), options.style)?;
    let src: DMatrix<T> = cast_from_f64(y);
    let mut dst = DMatrix::zeros(y.nrows(), y.ncols());
    let mut ws = RetractWorkspace::new(y.ncols());
    retract_into(&src, &mut dst, options, &mut ws);
    let out = cast_to_f64(&dst);
    validate::finite_result(
        "retraction of this input",
        &out,
        validate::Magnitude::of(y),
        std::mem::size_of::<T>() == 4,
    )?;
    Ok(out)
}

/// What every public retraction refuses besides bad options: a problem whose k×k workspace
/// does not fit in memory, and in corrected style an all-zero Y (its polar factor is
/// undefined; reference style returns what nsa_flow_retract_auto returns there, as the
/// golden files record).
pub(crate) fn check_retract_input(y: &DMatrix<f64>, elem_bytes: usize, style: Mode) -> Result<()> {
    if style == Mode::Corrected {
        validate::nonzero(
            "Y",
            y,
            "the retraction needs a non-zero matrix (its polar factor is undefined at 0)",
        )?;
    }
    let (p, k) = y.shape();
    let pk = crate::memory::bytes_of("the retraction's p×k copies", &[p, k], 3 * 8)?;
    let kk = crate::memory::bytes_of(
        "the retraction's k×k workspace",
        &[k, k],
        8 * elem_bytes.max(8),
    )?;
    crate::memory::ensure_fits(
        &format!("the retraction of a {p}×{k} matrix"),
        pk.saturating_add(kk),
    )
}

/// The reference's `inv_sqrt_sym_adaptive(A, epsilon, method, ns_iter, eig_thresh)`:
/// an approximation of `A^{-1/2}` for a symmetric positive semi-definite `A`.
/// `eig` clamps eigenvalues below at `epsilon`; `ns` runs exactly `ns_iter` coupled
/// Newton–Schulz iterations with Frobenius scaling on `A + εI` (falling back to `eig` if the
/// result is not finite); `diag` inverts the diagonal; `auto` is `eig` for `k ≤ eig_thresh`.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::{inv_sqrt_sym, InvSqrtMethod};
/// let a = DMatrix::from_row_slice(2, 2, &[4.0, 0.0, 0.0, 9.0]);
/// let t = inv_sqrt_sym(&a, InvSqrtMethod::Eig, 1e-8, 4, 128).unwrap();
/// assert!((t[(0, 0)] - 0.5).abs() < 1e-12 && (t[(1, 1)] - 1.0 / 3.0).abs() < 1e-12);
/// ```
pub fn inv_sqrt_sym(
    a: &DMatrix<f64>,
    method: InvSqrtMethod,
    epsilon: f64,
    ns_iter: usize,
    eig_thresh: usize,
) -> Result<DMatrix<f64>> {
    validate::finite_nonempty("A", a)?;
    if a.nrows() != a.ncols() {
        return Err(NsaError::ShapeMismatch {
            what: "A (must be square)",
            expected_rows: a.ncols(),
            expected_cols: a.ncols(),
            got_rows: a.nrows(),
            got_cols: a.ncols(),
        });
    }
    if !(epsilon.is_finite() && epsilon >= 0.0) {
        return Err(NsaError::InvalidParameter {
            name: "epsilon",
            reason: format!("{epsilon} is not a finite non-negative number"),
        });
    }
    let o = RetractOptions {
        inv_method: method,
        eps: epsilon,
        ns_iter: Some(ns_iter),
        eig_thresh,
        ..Default::default()
    };
    let out = inv_sqrt_reference(a, &o);
    if out.iter().any(|v| !v.is_finite()) {
        return Err(NsaError::NonFiniteComputation {
            what: "inverse square root of this matrix",
            cause: crate::error::NumericCause::Unknown,
        });
    }
    Ok(out)
}
