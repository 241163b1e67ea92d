//! The examples' logic, run quickly: each example is compiled in here as a module and its
//! `main` (and the golub example's helpers) called, so `cargo test` checks that they still
//! run against the current library and data/. The GPU examples exit early (Ok) without an
//! adapter; on lavapipe they take a few seconds.

#[path = "../examples/batch.rs"]
mod batch;
#[path = "../examples/cpu_vs_gpu.rs"]
mod cpu_vs_gpu;
#[path = "../examples/embed.rs"]
mod embed;
#[path = "../examples/golub.rs"]
mod golub;
#[path = "../examples/quickstart.rs"]
mod quickstart;

use nalgebra::DMatrix;

/// The batch example's core on the CPU (its main runs on the best backend, which on a
/// machine without a hardware GPU is the CPU too; its GPU path is tests/gpu_batch.rs).
#[test]
fn batch_example_core() {
    let problems = batch::restarts(66, 5, 12);
    let params = nsa_flow::Params::default()
        .backend(nsa_flow::BackendChoice::Cpu)
        .precision(nsa_flow::Precision::F32);
    let (res, alone) = batch::batch_vs_alone(&problems, &params).unwrap();
    assert_eq!(res.results.len(), 12);
    assert!(alone > 0.0 && res.profile.is_none());
}

#[test]
fn quickstart_runs() {
    quickstart::main().unwrap();
}

#[test]
fn golub_runs() {
    golub::main().unwrap();
}

#[test]
fn golub_pca_matches_the_numpy_loadings() {
    let dir = golub::data_dir();
    let e = nsa_flow::io::read_matrix(dir.join("golub_multtest_expr.npy")).unwrap();
    assert_eq!(e.shape(), (3051, 38));
    let (v, sv, _) = golub::pca_loadings(&e.transpose(), 3);
    let v_np = nsa_flow::io::read_matrix(dir.join("golub_multtest_pca_loadings_k3.npy")).unwrap();
    // same sign convention (largest-|.| entry positive), so equal without flips
    assert!((&v - &v_np).amax() < 1e-10, "{}", (&v - &v_np).amax());
    for (s, want) in sv.iter().zip([79.64379104, 61.88979092, 57.19969578]) {
        assert!((s - want).abs() < 1e-7, "{s} vs {want}");
    }
    let flipped = golub::mostly_positive(v.clone());
    for j in 0..3 {
        let c = flipped.column(j);
        let pos: f64 = c.iter().filter(|a| **a > 0.0).map(|a| a * a).sum();
        assert!(pos >= 0.5, "component {j}: positive mass {pos}");
        assert!((c.dot(&v.column(j)).abs() - 1.0).abs() < 1e-12);
    }
}

#[test]
fn golub_helpers() {
    assert_eq!(
        golub::csv_fields(r#"1,"a, ""b""",c"#),
        vec!["1".to_string(), r#"a, "b""#.to_string(), "c".to_string()]
    );
    // two well-separated classes: LOO nearest centroid gets all right
    let scores = DMatrix::from_row_slice(6, 1, &[0.0, 0.1, 0.2, 5.0, 5.1, 5.2]);
    assert_eq!(
        golub::loo_nearest_centroid(&scores, &[0, 0, 0, 1, 1, 1]),
        (6, 6)
    );
}

#[test]
fn gpu_examples_run_or_exit_cleanly() {
    embed::main().unwrap();
    cpu_vs_gpu::main().unwrap();
}
