//! The bound-constrained minimisers of nsa_flow 3.5 and its stopping contract: projected
//! L-BFGS-B (Byrd, Lu, Nocedal & Zhu 1995: compact limited-memory form, generalized Cauchy
//! point, direct-primal subspace minimisation, strong-Wolfe line search, projected
//! backtracking fallback) and spectral projected gradient, both scored by one scale-invariant
//! certificate (the gradient mapping) and stopped for one of four reasons.
//!
//! Variables are the entries of a `p×k` matrix in column-major order; the feasible set is
//! `Y ≥ 0` (or unbounded), optionally with a fixed support (`mask`: entries pinned at zero).

use nalgebra::{DMatrix, DVector};

/// Why a solve stopped (3.5's `STOP_REASONS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The certificate reached `tol`: stationary to the requested tolerance.
    GradMap,
    /// Energy and certificate both stopped improving: the numerical floor of the precision.
    Plateau,
    /// No descent step at working precision, far from stationarity: not converged.
    LineSearch,
    /// The gradient-evaluation budget ran out: not converged.
    MaxIter,
}

impl StopReason {
    /// 3.5's spelling (`grad_map`, `plateau`, `line_search`, `max_iter`).
    pub fn name(self) -> &'static str {
        match self {
            StopReason::GradMap => "grad_map",
            StopReason::Plateau => "plateau",
            StopReason::LineSearch => "line_search",
            StopReason::MaxIter => "max_iter",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The claim a result makes (3.5's `CERTIFICATES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Certificate {
    /// `grad_map ≤ tol`.
    Stationary,
    /// A plateau at a finite certificate.
    NumericalFloor,
    /// No claim.
    None,
}

impl Certificate {
    /// From the stop reason and the final certificate (3.5's `make_result`).
    pub fn of(stop: StopReason, grad_map: f64, tol: f64) -> Certificate {
        if stop == StopReason::GradMap && grad_map.is_finite() && grad_map <= tol {
            Certificate::Stationary
        } else if stop == StopReason::Plateau && grad_map.is_finite() {
            Certificate::NumericalFloor
        } else {
            Certificate::None
        }
    }

    /// 3.5's spelling (`stationary`, `numerical_floor`, `none`).
    pub fn name(self) -> &'static str {
        match self {
            Certificate::Stationary => "stationary",
            Certificate::NumericalFloor => "numerical_floor",
            Certificate::None => "none",
        }
    }
}

/// How far above `tol` a stalled certificate may sit and still be called the numerical floor.
pub const STALL_SLACK: f64 = 1e3;
/// The plateau window (accepted steps).
pub const PATIENCE: usize = 50;
/// The plateau's relative energy range.
pub const PLATEAU_RTOL: f64 = 1e-12;

/// An energy over `p×k` matrices with its gradient.
pub trait Objective {
    /// `E(Y)`.
    fn value(&mut self, y: &DMatrix<f64>) -> f64;
    /// `E(Y)`, with `∇E(Y)` written into `g` (same shape as `y`).
    fn value_grad(&mut self, y: &DMatrix<f64>, g: &mut DMatrix<f64>) -> f64;
}

/// The feasible set: `Y ≥ 0` when `nonneg`, and entries where `mask` is false pinned at zero.
#[derive(Clone, Debug)]
pub struct Feasible {
    /// Enforce `Y ≥ 0`.
    pub nonneg: bool,
    /// Fixed support: `false` pins the entry at zero.
    pub mask: Option<Vec<bool>>,
}

impl Feasible {
    fn lo(&self, i: usize) -> f64 {
        match &self.mask {
            Some(m) if !m[i] => 0.0,
            _ if self.nonneg => 0.0,
            _ => f64::NEG_INFINITY,
        }
    }
    fn hi(&self, i: usize) -> f64 {
        match &self.mask {
            Some(m) if !m[i] => 0.0,
            _ => f64::INFINITY,
        }
    }
    fn has_lower(&self) -> bool {
        self.nonneg || self.mask.is_some()
    }
    /// The Euclidean projection onto the set.
    pub fn project(&self, x: &mut [f64]) {
        for (i, v) in x.iter_mut().enumerate() {
            let (l, h) = (self.lo(i), self.hi(i));
            if *v < l {
                *v = l;
            }
            if *v > h {
                *v = h;
            }
        }
    }
}

/// The certificate `‖P(Y − ‖Y‖²∇E) − Y‖/‖Y‖`: dimensionless, invariant under `Y → cY`, zero
/// exactly at a stationary point of the constrained problem (∞ at `Y = 0` or non-finite `Y`).
pub fn gradient_mapping(y: &[f64], g: &[f64], set: &Feasible) -> f64 {
    let ny = y.iter().map(|v| v * v).sum::<f64>().sqrt();
    if !ny.is_finite() || ny <= 0.0 {
        return f64::INFINITY;
    }
    let t = ny * ny;
    let mut acc = 0.0;
    for i in 0..y.len() {
        let mut s = y[i] - t * g[i];
        if set.nonneg && s < 0.0 {
            s = 0.0;
        }
        if let Some(m) = &set.mask {
            if !m[i] {
                s = 0.0;
            }
        }
        let d = s - y[i];
        acc += d * d;
    }
    acc.sqrt() / ny
}

/// The solver's tunables (3.5's defaults).
#[derive(Clone, Debug)]
pub struct SolverParams {
    /// Budget in gradient evaluations (the start's included).
    pub max_grad: usize,
    /// Stop when the certificate is at most this.
    pub tol: f64,
    /// L-BFGS memory.
    pub memory: usize,
    /// Sufficient-decrease constant of the backtracking fallback and of SPG.
    pub sigma: f64,
}

/// What a minimiser returns.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Solved {
    /// The final iterate.
    pub y: DMatrix<f64>,
    /// Its energy.
    pub energy: f64,
    /// Its certificate.
    pub grad_map: f64,
    /// Why it stopped.
    pub stop: StopReason,
    /// Iterations (outer steps) taken.
    pub iters: usize,
    /// Gradient evaluations, the start's included.
    pub n_grad: usize,
    /// Energy-only evaluations.
    pub n_energy: usize,
    /// Energy at the start.
    pub energy_start: f64,
    /// Certificate at the start.
    pub grad_map_start: f64,
}

struct Counted<'a, O: Objective> {
    obj: &'a mut O,
    n_grad: usize,
    n_energy: usize,
    g: DMatrix<f64>,
    y: DMatrix<f64>,
}

impl<'a, O: Objective> Counted<'a, O> {
    fn new(obj: &'a mut O, shape: (usize, usize)) -> Self {
        Counted {
            obj,
            n_grad: 0,
            n_energy: 0,
            g: DMatrix::zeros(shape.0, shape.1),
            y: DMatrix::zeros(shape.0, shape.1),
        }
    }
    fn fg(&mut self, x: &[f64]) -> (f64, Vec<f64>) {
        self.n_grad += 1;
        self.y.as_mut_slice().copy_from_slice(x);
        let f = self.obj.value_grad(&self.y, &mut self.g);
        (f, self.g.as_slice().to_vec())
    }
    fn f(&mut self, x: &[f64]) -> f64 {
        self.n_energy += 1;
        self.y.as_mut_slice().copy_from_slice(x);
        self.obj.value(&self.y)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    crate::linalg::dot(a, b)
}

fn safe_div(num: f64, den: f64, tiny: f64) -> f64 {
    if den >= 0.0 {
        num / den.max(tiny)
    } else {
        num / den.min(-tiny)
    }
}

/// The compact limited-memory form `B = θI − W M Wᵀ`, `W = [Y, θS]`.
struct Compact {
    memory: usize,
    s: std::collections::VecDeque<Vec<f64>>,
    y: std::collections::VecDeque<Vec<f64>>,
    /// `(SᵀY)_ij = s_iᵀy_j` and `(SᵀS)_ij`, kept up to date one row and column per pair.
    sy: DMatrix<f64>,
    ss: DMatrix<f64>,
    theta: f64,
    /// `M`, `2m × 2m` (empty until the first pair is accepted). `W` itself is never formed:
    /// its columns are `y_j` and `θ s_j`, read from the pairs (an `n × 2m` copy rewritten per
    /// iteration, as θ changes, doubled the memory traffic of the bookkeeping).
    m_inv: DMatrix<f64>,
}

impl Compact {
    fn new(memory: usize) -> Compact {
        Compact {
            memory,
            s: Default::default(),
            y: Default::default(),
            sy: DMatrix::zeros(0, 0),
            ss: DMatrix::zeros(0, 0),
            theta: 1.0,
            m_inv: DMatrix::zeros(0, 0),
        }
    }
    fn m(&self) -> usize {
        self.s.len()
    }
    fn two_m(&self) -> usize {
        self.m_inv.nrows()
    }
    /// `W[b, q]`.
    #[inline]
    fn w_at(&self, b: usize, q: usize) -> f64 {
        let (col, scale) = self.w_col(q);
        scale * col[b]
    }
    /// Column `q` of `W` as (the stored vector, the factor it is scaled by: 1 for a `y`, θ
    /// for an `s`; multiplying by 1 is exact, so one code path serves both halves).
    fn w_col(&self, q: usize) -> (&[f64], f64) {
        let m = self.m();
        if q < m {
            (&self.y[q], 1.0)
        } else {
            (&self.s[q - m], self.theta)
        }
    }
    fn reset(&mut self) {
        self.s.clear();
        self.y.clear();
        self.sy = DMatrix::zeros(0, 0);
        self.ss = DMatrix::zeros(0, 0);
        self.theta = 1.0;
        self.m_inv = DMatrix::zeros(0, 0);
    }
    fn push(&mut self, s: Vec<f64>, y: Vec<f64>) {
        let sy = dot(&s, &y);
        let yy = dot(&y, &y);
        if !(yy > 0.0 && sy > 2.2e-16 * yy) {
            return;
        }
        if self.s.len() == self.memory {
            self.s.pop_front();
            self.y.pop_front();
            self.sy = self.sy.clone().remove_row(0).remove_column(0);
            self.ss = self.ss.clone().remove_row(0).remove_column(0);
        }
        let m = self.s.len();
        let mut sy_new = DMatrix::zeros(m + 1, m + 1);
        let mut ss_new = DMatrix::zeros(m + 1, m + 1);
        sy_new.view_mut((0, 0), (m, m)).copy_from(&self.sy);
        ss_new.view_mut((0, 0), (m, m)).copy_from(&self.ss);
        for i in 0..m {
            sy_new[(i, m)] = dot(&self.s[i], &y);
            sy_new[(m, i)] = dot(&s, &self.y[i]);
            let v = dot(&self.s[i], &s);
            ss_new[(i, m)] = v;
            ss_new[(m, i)] = v;
        }
        sy_new[(m, m)] = sy;
        ss_new[(m, m)] = dot(&s, &s);
        self.sy = sy_new;
        self.ss = ss_new;
        self.s.push_back(s);
        self.y.push_back(y);
        self.theta = yy / sy;
        self.rebuild();
    }
    fn rebuild(&mut self) {
        let m = self.m();
        let th = self.theta;
        let (sy, ss) = (&self.sy, &self.ss);
        let mut k = DMatrix::zeros(2 * m, 2 * m);
        for i in 0..m {
            k[(i, i)] = -sy[(i, i)];
            for j in 0..m {
                if i > j {
                    k[(m + i, j)] = sy[(i, j)]; // L
                    k[(j, m + i)] = sy[(i, j)]; // Lᵀ
                }
                k[(m + i, m + j)] = th * ss[(i, j)];
            }
        }
        match k.lu().try_inverse() {
            Some(inv) if inv.iter().all(|v| v.is_finite()) => {
                self.m_inv = inv;
            }
            _ => self.reset(),
        }
    }
    /// `Wᵀv`.
    fn wt(&self, v: &[f64]) -> DVector<f64> {
        let two_m = self.two_m();
        DVector::from_fn(two_m, |j, _| {
            let (col, scale) = self.w_col(j);
            scale * dot(col, v)
        })
    }
}

/// Generalized Cauchy point along `P(x − t g)`; returns `(x_cp, c, fixed)`.
fn cauchy_point(
    x: &[f64],
    g: &[f64],
    set: &Feasible,
    h: &Compact,
    max_breakpoints: usize,
) -> (Vec<f64>, DVector<f64>, Vec<bool>) {
    let n = x.len();
    let tiny = f64::MIN_POSITIVE;
    let mut t = vec![f64::INFINITY; n];
    for i in 0..n {
        let ti = if g[i] > 0.0 {
            (x[i] - set.lo(i)) / g[i].max(tiny)
        } else if g[i] < 0.0 {
            (x[i] - set.hi(i)) / g[i].min(-tiny)
        } else {
            f64::INFINITY
        };
        t[i] = if ti.is_nan() {
            f64::INFINITY
        } else {
            ti.max(0.0)
        };
    }
    let mut d: Vec<f64> = (0..n)
        .map(|i| if t[i] > 0.0 { -g[i] } else { 0.0 })
        .collect();
    let mut fixed: Vec<bool> = t.iter().map(|&ti| ti <= 0.0).collect();
    let mut x_cp: Vec<f64> = (0..n)
        .map(|i| {
            if t[i] > 0.0 {
                x[i]
            } else if g[i] > 0.0 {
                set.lo(i)
            } else {
                set.hi(i)
            }
        })
        .collect();
    let two_m = h.two_m();
    let mut p = if two_m > 0 {
        h.wt(&d)
    } else {
        DVector::zeros(0)
    };
    let mut c = DVector::zeros(two_m);
    let mut fp = -dot(&d, &d);
    let mut fpp = -h.theta * fp;
    if two_m > 0 {
        fpp -= p.dot(&(&h.m_inv * &p));
    }
    fpp = fpp.max(tiny);
    let mut dt_min = safe_div(-fp, fpp, tiny);
    let mut t_old = 0.0;

    let mut cand: Vec<usize> = (0..n).filter(|&i| t[i].is_finite() && t[i] > 0.0).collect();
    if !cand.is_empty() {
        let order = |a: &usize, b: &usize| t[*a].total_cmp(&t[*b]).then(a.cmp(b));
        if cand.len() > max_breakpoints {
            cand.select_nth_unstable_by(max_breakpoints, order);
            cand.truncate(max_breakpoints);
        }
        cand.sort_unstable_by(order);
        // The walk's state evolves by cumulative sums over the breakpoints in order; each is
        // formed exactly as the reference forms it (running sums, clamp after the sum), so the
        // first segment holding its own minimiser is the same one.
        let mut acc_gw = DVector::zeros(two_m);
        let mut acc_c = DVector::zeros(two_m);
        let mut acc_fpp = 0.0;
        let mut acc_fp = 0.0;
        let mut t_prev = 0.0;
        let mut fpp_prev = fpp;
        let mut dt_min_prev = dt_min;
        let mut n_fix = cand.len();
        // The walk visits up to `max_breakpoints` breakpoints: its 2m-vectors live in buffers
        // made once, and Mᵀ is formed once, not per breakpoint.
        let m_inv_t = h.m_inv.transpose();
        let mut wb = DVector::zeros(two_m);
        let mut pp = DVector::zeros(two_m);
        let mut cj = DVector::zeros(two_m);
        let mut mwb = DVector::zeros(two_m);
        let (mut last_p, mut last_c) = (DVector::zeros(two_m), DVector::zeros(two_m));
        let mut last: Option<(f64, f64, f64)> = None;
        for (j, &b) in cand.iter().enumerate() {
            let tb = t[b];
            let gb = g[b];
            let zb = (if gb > 0.0 { set.lo(b) } else { set.hi(b) }) - x[b];
            let dtb = tb - t_prev;
            if dt_min_prev < dtb || dtb <= 0.0 {
                n_fix = j;
                break;
            }
            let (wmc, dfpp);
            if two_m > 0 {
                for q in 0..two_m {
                    wb[q] = h.w_at(b, q);
                }
                acc_gw.axpy(gb, &wb, 1.0);
                for q in 0..two_m {
                    pp[q] = (p[q] + acc_gw[q]) - wb[q] * gb;
                }
                acc_c.axpy(dtb, &pp, 1.0);
                for q in 0..two_m {
                    cj[q] = c[q] + acc_c[q];
                }
                m_inv_t.mul_to(&wb, &mut mwb);
                wmc = mwb.dot(&cj);
                let wmp = mwb.dot(&pp);
                let wmw = mwb.dot(&wb);
                dfpp = -h.theta * gb * gb - 2.0 * gb * wmp - gb * gb * wmw;
                std::mem::swap(&mut pp, &mut last_p);
                std::mem::swap(&mut cj, &mut last_c);
            } else {
                wmc = 0.0;
                dfpp = -h.theta * gb * gb;
            }
            acc_fpp += dfpp;
            let fpp_j = (fpp + acc_fpp).max(tiny);
            let dfp = dtb * fpp_prev + gb * gb + h.theta * gb * zb - gb * wmc;
            acc_fp += dfp;
            let fp_j = fp + acc_fp;
            let dt_min_j = -fp_j / fpp_j;
            last = Some((tb, fp_j, fpp_j));
            fpp_prev = fpp_j;
            dt_min_prev = dt_min_j;
            t_prev = tb;
        }
        if n_fix > 0 {
            for &b in &cand[..n_fix] {
                d[b] = 0.0;
                x_cp[b] = if g[b] > 0.0 { set.lo(b) } else { set.hi(b) };
                fixed[b] = true;
            }
            // `last` is the state after breakpoint n_fix − 1 (the loop broke at n_fix or ran out)
            let (tb, fp_j, fpp_j) = last.expect("n_fix > 0 means a step was taken");
            t_old = tb;
            fp = fp_j;
            fpp = fpp_j.max(tiny);
            dt_min = safe_div(-fp, fpp, tiny);
            if two_m > 0 {
                let b = cand[n_fix - 1];
                let gb = g[b];
                for q in 0..two_m {
                    p[q] = last_p[q] + h.w_at(b, q) * gb;
                }
                c = last_c;
            }
        }
    }
    let _ = fp;
    dt_min = dt_min.max(0.0);
    t_old += dt_min;
    for i in 0..n {
        if t[i] > t_old && !fixed[i] {
            x_cp[i] = x[i] + t_old * d[i];
        }
    }
    if two_m > 0 {
        c.axpy(dt_min, &p, 1.0);
    }
    (x_cp, c, fixed)
}

/// Minimises the model over the free variables from the Cauchy point, truncated to the box.
fn subspace_min(
    x: &[f64],
    g: &[f64],
    x_cp: &[f64],
    c: &DVector<f64>,
    fixed: &[bool],
    set: &Feasible,
    h: &Compact,
) -> Vec<f64> {
    let n = x.len();
    if fixed.iter().all(|&f| f) {
        return x_cp.to_vec();
    }
    let th = h.theta;
    let two_m = h.two_m();
    let wmc: Vec<f64> = if two_m > 0 {
        let mc = &h.m_inv * c;
        let mut out = vec![0.0; n];
        for q in 0..two_m {
            let a = mc[q];
            let (col, scale) = h.w_col(q);
            for (o, &sv) in out.iter_mut().zip(col) {
                *o += (scale * sv) * a;
            }
        }
        out
    } else {
        vec![0.0; n]
    };
    let r: Vec<f64> = (0..n)
        .map(|i| {
            if fixed[i] {
                0.0
            } else {
                g[i] + th * (x_cp[i] - x[i]) - wmc[i]
            }
        })
        .collect();
    let mut d_hat: Vec<f64>;
    if two_m == 0 {
        d_hat = r.iter().map(|&v| -v / th).collect();
    } else {
        // the free rows of W, gathered, so the products cost O(n_free·m) through gemm
        let free: Vec<usize> = (0..n).filter(|&i| !fixed[i]).collect();
        let nf = free.len();
        let mut wf = DMatrix::zeros(nf, two_m);
        for q in 0..two_m {
            let (src, scale) = h.w_col(q);
            for (dst, &i) in wf.column_mut(q).iter_mut().zip(&free) {
                *dst = scale * src[i];
            }
        }
        let rf = DMatrix::from_iterator(nf, 1, free.iter().map(|&i| r[i]));
        let wtr = crate::linalg::gram(&wf, &rf);
        let v0 = &h.m_inv * DVector::from_column_slice(wtr.as_slice());
        let wtw = crate::linalg::gram(&wf, &wf);
        let nmat = DMatrix::identity(two_m, two_m) - (&h.m_inv * wtw) / th;
        let Some(v) = nmat.lu().solve(&v0) else {
            return x_cp.to_vec();
        };
        if !v.iter().all(|x| x.is_finite()) {
            return x_cp.to_vec();
        }
        let wv = crate::linalg::mul_small(&wf, &DMatrix::from_column_slice(two_m, 1, v.as_slice()));
        d_hat = vec![0.0; n];
        for (j, &i) in free.iter().enumerate() {
            d_hat[i] = -(r[i] / th) - wv[j] / (th * th);
        }
    }
    for i in 0..n {
        if fixed[i] {
            d_hat[i] = 0.0;
        }
    }
    let tiny = f64::MIN_POSITIVE;
    let mut alpha: f64 = 1.0;
    if set.has_lower() {
        for i in 0..n {
            if d_hat[i] < 0.0 {
                let lim = ((set.lo(i) - x_cp[i]) / d_hat[i].min(-tiny)).max(0.0);
                alpha = alpha.min(lim);
            }
        }
    }
    if set.mask.is_some() {
        for i in 0..n {
            if d_hat[i] > 0.0 {
                let lim = ((set.hi(i) - x_cp[i]) / d_hat[i].max(tiny)).max(0.0);
                alpha = alpha.min(lim);
            }
        }
    }
    (0..n).map(|i| x_cp[i] + alpha * d_hat[i]).collect()
}

fn cubic_min(a: f64, fa: f64, ga: f64, b: f64, fb: f64, gb: f64) -> Option<f64> {
    if a == b {
        return None;
    }
    let d1 = ga + gb - 3.0 * (fa - fb) / (a - b);
    let q = d1 * d1 - ga * gb;
    if q < 0.0 {
        return None;
    }
    let d2 = q.sqrt() * if b > a { 1.0 } else { -1.0 };
    let denom = gb - ga + 2.0 * d2;
    if denom == 0.0 {
        return None;
    }
    let cand = b - (b - a) * ((gb + d2 - d1) / denom);
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    (lo < cand && cand < hi).then_some(cand)
}

/// One trial of the line search: the step, its energy and directional derivative, and the
/// point and gradient (kept so the accepted step is the one whose energy is reported).
struct Trial {
    a: f64,
    f: f64,
    d: f64,
    x: Vec<f64>,
    g: Vec<f64>,
}

/// Strong Wolfe (c1 = 1e-4, c2 = 0.9) with cubic interpolation; 3.5's control flow, except
/// that the accepted point is always the one whose energy is returned (3.5 returns the last
/// evaluated point with the energy of the bracket's low end when its zoom runs out).
fn strong_wolfe(
    phi: &mut dyn FnMut(f64) -> Trial,
    a_max: f64,
    f0: f64,
    g0: f64,
    max_eval: usize,
) -> Option<Trial> {
    let (c1, c2) = (1e-4, 0.9);
    let mut n_eval = 0;
    let mut prev: Option<Trial> = None; // a_prev = 0 is (f0, g0), no point
    let (mut a_prev, mut f_prev) = (0.0, f0);
    let mut a_i = a_max.min(1.0);
    let lo: Option<Trial>;
    let (mut lo_a, mut lo_f, mut lo_d);
    let mut hi_a;
    let mut hi_fd: Option<(f64, f64)> = None;
    loop {
        if n_eval >= max_eval {
            return None;
        }
        let tr = phi(a_i);
        n_eval += 1;
        let (f_i, d_i) = (tr.f, tr.d);
        if !(f_i.is_finite() && d_i.is_finite()) {
            lo_a = a_prev;
            lo_f = f_prev;
            lo_d = prev.as_ref().map_or(g0, |p| p.d);
            lo = prev;
            hi_a = a_i;
            break;
        }
        if f_i > f0 + c1 * a_i * g0 || (n_eval > 1 && f_i >= f_prev) {
            lo_a = a_prev;
            lo_f = f_prev;
            lo_d = prev.as_ref().map_or(g0, |p| p.d);
            lo = prev;
            hi_a = a_i;
            break;
        }
        if d_i.abs() <= -c2 * g0 {
            return Some(tr);
        }
        if d_i >= 0.0 {
            lo_a = a_i;
            lo_f = f_i;
            lo_d = d_i;
            lo = Some(tr);
            hi_a = a_prev;
            break;
        }
        a_prev = a_i;
        f_prev = f_i;
        let done = a_i >= a_max - 1e-16;
        if done {
            return Some(tr);
        }
        prev = Some(tr);
        a_i = (2.0 * a_i).min(a_max);
    }
    let mut lo = lo;
    while n_eval < max_eval && (hi_a - lo_a).abs() > 1e-16 {
        let mut a_j = None;
        if let Some((f_hi, d_hi)) = hi_fd {
            a_j = cubic_min(lo_a, lo_f, lo_d, hi_a, f_hi, d_hi);
        }
        let a_j = a_j.unwrap_or(0.5 * (lo_a + hi_a));
        let tr = phi(a_j);
        n_eval += 1;
        let (f_j, d_j) = (tr.f, tr.d);
        if !(f_j.is_finite() && d_j.is_finite()) {
            hi_a = a_j;
            hi_fd = None;
            continue;
        }
        if f_j > f0 + c1 * a_j * g0 || f_j >= lo_f {
            hi_a = a_j;
            hi_fd = Some((f_j, d_j));
        } else {
            if d_j.abs() <= -c2 * g0 {
                return Some(tr);
            }
            if d_j * (hi_a - lo_a) >= 0.0 {
                hi_a = lo_a;
                hi_fd = Some((lo_f, lo_d));
            }
            lo_a = a_j;
            lo_f = f_j;
            lo_d = d_j;
            lo = Some(tr);
        }
    }
    match lo {
        Some(tr) if tr.f < f0 => Some(tr),
        _ => None,
    }
}

/// The certificate window shared by the plateau and the stall classification.
struct Window {
    energy: std::collections::VecDeque<f64>,
    gmap: std::collections::VecDeque<f64>,
}

impl Window {
    fn new() -> Self {
        Window {
            energy: Default::default(),
            gmap: Default::default(),
        }
    }
    fn push(&mut self, e: f64, g: f64) {
        self.energy.push_back(e);
        self.gmap.push_back(g);
        if self.energy.len() > PATIENCE {
            self.energy.pop_front();
            self.gmap.pop_front();
        }
    }
    /// The certificate stopped improving (by under 10 %) across the window (≥ 5 samples).
    fn stalled(&self) -> bool {
        if self.gmap.len() < 5 {
            return false;
        }
        let first = self.gmap[0];
        let best = self.gmap.iter().cloned().fold(f64::INFINITY, f64::min);
        first.is_finite() && first > 0.0 && best >= 0.9 * first
    }
    fn plateau(&self) -> bool {
        if self.energy.len() < PATIENCE {
            return false;
        }
        let lo = self.energy.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = self
            .energy
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max);
        (hi - lo) / (1.0 + lo.abs()) < PLATEAU_RTOL && self.stalled()
    }
}

fn classify_stall(f: f64, f_try: Option<f64>, win: &Window, gmap: f64, tol: f64) -> StopReason {
    let eps = f64::EPSILON;
    let noise_floor = eps.sqrt();
    if !(gmap.is_finite() && gmap <= (STALL_SLACK * tol.max(0.0)).max(noise_floor)) {
        return StopReason::LineSearch;
    }
    if win.stalled() {
        return StopReason::Plateau;
    }
    if let Some(ft) = f_try {
        if ft.is_finite() && (ft - f) <= 64.0 * eps * (1.0 + f.abs()) {
            return StopReason::Plateau;
        }
    }
    StopReason::LineSearch
}

/// A per-iteration observer: `(iteration, energy, certificate, gradient evaluations)`;
/// returning `false` stops the solve (reported as `max_iter`, not converged).
pub type Callback<'a> = &'a mut dyn FnMut(usize, f64, f64, usize) -> bool;

/// Projected L-BFGS-B from `y0` (projected onto the set first).
pub fn lbfgsb<O: Objective>(
    obj: &mut O,
    y0: &DMatrix<f64>,
    set: &Feasible,
    prm: &SolverParams,
    mut callback: Option<Callback<'_>>,
) -> Solved {
    let shape = y0.shape();
    let mut cnt = Counted::new(obj, shape);
    let mut xf = y0.as_slice().to_vec();
    set.project(&mut xf);
    let (mut f, mut g) = cnt.fg(&xf);
    let mut gmap = gradient_mapping(&xf, &g, set);
    let (energy_start, grad_map_start) = (f, gmap);
    let mut h = Compact::new(prm.memory);
    let mut stop = StopReason::MaxIter;
    let mut it = 0;
    let mut win = Window::new();
    let tol = prm.tol;
    let max_grad = prm.max_grad.max(1);
    let noise_floor = f64::EPSILON.sqrt();
    let n = xf.len();

    while cnt.n_grad < max_grad {
        it += 1;
        if gmap <= tol {
            stop = StopReason::GradMap;
            break;
        }
        let (x_cp, c, fixed) = cauchy_point(&xf, &g, set, &h, 512);
        let x_bar = subspace_min(&xf, &g, &x_cp, &c, &fixed, set, &h);
        let mut d: Vec<f64> = (0..n).map(|i| x_bar[i] - xf[i]).collect();
        if dot(&d, &g) >= 0.0 {
            // An ascent direction: the memory is stale after an active-set change.
            h.reset();
            let (mut x_cp, _, _) = cauchy_point(&xf, &g, set, &h, 512);
            set.project(&mut x_cp);
            d = (0..n).map(|i| x_cp[i] - xf[i]).collect();
            if dot(&d, &g) >= 0.0 {
                let gn = dot(&g, &g).sqrt().max(f64::MIN_POSITIVE);
                d = g.iter().map(|v| -v / gn).collect();
            }
        }
        let g0_dir = dot(&d, &g);
        let mut a_max: f64 = 1.0;
        if set.has_lower() {
            let mut m = f64::INFINITY;
            let mut any = false;
            for i in 0..n {
                if d[i] < 0.0 {
                    any = true;
                    m = m.min(((set.lo(i) - xf[i]) / d[i].min(-f64::MIN_POSITIVE)).max(0.0));
                }
            }
            if any {
                a_max = a_max.max(m);
            }
        }
        // one evaluation kept in hand so the fallback's gradient lands within the budget
        let remaining = max_grad.saturating_sub(cnt.n_grad + 1).max(1);
        let accepted = {
            let xf_ref = &xf;
            let d_ref = &d;
            let mut phi = |a: f64| {
                let mut xa: Vec<f64> = (0..n).map(|i| xf_ref[i] + a * d_ref[i]).collect();
                set.project(&mut xa);
                let (fa, ga) = cnt.fg(&xa);
                let da = dot(&ga, d_ref);
                Trial {
                    a,
                    f: fa,
                    d: da,
                    x: xa,
                    g: ga,
                }
            };
            strong_wolfe(&mut phi, a_max, f, g0_dir, remaining.min(20))
        };
        let (x_new, f_new, g_new) = match accepted {
            Some(tr) => {
                let _ = tr.a;
                (tr.x, tr.f, tr.g)
            }
            None => {
                let mut step = 1.0;
                let mut ok = None;
                let mut f_try: Option<f64> = None;
                for _ in 0..30 {
                    let mut x_new: Vec<f64> = (0..n).map(|i| xf[i] + step * d[i]).collect();
                    set.project(&mut x_new);
                    let dn2: f64 = (0..n).map(|i| (x_new[i] - xf[i]).powi(2)).sum();
                    if dn2 == 0.0 {
                        break;
                    }
                    let fb = cnt.f(&x_new);
                    if !fb.is_finite() {
                        step *= 0.5;
                        continue;
                    }
                    f_try = Some(f_try.map_or(fb, |t: f64| t.min(fb)));
                    if fb <= f - prm.sigma * dn2 / step {
                        ok = Some(x_new);
                        break;
                    }
                    step *= 0.5;
                }
                let Some(x_new) = ok else {
                    stop = classify_stall(f, f_try, &win, gmap, tol);
                    break;
                };
                if cnt.n_grad >= max_grad {
                    stop = StopReason::MaxIter;
                    break;
                }
                let (fnew, gnew) = cnt.fg(&x_new);
                (x_new, fnew, gnew)
            }
        };
        if !(f_new.is_finite() && g_new.iter().all(|v| v.is_finite())) {
            stop = StopReason::LineSearch;
            break;
        }
        let s: Vec<f64> = (0..n).map(|i| x_new[i] - xf[i]).collect();
        let yv: Vec<f64> = (0..n).map(|i| g_new[i] - g[i]).collect();
        h.push(s, yv);
        xf = x_new;
        f = f_new;
        g = g_new;
        gmap = gradient_mapping(&xf, &g, set);
        if let Some(cb) = callback.as_mut() {
            if !cb(it, f, gmap, cnt.n_grad) {
                stop = StopReason::MaxIter;
                break;
            }
        }
        if gmap <= tol {
            stop = StopReason::GradMap;
            break;
        }
        win.push(f, gmap);
        if win.plateau() {
            stop = StopReason::Plateau;
            break;
        }
    }
    if stop == StopReason::MaxIter
        && gmap.is_finite()
        && gmap <= (STALL_SLACK * tol.max(0.0)).max(noise_floor)
        && win.stalled()
    {
        stop = StopReason::Plateau;
    }
    Solved {
        y: DMatrix::from_vec(shape.0, shape.1, xf),
        energy: f,
        grad_map: gmap,
        stop,
        iters: it,
        n_grad: cnt.n_grad,
        n_energy: cnt.n_energy,
        energy_start,
        grad_map_start,
    }
}

const T_MIN: f64 = 1e-12;
const T_MAX: f64 = 1e12;

/// Spectral projected gradient (alternating Barzilai–Borwein steps, monotone Armijo on the
/// projected step), 3.5's `spg`.
pub fn spg<O: Objective>(
    obj: &mut O,
    y0: &DMatrix<f64>,
    set: &Feasible,
    prm: &SolverParams,
    mut callback: Option<Callback<'_>>,
) -> Solved {
    let shape = y0.shape();
    let mut cnt = Counted::new(obj, shape);
    let mut y = y0.as_slice().to_vec();
    set.project(&mut y);
    let n = y.len();
    let (mut e, mut g) = cnt.fg(&y);
    let mut t = 1.0 / dot(&g, &g).sqrt().max(1e-12);
    let mut prev: Option<(Vec<f64>, Vec<f64>)> = None;
    let mut gmap = gradient_mapping(&y, &g, set);
    let (energy_start, grad_map_start) = (e, gmap);
    let mut stop = StopReason::MaxIter;
    let mut it = 0;
    let mut win = Window::new();
    let max_grad = prm.max_grad.max(1);
    while cnt.n_grad < max_grad {
        it += 1;
        if gmap <= prm.tol {
            stop = StopReason::GradMap;
            break;
        }
        if let Some((yp, gp)) = &prev {
            let (mut sr, mut ss, mut rr) = (0.0, 0.0, 0.0);
            for i in 0..n {
                let s = y[i] - yp[i];
                let r = g[i] - gp[i];
                sr += s * r;
                ss += s * s;
                rr += r * r;
            }
            if sr > 0.0 {
                t = if it % 2 == 0 {
                    sr / rr.max(1e-300)
                } else {
                    ss / sr
                };
            }
            t = t.clamp(T_MIN, T_MAX);
        }
        let mut accepted = None;
        let mut e_try: Option<f64> = None;
        for _ in 0..60 {
            let mut y_new: Vec<f64> = (0..n).map(|i| y[i] - t * g[i]).collect();
            set.project(&mut y_new);
            let dn2: f64 = (0..n).map(|i| (y_new[i] - y[i]).powi(2)).sum();
            let e_new = cnt.f(&y_new);
            e_try = Some(e_try.map_or(e_new, |v: f64| v.min(e_new)));
            if e_new <= e - prm.sigma * dn2 / t {
                accepted = Some(y_new);
                break;
            }
            t *= 0.5;
            if cnt.n_energy >= 4 * max_grad {
                break;
            }
        }
        let Some(y_new) = accepted else {
            stop = classify_stall(e, e_try, &win, gmap, prm.tol);
            break;
        };
        prev = Some((std::mem::replace(&mut y, y_new), g.clone()));
        let (e2, g2) = cnt.fg(&y);
        e = e2;
        g = g2;
        gmap = gradient_mapping(&y, &g, set);
        if let Some(cb) = callback.as_mut() {
            if !cb(it, e, gmap, cnt.n_grad) {
                stop = StopReason::MaxIter;
                break;
            }
        }
        win.push(e, gmap);
        if gmap <= prm.tol {
            stop = StopReason::GradMap;
            break;
        }
        if win.plateau() {
            stop = StopReason::Plateau;
            break;
        }
    }
    Solved {
        y: DMatrix::from_vec(shape.0, shape.1, y),
        energy: e,
        grad_map: gmap,
        stop,
        iters: it,
        n_grad: cnt.n_grad,
        n_energy: cnt.n_energy,
        energy_start,
        grad_map_start,
    }
}
