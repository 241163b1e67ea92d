mod common;

// The command line's GPU side: `info`, `run --backend gpu` (summary `readbacks` and
// `adapter`), `run --verify`, `bench --backend gpu`, and the `--adapter` usage error.
//
// Tests that need an adapter skip with a printed reason when there is none
// (`common::gpu_or_skip`); with `NSA_FLOW_REQUIRE_GPU=1` they fail instead. Inputs are tiny:
// on a software adapter (lavapipe) every dispatch is slow.

use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nsa-flow"))
}

fn write(path: &Path, m: &nalgebra::DMatrix<f64>) {
    nsa_flow::io::write_matrix(path, m, nsa_flow::io::NpyDtype::F64).unwrap();
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A small problem: Y0 with mixed signs, a non-negative X0.
fn problem(dir: &Path, p: usize, k: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let (y0, x0) = (dir.join("Y0.npy"), dir.join("X0.npy"));
    write(&y0, &randn(p, k, 11));
    write(&x0, &randn(p, k, 12).abs());
    (y0, x0)
}

#[test]
fn info_exits_zero_and_lists_the_adapters() {
    let o = bin().arg("info").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let adapters = nsa_flow::gpu::list_adapters();
    if adapters.is_empty() {
        assert!(out.contains("no GPU adapter"), "{}", text(&o));
    } else {
        for a in &adapters {
            assert!(out.contains(&a.name), "info lacks {}: {}", a.name, text(&o));
        }
        assert!(out.contains("SHADER_F64"), "{}", text(&o));
        assert!(
            out.contains("max_storage_buffer_binding_size"),
            "{}",
            text(&o)
        );
        assert!(out.contains("--backend gpu"), "{}", text(&o));
        assert!(out.contains("--backend auto"), "{}", text(&o));
    }
    // --json: the same, parseable
    let o = bin().args(["info", "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let listed = v["adapters"].as_array().unwrap();
    assert_eq!(listed.len(), adapters.len());
    for (j, a) in listed.iter().zip(&adapters) {
        assert_eq!(j["name"], a.name.as_str());
        assert_eq!(j["api"], a.backend.as_str());
        assert_eq!(j["shader_f64"], a.shader_f64);
        assert_eq!(j["software"], a.is_software);
        assert_eq!(
            j["limits"]["max_storage_buffer_binding_size"],
            a.max_storage_buffer_binding_size
        );
        assert!(j["features"].is_array());
    }
    for pick in ["gpu", "auto_f64", "auto_f32"] {
        assert!(v["picks"][pick].is_object(), "picks lacks {pick}: {v}");
    }
    // auto never picks a software adapter (unless NSA_FLOW_ADAPTER names one)
    if std::env::var_os("NSA_FLOW_ADAPTER").is_none() {
        for pick in ["auto_f64", "auto_f32"] {
            if let Some(i) = v["picks"][pick]["index"].as_u64() {
                assert!(
                    !adapters[i as usize].is_software,
                    "{pick} picked a software adapter: {v}"
                );
            }
        }
    }
}

#[test]
fn info_exits_zero_without_an_adapter() {
    // WGPU_BACKEND=metal on a machine without Metal (or =vulkan with no ICD elsewhere)
    // leaves wgpu with no adapter at all
    let backend = if cfg!(target_os = "macos") {
        "dx12"
    } else {
        "metal"
    };
    let o = bin()
        .arg("info")
        .env("WGPU_BACKEND", backend)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no GPU adapter found"),
        "{}",
        text(&o)
    );
    let o = bin()
        .args(["info", "--json"])
        .env("WGPU_BACKEND", backend)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["adapters"].as_array().unwrap().len(), 0);
    assert_eq!(v["picks"]["gpu"]["runs_on"], "unavailable");
    assert_eq!(v["picks"]["auto_f64"]["runs_on"], "cpu");
}

#[test]
fn run_on_the_gpu_reports_readbacks_and_adapter() {
    let Some(ctx) = gpu_or_skip("run_on_the_gpu_reports_readbacks_and_adapter") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (y0, x0) = problem(dir.path(), 40, 4);
    // f32 runs on every adapter (f64 needs SHADER_F64)
    let out = dir.path().join("Y.npy");
    let summary = dir.path().join("s.json");
    let o = bin()
        .args(["run", "--y0"])
        .arg(&y0)
        .arg("--x0")
        .arg(&x0)
        .args([
            "--backend",
            "gpu",
            "--precision",
            "f32",
            "--max-iter",
            "10",
            "--out",
        ])
        .arg(&out)
        .arg("--summary")
        .arg(&summary)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("readbacks"), "{}", text(&o));
    assert!(stdout.contains(&ctx.adapter().name), "{}", text(&o));
    assert_eq!(read(&out).shape(), (40, 4));
    let s = json(&summary);
    let readbacks = s["readbacks"]
        .as_u64()
        .unwrap_or_else(|| panic!("readbacks: {s}"));
    assert!(readbacks >= 1, "{s}");
    assert_eq!(s["adapter"]["name"], ctx.adapter().name.as_str());
    assert_eq!(s["adapter"]["api"], ctx.adapter().backend.as_str());
    assert!(s["backend"].as_str().unwrap().starts_with("gpu-f32"), "{s}");

    // on the CPU both are null
    let o = bin()
        .args(["run", "--y0"])
        .arg(&y0)
        .arg("--x0")
        .arg(&x0)
        .args(["--backend", "cpu", "--max-iter", "10", "--quiet", "--out"])
        .arg(&out)
        .arg("--summary")
        .arg(&summary)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let s = json(&summary);
    assert!(s["readbacks"].is_null(), "{s}");
    assert!(s["adapter"].is_null(), "{s}");
}

#[test]
fn cpu_summary_has_null_readbacks_and_adapter() {
    // no adapter needed
    let dir = tempfile::tempdir().unwrap();
    let (y0, x0) = problem(dir.path(), 20, 3);
    let out = dir.path().join("Y.csv");
    let summary = dir.path().join("s.json");
    let o = bin()
        .args(["run", "--y0"])
        .arg(&y0)
        .arg("--x0")
        .arg(&x0)
        .args(["--backend", "cpu", "--max-iter", "5", "--quiet", "--out"])
        .arg(&out)
        .arg("--summary")
        .arg(&summary)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let s = json(&summary);
    assert!(s.get("readbacks").is_some_and(|v| v.is_null()), "{s}");
    assert!(s.get("adapter").is_some_and(|v| v.is_null()), "{s}");
}

/// `nsa-flow <command> --verify` in f64 on a small p×k problem: the temporary folder, Y0's
/// path, the output and the summary (`None`, skipped, without an adapter or without
/// SHADER_F64; with `NSA_FLOW_REQUIRE_GPU=1` either fails instead). Asserts exit 0 and the
/// comparison's report on stdout.
fn f64_verify(
    test: &str,
    command: &str,
    (p, k): (usize, usize),
    max_iter: &str,
) -> Option<(
    tempfile::TempDir,
    std::path::PathBuf,
    Output,
    serde_json::Value,
)> {
    let ctx = gpu_or_skip(test)?;
    if !ctx.supports_f64() {
        if std::env::var("NSA_FLOW_REQUIRE_GPU").is_ok_and(|v| v == "1") {
            panic!("NSA_FLOW_REQUIRE_GPU=1 but the adapter has no SHADER_F64");
        }
        eprintln!("skipping {test}: the adapter has no SHADER_F64");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (y0, x0) = problem(dir.path(), p, k);
    let summary = dir.path().join("v.json");
    let o = bin()
        .args([command, "--verify", "--y0"])
        .arg(&y0)
        .arg("--x0")
        .arg(&x0)
        .args(["--precision", "f64", "--max-iter", max_iter, "--summary"])
        .arg(&summary)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("Y relative difference"), "{}", text(&o));
    let s = json(&summary);
    Some((dir, y0, o, s))
}

#[test]
fn run_verify_agrees_on_a_small_f64_problem() {
    let Some((_dir, y0, _, s)) = f64_verify(
        "run_verify_agrees_on_a_small_f64_problem",
        "run",
        (40, 4),
        "30",
    ) else {
        return;
    };
    assert_eq!(s["verify"]["agrees"], true, "{s}");
    assert!(s["verify"]["y_rel_diff"].as_f64().unwrap() <= 1e-8, "{s}");
    assert!(s["backend"].as_str().unwrap().starts_with("gpu-f64"), "{s}");
    assert!(s["readbacks"].as_u64().is_some(), "{s}");
    // the adapter comes with the GPU run's result (no longer matched back from its name)
    assert!(s["adapter"]["name"].is_string(), "{s}");

    // --verify with --backend cpu is a usage error
    let o = bin()
        .args(["run", "--verify", "--backend", "cpu", "--y0"])
        .arg(&y0)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// `autograd --verify` goes through the library's comparison (`verify_autograd`): the same
/// report and summary section as `run --verify`.
#[test]
fn autograd_verify_agrees_on_a_small_f64_problem() {
    let Some((_dir, _, o, s)) = f64_verify(
        "autograd_verify_agrees_on_a_small_f64_problem",
        "autograd",
        (30, 3),
        "15",
    ) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("agree: same iterations"), "{}", text(&o));
    let v = &s["verify"];
    assert_eq!(v["agrees"], true, "{s}");
    assert!(v["y_rel_diff"].as_f64().unwrap() <= 1e-8, "{s}");
    assert!(v["max_energy_rel_diff"].as_f64().unwrap() <= 1e-8, "{s}");
    assert!(v["first_divergence"].is_null(), "{s}");
    assert_eq!(v["energy_tol"].as_f64(), Some(1e-8), "{s}");
    assert!(
        v["cpu"]["backend"].as_str().unwrap().starts_with("cpu"),
        "{s}"
    );
    assert!(v["cpu"]["stop_reason"].is_string(), "{s}");
}

#[test]
fn bench_on_the_gpu_prints_the_bandwidth_ratio() {
    if gpu_or_skip("bench_on_the_gpu_prints_the_bandwidth_ratio").is_none() {
        return;
    }
    let o = bin()
        .args([
            "bench",
            "--backend",
            "gpu",
            "--p",
            "2000",
            "--k",
            "8",
            "--iters",
            "3",
            "--repeats",
            "1",
            "--mode",
            "corrected",
            "--precision",
            "f32",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("adapter: "), "{}", text(&o));
    assert!(stdout.contains("readbacks/iteration"), "{}", text(&o));
    let line = stdout
        .lines()
        .find(|l| l.contains("measured/bound = "))
        .unwrap_or_else(|| panic!("no ratio line: {}", text(&o)));
    let ratio: f64 = line.rsplit("= ").next().unwrap().trim().parse().unwrap();
    assert!(ratio.is_finite() && ratio > 0.0, "{line}");

    // --json
    let o = bin()
        .args([
            "bench",
            "--backend",
            "gpu",
            "--p",
            "2000",
            "--k",
            "8",
            "--iters",
            "3",
            "--repeats",
            "1",
            "--mode",
            "corrected",
            "--precision",
            "f32",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert!(v["bandwidth"]["gb_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["bound"]["bytes_per_iteration"], 3 * 2000 * 8 * 4);
    let run = &v["runs"][0];
    assert!(run["ratio_to_bound"].as_f64().unwrap() > 0.0, "{v}");
    assert!(run["readbacks_per_iteration"].as_f64().is_some(), "{v}");
    assert!(v["adapter"]["name"].is_string(), "{v}");
    // the device work, counted from the recorded launches
    let work = &run["device_work"];
    let launches = work["launches_per_iteration"].as_f64().unwrap();
    let passes = work["passes_over_pk_per_iteration"].as_f64().unwrap();
    assert!(launches >= 5.0, "{v}");
    assert!(
        passes >= 3.0,
        "{v}: an iteration reads Y and X0 and writes Y at least"
    );
    assert!(
        work["launches_per_evaluation"].as_f64().unwrap() <= launches,
        "{v}"
    );
    assert_eq!(work["copies_per_iteration"], 0.0, "{v}");
    assert!(stdout.contains("device work: "), "{}", text(&o));
}

#[test]
fn bench_on_the_cpu_prints_the_bandwidth_ratio() {
    let o = bin()
        .args([
            "bench",
            "--backend",
            "cpu",
            "--p",
            "2000",
            "--k",
            "8",
            "--iters",
            "3",
            "--repeats",
            "1",
            "--mode",
            "corrected",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("ms/iteration"), "{}", text(&o));
    assert!(stdout.contains("host parallel copy"), "{}", text(&o));
    assert!(stdout.contains("measured/bound = "), "{}", text(&o));
    assert!(!stdout.contains("readbacks"), "{}", text(&o));
}

#[test]
fn usage_errors_exit_two() {
    let dir = tempfile::tempdir().unwrap();
    let (y0, _) = problem(dir.path(), 10, 2);
    let out = dir.path().join("Y.npy");
    // an adapter named with the CPU backend
    let o = bin()
        .args(["run", "--backend", "cpu", "--adapter", "foo", "--y0"])
        .arg(&y0)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--adapter"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
    // an adapter that does not exist is a failed run (exit 1), not a silent CPU fallback
    let o = bin()
        .args(["run", "--adapter", "no-such-adapter-xyz", "--y0"])
        .arg(&y0)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!out.exists());
    // bench: bad names and values
    for args in [
        &["bench", "--backend", "cuda"][..],
        &["bench", "--mode", "fixed"],
        &["bench", "--precision", "f16"],
        &["bench", "--p", "0"],
        &["bench", "--backend", "cpu", "--adapter", "foo"],
    ] {
        let o = bin().args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
    }
    let o = bin().args(["bench", "--backend", "cuda"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown backend 'cuda'"),
        "{}",
        text(&o)
    );
}

#[test]
fn run_backend_gpu_without_an_adapter_fails_and_writes_nothing() {
    // no adapter at all (see info_exits_zero_without_an_adapter): gpu is an error, auto the CPU
    let backend = if cfg!(target_os = "macos") {
        "dx12"
    } else {
        "metal"
    };
    let dir = tempfile::tempdir().unwrap();
    let (y0, x0) = problem(dir.path(), 10, 2);
    let out = dir.path().join("Y.npy");
    let summary = dir.path().join("s.json");
    let o = bin()
        .env("WGPU_BACKEND", backend)
        .args(["run", "--backend", "gpu", "--y0"])
        .arg(&y0)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("backend 'gpu' is unavailable"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
    let o = bin()
        .env("WGPU_BACKEND", backend)
        .args([
            "run",
            "--backend",
            "auto",
            "--max-iter",
            "5",
            "--quiet",
            "--y0",
        ])
        .arg(&y0)
        .arg("--x0")
        .arg(&x0)
        .arg("--out")
        .arg(&out)
        .arg("--summary")
        .arg(&summary)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let s = json(&summary);
    assert!(s["backend"].as_str().unwrap().starts_with("cpu"), "{s}");
    assert!(s["adapter"].is_null(), "{s}");
}
