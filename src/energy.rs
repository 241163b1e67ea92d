//! The orthogonality defect, the energy terms, and the non-negativity maps.

use crate::element::Element;
use crate::error::{NsaError, Result};
use crate::linalg;
use crate::params::NonNeg;
use nalgebra::DMatrix;

/// Raw reductions from which every energy of the method is assembled: one Gram product and
/// four sums, so the GPU can compute them in one pass and read back four numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EnergyTerms {
    /// `‖Y − X0‖_F²`.
    pub dist_sq: f64,
    /// `‖YᵀY‖_F²`.
    pub gram_fro_sq: f64,
    /// `Σ_j (YᵀY)_jj²`.
    pub gram_diag_sq: f64,
    /// `‖Y‖_F²`.
    pub norm_sq: f64,
}

impl EnergyTerms {
    /// The invariant orthogonality defect `D = Σ_{i≠j} S_ij² / ‖Y‖⁴` (0 when `‖Y‖² ≤ 1e-12`).
    pub fn defect(&self) -> f64 {
        if self.norm_sq <= 1e-12 {
            0.0
        } else {
            (self.gram_fro_sq - self.gram_diag_sq) / (self.norm_sq * self.norm_sq)
        }
    }

    /// `‖offdiag(YᵀY)‖_F²`.
    pub fn offdiag_sq(&self) -> f64 {
        self.gram_fro_sq - self.gram_diag_sq
    }

    /// Computes the terms of `y` against `target` in element type `T`.
    pub fn compute<T: Element>(
        y: &DMatrix<T>,
        target: &DMatrix<T>,
        gram_ws: &mut DMatrix<T>,
    ) -> Self {
        linalg::gram_into(y, y, gram_ws);
        let (gram_fro_sq, gram_diag_sq) = gram_squares(gram_ws);
        EnergyTerms {
            dist_sq: linalg::dist_sq(y.as_slice(), target.as_slice()).as_f64(),
            gram_fro_sq,
            gram_diag_sq,
            // ‖Y‖² = tr(YᵀY): saves a pass over Y
            norm_sq: linalg::trace(gram_ws),
        }
    }
}

/// The invariant orthogonality defect of the reference (`invariant_orthogonality_defect`):
/// `D(V) = Σ_{i≠j} (VᵀV)_ij² / ‖V‖_F⁴`, in [0, 1 − 1/k], 0 for orthogonal columns of any norms
/// and for `‖V‖² ≤ 1e-12`.
///
/// ```
/// use nalgebra::DMatrix;
/// let orthogonal = DMatrix::from_row_slice(3, 2, &[1.0, 0.0, 0.0, 2.0, 0.0, 0.0]);
/// assert_eq!(nsa_flow::invariant_orthogonality_defect(&orthogonal), 0.0);
/// let collinear = DMatrix::from_row_slice(2, 2, &[1.0, 1.0, 1.0, 1.0]);
/// assert!((nsa_flow::invariant_orthogonality_defect(&collinear) - 0.5).abs() < 1e-15);
/// ```
pub fn invariant_orthogonality_defect<T: Element>(v: &DMatrix<T>) -> f64 {
    let n = linalg::sum_sq(v.as_slice()).as_f64();
    if n <= 1e-12 {
        return 0.0;
    }
    if v.ncols() > v.nrows() {
        // a wide matrix: ‖VᵀV‖_F = ‖VVᵀ‖_F, so the p×p Gram serves, not the (possibly huge)
        // k×k one; the diagonal term is Σ_j ‖v_j‖⁴ either way
        let vt = v.transpose();
        let mut g = DMatrix::zeros(v.nrows(), v.nrows());
        linalg::gram_into(&vt, &vt, &mut g);
        let fro = linalg::sum_sq(g.as_slice()).as_f64();
        let mut d = T::zero();
        for j in 0..v.ncols() {
            let p = v.nrows();
            let c = linalg::sum_sq(&v.as_slice()[j * p..(j + 1) * p]);
            d += c * c;
        }
        return (fro - d.as_f64()) / (n * n);
    }
    let mut g = DMatrix::zeros(v.ncols(), v.ncols());
    linalg::gram_into(v, v, &mut g);
    let (fro, d) = gram_squares(&g);
    (fro - d) / (n * n)
}

/// `(‖S‖_F², Σ_j S_jj²)` of a Gram matrix, in its element type.
fn gram_squares<T: Element>(g: &DMatrix<T>) -> (f64, f64) {
    let mut d = T::zero();
    for j in 0..g.nrows() {
        d += g[(j, j)] * g[(j, j)];
    }
    (linalg::sum_sq(g.as_slice()).as_f64(), d.as_f64())
}

/// The reference's `defect_fast`: the same quantity as [`invariant_orthogonality_defect`].
///
/// ```
/// use nalgebra::DMatrix;
/// let v = DMatrix::from_fn(5, 3, |i, j| ((i * 3 + j) % 4) as f64);
/// assert_eq!(nsa_flow::defect_fast(&v), nsa_flow::invariant_orthogonality_defect(&v));
/// ```
pub fn defect_fast<T: Element>(v: &DMatrix<T>) -> f64 {
    invariant_orthogonality_defect(v)
}

/// Fidelity functional of [`compute_energy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FidelityType {
    /// `fid_eta · ½‖Y−X0‖²`.
    Basic,
    /// `fid_eta · ½‖Y−X0‖² / max(‖X0‖², 1e-12)`.
    #[default]
    ScaleInvariant,
    /// `fid_eta · ½‖Y−X0‖² / (½·max(‖X0‖²+‖Y‖², 1e-12))`.
    Symmetric,
}

/// Orthogonality functional of [`compute_energy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OrthType {
    /// `¼·c_orth·‖YᵀY − I‖_F²`.
    Basic,
    /// `¼·c_orth·D(Y)` with `D` the invariant defect.
    #[default]
    ScaleInvariant,
}

impl std::str::FromStr for FidelityType {
    type Err = NsaError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "basic" => Ok(Self::Basic),
            "scale_invariant" => Ok(Self::ScaleInvariant),
            "symmetric" => Ok(Self::Symmetric),
            _ => Err(NsaError::UnknownName {
                kind: "fidelity type",
                name: s.into(),
                expected: "basic, scale_invariant, symmetric".into(),
            }),
        }
    }
}

impl std::str::FromStr for OrthType {
    type Err = NsaError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "basic" => Ok(Self::Basic),
            "scale_invariant" => Ok(Self::ScaleInvariant),
            _ => Err(NsaError::UnknownName {
                kind: "orthogonality type",
                name: s.into(),
                expected: "basic, scale_invariant".into(),
            }),
        }
    }
}

impl FidelityType {
    /// The name the reference uses (`basic`, `scale_invariant`, `symmetric`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Basic => "basic",
            Self::ScaleInvariant => "scale_invariant",
            Self::Symmetric => "symmetric",
        }
    }
}

impl OrthType {
    /// The name the reference uses (`basic`, `scale_invariant`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Basic => "basic",
            Self::ScaleInvariant => "scale_invariant",
        }
    }
}

impl std::fmt::Display for FidelityType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for OrthType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three numbers [`compute_energy`] returns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Energy {
    /// Fidelity term (weighted by `fid_eta`).
    pub fidelity: f64,
    /// Orthogonality term (weighted by `¼·c_orth`, unlike the raw defect in traces).
    pub orthogonality: f64,
    /// `fidelity + orthogonality`.
    pub total: f64,
}

/// The reference's `compute_energy(Y, X0, fidelity_type, orth_type, fid_eta, c_orth)`.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::{compute_energy, FidelityType, OrthType};
/// let x0 = DMatrix::from_element(4, 2, 1.0);
/// let y = DMatrix::from_element(4, 2, 2.0);
/// let e = compute_energy(&y, &x0, FidelityType::Basic, OrthType::ScaleInvariant, 1.0, 1.0).unwrap();
/// assert_eq!(e.fidelity, 4.0); // ½·‖Y−X0‖² = ½·8
/// assert!((e.orthogonality - 0.125).abs() < 1e-15); // ¼·D, D = 1/2 for two equal columns
/// assert_eq!(e.total, e.fidelity + e.orthogonality);
/// ```
pub fn compute_energy(
    y: &DMatrix<f64>,
    x0: &DMatrix<f64>,
    fidelity_type: FidelityType,
    orth_type: OrthType,
    fid_eta: f64,
    c_orth: f64,
) -> Result<Energy> {
    crate::validate::same_shape("X0", x0, y.shape())?;
    let d2 = linalg::dist_sq(y.as_slice(), x0.as_slice());
    let half = 0.5 * d2;
    let fidelity = match fidelity_type {
        FidelityType::Basic => fid_eta * half,
        FidelityType::ScaleInvariant => fid_eta * half / linalg::sum_sq(x0.as_slice()).max(1e-12),
        FidelityType::Symmetric => {
            let den =
                0.5 * (linalg::sum_sq(x0.as_slice()) + linalg::sum_sq(y.as_slice())).max(1e-12);
            fid_eta * half / den
        }
    };
    let orthogonality = match orth_type {
        OrthType::Basic => {
            let mut g = linalg::gram(y, y);
            for j in 0..g.nrows() {
                g[(j, j)] -= 1.0;
            }
            0.25 * c_orth * linalg::sum_sq(g.as_slice())
        }
        OrthType::ScaleInvariant => 0.25 * c_orth * invariant_orthogonality_defect(y),
    };
    Ok(Energy {
        fidelity,
        orthogonality,
        total: fidelity + orthogonality,
    })
}

/// `log(1 + eˣ)` with torch's threshold (`x` itself above 20).
#[inline]
pub(crate) fn softplus<T: Element>(x: T) -> T {
    if x > T::of(20.0) {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// Applies a non-negativity map in place.
pub(crate) fn nonneg_in_place<T: Element>(m: &mut DMatrix<T>, mode: NonNeg) {
    match mode {
        NonNeg::None => {}
        // an unconditional select vectorises; a conditional store mispredicts on signed data
        NonNeg::Hard => m.as_mut_slice().iter_mut().for_each(|v| {
            let x = *v;
            *v = if x < T::zero() { T::zero() } else { x };
        }),
        NonNeg::Softplus => m.as_mut_slice().iter_mut().for_each(|v| *v = softplus(*v)),
    }
}

/// The reference's `apply_nonnegativity(Y, mode)`: `none` returns `Y`, `hard` clamps negatives
/// to zero, `softplus` maps every entry through `log(1+eˣ)` (strictly positive, never sparse).
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::{apply_nonnegativity, NonNeg};
/// let y = DMatrix::from_row_slice(1, 3, &[-1.0, 0.0, 2.0]);
/// assert_eq!(apply_nonnegativity(&y, NonNeg::Hard), DMatrix::from_row_slice(1, 3, &[0.0, 0.0, 2.0]));
/// assert!(apply_nonnegativity(&y, NonNeg::Softplus).iter().all(|&v| v > 0.0));
/// assert_eq!(apply_nonnegativity(&y, NonNeg::None), y);
/// ```
pub fn apply_nonnegativity<T: Element>(y: &DMatrix<T>, mode: NonNeg) -> DMatrix<T> {
    let mut out = y.clone();
    nonneg_in_place(&mut out, mode);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_agree_with_direct_defect() {
        let y = DMatrix::from_fn(7, 3, |i, j| ((i * 5 + j * 3) % 7) as f64 - 2.0);
        let x = DMatrix::from_fn(7, 3, |i, j| (i + j) as f64 * 0.1);
        let mut g = DMatrix::zeros(3, 3);
        let t = EnergyTerms::compute(&y, &x, &mut g);
        assert!((t.defect() - invariant_orthogonality_defect(&y)).abs() < 1e-15);
        assert!((t.dist_sq - (&y - &x).norm_squared()).abs() < 1e-12);
        assert!((t.norm_sq - y.norm_squared()).abs() < 1e-12);
    }

    #[test]
    fn defect_is_scale_and_permutation_invariant_and_bounded() {
        let y = DMatrix::from_fn(9, 4, |i, j| ((i * 7 + j * 5) % 11) as f64);
        let d = invariant_orthogonality_defect(&y);
        assert!((invariant_orthogonality_defect(&(&y * 37.0)) - d).abs() < 1e-14);
        let mut perm = y.clone();
        perm.swap_columns(0, 3);
        assert!((invariant_orthogonality_defect(&perm) - d).abs() < 1e-14);
        assert!((0.0..=1.0 - 1.0 / 4.0 + 1e-15).contains(&d));
        assert_eq!(
            invariant_orthogonality_defect(&DMatrix::<f64>::zeros(3, 2)),
            0.0
        );
    }

    #[test]
    fn softplus_matches_definition() {
        for &x in &[-30.0f64, -1.0, 0.0, 1.0, 19.9, 20.0, 25.0] {
            let want = if x > 20.0 { x } else { (1.0 + x.exp()).ln() };
            assert!((softplus(x) - want).abs() < 1e-15 * want.abs().max(1.0));
        }
    }
}
