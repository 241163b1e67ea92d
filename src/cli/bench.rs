//! `nsa-flow bench`: seconds per iteration on random data against the memory-bandwidth bound.

use super::output::{pretty, usage_error};
use super::parse::{parse_adapter, parse_bench_modes, parse_named, parse_positive, BenchModes};
use super::MIB;
use clap::error::ErrorKind;
use clap::Args;
use nalgebra::DMatrix;
use nsa_flow::backend::cpu::CpuBackend;
use nsa_flow::backend::gpu::GpuBackend;
use nsa_flow::backend::Backend;
use nsa_flow::{BackendChoice, Control, NsaError, Params, Precision};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Instant;

/// The flags of `bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Rows (at least 1).
    #[arg(long, default_value_t = 1000, value_parser = parse_positive)]
    p: usize,
    /// Columns (at least 1).
    #[arg(long, default_value_t = 20, value_parser = parse_positive)]
    k: usize,
    /// Iterations per run (tol = 0, so every run does them all unless it stalls).
    #[arg(long, default_value_t = 50, value_parser = parse_positive)]
    iters: usize,
    /// Timed runs (the best is reported).
    #[arg(long, default_value_t = 3, value_parser = parse_positive)]
    repeats: usize,
    /// corrected | reference | both.
    #[arg(long, default_value = "both", value_parser = parse_bench_modes)]
    mode: BenchModes,
    /// f64 | f32.
    #[arg(long, default_value = "f64", value_parser = parse_named::<Precision>)]
    precision: Precision,
    /// auto | cpu | gpu (auto: a hardware GPU that computes in --precision, else the CPU;
    /// gpu: any adapter, software ones included).
    #[arg(long, default_value = "cpu", value_parser = parse_named::<BackendChoice>)]
    backend: BackendChoice,
    /// GPU adapter: a case-insensitive substring of its name (see `nsa-flow info`). A usage
    /// error with --backend cpu.
    #[arg(long, value_parser = parse_adapter)]
    adapter: Option<String>,
    /// Random seed of the data (N(0,1) entries for Y0 and X0, as in the reference's quick start).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `nsa-flow bench`.
pub fn cmd_bench(a: BenchArgs) -> Result<ExitCode, NsaError> {
    if a.backend == BackendChoice::Cpu && a.adapter.is_some() {
        usage_error(
            "bench",
            ErrorKind::ArgumentConflict,
            "--adapter names a GPU adapter, but --backend cpu runs on the CPU; drop one of them"
                .into(),
        );
    }
    let precision = a.precision;
    let mut base = Params::default()
        .w(0.5)
        .max_iter(a.iters)
        .tol(0.0)
        .precision(precision)
        .backend(a.backend);
    base.common.gpu_adapter = a.adapter.clone();
    base.validate()?;
    // every size is checked before anything is allocated: the p·k product, the two inputs
    // and the solve's workspace against the memory budget
    let n = nsa_flow::memory::elements("the bench's p×k matrices", &[a.p, a.k])?;
    let inputs = nsa_flow::memory::bytes_of("the bench's Y0 and X0", &[n, 2], 8)?;
    let workspace = nsa_flow::memory::solve_bytes(a.p, a.k, precision.bytes(), false)?;
    nsa_flow::memory::ensure_fits(
        &format!("a bench of a {}×{} problem", a.p, a.k),
        inputs.saturating_add(workspace),
    )?;
    let mut rng = nsa_flow::rng::Rng::new(a.seed);
    let mut random = || -> Result<DMatrix<f64>, NsaError> {
        let mut v = nsa_flow::memory::try_with_capacity::<f64>("a bench matrix", n)?;
        v.extend((0..n).map(|_| rng.normal()));
        Ok(DMatrix::from_vec(a.p, a.k, v))
    };
    let y0 = random()?;
    let x0 = random()?;
    let gpu: Option<GpuBackend> = nsa_flow::flow::gpu_backend_for(&base)?;
    let adapter = gpu.as_ref().map(|g| g.context().adapter().clone());
    if !a.json {
        match &adapter {
            Some(ad) => println!(
                "adapter: {} [{}{}]",
                ad.label(),
                ad.driver,
                if ad.is_software { ", software" } else { "" }
            ),
            None if a.backend == BackendChoice::Auto => println!(
                "adapter: none usable by auto (no hardware GPU that computes in {precision}; see `nsa-flow info`): running on the CPU"
            ),
            None => {}
        }
    }
    let (bandwidth, runs) = match gpu {
        Some(mut be) => {
            let max = be.context().adapter().max_storage_buffer_binding_size;
            let bytes = (256 * MIB).min(usize::try_from(max).unwrap_or(usize::MAX)) / 16 * 16;
            let bw = Bandwidth {
                gb_per_s: be.copy_bandwidth(bytes, 20)?,
                bytes,
                method: "GPU copy kernel",
            };
            let mut runs = Vec::new();
            for &mode in &a.mode.0 {
                let before = be.traffic();
                let mut run = bench_on(&mut be, &y0, &x0, &base.clone().mode(mode), a.repeats)?;
                // every repeat records the same launches (same input, same path)
                run.traffic = Some(be.traffic().since(&before));
                runs.push((mode, run));
            }
            (bw, runs)
        }
        None => {
            // the probe's two buffers stay within an eighth of the memory budget
            let room = nsa_flow::memory::budget()?.bytes / 16;
            let bytes = (256 * MIB)
                .min(usize::try_from(room).unwrap_or(usize::MAX))
                .max(MIB);
            let bw = Bandwidth {
                gb_per_s: host_copy_bandwidth(bytes, 5),
                bytes,
                method: "host parallel copy",
            };
            let mut runs = Vec::new();
            for &mode in &a.mode.0 {
                let params = base.clone().mode(mode);
                let run = match precision {
                    Precision::F64 => {
                        bench_on(&mut CpuBackend::<f64>::new(), &y0, &x0, &params, a.repeats)?
                    }
                    Precision::F32 => {
                        bench_on(&mut CpuBackend::<f32>::new(), &y0, &x0, &params, a.repeats)?
                    }
                };
                runs.push((mode, run));
            }
            (bw, runs)
        }
    };
    let bound_bytes = 3 * n * precision.bytes(); // ≤ the workspace checked above
    let bound_secs = bound_bytes as f64 / (bandwidth.gb_per_s * 1e9);
    if a.json {
        let rows: Vec<Value> = runs
            .iter()
            .map(|(mode, r)| {
                json!({
                    "mode": mode.as_str(),
                    "backend": r.backend,
                    "seconds_per_iteration": r.seconds_per_iteration,
                    "iterations": r.iterations,
                    "energy_evaluations_per_iteration": r.energy_evaluations as f64 / r.iterations.max(1) as f64,
                    "readbacks_per_iteration": r.readbacks.map(|n| n as f64 / r.iterations.max(1) as f64),
                    "ratio_to_bound": r.seconds_per_iteration / bound_secs,
                    "device_work": r.traffic.map(|t| {
                        let (per_it, per_ev) = r.per_iteration_and_evaluation(a.repeats);
                        let passes = t.passes(a.p, a.k, precision.bytes());
                        json!({
                            "launches_per_iteration": t.launches as f64 * per_it,
                            "launches_per_evaluation": t.launches as f64 * per_ev,
                            "passes_over_pk_per_iteration": passes * per_it,
                            "passes_over_pk_per_evaluation": passes * per_ev,
                            "operand_bytes_per_iteration": t.operand_bytes as f64 * per_it,
                            "copies_per_iteration": t.copies as f64 * per_it,
                            "readback_bytes_per_iteration": t.readback_bytes as f64 * per_it,
                        })
                    }),
                })
            })
            .collect();
        let v = json!({
            "p": a.p,
            "k": a.k,
            "iters": a.iters,
            "repeats": a.repeats,
            "precision": precision.as_str(),
            "backend_requested": a.backend.as_str(),
            "adapter": adapter.as_ref().map(|ad| json!({
                "name": ad.name, "api": ad.backend, "device_type": ad.device_type,
                "driver": ad.driver, "software": ad.is_software,
            })),
            "bandwidth": {
                "gb_per_s": bandwidth.gb_per_s,
                "probe_bytes": bandwidth.bytes,
                "method": bandwidth.method,
            },
            "bound": {
                "bytes_per_iteration": bound_bytes,
                "seconds_per_iteration": bound_secs,
            },
            "runs": rows,
        });
        print!("{}", pretty(&v));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "bandwidth: {:.2} GB/s ({}, {} MiB, read + write)",
        bandwidth.gb_per_s,
        bandwidth.method,
        bandwidth.bytes / MIB
    );
    for (mode, r) in &runs {
        let its = r.iterations.max(1) as f64;
        let readbacks = r.readbacks.map_or(String::new(), |n| {
            format!(", {:.2} readbacks/iteration", n as f64 / its)
        });
        println!(
            "{}x{} {} {} {}: {:.3} ms/iteration ({} iterations, {:.2} energy evaluations/iteration{})",
            a.p,
            a.k,
            mode,
            precision,
            r.backend,
            r.seconds_per_iteration * 1e3,
            r.iterations,
            r.energy_evaluations as f64 / its,
            readbacks
        );
        println!(
            "  bandwidth bound: 3·p·k·{} B = {:.3} MB/iteration at {:.2} GB/s = {:.4} ms; measured {:.3} ms; measured/bound = {:.1}",
            precision.bytes(),
            bound_bytes as f64 / 1e6,
            bandwidth.gb_per_s,
            bound_secs * 1e3,
            r.seconds_per_iteration * 1e3,
            r.seconds_per_iteration / bound_secs
        );
        if let Some(t) = r.traffic {
            let (per_it, per_ev) = r.per_iteration_and_evaluation(a.repeats);
            let passes = t.passes(a.p, a.k, precision.bytes());
            println!(
                "  device work: {:.1} launches and {:.1} passes over p×k per iteration ({:.1} and {:.1} per energy evaluation), counted from the recorded launches",
                t.launches as f64 * per_it,
                passes * per_it,
                t.launches as f64 * per_ev,
                passes * per_ev
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Best-of-`repeats` timing of one mode on one backend.
struct BenchRun {
    backend: String,
    seconds_per_iteration: f64,
    iterations: usize,
    energy_evaluations: usize,
    readbacks: Option<u64>,
    /// A GPU run's work over all its repeats (they record the same launches).
    traffic: Option<nsa_flow::backend::gpu::Traffic>,
}

impl BenchRun {
    /// The factors that turn a count over all `repeats` into one per iteration and one per
    /// energy evaluation.
    fn per_iteration_and_evaluation(&self, repeats: usize) -> (f64, f64) {
        let r = repeats.max(1) as f64;
        (
            1.0 / (r * self.iterations.max(1) as f64),
            1.0 / (r * self.energy_evaluations.max(1) as f64),
        )
    }
}

fn bench_on<B: Backend>(
    be: &mut B,
    y0: &DMatrix<f64>,
    x0: &DMatrix<f64>,
    params: &Params,
    repeats: usize,
) -> Result<BenchRun, NsaError> {
    let mut best: Option<BenchRun> = None;
    for _ in 0..repeats {
        let before = be.readbacks();
        let res = nsa_flow::flow::solve(be, y0, Some(x0), params, &mut |_| Control::Continue)?;
        let per = res.seconds / res.iterations.max(1) as f64;
        if best.as_ref().is_none_or(|b| per < b.seconds_per_iteration) {
            best = Some(BenchRun {
                backend: res.device.name.clone(),
                seconds_per_iteration: per,
                iterations: res.iterations,
                energy_evaluations: res.energy_evaluations,
                readbacks: be.readbacks().map(|r| r - before.unwrap_or(0)),
                traffic: None,
            });
        }
    }
    Ok(best.expect("repeats ≥ 1"))
}

/// The bandwidth a plain copy reaches on the host, in GB/s of bytes read plus bytes written
/// (the GPU probe's convention): a 256 MiB buffer copied in parallel (one chunk per rayon
/// thread, as the CPU backend's kernels run), once untimed, then `repeats` times.
fn host_copy_bandwidth(bytes: usize, repeats: usize) -> f64 {
    use rayon::prelude::*;
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let chunk = bytes
        .div_ceil(rayon::current_num_threads().max(1))
        .max(4096);
    let copy = |dst: &mut [u8]| {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
    };
    copy(&mut dst);
    let t0 = Instant::now();
    for _ in 0..repeats {
        copy(&mut dst);
    }
    let secs = t0.elapsed().as_secs_f64();
    std::hint::black_box(&dst);
    2.0 * bytes as f64 * repeats as f64 / secs / 1e9
}

/// Where the bandwidth of the bound came from.
struct Bandwidth {
    gb_per_s: f64,
    bytes: usize,
    method: &'static str,
}
