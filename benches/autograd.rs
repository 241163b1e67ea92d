//! Criterion bench of the autograd backward: one forward pass (`E(nonneg(R_w(Z)))`: the
//! retraction, the projection and the energy's reductions, read back) against forward +
//! backward (the exact gradient with respect to Z, its norm read back), at 1000×20 and
//! 100000×32, on the CPU (f64) and on the GPU (f32; skipped with a printed reason without an
//! adapter). The ratio says what a gradient costs in forward passes.
//!
//! Run: `cargo bench --bench autograd` (`-- autograd/cpu` or `-- autograd/gpu` for a part).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nalgebra::DMatrix;
use nsa_flow::autograd::{CompositeSpec, DifferentiableBackend, EnergySpec};
use nsa_flow::backend::cpu::CpuBackend;
use nsa_flow::backend::gpu::GpuBackend;
use nsa_flow::backend::{Backend, Reduction};
use nsa_flow::gpu::{GpuContext, GpuOptions};
use nsa_flow::{EnergyTerms, FidelityType, Mode, NonNeg, OrthType, Precision, Retraction};
use std::hint::black_box;
use std::time::Duration;

const SHAPES: [(usize, usize); 2] = [(1000, 20), (100_000, 32)];

fn randn(p: usize, k: usize, seed: u64) -> DMatrix<f64> {
    let mut rng = nsa_flow::rng::Rng::new(seed);
    DMatrix::from_fn(p, k, |_, _| rng.normal())
}

struct Problem<M> {
    z: M,
    x0: M,
    r: M,
    y: M,
    gy: M,
    gz: M,
    spec: CompositeSpec,
    x0n: f64,
}

fn problem<B: Backend>(be: &mut B, p: usize, k: usize, style: Mode) -> Problem<B::Mat> {
    let z = randn(p, k, 1);
    let x0 = randn(p, k, 2).map(|v: f64| v.abs());
    Problem {
        z: be.upload(&z).unwrap(),
        x0: be.upload(&x0).unwrap(),
        r: be.zeros(p, k).unwrap(),
        y: be.zeros(p, k).unwrap(),
        gy: be.zeros(p, k).unwrap(),
        gz: be.zeros(p, k).unwrap(),
        spec: CompositeSpec {
            w: 0.5,
            retraction: Retraction::SoftPolar,
            nonneg: NonNeg::Hard,
            style,
            fidelity_type: FidelityType::ScaleInvariant,
            orth_type: OrthType::ScaleInvariant,
            fid_eta: 1.0,
            c_orth: 1.0,
        },
        x0n: x0.norm_squared(),
    }
}

fn forward<B: Backend>(be: &mut B, pr: &mut Problem<B::Mat>) -> EnergyTerms {
    be.retract(&pr.z, &mut pr.r, &pr.spec.retract_options());
    be.copy(&pr.r, &mut pr.y);
    be.nonneg(&mut pr.y, pr.spec.nonneg);
    let v = be
        .reduce(&[Reduction::EnergyTerms {
            y: &pr.y,
            target: &pr.x0,
        }])
        .unwrap();
    EnergyTerms {
        dist_sq: v[0],
        gram_fro_sq: v[1],
        gram_diag_sq: v[2],
        norm_sq: v[3],
    }
}

fn forward_backward<B: DifferentiableBackend>(be: &mut B, pr: &mut Problem<B::Mat>) -> f64 {
    let terms = forward(be, pr);
    let es: EnergySpec = pr.spec.energy_spec();
    be.energy_gradient(&pr.y, &pr.x0, &es, &terms, pr.x0n, &mut pr.gy);
    be.nonneg_backward(&pr.r, pr.spec.nonneg, &mut pr.gy);
    be.retract_backward(&pr.z, &pr.spec.retract_options(), &pr.gy, &mut pr.gz);
    be.reduce(&[Reduction::NormSq(&pr.gz)]).unwrap()[0]
}

fn run<B: DifferentiableBackend>(c: &mut Criterion, group: &str, be: &mut B) {
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for (p, k) in SHAPES {
        for style in [Mode::Reference, Mode::Corrected] {
            let mut pr = problem(be, p, k, style);
            let id = format!("{p}x{k}/{style}");
            g.bench_function(BenchmarkId::new("forward", &id), |b| {
                b.iter(|| black_box(forward(be, &mut pr)))
            });
            g.bench_function(BenchmarkId::new("forward_backward", &id), |b| {
                b.iter(|| black_box(forward_backward(be, &mut pr)))
            });
        }
    }
    g.finish();
}

fn autograd_cpu(c: &mut Criterion) {
    run(c, "autograd/cpu-f64", &mut CpuBackend::<f64>::new());
}

fn autograd_gpu(c: &mut Criterion) {
    let ctx = match GpuContext::new(&GpuOptions {
        allow_software: true,
        ..Default::default()
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gpu autograd bench skipped: {e}");
            return;
        }
    };
    eprintln!("adapter: {}", ctx.adapter().label());
    let mut be = GpuBackend::new(ctx, Precision::F32).unwrap();
    run(c, "autograd/gpu-f32", &mut be);
}

criterion_group!(benches, autograd_cpu, autograd_gpu);
criterion_main!(benches);
