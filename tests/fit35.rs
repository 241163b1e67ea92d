//! The 3.5 solvers (`nsa_flow::fit`) against goldens of the real nsa_flow 3.5.0
//! (tests/golden35/gen.py; random, Golub, sonar and digits inputs).
//!
//! The rule: where the algorithm is deterministic and both implementations follow the same
//! path, the basis equals 3.5's to 1e-8 relative (Frobenius); everywhere we stop at a
//! certificate at least as tight as `tol`, and at an energy no higher than 3.5's beyond the
//! slack the certificate allows (`energy ≤ E_3.5 + 1e-9`). Cases whose paths differ are
//! listed in `PATH_DIFFERS` with the reason.

use nalgebra::DMatrix;
use nsa_flow::fit::{self, Fidelity, FitMode, FitOptimizer, FitParams, Init, Orth};
use serde_json::Value;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden35/cases")
}

fn load(name: &str) -> DMatrix<f64> {
    nsa_flow::io::read_matrix(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn rel(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    (a - b).norm() / b.norm().max(1e-300)
}

fn params_of(meta: &Value) -> (FitMode, Option<usize>, FitParams) {
    let mut p = FitParams::default();
    p.w = meta["w"].as_f64().unwrap();
    if let Some(o) = meta.get("orth").and_then(|v| v.as_str()) {
        p.orth = Some(Orth::parse(o).unwrap());
    }
    if let Some(q) = meta.get("sparseness").and_then(|v| v.as_f64()) {
        p.sparseness = Some(q);
    }
    if meta.get("consolidate").and_then(|v| v.as_bool()) == Some(true) {
        p.consolidate = true;
    }
    if let Some(o) = meta.get("optimizer").and_then(|v| v.as_str()) {
        p.optimizer = FitOptimizer::parse(o).unwrap();
    }
    if let Some(f) = meta.get("fidelity").and_then(|v| v.as_str()) {
        p.fidelity = match f {
            "anchor" => Fidelity::Anchor,
            "subspace" => Fidelity::Subspace,
            _ => Fidelity::Auto,
        };
    }
    if let Some(i) = meta.get("init").and_then(|v| v.as_str()) {
        p.init = Init::parse(i).unwrap();
    }
    let mode = FitMode::parse(meta["mode"].as_str().unwrap()).unwrap();
    let k = meta.get("k").and_then(|v| v.as_u64()).map(|k| k as usize);
    (mode, k, p)
}

/// Cases whose iterates leave 3.5's path, and why. Each is held to: the same basis up to a
/// column permutation within what the certificate allows (1e-3 relative per column), and,
/// re-solved to a certificate 100× tighter than 3.5's, an energy no higher than 3.5's.
const PATH_DIFFERS: &[(&str, &str)] = &[
    // The quartic data objective amplifies last-bit differences of the matrix products
    // (faer vs torch's BLAS) once the active set moves late; both paths end at grad_map < 1e-6
    // at energies equal to 1e-11.
    ("data_given_init", "rounding, quartic objective"),
    ("data_matrixfree", "rounding, quartic objective"),
    ("data_pca_clamp_w0.25", "rounding, quartic objective"),
    ("data_pca_clamp_w0.5", "rounding, quartic objective"),
    (
        "data_relax_w0.25",
        "rounding along the 9-stage relaxation path",
    ),
    (
        "data_relax_w0.5",
        "rounding along the 9-stage relaxation path",
    ),
    (
        "data_relax_w0.9",
        "rounding along the 9-stage relaxation path",
    ),
    ("data_spg", "rounding, 441 Barzilai-Borwein steps"),
    ("golub_data", "rounding, quartic objective"),
    ("signed_adaptive_pos", "rounding along the relaxation path"),
    ("signed_relax", "rounding along the relaxation path"),
    // 3.5's varimax Kaiser-normalises rows of pure rounding noise (the 9 constant pixels),
    // so its start follows that noise; ours leaves such rows alone. Same basis, permuted.
    ("digits_data", "varimax of zero-variance rows"),
];

/// The largest over columns of the best relative match among `b`'s columns.
fn rel_up_to_permutation(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    let mut worst: f64 = 0.0;
    for j in 0..a.ncols() {
        let best = (0..b.ncols())
            .map(|i| (a.column(j) - b.column(i)).norm() / b.column(i).norm().max(1e-300))
            .fold(f64::INFINITY, f64::min);
        worst = worst.max(best);
    }
    worst
}

fn cases() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(".json").map(str::to_string)
        })
        .filter(|n| n != "pieces")
        .collect();
    v.sort();
    v
}

#[test]
fn every_golden_case() {
    let mut failures = Vec::new();
    for name in cases() {
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(dir().join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        let gold = &meta["result"];
        let x = load(&format!("{name}.in.npy"));
        let y_ref = load(&format!("{name}.y.npy"));
        let (mode, k, mut p) = params_of(&meta);
        if meta.get("init_kind").and_then(|v| v.as_str()) == Some("matrix") {
            p.init = Init::Matrix(load(&format!("{name}.init.npy")));
        }
        let r = fit::fit(
            &x,
            if mode == FitMode::Anchored { None } else { k },
            mode,
            &p,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let e_ref = gold["energy"].as_f64().unwrap();
        let d = rel(&r.y, &y_ref);
        let path_differs = PATH_DIFFERS.iter().any(|(n, _)| *n == name);
        println!(
            "{name:32} rel {d:.2e}  E {:.12e} vs {e_ref:.12e} (ΔE {:+.2e})  gmap {:.2e} vs {:.2e}  n_grad {} vs {}  {} vs {}",
            r.energy,
            r.energy - e_ref,
            r.grad_map,
            gold["grad_map"].as_f64().unwrap(),
            r.n_grad,
            gold["n_grad"].as_u64().unwrap(),
            r.stop_reason,
            gold["stop_reason"].as_str().unwrap()
        );
        if !(r.grad_map <= p.effective_tol() && r.converged) {
            failures.push(format!(
                "{name}: not certified ({}, {:.2e})",
                r.stop_reason, r.grad_map
            ));
        }
        // 3.5 reports the anchored energy with D̃ whatever `orth` was optimised; ours uses the
        // functional optimised (its own make_result contract), so compare energies under D only.
        let same_energy_definition =
            !(mode == FitMode::Anchored && p.orth.unwrap_or(Orth::D) != Orth::D);
        if path_differs {
            let dp = rel_up_to_permutation(&r.y, &y_ref);
            if dp > 1e-3 {
                failures.push(format!(
                    "{name}: basis differs from 3.5's by {dp:.2e} even up to permutation"
                ));
            }
            let gref = gold["grad_map"].as_f64().unwrap();
            let mut tight = p.clone();
            tight.tol = Some(gref / 100.0);
            let rt = fit::fit(
                &x,
                if mode == FitMode::Anchored { None } else { k },
                mode,
                &tight,
            )
            .unwrap();
            println!(
                "    tightened to {:.1e}: E {:.15e} ({:+.2e}) gmap {:.2e} {}",
                tight.effective_tol(),
                rt.energy,
                rt.energy - e_ref,
                rt.grad_map,
                rt.stop_reason
            );
            if same_energy_definition
                && rt.energy > e_ref + 64.0 * f64::EPSILON * (1.0 + e_ref.abs())
            {
                failures.push(format!("{name}: at a 100× tighter certificate, energy {:.15e} is above 3.5's {e_ref:.15e}", rt.energy));
            }
        } else if d > 1e-8 {
            failures.push(format!(
                "{name}: basis differs from 3.5's by {d:.2e} relative"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn pieces_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("pieces.json")).unwrap()).unwrap()
}

/// Each functional and its gradient equal 3.5's on a 17×5 matrix with unequal columns, and
/// the gradient matches central differences.
#[test]
fn functionals_and_gradients_match_reference_and_differences() {
    let y = load("pieces.y.npy");
    let pj = pieces_json();
    for orth in Orth::ALL {
        let v = orth.value(&y);
        let v_ref = pj[orth.name()].as_f64().unwrap();
        assert!(
            (v - v_ref).abs() <= 1e-14 * v_ref.abs().max(1e-300) + 1e-300,
            "{}: {v} vs {v_ref}",
            orth.name()
        );
        let mut g = DMatrix::zeros(y.nrows(), y.ncols());
        let v2 = orth.value_and_add_grad(&y, 1.0, &mut g);
        assert_eq!(v, v2);
        let g_ref = load(&format!("pieces.grad_{}.npy", orth.name()));
        assert!(
            rel(&g, &g_ref) < 1e-12,
            "{} gradient: {:.2e}",
            orth.name(),
            rel(&g, &g_ref)
        );
        // central differences, h scaled to the entry
        for &(i, j) in &[(0usize, 0usize), (5, 2), (16, 4), (9, 1)] {
            let h = 1e-6 * y[(i, j)].abs().max(1e-3);
            let (mut yp, mut ym) = (y.clone(), y.clone());
            yp[(i, j)] += h;
            ym[(i, j)] -= h;
            let fd = (orth.value(&yp) - orth.value(&ym)) / (2.0 * h);
            assert!(
                (fd - g[(i, j)]).abs() <= 1e-6 * g.amax().max(1e-12),
                "{} ({i},{j}): fd {fd} vs {}",
                orth.name(),
                g[(i, j)]
            );
        }
    }
}

#[test]
fn functionals_are_zero_at_k1_and_on_orthogonal_columns() {
    let y1 = DMatrix::from_fn(9, 1, |i, _| i as f64 + 1.0);
    for orth in Orth::ALL {
        assert_eq!(orth.value(&y1), 0.0);
    }
    // disjoint supports, unequal norms: C, Coff, Cg are zero, D is not
    let y = DMatrix::from_fn(6, 3, |i, j| if i / 2 == j { (j + 1) as f64 } else { 0.0 });
    assert!(
        Orth::C.value(&y) < 1e-30 && Orth::Coff.value(&y) < 1e-30 && Orth::Cg.value(&y) < 1e-30
    );
    assert!(Orth::D.value(&y) > 0.1);
    // a dead column: C charges 1/(k(k−1)) per floored column, Coff nothing
    let mut z = y.clone();
    z.column_mut(2).fill(0.0);
    assert!((Orth::C.value(&z) - 1.0 / 6.0).abs() < 1e-15);
    assert!(Orth::Coff.value(&z) < 1e-30);
}

#[test]
fn spectral_pieces_match_reference() {
    let x = load("data_clamp_w0.5.in.npy");
    let e = fit::eig::top_k_eigenvectors_of_data(&x, 4).unwrap();
    assert!(rel(&e, &load("pieces.topk_data.npy")) < 1e-12);
    let v = fit::eig::varimax(&e);
    assert!(
        rel(&v, &load("pieces.varimax.npy")) < 1e-10,
        "{:.2e}",
        rel(&v, &load("pieces.varimax.npy"))
    );
    let xw = load("data_matrixfree.in.npy");
    let ew = fit::eig::top_k_eigenvectors_of_data(&xw, 4).unwrap();
    assert!(
        rel(&ew, &load("pieces.topk_wide.npy")) < 1e-11,
        "{:.2e}",
        rel(&ew, &load("pieces.topk_wide.npy"))
    );
}

#[test]
fn sparseness_and_basis_report_match_reference() {
    let y = load("pieces.y.npy");
    let s = fit::simlr_sparseness(&y, 0.6, true, true);
    assert!(rel(&s, &load("pieces.sparse.npy")) < 1e-15);
    let pj = pieces_json();
    let b = &pj["basis_report"];
    let r = fit::basis_report(&y);
    let close = |a: f64, key: &str| {
        let want = b[key].as_f64().unwrap();
        assert!(
            (a - want).abs() <= 1e-12 * want.abs().max(1.0),
            "{key}: {a} vs {want}"
        );
    };
    close(r.defect_d, "defect_D");
    close(r.defect_cg, "defect_Cg");
    close(r.defect_c, "defect_C");
    close(r.defect_coff, "defect_Coff");
    close(r.raw_defect, "raw_defect");
    close(r.effective_rank, "effective_rank");
    close(r.column_norm_ratio, "column_norm_ratio");
    close(r.sparsity, "sparsity");
    close(r.max_support as f64, "max_support");
    close(r.mean_support, "mean_support");
    close(r.n_dead_columns as f64, "n_dead_columns");
    close(r.support_overlap, "support_overlap");
}

/// The certificate is invariant under `Y → cY` for a scale-free energy, zero at a stationary
/// point, and every result's `converged` follows the certificate.
#[test]
fn certificate_contract() {
    let x = load("data_clamp_w0.5.in.npy");
    let r = fit::fit_data(&x, 3, &FitParams::default()).unwrap();
    assert!(r.converged && r.grad_map <= r.tol && r.certificate == fit::Certificate::Stationary);
    assert_eq!(r.stop_reason, fit::StopReason::GradMap);
    assert!(r.energy < r.energy_start && r.energy_reduction() > 0.0);
    // a budget too small: not converged, says max_iter
    let mut p = FitParams::default();
    p.max_grad = 3;
    let r = fit::fit_data(&x, 3, &p).unwrap();
    assert_eq!(r.stop_reason, fit::StopReason::MaxIter);
    assert!(!r.converged && r.certificate == fit::Certificate::None && r.n_grad <= 3);
    // same input, same bits
    let a = fit::fit_data(&x, 3, &FitParams::default()).unwrap();
    let b = fit::fit_data(&x, 3, &FitParams::default()).unwrap();
    assert_eq!(a.y, b.y);
}

#[test]
fn bad_input_is_a_typed_error() {
    use nsa_flow::NsaError;
    let x = load("data_clamp_w0.5.in.npy");
    let p = FitParams::default();
    let mut bad_w = p.clone();
    bad_w.w = 1.5;
    assert!(matches!(
        fit::fit_data(&x, 3, &bad_w),
        Err(NsaError::InvalidWeight(_))
    ));
    bad_w.w = f64::NAN;
    assert!(matches!(
        fit::fit_signed(&x, 3, &bad_w),
        Err(NsaError::InvalidWeight(_))
    ));
    assert!(matches!(
        fit::fit_data(&x, 0, &p),
        Err(NsaError::InvalidParameter { .. })
    ));
    assert!(matches!(
        fit::fit_data(&x, 21, &p),
        Err(NsaError::KGreaterThanP { .. })
    ));
    let mut xn = x.clone();
    xn[(3, 4)] = f64::NAN;
    assert!(matches!(
        fit::fit_data(&xn, 3, &p),
        Err(NsaError::NonFinite { .. })
    ));
    assert!(matches!(
        fit::fit_anchored(&DMatrix::zeros(5, 2), &p),
        Err(NsaError::ZeroMatrix { .. })
    ));
    assert!(matches!(
        fit::fit_data(&DMatrix::zeros(5, 4), 2, &p),
        Err(NsaError::ZeroMatrix { .. })
    ));
    assert!(matches!(
        fit::fit_data(&DMatrix::zeros(0, 4), 2, &p),
        Err(NsaError::Empty { .. })
    ));
    let mut sp = p.clone();
    sp.sparseness = Some(1.0);
    assert!(matches!(
        fit::fit_data(&x, 3, &sp),
        Err(NsaError::InvalidParameter { .. })
    ));
    let mut wrong_init = p.clone();
    wrong_init.init = Init::Matrix(DMatrix::from_element(20, 4, 0.5));
    assert!(matches!(
        fit::fit_data(&x, 3, &wrong_init),
        Err(NsaError::ShapeMismatch { .. })
    ));
    wrong_init.init = Init::Split;
    assert!(matches!(
        fit::fit_data(&x, 3, &wrong_init),
        Err(NsaError::InvalidParameter { .. })
    ));
    assert!(matches!(
        Init::parse("nmf"),
        Err(NsaError::InvalidParameter { .. })
    ));
    assert!(matches!(
        Init::parse("bogus"),
        Err(NsaError::UnknownName { .. })
    ));
    assert!(matches!(
        FitMode::parse("bogus"),
        Err(NsaError::UnknownName { .. })
    ));
    let mut fid = p.clone();
    fid.fidelity = Fidelity::Subspace;
    assert!(matches!(
        fit::fit(&x, Some(3), FitMode::Data, &fid),
        Err(NsaError::InvalidParameter { .. })
    ));
    assert!(matches!(
        fit::fit(&x, None, FitMode::Data, &p),
        Err(NsaError::InvalidParameter { .. })
    ));
    // more components than samples: no k eigenvectors to start from
    let wide = load("data_matrixfree.in.npy"); // 20×50
    assert!(matches!(
        fit::fit_data(&wide, 21, &p),
        Err(NsaError::InvalidParameter { .. })
    ));
    // a start whose energy overflows
    let mut huge = p.clone();
    huge.init = Init::Matrix(DMatrix::from_element(20, 3, 1e200));
    assert!(matches!(
        fit::fit_data(&x, 3, &huge),
        Err(NsaError::NonFiniteComputation { .. })
    ));
}

/// Awkward shapes: k = 1, p = 1 (anchored), matrix-free forced on a tall matrix and dense on a
/// wide one give the same basis.
#[test]
fn awkward_shapes_and_both_gram_routes() {
    let x = load("data_clamp_w0.5.in.npy");
    let p = FitParams::default();
    let r1 = fit::fit_data(&x, 1, &p).unwrap();
    assert!(r1.converged && r1.y.ncols() == 1 && r1.defect == 0.0);
    let t = DMatrix::from_row_slice(1, 3, &[0.3, 0.1, 0.7]);
    let ra = fit::fit_anchored(&t, &p).unwrap();
    assert!(ra.y.iter().all(|v| v.is_finite() && *v >= 0.0));
    let mut mf = p.clone();
    mf.matrix_free = Some(true);
    let a = fit::fit_data(&x, 3, &mf).unwrap();
    let b = fit::fit_data(&x, 3, &p).unwrap();
    assert!(a.matrix_free == Some(true) && b.matrix_free == Some(false));
    assert!(rel(&a.y, &b.y) < 1e-4 && (a.energy - b.energy).abs() < 1e-10);
    // signed k = 1 and p = 63 shape
    let xs = DMatrix::from_fn(40, 63, |i, j| {
        (((i * 31 + j * 17) % 23) as f64 - 11.0) / 7.0
    });
    let rs = fit::fit_signed(&xs, 1, &p).unwrap();
    assert!(rs.parts.as_ref().unwrap().iter().all(|v| *v >= 0.0));
    assert!(rs.grad_map.is_finite());
}
