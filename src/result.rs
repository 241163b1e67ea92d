//! What a solve returns, and what the per-iteration callback sees.

use crate::params::{Mode, Precision};
use nalgebra::DMatrix;
use std::fmt;

/// One recorded iteration (the reference's trace columns).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceRow {
    /// Iteration number (1-based).
    pub iter: usize,
    /// Seconds since the loop started.
    pub time: f64,
    /// The weighted fidelity term of the energy.
    pub fidelity: f64,
    /// The raw orthogonality defect `D(Y)` (not weighted, as in the reference's traces).
    pub orthogonality: f64,
    /// The total energy.
    pub total_energy: f64,
}

/// Why the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `max_iter` iterations ran.
    MaxIter,
    /// Reference mode: the relative gradient norm fell below `tol`.
    GradientTolerance,
    /// The relative range of the last `window_size` energies fell below the threshold.
    EnergyWindow,
    /// Corrected mode: the certificate (relative projected-gradient mapping) reached `tol`.
    Certificate,
    /// Corrected mode: no step, however small, decreased the energy (a numerical stationary
    /// point at working precision).
    LineSearchStalled,
    /// The gradient held NaN or ±Inf.
    NonFiniteGradient,
    /// The callback asked to stop.
    Callback,
}

impl StopReason {
    /// A stable snake_case name (used in summaries).
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::MaxIter => "max_iter",
            StopReason::GradientTolerance => "gradient_tolerance",
            StopReason::EnergyWindow => "energy_window",
            StopReason::Certificate => "certificate",
            StopReason::LineSearchStalled => "line_search_stalled",
            StopReason::NonFiniteGradient => "non_finite_gradient",
            StopReason::Callback => "callback",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stationarity certificate for the returned `Y`: the relative projected-gradient mapping
/// `‖P(Y − ‖Y‖²·∇E(Y)) − Y‖_F / ‖Y‖_F` of the mode's energy `E` over the feasible set
/// (`Y ≥ 0` with hard non-negativity), which is zero exactly at a first-order stationary
/// point and is invariant to the scale of the data.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Certificate {
    /// The value at the returned `Y`.
    pub value: f64,
    /// The tolerance it is compared with (`Params::tol`).
    pub tol: f64,
    /// `value ≤ tol`.
    pub satisfied: bool,
}

/// The scaling constants of the energy `E(Y) = fid_weight·‖Y−X0‖² + orth_weight·D(Y)`.
///
/// Reference mode: `fid_weight = ½·fid_eta = ½(1−w)/(g0·p·k)`, `orth_weight = ¼·c_orth = w/d0`
/// with `g0 = max(½‖Y_init−X0‖²/(pk), 1e-8)`, `d0 = max(D(Y_init), 1e-8)`.
/// Corrected mode: `fid_weight = (1−w)/‖X0‖²`, `orth_weight = w/(1−1/k)` (`0` for `k = 1`),
/// and `g0`, `d0` are reported but unused.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Scaling {
    /// `max(½‖Y_init−X0‖²/(pk), 1e-8)`.
    pub g0: f64,
    /// `max(D(Y_init), 1e-8)`.
    pub d0: f64,
    /// The reference's `fid_eta` (`2·fid_weight`).
    pub fid_eta: f64,
    /// The reference's `c_orth` (`4·orth_weight`).
    pub c_orth: f64,
    /// Coefficient of `‖Y − X0‖²` in the energy.
    pub fid_weight: f64,
    /// Coefficient of the orthogonality term in the energy.
    pub orth_weight: f64,
}

/// The outcome of [`crate::nsa_flow`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NsaResult {
    /// The best `Y` found (lowest total energy among accepted iterates).
    pub y: DMatrix<f64>,
    /// Recorded iterations (every `record_every`-th).
    pub traces: Vec<TraceRow>,
    /// The number of recorded trace rows (the reference's `final_iter`).
    pub final_iter: usize,
    /// Iterations run.
    pub iterations: usize,
    /// Total energy of `y`; `None` in reference mode when no iterate was accepted (e.g. a
    /// non-finite gradient at the first iteration), in which case `y` is the start.
    pub best_total_energy: Option<f64>,
    /// Iteration at which `y` was reached (0 when none was accepted).
    pub best_iteration: usize,
    /// The target actually used (after the non-negativity projection, or the self-target).
    pub target: DMatrix<f64>,
    /// The start actually used (after the `X0 = None` perturbation; corrected mode: after
    /// the non-negativity projection that makes it feasible).
    pub start: DMatrix<f64>,
    /// Why the loop ended.
    pub stop_reason: StopReason,
    /// Stationarity certificate of `y`.
    pub certificate: Certificate,
    /// The energy's scaling constants.
    pub scaling: Scaling,
    /// Initial learning rate.
    pub learning_rate_initial: f64,
    /// Learning rate at the end.
    pub learning_rate_final: f64,
    /// Reference mode: `‖rgrad(Y_init)‖ + 1e-8`; corrected mode: `‖∇E(Y_start)‖`.
    pub init_grad_norm: f64,
    /// Energy evaluations made by line searches.
    pub energy_evaluations: usize,
    /// Iterations whose first candidate was rejected.
    pub backtracking_iterations: usize,
    /// Corrected mode: accepted steps that went through the retraction (the others were
    /// plain projected-gradient steps, taken when no retracted candidate decreased the
    /// energy enough). Reference mode: every accepted step is retracted.
    pub retracted_steps: usize,
    /// The algorithm that ran.
    pub mode: Mode,
    /// The arithmetic precision.
    pub precision: Precision,
    /// Where it ran: the backend's name (`cpu-f64`, or `gpu-f32 (adapter (API, type))`), the
    /// GPU adapter, and the device readbacks (round trips that read scalars or matrices back).
    pub device: crate::DeviceInfo,
    /// Wall-clock seconds of the loop.
    pub seconds: f64,
}

impl NsaResult {
    /// The invariant orthogonality defect of `y`.
    pub fn defect(&self) -> f64 {
        crate::invariant_orthogonality_defect(&self.y)
    }

    /// Fraction of entries of `y` that are exactly zero.
    pub fn sparsity(&self) -> f64 {
        sparsity(&self.y)
    }
}

/// Fraction of entries that are exactly zero (what NSA-Flow's hard non-negativity produces as
/// `w` grows).
///
/// ```
/// let y = nalgebra::DMatrix::from_row_slice(2, 2, &[1.0, 0.0, 0.0, 2.0]);
/// assert_eq!(nsa_flow::sparsity(&y), 0.5);
/// ```
pub fn sparsity(y: &DMatrix<f64>) -> f64 {
    if y.is_empty() {
        return 0.0;
    }
    y.iter().filter(|v| **v == 0.0).count() as f64 / y.len() as f64
}

/// What the per-iteration callback sees (what the reference printed with `verbose=True`).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct IterInfo {
    /// Iteration number (1-based).
    pub iter: usize,
    /// Weighted fidelity of the new iterate.
    pub fidelity: f64,
    /// Raw orthogonality defect of the new iterate.
    pub orthogonality: f64,
    /// Total energy of the new iterate.
    pub total_energy: f64,
    /// Best total energy so far.
    pub best_total_energy: f64,
    /// Learning rate after this iteration's adaptation.
    pub learning_rate: f64,
    /// Line-search halvings this iteration.
    pub backtracks: usize,
    /// Reference mode: `‖rgrad‖/‖rgrad(Y_init)‖`; corrected mode: the certificate of the
    /// iterate the step started from.
    pub stationarity: f64,
    /// Seconds since the loop started.
    pub elapsed: f64,
}

/// The callback's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep iterating.
    Continue,
    /// Stop now and return the best iterate so far.
    Stop,
}
