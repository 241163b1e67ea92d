//! Reference mode against the real reference (nsa_flow 0.7.7 under torch): every case found
//! under the golden roots, so cases added later are picked up without code changes.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod common;

use common::*;
use nalgebra::DMatrix;
use nsa_flow::{
    inv_sqrt_sym, invariant_orthogonality_defect, nsa_flow, retract, InvSqrtMethod, Mode,
    Precision, RetractOptions, Retraction,
};
use std::path::Path;

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-6)
}

fn check_flow_case(case: &Path) -> Result<String, String> {
    let (mut params, x0_none, precision) = golden_params(case);
    let y0 = read(case.join("Y0.npy"));
    let x0 = if x0_none {
        params.common.perturbed_start = Some(read(case.join("Y_start.npy")));
        None
    } else {
        Some(read(case.join("X0.npy")))
    };
    let out = json(case.join("outputs.json"));
    let res = nsa_flow(&y0, x0.as_ref(), &params).map_err(|e| e.to_string())?;
    // f64: the acceptance tolerances of the issue; f32: float32 accuracy over 50 iterations.
    let (e_tol, y_tol) = match precision {
        Precision::F64 => (1e-9, 1e-8),
        Precision::F32 => (2e-4, 2e-4),
    };
    let mut errs = Vec::new();
    if let Some(want_iters) = out.get("iterations_run").and_then(|v| v.as_u64()) {
        if res.iterations != want_iters as usize {
            errs.push(format!("iterations {} != {}", res.iterations, want_iters));
        }
    }
    let want_best = out["best_Y_iteration"].as_u64().unwrap() as usize;
    if res.best_iteration != want_best {
        errs.push(format!(
            "best iteration {} != {}",
            res.best_iteration, want_best
        ));
    }
    if res.final_iter != out["final_iter"].as_u64().unwrap() as usize {
        errs.push(format!(
            "final_iter {} != {}",
            res.final_iter, out["final_iter"]
        ));
    }
    let want_best_e = out["best_total_energy"].as_f64().unwrap();
    if !close(
        res.best_total_energy.unwrap_or(f64::NAN),
        want_best_e,
        e_tol,
    ) {
        errs.push(format!(
            "best energy {:?} != {want_best_e}",
            res.best_total_energy
        ));
    }
    let (_, rows) = csv_rows(case.join("traces.csv"));
    if rows.len() != res.traces.len() {
        errs.push(format!("{} trace rows != {}", res.traces.len(), rows.len()));
    }
    let mut worst = 0.0f64;
    for (r, t) in rows.iter().zip(&res.traces) {
        let it: usize = r[0].parse().unwrap();
        let vals: Vec<f64> = r[1..4].iter().map(|v| v.parse().unwrap()).collect();
        let ours = [t.fidelity, t.orthogonality, t.total_energy];
        for (name, (a, b)) in ["fidelity", "orthogonality", "total"]
            .iter()
            .zip(ours.iter().zip(&vals))
        {
            worst = worst.max((a - b).abs() / b.abs().max(1e-6));
            if t.iter != it || !close(*a, *b, e_tol) {
                errs.push(format!("iter {it}: {name} {a:e} != {b:e}"));
                break;
            }
        }
        if errs.len() > 3 {
            break;
        }
    }
    let y_ref = read(case.join("Y_out.npy"));
    let dy = rel_fro(&res.y, &y_ref);
    if !(dy <= y_tol) {
        errs.push(format!("Y differs: rel {dy:e}"));
    }
    let target = read(case.join("target_X0_used.npy"));
    if rel_fro(&res.target, &target) > 1e-12 {
        errs.push("target differs".into());
    }
    if errs.is_empty() {
        Ok(format!(
            "{} iterations, worst trace rel {worst:.1e}, Y rel {dy:.1e}",
            res.iterations
        ))
    } else {
        Err(errs.join("; "))
    }
}

#[test]
fn reference_mode_reproduces_every_golden_flow_case() {
    let mut failures = Vec::new();
    let mut n = 0;
    for root in golden_roots() {
        let mut cases: Vec<_> = std::fs::read_dir(root.join("flow"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        cases.sort();
        for case in cases {
            n += 1;
            match check_flow_case(&case) {
                Ok(msg) => eprintln!("ok   {}: {msg}", case.display()),
                Err(msg) => {
                    eprintln!("FAIL {}: {msg}", case.display());
                    failures.push(format!("{}: {msg}", case.display()));
                }
            }
        }
    }
    assert!(n >= 30, "found only {n} golden flow cases");
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The polar factor `U·Vᵀ` of a rank-deficient matrix is not unique: only its action on the
/// row space of `Y` is determined (the completion of `U` for zero singular values is the
/// LAPACK routine's choice). Compare that part, and check our completion is orthonormal.
fn polar_determined_part(
    y: &DMatrix<f64>,
    got: &DMatrix<f64>,
    want: &DMatrix<f64>,
) -> (DMatrix<f64>, DMatrix<f64>) {
    let svd = y.clone().svd(false, true);
    let vt = svd.v_t.unwrap();
    let smax = svd.singular_values.max();
    let rank = svd
        .singular_values
        .iter()
        .filter(|s| **s > 1e-10 * smax)
        .count();
    if rank == 0 || rank == y.ncols().min(y.nrows()) {
        return (got.clone(), want.clone());
    }
    let vr = vt.rows(0, rank).transpose();
    let proj = &vr * vr.transpose();
    let g = got / got.norm();
    let gram = g.transpose() * &g * (y.ncols().min(y.nrows()) as f64);
    let dev = (gram - DMatrix::identity(y.ncols(), y.ncols())).norm();
    assert!(
        dev < 1e-10,
        "polar completion not orthonormal: {dev:e} rank {rank} shape {:?}",
        y.shape()
    );
    (got * &proj, want * &proj)
}

fn method_of(s: &str) -> InvSqrtMethod {
    s.parse().unwrap()
}

#[test]
fn single_calls_match_the_reference() {
    let mut failures = Vec::new();
    let mut n = 0;
    for root in golden_roots() {
        let dir = root.join("single");
        if !dir.is_dir() {
            continue;
        }
        let idx = json(dir.join("index.json"));
        let mats = &idx["matrices"];
        let input = |name: &str| read(dir.join(mats[name]["file"].as_str().unwrap()));
        for c in idx["retract"].as_array().unwrap() {
            n += 1;
            let y = input(c["matrix"].as_str().unwrap());
            let opts = RetractOptions::default()
                .retraction(c["retraction_type"].as_str().unwrap().parse().unwrap())
                .w(c["w_retract"].as_f64().unwrap())
                .inv_method(method_of(c["inv_method"].as_str().unwrap()))
                .ns_iter(c["ns_iter"].as_u64().unwrap() as usize)
                .eps(c["eps_rf"].as_f64().unwrap())
                .eig_thresh(c["eig_thresh"].as_u64().unwrap() as usize)
                .diag_thresh(c["diag_thresh"].as_u64().unwrap() as usize)
                .style(Mode::Reference);
            let want = read(dir.join(c["out"].as_str().unwrap()));
            let f32_input = mats[c["matrix"].as_str().unwrap()]["dtype"] == "float32";
            let got = if f32_input {
                nsa_flow::retract_in::<f32>(&y, &opts)
            } else {
                retract(&y, &opts)
            }
            .unwrap();
            let tol = if f32_input { 1e-5 } else { 1e-9 };
            let (got, want) = if opts.retraction == Retraction::Polar && opts.w > 0.0 {
                polar_determined_part(&y, &got, &want)
            } else {
                (got, want)
            };
            let d = rel_fro(&got, &want);
            if !(d <= tol) {
                failures.push(format!(
                    "retract {} {:?} w={} {:?}: rel {d:e}",
                    c["matrix"], opts.retraction, opts.w, opts.inv_method
                ));
            }
        }
        for c in idx["inv_sqrt"].as_array().unwrap() {
            n += 1;
            let a = read(dir.join(c["input"].as_str().unwrap()));
            let want = read(dir.join(c["out"].as_str().unwrap()));
            let got = inv_sqrt_sym(
                &a,
                method_of(c["method"].as_str().unwrap()),
                c["epsilon"].as_f64().unwrap(),
                c["ns_iter"].as_u64().unwrap() as usize,
                128,
            )
            .unwrap();
            let f32_input = mats[c["matrix"].as_str().unwrap()]["dtype"] == "float32";
            // eig clamps eigenvalues at epsilon: the result's relative accuracy is about
            // ε_mach·λ_max/max(λ_min, epsilon), which is 1e-8-ish for the rank-deficient case
            let eig = nalgebra::SymmetricEigen::new(a.clone()).eigenvalues;
            let eps_in = c["epsilon"].as_f64().unwrap();
            let cond = eig.max() / eig.min().max(eps_in);
            let tol = if f32_input {
                1e-5
            } else {
                1e-9f64.max(100.0 * f64::EPSILON * cond)
            };
            let d = rel_fro(&got, &want);
            if !(d <= tol) {
                failures.push(format!(
                    "inv_sqrt {} {} it={}: rel {d:e}",
                    c["matrix"], c["method"], c["ns_iter"]
                ));
            }
        }
        for c in idx["defect"].as_array().unwrap() {
            n += 1;
            let y = input(c["matrix"].as_str().unwrap());
            let want = c["defect"].as_f64().unwrap();
            let f32_input = mats[c["matrix"].as_str().unwrap()]["dtype"] == "float32";
            // the reference computes in the input's dtype
            let (got, tol) = if f32_input {
                (invariant_orthogonality_defect(&y.map(|v| v as f32)), 1e-5)
            } else {
                (invariant_orthogonality_defect(&y), 1e-12)
            };
            if (got - want).abs() > tol * want.abs().max(1e-6) {
                failures.push(format!("defect {}: {got:e} != {want:e}", c["matrix"]));
            }
        }
    }
    assert!(n > 200, "only {n} single calls found");
    assert!(
        failures.is_empty(),
        "{} of {n} single calls differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn golden_inputs_are_matrices() {
    // guards the harness itself: a broken reader would make every comparison vacuous
    for root in golden_roots()
        .into_iter()
        .filter(|r| r.join("flow/qs_sgdp_f64").is_dir())
    {
        let y0 = read(root.join("flow/qs_sgdp_f64/Y0.npy"));
        assert_eq!(y0.shape(), (50, 10));
        assert!(y0.iter().any(|v| *v != 0.0));
        let _ = DMatrix::<f64>::zeros(1, 1);
    }
}
