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
    /// The options the flow ([`Params`]) and the autograd flow
    /// ([`crate::autograd::AutogradParams`]) share: stated, defaulted and checked once here,
    /// embedded in both as their `common` field. Both structs also have a setter for each of
    /// these, so `Params::default().w(0.8).max_iter(100)` sets `common.w` and
    /// `common.max_iter`.
    ///
    /// `CommonOptions::default()`: `w = 0.5`, soft-polar retraction, `max_iter = 500`,
    /// `seed = 42`, `record_every = 1`, `window_size = 5`, f64, corrected mode, auto backend,
    /// no adapter named, no perturbed start (the reference's defaults, with `mode = corrected`).
    ///
    /// ```
    /// use nsa_flow::{autograd::AutogradParams, CommonOptions, Mode, Params};
    /// let common = CommonOptions::default().w(0.8).max_iter(100).mode(Mode::Reference);
    /// let flow = Params::default().common(common.clone());
    /// let autograd = AutogradParams::default().common(common);
    /// assert_eq!(flow.common, autograd.common);
    /// assert_eq!(Params::default().w(0.8).common.w, 0.8);
    /// assert!(CommonOptions::default().max_iter(0).validate().is_err());
    /// ```
    #[derive(Clone, Debug, PartialEq)]
    #[non_exhaustive]
    pub struct CommonOptions {
        /// Weight in [0, 1] trading fidelity (`w = 0`) against orthogonality (`w = 1`); also the
        /// soft-polar blend strength.
        pub w: f64,
        /// The retraction: after each step of the flow, inside the objective of the autograd
        /// flow.
        pub retraction: Retraction,
        /// Maximum number of iterations (≥ 1).
        pub max_iter: usize,
        /// Seed of the perturbation drawn when `x0` is `None` (and of the autograd flow's
        /// random learning-rate strategies).
        pub seed: u64,
        /// Record a trace row every this many iterations (≥ 1).
        pub record_every: usize,
        /// Length of the energy window of the plateau test (≥ 1).
        pub window_size: usize,
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

impl Default for CommonOptions {
    fn default() -> Self {
        CommonOptions {
            w: 0.5,
            retraction: Retraction::SoftPolar,
            max_iter: 500,
            seed: 42,
            record_every: 1,
            window_size: 5,
            precision: Precision::F64,
            mode: Mode::Corrected,
            backend: BackendChoice::Auto,
            gpu_adapter: None,
            perturbed_start: None,
        }
    }
}

impl CommonOptions {
    /// Checks `w ∈ [0, 1]`, the counts (≥ 1) and that no adapter is named with `backend = cpu`.
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
        for (name, v) in [
            ("max_iter", self.max_iter),
            ("record_every", self.record_every),
            ("window_size", self.window_size),
        ] {
            if v == 0 {
                return Err(NsaError::InvalidParameter {
                    name,
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }
}

/// Inside `impl` of a struct with a `common: CommonOptions` field: one setter per common
/// option, each setting `common.<name>` (documented on [`CommonOptions`]), and `common()`
/// itself.
macro_rules! common_setters {
    () => {
        $crate::params::common_setters!(@plain
            w: f64, retraction: $crate::Retraction, max_iter: usize, seed: u64,
            record_every: usize, window_size: usize, precision: $crate::Precision,
            mode: $crate::Mode, backend: $crate::BackendChoice
        );
        /// Sets [`CommonOptions::gpu_adapter`](crate::CommonOptions::gpu_adapter) to
        /// `Some(value)`; to clear it, assign `None` to `common.gpu_adapter`.
        #[must_use]
        pub fn gpu_adapter(mut self, value: impl Into<String>) -> Self {
            self.common.gpu_adapter = Some(value.into());
            self
        }
        /// Sets [`CommonOptions::perturbed_start`](crate::CommonOptions::perturbed_start) to
        /// `Some(value)`; to clear it, assign `None` to `common.perturbed_start`.
        #[must_use]
        pub fn perturbed_start(mut self, value: nalgebra::DMatrix<f64>) -> Self {
            self.common.perturbed_start = Some(value);
            self
        }
    };
    (@plain $($field:ident: $ty:ty),*) => {
        $(
            #[doc = concat!(
                "Sets [`CommonOptions::", stringify!($field), "`](crate::CommonOptions::",
                stringify!($field), ")."
            )]
            #[must_use]
            pub fn $field(mut self, value: $ty) -> Self {
                self.common.$field = value;
                self
            }
        )*
    };
}

pub(crate) use common_setters;

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
        /// The options shared with the autograd flow (`w`, the retraction, `max_iter`, the
        /// seed, the trace and window lengths, precision, mode, backend, adapter, perturbed
        /// start); each also has a setter on `Params`.
        pub common: CommonOptions,
        /// Convergence tolerance (≥ 0). Reference mode: relative gradient norm and relative
        /// energy-window range. Corrected mode: the certificate (relative projected-gradient
        /// mapping) and the energy window.
        pub tol: f64,
        /// How `Y ≥ 0` is enforced (also applied to the target).
        pub nonneg: NonNeg,
        /// The step rule.
        pub optimizer: OptimizerKind,
        /// The initial learning rate.
        pub learning_rate: LearningRate,
        /// Use the off-diagonal Gram penalty `‖offdiag(YᵀY)‖²` instead of the invariant defect.
        pub simplified: bool,
        /// Project the whole gradient onto the tangent space instead of only its orthogonality part.
        pub project_full_gradient: bool,
    }
}

impl Default for Params {
    fn default() -> Self {
        Params {
            common: CommonOptions::default(),
            tol: 1e-5,
            nonneg: NonNeg::Hard,
            optimizer: OptimizerKind::Fast,
            learning_rate: LearningRate::Default,
            simplified: false,
            project_full_gradient: false,
        }
    }
}

impl Params {
    common_setters!();

    /// Checks every scalar parameter; shapes are checked against the inputs by `nsa_flow`.
    pub fn validate(&self) -> Result<()> {
        self.common.validate()?;
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(NsaError::InvalidParameter {
                name: "tol",
                reason: format!("{} is not a finite non-negative number", self.tol),
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
