//! Library-level regressions of the hostile-input findings (../shared/reliability/
//! FUZZ-FINDINGS.md, D1–D16): each test exercises one defect through the public API with
//! the findings' own inputs (tests/fuzz/corpus), and failed on the code before the fix.
//! The command-line side of each defect is in tests/hostile_cli.rs.

mod common;

use nalgebra::DMatrix;
use nsa_flow::io::{read_batch, read_matrix, write_matrix, write_text, NpyDtype};
use nsa_flow::{Mode, NsaError, Params, RetractOptions, Retraction};
use std::path::{Path, PathBuf};

fn seed(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(name)
}

fn malformed_reason(r: nsa_flow::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(NsaError::MalformedFile { reason, .. }) => reason,
        other => panic!("expected a malformed-file error, got {other:?}"),
    }
}

#[test]
fn d1_d3_duplicate_and_list_shapes_are_malformed_not_memory_unsafe() {
    for name in [
        "d1_dupkey_wrap_1001.npy",
        "d3_dupkey_2p40.npy",
        "d3_dupkey_wrap2_col.npy",
    ] {
        let reason = malformed_reason(read_matrix(seed(name)));
        assert!(reason.contains("duplicate key 'shape'"), "{name}: {reason}");
    }
    let reason = malformed_reason(read_batch(seed("d3_dupkey_3d_wrap.npy")));
    assert!(reason.contains("duplicate key 'shape'"), "{reason}");
    let reason = malformed_reason(read_matrix(seed("d3_listshape_decoy.npy")));
    assert!(
        reason.contains("tuple") || reason.contains("unknown key"),
        "{reason}"
    );
}

#[test]
fn d4_sizes_are_checked_before_any_allocation() {
    // 128 bytes announcing 2^40 empty matrices: refused at once
    let reason = malformed_reason(read_batch(seed("d4_batch_2p40_empty.npy")));
    assert!(reason.contains("empty"), "{reason}");
    assert!(matches!(
        read_matrix(seed("d4_huge_2d.npy")),
        Err(NsaError::MalformedFile { .. })
    ));
    assert!(matches!(
        nsa_flow::memory::elements("x", &[1 << 40, 1 << 40]),
        Err(NsaError::SizeOverflow { .. })
    ));
    let big = nsa_flow::memory::solve_bytes(1 << 30, 1 << 12, 8, false).unwrap();
    assert!(matches!(
        nsa_flow::memory::ensure_fits("x", big),
        Err(NsaError::MemoryBudget { .. })
    ));
    // a 1×100000 matrix: the defect needs only the 1×1 Gram, not the 80 GB 100000×100000 one
    let wide = DMatrix::from_element(1, 100_000, 1.5);
    let d = nsa_flow::invariant_orthogonality_defect(&wide);
    assert!((d - (1.0 - 1e-5)).abs() < 1e-12, "{d}");
    // and it agrees with the k×k formula where both are cheap
    let m = common::randn(3, 40, 7);
    let via_kxk = {
        let g = m.transpose() * &m;
        let n = m.norm_squared();
        (g.norm_squared() - g.diagonal().norm_squared()) / (n * n)
    };
    assert!((nsa_flow::invariant_orthogonality_defect(&m) - via_kxk).abs() < 1e-12);
    // the retraction of that matrix needs a k×k workspace: refused by the budget, typed
    let r = nsa_flow::retract(
        &wide,
        &RetractOptions::reference(Retraction::SoftPolar, 1.0),
    );
    assert!(matches!(r, Err(NsaError::MemoryBudget { .. })), "{r:?}");
}

fn hidden_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn d14_d15_temporaries_are_unique_short_and_never_a_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let user = dir.path().join("p.svg.tmp");
    std::fs::write(&user, "mine").unwrap();
    let traces = vec![nsa_flow::TraceRow {
        iter: 1,
        time: 0.0,
        fidelity: 1.0,
        orthogonality: 0.5,
        total_energy: 1.5,
    }];
    nsa_flow::plot::plot_trace(dir.path().join("p.svg"), &traces, "soft_polar", 0.5).unwrap();
    assert_eq!(std::fs::read_to_string(&user).unwrap(), "mine");
    let long = dir.path().join(format!("{}.npy", "a".repeat(246)));
    write_matrix(&long, &DMatrix::from_element(2, 2, 1.0), NpyDtype::F64).unwrap();
    assert_eq!(
        read_matrix(&long).unwrap(),
        DMatrix::from_element(2, 2, 1.0)
    );
    assert!(
        hidden_files(dir.path()).is_empty(),
        "{:?}",
        hidden_files(dir.path())
    );
}

#[test]
fn d5_d8_an_output_set_lands_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.npy");
    std::fs::write(&old, "precious").unwrap();
    let blocked = dir.path().join("D.svg");
    std::fs::create_dir(&blocked).unwrap();
    let mut set = nsa_flow::io::OutputSet::new();
    set.add(&old, b"new".to_vec()).unwrap();
    set.add(&blocked, b"svg".to_vec()).unwrap();
    assert!(set.commit().is_err());
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "precious");
    // two names of one file
    let mut set = nsa_flow::io::OutputSet::new();
    set.add(dir.path().join("Y.csv"), vec![]).unwrap();
    assert!(set.add(dir.path().join("./Y.csv"), vec![]).is_err());
    assert!(nsa_flow::io::check_distinct(&[("--out", &old)], &[("--y0", &old)]).is_err());
    write_text(dir.path().join("t.json"), "{}").unwrap();
    assert!(hidden_files(dir.path()).is_empty());
}

#[test]
fn d6_values_beyond_f32_are_never_written_as_inf() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("Y.npy");
    let m = common::randn(5, 3, 1) * 1e39;
    let e = write_matrix(&p, &m, NpyDtype::F32).unwrap_err();
    assert!(
        e.to_string().contains("f32") && e.to_string().contains("f64"),
        "{e}"
    );
    assert!(!p.exists());
    write_matrix(&p, &m, NpyDtype::F64).unwrap();
    assert_eq!(read_matrix(&p).unwrap(), m);
}

#[test]
fn d7_d16_csv_bom_bad_first_rows_and_cr_line_ends() {
    let m = read_matrix(seed("d7_bom.csv")).unwrap();
    assert_eq!(
        m,
        DMatrix::from_row_slice(3, 2, &[1.0, 2.0, 3.0, 4.0, 5.0, 7.0])
    );
    for name in [
        "d7_bad_first_cell.csv",
        "d7_trailing_comma_first.csv",
        "d7_hex_first.csv",
    ] {
        let reason = malformed_reason(read_matrix(seed(name)));
        assert!(reason.contains("line 1"), "{name}: {reason}");
    }
    let m = read_matrix(seed("d16_cr_only.csv")).unwrap();
    assert_eq!(
        m,
        DMatrix::from_row_slice(3, 2, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    );
    assert_eq!(read_matrix(seed("header.csv")).unwrap().shape(), (2, 3));
}

#[cfg(unix)]
#[test]
fn d9_a_fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("f.npy");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mkfifo is not available");
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let f = fifo.clone();
    std::thread::spawn(move || tx.send(read_matrix(&f).map(|_| ())));
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("reading a FIFO blocked");
    let reason = malformed_reason(got);
    assert!(reason.contains("not a regular file"), "{reason}");
}

#[test]
fn d10_retraction_weights_outside_0_1_are_refused_in_both_styles() {
    let y = common::randn(6, 2, 3);
    for w in [2.0, 1.0000001, -1.0, -1e-300] {
        for o in [
            RetractOptions::reference(Retraction::SoftPolar, w),
            RetractOptions::corrected(Retraction::SoftPolar, w),
        ] {
            assert!(
                matches!(nsa_flow::retract(&y, &o), Err(NsaError::InvalidWeight(_))),
                "w = {w}"
            );
        }
    }
    // short numbers in the message (D16)
    let msg = NsaError::InvalidWeight(-1e-300).to_string();
    assert!(msg.len() < 40, "{msg}");
}

#[test]
fn d11_all_zero_inputs_are_refused_everywhere() {
    let z = DMatrix::<f64>::zeros(8, 3);
    let neg = -common::randn(8, 3, 4).abs();
    let y = common::randn(8, 3, 5);
    let zero = |r: nsa_flow::Result<()>| matches!(r, Err(NsaError::ZeroMatrix { .. }));
    assert!(zero(
        nsa_flow::retract(&z, &RetractOptions::corrected(Retraction::SoftPolar, 0.5)).map(|_| ())
    ));
    assert!(zero(
        nsa_flow::invariant_orthogonality_defect_on(
            &mut nsa_flow::backend::cpu::CpuBackend::<f64>::new(),
            &z
        )
        .map(|_| ())
    ));
    let reference = Params::default()
        .mode(Mode::Reference)
        .max_iter(5)
        .backend(nsa_flow::BackendChoice::Cpu);
    for x0 in [&z, &neg] {
        assert!(zero(
            nsa_flow::nsa_flow(&y, Some(x0), &reference).map(|_| ())
        ));
    }
    let ag = nsa_flow::autograd::AutogradParams::default()
        .max_iter(5)
        .backend(nsa_flow::BackendChoice::Cpu);
    for y0 in [&z, &neg] {
        let r = nsa_flow::autograd::solve_autograd(
            &mut nsa_flow::backend::cpu::CpuBackend::<f64>::new(),
            y0,
            None,
            &ag,
            &mut |_| nsa_flow::Control::Continue,
        );
        assert!(zero(r.map(|_| ())), "autograd accepted a zero target");
    }
    // X0 = 1e308: the reference's energies overflow; an error, not a NaN trace
    let huge = DMatrix::from_element(8, 3, 1e308);
    let r = nsa_flow::nsa_flow(&y, Some(&huge), &reference);
    assert!(
        matches!(r, Err(NsaError::NonFiniteComputation { .. })),
        "{:?}",
        r.map(|r| r.best_total_energy)
    );
}

#[test]
fn d16_messages_say_what_is_wrong() {
    for name in ["d16_f2.npy", "d16_u1.npy", "d16_b1.npy", "structured.npy"] {
        let reason = malformed_reason(read_matrix(seed(name)));
        assert!(reason.contains("unsupported dtype"), "{name}: {reason}");
    }
    assert_eq!(
        read_matrix(seed("d16_double_quoted_keys.npy"))
            .unwrap()
            .shape(),
        (4, 3)
    );
    let y = common::randn(10, 3, 6);
    let tiny = DMatrix::from_element(10, 3, 1e-310);
    let params = Params::default()
        .backend(nsa_flow::BackendChoice::Cpu)
        .max_iter(5);
    match nsa_flow::nsa_flow(&y, Some(&tiny), &params) {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.contains("overflow") && msg.contains("underflow"),
                "{msg}"
            );
        }
        Ok(r) => assert!(r.y.iter().all(|v| v.is_finite())),
    }
}
