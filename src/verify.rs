//! Cross-validation: the same problem on the CPU oracle and on the GPU, and how far apart
//! they end up.

use crate::error::Result;
use crate::flow::nsa_flow;
use crate::params::{BackendChoice, CommonOptions, Params};
use crate::result::NsaResult;
use nalgebra::DMatrix;
use std::fmt;

/// How the CPU and GPU runs of one problem agree.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The CPU run (same precision and mode).
    pub cpu: NsaResult,
    /// The GPU run.
    pub gpu: NsaResult,
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

impl VerifyReport {
    /// Same iteration count, same best iteration, and Y within `y_tol` relative.
    pub fn agrees(&self, y_tol: f64) -> bool {
        self.cpu.iterations == self.gpu.iterations
            && self.cpu.best_iteration == self.gpu.best_iteration
            && self.y_rel_diff <= y_tol
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cpu: {} ({} iterations, best {}, stop {}, {:.3} s)",
            self.cpu.device,
            self.cpu.iterations,
            self.cpu.best_iteration,
            self.cpu.stop_reason,
            self.cpu.seconds
        )?;
        writeln!(
            f,
            "gpu: {} ({} iterations, best {}, stop {}, {:.3} s, {} readbacks)",
            self.gpu.device,
            self.gpu.iterations,
            self.gpu.best_iteration,
            self.gpu.stop_reason,
            self.gpu.seconds,
            self.gpu.device.readbacks.unwrap_or(0)
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
    let y_rel_diff = (&gpu.y - &cpu.y).norm() / cpu.y.norm().max(f64::MIN_POSITIVE);
    let energy_tol = match params.common.precision {
        crate::params::Precision::F64 => 1e-8,
        crate::params::Precision::F32 => 1e-3,
    };
    let mut max_energy_rel_diff: f64 = 0.0;
    let mut first_divergence = None;
    for (a, b) in cpu.traces.iter().zip(&gpu.traces) {
        if a.iter != b.iter {
            first_divergence.get_or_insert(a.iter.min(b.iter));
            break;
        }
        let d =
            (a.total_energy - b.total_energy).abs() / a.total_energy.abs().max(f64::MIN_POSITIVE);
        let d = if d.is_nan() { f64::INFINITY } else { d };
        max_energy_rel_diff = max_energy_rel_diff.max(d);
        if d > energy_tol {
            first_divergence.get_or_insert(a.iter);
        }
    }
    Ok(VerifyReport {
        cpu,
        gpu,
        y_rel_diff,
        max_energy_rel_diff,
        first_divergence,
        energy_tol,
    })
}
