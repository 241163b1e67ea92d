//! The optimizers of the reference's `get_torch_optimizer`, on the host (f64): torch 2.x and
//! torch_optimizer 0.3.0 update rules with the reference's constructor choices. Work in
//! progress for issue 4 (host side of the registry): every name but padam (an error, as in the
//! reference) matches torch's trajectories; [`Lbfgs`] takes a closure. Device kernels, the
//! wiring into `nsa_flow` and `optimizers()` follow.

use crate::error::{NsaError, Result};
use nalgebra::DMatrix;

/// Every name `get_torch_optimizer` lists, sorted as its `return_list=True` answer.
pub const OPTIMIZER_NAMES: [&str; 22] = [
    "adabound",
    "adagrad",
    "adam",
    "adamax",
    "adamp",
    "adamw",
    "asgd",
    "lars",
    "lbfgs",
    "lookahead",
    "nadam",
    "padam",
    "pid",
    "qhadam",
    "qhm",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
    "sgd_nesterov",
    "sgdp",
    "yogi",
];

/// One optimizer with its state, stepping a p×k parameter with a given gradient.
#[derive(Clone, Debug)]
pub struct TorchOptimizer {
    kind: Kind,
    lr: f64,
    step: u64,
    a: Option<DMatrix<f64>>,
    b: Option<DMatrix<f64>>,
    c: Option<DMatrix<f64>>,
    scalars: [f64; 2],
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Sgd { momentum: f64, nesterov: bool },
    Adam { weight_decay: f64 },
    Adamax,
    Adagrad,
    Rmsprop,
    Asgd,
    Nadam,
    Radam,
    Rprop,
    Yogi,
    Qhm,
    Qhadam,
    Adabound,
    Adamp,
    Lookahead,
    Sgdp,
}

const B1: f64 = 0.9;
const B2: f64 = 0.999;

impl TorchOptimizer {
    /// The optimizer `get_torch_optimizer(name, [P], lr)` builds. `padam` is an error (the
    /// reference raises: torch_optimizer 0.3.0 has no PAdam), and so is a name not yet
    /// implemented here.
    pub fn new(name: &str, lr: f64) -> Result<TorchOptimizer> {
        let kind = match name {
            "sgd" => Kind::Sgd { momentum: 0.9, nesterov: false },
            "sgd_nesterov" => Kind::Sgd { momentum: 0.9, nesterov: true },
            "lars" => Kind::Sgd { momentum: 0.0, nesterov: false },
            "adam" => Kind::Adam { weight_decay: 0.0 },
            "adamw" => Kind::Adam { weight_decay: 1e-2 },
            "adamax" => Kind::Adamax,
            "adagrad" => Kind::Adagrad,
            "rmsprop" => Kind::Rmsprop,
            "asgd" => Kind::Asgd,
            "nadam" => Kind::Nadam,
            "radam" => Kind::Radam,
            "rprop" => Kind::Rprop,
            "yogi" => Kind::Yogi,
            "qhm" => Kind::Qhm,
            "qhadam" => Kind::Qhadam,
            "adabound" => Kind::Adabound,
            "adamp" => Kind::Adamp,
            "lookahead" => Kind::Lookahead,
            "sgdp" => Kind::Sgdp,
            // PID with torch_optimizer's default momentum 0 uses neither buffer: plain SGD
            "pid" => Kind::Sgd { momentum: 0.0, nesterov: false },
            "padam" => {
                return Err(NsaError::InvalidParameter {
                    name: "optimizer",
                    reason: "padam does not exist in torch_optimizer 0.3.0 (the reference raises AttributeError)".into(),
                })
            }
            other => {
                return Err(NsaError::UnknownName {
                    kind: "optimizer (implemented so far)",
                    name: other.into(),
                    expected: "sgd, sgd_nesterov, lars, adam, adamw, adamax, adagrad, rmsprop, asgd, nadam, radam, rprop, yogi, qhm, qhadam, adabound, adamp, pid, lookahead, sgdp".into(),
                })
            }
        };
        Ok(TorchOptimizer {
            kind,
            lr,
            step: 0,
            a: None,
            b: None,
            c: None,
            scalars: [0.0; 2],
        })
    }

    /// One `optimizer.step()` with `p.grad = g`.
    pub fn step(&mut self, p: &mut DMatrix<f64>, g: &DMatrix<f64>) {
        self.step += 1;
        let t = self.step as f64;
        let lr = self.lr;
        let (rows, cols) = p.shape();
        let zeros = || DMatrix::zeros(rows, cols);
        match self.kind {
            Kind::Sgd { momentum, nesterov } => {
                if momentum == 0.0 {
                    p.zip_apply(g, |x, gv| *x -= lr * gv);
                    return;
                }
                let buf = match self.a.as_mut() {
                    None => {
                        self.a = Some(g.clone());
                        self.a.as_mut().unwrap()
                    }
                    Some(b) => {
                        b.zip_apply(g, |bv, gv| *bv = *bv * momentum + gv);
                        b
                    }
                };
                if nesterov {
                    p.zip_zip_apply(g, buf, |x, gv, bv| *x += -lr * (gv + momentum * bv));
                } else {
                    p.zip_apply(buf, |x, bv| *x += -lr * bv);
                }
            }
            Kind::Adam { weight_decay } => {
                adam_update(p, g, &mut self.a, &mut self.b, t, lr, weight_decay)
            }
            Kind::Lookahead => {
                // torch_optimizer Lookahead(Adam, k = 5, alpha = 0.5): after the inner step,
                // every k-th step (the first included) blends with the slow weights
                let (k_steps, alpha) = (5.0, 0.5);
                adam_update(p, g, &mut self.a, &mut self.b, t, lr, 0.0);
                if self.scalars[0] == 0.0 {
                    let slow = self.c.get_or_insert_with(|| p.clone());
                    p.zip_apply(slow, |x, sv| *x = *x * alpha + sv * (1.0 - alpha));
                    slow.copy_from(p);
                }
                self.scalars[0] = (self.scalars[0] + 1.0) % k_steps;
            }
            Kind::Sgdp => {
                // torch_optimizer defaults; the arithmetic is the backends' own SGDP rule
                use crate::backend::{cpu::CpuBackend, Backend, UpdateRule};
                let rule = UpdateRule::Sgdp {
                    momentum: 0.0,
                    dampening: 0.0,
                    eps: 1e-8,
                    weight_decay: 0.0,
                    delta: 0.1,
                    wd_ratio: 0.1,
                    nesterov: false,
                };
                let buf = self.a.get_or_insert_with(zeros);
                let mut out = DMatrix::zeros(rows, cols);
                CpuBackend::<f64>::new().optimizer_step(
                    &rule,
                    p,
                    g,
                    std::slice::from_mut(buf),
                    lr,
                    &mut out,
                );
                p.copy_from(&out);
            }
            Kind::Adamax => {
                let m = self.a.get_or_insert_with(zeros);
                m.zip_apply(g, |mv, gv| *mv += (gv - *mv) * (1.0 - B1));
                let u = self.b.get_or_insert_with(zeros);
                u.zip_apply(g, |uv, gv| *uv = (*uv * B2).max(gv.abs() + 1e-8));
                let clr = lr / (1.0 - B1.powf(t));
                let (m, u) = (self.a.as_ref().unwrap(), self.b.as_ref().unwrap());
                p.zip_zip_apply(m, u, |x, mv, uv| *x += -clr * (mv / uv));
            }
            Kind::Adagrad => {
                let s = self.a.get_or_insert_with(zeros);
                s.zip_apply(g, |sv, gv| *sv += gv * gv);
                let s = self.a.as_ref().unwrap();
                p.zip_zip_apply(g, s, |x, gv, sv| *x += -lr * (gv / (sv.sqrt() + 1e-10)));
            }
            Kind::Rmsprop => {
                let alpha = 0.99;
                let s = self.a.get_or_insert_with(zeros);
                s.zip_apply(g, |sv, gv| *sv = *sv * alpha + (1.0 - alpha) * gv * gv);
                let s = self.a.as_ref().unwrap();
                p.zip_zip_apply(g, s, |x, gv, sv| *x += -lr * (gv / (sv.sqrt() + 1e-8)));
            }
            Kind::Asgd => {
                let (lambd, alpha, t0) = (1e-4, 0.75, 1e6);
                if self.step == 1 {
                    self.scalars = [lr, 1.0]; // eta, mu
                }
                let eta = self.scalars[0];
                p.apply(|x| *x *= 1.0 - lambd * eta);
                p.zip_apply(g, |x, gv| *x += -eta * gv);
                // the averaged iterate ax (not returned by step) is kept for completeness
                let mu = self.scalars[1];
                match self.a.as_mut() {
                    Some(ax) if mu != 1.0 => ax.zip_apply(p, |a, x| *a += (x - *a) * mu),
                    Some(ax) => ax.copy_from(p),
                    None => self.a = Some(p.clone()),
                }
                self.scalars[0] = lr / (1.0 + lambd * lr * t).powf(alpha);
                self.scalars[1] = 1.0 / (t - t0).max(1.0);
            }
            Kind::Nadam => {
                let psi = 4e-3;
                if self.step == 1 {
                    self.scalars[0] = 1.0; // mu_product
                }
                let bc2 = 1.0 - B2.powf(t);
                let mu = B1 * (1.0 - 0.5 * 0.96f64.powf(t * psi));
                let mu_next = B1 * (1.0 - 0.5 * 0.96f64.powf((t + 1.0) * psi));
                self.scalars[0] *= mu;
                let mu_product = self.scalars[0];
                let mu_product_next = mu_product * mu_next;
                let m = self.a.get_or_insert_with(zeros);
                m.zip_apply(g, |mv, gv| *mv += (gv - *mv) * (1.0 - B1));
                let v = self.b.get_or_insert_with(zeros);
                v.zip_apply(g, |vv, gv| *vv = *vv * B2 + (1.0 - B2) * gv * gv);
                let (m, v) = (self.a.as_ref().unwrap(), self.b.as_ref().unwrap());
                let c1 = -lr * (1.0 - mu) / (1.0 - mu_product);
                let c2 = -lr * mu_next / (1.0 - mu_product_next);
                for i in 0..p.len() {
                    let denom = (v[i] / bc2).sqrt() + 1e-8;
                    p[i] += c1 * (g[i] / denom);
                    p[i] += c2 * (m[i] / denom);
                }
            }
            Kind::Radam => {
                let m = self.a.get_or_insert_with(zeros);
                m.zip_apply(g, |mv, gv| *mv += (gv - *mv) * (1.0 - B1));
                let v = self.b.get_or_insert_with(zeros);
                v.zip_apply(g, |vv, gv| *vv = *vv * B2 + (1.0 - B2) * gv * gv);
                let bc1 = 1.0 - B1.powf(t);
                let bc2 = 1.0 - B2.powf(t);
                let rho_inf = 2.0 / (1.0 - B2) - 1.0;
                let rho_t = rho_inf - 2.0 * t * B2.powf(t) / bc2;
                let (m, v) = (self.a.as_ref().unwrap(), self.b.as_ref().unwrap());
                if rho_t > 5.0 {
                    let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                        / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                        .sqrt();
                    let sbc2 = bc2.sqrt();
                    p.zip_zip_apply(m, v, |x, mv, vv| {
                        let adaptive = sbc2 / (vv.sqrt() + 1e-8);
                        *x -= mv / bc1 * lr * adaptive * rect;
                    });
                } else {
                    p.zip_apply(m, |x, mv| *x -= mv / bc1 * lr);
                }
            }
            Kind::Yogi => {
                // torch_optimizer 0.3.0 defaults: eps 1e-3, initial accumulator 1e-6
                let init = || DMatrix::from_element(rows, cols, 1e-6);
                let m = self.a.get_or_insert_with(init);
                m.zip_apply(g, |mv, gv| *mv = *mv * B1 + gv * (1.0 - B1));
                let v = self.b.get_or_insert_with(init);
                v.zip_apply(g, |vv, gv| {
                    let g2 = gv * gv;
                    *vv += (*vv - g2).signum_or_zero() * g2 * -(1.0 - B2);
                });
                let bc1 = 1.0 - B1.powf(t);
                let sbc2 = (1.0 - B2.powf(t)).sqrt();
                let step_size = lr / bc1;
                let (m, v) = (self.a.as_ref().unwrap(), self.b.as_ref().unwrap());
                p.zip_zip_apply(m, v, |x, mv, vv| {
                    *x += -step_size * (mv / (vv.sqrt() / sbc2 + 1e-3))
                });
            }
            Kind::Qhm => {
                // momentum 0, nu 0.7 (torch_optimizer defaults)
                let (momentum, nu) = (0.0, 0.7);
                let buf = self.a.get_or_insert_with(zeros);
                buf.zip_apply(g, |bv, gv| *bv = *bv * momentum + gv * (1.0 - momentum));
                let buf = self.a.as_ref().unwrap();
                p.zip_apply(buf, |x, bv| *x += bv * (-lr * nu));
                p.zip_apply(g, |x, gv| *x += gv * (-lr * (1.0 - nu)));
            }
            Kind::Qhadam => {
                // nus (1, 1), eps 1e-8
                self.scalars[0] = 1.0 + B1 * self.scalars[0];
                self.scalars[1] = 1.0 + B2 * self.scalars[1];
                let b1_adj = 1.0 - 1.0 / self.scalars[0];
                let b2_adj = 1.0 - 1.0 / self.scalars[1];
                let m = self.a.get_or_insert_with(zeros);
                m.zip_apply(g, |mv, gv| *mv = *mv * b1_adj + gv * (1.0 - b1_adj));
                let v = self.b.get_or_insert_with(zeros);
                v.zip_apply(g, |vv, gv| *vv = *vv * b2_adj + (gv * gv) * (1.0 - b2_adj));
                let (m, v) = (self.a.as_ref().unwrap(), self.b.as_ref().unwrap());
                p.zip_zip_apply(m, v, |x, mv, vv| {
                    *x += -lr * ((mv * 1.0) / ((vv * 1.0).sqrt() + 1e-8))
                });
            }
            Kind::Adabound => {
                // final_lr 0.1 (scaled by lr / base_lr = 1), gamma 1e-3, eps 1e-8
                let (final_lr, gamma) = (0.1, 1e-3);
                let m = self.a.get_or_insert_with(zeros);
                m.zip_apply(g, |mv, gv| *mv = *mv * B1 + gv * (1.0 - B1));
                let v = self.b.get_or_insert_with(zeros);
                v.zip_apply(g, |vv, gv| *vv = *vv * B2 + gv * gv * (1.0 - B2));
                let bc1 = 1.0 - B1.powf(t);
                let bc2 = 1.0 - B2.powf(t);
                let step_size = lr * bc2.sqrt() / bc1;
                let lower = final_lr * (1.0 - 1.0 / (gamma * t + 1.0));
                let upper = final_lr * (1.0 + 1.0 / (gamma * t));
                let (m, v) = (self.a.as_ref().unwrap(), self.b.as_ref().unwrap());
                p.zip_zip_apply(m, v, |x, mv, vv| {
                    let s = (step_size / (vv.sqrt() + 1e-8)).clamp(lower, upper) * mv;
                    *x += -s;
                });
            }
            Kind::Adamp => {
                let (eps, delta) = (1e-8, 0.1);
                let m = self.a.get_or_insert_with(zeros);
                m.zip_apply(g, |mv, gv| *mv = *mv * B1 + gv * (1.0 - B1));
                let v = self.b.get_or_insert_with(zeros);
                v.zip_apply(g, |vv, gv| *vv = *vv * B2 + gv * gv * (1.0 - B2));
                let bc1 = 1.0 - B1.powf(t);
                let sbc2 = (1.0 - B2.powf(t)).sqrt();
                let step_size = lr / bc1;
                let (m, v) = (self.a.as_ref().unwrap(), self.b.as_ref().unwrap());
                let mut perturb = m.zip_map(v, |mv, vv| mv / (vv.sqrt() / sbc2 + eps));
                // the projection of torch_optimizer's AdamP/SGDP: per row (channel view), else
                // the whole matrix (layer view), when the gradient is nearly orthogonal to p
                let cos = |gs: &[f64], ps: &[f64]| {
                    let gn = gs.iter().map(|x| x * x).sum::<f64>().sqrt() + eps;
                    let pn = ps.iter().map(|x| x * x).sum::<f64>().sqrt() + eps;
                    let dot: f64 = gs.iter().zip(ps).map(|(a, b)| a * b).sum();
                    dot.abs() / gn / pn
                };
                let rows: Vec<(Vec<f64>, Vec<f64>)> = (0..rows)
                    .map(|i| {
                        (
                            g.row(i).iter().copied().collect(),
                            p.row(i).iter().copied().collect(),
                        )
                    })
                    .collect();
                let max_row = rows
                    .iter()
                    .map(|(gr, pr)| cos(gr, pr))
                    .fold(0.0f64, f64::max);
                if max_row < delta / (cols as f64).sqrt() {
                    for (i, (_, pr)) in rows.iter().enumerate() {
                        let pn = pr.iter().map(|x| x * x).sum::<f64>().sqrt() + eps;
                        let s: f64 = (0..cols).map(|j| pr[j] / pn * perturb[(i, j)]).sum();
                        for j in 0..cols {
                            perturb[(i, j)] -= pr[j] / pn * s;
                        }
                    }
                } else {
                    let gs: Vec<f64> = g.transpose().iter().copied().collect();
                    let ps: Vec<f64> = p.transpose().iter().copied().collect();
                    if cos(&gs, &ps) < delta / ((rows.len() * cols) as f64).sqrt() {
                        let pn = ps.iter().map(|x| x * x).sum::<f64>().sqrt() + eps;
                        let s: f64 = p.iter().zip(perturb.iter()).map(|(a, b)| a / pn * b).sum();
                        let pc = p.clone();
                        perturb.zip_apply(&pc, |d, x| *d -= x / pn * s);
                    }
                }
                p.zip_apply(&perturb, |x, d| *x += -step_size * d);
            }
            Kind::Rprop => {
                let (etaminus, etaplus, smin, smax) = (0.5, 1.2, 1e-6, 50.0);
                let prev = self.a.get_or_insert_with(zeros);
                let step_size = self
                    .b
                    .get_or_insert_with(|| DMatrix::from_element(rows, cols, lr));
                for i in 0..p.len() {
                    let s = (g[i] * prev[i]).signum_or_zero();
                    let factor = if s > 0.0 {
                        etaplus
                    } else if s < 0.0 {
                        etaminus
                    } else {
                        1.0
                    };
                    step_size[i] = (step_size[i] * factor).clamp(smin, smax);
                    let gi = if factor == etaminus { 0.0 } else { g[i] };
                    p[i] += -(gi.signum_or_zero() * step_size[i]);
                    prev[i] = gi;
                }
            }
        }
    }
}

/// torch.optim.Adam (betas 0.9, 0.999, eps 1e-8), with AdamW's decoupled decay when
/// `weight_decay` is not 0.
fn adam_update(
    p: &mut DMatrix<f64>,
    g: &DMatrix<f64>,
    m: &mut Option<DMatrix<f64>>,
    v: &mut Option<DMatrix<f64>>,
    t: f64,
    lr: f64,
    weight_decay: f64,
) {
    if weight_decay != 0.0 {
        p.apply(|x| *x *= 1.0 - lr * weight_decay);
    }
    let (rows, cols) = p.shape();
    let m = m.get_or_insert_with(|| DMatrix::zeros(rows, cols));
    m.zip_apply(g, |mv, gv| *mv += (gv - *mv) * (1.0 - B1));
    let v = v.get_or_insert_with(|| DMatrix::zeros(rows, cols));
    v.zip_apply(g, |vv, gv| *vv = *vv * B2 + (1.0 - B2) * gv * gv);
    let step_size = lr / (1.0 - B1.powf(t));
    let bc2_sqrt = (1.0 - B2.powf(t)).sqrt();
    p.zip_zip_apply(m, v, |x, mv, vv| {
        let denom = vv.sqrt() / bc2_sqrt + 1e-8;
        *x += -step_size * (mv / denom);
    });
}

trait SignumOrZero {
    fn signum_or_zero(self) -> f64;
}

impl SignumOrZero for f64 {
    /// torch's `sign`: 0 at 0 (Rust's `signum` gives ±1 there).
    fn signum_or_zero(self) -> f64 {
        if self > 0.0 {
            1.0
        } else if self < 0.0 {
            -1.0
        } else {
            0.0
        }
    }
}

/// torch.optim.LBFGS as the reference constructs it (`max_iter = 10`, so at most 12
/// evaluations per step; no line search: a fixed step `lr`, the first scaled by
/// `min(1, 1/‖g‖₁)`; history 100; tolerances 1e-7 on the gradient and 1e-9 on changes),
/// stepped with a closure that re-evaluates the loss and its gradient, as LBFGS requires.
#[derive(Clone, Debug)]
pub struct Lbfgs {
    lr: f64,
    n_iter: usize,
    d: Vec<f64>,
    t: f64,
    old_dirs: Vec<Vec<f64>>,
    old_stps: Vec<Vec<f64>>,
    ro: Vec<f64>,
    h_diag: f64,
    prev_flat_grad: Option<Vec<f64>>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Row-major flattening (torch's `view(-1)` of a p×k tensor).
fn flat(m: &DMatrix<f64>) -> Vec<f64> {
    m.transpose().iter().copied().collect()
}

impl Lbfgs {
    /// A new optimizer with learning rate `lr`.
    pub fn new(lr: f64) -> Lbfgs {
        Lbfgs {
            lr,
            n_iter: 0,
            d: Vec::new(),
            t: 0.0,
            old_dirs: Vec::new(),
            old_stps: Vec::new(),
            ro: Vec::new(),
            h_diag: 1.0,
            prev_flat_grad: None,
        }
    }

    /// One `optimizer.step(closure)`; `closure(p)` returns the loss and its gradient at `p`.
    /// Returns the loss at the start of the step.
    pub fn step<F: FnMut(&DMatrix<f64>) -> (f64, DMatrix<f64>)>(
        &mut self,
        p: &mut DMatrix<f64>,
        mut closure: F,
    ) -> f64 {
        const MAX_ITER: usize = 10;
        const MAX_EVAL: usize = 12;
        const TOL_GRAD: f64 = 1e-7;
        const TOL_CHANGE: f64 = 1e-9;
        const HISTORY: usize = 100;
        let (rows, cols) = p.shape();
        let (orig_loss, g) = closure(p);
        let mut loss = orig_loss;
        let mut flat_grad = flat(&g);
        let mut current_evals = 1;
        let max_abs = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        if max_abs(&flat_grad) <= TOL_GRAD {
            return orig_loss;
        }
        let mut n_iter = 0;
        while n_iter < MAX_ITER {
            n_iter += 1;
            self.n_iter += 1;
            if self.n_iter == 1 {
                self.d = flat_grad.iter().map(|x| -x).collect();
                self.old_dirs.clear();
                self.old_stps.clear();
                self.ro.clear();
                self.h_diag = 1.0;
            } else {
                let prev = self
                    .prev_flat_grad
                    .as_ref()
                    .expect("set after the first iteration");
                let y: Vec<f64> = flat_grad.iter().zip(prev).map(|(a, b)| a - b).collect();
                let s: Vec<f64> = self.d.iter().map(|x| x * self.t).collect();
                let ys = dot(&y, &s);
                if ys > 1e-10 {
                    if self.old_dirs.len() == HISTORY {
                        self.old_dirs.remove(0);
                        self.old_stps.remove(0);
                        self.ro.remove(0);
                    }
                    self.h_diag = ys / dot(&y, &y);
                    self.old_dirs.push(y);
                    self.old_stps.push(s);
                    self.ro.push(1.0 / ys);
                }
                let num_old = self.old_dirs.len();
                let mut al = vec![0.0; num_old];
                let mut q: Vec<f64> = flat_grad.iter().map(|x| -x).collect();
                for i in (0..num_old).rev() {
                    al[i] = dot(&self.old_stps[i], &q) * self.ro[i];
                    for (qv, yv) in q.iter_mut().zip(&self.old_dirs[i]) {
                        *qv += -al[i] * yv;
                    }
                }
                let mut r: Vec<f64> = q.iter().map(|x| x * self.h_diag).collect();
                let history = self.old_dirs.iter().zip(&self.old_stps).zip(&self.ro);
                for (((y_i, s_i), ro_i), al_i) in history.zip(&al) {
                    let be_i = dot(y_i, &r) * ro_i;
                    for (rv, sv) in r.iter_mut().zip(s_i) {
                        *rv += (al_i - be_i) * sv;
                    }
                }
                self.d = r;
            }
            self.prev_flat_grad = Some(flat_grad.clone());
            let prev_loss = loss;
            self.t = if self.n_iter == 1 {
                (1.0f64).min(1.0 / flat_grad.iter().map(|x| x.abs()).sum::<f64>()) * self.lr
            } else {
                self.lr
            };
            let gtd = dot(&flat_grad, &self.d);
            if gtd > -TOL_CHANGE {
                break;
            }
            // p += t·d (d is row-major)
            for i in 0..rows {
                for j in 0..cols {
                    p[(i, j)] += self.t * self.d[i * cols + j];
                }
            }
            let mut opt_cond = false;
            let mut ls_evals = 0;
            if n_iter != MAX_ITER {
                let (l, g) = closure(p);
                loss = l;
                flat_grad = flat(&g);
                opt_cond = max_abs(&flat_grad) <= TOL_GRAD;
                ls_evals = 1;
            }
            current_evals += ls_evals;
            if n_iter == MAX_ITER || current_evals >= MAX_EVAL || opt_cond {
                break;
            }
            if self.d.iter().fold(0.0f64, |m, x| m.max((x * self.t).abs())) <= TOL_CHANGE {
                break;
            }
            if (loss - prev_loss).abs() < TOL_CHANGE {
                break;
            }
        }
        orig_loss
    }
}
