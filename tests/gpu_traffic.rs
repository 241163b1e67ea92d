mod common;

// What a GPU iteration moves, counted from the recorded launches (no hardware GPU needed:
// any adapter records the same launches), and the fusions that cut it: with fusion off and
// on, every solve has the same bits, and fusing saves launches and passes over p×k.
//
// Tests that need an adapter skip with a printed reason when there is none
// (`common::gpu_or_skip`); with `NSA_FLOW_REQUIRE_GPU=1` they fail instead.

use common::*;
use nalgebra::DMatrix;
use nsa_flow::backend::gpu::{GpuBackend, Traffic};
use nsa_flow::backend::Backend;
use nsa_flow::gpu::Kernel;
use nsa_flow::{Control, Mode, NonNeg, NsaResult, OptimizerKind, Params, Precision};

struct Run {
    res: NsaResult,
    traffic: Traffic,
    by_kernel: Vec<(Kernel, u64, u64)>,
}

fn solve(be: &mut GpuBackend, y0: &DMatrix<f64>, x0: &DMatrix<f64>, params: &Params) -> Run {
    let before = be.traffic();
    let before_k = be.launches_by_kernel();
    let res = nsa_flow::flow::solve(be, y0, Some(x0), params, &mut |_| Control::Continue).unwrap();
    let by_kernel = be
        .launches_by_kernel()
        .into_iter()
        .map(|(k, n, b)| {
            let (n0, b0) = before_k
                .iter()
                .find(|e| e.0 == k)
                .map_or((0, 0), |e| (e.1, e.2));
            (k, n - n0, b - b0)
        })
        .collect();
    Run {
        res,
        traffic: be.traffic().since(&before),
        by_kernel,
    }
}

fn bits(m: &DMatrix<f64>) -> Vec<u64> {
    m.iter().map(|v| v.to_bits()).collect()
}

fn launches_of(run: &Run, kernel: Kernel) -> u64 {
    run.by_kernel
        .iter()
        .find(|e| e.0 == kernel)
        .map_or(0, |e| e.1)
}

#[test]
fn fused_passes_change_no_bit_and_save_launches_and_passes() {
    let Some(ctx) = gpu_or_skip("fused_passes_change_no_bit_and_save_launches_and_passes") else {
        return;
    };
    let mut cases = vec![
        (
            Mode::Corrected,
            Precision::F32,
            200,
            8,
            0.9,
            OptimizerKind::Fast,
            false,
        ),
        (
            Mode::Corrected,
            Precision::F32,
            65,
            17,
            0.5,
            OptimizerKind::Fast,
            true,
        ),
        (
            Mode::Corrected,
            Precision::F32,
            63,
            3,
            0.7,
            "adam".parse().unwrap(),
            false,
        ),
        (
            Mode::Reference,
            Precision::F32,
            63,
            3,
            0.3,
            OptimizerKind::Fast,
            false,
        ),
        (
            Mode::Corrected,
            Precision::F32,
            1031,
            1,
            0.5,
            OptimizerKind::Fast,
            false,
        ),
        // 32 < k ≤ 64: the blend computes TS itself (k ≤ 32 has it in the Newton–Schulz launch)
        (
            Mode::Corrected,
            Precision::F32,
            90,
            40,
            0.6,
            OptimizerKind::Fast,
            false,
        ),
    ];
    if ctx.supports_f64() {
        cases.push((
            Mode::Corrected,
            Precision::F64,
            90,
            6,
            0.5,
            OptimizerKind::Fast,
            false,
        ));
        cases.push((
            Mode::Reference,
            Precision::F64,
            40,
            4,
            0.5,
            OptimizerKind::Fast,
            false,
        ));
    }
    for (mode, precision, p, k, w, optimizer, project) in cases {
        let y0 = randn(p, k, 1);
        let x0 = randn(p, k, 2).abs();
        let params = Params::default()
            .w(w)
            .mode(mode)
            .optimizer(optimizer)
            .project_full_gradient(project)
            .max_iter(25)
            .tol(0.0)
            .precision(precision);
        let what = format!("{mode:?} {precision} {p}×{k} w={w} {optimizer:?} project={project}");
        let mut plain = GpuBackend::new(ctx.clone(), precision).unwrap();
        plain.set_fusion(false);
        let mut fused = GpuBackend::new(ctx.clone(), precision).unwrap();
        let a = solve(&mut plain, &y0, &x0, &params);
        let b = solve(&mut fused, &y0, &x0, &params);
        assert_eq!(bits(&a.res.y), bits(&b.res.y), "{what}: Y");
        assert_eq!(a.res.iterations, b.res.iterations, "{what}");
        assert_eq!(a.res.energy_evaluations, b.res.energy_evaluations, "{what}");
        assert_eq!(
            a.res.best_total_energy.map(f64::to_bits),
            b.res.best_total_energy.map(f64::to_bits),
            "{what}: energy"
        );
        assert_eq!(
            a.res.device.readbacks, b.res.device.readbacks,
            "{what}: readbacks"
        );
        assert!(
            b.traffic.launches < a.traffic.launches,
            "{what}: {:?} vs {:?}",
            b.traffic,
            a.traffic
        );
        assert!(b.traffic.operand_bytes < a.traffic.operand_bytes, "{what}");
        assert_eq!(a.traffic.readback_bytes, b.traffic.readback_bytes, "{what}");
        assert_eq!(launches_of(&a, Kernel::PartialSumsMulti), 0, "{what}");
        assert!(launches_of(&b, Kernel::PartialSumsMulti) > 0, "{what}");
        // the Newton–Schulz chain (k ≤ 32): its set-up and finish run inside its steps'
        // launch when fused, as launches of their own when not
        let ns = launches_of(&a, Kernel::NsShared);
        if ns > 0 {
            assert!(launches_of(&a, Kernel::NsInit) > 0, "{what}");
            assert!(launches_of(&a, Kernel::NsFinish) > 0, "{what}");
            assert_eq!(launches_of(&b, Kernel::NsInit), 0, "{what}");
            assert_eq!(launches_of(&b, Kernel::NsFinish), 0, "{what}");
            assert!(launches_of(&b, Kernel::NsShared) > 0, "{what}");
        }
        if mode == Mode::Corrected {
            // an accepted candidate's energy left its Gram for the next gradient
            assert!(
                launches_of(&b, Kernel::GramPartial) < launches_of(&a, Kernel::GramPartial),
                "{what}: the gradient recomputed every Gram"
            );
            // the corrected loop clamps only what a launch it fused with just wrote
            assert_eq!(launches_of(&b, Kernel::NonnegInPlace), 0, "{what}");
            if k <= 32 {
                // each candidate is formed by the launch that takes its Gram: combine runs
                // only for the step itself (one per iteration, and the optimizer's), and a
                // retracted candidate's product is that launch too
                let it = b.res.iterations as u64;
                assert!(
                    launches_of(&b, Kernel::Combine) <= launches_of(&a, Kernel::Combine) / 2,
                    "{what}: combine {} fused vs {} not",
                    launches_of(&b, Kernel::Combine),
                    launches_of(&a, Kernel::Combine)
                );
                if optimizer == OptimizerKind::Fast {
                    assert!(
                        launches_of(&b, Kernel::Combine) <= it + 1,
                        "{what}: {} combine launches in {it} iterations",
                        launches_of(&b, Kernel::Combine)
                    );
                }
                if b.res.retracted_steps > 0 {
                    assert!(
                        launches_of(&b, Kernel::MulSmall) < launches_of(&a, Kernel::MulSmall),
                        "{what}: every retraction product was a launch of its own"
                    );
                }
            }
            if !project {
                assert_eq!(
                    b.traffic.copies, 0,
                    "{what}: the direction is the gradient itself"
                );
            }
        }
    }
}

/// The counts of one corrected iteration at the defaults (fast optimizer, soft-polar, hard
/// non-negativity), per iteration and per energy evaluation, as `nsa-flow bench --json`
/// reports them: a ceiling that fails when a change adds passes or a stalled search runs
/// long, and what issue 15's goal is measured against (≤ 12 dispatches per accepted
/// iteration, ≤ 4 passes over p×k per evaluation: not reached yet).
#[test]
fn corrected_iteration_traffic_stays_within_its_ceiling() {
    let Some(ctx) = gpu_or_skip("corrected_iteration_traffic_stays_within_its_ceiling") else {
        return;
    };
    let (p, k) = (300, 20);
    let y0 = randn(p, k, 3);
    let x0 = randn(p, k, 4).abs();
    let params = Params::default()
        .w(0.5)
        .max_iter(30)
        .tol(0.0)
        .precision(Precision::F32);
    let mut be = GpuBackend::new(ctx, Precision::F32).unwrap();
    let run = solve(&mut be, &y0, &x0, &params);
    let it = run.res.iterations.max(1) as f64;
    let ev = run.res.energy_evaluations.max(1) as f64;
    let t = run.traffic;
    let passes = t.passes(p, k, 4);
    eprintln!(
        "corrected f32 {p}×{k}: {} iterations, {} evaluations; per iteration {:.1} launches, \
         {:.1} passes over p×k, {:.2} readbacks; per evaluation {:.1} launches, {:.1} passes; \
         by kernel {:?}",
        run.res.iterations,
        run.res.energy_evaluations,
        t.launches as f64 / it,
        passes / it,
        run.res.device.readbacks.unwrap_or(0) as f64 / it,
        t.launches as f64 / ev,
        passes / ev,
        run.by_kernel
    );
    assert!(run.res.iterations >= 5, "{:?}", run.res.stop_reason);
    // Measured on lavapipe: 22.6 launches, 37.8 passes over p×k and 1.44 readbacks per
    // iteration (16 iterations, 31 evaluations), since the stalled search ends its phases
    // by the first-order gain bound. Before it, 37.6 launches and 68 passes per iteration
    // (128 evaluations, 97 of them the stalled search's: cheap ones, which made the counts
    // per evaluation look low, 4.7 and 8.5). The ceilings leave room for a different
    // line-search path; per evaluation they bound what a candidate costs.
    assert!(
        t.launches as f64 / it <= 26.0,
        "{:.1} launches per iteration",
        t.launches as f64 / it
    );
    assert!(
        passes / it <= 44.0,
        "{:.1} passes per iteration",
        passes / it
    );
    assert!(
        run.res.energy_evaluations < 4 * run.res.iterations,
        "{} evaluations in {} iterations: a stalled search ran long",
        run.res.energy_evaluations,
        run.res.iterations
    );
    assert!(
        t.launches as f64 / ev <= 13.0,
        "{:.1} launches per evaluation",
        t.launches as f64 / ev
    );
    assert!(
        passes / ev <= 22.0,
        "{:.1} passes per evaluation",
        passes / ev
    );
    assert_eq!(t.copies, 0);
}

#[test]
fn a_clamp_fuses_only_into_the_launch_that_wrote_its_matrix() {
    let Some(ctx) = gpu_or_skip("a_clamp_fuses_only_into_the_launch_that_wrote_its_matrix") else {
        return;
    };
    let (p, k) = (65, 3);
    let y = randn(p, k, 5);
    let t = randn(p, k, 6);
    let want = (&y + (&t - &y) * 0.75).map(|v| v.max(0.0));
    let mut be = GpuBackend::new(ctx, Precision::F32).unwrap();
    let gy = be.upload(&y).unwrap();
    let gt = be.upload(&t).unwrap();
    let mut out = be.zeros(p, k).unwrap();
    let mut other = be.zeros(p, k).unwrap();
    // fused: lerp then clamp of its output is one launch
    let before = be.traffic();
    be.lerp(&gy, &gt, 0.75, &mut out);
    be.nonneg(&mut out, NonNeg::Hard);
    assert_eq!(be.traffic().since(&before).launches, 1);
    let got = be.download(&out).unwrap();
    assert!(rel_fro(&got, &want) <= 1e-6, "{:.3e}", rel_fro(&got, &want));
    // not fused: the clamp of another matrix than the one just written
    be.lerp(&gy, &gt, 0.75, &mut out);
    be.copy(&gy, &mut other);
    let before = be.traffic();
    be.nonneg(&mut other, NonNeg::Hard);
    assert_eq!(be.traffic().since(&before).launches, 1);
    let got_other = be.download(&other).unwrap();
    assert_eq!(got_other, y.map(|v| (v as f32).max(0.0) as f64));
    // the lerp left unclamped
    let raw = be.download(&out).unwrap();
    assert!(raw.iter().any(|&v| v < 0.0));
    // a second clamp of the same matrix is a launch of its own (nothing left to fuse into)
    be.lerp(&gy, &gt, 0.75, &mut out);
    be.nonneg(&mut out, NonNeg::Hard);
    let before = be.traffic();
    be.nonneg(&mut out, NonNeg::Hard);
    assert_eq!(be.traffic().since(&before).launches, 1);
    assert_eq!(be.download(&out).unwrap(), got);
}

/// A line-search candidate (k ≤ 32) is formed by the launch that takes its Gram: the lerp, a
/// following clamp and the Gram are one launch (over several row chunks the partials' reduce
/// waits for whatever reads the Gram next), the candidate is exactly what lerp and the clamp
/// write, and its energy then reads the Gram that launch left instead of taking it again,
/// with the same bits as without fusion.
#[test]
fn a_candidate_and_its_gram_are_one_launch() {
    let Some(ctx) = gpu_or_skip("a_candidate_and_its_gram_are_one_launch") else {
        return;
    };
    for (p, k, launches) in [(65, 3, 1), (1031, 17, 1), (40, 1, 1)] {
        let y = randn(p, k, 7);
        let t = randn(p, k, 8);
        let x0 = randn(p, k, 9).abs();
        let mut energies = Vec::new();
        let mut candidates = Vec::new();
        for fuse in [false, true] {
            let (mut be, [gy, gt, gx]) = backend_with(&ctx, fuse, [&y, &t, &x0]);
            let mut cand = be.zeros(p, k).unwrap();
            let before = be.traffic();
            be.lerp_candidate(&gy, &gt, 0.375, &mut cand);
            be.nonneg(&mut cand, NonNeg::Hard);
            let formed = be.traffic().since(&before).launches;
            let grams = |be: &GpuBackend| {
                be.launches_by_kernel()
                    .iter()
                    .find(|e| e.0 == Kernel::GramPartial)
                    .map_or(0, |e| e.1)
            };
            let grams_before = grams(&be);
            let e = be
                .reduce(&[nsa_flow::backend::Reduction::EnergyTerms {
                    y: &cand,
                    target: &gx,
                }])
                .unwrap();
            if fuse {
                assert_eq!(formed, launches, "{p}×{k}: launches forming the candidate");
                assert_eq!(
                    grams(&be),
                    grams_before,
                    "{p}×{k}: the energy took the Gram again"
                );
            } else {
                assert_eq!(grams(&be), grams_before + 1, "{p}×{k}");
            }
            energies.push(e.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            candidates.push(be.download(&cand).unwrap());
        }
        assert_eq!(energies[0], energies[1], "{p}×{k}: energy terms");
        assert_eq!(candidates[0], candidates[1], "{p}×{k}: candidate");
        let want = (&y + (&t - &y) * 0.375).map(|v| v.max(0.0));
        assert!(rel_fro(&candidates[1], &want) <= 1e-6, "{p}×{k}");
    }
}

/// The reference loop computes few halvings ahead after a backtracking iteration (two more
/// than it examined; the rest of the 20 in one more readback when they do not suffice)
/// instead of a whole backtracking of 20: on N(0,1) data whose iterations keep backtracking
/// by a few halvings, under a third of the launches (measured on lavapipe at 400×10, f32,
/// 15 iterations that all but the first backtrack once: 1122 launches against 3670, 38.7 per
/// evaluation against 126.6, with the same Y bits and the same 21 readbacks).
#[test]
fn reference_backtracking_computes_few_halvings_ahead() {
    let Some(ctx) = gpu_or_skip("reference_backtracking_computes_few_halvings_ahead") else {
        return;
    };
    let (p, k) = (400, 10);
    let mut rng = nsa_flow::rng::Rng::new(1);
    let y0 = DMatrix::from_fn(p, k, |_, _| rng.normal());
    let x0 = DMatrix::from_fn(p, k, |_, _| rng.normal());
    let params = Params::default()
        .w(0.5)
        .mode(Mode::Reference)
        .max_iter(15)
        .tol(0.0)
        .precision(Precision::F32);
    let mut be = GpuBackend::new(ctx, Precision::F32).unwrap();
    let run = solve(&mut be, &y0, &x0, &params);
    let (it, ev) = (run.res.iterations as f64, run.res.energy_evaluations as f64);
    let per_eval = run.traffic.launches as f64 / ev;
    let rb = run.res.device.readbacks.unwrap_or(0) as f64;
    eprintln!(
        "reference f32 {p}×{k}: {it} iterations, {ev} evaluations, {} backtracking; {per_eval:.1} launches per evaluation, {rb} readbacks",
        run.res.backtracking_iterations
    );
    assert!(
        run.res.backtracking_iterations >= 10,
        "the run must backtrack: {it} iterations, {ev} evaluations"
    );
    assert!(
        per_eval <= 60.0,
        "{per_eval:.1} launches per evaluation (126.6 with 20 halvings speculated)"
    );
    // one readback per iteration, plus the set-up's, the certificate's and the download
    assert!(rb <= it + 6.0, "{rb} readbacks in {it} iterations");
}

/// Direct launches of `kernel` a backend has recorded so far.
/// An f32 backend with fusion on or off and `mats` uploaded to it.
fn backend_with<const N: usize>(
    ctx: &std::sync::Arc<nsa_flow::gpu::GpuContext>,
    fuse: bool,
    mats: [&DMatrix<f64>; N],
) -> (GpuBackend, [<GpuBackend as Backend>::Mat; N]) {
    let mut be = GpuBackend::new(ctx.clone(), Precision::F32).unwrap();
    be.set_fusion(fuse);
    let gpu = mats.map(|m| be.upload(m).unwrap());
    (be, gpu)
}

fn backend_launches(be: &GpuBackend, kernel: Kernel) -> u64 {
    be.launches_by_kernel()
        .iter()
        .find(|e| e.0 == kernel)
        .map_or(0, |e| e.1)
}

/// A retracted candidate over several row chunks (k ≤ 32): its Gram's chunk partials are
/// added by the retraction's first Newton–Schulz launch (in gram_reduce's order) instead of a
/// `gram_reduce` launch of their own, with the same bits as without fusion; a candidate
/// whose Gram is read by anything else still gets its `gram_reduce`.
#[test]
fn a_retraction_adds_its_candidates_gram_partials_itself() {
    let Some(ctx) = gpu_or_skip("a_retraction_adds_its_candidates_gram_partials_itself") else {
        return;
    };
    for (p, k) in [(1031, 17), (700, 3), (2000, 1), (300, 32)] {
        let y = randn(p, k, 17).abs();
        let t = randn(p, k, 18).abs();
        let o = nsa_flow::RetractOptions::corrected(nsa_flow::Retraction::SoftPolar, 0.7);
        let mut outs = Vec::new();
        for fuse in [false, true] {
            let (mut be, [gy, gt]) = backend_with(&ctx, fuse, [&y, &t]);
            let mut cand = be.zeros(p, k).unwrap();
            let mut out = be.zeros(p, k).unwrap();
            be.lerp_candidate(&gy, &gt, 0.625, &mut cand);
            be.nonneg(&mut cand, NonNeg::Hard);
            let reduces = backend_launches(&be, Kernel::GramReduce);
            be.retract_candidate(&cand, &mut out, &o);
            if fuse {
                // the product's own Gram (formed with it) waits for the energy's sums
                assert_eq!(
                    backend_launches(&be, Kernel::GramReduce),
                    reduces,
                    "{p}×{k}: the candidate's Gram had a reduce launch"
                );
            }
            outs.push(be.download(&out).unwrap());
            if fuse {
                // nothing read the product's Gram: the download settled it
                assert_eq!(backend_launches(&be, Kernel::GramReduce), reduces + 1);
            }
        }
        assert!(
            outs[0] == outs[1],
            "{p}×{k}: retracted candidate bits differ (largest difference {:e})",
            (&outs[0] - &outs[1]).amax()
        );
        let want = nsa_flow::retract(&(&y + (&t - &y) * 0.625).map(|v| v.max(0.0)), &o).unwrap();
        assert!(rel_fro(&outs[1], &want) <= 1e-4, "{p}×{k}");
    }
    // a plain candidate's Gram read by its energy: the reduce runs before the sums
    let (p, k) = (1031, 5);
    let mut be = GpuBackend::new(ctx, Precision::F32).unwrap();
    let (gy, gt) = (
        be.upload(&randn(p, k, 19)).unwrap(),
        be.upload(&randn(p, k, 20)).unwrap(),
    );
    let mut cand = be.zeros(p, k).unwrap();
    be.lerp_candidate(&gy, &gt, 0.5, &mut cand);
    let reduces = backend_launches(&be, Kernel::GramReduce);
    let e = be
        .reduce(&[nsa_flow::backend::Reduction::EnergyTerms {
            y: &cand,
            target: &gt,
        }])
        .unwrap();
    assert_eq!(backend_launches(&be, Kernel::GramReduce), reduces + 1);
    let c = be.download(&cand).unwrap();
    let g = c.transpose() * &c;
    assert!(
        (e[1] - g.norm_squared()).abs() <= 1e-4 * g.norm_squared(),
        "{e:?}"
    );
}

/// Retracted candidates over several row chunks (k ≤ 32): each one's Gram, formed with the
/// retraction's product, is added from its chunk partials by the launch of its energy's sums
/// (no `gram_reduce` launch), with the bits of the unfused evaluation; three candidates in one
/// readback (the third reuses the first's partials region, whose reduce then runs first),
/// and a pending Gram read by another retraction, give the same bits too.
#[test]
fn a_candidates_energy_sums_add_its_gram_partials_themselves() {
    let Some(ctx) = gpu_or_skip("a_candidates_energy_sums_add_its_gram_partials_themselves") else {
        return;
    };
    for (p, k) in [(1031, 17), (700, 3), (2000, 1), (300, 32)] {
        let y = randn(p, k, 21).abs();
        let t = randn(p, k, 22).abs();
        let x0 = randn(p, k, 23);
        let o = nsa_flow::RetractOptions::corrected(nsa_flow::Retraction::SoftPolar, 0.8);
        for n in [2usize, 3] {
            let mut runs = Vec::new();
            for fuse in [false, true] {
                let (mut be, [gy, gt, gx]) = backend_with(&ctx, fuse, [&y, &t, &x0]);
                let mut cand = be.zeros(p, k).unwrap();
                let mut evals: Vec<_> = (0..n).map(|_| be.zeros(p, k).unwrap()).collect();
                let before = backend_launches(&be, Kernel::GramReduce);
                for (j, e) in evals.iter_mut().enumerate() {
                    be.lerp_candidate(&gy, &gt, 1.0 / (1 << j) as f64, &mut cand);
                    be.nonneg(&mut cand, NonNeg::Hard);
                    be.retract_candidate(&cand, e, &o);
                    be.nonneg(e, NonNeg::Hard);
                }
                let mut reqs = Vec::new();
                for e in &evals {
                    reqs.push(nsa_flow::backend::Reduction::EnergyTerms { y: e, target: &gx });
                    reqs.push(nsa_flow::backend::Reduction::DistSq(e, &gy));
                    reqs.push(nsa_flow::backend::Reduction::AnyDiffer(e, &gy));
                }
                let v = be.reduce(&reqs).unwrap();
                if fuse {
                    // two candidates: no reduce at all; three: the first one's, to free its
                    // region for the third
                    assert_eq!(
                        backend_launches(&be, Kernel::GramReduce) - before,
                        (n - 2) as u64,
                        "{p}×{k}, {n} candidates: Gram reduces launched"
                    );
                }
                // a pending Gram read by a retraction of its matrix
                let mut again = be.zeros(p, k).unwrap();
                be.retract_candidate(&cand, &mut evals[0], &o);
                be.retract(&evals[0], &mut again, &o);
                let a = be.download(&again).unwrap();
                runs.push((
                    v,
                    a,
                    evals
                        .iter()
                        .map(|e| be.download(e).unwrap())
                        .collect::<Vec<_>>(),
                ));
            }
            let (u, f) = (&runs[0], &runs[1]);
            assert_eq!(
                u.0.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                f.0.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{p}×{k}, {n} candidates: energy terms differ from the unfused ones"
            );
            assert!(
                u.1 == f.1,
                "{p}×{k}: a retraction of a pending Gram's matrix differs"
            );
            assert!(u.2 == f.2, "{p}×{k}: candidates differ");
            // and the terms are the candidates' own: ‖S‖² of each one's Gram
            for (j, c) in f.2.iter().enumerate().skip(1) {
                let g = c.transpose() * c;
                let got = f.0[6 * j + 1];
                assert!(
                    (got - g.norm_squared()).abs() <= 1e-4 * g.norm_squared(),
                    "{p}×{k}: candidate {j}'s ‖S‖² {got} against {}",
                    g.norm_squared()
                );
            }
        }
    }
}
