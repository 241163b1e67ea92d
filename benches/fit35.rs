//! Criterion benches of the nsa_flow 3.5 solvers (`nsa_flow::fit`): time to the 3.5
//! certificate (tol 1e-6) on 3.5's own speed-protocol data, and time per gradient evaluation
//! at a fixed budget (stable across the rounding-sensitive paths of long non-convex solves).
//! The comparison with the real 3.5.0 is benches/fit35_vs_reference.py (it needs torch).
//!
//! Run: `cargo bench --bench fit35` (or `cargo bench --bench fit35 -- fit35/per_grad`).
//! `fit35/per_grad_gpu` times the same budget with the products on the GPU (any adapter,
//! software ones included; skipped with a message without one).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nalgebra::DMatrix;
use nsa_flow::fit::{fit_data, fit_signed, FitParams};
use nsa_flow::{BackendChoice, Precision};
use std::hint::black_box;
use std::time::Duration;

/// 3.5's speed protocol: X ~ N(0, 1), `n×p`; data mode on X − min(X, axis 0), signed mode on
/// the centred X.
fn protocol(n: usize, p: usize, signed: bool) -> DMatrix<f64> {
    let mut rng = nsa_flow::rng::Rng::new(0);
    let mut x = DMatrix::from_fn(n, p, |_, _| rng.normal());
    for mut col in x.column_iter_mut() {
        let shift = if signed { col.mean() } else { col.min() };
        col.add_scalar_mut(-shift);
    }
    x
}

fn params(w: f64) -> FitParams {
    let mut prm = FitParams::default();
    prm.w = w;
    // the CPU groups time the CPU even where `auto` would pick a GPU
    prm.backend = BackendChoice::Cpu;
    prm
}

const BUDGET: usize = 200;
const PER_GRAD_SHAPES: [(usize, usize, usize); 3] =
    [(1000, 500, 5), (1500, 1000, 5), (300, 2000, 5)];

/// Runs `reps` fits at a fixed budget and charges each per gradient it took (the init is
/// included).
fn per_grad_time(x: &DMatrix<f64>, k: usize, prm: &FitParams, reps: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..reps {
        let r = fit_data(x, k, prm).unwrap();
        total += Duration::from_secs_f64(r.seconds / r.n_grad.max(1) as f64);
    }
    total
}

fn to_certificate(c: &mut Criterion) {
    let mut g = c.benchmark_group("fit35/to_certificate");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for &(n, p, k) in &[(300usize, 66usize, 5usize), (1000, 500, 5)] {
        let xd = protocol(n, p, false);
        let xs = protocol(n, p, true);
        let id = format!("{n}x{p}_k{k}");
        g.bench_with_input(BenchmarkId::new("data", &id), &xd, |b, x| {
            b.iter(|| black_box(fit_data(x, k, &params(0.5)).unwrap().energy))
        });
        let mut prm = params(0.5);
        prm.consolidate = true;
        g.bench_with_input(BenchmarkId::new("signed_consolidated", &id), &xs, |b, x| {
            b.iter(|| black_box(fit_signed(x, k, &prm).unwrap().energy))
        });
    }
    g.finish();
}

/// A fixed budget of 200 gradient evaluations (tol 0), reported per evaluation: the cost of
/// one L-BFGS-B step with its energy and gradient, dense `XᵀX` route and matrix-free route.
fn per_grad(c: &mut Criterion) {
    let mut g = c.benchmark_group("fit35/per_grad");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for &(n, p, k) in &PER_GRAD_SHAPES {
        let x = protocol(n, p, false);
        let mut prm = params(0.5);
        prm.tol = Some(0.0);
        prm.max_grad = BUDGET;
        g.bench_with_input(
            BenchmarkId::new("data", format!("{n}x{p}_k{k}")),
            &x,
            |b, x| b.iter_custom(|reps| per_grad_time(x, k, &prm, reps)),
        );
    }
    g.finish();
}

/// [`per_grad`] with the products on the GPU, in f32 and (with `SHADER_F64`) f64.
fn per_grad_gpu(c: &mut Criterion) {
    let options = nsa_flow::gpu::GpuOptions {
        allow_software: true,
        ..Default::default()
    };
    let ctx = match nsa_flow::gpu::GpuContext::shared(&options) {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("fit35/per_grad_gpu skipped: {e}");
            return;
        }
    };
    eprintln!("fit35/per_grad_gpu on {}", ctx.adapter().name);
    let mut g = c.benchmark_group("fit35/per_grad_gpu");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for &(n, p, k) in &PER_GRAD_SHAPES {
        let x = protocol(n, p, false);
        for precision in [Precision::F32, Precision::F64] {
            if precision == Precision::F64 && !ctx.supports_f64() {
                continue;
            }
            let mut prm = params(0.5);
            prm.backend = BackendChoice::Gpu;
            prm.precision = precision;
            prm.tol = Some(0.0);
            prm.max_grad = BUDGET;
            g.bench_with_input(
                BenchmarkId::new(format!("data_{precision}"), format!("{n}x{p}_k{k}")),
                &x,
                |b, x| b.iter_custom(|reps| per_grad_time(x, k, &prm, reps)),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, to_certificate, per_grad, per_grad_gpu);
criterion_main!(benches);
