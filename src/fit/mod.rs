//! The solvers of nsa_flow 3.5 (REFERENCE.md §7): a calibration-free energy
//! `E_w = (1 − w)·fidelity + w·orthogonality`, minimised over `Y ≥ 0` by projected L-BFGS-B
//! (or SPG) to a scale-invariant stationarity certificate, in three modes:
//!
//! - [`fit_anchored`]: close to a target `X0` (`p×k`), entrywise or, for a signed target,
//!   sign-blind through the projector onto `range(X0)`;
//! - [`fit_data`]: a non-negative basis `V` (`p×k`) reconstructing a data matrix `X` (`n×p`),
//!   `‖X − XVVᵀ‖²/‖X‖²`, matrix-free when `p > n`;
//! - [`fit_signed`]: `V = V⁺ − V⁻` with `[V⁺|V⁻] ≥ 0` near-disjoint parts.
//!
//! [`fit`] dispatches as 3.5's `nsa_flow(data_or_target, k, w, mode=…)` does. This family is
//! separate from the 0.7.7 flow ([`crate::flow`]): a different energy, optimizer and stopping
//! contract. The solver runs on the CPU in `f64`; the data and signed modes' products with
//! `XᵀX` can run on a GPU ([`gpu`], [`FitParams::backend`]), in f64 or f32.
//!
//! ```
//! use nalgebra::DMatrix;
//! use nsa_flow::fit::{fit_data, FitParams};
//! let x = DMatrix::from_fn(40, 12, |i, j| ((i * 7 + j * 3) % 11) as f64 / 10.0);
//! let mut params = FitParams::default();
//! params.w = 0.5;
//! let res = fit_data(&x, 3, &params).unwrap();
//! assert!(res.y.iter().all(|&v| v >= 0.0));
//! println!("{} ({}), certificate {:.1e}", res.stop_reason, res.certificate.name(), res.grad_map);
//! ```

pub mod eig;
pub mod functionals;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod report;
pub mod solver;

pub use functionals::{GramOperator, Orth, SubspaceAnchor};
pub use report::{basis_report, simlr_sparseness, BasisReport, PartStats};
pub use solver::{
    gradient_mapping, Certificate, Feasible, Objective, Solved, SolverParams, StopReason,
};

use crate::error::{NsaError, Result};
use crate::linalg::sum_sq;
use functionals::{axpy_mat, reconstruction_fidelity, stiefel_defect_normalised_grad};
use nalgebra::DMatrix;
use std::time::Instant;

/// Which minimiser runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FitOptimizer {
    /// Projected L-BFGS-B (3.5's default `lbfgsb`).
    Lbfgsb,
    /// Spectral projected gradient (`spg`).
    Spg,
}

impl FitOptimizer {
    /// Parses 3.5's names and aliases (`lbfgsb`, `lbfgs`, `l-bfgs-b`, `spg`, `SPG`).
    pub fn parse(name: &str) -> Result<FitOptimizer> {
        match name {
            "lbfgsb" | "lbfgs" | "l-bfgs-b" => Ok(FitOptimizer::Lbfgsb),
            "spg" | "SPG" => Ok(FitOptimizer::Spg),
            other => Err(NsaError::UnknownName {
                kind: "fit optimizer",
                name: other.to_string(),
                expected: "lbfgsb, spg (aliases lbfgs, l-bfgs-b, SPG)".into(),
            }),
        }
    }
    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            FitOptimizer::Lbfgsb => "lbfgsb",
            FitOptimizer::Spg => "spg",
        }
    }
}

/// The fidelity of the anchored mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fidelity {
    /// `subspace` when `Y ≥ 0` is enforced, `w > 0` and the target's negative mass exceeds
    /// [`FitParams::neg_mass_tol`]; else `anchor`.
    Auto,
    /// `‖Y − X0‖²/‖X0‖²`.
    Anchor,
    /// `‖(I − P)Y‖²/‖Y‖²`, `P` the projector onto `range(X0)`; the result is rescaled to `‖X0‖`.
    Subspace,
}

impl Fidelity {
    /// 3.5's name.
    pub fn name(self) -> &'static str {
        match self {
            Fidelity::Auto => "auto",
            Fidelity::Anchor => "anchor",
            Fidelity::Subspace => "subspace",
        }
    }
}

/// Where a solve starts.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    /// The mode's default: the target or its varimax rotation (anchored), `clamp` (data),
    /// `split` on centred or signed data and `adaptive` otherwise (signed).
    Auto,
    /// Data: `max(0, varimax(top-k eigenvectors))`.
    Clamp,
    /// Anchored: `max(0, varimax(X0))`; data: as `Clamp`; signed: as `Split`.
    Varimax,
    /// Data: the top-k eigenvectors, sign gauge resolved, clamped.
    PcaClamp,
    /// Data/signed: the 9-stage penalty homotopy from signed PCA into `V ≥ 0`.
    Relax,
    /// Signed: the 2-stage homotopy (`μ ∈ {0, 10}`).
    Adaptive,
    /// Signed: `[E⁺ | E⁻]` of the varimax-rotated eigenvectors.
    Split,
    /// Signed: `[E⁺ | E⁻]` of the eigenvectors themselves.
    PcaSplit,
    /// Data: uniform `[0, 1)` entries from this seed (this crate's generator, not torch's).
    Random(u64),
    /// An explicit start (`p×k`; `p×2k` parts for the signed mode).
    Matrix(DMatrix<f64>),
}

impl Init {
    /// Parses a strategy name (`auto`, `clamp`, `varimax`, `pca_clamp`, `relax`, `adaptive`,
    /// `split`, `pca_split`, `random`; `nmf` is refused: no NMF ships with this crate).
    pub fn parse(name: &str) -> Result<Init> {
        Ok(match name {
            "auto" => Init::Auto,
            "clamp" => Init::Clamp,
            "varimax" => Init::Varimax,
            "pca_clamp" => Init::PcaClamp,
            "relax" => Init::Relax,
            "adaptive" => Init::Adaptive,
            "split" => Init::Split,
            "pca_split" => Init::PcaSplit,
            "random" => Init::Random(0),
            "nmf" => {
                return Err(NsaError::InvalidParameter {
                    name: "init",
                    reason: "nmf needs an NMF solver, which this crate does not ship; start \
                             from an NMF result with an explicit init matrix instead"
                        .into(),
                })
            }
            other => {
                return Err(NsaError::UnknownName {
                    kind: "init",
                    name: other.to_string(),
                    expected: "auto, clamp, varimax, pca_clamp, relax, adaptive, split, \
                               pca_split, random"
                        .into(),
                })
            }
        })
    }
    fn name(&self) -> &'static str {
        match self {
            Init::Auto => "auto",
            Init::Clamp => "clamp",
            Init::Varimax => "varimax",
            Init::PcaClamp => "pca_clamp",
            Init::Relax => "relax",
            Init::Adaptive => "adaptive",
            Init::Split => "split",
            Init::PcaSplit => "pca_split",
            Init::Random(_) => "random",
            Init::Matrix(_) => "matrix",
        }
    }
}

/// Which problem [`fit`] solves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FitMode {
    /// `anchored` without `k`, else `signed` when the data has an entry below −1e-12, else
    /// `data` (3.5's rule).
    Auto,
    /// [`fit_data`] (alias `nonneg`).
    Data,
    /// [`fit_signed`] (alias `contrast`).
    Signed,
    /// [`fit_anchored`] (alias `target`).
    Anchored,
}

impl FitMode {
    /// Parses 3.5's names and aliases.
    pub fn parse(name: &str) -> Result<FitMode> {
        match name {
            "auto" => Ok(FitMode::Auto),
            "data" | "nonneg" => Ok(FitMode::Data),
            "signed" | "contrast" => Ok(FitMode::Signed),
            "anchored" | "target" => Ok(FitMode::Anchored),
            other => Err(NsaError::UnknownName {
                kind: "fit mode",
                name: other.to_string(),
                expected: "auto, data (nonneg), signed (contrast), anchored (target)".into(),
            }),
        }
    }
    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            FitMode::Auto => "auto",
            FitMode::Data => "data",
            FitMode::Signed => "signed",
            FitMode::Anchored => "anchored",
        }
    }
}

crate::setters::with_setters! {
/// Parameters of the 3.5 solvers; `Default` is 3.5's defaults. Built with the chainable
/// setters:
///
/// ```
/// use nsa_flow::fit::FitParams;
/// let p = FitParams::default().w(0.8).max_grad(500).tol(1e-8).gpu_adapter("nvidia");
/// assert_eq!((p.w, p.max_grad, p.tol), (0.8, 500, Some(1e-8)));
/// assert_eq!(p.gpu_adapter.as_deref(), Some("nvidia"));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FitParams {
    /// Convex weight in `[0, 1]` (default 0.5).
    pub w: f64,
    /// Orthogonality functional; `None` is the mode's default (`D`; `Cg` for signed).
    pub orth: Option<Orth> => Some(Orth),
    /// The minimiser (default L-BFGS-B).
    pub optimizer: FitOptimizer,
    /// Budget in gradient evaluations, per solve stage (default 20 000).
    pub max_grad: usize,
    /// Certificate tolerance; `None` is 3.5's default for the precision: 1e-6 in f64, 1e-4
    /// in f32 (the products' rounding floor).
    pub tol: Option<f64> => Some(f64),
    /// L-BFGS memory (default 10).
    pub memory: usize,
    /// Sufficient-decrease constant (default 1e-4).
    pub sigma: f64,
    /// Column quantile sparseness `q ∈ (0, 1)` followed by a fixed-support re-solve.
    pub sparseness: Option<f64> => Some(f64),
    /// Signed: assign each feature to its largest part and re-solve on that support.
    pub consolidate: bool,
    /// Signed: lobe penalty weight (default 1).
    pub lobe: f64,
    /// Anchored: the fidelity (default auto).
    pub fidelity: Fidelity,
    /// Anchored: negative-mass threshold of the auto fidelity (default 0.01).
    pub neg_mass_tol: f64,
    /// Anchored: enforce `Y ≥ 0` (default true).
    pub nonneg: bool,
    /// Anchored: solve at this many extra weights from [`FitParams::w_start`] up to `w`.
    pub continuation: usize,
    /// Anchored: the first weight of a continuation (default 0).
    pub w_start: f64,
    /// Data/signed: work from `X` without forming `XᵀX` (`None`: when `p > n`).
    pub matrix_free: Option<bool> => Some(bool),
    /// The start.
    pub init: Init,
    /// Data/signed: where the products with `XᵀX` run (default auto). `cpu`; `gpu`, any
    /// adapter, software ones included (an error without one); `auto`, a hardware adapter
    /// computing in `precision` when each product is at least [`GPU_AUTO_WORK`]
    /// multiply-adds, else the CPU. The anchored mode has no such product and runs on the
    /// CPU (`gpu` is an error there).
    pub backend: crate::BackendChoice,
    /// Data/signed: the arithmetic of the device products (default f64; `f32` needs a GPU).
    /// The solver's own bookkeeping is f64 either way.
    pub precision: crate::Precision,
    /// A GPU adapter: a case-insensitive substring of its name (an error with `cpu`).
    pub gpu_adapter: Option<String> => Some(into String),
}
}

/// Multiply-adds per product (`p²k` dense, `2npk` matrix-free) from which `backend = auto`
/// moves a data fit's products to a hardware GPU: below it one round trip (upload `V`,
/// submit, map) costs more than the CPU's product. A conservative guess, not a measurement
/// on hardware (this project's sessions had none to time it on).
pub const GPU_AUTO_WORK: usize = 1 << 22;

impl Default for FitParams {
    fn default() -> Self {
        FitParams {
            w: 0.5,
            orth: None,
            optimizer: FitOptimizer::Lbfgsb,
            max_grad: 20_000,
            tol: None,
            memory: 10,
            sigma: 1e-4,
            sparseness: None,
            consolidate: false,
            lobe: 1.0,
            fidelity: Fidelity::Auto,
            neg_mass_tol: 0.01,
            nonneg: true,
            continuation: 0,
            w_start: 0.0,
            matrix_free: None,
            init: Init::Auto,
            backend: crate::BackendChoice::Auto,
            precision: crate::Precision::F64,
            gpu_adapter: None,
        }
    }
}

impl FitParams {
    /// The certificate tolerance in effect (see [`FitParams::tol`]).
    pub fn effective_tol(&self) -> f64 {
        self.tol.unwrap_or(match self.precision {
            crate::Precision::F64 => 1e-6,
            crate::Precision::F32 => 1e-4,
        })
    }
}

/// A 3.5 result (REFERENCE.md §7.3).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FitResult {
    /// The basis (`p×k`; signed `V = V⁺ − V⁻` in the signed mode).
    pub y: DMatrix<f64>,
    /// Signed mode: the non-negative parts `[V⁺|V⁻]` (`p×2k`).
    pub parts: Option<DMatrix<f64>>,
    /// The weight.
    pub w: f64,
    /// The functional optimised.
    pub orth: Orth,
    /// The mode solved.
    pub mode: FitMode,
    /// The minimiser.
    pub optimizer: FitOptimizer,
    /// Final energy.
    pub energy: f64,
    /// Final fidelity term.
    pub fidelity: f64,
    /// Final value of the optimised functional (`orth`).
    pub defect: f64,
    /// Outer iterations, all stages.
    pub iters: usize,
    /// Why the last stage stopped.
    pub stop_reason: StopReason,
    /// Final certificate.
    pub grad_map: f64,
    /// The tolerance.
    pub tol: f64,
    /// Whether the certificate is `stationary` or `numerical_floor`.
    pub converged: bool,
    /// The claim made.
    pub certificate: Certificate,
    /// Wall time.
    pub seconds: f64,
    /// Energy at the start of the first stage.
    pub energy_start: f64,
    /// Certificate at the start of the first stage.
    pub grad_map_start: f64,
    /// Gradient evaluations, all stages.
    pub n_grad: usize,
    /// Energy-only evaluations, all stages.
    pub n_energy: usize,
    /// Every diagnostic of the returned basis.
    pub report: BasisReport,
    /// Anchored: the fidelity used (`anchor` or `subspace`).
    pub fidelity_mode: Option<Fidelity>,
    /// Anchored: `‖min(0, X0)‖/‖X0‖`.
    pub target_negative_mass: Option<f64>,
    /// Anchored: `‖Y − max(0, X0)‖/‖max(0, X0)‖`.
    pub clamp_distance: Option<f64>,
    /// Anchored: `‖Y‖/‖X0‖`.
    pub scale_ratio: Option<f64>,
    /// Anchored: the weights solved at.
    pub w_schedule: Vec<f64>,
    /// Data/signed: whether `XᵀX` was never formed.
    pub matrix_free: Option<bool>,
    /// Signed: the report of the parts.
    pub parts_report: Option<BasisReport>,
    /// Signed: `Σ V⁺∘V⁻ / k`.
    pub lobe_overlap: Option<f64>,
    /// Signed: whether supports were consolidated.
    pub consolidated: bool,
    /// Signed: per-part support statistics.
    pub part_stats: Option<PartStats>,
    /// The start strategy used.
    pub init: &'static str,
    /// Where the products ran: `cpu-f64`, or `gpu-<precision> (<adapter label>)` with the
    /// adapter and the device round trips.
    pub device: crate::DeviceInfo,
    /// Their arithmetic.
    pub precision: crate::Precision,
}

impl FitResult {
    /// `energy_start − energy`.
    pub fn energy_reduction(&self) -> f64 {
        self.energy_start - self.energy
    }
}

/// A per-iteration observer: `(iteration, energy, certificate, gradient evaluations)`;
/// returning `false` stops the solve.
pub type FitCallback<'a> = &'a mut dyn FnMut(usize, f64, f64, usize) -> bool;

fn check_common(what: &'static str, m: &DMatrix<f64>, p: &FitParams) -> Result<()> {
    crate::validate::finite_nonempty(what, m)?;
    if !(0.0..=1.0).contains(&p.w) {
        return Err(NsaError::InvalidWeight(p.w));
    }
    if let Some(t) = p.tol {
        if !(t.is_finite() && t >= 0.0) {
            return Err(invalid(
                "tol",
                format!("{t} is not a finite non-negative number"),
            ));
        }
    }
    if p.backend == crate::BackendChoice::Cpu && p.gpu_adapter.is_some() {
        return Err(invalid(
            "gpu_adapter",
            "an adapter was named but backend = cpu".into(),
        ));
    }
    if p.max_grad == 0 {
        return Err(invalid("max_grad", "must be at least 1".into()));
    }
    if p.memory == 0 || p.memory > 100 {
        return Err(invalid(
            "memory",
            format!("{} is outside 1..=100", p.memory),
        ));
    }
    if !(p.sigma > 0.0 && p.sigma < 1.0) {
        return Err(invalid("sigma", format!("{} is outside (0, 1)", p.sigma)));
    }
    if let Some(q) = p.sparseness {
        if !(q > 0.0 && q < 1.0) {
            return Err(invalid("sparseness", format!("{q} is outside (0, 1)")));
        }
    }
    if !(p.lobe.is_finite() && p.lobe >= 0.0) {
        return Err(invalid(
            "lobe",
            format!("{} is not a finite non-negative number", p.lobe),
        ));
    }
    Ok(())
}

fn invalid(name: &'static str, reason: String) -> NsaError {
    NsaError::InvalidParameter { name, reason }
}

fn init_not_for(init: &Init, mode: &str, allowed: &str) -> NsaError {
    invalid(
        "init",
        format!(
            "'{}' is not a {mode} start; use one of: {allowed}",
            init.name()
        ),
    )
}

fn fro(m: &DMatrix<f64>) -> f64 {
    sum_sq(m.as_slice()).sqrt()
}

fn clamp0(m: &DMatrix<f64>) -> DMatrix<f64> {
    m.map(|v| v.max(0.0))
}

fn solve_stage<O: Objective>(
    obj: &mut O,
    y0: &DMatrix<f64>,
    set: &Feasible,
    p: &FitParams,
    callback: &mut Option<FitCallback<'_>>,
) -> Result<Solved> {
    let e0 = obj.value(y0);
    if !e0.is_finite() {
        return Err(NsaError::NonFiniteComputation {
            what: "energy at the start",
            cause: crate::NumericCause::Unknown,
        });
    }
    let prm = SolverParams {
        max_grad: p.max_grad,
        tol: p.effective_tol(),
        memory: p.memory,
        sigma: p.sigma,
    };
    let cb = callback
        .as_mut()
        .map(|c| &mut **c as &mut dyn FnMut(usize, f64, f64, usize) -> bool);
    Ok(match p.optimizer {
        FitOptimizer::Lbfgsb => solver::lbfgsb(obj, y0, set, &prm, cb),
        FitOptimizer::Spg => solver::spg(obj, y0, set, &prm, cb),
    })
}

/// Totals over the stages of one fit.
struct Stages {
    iters: usize,
    n_grad: usize,
    n_energy: usize,
    stop: StopReason,
    grad_map: f64,
    energy_start: f64,
    grad_map_start: f64,
    started: bool,
}

impl Stages {
    fn new() -> Self {
        Stages {
            iters: 0,
            n_grad: 0,
            n_energy: 0,
            stop: StopReason::MaxIter,
            grad_map: f64::INFINITY,
            energy_start: f64::NAN,
            grad_map_start: f64::NAN,
            started: false,
        }
    }
    fn add(&mut self, s: &Solved) {
        self.iters += s.iters;
        self.n_grad += s.n_grad;
        self.n_energy += s.n_energy;
        self.stop = s.stop;
        self.grad_map = s.grad_map;
        if !self.started {
            self.energy_start = s.energy_start;
            self.grad_map_start = s.grad_map_start;
            self.started = true;
        }
    }
}

fn mask_of(m: &DMatrix<f64>) -> Vec<bool> {
    m.iter().map(|&v| v != 0.0).collect()
}

fn apply_mask(y: &mut DMatrix<f64>, mask: &[bool]) {
    for (v, &keep) in y.iter_mut().zip(mask) {
        if !keep {
            *v = 0.0;
        }
    }
}

// ---------------------------------------------------------------- anchored

enum AnchorFid {
    Entrywise { x0: DMatrix<f64>, denom: f64 },
    Subspace(SubspaceAnchor),
}

struct AnchoredObjective {
    fid: AnchorFid,
    w: f64,
    orth: Orth,
}

impl AnchoredObjective {
    fn eval(&self, y: &DMatrix<f64>, g: Option<&mut DMatrix<f64>>) -> (f64, f64, f64) {
        let k = y.ncols();
        let w = self.w;
        let want = g.is_some();
        let (f, gf) = match &self.fid {
            AnchorFid::Entrywise { x0, denom } => {
                let r = y - x0;
                let f = sum_sq(r.as_slice()) / denom;
                (f, want.then(|| r * (2.0 / denom)))
            }
            AnchorFid::Subspace(a) => a.fidelity(y, want),
        };
        let Some(g) = g else {
            let d = if k > 1 { self.orth.value(y) } else { 0.0 };
            return ((1.0 - w) * f + w * d, f, d);
        };
        let gf = gf.expect("asked for");
        g.copy_from(&gf);
        *g *= 1.0 - w;
        let d = if k > 1 {
            if w != 0.0 {
                self.orth.value_and_add_grad(y, w, g)
            } else {
                self.orth.value(y)
            }
        } else {
            0.0
        };
        ((1.0 - w) * f + w * d, f, d)
    }
}

impl Objective for AnchoredObjective {
    fn value(&mut self, y: &DMatrix<f64>) -> f64 {
        self.eval(y, None).0
    }
    fn value_grad(&mut self, y: &DMatrix<f64>, g: &mut DMatrix<f64>) -> f64 {
        self.eval(y, Some(g)).0
    }
}

/// Anchored mode: a non-negative, near-orthogonal `Y` close to `target` (`p×k`), 3.5's
/// `nsa_flow(target, w=…)` without `k`.
pub fn fit_anchored(target: &DMatrix<f64>, p: &FitParams) -> Result<FitResult> {
    fit_anchored_with_callback(target, p, None)
}

/// [`fit_anchored`] with a per-iteration observer.
pub fn fit_anchored_with_callback(
    target: &DMatrix<f64>,
    p: &FitParams,
    mut callback: Option<FitCallback<'_>>,
) -> Result<FitResult> {
    let t0 = Instant::now();
    check_common("target", target, p)?;
    // every product of the anchored energy is p×k by k×k: nothing a device speeds up
    if p.backend == crate::BackendChoice::Gpu || p.gpu_adapter.is_some() {
        return Err(invalid(
            "backend",
            "the anchored mode runs on the CPU (its products are O(pk²)); give backend cpu \
             or auto"
                .into(),
        ));
    }
    if p.precision == crate::Precision::F32 {
        return Err(invalid(
            "precision",
            "the anchored mode computes in f64 on the CPU".into(),
        ));
    }
    if !(0.0..=1.0).contains(&p.w_start) {
        return Err(NsaError::InvalidWeight(p.w_start));
    }
    if !(p.neg_mass_tol.is_finite() && p.neg_mass_tol >= 0.0) {
        return Err(invalid(
            "neg_mass_tol",
            format!("{} is not a finite non-negative number", p.neg_mass_tol),
        ));
    }
    let (rows, k) = target.shape();
    crate::memory::ensure_fits(
        "the anchored fit",
        crate::memory::bytes_of("the anchored fit", &[rows, k, 12], 8)?,
    )?;
    let x0 = target.clone();
    let denom = sum_sq(x0.as_slice());
    if denom.is_nan() || denom <= 0.0 {
        return Err(NsaError::ZeroMatrix {
            what: "target",
            why: "the fidelity ‖Y − X0‖²/‖X0‖² is undefined",
        });
    }
    let neg_mass = functionals::negative_mass(&x0);
    let fidelity = match p.fidelity {
        Fidelity::Auto => {
            if p.nonneg && neg_mass > p.neg_mass_tol && p.w > 0.0 {
                Fidelity::Subspace
            } else {
                Fidelity::Anchor
            }
        }
        f => f,
    };
    let orth = p.orth.unwrap_or(Orth::D);
    let varimax_start = |x0: &DMatrix<f64>| {
        let v = eig::varimax(x0);
        if p.nonneg {
            clamp0(&v)
        } else {
            v
        }
    };
    let mut y = match &p.init {
        Init::Auto => {
            if fidelity == Fidelity::Subspace && p.w > 0.0 && k > 1 {
                varimax_start(&x0)
            } else {
                x0.clone()
            }
        }
        Init::Varimax => varimax_start(&x0),
        Init::Matrix(m) => {
            crate::validate::finite_nonempty("init", m)?;
            crate::validate::same_shape("init", m, (rows, k))?;
            m.clone()
        }
        other => {
            return Err(init_not_for(
                other,
                "anchored",
                "auto, varimax, or a matrix",
            ))
        }
    };
    let fid = match fidelity {
        Fidelity::Subspace => {
            AnchorFid::Subspace(SubspaceAnchor::new(&x0).ok_or(NsaError::ZeroMatrix {
                what: "target",
                why: "it spans no subspace, so the subspace fidelity is undefined",
            })?)
        }
        _ => AnchorFid::Entrywise {
            x0: x0.clone(),
            denom,
        },
    };
    let ws: Vec<f64> = if p.continuation == 0 {
        vec![p.w]
    } else {
        let n = p.continuation;
        (0..=n)
            .map(|i| p.w_start + (p.w - p.w_start) * i as f64 / n as f64)
            .collect()
    };
    let set = Feasible {
        nonneg: p.nonneg,
        mask: None,
    };
    let mut obj = AnchoredObjective { fid, w: p.w, orth };
    let mut st = Stages::new();
    for &wi in &ws {
        obj.w = wi;
        let s = solve_stage(&mut obj, &y, &set, p, &mut callback)?;
        st.add(&s);
        y = s.y;
    }
    obj.w = p.w;
    if let Some(q) = p.sparseness {
        let ys = simlr_sparseness(&y, q, p.nonneg, true);
        if ys != y {
            let mask = mask_of(&ys);
            let set_m = Feasible {
                nonneg: p.nonneg,
                mask: Some(mask.clone()),
            };
            let s = solve_stage(&mut obj, &ys, &set_m, p, &mut callback)?;
            st.add(&s);
            y = s.y;
            apply_mask(&mut y, &mask);
        }
    }
    if fidelity == Fidelity::Subspace {
        let ny = fro(&y);
        if ny > 0.0 {
            y *= fro(&x0) / ny;
        }
    }
    let (energy, fid_v, defect) = obj.eval(&y, None);
    let clamp_ref = clamp0(&x0);
    let clamp_distance = fro(&(&y - &clamp_ref)) / fro(&clamp_ref).max(1e-300);
    let scale_ratio = fro(&y) / fro(&x0);
    finish(
        y,
        None,
        p,
        orth,
        FitMode::Anchored,
        (energy, fid_v, defect),
        st,
        t0,
        |r| {
            r.fidelity_mode = Some(fidelity);
            r.target_negative_mass = Some(neg_mass);
            r.clamp_distance = Some(clamp_distance);
            r.scale_ratio = Some(scale_ratio);
            r.w_schedule = ws.clone();
        },
        p.init.name(),
    )
}

#[allow(clippy::too_many_arguments)]
fn finish(
    y: DMatrix<f64>,
    parts: Option<DMatrix<f64>>,
    p: &FitParams,
    orth: Orth,
    mode: FitMode,
    (energy, fidelity, defect): (f64, f64, f64),
    st: Stages,
    t0: Instant,
    extra: impl FnOnce(&mut FitResult),
    init: &'static str,
) -> Result<FitResult> {
    if !(y.iter().all(|v| v.is_finite()) && energy.is_finite()) {
        return Err(NsaError::NonFiniteComputation {
            what: "fitted basis",
            cause: crate::NumericCause::Unknown,
        });
    }
    let certificate = Certificate::of(st.stop, st.grad_map, p.effective_tol());
    let report = basis_report(&y);
    let mut r = FitResult {
        y,
        parts,
        w: p.w,
        orth,
        mode,
        optimizer: p.optimizer,
        energy,
        fidelity,
        defect,
        iters: st.iters,
        stop_reason: st.stop,
        grad_map: st.grad_map,
        tol: p.effective_tol(),
        converged: certificate != Certificate::None,
        certificate,
        seconds: 0.0,
        energy_start: st.energy_start,
        grad_map_start: st.grad_map_start,
        n_grad: st.n_grad,
        n_energy: st.n_energy,
        report,
        fidelity_mode: None,
        target_negative_mass: None,
        clamp_distance: None,
        scale_ratio: None,
        w_schedule: vec![p.w],
        matrix_free: None,
        parts_report: None,
        lobe_overlap: None,
        consolidated: false,
        part_stats: None,
        init,
        device: crate::DeviceInfo {
            name: "cpu-f64".into(),
            adapter: None,
            readbacks: None,
        },
        precision: crate::Precision::F64,
    };
    extra(&mut r);
    r.seconds = t0.elapsed().as_secs_f64();
    Ok(r)
}

// ---------------------------------------------------------------- data

/// The reconstruction operator of a data matrix, sized, checked and placed on the device
/// `p.backend` picks, with `c = tr_s = ‖X‖²`.
fn gram_operator(x: &DMatrix<f64>, k: usize, p: &FitParams) -> Result<(GramOperator, f64, f64)> {
    let (n, np) = x.shape();
    let mf = p.matrix_free.unwrap_or(np > n);
    let (host, tr_s) = if mf {
        crate::memory::ensure_fits(
            "the data fit",
            crate::memory::bytes_of("the data fit", &[n, np, 2], 8)?,
        )?;
        (GramOperator::MatrixFree(x.clone()), sum_sq(x.as_slice()))
    } else {
        crate::memory::ensure_fits("XᵀX", crate::memory::bytes_of("XᵀX", &[np, np], 8)?)?;
        let s = crate::linalg::gram(x, x);
        let tr: f64 = (0..np).map(|i| s[(i, i)]).sum();
        (GramOperator::Dense(s), tr)
    };
    let c = tr_s;
    if c.is_nan() || c <= 0.0 {
        return Err(NsaError::ZeroMatrix {
            what: "X",
            why: "the reconstruction fidelity ‖X − XVVᵀ‖²/‖X‖² is undefined",
        });
    }
    let work = if mf {
        n.saturating_mul(np).saturating_mul(2 * k)
    } else {
        np.saturating_mul(np).saturating_mul(k)
    };
    Ok((place(host, k, work, p)?, c, tr_s))
}

/// `host` on the device `p.backend` and `p.precision` ask for (see [`FitParams::backend`]).
#[cfg(feature = "gpu")]
fn place(host: GramOperator, k: usize, work: usize, p: &FitParams) -> Result<GramOperator> {
    use crate::backend::select::DeviceOptions;
    use crate::Precision;
    let f32_on_cpu = || {
        invalid(
            "precision",
            "f32 fits compute their products on a GPU; give backend = gpu (or auto with a \
             hardware adapter), or precision f64 on the CPU"
                .into(),
        )
    };
    let device = DeviceOptions {
        backend: p.backend,
        precision: p.precision,
        adapter: p.gpu_adapter.clone(),
    };
    let worth_it = p.precision == Precision::F32 || work >= GPU_AUTO_WORK;
    let Some(ctx) = device.gpu_context(worth_it)? else {
        if p.precision == Precision::F32 {
            return Err(f32_on_cpu());
        }
        return Ok(host);
    };
    let g = gpu::GpuGramOperator::new(ctx, host, k, p.precision)?;
    Ok(GramOperator::Gpu(std::sync::Arc::new(g)))
}

/// Without the `gpu` feature the products stay on the CPU: `gpu`, a named adapter and f32
/// are errors.
#[cfg(not(feature = "gpu"))]
fn place(host: GramOperator, _k: usize, _work: usize, p: &FitParams) -> Result<GramOperator> {
    crate::backend::select::DeviceOptions {
        backend: p.backend,
        precision: p.precision,
        adapter: p.gpu_adapter.clone(),
    }
    .no_gpu()?;
    if p.precision == crate::Precision::F32 {
        return Err(invalid(
            "precision",
            "f32 fits compute their products on a GPU, and this build has none".into(),
        ));
    }
    Ok(host)
}

/// The fit's error, a device error first: a failed device product answers NaN, and what the
/// solver makes of that is only its consequence.
fn device_first(ops: &GramOperator, r: Result<FitResult>) -> Result<FitResult> {
    if let Some(e) = ops.take_error() {
        return Err(e);
    }
    #[cfg_attr(not(feature = "gpu"), allow(unused_mut))]
    let mut r = r?;
    #[cfg(feature = "gpu")]
    if let GramOperator::Gpu(g) = ops {
        r.precision = g.precision();
        r.device = g.device();
    }
    Ok(r)
}

fn leading(ops: &GramOperator, k: usize) -> Result<DMatrix<f64>> {
    let e = match ops.host() {
        GramOperator::Dense(s) => eig::top_k_eigenvectors_of_gram(s, k),
        GramOperator::MatrixFree(x) => eig::top_k_eigenvectors_of_data(x, k),
        #[cfg(feature = "gpu")]
        GramOperator::Gpu(g) => return leading(g.host(), k),
    };
    e.ok_or(NsaError::NonFiniteComputation {
        what: "top-k eigenvectors of XᵀX",
        cause: crate::NumericCause::Unknown,
    })
}

struct DataObjective<'a> {
    ops: &'a GramOperator,
    c: f64,
    tr_s: f64,
    w: f64,
    orth: Orth,
}

impl DataObjective<'_> {
    fn parts(&self, v: &DMatrix<f64>) -> (f64, f64, f64) {
        let (f, _) = reconstruction_fidelity(v, self.ops, self.c, self.tr_s, false);
        let d = if v.ncols() > 1 {
            self.orth.value(v)
        } else {
            0.0
        };
        ((1.0 - self.w) * f + self.w * d, f, d)
    }
}

impl Objective for DataObjective<'_> {
    fn value(&mut self, v: &DMatrix<f64>) -> f64 {
        self.parts(v).0
    }
    fn value_grad(&mut self, v: &DMatrix<f64>, g: &mut DMatrix<f64>) -> f64 {
        let w = self.w;
        let (f, gf) = reconstruction_fidelity(v, self.ops, self.c, self.tr_s, true);
        g.copy_from(&gf.expect("asked for"));
        *g *= 1.0 - w;
        if v.ncols() > 1 {
            let d = if w != 0.0 {
                self.orth.value_and_add_grad(v, w, g)
            } else {
                self.orth.value(v)
            };
            (1.0 - w) * f + w * d
        } else {
            (1.0 - w) * f
        }
    }
}

fn check_k(x: &DMatrix<f64>, k: usize, eigen_init: bool) -> Result<()> {
    let (n, p) = x.shape();
    if k == 0 {
        return Err(invalid("k", "must be at least 1".into()));
    }
    if k > p {
        return Err(NsaError::KGreaterThanP {
            p,
            k,
            why: "a basis of k columns in p features needs k ≤ p",
        });
    }
    if eigen_init && k > n {
        return Err(invalid(
            "k",
            format!(
                "{k} exceeds the n = {n} samples, so X has fewer than k eigenvectors to start from"
            ),
        ));
    }
    Ok(())
}

fn random_start(p: usize, k: usize, seed: u64) -> DMatrix<f64> {
    let mut rng = crate::rng::Rng::new(seed);
    DMatrix::from_fn(p, k, |_, _| rng.uniform())
}

/// Data mode: a non-negative, near-orthonormal basis `V` (`p×k`) reconstructing `X` (`n×p`),
/// 3.5's `nsa_flow_data`.
pub fn fit_data(x: &DMatrix<f64>, k: usize, p: &FitParams) -> Result<FitResult> {
    fit_data_with_callback(x, k, p, None)
}

/// [`fit_data`] with a per-iteration observer.
pub fn fit_data_with_callback(
    x: &DMatrix<f64>,
    k: usize,
    p: &FitParams,
    callback: Option<FitCallback<'_>>,
) -> Result<FitResult> {
    let t0 = Instant::now();
    check_common("X", x, p)?;
    let np = x.ncols();
    let eigen = !matches!(p.init, Init::Random(_) | Init::Matrix(_));
    check_k(x, k, eigen)?;
    let (ops, c, tr_s) = gram_operator(x, k, p)?;
    let r = fit_data_on(&ops, (c, tr_s), np, k, p, callback, t0);
    device_first(&ops, r)
}

fn fit_data_on(
    ops: &GramOperator,
    (c, tr_s): (f64, f64),
    np: usize,
    k: usize,
    p: &FitParams,
    mut callback: Option<FitCallback<'_>>,
    t0: Instant,
) -> Result<FitResult> {
    let orth = p.orth.unwrap_or(Orth::D);
    let v0 = match &p.init {
        Init::Auto | Init::Clamp | Init::Varimax => clamp0(&eig::varimax(&leading(ops, k)?)),
        Init::PcaClamp => {
            let mut e = leading(ops, k)?;
            eig::resolve_column_sign_gauge(&mut e);
            clamp0(&e)
        }
        Init::Relax => relax_into_nonneg(ops, c, tr_s, k, p.w, false)?,
        Init::Random(seed) => random_start(np, k, *seed),
        Init::Matrix(m) => {
            crate::validate::finite_nonempty("init", m)?;
            crate::validate::same_shape("init", m, (np, k))?;
            m.clone()
        }
        other => {
            return Err(init_not_for(
                other,
                "data",
                "auto, clamp, varimax, pca_clamp, relax, random, or a matrix",
            ))
        }
    };
    let mut obj = DataObjective {
        ops,
        c,
        tr_s,
        w: p.w,
        orth,
    };
    let set = Feasible {
        nonneg: true,
        mask: None,
    };
    let mut st = Stages::new();
    let s = solve_stage(&mut obj, &v0, &set, p, &mut callback)?;
    st.add(&s);
    let mut v = s.y;
    if let Some(q) = p.sparseness {
        let vs = simlr_sparseness(&v, q, true, true);
        if vs != v {
            let mask = mask_of(&vs);
            let set_m = Feasible {
                nonneg: true,
                mask: Some(mask.clone()),
            };
            let s = solve_stage(&mut obj, &vs, &set_m, p, &mut callback)?;
            st.add(&s);
            v = s.y;
            apply_mask(&mut v, &mask);
        }
    }
    // the reported energy is the host's f64 value of the returned basis, whatever arithmetic
    // the products ran in (f32 products cancel in 1 − 2tr(VᵀSV)/c + …)
    obj.ops = ops.host();
    let parts = obj.parts(&v);
    let mf = ops.matrix_free();
    finish(
        v,
        None,
        p,
        orth,
        FitMode::Data,
        parts,
        st,
        t0,
        |r| r.matrix_free = Some(mf),
        p.init.name(),
    )
}

/// Barzilai–Borwein descent with Armijo backtracking on a smooth unconstrained objective
/// (3.5's `_smooth_descent`, the inner solver of the relaxation path).
fn smooth_descent(
    mut v: DMatrix<f64>,
    obj: &dyn Fn(&DMatrix<f64>) -> f64,
    grad: &dyn Fn(&DMatrix<f64>) -> DMatrix<f64>,
    max_iter: usize,
    tol: f64,
    sigma: f64,
) -> DMatrix<f64> {
    let mut e = obj(&v);
    let mut g = grad(&v);
    let mut t = 1.0 / fro(&g).max(1e-12);
    let mut prev: Option<(DMatrix<f64>, DMatrix<f64>)> = None;
    for _ in 0..max_iter {
        if let Some((vp, gp)) = &prev {
            let s = &v - vp;
            let r = &g - gp;
            let sr = s.dot(&r);
            t = if sr > 0.0 { s.dot(&s) / sr } else { 1e12 };
            t = t.clamp(1e-12, 1e12);
        }
        let mut ok = false;
        let mut v_new = v.clone();
        let mut d2 = 0.0;
        for _ in 0..60 {
            v_new = &v - &g * t;
            d2 = sum_sq((&v_new - &v).as_slice());
            if obj(&v_new) <= e - sigma * d2 / t {
                ok = true;
                break;
            }
            t *= 0.5;
        }
        if !ok {
            break;
        }
        if d2.sqrt() / t <= tol {
            v = v_new;
            break;
        }
        prev = Some((v, g));
        v = v_new;
        e = obj(&v);
        g = grad(&v);
    }
    v
}

/// 3.5's `relax_into_nonneg`: follow `E_w(V) + μ‖min(0, V)‖²` from the varimax-rotated
/// signed PCA basis (`μ = 0`) through `μ ∈ {1e-3, …, 1e4}` (`fast`: `{0, 10}` with 25
/// iterations at tol 1e-4), warm-starting each stage. Returns the (still signed) end point.
fn relax_into_nonneg(
    ops: &GramOperator,
    c: f64,
    tr_s: f64,
    k: usize,
    w: f64,
    fast: bool,
) -> Result<DMatrix<f64>> {
    let mus: Vec<f64> = if fast {
        vec![0.0, 10.0]
    } else {
        std::iter::once(0.0)
            .chain((-3..5).map(|e| 10f64.powi(e)))
            .collect()
    };
    let (max_iter, tol) = if fast { (25, 1e-4) } else { (600, 1e-10) };
    let mut v = eig::varimax(&leading(ops, k)?);
    for mu in mus {
        let obj = |vv: &DMatrix<f64>| {
            let (f, _) = reconstruction_fidelity(vv, ops, c, tr_s, false);
            let mut e = (1.0 - w) * f;
            if k > 1 && w != 0.0 {
                e += w * functionals::stiefel_defect_normalised(vv);
            }
            if mu != 0.0 {
                e += mu
                    * vv.iter()
                        .map(|&x| if x < 0.0 { x * x } else { 0.0 })
                        .sum::<f64>();
            }
            e
        };
        let grad = |vv: &DMatrix<f64>| {
            let (_, gf) = reconstruction_fidelity(vv, ops, c, tr_s, true);
            let mut g = gf.expect("asked for") * (1.0 - w);
            if k > 1 && w != 0.0 {
                if let (_, Some(gd)) = stiefel_defect_normalised_grad(vv) {
                    axpy_mat(&mut g, w, &gd);
                }
            }
            if mu != 0.0 {
                g += vv.map(|x| 2.0 * mu * x.min(0.0));
            }
            g
        };
        v = smooth_descent(v, &obj, &grad, max_iter, tol, 1e-4);
    }
    if !v.iter().all(|x| x.is_finite()) {
        return Err(NsaError::NonFiniteComputation {
            what: "relaxation start",
            cause: crate::NumericCause::Unknown,
        });
    }
    Ok(v)
}

// ---------------------------------------------------------------- signed

struct SignedObjective<'a> {
    ops: &'a GramOperator,
    c: f64,
    w: f64,
    orth: Orth,
    lobe: f64,
    k: usize,
}

fn split(wm: &DMatrix<f64>) -> (DMatrix<f64>, DMatrix<f64>) {
    let k = wm.ncols() / 2;
    (wm.columns(0, k).into_owned(), wm.columns(k, k).into_owned())
}

impl SignedObjective<'_> {
    fn parts(&self, wm: &DMatrix<f64>) -> (f64, f64, f64) {
        let (vp, vm) = split(wm);
        let (f, _) = reconstruction_fidelity(&(&vp - &vm), self.ops, self.c, self.c, false);
        let d = self.orth.value(wm);
        let mut e = (1.0 - self.w) * f + self.w * d;
        if self.lobe != 0.0 && self.w > 0.0 {
            e += (self.w * self.lobe / self.k as f64) * vp.dot(&vm);
        }
        (e, f, d)
    }
}

impl Objective for SignedObjective<'_> {
    fn value(&mut self, wm: &DMatrix<f64>) -> f64 {
        self.parts(wm).0
    }
    fn value_grad(&mut self, wm: &DMatrix<f64>, g: &mut DMatrix<f64>) -> f64 {
        let (w, k) = (self.w, self.k);
        let (vp, vm) = split(wm);
        let (f, gv) = reconstruction_fidelity(&(&vp - &vm), self.ops, self.c, self.c, true);
        let gv = gv.expect("asked for") * (1.0 - w);
        g.columns_mut(0, k).copy_from(&gv);
        g.columns_mut(k, k).copy_from(&(-&gv));
        let d = if w != 0.0 {
            self.orth.value_and_add_grad(wm, w, g)
        } else {
            self.orth.value(wm)
        };
        let mut e = (1.0 - w) * f + w * d;
        if self.lobe != 0.0 && w > 0.0 {
            let s = w * self.lobe / k as f64;
            e += s * vp.dot(&vm);
            let pk = vp.len();
            let gs = g.as_mut_slice();
            for (i, (&m, &pl)) in vm.as_slice().iter().zip(vp.as_slice()).enumerate() {
                gs[i] += s * m;
                gs[pk + i] += s * pl;
            }
        }
        e
    }
}

/// 3.5's `consolidate_supports`: each feature kept only in the part holding its largest
/// magnitude (the first on ties).
pub fn consolidate_supports(wm: &DMatrix<f64>) -> DMatrix<f64> {
    let (p, m) = wm.shape();
    let mut out = DMatrix::zeros(p, m);
    for i in 0..p {
        let mut best = 0;
        let mut bv = f64::NEG_INFINITY;
        for j in 0..m {
            let a = wm[(i, j)].abs();
            if a > bv {
                bv = a;
                best = j;
            }
        }
        if m > 0 && bv > 0.0 {
            out[(i, best)] = wm[(i, best)];
        }
    }
    out
}

fn lift(e: &DMatrix<f64>) -> DMatrix<f64> {
    let (p, k) = e.shape();
    DMatrix::from_fn(p, 2 * k, |i, j| {
        if j < k {
            e[(i, j)].max(0.0)
        } else {
            (-e[(i, j - k)]).max(0.0)
        }
    })
}

/// Signed mode: `V = V⁺ − V⁻` with near-disjoint non-negative parts, reconstructing `X`
/// (`n×p`), 3.5's `nsa_flow_signed`.
pub fn fit_signed(x: &DMatrix<f64>, k: usize, p: &FitParams) -> Result<FitResult> {
    fit_signed_with_callback(x, k, p, None)
}

/// [`fit_signed`] with a per-iteration observer.
pub fn fit_signed_with_callback(
    x: &DMatrix<f64>,
    k: usize,
    p: &FitParams,
    callback: Option<FitCallback<'_>>,
) -> Result<FitResult> {
    let t0 = Instant::now();
    check_common("X", x, p)?;
    check_k(x, k, !matches!(p.init, Init::Matrix(_)))?;
    let (ops, c, _) = gram_operator(x, k, p)?;
    let r = fit_signed_on(&ops, c, x, k, p, callback, t0);
    device_first(&ops, r)
}

fn fit_signed_on(
    ops: &GramOperator,
    c: f64,
    x: &DMatrix<f64>,
    k: usize,
    p: &FitParams,
    mut callback: Option<FitCallback<'_>>,
    t0: Instant,
) -> Result<FitResult> {
    let (n, np) = x.shape();
    let orth = p.orth.unwrap_or(Orth::Cg);
    let min_val = x.min();
    let col_mean_max = (0..np)
        .map(|j| (x.column(j).sum() / n as f64).abs())
        .fold(0.0, f64::max);
    let centred_or_signed = min_val < -1e-5 || col_mean_max < 1e-4;
    let strategy = match &p.init {
        Init::Auto => {
            if centred_or_signed {
                Init::Split
            } else {
                Init::Adaptive
            }
        }
        other => other.clone(),
    };
    let w0 = match &strategy {
        Init::Split | Init::Varimax => lift(&eig::varimax(&leading(ops, k)?)),
        Init::PcaSplit => lift(&leading(ops, k)?),
        Init::Adaptive => lift(&relax_into_nonneg(ops, c, c, k, p.w, true)?),
        Init::Relax => lift(&relax_into_nonneg(ops, c, c, k, p.w, false)?),
        Init::Matrix(m) => {
            crate::validate::finite_nonempty("init", m)?;
            crate::validate::same_shape("init (the parts [V⁺|V⁻])", m, (np, 2 * k))?;
            m.clone()
        }
        other => {
            return Err(init_not_for(
                other,
                "signed",
                "auto, split, varimax, pca_split, adaptive, relax, or a p×2k matrix",
            ))
        }
    };
    let mut obj = SignedObjective {
        ops,
        c,
        w: p.w,
        orth,
        lobe: p.lobe,
        k,
    };
    let set = Feasible {
        nonneg: true,
        mask: None,
    };
    let mut st = Stages::new();
    let s = solve_stage(&mut obj, &w0, &set, p, &mut callback)?;
    st.add(&s);
    let mut wm = s.y;
    if p.consolidate {
        let wc = consolidate_supports(&wm);
        let mask = mask_of(&wc);
        let set_m = Feasible {
            nonneg: true,
            mask: Some(mask),
        };
        let s = solve_stage(&mut obj, &wc, &set_m, p, &mut callback)?;
        st.add(&s);
        wm = s.y;
    }
    if let Some(q) = p.sparseness {
        let (vp, vm) = split(&wm);
        let v = &vp - &vm;
        let vs = simlr_sparseness(&v, q, false, true);
        if vs != v {
            let wsp = lift(&vs);
            let mask = mask_of(&wsp);
            let set_m = Feasible {
                nonneg: true,
                mask: Some(mask.clone()),
            };
            let s = solve_stage(&mut obj, &wsp, &set_m, p, &mut callback)?;
            st.add(&s);
            wm = s.y;
            apply_mask(&mut wm, &mask);
        }
    }
    obj.ops = ops.host();
    let parts_e = obj.parts(&wm);
    let (vp, vm) = split(&wm);
    let v = &vp - &vm;
    let lobe_overlap = vp.dot(&vm) / k as f64;
    let parts_report = basis_report(&wm);
    let stats = report::part_sparsity(&wm);
    let mf = ops.matrix_free();
    let init_name = match &p.init {
        Init::Auto => strategy.name(),
        other => other.name(),
    };
    finish(
        v,
        Some(wm),
        p,
        orth,
        FitMode::Signed,
        parts_e,
        st,
        t0,
        |r| {
            r.matrix_free = Some(mf);
            r.parts_report = Some(parts_report);
            r.lobe_overlap = Some(lobe_overlap);
            r.consolidated = p.consolidate;
            r.part_stats = Some(stats);
        },
        init_name,
    )
}

/// 3.5's entry point `nsa_flow(data_or_target, k, w, mode=…)`: `k = None` means a target
/// (`anchored`); otherwise data (`n×p`), signed when it has an entry below −1e-12 under
/// [`FitMode::Auto`].
pub fn fit(
    input: &DMatrix<f64>,
    k: Option<usize>,
    mode: FitMode,
    p: &FitParams,
) -> Result<FitResult> {
    let mode = match mode {
        FitMode::Auto => match k {
            None => FitMode::Anchored,
            Some(_) => {
                crate::validate::finite_nonempty("input", input)?;
                if input.min() < -1e-12 {
                    FitMode::Signed
                } else {
                    FitMode::Data
                }
            }
        },
        m => m,
    };
    if p.fidelity != Fidelity::Auto && mode != FitMode::Anchored {
        return Err(invalid("fidelity", format!("'{}' applies to the anchored mode only; mode '{}' uses the data reconstruction term", p.fidelity.name(), mode.name())));
    }
    let need_k = |k: Option<usize>| {
        k.ok_or_else(|| {
            invalid(
                "k",
                format!("mode '{}' needs the number of components k", mode.name()),
            )
        })
    };
    match mode {
        FitMode::Anchored => {
            if let Some(k) = k {
                if k != input.ncols() {
                    return Err(invalid(
                        "k",
                        format!(
                            "the anchored mode takes k from the target's {} columns; got k = {k}",
                            input.ncols()
                        ),
                    ));
                }
            }
            fit_anchored(input, p)
        }
        FitMode::Data => fit_data(input, need_k(k)?, p),
        FitMode::Signed => fit_signed(input, need_k(k)?, p),
        FitMode::Auto => unreachable!("resolved above"),
    }
}

macro_rules! from_str_via_parse {
    ($t:ty) => {
        impl std::str::FromStr for $t {
            type Err = NsaError;
            fn from_str(s: &str) -> Result<$t> {
                <$t>::parse(s)
            }
        }
    };
}
from_str_via_parse!(FitMode);
from_str_via_parse!(FitOptimizer);
from_str_via_parse!(Init);

impl Fidelity {
    /// Parses `auto`, `anchor` or `subspace`.
    pub fn parse(name: &str) -> Result<Fidelity> {
        match name {
            "auto" => Ok(Fidelity::Auto),
            "anchor" => Ok(Fidelity::Anchor),
            "subspace" => Ok(Fidelity::Subspace),
            other => Err(NsaError::UnknownName {
                kind: "fidelity",
                name: other.into(),
                expected: "auto, anchor, subspace".into(),
            }),
        }
    }
}
from_str_via_parse!(Fidelity);

impl std::str::FromStr for Orth {
    type Err = NsaError;
    fn from_str(s: &str) -> Result<Orth> {
        Orth::parse(s).ok_or_else(|| NsaError::UnknownName {
            kind: "orthogonality functional",
            name: s.into(),
            expected: "D, Cg, C, Coff".into(),
        })
    }
}
