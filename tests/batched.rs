//! The solver evaluates several line-search candidates per readback on backends that ask for
//! it (`Backend::line_search_batch`). The decisions are still taken in order, so results must
//! not depend on the batch size: a CPU backend that asks for batches gives the same bits.

mod common;

use common::*;
use nalgebra::DMatrix;
use nsa_flow::backend::cpu::CpuBackend;
use nsa_flow::backend::{Backend, GradientRule, Reduction, UpdateRule};
use nsa_flow::{
    Control, Mode, NonNeg, OptimizerKind, Params, Precision, Result, RetractOptions, Retraction,
};

/// The CPU backend, asking for `batch` candidates per readback and counting readbacks.
struct Batched {
    inner: CpuBackend<f64>,
    batch: usize,
    readbacks: usize,
}

impl Backend for Batched {
    type Mat = DMatrix<f64>;
    fn name(&self) -> String {
        self.inner.name()
    }
    fn precision(&self) -> Precision {
        self.inner.precision()
    }
    fn line_search_batch(&self) -> usize {
        self.batch
    }
    fn upload(&mut self, m: &DMatrix<f64>) -> Result<Self::Mat> {
        self.inner.upload(m)
    }
    fn download(&mut self, m: &Self::Mat) -> Result<DMatrix<f64>> {
        self.inner.download(m)
    }
    fn zeros(&mut self, p: usize, k: usize) -> Result<Self::Mat> {
        self.inner.zeros(p, k)
    }
    fn copy(&mut self, src: &Self::Mat, dst: &mut Self::Mat) {
        self.inner.copy(src, dst)
    }
    fn lincomb(&mut self, a: f64, x: &Self::Mat, b: f64, y: &Self::Mat, dst: &mut Self::Mat) {
        self.inner.lincomb(a, x, b, y, dst)
    }
    fn lerp(&mut self, base: &Self::Mat, toward: &Self::Mat, alpha: f64, dst: &mut Self::Mat) {
        self.inner.lerp(base, toward, alpha, dst)
    }
    fn nonneg(&mut self, m: &mut Self::Mat, mode: NonNeg) {
        self.inner.nonneg(m, mode)
    }
    fn retract(&mut self, src: &Self::Mat, dst: &mut Self::Mat, options: &RetractOptions) {
        self.inner.retract(src, dst, options)
    }
    fn gradient(
        &mut self,
        y: &Self::Mat,
        x0: &Self::Mat,
        rule: &GradientRule,
        out: &mut Self::Mat,
    ) {
        self.inner.gradient(y, x0, rule, out)
    }
    fn optimizer_step(
        &mut self,
        rule: &UpdateRule,
        param: &Self::Mat,
        grad: &Self::Mat,
        state: &mut [Self::Mat],
        lr: f64,
        out: &mut Self::Mat,
    ) {
        self.inner.optimizer_step(rule, param, grad, state, lr, out)
    }
    fn reduce_into(
        &mut self,
        requests: &[Reduction<'_, Self::Mat>],
        out: &mut Vec<f64>,
    ) -> Result<()> {
        self.readbacks += 1;
        self.inner.reduce_into(requests, out)
    }
}

fn run(
    batch: usize,
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &Params,
) -> (nsa_flow::NsaResult, usize) {
    let mut be = Batched {
        inner: CpuBackend::new(),
        batch,
        readbacks: 0,
    };
    let res = nsa_flow::flow::solve(&mut be, y0, x0, params, &mut |_| Control::Continue).unwrap();
    (res, be.readbacks)
}

#[test]
fn batch_size_does_not_change_results() {
    let mut compared = 0;
    for root in golden_roots() {
        for case in [
            "fast_soft_w05_defaulttol_80x6",
            "fast_none_w09_nonneg_100x5",
            "lr20_nonneg_50x10",
            "y0eqx0_nonneg_50x10",
            "fast_soft_w025_signed_lr1_50x10",
        ] {
            let dir = root.join("flow").join(case);
            if !dir.is_dir() {
                continue;
            }
            let y0 = read(dir.join("Y0.npy"));
            let x0 = read(dir.join("X0.npy"));
            let pj = json(dir.join("params.json"));
            for mode in [Mode::Reference, Mode::Corrected] {
                for optimizer in [OptimizerKind::Fast, OptimizerKind::Sgdp] {
                    let params = Params::default()
                        .w(pj["w"].as_f64().unwrap())
                        .retraction(
                            pj["retraction"]
                                .as_str()
                                .unwrap_or("soft_polar")
                                .parse::<Retraction>()
                                .unwrap(),
                        )
                        .max_iter(150)
                        .tol(1e-8)
                        .optimizer(optimizer)
                        .mode(mode);
                    let (one, reads_one) = run(1, &y0, Some(&x0), &params);
                    for batch in [2, 4, 7, 16] {
                        let (many, reads_many) = run(batch, &y0, Some(&x0), &params);
                        assert_eq!(one.y, many.y, "{case} {mode:?} batch {batch}");
                        assert_eq!(one.traces.len(), many.traces.len());
                        for (a, b) in one.traces.iter().zip(&many.traces) {
                            assert_eq!((a.iter, a.total_energy), (b.iter, b.total_energy));
                        }
                        assert_eq!(one.stop_reason, many.stop_reason);
                        assert!(reads_many <= reads_one, "batching must not add readbacks");
                        if batch == 16 {
                            let per = |r: usize, res: &nsa_flow::NsaResult| {
                                r as f64 / res.iterations.max(1) as f64
                            };
                            eprintln!(
                                "{case} {mode:?} {optimizer:?}: readbacks/iteration {:.2} (batch 1) -> {:.2} (batch 16)",
                                per(reads_one, &one),
                                per(reads_many, &many)
                            );
                        }
                    }
                    compared += 1;
                }
            }
        }
    }
    assert!(compared >= 8, "only {compared} configurations");
}

impl nsa_flow::autograd::DifferentiableBackend for Batched {
    fn energy_gradient(
        &mut self,
        y: &Self::Mat,
        x0: &Self::Mat,
        spec: &nsa_flow::autograd::EnergySpec,
        terms: &nsa_flow::EnergyTerms,
        x0_norm_sq: f64,
        out: &mut Self::Mat,
    ) {
        self.inner
            .energy_gradient(y, x0, spec, terms, x0_norm_sq, out)
    }
    fn nonneg_backward(&mut self, pre: &Self::Mat, mode: NonNeg, g: &mut Self::Mat) {
        self.inner.nonneg_backward(pre, mode, g)
    }
    fn retract_backward(
        &mut self,
        y: &Self::Mat,
        options: &RetractOptions,
        g: &Self::Mat,
        out: &mut Self::Mat,
    ) {
        self.inner.retract_backward(y, options, g, out)
    }
}
