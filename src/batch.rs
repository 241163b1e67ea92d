//! Many problems at once: B problems of the same p×k shape, each with its own start, target
//! and weight (the other parameters shared), solved together, and `sweep_w` (one problem, a
//! list of weights) on top.
//!
//! On the CPU the problems run in parallel across cores (rayon); each result is bit-identical
//! to solving that problem alone, because every solve is the same single-problem loop on its
//! own backend and the CPU kernels reduce in a fixed order whatever thread runs them.
//!
//! On a GPU the batch is a dispatch dimension: each launch covers every problem that took the
//! same path (problem `z` in the workgroups with `workgroup_id.z = z`, reading its own
//! coefficients and data), every round of the solver loops ends in one readback for the whole
//! batch, and a finished problem drops out of later rounds. Each result is bit-identical to
//! that problem's solve alone on the same adapter (docs/GPU.md, "Batches").

use crate::backend::cpu::CpuBackend;
#[cfg(feature = "gpu")]
use crate::backend::select::gpu_backend_for;
use crate::error::{NsaError, Result};
use crate::flow::solve;
use crate::params::{Params, Precision};
use crate::result::{Control, NsaResult};
use nalgebra::DMatrix;
use rayon::prelude::*;
use std::time::Instant;

/// One problem of a batch: its start, its target (`None`: the self-target of `nsa_flow`) and
/// its weight.
#[derive(Clone, Debug)]
pub struct BatchProblem {
    /// The start `Y0` (p×k).
    pub y0: DMatrix<f64>,
    /// The target `X0` (p×k), or `None` for the self-target.
    pub x0: Option<DMatrix<f64>>,
    /// The weight `w` in [0, 1].
    pub w: f64,
}

/// Where a GPU batch's time went (host seconds; they add up to about the batch's wall time).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct BatchProfile {
    /// Rounds: one submit and one readback each, for every problem still running.
    pub rounds: u64,
    /// Kernel launches (one launch covers every problem whose launch agreed).
    pub launches: u64,
    /// Waiting for the problems' threads to reach their next readback (the solver loops'
    /// host work between readbacks, in parallel).
    pub problems_seconds: f64,
    /// Encoding the rounds' launches, copies and uploads.
    pub encoding_seconds: f64,
    /// Submitting, running on the device and mapping the readbacks.
    pub device_seconds: f64,
}

/// What [`nsa_flow_batch`] returns.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BatchResult {
    /// One result per problem, in order.
    pub results: Vec<NsaResult>,
    /// Wall-clock seconds of the whole batch.
    pub seconds: f64,
    /// Where it ran (`cpu-f64 ×N threads`, or the GPU backend's name).
    pub backend: String,
    /// On a GPU: the device round trips of the whole batch (each one readback for every
    /// problem still running; a batch larger than the adapter's buffer limits allow runs as
    /// several, whose rounds add up); `None` on the CPU.
    pub rounds: Option<u64>,
    /// On a GPU: the kernel launches of the whole batch (a launch covers every problem that
    /// took the same path, so B problems that run alike take as many as one); `None` on the
    /// CPU.
    pub launches: Option<u64>,
    /// On a GPU: where the time went (rounds, launches, host seconds waiting for the
    /// problems' loops, encoding, and on the device); `None` on the CPU.
    pub profile: Option<BatchProfile>,
}

/// Solves every problem with `params` (its `w` replaced by each problem's own): on the CPU in
/// parallel across cores, each result bit-identical to [`crate::nsa_flow`] on that problem
/// with the same backend and precision. Every problem is checked before any work: an empty
/// batch, shapes that differ, a bad `w` or bad matrices are a typed error naming the problem
/// ([`NsaError::InBatch`]).
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::batch::{nsa_flow_batch, BatchProblem};
/// use nsa_flow::{BackendChoice, Params};
/// let x0 = DMatrix::from_fn(20, 3, |i, j| ((i * 7 + j * 3) % 5) as f64 + 0.5);
/// let problems: Vec<_> = [0.25, 0.5, 0.75]
///     .iter()
///     .map(|&w| BatchProblem { y0: x0.clone(), x0: Some(x0.clone()), w })
///     .collect();
/// let params = Params::default().backend(BackendChoice::Cpu);
/// let batch = nsa_flow_batch(&problems, &params).unwrap();
/// let alone = nsa_flow::nsa_flow(&x0, Some(&x0), &params.clone().w(0.5)).unwrap();
/// assert_eq!(batch.results[1].y, alone.y);
/// ```
pub fn nsa_flow_batch(problems: &[BatchProblem], params: &Params) -> Result<BatchResult> {
    nsa_flow_batch_with_callback(problems, params, |_, _| Control::Continue)
}

/// [`nsa_flow_batch`] with a callback after every iteration of every problem:
/// `callback(i, info)` for problem `i` (its index in `problems`), from whichever thread runs
/// that problem, so it must be `Sync`. [`Control::Stop`] stops that problem at once with its
/// best iterate so far (as [`crate::nsa_flow_with_callback`] does); the others go on. A
/// callback that stops every problem (a Ctrl-C flag, a deadline) ends the batch within one
/// iteration of each. While it answers `Continue`, every result is bit-identical to
/// [`nsa_flow_batch`]'s.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::batch::{nsa_flow_batch_with_callback, BatchProblem};
/// use nsa_flow::{BackendChoice, Control, Params, StopReason};
/// let x0 = DMatrix::from_fn(20, 3, |i, j| ((i * 7 + j * 3) % 5) as f64 + 0.5);
/// let problems: Vec<_> = [0.25, 0.75]
///     .iter()
///     .map(|&w| BatchProblem { y0: x0.clone(), x0: Some(x0.clone()), w })
///     .collect();
/// let params = Params::default().backend(BackendChoice::Cpu);
/// // problem 1 stops after its third iteration; problem 0 runs on
/// let batch = nsa_flow_batch_with_callback(&problems, &params, |i, info| {
///     if i == 1 && info.iter == 3 { Control::Stop } else { Control::Continue }
/// })
/// .unwrap();
/// assert_eq!(batch.results[1].iterations, 3);
/// assert_eq!(batch.results[1].stop_reason, StopReason::Callback);
/// assert_ne!(batch.results[0].stop_reason, StopReason::Callback);
/// ```
pub fn nsa_flow_batch_with_callback<F>(
    problems: &[BatchProblem],
    params: &Params,
    callback: F,
) -> Result<BatchResult>
where
    F: Fn(usize, &crate::IterInfo) -> Control + Sync,
{
    if problems.is_empty() {
        return Err(NsaError::InvalidParameter {
            name: "problems",
            reason: "the batch is empty".into(),
        });
    }
    let shape = problems[0].y0.shape();
    let per_problem: Vec<Params> = problems
        .iter()
        .enumerate()
        .map(|(i, pr)| {
            let p = params.clone().w(pr.w);
            let check = || -> Result<()> {
                p.validate()?;
                crate::validate::finite_nonempty("Y0", &pr.y0)?;
                crate::validate::same_shape("Y0", &pr.y0, shape)?;
                if let Some(x) = &pr.x0 {
                    crate::validate::finite_nonempty("X0", x)?;
                    crate::validate::same_shape("X0", x, shape)?;
                }
                Ok(())
            };
            check().map(|()| p).map_err(|e| in_batch(i, e))
        })
        .collect::<Result<_>>()?;
    let start = Instant::now();
    let solve_one = |i: usize| -> Result<NsaResult> {
        let pr = &problems[i];
        let p = &per_problem[i];
        let mut cont = |info: &crate::IterInfo| callback(i, info);
        match p.common.precision {
            Precision::F64 => solve(
                &mut CpuBackend::<f64>::new(),
                &pr.y0,
                pr.x0.as_ref(),
                p,
                &mut cont,
            ),
            Precision::F32 => solve(
                &mut CpuBackend::<f32>::new(),
                &pr.y0,
                pr.x0.as_ref(),
                p,
                &mut cont,
            ),
        }
        .map_err(|e| in_batch(i, e))
    };
    #[cfg_attr(not(feature = "gpu"), allow(unused_mut))]
    let mut batch_profile: Option<BatchProfile> = None;
    #[cfg(feature = "gpu")]
    let gpu = gpu_backend_for(params)?;
    #[cfg(not(feature = "gpu"))]
    let gpu: Option<std::convert::Infallible> = {
        crate::backend::select::DeviceOptions::of(&params.common).no_gpu()?;
        None
    };
    let (results, backend) = match gpu {
        #[cfg(not(feature = "gpu"))]
        Some(never) => match never {},
        #[cfg(feature = "gpu")]
        Some(mut exec) => {
            let name = format!(
                "{} ×{} problems",
                crate::backend::Backend::name(&exec),
                problems.len()
            );
            // a batch too large for the adapter's buffer limits runs as several batches
            let per = exec.batch_capacity(shape.0, shape.1);
            let mut profile = BatchProfile::default();
            let mut results = Vec::with_capacity(problems.len());
            for (c, chunk) in problems.chunks(per).enumerate() {
                let first = c * per;
                let (answers, part) =
                    crate::backend::gpu_batch::run_batch(&mut exec, chunk.len(), |be, i| {
                        let pr = &chunk[i];
                        let mut cont = |info: &crate::IterInfo| callback(first + i, info);
                        solve(
                            be,
                            &pr.y0,
                            pr.x0.as_ref(),
                            &per_problem[first + i],
                            &mut cont,
                        )
                    });
                profile.rounds += part.rounds;
                profile.launches = part.launches;
                profile.problems_seconds += part.problems_seconds;
                profile.encoding_seconds += part.encoding_seconds;
                profile.device_seconds += part.device_seconds;
                for (i, a) in answers.into_iter().enumerate() {
                    results.push(a.map_err(|e| in_batch(first + i, e))?);
                }
            }
            batch_profile = Some(profile);
            (results, name)
        }
        None => {
            let results = (0..problems.len())
                .into_par_iter()
                .map(solve_one)
                .collect::<Result<Vec<_>>>()?;
            let name = format!(
                "cpu-{} ×{} threads",
                params.common.precision.as_str(),
                rayon::current_num_threads()
            );
            (results, name)
        }
    };
    Ok(BatchResult {
        results,
        seconds: start.elapsed().as_secs_f64(),
        backend,
        rounds: batch_profile.map(|p| p.rounds),
        launches: batch_profile.map(|p| p.launches),
        profile: batch_profile,
    })
}

/// One problem at several weights: [`nsa_flow_batch`] on `(y0, x0, w)` for each `w` of `ws`,
/// each result equal to `nsa_flow` at that `w`. An empty `ws`, a `w` outside [0, 1] or a
/// repeated `w` is an error.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::{batch::sweep_w, BackendChoice, Params};
/// let x0 = DMatrix::from_fn(30, 3, |i, j| ((i * 5 + j * 7) % 6) as f64);
/// let res = sweep_w(&x0, Some(&x0), &[0.2, 0.8], &Params::default().backend(BackendChoice::Cpu)).unwrap();
/// assert!(res.results[1].defect() <= res.results[0].defect());
/// ```
pub fn sweep_w(
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    ws: &[f64],
    params: &Params,
) -> Result<BatchResult> {
    if ws.is_empty() {
        return Err(NsaError::InvalidParameter {
            name: "ws",
            reason: "no weight given".into(),
        });
    }
    for (i, &w) in ws.iter().enumerate() {
        if ws[..i].contains(&w) {
            return Err(NsaError::InvalidParameter {
                name: "ws",
                reason: format!("w = {w} is given twice"),
            });
        }
    }
    let problems: Vec<BatchProblem> = ws
        .iter()
        .map(|&w| BatchProblem {
            y0: y0.clone(),
            x0: x0.cloned(),
            w,
        })
        .collect();
    nsa_flow_batch(&problems, params)
}

/// `source` as the error of problem `index` of a batch (an error that already names its
/// problem is kept as it is).
pub(crate) fn in_batch(index: usize, source: NsaError) -> NsaError {
    match source {
        e @ NsaError::InBatch { .. } => e,
        e => NsaError::InBatch {
            index,
            source: Box::new(e),
        },
    }
}
