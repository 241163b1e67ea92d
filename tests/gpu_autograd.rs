//! The autograd backward on the GPU against torch (../shared/golden/autograd_grads) and
//! against the CPU oracle on awkward shapes, and whole `nsa_flow_autograd` runs on the GPU
//! against the CPU. Skips with a printed reason without an adapter (fails under
//! NSA_FLOW_REQUIRE_GPU=1).

mod common;

use common::*;
use nalgebra::DMatrix;
use nsa_flow::autograd::{CompositeSpec, DifferentiableBackend, EnergySpec};
use nsa_flow::backend::{cpu::CpuBackend, Backend, Reduction};
use nsa_flow::{EnergyTerms, FidelityType, Mode, NonNeg, OrthType, Precision, Retraction};

/// `E(nonneg(R(Z)))` and its gradient with respect to Z on any backend, through the
/// backend's own forward and backward operations.
fn composite_on<B: DifferentiableBackend>(
    be: &mut B,
    z: &DMatrix<f64>,
    x0: &DMatrix<f64>,
    spec: &CompositeSpec,
    inv: Option<nsa_flow::InvSqrtMethod>,
) -> (f64, DMatrix<f64>) {
    let (p, k) = z.shape();
    let mut o = spec.retract_options();
    if let Some(m) = inv {
        o.inv_method = m;
    }
    let zb = be.upload(z).unwrap();
    let xb = be.upload(x0).unwrap();
    let mut r = be.zeros(p, k).unwrap();
    be.retract(&zb, &mut r, &o);
    let mut y = be.zeros(p, k).unwrap();
    be.copy(&r, &mut y);
    be.nonneg(&mut y, spec.nonneg);
    let v = be
        .reduce(&[Reduction::EnergyTerms { y: &y, target: &xb }])
        .unwrap();
    let terms = EnergyTerms {
        dist_sq: v[0],
        gram_fro_sq: v[1],
        gram_diag_sq: v[2],
        norm_sq: v[3],
    };
    let es: EnergySpec = spec.energy_spec();
    let x0n = x0.norm_squared();
    let e = es.energy(&terms, x0n, k).total;
    let mut gy = be.zeros(p, k).unwrap();
    be.energy_gradient(&y, &xb, &es, &terms, x0n, &mut gy);
    be.nonneg_backward(&r, spec.nonneg, &mut gy);
    let mut gz = be.zeros(p, k).unwrap();
    be.retract_backward(&zb, &o, &gy, &mut gz);
    (e, be.download(&gz).unwrap())
}

#[test]
fn gpu_gradients_match_torch_autograd() {
    let Some(dir) = golden_dir("autograd_grads") else {
        eprintln!("skipped: no autograd_grads golden data");
        return;
    };
    let index = json(dir.join("index.json"));
    let z = read(dir.join(index["Z"].as_str().unwrap()));
    let x0 = read(dir.join(index["X0"].as_str().unwrap()));
    for (precision, tol) in [(Precision::F64, 1e-8), (Precision::F32, 1e-3)] {
        let Some(mut be) = gpu_backend("gpu_gradients_match_torch_autograd", precision) else {
            return;
        };
        let mut worst = (0.0f64, String::new());
        for case in index["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let want = read(dir.join(format!("{name}_grad.npy")));
            let (e, g) = composite_on(&mut be, &z, &x0, &golden_composite(case), None);
            let te = case["total"].as_f64().unwrap();
            assert!(
                (e - te).abs() <= tol * te.abs(),
                "{precision:?} {name}: energy {e} vs {te}"
            );
            let r = rel_fro(&g, &want);
            if r > worst.0 {
                worst = (r, name.to_string());
            }
            assert!(
                r <= tol,
                "{precision:?} {name}: relative error {r:.3e} > {tol:e}"
            );
        }
        println!(
            "{precision:?}: worst relative gradient error vs torch {:.2e} ({})",
            worst.0, worst.1
        );
    }
}

/// Every branch the GPU differentiates, both styles, against the CPU oracle on awkward
/// shapes; f64 to 1e-9 (well-conditioned random data: the sign iteration and Newton–Schulz
/// converge to working precision), f32 to a tolerance derived from ε·(reduction length).
#[test]
fn gpu_backward_matches_the_cpu_on_awkward_shapes() {
    use nsa_flow::InvSqrtMethod;
    // k = 70 takes the multi-dispatch sign iteration, k ≤ 64 the fused one
    let shapes = [
        (1usize, 1usize),
        (63, 1),
        (65, 3),
        (63, 17),
        (1031, 3),
        (1031, 17),
        (200, 70),
    ];
    for precision in [Precision::F64, Precision::F32] {
        let Some(mut gpu) =
            gpu_backend("gpu_backward_matches_the_cpu_on_awkward_shapes", precision)
        else {
            return;
        };
        let mut worst = 0.0f64;
        for (si, &(p, k)) in shapes.iter().enumerate() {
            let z = randn(p, k, 300 + si as u64).map(|v| v + 0.5);
            let x0 = randn(p, k, 400 + si as u64).map(|v: f64| v.abs());
            let eps = match precision {
                Precision::F64 => f64::EPSILON,
                Precision::F32 => f32::EPSILON as f64,
            };
            let tol = match precision {
                Precision::F64 => 1e-9,
                // reductions of length p·k, Gram condition numbers of a few tens
                Precision::F32 => 200.0 * eps * ((p * k) as f64).sqrt().max(8.0),
            };
            for style in [Mode::Reference, Mode::Corrected] {
                for retraction in Retraction::ALL.iter().copied() {
                    for (nonneg, fidelity_type, orth_type, inv) in [
                        (
                            NonNeg::Hard,
                            FidelityType::ScaleInvariant,
                            OrthType::ScaleInvariant,
                            InvSqrtMethod::Auto,
                        ),
                        (
                            NonNeg::Softplus,
                            FidelityType::Symmetric,
                            OrthType::Basic,
                            InvSqrtMethod::Auto,
                        ),
                        (
                            NonNeg::None,
                            FidelityType::Basic,
                            OrthType::ScaleInvariant,
                            InvSqrtMethod::NewtonSchulz,
                        ),
                        (
                            NonNeg::Hard,
                            FidelityType::Basic,
                            OrthType::Basic,
                            InvSqrtMethod::Diag,
                        ),
                    ] {
                        let unsupported = (retraction == Retraction::SoftPolar
                            && style == Mode::Reference
                            && inv == InvSqrtMethod::NewtonSchulz)
                            || (retraction != Retraction::None
                                && style == Mode::Corrected
                                && inv == InvSqrtMethod::Diag);
                        if unsupported {
                            continue;
                        }
                        let spec = CompositeSpec {
                            w: 0.6,
                            retraction,
                            nonneg,
                            style,
                            fidelity_type,
                            orth_type,
                            fid_eta: 0.8,
                            c_orth: 1.5,
                        };
                        let mut cpu = match precision {
                            Precision::F64 => None,
                            Precision::F32 => Some(CpuBackend::<f64>::new()),
                        };
                        let (_, want) = match cpu.as_mut() {
                            Some(c) => composite_on(c, &z, &x0, &spec, Some(inv)),
                            None => composite_on(
                                &mut CpuBackend::<f64>::new(),
                                &z,
                                &x0,
                                &spec,
                                Some(inv),
                            ),
                        };
                        let (_, got) = composite_on(&mut gpu, &z, &x0, &spec, Some(inv));
                        let r = rel_fro(&got, &want);
                        worst = worst.max(r);
                        assert!(r <= tol, "{precision:?} {p}x{k} {style:?} {retraction:?} {nonneg:?} {fidelity_type:?}/{orth_type:?} {inv:?}: {r:.3e} > {tol:.1e}");
                    }
                }
            }
        }
        println!("{precision:?}: worst GPU-vs-CPU backward error {worst:.2e}");
    }
}

#[test]
fn unsupported_gpu_backward_branches_are_typed_errors() {
    let Some(mut be) = gpu_backend(
        "unsupported_gpu_backward_branches_are_typed_errors",
        Precision::F32,
    ) else {
        return;
    };
    let z = randn(20, 3, 1);
    let spec = CompositeSpec {
        w: 0.5,
        retraction: Retraction::SoftPolar,
        nonneg: NonNeg::None,
        style: Mode::Reference,
        fidelity_type: FidelityType::Basic,
        orth_type: OrthType::Basic,
        fid_eta: 1.0,
        c_orth: 1.0,
    };
    let mut o = spec.retract_options();
    o.inv_method = nsa_flow::InvSqrtMethod::NewtonSchulz;
    let zb = be.upload(&z).unwrap();
    let mut out = be.zeros(20, 3).unwrap();
    be.retract_backward(&zb, &o, &zb, &mut out);
    let err = be.reduce(&[Reduction::NormSq(&out)]).unwrap_err();
    assert!(err.to_string().contains("backend = cpu"), "{err}");
}

/// Whole runs: the GPU in f64 follows the CPU's trajectory (same optimizer steps), and the
/// golden reference runs are reproduced on the GPU as on the CPU.
#[test]
fn gpu_autograd_runs_agree_with_the_cpu() {
    let Some(ctx) = gpu_or_skip("gpu_autograd_runs_agree_with_the_cpu") else {
        return;
    };
    if !ctx.supports_f64() {
        return;
    }
    let y0 = randn(40, 4, 9).map(|v: f64| v.abs());
    let x0 = randn(40, 4, 10).map(|v: f64| v.abs());
    for mode in [Mode::Reference, Mode::Corrected] {
        for optimizer in ["asgd", "adam", "sgd"] {
            let params = nsa_flow::autograd::AutogradParams::default()
                .mode(mode)
                .optimizer(optimizer.parse().unwrap())
                .learning_rate(1e-2)
                .max_iter(15)
                .tol(0.0)
                .backend(nsa_flow::BackendChoice::Cpu);
            let cpu = nsa_flow::autograd::nsa_flow_autograd(&y0, Some(&x0), &params).unwrap();
            let mut be =
                nsa_flow::backend::gpu::GpuBackend::new(ctx.clone(), Precision::F64).unwrap();
            let gpu =
                nsa_flow::autograd::solve_autograd(&mut be, &y0, Some(&x0), &params, &mut |_| {
                    nsa_flow::Control::Continue
                })
                .unwrap();
            assert_eq!(cpu.iterations, gpu.iterations);
            let r = rel_fro(&gpu.y, &cpu.y);
            assert!(r < 1e-8, "{mode:?} {optimizer}: Y {r:.2e}");
            for (a, b) in cpu.traces.iter().zip(&gpu.traces) {
                assert!((a.total_energy - b.total_energy).abs() <= 1e-8 * a.total_energy.abs());
            }
        }
    }
}

/// The golden reference runs on the GPU in f64: the same traces as the reference to 1e-8.
#[test]
fn gpu_reproduces_the_golden_autograd_runs() {
    let Some(ctx) = gpu_or_skip("gpu_reproduces_the_golden_autograd_runs") else {
        return;
    };
    if !ctx.supports_f64() {
        return;
    }
    let Some(dir) = golden_dir("autograd_runs") else {
        eprintln!("skipped: no autograd_runs golden data");
        return;
    };
    for entry in std::fs::read_dir(&dir).unwrap() {
        let case = entry.unwrap().path();
        let out = json(case.join("outputs.json"));
        let params = golden_autograd_params(&out, nsa_flow::BackendChoice::Auto);
        let y0 = read(case.join("Y0.npy"));
        let x0 = read(case.join("X0.npy"));
        let mut be = nsa_flow::backend::gpu::GpuBackend::new(ctx.clone(), Precision::F64).unwrap();
        let res = nsa_flow::autograd::solve_autograd(&mut be, &y0, Some(&x0), &params, &mut |_| {
            nsa_flow::Control::Continue
        })
        .unwrap();
        let (_, rows) = csv_rows(case.join("traces.csv"));
        assert_eq!(res.traces.len(), rows.len());
        for (t, r) in res.traces.iter().zip(&rows) {
            let want: f64 = r[4].parse().unwrap();
            assert!(
                (t.total_energy - want).abs() <= 1e-8 * want.abs(),
                "{}: iter {} {} vs {want}",
                case.display(),
                t.iter,
                t.total_energy
            );
        }
        assert!(rel_fro(&res.y, &read(case.join("Y_out.npy"))) < 1e-8);
    }
}
