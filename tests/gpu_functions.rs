//! The single-call functions (retraction, defect, energy) on the GPU agree with the CPU ones,
//! and the command line runs them there.

mod common;

use common::*;
use nalgebra::DMatrix;
use nsa_flow::*;

#[test]
fn single_calls_on_the_gpu_match_the_cpu() {
    for precision in [Precision::F64, Precision::F32] {
        let Some(mut be) = gpu_backend("single_calls_on_the_gpu_match_the_cpu", precision) else {
            return;
        };
        // f32: the products sum ≤ p terms in a different order than the CPU oracle
        let tol = match precision {
            Precision::F64 => 1e-12,
            Precision::F32 => 2e-5,
        };
        for (p, k) in [(1, 1), (63, 3), (65, 17), (1031, 5)] {
            let y = randn(p, k, 11).abs();
            let x = randn(p, k, 12);
            for opts in [
                RetractOptions::reference(Retraction::SoftPolar, 0.5),
                RetractOptions::corrected(Retraction::SoftPolar, 0.8),
                RetractOptions::corrected(Retraction::Polar, 1.0),
            ] {
                if k > p {
                    continue;
                }
                let want = match precision {
                    Precision::F64 => retract_in::<f64>(&y, &opts).unwrap(),
                    Precision::F32 => retract_in::<f32>(&y, &opts).unwrap(),
                };
                let got = retract_on(&mut be, &y, &opts).unwrap();
                let e = rel_fro(&got, &want);
                assert!(e < 10.0 * tol, "{precision} {p}x{k} {opts:?}: {e:e}");
            }
            let d_cpu = invariant_orthogonality_defect(&y);
            let d_gpu = invariant_orthogonality_defect_on(&mut be, &y).unwrap();
            assert!(
                (d_gpu - d_cpu).abs() <= tol * d_cpu.max(1e-12) + 1e-15,
                "{p}x{k}: {d_gpu} vs {d_cpu}"
            );
            for ft in [
                FidelityType::Basic,
                FidelityType::ScaleInvariant,
                FidelityType::Symmetric,
            ] {
                for ot in [OrthType::Basic, OrthType::ScaleInvariant] {
                    let a = compute_energy(&y, &x, ft, ot, 0.7, 1.3).unwrap();
                    let b = compute_energy_on(&mut be, &y, &x, ft, ot, 0.7, 1.3).unwrap();
                    // ‖YᵀY − I‖² comes from ‖S‖² − 2‖Y‖² + k on the device: cancellation
                    // costs up to ε·(‖S‖² + 2‖Y‖² + k) absolutely
                    let n2 = y.norm_squared();
                    let slack = tol * (n2 * n2 + 2.0 * n2 + k as f64);
                    assert!((a.fidelity - b.fidelity).abs() <= tol * a.fidelity.abs() + 1e-300);
                    assert!(
                        (a.orthogonality - b.orthogonality).abs()
                            <= tol * a.orthogonality.abs() + slack,
                        "{ft:?} {ot:?}: {a:?} {b:?}"
                    );
                }
            }
        }
        // bad input is still a typed error on the device path
        let bad = DMatrix::from_element(3, 2, f64::NAN);
        assert!(matches!(
            retract_on(&mut be, &bad, &RetractOptions::default()),
            Err(NsaError::NonFinite { .. })
        ));
    }
}

#[test]
fn cli_retract_and_defect_run_on_the_gpu() {
    if gpu_or_skip("cli_retract_and_defect_run_on_the_gpu").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("y.csv");
    let y = randn(40, 4, 5).abs();
    let mut text = String::new();
    for i in 0..40 {
        let row: Vec<String> = (0..4).map(|j| format!("{:.17e}", y[(i, j)])).collect();
        text.push_str(&row.join(","));
        text.push('\n');
    }
    std::fs::write(&input, text).unwrap();
    let bin = env!("CARGO_BIN_EXE_nsa-flow");
    let out_gpu = dir.path().join("r_gpu.csv");
    let out_cpu = dir.path().join("r_cpu.csv");
    for (backend, out) in [("gpu", &out_gpu), ("cpu", &out_cpu)] {
        let o = std::process::Command::new(bin)
            .args([
                "retract",
                input.to_str().unwrap(),
                "--w",
                "0.5",
                "--backend",
                backend,
                "--out",
            ])
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let a = nsa_flow::io::read_matrix(&out_gpu).unwrap();
    let b = nsa_flow::io::read_matrix(&out_cpu).unwrap();
    assert!(rel_fro(&a, &b) < 1e-12);
    let o = std::process::Command::new(bin)
        .args(["defect", input.to_str().unwrap(), "--backend", "gpu"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let d: f64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let want = invariant_orthogonality_defect(&y);
    assert!((d - want).abs() < 1e-12 * want);
}

/// An application's own device (requested with wgpu's default limits, no f64) runs the flow
/// through `GpuContext::from_device`; f64 is then a typed error, not a crash.
#[test]
fn an_applications_own_device_can_be_shared() {
    if gpu_or_skip("an_applications_own_device_can_be_shared").is_none() {
        return;
    }
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        force_fallback_adapter: false,
        ..Default::default()
    }))
    .expect("an adapter (gpu_or_skip found one)");
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    let ctx = nsa_flow::gpu::GpuContext::from_device(device, queue, &adapter.get_info());
    assert!(!ctx.supports_f64());
    let err = nsa_flow::backend::gpu::GpuBackend::new(ctx.clone(), Precision::F64).unwrap_err();
    assert!(
        matches!(
            err,
            NsaError::Gpu {
                kind: GpuErrorKind::MissingFeature,
                ..
            }
        ),
        "{err}"
    );
    let mut be = nsa_flow::backend::gpu::GpuBackend::new(ctx, Precision::F32).unwrap();
    let x0 = randn(64, 4, 3).abs();
    let params = Params::default().precision(Precision::F32).max_iter(20);
    let gpu = nsa_flow::flow::solve(&mut be, &x0, Some(&x0), &params, &mut |_| Control::Continue)
        .unwrap();
    let cpu = nsa_flow(&x0, Some(&x0), &params.backend(BackendChoice::Cpu)).unwrap();
    assert!(gpu.device.readbacks.unwrap() > 0);
    assert!(
        rel_fro(&gpu.y, &cpu.y) < 1e-3,
        "{}",
        rel_fro(&gpu.y, &cpu.y)
    );
}

/// Every result says where it ran: the backend's name, the adapter (its summary, the one the
/// backend's context holds) and the readbacks, on the GPU and on the CPU.
#[test]
fn results_report_their_device() {
    let Some(ctx) = gpu_or_skip("results_report_their_device") else {
        return;
    };
    let label = ctx.adapter().label();
    let x0 = randn(40, 3, 5).abs();
    let flow = Params::default()
        .precision(Precision::F32)
        .max_iter(5)
        .backend(BackendChoice::Gpu);
    let gpu = nsa_flow(&x0, Some(&x0), &flow).unwrap();
    assert_eq!(gpu.device.name, format!("gpu-f32 ({label})"));
    assert_eq!(gpu.device.adapter.as_ref(), Some(ctx.adapter()));
    assert!(gpu.device.is_gpu() && gpu.device.readbacks.is_some_and(|n| n > 0));
    assert_eq!(gpu.device.to_string(), gpu.device.name);
    let cpu = nsa_flow(&x0, Some(&x0), &flow.clone().backend(BackendChoice::Cpu)).unwrap();
    assert_eq!(cpu.device.name, "cpu-f32");
    assert!(!cpu.device.is_gpu() && cpu.device.readbacks.is_none());

    let ag = nsa_flow::autograd::AutogradParams::default()
        .precision(Precision::F32)
        .max_iter(3)
        .backend(BackendChoice::Gpu);
    let res = nsa_flow::autograd::nsa_flow_autograd(&x0, Some(&x0), &ag).unwrap();
    assert_eq!(res.device.name, format!("gpu-f32 ({label})"));
    assert_eq!(res.device.adapter.as_ref(), Some(ctx.adapter()));
    assert!(res.device.readbacks.is_some_and(|n| n > 0));
    let res =
        nsa_flow::autograd::nsa_flow_autograd(&x0, Some(&x0), &ag.backend(BackendChoice::Cpu))
            .unwrap();
    assert_eq!(
        res.device,
        DeviceInfo::of(&nsa_flow::backend::cpu::CpuBackend::<f32>::new())
    );
}
