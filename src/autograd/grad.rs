//! Vector-Jacobian products of the pieces of NSA-Flow's energy: the energy terms, the
//! non-negativity maps and the retractions, in element type `T`.
//!
//! Every backward recomputes the forward quantities it needs (a Gram matrix, an inverse square
//! root), so it costs a small constant times the forward and keeps no tape between calls.

use crate::element::Element;
use crate::energy::{Energy, EnergyTerms, FidelityType, OrthType};
use crate::error::{NsaError, Result};
use crate::linalg;
use crate::params::{InvSqrtMethod, Mode, NonNeg, Retraction};
use crate::retract::{inv_sqrt_corrected, RetractOptions};
use nalgebra::DMatrix;

/// The weights and functionals of the energy `E(Y) = fidelity + orthogonality`
/// (the reference's `compute_energy(Y, X0, fidelity_type, orth_type, fid_eta, c_orth)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EnergySpec {
    /// Fidelity functional.
    pub fidelity_type: FidelityType,
    /// Orthogonality functional.
    pub orth_type: OrthType,
    /// Fidelity weight.
    pub fid_eta: f64,
    /// Orthogonality weight (`¼·c_orth` multiplies the functional).
    pub c_orth: f64,
}

impl EnergySpec {
    /// The energy from the four raw reductions of `Y` against `X0` (plus `‖X0‖²`), exactly as
    /// [`crate::compute_energy`] assembles it.
    pub fn energy(&self, t: &EnergyTerms, x0_norm_sq: f64, k: usize) -> Energy {
        let half = 0.5 * t.dist_sq;
        let fidelity = match self.fidelity_type {
            FidelityType::Basic => self.fid_eta * half,
            FidelityType::ScaleInvariant => self.fid_eta * half / x0_norm_sq.max(1e-12),
            FidelityType::Symmetric => {
                self.fid_eta * half / (0.5 * (x0_norm_sq + t.norm_sq).max(1e-12))
            }
        };
        let orthogonality = match self.orth_type {
            // ‖S − I‖² = ‖S‖² − 2·tr(S) + k, tr(S) = ‖Y‖²
            OrthType::Basic => {
                0.25 * self.c_orth * (t.gram_fro_sq - 2.0 * t.norm_sq + k as f64).max(0.0)
            }
            OrthType::ScaleInvariant => 0.25 * self.c_orth * t.defect(),
        };
        Energy {
            fidelity,
            orthogonality,
            total: fidelity + orthogonality,
        }
    }

    /// The coefficients of the gradient `∇E(Y) = a·(Y − X0) + b·Y + orth-part`, from the same
    /// reductions: `(a, b)` for the fidelity, and the orthogonality part's form.
    pub(crate) fn gradient_coefficients(&self, t: &EnergyTerms, x0_norm_sq: f64) -> GradCoefs {
        let (a, b) = match self.fidelity_type {
            FidelityType::Basic => (self.fid_eta, 0.0),
            FidelityType::ScaleInvariant => (self.fid_eta / x0_norm_sq.max(1e-12), 0.0),
            FidelityType::Symmetric => {
                let raw = x0_norm_sq + t.norm_sq;
                if raw > 1e-12 {
                    // f = ½d²/s, s = ½(‖X0‖² + ‖Y‖²): ∇f = (Y − X0)/s − ½d²·Y/s²
                    let s = 0.5 * raw;
                    (self.fid_eta / s, -self.fid_eta * 0.5 * t.dist_sq / (s * s))
                } else {
                    (self.fid_eta / 0.5e-12, 0.0)
                }
            }
        };
        let orth = match self.orth_type {
            // ¼c·‖S − I‖²: c·Y·(S − I)
            OrthType::Basic => OrthGrad::Basic { c: self.c_orth },
            // ¼c·D: c·[(Y·S − Y·Diag(d))/n² − (D/n)·Y], nothing when n ≤ 1e-12
            OrthType::ScaleInvariant => {
                let n = t.norm_sq;
                if n > 1e-12 && self.c_orth != 0.0 {
                    OrthGrad::Defect {
                        c: self.c_orth,
                        n,
                        defect: t.defect(),
                    }
                } else {
                    OrthGrad::Zero
                }
            }
        };
        GradCoefs { a, b, orth }
    }
}

/// The gradient of [`EnergySpec`] as coefficients of a few matrix terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct GradCoefs {
    /// Coefficient of `Y − X0`.
    pub a: f64,
    /// Coefficient of `Y` (symmetric fidelity only).
    pub b: f64,
    /// The orthogonality part.
    pub orth: OrthGrad,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum OrthGrad {
    Zero,
    Basic { c: f64 },
    Defect { c: f64, n: f64, defect: f64 },
}

/// `out ← ∇E(Y)` on the host in element type `T`.
pub(crate) fn energy_grad_into<T: Element>(
    y: &DMatrix<T>,
    x0: &DMatrix<T>,
    coefs: &GradCoefs,
    gram: &mut DMatrix<T>,
    out: &mut DMatrix<T>,
) {
    let k = y.ncols();
    let (a, b) = (T::of(coefs.a), T::of(coefs.b));
    let (m, diag_shift, y_coef) = match coefs.orth {
        OrthGrad::Zero => (None, None, T::zero()),
        OrthGrad::Basic { c } => (Some(T::of(c)), Some(T::one()), T::zero()),
        OrthGrad::Defect { c, n, defect } => {
            (Some(T::of(c / (n * n))), None, T::of(-c * defect / n))
        }
    };
    // fidelity (and the −(D/n)·Y term)
    out.zip_zip_apply(y, x0, |o, yv, xv| *o = a * (yv - xv) + (b + y_coef) * yv);
    if let Some(scale) = m {
        linalg::gram_into(y, y, gram);
        for j in 0..k {
            // Y·(S − I) for the basic functional, Y·(S − Diag(d)) for the defect
            gram[(j, j)] = match diag_shift {
                Some(one) => gram[(j, j)] - one,
                None => T::zero(),
            };
        }
        linalg::mul_small_into(y, gram, scale, T::one(), out);
    }
}

/// `g ← g ∘ J(pre)` for the non-negativity map applied to `pre`: the clamp passes the gradient
/// where `pre ≥ 0` (torch's `clamp` rule), softplus multiplies by the logistic `σ(pre)` (with
/// torch's threshold: the identity above 20).
pub(crate) fn nonneg_backward_in_place<T: Element>(
    pre: &DMatrix<T>,
    mode: NonNeg,
    g: &mut DMatrix<T>,
) {
    match mode {
        NonNeg::None => {}
        NonNeg::Hard => g.zip_apply(pre, |gv, x| {
            if x < T::zero() {
                *gv = T::zero()
            }
        }),
        NonNeg::Softplus => g.zip_apply(pre, |gv, x| {
            if x <= T::of(20.0) {
                let z = x.exp();
                *gv = *gv * z / (z + T::one());
            }
        }),
    }
}

/// Rejects the retraction branches that have no backward here.
pub(crate) fn check_differentiable(p: usize, k: usize, o: &RetractOptions) -> Result<()> {
    o.validate()?;
    if o.style == Mode::Reference
        && o.retraction == Retraction::SoftPolar
        && o.w > 0.0
        && k > o.diag_thresh
        && p < k
    {
        return Err(NsaError::InvalidParameter {
            name: "retraction",
            reason: format!(
                "the reference's additive SVD branch (k = {k} > diag_thresh = {} and p < k) has no backward here",
                o.diag_thresh
            ),
        });
    }
    Ok(())
}

/// `gT ↦ gA` for `T = f(A)`, the inverse square root of the symmetric `A` as computed by the
/// forward: the Daleckii–Krein formula on an eigendecomposition (exact for the eig path, and
/// for a converged Newton–Schulz), the derivative of the unrolled iteration for the
/// reference's fixed-step Newton–Schulz, the diagonal rule for `diag`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InvSqrtBackward {
    /// Daleckii–Krein with eigenvalues clamped below at the floor (clamped ones carry no
    /// gradient).
    Eig,
    /// The reference's `_inv_sqrt_newton_schulz(A, eps, iters)`, differentiated step by step.
    NewtonSchulz { iters: usize },
    /// `diag(max(A_jj, floor)^{-1/2})`.
    Diag,
}

fn sym<T: Element>(m: &DMatrix<T>) -> DMatrix<T> {
    (m + m.transpose()) * T::of(0.5)
}

/// Daleckii–Krein: `gA = V·(F ∘ (Vᵀ·sym(gT)·V))·Vᵀ`, `F_ij = (f(λ_i) − f(λ_j))/(λ_i − λ_j)`,
/// `f(λ) = max(λ, floor)^{-1/2}`; for `f = λ^{-1/2}` the divided difference is
/// `−1/(√λ_i·√λ_j·(√λ_i + √λ_j))`, which has no cancellation for close eigenvalues.
fn inv_sqrt_backward_eig<T: Element>(a: &DMatrix<T>, floor: f64, g_t: &DMatrix<T>) -> DMatrix<T> {
    let k = a.nrows();
    let eig =
        match nalgebra::SymmetricEigen::try_new(a.clone(), T::default_epsilon(), 1000 * k.max(1)) {
            Some(e) => e,
            None => return DMatrix::from_element(k, k, T::of(f64::NAN)),
        };
    let v = &eig.eigenvectors;
    let lam: Vec<f64> = eig.eigenvalues.iter().map(|l| l.as_f64()).collect();
    let clamped: Vec<bool> = lam.iter().map(|&l| l <= floor).collect();
    let f = |i: usize| lam[i].max(floor).powf(-0.5);
    let mut inner = v.transpose() * sym(g_t) * v;
    for j in 0..k {
        for i in 0..k {
            let fij = match (clamped[i], clamped[j]) {
                (false, false) => {
                    let (si, sj) = (lam[i].sqrt(), lam[j].sqrt());
                    -1.0 / (si * sj * (si + sj))
                }
                (true, true) => 0.0,
                _ => {
                    let d = lam[i] - lam[j];
                    if d == 0.0 {
                        0.0
                    } else {
                        (f(i) - f(j)) / d
                    }
                }
            };
            inner[(i, j)] *= T::of(fij);
        }
    }
    v * inner * v.transpose()
}

/// Backward of the reference's fixed-step coupled Newton–Schulz
/// (`A' = A + εI`, `c = ‖A'‖_F`, `Y₀ = A'/c`, `Z₀ = I`, `T_j = ½(3I − Z_j·Y_j)`,
/// `Y ← Y·T_j`, `Z ← T_j·Z`, result `Z/√c`), through every step and the scaling.
fn inv_sqrt_backward_ns<T: Element>(
    a: &DMatrix<T>,
    eps: f64,
    iters: usize,
    g_out: &DMatrix<T>,
) -> DMatrix<T> {
    let k = a.nrows();
    let eye = DMatrix::<T>::identity(k, k);
    let ap = a + &eye * T::of(eps);
    let c = linalg::fro(&ap);
    if c == T::zero() {
        return DMatrix::zeros(k, k);
    }
    let half = T::of(0.5);
    let three = T::of(3.0);
    let mut ys = vec![&ap / c];
    let mut zs = vec![eye.clone()];
    let mut ts = Vec::with_capacity(iters);
    for j in 0..iters {
        let t = (&eye * three - &zs[j] * &ys[j]) * half;
        ys.push(&ys[j] * &t);
        zs.push(&t * &zs[j]);
        ts.push(t);
    }
    let sc = c.sqrt();
    // out = Z_N / √c
    let mut g_z = g_out / sc;
    let g_c_direct = -half * (g_out.dot(&zs[iters])) / (c * sc);
    let mut g_y = DMatrix::<T>::zeros(k, k);
    for j in (0..iters).rev() {
        // Y_{j+1} = Y_j·T_j, Z_{j+1} = T_j·Z_j
        let mut g_t = ys[j].transpose() * &g_y + &g_z * zs[j].transpose();
        let g_yj = &g_y * ts[j].transpose();
        let g_zj = ts[j].transpose() * &g_z;
        // T_j = ½(3I − Z_j·Y_j)
        g_t *= -half;
        g_z = g_zj + &g_t * ys[j].transpose();
        g_y = g_yj + zs[j].transpose() * &g_t;
    }
    // Y₀ = A'/c, c = ‖A'‖_F
    let g_c = g_c_direct - g_y.dot(&ap) / (c * c);
    &g_y / c + &ap * (g_c / c)
}

fn inv_sqrt_backward<T: Element>(
    a: &DMatrix<T>,
    how: InvSqrtBackward,
    floor: f64,
    g_t: &DMatrix<T>,
) -> DMatrix<T> {
    match how {
        InvSqrtBackward::Eig => inv_sqrt_backward_eig(a, floor, g_t),
        InvSqrtBackward::NewtonSchulz { iters } => inv_sqrt_backward_ns(a, floor, iters, g_t),
        InvSqrtBackward::Diag => {
            let k = a.nrows();
            DMatrix::from_fn(k, k, |i, j| {
                let x = a[(i, i)].as_f64();
                if i == j && x > floor {
                    g_t[(i, i)] * T::of(-0.5 * x.powf(-1.5))
                } else {
                    T::zero()
                }
            })
        }
    }
}

/// `(T, backward rule, floor)` of the reference's inverse square root of `A = YᵀY + εI`,
/// mirroring [`crate::retract`]'s choice (including its fallback to eig when Newton–Schulz
/// does not give a finite result).
fn reference_inv_sqrt<T: Element>(
    a: &DMatrix<T>,
    o: &RetractOptions,
) -> (DMatrix<T>, InvSqrtBackward, f64) {
    let k = a.nrows();
    let method = match o.inv_method {
        InvSqrtMethod::Auto if k <= o.eig_thresh => InvSqrtMethod::Eig,
        InvSqrtMethod::Auto => InvSqrtMethod::NewtonSchulz,
        m => m,
    };
    let eig_floor = (16.0 * T::EPS * linalg::trace(a) / k.max(1) as f64).max(o.eps);
    match method {
        InvSqrtMethod::NewtonSchulz => {
            let iters = o.ns_iter.unwrap_or(4);
            match linalg::inv_sqrt_ns_reference(a, T::of(o.eps), iters) {
                Some(t) => (t, InvSqrtBackward::NewtonSchulz { iters }, o.eps),
                None => (
                    linalg::inv_sqrt_eig(a, T::of(o.eps)),
                    InvSqrtBackward::Eig,
                    o.eps,
                ),
            }
        }
        InvSqrtMethod::Diag => (
            linalg::inv_sqrt_diag(a, T::of(o.eps)),
            InvSqrtBackward::Diag,
            o.eps,
        ),
        _ => (
            linalg::inv_sqrt_eig(a, T::of(eig_floor)),
            InvSqrtBackward::Eig,
            eig_floor,
        ),
    }
}

/// `out ← gY` of the reference-style retraction `out = M·‖Y‖/‖M‖`, `M = Y·T_w` (polar:
/// `T_w = T` the exact `(YᵀY)^{-1/2}`), given `gout`.
fn reference_backward<T: Element>(
    y: &DMatrix<T>,
    o: &RetractOptions,
    g: &DMatrix<T>,
    out: &mut DMatrix<T>,
) {
    let (p, k) = y.shape();
    if o.retraction == Retraction::Polar && p < k {
        // polar(Y) = polar(Yᵀ)ᵀ, and both norms are transpose-invariant
        let mut t_out = DMatrix::zeros(k, p);
        reference_backward(&y.transpose(), o, &g.transpose(), &mut t_out);
        out.copy_from(&t_out.transpose());
        return;
    }
    let gram = linalg::gram(y, y);
    // ‖Y‖ = √tr(YᵀY): no pass over Y
    let n = linalg::trace(&gram).max(0.0).sqrt();
    if n < 1e-12 {
        out.copy_from(g);
        return;
    }
    let (a, t, how, floor, w) = if o.retraction == Retraction::Polar {
        // U·Vᵀ = Y·(YᵀY)^{-1/2} for full column rank
        let floor = 16.0 * T::EPS * linalg::trace(&gram) / k as f64;
        let t = linalg::inv_sqrt_eig(&gram, T::of(floor));
        (gram, t, InvSqrtBackward::Eig, floor, 1.0)
    } else {
        let mut a = gram;
        for j in 0..k {
            a[(j, j)] += T::of(o.eps);
        }
        let (t, how, floor) = reference_inv_sqrt(&a, o);
        (a, t, how, floor, o.w)
    };
    let mut tw = &t * T::of(w);
    for j in 0..k {
        tw[(j, j)] += T::of(1.0 - w);
    }
    // gM overwrites M
    let mut g_m = linalg::mul_small(y, &tw);
    let mn = linalg::fro(&g_m).as_f64();
    let c_y = if mn > 1e-12 {
        let gm_dot = linalg::dot(g.as_slice(), g_m.as_slice()).as_f64();
        let (cg, cm) = (T::of(n / mn), T::of(-n * gm_dot / (mn * mn * mn)));
        g_m.zip_apply(g, |mv, gv| *mv = cg * gv + cm * *mv);
        gm_dot / (mn * n)
    } else {
        g_m.copy_from(g);
        0.0
    };
    // M = Y·T_w: gY = gM·T_w + Y·(gA + gAᵀ + c_Y·I), the last term from ‖Y‖
    linalg::mul_small_into(&g_m, &tw, T::one(), T::zero(), out);
    let g_t = linalg::gram(y, &g_m) * T::of(w);
    let g_a = inv_sqrt_backward(&a, how, floor, &g_t);
    let mut g_s = &g_a + g_a.transpose();
    for j in 0..k {
        g_s[(j, j)] += T::of(c_y);
    }
    linalg::mul_small_into(y, &g_s, T::one(), T::one(), out);
}

/// `out ← gY` of the corrected retraction `out = Y·((1−w)I + w·c·T)`, `T = (S + δI)^{-1/2}`,
/// `S = YᵀY`, `δ = 16·ε·tr(S)/k`, `c = tr(T·S)/tr(T·S·T)`.
fn corrected_backward<T: Element>(
    y: &DMatrix<T>,
    o: &RetractOptions,
    g: &DMatrix<T>,
    out: &mut DMatrix<T>,
) {
    let k = y.ncols();
    let s = linalg::gram(y, y);
    let tr = linalg::trace(&s);
    if tr == 0.0 {
        out.copy_from(g);
        return;
    }
    let delta = 16.0 * T::EPS * tr / k as f64;
    let t = inv_sqrt_corrected(&s, o.inv_method, o.eig_thresh, o.ns_iter);
    let method = match o.inv_method {
        InvSqrtMethod::Diag => InvSqrtBackward::Diag,
        // a converged Newton–Schulz is the function itself: its derivative is Daleckii–Krein's
        _ => InvSqrtBackward::Eig,
    };
    let ts = &t * &s;
    let a_tr = linalg::trace(&ts);
    let b_tr = linalg::trace(&(&ts * &t));
    let c = if b_tr > 0.0 { a_tr / b_tr } else { 0.0 };
    let w = if o.retraction == Retraction::Polar {
        1.0
    } else {
        o.w
    };
    let mut tw = &t * T::of(w * c);
    for j in 0..k {
        tw[(j, j)] += T::of(1.0 - w);
    }
    linalg::mul_small_into(g, &tw, T::one(), T::zero(), out);
    let g_tw = linalg::gram(y, g);
    let g_c = w * linalg::dot(g_tw.as_slice(), t.as_slice()).as_f64();
    let mut g_t = &g_tw * T::of(w * c);
    let mut g_s = DMatrix::<T>::zeros(k, k);
    if b_tr > 0.0 {
        let ga = g_c / b_tr;
        let gb = -g_c * a_tr / (b_tr * b_tr);
        let st = &s * &t;
        g_t += &s * T::of(ga) + (&ts + &st) * T::of(gb);
        g_s += &t * T::of(ga) + (&t * &t) * T::of(gb);
    }
    let mut a = s.clone();
    for j in 0..k {
        a[(j, j)] += T::of(delta);
    }
    let floor = delta.max(f64::MIN_POSITIVE);
    let g_a = inv_sqrt_backward(&a, method, floor, &g_t);
    g_s += &g_a;
    // δ = 16·ε·tr(S)/k
    let shift = T::of(16.0 * T::EPS / k as f64) * g_a.trace();
    for j in 0..k {
        g_s[(j, j)] += shift;
    }
    let g_s2 = &g_s + g_s.transpose();
    linalg::mul_small_into(y, &g_s2, T::one(), T::one(), out);
}

/// `out ← J_R(Y)ᵀ·g` for the retraction `R` described by `o` (identity for `none` and `w ≤ 0`).
pub(crate) fn retract_backward_into<T: Element>(
    y: &DMatrix<T>,
    o: &RetractOptions,
    g: &DMatrix<T>,
    out: &mut DMatrix<T>,
) {
    if o.retraction == Retraction::None || o.w <= 0.0 {
        out.copy_from(g);
        return;
    }
    match o.style {
        Mode::Reference => reference_backward(y, o, g, out),
        Mode::Corrected => corrected_backward(y, o, g, out),
    }
}

/// [`retract_backward_into`] into a new matrix.
pub(crate) fn retract_backward_in<T: Element>(
    y: &DMatrix<T>,
    o: &RetractOptions,
    g: &DMatrix<T>,
) -> DMatrix<T> {
    let mut out = DMatrix::zeros(y.nrows(), y.ncols());
    retract_backward_into(y, o, g, &mut out);
    out
}

/// Hessian-vector product of the orthogonality functional: the derivative of its gradient at
/// `y` in the direction `v` (the Hessian is symmetric, so this is also the vector-Jacobian
/// product of the gradient map). With `simplified = false` the functional is the invariant
/// defect `D(Y) = ‖O‖²/n²` (`S = YᵀY`, `O = S − Diag(S)`, `n = ‖Y‖²`), whose gradient
/// `∇D = (4/n²)·Y·O − (4D/n)·Y` has the derivative
///
/// `d∇D = 4(V·O + Y·dO)/n² − 8·dn·Y·O/n³ − 4(dD·Y + D·V)/n + 4·D·dn·Y/n²`
///
/// with `dO = offdiag(YᵀV + VᵀY)`, `dn = 2⟨Y, V⟩`, `dD = ⟨∇D, V⟩`; with `simplified = true` it
/// is `N(Y) = ‖O‖²`, `∇N = 4·Y·O`, `d∇N = 4(V·O + Y·dO)`. Zero where the gradient is zero by
/// convention (`n ≤ 1e-12`, as the solver's gradient).
pub(crate) fn orth_hvp(y: &DMatrix<f64>, v: &DMatrix<f64>, simplified: bool) -> DMatrix<f64> {
    let k = y.ncols();
    let n = y.norm_squared();
    if n <= 1e-12 {
        return DMatrix::zeros(y.nrows(), k);
    }
    let mut o = y.transpose() * y;
    let mut d_o = y.transpose() * v;
    d_o += d_o.transpose();
    for j in 0..k {
        o[(j, j)] = 0.0;
        d_o[(j, j)] = 0.0;
    }
    let yo = y * &o;
    let first = (v * &o + y * &d_o) * 4.0;
    if simplified {
        return first;
    }
    let (n2, n3) = (n * n, n * n * n);
    let defect = o.norm_squared() / n2;
    let dn = 2.0 * y.dot(v);
    let grad = &yo * (4.0 / n2) - y * (4.0 * defect / n);
    let d_defect = grad.dot(v);
    first / n2 - &yo * (8.0 * dn / n3) - (y * d_defect + v * defect) * (4.0 / n)
        + y * (4.0 * defect * dn / n2)
}
