//! The backend trait: the operations one NSA-Flow iteration is made of, at the granularity a
//! GPU does well, so the solver loop in [`crate::flow`] is written once for every backend.
//!
//! A backend owns its matrices (`Mat`, p×k, resident where it computes). The host only sees
//! scalars, and only through [`Backend::reduce`], which takes a *batch* of reductions and
//! answers them together: on a GPU that is one readback, which is how the line search
//! evaluates several candidates per readback (see [`Backend::line_search_batch`]).

pub mod cpu;
pub mod gpu;
mod gpu_autograd;

use crate::autograd::EnergySpec;
use crate::energy::EnergyTerms;
use crate::error::Result;
use crate::params::{NonNeg, Precision};
use crate::retract::RetractOptions;
use nalgebra::DMatrix;

/// How the gradient (or the reference's "rgrad") is assembled from `Y`, `X0` and `S = YᵀY`.
///
/// With `n = ‖Y‖²`, `d = diag(S)` and `D = (‖S‖² − ‖d‖²)/n²`, the unprojected direction is
/// `fid·(Y − X0) + orth·[(Y·S − Y·Diag(d))/n² − (D/n)·Y]` (the invariant-defect part), or
/// `fid·(Y − X0) + offdiag·Y·(S − Diag(d))` when `simplified`. The orthogonality part is zero
/// when `n ≤ 1e-12`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradientRule {
    /// Coefficient of `Y − X0`.
    pub fid: f64,
    /// Coefficient of the invariant-defect part (`¼·orth` of it is `∇D`).
    pub orth: f64,
    /// Use the off-diagonal Gram term with this coefficient instead of the invariant defect.
    pub simplified: Option<f64>,
    /// Tangent projection applied afterwards.
    pub projection: Projection,
}

/// The tangent projection `P(G) = G − M·sym(MᵀG)` applied to the gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Projection {
    /// No projection.
    None,
    /// Reference: project only the orthogonality part, with `M = Y` (not orthonormal).
    ReferenceOrthOnly,
    /// Reference: project the whole direction, with `M = Y`.
    ReferenceFull,
    /// Corrected: project the whole direction with `M` the polar factor of `Y`, a true
    /// orthogonal projection, so the result is still a descent direction.
    PolarFull,
}

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
}

/// A reduction to scalars; [`Backend::reduce`] answers a slice of them at once.
#[derive(Clone, Copy, Debug)]
pub enum Reduction<'a, M> {
    /// Four numbers: `‖Y − X0‖²`, `‖YᵀY‖²`, `Σ diag(YᵀY)²`, `‖Y‖²`
    /// (see [`crate::EnergyTerms`]).
    EnergyTerms {
        /// The iterate.
        y: &'a M,
        /// The target.
        target: &'a M,
    },
    /// `‖A‖²`.
    NormSq(&'a M),
    /// `⟨A, B⟩`.
    Dot(&'a M, &'a M),
    /// 1 when every entry is finite, else 0.
    AllFinite(&'a M),
    /// `‖A − B‖²`.
    DistSq(&'a M, &'a M),
    /// `‖P(Y − t·G) − Y‖²` with `P` the clamp to `≥ 0` when `clamp` (else the identity):
    /// the squared gradient mapping behind the corrected solver's certificate.
    GradMapSq {
        /// The iterate.
        y: &'a M,
        /// The gradient.
        g: &'a M,
        /// Step `t`.
        t: f64,
        /// Whether the feasible set is `Y ≥ 0`.
        clamp: bool,
    },
}

impl<M> Reduction<'_, M> {
    /// How many numbers this reduction contributes to the answer of [`Backend::reduce`].
    pub fn width(&self) -> usize {
        match self {
            Reduction::EnergyTerms { .. } => 4,
            _ => 1,
        }
    }
}

/// The operations of one NSA-Flow iteration. Implemented by the CPU oracle
/// ([`cpu::CpuBackend`]) and by device backends.
///
/// Every method that writes a matrix takes the destination explicitly so that the solver
/// allocates its workspace once and nothing is allocated per iteration.
pub trait Backend {
    /// A p×k matrix resident on the backend.
    type Mat;

    /// A short description (device and precision) for summaries.
    fn name(&self) -> String;
    /// The arithmetic precision.
    fn precision(&self) -> Precision;
    /// How many line-search candidates to evaluate per [`Backend::reduce`] call. The CPU
    /// answers 1 (no wasted work); a device with expensive readbacks answers more.
    fn line_search_batch(&self) -> usize {
        1
    }
    /// Round trips that read device memory back so far (`None` for a backend whose memory is
    /// the host's).
    fn readbacks(&self) -> Option<u64> {
        None
    }

    /// Copies a host matrix to the backend (converting to its precision).
    fn upload(&mut self, m: &DMatrix<f64>) -> Result<Self::Mat>;
    /// Copies a backend matrix to the host.
    fn download(&mut self, m: &Self::Mat) -> Result<DMatrix<f64>>;
    /// A zero p×k matrix.
    fn zeros(&mut self, p: usize, k: usize) -> Result<Self::Mat>;
    /// `dst ← src`.
    fn copy(&mut self, src: &Self::Mat, dst: &mut Self::Mat);
    /// `dst ← a·x + b·y`.
    fn lincomb(&mut self, a: f64, x: &Self::Mat, b: f64, y: &Self::Mat, dst: &mut Self::Mat);
    /// `dst ← base + α·(toward − base)`.
    fn lerp(&mut self, base: &Self::Mat, toward: &Self::Mat, alpha: f64, dst: &mut Self::Mat);
    /// Applies a non-negativity map in place.
    fn nonneg(&mut self, m: &mut Self::Mat, mode: NonNeg);
    /// `dst ← R_w(src)`.
    fn retract(&mut self, src: &Self::Mat, dst: &mut Self::Mat, options: &RetractOptions);
    /// `out ← gradient(Y, X0)` as described by `rule`.
    fn gradient(&mut self, y: &Self::Mat, x0: &Self::Mat, rule: &GradientRule, out: &mut Self::Mat);
    /// One optimizer step: `out ← param − lr·direction(grad, state)`, updating `state`.
    fn optimizer_step(
        &mut self,
        rule: &UpdateRule,
        param: &Self::Mat,
        grad: &Self::Mat,
        state: &mut [Self::Mat],
        lr: f64,
        out: &mut Self::Mat,
    );
    /// Answers a batch of reductions into `out` (cleared first), concatenating each one's
    /// numbers in order. One call is one readback on a device; `out` is reused by the solver
    /// so the loop does not allocate.
    fn reduce_into(
        &mut self,
        requests: &[Reduction<'_, Self::Mat>],
        out: &mut Vec<f64>,
    ) -> Result<()>;

    /// `out ← ∇E(Y)`, the gradient of the energy `spec` at `y` against `x0`, given `terms`
    /// (the [`Reduction::EnergyTerms`] of `y` against `x0`, already read) and `‖X0‖²`.
    #[allow(clippy::too_many_arguments)]
    fn energy_gradient(
        &mut self,
        y: &Self::Mat,
        x0: &Self::Mat,
        spec: &EnergySpec,
        terms: &EnergyTerms,
        x0_norm_sq: f64,
        out: &mut Self::Mat,
    );
    /// `g ← g ∘ J(pre)`: the backward of the non-negativity map `mode` applied to `pre`.
    fn nonneg_backward(&mut self, pre: &Self::Mat, mode: NonNeg, g: &mut Self::Mat);
    /// `out ← J_R(y)ᵀ·g`: the backward of the retraction `options` at `y`.
    fn retract_backward(
        &mut self,
        y: &Self::Mat,
        options: &RetractOptions,
        g: &Self::Mat,
        out: &mut Self::Mat,
    );

    /// [`Backend::reduce_into`] returning a new vector.
    fn reduce(&mut self, requests: &[Reduction<'_, Self::Mat>]) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(requests.iter().map(|r| r.width()).sum());
        self.reduce_into(requests, &mut out)?;
        Ok(out)
    }
}
