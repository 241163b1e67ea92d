//! Every device kernel of the wgpu backend, reached through the [`Backend`] trait (and
//! `GpuBackend::inv_sqrt_newton_schulz` for the k×k Newton–Schulz kernels on their own),
//! checked against the CPU oracle `CpuBackend<T>` of the *same* precision on awkward shapes:
//! `k ∈ {1, 3, 17, 64}` × `p ∈ {1, 63, 65, 1031}` (ragged against the 256-wide workgroups, the
//! 16-wide tiles and the 64-row Gram chunks), plus `p = 100 003` for `k ∈ {1, 3}` (many
//! workgroups, many Gram chunks, partial sums with several entries per thread).
//!
//! One `GpuBackend` is built per precision per test and reused across all shapes (the device
//! here may be lavapipe, a software rasteriser slower than the CPU, so the sizes are kept small).
//! Each test records every comparison, prints the worst error per operation (with `eprintln`,
//! shown by `cargo test -- --nocapture`) and fails at the end listing every comparison that
//! exceeded its tolerance, so one run shows all problems at once. `interleaved_shapes_f64`
//! checks the same operations on one backend holding matrices of two shapes.
//!
//! # Tolerances
//!
//! Errors are relative Frobenius distances `‖gpu − cpu‖/‖cpu‖` (relative differences for
//! scalars; for `Dot` relative to `Σ|aᵢbᵢ|`, and for the gradient relative to the size of the
//! terms it is assembled from, see [`gradient_scale`]: both may cancel to rounding noise), with
//! these tolerances (`u` = ε of the precision):
//!
//! * f64: `1e-12` (the device and the CPU both round at 2⁻⁵², they only sum in different
//!   orders, so they agree to ~1e-15; 1e-12 leaves room for long sums).
//! * f32: [`f32_tol`]`(n)` for a result whose longest reduction has `n` terms.
//! * plus, for the operations through `(YᵀY)^{-1/2}` (retraction, polar projection), the
//!   conditioning terms of [`inv_sqrt_tol`]: `16·u·√κ`, and for the device's regularised
//!   reference polar factor `16·u·tr(S)/(k·λ_min)`. In f64 these reach 2.6e-12 and 2e-11 on
//!   the worst-conditioned shape here (p = 65, k = 64, κ(YᵀY) = 2e5), which is the "few ×1e-12".
//! * exact (`0`) for the operations that do no arithmetic: `copy`, the hard clamp,
//!   `AllFinite`, the identity retractions.
//!
//! A wrong index, a dropped term or a wrong coefficient gives errors of order 1 (or at least
//! of order `1/k`, one column out of `k`; or `1/√n` for one wrong entry out of `n`), far above
//! every tolerance here; `tolerances_reject_wrong_answers_f32` checks that the loosest ones,
//! f32's, reject such answers.

mod common;

use nalgebra::{DMatrix, SymmetricEigen};
use nsa_flow::backend::cpu::CpuBackend;
use nsa_flow::backend::gpu::GpuBackend;
use nsa_flow::backend::{Backend, GradientRule, Projection, Reduction, UpdateRule};
use nsa_flow::{InvSqrtMethod, NonNeg, Precision, RetractOptions, Retraction};
use std::time::Instant;

type M = DMatrix<f64>;

const KS: [usize; 4] = [1, 3, 17, 64];
const PS: [usize; 4] = [1, 63, 65, 1031];
/// The long shape, tested for `k ∈ {1, 3}` only.
const P_LONG: usize = 100_003;

/// Every (p, k) tested.
fn shapes() -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for &k in &KS {
        for &p in &PS {
            v.push((p, k));
        }
    }
    v.push((P_LONG, 1));
    v.push((P_LONG, 3));
    v
}

/// f32 machine epsilon, 2⁻²³.
const EPS32: f64 = f32::EPSILON as f64;
/// f64 machine epsilon, 2⁻⁵².
const EPS64: f64 = f64::EPSILON;
/// The f64 tolerance of a well-conditioned operation.
const TOL64: f64 = 1e-12;

/// Tolerance for an f32 result whose longest inner reduction has `len` terms:
/// `4·ε·(√len/2 + log₂ len + 4)`, ε = 2⁻²³.
///
/// The device and the CPU round the same terms at ε but sum them in different orders (the
/// device: a strided sequential sum of at most 16 terms per thread, a 256-wide tree, then the
/// partials, in f64 on the host; the CPU: 8 interleaved lanes over up to 4 blocks, i.e.
/// sequential chains of up to `len/32` terms). The worst-case bound of a length-`n` sum grows
/// like `n·ε`, but rounding errors are random in sign and the typical error grows like `√n·ε`:
/// `√len/2` covers the CPU's chains (`√(len/32)` in random-walk terms) with margin, `log₂ len`
/// the device's tree, `+4` the few roundings of the elementwise part and of the k×k
/// post-processing (and softplus's few-ulp `exp`/`log1p`); the factor 4 is the margin: the
/// largest errors observed are 6× (softplus) to 15× (the sums) below this. It is 2e-6 for a
/// single rounding, 7e-6 at `len = 64`, 8.5e-5 at `len = 100 003`: a wrong index or a dropped
/// term gives an O(1) error, one wrong entry among `n` an error of order `1/√n`.
fn f32_tol(len: usize) -> f64 {
    let n = len.max(1) as f64;
    4.0 * EPS32 * (n.sqrt() / 2.0 + n.log2() + 4.0)
}

/// The tolerance of an operation whose longest reduction has `len` terms, in `prec`.
fn tol(prec: Precision, len: usize) -> f64 {
    match prec {
        Precision::F64 => TOL64,
        Precision::F32 => f32_tol(len),
    }
}

fn unit_roundoff(prec: Precision) -> f64 {
    match prec {
        Precision::F64 => EPS64,
        Precision::F32 => EPS32,
    }
}

/// What the conditioning of `S = YᵀY` does to an operation through `S^{-1/2}`.
#[derive(Clone, Copy, Debug)]
struct GramInfo {
    /// `κ = λ_max/λ_min` of `S` (∞ when rank deficient).
    kappa: f64,
    /// `tr(S)/(k·λ_min)`.
    reg: f64,
}

fn gram_info(y: &M) -> GramInfo {
    let k = y.ncols();
    let s = y.transpose() * y;
    let tr = s.trace();
    let e = SymmetricEigen::new(s).eigenvalues;
    let (lo, hi) = e.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    if lo <= 0.0 {
        GramInfo {
            kappa: f64::INFINITY,
            reg: f64::INFINITY,
        }
    } else {
        GramInfo {
            kappa: hi / lo,
            reg: tr / (k as f64 * lo),
        }
    }
}

/// The tolerance of an operation through `(YᵀY)^{-1/2}` (a retraction, the polar projection).
///
/// The polar factor `Q = Y·S^{-1/2}` has condition number `κ(Y) = √κ` (a perturbation `δY`
/// moves it by at most `2‖δY‖/σ_min`); the device's Newton–Schulz and the CPU's
/// eigendecomposition, fed Gram products rounded in different orders, differ by the
/// equivalent of a few ulps of `Y`, so by `≈ u·√κ`: observed up to `2·u·√κ` for κ from 6 to
/// 2e5 in both precisions, so `16·u·√κ` is allowed on top of [`tol`]. (The first-order bound through
/// the Gram, `κ·u`, is not attained: the two Gram errors are not aligned with the smallest
/// eigenvector.)
///
/// `regularised_polar`: the device computes the reference's SVD polar factor as
/// `Y·(S + δI)^{-1/2}`, `δ = 16·u·tr(S)/k`, which moves it by `≈ ½·δ/λ_min` along the smallest
/// eigenvector: `16·u·tr(S)/(k·λ_min)` more is allowed (observed 15× below that).
fn inv_sqrt_tol(prec: Precision, len: usize, g: GramInfo, regularised_polar: bool) -> f64 {
    let u = unit_roundoff(prec);
    let mut t = tol(prec, len) + 16.0 * u * g.kappa.sqrt();
    if regularised_polar {
        t += 16.0 * u * g.reg;
    }
    t
}

/// Collects the comparisons of one test: the worst error per operation, and every failure.
struct Report {
    name: String,
    start: Instant,
    /// (operation, worst error, its tolerance, the case)
    worst: Vec<(String, f64, f64, String)>,
    failures: Vec<String>,
    checks: usize,
}

impl Report {
    fn new(test: &str, prec: Precision) -> Report {
        Report {
            name: format!("{test} ({prec})"),
            start: Instant::now(),
            worst: Vec::new(),
            failures: Vec::new(),
            checks: 0,
        }
    }

    /// Records `err ≤ tol` for operation `op` in `case` (NaN fails).
    fn check(&mut self, op: &str, case: &str, err: f64, tol: f64) {
        self.checks += 1;
        let pass = err <= tol;
        if !pass {
            self.failures.push(format!(
                "{op} [{case}]: error {err:.3e} > tolerance {tol:.3e}"
            ));
        }
        let key = |e: f64| if e.is_nan() { f64::INFINITY } else { e };
        match self.worst.iter_mut().find(|w| w.0 == op) {
            Some(w) => {
                // keep the case closest to (or furthest past) its tolerance
                let ratio = |e: f64, t: f64| {
                    if t > 0.0 {
                        key(e) / t
                    } else if e == 0.0 {
                        0.0
                    } else {
                        f64::INFINITY
                    }
                };
                if ratio(err, tol) > ratio(w.1, w.2)
                    || (ratio(err, tol) == ratio(w.1, w.2) && key(err) > key(w.1))
                {
                    *w = (op.to_string(), err, tol, case.to_string());
                }
            }
            None => self
                .worst
                .push((op.to_string(), err, tol, case.to_string())),
        }
    }

    /// Records an exact (boolean) expectation.
    fn expect(&mut self, op: &str, case: &str, ok: bool, what: impl FnOnce() -> String) {
        self.check(op, case, if ok { 0.0 } else { 1.0 }, 0.0);
        if !ok {
            let last = self.failures.pop().unwrap();
            self.failures.push(format!("{last}: {}", what()));
        }
    }

    fn finish(self) {
        eprintln!(
            "== {}: {} comparisons in {:.2} s; worst error per operation (error / tolerance, case):",
            self.name,
            self.checks,
            self.start.elapsed().as_secs_f64()
        );
        for (op, err, tol, case) in &self.worst {
            eprintln!("   {op:<40} {err:10.3e} / {tol:9.3e}   [{case}]");
        }
        assert!(
            self.failures.is_empty(),
            "{}: {} of {} comparisons failed:\n{}",
            self.name,
            self.failures.len(),
            self.checks,
            self.failures.join("\n")
        );
    }
}

/// Runs `$f(&mut cpu_backend, args…)` on a fresh CPU oracle of precision `$prec`.
macro_rules! on_cpu {
    ($prec:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $prec {
            Precision::F64 => $f(&mut CpuBackend::<f64>::new(), $($arg),*),
            Precision::F32 => $f(&mut CpuBackend::<f32>::new(), $($arg),*),
        }
    };
}

fn up<B: Backend>(b: &mut B, m: &M) -> B::Mat {
    b.upload(m).expect("upload")
}

fn down<B: Backend>(b: &mut B, m: &B::Mat) -> M {
    b.download(m).expect("download")
}

/// A reduction request by index into a list of host matrices.
#[derive(Clone, Copy, Debug)]
enum R {
    Energy(usize, usize),
    NormSq(usize),
    Dot(usize, usize),
    AllFinite(usize),
    DistSq(usize, usize),
    GradMap(usize, usize, f64, bool),
    /// `FreeNormSq { y, g }`
    Free(usize, usize),
}

fn reduce_on<B: Backend>(b: &mut B, mats: &[M], reqs: &[R]) -> Vec<f64> {
    let dev: Vec<B::Mat> = mats.iter().map(|m| up(b, m)).collect();
    let rs: Vec<Reduction<'_, B::Mat>> = reqs
        .iter()
        .map(|r| match *r {
            R::Energy(y, t) => Reduction::EnergyTerms {
                y: &dev[y],
                target: &dev[t],
            },
            R::NormSq(a) => Reduction::NormSq(&dev[a]),
            R::Dot(a, c) => Reduction::Dot(&dev[a], &dev[c]),
            R::AllFinite(a) => Reduction::AllFinite(&dev[a]),
            R::DistSq(a, c) => Reduction::DistSq(&dev[a], &dev[c]),
            R::GradMap(y, g, t, clamp) => Reduction::GradMapSq {
                y: &dev[y],
                g: &dev[g],
                t,
                clamp,
            },
            R::Free(y, g) => Reduction::FreeNormSq {
                y: &dev[y],
                g: &dev[g],
            },
        })
        .collect();
    let out = b.reduce(&rs).expect("reduce");
    assert_eq!(
        out.len(),
        rs.iter().map(|r| r.width()).sum::<usize>(),
        "reduce: answer width"
    );
    out
}

fn lincomb_on<B: Backend>(b: &mut B, a: f64, x: &M, c: f64, y: &M) -> M {
    let (dx, dy) = (up(b, x), up(b, y));
    let mut d = b.zeros(x.nrows(), x.ncols()).unwrap();
    b.lincomb(a, &dx, c, &dy, &mut d);
    down(b, &d)
}

fn lerp_on<B: Backend>(b: &mut B, base: &M, toward: &M, alpha: f64) -> M {
    let (db, dt) = (up(b, base), up(b, toward));
    let mut d = b.zeros(base.nrows(), base.ncols()).unwrap();
    b.lerp(&db, &dt, alpha, &mut d);
    down(b, &d)
}

fn copy_on<B: Backend>(b: &mut B, src: &M, dst_before: &M) -> M {
    let ds = up(b, src);
    let mut d = up(b, dst_before);
    b.copy(&ds, &mut d);
    down(b, &d)
}

fn nonneg_on<B: Backend>(b: &mut B, m: &M, mode: NonNeg) -> M {
    let mut d = up(b, m);
    b.nonneg(&mut d, mode);
    down(b, &d)
}

fn retract_on<B: Backend>(b: &mut B, y: &M, o: &RetractOptions) -> M {
    let dy = up(b, y);
    let mut d = b.zeros(y.nrows(), y.ncols()).unwrap();
    b.retract(&dy, &mut d, o);
    down(b, &d)
}

fn gradient_on<B: Backend>(b: &mut B, y: &M, x0: &M, rule: &GradientRule) -> M {
    let (dy, dx) = (up(b, y), up(b, x0));
    // a stale output buffer: the gradient must overwrite it
    let mut d = up(b, &M::from_element(y.nrows(), y.ncols(), 7.0));
    b.gradient(&dy, &dx, rule, &mut d);
    down(b, &d)
}

/// One optimizer step; returns (out, state[0] after the step).
fn step_on<B: Backend>(
    b: &mut B,
    rule: &UpdateRule,
    param: &M,
    grad: &M,
    state: &M,
    lr: f64,
) -> (M, M) {
    let (dp, dg) = (up(b, param), up(b, grad));
    let mut st = vec![up(b, state)];
    let mut d = b.zeros(param.nrows(), param.ncols()).unwrap();
    b.optimizer_step(rule, &dp, &dg, &mut st, lr, &mut d);
    (down(b, &d), down(b, &st[0]))
}

/// Relative difference of two scalars, relative to `scale` (or absolute when it is 0).
fn scal_err(got: f64, want: f64, scale: f64) -> f64 {
    let d = (got - want).abs();
    if d == 0.0 {
        0.0
    } else if scale > 0.0 {
        d / scale
    } else {
        d
    }
}

fn shape_case(p: usize, k: usize) -> String {
    format!("p={p} k={k}")
}

// ---------------------------------------------------------------------------------------
// reductions
// ---------------------------------------------------------------------------------------

/// The error scale of each scalar of a request: the value itself for the sums of squares,
/// `Σ|aᵢbᵢ|` for the dot product.
fn scales(mats: &[M], reqs: &[R], values: &[f64]) -> Vec<f64> {
    let mut out = Vec::new();
    let mut at = 0;
    for r in reqs {
        match *r {
            R::Dot(a, b) => out.push(
                mats[a]
                    .iter()
                    .zip(mats[b].iter())
                    .map(|(x, y)| (x * y).abs())
                    .sum(),
            ),
            R::Energy(..) => out.extend(values[at..at + 4].iter().map(|v| v.abs())),
            _ => out.push(values[at].abs()),
        }
        at += match r {
            R::Energy(..) => 4,
            _ => 1,
        };
    }
    out
}

fn req_name(r: &R, i: usize) -> String {
    match r {
        R::Energy(..) => [
            "EnergyTerms.dist_sq",
            "EnergyTerms.gram_fro_sq",
            "EnergyTerms.gram_diag_sq",
            "EnergyTerms.norm_sq",
        ][i]
            .into(),
        R::NormSq(_) => "NormSq".into(),
        R::Dot(..) => "Dot".into(),
        R::AllFinite(_) => "AllFinite".into(),
        R::DistSq(..) => "DistSq".into(),
        R::GradMap(_, _, _, true) => "GradMapSq(clamp)".into(),
        R::GradMap(_, _, _, false) => "GradMapSq(no clamp)".into(),
        R::Free(..) => "FreeNormSq".into(),
    }
}

/// Compares a GPU reduce batch with the CPU's, entry by entry.
fn compare_reduce(
    rep: &mut Report,
    g: &mut GpuBackend,
    prec: Precision,
    mats: &[M],
    reqs: &[R],
    case: &str,
    prefix: &str,
) -> Vec<f64> {
    let got = reduce_on(g, mats, reqs);
    let want = on_cpu!(prec, reduce_on(mats, reqs));
    assert_eq!(got.len(), want.len());
    let sc = scales(mats, reqs, &want);
    let len = mats[0].len();
    let mut at = 0;
    for r in reqs {
        let w = match r {
            R::Energy(..) => 4,
            _ => 1,
        };
        for i in 0..w {
            let op = format!("{prefix}{}", req_name(r, i));
            if let R::AllFinite(_) = r {
                rep.expect(&op, case, got[at] == want[at], || {
                    format!("gpu {} cpu {}", got[at], want[at])
                });
            } else {
                rep.check(
                    &op,
                    case,
                    scal_err(got[at + i], want[at + i], sc[at + i]),
                    tol(prec, len),
                );
            }
        }
        at += w;
    }
    got
}

fn reductions(name: &str, prec: Precision) {
    let Some(mut g) = common::gpu_backend(name, prec) else {
        return;
    };
    let mut rep = Report::new(name, prec);
    let huge = match prec {
        Precision::F64 => 1e308,
        Precision::F32 => 3e38,
    };
    for (p, k) in shapes() {
        let case = shape_case(p, k);
        let n = p * k;
        let mut a = common::randn(p, k, 11 + n as u64);
        let mut b = common::randn(p, k, 13 + n as u64).map(|v| 0.5 * v + 0.25);
        // large entries first and last (the first thread, the last partial workgroup), so
        // that a dropped or doubled edge entry changes every sum by far more than the f32
        // tolerance even at n = 300 009 (1600/300 009 ≈ 5e-3 against 1.4e-4)
        a[0] = 30.0;
        a[n - 1] = -40.0;
        b[n - 1] = 25.0;
        // a matrix with NaN, +Inf and −Inf planted, one with a single NaN at the very end
        // (the last thread of the last partial), one with huge but finite entries
        let mut bad = a.clone();
        bad[n / 2] = f64::INFINITY;
        bad[n - 1] = f64::NAN;
        bad[0] = f64::NEG_INFINITY;
        let mut nan_last = a.clone();
        nan_last[n - 1] = f64::NAN;
        let mut inf_only = a.clone();
        inf_only[n / 3] = f64::NEG_INFINITY;
        let mut big = a.clone();
        big[0] = huge;
        big[n - 1] = -huge;
        let mats = vec![a, b, bad, nan_last, inf_only, big];

        // one request per call
        let singles = [
            R::NormSq(0),
            R::NormSq(1),
            R::Dot(0, 1),
            R::DistSq(0, 1),
            R::Energy(0, 1),
            R::GradMap(0, 1, 0.3, true),
            R::GradMap(0, 1, 0.3, false),
            R::GradMap(1, 0, 2.0, true),
            R::AllFinite(0),
            R::AllFinite(5),
            R::Free(0, 1),
            R::Free(1, 0),
        ];
        let mut single_vals = Vec::new();
        for r in singles {
            single_vals.extend(compare_reduce(
                &mut rep,
                &mut g,
                prec,
                &mats,
                &[r],
                &case,
                "",
            ));
        }
        for (i, what) in [(2, "NaN+Inf+-Inf"), (3, "NaN last"), (4, "-Inf")] {
            let v = reduce_on(&mut g, &mats, &[R::AllFinite(i)]);
            rep.expect(
                "AllFinite(non-finite planted)",
                &case,
                v == vec![0.0],
                || format!("{what}: gpu {v:?}, want [0]"),
            );
        }
        let v = reduce_on(&mut g, &mats, &[R::AllFinite(5)]);
        rep.expect("AllFinite(huge finite)", &case, v == vec![1.0], || {
            format!("gpu {v:?}, want [1]")
        });

        // all of them in one batch, with the non-finite flags interleaved: the ordering of
        // the concatenated answer must follow the requests
        let batch = [
            R::AllFinite(2),
            R::NormSq(0),
            R::Energy(0, 1),
            R::Dot(0, 1),
            R::AllFinite(0),
            R::DistSq(0, 1),
            R::GradMap(0, 1, 0.3, true),
            R::NormSq(1),
            R::Energy(1, 0),
            R::GradMap(0, 1, 0.3, false),
            R::AllFinite(3),
            R::GradMap(1, 0, 2.0, true),
            R::AllFinite(5),
            R::Free(0, 1),
        ];
        let got = compare_reduce(&mut rep, &mut g, prec, &mats, &batch, &case, "batch/");
        // and the same numbers as the single requests (same kernels, same order of sums)
        let pick = |v: &[f64], idx: &[usize]| idx.iter().map(|&i| v[i]).collect::<Vec<_>>();
        // singles layout: NormSq0=0 NormSq1=1 Dot=2 Dist=3 Energy=4..8 GM=8 GMnc=9 GM2=10 AF0=11 AF5=12
        // Free01=13 Free10=14
        // batch layout: AF2=0 N0=1 E=2..6 Dot=6 AF0=7 Dist=8 GM=9 N1=10 E'=11..15 GMnc=15 AF3=16 GM2=17 AF5=18
        // Free01=19
        let from_batch = pick(&got, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 17, 18, 19]);
        let from_singles = pick(
            &single_vals,
            &[0, 4, 5, 6, 7, 2, 11, 3, 8, 1, 9, 10, 12, 13],
        );
        let same = from_batch
            .iter()
            .zip(&from_singles)
            .all(|(x, y)| (x - y).abs() <= tol(prec, n) * y.abs().max(1e-300));
        rep.expect("batch vs single requests", &case, same, || {
            format!("batch {from_batch:?}\nsingles {from_singles:?}")
        });
        rep.expect(
            "batch/AllFinite(non-finite planted)",
            &case,
            got[0] == 0.0 && got[16] == 0.0,
            || format!("{got:?}"),
        );
    }

    // more requests than one readback holds (192 slots): 60 EnergyTerms (240 numbers) and
    // NormSq in between, answered over several round trips, still in order
    for (p, k) in [(65, 3), (1031, 17)] {
        let case = format!("{} long batch", shape_case(p, k));
        let mats: Vec<M> = (0..8)
            .map(|i| common::randn(p, k, 100 + i).map(|v| v * (1.0 + i as f64)))
            .collect();
        let mut reqs = Vec::new();
        for i in 0..60 {
            reqs.push(R::Energy(i % 8, (i + 3) % 8));
            if i % 7 == 0 {
                reqs.push(R::NormSq((i + 1) % 8));
                reqs.push(R::AllFinite(i % 8));
            }
        }
        compare_reduce(&mut rep, &mut g, prec, &mats, &reqs, &case, "long batch/");
    }
    rep.finish();
}

#[test]
fn reductions_f64() {
    reductions("reductions_f64", Precision::F64);
}

#[test]
fn reductions_f32() {
    reductions("reductions_f32", Precision::F32);
}

// ---------------------------------------------------------------------------------------
// elementwise: lincomb, lerp, copy, nonneg
// ---------------------------------------------------------------------------------------

/// Entries that exercise softplus's branches: far below −20 (e^x underflowing to 0 in both
/// precisions at −1000), around the threshold, around 0 (both signs of zero), above 20.
const SPECIAL: [f64; 22] = [
    -1000.0, -300.0, -80.0, -45.0, -30.0, -20.5, -20.0, -19.99, -5.0, -1.0, -1e-3, -1e-7, -0.0,
    0.0, 1e-7, 1e-3, 0.5, 5.0, 19.99, 20.0, 20.0001, 1000.0,
];

/// The smallest positive normal number of `prec`.
fn min_normal(prec: Precision) -> f64 {
    match prec {
        Precision::F64 => f64::MIN_POSITIVE,
        Precision::F32 => f32::MIN_POSITIVE as f64,
    }
}

/// The entrywise error of softplus, `max_i |gᵢ − cᵢ| / max(|cᵢ|, min_normal) / (1 + |xᵢ|)`.
///
/// Entrywise and relative, because softplus(−30) ≈ 9e-14 must be right relative to itself,
/// which a Frobenius norm dominated by the entries > 20 would not see. Divided by `1 + |x|`
/// because `eˣ` has condition number `|x|`: an implementation that reduces `x` by `m·ln 2` in
/// working precision (as the device's does, and as GPU `exp` generally does: Vulkan requires
/// only `3 + 2·|x|` ulp for `exp`) has relative error of order `|x|·ε`, e.g. 4e-6 at
/// `x = −72` in f32, where libm's `expf` is correctly rounded. Results below the smallest
/// normal number are compared absolutely (subnormals may be flushed or rounded differently).
fn softplus_err(x: &M, got: &M, want: &M, prec: Precision) -> f64 {
    let floor = min_normal(prec);
    let mut worst = 0.0f64;
    for ((xv, gv), cv) in x.iter().zip(got.iter()).zip(want.iter()) {
        let d = (gv - cv).abs();
        let e = if d == 0.0 {
            0.0
        } else {
            d / cv.abs().max(floor) / (1.0 + xv.abs())
        };
        worst = if e.is_nan() || worst.is_nan() {
            f64::NAN
        } else {
            worst.max(e)
        };
    }
    worst
}

fn elementwise(name: &str, prec: Precision) {
    let Some(mut g) = common::gpu_backend(name, prec) else {
        return;
    };
    let mut rep = Report::new(name, prec);
    // elementwise results have no reduction: tolerance of a length-1 "sum" (a few roundings)
    let t1 = tol(prec, 1);
    for (p, k) in shapes() {
        let case = shape_case(p, k);
        let n = p * k;
        let x = common::randn(p, k, 21 + n as u64);
        let y = common::randn(p, k, 23 + n as u64).map(|v| 3.0 * v - 1.0);
        for (a, b) in [
            (1.0, -0.37),
            (0.0, 2.5),
            (-1.25, 0.0),
            (1e-3, 1e3),
            (0.5, 0.5),
        ] {
            let c = format!("{case} a={a} b={b}");
            let got = lincomb_on(&mut g, a, &x, b, &y);
            let want = on_cpu!(prec, lincomb_on(a, &x, b, &y));
            rep.check("lincomb", &c, common::rel_fro(&got, &want), t1);
        }
        for alpha in [0.0, 0.37, 1.0, 1.7, -0.5] {
            let c = format!("{case} alpha={alpha}");
            let got = lerp_on(&mut g, &x, &y, alpha);
            let want = on_cpu!(prec, lerp_on(&x, &y, alpha));
            rep.check("lerp", &c, common::rel_fro(&got, &want), t1);
        }
        let got = copy_on(&mut g, &x, &y);
        let want = on_cpu!(prec, copy_on(&x, &y));
        rep.expect("copy", &case, got == want, || "copy differs".into());

        // values spanning softplus's branches: the special entries first (cyclically when the
        // matrix is smaller), then 30·N(0,1), so most shapes see < −20, ~0 and > 20
        let mut z = common::randn(p, k, 29 + n as u64).map(|v| 30.0 * v);
        let m = if n < SPECIAL.len() { n } else { SPECIAL.len() };
        let offset = n % SPECIAL.len();
        for i in 0..m {
            z[i] = SPECIAL[(i + offset) % SPECIAL.len()];
        }
        // and the specials again at the end of the buffer (the last, partial workgroup)
        for i in 0..m {
            z[n - 1 - i] = SPECIAL[i];
        }
        let got = nonneg_on(&mut g, &z, NonNeg::Hard);
        let want = on_cpu!(prec, nonneg_on(&z, NonNeg::Hard));
        rep.expect("nonneg(hard)", &case, got == want, || {
            "hard clamp differs".into()
        });
        let got = nonneg_on(&mut g, &z, NonNeg::None);
        rep.expect(
            "nonneg(none)",
            &case,
            got == on_cpu!(prec, nonneg_on(&z, NonNeg::None)),
            || "none changed values".into(),
        );
        let got = nonneg_on(&mut g, &z, NonNeg::Softplus);
        let want = on_cpu!(prec, nonneg_on(&z, NonNeg::Softplus));
        rep.check(
            "nonneg(softplus) entrywise",
            &case,
            softplus_err(&z, &got, &want, prec),
            t1,
        );
        // exact zeros (softplus(−1000) underflows) and signs agree wherever the result is a
        // normal number
        let zero_ok = got
            .iter()
            .zip(want.iter())
            .all(|(a, b)| *a >= 0.0 && (b.abs() < min_normal(prec) || (*a == 0.0) == (*b == 0.0)));
        rep.expect("nonneg(softplus) zeros/sign", &case, zero_ok, || {
            "zero pattern differs".into()
        });
    }
    rep.finish();
}

#[test]
fn elementwise_f64() {
    elementwise("elementwise_f64", Precision::F64);
}

#[test]
fn elementwise_f32() {
    elementwise("elementwise_f32", Precision::F32);
}

// ---------------------------------------------------------------------------------------
// optimizer steps
// ---------------------------------------------------------------------------------------

/// (max row cosine, whole-matrix cosine) as torch_optimizer's SGDP computes them.
fn sgdp_cosines(param: &M, grad: &M, eps: f64) -> (f64, f64) {
    let mut max_row = 0.0f64;
    for i in 0..param.nrows() {
        let (pr, gr) = (param.row(i), grad.row(i));
        let c = pr.dot(&gr).abs() / (gr.norm() + eps) / (pr.norm() + eps);
        max_row = max_row.max(c);
    }
    let whole = param.dot(grad).abs() / (grad.norm() + eps) / (param.norm() + eps);
    (max_row, whole)
}

fn optimizer(name: &str, prec: Precision) {
    let Some(mut g) = common::gpu_backend(name, prec) else {
        return;
    };
    let mut rep = Report::new(name, prec);
    let delta = 0.1;
    let eps = 1e-8;
    for (p, k) in shapes() {
        let case = shape_case(p, k);
        let n = p * k;
        let param = common::randn(p, k, 31 + n as u64);
        let noise = common::randn(p, k, 37 + n as u64);
        let state0 = common::randn(p, k, 41 + n as u64).map(|v| 0.1 * v);
        let lr = 0.05;

        // SGD
        let (got, _) = step_on(&mut g, &UpdateRule::Sgd, &param, &noise, &state0, lr);
        let (want, _) = on_cpu!(prec, step_on(&UpdateRule::Sgd, &param, &noise, &state0, lr));
        rep.check("sgd", &case, common::rel_fro(&got, &want), tol(prec, 1));

        // gradients for the three SGDP branches
        // (a) no projection: the gradient is correlated with the parameter, row by row
        let g_plain = &noise + &param * 0.8;
        // (b) per-row projection: every row of the gradient orthogonal to that row of the
        //     parameter (k = 1: the parameter vanishes on odd rows, the gradient on even rows)
        let (param_b, g_rows) = if k == 1 {
            let pb = M::from_fn(p, 1, |i, _| if i % 2 == 1 { 0.0 } else { param[(i, 0)] });
            let gb = M::from_fn(p, 1, |i, _| if i % 2 == 0 { 0.0 } else { noise[(i, 0)] });
            (pb, gb)
        } else {
            let mut gb = noise.clone();
            for i in 0..p {
                let pr = param.row(i).clone_owned();
                let c = gb.row(i).dot(&pr) / pr.dot(&pr);
                let new = gb.row(i) - pr * c;
                gb.row_mut(i).copy_from(&new);
            }
            (param.clone(), gb)
        };
        // (c) whole-matrix projection: rows strongly (anti-)correlated with the parameter,
        //     so the row test fails, but orthogonal to it as a whole
        let g_whole = {
            let mut r = noise.clone();
            for i in 0..p {
                let s = if i % 2 == 0 { 2.0 } else { -2.0 };
                let new = r.row(i) + param.row(i) * s;
                r.row_mut(i).copy_from(&new);
            }
            let c = r.dot(&param) / param.dot(&param);
            &r - &param * c
        };
        let thr_row = delta / (k as f64).sqrt();
        let thr_all = delta / (n as f64).sqrt();
        let (r_a, w_a) = sgdp_cosines(&param, &g_plain, eps);
        assert!(
            r_a > 2.0 * thr_row && w_a > 2.0 * thr_all,
            "case (a) must not project: {r_a} {w_a}"
        );
        let (r_b, _) = sgdp_cosines(&param_b, &g_rows, eps);
        assert!(r_b < 1e-3 * thr_row, "case (b) must project per row: {r_b}");
        let (r_c, w_c) = sgdp_cosines(&param, &g_whole, eps);
        if p > 1 {
            assert!(
                r_c > 2.0 * thr_row && w_c < 1e-3 * thr_all,
                "case (c) must project the whole matrix: {r_c} {w_c}"
            );
        }

        for (branch, pm, gr) in [
            ("plain", &param, &g_plain),
            ("row-proj", &param_b, &g_rows),
            ("whole-proj", &param, &g_whole),
        ] {
            for nesterov in [false, true] {
                for weight_decay in [0.0, 1e-2] {
                    for (momentum, dampening) in [(0.9, 0.0), (0.5, 0.1)] {
                        // the long shapes: one variant per Nesterov setting
                        if p >= P_LONG && (weight_decay == 0.0 || momentum != 0.9) {
                            continue;
                        }
                        let rule = UpdateRule::Sgdp {
                            momentum,
                            dampening,
                            eps,
                            weight_decay,
                            delta,
                            wd_ratio: 0.1,
                            nesterov,
                        };
                        let c = format!("{case} {branch} nesterov={nesterov} wd={weight_decay} mu={momentum} damp={dampening}");
                        let (got, got_s) = step_on(&mut g, &rule, pm, gr, &state0, lr);
                        let (want, want_s) = on_cpu!(prec, step_on(&rule, pm, gr, &state0, lr));
                        // the projection sums over a row (k) or the whole matrix (p·k)
                        let t = tol(prec, n);
                        rep.check(
                            &format!("sgdp out ({branch})"),
                            &c,
                            common::rel_fro(&got, &want),
                            t,
                        );
                        rep.check(
                            "sgdp state[0]",
                            &c,
                            common::rel_fro(&got_s, &want_s),
                            tol(prec, 1),
                        );
                    }
                }
            }
        }
    }
    rep.finish();
}

#[test]
fn optimizer_f64() {
    optimizer("optimizer_f64", Precision::F64);
}

#[test]
fn optimizer_f32() {
    optimizer("optimizer_f32", Precision::F32);
}

// ---------------------------------------------------------------------------------------
// gradient
// ---------------------------------------------------------------------------------------

/// The size of the terms a gradient is assembled from, in f64: the rounding error of any
/// evaluation order is proportional to it, not to the result, which may cancel (with
/// `fid = 0` and `k = 1` the invariant-defect part vanishes identically, so the result is
/// rounding noise; a tangent projection may remove most of a direction).
///
/// `|fid|·‖Y − X0‖ + (orthogonality part)`, the latter `|c|·‖Y‖·‖S‖` (simplified) or
/// `2·|orth|·‖Y‖·‖S‖/n²` (it is `orth·[(Y·S − Y·Diag(d))/n² − (D/n)·Y]`, `D ≤ ‖S‖²/n²`), and
/// for the reference projections times `1 + λ_max(S)` (`‖Y·sym(YᵀG)‖ ≤ λ_max(S)·‖G‖`; `Y` is not
/// orthonormal), for the polar projection times 2.
fn gradient_scale(y: &M, x0: &M, rule: &GradientRule) -> f64 {
    let s = y.transpose() * y;
    let n = y.norm_squared();
    let active = n > 1e-12 && rule.simplified.map_or(rule.orth != 0.0, |c| c != 0.0);
    let orth = if !active {
        0.0
    } else {
        match rule.simplified {
            Some(c) => c.abs() * y.norm() * s.norm(),
            None => 2.0 * rule.orth.abs() * y.norm() * s.norm() / (n * n),
        }
    };
    let mag = rule.fid.abs() * (y - x0).norm() + orth;
    let lmax = SymmetricEigen::new(s)
        .eigenvalues
        .iter()
        .fold(0.0f64, |m, &v| m.max(v));
    match rule.projection {
        Projection::None => mag,
        Projection::ReferenceOrthOnly | Projection::ReferenceFull => mag * (1.0 + lmax),
        Projection::PolarFull => 2.0 * mag,
    }
}

fn gradient(name: &str, prec: Precision) {
    let Some(mut g) = common::gpu_backend(name, prec) else {
        return;
    };
    let mut rep = Report::new(name, prec);
    let projections = [
        Projection::None,
        Projection::ReferenceOrthOnly,
        Projection::ReferenceFull,
        Projection::PolarFull,
    ];
    // (fid, orth, simplified)
    let coefs: [(f64, f64, Option<f64>); 6] = [
        (1.0, 0.5, None),
        (0.7, 0.0, None),       // orth = 0: the orthogonality part is off
        (0.0, 2.0, None),       // fid = 0: the orthogonality part alone
        (1.0, 0.3, Some(0.05)), // simplified: the off-diagonal Gram term with c, orth ignored
        (1.0, 0.0, Some(0.05)),
        (1.0, 0.3, Some(0.0)), // simplified with c = 0: off
    ];
    for (p, k) in shapes() {
        let n = p * k;
        // the large shapes (1031×64 and the long ones) take 0.4–0.7 s per gradient on
        // lavapipe: there only the main rule and a simplified one (the coefficient variants
        // exercise the k×k coefficient kernel, which the smaller shapes cover)
        let long = n > 50_000;
        let y = common::randn(p, k, 51 + n as u64).map(|v| v.abs() + 0.1 * v);
        let x0 = common::randn(p, k, 53 + n as u64).map(f64::abs);
        // ‖Y‖² ≈ 1e-18 ≤ 1e-12: the orthogonality part is switched off
        let tiny = y.map(|v| 1e-9 * v / (n as f64).sqrt());
        let gi = gram_info(&y);
        let kappa = gi.kappa;
        for proj in projections {
            // the polar projection of a rank-deficient Y (k > p) uses (YᵀY + δI)^{-1/2} with
            // δ = 16·ε·tr/k: it has norm ~ε^{-1/2} on the null space, where the device's
            // Newton–Schulz and the CPU's eigendecomposition agree only to O(1)·rounding/δ:
            // not comparable, skipped.
            if proj == Projection::PolarFull && k > p {
                continue;
            }
            let t = if proj == Projection::PolarFull {
                inv_sqrt_tol(prec, n, gi, false)
            } else {
                tol(prec, n)
            };
            let mut cases: Vec<(f64, f64, Option<f64>, &M, &str)> = Vec::new();
            for (i, &(fid, orth, simplified)) in coefs.iter().enumerate() {
                if !long || i == 0 || i == 3 {
                    cases.push((fid, orth, simplified, &y, ""));
                }
            }
            if !long {
                cases.push((1.0, 0.5, None, &tiny, " (|Y|²≤1e-12)"));
            }
            for (fid, orth, simplified, yy, tag) in cases {
                let rule = GradientRule {
                    fid,
                    orth,
                    simplified,
                    projection: proj,
                };
                let c = format!(
                    "p={p} k={k} fid={fid} orth={orth} simplified={simplified:?} kappa={kappa:.1e}"
                );
                let got = gradient_on(&mut g, yy, &x0, &rule);
                let want = on_cpu!(prec, gradient_on(yy, &x0, &rule));
                let scale = want.norm().max(gradient_scale(yy, &x0, &rule));
                rep.check(
                    &format!("gradient {proj:?}{tag}"),
                    &c,
                    (&got - &want).norm() / scale,
                    t,
                );
            }
        }
    }
    rep.finish();
}

#[test]
fn gradient_f64() {
    gradient("gradient_f64", Precision::F64);
}

#[test]
fn gradient_f32() {
    gradient("gradient_f32", Precision::F32);
}

// ---------------------------------------------------------------------------------------
// retraction
// ---------------------------------------------------------------------------------------

/// (group, label, options, also on the long shapes)
fn retract_cases() -> Vec<(&'static str, String, RetractOptions, bool)> {
    use InvSqrtMethod::*;
    let mut v = Vec::new();
    for w in [0.3, 1.0] {
        for (label, m, ns) in [
            ("eig", Eig, None),
            ("ns4", NewtonSchulz, Some(4)),
            ("ns10", NewtonSchulz, Some(10)),
            ("diag", Diag, None),
            ("auto", Auto, None),
        ] {
            v.push((
                "reference soft_polar",
                format!("w={w} {label}"),
                {
                    let mut o = RetractOptions::reference(Retraction::SoftPolar, w).inv_method(m);
                    o.ns_iter = ns;
                    o
                },
                w == 0.3 && label != "ns10" && label != "auto",
            ));
        }
        for (label, m) in [
            ("eig", Eig),
            ("ns", NewtonSchulz),
            ("diag", Diag),
            ("auto", Auto),
        ] {
            v.push((
                "corrected soft_polar",
                format!("w={w} {label}"),
                RetractOptions::corrected(Retraction::SoftPolar, w).inv_method(m),
                w == 0.3 && label == "ns",
            ));
        }
    }
    v.push((
        "reference polar",
        String::new(),
        RetractOptions::reference(Retraction::Polar, 1.0),
        true,
    ));
    for (label, m) in [
        ("eig", Eig),
        ("ns", NewtonSchulz),
        ("diag", Diag),
        ("auto", Auto),
    ] {
        v.push((
            "corrected polar",
            label.to_string(),
            RetractOptions::corrected(Retraction::Polar, 1.0).inv_method(m),
            label == "auto",
        ));
    }
    v.push((
        "identity",
        "none".into(),
        RetractOptions::reference(Retraction::None, 1.0),
        true,
    ));
    v.push((
        "identity",
        "soft_polar w=0".into(),
        RetractOptions::reference(Retraction::SoftPolar, 0.0),
        true,
    ));
    v
}

fn retraction(name: &str, prec: Precision) {
    let Some(mut g) = common::gpu_backend(name, prec) else {
        return;
    };
    let mut rep = Report::new(name, prec);
    let cases = retract_cases();
    for (p, k) in shapes() {
        // k > p: YᵀY is singular. The reference eig path clamps its eigenvalues at ε while the
        // device runs Newton–Schulz on YᵀY + εI (in f32 the ε = 1e-8 is lost against tr(YᵀY)
        // altogether), and the polar factor of a wide Y has different completions: the results
        // are not comparable, so these shapes are skipped (only the identity cases, `none` and
        // `w = 0`, are checked there).
        let n = p * k;
        // the long shapes take ~0.3 s per retraction on lavapipe: a subset of the options there
        let long = p >= P_LONG;
        let y = common::randn(p, k, 61 + n as u64).map(|v| v.abs() + 0.2 * v);
        let gi = gram_info(&y);
        let kappa = gi.kappa;
        for (group, label, o, on_long) in &cases {
            let identity = o.retraction == Retraction::None || o.w <= 0.0;
            if (k > p && !identity) || (long && !on_long) {
                continue;
            }
            let c = format!("p={p} k={k} {label} kappa={kappa:.1e}");
            let got = retract_on(&mut g, &y, o);
            let want = on_cpu!(prec, retract_on(&y, o));
            if identity {
                rep.expect("retract identity (none, w=0)", &c, got == want, || {
                    "differs".into()
                });
                continue;
            }
            // the diagonal soft-polar inverts nothing ill-conditioned; the others go through
            // (YᵀY)^{-1/2}, the device's reference polar through (YᵀY + δI)^{-1/2}
            let t = if o.inv_method == InvSqrtMethod::Diag && o.retraction == Retraction::SoftPolar
            {
                tol(prec, n)
            } else {
                inv_sqrt_tol(prec, n, gi, *group == "reference polar")
            };
            rep.check(
                &format!("retract {group}"),
                &c,
                common::rel_fro(&got, &want),
                t,
            );
        }
    }
    rep.finish();
}

#[test]
fn retraction_f64() {
    retraction("retraction_f64", Precision::F64);
}

#[test]
fn retraction_f32() {
    retraction("retraction_f32", Precision::F32);
}

// ---------------------------------------------------------------------------------------
// the k×k Newton–Schulz inverse square root on its own
// ---------------------------------------------------------------------------------------

/// A symmetric positive definite k×k matrix with eigenvalues `scale·κ^{-i/(k−1)}`.
fn spd(k: usize, kappa: f64, seed: u64) -> M {
    let q = common::randn(k, k, seed).qr().q();
    let lam: Vec<f64> = (0..k)
        .map(|i| {
            3.7 * if k == 1 {
                1.0
            } else {
                kappa.powf(-(i as f64) / (k - 1) as f64)
            }
        })
        .collect();
    let a = &q * M::from_diagonal(&nalgebra::DVector::from_vec(lam)) * q.transpose();
    (&a + a.transpose()) * 0.5
}

fn inv_sqrt_eig(a: &M) -> M {
    let e = SymmetricEigen::new(a.clone());
    let mut v = e.eigenvectors.clone();
    for j in 0..a.nrows() {
        let f = 1.0 / e.eigenvalues[j].sqrt();
        v.column_mut(j).scale_mut(f);
    }
    &v * e.eigenvectors.transpose()
}

fn inv_sqrt(name: &str, prec: Precision) {
    let Some(mut g) = common::gpu_backend(name, prec) else {
        return;
    };
    let mut rep = Report::new(name, prec);
    let u = match prec {
        Precision::F64 => EPS64,
        Precision::F32 => EPS32,
    };
    // k ≤ 64: the fused single-workgroup kernel; k ≥ 65: one dispatch per product over many
    // workgroups. k = 256 costs ~0.35 s per Newton–Schulz step on lavapipe (κ = 1e4 needs 18
    // steps), so it runs with κ = 1e1 only; κ = 1e4 on the multi-workgroup path is k = 65, 130.
    for k in [1, 3, 17, 64, 65, 130, 256] {
        for kappa in [1e1, 1e4] {
            if k == 256 && kappa > 1e1 {
                continue;
            }
            let c = format!("k={k} kappa={kappa:.0e}");
            let a = spd(k, kappa, 71 + k as u64);
            let (t, steps, residual) = g
                .inv_sqrt_newton_schulz(&a)
                .expect("inv_sqrt_newton_schulz");
            // the reference: the exact A^{-1/2} (in f64) of the matrix the device saw (rounded
            // to its precision)
            let seen = match prec {
                Precision::F64 => a.clone(),
                Precision::F32 => a.map(|v| v as f32 as f64),
            };
            let want = inv_sqrt_eig(&seen);
            // The device's error: each step's k×k products round at ≈ √k·u, and the error of
            // the final Q is amplified along the smallest eigenvector of A by up to κ (observed:
            // ≤ √k·u at κ = 10 and κ·u/20 to κ·u/10 at κ = 1e4, in both precisions), hence the
            // bound u·√k·(16 + κ/4), at least 15× above what is observed; for f64 at least the
            // common 1e-12 (the bound reaches 6e-12 at k = 130, κ = 1e4).
            let bound = (u * (k as f64).sqrt() * (16.0 + kappa / 4.0))
                .max(if prec == Precision::F64 { TOL64 } else { 0.0 });
            rep.check(
                "inv_sqrt_newton_schulz vs eig",
                &c,
                common::rel_fro(&t, &want),
                bound,
            );
            // the reported residual ‖I − R‖_F/√k: the iteration stops at 8·u·√k, or when it
            // stalls (no longer halving) below 1e-3; allow 8× the stopping tolerance
            let res_bound = 64.0 * u * (k as f64).sqrt();
            rep.check("inv_sqrt_newton_schulz residual", &c, residual, res_bound);
            // k = 1: R₀ = A/s = 1 exactly (s = |A|), converged before the first step
            let steps_ok = if k == 1 {
                steps <= 1
            } else {
                (1..100).contains(&steps)
            };
            rep.expect("inv_sqrt_newton_schulz steps", &c, steps_ok, || {
                format!("{steps} steps")
            });
            eprintln!(
                "   [{}] {c}: {steps} steps, residual {residual:.2e}, error {:.2e}",
                rep.name,
                common::rel_fro(&t, &want)
            );
        }
    }
    rep.finish();
}

#[test]
fn inv_sqrt_newton_schulz_f64() {
    inv_sqrt("inv_sqrt_newton_schulz_f64", Precision::F64);
}

#[test]
fn inv_sqrt_newton_schulz_f32() {
    inv_sqrt("inv_sqrt_newton_schulz_f32", Precision::F32);
}

// ---------------------------------------------------------------------------------------
// the tolerances can fail
// ---------------------------------------------------------------------------------------

/// The f32 tolerances (the loose ones; f64's 1e-12 is tight by construction) are tight enough
/// to fail: device results of deliberately *wrong* variants (a dropped edge entry, one row read
/// from the wrong place, a coefficient 10% off, the wrong projection, the wrong retraction
/// style or inverse square root, Nesterov swapped) are compared with the oracle's right answer
/// by the same error measures and tolerances as above, and must exceed the tolerance at least
/// threefold.
#[test]
fn tolerances_reject_wrong_answers_f32() {
    let prec = Precision::F32;
    let Some(mut g) = common::gpu_backend("tolerances_reject_wrong_answers_f32", prec) else {
        return;
    };
    let start = Instant::now();
    let mut passed_wrongly: Vec<String> = Vec::new();
    let mut least = f64::INFINITY;
    let mut reject = |what: &str, case: &str, err: f64, tol: f64| {
        if err.is_nan() || err <= 3.0 * tol {
            passed_wrongly.push(format!(
                "{what} [{case}]: error {err:.3e}, tolerance {tol:.3e}"
            ));
        }
        least = least.min(err / tol);
        eprintln!(
            "   wrong {what:<48} [{case}] error {err:.3e} = {:>7.1} × tolerance",
            err / tol
        );
    };
    for (p, k) in [(65, 3), (1031, 17), (65, 64), (P_LONG, 3)] {
        let case = shape_case(p, k);
        let n = p * k;
        // a sum that dropped its last entry (the sentinel of the reductions test)
        let mut a = common::randn(p, k, 11 + n as u64);
        a[0] = 30.0;
        a[n - 1] = -40.0;
        let mut dropped = a.clone();
        dropped[n - 1] = 0.0;
        let got = reduce_on(&mut g, &[dropped], &[R::NormSq(0)]);
        let want = on_cpu!(prec, reduce_on(&[a.clone()], &[R::NormSq(0)]));
        reject(
            "NormSq without its last entry",
            &case,
            scal_err(got[0], want[0], want[0]),
            tol(prec, n),
        );
        // one row read from the wrong place (the first row replaced by the second)
        let x = common::randn(p, k, 21 + n as u64);
        let mut shifted = x.clone();
        for j in 0..k {
            shifted[(0, j)] = x[(1, j)];
        }
        let got = lincomb_on(&mut g, 1.0, &shifted, -0.37, &a);
        let want = on_cpu!(prec, lincomb_on(1.0, &x, -0.37, &a));
        reject(
            "lincomb with one wrong row",
            &case,
            common::rel_fro(&got, &want),
            tol(prec, 1),
        );
        let got = lerp_on(&mut g, &x, &a, 0.33);
        let want = on_cpu!(prec, lerp_on(&x, &a, 0.3));
        reject(
            "lerp with alpha 10% off",
            &case,
            common::rel_fro(&got, &want),
            tol(prec, 1),
        );
        if p >= P_LONG {
            continue;
        }
        let y = common::randn(p, k, 51 + n as u64).map(|v| v.abs() + 0.1 * v);
        let x0 = common::randn(p, k, 53 + n as u64).map(f64::abs);
        let gi = gram_info(&y);
        let rule = GradientRule {
            fid: 1.0,
            orth: 0.5,
            simplified: None,
            projection: Projection::ReferenceFull,
        };
        let pure_orth = GradientRule { fid: 0.0, ..rule };
        for (what, right, wrong) in [
            (
                "gradient with fid 10% off",
                rule,
                GradientRule { fid: 1.1, ..rule },
            ),
            (
                "gradient (fid=0) with orth 10% off",
                pure_orth,
                GradientRule {
                    orth: 0.55,
                    ..pure_orth
                },
            ),
            (
                "gradient ReferenceOrthOnly for ReferenceFull",
                rule,
                GradientRule {
                    projection: Projection::ReferenceOrthOnly,
                    ..rule
                },
            ),
            (
                "gradient PolarFull for ReferenceFull",
                rule,
                GradientRule {
                    projection: Projection::PolarFull,
                    ..rule
                },
            ),
            (
                "gradient None for PolarFull",
                GradientRule {
                    projection: Projection::PolarFull,
                    ..rule
                },
                GradientRule {
                    projection: Projection::None,
                    ..rule
                },
            ),
        ] {
            let want = on_cpu!(prec, gradient_on(&y, &x0, &right));
            let scale = want.norm().max(gradient_scale(&y, &x0, &right));
            let got = gradient_on(&mut g, &y, &x0, &wrong);
            let t = if right.projection == Projection::PolarFull {
                inv_sqrt_tol(prec, n, gi, false)
            } else {
                tol(prec, n)
            };
            reject(what, &case, (&got - &want).norm() / scale, t);
        }

        let right = RetractOptions::reference(Retraction::SoftPolar, 0.3);
        let want = on_cpu!(prec, retract_on(&y, &right));
        for (what, wrong) in [
            (
                "retract corrected style for reference",
                RetractOptions::corrected(Retraction::SoftPolar, 0.3),
            ),
            (
                "retract w 10% off",
                RetractOptions::reference(Retraction::SoftPolar, 0.33),
            ),
            (
                "retract diag for eig",
                right.clone().inv_method(InvSqrtMethod::Diag),
            ),
        ] {
            let got = retract_on(&mut g, &y, &wrong);
            reject(
                what,
                &case,
                common::rel_fro(&got, &want),
                inv_sqrt_tol(prec, n, gi, false),
            );
        }

        let param = common::randn(p, k, 31 + n as u64);
        let grad = &common::randn(p, k, 37 + n as u64) + &param * 0.8;
        let state = common::randn(p, k, 41 + n as u64).map(|v| 0.1 * v);
        let sgdp = |nesterov| UpdateRule::Sgdp {
            momentum: 0.9,
            dampening: 0.0,
            eps: 1e-8,
            weight_decay: 1e-2,
            delta: 0.1,
            wd_ratio: 0.1,
            nesterov,
        };
        let (want, _) = on_cpu!(prec, step_on(&sgdp(false), &param, &grad, &state, 0.05));
        let (got, _) = step_on(&mut g, &sgdp(true), &param, &grad, &state, 0.05);
        reject(
            "sgdp Nesterov for plain momentum",
            &case,
            common::rel_fro(&got, &want),
            tol(prec, n),
        );
    }
    eprintln!(
        "== tolerances_reject_wrong_answers_f32: every wrong answer at least {least:.1}× its tolerance ({:.2} s)",
        start.elapsed().as_secs_f64()
    );
    assert!(
        passed_wrongly.is_empty(),
        "wrong answers within (3×) tolerance:\n{}",
        passed_wrongly.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// matrices of several shapes on one backend
// ---------------------------------------------------------------------------------------

/// The trait lets one backend hold matrices of several shapes (the CPU oracle sizes its
/// workspace per call). Matrices of shape A are created, then one of shape B (which resizes
/// the device's per-shape workspace), and then every workspace-using operation is run on
/// the A matrices again: it must still agree with the oracle (or fail loudly), not return
/// another shape's numbers.
#[test]
fn interleaved_shapes_f64() {
    let prec = Precision::F64;
    let Some(mut g) = common::gpu_backend("interleaved_shapes_f64", prec) else {
        return;
    };
    let mut rep = Report::new("interleaved_shapes_f64", prec);
    for ((pa, ka), (pb, kb)) in [
        ((65, 64), (1031, 3)),
        ((1031, 3), (65, 64)),
        ((63, 17), (1031, 17)),
    ] {
        let case = format!("A = {pa}×{ka} used after B = {pb}×{kb} was created");
        let n = pa * ka;
        let y = common::randn(pa, ka, 81).map(|v| v.abs() + 0.1 * v);
        let x0 = common::randn(pa, ka, 82).map(f64::abs);
        let dy = up(&mut g, &y);
        let dx = up(&mut g, &x0);
        let mut out = g.zeros(pa, ka).unwrap();
        let mut state = vec![g.zeros(pa, ka).unwrap()];
        // the other shape, used once
        let other = up(&mut g, &common::randn(pb, kb, 83));
        g.reduce(&[Reduction::NormSq(&other)]).unwrap();

        let got = g.reduce(&[
            Reduction::EnergyTerms {
                y: &dy,
                target: &dx,
            },
            Reduction::NormSq(&dy),
            Reduction::GradMapSq {
                y: &dy,
                g: &dx,
                t: 0.3,
                clamp: true,
            },
        ]);
        let want = reduce_on(
            &mut CpuBackend::<f64>::new(),
            &[y.clone(), x0.clone()],
            &[R::Energy(0, 1), R::NormSq(0), R::GradMap(0, 1, 0.3, true)],
        );
        match got {
            Ok(got) => {
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| scal_err(*a, *b, b.abs()))
                    .fold(0.0, f64::max);
                rep.check(
                    "reduce (EnergyTerms, NormSq, GradMapSq)",
                    &case,
                    err,
                    tol(prec, n),
                );
            }
            Err(e) => eprintln!("   [{case}] reduce failed loudly: {e}"),
        }
        for proj in [Projection::ReferenceFull, Projection::PolarFull] {
            let rule = GradientRule {
                fid: 1.0,
                orth: 0.5,
                simplified: None,
                projection: proj,
            };
            g.gradient(&dy, &dx, &rule, &mut out);
            let want = gradient_on(&mut CpuBackend::<f64>::new(), &y, &x0, &rule);
            if let Ok(got) = g.download(&out) {
                let scale = want.norm().max(gradient_scale(&y, &x0, &rule));
                rep.check(
                    &format!("gradient {proj:?}"),
                    &case,
                    (&got - &want).norm() / scale,
                    inv_sqrt_tol(prec, n, gram_info(&y), false),
                );
            }
        }
        for o in [
            RetractOptions::reference(Retraction::SoftPolar, 0.5),
            RetractOptions::corrected(Retraction::SoftPolar, 0.5),
        ] {
            g.retract(&dy, &mut out, &o);
            let want = retract_on(&mut CpuBackend::<f64>::new(), &y, &o);
            if let Ok(got) = g.download(&out) {
                rep.check(
                    &format!("retract {:?} soft_polar", o.style),
                    &case,
                    common::rel_fro(&got, &want),
                    inv_sqrt_tol(prec, n, gram_info(&y), false),
                );
            }
        }
        let rule = UpdateRule::Sgdp {
            momentum: 0.9,
            dampening: 0.0,
            eps: 1e-8,
            weight_decay: 1e-2,
            delta: 0.1,
            wd_ratio: 0.1,
            nesterov: false,
        };
        g.optimizer_step(&rule, &dy, &dx, &mut state, 0.05, &mut out);
        let (want, _) = step_on(
            &mut CpuBackend::<f64>::new(),
            &rule,
            &y,
            &x0,
            &M::zeros(pa, ka),
            0.05,
        );
        if let Ok(got) = g.download(&out) {
            rep.check("sgdp", &case, common::rel_fro(&got, &want), tol(prec, n));
        }
    }
    rep.finish();
}

// ---------------------------------------------------------------------------------------
// the line search's "step rounded away" test: AnyDiffer, and the monotonicity it relies on

fn any_differ_on<B: Backend>(b: &mut B, a: &M, c: &M) -> f64 {
    let (da, dc) = (up(b, a), up(b, c));
    b.reduce(&[Reduction::AnyDiffer(&da, &dc)]).expect("reduce")[0]
}

/// The line search's readback for a few candidates: per candidate `EnergyTerms`, `DistSq`
/// and `AnyDiffer` against `Y`, in one batch (four sums over one index space: one fused
/// launch per candidate on the device).
fn line_search_batch_on<B: Backend>(b: &mut B, y: &M, x0: &M, cands: &[M]) -> Vec<f64> {
    let dy = up(b, y);
    let dx = up(b, x0);
    let dc: Vec<B::Mat> = cands.iter().map(|c| up(b, c)).collect();
    let mut reqs = Vec::new();
    for c in &dc {
        reqs.push(Reduction::EnergyTerms { y: c, target: &dx });
        reqs.push(Reduction::DistSq(c, &dy));
        reqs.push(Reduction::AnyDiffer(c, &dy));
    }
    b.reduce(&reqs).expect("reduce")
}

fn lone_requests_on<B: Backend>(b: &mut B, y: &M, x0: &M, cands: &[M]) -> Vec<f64> {
    let dy = up(b, y);
    let dx = up(b, x0);
    let mut out = Vec::new();
    for c in cands {
        let dc = up(b, c);
        out.extend(
            b.reduce(&[Reduction::EnergyTerms {
                y: &dc,
                target: &dx,
            }])
            .unwrap(),
        );
        out.extend(b.reduce(&[Reduction::DistSq(&dc, &dy)]).unwrap());
        out.extend(b.reduce(&[Reduction::AnyDiffer(&dc, &dy)]).unwrap());
    }
    out
}

fn any_differ(name: &str, prec: Precision) {
    let Some(mut g) = common::gpu_backend(name, prec) else {
        return;
    };
    let mut rep = Report::new(name, prec);
    for (p, k) in shapes() {
        let case = shape_case(p, k);
        let n = p * k;
        let a = common::randn(p, k, 31 + n as u64);
        // every 7th entry changed, the last one too (the last partial workgroup), and a +0
        // against a −0 (equal as values)
        let mut c = a.clone();
        let mut want = 0usize;
        for i in (0..n).step_by(7).chain(std::iter::once(n - 1)) {
            if c[i] == a[i] {
                c[i] += 1.0;
                want += 1;
            }
        }
        let mut last = a.clone();
        last[n - 1] += 1.0;
        let mut z_pos = a.clone();
        let mut z_neg = a.clone();
        z_pos[n / 2] = 0.0;
        z_neg[n / 2] = -0.0;
        for (what, x, y, w) in [
            ("changed entries", &a, &c, want),
            ("itself", &a, &a, 0),
            ("the last entry only", &a, &last, 1),
            ("+0 against −0", &z_pos, &z_neg, 0),
        ] {
            let gpu = any_differ_on(&mut g, x, y);
            let cpu = on_cpu!(prec, any_differ_on(x, y));
            let w = usize::from(w > 0);
            rep.expect(
                &format!("AnyDiffer ({what})"),
                &case,
                gpu == w as f64 && cpu == w as f64,
                || format!("gpu {gpu} cpu {cpu}, want {w}"),
            );
        }

        // the fused readback of the line search gives the numbers of the lone requests,
        // to the bit
        let y = a.map(|v| v.abs());
        let x0 = common::randn(p, k, 37 + n as u64).map(|v| v.max(0.0));
        let cands = vec![c.map(|v| v.abs()), y.clone(), y.map(|v| v * 0.5 + 0.125)];
        let fused = line_search_batch_on(&mut g, &y, &x0, &cands);
        let lone = lone_requests_on(&mut g, &y, &x0, &cands);
        rep.expect(
            "line-search batch vs lone requests (bits)",
            &case,
            fused.len() == lone.len()
                && fused
                    .iter()
                    .zip(&lone)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
            || format!("fused {fused:?}\nlone {lone:?}"),
        );
        rep.expect(
            "line-search batch: Y against itself",
            &case,
            fused[6 + 5] == 0.0 && fused[6 + 4] == 0.0,
            || format!("{fused:?}"),
        );
    }
    rep.finish();
}

#[test]
fn any_differ_f64() {
    any_differ("any_differ_f64", Precision::F64);
}

#[test]
fn any_differ_f32() {
    any_differ("any_differ_f32", Precision::F32);
}

/// The halvings of one plain step, `Π(Y + 2⁻ⁱ·(P − Y))` and `Π(Y − 2⁻ⁱ·s·G)`, built as the
/// solver builds them; for each whether it differs from `Y`.
fn halvings_on<B: Backend>(
    b: &mut B,
    y: &M,
    toward: &M,
    g: &M,
    s: f64,
    n: usize,
) -> Vec<(f64, f64)> {
    let dy = up(b, y);
    let dt = up(b, toward);
    let dg = up(b, g);
    let mut c = b.zeros(y.nrows(), y.ncols()).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let a = 0.5f64.powi(i as i32);
        b.lerp(&dy, &dt, a, &mut c);
        b.nonneg(&mut c, NonNeg::Hard);
        let along = b.reduce(&[Reduction::AnyDiffer(&c, &dy)]).unwrap()[0];
        b.lincomb(1.0, &dy, -a * s, &dg, &mut c);
        b.nonneg(&mut c, NonNeg::Hard);
        let grad = b.reduce(&[Reduction::AnyDiffer(&c, &dy)]).unwrap()[0];
        out.push((along, grad));
    }
    out
}

/// The corrected line search skips the rest of a plain phase once a candidate equals `Y`:
/// sound only if every shorter step of that phase then equals `Y` as well (rounding is
/// monotone). Checked on both backends, both precisions, with entries at zero, tiny and
/// ordinary, over 160 halvings (past f32's subnormals; f64 may not round away within them,
/// the implication is checked as far as they go).
fn rounded_away_stays_away(name: &str, prec: Precision) {
    let Some(mut g) = common::gpu_backend(name, prec) else {
        return;
    };
    let mut rep = Report::new(name, prec);
    for (p, k) in [(1, 1), (63, 3), (65, 17), (1031, 3)] {
        let case = shape_case(p, k);
        let n = p * k;
        let mut y = common::randn(p, k, 41 + n as u64).map(|v| v.max(0.0));
        for i in (0..n).step_by(5) {
            y[i] *= 1e-30;
        }
        let toward = &y + common::randn(p, k, 43 + n as u64) * 1e-3;
        let grad = common::randn(p, k, 47 + n as u64);
        for (what, counts) in [
            ("gpu", halvings_on(&mut g, &y, &toward, &grad, 1e-3, 160)),
            (
                "cpu",
                on_cpu!(prec, halvings_on(&y, &toward, &grad, 1e-3, 160)),
            ),
        ] {
            for phase in 0..2 {
                let seq: Vec<f64> = counts
                    .iter()
                    .map(|c| if phase == 0 { c.0 } else { c.1 })
                    .collect();
                // once equal, equal for every shorter step; in f32 160 halvings always get
                // there (2⁻¹⁶⁰ is below f32's smallest subnormal relative to these entries)
                let first_zero = seq.iter().position(|&c| c == 0.0);
                let stays = match first_zero {
                    Some(z) => seq[z..].iter().all(|&c| c == 0.0),
                    None => prec == Precision::F64,
                };
                rep.expect(
                    &format!("{what} {}", ["lerp", "lincomb"][phase]),
                    &case,
                    stays,
                    || format!("counts by halving {seq:?}"),
                );
            }
        }
    }
    rep.finish();
}

#[test]
fn rounded_away_stays_away_f64() {
    rounded_away_stays_away("rounded_away_stays_away_f64", Precision::F64);
}

#[test]
fn rounded_away_stays_away_f32() {
    rounded_away_stays_away("rounded_away_stays_away_f32", Precision::F32);
}
