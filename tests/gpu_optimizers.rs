//! Every optimizer of the registry as backend operations: the golden trajectories
//! (../shared/golden/optimizers, torch's 8 steps from a fixed start with fixed gradients) on
//! the GPU in f32 and f64 and on the CPU in f32, and LBFGS (with its closure re-evaluating the
//! quadratic on the backend) on both.

mod common;
use common::*;
use nalgebra::DMatrix;
use nsa_flow::backend::{cpu::CpuBackend, Backend, Reduction};
use nsa_flow::optim::{BackendLbfgs, Schedule, OPTIMIZER_NAMES};
use nsa_flow::Precision;
use std::path::PathBuf;

fn golden_dir() -> Option<PathBuf> {
    let root = golden_roots()
        .into_iter()
        .find(|r| r.join("optimizers/index.json").is_file());
    if root.is_none() {
        eprintln!("skipping: no optimizers goldens");
    }
    root.map(|r| r.join("optimizers"))
}

/// The worst relative difference of each optimizer's trajectory on `be`.
fn trajectories<B: Backend>(be: &mut B, dir: &std::path::Path) -> Vec<(&'static str, f64)> {
    let lr = json(dir.join("index.json"))["lr"].as_f64().unwrap();
    let p0 = read(dir.join("param0.npy"));
    let grads = nsa_flow::io::read_batch(dir.join("grads.npy")).unwrap();
    let (p, k) = p0.shape();
    let grads: Vec<B::Mat> = grads.iter().map(|g| be.upload(g).unwrap()).collect();
    let mut out = Vec::new();
    for name in OPTIMIZER_NAMES {
        if name == "padam" || name == "lbfgs" {
            continue;
        }
        let traj = nsa_flow::io::read_batch(dir.join(format!("{name}_traj.npy"))).unwrap();
        let mut sched = Schedule::new(name, lr).unwrap();
        let mut state: Vec<B::Mat> = (0..sched.state_len())
            .map(|_| be.zeros(p, k).unwrap())
            .collect();
        let mut x = be.upload(&p0).unwrap();
        let mut next = be.zeros(p, k).unwrap();
        let mut worst: f64 = 0.0;
        for (t, g) in grads.iter().enumerate() {
            sched.step(be, &x, g, &mut state, lr, &mut next);
            std::mem::swap(&mut x, &mut next);
            worst = worst.max(rel_fro(&be.download(&x).unwrap(), &traj[t]));
        }
        out.push((name, worst));
    }
    out
}

/// LBFGS on 0.5·‖P − target‖², its closure evaluated with backend operations.
fn lbfgs<B: Backend>(be: &mut B, dir: &std::path::Path) -> f64 {
    let lr = json(dir.join("index.json"))["lr"].as_f64().unwrap();
    let p0 = read(dir.join("param0.npy"));
    let target = be.upload(&read(dir.join("lbfgs_target.npy"))).unwrap();
    let traj = nsa_flow::io::read_batch(dir.join("lbfgs_traj.npy")).unwrap();
    let mut opt = BackendLbfgs::new(lr);
    let mut x = be.upload(&p0).unwrap();
    let mut worst: f64 = 0.0;
    for want in &traj {
        opt.step(
            be,
            &mut x,
            p0.nrows(),
            p0.ncols(),
            |be: &mut B, at: &B::Mat, g: &mut B::Mat| {
                be.lincomb(1.0, at, -1.0, &target, g);
                Ok(0.5 * be.reduce(&[Reduction::NormSq(g)])?[0])
            },
        )
        .unwrap();
        worst = worst.max(rel_fro(&be.download(&x).unwrap(), want));
    }
    worst
}

fn check(label: &str, got: &[(&str, f64)], tol: f64) {
    assert_eq!(got.len(), 20);
    for (name, worst) in got {
        eprintln!("{label} {name}: worst relative difference over 8 steps {worst:.2e}");
    }
    for (name, worst) in got {
        assert!(*worst < tol, "{label} {name}: {worst:e} ≥ {tol:e}");
    }
}

#[test]
fn cpu_f64_and_f32_trajectories() {
    let Some(dir) = golden_dir() else { return };
    check(
        "cpu-f64",
        &trajectories(&mut CpuBackend::<f64>::new(), &dir),
        1e-12,
    );
    check(
        "cpu-f32",
        &trajectories(&mut CpuBackend::<f32>::new(), &dir),
        1e-5,
    );
    let w = lbfgs(&mut CpuBackend::<f64>::new(), &dir);
    eprintln!("cpu-f64 lbfgs: {w:.2e}");
    assert!(w < 1e-12, "{w:e}");
    let w = lbfgs(&mut CpuBackend::<f32>::new(), &dir);
    eprintln!("cpu-f32 lbfgs: {w:.2e}");
    assert!(w < 1e-5, "{w:e}");
}

#[test]
fn gpu_f32_trajectories() {
    let Some(dir) = golden_dir() else { return };
    let Some(mut be) = gpu_backend("gpu_f32_trajectories", Precision::F32) else {
        return;
    };
    check("gpu-f32", &trajectories(&mut be, &dir), 1e-5);
    let w = lbfgs(&mut be, &dir);
    eprintln!("gpu-f32 lbfgs: {w:.2e}");
    assert!(w < 1e-5, "{w:e}");
}

#[test]
fn gpu_f64_trajectories() {
    let Some(dir) = golden_dir() else { return };
    let Some(mut be) = gpu_backend("gpu_f64_trajectories", Precision::F64) else {
        return;
    };
    check("gpu-f64", &trajectories(&mut be, &dir), 1e-12);
    let w = lbfgs(&mut be, &dir);
    eprintln!("gpu-f64 lbfgs: {w:.2e}");
    assert!(w < 1e-12, "{w:e}");
}

/// A tall matrix (several row workgroups, so the AdamP/SGDP row partials and the elementwise
/// grid have more than one workgroup) against the CPU in f64.
#[test]
fn gpu_matches_cpu_on_a_tall_matrix() {
    let Some(mut gpu) = gpu_backend("gpu_matches_cpu_on_a_tall_matrix", Precision::F64) else {
        return;
    };
    let mut cpu = CpuBackend::<f64>::new();
    let (p, k) = (700, 3);
    let p0 = randn(p, k, 5);
    let grads: Vec<DMatrix<f64>> = (0..4).map(|s| randn(p, k, 10 + s)).collect();
    // gradients orthogonal to each row of the start: the SGDP/AdamP row projection fires
    let orth: Vec<DMatrix<f64>> = grads
        .iter()
        .map(|g| {
            let mut g = g.clone();
            for i in 0..p {
                let (pr, gr) = (p0.row(i).into_owned(), g.row(i).into_owned());
                let c = gr.dot(&pr) / pr.dot(&pr);
                for j in 0..k {
                    g[(i, j)] -= c * pr[j];
                }
            }
            g
        })
        .collect();
    for name in OPTIMIZER_NAMES {
        if name == "padam" || name == "lbfgs" {
            continue;
        }
        for (what, gs) in [("random", &grads), ("row-orthogonal", &orth)] {
            let want = steps(&mut cpu, name, &p0, gs);
            let got = steps(&mut gpu, name, &p0, gs);
            let d = rel_fro(&got, &want);
            eprintln!("{name}: GPU f64 vs CPU f64 on 700×3, {what} gradients, 4 steps: {d:.2e}");
            assert!(d < 1e-12, "{name} {what}: {d:e}");
        }
    }
}

fn steps<B: Backend>(
    be: &mut B,
    name: &str,
    x0: &DMatrix<f64>,
    gs: &[DMatrix<f64>],
) -> DMatrix<f64> {
    let (p, k) = x0.shape();
    let mut sched = Schedule::new(name, 0.01).unwrap();
    let mut state: Vec<B::Mat> = (0..sched.state_len())
        .map(|_| be.zeros(p, k).unwrap())
        .collect();
    let mut x = be.upload(x0).unwrap();
    let mut next = be.zeros(p, k).unwrap();
    for g in gs {
        let g = be.upload(g).unwrap();
        sched.step(be, &x, &g, &mut state, 0.01, &mut next);
        std::mem::swap(&mut x, &mut next);
    }
    be.download(&x).unwrap()
}
