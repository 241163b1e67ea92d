//! `nsa-flow autograd`: the golden reference run from the command line, every flag honoured,
//! the --out/--trace/--summary contract, and typed failures that write nothing.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nsa-flow"));
    c.env_remove("NSA_FLOW_ADAPTER");
    c
}

fn write(path: &Path, m: &nalgebra::DMatrix<f64>) {
    nsa_flow::io::write_matrix(path, m, nsa_flow::io::NpyDtype::F64).unwrap();
}

#[test]
fn autograd_reproduces_a_golden_run_and_writes_its_outputs() {
    let Some(case) = golden_roots()
        .into_iter()
        .map(|r| r.join("autograd_runs/adam_basic_softplus_40x6"))
        .find(|d| d.is_dir())
    else {
        eprintln!("skipped: no autograd_runs golden data");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (out, trace, summary) = (
        dir.path().join("Y.npy"),
        dir.path().join("t.json"),
        dir.path().join("s.json"),
    );
    let st = bin()
        .args(["autograd", "--y0"])
        .arg(case.join("Y0.npy"))
        .arg("--x0")
        .arg(case.join("X0.npy"))
        .args([
            "--w",
            "0.7",
            "--optimizer",
            "adam",
            "--lr",
            "0.01",
            "--fidelity-type",
            "basic",
            "--orth-type",
            "basic",
        ])
        .args([
            "--nonneg",
            "softplus",
            "--max-iter",
            "30",
            "--tol",
            "1e-12",
            "--mode",
            "reference",
            "--backend",
            "cpu",
            "--quiet",
        ])
        .arg("--out")
        .arg(&out)
        .arg("--trace")
        .arg(&trace)
        .arg("--summary")
        .arg(&summary)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(st.stdout.is_empty(), "--quiet prints nothing");
    let y = read(&out);
    assert!(rel_fro(&y, &read(case.join("Y_out.npy"))) < 1e-8);
    let rows = json(&trace);
    assert_eq!(rows.as_array().unwrap().len(), 30);
    let s = json(&summary);
    let want = json(case.join("outputs.json"));
    assert_eq!(
        s["best_iteration"].as_f64(),
        want["best_Y_iteration"].as_f64()
    );
    assert!(
        (s["best_total_energy"].as_f64().unwrap() / want["best_total_energy"].as_f64().unwrap()
            - 1.0)
            .abs()
            < 1e-8
    );
    assert_eq!(s["settings"]["optimizer"], "adam");
    assert_eq!(s["settings"]["fidelity_type"], "basic");
    assert_eq!(s["settings"]["learning_rate"], 0.01);
    assert_eq!(s["mode"], "reference");
}

#[test]
fn autograd_flags_change_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let (y0p, x0p) = (dir.path().join("Y0.npy"), dir.path().join("X0.npy"));
    write(&y0p, &randn(30, 4, 1).map(|v: f64| v.abs()));
    write(&x0p, &randn(30, 4, 2).map(|v: f64| v.abs()));
    let run = |extra: &[&str]| -> serde_json::Value {
        let s = dir.path().join("s.json");
        let st = bin()
            .args(["autograd", "--backend", "cpu", "--max-iter", "40", "--y0"])
            .arg(&y0p)
            .arg("--x0")
            .arg(&x0p)
            .arg("--out")
            .arg(dir.path().join("Y.csv"))
            .arg("--summary")
            .arg(&s)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        json(&s)
    };
    let base = run(&[]);
    assert_eq!(
        base["settings"]["learning_rate_source"], "armijo",
        "corrected auto estimates"
    );
    for (flag, value, key) in [
        ("--fidelity-type", "symmetric", "best_total_energy"),
        ("--orth-type", "basic", "best_total_energy"),
        ("--lr-strategy", "grid", "best_total_energy"),
        ("--aggression", "0.9", "best_total_energy"),
        ("--optimizer", "rmsprop", "best_total_energy"),
        ("--w", "0.9", "best_total_energy"),
        ("--retraction", "polar", "best_total_energy"),
        ("--nonneg", "softplus", "best_total_energy"),
    ] {
        let other = run(&[flag, value]);
        assert_ne!(other[key], base[key], "{flag} {value} changed nothing");
    }
    let f32 = run(&["--precision", "f32"]);
    assert_eq!(f32["precision"], "f32");
    let reference = run(&["--mode", "reference"]);
    assert_eq!(
        reference["settings"]["learning_rate"], 1e-3,
        "reference auto = 1e-3"
    );
}

#[test]
fn autograd_errors_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let y0p = dir.path().join("Y0.npy");
    write(&y0p, &randn(10, 3, 1));
    let out = dir.path().join("Y.npy");
    for (args, code) in [
        // every bad value of a flag is a usage error, as --help states
        (vec!["--optimizer", "padam"], 2),
        (vec!["--optimizer", "nope"], 2),
        (vec!["--lr-strategy", "nope"], 2),
        (vec!["--aggression", "1.5"], 2),
        (vec!["--fidelity-type", "nope"], 2),
        (vec!["--orth-type", "symmetric"], 2),
        (vec!["--w", "2"], 2),
        (vec!["--lr=-1"], 2),
        (vec!["--lr", "0"], 2),
        (vec!["--simplified"], 2),
        (vec!["--project-full-gradient"], 2),
    ] {
        let st = bin()
            .args(["autograd", "--backend", "cpu", "--y0"])
            .arg(&y0p)
            .arg("--out")
            .arg(&out)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(
            st.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        assert!(!out.exists(), "{args:?} wrote output");
        assert!(!st.stderr.is_empty());
    }
}
