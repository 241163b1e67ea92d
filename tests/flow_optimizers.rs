//! `nsa_flow` with every optimizer of the registry: both modes on the CPU, the reference's
//! one-step defect (Q3), a few names on the GPU against the CPU in f64, and the CLI listing.

mod common;
use common::*;
use nsa_flow::backend::cpu::CpuBackend;
use nsa_flow::flow::solve;
use nsa_flow::{
    nsa_flow, BackendChoice, Control, LearningRate, Mode, NonNeg, OptimizerKind, Params, Precision,
};

fn params(name: &str, mode: Mode) -> Params {
    Params::default()
        .w(0.5)
        .max_iter(15)
        .mode(mode)
        .optimizer(name.parse().unwrap())
        .backend(BackendChoice::Cpu)
        .nonneg(NonNeg::Hard)
}

#[test]
fn every_name_runs_in_both_modes() {
    let y0 = randn(40, 4, 1).map(f64::abs);
    let x0 = randn(40, 4, 2).map(f64::abs);
    assert_eq!(OptimizerKind::NAMES.len(), 22);
    for name in OptimizerKind::NAMES {
        for mode in [Mode::Reference, Mode::Corrected] {
            let res = nsa_flow(&y0, Some(&x0), &params(name, mode))
                .unwrap_or_else(|e| panic!("{name} {mode:?}: {e}"));
            let e = res.best_total_energy.expect("an energy");
            assert!(e.is_finite(), "{name} {mode:?}: {e}");
            assert!(
                res.y.iter().all(|v| v.is_finite() && *v >= 0.0),
                "{name} {mode:?}"
            );
            if mode == Mode::Corrected {
                let first = res.traces.first().unwrap().total_energy;
                let last = res.traces.last().unwrap().total_energy;
                assert!(last <= first, "{name}: {first} -> {last}");
            }
            assert_eq!(res.y.shape(), (40, 4));
        }
    }
    let e = nsa_flow(
        &y0,
        Some(&x0),
        &params("fast", Mode::Corrected).optimizer(OptimizerKind::Torch("bogus")),
    )
    .unwrap_err();
    assert!(e.to_string().contains("adabound"), "{e}");
}

/// Reference mode steps a registry optimizer once (iteration 1) and then only retracts
/// (Q3): sgd (momentum, whose first step is p − lr·g), lars and pid take the same first step,
/// so whole runs agree exactly, and differ from "fast", which keeps stepping.
#[test]
fn reference_mode_steps_the_optimizer_once() {
    let y0 = randn(30, 3, 3).map(f64::abs);
    let x0 = randn(30, 3, 4).map(f64::abs);
    let run = |name: &str| {
        let p = params(name, Mode::Reference)
            .max_iter(12)
            .learning_rate(LearningRate::Value(0.05));
        nsa_flow(&y0, Some(&x0), &p).unwrap()
    };
    let sgd = run("sgd");
    for name in ["lars", "pid"] {
        let other = run(name);
        assert_eq!(other.y, sgd.y, "{name}");
        assert_eq!(other.traces.len(), sgd.traces.len());
    }
    let fast = run("fast");
    assert_ne!(fast.y, sgd.y);
    // and a stateful optimizer's later iterations do not depend on its state either: adam's
    // run is the run of its first step followed by retractions, as is any other's
    let adam = run("adam");
    assert_ne!(adam.y, sgd.y);
}

/// Corrected mode keeps the optimizer state across iterations: a momentum optimizer's run
/// differs from the plain one's.
#[test]
fn corrected_mode_keeps_state() {
    let y0 = randn(30, 3, 5).map(f64::abs);
    let x0 = randn(30, 3, 6).map(f64::abs);
    let run = |name: &str| nsa_flow(&y0, Some(&x0), &params(name, Mode::Corrected)).unwrap();
    let (lars, sgd) = (run("lars"), run("sgd"));
    assert_ne!(lars.y, sgd.y);
}

#[test]
fn gpu_agrees_with_cpu_in_f64() {
    let Some(mut gpu) = gpu_backend("gpu_agrees_with_cpu_in_f64", Precision::F64) else {
        return;
    };
    let y0 = randn(50, 3, 7).map(f64::abs);
    let x0 = randn(50, 3, 8).map(f64::abs);
    for name in ["adam", "rprop", "adamp", "lbfgs", "lookahead"] {
        for mode in [Mode::Reference, Mode::Corrected] {
            let p = params(name, mode).max_iter(8).precision(Precision::F64);
            let want = solve(
                &mut CpuBackend::<f64>::new(),
                &y0,
                Some(&x0),
                &p,
                &mut |_| Control::Continue,
            )
            .unwrap();
            let got = solve(&mut gpu, &y0, Some(&x0), &p, &mut |_| Control::Continue).unwrap();
            let d = rel_fro(&got.y, &want.y);
            eprintln!("{name} {mode:?}: GPU f64 vs CPU f64 {d:.2e}");
            assert!(d < 1e-10, "{name} {mode:?}: {d:e}");
            assert_eq!(got.iterations, want.iterations, "{name} {mode:?}");
        }
    }
}

#[test]
fn cli_lists_the_registry() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nsa-flow"))
        .arg("optimizers")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = text.lines().collect();
    assert_eq!(names, nsa_flow::optimizers());
    assert_eq!(names.len(), 22);
}
