//! Bad input gives a typed error, never a panic or silent garbage.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod common;

use common::*;
use nalgebra::DMatrix;
use nsa_flow::*;

fn err(y0: &DMatrix<f64>, x0: Option<&DMatrix<f64>>, p: &Params) -> NsaError {
    nsa_flow(y0, x0, p).expect_err("expected an error")
}

#[test]
fn non_finite_inputs() {
    let y = randn(10, 3, 1);
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut b = y.clone();
        b[(4, 2)] = bad;
        for mode in [Mode::Corrected, Mode::Reference] {
            let p = Params::default().mode(mode);
            assert!(matches!(
                err(&b, None, &p),
                NsaError::NonFinite {
                    what: "Y0",
                    row: 4,
                    col: 2,
                    ..
                }
            ));
            assert!(matches!(
                err(&y, Some(&b), &p),
                NsaError::NonFinite { what: "X0", .. }
            ));
        }
    }
}

#[test]
fn shapes_empty_and_zero() {
    let y = randn(10, 3, 2);
    assert!(matches!(
        err(&y, Some(&randn(10, 4, 3)), &Params::default()),
        NsaError::ShapeMismatch { .. }
    ));
    assert!(matches!(
        err(&DMatrix::zeros(0, 3), None, &Params::default()),
        NsaError::Empty { .. }
    ));
    assert!(matches!(
        err(&DMatrix::zeros(4, 0), None, &Params::default()),
        NsaError::Empty { .. }
    ));
    for mode in [Mode::Corrected, Mode::Reference] {
        let p = Params::default().mode(mode);
        assert!(matches!(
            err(&DMatrix::zeros(5, 2), None, &p),
            NsaError::ZeroMatrix { .. }
        ));
    }
    // corrected: a target that is zero after the projection cannot normalise the fidelity
    let neg = -randn(10, 3, 4).abs();
    assert!(matches!(
        err(&y, Some(&neg), &Params::default()),
        NsaError::ZeroMatrix { .. }
    ));
    // … and an all-negative start has no feasible non-zero projection
    assert!(matches!(
        err(&neg, Some(&y.abs()), &Params::default()),
        NsaError::ZeroMatrix { .. }
    ));
    // reference mode refuses it too: the reference divides by ‖X0‖² = 0 (FUZZ-FINDINGS D11)
    assert!(matches!(
        err(
            &y,
            Some(&neg),
            &Params::default().mode(Mode::Reference).max_iter(5)
        ),
        NsaError::ZeroMatrix { .. }
    ));
}

#[test]
fn k_greater_than_p() {
    let wide = randn(3, 5, 5);
    assert!(matches!(
        err(&wide, None, &Params::default()),
        NsaError::KGreaterThanP { p: 3, k: 5, .. }
    ));
    let r = nsa_flow(
        &wide,
        None,
        &Params::default().mode(Mode::Reference).max_iter(5),
    );
    assert!(r.is_ok());
}

#[test]
fn parameter_domains() {
    let y = randn(8, 2, 6);
    for w in [-0.1, 1.0001, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            err(&y, None, &Params::default().w(w)),
            NsaError::InvalidWeight(_)
        ));
    }
    let cases = [
        Params::default().max_iter(0),
        Params::default().tol(-1.0),
        Params::default().tol(f64::NAN),
        Params::default().record_every(0),
        Params::default().window_size(0),
        Params::default().learning_rate(LearningRate::Value(0.0)),
        Params::default().learning_rate(LearningRate::Value(f64::NAN)),
        Params::default().nonneg(NonNeg::Softplus),
        Params::default().perturbed_start(randn(8, 2, 7)),
    ];
    for p in &cases {
        assert!(
            matches!(err(&y, Some(&y), p), NsaError::InvalidParameter { .. }),
            "{p:?}"
        );
    }
    let p = Params::default().perturbed_start(randn(7, 2, 8));
    assert!(matches!(err(&y, None, &p), NsaError::ShapeMismatch { .. }));
    // a GPU adapter that does not exist: an error, not a silent fallback to the CPU
    let e = err(
        &y,
        None,
        &Params::default()
            .backend(BackendChoice::Gpu)
            .gpu_adapter("no-such-adapter"),
    );
    assert!(
        matches!(
            e,
            NsaError::UnknownName { .. } | NsaError::BackendUnavailable { .. }
        ),
        "{e}"
    );
    let e = err(
        &y,
        None,
        &Params::default()
            .backend(BackendChoice::Cpu)
            .gpu_adapter("any"),
    );
    assert!(matches!(e, NsaError::InvalidParameter { .. }), "{e}");
}

/// GPU-specific bad input: limits and a missing f64 are typed errors naming the limit.
#[test]
fn gpu_limits_are_typed_errors() {
    use nsa_flow::backend::Backend;
    let Some(mut be) = gpu_backend("gpu_limits_are_typed_errors", Precision::F32) else {
        return;
    };
    let e = be.zeros(10, 1025).unwrap_err();
    assert!(
        matches!(
            e,
            NsaError::Gpu {
                kind: GpuErrorKind::Limit,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("1024"), "{e}");
    let e = be.zeros(20_000_000, 1).unwrap_err();
    assert!(
        matches!(
            e,
            NsaError::Gpu {
                kind: GpuErrorKind::Limit,
                ..
            }
        ),
        "{e}"
    );
    let binding = be.context().adapter().max_storage_buffer_binding_size;
    let rows = (binding / 4 / 1000 + 1) as usize;
    if rows <= 16_776_960 {
        let e = be.zeros(rows, 1000).unwrap_err();
        assert!(
            e.to_string().contains("max_storage_buffer_binding_size"),
            "{e}"
        );
    }
    assert!(matches!(
        be.zeros(0, 3).unwrap_err(),
        NsaError::Empty { .. }
    ));
    // the error is returned, and the backend still works afterwards
    let y = be.upload(&randn(33, 3, 1)).unwrap();
    let n = be
        .reduce(&[nsa_flow::backend::Reduction::NormSq(&y)])
        .unwrap()[0];
    assert!((n - randn(33, 3, 1).norm_squared()).abs() < 1e-3 * n);
}

#[test]
fn unknown_names_list_the_accepted_ones() {
    let e = "cayley".parse::<Retraction>().unwrap_err();
    assert!(e.to_string().contains("soft_polar, polar, none"), "{e}");
    let e = "adamx".parse::<OptimizerKind>().unwrap_err();
    assert!(e.to_string().contains("fast, adabound, adagrad"), "{e}");
    assert!(e.to_string().contains("sgdp, yogi"), "{e}");
    let e = "padam".parse::<OptimizerKind>().unwrap_err();
    assert!(e.to_string().contains("PAdam"), "{e}");
    assert!("Fixed".parse::<Mode>().is_err());
    assert!("f16".parse::<Precision>().is_err());
    assert!("newton".parse::<InvSqrtMethod>().is_err());
    assert!("clamp".parse::<NonNeg>().is_err());
    assert!("metal".parse::<BackendChoice>().is_err());
    assert!("fast".parse::<LearningRate>().is_err());
    assert!("-1".parse::<LearningRate>().is_err());
    assert!("bogus".parse::<FidelityType>().is_err());
    assert!("bogus".parse::<OrthType>().is_err());
    assert_eq!(
        "1e-2".parse::<LearningRate>().unwrap(),
        LearningRate::Value(0.01)
    );
}

#[test]
fn helpers_reject_bad_input() {
    let y = randn(6, 2, 9);
    let mut nan = y.clone();
    nan[(0, 0)] = f64::NAN;
    assert!(matches!(
        retract(&nan, &RetractOptions::default()),
        Err(NsaError::NonFinite { .. })
    ));
    assert!(matches!(
        retract(&y, &RetractOptions::default().w(f64::NAN)),
        Err(NsaError::InvalidWeight(_))
    ));
    assert!(matches!(
        retract(&y, &RetractOptions::default().w(2.0).style(Mode::Corrected)),
        Err(NsaError::InvalidWeight(_))
    ));
    assert!(matches!(
        retract(&DMatrix::zeros(0, 0), &RetractOptions::default()),
        Err(NsaError::Empty { .. })
    ));
    for bad in [
        RetractOptions::default().eps(1e-6).style(Mode::Corrected),
        RetractOptions::default()
            .diag_thresh(4)
            .style(Mode::Corrected),
        RetractOptions::default().ns_iter(0).style(Mode::Corrected),
    ] {
        assert!(
            matches!(retract(&y, &bad), Err(NsaError::InvalidParameter { .. })),
            "{bad:?}"
        );
    }
    assert!(matches!(
        inv_sqrt_sym(&y, InvSqrtMethod::Eig, 1e-8, 4, 128),
        Err(NsaError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        inv_sqrt_sym(&DMatrix::identity(2, 2), InvSqrtMethod::Eig, -1.0, 4, 128),
        Err(NsaError::InvalidParameter { .. })
    ));
    assert!(matches!(
        compute_energy(
            &y,
            &randn(5, 2, 1),
            FidelityType::Basic,
            OrthType::Basic,
            1.0,
            1.0
        ),
        Err(NsaError::ShapeMismatch { .. })
    ));
}

#[test]
fn overflowing_input_is_an_error_in_reference_mode_and_fine_in_corrected_mode() {
    // huge finite entries overflow the Gram products; the reference crashes on
    // best_total_energy.item() (Q11): here it is a typed error
    let y = DMatrix::from_element(4, 2, 1e200);
    let x = DMatrix::from_element(4, 2, 1.0);
    let e = nsa_flow(&y, Some(&x), &Params::default().mode(Mode::Reference)).unwrap_err();
    assert!(matches!(e, NsaError::NonFiniteComputation { .. }), "{e}");
    // corrected mode works in units of the target's RMS, so the magnitude does not matter
    let base = randn(20, 3, 1).abs();
    let unit = nsa_flow(&base, Some(&base), &Params::default()).unwrap();
    for scale in [1e200, 1e-150] {
        let y = &base * scale;
        let r = nsa_flow(&y, Some(&y), &Params::default()).unwrap();
        assert_eq!(r.iterations, unit.iterations, "scale {scale}");
        assert!(rel_fro(&(&r.y / scale), &unit.y) < 1e-9, "scale {scale}");
    }
}

#[test]
fn retract_of_overflowing_input_is_an_error() {
    let y = DMatrix::from_element(5, 2, 1e300);
    assert!(matches!(
        retract(&y, &RetractOptions::default()),
        Err(NsaError::NonFiniteComputation { .. })
    ));
}
