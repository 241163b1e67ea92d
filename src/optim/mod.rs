//! The optimizer registry of the reference's `get_torch_optimizer`: torch 2.x and
//! torch_optimizer 0.3.0 update rules with the reference's constructor choices.
//!
//! * [`Schedule`]: the host side of every name but lbfgs (its step count and scalars); each
//!   step is an [`UpdateRule`] that a [`Backend`] runs on its resident matrices, so the CPU
//!   (f32/f64) and the GPU share one description of every optimizer.
//! * [`TorchOptimizer`]: a [`Schedule`] on the f64 CPU backend, stepping host matrices (its
//!   trajectories match torch's to about 1e-17 relative).
//! * [`BackendLbfgs`] (any backend) and [`Lbfgs`] (host): LBFGS with a closure.
//! * [`optimizers`]: the 22 names; padam is listed, as the reference lists it, but is an
//!   error (torch_optimizer 0.3.0 has no PAdam, so the reference raises).

pub mod rule;

use crate::backend::{cpu::CpuBackend, Backend, Reduction};
use crate::error::{NsaError, Result};
use nalgebra::DMatrix;
pub use rule::UpdateRule;

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

/// The registry's names (what `get_torch_optimizer(return_list=True)` answers), sorted.
///
/// ```
/// assert_eq!(nsa_flow::optimizers().len(), 22);
/// assert!(nsa_flow::optimizers().contains(&"adamw"));
/// ```
pub fn optimizers() -> &'static [&'static str] {
    &OPTIMIZER_NAMES
}

/// The error for `padam`, which the reference lists but cannot construct.
pub(crate) fn padam_error() -> NsaError {
    NsaError::InvalidParameter {
        name: "optimizer",
        reason: "padam does not exist in torch_optimizer 0.3.0 (the reference raises \
                 AttributeError: module 'torch_optimizer' has no attribute 'PAdam')"
            .into(),
    }
}

/// The error for a name outside the registry, listing the registry.
pub(crate) fn unknown_optimizer(name: &str, extra: &[&str]) -> NsaError {
    let mut names: Vec<&str> = extra.to_vec();
    names.extend(OPTIMIZER_NAMES.iter().filter(|n| **n != "padam"));
    NsaError::UnknownName {
        kind: "optimizer",
        name: name.into(),
        expected: names.join(", "),
    }
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

/// The host side of a registry optimizer (every name but lbfgs, which needs a closure, and
/// padam): its step count and scalar state (bias corrections, ASGD's η and μ, NAdam's
/// μ-product, QHAdam's accumulators, Lookahead's counter, AdaBound's bounds). Each
/// [`Schedule::next_rule`] answers the [`UpdateRule`] of the next step, which a backend runs
/// on its resident matrices ([`Backend::optimizer_step`]) with the
/// [`UpdateRule::state_len`] state matrices (zeros at the start) it keeps.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::backend::{cpu::CpuBackend, Backend};
/// use nsa_flow::optim::Schedule;
/// let mut be = CpuBackend::<f64>::new();
/// let mut adam = Schedule::new("adam", 0.1).unwrap();
/// let mut state: Vec<DMatrix<f64>> = (0..adam.state_len()).map(|_| be.zeros(2, 2).unwrap()).collect();
/// let (mut x, g) = (DMatrix::from_element(2, 2, 1.0), DMatrix::from_element(2, 2, 3.0));
/// let mut next = be.zeros(2, 2).unwrap();
/// adam.step(&mut be, &x, &g, &mut state, 0.1, &mut next);
/// std::mem::swap(&mut x, &mut next);
/// assert!((x[(0, 0)] - 0.9).abs() < 1e-6); // Adam's first step moves each entry by ≈ lr
/// assert_eq!(adam.steps(), 1);
/// ```
#[derive(Clone, Debug)]
pub struct Schedule {
    kind: Kind,
    base_lr: f64,
    step: u64,
    scalars: [f64; 2],
}

impl Schedule {
    /// The optimizer `get_torch_optimizer(name, [P], lr)` builds (the reference's
    /// constructor choices, torch / torch_optimizer 0.3.0 defaults). `padam` is an error (the
    /// reference raises), `lbfgs` too (it needs a closure: [`Lbfgs`]), and so is a name
    /// outside the registry.
    pub fn new(name: &str, lr: f64) -> Result<Schedule> {
        let kind =
            match name {
                "sgd" => Kind::Sgd {
                    momentum: 0.9,
                    nesterov: false,
                },
                "sgd_nesterov" => Kind::Sgd {
                    momentum: 0.9,
                    nesterov: true,
                },
                // LARS with weight_decay 0 has no trust ratio: plain SGD (Q21)
                "lars" => Kind::Sgd {
                    momentum: 0.0,
                    nesterov: false,
                },
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
                "pid" => Kind::Sgd {
                    momentum: 0.0,
                    nesterov: false,
                },
                "padam" => return Err(padam_error()),
                "lbfgs" => return Err(NsaError::InvalidParameter {
                    name: "optimizer",
                    reason:
                        "lbfgs re-evaluates the loss in each step: use optim::Lbfgs with a closure"
                            .into(),
                }),
                other => return Err(unknown_optimizer(other, &[])),
            };
        Ok(Schedule {
            kind,
            base_lr: lr,
            step: 0,
            scalars: [0.0; 2],
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// State matrices the backend keeps for this optimizer.
    pub fn state_len(&self) -> usize {
        // every step of a kind has the same state
        self.clone().next_rule(self.base_lr).state_len()
    }

    /// Advances the step count and answers the rule of this step at learning rate `lr`.
    pub fn next_rule(&mut self, lr: f64) -> UpdateRule {
        self.step += 1;
        let t = self.step as f64;
        let first = self.step == 1;
        let bc1 = 1.0 - B1.powf(t);
        let bc2 = 1.0 - B2.powf(t);
        match self.kind {
            Kind::Sgd { momentum: 0.0, .. } => UpdateRule::Sgd,
            Kind::Sgd { momentum, nesterov } => UpdateRule::Momentum { momentum, nesterov },
            Kind::Adam { weight_decay } => UpdateRule::Adam {
                beta1: B1,
                beta2: B2,
                eps: 1e-8,
                weight_decay,
                bc1,
                bc2_sqrt: bc2.sqrt(),
            },
            Kind::Adamax => UpdateRule::Adamax {
                beta1: B1,
                beta2: B2,
                eps: 1e-8,
                bc1,
            },
            Kind::Adagrad => UpdateRule::SquareAverage {
                rho: 1.0,
                coef: 1.0,
                eps: 1e-10,
            },
            Kind::Rmsprop => UpdateRule::SquareAverage {
                rho: 0.99,
                coef: 1.0 - 0.99,
                eps: 1e-8,
            },
            Kind::Asgd => {
                let (lambd, alpha, t0) = (1e-4, 0.75, 1e6);
                if first {
                    self.scalars = [lr, 1.0]; // eta, mu
                }
                let rule = UpdateRule::Asgd {
                    lambd,
                    eta: self.scalars[0],
                    mu: self.scalars[1],
                };
                self.scalars[0] = lr / (1.0 + lambd * lr * t).powf(alpha);
                self.scalars[1] = 1.0 / (t - t0).max(1.0);
                rule
            }
            Kind::Nadam => {
                let psi = 4e-3;
                if first {
                    self.scalars[0] = 1.0; // mu_product
                }
                let mu = B1 * (1.0 - 0.5 * 0.96f64.powf(t * psi));
                let mu_next = B1 * (1.0 - 0.5 * 0.96f64.powf((t + 1.0) * psi));
                self.scalars[0] *= mu;
                UpdateRule::Nadam {
                    beta1: B1,
                    beta2: B2,
                    eps: 1e-8,
                    bc2,
                    mu,
                    mu_next,
                    mu_product: self.scalars[0],
                }
            }
            Kind::Radam => {
                let rho_inf = 2.0 / (1.0 - B2) - 1.0;
                let rho_t = rho_inf - 2.0 * t * B2.powf(t) / bc2;
                let rect = (rho_t > 5.0).then(|| {
                    ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                        / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                        .sqrt()
                });
                UpdateRule::Radam {
                    beta1: B1,
                    beta2: B2,
                    eps: 1e-8,
                    bc1,
                    bc2_sqrt: bc2.sqrt(),
                    rect,
                }
            }
            Kind::Rprop => UpdateRule::Rprop {
                first,
                etaminus: 0.5,
                etaplus: 1.2,
                step_min: 1e-6,
                step_max: 50.0,
            },
            // torch_optimizer 0.3.0 defaults: eps 1e-3, initial accumulator 1e-6
            Kind::Yogi => UpdateRule::Yogi {
                first,
                init: 1e-6,
                beta1: B1,
                beta2: B2,
                eps: 1e-3,
                bc1,
                bc2_sqrt: bc2.sqrt(),
            },
            // momentum 0, nu 0.7 (torch_optimizer defaults)
            Kind::Qhm => UpdateRule::Qhm {
                momentum: 0.0,
                nu: 0.7,
            },
            // nus (1, 1), eps 1e-8
            Kind::Qhadam => {
                self.scalars[0] = 1.0 + B1 * self.scalars[0];
                self.scalars[1] = 1.0 + B2 * self.scalars[1];
                UpdateRule::Qhadam {
                    beta1_adj: 1.0 - 1.0 / self.scalars[0],
                    beta2_adj: 1.0 - 1.0 / self.scalars[1],
                    eps: 1e-8,
                }
            }
            // final_lr 0.1 scaled by lr / base_lr, gamma 1e-3, eps 1e-8
            Kind::Adabound => {
                let final_lr = 0.1 * lr / self.base_lr;
                let gamma = 1e-3;
                UpdateRule::Adabound {
                    beta1: B1,
                    beta2: B2,
                    eps: 1e-8,
                    bc1,
                    bc2,
                    lower: final_lr * (1.0 - 1.0 / (gamma * t + 1.0)),
                    upper: final_lr * (1.0 + 1.0 / (gamma * t)),
                }
            }
            Kind::Adamp => UpdateRule::Adamp {
                beta1: B1,
                beta2: B2,
                eps: 1e-8,
                delta: 0.1,
                bc1,
                bc2_sqrt: bc2.sqrt(),
            },
            // torch_optimizer Lookahead(Adam, k = 5, alpha = 0.5): after the inner step,
            // every k-th step (the first included) blends with the slow weights
            Kind::Lookahead => {
                let sync = self.scalars[0] == 0.0;
                self.scalars[0] = (self.scalars[0] + 1.0) % 5.0;
                UpdateRule::Lookahead {
                    beta1: B1,
                    beta2: B2,
                    eps: 1e-8,
                    bc1,
                    bc2_sqrt: bc2.sqrt(),
                    alpha: 0.5,
                    sync,
                    first,
                }
            }
            // torch_optimizer defaults
            Kind::Sgdp => UpdateRule::Sgdp {
                momentum: 0.0,
                dampening: 0.0,
                eps: 1e-8,
                weight_decay: 0.0,
                delta: 0.1,
                wd_ratio: 0.1,
                nesterov: false,
            },
        }
    }

    /// One step on a backend: `out ← step(param, grad)`, updating `state` (which holds
    /// [`Schedule::state_len`] matrices, zeros before the first step).
    pub fn step<B: Backend>(
        &mut self,
        be: &mut B,
        param: &B::Mat,
        grad: &B::Mat,
        state: &mut [B::Mat],
        lr: f64,
        out: &mut B::Mat,
    ) {
        let rule = self.next_rule(lr);
        be.optimizer_step(&rule, param, grad, state, lr, out);
    }
}

/// One optimizer with its state, stepping a p×k parameter with a given gradient on the host
/// in f64: a [`Schedule`] run on the CPU backend (the same arithmetic `nsa_flow` runs).
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::optim::TorchOptimizer;
/// // minimise ½‖P − 1‖² with SGD + momentum 0.9 (the registry's "sgd")
/// let mut opt = TorchOptimizer::new("sgd", 0.1).unwrap();
/// let mut p = DMatrix::from_element(3, 2, 5.0);
/// for _ in 0..200 {
///     let g = p.map(|v| v - 1.0);
///     opt.step(&mut p, &g);
/// }
/// assert!(p.iter().all(|v| (v - 1.0).abs() < 1e-3));
/// assert!(TorchOptimizer::new("padam", 0.1).is_err()); // listed, but the reference raises
/// ```
#[derive(Clone, Debug)]
pub struct TorchOptimizer {
    schedule: Schedule,
    lr: f64,
    state: Vec<DMatrix<f64>>,
    out: DMatrix<f64>,
    be: CpuBackend<f64>,
}

impl TorchOptimizer {
    /// The optimizer `get_torch_optimizer(name, [P], lr)` builds; errors as [`Schedule::new`].
    pub fn new(name: &str, lr: f64) -> Result<TorchOptimizer> {
        Ok(TorchOptimizer {
            schedule: Schedule::new(name, lr)?,
            lr,
            state: Vec::new(),
            out: DMatrix::zeros(0, 0),
            be: CpuBackend::new(),
        })
    }

    /// One `optimizer.step()` with `p.grad = g`.
    pub fn step(&mut self, p: &mut DMatrix<f64>, g: &DMatrix<f64>) {
        let (rows, cols) = p.shape();
        if self.out.shape() != (rows, cols) {
            self.out = DMatrix::zeros(rows, cols);
            self.state = vec![DMatrix::zeros(rows, cols); self.schedule.state_len()];
        }
        self.schedule
            .step(&mut self.be, p, g, &mut self.state, self.lr, &mut self.out);
        p.copy_from(&self.out);
    }
}

/// torch.optim.LBFGS as the reference constructs it (`max_iter = 10`, so at most 12
/// evaluations per step; no line search: a fixed step `lr`, the first scaled by
/// `min(1, 1/‖g‖₁)`; history 100; tolerances 1e-7 on the gradient and 1e-9 on changes),
/// stepped with a closure that re-evaluates the loss and its gradient, as LBFGS requires.
///
/// Runs on any [`Backend`]: its vectors (direction, previous gradient, the history pairs)
/// are backend matrices, and the two-loop recursion is driven from the host with
/// [`Backend::lincomb`] and one [`Reduction::Dot`] readback per history pair and loop (the
/// recursion is sequential). The history holds up to 100 pairs of p×k matrices, allocated as
/// it fills and then recycled.
pub struct BackendLbfgs<M> {
    lr: f64,
    n_iter: usize,
    t: f64,
    h_diag: f64,
    old_dirs: std::collections::VecDeque<M>,
    old_stps: std::collections::VecDeque<M>,
    ro: std::collections::VecDeque<f64>,
    al: Vec<f64>,
    spare: Vec<M>,
    /// d, the previous gradient, the gradient, two scratch matrices
    work: Option<[M; 5]>,
}

impl<M> std::fmt::Debug for BackendLbfgs<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendLbfgs")
            .field("lr", &self.lr)
            .field("n_iter", &self.n_iter)
            .field("history", &self.ro.len())
            .finish()
    }
}

const LBFGS_MAX_ITER: usize = 10;
const LBFGS_MAX_EVAL: usize = 12;
const LBFGS_TOL_GRAD: f64 = 1e-7;
const LBFGS_TOL_CHANGE: f64 = 1e-9;
const LBFGS_HISTORY: usize = 100;

impl<M> BackendLbfgs<M> {
    /// A new optimizer with learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        BackendLbfgs {
            lr,
            n_iter: 0,
            t: 0.0,
            h_diag: 1.0,
            old_dirs: Default::default(),
            old_stps: Default::default(),
            ro: Default::default(),
            al: Vec::new(),
            spare: Vec::new(),
            work: None,
        }
    }

    /// Sets the learning rate of the next steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn take<B: Backend<Mat = M>>(&mut self, be: &mut B, p: usize, k: usize) -> Result<M> {
        match self.spare.pop() {
            Some(m) => Ok(m),
            None => be.zeros(p, k),
        }
    }

    /// One `optimizer.step(closure)` on the backend: `closure(be, x, g)` writes the gradient
    /// at `x` into `g` and returns the loss there; `x` is `rows`×`cols`. Returns the loss at the
    /// start of the step.
    pub fn step<B, F>(
        &mut self,
        be: &mut B,
        x: &mut M,
        rows: usize,
        cols: usize,
        mut closure: F,
    ) -> Result<f64>
    where
        B: Backend<Mat = M>,
        F: FnMut(&mut B, &M, &mut M) -> Result<f64>,
    {
        if self.work.is_none() {
            self.work = Some([
                be.zeros(rows, cols)?,
                be.zeros(rows, cols)?,
                be.zeros(rows, cols)?,
                be.zeros(rows, cols)?,
                be.zeros(rows, cols)?,
            ]);
        }
        let [mut d, mut prev, mut g, mut q, mut q2] = self.work.take().expect("allocated above");
        let r = self.step_inner(
            be,
            x,
            rows,
            cols,
            &mut closure,
            [&mut d, &mut prev, &mut g, &mut q, &mut q2],
        );
        self.work = Some([d, prev, g, q, q2]);
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn step_inner<B, F>(
        &mut self,
        be: &mut B,
        x: &mut M,
        rows: usize,
        cols: usize,
        closure: &mut F,
        [d, prev, g, q, q2]: [&mut M; 5],
    ) -> Result<f64>
    where
        B: Backend<Mat = M>,
        F: FnMut(&mut B, &M, &mut M) -> Result<f64>,
    {
        let count_above = |be: &mut B, m: &M, scale: f64, threshold: f64| -> Result<f64> {
            Ok(be.reduce(&[Reduction::CountAbove {
                m,
                scale,
                threshold,
            }])?[0])
        };
        let orig_loss = closure(be, x, g)?;
        let mut loss = orig_loss;
        let mut current_evals = 1;
        if count_above(be, g, 1.0, LBFGS_TOL_GRAD)? == 0.0 {
            return Ok(orig_loss);
        }
        let mut n_iter = 0;
        while n_iter < LBFGS_MAX_ITER {
            n_iter += 1;
            self.n_iter += 1;
            if self.n_iter == 1 {
                be.lincomb(-1.0, g, 0.0, g, d);
                while let Some(m) = self.old_dirs.pop_front() {
                    self.spare.push(m);
                }
                while let Some(m) = self.old_stps.pop_front() {
                    self.spare.push(m);
                }
                self.ro.clear();
                self.h_diag = 1.0;
            } else {
                // y = g − prev, s = t·d
                let mut y = self.take(be, rows, cols)?;
                let mut s = self.take(be, rows, cols)?;
                be.lincomb(1.0, g, -1.0, prev, &mut y);
                be.lincomb(self.t, d, 0.0, d, &mut s);
                let v = be.reduce(&[Reduction::Dot(&y, &s), Reduction::Dot(&y, &y)])?;
                let ys = v[0];
                if ys > 1e-10 {
                    if self.ro.len() == LBFGS_HISTORY {
                        self.spare.extend(self.old_dirs.pop_front());
                        self.spare.extend(self.old_stps.pop_front());
                        self.ro.pop_front();
                    }
                    self.h_diag = ys / v[1];
                    self.old_dirs.push_back(y);
                    self.old_stps.push_back(s);
                    self.ro.push_back(1.0 / ys);
                } else {
                    self.spare.push(y);
                    self.spare.push(s);
                }
                let num_old = self.ro.len();
                self.al.clear();
                self.al.resize(num_old, 0.0);
                // q = −g; q −= al_i·y_i from the newest pair down
                be.lincomb(-1.0, g, 0.0, g, q);
                for i in (0..num_old).rev() {
                    let dot = be.reduce(&[Reduction::Dot(&self.old_stps[i], q)])?[0];
                    self.al[i] = dot * self.ro[i];
                    be.lincomb(1.0, q, -self.al[i], &self.old_dirs[i], q2);
                    std::mem::swap(q, q2);
                }
                // r = H_diag·q; r += (al_i − be_i)·s_i from the oldest pair up
                be.lincomb(self.h_diag, q, 0.0, q, q2);
                std::mem::swap(q, q2);
                for i in 0..num_old {
                    let be_i = be.reduce(&[Reduction::Dot(&self.old_dirs[i], q)])?[0] * self.ro[i];
                    be.lincomb(1.0, q, self.al[i] - be_i, &self.old_stps[i], q2);
                    std::mem::swap(q, q2);
                }
                be.copy(q, d);
            }
            be.copy(g, prev);
            let prev_loss = loss;
            self.t = if self.n_iter == 1 {
                let l1 = be.reduce(&[Reduction::AbsSum(g)])?[0];
                (1.0f64).min(1.0 / l1) * self.lr
            } else {
                self.lr
            };
            let gtd = be.reduce(&[Reduction::Dot(g, d)])?[0];
            if gtd > -LBFGS_TOL_CHANGE {
                break;
            }
            // x += t·d
            be.lincomb(1.0, x, self.t, d, q2);
            std::mem::swap(x, q2);
            let mut opt_cond = false;
            let mut ls_evals = 0;
            if n_iter != LBFGS_MAX_ITER {
                loss = closure(be, x, g)?;
                opt_cond = count_above(be, g, 1.0, LBFGS_TOL_GRAD)? == 0.0;
                ls_evals = 1;
            }
            current_evals += ls_evals;
            if n_iter == LBFGS_MAX_ITER || current_evals >= LBFGS_MAX_EVAL || opt_cond {
                break;
            }
            if count_above(be, d, self.t, LBFGS_TOL_CHANGE)? == 0.0 {
                break;
            }
            if (loss - prev_loss).abs() < LBFGS_TOL_CHANGE {
                break;
            }
        }
        Ok(orig_loss)
    }
}

/// [`BackendLbfgs`] on the host in f64 (the CPU backend), with a closure on host matrices.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::optim::Lbfgs;
/// let target = DMatrix::from_row_slice(2, 2, &[1.0, 2.0, 3.0, 4.0]);
/// let mut opt = Lbfgs::new(1.0);
/// let mut p = DMatrix::zeros(2, 2);
/// // ½‖P − target‖² and its gradient
/// let loss0 = opt.step(&mut p, |x| (0.5 * (x - &target).norm_squared(), x - &target));
/// assert_eq!(loss0, 15.0);
/// assert!((&p - &target).norm() < 1e-6);
/// ```
#[derive(Debug)]
pub struct Lbfgs {
    inner: BackendLbfgs<DMatrix<f64>>,
    be: CpuBackend<f64>,
}

impl Lbfgs {
    /// A new optimizer with learning rate `lr`.
    pub fn new(lr: f64) -> Lbfgs {
        Lbfgs {
            inner: BackendLbfgs::new(lr),
            be: CpuBackend::new(),
        }
    }

    /// One `optimizer.step(closure)`; `closure(p)` returns the loss and its gradient at `p`.
    /// Returns the loss at the start of the step.
    pub fn step<F: FnMut(&DMatrix<f64>) -> (f64, DMatrix<f64>)>(
        &mut self,
        p: &mut DMatrix<f64>,
        mut closure: F,
    ) -> f64 {
        let (rows, cols) = p.shape();
        self.inner
            .step(&mut self.be, p, rows, cols, |_, x, g| {
                let (loss, grad) = closure(x);
                g.copy_from(&grad);
                Ok(loss)
            })
            .expect("the CPU backend does not fail")
    }
}
