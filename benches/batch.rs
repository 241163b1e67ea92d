//! Criterion bench of batched solves: B problems of one shape (each its own start, target and
//! w), solved one after another on the CPU, in parallel on the CPU (rayon, every core), and as
//! one GPU batch (the batch as a dispatch dimension). Throughput is in problems, so criterion
//! prints the time per problem. All in f32 (the GPU's precision), corrected mode, 40
//! iterations at most.
//!
//! Shapes: B = 1, 64, 1024 problems of 66×5 (cortical-thickness loadings) and B = 64 of
//! 1000×20. The GPU parts are skipped with a printed reason without an adapter; on a software
//! adapter (lavapipe) only correctness counts, and the 1024-problem GPU case is skipped unless
//! NSA_FLOW_BENCH_ALL=1.
//!
//! Run: `cargo bench --bench batch` (`-- batch/66x5` for one shape, `-- gpu` for one method).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nalgebra::DMatrix;
use nsa_flow::batch::{nsa_flow_batch, BatchProblem};
use nsa_flow::gpu::{GpuContext, GpuOptions};
use nsa_flow::{nsa_flow, BackendChoice, Params, Precision};
use std::hint::black_box;
use std::time::Duration;

const CASES: [(usize, usize, usize); 4] = [(66, 5, 1), (66, 5, 64), (66, 5, 1024), (1000, 20, 64)];

fn randn(p: usize, k: usize, seed: u64) -> DMatrix<f64> {
    let mut rng = nsa_flow::rng::Rng::new(seed);
    DMatrix::from_fn(p, k, |_, _| rng.normal())
}

fn problems(p: usize, k: usize, count: usize) -> Vec<BatchProblem> {
    (0..count)
        .map(|i| {
            let x0 = randn(p, k, 1000 + i as u64).map(|v: f64| v.abs());
            BatchProblem {
                y0: randn(p, k, i as u64),
                x0: Some(x0),
                w: 0.1 + 0.8 * (i % 17) as f64 / 16.0,
            }
        })
        .collect()
}

fn params(backend: BackendChoice) -> Params {
    Params::default()
        .backend(backend)
        .precision(Precision::F32)
        .max_iter(40)
}

fn bench(c: &mut Criterion) {
    let gpu = GpuContext::new(&GpuOptions {
        allow_software: true,
        ..Default::default()
    });
    let software = match &gpu {
        Ok(ctx) => {
            println!("GPU adapter: {}", ctx.adapter().label());
            ctx.adapter().is_software
        }
        Err(e) => {
            println!("GPU parts skipped: no adapter ({e})");
            true
        }
    };
    let all = std::env::var("NSA_FLOW_BENCH_ALL").is_ok_and(|v| v == "1");
    for (p, k, count) in CASES {
        let mut g = c.benchmark_group(format!("batch/{p}x{k}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements(count as u64));
        let probs = problems(p, k, count);
        let cpu = params(BackendChoice::Cpu);
        g.bench_with_input(
            BenchmarkId::new("cpu_sequential", count),
            &probs,
            |b, probs| {
                b.iter(|| {
                    for pr in probs {
                        let one = cpu.clone().w(pr.w);
                        black_box(nsa_flow(&pr.y0, pr.x0.as_ref(), &one).unwrap());
                    }
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("cpu_parallel", count),
            &probs,
            |b, probs| b.iter(|| black_box(nsa_flow_batch(probs, &cpu).unwrap())),
        );
        if gpu.is_ok() && (all || !(software && count > 64)) {
            let on_gpu = params(BackendChoice::Gpu);
            g.bench_with_input(BenchmarkId::new("gpu_batch", count), &probs, |b, probs| {
                b.iter(|| black_box(nsa_flow_batch(probs, &on_gpu).unwrap()))
            });
        } else if gpu.is_ok() {
            println!("batch/{p}x{k}/gpu_batch/{count}: skipped on a software adapter (NSA_FLOW_BENCH_ALL=1 runs it)");
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
