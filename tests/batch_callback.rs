//! The batch's per-iteration callback: it sees every iteration of every problem under that
//! problem's index, a `Stop` ends only that problem (its result bit-identical to the single
//! solve stopped by the same rule), and a callback that stops everything ends the batch. On
//! the CPU (both precisions) and on a GPU batch.

mod common;

use common::*;
use nsa_flow::batch::{nsa_flow_batch, nsa_flow_batch_with_callback, BatchProblem};
use nsa_flow::{nsa_flow_with_callback, BackendChoice, Control, Params, Precision, StopReason};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

fn problems(count: usize) -> Vec<BatchProblem> {
    (0..count)
        .map(|i| {
            let y0 = randn(33, 3, 70 + i as u64).map(|v: f64| v.abs());
            let x0 = (i % 2 == 1).then(|| randn(33, 3, 90 + i as u64).map(|v: f64| v.abs()));
            BatchProblem {
                y0,
                x0,
                w: 0.2 + 0.15 * i as f64,
            }
        })
        .collect()
}

/// Problem `i` stops after iteration `i + 2`; problem 0 is never stopped.
fn stop_rule(i: usize, iter: usize) -> Control {
    if i > 0 && iter == i + 2 {
        Control::Stop
    } else {
        Control::Continue
    }
}

fn check_stops_one_problem_each(test: &str, params: &Params) {
    let probs = problems(4);
    let seen: Mutex<Vec<Vec<usize>>> = Mutex::new(vec![Vec::new(); probs.len()]);
    let batch = nsa_flow_batch_with_callback(&probs, params, |i, info| {
        seen.lock().unwrap()[i].push(info.iter);
        stop_rule(i, info.iter)
    })
    .unwrap();
    let seen = seen.into_inner().unwrap();
    for (i, (pr, got)) in probs.iter().zip(&batch.results).enumerate() {
        let what = format!("{test} {:?} problem {i}", params.common.precision);
        let alone =
            nsa_flow_with_callback(&pr.y0, pr.x0.as_ref(), &params.clone().w(pr.w), |info| {
                stop_rule(i, info.iter)
            })
            .unwrap();
        assert_eq!(got.y, alone.y, "{what}: not bit-identical");
        assert_eq!(got.iterations, alone.iterations, "{what}");
        assert_eq!(got.stop_reason, alone.stop_reason, "{what}");
        assert_eq!(got.best_total_energy, alone.best_total_energy, "{what}");
        // every iteration of the problem, in order, under its own index (an iteration whose
        // line search stalled made no iterate, so the callback does not see it)
        let seen_last = match got.stop_reason {
            StopReason::LineSearchStalled => got.iterations - 1,
            _ => got.iterations,
        };
        let expect: Vec<usize> = (1..=seen_last).collect();
        assert_eq!(seen[i], expect, "{what}: the callback's iterations");
        if i > 0 {
            assert_eq!(got.stop_reason, StopReason::Callback, "{what}");
            assert_eq!(got.iterations, i + 2, "{what}");
        } else {
            assert_ne!(got.stop_reason, StopReason::Callback, "{what}");
            assert!(
                got.iterations > probs.len() + 1,
                "{what}: {}",
                got.iterations
            );
        }
    }
}

/// A flag raised by the callback itself after a few iterations (as a Ctrl-C would be) stops
/// every problem within one iteration of the flag.
fn check_a_shared_flag_stops_the_batch(test: &str, params: &Params) {
    let probs = problems(5);
    let params = params.clone().tol(0.0).max_iter(100_000);
    let stop = AtomicBool::new(false);
    let calls = AtomicUsize::new(0);
    let batch = nsa_flow_batch_with_callback(&probs, &params, |_, _| {
        if calls.fetch_add(1, Ordering::Relaxed) + 1 >= 20 {
            stop.store(true, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) {
            Control::Stop
        } else {
            Control::Continue
        }
    })
    .unwrap();
    // a callback that answered Continue came before the 20th call: at most 19 of them in
    // all, and then one Stop per problem
    let total: usize = batch.results.iter().map(|r| r.iterations).sum();
    assert!(
        total <= 19 + probs.len(),
        "{test}: {total} iterations in all"
    );
    assert!(
        batch
            .results
            .iter()
            .any(|r| r.stop_reason == StopReason::Callback),
        "{test}: no problem was stopped"
    );
}

#[test]
fn cpu_a_stop_ends_only_its_problem() {
    for precision in [Precision::F64, Precision::F32] {
        let params = Params::default()
            .backend(BackendChoice::Cpu)
            .precision(precision)
            .max_iter(40);
        check_stops_one_problem_each("cpu", &params);
    }
}

#[test]
fn cpu_a_shared_flag_stops_the_batch() {
    let params = Params::default().backend(BackendChoice::Cpu);
    check_a_shared_flag_stops_the_batch("cpu", &params);
}

#[test]
fn cpu_continue_is_the_plain_batch() {
    let probs = problems(3);
    let params = Params::default().backend(BackendChoice::Cpu).max_iter(30);
    let plain = nsa_flow_batch(&probs, &params).unwrap();
    let with = nsa_flow_batch_with_callback(&probs, &params, |_, _| Control::Continue).unwrap();
    for (a, b) in plain.results.iter().zip(&with.results) {
        assert_eq!(a.y, b.y);
        assert_eq!(a.iterations, b.iterations);
    }
}

#[test]
fn gpu_a_stop_ends_only_its_problem() {
    if gpu_or_skip("gpu_a_stop_ends_only_its_problem").is_none() {
        return;
    }
    let params = Params::default()
        .backend(BackendChoice::Gpu)
        .precision(Precision::F32)
        .max_iter(25);
    check_stops_one_problem_each("gpu", &params);
}

#[test]
fn gpu_a_shared_flag_stops_the_batch() {
    if gpu_or_skip("gpu_a_shared_flag_stops_the_batch").is_none() {
        return;
    }
    let params = Params::default()
        .backend(BackendChoice::Gpu)
        .precision(Precision::F32);
    check_a_shared_flag_stops_the_batch("gpu", &params);
}
