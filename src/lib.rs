//! # nsa-flow
//!
//! NSA-Flow (Non-negative Stiefel Approximating Flow) finds a non-negative `p×k` matrix `Y`
//! close to a target `X0` whose columns are nearly orthogonal; one weight `w ∈ [0, 1]` trades
//! fidelity against decorrelation, and as `w` grows `Y` becomes sparse with nearly disjoint
//! columns: an interpretable basis.
//!
//! Two modes of one solver loop ([`flow`]):
//! - [`Mode::Reference`] reproduces the Python package nsa_flow 0.7.7 exactly, defects
//!   included, so published results can be reproduced and the implementation tested against
//!   the real thing;
//! - [`Mode::Corrected`] (the default) fixes every defect: the true gradient of the energy, a
//!   monotone line search, an accurate scale-invariant retraction, and a stationarity
//!   certificate (docs/ALGORITHM.md).
//!
//! The loop runs over the [`backend::Backend`] trait; [`backend::cpu::CpuBackend`] (nalgebra,
//! `f64` or `f32`) is the correctness oracle and [`backend::gpu::GpuBackend`] (wgpu: Vulkan,
//! Metal, DX12, GL; WGSL kernels) keeps every matrix on the device and reads back only the
//! scalars the loop needs. [`CommonOptions::backend`] picks one (`auto` by default: a hardware GPU
//! that computes in the requested precision, else the CPU).
//!
//! [`fit`] holds the second family, the solvers of nsa_flow 3.5 (calibration-free energy,
//! projected L-BFGS-B to a stationarity certificate; anchored, data and signed modes).
//!
//! Beyond the solver: [`layer`] ([`NsaFlowLayer`]: a batch `[B, p, k]` forward through
//! [`batch::nsa_flow_batch`] and the exact backward of its unrolled iterations),
//! [`autograd`] (exact vector-Jacobian products and
//! [`autograd::nsa_flow_autograd`]), [`lr_estimate`] (the reference's learning-rate
//! estimator), [`optim`] (the optimizer registry, on every backend), [`io`] (`.npy`/`.csv`)
//! and [`verify`] (one problem on both backends, compared). docs/ARCHITECTURE.md in the
//! repository describes the layers and the data flow of one iteration.
//!
//! ```
//! use nalgebra::DMatrix;
//! use nsa_flow::{nsa_flow, Params};
//! let x0 = DMatrix::from_fn(30, 3, |i, j| (((i + 1) * (j + 2)) % 7) as f64);
//! let res = nsa_flow(&x0, Some(&x0), &Params::default().w(0.5)).unwrap();
//! println!("{} iterations, defect {:.3e}, stop: {}", res.iterations, res.defect(), res.stop_reason);
//! ```
#![warn(missing_docs)]

pub mod autograd;
pub mod backend;
pub mod batch;
mod device;
mod element;
mod energy;
mod error;
pub mod fit;
pub mod flow;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod io;
pub mod layer;
// dense helpers shared by the backends and the tests, no stability promise
#[doc(hidden)]
pub mod linalg;
pub mod lr_estimate;
pub mod memory;
mod on_backend;
pub mod optim;
mod params;
#[cfg(feature = "plot")]
pub mod plot;
mod result;
mod retract;
pub mod rng;
mod setters;
mod validate;
mod verify;

pub use device::{AdapterSummary, DeviceInfo};
pub use element::Element;
pub use energy::{
    apply_nonnegativity, compute_energy, defect_fast, invariant_orthogonality_defect, Energy,
    EnergyTerms, FidelityType, OrthType,
};
pub use error::{GpuErrorKind, NsaError, NumericCause, Result};
pub use flow::{nsa_flow, nsa_flow_with_callback};
pub use layer::NsaFlowLayer;
pub use lr_estimate::{
    estimate_learning_rate_for_nsa_flow, lr_strategies, LrChoice, LrEstimate, LrEstimateParams,
    LrStrategy,
};
pub use on_backend::{compute_energy_on, invariant_orthogonality_defect_on, retract_on};
pub use optim::optimizers;
pub use params::{
    BackendChoice, CommonOptions, InvSqrtMethod, LearningRate, Mode, NonNeg, OptimizerKind, Params,
    Precision, Retraction,
};
pub use result::{
    sparsity, Certificate, Control, IterInfo, NsaResult, Scaling, StopReason, TraceRow,
};
pub use retract::{inv_sqrt_sym, retract, retract_in, RetractOptions};
pub use verify::{verify, verify_autograd, Solved, VerifyReport};

/// Checks that a matrix is non-empty and finite (the check every entry point applies).
///
/// ```
/// let bad = nalgebra::DMatrix::from_element(2, 2, f64::NAN);
/// assert!(nsa_flow::validate_matrix("Y", &bad).is_err());
/// ```
pub fn validate_matrix(what: &'static str, m: &nalgebra::DMatrix<f64>) -> Result<()> {
    validate::finite_nonempty(what, m)
}
