//! `NsaFlowLayer`: the forward equals `nsa_flow` per problem, bad inputs are typed errors, and
//! the backward (the exact derivative of the unrolled iterations) matches central differences
//! of the whole forward map `L(X0) = ⟨G, forward(X0)⟩`.

use nalgebra::DMatrix;
use nsa_flow::autograd::{energy_and_grad, orthogonality_hvp, EnergySpec};
use nsa_flow::layer::{batch_from_flat, batch_to_flat, NsaFlowLayer, StepDecision};
use nsa_flow::rng::Rng;
use nsa_flow::{
    nsa_flow, BackendChoice, FidelityType, LearningRate, Mode, NsaError, OrthType, Params,
    Retraction,
};

fn randn(p: usize, k: usize, seed: u64) -> DMatrix<f64> {
    let mut rng = Rng::new(seed);
    DMatrix::from_fn(p, k, |_, _| rng.normal())
}

/// A non-negative-ish target: |N(0,1)| + 0.1 with a few negative entries (clamped by the
/// forward, so the clamp's mask is exercised).
fn target(p: usize, k: usize, seed: u64) -> DMatrix<f64> {
    let mut rng = Rng::new(seed);
    DMatrix::from_fn(p, k, |i, j| {
        let v = rng.normal().abs() + 0.1;
        if (i * 7 + j * 3) % 11 == 5 {
            -v
        } else {
            v
        }
    })
}

fn cpu(params: Params) -> NsaFlowLayer {
    NsaFlowLayer::new(params.backend(BackendChoice::Cpu)).unwrap()
}

fn layer_params() -> Params {
    NsaFlowLayer::default().params().clone()
}

#[test]
fn defaults_are_the_reference_layers() {
    let p = layer_params();
    assert_eq!(p.common.w, 0.5);
    assert_eq!(p.common.retraction, Retraction::SoftPolar);
    assert_eq!(p.common.max_iter, 50);
    assert_eq!(p.tol, 1e-5);
    assert_eq!(p.nonneg, nsa_flow::NonNeg::Hard);
    assert_eq!(p.optimizer, nsa_flow::OptimizerKind::Fast);
    assert_eq!(p.learning_rate, LearningRate::Default);
    assert!(!p.simplified && !p.project_full_gradient);
    assert_eq!(p.common.mode, Params::default().common.mode);
    let by_name = NsaFlowLayer::builder()
        .set("w", "0.5")
        .unwrap()
        .set("retraction", "soft_polar")
        .unwrap()
        .set("max_iter", "50")
        .unwrap()
        .set("tol", "1e-5")
        .unwrap()
        .set("apply_nonneg", "True")
        .unwrap()
        .set("optimizer", "fast")
        .unwrap()
        .set("initial_learning_rate", "default")
        .unwrap()
        .set("simplified", "False")
        .unwrap()
        .set("project_full_gradient", "False")
        .unwrap()
        .set("device", "None")
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(by_name, NsaFlowLayer::default());
}

#[test]
fn forward_equals_nsa_flow_per_problem() {
    let params = layer_params().w(0.6).backend(BackendChoice::Cpu);
    let layer = cpu(params.clone());
    let xs: Vec<_> = (0..4).map(|b| target(15, 3, 100 + b)).collect();
    let out = layer.forward(&xs, None).unwrap();
    assert_eq!(out.shape(), [4, 15, 3]);
    for (b, x) in xs.iter().enumerate() {
        let alone = nsa_flow(x, Some(x), &params).unwrap();
        assert_eq!(out.ys[b], alone.y, "problem {b}");
        assert_eq!(out.results[b].iterations, alone.iterations);
    }
    // explicit starts
    let ys: Vec<_> = (0..4).map(|b| randn(15, 3, 200 + b).abs()).collect();
    let out = layer.forward(&xs, Some(&ys)).unwrap();
    for b in 0..4 {
        let alone = nsa_flow(&ys[b], Some(&xs[b]), &params).unwrap();
        assert_eq!(out.ys[b], alone.y, "problem {b} with Y0");
    }
    // the flat [B, p, k] layout
    let flat = batch_to_flat(&xs);
    let out_flat = layer.forward_flat(&flat, [4, 15, 3], None).unwrap();
    assert_eq!(
        out_flat.ys_flat(),
        batch_to_flat(&layer.forward(&xs, None).unwrap().ys)
    );
    assert_eq!(batch_from_flat("X0", &flat, [4, 15, 3]).unwrap(), xs);
}

#[test]
fn two_d_input_is_a_batch_of_one() {
    let layer = cpu(layer_params());
    let x = target(9, 2, 7);
    let one = layer.forward_one(&x, None).unwrap();
    assert_eq!(one.shape(), [1, 9, 2]);
    let batch = layer.forward(std::slice::from_ref(&x), None).unwrap();
    assert_eq!(one.ys, batch.ys);
    let flat = layer
        .forward_flat(&batch_to_flat(std::slice::from_ref(&x)), [1, 9, 2], None)
        .unwrap();
    assert_eq!(flat.ys, one.ys);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let layer = cpu(layer_params());
    let (a, b) = (target(8, 2, 1), target(8, 3, 2));
    // shape mismatch between problems
    match layer.forward(&[a.clone(), b.clone()], None) {
        Err(NsaError::InBatch { index: 1, source }) => {
            assert!(matches!(
                *source,
                NsaError::ShapeMismatch { what: "X0", .. }
            ))
        }
        other => panic!("{other:?}"),
    }
    // Y0 of another shape than X0
    match layer.forward(std::slice::from_ref(&a), Some(std::slice::from_ref(&b))) {
        Err(NsaError::InBatch { index: 0, source }) => {
            assert!(matches!(
                *source,
                NsaError::ShapeMismatch { what: "Y0", .. }
            ))
        }
        other => panic!("{other:?}"),
    }
    // as many starts as targets
    assert!(matches!(
        layer.forward(&[a.clone(), a.clone()], Some(std::slice::from_ref(&a))),
        Err(NsaError::InvalidParameter { name: "Y0", .. })
    ));
    assert!(matches!(
        layer.forward(&[], None),
        Err(NsaError::InvalidParameter { name: "X0", .. })
    ));
    // NaN
    let mut nan = a.clone();
    nan[(3, 1)] = f64::NAN;
    match layer.forward(&[a.clone(), nan], None) {
        Err(NsaError::InBatch { index: 1, source }) => {
            assert!(matches!(
                *source,
                NsaError::NonFinite { row: 3, col: 1, .. }
            ))
        }
        other => panic!("{other:?}"),
    }
    // w out of range
    assert!(matches!(
        NsaFlowLayer::builder().w(1.5).build(),
        Err(NsaError::InvalidWeight(_))
    ));
    assert!(matches!(
        NsaFlowLayer::new(Params::default().w(f64::NAN)),
        Err(NsaError::InvalidWeight(_))
    ));
    // names we do not support
    assert!(matches!(
        NsaFlowLayer::builder().set("device_id", "0"),
        Err(NsaError::UnknownName { .. })
    ));
    assert!(matches!(
        NsaFlowLayer::builder().retraction("soft"),
        Err(NsaError::UnknownName { .. })
    ));
    assert!(matches!(
        NsaFlowLayer::builder().set("apply_nonneg", "maybe"),
        Err(NsaError::InvalidParameter { .. })
    ));
    // flat arrays of the wrong length
    assert!(layer.forward_flat(&[1.0; 10], [1, 3, 3], None).is_err());
    // gradients of the wrong shape or count
    let out = layer.forward_one(&a, None).unwrap();
    assert!(layer.backward(&out, &[]).is_err());
    assert!(matches!(
        layer.backward(&out, &[DMatrix::zeros(8, 3)]),
        Err(NsaError::InBatch { index: 0, .. })
    ));
    // an output of another layer
    let other = cpu(layer_params().w(0.9));
    assert!(other.backward(&out, &[DMatrix::zeros(8, 2)]).is_err());
}

#[test]
fn unsupported_combinations_are_typed_errors() {
    let x = target(8, 2, 3);
    let g = DMatrix::from_element(8, 2, 1.0);
    for (params, what) in [
        (layer_params().mode(Mode::Reference), "mode = reference"),
        (
            layer_params().optimizer("sgdp".parse().unwrap()),
            "optimizer = sgdp",
        ),
        (
            layer_params().project_full_gradient(true),
            "project_full_gradient",
        ),
    ] {
        let layer = cpu(params);
        // the forward runs; only the backward refuses
        let out = layer.forward_one(&x, None).unwrap();
        match layer.backward(&out, std::slice::from_ref(&g)) {
            Err(NsaError::NotDifferentiable { combination, .. }) => {
                assert!(combination.contains(what), "{combination}")
            }
            other => panic!("{what}: {other:?}"),
        }
        assert!(layer.check_differentiable().is_err());
    }
}

/// The Hessian-vector products against central differences of the exact gradients.
#[test]
fn orthogonality_hvp_matches_central_differences() {
    let spec = EnergySpec {
        fidelity_type: FidelityType::Basic,
        orth_type: OrthType::ScaleInvariant,
        fid_eta: 0.0,
        c_orth: 4.0, // ¼·c_orth·D = D
    };
    let grad_d = |y: &DMatrix<f64>| energy_and_grad(y, y, &spec).unwrap().1;
    let grad_off = |y: &DMatrix<f64>| {
        let mut o = y.transpose() * y;
        o.fill_diagonal(0.0);
        y * o * 4.0
    };
    let mut worst: f64 = 0.0;
    for (i, &(p, k)) in [(12, 3), (7, 1), (9, 2), (30, 5)].iter().enumerate() {
        let y = randn(p, k, 40 + i as u64);
        for j in 0..3 {
            let v = randn(p, k, 90 + 10 * i as u64 + j);
            let h = 1e-5;
            for simplified in [false, true] {
                let g = |m: &DMatrix<f64>| if simplified { grad_off(m) } else { grad_d(m) };
                let fd = (g(&(&y + &v * h)) - g(&(&y - &v * h))) / (2.0 * h);
                let an = orthogonality_hvp(&y, &v, simplified).unwrap();
                let scale = fd.norm().max(an.norm()).max(1e-12);
                let err = (&fd - &an).norm() / scale;
                if k > 1 {
                    assert!(err < 1e-7, "{p}x{k} simplified={simplified}: rel {err:.2e}");
                    worst = worst.max(err);
                } else {
                    assert!(an.norm() < 1e-12, "k = 1: the functional is 0");
                }
            }
        }
    }
    eprintln!("HVP vs central differences: worst relative error {worst:.2e}");
}

/// Everything discrete about a forward: iterations, stop reason, and each step's decisions
/// (candidate kind, halving, step source, number of clamped entries).
fn decisions(
    layer: &NsaFlowLayer,
    x: &DMatrix<f64>,
    y0: Option<&DMatrix<f64>>,
) -> Vec<StepDecision> {
    let out = layer.forward_one(x, y0).unwrap();
    let tapes = layer.record(&out).unwrap();
    assert_eq!(tapes[0].replay_error(), 0.0, "the replay is bit-identical");
    assert_eq!(tapes[0].iterations(), out.results[0].iterations);
    tapes[0].decisions().to_vec()
}

/// `(finite difference, analytic, h)` of `L = ⟨G, forward⟩` along `v` at `x0` (`wrt_y0`: along
/// the explicit start instead): Richardson's extrapolation of the central differences at `h`
/// and `h/2`, with `h` shrunk until every decision is the same at `±h` and `±h/2` as at 0.
fn directional(
    layer: &NsaFlowLayer,
    x0: &DMatrix<f64>,
    y0: Option<&DMatrix<f64>>,
    g: &DMatrix<f64>,
    v: &DMatrix<f64>,
    wrt_y0: bool,
) -> (f64, f64, f64) {
    let out = layer.forward_one(x0, y0).unwrap();
    let grads = layer.backward(&out, std::slice::from_ref(g)).unwrap();
    let an = if wrt_y0 {
        grads.y0.as_ref().unwrap()[0].dot(v)
    } else {
        grads.x0[0].dot(v)
    };
    let base = decisions(layer, x0, y0);
    let l =
        |x: &DMatrix<f64>, y: Option<&DMatrix<f64>>| layer.forward_one(x, y).unwrap().ys[0].dot(g);
    // the central difference at step h, or None when a decision differs at +h or −h
    let central = |h: f64| -> Option<f64> {
        let mut f = [0.0; 2];
        for (i, sign) in [1.0, -1.0].into_iter().enumerate() {
            let (x, y) = if wrt_y0 {
                (x0.clone(), Some(y0.unwrap() + v * (sign * h)))
            } else {
                (x0 + v * (sign * h), y0.cloned())
            };
            if decisions(layer, &x, y.as_ref()) != base {
                return None;
            }
            f[i] = l(&x, y.as_ref());
        }
        Some((f[0] - f[1]) / (2.0 * h))
    };
    let mut h = 1e-4 * x0.norm() / v.norm();
    for _ in 0..6 {
        if let (Some(d1), Some(d2)) = (central(h), central(0.5 * h)) {
            // Richardson: the O(h²) truncation terms cancel
            return ((4.0 * d2 - d1) / 3.0, an, h);
        }
        h *= 0.1;
    }
    panic!("the decisions change under every perturbation tried");
}

/// The agreement criterion: `|fd − an| ≤ 1e-6·max(|fd|, |an|) + 1e-9·|L|`. With
/// `h = 1e-4·‖X0‖/‖V‖` (or less, until no decision changes) Richardson's extrapolation leaves
/// an O(h⁴) truncation error (≈1e-16 relative) and a rounding error ≈ ε·|L|·(amplification
/// over ≤ 50 iterations)/h ≈ 1e-11·|L|; the second term covers derivatives much smaller than
/// `L` (along `Y0`, which the flow mostly forgets), the first leaves two to three orders of
/// margin over what is measured (printed with `--nocapture`).
fn check_fd(
    layer: &NsaFlowLayer,
    label: &str,
    shapes: &[(usize, usize)],
    explicit_y0: bool,
    dirs: u64,
) -> f64 {
    let mut worst: f64 = 0.0;
    for (i, &(p, k)) in shapes.iter().enumerate() {
        let seed = 1000 + 17 * i as u64;
        let x0 = target(p, k, seed);
        let y0 =
            explicit_y0.then(|| randn(p, k, seed + 1).abs() + DMatrix::from_element(p, k, 0.05));
        let g = randn(p, k, seed + 2);
        let out = layer.forward_one(&x0, y0.as_ref()).unwrap();
        let iters = out.results[0].iterations;
        let l = out.ys[0].dot(&g).abs();
        for j in 0..dirs {
            let v = randn(p, k, seed + 3 + j);
            for wrt_y0 in [false, true] {
                if wrt_y0 && !explicit_y0 {
                    continue;
                }
                let (fd, an, h) = directional(layer, &x0, y0.as_ref(), &g, &v, wrt_y0);
                let err = (fd - an).abs();
                let rel = err / fd.abs().max(an.abs()).max(1e-300);
                eprintln!(
                    "{label} {p}x{k} ({iters} it) dir {j}{}: fd {fd:+.10e} an {an:+.10e} rel {rel:.1e} abs/|L| {:.1e} h {h:.0e}",
                    if wrt_y0 { " wrt Y0" } else { "" },
                    err / l
                );
                assert!(
                    err <= 1e-6 * fd.abs().max(an.abs()) + 1e-9 * l,
                    "{label} {p}x{k} dir {j} wrt_y0={wrt_y0}: fd {fd} vs {an}"
                );
                worst = worst.max(rel.min(err / (1e-3 * l)));
            }
        }
    }
    worst
}

const SHAPES: &[(usize, usize)] = &[(12, 3), (7, 1), (9, 2)];

#[test]
fn backward_matches_finite_differences_default_layer() {
    let layer = cpu(layer_params());
    check_fd(&layer, "default", SHAPES, false, 3);
    // a heavier weight: sparser answers, more clamped entries
    let layer = cpu(layer_params().w(0.9));
    check_fd(&layer, "w=0.9", SHAPES, false, 2);
}

#[test]
fn backward_matches_finite_differences_explicit_y0() {
    let layer = cpu(layer_params().w(0.7));
    check_fd(&layer, "explicit Y0", SHAPES, true, 3);
}

/// Every other supported combination: the other retractions, no sign constraint, the
/// simplified penalty, a fixed learning rate (lr0 = v/s² depends on X0 through s), w at the
/// ends of [0, 1].
#[test]
fn backward_matches_finite_differences_other_combinations() {
    let variants: Vec<(&str, Params)> = vec![
        ("polar", layer_params().retraction(Retraction::Polar)),
        ("none", layer_params().retraction(Retraction::None)),
        ("no-nonneg", layer_params().nonneg(nsa_flow::NonNeg::None)),
        ("simplified", layer_params().simplified(true).w(0.7)),
        (
            "lr=0.05",
            layer_params().learning_rate(LearningRate::Value(0.05)),
        ),
        ("w=0", layer_params().w(0.0)),
        ("w=1", layer_params().w(1.0)),
    ];
    for (label, params) in variants {
        let layer = cpu(params);
        assert!(layer.check_differentiable().is_ok());
        check_fd(&layer, label, &[(12, 3), (9, 2)], label == "no-nonneg", 1);
    }
}

/// The backward runs on the CPU in f64 whatever the forward's precision: an f32 forward gets
/// the gradient of the f64 solve of the same problem.
#[test]
fn backward_of_an_f32_forward_is_the_f64_one() {
    let x = target(12, 3, 77);
    let g = randn(12, 3, 78);
    let f64_layer = cpu(layer_params());
    let f32_layer = cpu(layer_params().precision(nsa_flow::Precision::F32));
    let a = f64_layer.backward(
        &f64_layer.forward_one(&x, None).unwrap(),
        std::slice::from_ref(&g),
    );
    let out32 = f32_layer.forward_one(&x, None).unwrap();
    assert_eq!(out32.results[0].precision, nsa_flow::Precision::F32);
    let b = f32_layer.backward(&out32, std::slice::from_ref(&g));
    assert_eq!(a.unwrap().x0, b.unwrap().x0);
}

/// Deterministic: the same gradient twice, and each problem's gradient in a batch equals its
/// gradient alone.
#[test]
fn backward_is_deterministic_and_per_problem() {
    let layer = cpu(layer_params());
    let xs: Vec<_> = (0..3).map(|b| target(10, 2, 300 + b)).collect();
    let gs: Vec<_> = (0..3).map(|b| randn(10, 2, 400 + b)).collect();
    let out = layer.forward(&xs, None).unwrap();
    let a = layer.backward(&out, &gs).unwrap();
    let b = layer.backward(&out, &gs).unwrap();
    assert_eq!(a.x0, b.x0);
    assert!(a.y0.is_none());
    for i in 0..3 {
        let one = layer.forward_one(&xs[i], None).unwrap();
        let alone = layer.backward(&one, std::slice::from_ref(&gs[i])).unwrap();
        assert_eq!(alone.x0[0], a.x0[i]);
    }
}
