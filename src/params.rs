//! Solver parameters: every argument of the reference `nsa_flow`, as typed values.

use crate::error::{NsaError, Result};
use crate::setters::with_setters;
use nalgebra::DMatrix;
use std::fmt;
use std::str::FromStr;

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident, $kind:literal, { $($(#[$vm:meta])* $var:ident => [$($s:literal),+]),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
        pub enum $name { $($(#[$vm])* $var),+ }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            /// The canonical name (as accepted on the command line).
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$var => named_enum!(@first $($s),+)),+ }
            }
        }

        impl FromStr for $name {
            type Err = NsaError;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($($s)|+ => Ok($name::$var),)+
                    _ => Err(NsaError::UnknownName {
                        kind: $kind,
                        name: s.to_string(),
                        expected: $name::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
    (@first $a:literal $(, $rest:literal)*) => { $a };
}

named_enum!(
    /// The retraction applied after each step.
    Retraction, "retraction", {
        /// `Y·((1−w)I + w(YᵀY)^{-1/2})`: a blend of `Y` and its polar factor.
        #[default]
        SoftPolar => ["soft_polar"],
        /// The polar factor `U·Vᵀ` (scaled to `‖Y‖_F`); `w` only switches it off at 0.
        Polar => ["polar"],
        /// No retraction.
        None => ["none"],
    }
);

named_enum!(
    /// How `Y ≥ 0` is enforced.
    NonNeg, "non-negativity mode", {
        /// Leave signs alone.
        None => ["none"],
        /// Clamp negatives to zero (the reference's `apply_nonneg=True`).
        #[default]
        Hard => ["hard"],
        /// Map through `log(1+eˣ)` (strictly positive; in reference mode treated as `hard`,
        /// because the reference's `nsa_flow` clamps for any truthy value).
        Softplus => ["softplus"],
    }
);

named_enum!(
    /// Which algorithm the loop runs.
    Mode, "mode", {
        /// Fixes every defect of the reference (see docs/ALGORITHM.md). The default.
        #[default]
        Corrected => ["corrected"],
        /// Reproduces nsa_flow 0.7.7 exactly, defects included.
        Reference => ["reference"],
    }
);

named_enum!(
    /// Arithmetic precision of the solve.
    Precision, "precision", {
        /// Double precision.
        #[default]
        F64 => ["f64", "float64"],
        /// Single precision.
        F32 => ["f32", "float32"],
    }
);

impl Precision {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F64 => 8,
            Precision::F32 => 4,
        }
    }
}

named_enum!(
    /// The method for the k×k inverse square root in the soft-polar retraction.
    InvSqrtMethod, "inverse-square-root method", {
        /// Eigendecomposition for `k ≤ eig_thresh`, Newton–Schulz above.
        #[default]
        Auto => ["auto"],
        /// Symmetric eigendecomposition.
        Eig => ["eig"],
        /// Coupled Newton–Schulz (reference: a fixed number of iterations; corrected:
        /// spectral scaling and a residual-based stop).
        NewtonSchulz => ["ns"],
        /// `diag(A)^{-1/2}`: equalises column norms, does not orthogonalise.
        Diag => ["diag"],
    }
);

named_enum!(
    /// Where the computation runs.
    BackendChoice, "backend", {
        /// The best backend present: a hardware GPU when the GPU backend is built and finds
        /// one, otherwise the CPU.
        #[default]
        Auto => ["auto"],
        /// The nalgebra CPU backend (the oracle).
        Cpu => ["cpu"],
        /// The wgpu backend.
        Gpu => ["gpu"],
    }
);

/// The optimizers `nsa_flow` accepts: "fast" and every name of the reference's
/// `get_torch_optimizer` registry ([`crate::optimizers`]) but padam, which the reference
/// cannot construct (an error here too).
///
/// Reference mode reproduces the reference's Q3 defect for every registry optimizer: one
/// optimizer step at iteration 1, then `Y_proposed = Y`. Corrected mode steps the optimizer
/// every iteration from the accepted iterate, keeping its state. LBFGS, which the reference
/// calls without a closure (so it raises), runs properly: its closure re-evaluates the mode's
/// energy and direction at each trial point (reference: the reference's energy and its
/// "rgrad"; corrected: the corrected energy and its (projected) gradient), without the
/// retraction or the non-negativity map.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum OptimizerKind {
    /// Plain gradient step `Y − lr·g` (the reference's "fast").
    #[default]
    Fast,
    /// SGDP of torch_optimizer 0.3.0 with its defaults (momentum 0, δ = 0.1, ε = 1e-8,
    /// no weight decay, no Nesterov).
    Sgdp,
    /// torch.optim.LBFGS as the reference constructs it (`max_iter = 10`), with a closure.
    Lbfgs,
    /// Any other registry optimizer, by its canonical name (see [`crate::optim::Schedule`]).
    Torch(&'static str),
}

impl OptimizerKind {
    /// Every optimizer name accepted.
    pub const NAMES: &'static [&'static str] = &[
        "fast",
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
    /// The canonical name.
    pub fn as_str(&self) -> &'static str {
        match self {
            OptimizerKind::Fast => "fast",
            OptimizerKind::Sgdp => "sgdp",
            OptimizerKind::Lbfgs => "lbfgs",
            OptimizerKind::Torch(name) => name,
        }
    }
}

impl FromStr for OptimizerKind {
    type Err = NsaError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fast" => Ok(OptimizerKind::Fast),
            "sgdp" => Ok(OptimizerKind::Sgdp),
            "lbfgs" => Ok(OptimizerKind::Lbfgs),
            "padam" => Err(crate::optim::padam_error()),
            _ => match Self::NAMES.iter().find(|n| **n == s) {
                Some(name) => Ok(OptimizerKind::Torch(name)),
                None => Err(crate::optim::unknown_optimizer(s, &["fast"])),
            },
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The initial learning rate.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum LearningRate {
    /// Reference mode: `1e-3` with non-negativity, `1.0` without (the reference's rule).
    /// Corrected mode: a scale-free first step that moves `Y` by 10 % of its norm,
    /// `0.1·‖Y‖/‖∇E(Y)‖`.
    #[default]
    Default,
    /// A fixed positive value.
    Value(f64),
}

impl FromStr for LearningRate {
    type Err = NsaError;
    fn from_str(s: &str) -> Result<Self> {
        if s == "default" {
            return Ok(LearningRate::Default);
        }
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(LearningRate::Value(v)),
            _ => Err(NsaError::InvalidParameter {
                name: "learning rate",
                reason: format!("'{s}' is neither 'default' nor a positive finite number"),
            }),
        }
    }
}

with_setters! {
    /// Every parameter of the reference `nsa_flow`, plus the mode and backend choices.
    ///
    /// `Params::default()` is the reference's defaults with `mode = corrected`:
    /// `w = 0.5`, soft-polar retraction, `max_iter = 500`, `tol = 1e-5`, `seed = 42`, hard
    /// non-negativity, the "fast" optimizer, the default learning-rate rule, `record_every = 1`,
    /// `window_size = 5`, `simplified = false`, `project_full_gradient = false`, f64, auto backend.
    ///
    /// ```
    /// use nsa_flow::{Params, Mode, Retraction};
    /// let p = Params::default().w(0.8).retraction(Retraction::Polar).mode(Mode::Reference);
    /// assert!(p.validate().is_ok());
    /// assert!(Params::default().w(1.5).validate().is_err());
    /// ```
    #[derive(Clone, Debug, PartialEq)]
    #[non_exhaustive]
    pub struct Params {
        /// Weight in [0, 1] trading fidelity (`w = 0`) against orthogonality (`w = 1`); also the
        /// soft-polar blend strength.
        pub w: f64,
        /// The retraction after each step.
        pub retraction: Retraction,
        /// Maximum number of iterations (≥ 1).
        pub max_iter: usize,
        /// Convergence tolerance (≥ 0). Reference mode: relative gradient norm and relative
        /// energy-window range. Corrected mode: the certificate (relative projected-gradient
        /// mapping) and the energy window.
        pub tol: f64,
        /// Seed of the perturbation drawn when `x0` is `None`.
        pub seed: u64,
        /// How `Y ≥ 0` is enforced (also applied to the target).
        pub nonneg: NonNeg,
        /// The step rule.
        pub optimizer: OptimizerKind,
        /// The initial learning rate.
        pub learning_rate: LearningRate,
        /// Record a trace row every this many iterations (≥ 1).
        pub record_every: usize,
        /// Length of the energy window of the plateau test (≥ 1).
        pub window_size: usize,
        /// Use the off-diagonal Gram penalty `‖offdiag(YᵀY)‖²` instead of the invariant defect.
        pub simplified: bool,
        /// Project the whole gradient onto the tangent space instead of only its orthogonality part.
        pub project_full_gradient: bool,
        /// Arithmetic precision.
        pub precision: Precision,
        /// Reference (bug-compatible) or corrected algorithm.
        pub mode: Mode,
        /// Where to run: `cpu`, `gpu` (any adapter, software ones included; an error without
        /// one) or `auto` (a hardware GPU when present, else the CPU).
        pub backend: BackendChoice,
        /// GPU adapter to use, by a case-insensitive substring of its name (`None`: by type,
        /// discrete first, or `$NSA_FLOW_ADAPTER`). Ignored by `backend = cpu`, where giving one
        /// is an error.
        pub gpu_adapter: Option<String> => Some(into String),
        /// When `x0` is `None`: the perturbed start to use instead of drawing the 5 % noise with
        /// `seed` (for reproducing a reference run, whose torch RNG is not reproduced). Must have
        /// the shape of `y0`; an error when `x0` is given.
        pub perturbed_start: Option<DMatrix<f64>> => Some(DMatrix<f64>),
    }
}

impl Default for Params {
    fn default() -> Self {
        Params {
            w: 0.5,
            retraction: Retraction::SoftPolar,
            max_iter: 500,
            tol: 1e-5,
            seed: 42,
            nonneg: NonNeg::Hard,
            optimizer: OptimizerKind::Fast,
            learning_rate: LearningRate::Default,
            record_every: 1,
            window_size: 5,
            simplified: false,
            project_full_gradient: false,
            precision: Precision::F64,
            mode: Mode::Corrected,
            backend: BackendChoice::Auto,
            gpu_adapter: None,
            perturbed_start: None,
        }
    }
}

impl Params {
    /// Checks every scalar parameter; shapes are checked against the inputs by `nsa_flow`.
    pub fn validate(&self) -> Result<()> {
        if !(self.w.is_finite() && (0.0..=1.0).contains(&self.w)) {
            return Err(NsaError::InvalidWeight(self.w));
        }
        if self.backend == BackendChoice::Cpu && self.gpu_adapter.is_some() {
            return Err(NsaError::InvalidParameter {
                name: "gpu_adapter",
                reason: "an adapter was named but backend = cpu".into(),
            });
        }
        if self.max_iter == 0 {
            return Err(NsaError::InvalidParameter {
                name: "max_iter",
                reason: "must be at least 1".into(),
            });
        }
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(NsaError::InvalidParameter {
                name: "tol",
                reason: format!("{} is not a finite non-negative number", self.tol),
            });
        }
        if self.record_every == 0 {
            return Err(NsaError::InvalidParameter {
                name: "record_every",
                reason: "must be at least 1".into(),
            });
        }
        if self.window_size == 0 {
            return Err(NsaError::InvalidParameter {
                name: "window_size",
                reason: "must be at least 1".into(),
            });
        }
        if let LearningRate::Value(v) = self.learning_rate {
            if !(v.is_finite() && v > 0.0) {
                return Err(NsaError::InvalidParameter {
                    name: "learning rate",
                    reason: format!("{v} is not a positive finite number"),
                });
            }
        }
        Ok(())
    }
}
