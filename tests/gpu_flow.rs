//! The GPU backend runs the solver loop the way the CPU oracle does.
//!
//! * Every golden flow case (de-duplicated by directory name over the golden roots), in
//!   reference mode and in corrected mode:
//!   - f64: the GPU must take the very same path as the CPU (same iteration count, same best
//!     iteration) and return the same `Y` to 1e-8 (for k > p, where YᵀY is singular and the
//!     CPU's own eigendecomposition is accurate only to about ε·κ, to max(1e-8, 16·ε·κ), κ of
//!     YᵀY + 1e-8·I at the start or the answer, printed when it applies). A failure is
//!     diagnosed (first differing decision, its margins in f64 ulps, how far the tied step
//!     moves `Y`). One exception, corrected mode only: a line-search branch that the rule of
//!     [`compare`] shows to be a rounding tie (each run's decision is the mirrored rule's for
//!     its own numbers, the inputs agree, both margins within the tie window), with the same
//!     iteration count, best iterations at most one apart and `Y` within twice the tied step
//!     (‖c − Y‖/‖c‖) + 1e-8, is allowed, printed and counted; at most [`MAX_F64_TIES`] such
//!     pairs in the file. The pairs run on two workers, each with a GPU context of its own.
//!   - f32 (the f32 cases, and every f64 case rounded to f32), first 20 iterations: energies
//!     agree to 1e-3 on every iteration both ran with the same decisions, and `Y` agrees to
//!     1e-3 when the paths are the same. A path may part only through a decision that was a
//!     rounding tie, which is detected, checked against the rule of [`compare`], and printed.
//!     A failure names the outlier by a third, f64, CPU run, and retracts the failing
//!     iteration's retraction inputs on all three backends.
//! * Readbacks: below 1.5 per iteration over a whole run of ≥ 15 iterations, ≤ 1.5 inside the
//!   loop always, and one per reference iteration after a backtracking one.
//! * `verify()` agrees in f64.
//! * A guard against the Mesa 22.3 (lavapipe) loop cap at a shape where any kernel looping
//!   over rows within one invocation would pass 65 535 trips.
//!
//! The golden comparisons run the solver loop (`nsa_flow::flow::solve`, what `nsa_flow` runs)
//! on a logging wrapper of each backend, so that when two runs part the test can say where
//! and why: which decision, the energies both runs compared, and the margins.
//!
//! Every GPU test skips with a printed reason when there is no adapter
//! (`common::gpu_or_skip`), and fails instead under `NSA_FLOW_REQUIRE_GPU=1`. On a software
//! adapter (lavapipe: every dispatch runs on the CPU) the golden runs are capped in length
//! (see [`software_cap`]); the cap is printed with each capped case.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod common;

use common::*;
use nalgebra::DMatrix;
use nsa_flow::backend::cpu::CpuBackend;
use nsa_flow::backend::gpu::GpuBackend;
use nsa_flow::backend::{Backend, GradientRule, Projection, Reduction, UpdateRule};
use nsa_flow::flow::solve;
use nsa_flow::gpu::{GpuContext, GpuOptions};
use nsa_flow::{
    verify, Control, EnergyTerms, IterInfo, Mode, NonNeg, NsaResult, OptimizerKind, Params,
    Precision, RetractOptions, Retraction, StopReason,
};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// Unit roundoff of f32 (2⁻²⁴).
const U32: f64 = 1.0 / 16_777_216.0;
/// Unit roundoff of f64 (2⁻⁵³).
const U64: f64 = 1.0 / 9_007_199_254_740_992.0;
/// The f32 comparison horizon.
const F32_ITERS: usize = 20;
/// f32: relative agreement of energies (every common iteration) and of `Y`.
const F32_TOL: f64 = 1e-3;
/// f64: relative agreement of `Y`.
const F64_Y_TOL: f64 = 1e-8;
/// The most f64 corrected-mode pairs that may part through an allowed rounding tie at the
/// noise threshold (see `golden_cases_f64_gpu_matches_cpu_in_both_modes`).
const MAX_F64_TIES: usize = 3;
/// The corrected line search's sufficient-decrease constant (`C1` in src/flow.rs), mirrored
/// here to recompute a decision's threshold when a branch diverges.
const C1: f64 = 1e-4;
/// The reference line search's halving cap (`MAX_BT` in src/flow.rs).
const REF_MAX_BT: usize = 20;
/// The corrected line search also requires a candidate to beat the current energy by this
/// many machine epsilons of it (`16.0 * eps * cur_e.abs()` in src/flow.rs, `eps` the machine
/// epsilon of the backend's precision).
const NOISE_EPS: f64 = 16.0;

// ---------------------------------------------------------------------------------------
// golden cases

struct Case {
    name: String,
    /// The case's parameters (reference mode, the case's dtype), with the reference's
    /// perturbed start supplied when X0 is None (as tests/golden.rs does).
    params: Params,
    precision: Precision,
    y0: DMatrix<f64>,
    x0: Option<DMatrix<f64>>,
}

/// Every golden flow case, de-duplicated by directory name (the first root that has it wins),
/// in name order.
fn golden_cases() -> Vec<Case> {
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for root in golden_roots() {
        let Ok(entries) = std::fs::read_dir(root.join("flow")) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for dir in dirs {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            seen.entry(name).or_insert(dir);
        }
    }
    seen.into_iter()
        .map(|(name, dir)| {
            let (mut params, x0_none, precision) = golden_params(&dir);
            let y0 = read(dir.join("Y0.npy"));
            let x0 = if x0_none {
                params.common.perturbed_start = Some(read(dir.join("Y_start.npy")));
                None
            } else {
                Some(read(dir.join("X0.npy")))
            };
            Case {
                name,
                params,
                precision,
                y0,
                x0,
            }
        })
        .collect()
}

/// The iteration cap on a software adapter, where every dispatch runs on the CPU (lavapipe):
/// k > 64 takes the unfused Newton–Schulz path (three dispatches per step, up to 100 steps
/// per retraction: seconds per iteration), and a reference-mode iteration after one that
/// backtracked retracts all 20 halvings speculatively (0.1–0.3 s per iteration on lavapipe).
/// The caps keep the whole file near a minute on a two-core machine. `None`: no cap.
fn software_cap(software: bool, k: usize, mode: Mode) -> Option<usize> {
    match (software, mode) {
        (false, _) => None,
        _ if k > 64 => Some(4),
        (true, Mode::Reference) => Some(60),
        (true, Mode::Corrected) => Some(120),
    }
}

/// A GPU context of the test's own (a device of its own, created like the shared one of
/// `common::gpu_or_skip`), so that the two golden tests, which run at the same time, do not
/// queue behind each other on one device (on lavapipe that leaves a core idle); the shared
/// context when a second device cannot be made.
fn own_context(ctx: &Arc<GpuContext>) -> Arc<GpuContext> {
    GpuContext::new(&GpuOptions {
        allow_software: true,
        ..Default::default()
    })
    .unwrap_or_else(|_| ctx.clone())
}

fn gpu_on(ctx: &Arc<GpuContext>, precision: Precision) -> GpuBackend {
    GpuBackend::new(ctx.clone(), precision).expect("GPU kernels build")
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Reference => "ref",
        Mode::Corrected => "corr",
    }
}

fn prec_name(p: Precision) -> &'static str {
    match p {
        Precision::F64 => "f64",
        Precision::F32 => "f32",
    }
}

/// Relative difference of two scalars; two NaNs (or equal infinities) are equal, one NaN is
/// infinitely far.
fn rel(a: f64, b: f64) -> f64 {
    if a == b || (a.is_nan() && b.is_nan()) {
        return 0.0;
    }
    let d = (a - b).abs() / b.abs().max(f64::MIN_POSITIVE);
    if d.is_nan() {
        f64::INFINITY
    } else {
        d
    }
}

fn rel_fro_safe(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    if a.shape() != b.shape() {
        return f64::INFINITY;
    }
    if a.iter()
        .zip(b.iter())
        .all(|(x, y)| x == y || (x.is_nan() && y.is_nan()))
    {
        return 0.0;
    }
    let d = rel_fro(a, b);
    if d.is_nan() {
        f64::INFINITY
    } else {
        d
    }
}

// ---------------------------------------------------------------------------------------
// a spying backend: what the solver read back, per iteration

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Energy,
    Norm,
    Dot,
    Finite,
    Dist,
    Differ,
    GradMap,
    Free,
    Other,
}

#[derive(Clone, Debug)]
struct Readback {
    kinds: Vec<Kind>,
    vals: Vec<f64>,
    /// The step of each candidate built since the previous readback (corrected mode:
    /// `α·lr` of `lerp(Y, proposal, α)` and `−b` of `lincomb(1, Y, b, ∇E)`).
    steps: Vec<f64>,
    /// Whether each of those candidates went through the retraction.
    retracted: Vec<bool>,
}

impl Readback {
    /// (kind, values) of each request.
    fn items(&self) -> Vec<(Kind, &[f64])> {
        let mut off = 0;
        self.kinds
            .iter()
            .map(|&k| {
                let w = if k == Kind::Energy { 4 } else { 1 };
                let s = &self.vals[off..off + w];
                off += w;
                (k, s)
            })
            .collect()
    }
}

#[derive(Clone, Debug)]
enum Event {
    Readback(Readback),
    Iter(IterInfo),
}

type Log = Rc<RefCell<Vec<Event>>>;

/// A backend that delegates everything to `inner` and logs what the solver reads back.
struct Spy<B> {
    inner: B,
    log: Log,
    steps: Vec<f64>,
    retracted: Vec<bool>,
    last_lr: f64,
    /// the last line-search batch the backend offered the solver
    batch: Rc<Cell<usize>>,
    /// the iteration (1-based) whose retraction inputs are kept (0: none)
    capture_iter: usize,
    captured: Vec<Captured>,
}

/// A retraction's input and options, as the solver called it.
type Captured = (DMatrix<f64>, RetractOptions);

impl<B: Backend> Backend for Spy<B> {
    type Mat = B::Mat;
    fn name(&self) -> String {
        self.inner.name()
    }
    fn precision(&self) -> Precision {
        self.inner.precision()
    }
    fn line_search_batch(&self) -> usize {
        let b = self.inner.line_search_batch();
        self.batch.set(b);
        b
    }
    fn readbacks(&self) -> Option<u64> {
        self.inner.readbacks()
    }
    fn upload(&mut self, m: &DMatrix<f64>) -> nsa_flow::Result<Self::Mat> {
        self.inner.upload(m)
    }
    fn download(&mut self, m: &Self::Mat) -> nsa_flow::Result<DMatrix<f64>> {
        self.inner.download(m)
    }
    fn zeros(&mut self, p: usize, k: usize) -> nsa_flow::Result<Self::Mat> {
        self.inner.zeros(p, k)
    }
    fn copy(&mut self, src: &Self::Mat, dst: &mut Self::Mat) {
        self.inner.copy(src, dst)
    }
    fn lincomb(&mut self, a: f64, x: &Self::Mat, b: f64, y: &Self::Mat, dst: &mut Self::Mat) {
        if a == 1.0 {
            self.steps.push(-b);
            self.retracted.push(false);
        }
        self.inner.lincomb(a, x, b, y, dst)
    }
    fn lerp(&mut self, base: &Self::Mat, toward: &Self::Mat, alpha: f64, dst: &mut Self::Mat) {
        self.steps.push(alpha * self.last_lr);
        self.retracted.push(false);
        self.inner.lerp(base, toward, alpha, dst)
    }
    fn nonneg(&mut self, m: &mut Self::Mat, mode: NonNeg) {
        self.inner.nonneg(m, mode)
    }
    fn retract(&mut self, src: &Self::Mat, dst: &mut Self::Mat, options: &RetractOptions) {
        if let Some(r) = self.retracted.last_mut() {
            *r = true;
        }
        if self.capture_iter > 0 {
            let done = self
                .log
                .borrow()
                .iter()
                .filter(|e| matches!(e, Event::Iter(_)))
                .count();
            if done + 1 == self.capture_iter {
                let m = self
                    .inner
                    .download(src)
                    .expect("download a retraction input");
                self.captured.push((m, options.clone()));
            }
        }
        self.inner.retract(src, dst, options)
    }
    fn gradient(
        &mut self,
        y: &Self::Mat,
        x0: &Self::Mat,
        rule: &GradientRule,
        out: &mut Self::Mat,
    ) {
        self.inner.gradient(y, x0, rule, out)
    }
    fn optimizer_step(
        &mut self,
        rule: &UpdateRule,
        param: &Self::Mat,
        grad: &Self::Mat,
        state: &mut [Self::Mat],
        lr: f64,
        out: &mut Self::Mat,
    ) {
        self.last_lr = lr;
        self.inner.optimizer_step(rule, param, grad, state, lr, out)
    }
    fn reduce_into(
        &mut self,
        requests: &[Reduction<'_, Self::Mat>],
        out: &mut Vec<f64>,
    ) -> nsa_flow::Result<()> {
        self.inner.reduce_into(requests, out)?;
        let kinds = requests
            .iter()
            .map(|r| match r {
                Reduction::EnergyTerms { .. } => Kind::Energy,
                Reduction::NormSq(_) => Kind::Norm,
                Reduction::Dot(..) => Kind::Dot,
                Reduction::AllFinite(_) => Kind::Finite,
                Reduction::DistSq(..) => Kind::Dist,
                Reduction::AnyDiffer(..) => Kind::Differ,
                Reduction::GradMapSq { .. } => Kind::GradMap,
                Reduction::FreeNormSq { .. } => Kind::Free,
                Reduction::AbsSum(_) | Reduction::CountAbove { .. } => Kind::Other,
            })
            .collect();
        self.log.borrow_mut().push(Event::Readback(Readback {
            kinds,
            vals: out.clone(),
            steps: std::mem::take(&mut self.steps),
            retracted: std::mem::take(&mut self.retracted),
        }));
        Ok(())
    }
}

/// One spied run: the result, the per-iteration callbacks, and the readbacks of each
/// iteration (`segments[i − 1]` for iteration `i`; a last segment without a callback holds
/// the iteration the loop stopped in, if any, and the final certificate's readbacks).
struct Spied {
    res: NsaResult,
    infos: Vec<IterInfo>,
    /// the readbacks before the loop: the corrected flow reads E(Y_start) and ‖∇E(Y_start)‖²
    /// back together; the reference reads E(Y_start) first, since its gradient's weights
    /// come from it
    setup: Vec<Readback>,
    segments: Vec<Vec<Readback>>,
    seconds: f64,
    /// machine epsilon of the run's precision (what the corrected search's noise term uses)
    eps: f64,
    /// the line-search batch the solver was offered (the backend's answer when asked)
    batch: usize,
}

impl Spied {
    /// Readbacks inside the loop (not the setup, the certificate or the download).
    fn loop_readbacks(&self) -> usize {
        self.segments
            .iter()
            .take(self.infos.len())
            .map(|s| s.len())
            .sum()
    }

    /// ‖∇E(Y_start)‖² as the setup read it back (NaN if the run had no such readback).
    fn setup_grad_norm_sq(&self) -> f64 {
        match self.setup.as_slice() {
            [both] if both.vals.len() == 5 => both.vals[4],
            [_, norm, ..] => norm.vals[0],
            _ => f64::NAN,
        }
    }
}

fn spied_run<B: Backend>(
    inner: B,
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &Params,
) -> nsa_flow::Result<Spied> {
    Ok(spied_run_capturing(inner, y0, x0, params, 0)?.0)
}

/// A spied run that also returns the input (and options) of every retraction it made during
/// iteration `capture_iter` (1-based; 0: none).
fn spied_run_capturing<B: Backend>(
    inner: B,
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &Params,
    capture_iter: usize,
) -> nsa_flow::Result<(Spied, Vec<Captured>)> {
    let log: Log = Rc::new(RefCell::new(Vec::new()));
    let eps = match inner.precision() {
        Precision::F64 => f64::EPSILON,
        Precision::F32 => f32::EPSILON as f64,
    };
    let batch = Rc::new(Cell::new(0));
    let mut spy = Spy {
        inner,
        log: log.clone(),
        steps: Vec::new(),
        retracted: Vec::new(),
        last_lr: f64::NAN,
        batch: batch.clone(),
        capture_iter,
        captured: Vec::new(),
    };
    let cb_log = log.clone();
    let mut callback = move |i: &IterInfo| {
        cb_log.borrow_mut().push(Event::Iter(*i));
        Control::Continue
    };
    let t = Instant::now();
    let res = solve(&mut spy, y0, x0, params, &mut callback)?;
    let seconds = t.elapsed().as_secs_f64();
    let captured = std::mem::take(&mut spy.captured);
    drop(spy);
    let events = log.borrow().clone();
    let mut infos = Vec::new();
    let mut setup = Vec::new();
    let setup_len = match params.common.mode {
        Mode::Corrected => 1,
        Mode::Reference => 2,
    };
    let mut segments = Vec::new();
    let mut cur = Vec::new();
    for ev in events {
        match ev {
            Event::Readback(r)
                if setup.len() < setup_len && segments.is_empty() && cur.is_empty() =>
            {
                setup.push(r)
            }
            Event::Readback(r) => cur.push(r),
            Event::Iter(i) => {
                infos.push(i);
                segments.push(std::mem::take(&mut cur));
            }
        }
    }
    if !cur.is_empty() {
        segments.push(cur);
    }
    Ok((
        Spied {
            res,
            infos,
            setup,
            segments,
            seconds,
            eps,
            batch: batch.get(),
        },
        captured,
    ))
}

fn cpu_run(
    precision: Precision,
    case_y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &Params,
) -> nsa_flow::Result<Spied> {
    match precision {
        Precision::F64 => spied_run(CpuBackend::<f64>::new(), case_y0, x0, params),
        Precision::F32 => spied_run(CpuBackend::<f32>::new(), case_y0, x0, params),
    }
}

// ---------------------------------------------------------------------------------------
// the line-search decisions, mirrored from src/flow.rs to diagnose a divergence

/// The energy the solver assigns to four energy terms, reconstructed from what the result
/// reports (reference: the published weights; corrected: the weights of the internally
/// normalised problem, whose target has RMS 1).
#[derive(Clone, Copy, Debug)]
struct Model {
    fid: f64,
    orth: f64,
    offdiag: Option<f64>,
    /// corrected: whether the proposal is the plain gradient step (a Fast optimizer and no
    /// projection), so that the free part of `‖∇E‖` bounds every plain candidate's gain
    gradient_direction: bool,
}

impl Model {
    fn of(res: &NsaResult, params: &Params) -> Model {
        match res.mode {
            Mode::Reference => Model {
                fid: res.scaling.fid_weight,
                orth: res.scaling.orth_weight,
                offdiag: None,
                gradient_direction: false,
            },
            Mode::Corrected => {
                let t = &res.target;
                let pk = t.len() as f64;
                let amax = t.amax();
                let scale = amax * ((t / amax).norm_squared() / pk).sqrt();
                let xn = (t / scale).norm_squared();
                Model {
                    fid: (1.0 - params.common.w) / xn,
                    orth: res.scaling.orth_weight,
                    offdiag: params.simplified.then_some(xn * xn),
                    gradient_direction: params.optimizer == OptimizerKind::Fast
                        && !params.project_full_gradient,
                }
            }
        }
    }

    fn energy(&self, v: &[f64]) -> f64 {
        let t = EnergyTerms {
            dist_sq: v[0],
            gram_fro_sq: v[1],
            gram_diag_sq: v[2],
            norm_sq: v[3],
        };
        let orth = match self.offdiag {
            Some(s) => self.orth * t.offdiag_sq() / s,
            None => self.orth * t.defect(),
        };
        self.fid * t.dist_sq + orth
    }

    /// The size, in energy units, of the two sums whose difference is the orthogonality
    /// term: `orth·‖S‖²/‖Y‖⁴` (≤ `orth`), or `orth·‖S‖²/scale` for the simplified penalty.
    fn mag(&self, v: &[f64]) -> f64 {
        let m = match self.offdiag {
            Some(s) => self.orth * v[1] / s,
            None if v[3] > 1e-12 => self.orth * v[1] / (v[3] * v[3]),
            None => 0.0,
        };
        if m.is_finite() {
            m.abs()
        } else {
            self.orth.abs()
        }
    }
}

/// An absolute rounding allowance for an energy whose orthogonality sums have size `mag`
/// ([`Model::mag`]): the term `(‖S‖² − Σ S_jj²)/‖Y‖⁴` is a difference of two sums of up to
/// k² terms, each summed with error ≤ (k² − 1)·u·‖S‖² on each backend, so no relative
/// tolerance covers the cancellation (e.g. w = 1 near convergence, where the energy is a few
/// 1e-6 and the sums are of order one).
fn floor(k: usize, u: f64, mag: f64) -> f64 {
    2.0 * ((k * k) as f64 - 1.0) * u * mag
}

/// A line-search candidate as the solver saw it.
#[derive(Clone, Copy, Debug)]
struct Cand {
    e: f64,
    /// the size of its orthogonality sums ([`Model::mag`])
    mag: f64,
    /// corrected: the step `α·lr` and `‖c − Y‖²`
    step: f64,
    step_sq: f64,
    /// `‖c‖²`
    norm_sq: f64,
}

/// The candidates of one iteration in the order the solver tried them, and (reference) the
/// energy of the un-backtracked iterate it keeps when it does not take a halving.
/// The candidates of iteration `i` (1-based) of a spied run ([`candidates`]).
fn candidates_at(
    s: &Spied,
    i: usize,
    mode: Mode,
    model: &Model,
) -> Option<(Vec<Cand>, Option<f64>)> {
    let noise = NOISE_EPS * s.eps * anchor(s, i, mode, model).abs();
    candidates(s.segments.get(i - 1)?, mode, model, noise)
}

fn candidates(
    seg: &[Readback],
    mode: Mode,
    model: &Model,
    noise: f64,
) -> Option<(Vec<Cand>, Option<f64>)> {
    let first = seg.first()?;
    let items = first.items();
    let kinds: Vec<Kind> = items.iter().map(|x| x.0).collect();
    let mut out = Vec::new();
    let mut acc = None;
    // Corrected mode: (energy, distance, differ) per candidate. The solver examines a
    // readback's candidates in order and drops the rest of it after a plain (not retracted)
    // candidate equal to `Y` (its phase is skipped: the later ones would equal `Y` too), or
    // one whose first-order gain bound `gain_norm·‖c − Y‖` is at most a quarter of the
    // rounding level (the later ones come no farther from `Y`).
    let triples =
        |r: &Readback, items: &[(Kind, &[f64])], gain_norm: f64, out: &mut Vec<Cand>| -> bool {
            if items.is_empty()
                || items.len() % 3 != 0
                || !items.chunks(3).all(|c| {
                    c[0].0 == Kind::Energy && c[1].0 == Kind::Dist && c[2].0 == Kind::Differ
                })
            {
                return false;
            }
            for (j, c) in items.chunks(3).enumerate() {
                out.push(Cand {
                    e: model.energy(c[0].1),
                    mag: model.mag(c[0].1),
                    step: r.steps.get(j).copied().unwrap_or(f64::NAN),
                    step_sq: c[1].1[0],
                    norm_sq: c[0].1[3],
                });
                let unchanged = c[2].1[0] == 0.0;
                let negligible = gain_norm * c[1].1[0].sqrt() <= 0.25 * noise;
                if (unchanged || negligible) && !r.retracted.get(j).copied().unwrap_or(true) {
                    break;
                }
            }
            true
        };
    match mode {
        Mode::Reference => {
            if kinds.len() < 4
                || kinds[..4] != [Kind::Norm, Kind::Finite, Kind::Energy, Kind::Energy]
            {
                return None;
            }
            let cand = |v: &[f64]| Cand {
                e: model.energy(v),
                mag: model.mag(v),
                step: f64::NAN,
                step_sq: f64::NAN,
                norm_sq: v[3],
            };
            out.push(cand(items[2].1));
            acc = Some(model.energy(items[3].1));
            out.extend(items[4..].iter().map(|x| cand(x.1)));
            for r in &seg[1..] {
                let it = r.items();
                if it.is_empty() || !it.iter().all(|x| x.0 == Kind::Energy) {
                    break;
                }
                out.extend(it.iter().map(|x| cand(x.1)));
            }
        }
        Mode::Corrected => {
            if kinds.len() < 3 || kinds[..3] != [Kind::Finite, Kind::GradMap, Kind::Norm] {
                return None;
            }
            // what bounds a plain candidate's first-order gain, per unit of ‖c − Y‖ (‖∇E‖,
            // or its free part when the proposal is the gradient step and Y ≥ 0 is kept)
            let grad_norm = items[2].1[0].sqrt();
            let (free_norm, start) = match kinds.get(3) {
                Some(Kind::Free) => (items[3].1[0].sqrt(), 4),
                _ => (grad_norm, 3),
            };
            let gain_norm = if model.gradient_direction {
                free_norm
            } else {
                grad_norm
            };
            if items.len() > start && !triples(first, &items[start..], gain_norm, &mut out) {
                return None;
            }
            for r in &seg[1..] {
                if !triples(r, &r.items(), gain_norm, &mut out) {
                    break;
                }
            }
        }
    }
    Some((out, acc))
}

/// Where a run's search stopped at iteration `i` (1-based): the number of candidates it
/// rejected (`IterInfo::backtracks`), `None` when the iteration stalled or never completed.
fn stopped_at(s: &Spied, i: usize) -> Option<usize> {
    s.infos.get(i - 1).map(|info| info.backtracks)
}

/// The threshold a candidate is held against, and the mirrored decision (`true`: the search
/// stops there). Reference (best-anchored): the search goes on while `E > E_best` (after 20
/// halvings it reverts). Corrected (monotone, Armijo above the energy's rounding): a
/// candidate is taken when `E < E_cur − 16·ε·|E_cur|` and `E ≤ E_cur − C1·‖c − Y‖²/step`
/// (`ε` the machine epsilon of the run's precision); the threshold reported is the
/// tighter of the two. Both are computed with the very operations of src/flow.rs, so the
/// mirror is exact when the energies are.
fn decision(mode: Mode, c: &Cand, anchor: f64, eps: f64) -> (f64, bool) {
    match mode {
        Mode::Reference => (anchor, !(c.e > anchor)),
        Mode::Corrected => {
            let noise = NOISE_EPS * eps * anchor.abs();
            let armijo = anchor - C1 * c.step_sq / c.step;
            let pass = c.e.is_finite() && c.e < anchor - noise && c.e <= armijo;
            ((anchor - noise).min(armijo), pass)
        }
    }
}

/// The energy a run's decisions at iteration `i` are anchored to: the best energy so far
/// (reference) or the current one (corrected).
fn anchor(s: &Spied, i: usize, mode: Mode, model: &Model) -> f64 {
    if i == 1 {
        match mode {
            Mode::Reference => f64::INFINITY,
            Mode::Corrected => model.energy(&s.setup[0].vals[..4]),
        }
    } else {
        let prev = &s.infos[i - 2];
        match mode {
            Mode::Reference => prev.best_total_energy,
            Mode::Corrected => prev.total_energy,
        }
    }
}

/// Checks that the mirrored decisions reproduce what a run did at iteration `i`: every
/// candidate before the one it stopped at fails, that one passes, and the energy it reports
/// is that candidate's (reference: the un-backtracked iterate's when the search did not end
/// on a strict improvement). Err: the mirror is out of step with src/flow.rs.
fn mirror_check(s: &Spied, i: usize, mode: Mode, model: &Model) -> Result<(), String> {
    s.segments.get(i - 1).ok_or("no readbacks")?;
    let (cands, acc) = candidates_at(s, i, mode, model)
        .ok_or_else(|| format!("iteration {i}: unrecognised readback pattern"))?;
    let a = anchor(s, i, mode, model);
    let took = stopped_at(s, i);
    let revert = mode == Mode::Reference && took == Some(REF_MAX_BT);
    let upto = took.map_or(cands.len(), |t| (t + 1).min(cands.len()));
    for (j, c) in cands.iter().enumerate().take(upto) {
        let pass = decision(mode, c, a, s.eps).1;
        let want = Some(j) == took;
        if pass != want && !(revert && j == REF_MAX_BT) {
            return Err(format!(
                "iteration {i}: candidate {j} (E {:e}, anchor {a:e}) mirrored pass={pass}, run stopped at {took:?}",
                c.e
            ));
        }
    }
    if let (Some(t), Some(info)) = (took, s.infos.get(i - 1)) {
        let e = match mode {
            Mode::Reference if revert => a,
            Mode::Reference if t == 0 || !(cands.get(t).map_or(f64::NAN, |c| c.e) < a) => {
                acc.unwrap_or(f64::NAN)
            }
            _ => cands.get(t).map_or(f64::NAN, |c| c.e),
        };
        if !(rel(e, info.total_energy) <= 1e-12) {
            return Err(format!(
                "iteration {i}: accepted energy {e:e} != reported {:e}",
                info.total_energy
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// comparing two runs

enum Verdict {
    /// Same decisions throughout, energies and `Y` within tolerance.
    Agree,
    /// The paths parted at a decision shown to be a rounding tie.
    Tie(String),
    /// Anything else.
    Fail(String),
}

/// A line-search branch shown to be a rounding tie ([`branch`]): where it was, the two margins
/// in units of the compared precision's roundoff, and how far the candidate decided
/// differently moves `Y` (`‖c − Y‖/‖c‖`, the larger of the two runs'; corrected mode only,
/// NaN in reference mode, where the solver does not report a candidate's step).
#[derive(Clone, Copy, Debug)]
struct TieStep {
    iter: usize,
    margin_cpu_u: f64,
    margin_gpu_u: f64,
    step_rel: f64,
}

struct Comparison {
    verdict: Verdict,
    /// set when the verdict is a line-search branch shown to be a rounding tie
    tie_step: Option<TieStep>,
    /// largest energy difference over the iterations run with the same decisions, relative to
    /// `|E| + floor/tol` ([`Ctx::energy_diff`])
    max_e: f64,
    dy: f64,
    /// iteration of the first difference, if any
    at: Option<usize>,
}

/// The problem a comparison is about.
struct Ctx<'a> {
    params: &'a Params,
    p: usize,
    k: usize,
    /// unit roundoff of the precision compared
    u: f64,
    /// relative tolerance of energies and `Y`
    tol: f64,
}

impl Ctx<'_> {
    /// The tie window of a decision, relative to its threshold: a few ulps per term of the
    /// longest reduction behind an energy (`4·u·(p + k)`: the Gram sums run over p rows, the
    /// k×k work over k), plus the cancellation allowance of the candidate's orthogonality
    /// term ([`floor`]).
    fn tie_window(&self, thr: f64, mag: f64) -> f64 {
        4.0 * self.u * (self.p + self.k) as f64 + floor(self.k, self.u, mag) / thr.abs()
    }

    fn energies_agree(&self, a: f64, b: f64, mag: f64) -> bool {
        rel(a, b) == 0.0
            || (a - b).abs() <= self.tol * a.abs().max(b.abs()) + floor(self.k, self.u, mag)
    }

    /// The difference of two energies relative to `max(|a|, |b|) + floor/tol`: at most `tol`
    /// exactly when [`Ctx::energies_agree`] (so an energy below its cancellation floor, e.g.
    /// w = 1 near convergence, does not read as a huge relative difference).
    fn energy_diff(&self, a: f64, b: f64, mag: f64) -> f64 {
        if rel(a, b) == 0.0 {
            return 0.0;
        }
        let den = a.abs().max(b.abs()) + floor(self.k, self.u, mag) / self.tol;
        let d = (a - b).abs() / den;
        if d.is_nan() {
            f64::INFINITY
        } else {
            d
        }
    }
}

/// Compares run `c` (the CPU) with run `g` (the GPU).
///
/// Rule: on every iteration both ran with the same line-search decisions, the total energies
/// agree to `tol` (relative, plus the cancellation allowance of [`floor`]); if the
/// runs end alike (same iterations and decisions), `Y` agrees to `tol`, and their best
/// iterations are the same or their energies tie. A run may part from the other only
/// through a decision that was a rounding tie:
/// * a line-search branch (the searches stop at different candidates at iteration `i`): at
///   the first candidate decided differently, the mirrored rule ([`decision`]: best-anchored
///   halvings; Armijo above the energy's own rounding) must reproduce each run's decision
///   from the energies it read back, the decision's inputs (candidate energy and threshold)
///   must agree between the runs as energies do on a common path (to `tol`, plus the
///   cancellation allowance of [`floor`]), and both margins `(E − threshold)/|threshold|` must
///   lie within the tie window ([`Ctx::tie_window`]);
/// * a stopping test (same decisions, different iteration counts or stop reasons): the
///   statistic (energy-window range, gradient ratio, certificate) must straddle its threshold
///   as the decisions say, and the two runs' statistics may differ only by what the
///   energies' discrepancy explains.
fn compare(cx: &Ctx, c: &Spied, g: &Spied) -> Comparison {
    let mode = cx.params.common.mode;
    let model = Model::of(&c.res, cx.params);
    let gmodel = Model::of(&g.res, cx.params);
    let n_common = c.infos.len().min(g.infos.len());
    let dy = rel_fro_safe(&g.res.y, &c.res.y);
    let mut max_e = 0.0f64;
    let done = |verdict, max_e, at| Comparison {
        verdict,
        tie_step: None,
        max_e,
        dy,
        at,
    };
    // the mirror of the line search is what the tie analysis rests on: check it on every
    // iteration of the CPU run (a warning only; it matters when a branch is analysed)
    for i in 1..=c.infos.len() {
        if let Err(e) = mirror_check(c, i, mode, &model) {
            eprintln!("warning: the line-search mirror is out of step with src/flow.rs: {e}");
            break;
        }
    }
    // the size of an iteration's orthogonality sums, from its first candidate (bounded by
    // the weight itself when unknown)
    let mag = |s: &Spied, m: &Model, i: usize| {
        candidates_at(s, i, mode, m)
            .and_then(|(c, _)| c.first().map(|x| x.mag))
            .unwrap_or(m.orth.abs())
    };
    for i in 1..=n_common {
        let (a, b) = (&c.infos[i - 1], &g.infos[i - 1]);
        if a.backtracks != b.backtracks {
            let (v, t) = branch(cx, c, g, &model, &gmodel, i);
            return Comparison {
                tie_step: t,
                ..done(v, max_e, Some(i))
            };
        }
        let mg = mag(c, &model, i).max(mag(g, &gmodel, i));
        let d = cx.energy_diff(a.total_energy, b.total_energy, mg);
        if !cx.energies_agree(a.total_energy, b.total_energy, mg) {
            let r = rel(b.total_energy, a.total_energy);
            return done(
                Verdict::Fail(format!(
                    "iteration {i}: same decisions ({} backtracks) but energies cpu {:.9e} / gpu {:.9e} differ by {r:.2e} (allowed {:.1e} relative + {:.1e})",
                    a.backtracks,
                    a.total_energy,
                    b.total_energy,
                    cx.tol,
                    floor(cx.k, cx.u, mg)
                )),
                max_e.max(d),
                Some(i),
            );
        }
        max_e = max_e.max(d);
    }
    let stalled = |s: &Spied| s.res.stop_reason == StopReason::LineSearchStalled;
    if c.infos.len() != g.infos.len() || c.res.stop_reason != g.res.stop_reason {
        let i = n_common + 1;
        // a stall is a line-search decision: no candidate passed
        if (stalled(c) && c.infos.len() == n_common && g.infos.len() > n_common)
            || (stalled(g) && g.infos.len() == n_common && c.infos.len() > n_common)
        {
            let (v, t) = branch(cx, c, g, &model, &gmodel, i);
            return Comparison {
                tie_step: t,
                ..done(v, max_e, Some(i))
            };
        }
        let v = stop_tie(cx, c, g);
        return done(v, max_e, Some(n_common));
    }
    if !(dy <= cx.tol) {
        return done(
            Verdict::Fail(format!(
                "same path ({} iterations) but Y differs by {dy:.2e} > {:e}",
                c.res.iterations, cx.tol
            )),
            max_e,
            None,
        );
    }
    if c.res.best_iteration != g.res.best_iteration {
        // the best iterate is chosen by comparing energies: only a near-tie can move it
        let e = |s: &Spied, it: usize| {
            s.infos
                .get(it.wrapping_sub(1))
                .map_or(f64::NAN, |x| x.total_energy)
        };
        let (x, y) = (e(c, c.res.best_iteration), e(c, g.res.best_iteration));
        let gap = rel(y, x);
        // the runs' energies at both iterations agree to max_e, so a flipped choice needs
        // the two energies within 2·max_e of each other (or a tie at rounding level)
        if !(gap <= cx.tie_window(x, model.orth.abs()).max(2.0 * max_e)) {
            return done(
                Verdict::Fail(format!(
                    "best iteration {} vs {}: their energies {x:e} / {y:e} are {gap:.2e} apart, not a tie",
                    c.res.best_iteration, g.res.best_iteration
                )),
                max_e,
                None,
            );
        }
        return done(
            Verdict::Tie(format!(
                "best iteration {} vs {}: energies {gap:.1e} apart",
                c.res.best_iteration, g.res.best_iteration
            )),
            max_e,
            None,
        );
    }
    done(Verdict::Agree, max_e, None)
}

/// Diagnoses the first line-search decision taken differently, at iteration `i`; with a
/// [`TieStep`] when it was a rounding tie.
fn branch(
    cx: &Ctx,
    c: &Spied,
    g: &Spied,
    model: &Model,
    gmodel: &Model,
    i: usize,
) -> (Verdict, Option<TieStep>) {
    let v = branch_verdict(cx, c, g, model, gmodel, i);
    let Verdict::Tie(_) = v else {
        return (v, None);
    };
    let mode = cx.params.common.mode;
    let seg = |s: &Spied, m: &Model| {
        candidates_at(s, i, mode, m)
            .map(|(c, _)| c)
            .unwrap_or_default()
    };
    let (cc, gc) = (seg(c, model), seg(g, gmodel));
    let (ta, tb) = (stopped_at(c, i), stopped_at(g, i));
    let d = ta.unwrap_or(usize::MAX).min(tb.unwrap_or(usize::MAX));
    let (x, y) = (cc[d], gc[d]);
    let (thr_c, _) = decision(mode, &x, anchor(c, i, mode, model), c.eps);
    let (thr_g, _) = decision(mode, &y, anchor(g, i, mode, gmodel), g.eps);
    let scale = thr_c.abs().max(thr_g.abs());
    let step_rel = |z: &Cand| (z.step_sq / z.norm_sq).sqrt();
    let (sx, sy) = (step_rel(&x), step_rel(&y));
    let t = TieStep {
        iter: i,
        margin_cpu_u: (x.e - thr_c) / scale / cx.u,
        margin_gpu_u: (y.e - thr_g) / scale / cx.u,
        step_rel: match mode {
            Mode::Corrected if !sx.is_nan() && !sy.is_nan() => sx.max(sy),
            _ => f64::NAN,
        },
    };
    (v, Some(t))
}

fn branch_verdict(
    cx: &Ctx,
    c: &Spied,
    g: &Spied,
    model: &Model,
    gmodel: &Model,
    i: usize,
) -> Verdict {
    let mode = cx.params.common.mode;
    for (who, s, m) in [("cpu", c, model), ("gpu", g, gmodel)] {
        if let Err(e) = mirror_check(s, i, mode, m) {
            return Verdict::Fail(format!(
                "paths part at iteration {i} and the {who} run's line search cannot be mirrored ({e}): src/flow.rs changed?"
            ));
        }
    }
    let (Some((cc, _)), Some((gc, _))) = (
        candidates_at(c, i, mode, model),
        candidates_at(g, i, mode, gmodel),
    ) else {
        return Verdict::Fail(format!("paths part at iteration {i}: no candidates found"));
    };
    let (ta, tb) = (stopped_at(c, i), stopped_at(g, i));
    let d = ta.unwrap_or(usize::MAX).min(tb.unwrap_or(usize::MAX));
    let (Some(x), Some(y)) = (cc.get(d), gc.get(d)) else {
        return Verdict::Fail(format!(
            "paths part at iteration {i}: candidate {d} missing (cpu stopped at {ta:?}, gpu at {tb:?})"
        ));
    };
    let (anc_c, anc_g) = (anchor(c, i, mode, model), anchor(g, i, mode, gmodel));
    let (thr_c, pass_c) = decision(mode, x, anc_c, c.eps);
    let (thr_g, pass_g) = decision(mode, y, anc_g, g.eps);
    let scale = thr_c.abs().max(thr_g.abs());
    let (m_c, m_g) = ((x.e - thr_c) / scale, (y.e - thr_g) / scale);
    let discrepancy = rel(y.e, x.e) + (thr_c - thr_g).abs() / scale;
    let mag = x.mag.max(y.mag);
    // the decision's inputs (the candidate's energy and the threshold, itself made of the
    // previous energy) must agree as energies do on a common path: to `tol`, plus the
    // cancellation allowance of the orthogonality sums
    let inputs_agree = cx.energies_agree(x.e, y.e, mag) && cx.energies_agree(thr_c, thr_g, mag);
    let window = cx.tie_window(scale, mag);
    let what = match mode {
        Mode::Reference if d == 0 => "un-backtracked candidate vs best energy".to_string(),
        Mode::Reference => format!("halving 2^-{d} vs best energy"),
        Mode::Corrected => {
            let noise = NOISE_EPS * c.eps * anc_c.abs();
            let bound = if anc_c - noise <= anc_c - C1 * x.step_sq / x.step {
                "the noise threshold E_cur − 16ε|E_cur|"
            } else {
                "the Armijo threshold"
            };
            format!(
                "candidate {d} (step {:.3e}, moving Y by ‖c − Y‖/‖c‖ = {:.2e}) vs {bound}",
                x.step,
                (x.step_sq / x.norm_sq).sqrt()
            )
        }
    };
    let u = cx.u;
    let report = format!(
        "line-search branch at iteration {i}, {what}: cpu E {:.9e} thr {:.9e} margin {:+.2e} ({:+.1} u) {} | gpu E {:.9e} thr {:.9e} margin {:+.2e} ({:+.1} u) {} | cpu stopped at {ta:?}, gpu at {tb:?}; inputs differ by {discrepancy:.2e}, tie window {window:.2e} ({:.0} u)",
        x.e,
        thr_c,
        m_c,
        m_c / u,
        if pass_c { "pass" } else { "fail" },
        y.e,
        thr_g,
        m_g,
        m_g / u,
        if pass_g { "pass" } else { "fail" },
        window / u,
    );
    if pass_c == pass_g {
        return Verdict::Fail(format!(
            "{report}; the mirrored decisions agree, so the runs should not have parted"
        ));
    }
    if !inputs_agree {
        return Verdict::Fail(format!(
            "{report}; the decision's inputs already differ by more than {:e} relative + {:.1e}",
            cx.tol,
            floor(cx.k, cx.u, mag)
        ));
    }
    if !(m_c.abs() <= window && m_g.abs() <= window) {
        return Verdict::Fail(format!("{report}; not a tie"));
    }
    Verdict::Tie(report)
}

/// Diagnoses runs that made the same decisions but stopped differently.
fn stop_tie(cx: &Ctx, c: &Spied, g: &Spied) -> Verdict {
    let params = cx.params;
    let mode = params.common.mode;
    let n = c.infos.len().min(g.infos.len());
    // the run that stopped first (with equal lengths: the one that did not run out of
    // iterations), and the other
    let c_first = match c.infos.len().cmp(&g.infos.len()) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => c.res.stop_reason != StopReason::MaxIter,
    };
    let (a, b, a_name) = if c_first {
        (c, g, "cpu")
    } else {
        (g, c, "gpu")
    };
    let base = format!(
        "stops differ after {n} iterations with the same decisions: cpu {} ({} it), gpu {} ({} it)",
        c.res.stop_reason,
        c.infos.len(),
        g.res.stop_reason,
        g.infos.len()
    );
    let (stat_a, stat_b, thr, slack, what) = match a.res.stop_reason {
        StopReason::EnergyWindow => {
            let w = params.common.window_size;
            let thr = match mode {
                Mode::Reference => params.tol,
                Mode::Corrected => 10.0 * cx.u,
            };
            let stat = |s: &Spied| {
                if n < w {
                    return f64::INFINITY;
                }
                let e: Vec<f64> = s.infos[n - w..n].iter().map(|x| x.total_energy).collect();
                let max = e.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let min = e.iter().cloned().fold(f64::INFINITY, f64::min);
                let mean = e.iter().sum::<f64>() / w as f64;
                (max - min) / (mean.abs() + 1e-12)
            };
            let eps = (n.saturating_sub(w)..n)
                .map(|j| rel(g.infos[j].total_energy, c.infos[j].total_energy))
                .fold(0.0f64, f64::max);
            let (sa, sb) = (stat(a), stat(b));
            // perturbing each energy by ε (relative) moves the relative range by ≤ 2ε(1 + range)
            (
                sa,
                sb,
                thr,
                3.0 * eps * (1.0 + sa.max(sb)) + 8.0 * cx.u,
                format!("energy window of {w}"),
            )
        }
        StopReason::GradientTolerance => {
            let (sa, sb) = (a.infos[n - 1].stationarity, b.infos[n - 1].stationarity);
            (
                sa,
                sb,
                params.tol,
                cx.tol * sa.max(sb),
                "gradient ratio".to_string(),
            )
        }
        StopReason::Certificate => {
            // a stopped at the start of iteration n + 1 with its final certificate; b went on
            let sa = a.res.certificate.value;
            let sb = b.infos.get(n).map_or(f64::NAN, |x| x.stationarity);
            let slack = cx.tol * sa.max(sb) + 4.0 * cx.u * (cx.p + cx.k) as f64;
            (sa, sb, params.tol, slack, "certificate".to_string())
        }
        other => {
            return Verdict::Fail(format!(
                "{base}: the {a_name} run stopped with {other}, which no tie explains"
            ))
        }
    };
    let report = format!(
        "{base}; {what}: {a_name} {stat_a:.6e} vs other {stat_b:.6e}, threshold {thr:.3e}, allowed difference {slack:.2e}"
    );
    // the run that stopped saw the statistic at or below the threshold; the other did not
    let straddles = stat_a <= thr && !(stat_b < thr);
    if !straddles {
        return Verdict::Fail(format!("{report}; does not straddle the threshold"));
    }
    if !((stat_a - stat_b).abs() <= slack) {
        return Verdict::Fail(format!(
            "{report}; the statistics differ by more than the energies explain"
        ));
    }
    Verdict::Tie(report)
}

/// κ(YᵀY + 1e-8·I): how far from rank deficient `y` is (the reference shifts the Gram
/// matrix by 1e-8 before its inverse square root).
fn kappa(y: &DMatrix<f64>) -> f64 {
    let ev = nalgebra::SymmetricEigen::new(y.transpose() * y).eigenvalues;
    (ev.max().max(0.0) + 1e-8) / (ev.min().max(0.0) + 1e-8)
}

/// The start the solver runs from (the perturbed start when X0 is None).
fn start_of(case: &Case) -> &DMatrix<f64> {
    case.params
        .common
        .perturbed_start
        .as_ref()
        .unwrap_or(&case.y0)
}

/// For a failed f32 comparison: what a CPU f64 run of the same problem says (which of the
/// two f32 runs is the outlier). `at`: the iteration where the f32 runs part, `None` when
/// they took the same path and only `Y` differs. Reported: each f32 run's energy and first
/// candidate at `at` against the f64 run's, the first iteration where each f32 run's energy
/// leaves the f64 run's by more than the f32 tolerance, each final `Y` against the f64 run's
/// when all three took the same path, and κ(YᵀY + 1e-8·I) at the start and of the f64 answer.
fn referee(cx: &Ctx, case: &Case, c: &Spied, g: &Spied, at: Option<usize>) -> String {
    let params = cx.params.clone().precision(Precision::F64);
    let Ok(r) = cpu_run(Precision::F64, &case.y0, case.x0.as_ref(), &params) else {
        return "(the f64 referee run failed)".into();
    };
    let mode = params.common.mode;
    let m64 = Model::of(&r.res, &params);
    let (mc, mg) = (Model::of(&c.res, cx.params), Model::of(&g.res, cx.params));
    let setup = Spied::setup_grad_norm_sq;
    let mut out = format!(
        "f64 referee: setup ‖∇‖² f64 {:.6e}, cpu32 {:.6e}, gpu32 {:.6e}",
        setup(&r),
        setup(c),
        setup(g)
    );
    let e = |s: &Spied, i: usize| {
        s.infos
            .get(i.wrapping_sub(1))
            .map_or(f64::NAN, |x| x.total_energy)
    };
    // where each f32 run's energy first leaves the f64 run's (on the iterations where it
    // took the f64 run's decisions)
    let departs = |s: &Spied, m: &Model| -> (String, Option<usize>) {
        for i in 1..=s.infos.len().min(r.infos.len()) {
            if s.infos[i - 1].backtracks != r.infos[i - 1].backtracks {
                return (format!("decisions part from f64's at iteration {i}"), None);
            }
            let mag = candidates_at(s, i, mode, m)
                .and_then(|(c, _)| c.first().map(|x| x.mag))
                .unwrap_or(m.orth.abs());
            let (a, b) = (e(s, i), e(&r, i));
            if !cx.energies_agree(a, b, mag) {
                return (
                    format!("leaves f64 at iteration {i} (rel {:.2e})", rel(a, b)),
                    Some(i),
                );
            }
        }
        ("within tolerance of f64 throughout".to_string(), None)
    };
    let ((dep_c, ic), (dep_g, ig)) = (departs(c, &mc), departs(g, &mg));
    out += &format!("; cpu32 {dep_c}; gpu32 {dep_g}");
    let (dc, dg) = match at {
        Some(at) => {
            let at = at.max(1);
            out += &format!(
                "; E at iteration {at}: f64 {:.9e}, cpu32 {:.9e} (rel {:.2e}), gpu32 {:.9e} (rel {:.2e})",
                e(&r, at),
                e(c, at),
                rel(e(c, at), e(&r, at)),
                e(g, at),
                rel(e(g, at), e(&r, at))
            );
            let first = |s: &Spied, m: &Model| {
                candidates_at(s, at, mode, m)
                    .and_then(|(c, _)| c.first().map(|x| x.e))
                    .unwrap_or(f64::NAN)
            };
            let (f64e, ce, ge) = (first(&r, &m64), first(c, &mc), first(g, &mg));
            out += &format!(
                "; first candidate's E at iteration {at}: f64 {f64e:.9e}, cpu32 {ce:.9e} (rel {:.2e}), gpu32 {ge:.9e} (rel {:.2e})",
                rel(ce, f64e),
                rel(ge, f64e)
            );
            (
                rel(ce, f64e).max(rel(e(c, at), e(&r, at))),
                rel(ge, f64e).max(rel(e(g, at), e(&r, at))),
            )
        }
        None => {
            let same = |s: &Spied| {
                s.infos.len() == r.infos.len()
                    && s.infos
                        .iter()
                        .zip(&r.infos)
                        .all(|(a, b)| a.backtracks == b.backtracks)
            };
            if same(c) && same(g) {
                let (yc, yg) = (
                    rel_fro_safe(&c.res.y, &r.res.y),
                    rel_fro_safe(&g.res.y, &r.res.y),
                );
                out += &format!(
                    "; final Y vs the f64 run's (same path): cpu32 {yc:.2e}, gpu32 {yg:.2e}"
                );
                (yc, yg)
            } else {
                out += "; the f64 run took another path (no Y comparison)";
                (f64::NAN, f64::NAN)
            }
        }
    };
    out += &format!(
        "; κ(YᵀY + 1e-8·I) at the start {:.2e}, of the f64 answer {:.2e}",
        kappa(start_of(case)),
        kappa(&r.res.y)
    );
    out += if dc > 10.0 * dg {
        " => the CPU f32 run is the outlier"
    } else if dg > 10.0 * dc {
        " => the GPU f32 run is the outlier"
    } else {
        " => no clear outlier"
    };
    // the retraction is where f32 loses most (an inverse square root of YᵀY): the CPU f32 run's
    // retraction inputs at the first iteration where a run leaves f64 (else where the runs
    // part, else iteration 1), retracted by each backend from the very same f32 input
    let j = [ic, ig, at].into_iter().flatten().min().unwrap_or(1).max(1);
    out += &retraction_check(cx.params, case, j);
    out
}

/// Reruns the CPU f32 run up to iteration `j`, keeps the inputs of the retractions it makes
/// there, and retracts each (as an f32 matrix) on the CPU in f32, the GPU in f32 and the CPU
/// in f64; reports the input where the f32 backends are furthest from f64.
fn retraction_check(params: &Params, case: &Case, j: usize) -> String {
    let params = params.clone().max_iter(j);
    let Ok((_, caps)) = spied_run_capturing(
        CpuBackend::<f32>::new(),
        &case.y0,
        case.x0.as_ref(),
        &params,
        j,
    ) else {
        return "; (the capturing f32 run failed)".into();
    };
    let Some(mut gb) = gpu_backend("retraction_check", Precision::F32) else {
        return String::new();
    };
    let mut worst: Option<(f64, f64, f64, usize)> = None;
    for (src, opts) in &caps {
        let (p, k) = src.shape();
        let mut c32 = CpuBackend::<f32>::new();
        let mut c64 = CpuBackend::<f64>::new();
        let y32 = {
            let s = c32.upload(src).unwrap();
            let mut d = c32.zeros(p, k).unwrap();
            c32.retract(&s, &mut d, opts);
            c32.download(&d).unwrap()
        };
        let yg = {
            let s = gb.upload(src).unwrap();
            let mut d = gb.zeros(p, k).unwrap();
            gb.retract(&s, &mut d, opts);
            gb.download(&d).unwrap()
        };
        let mut y64 = c64.zeros(p, k).unwrap();
        c64.retract(src, &mut y64, opts);
        let (ec, eg) = (rel_fro_safe(&y32, &y64), rel_fro_safe(&yg, &y64));
        if worst.is_none_or(|w| ec.max(eg) > w.0.max(w.1)) {
            worst = Some((ec, eg, kappa(src), caps.len()));
        }
    }
    match worst {
        None => format!("; no retraction at iteration {j}"),
        Some((ec, eg, kap, n)) => format!(
            "; retraction check at iteration {j} (worst of {n} inputs, κ(SᵀS + 1e-8·I) = {kap:.2e}): cpu32 vs f64 {ec:.2e}, gpu32 vs f64 {eg:.2e}{}",
            if ec > 10.0 * eg {
                " => the CPU f32 retraction is the outlier"
            } else if eg > 10.0 * ec {
                " => the GPU f32 retraction is the outlier"
            } else {
                ""
            }
        ),
    }
}

// ---------------------------------------------------------------------------------------
// 1a. f64: the same path, the same answer

/// What one f64 case×mode pair gave: its table row, its failure (if any), and its allowed
/// rounding tie (if any).
#[derive(Default)]
struct PairOutcome {
    table: Vec<String>,
    failures: Vec<String>,
    allowed_ties: Vec<String>,
}

/// Runs one f64 golden case in one mode on the CPU and on the GPU (`own`), and compares.
fn f64_pair(case: &Case, mode: Mode, own: &Arc<GpuContext>, software: bool) -> PairOutcome {
    let (p, k) = case.y0.shape();
    let PairOutcome {
        mut table,
        mut failures,
        mut allowed_ties,
    } = PairOutcome::default();
    let cap = software_cap(software, k, mode);
    let max_iter = cap.map_or(case.params.common.max_iter, |c| {
        c.min(case.params.common.max_iter)
    });
    let capped = if max_iter < case.params.common.max_iter {
        format!(" [capped at {max_iter} of {}]", case.params.common.max_iter)
    } else {
        String::new()
    };
    let params = case.params.clone().mode(mode).max_iter(max_iter);
    let cpu = cpu_run(Precision::F64, &case.y0, case.x0.as_ref(), &params);
    let gpu = spied_run(
        gpu_on(own, Precision::F64),
        &case.y0,
        case.x0.as_ref(),
        &params,
    );
    let tag = format!("{} {} f64", case.name, mode_name(mode));
    let name = &case.name;
    let mn = mode_name(mode);
    match (cpu, gpu) {
        (Err(ec), Err(eg)) => {
            // e.g. corrected mode refuses k > p; the GPU path must refuse it too
            table.push(format!("{name:<34} {mn:>4}  both refuse: {ec}"));
            if std::mem::discriminant(&ec) != std::mem::discriminant(&eg) {
                failures.push(format!("{tag}: different errors: cpu {ec} / gpu {eg}"));
            }
        }
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => {
            table.push(format!("{name:<34} {mn:>4}  FAIL: one backend failed: {e}"));
            failures.push(format!("{tag}: one backend failed: {e}"));
        }
        (Ok(c), Ok(g)) => {
            let mut errs = Vec::new();
            let dy = rel_fro_safe(&g.res.y, &c.res.y);
            // k > p: YᵀY is singular and the CPU oracle's own eigendecomposition of
            // YᵀY + 1e-8·I is accurate only to about ε·κ, so Y is asked to agree to
            // that (κ the larger of the start's and the CPU answer's)
            let mut note = String::new();
            let y_tol = if k > p {
                let kap = kappa(start_of(case)).max(kappa(&c.res.y));
                let t = 16.0 * f64::EPSILON * kap;
                if t > F64_Y_TOL {
                    eprintln!(
                        "{tag}: k = {k} > p = {p}: κ(YᵀY + 1e-8·I) = {kap:.2e} (start {:.2e}, CPU answer {:.2e}), so Y is compared to 16·ε·κ = {t:.2e} instead of {F64_Y_TOL:e}",
                        kappa(start_of(case)),
                        kappa(&c.res.y)
                    );
                    note = format!(" [k > p: Y tol 16·ε·κ = {t:.1e}]");
                    t
                } else {
                    F64_Y_TOL
                }
            } else {
                F64_Y_TOL
            };
            if c.res.iterations != g.res.iterations {
                errs.push(format!(
                    "iterations {} != {}",
                    g.res.iterations, c.res.iterations
                ));
            }
            if c.res.best_iteration != g.res.best_iteration {
                errs.push(format!(
                    "best iteration {} != {}",
                    g.res.best_iteration, c.res.best_iteration
                ));
            }
            if !(dy <= y_tol) {
                errs.push(format!("Y rel {dy:.3e} > {y_tol:.1e}"));
            }
            if !g.res.device.name.starts_with("gpu") {
                errs.push(format!("ran on '{}'", g.res.device.name));
            }
            let mut allowed = None;
            if !errs.is_empty() {
                // diagnose with the f32 machinery at f64's unit roundoff
                let cx = Ctx {
                    params: &params,
                    p,
                    k,
                    u: U64,
                    tol: F64_Y_TOL,
                };
                let cmp = compare(&cx, &c, &g);
                let kappa = kappa(&c.res.y);
                let same_path = cmp.at.is_none();
                // Corrected mode, near convergence, a candidate's energy can land
                // within a few ulps of the noise threshold E_cur − 16ε|E_cur|, and the
                // two backends' roundings then decide it differently. Such a split is
                // allowed exactly when the tie rule of [`compare`] holds (each run's
                // decision is the mirrored rule's for its own numbers, the inputs
                // agree, both margins lie within the f32 tie window), the runs end
                // after the same number of iterations, their best iterations differ
                // by at most one, and Y differs by at most twice the tied step
                // (‖c − Y‖/‖c‖ of the candidate one run took and the other did not)
                // + 1e-8. Every allowance is printed and counted (at most
                // `MAX_F64_TIES` over the file).
                if let (Mode::Corrected, Verdict::Tie(r), Some(t)) =
                    (mode, &cmp.verdict, cmp.tie_step)
                {
                    let bound = 2.0 * t.step_rel + F64_Y_TOL;
                    let best_gap = c.res.best_iteration.abs_diff(g.res.best_iteration);
                    if c.res.iterations == g.res.iterations
                        && best_gap <= 1
                        && dy <= bound
                        && g.res.device.name.starts_with("gpu")
                    {
                        let line = format!(
                            "{tag}: f64 rounding tie allowed at iteration {}: margins cpu {:+.1} u / gpu {:+.1} u, tied step ‖ΔY‖/‖Y‖ = {:.2e}, Y rel {dy:.3e} ≤ 2·step + 1e-8 = {bound:.2e}, best iteration cpu {} / gpu {}",
                            t.iter,
                            t.margin_cpu_u,
                            t.margin_gpu_u,
                            t.step_rel,
                            c.res.best_iteration,
                            g.res.best_iteration
                        );
                        eprintln!("{line}\n  diagnosis: {r}");
                        allowed = Some(format!(
                            "tie allowed: it {}, margins {:+.1}/{:+.1} u, step {:.2e}, Y rel ≤ {bound:.2e}",
                            t.iter, t.margin_cpu_u, t.margin_gpu_u, t.step_rel
                        ));
                        allowed_ties.push(line);
                    }
                }
                if allowed.is_none() {
                    errs.push(match cmp.verdict {
                        Verdict::Agree => format!(
                            "same decisions throughout, energies within {:.1e}",
                            cmp.max_e
                        ),
                        Verdict::Tie(r) => {
                            format!("diagnosis: a rounding tie in f64: {r}")
                        }
                        Verdict::Fail(r) => format!("diagnosis: {r}"),
                    });
                    if same_path {
                        // the same path and still apart: how ill-conditioned the
                        // answer is
                        errs.push(format!("κ(YᵀY + 1e-8·I) of the CPU's Y = {kappa:.2e}"));
                    }
                }
            }
            table.push(format!(
                "{name:<34} {mn:>4} {:>4}/{:<4} {:>4}/{:<4} {dy:>9.2e} {:>6.2}  {}{capped}{note}",
                c.res.iterations,
                g.res.iterations,
                c.res.best_iteration,
                g.res.best_iteration,
                g.seconds,
                if errs.is_empty() {
                    format!("ok ({})", c.res.stop_reason)
                } else if let Some(a) = &allowed {
                    format!("{a} ({})", c.res.stop_reason)
                } else {
                    format!("FAIL ({}): {}", c.res.stop_reason, errs.join("; "))
                }
            ));
            if !errs.is_empty() && allowed.is_none() {
                failures.push(format!("{tag}: {}", errs.join("; ")));
            }
        }
    }
    PairOutcome {
        table,
        failures,
        allowed_ties,
    }
}

#[test]
fn golden_cases_f64_gpu_matches_cpu_in_both_modes() {
    let t0 = Instant::now();
    let test = "golden_cases_f64_gpu_matches_cpu_in_both_modes";
    let Some(ctx) = gpu_or_skip(test) else {
        return;
    };
    let Some(_) = gpu_backend(test, Precision::F64) else {
        return;
    };
    let software = ctx.adapter().is_software;
    let own = own_context(&ctx);
    let cases = golden_cases();
    assert!(
        cases.len() >= 30,
        "found only {} golden flow cases",
        cases.len()
    );
    let mut table = vec![format!(
        "{:<34} {:>4} {:>9} {:>9} {:>9} {:>6}  {}",
        "case (f64)", "mode", "iters c/g", "best c/g", "Y rel", "gpu s", "status"
    )];
    let mut failures = Vec::new();
    // corrected-mode pairs whose paths parted through an allowed rounding tie (see f64_pair)
    let mut allowed_ties = Vec::new();
    // the pairs run on two workers, each with a GPU context of its own (on lavapipe, one
    // run rarely keeps both cores busy); the table keeps the (case, mode) order
    let pairs: Vec<(&Case, Mode)> = cases
        .iter()
        .filter(|c| c.precision == Precision::F64)
        .flat_map(|c| [(c, Mode::Reference), (c, Mode::Corrected)])
        .collect();
    let runs = pairs.len();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let outcomes: std::sync::Mutex<Vec<Option<PairOutcome>>> =
        std::sync::Mutex::new((0..runs).map(|_| None).collect());
    std::thread::scope(|scope| {
        for w in 0..2 {
            let ctx_w = if w == 0 {
                own.clone()
            } else {
                own_context(&ctx)
            };
            let (pairs, next, outcomes) = (&pairs, &next, &outcomes);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(case, mode)) = pairs.get(i) else {
                    break;
                };
                let o = f64_pair(case, mode, &ctx_w, software);
                outcomes.lock().unwrap()[i] = Some(o);
            });
        }
    });
    for o in outcomes.into_inner().unwrap() {
        let o = o.expect("every pair ran");
        table.extend(o.table);
        failures.extend(o.failures);
        allowed_ties.extend(o.allowed_ties);
    }
    eprintln!(
        "\n{}\n{runs} f64 case×mode pairs ({} rounding ties allowed) in {:.1} s\n",
        table.join("\n"),
        allowed_ties.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(runs >= 2 * 25, "only {runs} f64 runs");
    // a systematic problem (e.g. a backend's energies biased against the threshold) would
    // show as many ties: a few are rounding, more are a bug
    assert!(
        allowed_ties.len() <= MAX_F64_TIES,
        "{} f64 rounding ties allowed, more than {MAX_F64_TIES} of {runs} pairs:\n{}",
        allowed_ties.len(),
        allowed_ties.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} f64 GPU/CPU mismatches:\n{}",
        failures.join("\n").lines().count(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 1b. f32: agreement over the first 20 iterations, with rounding ties detected

#[test]
fn golden_cases_f32_gpu_matches_cpu_over_20_iterations() {
    let t0 = Instant::now();
    let test = "golden_cases_f32_gpu_matches_cpu_over_20_iterations";
    let Some(ctx) = gpu_or_skip(test) else {
        return;
    };
    let software = ctx.adapter().is_software;
    let own = own_context(&ctx);
    let cases = golden_cases();
    assert!(
        cases.len() >= 30,
        "found only {} golden flow cases",
        cases.len()
    );
    let mut table = vec![format!(
        "{:<34} {:>4} {:>9} {:>9} {:>9} {:>9} {:>6}  {}",
        "case (f32, ≤20 it)",
        "mode",
        "iters c/g",
        "best c/g",
        "Y rel",
        "max E rel",
        "gpu s",
        "status"
    )];
    let mut failures = Vec::new();
    let (mut runs, mut ties) = (0, 0);
    for case in &cases {
        let (p, k) = case.y0.shape();
        for mode in [Mode::Reference, Mode::Corrected] {
            let horizon = software_cap(software, k, mode).map_or(F32_ITERS, |c| c.min(F32_ITERS));
            let max_iter = case.params.common.max_iter.min(horizon);
            let capped = if horizon < F32_ITERS {
                format!(" [capped at {max_iter}]")
            } else {
                String::new()
            };
            let params = case
                .params
                .clone()
                .mode(mode)
                .precision(Precision::F32)
                .max_iter(max_iter);
            let cpu = cpu_run(Precision::F32, &case.y0, case.x0.as_ref(), &params);
            let gpu = spied_run(
                gpu_on(&own, Precision::F32),
                &case.y0,
                case.x0.as_ref(),
                &params,
            );
            runs += 1;
            let src = if case.precision == Precision::F64 {
                " (f64 case)"
            } else {
                ""
            };
            let tag = format!("{} {} f32{src}", case.name, mode_name(mode));
            let (name, mn) = (&case.name, mode_name(mode));
            match (cpu, gpu) {
                (Err(ec), Err(eg)) => {
                    table.push(format!("{name:<34} {mn:>4}  both refuse: {ec}"));
                    if std::mem::discriminant(&ec) != std::mem::discriminant(&eg) {
                        failures.push(format!("{tag}: different errors: cpu {ec} / gpu {eg}"));
                    }
                }
                (Ok(_), Err(e)) | (Err(e), Ok(_)) => {
                    table.push(format!("{name:<34} {mn:>4}  FAIL: one backend failed: {e}"));
                    failures.push(format!("{tag}: one backend failed: {e}"));
                }
                (Ok(c), Ok(g)) => {
                    let cx = Ctx {
                        params: &params,
                        p,
                        k,
                        u: U32,
                        tol: F32_TOL,
                    };
                    let cmp = compare(&cx, &c, &g);
                    let status = match &cmp.verdict {
                        Verdict::Agree => format!("ok ({})", c.res.stop_reason),
                        Verdict::Tie(r) => {
                            ties += 1;
                            eprintln!("{tag}: rounding tie, allowed: {r}");
                            let short = r.split(':').next().unwrap_or("");
                            format!("tie: {short}")
                        }
                        Verdict::Fail(r) => {
                            let why = format!("{r}; {}", referee(&cx, case, &c, &g, cmp.at));
                            eprintln!("{tag}: FAIL: {why}");
                            failures.push(format!("{tag}: {why}"));
                            "FAIL (see above)".to_string()
                        }
                    };
                    table.push(format!(
                        "{name:<34} {mn:>4} {:>4}/{:<4} {:>4}/{:<4} {:>9.2e} {:>9.2e} {:>6.2}  {status}{capped}",
                        c.res.iterations,
                        g.res.iterations,
                        c.res.best_iteration,
                        g.res.best_iteration,
                        cmp.dy,
                        cmp.max_e,
                        g.seconds,
                    ));
                }
            }
        }
    }
    eprintln!(
        "\n{}\n{runs} f32 case×mode pairs ({ties} rounding ties) in {:.1} s\n",
        table.join("\n"),
        t0.elapsed().as_secs_f64()
    );
    assert!(runs >= 60, "only {runs} f32 runs");
    assert!(
        failures.is_empty(),
        "{} f32 GPU/CPU disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 2. readbacks per iteration

/// p = 300, k = 5, a random non-negative target, w = 0.5: from a separate random start,
/// and from the 5 % perturbation of the target (X0 = None), in both modes and
/// both precisions.
/// * The ratio over the whole run (setup, certificate, download and, for a stalled search,
///   the iteration that stalled, included) is below 1.5 for every run of ≥ 15 iterations;
///   shorter runs are dominated by the fixed readbacks, so it is printed only.
/// * The ratio inside the loop (the readbacks of the iterations that completed) is ≤ 1.5 for
///   every run.
/// * Reference mode: a whole backtracking (20 halvings) fits one batch, and after an iteration
///   that backtracked its first halvings (two more than that iteration examined) are
///   evaluated in the same readback as the iteration's own energies and the rest, when
///   needed, in one more, so every iteration after a backtracking one (reverting ones
///   included) reads back at most twice.
#[test]
fn readbacks_per_iteration_stay_below_one_and_a_half() {
    let test = "readbacks_per_iteration_stay_below_one_and_a_half";
    let Some(ctx) = gpu_or_skip(test) else {
        return;
    };
    let (p, k) = (300, 5);
    let target = randn(p, k, 11).abs();
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for precision in [Precision::F64, Precision::F32] {
        if precision == Precision::F64 && !ctx.supports_f64() {
            eprintln!("{test}: skipping f64 (the adapter has no SHADER_F64)");
            continue;
        }
        for mode in [Mode::Reference, Mode::Corrected] {
            for (what, y0, x0) in [
                ("Y0≠X0", randn(p, k, 12).abs(), Some(&target)),
                ("X0=None", target.clone(), None),
            ] {
                let params = Params::default()
                    .w(0.5)
                    .mode(mode)
                    .precision(precision)
                    .max_iter(500);
                let s = spied_run(gpu_backend(test, precision).unwrap(), &y0, x0, &params)
                    .expect("gpu run");
                let rb = s
                    .res
                    .device
                    .readbacks
                    .expect("the GPU backend counts readbacks");
                let n = s.infos.len();
                let ratio = rb as f64 / s.res.iterations.max(1) as f64;
                let in_loop = s.loop_readbacks() as f64 / n.max(1) as f64;
                let tail: usize = s.segments.iter().skip(n).map(|x| x.len()).sum();
                // reference: the iterations after a backtracking one, how many of them read
                // back twice and more than twice, and how many reverted
                let (mut after_bt, mut extra, mut reverts, mut revert_rb) = (0, Vec::new(), 0, 0);
                let mut twice = 0;
                if mode == Mode::Reference {
                    for i in 2..=n {
                        let seg = s.segments[i - 1].len();
                        if s.infos[i - 1].backtracks == REF_MAX_BT {
                            reverts += 1;
                            revert_rb += seg;
                        }
                        if s.infos[i - 2].backtracks > 0 {
                            after_bt += 1;
                            if seg > 1 {
                                twice += 1;
                            }
                            if seg > 2 {
                                extra.push(format!(
                                    "iteration {i} ({} halvings): {seg} readbacks",
                                    s.infos[i - 1].backtracks
                                ));
                            }
                        }
                    }
                }
                let label = format!(
                    "{:>4} {} {:<8}",
                    mode_name(mode),
                    prec_name(precision),
                    what
                );
                lines.push(format!(
                    "{label} {:>4} iterations {:>4} readbacks: ratio {ratio:.3}, in the loop {in_loop:.3}, after the loop {tail} ({}, {} backtracking{}; batch {})",
                    s.res.iterations,
                    rb,
                    s.res.stop_reason,
                    s.res.backtracking_iterations,
                    if mode == Mode::Reference {
                        format!(
                            ", {after_bt} after a backtracking one ({twice} of them read back twice), {reverts} reverting in {revert_rb} readbacks"
                        )
                    } else {
                        String::new()
                    },
                    s.batch,
                ));
                let why = format!(
                    "({rb} readbacks, {} iterations, {} backtracking, batch {}, {})",
                    s.res.iterations, s.res.backtracking_iterations, s.batch, s.res.stop_reason
                );
                if s.res.iterations >= 15 && !(ratio < 1.5) {
                    failures.push(format!("{label}: whole-run ratio {ratio:.3} ≥ 1.5 {why}"));
                }
                if !(in_loop <= 1.5) {
                    failures.push(format!("{label}: in-loop ratio {in_loop:.3} > 1.5 {why}"));
                }
                if s.batch >= REF_MAX_BT && !extra.is_empty() {
                    failures.push(format!(
                        "{label}: after a backtracking iteration the next should read back at most twice (batch {} ≥ {REF_MAX_BT}): {}",
                        s.batch,
                        extra.join(", ")
                    ));
                }
            }
        }
    }
    eprintln!(
        "\nreadbacks per iteration (p = {p}, k = {k}, w = 0.5):\n{}\n",
        lines.join("\n")
    );
    assert!(
        failures.is_empty(),
        "readbacks per iteration:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 3. verify()

#[test]
fn verify_agrees_in_f64() {
    let Some(ctx) = gpu_or_skip("verify_agrees_in_f64") else {
        return;
    };
    if !ctx.supports_f64() {
        eprintln!("skipping verify_agrees_in_f64: the adapter has no SHADER_F64");
        return;
    }
    let x0 = randn(60, 4, 21).abs();
    let y0 = randn(60, 4, 22).abs();
    for mode in [Mode::Reference, Mode::Corrected] {
        let params = Params::default().w(0.5).mode(mode).max_iter(150);
        let report = verify(&y0, Some(&x0), &params).expect("verify runs");
        eprintln!("verify {mode:?}:\n{report}\n");
        assert!(
            report.cpu.device.name.starts_with("cpu"),
            "{}",
            report.cpu.device.name
        );
        assert!(
            report.gpu.device.name.starts_with("gpu"),
            "{}",
            report.gpu.device.name
        );
        assert!(report.agrees(1e-8), "verify {mode:?} disagrees:\n{report}");
        assert!(report.first_divergence.is_none(), "{report}");
        assert!(report.max_energy_rel_diff <= 1e-8, "{report}");
    }
}

// ---------------------------------------------------------------------------------------
// 4. the Mesa 22.3 loop cap

/// Mesa 22.3's lavapipe (llvmpipe) ends any shader loop after 65 535 trips without a word.
/// A kernel that looped over rows (or row blocks) within one invocation would return a
/// partial answer here: 100 003 rows is past the cap for a per-row loop and is no multiple of
/// any block size (k = 32 keeps the run short on lavapipe; the row count is what matters).
/// Every backend operation the flow uses runs in f32 and is compared with the CPU in f32:
/// `|gpu − cpu32| ≤ 2·|cpu32 − cpu64| + 8·√p·u` (both are f32 results of sums over p rows;
/// the GPU may be no less accurate than the CPU up to a probabilistic rounding term of √n·u
/// per length-n sum). A loop cut at 65 535 trips drops ≥ 34 % of the rows: an error of order
/// one, and the rows past 65 535 are also compared on their own.
#[test]
fn mesa_loop_cap_guard_at_stock_size() {
    let t0 = Instant::now();
    let Some(mut g) = gpu_backend("mesa_loop_cap_guard_at_stock_size", Precision::F32) else {
        return;
    };
    let (p, k) = (100_003usize, 32usize);
    // a non-negative target and a start with a shared positive mean (a Gram matrix with one
    // large eigenvalue, like real data), both rounded to f32 once
    let r32 = |m: DMatrix<f64>| m.map(|v| v as f32 as f64);
    let x = r32(randn(p, k, 31).abs());
    let y = r32(randn(p, k, 32).map(|v| v + 0.5));
    let mut c32 = CpuBackend::<f32>::new();
    let mut c64 = CpuBackend::<f64>::new();
    let (gy, gx) = (g.upload(&y).unwrap(), g.upload(&x).unwrap());
    let (cy, cx) = (c32.upload(&y).unwrap(), c32.upload(&x).unwrap());
    let (dy, dx) = (c64.upload(&y).unwrap(), c64.upload(&x).unwrap());
    let sqrt_p = (p as f64).sqrt();
    let tol_of = |e_cpu: f64| 2.0 * e_cpu + 8.0 * sqrt_p * U32;
    let mut report = Vec::new();
    let mut failures = Vec::new();

    macro_rules! reductions {
        ($be:expr, $y:expr, $x:expr) => {
            $be.reduce(&[
                Reduction::EnergyTerms { y: $y, target: $x },
                Reduction::NormSq($y),
                Reduction::Dot($y, $x),
                Reduction::DistSq($y, $x),
                Reduction::AllFinite($y),
                Reduction::GradMapSq {
                    y: $y,
                    g: $x,
                    t: 0.3,
                    clamp: true,
                },
            ])
            .unwrap()
        };
    }
    let (rg, rc, rd) = (
        reductions!(g, &gy, &gx),
        reductions!(c32, &cy, &cx),
        reductions!(c64, &dy, &dx),
    );
    let names = [
        "EnergyTerms ‖Y−X‖²",
        "EnergyTerms ‖YᵀY‖²",
        "EnergyTerms Σ diag²",
        "EnergyTerms ‖Y‖²",
        "NormSq",
        "Dot",
        "DistSq",
        "AllFinite",
        "GradMapSq",
    ];
    for (j, n) in names.iter().enumerate() {
        let e_cpu = rel(rc[j], rd[j]);
        let tol = tol_of(e_cpu);
        let d = rel(rg[j], rc[j]);
        report.push(format!(
            "reduce {n:<30} gpu−cpu32 {d:.2e}  cpu32−cpu64 {e_cpu:.2e}  tol {tol:.2e}"
        ));
        if !(d <= tol) {
            failures.push(format!(
                "reduce {n}: gpu {:e} vs cpu32 {:e} (rel {d:.2e} > {tol:.2e}; cpu64 {:e})",
                rg[j], rc[j], rd[j]
            ));
        }
    }

    // (name, gpu f32, cpu f32, cpu f64)
    type Triple = (String, DMatrix<f64>, DMatrix<f64>, DMatrix<f64>);
    let mut mats: Vec<Triple> = Vec::new();
    for proj in [
        Projection::None,
        Projection::ReferenceOrthOnly,
        Projection::ReferenceFull,
        Projection::PolarFull,
    ] {
        let rule = GradientRule {
            fid: 0.7,
            orth: 0.3,
            simplified: None,
            projection: proj,
        };
        let (mut go, mut co, mut d64) = (
            g.zeros(p, k).unwrap(),
            c32.zeros(p, k).unwrap(),
            c64.zeros(p, k).unwrap(),
        );
        g.gradient(&gy, &gx, &rule, &mut go);
        c32.gradient(&cy, &cx, &rule, &mut co);
        c64.gradient(&dy, &dx, &rule, &mut d64);
        mats.push((
            format!("gradient {proj:?}"),
            g.download(&go).unwrap(),
            c32.download(&co).unwrap(),
            d64,
        ));
    }
    {
        // the simplified (off-diagonal) gradient
        let rule = GradientRule {
            fid: 0.7,
            orth: 0.0,
            simplified: Some(1e-6),
            projection: Projection::None,
        };
        let (mut go, mut co, mut d64) = (
            g.zeros(p, k).unwrap(),
            c32.zeros(p, k).unwrap(),
            c64.zeros(p, k).unwrap(),
        );
        g.gradient(&gy, &gx, &rule, &mut go);
        c32.gradient(&cy, &cx, &rule, &mut co);
        c64.gradient(&dy, &dx, &rule, &mut d64);
        mats.push((
            "gradient simplified".into(),
            g.download(&go).unwrap(),
            c32.download(&co).unwrap(),
            d64,
        ));
    }
    for (name, opts) in [
        (
            "retract reference soft-polar",
            RetractOptions::reference(Retraction::SoftPolar, 0.5),
        ),
        (
            "retract corrected soft-polar",
            RetractOptions::corrected(Retraction::SoftPolar, 0.5),
        ),
        (
            "retract corrected polar",
            RetractOptions::corrected(Retraction::Polar, 1.0),
        ),
    ] {
        let (mut go, mut co, mut d64) = (
            g.zeros(p, k).unwrap(),
            c32.zeros(p, k).unwrap(),
            c64.zeros(p, k).unwrap(),
        );
        g.retract(&gy, &mut go, &opts);
        c32.retract(&cy, &mut co, &opts);
        c64.retract(&dy, &mut d64, &opts);
        mats.push((
            name.to_string(),
            g.download(&go).unwrap(),
            c32.download(&co).unwrap(),
            d64,
        ));
    }
    {
        let rule = UpdateRule::Sgdp {
            momentum: 0.0,
            dampening: 0.0,
            eps: 1e-8,
            weight_decay: 0.0,
            delta: 0.1,
            wd_ratio: 0.1,
            nesterov: false,
        };
        let (mut go, mut co, mut d64) = (
            g.zeros(p, k).unwrap(),
            c32.zeros(p, k).unwrap(),
            c64.zeros(p, k).unwrap(),
        );
        let (mut gs, mut cs, mut ds) = (
            [g.zeros(p, k).unwrap()],
            [c32.zeros(p, k).unwrap()],
            [c64.zeros(p, k).unwrap()],
        );
        g.optimizer_step(&rule, &gy, &gx, &mut gs, 1e-3, &mut go);
        c32.optimizer_step(&rule, &cy, &cx, &mut cs, 1e-3, &mut co);
        c64.optimizer_step(&rule, &dy, &dx, &mut ds, 1e-3, &mut d64);
        mats.push((
            "optimizer_step sgdp".into(),
            g.download(&go).unwrap(),
            c32.download(&co).unwrap(),
            d64,
        ));
        mats.push((
            "optimizer_step sgdp (buffer)".into(),
            g.download(&gs[0]).unwrap(),
            c32.download(&cs[0]).unwrap(),
            c64.download(&ds[0]).unwrap(),
        ));
    }
    {
        let (mut go, mut co, mut d64) = (
            g.zeros(p, k).unwrap(),
            c32.zeros(p, k).unwrap(),
            c64.zeros(p, k).unwrap(),
        );
        g.lerp(&gy, &gx, 0.375, &mut go);
        c32.lerp(&cy, &cx, 0.375, &mut co);
        c64.lerp(&dy, &dx, 0.375, &mut d64);
        g.nonneg(&mut go, NonNeg::Hard);
        c32.nonneg(&mut co, NonNeg::Hard);
        c64.nonneg(&mut d64, NonNeg::Hard);
        mats.push((
            "lerp + nonneg".into(),
            g.download(&go).unwrap(),
            c32.download(&co).unwrap(),
            d64,
        ));
    }
    let tail = 65_535;
    for (name, gm, cm, dm) in &mats {
        let e_cpu = rel_fro_safe(cm, dm);
        let tol = tol_of(e_cpu);
        let d = rel_fro_safe(gm, cm);
        let rows = |m: &DMatrix<f64>| m.rows(tail, p - tail).into_owned();
        let dt = rel_fro_safe(&rows(gm), &rows(cm));
        let tol_t = tol_of(rel_fro_safe(&rows(cm), &rows(dm)));
        report.push(format!(
            "{name:<37} gpu−cpu32 {d:.2e}  cpu32−cpu64 {e_cpu:.2e}  tol {tol:.2e}  (rows ≥ {tail}: {dt:.2e}, tol {tol_t:.2e})"
        ));
        if !(d <= tol && dt <= tol_t) {
            failures.push(format!("{name}: gpu vs cpu32 rel {d:.2e} (tol {tol:.2e}); rows ≥ {tail}: {dt:.2e} (tol {tol_t:.2e})"));
        }
    }
    eprintln!(
        "\nloop-cap guard at p = {p}, k = {k}, f32, on {} ({:.1} s):\n{}\n",
        g.name(),
        t0.elapsed().as_secs_f64(),
        report.join("\n")
    );
    assert!(
        failures.is_empty(),
        "GPU f32 disagrees with the CPU at p = {p}, k = {k}:\n{}",
        failures.join("\n")
    );
}

impl<B: nsa_flow::autograd::DifferentiableBackend> nsa_flow::autograd::DifferentiableBackend
    for Spy<B>
{
    fn energy_gradient(
        &mut self,
        y: &Self::Mat,
        x0: &Self::Mat,
        spec: &nsa_flow::autograd::EnergySpec,
        terms: &nsa_flow::EnergyTerms,
        x0_norm_sq: f64,
        out: &mut Self::Mat,
    ) {
        self.inner
            .energy_gradient(y, x0, spec, terms, x0_norm_sq, out)
    }
    fn nonneg_backward(&mut self, pre: &Self::Mat, mode: NonNeg, g: &mut Self::Mat) {
        self.inner.nonneg_backward(pre, mode, g)
    }
    fn retract_backward(
        &mut self,
        y: &Self::Mat,
        options: &RetractOptions,
        g: &Self::Mat,
        out: &mut Self::Mat,
    ) {
        self.inner.retract_backward(y, options, g, out)
    }
}
