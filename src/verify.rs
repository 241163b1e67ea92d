//! Cross-validation: the same problem on the CPU oracle and on the GPU, and how far apart
//! they end up. One comparison serves the flow ([`verify`]) and the autograd solver
//! ([`verify_autograd`]).

use crate::autograd::{nsa_flow_autograd, AutogradParams, AutogradResult};
use crate::device::DeviceInfo;
use crate::error::Result;
use crate::flow::nsa_flow;
use crate::params::{BackendChoice, CommonOptions, Params, Precision};
use crate::result::{NsaResult, StopReason, TraceRow};
use nalgebra::DMatrix;
use std::fmt;

/// What the comparison reads from a solve's result: implemented by [`NsaResult`] (the flow)
/// and [`AutogradResult`] (the autograd solver).
pub trait Solved {
    /// The returned (best) iterate.
    fn y(&self) -> &DMatrix<f64>;
    /// The recorded iterations.
    fn traces(&self) -> &[TraceRow];
    /// How many iterations ran.
    fn iterations(&self) -> usize;
    /// The iteration whose iterate was returned.
    fn best_iteration(&self) -> usize;
    /// Why the loop ended.
    fn stop_reason(&self) -> StopReason;
    /// Where it ran.
    fn device(&self) -> &DeviceInfo;
    /// Wall-clock seconds.
    fn seconds(&self) -> f64;
}

macro_rules! impl_solved {
    ($t:ty) => {
        impl Solved for $t {
            fn y(&self) -> &DMatrix<f64> {
                &self.y
            }
            fn traces(&self) -> &[TraceRow] {
                &self.traces
            }
            fn iterations(&self) -> usize {
                self.iterations
            }
            fn best_iteration(&self) -> usize {
                self.best_iteration
            }
            fn stop_reason(&self) -> StopReason {
                self.stop_reason
            }
            fn device(&self) -> &DeviceInfo {
                &self.device
            }
            fn seconds(&self) -> f64 {
                self.seconds
            }
        }
    };
}
impl_solved!(NsaResult);
impl_solved!(AutogradResult);

/// How the CPU and GPU runs of one problem agree.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct VerifyReport<R = NsaResult> {
    /// The CPU run (same precision and mode).
    pub cpu: R,
    /// The GPU run.
    pub gpu: R,
    /// `‖Y_gpu − Y_cpu‖_F / ‖Y_cpu‖_F` of the returned (best) iterates.
    pub y_rel_diff: f64,
    /// The largest relative difference of the total energy over the iterations both traces
    /// recorded.
    pub max_energy_rel_diff: f64,
    /// The first recorded iteration whose energies differ by more than `energy_tol`
    /// (`None`: they agree throughout).
    pub first_divergence: Option<usize>,
    /// The threshold used for `first_divergence`: 1e-8 in f64, 1e-3 in f32.
    pub energy_tol: f64,
}

impl<R: Solved> VerifyReport<R> {
    /// Same iteration count, same best iteration, and Y within `y_tol` relative.
    pub fn agrees(&self, y_tol: f64) -> bool {
        self.cpu.iterations() == self.gpu.iterations()
            && self.cpu.best_iteration() == self.gpu.best_iteration()
            && self.y_rel_diff <= y_tol
    }

    /// The comparison of two finished runs of one problem in `precision`.
    fn compare(cpu: R, gpu: R, precision: Precision) -> Self {
        let y_rel_diff = (gpu.y() - cpu.y()).norm() / cpu.y().norm().max(f64::MIN_POSITIVE);
        let energy_tol = match precision {
            Precision::F64 => 1e-8,
            Precision::F32 => 1e-3,
        };
        let mut max_energy_rel_diff: f64 = 0.0;
        let mut first_divergence = None;
        for (a, b) in cpu.traces().iter().zip(gpu.traces()) {
            if a.iter != b.iter {
                first_divergence.get_or_insert(a.iter.min(b.iter));
                break;
            }
            let d = (a.total_energy - b.total_energy).abs()
                / a.total_energy.abs().max(f64::MIN_POSITIVE);
            let d = if d.is_nan() { f64::INFINITY } else { d };
            max_energy_rel_diff = max_energy_rel_diff.max(d);
            if d > energy_tol {
                first_divergence.get_or_insert(a.iter);
            }
        }
        VerifyReport {
            cpu,
            gpu,
            y_rel_diff,
            max_energy_rel_diff,
            first_divergence,
            energy_tol,
        }
    }
}

impl<R: Solved> fmt::Display for VerifyReport<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cpu: {} ({} iterations, best {}, stop {}, {:.3} s)",
            self.cpu.device(),
            self.cpu.iterations(),
            self.cpu.best_iteration(),
            self.cpu.stop_reason(),
            self.cpu.seconds()
        )?;
        writeln!(
            f,
            "gpu: {} ({} iterations, best {}, stop {}, {:.3} s, {} readbacks)",
            self.gpu.device(),
            self.gpu.iterations(),
            self.gpu.best_iteration(),
            self.gpu.stop_reason(),
            self.gpu.seconds(),
            self.gpu.device().readbacks.unwrap_or(0)
        )?;
        writeln!(f, "Y relative difference: {:.3e}", self.y_rel_diff)?;
        write!(
            f,
            "largest energy relative difference: {:.3e}",
            self.max_energy_rel_diff
        )?;
        if let Some(it) = self.first_divergence {
            write!(
                f,
                "\nenergies first differ by more than {:.0e} at iteration {it}",
                self.energy_tol
            )?;
        }
        Ok(())
    }
}

/// Runs `nsa_flow(y0, x0, params)` on the CPU and on the GPU (`params.backend` is overridden;
/// the precision, mode and everything else are kept) and compares the results.
///
/// ```no_run
/// use nalgebra::DMatrix;
/// use nsa_flow::{verify, Params};
/// let x0 = DMatrix::from_fn(100, 4, |i, j| ((i * 7 + j * 3) % 11) as f64);
/// let report = verify(&x0, Some(&x0), &Params::default()).unwrap();
/// println!("{report}");
/// assert!(report.agrees(1e-8));
/// ```
pub fn verify(
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &Params,
) -> Result<VerifyReport> {
    let cpu = nsa_flow(
        y0,
        x0,
        &Params {
            common: CommonOptions {
                backend: BackendChoice::Cpu,
                gpu_adapter: None,
                ..params.common.clone()
            },
            ..params.clone()
        },
    )?;
    let gpu = nsa_flow(y0, x0, &params.clone().backend(BackendChoice::Gpu))?;
    Ok(VerifyReport::compare(cpu, gpu, params.common.precision))
}

/// [`verify`] for the autograd solver: runs `nsa_flow_autograd(y0, x0, params)` on the CPU
/// and on the GPU (`params.common.backend` is overridden, everything else kept) and compares
/// the results the same way.
///
/// ```no_run
/// use nalgebra::DMatrix;
/// use nsa_flow::{autograd::AutogradParams, verify_autograd, Precision};
/// let x0 = DMatrix::from_fn(60, 3, |i, j| ((i * 7 + j * 3) % 11) as f64);
/// let params = AutogradParams::default().max_iter(20).precision(Precision::F64);
/// let report = verify_autograd(&x0, Some(&x0), &params).unwrap();
/// assert!(report.agrees(1e-8), "{report}");
/// ```
pub fn verify_autograd(
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &AutogradParams,
) -> Result<VerifyReport<AutogradResult>> {
    let mut cpu_params = params.clone().backend(BackendChoice::Cpu);
    cpu_params.common.gpu_adapter = None;
    let cpu = nsa_flow_autograd(y0, x0, &cpu_params)?;
    let gpu = nsa_flow_autograd(y0, x0, &params.clone().backend(BackendChoice::Gpu))?;
    Ok(VerifyReport::compare(cpu, gpu, params.common.precision))
}
