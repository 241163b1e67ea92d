//! Corrected mode: monotone energies, feasibility, a reported certificate, and the w-sweep
//! behaviour on real data.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod common;

use common::*;
use nalgebra::DMatrix;
use nsa_flow::{
    invariant_orthogonality_defect, nsa_flow, nsa_flow_with_callback, Control, NonNeg,
    OptimizerKind, Params, Precision, Retraction, StopReason,
};
use std::path::PathBuf;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs corrected mode, checking from the callback that accepted energies never increase.
fn run_monotone(
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &Params,
) -> nsa_flow::NsaResult {
    let mut energies = Vec::new();
    let res = nsa_flow_with_callback(y0, x0, params, |info| {
        energies.push(info.total_energy);
        Control::Continue
    })
    .unwrap();
    for (i, w) in energies.windows(2).enumerate() {
        assert!(
            w[1] <= w[0],
            "energy increased at iteration {}: {} -> {}",
            i + 2,
            w[0],
            w[1]
        );
    }
    if params.nonneg == NonNeg::Hard {
        assert!(res.y.iter().all(|v| *v >= 0.0), "negative entries in Y");
    }
    assert!(
        res.certificate.value.is_finite(),
        "certificate not reported"
    );
    assert_eq!(
        res.certificate.satisfied,
        res.certificate.value <= params.tol
    );
    if res.stop_reason == StopReason::Certificate {
        assert!(res.certificate.satisfied);
    }
    if let Some(last) = res.traces.last() {
        assert_eq!(res.best_total_energy, Some(last.total_energy));
    }
    res
}

#[test]
fn accepted_energies_never_increase_on_every_golden_input() {
    let mut n = 0;
    for root in golden_roots() {
        for case in std::fs::read_dir(root.join("flow")).unwrap() {
            let case = case.unwrap().path();
            let pj = json(case.join("params.json"));
            let y0 = read(case.join("Y0.npy"));
            let x0 = case
                .join("X0.npy")
                .exists()
                .then(|| read(case.join("X0.npy")));
            if y0.ncols() > y0.nrows() {
                let e = nsa_flow(&y0, x0.as_ref(), &Params::default()).unwrap_err();
                assert!(matches!(e, nsa_flow::NsaError::KGreaterThanP { .. }));
                continue;
            }
            for retraction in [Retraction::SoftPolar, Retraction::Polar, Retraction::None] {
                for nonneg in [NonNeg::Hard, NonNeg::None] {
                    let params = Params::default()
                        .w(pj["w"].as_f64().unwrap())
                        .retraction(retraction)
                        .nonneg(nonneg)
                        .max_iter(300);
                    let res = run_monotone(&y0, x0.as_ref(), &params);
                    assert!(res.iterations >= 1, "{}", case.display());
                    n += 1;
                }
            }
        }
    }
    assert!(n >= 150, "only {n} runs");
}

fn real(name: &str) -> DMatrix<f64> {
    read(manifest().join("tests/data/real").join(name))
}

#[test]
fn accepted_energies_never_increase_on_real_data() {
    for name in [
        "golub_multtest_pca_loadings_k3.npy",
        "digits_pca_loadings_k10.npy",
        "sonar_pca_loadings_k5.npy",
        "golub_nmf_pca_loadings_k3.npy",
    ] {
        let x = real(name);
        for &w in &[0.1, 0.5, 0.9] {
            for optimizer in [OptimizerKind::Fast, OptimizerKind::Sgdp] {
                let params = Params::default().w(w).optimizer(optimizer);
                let res = run_monotone(&x, Some(&x), &params);
                assert!(
                    res.defect() < invariant_orthogonality_defect(&res.target) + 1e-12,
                    "{name} w={w}"
                );
            }
        }
    }
}

#[test]
fn raising_w_raises_sparsity_and_lowers_the_defect_on_golub() {
    let x = real("golub_multtest_pca_loadings_k3.npy");
    let ws = [0.1, 0.25, 0.5, 0.75, 0.9];
    let mut rows = Vec::new();
    for &w in &ws {
        let res = run_monotone(&x, Some(&x), &Params::default().w(w));
        rows.push((
            w,
            res.sparsity(),
            res.defect(),
            res.certificate.value,
            res.iterations,
        ));
    }
    for r in &rows {
        eprintln!(
            "w={:.2} sparsity={:.4} defect={:.4e} certificate={:.2e} iterations={}",
            r.0, r.1, r.2, r.3, r.4
        );
    }
    for p in rows.windows(2) {
        assert!(p[1].1 > p[0].1, "sparsity not increasing: {p:?}");
        assert!(p[1].2 < p[0].2, "defect not decreasing: {p:?}");
    }
}

#[test]
fn certificate_is_reached_on_a_well_posed_problem() {
    let x = real("sonar_pca_loadings_k5.npy");
    let res = nsa_flow(
        &x,
        Some(&x),
        &Params::default().w(0.5).tol(1e-6).max_iter(2000),
    )
    .unwrap();
    assert!(
        matches!(
            res.stop_reason,
            StopReason::Certificate | StopReason::EnergyWindow
        ),
        "{:?}",
        res.stop_reason
    );
    assert!(
        res.certificate.satisfied && res.certificate.value <= 1e-6,
        "{:?}",
        res.certificate
    );
}

#[test]
fn corrected_mode_is_scale_invariant() {
    // the corrected energy, retraction and default step are homogeneous: scaling the data
    // scales the answer
    let x = real("sonar_pca_loadings_k5.npy");
    let params = Params::default().w(0.6).max_iter(40);
    let a = nsa_flow(&x, Some(&x), &params).unwrap();
    let xs = &x * 1000.0;
    let b = nsa_flow(&xs, Some(&xs), &params).unwrap();
    assert_eq!(a.iterations, b.iterations);
    assert!(
        rel_fro(&(&b.y / 1000.0), &a.y) < 1e-9,
        "{}",
        rel_fro(&(&b.y / 1000.0), &a.y)
    );
}

#[test]
fn f32_agrees_with_f64() {
    let x = real("digits_pca_loadings_k10.npy");
    let base = Params::default().w(0.5).max_iter(30).tol(0.0);
    let a = nsa_flow(&x, Some(&x), &base).unwrap();
    let b = nsa_flow(&x, Some(&x), &base.clone().precision(Precision::F32)).unwrap();
    assert_eq!(b.device.name, "cpu-f32");
    let ea = a.best_total_energy.unwrap();
    let eb = b.best_total_energy.unwrap();
    assert!((ea - eb).abs() < 1e-3 * ea, "{ea} vs {eb}");
}

#[test]
fn every_option_combination_runs_monotone() {
    let y0 = randn(40, 4, 3).abs();
    let x0 = randn(40, 4, 4).abs();
    for simplified in [false, true] {
        for project_full_gradient in [false, true] {
            for optimizer in [OptimizerKind::Fast, OptimizerKind::Sgdp] {
                let params = Params::default()
                    .w(0.7)
                    .simplified(simplified)
                    .project_full_gradient(project_full_gradient)
                    .optimizer(optimizer)
                    .max_iter(200);
                run_monotone(&y0, Some(&x0), &params);
            }
        }
    }
    // self-target with the seeded perturbation; same seed, same result
    let a = run_monotone(&y0, None, &Params::default().seed(7));
    let b = nsa_flow(&y0, None, &Params::default().seed(7)).unwrap();
    assert_eq!(a.y, b.y);
    let c = nsa_flow(&y0, None, &Params::default().seed(8)).unwrap();
    assert_ne!(a.start, c.start);
}

#[test]
fn one_column_and_one_row_shapes() {
    let x = randn(25, 1, 5).abs();
    let res = run_monotone(&x, Some(&x), &Params::default());
    assert_eq!(res.defect(), 0.0);
    let x = randn(1, 1, 6).abs();
    run_monotone(&x, Some(&x), &Params::default());
}

#[test]
fn same_input_same_bits() {
    let x = real("digits_pca_loadings_k10.npy");
    let params = Params::default().w(0.75);
    let a = nsa_flow(&x, Some(&x), &params).unwrap();
    let b = nsa_flow(&x, Some(&x), &params).unwrap();
    assert_eq!(a.y, b.y);
    assert_eq!(a.best_total_energy, b.best_total_energy);
}

/// At f32's rounding floor the search stalls: every candidate is rejected. Its plain phases
/// (50 halvings each) end as soon as a candidate equals `Y` (the step rounded away: every
/// shorter one equals `Y` too) or its first-order gain bound (the free gradient's norm times
/// `‖C − Y‖`) is a quarter of the rounding level, so the stalled iteration evaluates a
/// handful of the 1 + 2·50 candidates of its phases (101 before the gain bound: the
/// candidates kept differing from `Y` in some entries). The skipped candidates would have
/// been rejected, which tests/gpu_flow.rs's mirror and the CPU/GPU comparisons check
/// candidate by candidate.
#[test]
fn a_stalled_f32_search_ends_its_phases_early() {
    let y0 = randn(300, 12, 71).map(|v| v + 0.3);
    let x0 = randn(300, 12, 72).map(|v| v + 0.3);
    let params = Params::default()
        .w(0.9)
        .precision(Precision::F32)
        .max_iter(400)
        .tol(0.0);
    let mut examined_in_accepted = 0;
    let res = nsa_flow_with_callback(&y0, Some(&x0), &params, |info| {
        examined_in_accepted += info.backtracks + 1;
        Control::Continue
    })
    .unwrap();
    assert_eq!(res.stop_reason, StopReason::LineSearchStalled, "{res:?}");
    let in_stall = res.energy_evaluations - examined_in_accepted;
    eprintln!("the stalled iteration evaluated {in_stall} candidates");
    assert!(
        in_stall <= 12,
        "the stalled iteration evaluated {in_stall} candidates: its phases did not end early"
    );
    assert!(in_stall >= 2, "{in_stall}");
}
