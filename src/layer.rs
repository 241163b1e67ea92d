//! [`NsaFlowLayer`]: NSA-Flow as a layer over a batch `[B, p, k]` (the reference's
//! `NSAFlowLayer`, spec §6), with an exact backward.
//!
//! The forward solves every problem of the batch with one call of
//! [`crate::batch::nsa_flow_batch`] (so a GPU batch path is used when the parameters pick a
//! GPU). The backward differentiates the **unrolled iterations** of the forward as it ran:
//! every iterate, with each discrete choice (which line-search candidate was accepted, its
//! halving factor, the learning-rate updates, the stop, the non-negativity active set)
//! frozen. Those choices are piecewise constant in the input, so this is the exact derivative
//! of the computed map wherever the map is differentiable (almost everywhere). The continuous
//! parts that depend on the input are all differentiated: the step sizes (the default first
//! step `0.1·‖Y‖/‖∇E‖` and the scale-free fallback step are functions of the iterate), the
//! normalisation of the problem by the RMS of the target, the start (`Y0 = X0` by default)
//! and the target inside the energy's gradient. docs/ALGORITHM.md ("The layer and its
//! backward") states the details and the cost.
//!
//! The backward runs on the CPU in f64 whatever backend and precision ran the forward: it
//! re-runs each problem's solve on the CPU in f64 recording the tape (the iterates and the
//! choices), then sweeps it backwards. For a CPU f64 forward the re-run is bit-identical to
//! the forward; for an f32 or GPU forward what is differentiated is the CPU f64 solve of the
//! same problem (whose answer agrees with the forward's to the forward's precision). The
//! forward's output keeps only the inputs (not the tape), so a forward costs nothing extra.
//!
//! ```
//! use nalgebra::DMatrix;
//! use nsa_flow::layer::NsaFlowLayer;
//! use nsa_flow::BackendChoice;
//! let layer = NsaFlowLayer::builder().w(0.6).backend(BackendChoice::Cpu).build().unwrap();
//! let x0: Vec<DMatrix<f64>> = (0..2)
//!     .map(|b| DMatrix::from_fn(8, 2, |i, j| 1.0 + ((i * 3 + j * 5 + b) % 7) as f64))
//!     .collect();
//! let out = layer.forward(&x0, None).unwrap();
//! assert_eq!(out.shape(), [2, 8, 2]);
//! // L = Σ ⟨1, Y_b⟩: the upstream gradient is all ones
//! let ones = vec![DMatrix::from_element(8, 2, 1.0); 2];
//! let grads = layer.backward(&out, &ones).unwrap();
//! assert_eq!(grads.x0.len(), 2);
//! assert!(grads.x0.iter().all(|g| g.iter().all(|v| v.is_finite())));
//! ```

use crate::autograd::grad;
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, GradientRule, Projection, UpdateRule};
use crate::batch::{in_batch, nsa_flow_batch, BatchProblem};
use crate::error::{NsaError, Result};
use crate::flow::{solve_corrected_recorded, Candidate, CorrectedTape};
use crate::params::{
    BackendChoice, LearningRate, Mode, NonNeg, OptimizerKind, Params, Precision, Retraction,
};
use crate::result::NsaResult;
use crate::retract::RetractOptions;
use crate::validate;
use nalgebra::DMatrix;
use rayon::prelude::*;
use std::str::FromStr;

/// The reference layer's defaults as [`Params`]: `Params::default()` (w = 0.5, soft-polar,
/// tol = 1e-5, hard non-negativity, "fast", the default learning rate, simplified = false,
/// project_full_gradient = false, corrected mode, f64, auto backend) with `max_iter = 50`.
fn layer_defaults() -> Params {
    Params::default().max_iter(50)
}

/// The parameter names [`NsaFlowLayerBuilder::set`] accepts: the reference's
/// `NSAFlowLayer.__init__` arguments and ours.
pub const LAYER_PARAMETERS: &[&str] = &[
    "w",
    "retraction",
    "max_iter",
    "tol",
    "apply_nonneg",
    "optimizer",
    "initial_learning_rate",
    "simplified",
    "project_full_gradient",
    "device",
    "mode",
    "backend",
    "precision",
];

/// NSA-Flow as a layer: `forward` maps a batch of targets `X0` `[B, p, k]` (and optionally
/// starts `Y0`, by default `X0` itself, as the reference) to the batch of solutions `Y`;
/// `backward` maps the upstream gradient `dL/dY` to `dL/dX0` (and `dL/dY0`).
///
/// The defaults are the reference layer's (`w = 0.5`, soft-polar, `max_iter = 50`,
/// `tol = 1e-5`, `apply_nonneg = true`, "fast", the default learning rate,
/// `simplified = false`, `project_full_gradient = false`) in this crate's default mode
/// (corrected), f64, on the best backend present.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::layer::NsaFlowLayer;
/// use nsa_flow::{BackendChoice, Params};
/// let layer = NsaFlowLayer::new(Params::default().w(0.7).max_iter(30).backend(BackendChoice::Cpu)).unwrap();
/// let x = DMatrix::from_fn(10, 3, |i, j| ((i * 7 + j * 3) % 5) as f64 + 0.5);
/// let out = layer.forward_one(&x, None).unwrap();
/// assert_eq!(out.shape(), [1, 10, 3]); // a 2-D input is a batch of one
/// assert!(out.ys[0].iter().all(|&v| v >= 0.0));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct NsaFlowLayer {
    params: Params,
}

impl Default for NsaFlowLayer {
    fn default() -> Self {
        NsaFlowLayer {
            params: layer_defaults(),
        }
    }
}

/// Builds an [`NsaFlowLayer`] from the reference layer's defaults, by typed setters or by
/// the reference's argument names ([`NsaFlowLayerBuilder::set`]).
///
/// ```
/// use nsa_flow::layer::NsaFlowLayer;
/// use nsa_flow::{NsaError, Retraction};
/// let layer = NsaFlowLayer::builder()
///     .w(0.8)
///     .retraction("polar").unwrap()
///     .set("max_iter", "20").unwrap()
///     .apply_nonneg(true)
///     .build()
///     .unwrap();
/// assert_eq!(layer.params().common.retraction, Retraction::Polar);
/// assert_eq!(layer.params().common.max_iter, 20);
/// // a name that is not supported is an error, never ignored
/// assert!(matches!(NsaFlowLayer::builder().set("verbose", "1"), Err(NsaError::UnknownName { .. })));
/// assert!(matches!(NsaFlowLayer::builder().optimizer("padam2"), Err(NsaError::UnknownName { .. })));
/// ```
#[derive(Clone, Debug)]
pub struct NsaFlowLayerBuilder {
    params: Params,
}

impl Default for NsaFlowLayerBuilder {
    fn default() -> Self {
        NsaFlowLayerBuilder {
            params: layer_defaults(),
        }
    }
}

fn parse_bool(name: &'static str, v: &str) -> Result<bool> {
    match v {
        "true" | "True" | "1" => Ok(true),
        "false" | "False" | "0" => Ok(false),
        _ => Err(NsaError::InvalidParameter {
            name,
            reason: format!("'{v}' is not a boolean (true/false)"),
        }),
    }
}

fn parse_num<T: FromStr>(name: &'static str, v: &str) -> Result<T> {
    v.parse().map_err(|_| NsaError::InvalidParameter {
        name,
        reason: format!("'{v}' is not a number"),
    })
}

impl NsaFlowLayerBuilder {
    /// The weight `w ∈ [0, 1]` (checked by [`Self::build`]).
    pub fn w(mut self, w: f64) -> Self {
        self.params.common.w = w;
        self
    }
    /// The retraction by name (`soft_polar`, `polar`, `none`).
    pub fn retraction(mut self, name: &str) -> Result<Self> {
        self.params.common.retraction = Retraction::from_str(name)?;
        Ok(self)
    }
    /// The iteration cap (≥ 1).
    pub fn max_iter(mut self, n: usize) -> Self {
        self.params.common.max_iter = n;
        self
    }
    /// The tolerance (≥ 0).
    pub fn tol(mut self, tol: f64) -> Self {
        self.params.tol = tol;
        self
    }
    /// `true`: `Y ≥ 0` by clamping (and the target clamped); `false`: no sign constraint.
    pub fn apply_nonneg(mut self, on: bool) -> Self {
        self.params.nonneg = if on { NonNeg::Hard } else { NonNeg::None };
        self
    }
    /// The optimizer by name (`fast` or a registry name, see [`crate::optimizers`]).
    pub fn optimizer(mut self, name: &str) -> Result<Self> {
        self.params.optimizer = OptimizerKind::from_str(name)?;
        Ok(self)
    }
    /// The initial learning rate: `default` or a positive number.
    pub fn initial_learning_rate(mut self, v: &str) -> Result<Self> {
        self.params.learning_rate = LearningRate::from_str(v)?;
        Ok(self)
    }
    /// The off-diagonal Gram penalty instead of the invariant defect.
    pub fn simplified(mut self, on: bool) -> Self {
        self.params.simplified = on;
        self
    }
    /// Project the whole gradient onto the tangent space.
    pub fn project_full_gradient(mut self, on: bool) -> Self {
        self.params.project_full_gradient = on;
        self
    }
    /// Corrected (default) or reference algorithm.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.params.common.mode = mode;
        self
    }
    /// Where the forward runs (the backward always runs on the CPU in f64).
    pub fn backend(mut self, backend: BackendChoice) -> Self {
        self.params.common.backend = backend;
        self
    }
    /// The forward's arithmetic precision.
    pub fn precision(mut self, precision: Precision) -> Self {
        self.params.common.precision = precision;
        self
    }

    /// Sets one parameter by its name in the reference's `NSAFlowLayer(...)` (or ours), from
    /// its text: `w`, `retraction`, `max_iter`, `tol`, `apply_nonneg` (true/false),
    /// `optimizer`, `initial_learning_rate` (`default` or a number), `simplified`,
    /// `project_full_gradient`, `device` (`cpu`, `gpu`, `cuda` = gpu, `auto`/`None` = auto, the
    /// reference's "CUDA if available"), `mode`, `backend`, `precision`. Any other name is
    /// [`NsaError::UnknownName`]; a value that does not parse is an error too.
    pub fn set(self, name: &str, value: &str) -> Result<Self> {
        Ok(match name {
            "w" => self.w(parse_num("w", value)?),
            "retraction" => self.retraction(value)?,
            "max_iter" => self.max_iter(parse_num("max_iter", value)?),
            "tol" => self.tol(parse_num("tol", value)?),
            "apply_nonneg" => self.apply_nonneg(parse_bool("apply_nonneg", value)?),
            "optimizer" => self.optimizer(value)?,
            "initial_learning_rate" => self.initial_learning_rate(value)?,
            "simplified" => self.simplified(parse_bool("simplified", value)?),
            "project_full_gradient" => {
                self.project_full_gradient(parse_bool("project_full_gradient", value)?)
            }
            "device" => self.backend(match value {
                "cuda" => BackendChoice::Gpu,
                "None" => BackendChoice::Auto,
                other => BackendChoice::from_str(other)?,
            }),
            "mode" => self.mode(Mode::from_str(value)?),
            "backend" => self.backend(BackendChoice::from_str(value)?),
            "precision" => self.precision(Precision::from_str(value)?),
            _ => {
                return Err(NsaError::UnknownName {
                    kind: "layer parameter",
                    name: name.to_string(),
                    expected: LAYER_PARAMETERS.join(", "),
                })
            }
        })
    }

    /// The layer, its parameters checked ([`NsaFlowLayer::new`]).
    pub fn build(self) -> Result<NsaFlowLayer> {
        NsaFlowLayer::new(self.params)
    }
}

/// What [`NsaFlowLayer::forward`] returns: the solutions, each problem's full result, and
/// the inputs (kept for the backward, which recomputes the tape from them).
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::layer::NsaFlowLayer;
/// let x = DMatrix::from_fn(6, 2, |i, j| (i + 3 * j) as f64 + 1.0);
/// let out = NsaFlowLayer::builder().backend(nsa_flow::BackendChoice::Cpu).build().unwrap()
///     .forward_one(&x, None).unwrap();
/// assert_eq!(out.ys_flat().len(), 12);
/// assert_eq!(out.results[0].y, out.ys[0]);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LayerOutput {
    /// `Y` of each problem (`[B, p, k]`).
    pub ys: Vec<DMatrix<f64>>,
    /// Each problem's result (iterations, stop reason, certificate, …).
    pub results: Vec<NsaResult>,
    /// Where the forward ran.
    pub backend: String,
    x0: Vec<DMatrix<f64>>,
    y0: Option<Vec<DMatrix<f64>>>,
    params: Params,
}

impl LayerOutput {
    /// `[B, p, k]`.
    pub fn shape(&self) -> [usize; 3] {
        let (p, k) = self.ys[0].shape();
        [self.ys.len(), p, k]
    }
    /// The solutions as a flat row-major `[B, p, k]` array (numpy's layout).
    pub fn ys_flat(&self) -> Vec<f64> {
        batch_to_flat(&self.ys)
    }
    /// The targets the forward was given.
    pub fn x0(&self) -> &[DMatrix<f64>] {
        &self.x0
    }
    /// The explicit starts, if any (`None`: `Y0 = X0`).
    pub fn y0(&self) -> Option<&[DMatrix<f64>]> {
        self.y0.as_deref()
    }
}

/// What [`NsaFlowLayer::backward`] returns: `dL/dX0` per problem (with `Y0 = X0`, the
/// default, it includes the path through the start), and `dL/dY0` when the forward was
/// given explicit starts.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LayerGradients {
    /// `dL/dX0`, one p×k matrix per problem.
    pub x0: Vec<DMatrix<f64>>,
    /// `dL/dY0` per problem when `Y0` was given explicitly, else `None`.
    pub y0: Option<Vec<DMatrix<f64>>>,
}

/// One accepted step of a recorded forward (see [`NsaFlowLayer::record`]).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct StepDecision {
    /// Whether the accepted candidate went through the retraction.
    pub retracted: bool,
    /// Its halving factor `α = 2^-j`.
    pub alpha: f64,
    /// Whether its step size was the scale-free fallback `0.1·‖Y‖/‖∇E‖` rather than the
    /// running learning rate.
    pub scale_free_step: bool,
    /// How many entries the non-negativity clamp set to zero.
    pub clamped: usize,
}

/// The tape of one problem's forward, as the backward differentiates it: the iterates and the
/// decisions (returned by [`NsaFlowLayer::record`] for inspection; the backward records its
/// own).
#[derive(Clone, Debug)]
pub struct LayerTape {
    tape: CorrectedTape,
    decisions: Vec<StepDecision>,
    replay_error: f64,
}

impl LayerTape {
    /// Accepted iterations `T`.
    pub fn iterations(&self) -> usize {
        self.tape.steps.len()
    }
    /// The discrete choices of every accepted step, in order.
    pub fn decisions(&self) -> &[StepDecision] {
        &self.decisions
    }
    /// Bytes held by the iterates (`(T + 2)·p·k·8`: the iterates and the target).
    pub fn memory_bytes(&self) -> usize {
        (self.tape.iterates.len() + 1) * self.tape.target_n.len() * 8
    }
    /// The largest `|Π(candidate_t) − y_{t+1}|` when the recorded steps are replayed from the
    /// recorded iterates: 0 when the replay is bit-identical to the recorded run (it is on the
    /// CPU; a non-zero value would mean the backward differentiates another map).
    pub fn replay_error(&self) -> f64 {
        self.replay_error
    }
}

impl NsaFlowLayer {
    /// A layer with these parameters, checked: every scalar ([`Params::validate`]), and
    /// `perturbed_start` must be `None` (the layer always passes `X0`, so there is no
    /// self-target perturbation; the reference's `seed` has no effect either).
    pub fn new(params: Params) -> Result<Self> {
        params.validate()?;
        if params.common.perturbed_start.is_some() {
            return Err(NsaError::InvalidParameter {
                name: "perturbed_start",
                reason: "the layer always passes X0, so a perturbed start is never used".into(),
            });
        }
        Ok(NsaFlowLayer { params })
    }

    /// A builder from the reference layer's defaults.
    pub fn builder() -> NsaFlowLayerBuilder {
        NsaFlowLayerBuilder::default()
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Solves the batch: problem `b` is `nsa_flow(Y0[b], X0[b])` with this layer's parameters
    /// (`Y0 = X0` when `y0` is `None`), all in one [`nsa_flow_batch`] call. Every `X0[b]` must
    /// have the shape of `X0[0]` and `Y0[b]` that of `X0[b]` ([`NsaError::InBatch`] naming the
    /// problem otherwise); `y0` must have one matrix per problem.
    ///
    /// ```
    /// use nalgebra::DMatrix;
    /// use nsa_flow::layer::NsaFlowLayer;
    /// let layer = NsaFlowLayer::builder().backend(nsa_flow::BackendChoice::Cpu).build().unwrap();
    /// let x0 = vec![DMatrix::from_fn(7, 2, |i, j| (i * 2 + j) as f64 + 1.0); 3];
    /// let y0 = vec![DMatrix::from_element(7, 2, 1.0); 3];
    /// let out = layer.forward(&x0, Some(&y0)).unwrap();
    /// assert_eq!(out.shape(), [3, 7, 2]);
    /// assert!(layer.forward(&x0, Some(&y0[..2])).is_err());
    /// ```
    pub fn forward(&self, x0: &[DMatrix<f64>], y0: Option<&[DMatrix<f64>]>) -> Result<LayerOutput> {
        check_inputs(x0, y0)?;
        let problems: Vec<BatchProblem> = x0
            .iter()
            .enumerate()
            .map(|(i, x)| BatchProblem {
                y0: y0.map_or_else(|| x.clone(), |y| y[i].clone()),
                x0: Some(x.clone()),
                w: self.params.common.w,
            })
            .collect();
        let batch = nsa_flow_batch(&problems, &self.params)?;
        let ys = batch.results.iter().map(|r| r.y.clone()).collect();
        let explicit = y0.is_some();
        let (mut xs, mut ys0) = (Vec::with_capacity(x0.len()), Vec::new());
        for pr in problems {
            xs.push(pr.x0.expect("the layer always passes X0"));
            if explicit {
                ys0.push(pr.y0);
            }
        }
        Ok(LayerOutput {
            ys,
            results: batch.results,
            backend: batch.backend,
            x0: xs,
            y0: explicit.then_some(ys0),
            params: self.params.clone(),
        })
    }

    /// A 2-D input: a batch of one (the output stays `[1, p, k]`, as the reference's).
    pub fn forward_one(&self, x0: &DMatrix<f64>, y0: Option<&DMatrix<f64>>) -> Result<LayerOutput> {
        let y0 = y0.map(|y| vec![y.clone()]);
        self.forward(std::slice::from_ref(x0), y0.as_deref())
    }

    /// [`Self::forward`] on flat row-major `[B, p, k]` arrays (numpy's layout of a 3-D
    /// array; a 2-D `[p, k]` array is `shape = [1, p, k]`).
    ///
    /// ```
    /// use nsa_flow::layer::NsaFlowLayer;
    /// let layer = NsaFlowLayer::builder().backend(nsa_flow::BackendChoice::Cpu).build().unwrap();
    /// let data: Vec<f64> = (0..2 * 5 * 2).map(|i| 1.0 + (i % 7) as f64).collect();
    /// let out = layer.forward_flat(&data, [2, 5, 2], None).unwrap();
    /// assert_eq!(out.ys_flat().len(), data.len());
    /// assert!(layer.forward_flat(&data, [2, 5, 3], None).is_err());
    /// ```
    pub fn forward_flat(
        &self,
        x0: &[f64],
        shape: [usize; 3],
        y0: Option<&[f64]>,
    ) -> Result<LayerOutput> {
        let xs = batch_from_flat("X0", x0, shape)?;
        let ys = y0.map(|y| batch_from_flat("Y0", y, shape)).transpose()?;
        self.forward(&xs, ys.as_deref())
    }

    /// `Ok` when [`Self::backward`] differentiates this layer's parameters exactly, else
    /// [`NsaError::NotDifferentiable`] naming the combination. Supported: corrected mode, the
    /// "fast" optimizer, without `project_full_gradient`; any retraction (soft-polar, polar,
    /// none), `apply_nonneg` on or off, `simplified` on or off, the default or a fixed
    /// learning rate, any `w`, backend and precision of the forward.
    pub fn check_differentiable(&self) -> Result<()> {
        let p = &self.params;
        let refuse = |combination: String, reason: &str| {
            Err(NsaError::NotDifferentiable {
                combination,
                reason: reason.to_string(),
            })
        };
        if p.common.mode != Mode::Corrected {
            return refuse(
                format!("mode = {}", p.common.mode),
                "the reference loop's best-anchored backtracking, double retraction and start-calibrated \
                 weights are not differentiated; use mode = corrected",
            );
        }
        if p.optimizer != OptimizerKind::Fast {
            return refuse(
                format!("optimizer = {}", p.optimizer),
                "only the \"fast\" gradient step is differentiated (an optimizer's state would have to be too)",
            );
        }
        if p.project_full_gradient {
            return refuse(
                "project_full_gradient = true".into(),
                "the derivative of the polar tangent projection is not implemented",
            );
        }
        if p.nonneg == NonNeg::Softplus {
            return refuse(
                "nonneg = softplus".into(),
                "the corrected solver clamps (apply_nonneg = true) or leaves signs alone",
            );
        }
        Ok(())
    }

    /// Re-runs every problem of `out` on the CPU in f64 and returns its tape (the iterates and
    /// the decisions the backward differentiates with, each replayed to check it).
    ///
    /// ```
    /// use nalgebra::DMatrix;
    /// use nsa_flow::layer::NsaFlowLayer;
    /// let layer = NsaFlowLayer::builder().backend(nsa_flow::BackendChoice::Cpu).build().unwrap();
    /// let x = DMatrix::from_fn(9, 2, |i, j| ((i * 5 + j * 3) % 4) as f64 + 0.5);
    /// let out = layer.forward_one(&x, None).unwrap();
    /// let tapes = layer.record(&out).unwrap();
    /// assert_eq!(tapes[0].iterations(), out.results[0].iterations);
    /// assert_eq!(tapes[0].replay_error(), 0.0);
    /// ```
    pub fn record(&self, out: &LayerOutput) -> Result<Vec<LayerTape>> {
        self.check_output(out)?;
        self.check_differentiable()?;
        (0..out.x0.len())
            .into_par_iter()
            .map(|i| {
                let x0 = &out.x0[i];
                let y0 = out.y0.as_ref().map_or(x0, |y| &y[i]);
                let (_, tape) = solve_corrected_recorded(y0, Some(x0), &self.params)
                    .map_err(|e| in_batch(i, e))?;
                let replay = Replay::new(&self.params, &tape);
                let mut be = CpuBackend::<f64>::new();
                let mut decisions = Vec::with_capacity(tape.steps.len());
                let mut replay_error = 0.0f64;
                for (t, st) in tape.steps.iter().enumerate() {
                    let s = replay.step(&mut be, &tape, t);
                    let clamped = if replay.clamp {
                        s.r.iter().filter(|&&v| v < 0.0).count()
                    } else {
                        0
                    };
                    replay_error =
                        replay_error.max(s.mismatch(&tape.iterates[t + 1], replay.clamp));
                    decisions.push(StepDecision {
                        retracted: st.kind == Candidate::Retracted,
                        alpha: st.alpha,
                        scale_free_step: st.from_safe,
                        clamped,
                    });
                }
                Ok(LayerTape {
                    tape,
                    decisions,
                    replay_error,
                })
            })
            .collect()
    }

    /// The vector-Jacobian product of [`Self::forward`]: given `dL/dY` for each output
    /// (`grad_y[b]` p×k), `dL/dX0` for each problem (and `dL/dY0` when `Y0` was explicit),
    /// the exact derivative of the unrolled iterations with every discrete choice frozen
    /// (module documentation). Runs on the CPU in f64 (problems in parallel), re-running each
    /// solve to record its tape; deterministic. Combinations it cannot differentiate exactly
    /// are [`NsaError::NotDifferentiable`] ([`Self::check_differentiable`]); `out` must come
    /// from a layer with the same parameters.
    ///
    /// ```
    /// use nalgebra::DMatrix;
    /// use nsa_flow::layer::NsaFlowLayer;
    /// let layer = NsaFlowLayer::builder().w(0.5).backend(nsa_flow::BackendChoice::Cpu).build().unwrap();
    /// let x = DMatrix::from_fn(12, 3, |i, j| ((i * 7 + j * 5) % 6) as f64 + 0.25);
    /// let out = layer.forward_one(&x, None).unwrap();
    /// let g = DMatrix::from_fn(12, 3, |i, j| ((i + j) % 3) as f64 - 1.0);
    /// let dx = &layer.backward(&out, &[g.clone()]).unwrap().x0[0];
    /// // compare with a central difference of L(X0) = ⟨G, forward(X0)⟩ along a direction
    /// let v = DMatrix::from_fn(12, 3, |i, j| ((i * 3 + j) % 5) as f64 * 0.1);
    /// let h = 1e-6;
    /// let l = |x: &DMatrix<f64>| layer.forward_one(x, None).unwrap().ys[0].dot(&g);
    /// let fd = (l(&(&x + &v * h)) - l(&(&x - &v * h))) / (2.0 * h);
    /// assert!((fd - dx.dot(&v)).abs() <= 1e-4 * fd.abs().max(1e-3));
    /// ```
    pub fn backward(&self, out: &LayerOutput, grad_y: &[DMatrix<f64>]) -> Result<LayerGradients> {
        self.check_output(out)?;
        self.check_differentiable()?;
        if grad_y.len() != out.x0.len() {
            return Err(NsaError::InvalidParameter {
                name: "grad_y",
                reason: format!("{} gradients for a batch of {}", grad_y.len(), out.x0.len()),
            });
        }
        for (i, g) in grad_y.iter().enumerate() {
            validate::finite_nonempty("dL/dY", g)
                .and_then(|()| validate::same_shape("dL/dY", g, out.x0[i].shape()))
                .map_err(|e| in_batch(i, e))?;
        }
        let per: Vec<(DMatrix<f64>, Option<DMatrix<f64>>)> = (0..out.x0.len())
            .into_par_iter()
            .map(|i| {
                let x0 = &out.x0[i];
                let y0 = out.y0.as_ref().map(|y| &y[i]);
                backward_one(&self.params, x0, y0, &grad_y[i]).map_err(|e| in_batch(i, e))
            })
            .collect::<Result<_>>()?;
        let explicit = out.y0.is_some();
        let (mut gx, mut gy) = (Vec::with_capacity(per.len()), Vec::new());
        for (x, y) in per {
            gx.push(x);
            if let Some(y) = y {
                gy.push(y);
            }
        }
        Ok(LayerGradients {
            x0: gx,
            y0: explicit.then_some(gy),
        })
    }

    fn check_output(&self, out: &LayerOutput) -> Result<()> {
        if out.params != self.params {
            return Err(NsaError::InvalidParameter {
                name: "output",
                reason: "this output was computed by a layer with other parameters".into(),
            });
        }
        Ok(())
    }
}

fn check_inputs(x0: &[DMatrix<f64>], y0: Option<&[DMatrix<f64>]>) -> Result<()> {
    if x0.is_empty() {
        return Err(NsaError::InvalidParameter {
            name: "X0",
            reason: "the batch is empty".into(),
        });
    }
    if let Some(y) = y0 {
        if y.len() != x0.len() {
            return Err(NsaError::InvalidParameter {
                name: "Y0",
                reason: format!("{} starts for a batch of {} targets", y.len(), x0.len()),
            });
        }
    }
    let shape = x0[0].shape();
    for (i, x) in x0.iter().enumerate() {
        validate::finite_nonempty("X0", x)
            .and_then(|()| validate::same_shape("X0", x, shape))
            .map_err(|e| in_batch(i, e))?;
        if let Some(y) = y0 {
            validate::finite_nonempty("Y0", &y[i])
                .and_then(|()| validate::same_shape("Y0", &y[i], shape))
                .map_err(|e| in_batch(i, e))?;
        }
    }
    Ok(())
}

/// Splits a flat row-major `[B, p, k]` array (numpy's layout) into `B` p×k matrices.
///
/// ```
/// use nsa_flow::layer::{batch_from_flat, batch_to_flat};
/// let data: Vec<f64> = (0..12).map(f64::from).collect();
/// let ms = batch_from_flat("X0", &data, [2, 3, 2]).unwrap();
/// assert_eq!(ms[1][(0, 1)], 7.0); // element [1, 0, 1]
/// assert_eq!(batch_to_flat(&ms), data);
/// ```
pub fn batch_from_flat(
    what: &'static str,
    data: &[f64],
    shape: [usize; 3],
) -> Result<Vec<DMatrix<f64>>> {
    let [b, p, k] = shape;
    if b == 0 || p == 0 || k == 0 {
        return Err(NsaError::Empty {
            what,
            rows: p,
            cols: k,
        });
    }
    let n = b.checked_mul(p * k).filter(|&n| n == data.len());
    if n.is_none() {
        return Err(NsaError::InvalidParameter {
            name: "shape",
            reason: format!("{what} has {} values, not {b}×{p}×{k}", data.len()),
        });
    }
    Ok(data
        .chunks_exact(p * k)
        .map(|c| DMatrix::from_row_slice(p, k, c))
        .collect())
}

/// Joins matrices into a flat row-major `[B, p, k]` array (numpy's layout).
pub fn batch_to_flat(ms: &[DMatrix<f64>]) -> Vec<f64> {
    let mut out = Vec::with_capacity(ms.iter().map(|m| m.len()).sum());
    for m in ms {
        for i in 0..m.nrows() {
            out.extend(m.row(i).iter());
        }
    }
    out
}

/// The energy of a recorded solve, its gradient rule (the solver's, bit for bit) and its
/// Hessian-vector product.
struct Replay {
    rule: GradientRule,
    fid_weight: f64,
    orth_weight: f64,
    offdiag_scale: Option<f64>,
    ropt: RetractOptions,
    clamp: bool,
}

/// One replayed step: the gradient at `y_t`, the input of the retraction (or of the clamp),
/// and the value before the clamp.
struct ReplayedStep {
    g: DMatrix<f64>,
    pre: DMatrix<f64>,
    r: DMatrix<f64>,
}

impl ReplayedStep {
    fn mismatch(&self, next: &DMatrix<f64>, clamp: bool) -> f64 {
        self.r
            .iter()
            .zip(next.iter())
            .map(|(&r, &y)| {
                let c = if clamp && r < 0.0 { 0.0 } else { r };
                (c - y).abs()
            })
            .fold(0.0, f64::max)
    }
}

impl Replay {
    fn new(params: &Params, tape: &CorrectedTape) -> Self {
        Replay {
            rule: GradientRule {
                fid: 2.0 * tape.fid_weight,
                orth: 4.0 * tape.orth_weight,
                simplified: tape.offdiag_scale.map(|s| 4.0 * tape.orth_weight / s),
                projection: Projection::None,
            },
            fid_weight: tape.fid_weight,
            orth_weight: tape.orth_weight,
            offdiag_scale: tape.offdiag_scale,
            ropt: RetractOptions::corrected(params.common.retraction, params.common.w),
            clamp: params.nonneg == NonNeg::Hard,
        }
    }

    fn gradient(
        &self,
        be: &mut CpuBackend<f64>,
        y: &DMatrix<f64>,
        target: &DMatrix<f64>,
    ) -> DMatrix<f64> {
        let mut g = DMatrix::zeros(y.nrows(), y.ncols());
        be.gradient(y, target, &self.rule, &mut g);
        g
    }

    /// `∇²E(y)·v` (the target's part, `−2·fid_weight·v`, is added by the caller).
    fn hvp(&self, y: &DMatrix<f64>, v: &DMatrix<f64>) -> DMatrix<f64> {
        let mut out = v * (2.0 * self.fid_weight);
        if self.orth_weight != 0.0 {
            let (h, c) = match self.offdiag_scale {
                Some(s) => (grad::orth_hvp(y, v, true), self.orth_weight / s),
                None => (grad::orth_hvp(y, v, false), self.orth_weight),
            };
            out += h * c;
        }
        out
    }

    /// Step `t` recomputed exactly as the solver computed it (the same CPU operations).
    fn step(&self, be: &mut CpuBackend<f64>, tape: &CorrectedTape, t: usize) -> ReplayedStep {
        let y = &tape.iterates[t];
        let st = tape.steps[t];
        let g = self.gradient(be, y, &tape.target_n);
        let (p, k) = y.shape();
        let mut pre = DMatrix::zeros(p, k);
        let mut r = DMatrix::zeros(p, k);
        match st.kind {
            Candidate::Retracted | Candidate::AlongProposal => {
                let mut prop = DMatrix::zeros(p, k);
                be.optimizer_step(&UpdateRule::Sgd, y, &g, &mut [], st.plr, &mut prop);
                be.lerp(y, &prop, st.alpha, &mut pre);
            }
            Candidate::AlongGradient => be.lincomb(1.0, y, -st.alpha * st.plr, &g, &mut pre),
        }
        if st.kind == Candidate::Retracted {
            be.retract(&pre, &mut r, &self.ropt);
        } else {
            r.copy_from(&pre);
        }
        ReplayedStep { g, pre, r }
    }
}

/// Adds the adjoint of `safe = 0.1·‖y‖/‖g‖` (weight `bar`) to `ybar` and `gbar`.
fn safe_step_adjoint(
    y: &DMatrix<f64>,
    g: &DMatrix<f64>,
    bar: f64,
    ybar: &mut DMatrix<f64>,
    gbar: &mut DMatrix<f64>,
) {
    let gn = g.norm();
    if gn <= 0.0 || bar == 0.0 {
        return; // the solver's step is the constant 1 there
    }
    let yn = y.norm();
    *ybar += y * (bar * 0.1 / (yn * gn));
    *gbar -= g * (bar * 0.1 * yn / (gn * gn * gn));
}

/// `(dL/dX0, dL/dY0 if explicit)` of one problem.
fn backward_one(
    params: &Params,
    x0: &DMatrix<f64>,
    y0: Option<&DMatrix<f64>>,
    gy: &DMatrix<f64>,
) -> Result<(DMatrix<f64>, Option<DMatrix<f64>>)> {
    let (_, tape) = solve_corrected_recorded(y0.unwrap_or(x0), Some(x0), params)?;
    let rp = Replay::new(params, &tape);
    let mut be = CpuBackend::<f64>::new();
    let s = tape.scale;
    let n_steps = tape.steps.len();
    let (p, k) = x0.shape();
    let pk = (p * k) as f64;

    // output = s·y_T
    let mut ybar = gy * s;
    let mut sbar = gy.dot(&tape.iterates[n_steps]);
    let mut xnbar = DMatrix::<f64>::zeros(p, k);
    // adjoint of the running learning rate lr_{t+1}
    let mut lrbar = 0.0f64;
    for t in (0..n_steps).rev() {
        let st = tape.steps[t];
        let y = &tape.iterates[t];
        let ReplayedStep { g, pre, r } = rp.step(&mut be, &tape, t);
        // y_{t+1} = Π(r)
        let mut rbar = ybar;
        if rp.clamp {
            grad::nonneg_backward_in_place(&r, NonNeg::Hard, &mut rbar);
        }
        // r = R(pre) or pre
        let prebar = if st.kind == Candidate::Retracted {
            grad::retract_backward_in(&pre, &rp.ropt, &rbar)
        } else {
            rbar
        };
        // pre = y − α·plr·g; lr_{t+1} = (α = 1 ? 1.5 : α)·plr
        let growth = if st.alpha == 1.0 { 1.5 } else { st.alpha };
        let plrbar = growth * lrbar - st.alpha * g.dot(&prebar);
        let mut gbar = &prebar * (-st.alpha * st.plr);
        let mut ynext = prebar;
        if st.from_safe {
            // plr = 0.1·‖y_t‖/‖g_t‖; lr_t itself was not used by this step
            safe_step_adjoint(y, &g, plrbar, &mut ynext, &mut gbar);
            lrbar = 0.0;
        } else {
            lrbar = plrbar;
        }
        // g = 2·fw·(y − x̂) + orth part
        ynext += rp.hvp(y, &gbar);
        xnbar -= &gbar * (2.0 * rp.fid_weight);
        ybar = ynext;
    }
    // the initial learning rate
    match params.learning_rate {
        LearningRate::Default => {
            let y = &tape.iterates[0];
            let g = rp.gradient(&mut be, y, &tape.target_n);
            let mut gbar = DMatrix::zeros(p, k);
            safe_step_adjoint(y, &g, lrbar, &mut ybar, &mut gbar);
            ybar += rp.hvp(y, &gbar);
            xnbar -= &gbar * (2.0 * rp.fid_weight);
        }
        // lr0 = v/s²
        LearningRate::Value(_) => sbar -= 2.0 * lrbar * tape.lr0 / s,
    }
    // y_0 = Π(Y0)/s
    let start = y0.unwrap_or(x0);
    sbar -= ybar.dot(&tape.iterates[0]) / s;
    let mut y0bar = ybar / s;
    if rp.clamp {
        grad::nonneg_backward_in_place(start, NonNeg::Hard, &mut y0bar);
    }
    // x̂ = Π(X0)/s, s = ‖Π(X0)‖/√(pk)
    sbar -= xnbar.dot(&tape.target_n) / s;
    let mut x0bar = xnbar / s + &tape.target_n * (sbar / pk);
    if rp.clamp {
        grad::nonneg_backward_in_place(x0, NonNeg::Hard, &mut x0bar);
    }
    Ok(match y0 {
        Some(_) => (x0bar, Some(y0bar)),
        None => (x0bar + y0bar, None),
    })
}
