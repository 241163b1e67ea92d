mod common;

// The data fit's GPU backend (the solvers of nsa_flow 3.5, `fit::gpu`): the dense × skinny
// kernels against the f64 host product on awkward shapes, with a rounding bound derived from
// the precision and the reduction length; the Gram operator on the device against the CPU
// operator; whole data and signed fits on the device against the CPU fit; bad input and the
// backend/precision rules.
//
// Tests that need an adapter skip with a printed reason when there is none
// (`common::gpu_or_skip`); with `NSA_FLOW_REQUIRE_GPU=1` they fail instead. Shapes are small:
// a software adapter (lavapipe) is slow.

use common::*;
use nalgebra::DMatrix;
use nsa_flow::fit::gpu::{skinny_product, GpuGramOperator, SkinnyPlan};
use nsa_flow::fit::{self, FitParams, GramOperator};
use nsa_flow::{BackendChoice, NsaError, Precision};
use std::sync::Arc;

/// The precisions the adapter computes in (f64 only with SHADER_F64; under
/// NSA_FLOW_REQUIRE_GPU=1 its absence is a failure, lavapipe has it).
fn precisions(test: &str, ctx: &nsa_flow::gpu::GpuContext) -> Vec<Precision> {
    if ctx.supports_f64() {
        return vec![Precision::F32, Precision::F64];
    }
    if std::env::var("NSA_FLOW_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("{test}: NSA_FLOW_REQUIRE_GPU=1 but the adapter has no SHADER_F64");
    }
    eprintln!("{test}: f64 skipped, the adapter has no SHADER_F64");
    vec![Precision::F32]
}

fn unit(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => f32::EPSILON as f64 / 2.0,
        Precision::F64 => f64::EPSILON / 2.0,
    }
}

/// Checks `got` against the exact product entry by entry: rounding the inputs costs 2u per
/// term, a sum of `c` terms in any fixed order at most (c − 1)u, so
/// |got − AB| ≤ (c + 2)·u·(|A||B|) to first order (one more u of slack).
fn assert_within_rounding(
    a: &DMatrix<f64>,
    b: &DMatrix<f64>,
    got: &DMatrix<f64>,
    u: f64,
    what: &str,
) {
    let exact = a * b;
    let bound = a.abs() * b.abs() * ((a.ncols() + 3) as f64 * u);
    assert_eq!(got.shape(), exact.shape(), "{what}");
    for j in 0..exact.ncols() {
        for i in 0..exact.nrows() {
            let err = (got[(i, j)] - exact[(i, j)]).abs();
            assert!(
                err <= bound[(i, j)] + f64::MIN_POSITIVE,
                "{what}: entry ({i},{j}) off by {err:.3e}, bound {:.3e}",
                bound[(i, j)]
            );
        }
    }
}

#[test]
fn skinny_product_matches_the_host_on_awkward_shapes() {
    let Some(ctx) = gpu_or_skip("skinny_product_matches_the_host_on_awkward_shapes") else {
        return;
    };
    for precision in precisions("skinny_product", &ctx) {
        let u = unit(precision);
        let mut seed = 100;
        for &m in &[1usize, 63, 65, 1031] {
            for &c in &[1usize, 63, 65, 1031] {
                for &kb in &[1usize, 3, 17] {
                    seed += 1;
                    let a = randn(m, c, seed);
                    let b = randn(c, kb, seed + 1000);
                    let got = skinny_product(ctx.clone(), &a, &b, precision).unwrap();
                    let what = format!("{precision} {m}×{c} by {c}×{kb}");
                    assert_within_rounding(&a, &b, &got, u, &what);
                }
            }
        }
        // long inner dimensions, cut into many chunks added by the second pass
        for &(m, c, kb) in &[(1usize, 20_000usize, 17usize), (3, 5000, 3), (65, 4099, 9)] {
            let plan = SkinnyPlan::of(m, c, kb).unwrap();
            assert!(plan.chunks > 1, "{plan:?} should be chunked");
            let a = randn(m, c, 7);
            let b = randn(c, kb, 8);
            let got = skinny_product(ctx.clone(), &a, &b, precision).unwrap();
            assert_within_rounding(&a, &b, &got, u, &format!("{precision} chunked {plan:?}"));
        }
    }
}

#[test]
fn skinny_product_is_bit_reproducible() {
    let Some(ctx) = gpu_or_skip("skinny_product_is_bit_reproducible") else {
        return;
    };
    let a = randn(1031, 1031, 1);
    let b = randn(1031, 17, 2);
    for precision in precisions("skinny_product_is_bit_reproducible", &ctx) {
        let first = skinny_product(ctx.clone(), &a, &b, precision).unwrap();
        let second = skinny_product(ctx.clone(), &a, &b, precision).unwrap();
        let bits = |m: &DMatrix<f64>| m.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&first), bits(&second), "{precision}");
    }
}

#[test]
fn skinny_plans_stay_under_the_loop_cap_and_reject_what_cannot_run() {
    for &(m, c, kb) in &[
        (1usize, 1usize, 1usize),
        (1, 1_000_000, 17),
        (1031, 1031, 17),
        (100_000, 100, 64),
        (7, 65_537, 3),
    ] {
        let plan = SkinnyPlan::of(m, c, kb).unwrap();
        assert!(plan.chunk * kb.div_ceil(8) <= 4096, "{plan:?}");
        assert!(
            plan.chunks * plan.chunk >= c && (plan.chunks - 1) * plan.chunk < c,
            "{plan:?}"
        );
    }
    for &(m, c, kb) in &[
        (0usize, 5usize, 3usize),
        (5, 0, 3),
        (5, 5, 0),
        (20_000_000, 10, 3),
    ] {
        match SkinnyPlan::of(m, c, kb) {
            Err(NsaError::Gpu { .. }) => {}
            other => panic!("{m}×{c}×{kb}: expected a limit error, got {other:?}"),
        }
    }
}

#[test]
fn skinny_product_rejects_a_shape_mismatch() {
    let Some(ctx) = gpu_or_skip("skinny_product_rejects_a_shape_mismatch") else {
        return;
    };
    let r = skinny_product(ctx, &randn(5, 4, 1), &randn(3, 2, 2), Precision::F32);
    assert!(matches!(r, Err(NsaError::ShapeMismatch { .. })), "{r:?}");
}

#[test]
fn the_device_gram_operator_matches_the_cpu_operator() {
    let Some(ctx) = gpu_or_skip("the_device_gram_operator_matches_the_cpu_operator") else {
        return;
    };
    let x = randn(65, 33, 3);
    let v = randn(33, 3, 4).abs();
    let dense = GramOperator::Dense(x.transpose() * &x);
    let free = GramOperator::MatrixFree(x.clone());
    for precision in precisions("the device gram operator", &ctx) {
        // S·V sums 65·33 products through S (or X then Xᵀ); VᵀSV 33 more
        let tol = 50.0 * 65.0 * 33.0 * unit(precision);
        for host in [&dense, &free] {
            let g = GpuGramOperator::new(ctx.clone(), host.clone(), 3, precision).unwrap();
            assert_eq!(g.precision(), precision);
            assert!(!g.adapter_name().is_empty());
            let (sv, a) = host.both(&v);
            let (gsv, ga) = g.both(&v);
            let gq = g.quad(&v);
            let what = format!("{precision} matrix_free={}", host.matrix_free());
            assert!(
                rel_fro(&gsv, &sv) <= tol,
                "{what}: S·V {:.3e}",
                rel_fro(&gsv, &sv)
            );
            assert!(
                rel_fro(&ga, &a) <= tol,
                "{what}: VᵀSV {:.3e}",
                rel_fro(&ga, &a)
            );
            assert!(
                rel_fro(&gq, &a) <= tol,
                "{what}: quad {:.3e}",
                rel_fro(&gq, &a)
            );
            assert_eq!(g.evaluations(), 2);
            assert!(g.take_error().is_none());
            // a basis of the wrong shape answers NaN and keeps the typed error for the fit
            let (bad, _) = g.both(&randn(33, 2, 5));
            assert!(bad.iter().all(|x| x.is_nan()));
            assert!(matches!(
                g.take_error(),
                Some(NsaError::ShapeMismatch { .. })
            ));
            assert!(g.take_error().is_none(), "an error is reported once");
        }
    }
}

fn on(backend: BackendChoice, precision: Precision) -> FitParams {
    let mut p = FitParams::default();
    p.backend = backend;
    p.precision = precision;
    p
}

/// Non-negative data with structure: k planted non-negative factors plus noise.
fn data(n: usize, p: usize, k: usize, seed: u64) -> DMatrix<f64> {
    let h = randn(n, k, seed).abs();
    let w = randn(k, p, seed + 1).abs();
    let mut x = h * w;
    x += randn(n, p, seed + 2).abs() * 0.1;
    x
}

/// f32 products certify no better than ~1e-4: the fidelity gradient is a difference of terms
/// ~1/fidelity larger than itself (measured floors 8.6e-5 dense, 1.7e-4 matrix-free). An f32
/// fit is therefore held to the CPU f64 fit at 3.5's f32 tolerance 1e-4 (energies evaluated
/// in f64 on the host; measured within 1.0e-5 and 4.8e-5): it must certify (stationary, or
/// the numerical floor within 10× of the tolerance) at an energy that close.
const F32_ENERGY: f64 = 1e-4;

fn compare(cpu: &fit::FitResult, gpu: &fit::FitResult, energy_tol: f64, what: &str) {
    assert_eq!(cpu.device.name, "cpu-f64", "{what}");
    assert!(
        !cpu.device.is_gpu() && cpu.device.readbacks.is_none(),
        "{what}"
    );
    assert!(
        gpu.device.name.starts_with("gpu-"),
        "{what}: {}",
        gpu.device
    );
    assert!(gpu.device.is_gpu(), "{what}");
    assert!(gpu.device.readbacks.is_some_and(|n| n > 0), "{what}");
    assert!(
        gpu.converged,
        "{what}: {} {:.3e}",
        gpu.stop_reason, gpu.grad_map
    );
    let slack = if gpu.precision == Precision::F32 {
        10.0
    } else {
        1.0
    };
    assert!(
        gpu.grad_map <= slack * gpu.tol,
        "{what}: certificate {:.3e}",
        gpu.grad_map
    );
    let rel = (gpu.energy - cpu.energy).abs() / cpu.energy.abs();
    assert!(
        rel <= energy_tol,
        "{what}: energy {:.15e} on the GPU, {:.15e} on the CPU ({rel:.2e})",
        gpu.energy,
        cpu.energy
    );
}

fn cpu_at_f32_tol() -> FitParams {
    let mut p = on(BackendChoice::Cpu, Precision::F64);
    p.tol = Some(1e-4);
    p
}

#[test]
fn data_and_signed_fits_on_the_device_match_the_cpu() {
    let Some(ctx) = gpu_or_skip("data_and_signed_fits_on_the_device_match_the_cpu") else {
        return;
    };
    let has_f64 = precisions("data_and_signed_fits", &ctx).contains(&Precision::F64);
    let dense = data(40, 17, 3, 21); // p < n: S = XᵀX on the device
    let wide = data(12, 31, 3, 31); // p > n: X and Xᵀ on the device
    let mut centred = randn(30, 17, 41);
    for j in 0..17 {
        let mean = centred.column(j).mean();
        centred.column_mut(j).add_scalar_mut(-mean);
    }
    for (name, x) in [("dense", &dense), ("matrix-free", &wide)] {
        let cpu = fit::fit_data(x, 3, &on(BackendChoice::Cpu, Precision::F64)).unwrap();
        assert_eq!(cpu.matrix_free, Some(name == "matrix-free"));
        if has_f64 {
            let gpu = fit::fit_data(x, 3, &on(BackendChoice::Gpu, Precision::F64)).unwrap();
            assert_eq!(gpu.precision, Precision::F64);
            // both certify stationarity at 1e-6: their energies agree to its square
            compare(&cpu, &gpu, 1e-9, &format!("data {name} f64"));
        }
        let gpu = fit::fit_data(x, 3, &on(BackendChoice::Gpu, Precision::F32)).unwrap();
        assert_eq!(gpu.precision, Precision::F32);
        assert_eq!(gpu.tol, 1e-4, "f32 defaults to 3.5's f32 tolerance");
        let cpu = fit::fit_data(x, 3, &cpu_at_f32_tol()).unwrap();
        compare(&cpu, &gpu, F32_ENERGY, &format!("data {name} f32"));
    }
    // sparseness re-solves on a fixed support through the same device operator
    let mut sp = on(BackendChoice::Gpu, Precision::F32);
    sp.sparseness = Some(0.5);
    let mut sp_cpu = sp.clone();
    sp_cpu.backend = BackendChoice::Cpu;
    sp_cpu.precision = Precision::F64;
    sp_cpu.tol = Some(1e-4);
    let gpu = fit::fit_data(&dense, 3, &sp).unwrap();
    let cpu = fit::fit_data(&dense, 3, &sp_cpu).unwrap();
    compare(&cpu, &gpu, F32_ENERGY, "data sparseness f32");
    // signed
    let cpu = fit::fit_signed(&centred, 2, &on(BackendChoice::Cpu, Precision::F64)).unwrap();
    if has_f64 {
        let gpu = fit::fit_signed(&centred, 2, &on(BackendChoice::Gpu, Precision::F64)).unwrap();
        compare(&cpu, &gpu, 1e-9, "signed f64");
        assert!(gpu.parts.is_some());
    }
    let gpu = fit::fit_signed(&centred, 2, &on(BackendChoice::Gpu, Precision::F32)).unwrap();
    let cpu = fit::fit_signed(&centred, 2, &cpu_at_f32_tol()).unwrap();
    compare(&cpu, &gpu, F32_ENERGY, "signed f32");
}

#[test]
fn backend_and_precision_rules_are_errors_not_surprises() {
    let x = data(20, 9, 2, 5);
    let invalid = |r: Result<fit::FitResult, NsaError>, name: &str| match r {
        Err(NsaError::InvalidParameter { name: n, .. }) if n == name => {}
        other => panic!("expected an invalid {name}, got {other:?}"),
    };
    // f32 products need a GPU
    invalid(
        fit::fit_data(&x, 2, &on(BackendChoice::Cpu, Precision::F32)),
        "precision",
    );
    invalid(
        fit::fit_signed(&x, 2, &on(BackendChoice::Cpu, Precision::F32)),
        "precision",
    );
    // an adapter named for the CPU
    let mut p = on(BackendChoice::Cpu, Precision::F64);
    p.gpu_adapter = Some("lavapipe".into());
    invalid(fit::fit_data(&x, 2, &p), "gpu_adapter");
    // the anchored mode has no device product
    let target = randn(9, 2, 6).abs();
    invalid(
        fit::fit_anchored(&target, &on(BackendChoice::Gpu, Precision::F64)),
        "backend",
    );
    invalid(
        fit::fit_anchored(&target, &on(BackendChoice::Auto, Precision::F32)),
        "precision",
    );
    // a named adapter that does not exist is an error, never a silent CPU fit
    let mut p = on(BackendChoice::Gpu, Precision::F32);
    p.gpu_adapter = Some("no adapter has this name".into());
    match fit::fit_data(&x, 2, &p) {
        Err(NsaError::UnknownName {
            kind: "GPU adapter",
            ..
        }) => {}
        other => panic!("expected an unknown adapter, got {other:?}"),
    }
    // auto keeps small f64 products on the CPU, bit-identical to backend = cpu
    let auto = fit::fit_data(&x, 2, &FitParams::default()).unwrap();
    let cpu = fit::fit_data(&x, 2, &on(BackendChoice::Cpu, Precision::F64)).unwrap();
    assert!(!auto.device.is_gpu(), "{}", auto.device);
    assert_eq!(auto.energy.to_bits(), cpu.energy.to_bits());
    assert_eq!(auto.y, cpu.y);
}

#[test]
fn a_gpu_fit_is_bit_reproducible() {
    if gpu_or_skip("a_gpu_fit_is_bit_reproducible").is_none() {
        return;
    }
    let x = data(30, 13, 2, 9);
    let p = on(BackendChoice::Gpu, Precision::F32);
    let a = fit::fit_data(&x, 2, &p).unwrap();
    let b = fit::fit_data(&x, 2, &p).unwrap();
    assert_eq!(a.energy.to_bits(), b.energy.to_bits());
    assert_eq!(a.y, b.y);
    assert_eq!(a.n_grad, b.n_grad);
}

#[test]
fn the_cli_fits_on_the_device_and_says_so() {
    if gpu_or_skip("the_cli_fits_on_the_device_and_says_so").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (xp, out, summary) = (
        dir.path().join("X.npy"),
        dir.path().join("V.npy"),
        dir.path().join("s.json"),
    );
    nsa_flow::io::write_matrix(&xp, &data(25, 11, 2, 3), nsa_flow::io::NpyDtype::F64).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nsa-flow"))
        .args(["fit", "--data"])
        .arg(&xp)
        .args([
            "--k",
            "2",
            "--backend",
            "gpu",
            "--precision",
            "f32",
            "--out",
        ])
        .arg(&out)
        .arg("--summary")
        .arg(&summary)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0), "{said}");
    assert!(said.contains("on gpu-f32 ("), "{said}");
    let s = json(&summary);
    assert!(
        s["backend"]
            .as_str()
            .is_some_and(|b| b.starts_with("gpu-f32 (")),
        "{s}"
    );
    assert_eq!(s["precision"], "f32", "{s}");
    assert!(s["adapter"]["name"].is_string(), "{s}");
    assert!(s["readbacks"].as_u64().is_some_and(|n| n > 0), "{s}");
    assert_eq!(s["tol"], 1e-4, "{s}");
    assert_eq!(read(&out).shape(), (11, 2));
    // f32 on the CPU is a usage error that writes nothing
    let out2 = dir.path().join("V2.npy");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nsa-flow"))
        .args(["fit", "--data"])
        .arg(&xp)
        .args([
            "--k",
            "2",
            "--backend",
            "cpu",
            "--precision",
            "f32",
            "--out",
        ])
        .arg(&out2)
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("f32"));
    assert!(!out2.exists());
}

#[test]
fn gpu_operator_is_shared_safely_across_threads() {
    let Some(ctx) = gpu_or_skip("gpu_operator_is_shared_safely_across_threads") else {
        return;
    };
    let x = randn(20, 9, 1);
    let g = Arc::new(
        GpuGramOperator::new(
            ctx,
            GramOperator::Dense(x.transpose() * &x),
            2,
            Precision::F32,
        )
        .unwrap(),
    );
    let v = randn(9, 2, 2);
    let want = g.both(&v).0;
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (g, v) = (g.clone(), v.clone());
            std::thread::spawn(move || g.both(&v).0)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), want);
    }
}
