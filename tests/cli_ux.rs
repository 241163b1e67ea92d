//! The command line as a daily tool: `--plot` figures, `sweep`, `--quiet`, no progress output
//! off a terminal, `--help` examples and the exit codes.
#![cfg(feature = "cli")]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nsa-flow"))
}

fn write(path: &Path, m: &nalgebra::DMatrix<f64>) {
    nsa_flow::io::write_matrix(path, m, nsa_flow::io::NpyDtype::F64).unwrap();
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A 40×4 problem: Y0 and X0 written into `dir`.
fn problem(dir: &Path) -> (PathBuf, PathBuf) {
    let (y0, x0) = (dir.join("Y0.npy"), dir.join("X0.npy"));
    write(&y0, &randn(40, 4, 11));
    write(&x0, &randn(40, 4, 12).map(f64::abs));
    (y0, x0)
}

/// The flags every run of these tests shares (the CPU, so the results are exact).
const FLAGS: [&str; 6] = ["--backend", "cpu", "--max-iter", "60", "--tol", "1e-7"];

fn check_svg(path: &Path, needles: &[&str]) {
    let svg = std::fs::read_to_string(path).unwrap();
    let body = svg.trim();
    assert!(body.starts_with("<svg"), "{}: not an SVG", path.display());
    assert!(
        body.ends_with("</svg>"),
        "{}: truncated SVG",
        path.display()
    );
    assert_eq!(
        body.matches("<text").count(),
        body.matches("</text>").count(),
        "unbalanced <text> elements"
    );
    // the text elements' contents (plotters writes them on their own line)
    let texts: Vec<&str> = body
        .split("<text")
        .skip(1)
        .filter_map(|t| {
            let inner = &t[t.find('>')? + 1..];
            Some(inner[..inner.find("</text>")?].trim())
        })
        .collect();
    for n in needles {
        assert!(
            texts.contains(n),
            "{} has no text {n:?}; it has {texts:?}",
            path.display()
        );
    }
}

/// Decodes a PNG; its size and RGB bytes.
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG magic");
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn has_colour(rgb: &[u8], c: [u8; 3]) -> bool {
    rgb.chunks(3).any(|p| p == c)
}

#[test]
fn plot_writes_svg_and_png_traces() {
    let dir = tempfile::tempdir().unwrap();
    let (y0, x0) = problem(dir.path());
    let (svg, png_path, trace) = (
        dir.path().join("t.svg"),
        dir.path().join("t.PNG"),
        dir.path().join("t.json"),
    );
    for plot in [&svg, &png_path] {
        let o = bin()
            .args(["run", "--y0"])
            .arg(&y0)
            .arg("--x0")
            .arg(&x0)
            .args(["--w", "0.8", "--retraction", "polar"])
            .args(FLAGS)
            .arg("--out")
            .arg(dir.path().join("Y.npy"))
            .arg("--trace")
            .arg(&trace)
            .arg("--plot")
            .arg(plot)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", show(&o));
    }
    check_svg(
        &svg,
        &[
            "NSA-Flow optimization trace: polar, w = 0.8",
            "Fidelity and orthogonality (dual scales)",
            "Iteration",
            "Fidelity energy",
            "Orthogonality defect",
            "Fidelity",
            "Orthogonality",
        ],
    );
    let (w, h, rgb) = decode_png(&png_path);
    assert_eq!((w, h), (1350, 840));
    // both series are drawn in the reference's colours, and the title is text
    assert!(
        has_colour(&rgb, [0x1f, 0x78, 0xb4]),
        "no fidelity (blue) pixels"
    );
    assert!(
        has_colour(&rgb, [0x33, 0xa0, 0x2c]),
        "no orthogonality (green) pixels"
    );
    let title_band = &rgb[..(w * 40 * 3) as usize];
    assert!(
        title_band
            .chunks(3)
            .filter(|p| p.iter().all(|&c| c < 100))
            .count()
            > 200,
        "no title text in the top band"
    );
    // the trace's JSON is unchanged by --plot
    let rows = json(&trace);
    assert!(rows.as_array().is_some_and(|r| !r.is_empty()));

    // autograd draws the same figure from its own trace
    let ag = dir.path().join("ag.svg");
    let o = bin()
        .args(["autograd", "--y0"])
        .arg(&y0)
        .arg("--x0")
        .arg(&x0)
        .args([
            "--w",
            "0.3",
            "--backend",
            "cpu",
            "--max-iter",
            "20",
            "--out",
        ])
        .arg(dir.path().join("Yag.npy"))
        .arg("--plot")
        .arg(&ag)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    check_svg(&ag, &["NSA-Flow optimization trace: soft_polar, w = 0.3"]);
}

#[test]
fn plot_with_a_bad_extension_fails_before_running_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (y0, _) = problem(dir.path());
    let out = dir.path().join("Y.npy");
    let o = bin()
        .args(["run", "--y0"])
        .arg(&y0)
        .args(FLAGS)
        .arg("--out")
        .arg(&out)
        .arg("--plot")
        .arg(dir.path().join("t.pdf"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--plot"));
    assert!(!out.exists());
}

#[test]
fn sweep_writes_every_file_and_each_y_equals_run() {
    let dir = tempfile::tempdir().unwrap();
    let (y0, x0) = problem(dir.path());
    for with_x0 in [true, false] {
        let sweep_dir = dir.path().join(format!("sweep-{with_x0}"));
        let mut cmd = bin();
        cmd.args(["sweep", "--y0"]).arg(&y0);
        if with_x0 {
            cmd.arg("--x0").arg(&x0);
        }
        let o = cmd
            .args(["--ws", "0.9,0.25, 0.5"])
            .args(FLAGS)
            .arg("--out-dir")
            .arg(&sweep_dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", show(&o));
        assert!(
            o.stderr.is_empty(),
            "no progress output off a terminal: {}",
            show(&o)
        );
        let mut names: Vec<String> = std::fs::read_dir(&sweep_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "Y_w0.25.npy",
                "Y_w0.5.npy",
                "Y_w0.9.npy",
                "sweep.csv",
                "sweep.svg"
            ]
        );
        let csv = std::fs::read_to_string(sweep_dir.join("sweep.csv")).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "w,iterations,best_total_energy,fidelity,defect,sparsity"
        );
        assert_eq!(lines.len(), 4, "{csv}");
        for (line, w) in lines[1..].iter().zip(["0.9", "0.25", "0.5"]) {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 6, "{line}");
            assert_eq!(f[0], w);
            let iters: usize = f[1].parse().unwrap();
            assert!(iters >= 1);
            let vals: Vec<f64> = f[2..].iter().map(|v| v.parse().unwrap()).collect();
            assert!(vals.iter().all(|v| v.is_finite() && *v >= 0.0), "{line}");
            assert!(vals[3] <= 1.0, "sparsity is a fraction: {line}");

            // `run` at this w gives the same Y, bit for bit, and the CSV's statistics of it
            let y_run = dir.path().join(format!("run-{with_x0}-{w}.npy"));
            let mut run = bin();
            run.args(["run", "--y0"]).arg(&y0);
            if with_x0 {
                run.arg("--x0").arg(&x0);
            }
            let o = run
                .args(["--w", w])
                .args(FLAGS)
                .arg("--out")
                .arg(&y_run)
                .arg("--summary")
                .arg(dir.path().join("s.json"))
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", show(&o));
            let swept = std::fs::read(sweep_dir.join(format!("Y_w{w}.npy"))).unwrap();
            assert_eq!(
                swept,
                std::fs::read(&y_run).unwrap(),
                "Y_w{w}.npy differs from run"
            );
            let s = json(dir.path().join("s.json"));
            assert_eq!(s["iterations"].as_u64().unwrap() as usize, iters);
            // (serde_json's float parsing may be one ulp off; the CSV's round-trips exactly)
            let e = s["best_total_energy"].as_f64().unwrap();
            assert!(
                (e - vals[0]).abs() <= 4.0 * f64::EPSILON * e.abs(),
                "{e} vs {}",
                vals[0]
            );
            let y = read(&y_run);
            assert_eq!(nsa_flow::invariant_orthogonality_defect(&y), vals[2]);
            assert_eq!(nsa_flow::sparsity(&y), vals[3]);
            // fidelity: ‖Y − X‖/‖X‖ against the target the flow fitted
            if with_x0 {
                let t = read(&x0).map(|v| v.max(0.0));
                assert_eq!((&y - &t).norm() / t.norm(), vals[1]);
            }
        }
        check_svg(
            &sweep_dir.join("sweep.svg"),
            &[
                "NSA-Flow: choosing w",
                "Sparsity (fraction of zeros)",
                "Relative fidelity error ‖Y−X‖/‖X‖",
                "Orthogonality defect (right axis)",
                "w (0 = fidelity only, 1 = orthogonality only)",
                "Sparsity, relative fidelity error",
                "Orthogonality defect (log scale)",
            ],
        );
    }
}

#[test]
fn bad_ws_is_a_usage_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (y0, _) = problem(dir.path());
    let out_dir = dir.path().join("never");
    for ws in [
        "", "0.1,,0.5", ",", "nan", "0.5,NaN", "inf", "1.5", "-0.1", "0.5,0.5", "0.5,0.50", "abc",
        "0.1;0.2",
    ] {
        let o = bin()
            .args(["sweep", "--y0"])
            .arg(&y0)
            .arg(format!("--ws={ws}"))
            .args(["--backend", "cpu", "--out-dir"])
            .arg(&out_dir)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "--ws {ws:?}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--ws"), "--ws {ws:?}: {err}");
        assert!(o.stdout.is_empty());
        assert!(!out_dir.exists(), "--ws {ws:?} created the output folder");
    }
    // a missing --ws is a usage error too
    let o = bin()
        .args(["sweep", "--y0"])
        .arg(&y0)
        .arg("--out-dir")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    // a failing run (a missing input) is a failure, with nothing written
    let o = bin()
        .args(["sweep", "--y0"])
        .arg(dir.path().join("missing.npy"))
        .args(["--ws", "0.5", "--backend", "cpu", "--out-dir"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(!out_dir.exists());
}

#[test]
fn quiet_prints_nothing_and_no_progress_reaches_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let (y0, x0) = problem(dir.path());
    let base = |sub: &str| {
        let mut c = bin();
        c.args([sub, "--y0"]).arg(&y0).arg("--x0").arg(&x0).args([
            "--backend",
            "cpu",
            "--max-iter",
            "40",
        ]);
        c
    };
    let runs: Vec<(&str, Command)> = vec![
        ("run -q", {
            let mut c = base("run");
            c.arg("-q").arg("--out").arg(dir.path().join("a.npy"));
            c
        }),
        ("autograd --quiet", {
            let mut c = base("autograd");
            c.arg("--quiet").arg("--out").arg(dir.path().join("b.npy"));
            c
        }),
        ("sweep --quiet", {
            let mut c = base("sweep");
            c.args(["--quiet", "--ws", "0.2,0.8", "--out-dir"])
                .arg(dir.path().join("c"));
            c
        }),
    ];
    for (what, mut c) in runs {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{what}: {}", show(&o));
        assert!(
            o.stdout.is_empty() && o.stderr.is_empty(),
            "{what}: {}",
            show(&o)
        );
    }
    // without --quiet: the one summary line on stdout, and nothing on stderr (no progress
    // bar off a terminal), also for a run that lasts well over the bar's one-second delay
    let big = dir.path().join("big.npy");
    write(&big, &randn(2000, 12, 5));
    let t0 = std::time::Instant::now();
    let o = bin()
        .args(["run", "--y0"])
        .arg(&big)
        .args(["--backend", "cpu", "--mode", "reference", "--tol", "0"])
        .args(["--max-iter", "2000", "--out"])
        .arg(dir.path().join("d.npy"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    eprintln!(
        "the long run took {:.2} s: {}",
        t0.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(o.stderr.is_empty(), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("iterations"), "{out}");
    // --verbose: plain lines on stderr, one per iteration
    let o = base("run")
        .arg("--verbose")
        .arg("--out")
        .arg(dir.path().join("e.npy"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.lines().count() >= 2, "{err}");
    assert!(
        err.lines().all(|l| l.starts_with("iter ")),
        "plain lines only: {err}"
    );
    assert!(!err.contains('\u{1b}'), "no terminal escapes: {err}");
}

#[test]
fn help_has_examples_and_exit_codes_for_every_subcommand() {
    let o = bin().arg("--help").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let top = String::from_utf8_lossy(&o.stdout);
    assert!(
        top.contains("Exit codes:") && top.contains("2  usage error"),
        "{top}"
    );
    for sub in [
        "run",
        "sweep",
        "defect",
        "bench",
        "info",
        "autograd",
        "retract",
        "optimizers",
    ] {
        let o = bin().args([sub, "--help"]).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{sub}");
        let h = String::from_utf8_lossy(&o.stdout);
        assert!(h.contains("Examples:"), "{sub} --help lacks examples:\n{h}");
        assert!(
            h.contains(&format!("nsa-flow {sub}")),
            "{sub} --help has no example of itself:\n{h}"
        );
        assert!(
            h.contains("Exit codes"),
            "{sub} --help lacks the exit codes:\n{h}"
        );
    }
    let sweep = String::from_utf8_lossy(&bin().args(["sweep", "--help"]).output().unwrap().stdout)
        .to_string();
    assert!(
        sweep.contains("‖Y − X‖_F / ‖X‖_F"),
        "sweep --help defines fidelity"
    );
    assert!(sweep.contains("Y_w0.5.npy"), "sweep --help names the files");
    // usage errors exit 2
    let o = bin().args(["run", "--no-such-flag"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = bin().arg("no-such-command").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn gpu_sweep_matches_gpu_runs() {
    if gpu_or_skip("gpu_sweep_matches_gpu_runs").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (y0, x0) = problem(dir.path());
    let gpu = ["--backend", "gpu", "--precision", "f32", "--max-iter", "30"];
    let sweep_dir = dir.path().join("sweep");
    let o = bin()
        .args(["sweep", "--quiet", "--y0"])
        .arg(&y0)
        .arg("--x0")
        .arg(&x0)
        .args(["--ws", "0.3,0.7"])
        .args(gpu)
        .arg("--out-dir")
        .arg(&sweep_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    for w in ["0.3", "0.7"] {
        let y_run = dir.path().join(format!("run-{w}.npy"));
        let o = bin()
            .args(["run", "--quiet", "--y0"])
            .arg(&y0)
            .arg("--x0")
            .arg(&x0)
            .args(["--w", w])
            .args(gpu)
            .arg("--out")
            .arg(&y_run)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", show(&o));
        assert_eq!(
            std::fs::read(sweep_dir.join(format!("Y_w{w}.npy"))).unwrap(),
            std::fs::read(&y_run).unwrap(),
            "the GPU sweep's Y at w = {w} differs from the GPU run's"
        );
    }
}
