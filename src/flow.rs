//! The solver loop, written once over [`Backend`]: reference mode (nsa_flow 0.7.7, defects
//! included) and corrected mode (see docs/ALGORITHM.md).

use crate::backend::select::DeviceOptions;
use crate::backend::{Backend, GradientRule, Projection, Reduction, UpdateRule};
use crate::energy::EnergyTerms;
use crate::error::{NsaError, Result};
use crate::optim::{BackendLbfgs, Schedule};
use crate::params::{
    BackendChoice, LearningRate, Mode, NonNeg, OptimizerKind, Params, Precision, Retraction,
};
use crate::result::{Certificate, Control, IterInfo, NsaResult, Scaling, StopReason, TraceRow};
use crate::retract::RetractOptions;
use crate::rng::Rng;
use crate::validate;
use nalgebra::DMatrix;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::time::Instant;

/// Runs NSA-Flow from `y0` towards `x0` (or, when `x0` is `None`, towards the non-negative
/// part of `y0` from a 5 % perturbation of it), with the parameters of the reference's
/// `nsa_flow`. See [`Params`] for every option and [`NsaResult`] for what comes back.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::{nsa_flow, Params};
/// let x0 = DMatrix::from_fn(20, 3, |i, j| ((i * 7 + j * 3) % 5) as f64);
/// let res = nsa_flow(&x0, Some(&x0), &Params::default().w(0.8).max_iter(200)).unwrap();
/// assert!(res.y.iter().all(|&v| v >= 0.0));
/// assert!(res.defect() < nsa_flow::invariant_orthogonality_defect(&x0));
/// ```
pub fn nsa_flow(
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &Params,
) -> Result<NsaResult> {
    nsa_flow_with_callback(y0, x0, params, |_| Control::Continue)
}

/// [`nsa_flow`] with a per-iteration callback: it receives what the reference printed with
/// `verbose=True` and may stop the run early by returning [`Control::Stop`].
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::{nsa_flow_with_callback, Control, Params, StopReason};
/// let y0 = DMatrix::from_fn(10, 2, |i, j| (i + 2 * j) as f64 + 1.0);
/// let res = nsa_flow_with_callback(&y0, Some(&y0), &Params::default(), |info| {
///     if info.iter == 3 { Control::Stop } else { Control::Continue }
/// })
/// .unwrap();
/// assert_eq!(res.iterations, 3);
/// assert_eq!(res.stop_reason, StopReason::Callback);
/// ```
pub fn nsa_flow_with_callback<F>(
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &Params,
    mut callback: F,
) -> Result<NsaResult>
where
    F: FnMut(&IterInfo) -> Control,
{
    params.validate()?;
    let mut be = DeviceOptions::of(&params.common).backend()?;
    crate::with_backend!(&mut be, b => solve(b, y0, x0, params, &mut callback))
}

#[cfg(feature = "gpu")]
pub use crate::backend::select::gpu_backend_for;

struct Prepared {
    y_init: DMatrix<f64>,
    target: DMatrix<f64>,
}

/// Checks the inputs and builds the start and target on the host (in f64): the reference's
/// preprocessing (§1.2 of the spec).
fn prepare(y0: &DMatrix<f64>, x0: Option<&DMatrix<f64>>, params: &Params) -> Result<Prepared> {
    params.validate()?;
    validate::finite_nonempty("Y0", y0)?;
    validate::nonzero("Y0", y0, "the flow needs a non-zero start (its orthogonality defect and retraction are undefined at 0)")?;
    let (p, k) = y0.shape();
    let clamp = params.nonneg != NonNeg::None;
    if params.common.mode == Mode::Corrected {
        if params.nonneg == NonNeg::Softplus {
            return Err(NsaError::InvalidParameter {
                name: "nonneg",
                reason: "softplus is a parametrisation, not a projection: the corrected solver enforces Y ≥ 0 with \
                         'hard' (or none); mode = reference treats softplus as hard, like the reference"
                    .into(),
            });
        }
        if k > p {
            return Err(NsaError::KGreaterThanP {
                p,
                k,
                why: "a p×k matrix with k > p cannot have k orthogonal non-zero columns, so the corrected \
                      energy has no attainable optimum (mode = reference runs it, as the reference does)",
            });
        }
    }
    let (y_init, target) = start_and_target(
        y0,
        x0,
        clamp,
        &params.common,
        "both modes measure fidelity relative to ‖X0‖² (the reference divides by it)",
    )?;
    Ok(Prepared { y_init, target })
}

/// The reference's preprocessing of the start and the target (spec §1.2), shared by the
/// flow and autograd: with `X0` given, `(Y0, clamp(X0))`; without, the self-target
/// `clamp(Y0)` and a start perturbed by 5 % of Y0's entry RMS (drawn with `seed`, or the
/// given `perturbed_start`). `clamp` projects onto `≥ 0`. A target that is zero after the
/// projection is an error, `target_why` saying why the caller needs it non-zero.
pub(crate) fn start_and_target(
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    clamp: bool,
    common: &crate::CommonOptions,
    target_why: &'static str,
) -> Result<(DMatrix<f64>, DMatrix<f64>)> {
    let (start, target) =
        start_and_raw_target(y0, x0, clamp, common.seed, common.perturbed_start.as_ref())?;
    validate::nonzero(
        if x0.is_some() {
            "X0 (after the non-negativity projection)"
        } else {
            "the target (Y0's non-negative part)"
        },
        &target,
        target_why,
    )?;
    Ok((start, target))
}

fn start_and_raw_target(
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    clamp: bool,
    seed: u64,
    perturbed_start: Option<&DMatrix<f64>>,
) -> Result<(DMatrix<f64>, DMatrix<f64>)> {
    let (p, k) = y0.shape();
    let clamp_m = |m: &DMatrix<f64>| {
        if clamp {
            m.map(|v| v.max(0.0))
        } else {
            m.clone()
        }
    };
    match x0 {
        Some(x) => {
            validate::finite_nonempty("X0", x)?;
            validate::same_shape("X0", x, (p, k))?;
            if perturbed_start.is_some() {
                return Err(NsaError::InvalidParameter {
                    name: "perturbed_start",
                    reason: "only used when X0 is None (the self-target case)".into(),
                });
            }
            Ok((y0.clone(), clamp_m(x)))
        }
        None => {
            let y_init = match perturbed_start {
                Some(s) => {
                    validate::finite_nonempty("perturbed_start", s)?;
                    validate::same_shape("perturbed_start", s, (p, k))?;
                    s.clone()
                }
                None => {
                    let sigma = y0.norm() / ((p * k) as f64).sqrt() * 0.05;
                    let mut rng = Rng::new(seed);
                    let noise = DMatrix::from_fn(p, k, |_, _| rng.normal());
                    y0 + noise * sigma
                }
            };
            Ok((y_init, clamp_m(y0)))
        }
    }
}

/// `E = fid_weight·‖Y−X0‖² + orth_weight·D` (or the simplified off-diagonal form).
#[derive(Clone, Copy, Debug)]
struct EnergyModel {
    fid_weight: f64,
    orth_weight: f64,
    /// Corrected + simplified: `orth_weight·‖offdiag(S)‖²/offdiag_scale` replaces `orth_weight·D`.
    offdiag_scale: Option<f64>,
}

impl EnergyModel {
    /// (fidelity term, raw defect, total).
    fn eval(&self, t: &EnergyTerms) -> (f64, f64, f64) {
        let fidelity = self.fid_weight * t.dist_sq;
        let defect = t.defect();
        let orth = match self.offdiag_scale {
            Some(s) => self.orth_weight * t.offdiag_sq() / s,
            None => self.orth_weight * defect,
        };
        (fidelity, defect, fidelity + orth)
    }

    fn from_slice(v: &[f64]) -> EnergyTerms {
        EnergyTerms {
            dist_sq: v[0],
            gram_fro_sq: v[1],
            gram_diag_sq: v[2],
            norm_sq: v[3],
        }
    }

    /// The true gradient of this energy as a backend rule.
    fn true_gradient(&self, projection: Projection) -> GradientRule {
        GradientRule {
            fid: 2.0 * self.fid_weight,
            orth: 4.0 * self.orth_weight,
            simplified: self.offdiag_scale.map(|s| 4.0 * self.orth_weight / s),
            projection,
        }
    }
}

/// The optimizer of one solve with its state, allocated once before the loop.
enum Stepper<M> {
    /// "fast": `Y − lr·g`.
    Plain,
    /// A registry optimizer: its host schedule and its state matrices on the backend.
    Rule { schedule: Schedule, state: Vec<M> },
    /// LBFGS, whose closure re-evaluates the mode's energy and direction.
    Lbfgs(Box<BackendLbfgs<M>>),
}

impl<M> Stepper<M> {
    fn new<B: Backend<Mat = M>>(
        be: &mut B,
        kind: OptimizerKind,
        lr: f64,
        p: usize,
        k: usize,
    ) -> Result<Self> {
        Ok(match kind {
            OptimizerKind::Fast => Stepper::Plain,
            OptimizerKind::Lbfgs => Stepper::Lbfgs(Box::new(BackendLbfgs::new(lr))),
            other => {
                let schedule = Schedule::new(other.as_str(), lr)?;
                let state = (0..schedule.state_len())
                    .map(|_| be.zeros(p, k))
                    .collect::<Result<_>>()?;
                Stepper::Rule { schedule, state }
            }
        })
    }

    /// `out ←` one optimizer step from `y` along `grad` at learning rate `lr`; LBFGS calls
    /// `eval(be, x, g)` (the energy at `x`, its direction written into `g`) at its trial
    /// points.
    #[allow(clippy::too_many_arguments)]
    fn step<B, F>(
        &mut self,
        be: &mut B,
        y: &M,
        grad: &M,
        lr: f64,
        out: &mut M,
        shape: (usize, usize),
        eval: F,
    ) -> Result<()>
    where
        B: Backend<Mat = M>,
        F: FnMut(&mut B, &M, &mut M) -> Result<f64>,
    {
        match self {
            Stepper::Plain => be.optimizer_step(&UpdateRule::Sgd, y, grad, &mut [], lr, out),
            Stepper::Rule { schedule, state } => schedule.step(be, y, grad, state, lr, out),
            Stepper::Lbfgs(opt) => {
                be.copy(y, out);
                opt.set_lr(lr);
                opt.step(be, out, shape.0, shape.1, eval)?;
            }
        }
        Ok(())
    }
}

struct Recorder<'a, F> {
    params: &'a Params,
    t0: Instant,
    traces: Vec<TraceRow>,
    recent: VecDeque<f64>,
    callback: &'a mut F,
}

impl<F: FnMut(&IterInfo) -> Control> Recorder<'_, F> {
    fn record(&mut self, it: usize, fid: f64, defect: f64, total: f64) {
        self.recent.push_back(total);
        while self.recent.len() > self.params.common.window_size {
            self.recent.pop_front();
        }
        if it % self.params.common.record_every == 0 {
            self.traces.push(TraceRow {
                iter: it,
                time: self.t0.elapsed().as_secs_f64(),
                fidelity: fid,
                orthogonality: defect,
                total_energy: total,
            });
        }
    }

    /// The reference's energy-window test: `(max − min)/(|mean| + 1e-12) < thresh` over a
    /// full window.
    fn window_stable(&self, thresh: f64) -> bool {
        if self.recent.len() < self.params.common.window_size {
            return false;
        }
        let max = self
            .recent
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max);
        let min = self.recent.iter().cloned().fold(f64::INFINITY, f64::min);
        let mean = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        (max - min) / (mean.abs() + 1e-12) < thresh
    }
}

/// The loop on any backend. Public so device backends can be cross-validated against the
/// CPU oracle with exactly the same control flow. `params.backend` is not consulted (the
/// caller chose `be`); `params` is not validated here ([`nsa_flow`] does it).
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::backend::cpu::CpuBackend;
/// use nsa_flow::{flow::solve, Control, Params, Precision};
/// let x0 = DMatrix::from_fn(12, 3, |i, j| ((i * 5 + j) % 4) as f64 + 0.5);
/// let params = Params::default().w(0.5).max_iter(100);
/// let f32_run = solve(&mut CpuBackend::<f32>::new(), &x0, Some(&x0), &params, &mut |_| Control::Continue).unwrap();
/// assert_eq!(f32_run.precision, Precision::F32);
/// let f64_run = nsa_flow::nsa_flow(&x0, Some(&x0), &params).unwrap();
/// assert!((f32_run.y.clone() - &f64_run.y).norm() <= 1e-3 * f64_run.y.norm());
/// ```
pub fn solve<B: Backend, F: FnMut(&IterInfo) -> Control>(
    be: &mut B,
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &Params,
    callback: &mut F,
) -> Result<NsaResult> {
    let (p, k) = y0.shape();
    let f32 = be.precision() == Precision::F32;
    crate::memory::ensure_solve_fits(p, k, if f32 { 4 } else { 8 }, be.readbacks().is_some())?;
    let prep = prepare(y0, x0, params)?;
    let magnitude = validate::magnitude(&[Some(y0), x0]);
    let res = match params.common.mode {
        Mode::Reference => solve_reference(be, prep, params, callback),
        Mode::Corrected => solve_corrected(be, prep, params, callback, None),
    };
    let res = validate::classify(res, magnitude, f32)?;
    // a result holding NaN/Inf is an error, never an answer (nor a file written with exit 0)
    validate::finite_result("result Y", &res.y, magnitude, f32)?;
    if res.traces.iter().any(|t| {
        !(t.fidelity.is_finite() && t.orthogonality.is_finite() && t.total_energy.is_finite())
    }) {
        return Err(NsaError::NonFiniteComputation {
            what: "energy of the run",
            cause: magnitude.cause(f32),
        });
    }
    Ok(res)
}

/// One accepted step of the corrected loop, as recorded for the layer's backward
/// ([`CorrectedTape`]): `y_{t+1} = Π(R?(y_t − alpha·plr·∇E(y_t)))` (with the "fast"
/// optimizer; the retraction only for [`Candidate::Retracted`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct TapeStep {
    /// What the candidate was made of.
    pub kind: Candidate,
    /// The accepted halving factor `α = 2^-j`.
    pub alpha: f64,
    /// The learning rate of the candidate's phase (internal units, `lr/s²`).
    pub plr: f64,
    /// Whether `plr` is the scale-free step `0.1·‖y_t‖/‖∇E(y_t)‖` of this iteration (the
    /// last phase) rather than the running learning rate.
    pub from_safe: bool,
}

/// What the corrected loop did, recorded for differentiating it (`crate::layer`): the
/// normalisation, the energy's weights, the iterates (normalised, `iterates[0]` the start)
/// and every accepted step's discrete choices and step size. Recorded only by
/// [`solve_corrected_recorded`]; [`solve`] records nothing and runs exactly as before.
#[derive(Clone, Debug, Default)]
pub(crate) struct CorrectedTape {
    /// `s`, the RMS of the (projected) target: the solve runs on `Y/s`, `X0/s`.
    pub scale: f64,
    /// The normalised target `Π(X0)/s`.
    pub target_n: DMatrix<f64>,
    /// Fidelity weight `(1−w)/‖X0/s‖²`.
    pub fid_weight: f64,
    /// Orthogonality weight `w/(1−1/k)` (0 for k = 1).
    pub orth_weight: f64,
    /// `Some(‖X0/s‖⁴)` with `simplified`.
    pub offdiag_scale: Option<f64>,
    /// The initial learning rate (internal units).
    pub lr0: f64,
    /// `y_0 = Π(Y0)/s, y_1, …, y_T` (`y_T/… ·s` is the answer).
    pub iterates: Vec<DMatrix<f64>>,
    /// Step `t` maps `iterates[t]` to `iterates[t + 1]`.
    pub steps: Vec<TapeStep>,
}

/// [`solve`] in corrected mode on the CPU in f64, recording the [`CorrectedTape`] (the
/// result is the same as an unrecorded CPU f64 solve: recording only copies iterates out).
pub(crate) fn solve_corrected_recorded(
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &Params,
) -> Result<(NsaResult, CorrectedTape)> {
    if params.common.mode != Mode::Corrected {
        return Err(NsaError::InvalidParameter {
            name: "mode",
            reason: "only the corrected loop records a tape".into(),
        });
    }
    let mut params = params.clone();
    params.common.precision = Precision::F64;
    params.common.backend = BackendChoice::Cpu;
    params.common.gpu_adapter = None;
    let prep = prepare(y0, x0, &params)?;
    let mut tape = CorrectedTape::default();
    let res = solve_corrected(
        &mut crate::backend::cpu::CpuBackend::<f64>::new(),
        prep,
        &params,
        &mut |_: &IterInfo| Control::Continue,
        Some(&mut tape),
    )?;
    Ok((res, tape))
}

fn certificate_of<B: Backend>(
    be: &mut B,
    y: &B::Mat,
    x0: &B::Mat,
    model: &EnergyModel,
    clamp: bool,
    grad: &mut B::Mat,
    tol: f64,
) -> Result<Certificate> {
    be.gradient(y, x0, &model.true_gradient(Projection::None), grad);
    let n = be.reduce(&[Reduction::NormSq(y)])?[0];
    let v = be.reduce(&[Reduction::GradMapSq {
        y,
        g: grad,
        t: n,
        clamp,
    }])?[0];
    let value = if n > 0.0 { (v / n).sqrt() } else { f64::NAN };
    Ok(Certificate {
        value,
        tol,
        satisfied: value <= tol,
    })
}

#[allow(clippy::too_many_lines)]
fn solve_reference<B: Backend, F: FnMut(&IterInfo) -> Control>(
    be: &mut B,
    prep: Prepared,
    params: &Params,
    callback: &mut F,
) -> Result<NsaResult> {
    let (p, k) = prep.y_init.shape();
    let pk = (p * k) as f64;
    let clamp = params.nonneg != NonNeg::None; // any truthy apply_nonneg clamps (Q16)
    let w = params.common.w;
    let ropt = RetractOptions::reference(params.common.retraction, w);

    let mut y = be.upload(&prep.y_init)?;
    let x0 = be.upload(&prep.target)?;
    let t = be.reduce(&[Reduction::EnergyTerms { y: &y, target: &x0 }])?;
    let t = EnergyModel::from_slice(&t);
    let g0 = (0.5 * t.dist_sq / pk).max(1e-8);
    let d0 = t.defect().max(1e-8);
    let fid_eta = (1.0 - w) / (g0 * pk);
    let c_orth = 4.0 * w / d0;
    let model = EnergyModel {
        fid_weight: 0.5 * fid_eta,
        orth_weight: 0.25 * c_orth,
        offdiag_scale: None,
    };
    let rule = GradientRule {
        fid: -fid_eta, // Q1: the reference's fidelity "gradient" has the wrong sign
        orth: c_orth,
        simplified: params.simplified.then_some(-2.0 * c_orth),
        projection: if params.project_full_gradient {
            Projection::ReferenceFull
        } else {
            Projection::ReferenceOrthOnly
        },
    };
    let mut lr = match params.learning_rate {
        LearningRate::Default => {
            if clamp {
                1e-3
            } else {
                1.0
            }
        }
        LearningRate::Value(v) => v,
    };
    let lr0 = lr;

    let batch = be.line_search_batch().clamp(1, MAX_BATCH);
    let mut grad = be.zeros(p, k)?;
    let mut prop = be.zeros(p, k)?;
    let mut ynew = be.zeros(p, k)?;
    let mut acc = be.zeros(p, k)?;
    let mut best = be.zeros(p, k)?;
    be.copy(&y, &mut best);
    // one scratch matrix for the pre-retraction candidates: backends run operations in order,
    // so each candidate is retracted before the next one overwrites it
    let mut cand = be.zeros(p, k)?;
    let mut evals: Vec<B::Mat> = (0..batch + 1)
        .map(|_| be.zeros(p, k))
        .collect::<Result<_>>()?;
    let mut stepper = Stepper::new(be, params.optimizer, lr, p, k)?;

    be.gradient(&y, &x0, &rule, &mut grad);
    let init_grad_norm = be.reduce(&[Reduction::NormSq(&grad)])?[0].sqrt() + 1e-8;
    let mut vals: Vec<f64> = Vec::with_capacity(4 * (batch + 2) + 2);

    let mut best_e = f64::INFINITY;
    let mut best_terms: Option<EnergyTerms> = None;
    let mut best_iter = 0usize;
    let mut rec = Recorder {
        params,
        t0: Instant::now(),
        traces: Vec::with_capacity(
            (params.common.max_iter / params.common.record_every)
                .saturating_add(1)
                .min(1 << 16),
        ),
        recent: VecDeque::new(),
        callback,
    };
    let mut stop = StopReason::MaxIter;
    let mut iterations = 0;
    let mut energy_evals = 0usize;
    let mut bt_iters = 0usize;
    let mut prev_backtracked = false;
    // halvings the previous iteration examined (its success included)
    let mut prev_count = 0usize;
    const MAX_BT: usize = 20;

    for it in 1..=params.common.max_iter {
        be.gradient(&y, &x0, &rule, &mut grad);
        match params.optimizer {
            OptimizerKind::Fast => be.lincomb(1.0, &y, -lr, &grad, &mut prop),
            // Q3: the reference's optimizer holds the original tensor, so it steps once.
            // LBFGS (which the reference calls without a closure, so it raises there) runs
            // properly: its closure evaluates the reference's energy and its "rgrad".
            _ if it == 1 => stepper.step(
                be,
                &y,
                &grad,
                lr,
                &mut prop,
                (p, k),
                |be: &mut B, x: &B::Mat, g: &mut B::Mat| {
                    be.gradient(x, &x0, &rule, g);
                    let t = be.reduce(&[Reduction::EnergyTerms { y: x, target: &x0 }])?;
                    Ok(model.eval(&EnergyModel::from_slice(&t)).2)
                },
            )?,
            _ => be.copy(&y, &mut prop),
        }
        be.retract(&prop, &mut ynew, &ropt);
        // Q4: the line-search energy retracts the candidate once more.
        be.retract(&ynew, &mut evals[0], &ropt);
        if clamp {
            be.nonneg(&mut evals[0], NonNeg::Hard);
        }
        be.copy(&ynew, &mut acc);
        if clamp {
            be.nonneg(&mut acc, NonNeg::Hard);
        }
        // After an iteration that backtracked, the first halvings are evaluated speculatively
        // in the same readback (their candidates depend only on `best` and `ynew`, both known
        // now): two more than the previous iteration examined, its count being the best guess
        // of this one's. A search that needs more computes the rest of its 20 in one more
        // readback, so no iteration reads back more than twice, and a run that keeps
        // backtracking by similar counts reads back about once per iteration without
        // computing a whole backtracking of 20 each time (on an H200 a dependent dispatch
        // costs tens of µs and a readback ~0.5 ms: 20 speculated halvings are ~240 launches).
        // Which halvings are examined does not depend on these sizes: the results are
        // identical; only device work and readbacks move.
        let speculate = if prev_backtracked && batch > 1 {
            (prev_count + 2).min(batch).min(MAX_BT)
        } else {
            0
        };
        let halvings = |be: &mut B,
                        from: usize,
                        n: usize,
                        best: &B::Mat,
                        ynew: &B::Mat,
                        cand: &mut B::Mat,
                        evals: &mut [B::Mat]| {
            // candidate j: R(best + 2^-(from+j+1)·(ynew − best)), clamped, into evals[j + 1]
            for (j, eval) in evals[1..=n].iter_mut().enumerate() {
                be.lerp(best, ynew, 0.5f64.powi((from + j + 1) as i32), cand);
                be.retract(cand, eval, &ropt);
                if clamp {
                    be.nonneg(eval, NonNeg::Hard);
                }
            }
        };
        halvings(be, 0, speculate, &best, &ynew, &mut cand, &mut evals);
        {
            let mut reqs: Requests<'_, B::Mat> = smallvec::smallvec![
                Reduction::NormSq(&grad),
                Reduction::AllFinite(&grad),
                Reduction::EnergyTerms {
                    y: &evals[0],
                    target: &x0,
                },
                Reduction::EnergyTerms {
                    y: &acc,
                    target: &x0,
                },
            ];
            reqs.extend((0..speculate).map(|j| Reduction::EnergyTerms {
                y: &evals[j + 1],
                target: &x0,
            }));
            be.reduce_into(&reqs, &mut vals)?;
        }
        let v = &vals;
        energy_evals += 1;
        if v[1] == 0.0 {
            stop = StopReason::NonFiniteGradient;
            break;
        }
        iterations = it;
        let grad_norm = v[0].sqrt();
        let mut current = model.eval(&EnergyModel::from_slice(&v[2..6])).2;
        let acc_terms = EnergyModel::from_slice(&v[6..10]);

        // The best-anchored backtracking of §1.9, evaluated `batch` halvings per readback; the
        // step after `c` halvings is 2^-c (exact, as the reference's repeated `alpha *= 0.5`).
        let mut count = 0usize;
        let mut success: Option<(usize, EnergyTerms)> = None;
        if current > best_e {
            bt_iters += 1;
        }
        let mut pre_evaluated = (speculate > 0).then(|| vals[10..10 + 4 * speculate].to_vec());
        prev_backtracked = current > best_e;
        'search: while current > best_e && count < MAX_BT {
            let n = if pre_evaluated.is_some() {
                speculate
            } else {
                batch.min(MAX_BT - count)
            };
            if let Some(pre) = pre_evaluated.take() {
                vals.clear();
                vals.extend_from_slice(&pre);
            } else {
                halvings(be, count, n, &best, &ynew, &mut cand, &mut evals);
                let reqs: Requests<'_, B::Mat> = (0..n)
                    .map(|j| Reduction::EnergyTerms {
                        y: &evals[j + 1],
                        target: &x0,
                    })
                    .collect();
                be.reduce_into(&reqs, &mut vals)?;
            }
            let v = &vals;
            for j in 0..n {
                energy_evals += 1;
                let terms = EnergyModel::from_slice(&v[4 * j..4 * j + 4]);
                current = model.eval(&terms).2;
                count += 1;
                if current < best_e {
                    success = Some((j + 1, terms));
                    break 'search;
                }
                if !(current > best_e && count < MAX_BT) {
                    break 'search;
                }
            }
        }
        prev_count = count;
        // Y_new: a success (R(Y_try), clamped: exactly the evaluated point), a revert
        // (a success at the 20th halving is reverted too), or the un-backtracked candidate.
        let new_terms = if count == MAX_BT {
            be.copy(&best, &mut y);
            best_terms.expect("a revert needs an accepted iterate; iteration 1 is always accepted")
        } else if let Some((j, terms)) = success {
            std::mem::swap(&mut y, &mut evals[j]);
            terms
        } else {
            std::mem::swap(&mut y, &mut acc);
            acc_terms
        };
        if count > 2 {
            lr *= 0.95;
        } else if count == 0 && it % 5 == 0 {
            lr *= 1.01;
        }
        let (fid, defect, total) = model.eval(&new_terms);
        if total < best_e {
            best_e = total;
            be.copy(&y, &mut best);
            best_terms = Some(new_terms);
            best_iter = it;
        }
        rec.record(it, fid, defect, total);
        let rel = grad_norm / init_grad_norm;
        let info = IterInfo {
            iter: it,
            fidelity: fid,
            orthogonality: defect,
            total_energy: total,
            best_total_energy: best_e,
            learning_rate: lr,
            backtracks: count,
            stationarity: rel,
            elapsed: rec.t0.elapsed().as_secs_f64(),
        };
        // the reference prints its verbose line before its convergence checks
        if (rec.callback)(&info) == Control::Stop {
            stop = StopReason::Callback;
            break;
        }
        if rel < params.tol {
            stop = StopReason::GradientTolerance;
            break;
        }
        if rec.window_stable(params.tol) {
            stop = StopReason::EnergyWindow;
            break;
        }
    }
    let seconds = rec.t0.elapsed().as_secs_f64();
    if stop == StopReason::NonFiniteGradient && best_terms.is_none() {
        // the reference crashes here (Q11); nothing was accepted, so there is no answer
        return Err(NsaError::NonFiniteComputation {
            what: "gradient at the start",
            cause: crate::error::NumericCause::Unknown,
        });
    }
    let true_model = model;
    let certificate = certificate_of(be, &best, &x0, &true_model, clamp, &mut grad, params.tol)?;
    let final_iter = rec.traces.len();
    Ok(NsaResult {
        y: be.download(&best)?,
        traces: rec.traces,
        final_iter,
        iterations,
        best_total_energy: best_terms.map(|_| best_e),
        best_iteration: best_iter,
        target: prep.target,
        start: prep.y_init,
        stop_reason: stop,
        certificate,
        scaling: Scaling {
            g0,
            d0,
            fid_eta,
            c_orth,
            fid_weight: model.fid_weight,
            orth_weight: model.orth_weight,
        },
        learning_rate_initial: lr0,
        learning_rate_final: lr,
        init_grad_norm,
        energy_evaluations: energy_evals,
        backtracking_iterations: bt_iters,
        retracted_steps: if params.common.retraction == Retraction::None {
            0
        } else {
            iterations
        },
        mode: Mode::Reference,
        precision: be.precision(),
        device: crate::DeviceInfo::of(be),
        seconds,
    })
}

/// Reduction requests built per readback without touching the heap (a device batch is at
/// most [`MAX_BATCH`] candidates, three requests each, plus three).
type Requests<'a, M> = SmallVec<[Reduction<'a, M>; 3 * MAX_BATCH + 4]>;

pub use crate::backend::MAX_BATCH;

/// Halvings tried with the retraction before the plain steps, after an iteration whose
/// accepted step was retracted; after one whose was not, only the full retracted step is
/// tried, so a retraction that does not help costs one evaluation per iteration.
const RETRACTED_TRIES: usize = 3;
/// Halvings of the plain projected-gradient step before the search is declared stalled.
const PLAIN_TRIES: usize = 50;
/// Sufficient-decrease constant: accept when `E(c) ≤ E(Y) − C1·‖c − Y‖²/step`.
const C1: f64 = 1e-4;

/// What a line-search candidate is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Candidate {
    /// `Π(R_w(Y + α(Y⁺ − Y)))`, `Y⁺` the optimizer's proposal.
    Retracted,
    /// `Π(Y + α(Y⁺ − Y))`.
    AlongProposal,
    /// `Π(Y − α·lr·∇E)`, the plain projected-gradient step.
    AlongGradient,
}

#[allow(clippy::too_many_lines)]
fn solve_corrected<B: Backend, F: FnMut(&IterInfo) -> Control>(
    be: &mut B,
    prep: Prepared,
    params: &Params,
    callback: &mut F,
    mut tape: Option<&mut CorrectedTape>,
) -> Result<NsaResult> {
    let (p, k) = prep.y_init.shape();
    let pk = (p * k) as f64;
    let clamp = params.nonneg == NonNeg::Hard;
    let w = params.common.w;
    // The energy is invariant to scaling Y and X0 together, so the solve runs on data divided
    // by the RMS of X0: no overflow or underflow guard (‖Y‖² ≤ 1e-12 …) can then depend on the
    // units of the input. Learning rates convert as lr_internal = lr / scale².
    let amax = prep.target.amax();
    if amax == 0.0 {
        return Err(NsaError::ZeroMatrix {
            what: "X0 (after the non-negativity projection)",
            why: "the corrected energy measures fidelity relative to ‖X0‖²",
        });
    }
    let scale = amax * ((&prep.target / amax).norm_squared() / pk).sqrt();
    let x0_norm_sq = scale * scale * pk; // may overflow to inf for huge data: only reported
    let mut start = prep.y_init.clone();
    if clamp {
        start.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    if start.iter().all(|v| *v == 0.0) {
        return Err(NsaError::ZeroMatrix {
            what: "Y0 (after the non-negativity projection)",
            why: "the flow needs a non-zero feasible start",
        });
    }
    let start_n = &start / scale;
    let target_n = &prep.target / scale;
    let xn_sq = target_n.norm_squared();
    let orth_weight = if k > 1 {
        w / (1.0 - 1.0 / k as f64)
    } else {
        0.0
    };
    let model = EnergyModel {
        fid_weight: (1.0 - w) / xn_sq,
        orth_weight,
        offdiag_scale: params.simplified.then_some(xn_sq * xn_sq),
    };
    let projection = if params.project_full_gradient {
        Projection::PolarFull
    } else {
        Projection::None
    };
    let true_rule = model.true_gradient(Projection::None);
    let dir_rule = model.true_gradient(projection);
    let direction_is_gradient =
        projection == Projection::None && params.optimizer == OptimizerKind::Fast;
    let use_retraction = params.common.retraction != Retraction::None && w > 0.0;
    let ropt = RetractOptions::corrected(params.common.retraction, w);

    let eps = be_eps(be);
    let mut y = be.upload(&start_n)?;
    let x0 = be.upload(&target_n)?;
    // asked after the uploads: a device sizes its batch by the problem's shape
    let batch = be.line_search_batch().clamp(1, MAX_BATCH);
    let mut grad = be.zeros(p, k)?;
    // the projected direction (without a projection the direction is the gradient itself)
    let mut dir = match projection {
        Projection::None => None,
        _ => Some(be.zeros(p, k)?),
    };
    let mut prop = be.zeros(p, k)?;
    // one scratch matrix for the pre-retraction candidates: backends run operations in order,
    // so each candidate is retracted before the next one overwrites it
    let mut cand = be.zeros(p, k)?;
    let mut evals: Vec<B::Mat> = (0..batch).map(|_| be.zeros(p, k)).collect::<Result<_>>()?;

    // the corrected gradient's weights do not depend on E(Y_start), so the start's energy
    // terms and the gradient's norm come back in one readback
    be.gradient(&y, &x0, &true_rule, &mut grad);
    let v = be.reduce(&[
        Reduction::EnergyTerms { y: &y, target: &x0 },
        Reduction::NormSq(&grad),
    ])?;
    let t_init = EnergyModel::from_slice(&v[..4]);
    let init_grad_norm_n = v[4].sqrt();
    let g0 = (0.5 * t_init.dist_sq * scale * scale / pk).max(1e-8);
    let d0 = t_init.defect().max(1e-8);
    let mut cur_e = model.eval(&t_init).2;
    let mut cur_norm_sq = t_init.norm_sq;
    let mut vals: Vec<f64> = Vec::with_capacity(6 * batch + 4);
    // the scale-free step: a 10 % relative move along the gradient
    let safe_lr = |norm_sq: f64, grad_norm: f64| {
        if grad_norm > 0.0 {
            0.1 * norm_sq.sqrt() / grad_norm
        } else {
            1.0
        }
    };
    let mut lr = match params.learning_rate {
        LearningRate::Default => safe_lr(t_init.norm_sq, init_grad_norm_n),
        LearningRate::Value(v) => v / (scale * scale),
    };
    // the optimizer's state lives across iterations (allocated once)
    let mut stepper = Stepper::new(be, params.optimizer, lr, p, k)?;
    let lr0 = lr;
    if let Some(t) = tape.as_deref_mut() {
        t.scale = scale;
        t.target_n = target_n.clone();
        t.fid_weight = model.fid_weight;
        t.orth_weight = model.orth_weight;
        t.offdiag_scale = model.offdiag_scale;
        t.lr0 = lr0;
        t.iterates = vec![be.download(&y)?];
        t.steps = Vec::new();
    }
    // The plateau test only catches stagnation at working precision: convergence itself is
    // judged by the certificate.
    let window_thresh = 10.0 * be_eps(be);

    let mut rec = Recorder {
        params,
        t0: Instant::now(),
        traces: Vec::with_capacity(
            (params.common.max_iter / params.common.record_every)
                .saturating_add(1)
                .min(1 << 16),
        ),
        recent: VecDeque::new(),
        callback,
    };
    let mut stop = StopReason::MaxIter;
    let mut iterations = 0;
    let mut energy_evals = 0usize;
    let mut bt_iters = 0usize;
    let mut best_iter = 0usize;
    let mut retracted_steps = 0usize;
    let mut retracted_tries = RETRACTED_TRIES;
    let mut prev_tried = 0usize;

    for it in 1..=params.common.max_iter {
        be.gradient(&y, &x0, &true_rule, &mut grad);
        let direction = match &mut dir {
            Some(dir) => {
                be.gradient(&y, &x0, &dir_rule, dir);
                &*dir
            }
            None => &grad,
        };
        // LBFGS's closure: the corrected energy and the direction the other optimizers get
        stepper.step(
            be,
            &y,
            direction,
            lr,
            &mut prop,
            (p, k),
            |be: &mut B, x: &B::Mat, g: &mut B::Mat| {
                be.gradient(x, &x0, &dir_rule, g);
                let t = be.reduce(&[Reduction::EnergyTerms { y: x, target: &x0 }])?;
                Ok(model.eval(&EnergyModel::from_slice(&t)).2)
            },
        )?;

        // The candidates, in order: through the retraction along the proposal, then plain along
        // the proposal, then plain along the true gradient (when the proposal is not it), and
        // last along the true gradient from the scale-free step (known after the first readback).
        let mut phases: SmallVec<[(Candidate, usize, f64); 4]> = SmallVec::new();
        if use_retraction {
            phases.push((Candidate::Retracted, retracted_tries, lr));
        }
        phases.push((Candidate::AlongProposal, PLAIN_TRIES, lr));
        if !direction_is_gradient {
            phases.push((Candidate::AlongGradient, PLAIN_TRIES, lr));
        }
        let trial =
            |phases: &[(Candidate, usize, f64)], mut i: usize| -> (Candidate, f64, f64, usize) {
                for (ph, &(kind, n, plr)) in phases.iter().enumerate() {
                    if i < n {
                        return (kind, 0.5f64.powi(i as i32), plr, ph);
                    }
                    i -= n;
                }
                unreachable!("trial index past the phases")
            };

        // where the next phase starts, from a trial index inside the phases
        let phase_end = |phases: &[(Candidate, usize, f64)], i: usize| -> usize {
            let mut end = 0;
            for &(_, n, _) in phases {
                end += n;
                if i < end {
                    break;
                }
            }
            end
        };

        let mut accepted: Option<(usize, EnergyTerms)> = None;
        let mut cert = f64::NAN;
        let mut finite = true;
        // `pos` indexes the trial sequence (skipped candidates included); `tried` counts the
        // candidates evaluated and rejected (what IterInfo::backtracks reports)
        let mut pos = 0usize;
        let mut tried = 0usize;
        let mut first = true;
        let mut safe_phase = usize::MAX;
        // ‖∇E(Y)‖, and its part where Y ≥ 0 leaves the gradient free, known after the first
        // readback: what bounds the gain of a plain candidate
        let mut grad_norm = f64::INFINITY;
        let mut free_norm = f64::INFINITY;
        // Candidates per readback: the first holds two more than the previous iteration
        // rejected (its accepted position is the best guess of this one's), later ones four
        // times as many (a stalled search then needs few readbacks). Which candidates are
        // examined does not depend on these sizes, only how many are computed ahead and how
        // often the device is read.
        let mut n_next = (prev_tried + 2).min(batch);
        loop {
            let n_trials: usize = phases.iter().map(|ph| ph.1).sum();
            if pos >= n_trials {
                break;
            }
            let n = n_next.min(n_trials - pos);
            n_next = (4 * n).min(batch);
            for (j, eval) in evals.iter_mut().enumerate().take(n) {
                let (kind, a, plr, _) = trial(&phases, pos + j);
                match kind {
                    Candidate::Retracted => {
                        be.lerp_candidate(&y, &prop, a, &mut cand);
                        be.retract_candidate(&cand, eval, &ropt);
                    }
                    Candidate::AlongProposal => be.lerp_candidate(&y, &prop, a, eval),
                    Candidate::AlongGradient => {
                        be.lincomb_candidate(1.0, &y, -a * plr, &grad, eval)
                    }
                }
                if clamp {
                    be.nonneg(eval, NonNeg::Hard);
                }
            }
            let mut reqs: Requests<'_, B::Mat> = SmallVec::new();
            if first {
                reqs.push(Reduction::AllFinite(&grad));
                reqs.push(Reduction::GradMapSq {
                    y: &y,
                    g: &grad,
                    t: cur_norm_sq,
                    clamp,
                });
                reqs.push(Reduction::NormSq(&grad));
                if clamp {
                    reqs.push(Reduction::FreeNormSq { y: &y, g: &grad });
                }
            }
            for e in evals.iter().take(n) {
                reqs.push(Reduction::EnergyTerms { y: e, target: &x0 });
                reqs.push(Reduction::DistSq(e, &y));
                reqs.push(Reduction::AnyDiffer(e, &y));
            }
            be.reduce_into(&reqs, &mut vals)?;
            let v = &vals;
            let mut off = 0;
            if first {
                finite = v[0] == 1.0 && v[2].is_finite();
                cert = (v[1] / cur_norm_sq).sqrt();
                grad_norm = v[2].sqrt();
                free_norm = if clamp { v[3].sqrt() } else { grad_norm };
                off = if clamp { 4 } else { 3 };
                first = false;
                if !finite || cert <= params.tol {
                    break;
                }
                safe_phase = phases.len();
                phases.push((
                    Candidate::AlongGradient,
                    PLAIN_TRIES,
                    safe_lr(cur_norm_sq, v[2].sqrt()),
                ));
            }
            let mut skipped = false;
            for j in 0..n {
                // candidates examined in order: the same ones whatever the batch size
                energy_evals += 1;
                let base = off + 6 * j;
                let terms = EnergyModel::from_slice(&v[base..base + 4]);
                let step_sq = v[base + 4];
                let unchanged = v[base + 5] == 0.0;
                let e = model.eval(&terms).2;
                let (kind, a, plr, _) = trial(&phases, pos + j);
                let step = a * plr;
                // a decrease must also exceed the energy's own rounding error (16 ulps of
                // it): below that, "decrease" is a coin toss that two backends summing in
                // different orders would call differently
                let noise = 16.0 * eps * cur_e.abs();
                if e.is_finite() && e < cur_e - noise && e <= cur_e - C1 * step_sq / step {
                    accepted = Some((j, terms));
                    break;
                }
                tried += 1;
                // A plain candidate equal to Y (its step rounded away entrywise) has Y's
                // energy and is rejected; the later ones of its phase take shorter steps
                // along the same direction, and rounding is monotone, so each of them equals
                // Y as well: the rest of the phase is skipped without changing any decision.
                // (A retracted candidate is not monotone in its step: never skipped.)
                // A plain candidate whose first-order gain is bounded by a quarter of the
                // rounding level also ends its phase: |⟨∇E, C − Y⟩| ≤ ‖∇E‖·‖C − Y‖, and when
                // every plain candidate moves along −∇E (projected), C − Y vanishes where
                // Y ≥ 0 holds the gradient, so there the free part of ‖∇E‖ bounds it. The
                // shorter steps after it come no farther from Y (a projection along a ray
                // moves monotonically), so none of them can gain the 16 ulps an acceptance
                // needs but by their second-order term alone. This ends a search at the
                // rounding floor after a few halvings instead of all 2·50: its candidates
                // differ from Y in some entries long after the energy stopped telling them
                // apart.
                let gain_norm = if direction_is_gradient {
                    free_norm
                } else {
                    grad_norm
                };
                let negligible = gain_norm * step_sq.sqrt() <= 0.25 * noise;
                if (unchanged || negligible) && kind != Candidate::Retracted {
                    pos = phase_end(&phases, pos + j);
                    skipped = true;
                    break;
                }
            }
            if let Some((j, _)) = accepted {
                pos += j;
                break;
            }
            if !skipped {
                pos += n;
            }
        }
        prev_tried = tried;
        if !finite {
            stop = StopReason::NonFiniteGradient;
            break;
        }
        if cert <= params.tol {
            stop = StopReason::Certificate;
            break;
        }
        iterations = it;
        let Some((j, terms)) = accepted else {
            stop = StopReason::LineSearchStalled;
            break;
        };
        let (kind, alpha, plr, phase) = trial(&phases, pos);
        if kind == Candidate::Retracted {
            retracted_steps += 1;
            retracted_tries = RETRACTED_TRIES;
        } else {
            retracted_tries = 1;
        }
        if tried > 0 {
            bt_iters += 1;
        }
        std::mem::swap(&mut y, &mut evals[j]);
        if let Some(t) = tape.as_deref_mut() {
            t.steps.push(TapeStep {
                kind,
                alpha,
                plr,
                from_safe: phase == safe_phase,
            });
            t.iterates.push(be.download(&y)?);
        }
        // a full step of its kind accepted: try a longer one next time; otherwise keep the
        // step that worked
        lr = if alpha == 1.0 { plr * 1.5 } else { plr * alpha };
        let (fid, defect, total) = model.eval(&terms);
        cur_e = total;
        cur_norm_sq = terms.norm_sq;
        best_iter = it;
        rec.record(it, fid, defect, total);
        let info = IterInfo {
            iter: it,
            fidelity: fid,
            orthogonality: defect,
            total_energy: total,
            best_total_energy: total,
            learning_rate: lr * scale * scale,
            backtracks: tried,
            stationarity: cert,
            elapsed: rec.t0.elapsed().as_secs_f64(),
        };
        if (rec.callback)(&info) == Control::Stop {
            stop = StopReason::Callback;
            break;
        }
        if rec.window_stable(window_thresh) {
            stop = StopReason::EnergyWindow;
            break;
        }
    }
    let seconds = rec.t0.elapsed().as_secs_f64();
    if stop == StopReason::NonFiniteGradient && best_iter == 0 {
        return Err(NsaError::NonFiniteComputation {
            what: "gradient at the start",
            cause: crate::error::NumericCause::Unknown,
        });
    }
    let certificate = certificate_of(be, &y, &x0, &model, clamp, &mut grad, params.tol)?;
    let final_iter = rec.traces.len();
    let y_out = be.download(&y)? * scale;
    Ok(NsaResult {
        y: y_out,
        traces: rec.traces,
        final_iter,
        iterations,
        best_total_energy: Some(cur_e),
        best_iteration: best_iter,
        target: prep.target,
        start,
        stop_reason: stop,
        certificate,
        scaling: Scaling {
            g0,
            d0,
            fid_eta: 2.0 * (1.0 - w) / x0_norm_sq,
            c_orth: 4.0 * model.orth_weight,
            fid_weight: (1.0 - w) / x0_norm_sq,
            orth_weight: model.orth_weight,
        },
        learning_rate_initial: lr0 * scale * scale,
        learning_rate_final: lr * scale * scale,
        init_grad_norm: init_grad_norm_n / scale,
        energy_evaluations: energy_evals,
        backtracking_iterations: bt_iters,
        retracted_steps,
        mode: Mode::Corrected,
        precision: be.precision(),
        device: crate::DeviceInfo::of(be),
        seconds,
    })
}

fn be_eps<B: Backend>(be: &B) -> f64 {
    match be.precision() {
        Precision::F64 => f64::EPSILON,
        Precision::F32 => f32::EPSILON as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    fn energy(model: &EnergyModel, y: &DMatrix<f64>, x0: &DMatrix<f64>) -> f64 {
        let mut g = DMatrix::zeros(y.ncols(), y.ncols());
        model.eval(&EnergyTerms::compute(y, x0, &mut g)).2
    }

    /// The corrected gradient is the derivative of the corrected energy: central differences
    /// along random directions agree to the truncation error of the difference.
    #[test]
    fn corrected_gradient_matches_finite_differences() {
        let mut rng = Rng::new(11);
        for &(p, k, simplified) in &[
            (30, 4, false),
            (30, 4, true),
            (12, 1, false),
            (7, 3, false),
            (50, 17, true),
        ] {
            let y = DMatrix::from_fn(p, k, |_, _| rng.normal());
            let x0 = DMatrix::from_fn(p, k, |_, _| rng.normal().abs());
            let xn = x0.norm_squared();
            let w = 0.6;
            let model = EnergyModel {
                fid_weight: (1.0 - w) / xn,
                orth_weight: if k > 1 {
                    w / (1.0 - 1.0 / k as f64)
                } else {
                    0.0
                },
                offdiag_scale: simplified.then_some(xn * xn),
            };
            let mut be = CpuBackend::<f64>::new();
            let mut g = DMatrix::zeros(p, k);
            be.gradient(&y, &x0, &model.true_gradient(Projection::None), &mut g);
            for _ in 0..3 {
                let d = DMatrix::from_fn(p, k, |_, _| rng.normal());
                let h = 1e-5;
                let fd = (energy(&model, &(&y + &d * h), &x0)
                    - energy(&model, &(&y - &d * h), &x0))
                    / (2.0 * h);
                let an = g.dot(&d);
                assert!(
                    (fd - an).abs() <= 1e-6 * an.abs().max(1e-3),
                    "p={p} k={k} simplified={simplified}: fd {fd} vs {an}"
                );
            }
        }
    }

    /// The corrected tangent projection at the polar factor keeps a descent direction:
    /// ⟨G, P(G)⟩ = ‖P(G)‖² ≥ 0, where the reference's projection with Y can be an ascent.
    #[test]
    fn polar_projection_is_an_orthogonal_projection() {
        let mut rng = Rng::new(5);
        let y = DMatrix::from_fn(40, 5, |_, _| 3.0 * rng.normal());
        let x0 = DMatrix::from_fn(40, 5, |_, _| rng.normal().abs());
        let mut be = CpuBackend::<f64>::new();
        let rule = |projection| GradientRule {
            fid: 0.7,
            orth: 2.0,
            simplified: None,
            projection,
        };
        let (mut g, mut pg, mut ref_g) = (
            DMatrix::zeros(40, 5),
            DMatrix::zeros(40, 5),
            DMatrix::zeros(40, 5),
        );
        be.gradient(&y, &x0, &rule(Projection::None), &mut g);
        be.gradient(&y, &x0, &rule(Projection::PolarFull), &mut pg);
        be.gradient(&y, &x0, &rule(Projection::ReferenceFull), &mut ref_g);
        assert!((g.dot(&pg) - pg.norm_squared()).abs() < 1e-9 * pg.norm_squared());
        // idempotent: projecting the projected direction changes nothing
        let mut pp = DMatrix::zeros(40, 5);
        let q = &y * crate::linalg::inv_sqrt_eig(&(y.transpose() * &y), 1e-300);
        let sym = |m: DMatrix<f64>| (&m + m.transpose()) * 0.5;
        pp.copy_from(&(&pg - &q * sym(q.transpose() * &pg)));
        assert!((&pp - &pg).norm() < 1e-10 * pg.norm());
        assert!(
            g.dot(&ref_g) < 0.0,
            "the reference projection at ‖Y‖₂ ≫ 1 points uphill here"
        );
    }
}
