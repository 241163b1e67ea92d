//! Criterion benches: the whole flow (time per iteration, both modes, f64) at the shapes of
//! the issue, and the Gram / tall-times-small products behind it with the alternatives they
//! were chosen over.
//!
//! Run: `cargo bench --bench flow` (or `cargo bench --bench flow -- flow/reference` for a part).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nalgebra::DMatrix;
use nsa_flow::{nsa_flow, Mode, Params};
use std::hint::black_box;
use std::time::Duration;

fn randn(p: usize, k: usize, seed: u64) -> DMatrix<f64> {
    let mut rng = nsa_flow::rng::Rng::new(seed);
    DMatrix::from_fn(p, k, |_, _| rng.normal())
}

/// Time per iteration: each sample runs a solve of `iters` iterations (tol = 0) and charges
/// its loop time divided by the iterations it ran.
fn flow(c: &mut Criterion) {
    let shapes: &[(usize, usize, usize)] = &[
        (50, 10, 100),
        (66, 5, 100),
        (1000, 20, 30),
        (10000, 32, 10),
        (100000, 64, 3),
    ];
    for mode in [Mode::Reference, Mode::Corrected] {
        let mut g = c.benchmark_group(format!("flow/{mode}"));
        for &(p, k, iters) in shapes {
            if p * k >= 1_000_000 {
                g.sample_size(10).measurement_time(Duration::from_secs(20));
            } else {
                g.sample_size(20).measurement_time(Duration::from_secs(5));
            }
            let y0 = randn(p, k, 1);
            let x0 = randn(p, k, 2);
            let params = Params::default().w(0.5).max_iter(iters).tol(0.0).mode(mode);
            g.bench_with_input(
                BenchmarkId::new("per_iteration", format!("{p}x{k}")),
                &(),
                |b, _| {
                    b.iter_custom(|n| {
                        let mut total = Duration::ZERO;
                        for _ in 0..n {
                            let res = nsa_flow(black_box(&y0), Some(&x0), &params).unwrap();
                            total +=
                                Duration::from_secs_f64(res.seconds / res.iterations.max(1) as f64);
                        }
                        total
                    })
                },
            );
        }
        g.finish();
    }
}

/// The Gram product YᵀY and the product Y·S: the kernels behind the CPU backend against the
/// alternatives (nalgebra's own products).
fn kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernels");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for &(p, k) in &[(1000, 20), (10000, 32), (100000, 64)] {
        let y = randn(p, k, 3);
        let s = randn(k, k, 4);
        let mut gram = DMatrix::zeros(k, k);
        let mut out = DMatrix::zeros(p, k);
        g.throughput(Throughput::Elements((2 * p * k * k) as u64));
        g.bench_function(BenchmarkId::new("gram_faer", format!("{p}x{k}")), |b| {
            b.iter(|| nsa_flow::linalg::gram_into(black_box(&y), &y, &mut gram))
        });
        g.bench_function(
            BenchmarkId::new("gram_nalgebra_tr_mul", format!("{p}x{k}")),
            |b| b.iter(|| black_box(y.tr_mul(&y))),
        );
        g.bench_function(
            BenchmarkId::new("mul_small_matrixmultiply", format!("{p}x{k}")),
            |b| b.iter(|| nsa_flow::linalg::mul_small_into(black_box(&y), &s, 1.0, 0.0, &mut out)),
        );
        g.bench_function(
            BenchmarkId::new("mul_small_nalgebra", format!("{p}x{k}")),
            |b| b.iter(|| black_box(&y * &s)),
        );
    }
    g.finish();
}

criterion_group!(benches, flow, kernels);
criterion_main!(benches);
