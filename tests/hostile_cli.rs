//! Command-line regressions of the hostile-input findings (../shared/reliability/
//! FUZZ-FINDINGS.md): one test per defect D1–D16, each with the findings' reproducer, each
//! failing on the binary before the fix. `NSA_FLOW_TEST_BIN` points them at another binary
//! (to show that they fail on an older one).

mod common;

use common::randn;
use nalgebra::DMatrix;
use nsa_flow::io::{write_matrix, NpyDtype};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let exe = std::env::var_os("NSA_FLOW_TEST_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_nsa-flow").into());
    let mut c = Command::new(exe);
    // silence Mesa's device-select layer and keep the tests off any GPU
    c.env("NODEVICE_SELECT", "1");
    c
}

fn write(path: &Path, m: &DMatrix<f64>) {
    write_matrix(path, m, NpyDtype::F64).unwrap();
}

fn raw_npy(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut h = dict.to_string();
    h.push_str(&" ".repeat((64 - (10 + h.len() + 1) % 64) % 64));
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    b
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code `code` (never a signal), and for errors a first stderr line that says so.
fn expect(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: status {:?}, stderr: {}",
        o.status,
        stderr(o)
    );
    if code != 0 {
        let first = stderr(o).lines().next().unwrap_or_default().to_string();
        assert!(first.starts_with("error: "), "{what}: first line {first:?}");
    }
}

struct Problem {
    dir: tempfile::TempDir,
    y0: PathBuf,
    x0: PathBuf,
}

fn problem() -> Problem {
    let dir = tempfile::tempdir().unwrap();
    let y0 = dir.path().join("y0.npy");
    let x0 = dir.path().join("x0.npy");
    let y = randn(50, 10, 1);
    write(&y0, &y);
    write(&x0, &y.abs());
    Problem { dir, y0, x0 }
}

fn p(d: &Problem, name: &str) -> PathBuf {
    d.dir.path().join(name)
}

const FAST: [&str; 4] = ["--max-iter", "5", "--backend", "cpu"];

fn hidden(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn d1_d3_crafted_shapes_are_malformed_files_through_every_command() {
    let d = problem();
    let n = 1001u128;
    let x = ((1u128 << 64) + n) / 3;
    let oob = p(&d, "oob.npy");
    let data: Vec<u8> = (0..n).flat_map(|_| 1.5f64.to_le_bytes()).collect();
    std::fs::write(
        &oob,
        raw_npy(
            &format!(
                "{{'descr': '<f8', 'fortran_order': False, 'shape': ({n},), 'shape': (3, {x}), }}"
            ),
            &data,
        ),
    )
    .unwrap();
    let dup = p(&d, "dup.npy");
    std::fs::write(
        &dup,
        raw_npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'shape': (1099511627776, 1099511627776), }",
            &1.0f64.to_le_bytes(),
        ),
    )
    .unwrap();
    let list = p(&d, "list.npy");
    std::fs::write(
        &list,
        raw_npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': [50, 10], }",
            &[0u8; 4000],
        ),
    )
    .unwrap();
    let out = p(&d, "o.npy");
    for (file, needle) in [
        (&oob, "duplicate key 'shape'"),
        (&dup, "duplicate key 'shape'"),
        (&list, "tuple"),
    ] {
        let runs: Vec<Vec<&std::ffi::OsStr>> = vec![
            vec!["defect".as_ref(), file.as_os_str()],
            vec![
                "run".as_ref(),
                "--y0".as_ref(),
                file.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
            ],
            vec![
                "run".as_ref(),
                "--y0".as_ref(),
                d.y0.as_os_str(),
                "--x0".as_ref(),
                file.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
            ],
            vec![
                "retract".as_ref(),
                file.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
            ],
            vec![
                "batch".as_ref(),
                "--y0".as_ref(),
                file.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
            ],
        ];
        for args in runs {
            let o = bin()
                .args(&args)
                .args(["--backend", "cpu"])
                .output()
                .unwrap();
            expect(&o, 1, &format!("{args:?}"));
            let e = stderr(&o);
            assert!(
                e.contains("malformed file") && e.contains(needle),
                "{args:?}: {e}"
            );
            assert!(!out.exists());
        }
    }
}

#[test]
fn d2_bench_sizes_that_overflow_or_exceed_memory_are_typed_errors() {
    for (p_, k, needle) in [
        ("4294967296", "4294967296", "overflows"),
        ("18446744073709551615", "18446744073709551615", "overflows"),
        ("1000000000", "1000", "memory"),
        ("50", "100000", "memory"),
    ] {
        let o = bin().args(["bench", "--p", p_, "--k", k]).output().unwrap();
        expect(&o, 1, &format!("bench {p_}×{k}"));
        assert!(stderr(&o).contains(needle), "{p_}×{k}: {}", stderr(&o));
    }
}

#[test]
fn d4_large_requests_are_refused_with_the_size_not_aborted() {
    let d = problem();
    let wide = p(&d, "wide.csv");
    std::fs::write(&wide, vec!["1.5"; 100_000].join(",") + "\n").unwrap();
    // the defect of a 1×100000 matrix needs only its 1×1 Gram: computed
    let o = bin().args(["defect"]).arg(&wide).output().unwrap();
    expect(&o, 0, "defect wide");
    let d_val: f64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert!((d_val - (1.0 - 1e-5)).abs() < 1e-12, "{d_val}");
    // its retraction needs the 100000×100000 inverse square root: refused by the budget
    let r = p(&d, "r.npy");
    let o = bin()
        .arg("retract")
        .arg(&wide)
        .arg("--out")
        .arg(&r)
        .output()
        .unwrap();
    expect(&o, 1, "retract wide");
    assert!(stderr(&o).contains("memory"), "{}", stderr(&o));
    assert!(!r.exists());
    // 128 bytes announcing 2^40 empty matrices
    let empty = p(&d, "empty.npy");
    std::fs::write(
        &empty,
        raw_npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776, 1, 0), }",
            &[],
        ),
    )
    .unwrap();
    let t = std::time::Instant::now();
    let o = bin()
        .args(["batch", "--y0"])
        .arg(&empty)
        .arg("--out")
        .arg(&r)
        .output()
        .unwrap();
    expect(&o, 1, "batch 2^40 empty");
    assert!(t.elapsed().as_secs() < 10);
    // a budget too small for the solve: the typed refusal, with the variable that sets it
    let o = bin()
        .env("NSA_FLOW_MEMORY_BUDGET", "20000")
        .args(["run", "--y0"])
        .arg(&d.y0)
        .args(FAST)
        .arg("--out")
        .arg(&r)
        .output()
        .unwrap();
    expect(&o, 1, "budget");
    assert!(
        stderr(&o).contains("NSA_FLOW_MEMORY_BUDGET"),
        "{}",
        stderr(&o)
    );
    assert!(!r.exists());
}

#[cfg(unix)]
#[test]
fn d4_a_valid_run_under_an_address_space_limit_fails_cleanly_or_succeeds() {
    let d = problem();
    let big = p(&d, "big.npy");
    write(&big, &randn(200_000, 8, 3));
    for kib in ["200000", "400000", "800000"] {
        let out = p(&d, &format!("Y{kib}.npy"));
        let exe = std::env::var_os("NSA_FLOW_TEST_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_nsa-flow").into());
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -v {kib}; exec \"$0\" \"$@\""))
            .arg(exe)
            .args(["run", "--y0"])
            .arg(&big)
            .args(["--max-iter", "3", "--backend", "cpu", "--quiet", "--out"])
            .arg(&out)
            .env("NODEVICE_SELECT", "1")
            .output()
            .unwrap();
        match o.status.code() {
            Some(0) => assert!(out.exists()),
            Some(1) => {
                assert!(stderr(&o).starts_with("error: "), "{kib}: {}", stderr(&o));
                assert!(!out.exists());
            }
            _ => panic!("ulimit -v {kib}: {:?}: {}", o.status, stderr(&o)),
        }
    }
}

#[test]
fn d5_a_late_failure_keeps_every_existing_file() {
    let d = problem();
    let old = p(&d, "old.npy");
    let dir_svg = p(&d, "D.svg");
    std::fs::create_dir(&dir_svg).unwrap();
    let no_dir = p(&d, "no/such/dir/s.json");
    for (sub, extra) in [
        (
            "run",
            vec!["--plot".to_string(), dir_svg.display().to_string()],
        ),
        (
            "run",
            vec!["--summary".to_string(), no_dir.display().to_string()],
        ),
        (
            "autograd",
            vec!["--plot".to_string(), dir_svg.display().to_string()],
        ),
    ] {
        std::fs::write(&old, "precious").unwrap();
        let o = bin()
            .arg(sub)
            .arg("--y0")
            .arg(&d.y0)
            .arg("--x0")
            .arg(&d.x0)
            .args(FAST)
            .arg("--out")
            .arg(&old)
            .args(&extra)
            .output()
            .unwrap();
        expect(&o, 1, &format!("{sub} {extra:?}"));
        assert_eq!(
            std::fs::read_to_string(&old).unwrap(),
            "precious",
            "{sub} {extra:?}"
        );
    }
    // batch: the existing output survives a summary that cannot be written
    let b = p(&d, "b.npy");
    nsa_flow::io::write_batch(&b, &[randn(20, 3, 1), randn(20, 3, 2)], NpyDtype::F64).unwrap();
    std::fs::write(&old, "precious").unwrap();
    let o = bin()
        .args(["batch", "--y0"])
        .arg(&b)
        .args(FAST)
        .arg("--out")
        .arg(&old)
        .arg("--summary")
        .arg(&no_dir)
        .output()
        .unwrap();
    expect(&o, 1, "batch");
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "precious");
    // sweep: an existing Y_w0.5.npy survives a sweep.svg that cannot be written
    let out_dir = p(&d, "sweep");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::write(out_dir.join("Y_w0.5.npy"), "precious").unwrap();
    std::fs::create_dir(out_dir.join("sweep.svg")).unwrap();
    let o = bin()
        .args(["sweep", "--y0"])
        .arg(&d.y0)
        .args(FAST)
        .args(["--ws", "0.5", "--out-dir"])
        .arg(&out_dir)
        .output()
        .unwrap();
    expect(&o, 1, "sweep");
    assert_eq!(
        std::fs::read_to_string(out_dir.join("Y_w0.5.npy")).unwrap(),
        "precious"
    );
    assert!(!out_dir.join("sweep.csv").exists());
    assert!(hidden(d.dir.path()).is_empty() && hidden(&out_dir).is_empty());
}

#[test]
fn d6_results_beyond_f32_are_an_error_suggesting_f64() {
    let d = problem();
    let v = p(&d, "v.npy");
    write(&v, &(randn(50, 10, 2) * 1e39));
    let out = p(&d, "Y.npy");
    for sub in ["run", "autograd"] {
        let o = bin()
            .arg(sub)
            .arg("--y0")
            .arg(&v)
            .args([
                "--precision",
                "f32",
                "--max-iter",
                "20",
                "--backend",
                "cpu",
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap();
        expect(&o, 1, sub);
        let e = stderr(&o);
        assert!(e.contains("f32") && e.contains("f64"), "{sub}: {e}");
        assert!(!out.exists());
    }
    let sd = p(&d, "sw");
    let o = bin()
        .args(["sweep", "--y0"])
        .arg(&v)
        .args([
            "--precision",
            "f32",
            "--max-iter",
            "20",
            "--backend",
            "cpu",
            "--ws",
            "0.2,0.5",
            "--out-dir",
        ])
        .arg(&sd)
        .output()
        .unwrap();
    expect(&o, 1, "sweep");
    assert!(!sd.join("Y_w0.5.npy").exists() && !sd.join("Y_w0.2.npy").exists());
}

fn read_csv_rows(path: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
        .collect()
}

#[test]
fn d7_d16_csv_first_rows_bom_and_line_ends() {
    let d = problem();
    let retract = |name: &str, text: &[u8], extra: &[&str]| {
        let input = p(&d, name);
        std::fs::write(&input, text).unwrap();
        let out = p(&d, &format!("r_{name}"));
        let _ = std::fs::remove_file(&out);
        let o = bin()
            .arg("retract")
            .arg(&input)
            .args(["--w", "0", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        (o, out)
    };
    let (o, out) = retract("bom.csv", b"\xef\xbb\xbf1,2\n3,4\n5,7\n", &[]);
    expect(&o, 0, "bom");
    assert_eq!(
        read_csv_rows(&out),
        vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 7.0]]
    );
    let (o, out) = retract("cr.csv", b"1,2\r3,4\r5,6\r", &[]);
    expect(&o, 0, "cr");
    assert_eq!(read_csv_rows(&out).len(), 3);
    for bad in [&b"1,x\n3,4\n5,6\n"[..], b"1,2,\n3,4\n", b"0x1,2\n3,4\n"] {
        let (o, out) = retract("bad.csv", bad, &[]);
        expect(&o, 1, &String::from_utf8_lossy(bad));
        assert!(stderr(&o).contains("line 1"), "{}", stderr(&o));
        assert!(!out.exists());
    }
    let (o, out) = retract("h.csv", b"a,b\n1,2\n3,4\n", &[]);
    expect(&o, 0, "header");
    assert_eq!(read_csv_rows(&out).len(), 2);
    let (o, _) = retract("h2.csv", b"a,b\n1,2\n", &["--csv-header", "no"]);
    expect(&o, 1, "--csv-header no");
    let (o, out) = retract("h3.csv", b"1,2\n3,4\n5,6\n", &["--csv-header", "yes"]);
    expect(&o, 0, "--csv-header yes");
    assert_eq!(read_csv_rows(&out), vec![vec![3.0, 4.0], vec![5.0, 6.0]]);
    let (o, _) = retract("h4.csv", b"1,2\n", &["--csv-header", "maybe"]);
    expect(&o, 2, "--csv-header maybe");
}

#[test]
fn d8_outputs_naming_one_file_or_an_input_are_usage_errors() {
    let d = problem();
    let before = std::fs::read(&d.y0).unwrap();
    let y_csv = p(&d, "Y.csv");
    let s = p(&d, "s.json");
    let link = p(&d, "link.npy");
    std::fs::hard_link(&d.y0, &link).unwrap();
    let dotted = d.dir.path().join("sub/../y0.npy");
    std::fs::create_dir(p(&d, "sub")).unwrap();
    let cases: Vec<Vec<std::ffi::OsString>> = vec![
        vec![
            "--out".into(),
            y_csv.clone().into(),
            "--trace".into(),
            y_csv.clone().into(),
        ],
        vec![
            "--out".into(),
            p(&d, "Y.npy").into(),
            "--trace".into(),
            s.clone().into(),
            "--summary".into(),
            s.clone().into(),
        ],
        vec!["--out".into(), d.y0.clone().into()],
        vec!["--out".into(), dotted.into()],
        vec!["--out".into(), link.into()],
    ];
    for extra in cases {
        let o = bin()
            .args(["run", "--y0"])
            .arg(&d.y0)
            .args(FAST)
            .args(&extra)
            .output()
            .unwrap();
        expect(&o, 2, &format!("{extra:?}"));
        assert!(
            stderr(&o).contains("same file"),
            "{extra:?}: {}",
            stderr(&o)
        );
        assert!(!y_csv.exists() && !s.exists());
        assert_eq!(std::fs::read(&d.y0).unwrap(), before);
    }
    let b = p(&d, "b.npy");
    nsa_flow::io::write_batch(&b, &[randn(20, 3, 1)], NpyDtype::F64).unwrap();
    let bb = std::fs::read(&b).unwrap();
    let o = bin()
        .args(["batch", "--y0"])
        .arg(&b)
        .args(FAST)
        .arg("--out")
        .arg(&b)
        .output()
        .unwrap();
    expect(&o, 2, "batch --out = --y0");
    assert_eq!(std::fs::read(&b).unwrap(), bb);
}

#[cfg(unix)]
#[test]
fn d9_fifos_and_devices_are_refused_without_hanging() {
    let d = problem();
    let mut inputs = Vec::new();
    for name in ["f.npy", "f.csv"] {
        let f = p(&d, name);
        if !Command::new("mkfifo")
            .arg(&f)
            .status()
            .is_ok_and(|s| s.success())
        {
            eprintln!("skipped: mkfifo is not available");
            return;
        }
        inputs.push(f);
    }
    let z = p(&d, "z.npy");
    std::os::unix::fs::symlink("/dev/zero", &z).unwrap();
    inputs.push(z);
    for input in &inputs {
        for args in [vec!["defect"], vec!["run", "--y0"]] {
            let mut child = bin()
                .args(&args)
                .arg(input)
                .args(["--backend", "cpu", "--out", "/nonexistent/never.npy"])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let t = std::time::Instant::now();
            let status = loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
                if t.elapsed().as_secs() > 20 {
                    let _ = child.kill();
                    panic!("{args:?} {} hung", input.display());
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            };
            let o = child.wait_with_output().unwrap();
            let e = stderr(&o);
            // `defect` takes no --out: clap refuses that first (2); run reads the input (1)
            if args[0] == "run" {
                assert_eq!(status.code(), Some(1), "{e}");
                assert!(e.contains("not a regular file"), "{e}");
            } else {
                assert!(status.code().is_some(), "{status:?}");
            }
        }
        let o = bin().arg("defect").arg(input).output().unwrap();
        expect(&o, 1, "defect");
        assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    }
}

#[test]
fn d10_retract_takes_w_in_0_1_only() {
    let d = problem();
    let r = p(&d, "r.npy");
    for w in ["--w=2", "--w=1.0000001", "--w=-1", "--w=nan", "--w=inf"] {
        let o = bin()
            .arg("retract")
            .arg(&d.y0)
            .arg(w)
            .arg("--out")
            .arg(&r)
            .output()
            .unwrap();
        expect(&o, 2, w);
        assert!(!r.exists());
    }
    for w in ["0", "1"] {
        let o = bin()
            .arg("retract")
            .arg(&d.y0)
            .args(["--w", w])
            .arg("--out")
            .arg(&r)
            .output()
            .unwrap();
        expect(&o, 0, w);
    }
}

#[test]
fn d11_all_zero_and_all_negative_inputs_are_refused_everywhere() {
    let d = problem();
    let zeros = p(&d, "zeros.npy");
    write(&zeros, &DMatrix::zeros(50, 10));
    let negz = p(&d, "negz.npy");
    write(&negz, &DMatrix::from_element(50, 10, -0.0));
    let neg = p(&d, "neg.npy");
    write(&neg, &-randn(50, 10, 3).abs());
    let huge = p(&d, "huge.npy");
    write(&huge, &DMatrix::from_element(50, 10, 1e308));
    let out = p(&d, "Y.npy");
    let s = |x: &Path| x.display().to_string();
    let cases: Vec<Vec<String>> = vec![
        vec!["defect".into(), s(&zeros)],
        vec!["defect".into(), s(&negz)],
        vec!["retract".into(), s(&zeros), "--out".into(), s(&out)],
        vec![
            "retract".into(),
            s(&zeros),
            "--mode".into(),
            "corrected".into(),
            "--out".into(),
            s(&out),
        ],
        vec![
            "autograd".into(),
            "--y0".into(),
            s(&zeros),
            "--out".into(),
            s(&out),
        ],
        vec![
            "autograd".into(),
            "--y0".into(),
            s(&neg),
            "--out".into(),
            s(&out),
        ],
        vec![
            "run".into(),
            "--mode".into(),
            "reference".into(),
            "--y0".into(),
            s(&d.y0),
            "--x0".into(),
            s(&zeros),
            "--out".into(),
            s(&out),
        ],
        vec![
            "run".into(),
            "--mode".into(),
            "reference".into(),
            "--y0".into(),
            s(&d.y0),
            "--x0".into(),
            s(&neg),
            "--out".into(),
            s(&out),
        ],
        vec![
            "run".into(),
            "--mode".into(),
            "reference".into(),
            "--y0".into(),
            s(&d.y0),
            "--x0".into(),
            s(&huge),
            "--out".into(),
            s(&out),
        ],
    ];
    for args in cases {
        let o = bin()
            .args(&args)
            .args(["--backend", "cpu"])
            .output()
            .unwrap();
        expect(&o, 1, &format!("{args:?}"));
        assert!(!out.exists(), "{args:?}");
    }
    let sd = p(&d, "sw");
    let o = bin()
        .args(["sweep", "--mode", "reference", "--y0"])
        .arg(&d.y0)
        .arg("--x0")
        .arg(&zeros)
        .args(["--ws", "0.5", "--backend", "cpu", "--out-dir"])
        .arg(&sd)
        .output()
        .unwrap();
    expect(&o, 1, "sweep reference zero X0");
    assert!(!sd.join("sweep.csv").exists());
}

#[test]
fn d12_bad_values_are_usage_errors() {
    let d = problem();
    let out = p(&d, "Y.npy");
    let run_cases: &[&[&str]] = &[
        &["--retraction", "bogus"],
        &["--optimizer", "bogus"],
        &["--mode", "bogus"],
        &["--nonneg", "bogus"],
        &["--precision", "bogus"],
        &["--backend", "bogus"],
        &["--w", "2"],
        &["--w", "nan"],
        &["--w", "inf"],
        &["--max-iter", "0"],
        &["--lr", "0"],
        &["--lr", "nan"],
        &["--lr=-1"],
        &["--tol", "nan"],
        &["--tol=-1"],
        &["--record-every", "0"],
        &["--window-size", "0"],
        &["--trace", "t.txt"],
        &["--plot", "p.txt"],
        &["--summary", "s.txt"],
        &["--csv-header", "bogus"],
    ];
    for extra in run_cases {
        for sub in ["run", "autograd"] {
            let o = bin()
                .arg(sub)
                .arg("--y0")
                .arg(&d.y0)
                .arg("--out")
                .arg(&out)
                .args(*extra)
                .output()
                .unwrap();
            expect(&o, 2, &format!("{sub} {extra:?}"));
            assert!(!out.exists());
        }
    }
    for extra in [
        &["--lr-strategy", "bogus"][..],
        &["--fidelity-type", "bogus"],
        &["--orth-type", "bogus"],
        &["--aggression", "1.5"],
    ] {
        let o = bin()
            .arg("autograd")
            .arg("--y0")
            .arg(&d.y0)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        expect(&o, 2, &format!("autograd {extra:?}"));
    }
    let o = bin()
        .args(["run", "--y0"])
        .arg(&d.y0)
        .args(["--out", "Y.txt"])
        .output()
        .unwrap();
    expect(&o, 2, "--out Y.txt");
    for extra in [
        &["--inv-sqrt", "bogus"][..],
        &["--retraction", "bogus"],
        &["--mode", "bogus"],
        &["--precision", "bogus"],
        &["--backend", "bogus"],
    ] {
        let o = bin()
            .arg("retract")
            .arg(&d.y0)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        expect(&o, 2, &format!("retract {extra:?}"));
    }
    for extra in [&["--backend", "bogus"][..], &["--precision", "bogus"]] {
        let o = bin().arg("defect").arg(&d.y0).args(extra).output().unwrap();
        expect(&o, 2, &format!("defect {extra:?}"));
    }
    for extra in [
        &["--ws", "0.5", "--max-iter", "0"][..],
        &["--ws", "0.5", "--optimizer", "bogus"],
    ] {
        let o = bin()
            .arg("sweep")
            .arg("--y0")
            .arg(&d.y0)
            .args(["--out-dir", "never"])
            .args(extra)
            .output()
            .unwrap();
        expect(&o, 2, &format!("sweep {extra:?}"));
    }
    let o = bin().args(["bench", "--p", "0"]).output().unwrap();
    expect(&o, 2, "bench --p 0");
    // an empty adapter name would match any adapter
    let o = bin()
        .args(["run", "--y0"])
        .arg(&d.y0)
        .args(["--adapter", "", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    expect(&o, 2, "--adapter ''");
    // accepted values still work
    let o = bin()
        .args(["run", "--y0"])
        .arg(&d.y0)
        .args(FAST)
        .args(["--lr", "0.01", "--tol=0", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    expect(&o, 0, "--lr 0.01");
}

#[cfg(unix)]
#[test]
fn d13_auto_under_a_tight_address_space_runs_on_the_cpu() {
    let d = problem();
    let out = p(&d, "Y.npy");
    let exe = std::env::var_os("NSA_FLOW_TEST_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_nsa-flow").into());
    let limited = |args: &[&std::ffi::OsStr]| {
        Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 300000; exec \"$0\" \"$@\"")
            .arg(&exe)
            .args(args)
            .output()
            .unwrap()
    };
    let o = limited(&[
        "run".as_ref(),
        "--y0".as_ref(),
        d.y0.as_os_str(),
        "--max-iter".as_ref(),
        "3".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    expect(&o, 0, "run under ulimit -v 300000");
    assert!(out.exists());
    let o = limited(&["info".as_ref()]);
    expect(&o, 0, "info under ulimit -v 300000");
}

#[test]
fn d14_temporaries_never_consume_a_users_file_and_concurrent_runs_all_land() {
    let d = problem();
    let user = p(&d, "p.svg.tmp");
    std::fs::write(&user, "mine").unwrap();
    let args = |i: usize| {
        let mut c = bin();
        c.args(["run", "--y0"])
            .arg(&d.y0)
            .args(FAST)
            .args(["--seed", &i.to_string(), "--quiet", "--out"])
            .arg(p(&d, "Y.npy"))
            .arg("--summary")
            .arg(p(&d, "s.json"))
            .arg("--plot")
            .arg(p(&d, "p.svg"))
            .arg("--trace")
            .arg(p(&d, "t.csv"));
        c
    };
    let children: Vec<_> = (0..6).map(|i| args(i).spawn().unwrap()).collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        expect(&o, 0, "concurrent run");
    }
    for name in ["Y.npy", "s.json", "p.svg", "t.csv"] {
        assert!(p(&d, name).exists(), "{name} is missing");
    }
    assert_eq!(std::fs::read_to_string(&user).unwrap(), "mine");
    assert!(
        hidden(d.dir.path()).is_empty(),
        "{:?}",
        hidden(d.dir.path())
    );
}

#[test]
fn d15_a_long_valid_output_name_works() {
    let d = problem();
    let out = p(&d, &format!("{}.npy", "a".repeat(246)));
    let o = bin()
        .args(["run", "--y0"])
        .arg(&d.y0)
        .args(FAST)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    expect(&o, 0, "250-byte name");
    assert!(out.exists());
    assert!(hidden(d.dir.path()).is_empty());
}

#[test]
fn d16_messages_say_what_is_wrong() {
    let d = problem();
    for (descr, data) in [
        ("<f2", vec![0u8; 20]),
        ("|u1", vec![1u8; 10]),
        ("|b1", vec![1u8; 10]),
    ] {
        let f = p(&d, "dt.npy");
        std::fs::write(
            &f,
            raw_npy(
                &format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (10,), }}"),
                &data,
            ),
        )
        .unwrap();
        let o = bin().arg("defect").arg(&f).output().unwrap();
        expect(&o, 1, descr);
        assert!(
            stderr(&o).contains("unsupported dtype"),
            "{descr}: {}",
            stderr(&o)
        );
    }
    let dq = p(&d, "dq.npy");
    let data: Vec<u8> = [1.0f64, 2.0, 3.0, 4.0, 5.0, 7.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(
        &dq,
        raw_npy(
            r#"{"descr": "<f8", "fortran_order": False, "shape": (3, 2), }"#,
            &data,
        ),
    )
    .unwrap();
    expect(
        &bin().arg("defect").arg(&dq).output().unwrap(),
        0,
        "double-quoted keys",
    );
    // tiny input: not reported as overflow
    let tiny = p(&d, "tiny.npy");
    write(&tiny, &DMatrix::from_element(50, 10, 1e-310));
    let out = p(&d, "T.npy");
    let o = bin()
        .args(["run", "--y0"])
        .arg(&d.y0)
        .arg("--x0")
        .arg(&tiny)
        .args(FAST)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    if o.status.code() == Some(0) {
        assert!(nsa_flow::io::read_matrix(&out)
            .unwrap()
            .iter()
            .all(|v| v.is_finite()));
    } else {
        expect(&o, 1, "tiny X0");
        let e = stderr(&o);
        assert!(!e.contains("overflow") && e.contains("underflow"), "{e}");
    }
    // short numbers
    let o = bin()
        .args(["run", "--y0"])
        .arg(&d.y0)
        .args(["--w=-1e-300", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    expect(&o, 2, "--w=-1e-300");
    let e = stderr(&o);
    assert!(e.len() < 600 && !e.contains(&"0".repeat(20)), "{e}");
    // a failed sweep says `error:` first
    let zeros = p(&d, "zeros.npy");
    write(&zeros, &DMatrix::zeros(50, 10));
    let o = bin()
        .args(["sweep", "--mode", "reference", "--y0"])
        .arg(&d.y0)
        .arg("--x0")
        .arg(&zeros)
        .args(["--ws", "0.5", "--backend", "cpu", "--out-dir"])
        .arg(p(&d, "sw"))
        .output()
        .unwrap();
    expect(&o, 1, "failed sweep");
}
