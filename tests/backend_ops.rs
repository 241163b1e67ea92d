//! Every operation of the [`Backend`] trait, for `CpuBackend<f64>` and `CpuBackend<f32>`,
//! checked against a naive oracle written here with plain nalgebra arithmetic (`aᵀ·b`,
//! explicit loops, `SymmetricEigen`, `SVD`), on awkward shapes: `k ∈ {1, 3, 17}` and
//! `p ∈ {1, 63, 65, 1031}` (ragged against every SIMD width and block size).
//!
//! # Tolerances
//!
//! No tolerance here is a free constant. Each oracle returns, next to its value, a first-order
//! rounding-error bound derived from the operation's structure, with the standard model
//! `fl(a ∘ b) = (a ∘ b)(1 + δ)`, `|δ| ≤ u`, and `γ_n = n·u/(1 − n·u)`:
//!
//! * a sum of `n` terms, in any order, is off by at most `γ_n·Σ|terms|`;
//! * so a Gram product `S = YᵀY` (dots of length `p`) is off elementwise by
//!   `γ_p·(|Y|ᵀ|Y|)`, and a tall product `Y·B` (`B` k×k) by `γ_k·(|Y|·|B|)`;
//! * an error already in an input propagates linearly (`|Y|·E_B`, `|Y|ᵀ·E_G`, …);
//! * the k×k inverse square root `T = A^{-1/2}` of the retractions and of the polar
//!   projection is perturbed, for a perturbation `E` of `A` (the Gram error `γ_p·tr(S)` plus a
//!   backward-stable eigensolver's `4·k·u·‖A‖`), by at most `½·λ_min(A)^{-3/2}·‖E‖_F` (the
//!   largest divided difference of `x^{-1/2}` on the spectrum);
//! * a backward-stable SVD has backward error `(p+k)·u·‖Y‖_F`, and the polar factor moves by at
//!   most `2/σ_min` times the backward error.
//!
//! The backend rounds its inputs to its precision; the oracle is evaluated, in `f64`, on those
//! rounded inputs (so for f32 we build inputs in f64, round them once, run the f32 backend and
//! compare with the f64 oracle), and both backend and oracle round along the way: every bound
//! is therefore evaluated with `u = u_T + u_f64` (`u_f64 = 2⁻⁵³`, `u_f32 = 2⁻²⁴`). The comparison
//! then allows `C = 4` times the bound: the slack for the constants the first-order model
//! drops (libm's ~1 ulp `exp`/`ln`, the eigensolver's modest polynomial), and nothing more.
//! Exact operations (upload/download in f64, zeros, copy, the hard clamp, `AllFinite`) are
//! compared bit for bit.
//!
//! The bounds are worst-case, hence loose in f32 for long reductions, but they are tight
//! enough to fail: `tolerances_reject_wrong_answers` feeds the comparisons a deliberately wrong
//! variant of each operation (the wrong projection, the wrong retraction style, a dropped
//! summand, the f32 answer against the f64 bound, …) and asserts that each one is rejected.
//!
//! Shapes with `k > p` are tested wherever the operation is well conditioned there: everything
//! except the eigendecomposition-based retractions and the polar gradient projection, where
//! `YᵀY` is singular, `(YᵀY + εI)^{-1/2}` has norm `ε^{-1/2}` on its null space, and the
//! answer's rounding error is of order `u·ε^{-1/2}` (its "value" depends on the regularisation
//! and on rounding, so there is no precision-independent oracle to compare with).

use nalgebra::{DMatrix, SymmetricEigen, SVD};
use nsa_flow::backend::cpu::CpuBackend;
use nsa_flow::backend::{Backend, GradientRule, Projection, Reduction, UpdateRule};
use nsa_flow::rng::Rng;
use nsa_flow::{Element, InvSqrtMethod, Mode, NonNeg, RetractOptions, Retraction};

type M = DMatrix<f64>;
type Check = Result<(), String>;

/// Slack on top of every derived bound (see the module docs).
const C: f64 = 4.0;
/// Unit roundoff of f64.
const U64: f64 = 1.0 / 9_007_199_254_740_992.0; // 2^-53
const KS: [usize; 3] = [1, 3, 17];
const PS: [usize; 4] = [1, 63, 65, 1031];

/// What the tests need to know about a backend precision, stated independently of the crate.
trait Prec: Element {
    /// Unit roundoff `u` (half the machine epsilon).
    const U: f64;
    /// Smallest positive normal and largest finite value.
    const MIN_NORMAL: f64;
    const MAX: f64;
    /// Round an f64 to this precision (to nearest) and back.
    fn rnd(v: f64) -> f64;
}

impl Prec for f64 {
    const U: f64 = U64;
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    const MAX: f64 = f64::MAX;
    fn rnd(v: f64) -> f64 {
        v
    }
}

impl Prec for f32 {
    const U: f64 = 1.0 / 16_777_216.0; // 2^-24
    const MIN_NORMAL: f64 = f32::MIN_POSITIVE as f64;
    const MAX: f64 = f32::MAX as f64;
    fn rnd(v: f64) -> f64 {
        v as f32 as f64
    }
}

/// The `u` every bound is evaluated with: the backend's rounding plus the f64 oracle's.
fn ue<T: Prec>() -> f64 {
    T::U + U64
}

fn gamma(n: usize, u: f64) -> f64 {
    let nu = n as f64 * u;
    assert!(nu < 0.5, "γ_{n} undefined for u = {u:e}");
    nu / (1.0 - nu)
}

// ---------------------------------------------------------------------------------------------
// data, shapes, comparisons

fn gaussian(p: usize, k: usize, seed: u64) -> M {
    let mut rng = Rng::new(seed);
    M::from_fn(p, k, |_, _| rng.normal())
}

fn seed(p: usize, k: usize, tag: u64) -> u64 {
    (p as u64) * 1_000_003 + (k as u64) * 1_009 + tag * 7_919
}

fn all_shapes() -> Vec<(usize, usize)> {
    PS.iter()
        .flat_map(|&p| KS.iter().map(move |&k| (p, k)))
        .collect()
}

/// Shapes with `p ≥ k` (full column rank for Gaussian data).
fn tall_shapes() -> Vec<(usize, usize)> {
    all_shapes().into_iter().filter(|&(p, k)| p >= k).collect()
}

/// Uploads `x`; returns the backend matrix and the f64 copy of exactly what it holds.
fn up<T: Prec>(be: &mut CpuBackend<T>, x: &M) -> (DMatrix<T>, M) {
    (be.upload(x).unwrap(), x.map(T::rnd))
}

fn down<T: Prec>(be: &mut CpuBackend<T>, m: &DMatrix<T>) -> M {
    be.download(m).unwrap()
}

/// A destination full of NaN: every operation must overwrite all of it.
fn nan_buf<T: Prec>(be: &mut CpuBackend<T>, p: usize, k: usize) -> DMatrix<T> {
    be.upload(&M::from_element(p, k, f64::NAN)).unwrap()
}

fn ok(r: Check) {
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// `|got − want| ≤ C·bound` entry by entry.
fn cmp_elem(what: &str, got: &M, want: &M, bound: &M) -> Check {
    if got.shape() != want.shape() {
        return Err(format!(
            "{what}: shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    for i in 0..got.len() {
        let d = (got[i] - want[i]).abs();
        let tol = C * bound[i];
        if d.is_nan() || tol.is_nan() || d > tol {
            let (r, c) = (i % got.nrows(), i / got.nrows());
            return Err(format!(
                "{what}: entry ({r},{c}) got {:e}, expected {:e}, |diff| {:.3e} > tol {:.3e}",
                got[i], want[i], d, tol
            ));
        }
    }
    Ok(())
}

/// `‖got − want‖_F ≤ C·bound`.
fn cmp_norm(what: &str, got: &M, want: &M, bound: f64) -> Check {
    if got.shape() != want.shape() {
        return Err(format!(
            "{what}: shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let d = (got - want).norm();
    if d <= C * bound {
        Ok(())
    } else {
        Err(format!(
            "{what}: ‖diff‖_F {:.3e} > tol {:.3e} (‖expected‖_F {:.3e})",
            d,
            C * bound,
            want.norm()
        ))
    }
}

fn cmp_scalar(what: &str, got: f64, want: f64, bound: f64) -> Check {
    let d = (got - want).abs();
    if d <= C * bound {
        Ok(())
    } else {
        Err(format!(
            "{what}: got {got:e}, expected {want:e}, |diff| {d:.3e} > tol {:.3e}",
            C * bound
        ))
    }
}

fn same_bits(what: &str, a: &M, b: &M) {
    assert_eq!(a.shape(), b.shape(), "{what}");
    for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
        assert!(
            x.to_bits() == y.to_bits(),
            "{what}: entry {i}: {x:e} vs {y:e}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// small dense helpers of the oracles

fn offdiag(m: &M) -> M {
    let mut o = m.clone();
    o.fill_diagonal(0.0);
    o
}

fn sym(m: &M) -> M {
    (m + m.transpose()) * 0.5
}

fn eigenvalues(s: &M) -> Vec<f64> {
    SymmetricEigen::new(s.clone())
        .eigenvalues
        .iter()
        .copied()
        .collect()
}

fn lam_min(s: &M) -> f64 {
    eigenvalues(s)
        .into_iter()
        .fold(f64::INFINITY, f64::min)
        .max(0.0)
}

/// `A^{-1/2}` with eigenvalues clamped below at `floor`.
fn inv_sqrt_eig(a: &M, floor: f64) -> M {
    let e = SymmetricEigen::new(a.clone());
    let mut v = e.eigenvectors.clone();
    for j in 0..a.nrows() {
        let lam = e.eigenvalues[j].max(floor);
        v.column_mut(j).scale_mut(1.0 / lam.sqrt());
    }
    v * e.eigenvectors.transpose()
}

/// The polar factor `U·Vᵀ` by a thin SVD.
fn polar_svd(y: &M) -> M {
    let svd = SVD::new(y.clone(), true, true);
    svd.u.unwrap() * svd.v_t.unwrap()
}

/// The bound on the error of `T = (S + shift·I)^{-1/2}` computed from `S = YᵀY` in the
/// presence of rounding (see the module docs): `½·λ_min^{-3/2}·(γ_p + 4ku)·tr(S)` for the
/// perturbation of `S` and the eigensolver, plus `γ_k·‖T‖_F` for assembling `V·Λ^{-1/2}·Vᵀ`.
fn inv_sqrt_err(p: usize, k: usize, lmin_shifted: f64, tr: f64, t_fro: f64, u: f64) -> f64 {
    0.5 * lmin_shifted.powf(-1.5) * (gamma(p, u) + 4.0 * k as f64 * u) * tr + gamma(k, u) * t_fro
}

// ---------------------------------------------------------------------------------------------
// oracles: each returns the exact-arithmetic answer (computed in f64) and its error bound

fn lincomb_oracle(a: f64, x: &M, b: f64, y: &M, u: f64) -> (M, M) {
    // fl(fl(a'x) + fl(b'y)) with a', b' the scalars rounded to the backend precision:
    // three roundings per term.
    let want = x * a + y * b;
    let bound = (x.abs() * a.abs() + y.abs() * b.abs()) * gamma(3, u);
    (want, bound)
}

fn lerp_oracle(base: &M, toward: &M, alpha: f64, u: f64) -> (M, M) {
    // b + α'·(t − b): the difference (u), the rounded α (u), the product (u), the sum (u).
    let want = base + (toward - base) * alpha;
    let bound = (base.abs() + (toward.abs() + base.abs()) * alpha.abs()) * gamma(4, u);
    (want, bound)
}

fn softplus(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        (1.0 + x.exp()).ln()
    }
}

fn nonneg_oracle(x: &M, mode: NonNeg, u: f64) -> (M, M) {
    match mode {
        NonNeg::None => (x.clone(), M::zeros(x.nrows(), x.ncols())),
        NonNeg::Hard => (
            x.map(|v| if v < 0.0 { 0.0 } else { v }),
            M::zeros(x.nrows(), x.ncols()),
        ),
        NonNeg::Softplus => {
            // exp (≈1 ulp) and ln(1+·) (≈1 ulp) in the backend; in the oracle the rounding of
            // 1 + eˣ costs u·(1+eˣ)·d ln/dz = u absolutely. The derivative of softplus is ≤ 1,
            // so the error is ≤ 4u·(1 + |softplus(x)|) for both together.
            let want = x.map(softplus);
            let bound = want.map(|r| gamma(4, u) * (1.0 + r.abs()));
            (want, bound)
        }
    }
}

fn sgd_oracle(param: &M, grad: &M, lr: f64, u: f64) -> (M, M) {
    let want = param - grad * lr;
    let bound = (param.abs() + grad.abs() * lr.abs()) * gamma(3, u);
    (want, bound)
}

#[derive(Clone, Copy, Debug)]
struct SgdpCfg {
    dampening: f64,
    eps: f64,
    weight_decay: f64,
    delta: f64,
    wd_ratio: f64,
}

impl SgdpCfg {
    fn rule(&self) -> UpdateRule {
        UpdateRule::Sgdp {
            momentum: 0.0,
            dampening: self.dampening,
            eps: self.eps,
            weight_decay: self.weight_decay,
            delta: self.delta,
            wd_ratio: self.wd_ratio,
            nesterov: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fired {
    Channel,
    Layer,
    No,
}

/// Which SGDP views fire for this input, per torch_optimizer 0.3.0 (`SGDP._cosine_similarity`
/// and `SGDP._projection` of its source): the cosine of each view is
/// `|Σ g·p| / (‖g‖ + eps) / (‖p‖ + eps)`; the channel view (rows) fires when the largest row
/// cosine is below `δ/√k`, else the layer view (whole matrix) when its cosine is below
/// `δ/√(pk)`. (Not `max(‖·‖, eps)`, as in `F.cosine_similarity`: the two differ only when a
/// norm is comparable to `eps`, which the inputs of `sgdp_step_matches_torch_optimizer_oracle`
/// avoid; `sgdp_cosine_adds_eps_like_torch_optimizer` probes the difference.)
///
/// A cosine is a sum of `L` products whose magnitudes add up to at most 1, so it is computed
/// within `γ_{L+4}` (the `+4`: two norms, two divisions). When a cosine lies within `C` times
/// that of its threshold, both outcomes are correct answers; the decisions returned are then
/// every admissible branch (one, in the unambiguous case).
fn sgdp_decisions(param: &M, grad: &M, cfg: &SgdpCfg, u: f64) -> Vec<Fired> {
    let (p, k) = param.shape();
    let clamp = |v: f64| v + cfg.eps;
    // Some(true) fires, Some(false) does not, None: too close to call
    let decide = |cos: f64, thr: f64, len: usize| {
        let margin = C * gamma(len + 4, u);
        if (cos - thr).abs() <= margin {
            None
        } else {
            Some(cos < thr)
        }
    };
    let mut max_cos: f64 = 0.0;
    for i in 0..p {
        let (g, x) = (grad.row(i), param.row(i));
        let (gn, pn) = (clamp(g.norm()), clamp(x.norm()));
        let c: f64 = (0..k).map(|j| g[j] * x[j]).sum::<f64>().abs() / gn / pn;
        max_cos = max_cos.max(c);
    }
    let layer = || {
        let (gn, pn) = (clamp(grad.norm()), clamp(param.norm()));
        let c: f64 = grad
            .iter()
            .zip(param.iter())
            .map(|(g, x)| g * x)
            .sum::<f64>()
            / gn
            / pn;
        match decide(c.abs(), cfg.delta / ((p * k) as f64).sqrt(), p * k) {
            Some(true) => vec![Fired::Layer],
            Some(false) => vec![Fired::No],
            None => vec![Fired::Layer, Fired::No],
        }
    };
    match decide(max_cos, cfg.delta / (k as f64).sqrt(), k) {
        Some(true) => vec![Fired::Channel],
        Some(false) => layer(),
        None => {
            let mut v = vec![Fired::Channel];
            v.extend(layer());
            v
        }
    }
}

/// torch_optimizer 0.3.0 `SGDP.step` for one parameter with momentum 0 (the buffer is
/// `(1 − dampening)·g`), written from its source, given which view fired (see
/// [`sgdp_decisions`]): a firing view removes from the direction its component along
/// `p_n = p/(‖p‖ + eps)` and scales the weight decay by `wd_ratio`; then
/// `p ← p·(1 − lr·wd·ratio/(1 − momentum)) − lr·d`. Returns the answer and its elementwise
/// bound.
fn sgdp_oracle(param: &M, grad: &M, lr: f64, cfg: &SgdpCfg, u: f64, fired: Fired) -> (M, M) {
    let (p, k) = param.shape();
    let eps = cfg.eps;
    let damp = 1.0 - cfg.dampening;
    let mut d = grad * damp;
    // d = (1−dampening)·g: two roundings (the scalar, the product).
    let mut e_d = d.abs() * gamma(2, u);
    let mut wd = 1.0;
    // Radial removal over a group of L entries: p_n is off by γ_{L+2}·|p_n| (norm, sqrt,
    // eps, division), s = Σ p_n·d by γ_{2L+2}·Σ|p_n||d| (plus e_d), p_n·s by
    // |p_n|·γ_{3L+5}·Σ|p_n||d|.
    let remove = |idx: &[(usize, usize)], d: &mut M, e_d: &mut M| {
        let len = idx.len();
        let pnorm = idx
            .iter()
            .map(|&(i, j)| param[(i, j)].powi(2))
            .sum::<f64>()
            .sqrt()
            + eps;
        let s: f64 = idx
            .iter()
            .map(|&(i, j)| param[(i, j)] / pnorm * d[(i, j)])
            .sum();
        let sa: f64 = idx
            .iter()
            .map(|&(i, j)| (param[(i, j)] / pnorm * d[(i, j)]).abs())
            .sum();
        let se: f64 = idx
            .iter()
            .map(|&(i, j)| (param[(i, j)] / pnorm).abs() * e_d[(i, j)])
            .sum();
        for &(i, j) in idx {
            let pn = param[(i, j)] / pnorm;
            d[(i, j)] -= pn * s;
            e_d[(i, j)] += pn.abs() * (gamma(3 * len + 5, u) * sa + se) + u * d[(i, j)].abs();
        }
    };
    match fired {
        Fired::Channel => {
            for i in 0..p {
                let idx: Vec<_> = (0..k).map(|j| (i, j)).collect();
                remove(&idx, &mut d, &mut e_d);
            }
            wd = cfg.wd_ratio;
        }
        Fired::Layer => {
            let idx: Vec<_> = (0..k).flat_map(|j| (0..p).map(move |i| (i, j))).collect();
            remove(&idx, &mut d, &mut e_d);
            wd = cfg.wd_ratio;
        }
        Fired::No => {}
    }
    let decay = if cfg.weight_decay != 0.0 {
        1.0 - lr * cfg.weight_decay * wd / (1.0 - 0.0)
    } else {
        1.0
    };
    let want = param * decay - &d * lr;
    // p·decay' − lr'·d: decay and lr rounded, two products, one difference.
    let bound = &e_d * lr.abs() + (param.abs() * decay.abs() + d.abs() * lr.abs()) * gamma(4, u);
    (want, bound)
}

/// `P_Y(G) = G − Y·sym(YᵀG)` and its elementwise bound, given the bound `e_g` already on `G`.
fn project_y(y: &M, g: &M, e_g: &M, u: f64) -> (M, M) {
    let (p, k) = y.shape();
    let ya = y.abs();
    let a = y.transpose() * g;
    let b = sym(&a);
    let yb = y * &b;
    let pg = g - &yb;
    let e_a = ya.transpose() * g.abs() * gamma(p, u) + ya.transpose() * e_g;
    let e_b = sym(&e_a) + b.abs() * u;
    let e_yb = &ya * b.abs() * gamma(k + 1, u) + &ya * e_b;
    let e_p = e_g + e_yb + (g.abs() + yb.abs()) * u;
    (pg, e_p)
}

enum Bound {
    Elem(M),
    Norm(f64),
}

/// The gradient of [`GradientRule`]'s documentation, with its rounding-error bound.
/// `eps_t` is the machine epsilon of the backend precision (for `PolarFull`'s regularisation).
fn gradient_oracle(y: &M, x0: &M, rule: &GradientRule, u: f64, eps_t: f64) -> (M, Bound) {
    let (p, k) = y.shape();
    let ya = y.abs();
    let s = y.transpose() * y;
    let sa = ya.transpose() * &ya;
    let n: f64 = y.iter().map(|v| v * v).sum();
    let m = offdiag(&s);
    let ma = offdiag(&sa);
    // The Gram product: γ_p·|Y|ᵀ|Y| elementwise.
    let e_m = &ma * gamma(p, u);
    let f = (y - x0) * rule.fid;
    let e_f = (y - x0).abs() * (rule.fid.abs() * gamma(3, u));
    let active = n > 1e-12
        && match rule.simplified {
            Some(c) => c != 0.0,
            None => rule.orth != 0.0,
        };
    let mut h = M::zeros(p, k);
    let mut e_h = M::zeros(p, k);
    if active {
        let ym = y * &m;
        // Y·M is off by γ_k·|Y||M| (the product) + |Y|·E_M (the Gram error), both ≤ |Y|·ma.
        let yma = &ya * &ma;
        match rule.simplified {
            Some(c) => {
                h = &ym * c;
                e_h = &yma * (c.abs() * gamma(p + k + 2, u));
            }
            None => {
                let alpha = rule.orth / (n * n);
                let off: f64 = m.iter().map(|v| v * v).sum();
                let dsq: f64 = (0..k).map(|j| s[(j, j)] * s[(j, j)]).sum();
                let fro = off + dsq;
                let dd = off / (n * n);
                let r = -rule.orth * dd / n;
                h = &ym * alpha + y * r;
                // n = ‖Y‖²: a positive sum, relative error γ_{pk}.
                let e_n = gamma(p * k, u) * n;
                // off = ‖S‖² − Σd²: first order 2Σ|M||E_M|; the diagonal errors 2γ_p·Σd² (zero
                // if both sums come from one Gram matrix, kept so the bound holds for any
                // implementation); and the two sums of k² and k terms.
                let e_off = 2.0 * m.abs().component_mul(&e_m).sum()
                    + 2.0 * gamma(p, u) * dsq
                    + gamma(k * k + 1, u) * (fro + dsq);
                let e_dd = e_off / (n * n) + dd * (2.0 * e_n / n + 2.0 * u);
                let e_r = rule.orth.abs() / n * (e_dd + dd * (e_n / n + 2.0 * u));
                let e_alpha = alpha.abs() * (2.0 * e_n / n + 3.0 * u);
                e_h = &yma * (alpha.abs() * gamma(p + k + 1, u))
                    + ym.abs() * e_alpha
                    + &ya * (e_r + u * r.abs())
                    + h.abs() * u;
            }
        }
        if rule.projection == Projection::ReferenceOrthOnly {
            let (ph, eph) = project_y(y, &h, &e_h, u);
            h = ph;
            e_h = eph;
        }
    }
    let g = &h + &f;
    let e_g = e_h + e_f + g.abs() * u;
    match rule.projection {
        Projection::None | Projection::ReferenceOrthOnly => (g, Bound::Elem(e_g)),
        Projection::ReferenceFull => {
            let (pg, e) = project_y(y, &g, &e_g, u);
            (pg, Bound::Elem(e))
        }
        Projection::PolarFull => {
            if n <= 0.0 {
                return (g, Bound::Elem(e_g));
            }
            assert!(p >= k, "the polar projection is only tested for p ≥ k");
            let q = polar_svd(y);
            let pg = &g - &q * sym(&(q.transpose() * &g));
            // The backend's Q = Y·(S + δI)^{-1/2}, δ = 16·ε·tr(S)/k: within √k·δ/(2σ_min²) of
            // the exact polar factor (Frobenius), plus its rounding (inv_sqrt_err through Y),
            // plus the oracle's SVD (2/σ_min times a backward error of (p+k)·u·‖Y‖_F).
            let lmin = lam_min(&s);
            let delta = 16.0 * eps_t * n / k as f64;
            let t_fro = eigenvalues(&s)
                .iter()
                .map(|l| 1.0 / (l.max(0.0) + delta))
                .sum::<f64>()
                .sqrt();
            let yf = n.sqrt();
            let e_q = yf * inv_sqrt_err(p, k, lmin + delta, n, t_fro, u)
                + (k as f64).sqrt() * delta / (2.0 * lmin)
                + 2.0 * (p + k) as f64 * u * yf / lmin.sqrt();
            let gf = g.norm();
            // Y·T·sym(T·YᵀG): one length-p and three length-k products, each bounded through
            // Frobenius norms by ‖Y‖²‖T‖²‖G‖.
            let e_round = (gamma(p, u) + 3.0 * gamma(k + 1, u)) * n * t_fro * t_fro * gf;
            // P is a contraction: the error on G passes through; a perturbed Q moves P(G) by
            // ≤ 2‖δQ‖‖G‖.
            let b = e_g.norm() + 2.0 * gf * e_q + e_round + u * pg.norm();
            (pg, Bound::Norm(b))
        }
    }
}

/// Reference-style soft-polar / polar retraction (`RetractOptions::reference`), with the
/// inverse square root by eigendecomposition (`Auto`/`Eig`, `k ≤ 128`) or the diagonal.
fn retract_reference_oracle(y: &M, o: &RetractOptions, u: f64) -> (M, f64) {
    let (p, k) = y.shape();
    let ny2: f64 = y.iter().map(|v| v * v).sum();
    let ny = ny2.sqrt();
    let s = y.transpose() * y;
    match o.retraction {
        Retraction::SoftPolar => {
            let (w, eps) = (o.w, o.eps);
            let a = &s + M::identity(k, k) * eps;
            let (t, e_t) = match o.inv_method {
                InvSqrtMethod::Eig | InvSqrtMethod::Auto => {
                    assert!(p >= k);
                    let t = inv_sqrt_eig(&a, eps);
                    let e = inv_sqrt_err(p, k, lam_min(&s) + eps, ny2, t.norm(), u);
                    (t, e)
                }
                InvSqrtMethod::Diag => {
                    let t = M::from_diagonal(&a.diagonal().map(|d| 1.0 / d.max(eps).sqrt()));
                    // S_jj is a positive sum (γ_p), the square root halves it, +ε and 1/√ add 2u.
                    let e = (0.5 * gamma(p, u) + 2.0 * u) * t.norm();
                    (t, e)
                }
                InvSqrtMethod::NewtonSchulz => unreachable!("not tested"),
            };
            let tw = &t * w + M::identity(k, k) * (1.0 - w);
            let z = y * &tw;
            let nz = z.norm();
            let want = &z * (ny / nz);
            let e_z = w.abs() * ny * e_t + gamma(k, u) * ny * tw.norm() + u * nz;
            // renormalisation: ‖Y‖ and ‖Z‖ are positive sums (γ_pk each), a division and a product
            (
                want,
                ny * (2.0 * e_z / nz + 2.0 * gamma(p * k, u) + 4.0 * u),
            )
        }
        Retraction::Polar => {
            // The polar factor by an eigendecomposition of the smaller Gram matrix (the
            // backend uses an SVD): Y·(YᵀY)^{-1/2} for p ≥ k, (YYᵀ)^{-1/2}·Y for p < k.
            let (g, small, big) = if p >= k {
                (s.clone(), k, p)
            } else {
                (y * y.transpose(), p, k)
            };
            let t = inv_sqrt_eig(&g, 0.0);
            let q = if p >= k { y * &t } else { &t * y };
            let lmin = lam_min(&g);
            let e_q = ny * inv_sqrt_err(big, small, lmin, ny2, t.norm(), u)
                + gamma(small, u) * ny * t.norm()
                + 2.0 * (p + k) as f64 * u * ny / lmin.sqrt();
            let nq = q.norm();
            let want = &q * (ny / nq);
            (
                want,
                ny * (2.0 * e_q / nq + 2.0 * gamma(p * k, u) + 4.0 * u),
            )
        }
        Retraction::None => (y.clone(), 0.0),
    }
}

/// Corrected-style retraction: `(1−w)·Y + w·c·Q`, `Q = Y·(S + δI)^{-1/2}`,
/// `δ = 16·ε_T·tr(S)/k`, `c = ⟨Q,Y⟩/‖Q‖²` (`w = 1` for `Polar`). `p ≥ k` only.
fn retract_corrected_oracle(y: &M, o: &RetractOptions, u: f64, eps_t: f64) -> (M, f64) {
    let (p, k) = y.shape();
    assert!(p >= k);
    let s = y.transpose() * y;
    let tr = s.trace();
    let ny = tr.sqrt();
    let delta = 16.0 * eps_t * tr / k as f64;
    let a = &s + M::identity(k, k) * delta;
    let t = inv_sqrt_eig(&a, delta);
    let q = y * &t;
    let num = q.dot(y);
    let den = q.norm_squared();
    let c = num / den;
    let w = if o.retraction == Retraction::Polar {
        1.0
    } else {
        o.w
    };
    let want = y * (1.0 - w) + &q * (w * c);
    let tf = t.norm();
    let e_t = inv_sqrt_err(p, k, lam_min(&s) + delta, tr, tf, u);
    let e_q = ny * e_t + gamma(k, u) * ny * tf;
    // c from ⟨Q,Y⟩ and ‖Q‖² (however formed: k×k traces or p×k sums): the error of Q, and
    // sums of length ≤ p + 3k over terms bounded by ‖T‖^{1,2}·tr(S).
    let e_num = e_q * ny + gamma(p + 2 * k, u) * tf * tr;
    let e_den = 2.0 * e_q * q.norm() + gamma(p + 3 * k, u) * tf * tf * tr;
    let rel_c = e_num / num + e_den / den + 2.0 * u;
    let b = w * c.abs() * e_q
        + w * c.abs() * q.norm() * rel_c
        + gamma(k + 1, u) * ny * ((1.0 - w).abs() + w * c.abs() * tf)
        + u * want.norm();
    (want, b)
}

/// The four energy terms and their bounds.
fn energy_oracle(y: &M, x0: &M, u: f64) -> ([f64; 4], [f64; 4]) {
    let (p, k) = y.shape();
    let mut dist = 0.0;
    for i in 0..y.len() {
        dist += (y[i] - x0[i]) * (y[i] - x0[i]);
    }
    let s = y.transpose() * y;
    let sa = y.abs().transpose() * y.abs();
    let fro: f64 = s.iter().map(|v| v * v).sum();
    let dsq: f64 = (0..k).map(|j| s[(j, j)] * s[(j, j)]).sum();
    let n: f64 = y.iter().map(|v| v * v).sum();
    let e_s = sa * gamma(p, u);
    (
        [dist, fro, dsq, n],
        [
            gamma(p * k + 3, u) * dist,
            2.0 * s.abs().component_mul(&e_s).sum() + gamma(k * k + 1, u) * fro,
            (2.0 * gamma(p, u) + gamma(k + 1, u)) * dsq,
            gamma(p * k + 1, u) * n,
        ],
    )
}

fn grad_map_oracle(y: &M, g: &M, t: f64, clamp: bool, u: f64) -> (f64, f64) {
    let (mut acc, mut e) = (0.0, 0.0);
    let mut sq = 0.0;
    for i in 0..y.len() {
        let mut z = y[i] - t * g[i];
        if clamp && z < 0.0 {
            z = 0.0;
        }
        let d = z - y[i];
        // z off by γ_3(|y| + |t·g|) (t rounded, product, difference); a flipped clamp decision
        // needs |z| within that, and moves d by |z|; then d − y rounds once more.
        let e_d = gamma(3, u) * (y[i].abs() + (t * g[i]).abs()) + u * d.abs();
        acc += d * d;
        e += 2.0 * d.abs() * e_d;
        sq += d * d;
    }
    (acc, e + gamma(y.len() + 1, u) * sq)
}

// ---------------------------------------------------------------------------------------------
// the tests, generic over the precision

fn round_trip<T: Prec>() {
    let mut be = CpuBackend::<T>::new();
    let specials = [
        0.0,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e-300,
        1e300,
        3.0e-40,
        1.0 + 2f64.powi(-30),
        -7.5,
        f64::MIN_POSITIVE,
    ];
    for (p, k) in all_shapes() {
        let mut x = gaussian(p, k, seed(p, k, 1)) * 3.0;
        for (i, v) in specials.iter().enumerate().take(x.len()) {
            x[i] = *v;
        }
        let m = be.upload(&x).unwrap();
        assert_eq!(m.shape(), (p, k));
        let back = down(&mut be, &m);
        same_bits(
            &format!("{} round trip {p}x{k}", T::NAME),
            &back,
            &x.map(T::rnd),
        );
        for (b, v) in back.iter().zip(x.iter()) {
            // rounding to nearest: |fl(x) − x| ≤ u|x| in the normal range
            if v.abs() >= T::MIN_NORMAL && v.abs() <= T::MAX {
                assert!(
                    (b - v).abs() <= T::U * v.abs(),
                    "{}: {v:e} -> {b:e}",
                    T::NAME
                );
            }
        }
        // a second round trip of the downloaded values is the identity
        let again = be.upload(&back).unwrap();
        same_bits("second round trip", &down(&mut be, &again), &back);
    }
    let nan = be.upload(&M::from_element(2, 3, f64::NAN)).unwrap();
    assert!(down(&mut be, &nan).iter().all(|v| v.is_nan()));
}

fn zeros_and_copy<T: Prec>() {
    let mut be = CpuBackend::<T>::new();
    for (p, k) in all_shapes() {
        let z = be.zeros(p, k).unwrap();
        assert_eq!(z.shape(), (p, k));
        let zd = down(&mut be, &z);
        assert!(zd.iter().all(|v| v.to_bits() == 0), "zeros must be +0.0");
        let (src, x) = up(&mut be, &gaussian(p, k, seed(p, k, 2)));
        let mut dst = nan_buf(&mut be, p, k);
        be.copy(&src, &mut dst);
        same_bits(
            &format!("{} copy {p}x{k}", T::NAME),
            &down(&mut be, &dst),
            &x,
        );
        // the source is untouched
        same_bits("copy source", &down(&mut be, &src), &x);
    }
}

fn lincomb<T: Prec>() {
    let mut be = CpuBackend::<T>::new();
    let u = ue::<T>();
    for (p, k) in all_shapes() {
        let (xb, x) = up(&mut be, &gaussian(p, k, seed(p, k, 3)));
        let (yb, y) = up(&mut be, &(gaussian(p, k, seed(p, k, 4)) * 100.0));
        for &(a, b) in &[
            (1.0, 0.0),
            (0.0, 1.0),
            (0.3, -1.7),
            (-2.5, 2.5),
            (1e-3, 7.0),
            (0.1, 0.1),
        ] {
            let mut dst = nan_buf(&mut be, p, k);
            be.lincomb(a, &xb, b, &yb, &mut dst);
            let (want, bound) = lincomb_oracle(a, &x, b, &y, u);
            ok(cmp_elem(
                &format!("{} lincomb a={a} b={b} {p}x{k}", T::NAME),
                &down(&mut be, &dst),
                &want,
                &bound,
            ));
        }
    }
}

fn lerp<T: Prec>() {
    let mut be = CpuBackend::<T>::new();
    let u = ue::<T>();
    for (p, k) in all_shapes() {
        let (bb, b) = up(&mut be, &gaussian(p, k, seed(p, k, 5)));
        let (tb, t) = up(&mut be, &(gaussian(p, k, seed(p, k, 6)) * 10.0));
        for &alpha in &[0.0, 0.3, 1.0, 1.7, -0.5, 1e-4] {
            let mut dst = nan_buf(&mut be, p, k);
            be.lerp(&bb, &tb, alpha, &mut dst);
            let got = down(&mut be, &dst);
            if alpha == 0.0 {
                same_bits("lerp α = 0 is the base", &got, &b);
            }
            let (want, bound) = lerp_oracle(&b, &t, alpha, u);
            ok(cmp_elem(
                &format!("{} lerp α={alpha} {p}x{k}", T::NAME),
                &got,
                &want,
                &bound,
            ));
        }
    }
}

fn nonneg<T: Prec>() {
    let mut be = CpuBackend::<T>::new();
    let u = ue::<T>();
    let planted = [
        -50.0, -20.0, -1e-3, -0.0, 0.0, 19.999, 20.0, 20.001, 30.0, 1e-30, -1e-30,
    ];
    for (p, k) in all_shapes() {
        // N(0, 15²): both softplus branches and its far tails
        let mut x = gaussian(p, k, seed(p, k, 7)) * 15.0;
        for (i, v) in planted.iter().enumerate().take(x.len()) {
            x[i] = *v;
        }
        for mode in [NonNeg::None, NonNeg::Hard, NonNeg::Softplus] {
            let (mut mb, xr) = up(&mut be, &x);
            be.nonneg(&mut mb, mode);
            let got = down(&mut be, &mb);
            let (want, bound) = nonneg_oracle(&xr, mode, u);
            match mode {
                NonNeg::None => same_bits("nonneg none", &got, &xr),
                NonNeg::Hard => {
                    assert!(
                        got.iter().zip(want.iter()).all(|(g, w)| g == w),
                        "{} hard clamp {p}x{k}",
                        T::NAME
                    )
                }
                NonNeg::Softplus => {
                    ok(cmp_elem(
                        &format!("{} softplus {p}x{k}", T::NAME),
                        &got,
                        &want,
                        &bound,
                    ));
                    assert!(got.iter().all(|v| *v >= 0.0));
                }
            }
        }
    }
}

fn retract_reference<T: Prec>() {
    let mut be = CpuBackend::<T>::new();
    let u = ue::<T>();
    for (p, k) in all_shapes() {
        for scale in [1.0, 1e-3] {
            let (yb, y) = up(&mut be, &(gaussian(p, k, seed(p, k, 8)) * scale));
            let mut cases = vec![];
            for w in [0.5, 1.0] {
                cases.push(
                    RetractOptions::reference(Retraction::SoftPolar, w)
                        .inv_method(InvSqrtMethod::Diag),
                );
                if p >= k {
                    cases.push(RetractOptions::reference(Retraction::SoftPolar, w));
                }
            }
            cases.push(RetractOptions::reference(Retraction::Polar, 1.0));
            for o in cases {
                let what = format!(
                    "{} retract {:?} {:?} w={} scale={scale} {p}x{k}",
                    T::NAME,
                    o.retraction,
                    o.inv_method,
                    o.w
                );
                let mut dst = nan_buf(&mut be, p, k);
                be.retract(&yb, &mut dst, &o);
                let got = down(&mut be, &dst);
                let (want, b) = retract_reference_oracle(&y, &o, u);
                ok(cmp_norm(&what, &got, &want, b));
                // the backend is the public retraction
                same_bits(&what, &got, &nsa_flow::retract_in::<T>(&y, &o).unwrap());
            }
        }
    }
}

fn retract_corrected<T: Prec>() {
    let mut be = CpuBackend::<T>::new();
    let u = ue::<T>();
    let eps_t = 2.0 * T::U;
    for (p, k) in tall_shapes() {
        for scale in [1.0, 1e-3] {
            let (yb, y) = up(&mut be, &(gaussian(p, k, seed(p, k, 9)) * scale));
            for o in [
                RetractOptions::corrected(Retraction::SoftPolar, 0.25),
                RetractOptions::corrected(Retraction::SoftPolar, 1.0),
                RetractOptions::corrected(Retraction::Polar, 0.5),
            ] {
                let what = format!(
                    "{} corrected retract {:?} w={} scale={scale} {p}x{k}",
                    T::NAME,
                    o.retraction,
                    o.w
                );
                let mut dst = nan_buf(&mut be, p, k);
                be.retract(&yb, &mut dst, &o);
                let got = down(&mut be, &dst);
                let (want, b) = retract_corrected_oracle(&y, &o, u, eps_t);
                ok(cmp_norm(&what, &got, &want, b));
            }
        }
    }
}

fn retract_trivial<T: Prec>() {
    let mut be = CpuBackend::<T>::new();
    for (p, k) in all_shapes() {
        let (yb, y) = up(&mut be, &gaussian(p, k, seed(p, k, 10)));
        let zero = be.zeros(p, k).unwrap();
        for style in [Mode::Reference, Mode::Corrected] {
            // retraction None, or w = 0 (and w < 0 in reference style): the input unchanged
            let mut opts = vec![
                RetractOptions::reference(Retraction::None, 1.0).style(style),
                RetractOptions::reference(Retraction::SoftPolar, 0.0).style(style),
            ];
            if style == Mode::Reference {
                opts.push(RetractOptions::reference(Retraction::SoftPolar, -0.5));
            }
            for o in opts {
                let mut dst = nan_buf(&mut be, p, k);
                be.retract(&yb, &mut dst, &o);
                same_bits(
                    &format!("{} identity retraction {o:?}", T::NAME),
                    &down(&mut be, &dst),
                    &y,
                );
            }
            // Y = 0 is returned as is
            for r in [Retraction::SoftPolar, Retraction::Polar] {
                let o = RetractOptions::reference(r, 0.5).style(style);
                let mut dst = nan_buf(&mut be, p, k);
                be.retract(&zero, &mut dst, &o);
                assert!(
                    down(&mut be, &dst).iter().all(|v| *v == 0.0),
                    "{} retract(0) {o:?}",
                    T::NAME
                );
            }
        }
    }
}

/// Coefficient of the orthogonality part that makes it as large as the fidelity part
/// (so that neither hides the other's errors).
fn balanced_coef(y: &M, x0: &M, simplified: bool) -> f64 {
    let rule = GradientRule {
        fid: 0.0,
        orth: 1.0,
        simplified: simplified.then_some(1.0),
        projection: Projection::None,
    };
    let (h, _) = gradient_oracle(y, x0, &rule, U64, 2.0 * U64);
    let hn = h.norm();
    if hn > 0.0 {
        (y - x0).norm() / hn
    } else {
        1.3
    }
}

fn gradient_rules(y: &M, x0: &M, p: usize, k: usize) -> Vec<GradientRule> {
    let mut rules = vec![];
    for simplified in [false, true] {
        let coef = balanced_coef(y, x0, simplified);
        for (fid, orth_scale) in [(0.7, 1.0), (0.0, 1.0), (0.7, 0.0)] {
            for projection in [
                Projection::None,
                Projection::ReferenceOrthOnly,
                Projection::ReferenceFull,
                Projection::PolarFull,
            ] {
                if projection == Projection::PolarFull && p < k {
                    continue;
                }
                rules.push(if simplified {
                    // `orth` is unused when simplified
                    GradientRule {
                        fid,
                        orth: 0.9,
                        simplified: Some(coef * orth_scale),
                        projection,
                    }
                } else {
                    GradientRule {
                        fid,
                        orth: coef * orth_scale,
                        simplified: None,
                        projection,
                    }
                });
            }
        }
    }
    rules
}

fn check_gradient<T: Prec>(
    be: &mut CpuBackend<T>,
    y: &M,
    x0: &M,
    rule: &GradientRule,
    u: f64,
    what: &str,
) -> Check {
    let (p, k) = y.shape();
    let (yb, y) = up(be, y);
    let (xb, x0) = up(be, x0);
    let mut out = nan_buf(be, p, k);
    be.gradient(&yb, &xb, rule, &mut out);
    let got = down(be, &out);
    let (want, bound) = gradient_oracle(&y, &x0, rule, u, 2.0 * T::U);
    match bound {
        Bound::Elem(b) => cmp_elem(what, &got, &want, &b),
        Bound::Norm(b) => cmp_norm(what, &got, &want, b),
    }
}

fn gradient<T: Prec>() {
    let mut be = CpuBackend::<T>::new();
    let u = ue::<T>();
    for (p, k) in all_shapes() {
        let y = gaussian(p, k, seed(p, k, 11));
        let x0 = gaussian(p, k, seed(p, k, 12));
        for rule in gradient_rules(&y, &x0, p, k) {
            let what = format!("{} gradient {rule:?} {p}x{k}", T::NAME);
            ok(check_gradient(&mut be, &y, &x0, &rule, u, &what));
        }
    }
}

fn gradient_degenerate<T: Prec>() {
    let mut be = CpuBackend::<T>::new();
    let u = ue::<T>();
    for (p, k, scale) in [(63, 3, 0.0), (63, 3, 1e-8), (1, 17, 0.0), (1031, 1, 0.0)] {
        // Y = 0 (nothing to project, no orthogonality part) and ‖Y‖² ≤ 1e-12 (no
        // orthogonality part): the gradient is fid·(Y − X0), projected.
        let y = gaussian(p, k, seed(p, k, 13)) * scale;
        let x0 = gaussian(p, k, seed(p, k, 14));
        for simplified in [None, Some(2.0)] {
            for projection in [
                Projection::None,
                Projection::ReferenceOrthOnly,
                Projection::ReferenceFull,
                Projection::PolarFull,
            ] {
                if projection == Projection::PolarFull && p < k && scale != 0.0 {
                    continue;
                }
                let rule = GradientRule {
                    fid: 0.7,
                    orth: 5.0,
                    simplified,
                    projection,
                };
                let what = format!("{} gradient at ‖Y‖={scale:e} {rule:?} {p}x{k}", T::NAME);
                ok(check_gradient(&mut be, &y, &x0, &rule, u, &what));
            }
        }
    }
}

fn sgd<T: Prec>() {
    let mut be = CpuBackend::<T>::new();
    let u = ue::<T>();
    for (p, k) in all_shapes() {
        let (pb, param) = up(&mut be, &gaussian(p, k, seed(p, k, 15)));
        let (gb, grad) = up(&mut be, &gaussian(p, k, seed(p, k, 16)));
        for lr in [1.0, 0.1, 3.7e-3] {
            let mut out = nan_buf(&mut be, p, k);
            be.optimizer_step(&UpdateRule::Sgd, &pb, &gb, &mut [], lr, &mut out);
            let (want, bound) = sgd_oracle(&param, &grad, lr, u);
            ok(cmp_elem(
                &format!("{} sgd lr={lr} {p}x{k}", T::NAME),
                &down(&mut be, &out),
                &want,
                &bound,
            ));
        }
    }
}

/// Gradients that make each SGDP branch fire: as drawn (usually no projection); orthogonal to
/// the parameter row by row (the channel view fires, the radial part is rounding-sized);
/// with every row at half the channel threshold `δ/√k` (the channel view fires and removes a
/// radial part of that size); with the whole at half the layer threshold `δ/√(pk)` (the layer
/// view fires unless a single row already does).
fn sgdp_grads(param: &M, g: &M, delta: f64) -> Vec<(&'static str, M)> {
    let (p, k) = param.shape();
    // g⊥ + c'·‖g⊥‖·p̂ has cosine c with p when c' = c/√(1 − c²)
    let tilt = |gp: &M, pp: &M, c: f64| -> M {
        let cp = c / (1.0 - c * c).sqrt();
        gp + pp * (cp * gp.norm() / pp.norm())
    };
    let mut rows = g.clone();
    let mut rows_half = g.clone();
    for i in 0..p {
        let (pr, gr) = (param.row(i).into_owned(), g.row(i).into_owned());
        let c = gr.dot(&pr) / pr.norm_squared();
        let perp = gr - &pr * c;
        rows.row_mut(i).copy_from(&perp);
        let half = tilt(
            &M::from_row_slice(1, k, perp.as_slice()),
            &M::from_row_slice(1, k, pr.as_slice()),
            0.5 * delta / (k as f64).sqrt(),
        );
        rows_half.row_mut(i).copy_from(&half.row(0));
    }
    let whole = g - param * (g.dot(param) / param.norm_squared());
    let whole_half = tilt(&whole, param, 0.5 * delta / ((p * k) as f64).sqrt());
    vec![
        ("drawn", g.clone()),
        ("row-orthogonal", rows),
        ("rows-at-half-threshold", rows_half),
        ("whole-at-half-threshold", whole_half),
    ]
}

fn sgdp<T: Prec>() {
    let mut be = CpuBackend::<T>::new();
    let u = ue::<T>();
    let mut seen = std::collections::HashSet::new();
    for (p, k) in all_shapes() {
        let param0 = gaussian(p, k, seed(p, k, 17));
        let g0 = gaussian(p, k, seed(p, k, 18));
        for (gname, g) in sgdp_grads(&param0, &g0, 0.1) {
            for cfg in [
                SgdpCfg {
                    dampening: 0.0,
                    eps: 1e-8,
                    weight_decay: 0.0,
                    delta: 0.1,
                    wd_ratio: 0.1,
                },
                SgdpCfg {
                    dampening: 0.25,
                    eps: 1e-8,
                    weight_decay: 1e-2,
                    delta: 0.1,
                    wd_ratio: 0.1,
                },
            ] {
                let lr = 0.05;
                let (pb, param) = up(&mut be, &param0);
                let (gb, grad) = up(&mut be, &g);
                // with momentum 0 the old buffer must not matter: start it with junk
                let mut state = [be.upload(&(gaussian(p, k, seed(p, k, 19)) * 1e3)).unwrap()];
                let mut out = nan_buf(&mut be, p, k);
                be.optimizer_step(&cfg.rule(), &pb, &gb, &mut state, lr, &mut out);
                let got = down(&mut be, &out);
                let fired = sgdp_decisions(&param, &grad, &cfg, u);
                if fired.len() == 1 {
                    seen.insert(fired[0]);
                }
                let what = format!("{} sgdp {gname} grad ({fired:?}) {cfg:?} {p}x{k}", T::NAME);
                // the answer must be that of an admissible branch
                let checks: Vec<Check> = fired
                    .iter()
                    .map(|&f| {
                        let (want, bound) = sgdp_oracle(&param, &grad, lr, &cfg, u, f);
                        cmp_elem(&format!("{what} as {f:?}"), &got, &want, &bound)
                    })
                    .collect();
                if !checks.iter().any(|c| c.is_ok()) {
                    ok(checks.into_iter().next().unwrap());
                }
                // the buffer is now (1 − dampening)·g
                let (bw, bb) = (&grad * (1.0 - cfg.dampening), grad.abs() * gamma(2, u));
                ok(cmp_elem(
                    &format!("{what}: buffer"),
                    &down(&mut be, &state[0]),
                    &bw,
                    &bb,
                ));
            }
        }
    }
    assert_eq!(
        seen.len(),
        3,
        "every SGDP branch must be exercised unambiguously, saw {seen:?}"
    );
}

fn reductions<T: Prec>() {
    let mut be = CpuBackend::<T>::new();
    let u = ue::<T>();
    for (p, k) in all_shapes() {
        let (yb, y) = up(&mut be, &gaussian(p, k, seed(p, k, 20)));
        let (xb, x) = up(&mut be, &(gaussian(p, k, seed(p, k, 21)) * 0.5));
        let (nb, ynn) = up(&mut be, &gaussian(p, k, seed(p, k, 22)).map(|v| v.max(0.0)));
        let tag = |s: &str| format!("{} {s} {p}x{k}", T::NAME);

        let got = be
            .reduce(&[Reduction::EnergyTerms {
                y: &yb,
                target: &xb,
            }])
            .unwrap();
        assert_eq!(got.len(), 4);
        let (want, bound) = energy_oracle(&y, &x, u);
        for (i, name) in ["‖Y−X0‖²", "‖YᵀY‖²", "Σdiag(YᵀY)²", "‖Y‖²"]
            .iter()
            .enumerate()
        {
            ok(cmp_scalar(
                &tag(&format!("EnergyTerms {name}")),
                got[i],
                want[i],
                bound[i],
            ));
        }

        let got = be.reduce(&[Reduction::NormSq(&yb)]).unwrap();
        let n: f64 = y.iter().map(|v| v * v).sum();
        ok(cmp_scalar(
            &tag("NormSq"),
            got[0],
            n,
            gamma(p * k + 1, u) * n,
        ));

        let got = be.reduce(&[Reduction::Dot(&yb, &xb)]).unwrap();
        let (mut d, mut da) = (0.0, 0.0);
        for i in 0..y.len() {
            d += y[i] * x[i];
            da += (y[i] * x[i]).abs();
        }
        ok(cmp_scalar(&tag("Dot"), got[0], d, gamma(p * k + 1, u) * da));

        let got = be.reduce(&[Reduction::DistSq(&yb, &xb)]).unwrap();
        let dd: f64 = y.iter().zip(x.iter()).map(|(a, b)| (a - b) * (a - b)).sum();
        ok(cmp_scalar(
            &tag("DistSq"),
            got[0],
            dd,
            gamma(p * k + 3, u) * dd,
        ));

        for clamp in [false, true] {
            for t in [0.5, 1e-3] {
                let got = be
                    .reduce(&[Reduction::GradMapSq {
                        y: &nb,
                        g: &yb,
                        t,
                        clamp,
                    }])
                    .unwrap();
                let (want, b) = grad_map_oracle(&ynn, &y, t, clamp, u);
                ok(cmp_scalar(
                    &tag(&format!("GradMapSq t={t} clamp={clamp}")),
                    got[0],
                    want,
                    b,
                ));
            }
        }
    }
}

fn all_finite<T: Prec>() {
    let mut be = CpuBackend::<T>::new();
    for (p, k) in all_shapes() {
        let x = gaussian(p, k, seed(p, k, 23));
        let good = be.upload(&x).unwrap();
        assert_eq!(
            be.reduce(&[Reduction::AllFinite(&good)]).unwrap(),
            vec![1.0]
        );
        let len = p * k;
        for pos in [0, len / 2, len - 1] {
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                let mut xb = x.clone();
                xb[pos] = bad;
                let m = be.upload(&xb).unwrap();
                assert_eq!(
                    be.reduce(&[Reduction::AllFinite(&m)]).unwrap(),
                    vec![0.0],
                    "{} AllFinite missed {bad} at {pos} of {p}x{k}",
                    T::NAME
                );
            }
        }
    }
    if T::NAME == "f32" {
        // finite in f64, overflows in f32
        let m = be.upload(&M::from_element(3, 2, 1e39)).unwrap();
        assert_eq!(be.reduce(&[Reduction::AllFinite(&m)]).unwrap(), vec![0.0]);
    }
}

/// One batched `reduce` answers, in order, exactly what the requests answer one by one.
fn reduce_batch<T: Prec>() {
    let mut be = CpuBackend::<T>::new();
    for (p, k) in [(1031, 17), (65, 3), (1, 17)] {
        let yb = be.upload(&gaussian(p, k, seed(p, k, 24))).unwrap();
        let xb = be.upload(&gaussian(p, k, seed(p, k, 25))).unwrap();
        let reqs = [
            Reduction::NormSq(&xb),
            Reduction::EnergyTerms {
                y: &yb,
                target: &xb,
            },
            Reduction::Dot(&yb, &xb),
            Reduction::AllFinite(&yb),
            Reduction::DistSq(&xb, &yb),
            Reduction::GradMapSq {
                y: &yb,
                g: &xb,
                t: 0.3,
                clamp: true,
            },
            Reduction::EnergyTerms {
                y: &xb,
                target: &yb,
            },
        ];
        let batch = be.reduce(&reqs).unwrap();
        assert_eq!(batch.len(), reqs.iter().map(|r| r.width()).sum::<usize>());
        let mut single = vec![];
        for r in &reqs {
            let one = be.reduce(std::slice::from_ref(r)).unwrap();
            assert_eq!(one.len(), r.width());
            single.extend(one);
        }
        same_bits(
            "batched reduce",
            &M::from_vec(batch.len(), 1, batch),
            &M::from_vec(single.len(), 1, single),
        );
    }
    assert!(be.reduce(&[]).unwrap().is_empty());
}

/// Every operation, run twice, gives the same bits; so does a backend whose workspace was
/// sized for another shape in between, and a fresh backend.
fn determinism<T: Prec>() {
    fn run_all<T: Prec>(be: &mut CpuBackend<T>, p: usize, k: usize) -> Vec<M> {
        let y = gaussian(p, k, seed(p, k, 26));
        let x0 = gaussian(p, k, seed(p, k, 27));
        let yb = be.upload(&y).unwrap();
        let xb = be.upload(&x0).unwrap();
        let mut outs = vec![];
        let mut out = be.zeros(p, k).unwrap();
        be.lincomb(0.3, &yb, -1.1, &xb, &mut out);
        outs.push(be.download(&out).unwrap());
        be.lerp(&yb, &xb, 0.7, &mut out);
        outs.push(be.download(&out).unwrap());
        let mut m = be.upload(&(&y * 10.0)).unwrap();
        be.nonneg(&mut m, NonNeg::Softplus);
        outs.push(be.download(&m).unwrap());
        let mut opts = vec![
            RetractOptions::reference(Retraction::SoftPolar, 0.5),
            RetractOptions::reference(Retraction::Polar, 1.0),
        ];
        if p >= k {
            opts.push(RetractOptions::corrected(Retraction::SoftPolar, 0.5));
        }
        for o in opts {
            be.retract(&yb, &mut out, &o);
            outs.push(be.download(&out).unwrap());
        }
        for projection in [
            Projection::None,
            Projection::ReferenceOrthOnly,
            Projection::ReferenceFull,
            Projection::PolarFull,
        ] {
            for simplified in [None, Some(0.01)] {
                let rule = GradientRule {
                    fid: 1.0,
                    orth: 3.0,
                    simplified,
                    projection,
                };
                be.gradient(&yb, &xb, &rule, &mut out);
                outs.push(be.download(&out).unwrap());
            }
        }
        let cfg = SgdpCfg {
            dampening: 0.0,
            eps: 1e-8,
            weight_decay: 1e-3,
            delta: 0.1,
            wd_ratio: 0.1,
        };
        let mut state = [be.zeros(p, k).unwrap()];
        be.optimizer_step(&cfg.rule(), &yb, &xb, &mut state, 0.1, &mut out);
        outs.push(be.download(&out).unwrap());
        be.optimizer_step(&UpdateRule::Sgd, &yb, &xb, &mut [], 0.1, &mut out);
        outs.push(be.download(&out).unwrap());
        let r = be
            .reduce(&[
                Reduction::EnergyTerms {
                    y: &yb,
                    target: &xb,
                },
                Reduction::NormSq(&yb),
                Reduction::Dot(&yb, &xb),
                Reduction::DistSq(&yb, &xb),
                Reduction::GradMapSq {
                    y: &yb,
                    g: &xb,
                    t: 0.5,
                    clamp: true,
                },
            ])
            .unwrap();
        outs.push(M::from_vec(r.len(), 1, r));
        outs
    }
    let mut be = CpuBackend::<T>::new();
    for (p, k) in [(1031, 17), (65, 3), (1, 17)] {
        let first = run_all(&mut be, p, k);
        let second = run_all(&mut be, p, k);
        // resize the workspace for another k, then come back
        run_all(&mut be, 63, 1);
        let third = run_all(&mut be, p, k);
        let fresh = run_all(&mut CpuBackend::<T>::new(), p, k);
        for (i, a) in first.iter().enumerate() {
            let what = format!("{} determinism op #{i} {p}x{k}", T::NAME);
            same_bits(&what, a, &second[i]);
            same_bits(&what, a, &third[i]);
            same_bits(&what, a, &fresh[i]);
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn upload_download_round_trip() {
    round_trip::<f64>();
    round_trip::<f32>();
}

#[test]
fn zeros_and_copy_are_exact() {
    zeros_and_copy::<f64>();
    zeros_and_copy::<f32>();
}

#[test]
fn lincomb_matches_oracle() {
    lincomb::<f64>();
    lincomb::<f32>();
}

#[test]
fn lerp_matches_oracle() {
    lerp::<f64>();
    lerp::<f32>();
}

#[test]
fn nonneg_matches_oracle() {
    nonneg::<f64>();
    nonneg::<f32>();
}

#[test]
fn retract_reference_style_matches_oracle() {
    retract_reference::<f64>();
    retract_reference::<f32>();
}

#[test]
fn retract_corrected_style_matches_oracle() {
    retract_corrected::<f64>();
    retract_corrected::<f32>();
}

#[test]
fn retract_identity_cases() {
    retract_trivial::<f64>();
    retract_trivial::<f32>();
}

#[test]
fn gradient_matches_oracle_for_every_projection() {
    gradient::<f64>();
    gradient::<f32>();
}

#[test]
fn gradient_at_zero_and_tiny_iterates() {
    gradient_degenerate::<f64>();
    gradient_degenerate::<f32>();
}

#[test]
fn sgd_step_matches_oracle() {
    sgd::<f64>();
    sgd::<f32>();
}

#[test]
fn sgdp_step_matches_torch_optimizer_oracle() {
    sgdp::<f64>();
    sgdp::<f32>();
}

#[test]
fn reductions_match_oracle() {
    reductions::<f64>();
    reductions::<f32>();
}

#[test]
fn all_finite_detects_non_finite_entries() {
    all_finite::<f64>();
    all_finite::<f32>();
}

#[test]
fn batched_reduce_concatenates_single_answers() {
    reduce_batch::<f64>();
    reduce_batch::<f32>();
}

#[test]
fn every_operation_is_bitwise_deterministic() {
    determinism::<f64>();
    determinism::<f32>();
}

/// The comparisons are not vacuous: a deliberately wrong variant of each operation is
/// rejected by the same bound that accepts the right one.
#[test]
fn tolerances_reject_wrong_answers() {
    let (p, k) = (63, 17);
    let u = ue::<f64>();
    let mut be = CpuBackend::<f64>::new();
    let y = gaussian(p, k, seed(p, k, 30));
    let x0 = gaussian(p, k, seed(p, k, 31));
    let (yb, _) = up(&mut be, &y);
    let (xb, _) = up(&mut be, &x0);
    let reject = |r: Check, what: &str| assert!(r.is_err(), "a wrong {what} was accepted");

    // lincomb with the coefficients swapped; lerp with 1 − α
    let mut out = be.zeros(p, k).unwrap();
    be.lincomb(0.3, &yb, -1.7, &xb, &mut out);
    let got = down(&mut be, &out);
    let (want, b) = lincomb_oracle(0.3, &y, -1.7, &x0, u);
    ok(cmp_elem("lincomb", &got, &want, &b));
    let (want, b) = lincomb_oracle(-1.7, &y, 0.3, &x0, u);
    reject(cmp_elem("lincomb", &got, &want, &b), "lincomb");
    be.lerp(&yb, &xb, 0.3, &mut out);
    let got = down(&mut be, &out);
    let (want, b) = lerp_oracle(&y, &x0, 0.7, u);
    reject(cmp_elem("lerp", &got, &want, &b), "lerp");

    // softplus against the hard clamp
    let mut m = be.upload(&(&y * 15.0)).unwrap();
    be.nonneg(&mut m, NonNeg::Softplus);
    let got = down(&mut be, &m);
    let (want, b) = nonneg_oracle(&(&y * 15.0), NonNeg::Hard, u);
    let b = b.map(|_| gamma(4, u));
    reject(cmp_elem("softplus", &got, &want, &b), "softplus");

    // a NormSq that dropped its last summand (the ragged tail of 63·17 = 1071 entries)
    let n = be.reduce(&[Reduction::NormSq(&yb)]).unwrap()[0];
    let (imax, _) =
        y.iter().enumerate().fold(
            (0, 0.0),
            |a, (i, v)| if v.abs() > a.1 { (i, v.abs()) } else { a },
        );
    let mut short = y.clone();
    short[imax] = 0.0;
    let ns: f64 = short.iter().map(|v| v * v).sum();
    reject(
        cmp_scalar("NormSq", n, ns, gamma(p * k + 1, u) * ns),
        "NormSq",
    );
    // EnergyTerms in the wrong order
    let e = be
        .reduce(&[Reduction::EnergyTerms {
            y: &yb,
            target: &xb,
        }])
        .unwrap();
    let (want, bound) = energy_oracle(&y, &x0, u);
    reject(
        cmp_scalar("EnergyTerms", e[1], want[2], bound[2]),
        "EnergyTerms",
    );

    // the gradient under each other projection; without the radial term; and the f32
    // backend's gradient against the f64 bound
    let coef = balanced_coef(&y, &x0, false);
    let projections = [
        Projection::None,
        Projection::ReferenceOrthOnly,
        Projection::ReferenceFull,
        Projection::PolarFull,
    ];
    for pa in projections {
        let rule = GradientRule {
            fid: 0.7,
            orth: coef,
            simplified: None,
            projection: pa,
        };
        be.gradient(&yb, &xb, &rule, &mut out);
        let got = down(&mut be, &out);
        for pb in projections {
            let (want, bound) = gradient_oracle(
                &y,
                &x0,
                &GradientRule {
                    projection: pb,
                    ..rule
                },
                u,
                2.0 * U64,
            );
            let r = match bound {
                Bound::Elem(b) => cmp_elem("gradient", &got, &want, &b),
                Bound::Norm(b) => cmp_norm("gradient", &got, &want, b),
            };
            if pa == pb {
                ok(r);
            } else {
                reject(r, &format!("gradient ({pa:?} as {pb:?})"));
            }
        }
    }
    let rule = GradientRule {
        fid: 0.7,
        orth: coef,
        simplified: None,
        projection: Projection::None,
    };
    be.gradient(&yb, &xb, &rule, &mut out);
    let got = down(&mut be, &out);
    let (mut want, bound) = gradient_oracle(&y, &x0, &rule, u, 2.0 * U64);
    let Bound::Elem(bound) = bound else {
        unreachable!()
    };
    // drop the radial −(D/n)·orth·Y term
    let n2 = y.norm_squared();
    let s = y.transpose() * &y;
    let dd = offdiag(&s).norm_squared() / (n2 * n2);
    want += &y * (coef * dd / n2);
    reject(
        cmp_elem("gradient", &got, &want, &bound),
        "gradient without its radial term",
    );
    let mut be32 = CpuBackend::<f32>::new();
    // (not PolarFull: in f32 its bound is dominated by the regularisation δ = 16·ε_f32·tr/k
    // of the backend's polar factor, which is not an f32 rounding error)
    for projection in [
        Projection::None,
        Projection::ReferenceOrthOnly,
        Projection::ReferenceFull,
    ] {
        let r = GradientRule { projection, ..rule };
        reject(
            check_gradient(
                &mut be32,
                &y,
                &x0,
                &r,
                ue::<f64>(),
                "f32 gradient at the f64 bound",
            ),
            "f32 gradient at the f64 bound",
        );
        ok(check_gradient(
            &mut be32,
            &y,
            &x0,
            &r,
            ue::<f32>(),
            "f32 gradient",
        ));
    }

    // retraction: reference style against the corrected formula and vice versa, eig against
    // the diagonal inverse square root, and the f32 answer at the f64 bound
    let refo = RetractOptions::reference(Retraction::SoftPolar, 0.5);
    let cor = RetractOptions::corrected(Retraction::SoftPolar, 0.5);
    let diag = refo.clone().inv_method(InvSqrtMethod::Diag);
    be.retract(&yb, &mut out, &refo);
    let got_ref = down(&mut be, &out);
    be.retract(&yb, &mut out, &cor);
    let got_cor = down(&mut be, &out);
    let (want_ref, b_ref) = retract_reference_oracle(&y, &refo, u);
    let (want_cor, b_cor) = retract_corrected_oracle(&y, &cor, u, 2.0 * U64);
    let (want_diag, b_diag) = retract_reference_oracle(&y, &diag, u);
    ok(cmp_norm("retract", &got_ref, &want_ref, b_ref));
    ok(cmp_norm("retract", &got_cor, &want_cor, b_cor));
    reject(
        cmp_norm("retract", &got_ref, &want_cor, b_cor),
        "retraction (reference as corrected)",
    );
    reject(
        cmp_norm("retract", &got_cor, &want_ref, b_ref),
        "retraction (corrected as reference)",
    );
    reject(
        cmp_norm("retract", &got_ref, &want_diag, b_diag),
        "retraction (eig as diag)",
    );
    let got32 = nsa_flow::retract_in::<f32>(&y, &refo).unwrap();
    reject(
        cmp_norm("retract", &got32, &want_ref, b_ref),
        "f32 retraction at the f64 bound",
    );

    // SGDP: with momentum 0 the direction is ∝ g, so the radial removal only bites for a
    // gradient near the threshold; a step that fired is compared with one that did not, and
    // with the other view.
    let cfg = SgdpCfg {
        dampening: 0.0,
        eps: 1e-8,
        weight_decay: 0.1,
        delta: 0.1,
        wd_ratio: 0.1,
    };
    let (_, g_rows) = sgdp_grads(&y, &x0, cfg.delta).remove(2);
    let (gb, g_rows) = up(&mut be, &g_rows);
    let mut state = [be.zeros(p, k).unwrap()];
    be.optimizer_step(&cfg.rule(), &yb, &gb, &mut state, 0.5, &mut out);
    let got = down(&mut be, &out);
    assert_eq!(sgdp_decisions(&y, &g_rows, &cfg, u), vec![Fired::Channel]);
    let (want, b) = sgdp_oracle(&y, &g_rows, 0.5, &cfg, u, Fired::Channel);
    ok(cmp_elem("sgdp", &got, &want, &b));
    for wrong in [Fired::Layer, Fired::No] {
        let (want, b) = sgdp_oracle(&y, &g_rows, 0.5, &cfg, u, wrong);
        reject(
            cmp_elem("sgdp", &got, &want, &b),
            &format!("SGDP (channel as {wrong:?})"),
        );
    }
    let (want, b) = sgdp_oracle(
        &y,
        &g_rows,
        0.5,
        &SgdpCfg {
            weight_decay: 0.0,
            ..cfg
        },
        u,
        Fired::Channel,
    );
    reject(cmp_elem("sgdp", &got, &want, &b), "SGDP (no weight decay)");
}

/// torch_optimizer 0.3.0 computes the SGDP cosine as `|Σ g·p| / (‖g‖ + eps) / (‖p‖ + eps)`;
/// the backend uses `max(‖·‖, eps)`. They differ when a norm is comparable to `eps`: here
/// `‖g‖ = 5e-9`, the cosine of the angle is 0.18, torch's cosine is `0.18·5e-9/1.5e-8 = 0.06`
/// (below `δ/√k = 0.0707`: the channel view fires, weight decay × `wd_ratio`, so the first
/// entry becomes ≈ 0.999), the backend's is `0.09` (nothing fires, full weight decay, 0.99).
#[test]
fn sgdp_cosine_adds_eps_like_torch_optimizer() {
    let u = ue::<f64>();
    let param = M::from_row_slice(1, 2, &[1.0, 0.0]);
    let grad = M::from_row_slice(1, 2, &[0.9e-9, (25e-18f64 - 0.81e-18).sqrt()]);
    let cfg = SgdpCfg {
        dampening: 0.0,
        eps: 1e-8,
        weight_decay: 0.1,
        delta: 0.1,
        wd_ratio: 0.1,
    };
    let fired = sgdp_decisions(&param, &grad, &cfg, u);
    assert_eq!(fired, vec![Fired::Channel]);
    let (want, bound) = sgdp_oracle(&param, &grad, 0.1, &cfg, u, Fired::Channel);
    let mut be = CpuBackend::<f64>::new();
    let (pb, _) = up(&mut be, &param);
    let (gb, _) = up(&mut be, &grad);
    let mut state = [be.zeros(1, 2).unwrap()];
    let mut out = be.zeros(1, 2).unwrap();
    be.optimizer_step(&cfg.rule(), &pb, &gb, &mut state, 0.1, &mut out);
    ok(cmp_elem(
        "sgdp at ‖g‖ < eps",
        &down(&mut be, &out),
        &want,
        &bound,
    ));
}
