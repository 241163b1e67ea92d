//! Batched solves: each problem's result is bit-identical to solving it alone on the CPU, in
//! both precisions and both modes; every problem is checked before any work.

mod common;

use common::*;
use nsa_flow::batch::{nsa_flow_batch, sweep_w, BatchProblem};
use nsa_flow::{nsa_flow, BackendChoice, Mode, NsaError, Params, Precision};

fn problems() -> Vec<BatchProblem> {
    (0..7)
        .map(|i| {
            let y0 = randn(40, 4, 10 + i as u64);
            let x0 = (i % 3 != 0).then(|| randn(40, 4, 30 + i as u64).map(|v: f64| v.abs()));
            BatchProblem {
                y0,
                x0,
                w: 0.1 + 0.12 * i as f64,
            }
        })
        .collect()
}

#[test]
fn each_result_equals_its_solve_alone() {
    let probs = problems();
    for precision in [Precision::F64, Precision::F32] {
        for mode in [Mode::Reference, Mode::Corrected] {
            let params = Params {
                backend: BackendChoice::Cpu,
                precision,
                mode,
                max_iter: 60,
                ..Params::default()
            };
            let batch = nsa_flow_batch(&probs, &params).unwrap();
            assert_eq!(batch.results.len(), probs.len());
            for (i, (pr, got)) in probs.iter().zip(&batch.results).enumerate() {
                let alone = nsa_flow(
                    &pr.y0,
                    pr.x0.as_ref(),
                    &Params {
                        w: pr.w,
                        ..params.clone()
                    },
                )
                .unwrap();
                assert_eq!(
                    got.y, alone.y,
                    "{precision:?} {mode:?} problem {i}: not bit-identical"
                );
                assert_eq!(got.iterations, alone.iterations);
                assert_eq!(got.best_total_energy, alone.best_total_energy);
                assert_eq!(got.stop_reason, alone.stop_reason);
            }
        }
    }
}

#[test]
fn sweep_w_is_the_batch_of_one_problem() {
    let y0 = randn(30, 3, 1).map(|v: f64| v.abs());
    let params = Params {
        backend: BackendChoice::Cpu,
        ..Params::default()
    };
    let ws = [0.1, 0.5, 0.9];
    let res = sweep_w(&y0, Some(&y0), &ws, &params).unwrap();
    for (w, r) in ws.iter().zip(&res.results) {
        let alone = nsa_flow(
            &y0,
            Some(&y0),
            &Params {
                w: *w,
                ..params.clone()
            },
        )
        .unwrap();
        assert_eq!(r.y, alone.y);
    }
    for bad in [&[][..], &[0.5, 0.5][..], &[1.5][..], &[f64::NAN][..]] {
        assert!(sweep_w(&y0, Some(&y0), bad, &params).is_err(), "{bad:?}");
    }
}

#[test]
fn bad_problems_are_typed_errors_naming_the_problem() {
    let params = Params {
        backend: BackendChoice::Cpu,
        ..Params::default()
    };
    assert!(matches!(
        nsa_flow_batch(&[], &params),
        Err(NsaError::InvalidParameter { .. })
    ));
    let mut probs = problems();
    probs[3].y0 = randn(41, 4, 1);
    match nsa_flow_batch(&probs, &params) {
        Err(NsaError::InBatch { index: 3, source }) => {
            assert!(matches!(*source, NsaError::ShapeMismatch { .. }))
        }
        other => panic!("{other:?}"),
    }
    let mut probs = problems();
    probs[5].w = 1.2;
    assert!(matches!(
        nsa_flow_batch(&probs, &params),
        Err(NsaError::InBatch { index: 5, .. })
    ));
    let mut probs = problems();
    probs[1].x0.as_mut().unwrap()[(0, 0)] = f64::INFINITY;
    assert!(matches!(
        nsa_flow_batch(&probs, &params),
        Err(NsaError::InBatch { index: 1, .. })
    ));
}
