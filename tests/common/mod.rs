//! Helpers shared by the integration tests.
#![allow(dead_code)]

use nalgebra::DMatrix;
use std::path::PathBuf;

/// The golden roots to test against: the vendored copy in tests/data/golden (always), and
/// the workplace's ../shared/golden when present. In CI (CI set) the shared copy must exist.
pub fn golden_roots() -> Vec<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // golden_extra: more runs of the real reference, made by tests/data/golden_extra/generate.py
    let mut roots = vec![
        manifest.join("tests/data/golden"),
        manifest.join("tests/data/golden_extra"),
    ];
    let shared = manifest.join("../shared/golden");
    if shared.is_dir() {
        roots.push(shared);
    } else if std::env::var_os("CI").is_some() {
        panic!("CI is set but ../shared/golden is absent: the golden tests must run against the reference's files");
    } else {
        eprintln!("note: ../shared/golden not found; testing against the vendored copy only");
    }
    roots
}

pub fn read(path: impl Into<PathBuf>) -> DMatrix<f64> {
    let p = path.into();
    nsa_flow::io::read_matrix(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn json(path: impl Into<PathBuf>) -> serde_json::Value {
    let p = path.into();
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// Relative Frobenius distance ‖a − b‖/‖b‖ (absolute when b = 0).
pub fn rel_fro(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let d = (a - b).norm();
    let n = b.norm();
    if n == 0.0 {
        d
    } else {
        d / n
    }
}

/// Reads a CSV with a header into (header, rows of strings).
pub fn csv_rows(path: impl Into<PathBuf>) -> (Vec<String>, Vec<Vec<String>>) {
    let p = path.into();
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut lines = text.lines();
    let header = lines.next().unwrap().split(',').map(String::from).collect();
    let rows = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    (header, rows)
}

/// A seeded standard-normal matrix.
pub fn randn(p: usize, k: usize, seed: u64) -> DMatrix<f64> {
    let mut rng = nsa_flow::rng::Rng::new(seed);
    DMatrix::from_fn(p, k, |_, _| rng.normal())
}
