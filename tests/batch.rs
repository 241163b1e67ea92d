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
            let params = Params::default()
                .backend(BackendChoice::Cpu)
                .precision(precision)
                .mode(mode)
                .max_iter(60);
            let batch = nsa_flow_batch(&probs, &params).unwrap();
            assert_eq!(batch.results.len(), probs.len());
            for (i, (pr, got)) in probs.iter().zip(&batch.results).enumerate() {
                let alone = nsa_flow(&pr.y0, pr.x0.as_ref(), &params.clone().w(pr.w)).unwrap();
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
    let params = Params::default().backend(BackendChoice::Cpu);
    let ws = [0.1, 0.5, 0.9];
    let res = sweep_w(&y0, Some(&y0), &ws, &params).unwrap();
    for (w, r) in ws.iter().zip(&res.results) {
        let alone = nsa_flow(&y0, Some(&y0), &params.clone().w(*w)).unwrap();
        assert_eq!(r.y, alone.y);
    }
    for bad in [&[][..], &[0.5, 0.5][..], &[1.5][..], &[f64::NAN][..]] {
        assert!(sweep_w(&y0, Some(&y0), bad, &params).is_err(), "{bad:?}");
    }
}

#[test]
fn bad_problems_are_typed_errors_naming_the_problem() {
    let params = Params::default().backend(BackendChoice::Cpu);
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

#[test]
fn cli_batch_equals_run_per_problem() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let probs = problems();
    let y0s: Vec<_> = probs.iter().map(|p| p.y0.clone()).collect();
    let x0s: Vec<_> = probs.iter().map(|p| p.y0.map(|v: f64| v.abs())).collect();
    let (y0p, x0p, out, summary) = (
        dir.path().join("Y0s.npy"),
        dir.path().join("X0s.npy"),
        dir.path().join("Ys.npy"),
        dir.path().join("s.json"),
    );
    nsa_flow::io::write_batch(&y0p, &y0s, nsa_flow::io::NpyDtype::F64).unwrap();
    nsa_flow::io::write_batch(&x0p, &x0s, nsa_flow::io::NpyDtype::F64).unwrap();
    let ws: Vec<String> = probs.iter().map(|p| p.w.to_string()).collect();
    let st = Command::new(env!("CARGO_BIN_EXE_nsa-flow"))
        .args(["batch", "--backend", "cpu", "--quiet", "--y0"])
        .arg(&y0p)
        .arg("--x0")
        .arg(&x0p)
        .args(["--ws", &ws.join(",")])
        .arg("--out")
        .arg(&out)
        .arg("--summary")
        .arg(&summary)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let ys = nsa_flow::io::read_batch(&out).unwrap();
    let s = json(&summary);
    assert_eq!(s["problems"].as_array().unwrap().len(), probs.len());
    for (i, p) in probs.iter().enumerate() {
        let params = Params::default().backend(BackendChoice::Cpu).w(p.w);
        let alone = nsa_flow(&p.y0, Some(&x0s[i]), &params).unwrap();
        assert_eq!(ys[i], alone.y, "problem {i}");
        assert_eq!(s["problems"][i]["iterations"], alone.iterations);
    }
    // a wrong number of weights writes nothing
    let bad = Command::new(env!("CARGO_BIN_EXE_nsa-flow"))
        .args(["batch", "--backend", "cpu", "--y0"])
        .arg(&y0p)
        .args(["--ws", "0.1,0.2"])
        .arg("--out")
        .arg(dir.path().join("bad.npy"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(!dir.path().join("bad.npy").exists());
}
