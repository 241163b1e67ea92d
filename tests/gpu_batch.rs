//! The GPU batch (the batch as a dispatch dimension): each problem's result is bit-identical
//! to solving it alone on the same adapter, and the whole batch takes one readback per round
//! (so exactly as many readbacks as its most demanding problem takes alone).

mod common;

use common::*;
use nsa_flow::batch::{nsa_flow_batch, BatchProblem};
use nsa_flow::{nsa_flow, BackendChoice, Mode, Params, Precision};

fn problems(p: usize, k: usize, count: usize, seed: u64) -> Vec<BatchProblem> {
    (0..count)
        .map(|i| {
            let mut y0 = randn(p, k, seed + i as u64);
            if y0.iter().all(|&v| v <= 0.0) {
                // a start the non-negativity projection would zero is an error, not a test
                y0 = y0.abs();
            }
            let x0 = (i % 3 != 0).then(|| randn(p, k, seed + 100 + i as u64).map(|v: f64| v.abs()));
            BatchProblem {
                y0,
                x0,
                w: 0.05 + 0.9 * i as f64 / count.max(2) as f64,
            }
        })
        .collect()
}

/// Solves `probs` as a GPU batch and each alone on the GPU; every field that says what was
/// computed must be equal bit for bit. Returns (rounds of the batch, most readbacks alone).
fn check(test: &str, probs: &[BatchProblem], params: &Params) -> Option<(u64, u64)> {
    let ctx = gpu_or_skip(test)?;
    if params.common.precision == Precision::F64 && !ctx.supports_f64() {
        assert!(
            std::env::var("NSA_FLOW_REQUIRE_GPU").map_or(true, |v| v != "1"),
            "{test}: NSA_FLOW_REQUIRE_GPU=1 but the adapter has no SHADER_F64"
        );
        eprintln!("skipping {test} (f64): no SHADER_F64");
        return None;
    }
    let batch = nsa_flow_batch(probs, params).unwrap();
    assert!(batch.backend.starts_with("gpu"), "{}", batch.backend);
    let mut most = 0;
    for (i, (pr, got)) in probs.iter().zip(&batch.results).enumerate() {
        let alone = nsa_flow(&pr.y0, pr.x0.as_ref(), &params.clone().w(pr.w)).unwrap();
        let what = format!(
            "{test}: {:?} {:?} problem {i} of {} ({}×{}, w = {})",
            params.common.precision,
            params.common.mode,
            probs.len(),
            pr.y0.nrows(),
            pr.y0.ncols(),
            pr.w
        );
        assert_eq!(got.iterations, alone.iterations, "{what}: iterations");
        assert_eq!(
            got.best_iteration, alone.best_iteration,
            "{what}: best iteration"
        );
        assert_eq!(got.stop_reason, alone.stop_reason, "{what}: stop reason");
        assert_eq!(
            got.best_total_energy.map(f64::to_bits),
            alone.best_total_energy.map(f64::to_bits),
            "{what}: best energy"
        );
        assert_eq!(got.y, alone.y, "{what}: Y is not bit-identical");
        assert_eq!(
            got.device.readbacks, alone.device.readbacks,
            "{what}: readbacks"
        );
        most = most.max(alone.device.readbacks.unwrap_or(0));
    }
    Some((batch.rounds.expect("a GPU batch counts its rounds"), most))
}

#[test]
fn each_problem_equals_its_solve_alone_in_both_modes_and_precisions() {
    let probs = problems(40, 4, 7, 10);
    for precision in [Precision::F32, Precision::F64] {
        for mode in [Mode::Reference, Mode::Corrected] {
            let params = Params::default()
                .backend(BackendChoice::Gpu)
                .precision(precision)
                .mode(mode)
                .max_iter(40);
            let test = "gpu batch both modes";
            if let Some((rounds, most)) = check(test, &probs, &params) {
                // one readback per round serves every problem still running
                assert_eq!(
                    rounds, most,
                    "{precision:?} {mode:?}: rounds vs readbacks alone"
                );
            }
        }
    }
}

#[test]
fn awkward_shapes() {
    for (p, k) in [(1, 1), (63, 3), (65, 17), (9, 1), (30, 3)] {
        let probs = problems(p, k, 4, 50 + p as u64);
        for mode in [Mode::Reference, Mode::Corrected] {
            let params = Params::default()
                .backend(BackendChoice::Gpu)
                .precision(Precision::F32)
                .mode(mode)
                .max_iter(25);
            check(&format!("gpu batch {p}×{k}"), &probs, &params);
        }
    }
}

/// k > 64: the Newton–Schulz steps are indirect launches whose sizes each problem's device
/// state decides, launched problem by problem inside the shared rounds.
#[test]
fn wide_problems_use_per_problem_indirect_launches() {
    let probs = problems(90, 70, 3, 7);
    let params = Params::default()
        .backend(BackendChoice::Gpu)
        .precision(Precision::F32)
        .max_iter(6);
    check("gpu batch k = 70", &probs, &params);
}

/// Optimizers keep state on the device (copies, momentum buffers, SGDP's projection).
#[test]
fn optimizers_with_state() {
    let probs = problems(33, 5, 5, 70);
    for optimizer in ["sgdp", "adam", "asgd"] {
        for mode in [Mode::Reference, Mode::Corrected] {
            let params = Params::default()
                .backend(BackendChoice::Gpu)
                .precision(Precision::F32)
                .mode(mode)
                .optimizer(optimizer.parse().unwrap())
                .max_iter(20);
            check(&format!("gpu batch {optimizer}"), &probs, &params);
        }
    }
}

/// A batch of one is the solve alone.
#[test]
fn batch_of_one() {
    let probs = problems(20, 3, 1, 3);
    let params = Params::default()
        .backend(BackendChoice::Gpu)
        .precision(Precision::F32);
    check("gpu batch of one", &probs, &params);
}

/// Problems that take the same path share every launch: B identical problems take exactly the
/// launches and rounds of one.
#[test]
fn identical_problems_share_every_launch() {
    if gpu_or_skip("gpu batch launches").is_none() {
        return;
    }
    let one = problems(50, 4, 1, 90);
    let many: Vec<BatchProblem> = (0..9).map(|_| one[0].clone()).collect();
    for mode in [Mode::Reference, Mode::Corrected] {
        let params = Params::default()
            .backend(BackendChoice::Gpu)
            .precision(Precision::F32)
            .mode(mode)
            .max_iter(30);
        let a = nsa_flow_batch(&one, &params).unwrap();
        let b = nsa_flow_batch(&many, &params).unwrap();
        assert_eq!(b.rounds, a.rounds, "{mode:?}: rounds");
        assert_eq!(b.launches, a.launches, "{mode:?}: launches");
        assert!(a.launches.unwrap() > 0);
        for r in &b.results {
            assert_eq!(r.y, a.results[0].y);
        }
    }
}
