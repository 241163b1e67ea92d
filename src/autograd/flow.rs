//! `nsa_flow_autograd`: minimise `E(nonneg(R_w(Z)))` over `Z` with an optimizer of the
//! registry, the gradient by the exact backward of [`super::grad`].

use super::grad::{self, EnergySpec};
use super::stepper::Stepper;
use super::CompositeSpec;
use super::DifferentiableBackend;
use crate::backend::{Backend, Reduction};
use crate::energy::{EnergyTerms, FidelityType, OrthType};
use crate::error::{NsaError, Result};
use crate::lr_estimate::{LrChoice, LrStrategy};
use crate::params::{Mode, NonNeg, OptimizerKind, Precision, Retraction};
use crate::result::{Control, IterInfo, StopReason, TraceRow};
use crate::rng::Rng;
use crate::setters::with_setters;
use crate::validate;
use nalgebra::DMatrix;
use std::time::Instant;

with_setters! {
    /// Parameters of [`nsa_flow_autograd`]; `Default` is the reference's signature
    /// (`w = 0.5`, soft-polar, `max_iter = 500`, `tol = 1e-6`, `seed = 42`, hard non-negativity,
    /// `asgd`, no initial learning rate, `lr_strategy = "auto"`, scale-invariant fidelity and
    /// orthogonality, `aggression = 0.5`, `record_every = 1`, `window_size = 5`, f64), in
    /// corrected mode on the best backend present.
    #[derive(Clone, Debug, PartialEq)]
    #[non_exhaustive]
    pub struct AutogradParams {
        /// The options shared with the flow ([`crate::CommonOptions`]: `w`, the retraction
        /// inside the objective, `max_iter`, the seed, the trace and window lengths,
        /// precision, mode, backend, adapter, perturbed start); each also has a setter here.
        pub common: crate::CommonOptions,
        /// Threshold of the energy-window test (and, in corrected mode, of the stationarity test).
        pub tol: f64,
        /// Non-negativity map after the retraction. Reference mode clamps X0 whatever the map
        /// (the reference passes the strings `"hard"`, `"softplus"`, `"none"`, all truthy, to a
        /// truthiness test); corrected mode clamps X0 only when a map is asked for.
        pub nonneg: NonNeg,
        /// An optimizer of the registry ([`crate::optimizers`]; default `asgd`). `fast` is not
        /// one (as in the reference's autograd) and is rejected by [`Self::validate`].
        pub optimizer: OptimizerKind,
        /// Initial learning rate; `None` lets `lr_strategy` decide.
        pub learning_rate: Option<f64> => Some(f64),
        /// How to choose the learning rate when none is given: [`LrChoice::Auto`] or a
        /// strategy (the setter also takes an [`crate::LrStrategy`]). Reference mode: `auto`
        /// gives `1e-3` (the reference never calls its estimator for it); corrected mode:
        /// `auto` is `armijo` on the true gradient.
        pub lr_strategy: LrChoice => into,
        /// Aggression of the learning-rate strategy, in [0, 1].
        pub aggression: f64,
        /// Fidelity functional.
        pub fidelity_type: FidelityType,
        /// Orthogonality functional.
        pub orth_type: OrthType,
    }
}

impl Default for AutogradParams {
    fn default() -> Self {
        AutogradParams {
            common: crate::CommonOptions::default(),
            tol: 1e-6,
            nonneg: NonNeg::Hard,
            optimizer: OptimizerKind::Torch("asgd"),
            learning_rate: None,
            lr_strategy: LrChoice::Auto,
            aggression: 0.5,
            fidelity_type: FidelityType::ScaleInvariant,
            orth_type: OrthType::ScaleInvariant,
        }
    }
}

impl AutogradParams {
    crate::params::common_setters!();

    /// Checks every scalar parameter and name.
    pub fn validate(&self) -> Result<()> {
        self.common.validate()?;
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(NsaError::InvalidParameter {
                name: "tol",
                reason: format!("{} is not a finite non-negative number", self.tol),
            });
        }
        if let Some(v) = self.learning_rate {
            if !(v.is_finite() && v > 0.0) {
                return Err(NsaError::InvalidParameter {
                    name: "learning rate",
                    reason: format!("{v} is not a positive finite number"),
                });
            }
        }
        if !(self.aggression.is_finite() && (0.0..=1.0).contains(&self.aggression)) {
            return Err(NsaError::InvalidParameter {
                name: "aggression",
                reason: format!("{} is not in [0, 1]", self.aggression),
            });
        }
        super::stepper::check_optimizer(self.optimizer)
    }

    fn retract_options(&self) -> crate::RetractOptions {
        self.composite(0.0, 0.0).retract_options()
    }

    fn composite(&self, fid_eta: f64, c_orth: f64) -> CompositeSpec {
        CompositeSpec {
            w: self.common.w,
            retraction: self.common.retraction,
            nonneg: self.nonneg,
            style: self.common.mode,
            fidelity_type: self.fidelity_type,
            orth_type: self.orth_type,
            fid_eta,
            c_orth,
        }
    }
}

/// What [`nsa_flow_autograd`] returns.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AutogradResult {
    /// The best `nonneg(R_w(Z))` found, rescaled by `scale` (retracted and non-negative).
    pub y: DMatrix<f64>,
    /// Recorded iterations. Unlike [`crate::NsaResult::traces`], `orthogonality` is the
    /// weighted term `¼·c_orth·O(Y)` here, as the reference's autograd traces record it.
    pub traces: Vec<TraceRow>,
    /// Iterations run.
    pub iterations: usize,
    /// Iteration of the best energy (the reference reports it as `final_iter`).
    pub best_iteration: usize,
    /// The best total energy (of the normalised problem).
    pub best_total_energy: f64,
    /// The target used, at the input's scale (after the non-negativity clamp).
    pub target: DMatrix<f64>,
    /// The scale `s = RMS(X0) + 1e-12` the problem was normalised by.
    pub scale: f64,
    /// Fidelity weight of the energy.
    pub fid_eta: f64,
    /// Orthogonality weight of the energy.
    pub c_orth: f64,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// The learning rate used.
    pub learning_rate: f64,
    /// Where the learning rate came from (`given`, `default`, or the strategy's name).
    pub learning_rate_source: String,
    /// Fidelity functional.
    pub fidelity_type: FidelityType,
    /// Orthogonality functional.
    pub orth_type: OrthType,
    /// The retraction.
    pub retraction: Retraction,
    /// `‖∇_Z E‖_F` at the last gradient evaluated.
    pub final_grad_norm: f64,
    /// Gradient evaluations (forward + backward passes).
    pub gradient_evaluations: usize,
    /// Why the loop ended.
    pub stop_reason: StopReason,
    /// The algorithm that ran.
    pub mode: Mode,
    /// The arithmetic precision.
    pub precision: Precision,
    /// Where it ran: the backend's name, the GPU adapter, the device readbacks.
    pub device: crate::DeviceInfo,
    /// Wall-clock seconds of the loop.
    pub seconds: f64,
}

/// The reference's `nsa_flow_autograd(Y0, X0, …)`: normalises the problem by the RMS of the
/// (clamped) target, calibrates `fid_eta` and `c_orth` at the start, and minimises
/// `E(nonneg(R_w(Z)))` over `Z` with the chosen optimizer, the gradient by the exact
/// backward; the best iterate (retracted and non-negative) is returned at the input's scale.
///
/// Reference mode reproduces nsa_flow 0.7.7, defects included: `lr_strategy = "auto"` means
/// `lr = 1e-3`; the scale-invariant fidelity is normalised twice (by `fid_eta` and by
/// `‖X0‖² = pk`); the learning-rate estimator sees a zero gradient. Corrected mode: each term
/// is normalised once (`E(Z₀) = 1`), the retraction is the scale-invariant one, `auto`
/// estimates the learning rate by Armijo on the true gradient, X0 is clamped only when a
/// non-negativity map is asked for, and a scale-free stationarity test
/// `‖∇E‖·‖Z‖ ≤ tol·|E|` ends the run besides the energy window (docs/ALGORITHM.md).
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::autograd::{nsa_flow_autograd, AutogradParams};
/// let x0 = DMatrix::from_fn(20, 3, |i, j| ((i * 7 + j * 3) % 5) as f64);
/// let params = AutogradParams::default()
///     .optimizer("adam".parse().unwrap())
///     .learning_rate(1e-2)
///     .max_iter(50);
/// let res = nsa_flow_autograd(&x0, Some(&x0), &params).unwrap();
/// assert!(res.y.iter().all(|&v| v >= 0.0));
/// assert!(res.best_total_energy <= res.traces[0].total_energy);
/// ```
pub fn nsa_flow_autograd(
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &AutogradParams,
) -> Result<AutogradResult> {
    nsa_flow_autograd_with_callback(y0, x0, params, |_| Control::Continue)
}

/// [`nsa_flow_autograd`] with a per-iteration callback that may stop the run (return
/// [`Control::Stop`]); `IterInfo::stationarity` is `‖∇_Z E‖` here.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::autograd::{nsa_flow_autograd_with_callback, AutogradParams};
/// use nsa_flow::{BackendChoice, Control, StopReason};
/// let x0 = DMatrix::from_fn(15, 2, |i, j| ((i + 2 * j) % 3) as f64 + 1.0);
/// let params = AutogradParams::default().backend(BackendChoice::Cpu);
/// let mut energies = Vec::new();
/// let res = nsa_flow_autograd_with_callback(&x0, Some(&x0), &params, |info| {
///     energies.push(info.total_energy);
///     if info.iter == 5 { Control::Stop } else { Control::Continue }
/// })
/// .unwrap();
/// assert_eq!((res.iterations, res.stop_reason), (5, StopReason::Callback));
/// assert_eq!(energies.len(), 5);
/// ```
pub fn nsa_flow_autograd_with_callback<F: FnMut(&IterInfo) -> Control>(
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &AutogradParams,
    mut callback: F,
) -> Result<AutogradResult> {
    params.validate()?;
    let mut be = crate::backend::select::DeviceOptions::of(&params.common).backend()?;
    crate::with_backend!(&mut be, b => solve_autograd(b, y0, x0, params, &mut callback))
}

/// The normalised problem and its calibration.
struct Setup {
    z0: DMatrix<f64>,
    target: DMatrix<f64>,
    scale: f64,
    spec: CompositeSpec,
}

fn setup(y0: &DMatrix<f64>, x0: Option<&DMatrix<f64>>, params: &AutogradParams) -> Result<Setup> {
    validate::finite_nonempty("Y0", y0)?;
    validate::nonzero("Y0", y0, "the flow needs a non-zero start (its orthogonality defect and retraction are undefined at 0)")?;
    let (p, k) = y0.shape();
    let o = params.retract_options();
    grad::check_differentiable(p, k, &o)?;
    if params.common.mode == Mode::Corrected
        && k > p
        && params.common.retraction != Retraction::None
    {
        return Err(NsaError::KGreaterThanP {
            p,
            k,
            why: "k > p columns cannot be orthogonal, so the corrected energy has no attainable optimum \
                  (mode = reference runs it, as the reference does)",
        });
    }
    let clamp = match params.common.mode {
        // the reference clamps X0 for any truthy apply_nonneg, the strings "softplus" and
        // "none" included (Q16)
        Mode::Reference => true,
        Mode::Corrected => params.nonneg != NonNeg::None,
    };
    let (mut z, mut target) = crate::flow::start_and_target(
        y0,
        x0,
        clamp,
        &params.common,
        "the energy measures fidelity relative to the target's scale",
    )?;
    let pk = (p * k) as f64;
    let scale = (target.norm_squared() / pk).sqrt() + 1e-12;
    target /= scale;
    z /= scale;
    let d = crate::invariant_orthogonality_defect(&z);
    let (fid_eta, c_orth) = match params.common.mode {
        Mode::Reference => {
            let g0 = (0.5 * (&z - &target).norm_squared() / pk).max(1e-8);
            let d0 = d.max(1e-8);
            (
                (1.0 - params.common.w) / (g0 * pk),
                4.0 * params.common.w / d0,
            )
        }
        Mode::Corrected => {
            // one normalisation: each unweighted term is calibrated to 1 at the start, so
            // E(Z₀) = (1 − w) + w and w is a convex weight whatever the functionals
            let unit = params.composite(1.0, 1.0);
            let r = crate::retract::retract(&z, &unit.retract_options())?;
            let y = crate::energy::apply_nonnegativity(&r, params.nonneg);
            let e = crate::compute_energy(
                &y,
                &target,
                params.fidelity_type,
                params.orth_type,
                1.0,
                1.0,
            )?;
            // floors relative to the problem's scale (‖X0‖² = pk after normalisation)
            let f0 = e
                .fidelity
                .max(1e-8 * fid_floor_scale(params.fidelity_type, pk));
            let o0 = e
                .orthogonality
                .max(1e-8 * orth_floor_scale(params.orth_type, k));
            ((1.0 - params.common.w) / f0, params.common.w / o0)
        }
    };
    let spec = params.composite(fid_eta, c_orth);
    Ok(Setup {
        z0: z,
        target,
        scale,
        spec,
    })
}

fn fid_floor_scale(t: FidelityType, pk: f64) -> f64 {
    match t {
        FidelityType::Basic => pk,
        _ => 1.0,
    }
}

fn orth_floor_scale(t: OrthType, k: usize) -> f64 {
    match t {
        OrthType::Basic => k as f64,
        OrthType::ScaleInvariant => 1.0,
    }
}

/// Device-resident state of one evaluation `Y = nonneg(R(Z))`.
struct Eval<M> {
    retracted: M,
    y: M,
}

#[allow(clippy::too_many_arguments)]
fn forward<B: Backend>(
    be: &mut B,
    z: &B::Mat,
    g_z: Option<&B::Mat>,
    ev: &mut Eval<B::Mat>,
    target: &B::Mat,
    spec: &CompositeSpec,
    x0n: f64,
    k: usize,
    out: &mut Vec<f64>,
) -> Result<(crate::Energy, EnergyTerms)> {
    be.retract(z, &mut ev.retracted, &spec.retract_options());
    be.copy(&ev.retracted, &mut ev.y);
    be.nonneg(&mut ev.y, spec.nonneg);
    // the gradient's and the parameter's norms ride along in the same readback
    let mut req = vec![
        Reduction::EnergyTerms { y: &ev.y, target },
        Reduction::AllFinite(&ev.y),
    ];
    if let Some(g) = g_z {
        req.push(Reduction::NormSq(g));
        req.push(Reduction::NormSq(z));
    }
    be.reduce_into(&req, out)?;
    let terms = EnergyTerms {
        dist_sq: out[0],
        gram_fro_sq: out[1],
        gram_diag_sq: out[2],
        norm_sq: out[3],
    };
    if out[4] != 1.0 {
        return Err(NsaError::NonFiniteComputation {
            what: "the retracted iterate",
            cause: crate::error::NumericCause::Unknown,
        });
    }
    Ok((spec.energy_spec().energy(&terms, x0n, k), terms))
}

#[allow(clippy::too_many_arguments)]
fn backward<B: DifferentiableBackend>(
    be: &mut B,
    z: &B::Mat,
    ev: &Eval<B::Mat>,
    target: &B::Mat,
    spec: &CompositeSpec,
    terms: &EnergyTerms,
    x0n: f64,
    g_y: &mut B::Mat,
    g_z: &mut B::Mat,
) {
    let es: EnergySpec = spec.energy_spec();
    be.energy_gradient(&ev.y, target, &es, terms, x0n, g_y);
    be.nonneg_backward(&ev.retracted, spec.nonneg, g_y);
    be.retract_backward(z, &spec.retract_options(), g_y, g_z);
}

/// The loop on any backend (public so device backends can be cross-validated against the CPU
/// oracle with the same control flow); `params.backend` is not consulted.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::autograd::{solve_autograd, AutogradParams};
/// use nsa_flow::backend::cpu::CpuBackend;
/// use nsa_flow::{Control, Precision};
/// let x0 = DMatrix::from_fn(10, 2, |i, j| ((i * 3 + j) % 4) as f64 + 1.0);
/// let params = AutogradParams::default().max_iter(20).precision(Precision::F32);
/// let res = solve_autograd(&mut CpuBackend::<f32>::new(), &x0, Some(&x0), &params, &mut |_| Control::Continue).unwrap();
/// assert_eq!(res.precision, Precision::F32);
/// assert!(res.y.iter().all(|&v| v >= 0.0));
/// ```
pub fn solve_autograd<B: DifferentiableBackend, F: FnMut(&IterInfo) -> Control>(
    be: &mut B,
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &AutogradParams,
    callback: &mut F,
) -> Result<AutogradResult> {
    params.validate()?;
    let (p, k) = y0.shape();
    let f32 = be.precision() == crate::Precision::F32;
    crate::memory::ensure_solve_fits(p, k, if f32 { 4 } else { 8 }, be.readbacks().is_some())?;
    let magnitude = validate::magnitude(&[Some(y0), x0]);
    let res = validate::classify(
        solve_autograd_unchecked(be, y0, x0, params, callback),
        magnitude,
        f32,
    )?;
    // a result holding NaN/Inf is an error, never an answer
    validate::finite_result("result Y", &res.y, magnitude, f32)?;
    Ok(res)
}

fn solve_autograd_unchecked<B: DifferentiableBackend, F: FnMut(&IterInfo) -> Control>(
    be: &mut B,
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &AutogradParams,
    callback: &mut F,
) -> Result<AutogradResult> {
    let Setup {
        z0,
        target: target_h,
        scale,
        spec,
    } = setup(y0, x0, params)?;
    let (p, k) = z0.shape();
    let x0n = target_h.norm_squared();

    // learning rate
    let (lr, lr_source) = match (params.learning_rate, params.lr_strategy, params.common.mode) {
        (Some(v), _, _) => (v, "given".to_string()),
        (None, LrChoice::Auto, Mode::Reference) => (1e-3, "default".to_string()),
        (None, choice, mode) => {
            let strategy = match choice {
                LrChoice::Auto => LrStrategy::Armijo,
                LrChoice::Strategy(s) => s,
            };
            let est = estimate_lr(
                &z0,
                &target_h,
                &spec,
                strategy,
                params.aggression,
                mode,
                params.common.seed,
            )?;
            (est, strategy.to_string())
        }
    };

    let z_init = be.upload(&z0)?;
    let target = be.upload(&target_h)?;
    let mut z = be.zeros(p, k)?;
    be.copy(&z_init, &mut z);
    let mut ev = Eval {
        retracted: be.zeros(p, k)?,
        y: be.zeros(p, k)?,
    };
    let mut best = be.zeros(p, k)?;
    let mut g_y = be.zeros(p, k)?;
    let mut g_z = be.zeros(p, k)?;
    let mut scratch = be.zeros(p, k)?;
    let mut stepper = Stepper::new(be, params.optimizer.as_str(), lr, p, k)?;
    let mut out = Vec::with_capacity(8);

    let start = Instant::now();
    let mut traces = Vec::new();
    let mut recent: std::collections::VecDeque<f64> = std::collections::VecDeque::new();
    let mut best_e = f64::INFINITY;
    let mut best_it = 0;
    let mut grad_evals = 0usize;
    let mut stop = StopReason::MaxIter;
    let mut iterations = 0;
    let mut grad_norm = f64::NAN;

    // the energy (and the reductions the gradient needs) at the current Z
    let (_, mut terms) = forward(be, &z, None, &mut ev, &target, &spec, x0n, k, &mut out)?;
    for it in 1..=params.common.max_iter {
        iterations = it;
        backward(be, &z, &ev, &target, &spec, &terms, x0n, &mut g_y, &mut g_z);
        grad_evals += 1;
        let mut closure = |be: &mut B, zt: &B::Mat, g: &mut B::Mat| -> Result<f64> {
            let (e, t) = forward(be, zt, None, &mut ev, &target, &spec, x0n, k, &mut out)?;
            backward(be, zt, &ev, &target, &spec, &t, x0n, &mut g_y, g);
            grad_evals += 1;
            Ok(e.total)
        };
        stepper.step(be, &mut z, &g_z, &mut scratch, &mut closure)?;
        // the post-step evaluation is also the next iteration's forward pass
        let (e_new, t_new) = match forward(
            be,
            &z,
            Some(&g_z),
            &mut ev,
            &target,
            &spec,
            x0n,
            k,
            &mut out,
        ) {
            Ok(v) => v,
            Err(NsaError::NonFiniteComputation { .. }) => {
                stop = StopReason::NonFiniteGradient;
                break;
            }
            Err(e) => return Err(e),
        };
        let e_cur = e_new;
        terms = t_new;
        let gn = out[5].sqrt();
        let zn = out[6].sqrt();
        grad_norm = gn;
        if e_cur.total < best_e {
            best_e = e_cur.total;
            best_it = it;
            be.copy(&ev.y, &mut best);
        }
        if it % params.common.record_every == 0 {
            traces.push(TraceRow {
                iter: it,
                time: start.elapsed().as_secs_f64(),
                fidelity: e_cur.fidelity,
                orthogonality: e_cur.orthogonality,
                total_energy: e_cur.total,
            });
        }
        let info = IterInfo {
            iter: it,
            fidelity: e_cur.fidelity,
            orthogonality: e_cur.orthogonality,
            total_energy: e_cur.total,
            best_total_energy: best_e,
            learning_rate: lr,
            backtracks: 0,
            stationarity: gn,
            elapsed: start.elapsed().as_secs_f64(),
        };
        if callback(&info) == Control::Stop {
            stop = StopReason::Callback;
            break;
        }
        recent.push_back(e_cur.total);
        if recent.len() > params.common.window_size {
            recent.pop_front();
        }
        if recent.len() >= params.common.window_size {
            let max = recent.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let min = recent.iter().cloned().fold(f64::INFINITY, f64::min);
            let mean = recent.iter().sum::<f64>() / recent.len() as f64;
            if (max - min) / (mean.abs() + 1e-12) < params.tol {
                stop = StopReason::EnergyWindow;
                break;
            }
        }
        if params.common.mode == Mode::Corrected
            && gn.is_finite()
            && gn * zn <= params.tol * e_cur.total.abs()
        {
            stop = StopReason::Certificate;
            break;
        }
    }
    if best_it == 0 {
        // nothing finite was reached: the (retracted, projected) start
        forward(be, &z_init, None, &mut ev, &target, &spec, x0n, k, &mut out).ok();
        be.copy(&ev.y, &mut best);
    }
    let y = be.download(&best)? * scale;
    let device = crate::DeviceInfo::of(be);
    Ok(AutogradResult {
        y,
        traces,
        iterations,
        best_iteration: best_it,
        best_total_energy: best_e,
        target: target_h * scale,
        scale,
        fid_eta: spec.fid_eta,
        c_orth: spec.c_orth,
        optimizer: params.optimizer,
        learning_rate: lr,
        learning_rate_source: lr_source,
        fidelity_type: params.fidelity_type,
        orth_type: params.orth_type,
        retraction: params.common.retraction,
        final_grad_norm: grad_norm,
        gradient_evaluations: grad_evals,
        stop_reason: stop,
        mode: params.common.mode,
        precision: be.precision(),
        device,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The learning rate a strategy picks. Reference mode calls the estimator as the reference
/// does: at a random start (`randn_like(X0)`) with the estimator's default (scale-invariant)
/// functionals, where its zero gradient makes the choice a fixed grid point; corrected mode
/// at the actual start with the actual objective and its true gradient.
fn estimate_lr(
    z: &DMatrix<f64>,
    x0: &DMatrix<f64>,
    spec: &CompositeSpec,
    strategy: LrStrategy,
    aggression: f64,
    mode: Mode,
    seed: u64,
) -> Result<f64> {
    let est = match mode {
        Mode::Reference => {
            let mut rng = Rng::new(seed);
            let start = DMatrix::from_fn(z.nrows(), z.ncols(), |_, _| rng.normal());
            let spec = CompositeSpec {
                fidelity_type: FidelityType::ScaleInvariant,
                orth_type: OrthType::ScaleInvariant,
                ..*spec
            };
            crate::lr_estimate::estimate_for_spec(&start, x0, &spec, strategy, aggression, seed)?
        }
        Mode::Corrected => {
            crate::lr_estimate::estimate_for_spec(z, x0, spec, strategy, aggression, seed)?
        }
    };
    Ok(est.best_lr)
}
