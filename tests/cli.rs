//! The command-line contract: flags, outputs, summary keys, exit codes, nothing written on
//! failure.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nsa-flow"))
}

fn write(path: &Path, m: &nalgebra::DMatrix<f64>) {
    nsa_flow::io::write_matrix(path, m, nsa_flow::io::NpyDtype::F64).unwrap();
}

#[test]
fn run_writes_y_trace_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (y0p, x0p) = (dir.path().join("Y0.npy"), dir.path().join("X0.csv"));
    write(&y0p, &randn(50, 10, 1));
    nsa_flow::io::write_matrix(&x0p, &randn(50, 10, 2), nsa_flow::io::NpyDtype::F64).unwrap();
    let out = dir.path().join("Y.npy");
    let trace = dir.path().join("trace.csv");
    let summary = dir.path().join("summary.json");
    let st = bin()
        .args(["run", "--y0"])
        .arg(&y0p)
        .arg("--x0")
        .arg(&x0p)
        .args([
            "--w",
            "0.8",
            "--retraction",
            "soft_polar",
            "--max-iter",
            "50",
            "--tol",
            "1e-8",
            "--nonneg",
            "hard",
        ])
        .args([
            "--optimizer",
            "sgdp",
            "--lr",
            "1e-2",
            "--record-every",
            "1",
            "--window-size",
            "5",
            "--precision",
            "f64",
        ])
        .args([
            "--mode",
            "reference",
            "--backend",
            "cpu",
            "--seed",
            "42",
            "--out",
        ])
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
    let y = read(&out);
    assert_eq!(y.shape(), (50, 10));
    assert!(y.iter().all(|v| *v >= 0.0));
    let (header, rows) = csv_rows(&trace);
    assert_eq!(
        header,
        ["iter", "time", "fidelity", "orthogonality", "total_energy"]
    );
    assert_eq!(rows.len(), 50);
    let s = json(&summary);
    for key in [
        "iterations",
        "final_iter",
        "best_iteration",
        "best_total_energy",
        "stop_reason",
        "defect",
        "sparsity",
        "seconds",
        "backend",
        "mode",
        "precision",
    ] {
        assert!(s.get(key).is_some(), "summary lacks {key}");
    }
    assert_eq!(s["iterations"], 50);
    assert_eq!(s["mode"], "reference");
    assert_eq!(s["backend"], "cpu-f64");
    // the same problem through the library gives the same Y
    let params = nsa_flow::Params::default()
        .w(0.8)
        .max_iter(50)
        .tol(1e-8)
        .optimizer(nsa_flow::OptimizerKind::Sgdp)
        .learning_rate(nsa_flow::LearningRate::Value(1e-2))
        .mode(nsa_flow::Mode::Reference);
    let lib = nsa_flow::nsa_flow(&read(&y0p), Some(&read(&x0p)), &params).unwrap();
    assert_eq!(lib.y, y);
}

#[test]
fn f32_run_writes_f32_and_json_trace() {
    let dir = tempfile::tempdir().unwrap();
    let y0p = dir.path().join("Y0.npy");
    write(&y0p, &randn(30, 4, 3).abs());
    let out = dir.path().join("Y.npy");
    let trace = dir.path().join("t.json");
    let st = bin()
        .args(["run", "--y0"])
        .arg(&y0p)
        .args(["--precision", "f32", "--quiet", "--out"])
        .arg(&out)
        .arg("--trace")
        .arg(&trace)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(st.stdout.is_empty());
    let bytes = std::fs::read(&out).unwrap();
    assert!(String::from_utf8_lossy(&bytes[..80]).contains("'<f4'"));
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    assert!(!t.as_array().unwrap().is_empty());
}

#[test]
fn defect_and_retract_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let y = randn(20, 3, 4);
    let yp = dir.path().join("Y.npy");
    write(&yp, &y);
    let o = bin().arg("defect").arg(&yp).output().unwrap();
    assert!(o.status.success());
    let d: f64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert!((d - nsa_flow::invariant_orthogonality_defect(&y)).abs() < 1e-15);
    let rp = dir.path().join("R.csv");
    let o = bin()
        .arg("retract")
        .arg(&yp)
        .args([
            "--w",
            "0.5",
            "--retraction",
            "soft_polar",
            "--inv-sqrt",
            "ns",
            "--ns-iter",
            "10",
            "--out",
        ])
        .arg(&rp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = nsa_flow::retract(
        &y,
        &nsa_flow::RetractOptions::default()
            .w(0.5)
            .inv_method(nsa_flow::InvSqrtMethod::NewtonSchulz)
            .ns_iter(10),
    )
    .unwrap();
    assert!(rel_fro(&read(&rp), &want) < 1e-15);
}

#[test]
fn errors_exit_nonzero_and_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("Y0.npy");
    write(&good, &randn(10, 3, 5));
    let mut bad_nan = randn(10, 3, 6);
    bad_nan[(2, 1)] = f64::NAN;
    let nan = dir.path().join("nan.npy");
    write(&nan, &bad_nan);
    let zero = dir.path().join("zero.npy");
    write(&zero, &nalgebra::DMatrix::zeros(10, 3));
    let wrong_shape = dir.path().join("x0.npy");
    write(&wrong_shape, &randn(9, 3, 7));
    let wide = dir.path().join("wide.npy");
    write(&wide, &randn(3, 5, 8));
    let garbage = dir.path().join("garbage.npy");
    std::fs::write(&garbage, b"garbage").unwrap();
    let out = dir.path().join("out.npy");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--y0".into(), s(&nan)], "non-finite"),
        (vec!["--y0".into(), s(&zero)], "all zeros"),
        (
            vec!["--y0".into(), s(&good), "--x0".into(), s(&wrong_shape)],
            "shape mismatch",
        ),
        (
            vec!["--y0".into(), s(&good), "--w".into(), "1.5".into()],
            "outside [0, 1]",
        ),
        (vec!["--y0".into(), s(&wide)], "k = 5 columns > p = 3"),
        (
            vec![
                "--y0".into(),
                s(&good),
                "--retraction".into(),
                "cayley".into(),
            ],
            "unknown retraction",
        ),
        (
            vec![
                "--y0".into(),
                s(&good),
                "--optimizer".into(),
                "adamx".into(),
            ],
            "unknown optimizer",
        ),
        (
            vec![
                "--y0".into(),
                s(&good),
                "--optimizer".into(),
                "padam".into(),
            ],
            "PAdam",
        ),
        (
            vec!["--y0".into(), s(&good), "--mode".into(), "fixed".into()],
            "unknown mode",
        ),
        (
            vec!["--y0".into(), s(&good), "--max-iter".into(), "0".into()],
            "--max-iter",
        ),
        (
            vec!["--y0".into(), s(&dir.path().join("missing.npy"))],
            "cannot access",
        ),
        (vec!["--y0".into(), s(&garbage)], "malformed"),
        (
            // no adapter at all, or none by this name: an error either way
            vec![
                "--y0".into(),
                s(&good),
                "--backend".into(),
                "gpu".into(),
                "--adapter".into(),
                "no-such-adapter".into(),
            ],
            "adapter",
        ),
        (
            vec![
                "--y0".into(),
                s(&good),
                "--nonneg".into(),
                "softplus".into(),
            ],
            "softplus",
        ),
    ];
    for (args, needle) in cases {
        let o = bin()
            .arg("run")
            .args(&args)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        // a bad value of a flag is a usage error (2), like clap's own; bad data is 1
        let usage = [
            "outside [0, 1]",
            "unknown retraction",
            "unknown optimizer",
            "PAdam",
            "unknown mode",
            "--max-iter",
        ]
        .contains(&needle);
        assert_eq!(
            o.status.code(),
            Some(if usage { 2 } else { 1 }),
            "{args:?}: {err}"
        );
        assert!(
            err.contains(needle),
            "{args:?}: stderr lacks '{needle}': {err}"
        );
        assert!(!out.exists(), "{args:?} left an output file");
    }
    // a failing second output removes the first
    let o = bin()
        .arg("run")
        .arg("--y0")
        .arg(&good)
        .arg("--out")
        .arg(&out)
        .arg("--summary")
        .arg(dir.path().join("no/such/dir/s.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(!out.exists());
    // usage errors are exit code 2
    let o = bin().args(["run", "--w", "0.5"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn cli_replays_a_reference_run_with_a_given_start() {
    // the golden X0 = None case: the reference's perturbed start is passed with --start
    let case = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/golden/flow/fast_soft_w05_X0none_50x10");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("Y.npy");
    let summary = dir.path().join("s.json");
    let o = bin()
        .arg("run")
        .arg("--y0")
        .arg(case.join("Y0.npy"))
        .arg("--start")
        .arg(case.join("Y_start.npy"))
        .args([
            "--w",
            "0.5",
            "--max-iter",
            "100",
            "--tol",
            "1e-8",
            "--lr",
            "0.01",
            "--mode",
            "reference",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .arg("--summary")
        .arg(&summary)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(rel_fro(&read(&out), &read(case.join("Y_out.npy"))) < 1e-8);
    let s = json(&summary);
    assert_eq!(s["iterations"], 100);
    assert_eq!(s["best_iteration"], 100);
}
