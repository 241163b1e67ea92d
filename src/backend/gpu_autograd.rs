//! The autograd backward passes on the GPU backend.

use super::gpu::{GpuBackend, GpuMat};
use super::Backend;
use crate::autograd::EnergySpec;
use crate::energy::EnergyTerms;
use crate::params::NonNeg;
use crate::retract::RetractOptions;

impl GpuBackend {
    pub(super) fn ag_energy_gradient(
        &mut self,
        y: &GpuMat,
        x0: &GpuMat,
        spec: &EnergySpec,
        terms: &EnergyTerms,
        x0_norm_sq: f64,
        out: &mut GpuMat,
    ) {
        let yh = self.download(y).unwrap();
        let xh = self.download(x0).unwrap();
        let mut gram = nalgebra::DMatrix::zeros(yh.ncols(), yh.ncols());
        let mut o = yh.clone();
        crate::autograd::grad::energy_grad_into(&yh, &xh, &spec.gradient_coefficients(terms, x0_norm_sq), &mut gram, &mut o);
        let up = self.upload(&o).unwrap();
        self.copy(&up, out);
    }

    pub(super) fn ag_nonneg_backward(&mut self, pre: &GpuMat, mode: NonNeg, g: &mut GpuMat) {
        let ph = self.download(pre).unwrap();
        let mut gh = self.download(g).unwrap();
        crate::autograd::grad::nonneg_backward_in_place(&ph, mode, &mut gh);
        let up = self.upload(&gh).unwrap();
        self.copy(&up, g);
    }

    pub(super) fn ag_retract_backward(&mut self, y: &GpuMat, o: &RetractOptions, g: &GpuMat, out: &mut GpuMat) {
        let yh = self.download(y).unwrap();
        let gh = self.download(g).unwrap();
        let r = crate::autograd::grad::retract_backward_in(&yh, o, &gh);
        let up = self.upload(&r).unwrap();
        self.copy(&up, out);
    }
}
