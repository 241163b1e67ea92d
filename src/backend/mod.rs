//! The backend trait: the operations one NSA-Flow iteration is made of, at the granularity a
//! GPU does well, so the solver loop in [`crate::flow`] is written once for every backend.
//!
//! A backend owns its matrices (`Mat`, p×k, resident where it computes). The host only sees
//! scalars, and only through [`Backend::reduce`], which takes a *batch* of reductions and
//! answers them together: on a GPU that is one readback, which is how the line search
//! evaluates several candidates per readback (see [`Backend::line_search_batch`]).

pub mod cpu;
#[cfg(feature = "gpu")]
pub mod gpu;
#[cfg(feature = "gpu")]
mod gpu_autograd;
#[cfg(feature = "gpu")]
pub(crate) mod gpu_batch;
pub mod select;

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

// The optimizer rules live with the optimizers (`optim::rule`); a backend runs them.
pub use crate::optim::rule::UpdateRule;
// the rules' compiled passes: what the backends run, not an interface of the crate
#[doc(hidden)]
pub use crate::optim::rule::{elem_op, ElemOp, Operand, OptPass, OptPasses};

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
    /// 1 when some entry of `A` differs from `B`'s (compared as values: `+0 = −0`), 0 when
    /// `A = B` entrywise (the line search's "the step rounded away").
    AnyDiffer(&'a M, &'a M),
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
    /// `Σ gᵢ²` over the entries a projected step along `−G` can move (`yᵢ > 0` or `gᵢ < 0`):
    /// the gradient's norm where `Y ≥ 0` leaves it free, which bounds what such a step gains
    /// to first order (the corrected line search's test for a negligible step).
    FreeNormSq {
        /// The iterate.
        y: &'a M,
        /// The gradient.
        g: &'a M,
    },
    /// `Σ|aᵢ|` (LBFGS's first step length).
    AbsSum(&'a M),
    /// `#{i : |scale·aᵢ| > threshold}`: 0 exactly when `max|scale·A| ≤ threshold` (LBFGS's
    /// tolerance tests, as a sum so a device reduces it like the others).
    CountAbove {
        /// The matrix.
        m: &'a M,
        /// Its scale.
        scale: f64,
        /// The threshold.
        threshold: f64,
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

/// The largest line-search batch the solvers honour ([`Backend::line_search_batch`]).
pub const MAX_BATCH: usize = 20;

/// The operations of one NSA-Flow iteration. Implemented by the CPU oracle
/// ([`cpu::CpuBackend`]) and by device backends.
///
/// Every method that writes a matrix takes the destination explicitly so that the solver
/// allocates its workspace once and nothing is allocated per iteration. Operations are
/// recorded in order and may run asynchronously (on a device); errors of an operation that
/// returns nothing surface at the next [`Backend::reduce_into`] or [`Backend::download`].
/// Code written against this trait runs unchanged on every backend:
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::backend::{cpu::CpuBackend, Backend, Reduction};
/// use nsa_flow::{NonNeg, RetractOptions, Retraction};
///
/// /// One projected, retracted step `R(max(Y − lr·G, 0))`; returns its ‖·‖² and defect terms.
/// fn step<B: Backend>(be: &mut B, y: &DMatrix<f64>, g: &DMatrix<f64>) -> nsa_flow::Result<Vec<f64>> {
///     let (p, k) = y.shape();
///     let (y, g) = (be.upload(y)?, be.upload(g)?);
///     let (mut cand, mut out) = (be.zeros(p, k)?, be.zeros(p, k)?);
///     be.lincomb(1.0, &y, -0.1, &g, &mut cand);
///     be.nonneg(&mut cand, NonNeg::Hard);
///     be.retract(&cand, &mut out, &RetractOptions::corrected(Retraction::SoftPolar, 0.5));
///     // one batch of reductions: a single readback on a GPU
///     be.reduce(&[Reduction::NormSq(&out), Reduction::EnergyTerms { y: &out, target: &y }])
/// }
///
/// let y = DMatrix::from_fn(8, 2, |i, j| 1.0 + ((i + 3 * j) % 4) as f64);
/// let g = DMatrix::from_element(8, 2, 0.5);
/// let v = step(&mut CpuBackend::<f64>::new(), &y, &g).unwrap();
/// assert_eq!(v.len(), 1 + 4); // NormSq, then the four EnergyTerms numbers
/// assert!((v[0] - v[4]).abs() <= 1e-12 * v[0]); // ‖Y‖² is also EnergyTerms' last number
/// ```
pub trait Backend {
    /// A p×k matrix resident on the backend.
    type Mat;

    /// A short description (device and precision) for summaries.
    fn name(&self) -> String;
    /// The arithmetic precision.
    fn precision(&self) -> Precision;
    /// How many line-search candidates to evaluate per [`Backend::reduce`] call. The CPU
    /// answers 1 (no wasted work); a device with expensive readbacks answers more, at most
    /// [`MAX_BATCH`].
    fn line_search_batch(&self) -> usize {
        1
    }
    /// Round trips that read device memory back so far (`None` for a backend whose memory is
    /// the host's).
    fn readbacks(&self) -> Option<u64> {
        None
    }
    /// The GPU adapter this backend runs on (`None` for a host backend); what
    /// [`crate::DeviceInfo::adapter`] reports.
    fn adapter(&self) -> Option<crate::AdapterSummary> {
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
    /// [`Backend::lerp`] for a line-search candidate, whose Gram `dstᵀdst` is needed next (by
    /// its retraction or its energy): a device may form that Gram in the same pass over the
    /// data and keep it for them. `dst` holds what `lerp` writes.
    fn lerp_candidate(
        &mut self,
        base: &Self::Mat,
        toward: &Self::Mat,
        alpha: f64,
        dst: &mut Self::Mat,
    ) {
        self.lerp(base, toward, alpha, dst);
    }
    /// [`Backend::lincomb`] for a line-search candidate (see [`Backend::lerp_candidate`]).
    fn lincomb_candidate(
        &mut self,
        a: f64,
        x: &Self::Mat,
        b: f64,
        y: &Self::Mat,
        dst: &mut Self::Mat,
    ) {
        self.lincomb(a, x, b, y, dst);
    }
    /// Applies a non-negativity map in place.
    fn nonneg(&mut self, m: &mut Self::Mat, mode: NonNeg);
    /// `dst ← R_w(src)`.
    fn retract(&mut self, src: &Self::Mat, dst: &mut Self::Mat, options: &RetractOptions);
    /// [`Backend::retract`] into a line-search candidate, whose Gram is needed next (its
    /// energy): a device may form that Gram with the retraction's product and keep it.
    fn retract_candidate(
        &mut self,
        src: &Self::Mat,
        dst: &mut Self::Mat,
        options: &RetractOptions,
    ) {
        self.retract(src, dst, options);
    }
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

    /// [`Backend::reduce_into`] returning a new vector.
    fn reduce(&mut self, requests: &[Reduction<'_, Self::Mat>]) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(requests.iter().map(|r| r.width()).sum());
        self.reduce_into(requests, &mut out)?;
        Ok(out)
    }
}
