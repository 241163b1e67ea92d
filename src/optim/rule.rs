//! The optimizers' update rules as a backend runs them: an [`UpdateRule`] (one optimizer
//! step's arithmetic) compiles to [`OptPass`]es of elementwise [`ElemOp`]s over named
//! [`Operand`]s, which the CPU backend evaluates with [`elem_op`] and the GPU backend as
//! kernels. Nothing here depends on a backend.

/// A step rule run on the backend (the optimizer's arithmetic, its state living in backend
/// matrices).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UpdateRule {
    /// `out = param − lr·grad`.
    Sgd,
    /// torch_optimizer 0.3.0 SGDP: `buf ← μ·buf + (1−dampening)·g`; direction `buf` (or
    /// `g + μ·buf` with Nesterov); radial part removed per row (threshold `δ/√k`), else for the
    /// whole matrix (threshold `δ/√(pk)`), when the gradient is that close to orthogonal to
    /// the parameter (cosine `|Σ g·p|/(‖g‖+ε)/(‖p‖+ε)`, as torch_optimizer computes it); then weight decay scaled by `wd_ratio`; `out = param − lr·direction`.
    /// State: `[buf]`.
    Sgdp {
        /// Momentum μ.
        momentum: f64,
        /// Dampening.
        dampening: f64,
        /// ε of the cosine and of the row normalisation.
        eps: f64,
        /// Weight decay.
        weight_decay: f64,
        /// δ of the projection test.
        delta: f64,
        /// Weight-decay ratio applied when the projection fires.
        wd_ratio: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// torch.optim.SGD with momentum μ (dampening 0): `buf ← μ·buf + g` (a zero state gives
    /// torch's `buf = g` at the first step), `out = p − lr·buf`, or `p − lr·(g + μ·buf)` with
    /// Nesterov. State: `[buf]`.
    Momentum {
        /// Momentum μ.
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// torch.optim.Adam / AdamW: `m ← m + (1−β₁)(g − m)`, `v ← β₂v + (1−β₂)g²`,
    /// `out = p·(1 − lr·wd) − (lr/bc₁)·m/(√v/√bc₂ + ε)`. State: `[m, v]`.
    Adam {
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
        /// Decoupled weight decay (AdamW), 0 for Adam.
        weight_decay: f64,
        /// Bias correction `1 − β₁ᵗ`.
        bc1: f64,
        /// `√(1 − β₂ᵗ)`.
        bc2_sqrt: f64,
    },
    /// torch.optim.Adamax: `m ← m + (1−β₁)(g − m)`, `u ← max(β₂u, |g| + ε)`,
    /// `out = p − (lr/bc₁)·m/u`. State: `[m, u]`.
    Adamax {
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
        /// Bias correction `1 − β₁ᵗ`.
        bc1: f64,
    },
    /// torch.optim.Adagrad (`rho = coef = 1`) and RMSprop (`rho = α`, `coef = 1 − α`):
    /// `s ← rho·s + coef·g²`, `out = p − lr·g/(√s + ε)`. State: `[s]`.
    SquareAverage {
        /// Decay of the accumulator.
        rho: f64,
        /// Weight of the new squared gradient.
        coef: f64,
        /// ε.
        eps: f64,
    },
    /// torch.optim.ASGD (λ = 1e-4): `out = p·(1 − λη) − η·g`; the averaged iterate
    /// `ax ← ax + μ(out − ax)` (a copy when μ = 1). `lr` is not used: η is the schedule's.
    /// State: `[ax]`.
    Asgd {
        /// λ.
        lambd: f64,
        /// The step η of this step.
        eta: f64,
        /// The averaging weight μ of this step.
        mu: f64,
    },
    /// torch.optim.NAdam: Adam's moments, then
    /// `out = p − lr(1−μₜ)/(1−Πμ)·g/d − lr·μₜ₊₁/(1−Πμ·μₜ₊₁)·m/d` with `d = √(v/bc₂) + ε`.
    /// State: `[m, v]`.
    Nadam {
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
        /// `1 − β₂ᵗ`.
        bc2: f64,
        /// μₜ.
        mu: f64,
        /// μₜ₊₁.
        mu_next: f64,
        /// Π_{i≤t} μᵢ.
        mu_product: f64,
    },
    /// torch.optim.RAdam: Adam's moments; with `rect = Some(r)` (ρₜ > 5)
    /// `out = p − (m/bc₁)·lr·√bc₂/(√v + ε)·r`, else `out = p − (m/bc₁)·lr`. State: `[m, v]`.
    Radam {
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
        /// `1 − β₁ᵗ`.
        bc1: f64,
        /// `√(1 − β₂ᵗ)`.
        bc2_sqrt: f64,
        /// The rectification term, when the variance is tractable.
        rect: Option<f64>,
    },
    /// torch.optim.Rprop: per entry the step size grows by η₊ when `g·prev > 0`, shrinks by
    /// η₋ (and the gradient is zeroed) when `< 0`, clamped to `[step_min, step_max]`;
    /// `out = p − sign(g)·step`. The step sizes start at `lr` (`first`). State: `[prev, step]`.
    Rprop {
        /// The first step (the step sizes are then `lr`).
        first: bool,
        /// η₋.
        etaminus: f64,
        /// η₊.
        etaplus: f64,
        /// Smallest step size.
        step_min: f64,
        /// Largest step size.
        step_max: f64,
    },
    /// torch_optimizer Yogi: `m ← β₁m + (1−β₁)g`, `v ← v − (1−β₂)·sign(v − g²)·g²`, both
    /// starting at `init` (`first`), `out = p − (lr/bc₁)·m/(√v/√bc₂ + ε)`. State: `[m, v]`.
    Yogi {
        /// The first step (the moments then start at `init`).
        first: bool,
        /// Initial value of both moments.
        init: f64,
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
        /// `1 − β₁ᵗ`.
        bc1: f64,
        /// `√(1 − β₂ᵗ)`.
        bc2_sqrt: f64,
    },
    /// torch_optimizer QHM: `buf ← μ·buf + (1−μ)g`, `out = p − lr·ν·buf − lr(1−ν)·g`.
    /// State: `[buf]`.
    Qhm {
        /// μ.
        momentum: f64,
        /// ν.
        nu: f64,
    },
    /// torch_optimizer QHAdam with ν = (1, 1): `m ← b₁m + (1−b₁)g`, `v ← b₂v + (1−b₂)g²` with
    /// the schedule's adjusted betas, `out = p − lr·m/(√v + ε)`. State: `[m, v]`.
    Qhadam {
        /// The adjusted β₁ of this step, `1 − 1/Σβ₁ⁱ`.
        beta1_adj: f64,
        /// The adjusted β₂ of this step.
        beta2_adj: f64,
        /// ε.
        eps: f64,
    },
    /// torch_optimizer AdaBound: `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
    /// `out = p − clamp(lr·√bc₂/bc₁/(√v + ε), lower, upper)·m`. State: `[m, v]`.
    Adabound {
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
        /// `1 − β₁ᵗ`.
        bc1: f64,
        /// `1 − β₂ᵗ`.
        bc2: f64,
        /// Lower bound of the step size.
        lower: f64,
        /// Upper bound of the step size.
        upper: f64,
    },
    /// torch_optimizer AdamP: AdaBound's moments, `d = m/(√v/√bc₂ + ε)`, its radial part removed
    /// exactly as [`UpdateRule::Sgdp`] does (per row, else the whole matrix), then
    /// `out = p − (lr/bc₁)·d`. State: `[m, v]`.
    Adamp {
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
        /// δ of the projection test.
        delta: f64,
        /// `1 − β₁ᵗ`.
        bc1: f64,
        /// `√(1 − β₂ᵗ)`.
        bc2_sqrt: f64,
    },
    /// torch_optimizer Lookahead around torch.optim.Adam: the Adam step, then, when `sync`,
    /// `out ← α·out + (1−α)·slow` and `slow ← out` (`slow` starts as the first Adam result:
    /// `first`). State: `[m, v, slow]`.
    Lookahead {
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
        /// `1 − β₁ᵗ`.
        bc1: f64,
        /// `√(1 − β₂ᵗ)`.
        bc2_sqrt: f64,
        /// α.
        alpha: f64,
        /// Blend with the slow weights this step (every k-th step, the first included).
        sync: bool,
        /// The first blend (the slow weights are then initialised).
        first: bool,
    },
}

impl UpdateRule {
    /// How many p×k state matrices the rule updates (all start at zero).
    pub fn state_len(&self) -> usize {
        match self {
            UpdateRule::Sgd => 0,
            UpdateRule::Sgdp { .. }
            | UpdateRule::Momentum { .. }
            | UpdateRule::SquareAverage { .. }
            | UpdateRule::Asgd { .. }
            | UpdateRule::Qhm { .. } => 1,
            UpdateRule::Lookahead { .. } => 3,
            _ => 2,
        }
    }

    /// The rule as a sequence of [`OptPass`]es, which is how both backends run every rule
    /// but [`UpdateRule::Sgd`] and [`UpdateRule::Sgdp`] (those have dedicated code): each
    /// pass is elementwise (or the AdamP projection), so a device runs one dispatch per pass
    /// and the CPU one loop. `lr` is the step's learning rate.
    ///
    /// ```
    /// use nsa_flow::backend::{ElemOp, OptPass, Operand, UpdateRule};
    /// let adam = UpdateRule::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, bc1: 0.1, bc2_sqrt: 0.0316 };
    /// let passes = adam.passes(1e-3);
    /// assert_eq!(passes.len(), 3); // m, v, then the parameter
    /// assert!(matches!(passes[2], OptPass::Elem { op: ElemOp::AdamApply, dst: Operand::Out, .. }));
    /// assert_eq!(adam.state_len(), 2);
    /// ```
    pub fn passes(&self, lr: f64) -> OptPasses {
        use ElemOp::*;
        use Operand::*;
        let e = |op, dst, src: [Option<Operand>; 3], c: [f64; 8]| OptPass::Elem {
            op,
            dst,
            src,
            c,
            init: None,
        };
        let g = Some(Grad);
        let p = Some(Param);
        let st = |i| Some(State(i));
        let mut c8 = [0.0; 8];
        let mut cs = |v: &[f64]| {
            c8 = [0.0; 8];
            c8[..v.len()].copy_from_slice(v);
            c8
        };
        match *self {
            UpdateRule::Sgd => smallvec::smallvec![e(Axpy, Out, [p, g, None], cs(&[-lr]))],
            UpdateRule::Sgdp { .. } => OptPasses::new(),
            UpdateRule::Momentum { momentum, nesterov } => {
                let mut v =
                    smallvec::smallvec![e(Axpby, State(0), [g, None, None], cs(&[momentum, 1.0]))];
                if nesterov {
                    v.push(e(Nesterov, Out, [p, g, st(0)], cs(&[-lr, momentum])));
                } else {
                    v.push(e(Axpy, Out, [p, st(0), None], cs(&[-lr])));
                }
                v
            }
            UpdateRule::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                bc1,
                bc2_sqrt,
            } => {
                let decay = if weight_decay != 0.0 {
                    1.0 - lr * weight_decay
                } else {
                    1.0
                };
                smallvec::smallvec![
                    e(Lerp, State(0), [g, None, None], cs(&[1.0 - beta1])),
                    e(SqA, State(1), [g, None, None], cs(&[beta2, 1.0 - beta2])),
                    e(
                        AdamApply,
                        Out,
                        [p, st(0), st(1)],
                        cs(&[-(lr / bc1), bc2_sqrt, eps, decay]),
                    ),
                ]
            }
            UpdateRule::Adamax {
                beta1,
                beta2,
                eps,
                bc1,
            } => smallvec::smallvec![
                e(Lerp, State(0), [g, None, None], cs(&[1.0 - beta1])),
                e(MaxAbs, State(1), [g, None, None], cs(&[beta2, eps])),
                e(Quotient, Out, [p, st(0), st(1)], cs(&[-(lr / bc1)])),
            ],
            UpdateRule::SquareAverage { rho, coef, eps } => smallvec::smallvec![
                e(SqA, State(0), [g, None, None], cs(&[rho, coef])),
                e(SqrtApply, Out, [p, g, st(0)], cs(&[-lr, eps])),
            ],
            UpdateRule::Asgd { lambd, eta, mu } => {
                let mut v =
                    smallvec::smallvec![e(Lin2, Out, [p, g, None], cs(&[1.0 - lambd * eta, -eta]))];
                if mu != 1.0 {
                    v.push(e(Lerp, State(0), [Some(Out), None, None], cs(&[mu])));
                } else {
                    v.push(OptPass::Copy {
                        src: Out,
                        dst: State(0),
                    });
                }
                v
            }
            UpdateRule::Nadam {
                beta1,
                beta2,
                eps,
                bc2,
                mu,
                mu_next,
                mu_product,
            } => {
                let c1 = -lr * (1.0 - mu) / (1.0 - mu_product);
                let c2 = -lr * mu_next / (1.0 - mu_product * mu_next);
                smallvec::smallvec![
                    e(Lerp, State(0), [g, None, None], cs(&[1.0 - beta1])),
                    e(SqA, State(1), [g, None, None], cs(&[beta2, 1.0 - beta2])),
                    e(NadamG, Out, [p, g, st(1)], cs(&[c1, bc2, eps])),
                    e(NadamM, Out, [st(0), st(1), None], cs(&[c2, bc2, eps])),
                ]
            }
            UpdateRule::Radam {
                beta1,
                beta2,
                eps,
                bc1,
                bc2_sqrt,
                rect,
            } => smallvec::smallvec![
                e(Lerp, State(0), [g, None, None], cs(&[1.0 - beta1])),
                e(SqA, State(1), [g, None, None], cs(&[beta2, 1.0 - beta2])),
                match rect {
                    Some(r) => e(
                        RadamRect,
                        Out,
                        [p, st(0), st(1)],
                        cs(&[bc1, lr, bc2_sqrt, eps, r]),
                    ),
                    None => e(RadamPlain, Out, [p, st(0), None], cs(&[bc1, lr])),
                },
            ],
            UpdateRule::Rprop {
                first,
                etaminus,
                etaplus,
                step_min,
                step_max,
            } => smallvec::smallvec![
                OptPass::Elem {
                    op: RpropStep,
                    dst: State(1),
                    src: [g, st(0), None],
                    c: cs(&[etaplus, etaminus, step_min, step_max]),
                    init: first.then_some(lr),
                },
                e(RpropPrev, State(0), [g, None, None], cs(&[])),
                e(RpropApply, Out, [p, st(0), st(1)], cs(&[])),
            ],
            UpdateRule::Yogi {
                first,
                init,
                beta1,
                beta2,
                eps,
                bc1,
                bc2_sqrt,
            } => smallvec::smallvec![
                OptPass::Elem {
                    op: Axpby,
                    dst: State(0),
                    src: [g, None, None],
                    c: cs(&[beta1, 1.0 - beta1]),
                    init: first.then_some(init),
                },
                OptPass::Elem {
                    op: YogiV,
                    dst: State(1),
                    src: [g, None, None],
                    c: cs(&[-(1.0 - beta2)]),
                    init: first.then_some(init),
                },
                e(
                    AdamApply,
                    Out,
                    [p, st(0), st(1)],
                    cs(&[-(lr / bc1), bc2_sqrt, eps, 1.0]),
                ),
            ],
            UpdateRule::Qhm { momentum, nu } => smallvec::smallvec![
                e(
                    Axpby,
                    State(0),
                    [g, None, None],
                    cs(&[momentum, 1.0 - momentum])
                ),
                e(Qhm, Out, [p, st(0), g], cs(&[-lr * nu, -lr * (1.0 - nu)])),
            ],
            UpdateRule::Qhadam {
                beta1_adj,
                beta2_adj,
                eps,
            } => smallvec::smallvec![
                e(
                    Axpby,
                    State(0),
                    [g, None, None],
                    cs(&[beta1_adj, 1.0 - beta1_adj])
                ),
                e(
                    SqB,
                    State(1),
                    [g, None, None],
                    cs(&[beta2_adj, 1.0 - beta2_adj])
                ),
                e(AdamApply, Out, [p, st(0), st(1)], cs(&[-lr, 1.0, eps, 1.0])),
            ],
            UpdateRule::Adabound {
                beta1,
                beta2,
                eps,
                bc1,
                bc2,
                lower,
                upper,
            } => smallvec::smallvec![
                e(Axpby, State(0), [g, None, None], cs(&[beta1, 1.0 - beta1])),
                e(SqB, State(1), [g, None, None], cs(&[beta2, 1.0 - beta2])),
                e(
                    Adabound,
                    Out,
                    [p, st(0), st(1)],
                    cs(&[lr * bc2.sqrt() / bc1, eps, lower, upper]),
                ),
            ],
            UpdateRule::Adamp {
                beta1,
                beta2,
                eps,
                delta,
                bc1,
                bc2_sqrt,
            } => smallvec::smallvec![
                e(Axpby, State(0), [g, None, None], cs(&[beta1, 1.0 - beta1])),
                e(SqB, State(1), [g, None, None], cs(&[beta2, 1.0 - beta2])),
                e(
                    Perturb,
                    Out,
                    [None, st(0), st(1)],
                    cs(&[0.0, bc2_sqrt, eps])
                ),
                OptPass::Project {
                    eps,
                    delta,
                    step: lr / bc1,
                },
            ],
            UpdateRule::Lookahead {
                beta1,
                beta2,
                eps,
                bc1,
                bc2_sqrt,
                alpha,
                sync,
                first,
            } => {
                let mut v = UpdateRule::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay: 0.0,
                    bc1,
                    bc2_sqrt,
                }
                .passes(lr);
                if sync {
                    if first {
                        v.push(OptPass::Copy {
                            src: Out,
                            dst: State(2),
                        });
                    }
                    v.push(e(
                        Axpby,
                        Out,
                        [st(2), None, None],
                        cs(&[alpha, 1.0 - alpha]),
                    ));
                    v.push(OptPass::Copy {
                        src: Out,
                        dst: State(2),
                    });
                }
                v
            }
        }
    }
}

/// The passes of one optimizer step (at most six, kept inline).
pub type OptPasses = smallvec::SmallVec<[OptPass; 6]>;

/// A matrix an [`OptPass`] reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// The parameter (read only).
    Param,
    /// The gradient (read only).
    Grad,
    /// The output.
    Out,
    /// State matrix `i`.
    State(usize),
}

/// The elementwise formulas of the optimizer passes: `dst ← f(d, a, b, c)` with `d` the old
/// destination (or `init` when the pass gives one), `a, b, c` the sources and `c0…c7` the
/// pass's coefficients. Every formula is written in the operation order torch uses, which
/// is what makes the f64 trajectories match torch's to the last bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ElemOp {
    /// `d + (a − d)·c0` (torch's `lerp_`).
    Lerp = 0,
    /// `d·c0 + a·c1`.
    Axpby = 1,
    /// `d·c0 + (c1·a)·a`.
    SqA = 2,
    /// `d·c0 + (a·a)·c1`.
    SqB = 3,
    /// `max(d·c0, |a| + c1)`.
    MaxAbs = 4,
    /// `d + sign(d − a²)·a²·c0` (Yogi's second moment).
    YogiV = 5,
    /// `clamp(d·f, c2, c3)` with `f = c0, c1, 1` as `a·b > 0, < 0, = 0` (Rprop's step sizes).
    RpropStep = 6,
    /// `0` when `a·d < 0`, else `a` (Rprop's remembered gradient).
    RpropPrev = 7,
    /// `a·c3 + c0·(b/(√c/c1 + c2))`.
    AdamApply = 8,
    /// `a + c0·(b/c)`.
    Quotient = 9,
    /// `a + c0·(b/(√c + c1))`.
    SqrtApply = 10,
    /// `a + c0·(b/(√(c/c1) + c2))`.
    NadamG = 11,
    /// `d + c0·(a/(√(b/c1) + c2))`.
    NadamM = 12,
    /// `a − (((b/c0)·c1)·(c2/(√c + c3)))·c4`.
    RadamRect = 13,
    /// `a − (b/c0)·c1`.
    RadamPlain = 14,
    /// `a − sign(b)·c`.
    RpropApply = 15,
    /// `(a + b·c0) + c·c1`.
    Qhm = 16,
    /// `a − clamp(c0/(√c + c1), c2, c3)·b`.
    Adabound = 17,
    /// `a + c0·b`.
    Axpy = 18,
    /// `a + c0·(b + c1·c)`.
    Nesterov = 19,
    /// `a·c0 + b·c1`.
    Lin2 = 20,
    /// `b/(√c/c1 + c2)`.
    Perturb = 21,
}

/// One pass of an optimizer step (see [`UpdateRule::passes`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptPass {
    /// `dst ← op(dst, src…)` elementwise; `dst` is never one of the sources.
    Elem {
        /// The formula.
        op: ElemOp,
        /// The destination (read too when the formula uses `d`).
        dst: Operand,
        /// The sources `a, b, c`.
        src: [Option<Operand>; 3],
        /// Coefficients `c0…c7`.
        c: [f64; 8],
        /// Use this value instead of the old destination (a state's first step).
        init: Option<f64>,
    },
    /// `dst ← src`.
    Copy {
        /// Source.
        src: Operand,
        /// Destination.
        dst: Operand,
    },
    /// AdamP's last pass: the direction held in `out` loses its radial part as SGDP's does
    /// (per row when every row's cosine `|⟨g,p⟩|/(‖g‖+ε)/(‖p‖+ε)` is below `δ/√k`, else for
    /// the whole matrix below `δ/√(pk)`), then `out ← p − step·out`.
    Project {
        /// ε.
        eps: f64,
        /// δ.
        delta: f64,
        /// The step size.
        step: f64,
    },
}

/// One elementwise formula of [`ElemOp`] in the element type `T` (the CPU backend's
/// arithmetic; the WGSL kernel `torch_elem` in `shaders/torch_optim.wgsl` mirrors it, case
/// by case, in the same operation order). `d` is the old destination, `a, b, c` the sources,
/// `k` the pass's coefficients.
///
/// ```
/// use nsa_flow::backend::{elem_op, ElemOp};
/// let k = [0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
/// assert_eq!(elem_op(ElemOp::Axpy, 0.0, 1.0, 4.0, 0.0, &k), 3.0); // a + c0·b
/// assert_eq!(elem_op(ElemOp::Lerp, 2.0, 4.0, 0.0, 0.0, &k), 3.0); // d + (a − d)·c0
/// ```
#[inline]
pub fn elem_op<T: crate::element::Element>(op: ElemOp, d: T, a: T, b: T, c: T, k: &[T; 8]) -> T {
    use ElemOp::*;
    let zero = T::zero();
    let sign = |x: T| {
        if x > zero {
            T::one()
        } else if x < zero {
            -T::one()
        } else {
            zero
        }
    };
    match op {
        Lerp => d + (a - d) * k[0],
        Axpby => d * k[0] + a * k[1],
        SqA => d * k[0] + (k[1] * a) * a,
        SqB => d * k[0] + (a * a) * k[1],
        MaxAbs => (d * k[0]).max(a.abs() + k[1]),
        YogiV => {
            let g2 = a * a;
            d + sign(d - g2) * g2 * k[0]
        }
        RpropStep => {
            let s = sign(a * b);
            let f = if s > zero {
                k[0]
            } else if s < zero {
                k[1]
            } else {
                T::one()
            };
            (d * f).max(k[2]).min(k[3])
        }
        RpropPrev => {
            if sign(a * d) < zero {
                zero
            } else {
                a
            }
        }
        AdamApply => a * k[3] + k[0] * (b / (c.sqrt() / k[1] + k[2])),
        Quotient => a + k[0] * (b / c),
        SqrtApply => a + k[0] * (b / (c.sqrt() + k[1])),
        NadamG => a + k[0] * (b / ((c / k[1]).sqrt() + k[2])),
        NadamM => d + k[0] * (a / ((b / k[1]).sqrt() + k[2])),
        RadamRect => a - (((b / k[0]) * k[1]) * (k[2] / (c.sqrt() + k[3]))) * k[4],
        RadamPlain => a - (b / k[0]) * k[1],
        RpropApply => a + -(sign(b) * c),
        Qhm => (a + b * k[0]) + c * k[1],
        Adabound => a + -((k[0] / (c.sqrt() + k[1])).max(k[2]).min(k[3]) * b),
        Axpy => a + k[0] * b,
        Nesterov => a + k[0] * (b + k[1] * c),
        Lin2 => a * k[0] + b * k[1],
        Perturb => b / (c.sqrt() / k[1] + k[2]),
    }
}
