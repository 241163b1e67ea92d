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

/// A GPU context for the GPU tests, or `None` with a printed reason when no adapter is
/// present; with `NSA_FLOW_REQUIRE_GPU=1` (CI) a missing adapter fails the test instead.
#[allow(dead_code)]
pub fn gpu_or_skip(test: &str) -> Option<std::sync::Arc<nsa_flow::gpu::GpuContext>> {
    use std::sync::{Arc, OnceLock};
    static CTX: OnceLock<Result<Arc<nsa_flow::gpu::GpuContext>, String>> = OnceLock::new();
    let got = CTX.get_or_init(|| {
        nsa_flow::gpu::GpuContext::new(&nsa_flow::gpu::GpuOptions {
            allow_software: true,
            ..Default::default()
        })
        .map_err(|e| e.to_string())
    });
    match got {
        Ok(ctx) => Some(ctx.clone()),
        Err(e) => {
            if std::env::var("NSA_FLOW_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: NSA_FLOW_REQUIRE_GPU=1 but no GPU adapter: {e}");
            }
            eprintln!("skipping {test}: no GPU adapter ({e})");
            None
        }
    }
}

/// The GPU backend in `precision` on the shared context, or `None` (skip) as above; f64 is
/// skipped with a reason when the adapter has no SHADER_F64 (never under
/// NSA_FLOW_REQUIRE_GPU=1, where lavapipe has it).
#[allow(dead_code)]
pub fn gpu_backend(
    test: &str,
    precision: nsa_flow::Precision,
) -> Option<nsa_flow::backend::gpu::GpuBackend> {
    let ctx = gpu_or_skip(test)?;
    if precision == nsa_flow::Precision::F64 && !ctx.supports_f64() {
        if std::env::var("NSA_FLOW_REQUIRE_GPU").is_ok_and(|v| v == "1") {
            panic!("{test}: NSA_FLOW_REQUIRE_GPU=1 but the adapter has no SHADER_F64");
        }
        eprintln!("skipping {test} (f64): the adapter has no SHADER_F64");
        return None;
    }
    Some(nsa_flow::backend::gpu::GpuBackend::new(ctx, precision).expect("GPU kernels build"))
}

/// The parameters of a golden flow case (its params.json), whether its X0 was None, and its
/// precision: reference mode, as the real reference ran it.
#[allow(dead_code)]
pub fn golden_params(case: &std::path::Path) -> (nsa_flow::Params, bool, nsa_flow::Precision) {
    use nsa_flow::*;
    use serde_json::Value;
    let pj = json(case.join("params.json"));
    let get = |k: &str| -> Option<Value> {
        pj.get(k).cloned().or_else(|| {
            pj.get("defaults_of_unset_args")
                .and_then(|d| d.get(k).cloned())
        })
    };
    let nonneg = match get("apply_nonneg").unwrap() {
        Value::Bool(true) => NonNeg::Hard,
        Value::Bool(false) => NonNeg::None,
        other => panic!("apply_nonneg {other}"),
    };
    let lr = match get("initial_learning_rate").unwrap() {
        Value::String(s) if s == "default" => LearningRate::Default,
        Value::Number(n) => LearningRate::Value(n.as_f64().unwrap()),
        other => panic!("lr {other}"),
    };
    let precision = match pj["dtype"].as_str().unwrap() {
        "float32" => Precision::F32,
        _ => Precision::F64,
    };
    let p = Params::default()
        .w(get("w").unwrap().as_f64().unwrap())
        .retraction(
            get("retraction")
                .unwrap()
                .as_str()
                .unwrap()
                .parse::<Retraction>()
                .unwrap(),
        )
        .max_iter(get("max_iter").unwrap().as_u64().unwrap() as usize)
        .tol(get("tol").unwrap().as_f64().unwrap())
        .seed(get("seed").unwrap().as_u64().unwrap())
        .nonneg(nonneg)
        .optimizer(
            get("optimizer")
                .unwrap()
                .as_str()
                .unwrap()
                .parse::<OptimizerKind>()
                .unwrap(),
        )
        .learning_rate(lr)
        .record_every(get("record_every").unwrap().as_u64().unwrap() as usize)
        .window_size(get("window_size").unwrap().as_u64().unwrap() as usize)
        .simplified(get("simplified").unwrap().as_bool().unwrap())
        .project_full_gradient(get("project_full_gradient").unwrap().as_bool().unwrap())
        // the reference ignores `precision` and runs in the input dtype
        .precision(precision)
        .mode(Mode::Reference);
    (p, pj["X0_is_None"].as_bool().unwrap(), precision)
}

/// The first golden root holding `sub` (e.g. "autograd_grads"), if any.
#[allow(dead_code)]
pub fn golden_dir(sub: &str) -> Option<PathBuf> {
    golden_roots()
        .into_iter()
        .map(|r| r.join(sub))
        .find(|d| d.is_dir())
}

/// The composite objective of an autograd_grads case (reference style, as torch computed it).
#[allow(dead_code)]
pub fn golden_composite(case: &serde_json::Value) -> nsa_flow::autograd::CompositeSpec {
    nsa_flow::autograd::CompositeSpec {
        w: case["w"].as_f64().unwrap(),
        retraction: case["retraction"].as_str().unwrap().parse().unwrap(),
        nonneg: case["nonneg"].as_str().unwrap().parse().unwrap(),
        style: nsa_flow::Mode::Reference,
        fidelity_type: case["fidelity_type"].as_str().unwrap().parse().unwrap(),
        orth_type: case["orth_type"].as_str().unwrap().parse().unwrap(),
        fid_eta: case["fid_eta"].as_f64().unwrap(),
        c_orth: case["c_orth"].as_f64().unwrap(),
    }
}

/// The reference's parameters of an autograd_runs case (its outputs.json): reference mode,
/// tol 1e-12 as the runs were made, on `backend`.
#[allow(dead_code)]
pub fn golden_autograd_params(
    out: &serde_json::Value,
    backend: nsa_flow::BackendChoice,
) -> nsa_flow::autograd::AutogradParams {
    let p = &out["params"];
    let s = &out["settings"];
    let mut params = nsa_flow::autograd::AutogradParams::default()
        .mode(nsa_flow::Mode::Reference)
        .backend(backend)
        .tol(1e-12)
        .w(p["w"].as_f64().unwrap())
        .max_iter(p["max_iter"].as_u64().unwrap() as usize)
        .optimizer(s["optimizer"].as_str().unwrap().parse().unwrap())
        .retraction(s["retraction"].as_str().unwrap().parse().unwrap())
        .fidelity_type(s["fidelity_type"].as_str().unwrap().parse().unwrap())
        .orth_type(s["orth_type"].as_str().unwrap().parse().unwrap());
    // as the reference was called: the lr given, else lr_strategy "auto" (which must
    // then give the reference's 1e-3)
    params.learning_rate = p["initial_learning_rate"].as_f64();
    if let Some(nn) = p["apply_nonneg"].as_str() {
        params.nonneg = nn.parse().unwrap();
    }
    params
}
