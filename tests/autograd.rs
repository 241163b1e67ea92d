//! The exact backward against torch autograd (../shared/golden/autograd_grads), a
//! finite-difference check on random shapes, and whole `nsa_flow_autograd` runs against the
//! reference's traces (../shared/golden/autograd_runs).

mod common;

use common::*;
use nalgebra::DMatrix;
use nsa_flow::autograd::{composite_energy_and_grad, CompositeSpec};
use nsa_flow::{FidelityType, Mode, NonNeg, OrthType, Retraction};

#[test]
fn cpu_f64_gradients_match_torch_autograd() {
    let Some(dir) = golden_dir("autograd_grads") else {
        eprintln!("skipped: no autograd_grads golden data");
        return;
    };
    let index = json(dir.join("index.json"));
    let z = read(dir.join(index["Z"].as_str().unwrap()));
    let x0 = read(dir.join(index["X0"].as_str().unwrap()));
    let cases = index["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 54);
    let mut worst = (0.0f64, String::new());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let spec = golden_composite(case);
        let want = read(dir.join(format!("{name}_grad.npy")));
        let (e, g) = composite_energy_and_grad(&z, &x0, &spec).unwrap();
        let te = case["total"].as_f64().unwrap();
        assert!(
            (e.total - te).abs() <= 1e-12 * te.abs().max(1.0),
            "{name}: energy {} vs {te}",
            e.total
        );
        let r = rel_fro(&g, &want);
        if r > worst.0 {
            worst = (r, name.to_string());
        }
        assert!(r <= 1e-9, "{name}: gradient relative error {r:.3e}");
    }
    println!(
        "worst relative gradient error vs torch: {:.2e} ({})",
        worst.0, worst.1
    );
}

/// Central differences on random shapes, for every branch (both styles, the NS and diag
/// inverse square roots too), in f64.
#[test]
fn gradients_agree_with_finite_differences() {
    use nsa_flow::InvSqrtMethod;
    let shapes = [(1usize, 1usize), (7, 1), (9, 3), (12, 5), (4, 6)];
    let mut count = 0;
    for (si, &(p, k)) in shapes.iter().enumerate() {
        let z = randn(p, k, 100 + si as u64).map(|v| v + 0.3);
        let x0 = randn(p, k, 200 + si as u64).map(|v: f64| v.abs());
        for style in [Mode::Reference, Mode::Corrected] {
            for &retraction in Retraction::ALL {
                for nonneg in [NonNeg::None, NonNeg::Softplus] {
                    for (fidelity_type, orth_type) in [
                        (FidelityType::Basic, OrthType::Basic),
                        (FidelityType::ScaleInvariant, OrthType::ScaleInvariant),
                        (FidelityType::Symmetric, OrthType::ScaleInvariant),
                    ] {
                        for inv in [
                            InvSqrtMethod::Eig,
                            InvSqrtMethod::NewtonSchulz,
                            InvSqrtMethod::Diag,
                        ] {
                            if k > p && style == Mode::Corrected {
                                continue;
                            }
                            let spec = CompositeSpec {
                                w: 0.7,
                                retraction,
                                nonneg,
                                style,
                                fidelity_type,
                                orth_type,
                                fid_eta: 0.9,
                                c_orth: 2.0,
                            };
                            let mut o = spec.retract_options();
                            o.inv_method = inv;
                            let f = |zz: &DMatrix<f64>| -> f64 {
                                let r = nsa_flow::retract(zz, &o).unwrap();
                                let y = nsa_flow::apply_nonnegativity(&r, nonneg);
                                nsa_flow::compute_energy(
                                    &y,
                                    &x0,
                                    fidelity_type,
                                    orth_type,
                                    0.9,
                                    2.0,
                                )
                                .unwrap()
                                .total
                            };
                            let r = nsa_flow::retract(&z, &o).unwrap();
                            let y = nsa_flow::apply_nonnegativity(&r, nonneg);
                            let (_, gy) =
                                nsa_flow::autograd::energy_and_grad(&y, &x0, &spec.energy_spec())
                                    .unwrap();
                            let gy = nsa_flow::autograd::nonneg_backward(&r, nonneg, &gy).unwrap();
                            let g = nsa_flow::autograd::retract_backward(&z, &o, &gy).unwrap();
                            let h = 1e-6;
                            let mut fd = DMatrix::zeros(p, k);
                            for i in 0..p {
                                for j in 0..k {
                                    let mut zp = z.clone();
                                    zp[(i, j)] += h;
                                    let mut zm = z.clone();
                                    zm[(i, j)] -= h;
                                    fd[(i, j)] = (f(&zp) - f(&zm)) / (2.0 * h);
                                }
                            }
                            let err = (&g - &fd).norm() / fd.norm().max(1e-3);
                            // k > p: YᵀY is singular and its εI-lifted null space makes central
                            // differences themselves inaccurate (T has entries ~1e4)
                            let tol = if k > p && retraction == Retraction::SoftPolar {
                                1e-4
                            } else {
                                2e-6
                            };
                            assert!(
                                err < tol,
                                "{p}x{k} {style:?} {retraction:?} {nonneg:?} {fidelity_type:?}/{orth_type:?} {inv:?}: FD relative error {err:.2e}\n{g}\n{fd}"
                            );
                            count += 1;
                        }
                    }
                }
            }
        }
    }
    println!("{count} finite-difference checks");
}

#[test]
fn reference_runs_reproduce_the_traces() {
    let Some(dir) = golden_dir("autograd_runs") else {
        eprintln!("skipped: no autograd_runs golden data");
        return;
    };
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let case = entry.unwrap().path();
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let out = json(case.join("outputs.json"));
        let params = golden_autograd_params(&out, nsa_flow::BackendChoice::Cpu);
        let y0 = read(case.join("Y0.npy"));
        let x0 = read(case.join("X0.npy"));
        let res = nsa_flow::autograd::nsa_flow_autograd(&y0, Some(&x0), &params).unwrap();
        let (_, rows) = csv_rows(case.join("traces.csv"));
        assert_eq!(res.traces.len(), rows.len(), "{name}: trace rows");
        let mut worst = 0.0f64;
        for (t, r) in res.traces.iter().zip(&rows) {
            assert_eq!(t.iter, r[0].parse::<usize>().unwrap());
            for (got, col) in [(t.fidelity, 2), (t.orthogonality, 3), (t.total_energy, 4)] {
                let want: f64 = r[col].parse().unwrap();
                let rel = (got - want).abs() / want.abs().max(1e-300);
                let rel = if want == 0.0 { got.abs() } else { rel };
                worst = worst.max(rel);
                assert!(
                    rel <= 1e-8,
                    "{name} iter {}: column {col}: {got} vs {want} (rel {rel:.2e})",
                    t.iter
                );
            }
        }
        let want_y = read(case.join("Y_out.npy"));
        let ry = rel_fro(&res.y, &want_y);
        assert!(ry <= 1e-8, "{name}: Y relative error {ry:.2e}");
        assert_eq!(
            res.best_iteration as f64,
            out["best_Y_iteration"].as_f64().unwrap()
        );
        let be = out["best_total_energy"].as_f64().unwrap();
        assert!((res.best_total_energy - be).abs() <= 1e-8 * be.abs());
        assert_eq!(
            res.learning_rate,
            out["settings"]["learning_rate"].as_f64().unwrap()
        );
        println!(
            "{name}: {} rows, worst trace relative error {worst:.2e}, Y {ry:.2e}",
            rows.len()
        );
        n += 1;
    }
    assert!(n >= 3);
}

#[test]
fn every_registry_optimizer_runs_in_both_modes() {
    let y0 = randn(25, 3, 5).map(|v: f64| v.abs());
    let x0 = randn(25, 3, 6).map(|v: f64| v.abs());
    for &name in nsa_flow::optimizers() {
        for mode in [Mode::Reference, Mode::Corrected] {
            let kind = match name.parse::<nsa_flow::OptimizerKind>() {
                Ok(kind) => kind,
                Err(e) => {
                    assert_eq!(name, "padam", "{e}");
                    assert!(e.to_string().contains("padam"), "{e}");
                    continue;
                }
            };
            let params = nsa_flow::autograd::AutogradParams::default()
                .optimizer(kind)
                .mode(mode)
                .learning_rate(1e-2)
                .max_iter(12)
                .backend(nsa_flow::BackendChoice::Cpu);
            let res = nsa_flow::autograd::nsa_flow_autograd(&y0, Some(&x0), &params);
            let res = res.unwrap_or_else(|e| panic!("{name} {mode:?}: {e}"));
            assert!(res.best_total_energy.is_finite(), "{name} {mode:?}");
            assert!(res.y.iter().all(|&v| v >= 0.0));
            assert!(
                res.best_total_energy <= res.traces[0].total_energy,
                "{name} {mode:?}"
            );
            if name == "lbfgs" {
                assert!(
                    res.gradient_evaluations > res.iterations,
                    "lbfgs re-evaluates through its closure"
                );
            }
        }
    }
    let bad =
        nsa_flow::autograd::AutogradParams::default().optimizer(nsa_flow::OptimizerKind::Fast);
    assert!(
        nsa_flow::autograd::nsa_flow_autograd(&y0, Some(&x0), &bad).is_err(),
        "fast is not a registry optimizer"
    );
}

#[test]
fn bad_input_is_a_typed_error() {
    use nsa_flow::autograd::{nsa_flow_autograd, retract_backward, AutogradParams};
    use nsa_flow::NsaError;
    let y = randn(10, 3, 1);
    let x = randn(10, 3, 2).map(|v: f64| v.abs());
    let ok = AutogradParams::default()
        .backend(nsa_flow::BackendChoice::Cpu)
        .max_iter(3);
    let run =
        |y: &DMatrix<f64>, x: Option<&DMatrix<f64>>, p: &AutogradParams| nsa_flow_autograd(y, x, p);
    let mut nan = y.clone();
    nan[(2, 1)] = f64::NAN;
    assert!(matches!(
        run(&nan, Some(&x), &ok),
        Err(NsaError::NonFinite { .. })
    ));
    assert!(matches!(
        run(&y, Some(&randn(9, 3, 3)), &ok),
        Err(NsaError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        run(&DMatrix::zeros(0, 3), None, &ok),
        Err(NsaError::Empty { .. })
    ));
    for bad in [
        ok.clone().w(1.5),
        ok.clone().w(f64::NAN),
        ok.clone().max_iter(0),
        ok.clone().aggression(-0.1),
        ok.clone().learning_rate(0.0),
        ok.clone().learning_rate(f64::INFINITY),
        ok.clone().tol(-1.0),
        ok.clone().record_every(0),
        ok.clone().window_size(0),
        ok.clone().optimizer(nsa_flow::OptimizerKind::Fast),
        ok.clone().optimizer(nsa_flow::OptimizerKind::Torch("nope")),
        ok.clone()
            .optimizer(nsa_flow::OptimizerKind::Torch("padam")),
        ok.clone().gpu_adapter("x"),
    ] {
        assert!(run(&y, Some(&x), &bad).is_err(), "{bad:?} accepted");
    }
    // names are parsed into typed values; an unknown one says what is accepted
    match "nope".parse::<nsa_flow::LrChoice>() {
        Err(NsaError::UnknownName { expected, .. }) => {
            assert!(expected.starts_with("auto, armijo"), "{expected}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        "auto".parse::<nsa_flow::LrChoice>().unwrap(),
        nsa_flow::LrChoice::Auto
    );
    assert_eq!(
        "grid".parse::<nsa_flow::LrChoice>().unwrap(),
        nsa_flow::LrChoice::Strategy(nsa_flow::LrStrategy::Grid)
    );
    // k > p: the corrected objective has no attainable optimum; the reference runs it
    let wide = randn(2, 4, 4);
    assert!(matches!(
        run(&wide, None, &ok),
        Err(NsaError::KGreaterThanP { .. })
    ));
    assert!(run(&wide, None, &ok.clone().mode(Mode::Reference)).is_ok());
    // the pieces check their inputs too
    let o = nsa_flow::RetractOptions::reference(Retraction::SoftPolar, 0.5);
    assert!(retract_backward(&y, &o, &randn(10, 2, 5)).is_err());
    assert!(retract_backward(&nan, &o, &y).is_err());
    let spec = nsa_flow::autograd::EnergySpec {
        fidelity_type: FidelityType::Basic,
        orth_type: OrthType::Basic,
        fid_eta: f64::NAN,
        c_orth: 1.0,
    };
    assert!(nsa_flow::autograd::energy_and_grad(&y, &x, &spec).is_err());
    // a zero start is refused, as `nsa_flow` refuses it (FUZZ-FINDINGS D11)
    assert!(matches!(
        run(&DMatrix::zeros(10, 3), Some(&x), &ok),
        Err(nsa_flow::NsaError::ZeroMatrix { .. })
    ));
}
