//! `nsa-flow fit` and `nsa-flow run --solver lbfgsb`: outputs, the summary's fields, and
//! usage errors (exit 2) before any work.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> PathBuf {
    std::env::var_os("NSA_FLOW_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nsa-flow")))
}

fn case(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden35/cases")
        .join(name)
}

fn run(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(bin()).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn fit_data_writes_basis_and_summary() {
    let d = tempfile::tempdir().unwrap();
    let (out, summ) = (d.path().join("V.npy"), d.path().join("s.json"));
    let x = case("data_clamp_w0.5.in.npy");
    let (code, stdout, stderr) = run(&[
        "fit",
        "--data",
        s(&x),
        "--k",
        "3",
        "--w",
        "0.5",
        "--out",
        s(&out),
        "--summary",
        s(&summ),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("grad_map (stationary)"), "{stdout}");
    let v = nsa_flow::io::read_matrix(&out).unwrap();
    let v_ref = nsa_flow::io::read_matrix(case("data_clamp_w0.5.y.npy")).unwrap();
    assert!((&v - &v_ref).norm() / v_ref.norm() < 1e-8);
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summ).unwrap()).unwrap();
    assert_eq!(j["mode"], "data");
    assert_eq!(j["certificate"], "stationary");
    assert_eq!(j["stop_reason"], "grad_map");
    assert!(j["n_grad"].as_u64().unwrap() > 10);
    assert!(j["grad_map"].as_f64().unwrap() <= 1e-6);
    assert!(j["basis_report"]["effective_rank"].as_f64().unwrap() > 2.9);
    assert_eq!(j["matrix_free"], false);
}

#[test]
fn fit_signed_writes_parts_and_anchored_target_runs() {
    let d = tempfile::tempdir().unwrap();
    let (out, parts, summ) = (
        d.path().join("V.csv"),
        d.path().join("W.npy"),
        d.path().join("s.json"),
    );
    let x = case("signed_consolidate.in.npy");
    let (code, _, stderr) = run(&[
        "fit",
        "--data",
        s(&x),
        "--k",
        "3",
        "--consolidate",
        "--out",
        s(&out),
        "--parts",
        s(&parts),
        "--summary",
        s(&summ),
        "--quiet",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let w = nsa_flow::io::read_matrix(&parts).unwrap();
    assert_eq!(w.shape(), (20, 6));
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summ).unwrap()).unwrap();
    assert_eq!(j["mode"], "signed");
    assert_eq!(j["orth"], "Cg");
    assert_eq!(j["consolidated"], true);
    assert!(j["parts_report"]["support_overlap"].as_f64().unwrap().abs() < 1e-12);
    // anchored: no --k, a signed target switches to the subspace fidelity
    let t = case("anchored_signed_auto.in.npy");
    let (code, _, stderr) = run(&[
        "fit",
        "--target",
        s(&t),
        "--out",
        s(&d.path().join("Y.npy")),
        "--summary",
        s(&summ),
        "--quiet",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summ).unwrap()).unwrap();
    assert_eq!(j["mode"], "anchored");
    assert_eq!(j["fidelity_mode"], "subspace");
}

#[test]
fn run_solver_lbfgsb_is_the_anchored_solver() {
    let d = tempfile::tempdir().unwrap();
    let t = case("anchored_pos_w0.5.in.npy");
    let out = d.path().join("Y.npy");
    let (code, stdout, stderr) = run(&[
        "run",
        "--y0",
        s(&t),
        "--solver",
        "lbfgsb",
        "--w",
        "0.5",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("anchored lbfgsb"), "{stdout}");
    let y = nsa_flow::io::read_matrix(&out).unwrap();
    let y_ref = nsa_flow::io::read_matrix(case("anchored_pos_w0.5.y.npy")).unwrap();
    assert!((&y - &y_ref).norm() / y_ref.norm() < 1e-8);
    // the flow's own settings are refused with the 3.5 solver
    let (code, _, stderr) = run(&[
        "run",
        "--y0",
        s(&t),
        "--solver",
        "lbfgsb",
        "--retraction",
        "polar",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, _) = run(&["run", "--y0", s(&t), "--solver", "bogus", "--out", s(&out)]);
    assert_eq!(code, 2);
}

#[test]
fn fit_usage_errors_exit_2_and_failures_exit_1_writing_nothing() {
    let d = tempfile::tempdir().unwrap();
    let x = case("data_clamp_w0.5.in.npy");
    let out = d.path().join("V.npy");
    std::fs::write(&out, b"keep me").unwrap();
    for bad in [
        vec!["--k", "3", "--w", "2"],
        vec!["--k", "3", "--mode", "bogus"],
        vec!["--k", "3", "--orth", "E"],
        vec!["--k", "3", "--init", "nmf"],
        vec!["--k", "0"],
        vec!["--k", "3", "--sparseness", "1"],
        vec!["--k", "3", "--optimizer", "adam"],
    ] {
        let mut args = vec!["fit", "--data", s(&x), "--out", s(&out)];
        args.extend(bad.iter());
        let (code, _, stderr) = run(&args);
        assert_eq!(code, 2, "{bad:?}: {stderr}");
    }
    // --out naming the input is a usage error
    let (code, _, _) = run(&["fit", "--data", s(&x), "--k", "3", "--out", s(&x)]);
    assert_eq!(code, 2);
    // failures found by the library: exit 1, the existing file untouched
    for bad in [
        vec!["--k", "21"],
        vec!["--k", "3", "--mode", "data", "--fidelity", "subspace"],
        vec!["--k", "3", "--parts", "W.npy"],
    ] {
        let mut args = vec!["fit", "--data", s(&x), "--out", s(&out)];
        args.extend(bad.iter());
        let (code, _, stderr) = run(&args);
        assert_eq!(code, 1, "{bad:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
    }
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
}
