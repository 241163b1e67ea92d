//! The CPU backend: nalgebra matrices in `f64` or `f32`. It is the correctness oracle every
//! other backend is tested against, and the fallback when no GPU is present.

use super::{elem_op, Backend, GradientRule, Operand, OptPass, Projection, Reduction, UpdateRule};
use crate::autograd::EnergySpec;
use crate::element::{cast_from_f64, cast_to_f64, Element};
use crate::energy::{nonneg_in_place, EnergyTerms};
use crate::error::Result;
use crate::linalg;
use crate::params::{InvSqrtMethod, NonNeg, Precision};
use crate::retract::{inv_sqrt_corrected, retract_into, RetractOptions, RetractWorkspace};
use nalgebra::DMatrix;

/// The nalgebra backend, computing in element type `T` (`f64` or `f32`).
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::backend::{cpu::CpuBackend, Backend, Reduction};
/// let mut be = CpuBackend::<f64>::new();
/// let y = be.upload(&DMatrix::from_element(3, 2, 2.0)).unwrap();
/// assert_eq!(be.reduce(&[Reduction::NormSq(&y)]).unwrap(), vec![24.0]);
/// ```
#[derive(Clone, Debug)]
pub struct CpuBackend<T: Element> {
    k: usize,
    gram: DMatrix<T>,
    small: DMatrix<T>,
    retract_ws: RetractWorkspace<T>,
}

impl<T: Element> Default for CpuBackend<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Element> CpuBackend<T> {
    /// A backend with empty workspace (sized on first use for each column count).
    pub fn new() -> Self {
        CpuBackend {
            k: 0,
            gram: DMatrix::zeros(0, 0),
            small: DMatrix::zeros(0, 0),
            retract_ws: RetractWorkspace::new(0),
        }
    }

    fn size_for(&mut self, k: usize) {
        if self.k != k || self.gram.nrows() != k {
            self.k = k;
            self.gram = DMatrix::zeros(k, k);
            self.small = DMatrix::zeros(k, k);
            self.retract_ws = RetractWorkspace::new(k);
        }
    }
}

fn sym_in_place<T: Element>(m: &mut DMatrix<T>) {
    let k = m.nrows();
    let half = T::of(0.5);
    for i in 0..k {
        for j in (i + 1)..k {
            let v = (m[(i, j)] + m[(j, i)]) * half;
            m[(i, j)] = v;
            m[(j, i)] = v;
        }
    }
}

impl<T: Element> CpuBackend<T> {
    /// `out ← out − M·sym(MᵀG)` with `M = y` (reference projections).
    fn project_with_y(&mut self, y: &DMatrix<T>, out: &mut DMatrix<T>) {
        linalg::gram_into(y, out, &mut self.small);
        sym_in_place(&mut self.small);
        linalg::mul_small_into(y, &self.small, -T::one(), T::one(), out);
    }

    /// `out ← out − Q·sym(QᵀG)` with `Q = Y·T` the polar factor of `Y`, using only k×k work:
    /// `Q·sym(QᵀG) = Y·T·sym(T·YᵀG)`.
    fn project_with_polar(&mut self, y: &DMatrix<T>, out: &mut DMatrix<T>) {
        linalg::gram_into(y, y, &mut self.gram);
        if linalg::trace(&self.gram) <= 0.0 {
            return;
        }
        // the same (S + δI)^{-1/2} as the corrected retraction
        let d = RetractOptions::default();
        let t = inv_sqrt_corrected(&self.gram, InvSqrtMethod::Auto, d.eig_thresh, None);
        linalg::gram_into(y, out, &mut self.small);
        let mut m = &t * &self.small;
        sym_in_place(&mut m);
        let tm = &t * &m;
        linalg::mul_small_into(y, &tm, -T::one(), T::one(), out);
    }
}

/// torch_optimizer's SGDP/AdamP projection of the direction `dir`: when every row's cosine
/// `|⟨g,p⟩|/(‖g‖+ε)/(‖p‖+ε)` is below `δ/√k`, the radial part of each row is removed;
/// otherwise, when the whole matrix's cosine is below `δ/√(pk)`, the radial part of the whole
/// matrix. Returns whether a projection fired (then the weight decay is scaled by
/// `wd_ratio`).
fn radial_projection<T: Element>(
    param: &DMatrix<T>,
    grad: &DMatrix<T>,
    out: &mut DMatrix<T>,
    eps: f64,
    delta: f64,
) -> bool {
    let (p_rows, k) = param.shape();
    let eps_t = T::of(eps);
    // channel view: rows of the parameter; layer view: the whole matrix
    // torch_optimizer's SGDP._cosine_similarity: |Σ g·p| / (‖g‖ + ε) / (‖p‖ + ε)
    let mut max_cos = T::zero();
    for i in 0..p_rows {
        let (mut gg, mut pp, mut gp) = (T::zero(), T::zero(), T::zero());
        for j in 0..k {
            gg += grad[(i, j)] * grad[(i, j)];
            pp += param[(i, j)] * param[(i, j)];
            gp += grad[(i, j)] * param[(i, j)];
        }
        let c = gp.abs() / (gg.sqrt() + eps_t) / (pp.sqrt() + eps_t);
        max_cos = max_cos.max(c);
    }
    if max_cos.as_f64() < delta / (k as f64).sqrt() {
        for i in 0..p_rows {
            let mut pp = T::zero();
            for j in 0..k {
                pp += param[(i, j)] * param[(i, j)];
            }
            let pn = pp.sqrt() + eps_t;
            let mut s = T::zero();
            for j in 0..k {
                s += param[(i, j)] / pn * out[(i, j)];
            }
            for j in 0..k {
                let v = param[(i, j)] / pn * s;
                out[(i, j)] -= v;
            }
        }
        return true;
    }
    let gn = linalg::sum_sq(grad.as_slice()).sqrt() + eps_t;
    let pn = linalg::sum_sq(param.as_slice()).sqrt() + eps_t;
    let c = linalg::dot(grad.as_slice(), param.as_slice()).abs() / gn / pn;
    if c.as_f64() < delta / ((p_rows * k) as f64).sqrt() {
        let mut s = T::zero();
        for (p, d) in param.iter().zip(out.iter()) {
            s += *p / pn * *d;
        }
        out.zip_apply(param, |o, p| *o -= p / pn * s);
        return true;
    }
    false
}

/// Runs one optimizer pass (see [`UpdateRule::passes`]) on the host.
fn run_pass<T: Element>(
    pass: &OptPass,
    param: &DMatrix<T>,
    grad: &DMatrix<T>,
    state: &mut [DMatrix<T>],
    out: &mut DMatrix<T>,
) {
    fn take<T: Element>(
        which: Operand,
        state: &mut [DMatrix<T>],
        out: &mut DMatrix<T>,
    ) -> DMatrix<T> {
        // an empty matrix does not allocate
        let slot = match which {
            Operand::Out => out,
            Operand::State(i) => &mut state[i],
            Operand::Param | Operand::Grad => unreachable!("parameter and gradient are read-only"),
        };
        std::mem::replace(slot, DMatrix::zeros(0, 0))
    }
    fn put<T: Element>(
        which: Operand,
        m: DMatrix<T>,
        state: &mut [DMatrix<T>],
        out: &mut DMatrix<T>,
    ) {
        match which {
            Operand::Out => *out = m,
            Operand::State(i) => state[i] = m,
            Operand::Param | Operand::Grad => unreachable!(),
        }
    }
    match *pass {
        OptPass::Elem {
            op,
            dst,
            src,
            c,
            init,
        } => {
            let mut d = take(dst, state, out);
            let resolve = |o: Option<Operand>| -> Option<&[T]> {
                o.map(|o| match o {
                    Operand::Param => param.as_slice(),
                    Operand::Grad => grad.as_slice(),
                    Operand::Out => out.as_slice(),
                    Operand::State(i) => state[i].as_slice(),
                })
            };
            let (a, b, cc) = (resolve(src[0]), resolve(src[1]), resolve(src[2]));
            let k = c.map(T::of);
            let init = init.map(T::of);
            let zero = T::zero();
            let at = |s: Option<&[T]>, i: usize| s.map_or(zero, |s| s[i]);
            for (i, dv) in d.as_mut_slice().iter_mut().enumerate() {
                let old = init.unwrap_or(*dv);
                *dv = elem_op(op, old, at(a, i), at(b, i), at(cc, i), &k);
            }
            put(dst, d, state, out);
        }
        OptPass::Copy { src, dst } => {
            let mut d = take(dst, state, out);
            match src {
                Operand::Param => d.copy_from(param),
                Operand::Grad => d.copy_from(grad),
                Operand::Out => d.copy_from(out),
                Operand::State(i) => d.copy_from(&state[i]),
            }
            put(dst, d, state, out);
        }
        OptPass::Project { eps, delta, step } => {
            radial_projection(param, grad, out, eps, delta);
            let s = T::of(step);
            out.zip_apply(param, |o, p| *o = p - s * *o);
        }
    }
}

impl<T: Element> Backend for CpuBackend<T> {
    type Mat = DMatrix<T>;

    fn name(&self) -> String {
        format!("cpu-{}", T::NAME)
    }

    fn precision(&self) -> Precision {
        if T::NAME == "f32" {
            Precision::F32
        } else {
            Precision::F64
        }
    }

    fn upload(&mut self, m: &DMatrix<f64>) -> Result<DMatrix<T>> {
        Ok(cast_from_f64(m))
    }

    fn download(&mut self, m: &DMatrix<T>) -> Result<DMatrix<f64>> {
        Ok(cast_to_f64(m))
    }

    fn zeros(&mut self, p: usize, k: usize) -> Result<DMatrix<T>> {
        Ok(DMatrix::zeros(p, k))
    }

    fn copy(&mut self, src: &DMatrix<T>, dst: &mut DMatrix<T>) {
        dst.copy_from(src);
    }

    fn lincomb(&mut self, a: f64, x: &DMatrix<T>, b: f64, y: &DMatrix<T>, dst: &mut DMatrix<T>) {
        let (a, b) = (T::of(a), T::of(b));
        for ((d, xv), yv) in dst
            .as_mut_slice()
            .iter_mut()
            .zip(x.as_slice())
            .zip(y.as_slice())
        {
            *d = a * *xv + b * *yv;
        }
    }

    fn lerp(&mut self, base: &DMatrix<T>, toward: &DMatrix<T>, alpha: f64, dst: &mut DMatrix<T>) {
        let a = T::of(alpha);
        for ((d, b), t) in dst
            .as_mut_slice()
            .iter_mut()
            .zip(base.as_slice())
            .zip(toward.as_slice())
        {
            *d = *b + a * (*t - *b);
        }
    }

    fn nonneg(&mut self, m: &mut DMatrix<T>, mode: NonNeg) {
        nonneg_in_place(m, mode);
    }

    fn retract(&mut self, src: &DMatrix<T>, dst: &mut DMatrix<T>, options: &RetractOptions) {
        self.size_for(src.ncols());
        retract_into(src, dst, options, &mut self.retract_ws);
    }

    fn gradient(
        &mut self,
        y: &DMatrix<T>,
        x0: &DMatrix<T>,
        rule: &GradientRule,
        out: &mut DMatrix<T>,
    ) {
        let k = y.ncols();
        self.size_for(k);
        linalg::gram_into(y, y, &mut self.gram);
        let n = linalg::sum_sq(y.as_slice()).as_f64();
        let orth_active = n > 1e-12 && (rule.simplified.map_or(rule.orth != 0.0, |c| c != 0.0));
        let fid = T::of(rule.fid);
        if orth_active {
            // M = S − Diag(d): the off-diagonal part of the Gram matrix.
            self.small.copy_from(&self.gram);
            // ‖diag S‖² in the working precision, like ‖S‖²: their difference is the
            // off-diagonal mass, which must be exactly 0 when k = 1 (an f64 ‖diag‖² against
            // an f32 ‖S‖² leaves a rounding residue that the reference's 1/defect₀ weight
            // then multiplies by up to 1e8)
            let mut diag_sq_t = T::zero();
            for j in 0..k {
                let d = self.small[(j, j)];
                diag_sq_t += d * d;
                self.small[(j, j)] = T::zero();
            }
            let diag_sq = diag_sq_t.as_f64();
            let (alpha, radial) = match rule.simplified {
                Some(c) => (c, 0.0),
                None => {
                    let fro = linalg::sum_sq(self.gram.as_slice()).as_f64();
                    let defect = (fro - diag_sq) / (n * n);
                    (rule.orth / (n * n), -rule.orth * defect / n)
                }
            };
            linalg::mul_small_into(y, &self.small, T::of(alpha), T::zero(), out);
            let radial = T::of(radial);
            if radial != T::zero() {
                out.zip_apply(y, |o, yv| *o += radial * yv);
            }
            if rule.projection == Projection::ReferenceOrthOnly {
                self.project_with_y(y, out);
            }
            out.zip_zip_apply(y, x0, |o, yv, xv| *o += fid * (yv - xv));
        } else {
            out.zip_zip_apply(y, x0, |o, yv, xv| *o = fid * (yv - xv));
        }
        match rule.projection {
            Projection::ReferenceFull => self.project_with_y(y, out),
            Projection::PolarFull => self.project_with_polar(y, out),
            Projection::None | Projection::ReferenceOrthOnly => {}
        }
    }

    fn optimizer_step(
        &mut self,
        rule: &UpdateRule,
        param: &DMatrix<T>,
        grad: &DMatrix<T>,
        state: &mut [DMatrix<T>],
        lr: f64,
        out: &mut DMatrix<T>,
    ) {
        let lr_t = T::of(lr);
        match *rule {
            UpdateRule::Sgd => out.zip_zip_apply(param, grad, |o, p, g| *o = p - lr_t * g),
            UpdateRule::Sgdp {
                momentum,
                dampening,
                eps,
                weight_decay,
                delta,
                wd_ratio,
                nesterov,
            } => {
                let buf = &mut state[0];
                let mu = T::of(momentum);
                let damp = T::one() - T::of(dampening);
                buf.zip_apply(grad, |b, g| *b = *b * mu + g * damp);
                // out holds the direction d_p until the final update
                if nesterov {
                    out.zip_zip_apply(grad, buf, |o, g, b| *o = g + mu * b);
                } else {
                    out.copy_from(buf);
                }
                let wd = if radial_projection(param, grad, out, eps, delta) {
                    wd_ratio
                } else {
                    1.0
                };
                let decay = if weight_decay != 0.0 {
                    T::of(1.0 - lr * weight_decay * wd / (1.0 - momentum))
                } else {
                    T::one()
                };
                out.zip_apply(param, |o, p| *o = p * decay - lr_t * *o);
            }
            _ => {
                for pass in rule.passes(lr) {
                    run_pass(&pass, param, grad, state, out);
                }
            }
        }
    }

    fn reduce_into(
        &mut self,
        requests: &[Reduction<'_, DMatrix<T>>],
        out: &mut Vec<f64>,
    ) -> Result<()> {
        out.clear();
        for r in requests {
            match *r {
                Reduction::EnergyTerms { y, target } => {
                    self.size_for(y.ncols());
                    let t = EnergyTerms::compute(y, target, &mut self.gram);
                    out.extend([t.dist_sq, t.gram_fro_sq, t.gram_diag_sq, t.norm_sq]);
                }
                Reduction::NormSq(m) => out.push(linalg::sum_sq(m.as_slice()).as_f64()),
                Reduction::Dot(a, b) => out.push(linalg::dot(a.as_slice(), b.as_slice()).as_f64()),
                Reduction::AllFinite(m) => out.push(if linalg::all_finite(m.as_slice()) {
                    1.0
                } else {
                    0.0
                }),
                Reduction::DistSq(a, b) => {
                    out.push(linalg::dist_sq(a.as_slice(), b.as_slice()).as_f64())
                }
                // stops at the first difference: most candidates differ at their first entry
                Reduction::AnyDiffer(a, b) => out.push(
                    if a.as_slice().iter().zip(b.as_slice()).any(|(x, y)| x != y) {
                        1.0
                    } else {
                        0.0
                    },
                ),
                Reduction::AbsSum(m) => out.push(m.iter().map(|v| v.as_f64().abs()).sum()),
                Reduction::CountAbove {
                    m,
                    scale,
                    threshold,
                } => {
                    let s = T::of(scale);
                    let th = T::of(threshold);
                    out.push(m.iter().filter(|v| (**v * s).abs() > th).count() as f64)
                }
                Reduction::FreeNormSq { y, g } => {
                    let mut acc = 0.0f64;
                    for (yv, gv) in y.iter().zip(g.iter()) {
                        if *yv > T::zero() || *gv < T::zero() {
                            let v = gv.as_f64();
                            acc += v * v;
                        }
                    }
                    out.push(acc);
                }
                Reduction::GradMapSq { y, g, t, clamp } => {
                    let tt = T::of(t);
                    let mut acc = 0.0f64;
                    for (yv, gv) in y.iter().zip(g.iter()) {
                        let mut z = *yv - tt * *gv;
                        if clamp && z < T::zero() {
                            z = T::zero();
                        }
                        let d = (z - *yv).as_f64();
                        acc += d * d;
                    }
                    out.push(acc);
                }
            }
        }
        Ok(())
    }
}

impl<T: Element> crate::autograd::DifferentiableBackend for CpuBackend<T> {
    fn energy_gradient(
        &mut self,
        y: &DMatrix<T>,
        x0: &DMatrix<T>,
        spec: &EnergySpec,
        terms: &EnergyTerms,
        x0_norm_sq: f64,
        out: &mut DMatrix<T>,
    ) {
        self.size_for(y.ncols());
        let coefs = spec.gradient_coefficients(terms, x0_norm_sq);
        crate::autograd::grad::energy_grad_into(y, x0, &coefs, &mut self.gram, out);
    }

    fn nonneg_backward(&mut self, pre: &DMatrix<T>, mode: NonNeg, g: &mut DMatrix<T>) {
        crate::autograd::grad::nonneg_backward_in_place(pre, mode, g);
    }

    fn retract_backward(
        &mut self,
        y: &DMatrix<T>,
        options: &RetractOptions,
        g: &DMatrix<T>,
        out: &mut DMatrix<T>,
    ) {
        crate::autograd::grad::retract_backward_into(y, options, g, out);
    }
}
