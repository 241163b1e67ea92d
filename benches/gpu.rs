//! Criterion benches of the GPU backend: each kernel family (GB/s and GFLOP/s) and the whole
//! flow per iteration at 100000×32, 1000000×32 and 1000000×64 in f32, beside the CPU path
//! on the same shapes. Without an adapter the benches print why and do nothing.
//!
//! Run: `cargo bench --bench gpu` (`-- gpu_kernels` or `-- gpu_flow` for a part). On a
//! software adapter (lavapipe) these are slow; they are meant for hardware GPUs.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nalgebra::DMatrix;
use nsa_flow::backend::gpu::{GpuBackend, KernelBench};
use nsa_flow::backend::{Backend, GradientRule, Projection, Reduction};
use nsa_flow::gpu::{GpuContext, GpuOptions};
use nsa_flow::{nsa_flow, BackendChoice, Mode, Params, Precision, RetractOptions, Retraction};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SHAPES: [(usize, usize); 3] = [(100_000, 32), (1_000_000, 32), (1_000_000, 64)];

fn randn(p: usize, k: usize, seed: u64) -> DMatrix<f64> {
    let mut rng = nsa_flow::rng::Rng::new(seed);
    DMatrix::from_fn(p, k, |_, _| rng.normal())
}

fn backend() -> Option<GpuBackend> {
    let ctx = match GpuContext::new(&GpuOptions {
        allow_software: true,
        ..Default::default()
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gpu benches skipped: {e}");
            return None;
        }
    };
    eprintln!("adapter: {}", ctx.adapter().label());
    GpuBackend::new(ctx, Precision::F32).ok()
}

fn gpu_kernels(c: &mut Criterion) {
    let Some(mut be) = backend() else { return };
    let mut g = c.benchmark_group("gpu_kernels");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for (p, k) in SHAPES {
        let y = be.upload(&randn(p, k, 1)).unwrap();
        let x = be.upload(&randn(p, k, 2)).unwrap();
        let mut out = be.zeros(p, k).unwrap();
        let pk = (p * k) as u64;
        let flops = 2 * pk * k as u64;
        // Throughput::Elements counts flops (criterion prints "elem/s"); GB/s follow from the
        // time: the Gram reads 4·pk bytes, the product moves 8·pk.
        let cases: [(KernelBench, &str, Throughput); 4] = [
            (KernelBench::Gram, "gram_flops", Throughput::Elements(flops)),
            (
                KernelBench::MulSmall,
                "mul_small_flops",
                Throughput::Elements(flops),
            ),
            (
                KernelBench::Lincomb,
                "lincomb_bytes",
                Throughput::Bytes(12 * pk),
            ),
            (
                KernelBench::DistSq,
                "dist_sq_bytes",
                Throughput::Bytes(8 * pk),
            ),
        ];
        // S must be a valid Gram for the products and the inverse square root
        be.record_kernel(KernelBench::Gram, &y, &x, &mut out);
        be.wait().unwrap();
        for (which, name, tp) in cases {
            g.throughput(tp);
            g.bench_function(BenchmarkId::new(name, format!("{p}x{k}")), |b| {
                b.iter_custom(|n| {
                    let t0 = Instant::now();
                    for _ in 0..n {
                        be.record_kernel(which, black_box(&y), &x, &mut out);
                    }
                    be.wait().unwrap();
                    t0.elapsed()
                })
            });
        }
        // whole backend operations, each one read back once (what an iteration is made of)
        g.throughput(Throughput::Bytes(4 * pk));
        let rule = GradientRule {
            fid: 0.5,
            orth: 0.5,
            simplified: None,
            projection: Projection::None,
        };
        let ropt = RetractOptions::corrected(Retraction::SoftPolar, 0.5);
        for op in [
            "gradient",
            "retract_corrected",
            "energy_terms",
            "readback_only",
        ] {
            g.bench_function(
                BenchmarkId::new(format!("op_{op}"), format!("{p}x{k}")),
                |b| {
                    b.iter_custom(|n| {
                        let t0 = Instant::now();
                        for _ in 0..n {
                            match op {
                                "gradient" => be.gradient(&y, &x, &rule, &mut out),
                                "retract_corrected" => be.retract(&y, &mut out, &ropt),
                                "energy_terms" => {
                                    be.reduce(&[Reduction::EnergyTerms { y: &y, target: &x }])
                                        .unwrap();
                                }
                                _ => {
                                    be.reduce(&[Reduction::NormSq(&y)]).unwrap();
                                }
                            }
                        }
                        be.wait().unwrap();
                        t0.elapsed()
                    })
                },
            );
        }
        g.throughput(Throughput::Elements(1));
        g.bench_function(
            BenchmarkId::new("inv_sqrt_newton_schulz", format!("{p}x{k}")),
            |b| {
                b.iter_custom(|n| {
                    let t0 = Instant::now();
                    for _ in 0..n {
                        be.record_kernel(KernelBench::InvSqrt, &y, &x, &mut out);
                    }
                    be.wait().unwrap();
                    t0.elapsed()
                })
            },
        );
    }
    g.finish();
}

/// Time per iteration of the whole flow (tol = 0, so every iteration runs), GPU and CPU.
fn gpu_flow(c: &mut Criterion) {
    if backend().is_none() {
        return;
    }
    let mut g = c.benchmark_group("gpu_flow");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(1));
    for (p, k) in SHAPES {
        let y0 = randn(p, k, 1).abs();
        let x0 = randn(p, k, 2).abs();
        for mode in [Mode::Corrected, Mode::Reference] {
            for choice in [BackendChoice::Gpu, BackendChoice::Cpu] {
                let params = Params::default()
                    .w(0.5)
                    .max_iter(10)
                    .tol(0.0)
                    .mode(mode)
                    .precision(Precision::F32)
                    .backend(choice);
                let id = BenchmarkId::new(format!("{mode}/{choice}"), format!("{p}x{k}"));
                g.bench_function(id, |b| {
                    b.iter_custom(|n| {
                        let mut total = Duration::ZERO;
                        for _ in 0..n {
                            let res = nsa_flow(black_box(&y0), Some(&x0), &params).unwrap();
                            total +=
                                Duration::from_secs_f64(res.seconds / res.iterations.max(1) as f64);
                        }
                        total
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, gpu_kernels, gpu_flow);
criterion_main!(benches);
