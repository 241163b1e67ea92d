//! `nsa-flow run`: the flow from Y0 towards X0, its `--verify` comparison of the CPU with the
//! GPU, and `run --solver` (handed to [`super::fit`]).

use super::args::{flow_inputs, flow_params, read_inputs, FlowArgs};
use super::output::{
    adapter_json, check_paths, dtype_of, pretty, render_trace_file, trace_text, usage_error,
    write_all, Output,
};
use super::parse::{
    parse_json_path, parse_matrix_path, parse_plot_path, parse_run_solver, parse_trace_path,
    parse_weight,
};
use super::progress::{verbose_flow_line, Progress};
use clap::error::ErrorKind;
use clap::Args;
use nalgebra::DMatrix;
use nsa_flow::{
    BackendChoice, Control, NsaError, NsaResult, Params, Precision, Solved, VerifyReport,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

/// The flags of `run`.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    flow: FlowArgs,
    /// Weight in [0, 1]: 0 = fidelity only, 1 = orthogonality only.
    #[arg(long, default_value_t = 0.5, value_parser = parse_weight)]
    w: f64,
    /// Run the same problem on the CPU and on the GPU (--adapter is honoured, --backend must
    /// not be cpu), print how they compare, and exit 0 when they agree (same iteration count,
    /// same best iteration, Y within 1e-8 relative in f64 or 1e-3 in f32), 1 when not.
    ///
    /// --out, --trace, --plot and --summary are optional here; those given are written from
    /// the GPU run, also when the runs disagree (so the disagreement can be inspected), and
    /// the summary gets a "verify" section. An error in either run writes nothing (exit 1).
    #[arg(long, conflicts_with = "verbose")]
    verify: bool,
    /// lbfgsb | spg: solve with nsa_flow 3.5's anchored solver instead of the 0.7.7 flow
    /// (target X0, or Y0 without --x0; started from Y0 when --x0 is given; f64 on the CPU).
    /// --max-iter then counts gradient evaluations (default 20000) and --tol is the
    /// certificate (default 1e-6); the flow's own settings do not apply and are refused.
    #[arg(long, value_parser = parse_run_solver, conflicts_with_all = [
        "retraction", "nonneg", "optimizer", "lr", "record_every", "window_size", "simplified",
        "project_full_gradient", "precision", "mode", "backend", "adapter", "start", "seed",
        "verify", "trace", "plot", "verbose"])]
    pub solver: Option<nsa_flow::fit::FitOptimizer>,
    /// Output: the best Y (.npy in the run's precision, or .csv). Required unless --verify.
    #[arg(long, required_unless_present = "verify", value_parser = parse_matrix_path)]
    out: Option<PathBuf>,
    /// Trace output (.csv with header iter,time,fidelity,orthogonality,total_energy, or .json).
    #[arg(long, value_parser = parse_trace_path)]
    trace: Option<PathBuf>,
    /// Trace figure (.svg or .png), what the reference's plot_nsa_trace draws: the fidelity
    /// term (left axis) and the orthogonality defect (right axis) of each recorded
    /// iteration, titled with the retraction and w.
    #[arg(long, value_parser = parse_plot_path)]
    plot: Option<PathBuf>,
    /// Summary output (.json). Besides the run's statistics it holds "readbacks" (device
    /// round trips; null on the CPU) and "adapter" ({name, api, device_type, software}; null on
    /// the CPU).
    #[arg(long, value_parser = parse_json_path)]
    summary: Option<PathBuf>,
    /// Print one line per iteration on stderr (what the reference's verbose=True printed)
    /// instead of the progress bar.
    #[arg(long, short)]
    verbose: bool,
    /// Print nothing on success (no progress bar, no final line).
    #[arg(long, short, conflicts_with = "verbose")]
    quiet: bool,
}

/// `nsa-flow run` (the 0.7.7 flow, or `--verify`).
pub fn cmd_run(a: RunArgs) -> Result<ExitCode, NsaError> {
    let mut params = flow_params(&a.flow, a.w, "run")?;
    if a.verify && params.common.backend == BackendChoice::Cpu {
        usage_error(
            "run",
            ErrorKind::ArgumentConflict,
            "--verify compares the CPU with the GPU, so --backend cpu makes no sense with it"
                .into(),
        );
    }
    // check output names before the work, so a clash does not cost a long run
    check_paths(
        "run",
        &[
            ("--out", a.out.as_deref()),
            ("--trace", a.trace.as_deref()),
            ("--plot", a.plot.as_deref()),
            ("--summary", a.summary.as_deref()),
        ],
        &flow_inputs(&a.flow),
    );
    let (y0, x0) = read_inputs(&a.flow, &mut params)?;
    if a.verify {
        return run_verify(&a, &y0, x0.as_ref(), &params);
    }
    let verbose = a.verbose;
    let mut progress = Progress::new(!a.quiet && !verbose);
    progress.start_run(params.common.max_iter, String::new());
    let mut callback = |i: &nsa_flow::IterInfo| {
        if verbose {
            verbose_flow_line("", i);
        }
        progress.update(i, "defect");
        Control::Continue
    };
    let solved = nsa_flow::nsa_flow_with_callback(&y0, x0.as_ref(), &params, &mut callback);
    progress.finish();
    let res = solved?;
    let summary = summary_value(&res, &params);
    write_all(outputs_of(&a, &res, &params, summary)?)?;
    if !a.quiet {
        println!(
            "{} iterations ({}), best energy {} at iteration {}, defect {:.4e}, sparsity {:.3}, certificate {:.2e}, {:.3} s on {}{}",
            res.iterations,
            res.stop_reason,
            res.best_total_energy.map_or("n/a".to_string(), |e| format!("{e:.6e}")),
            res.best_iteration,
            res.defect(),
            res.sparsity(),
            res.certificate.value,
            res.seconds,
            res.device,
            readbacks_note(&res),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `run --solver lbfgsb|spg`.
pub fn cmd_run_fit(
    a: RunArgs,
    (max_iter_given, tol_given): (bool, bool),
) -> Result<ExitCode, NsaError> {
    check_paths(
        "run",
        &[
            ("--out", a.out.as_deref()),
            ("--summary", a.summary.as_deref()),
        ],
        &flow_inputs(&a.flow),
    );
    let y0 = a.flow.csv.read(&a.flow.y0)?;
    let x0 = a.flow.x0.as_ref().map(|p| a.flow.csv.read(p)).transpose()?;
    super::fit::run_anchored(
        &y0,
        x0.as_ref(),
        a.w,
        a.solver.expect("dispatched on Some"),
        max_iter_given.then_some(a.flow.max_iter),
        tol_given.then_some(a.flow.tol),
        a.out,
        a.summary,
        a.quiet,
    )
}

fn summary_value(res: &NsaResult, params: &Params) -> Value {
    json!({
        "iterations": res.iterations,
        "final_iter": res.final_iter,
        "best_iteration": res.best_iteration,
        "best_total_energy": res.best_total_energy,
        "stop_reason": res.stop_reason.as_str(),
        "defect": res.defect(),
        "sparsity": res.sparsity(),
        "seconds": res.seconds,
        "backend": res.device.name,
        "adapter": adapter_json(res.device.adapter.as_ref()),
        "readbacks": res.device.readbacks,
        "mode": res.mode.as_str(),
        "precision": res.precision.as_str(),
        "certificate": {
            "name": "relative projected-gradient mapping",
            "value": res.certificate.value,
            "tol": res.certificate.tol,
            "satisfied": res.certificate.satisfied,
        },
        "p": res.y.nrows(),
        "k": res.y.ncols(),
        "w": params.common.w,
        "retraction": params.common.retraction.as_str(),
        "nonneg": params.nonneg.as_str(),
        "optimizer": params.optimizer.as_str(),
        "learning_rate_initial": res.learning_rate_initial,
        "learning_rate_final": res.learning_rate_final,
        "energy_evaluations": res.energy_evaluations,
        "backtracking_iterations": res.backtracking_iterations,
        "retracted_steps": res.retracted_steps,
        "scaling": {
            "g0": res.scaling.g0, "d0": res.scaling.d0, "fid_eta": res.scaling.fid_eta, "c_orth": res.scaling.c_orth,
            "fid_weight": res.scaling.fid_weight, "orth_weight": res.scaling.orth_weight,
        },
    })
}

/// The files `run` was asked for, in memory.
fn outputs_of(
    a: &RunArgs,
    res: &NsaResult,
    params: &Params,
    summary: Value,
) -> Result<Vec<Output>, NsaError> {
    let mut outputs = Vec::new();
    if let Some(o) = &a.out {
        outputs.push(Output::Matrix(
            o.clone(),
            res.y.clone(),
            dtype_of(params.common.precision),
        ));
    }
    if let Some(t) = &a.trace {
        outputs.push(Output::Text(t.clone(), trace_text(t, res)?));
    }
    if let Some(p) = &a.plot {
        outputs.push(Output::Bytes(
            p.clone(),
            render_trace_file(
                p,
                &res.traces,
                params.common.retraction.as_str(),
                params.common.w,
            )?,
        ));
    }
    if let Some(s) = &a.summary {
        outputs.push(Output::Text(s.clone(), pretty(&summary)));
    }
    Ok(outputs)
}

/// `, N readbacks (r per iteration)` for a device run, nothing on the CPU.
fn readbacks_note(res: &NsaResult) -> String {
    match res.device.readbacks {
        Some(r) => format!(
            ", {r} readbacks ({:.2} per iteration)",
            r as f64 / res.iterations.max(1) as f64
        ),
        None => String::new(),
    }
}

/// The Y tolerance of `run --verify`: 1e-8 relative in f64, 1e-3 in f32.
pub fn verify_tolerance(p: Precision) -> f64 {
    match p {
        Precision::F64 => 1e-8,
        Precision::F32 => 1e-3,
    }
}

/// The summary's "verify" section (of `run --verify` and `autograd --verify`).
pub fn verify_json<R: Solved>(r: &VerifyReport<R>, tol: f64, agrees: bool) -> Value {
    json!({
        "agrees": agrees,
        "y_tol": tol,
        "y_rel_diff": r.y_rel_diff,
        "max_energy_rel_diff": r.max_energy_rel_diff,
        "first_divergence": r.first_divergence,
        "energy_tol": r.energy_tol,
        "cpu": {
            "backend": r.cpu.device().name,
            "iterations": r.cpu.iterations(),
            "best_iteration": r.cpu.best_iteration(),
            "stop_reason": r.cpu.stop_reason().as_str(),
            "seconds": r.cpu.seconds(),
        },
    })
}

/// Prints the comparison (its disagreement to stderr as an error) and answers the exit code:
/// 0 when the runs agree, 1 when they do not.
pub fn report_verify<R: Solved>(r: &VerifyReport<R>, tol: f64, quiet: bool) -> ExitCode {
    if r.agrees(tol) {
        if !quiet {
            println!("{r}");
            println!("agree: same iterations and best iteration, Y within {tol:.0e}");
        }
        ExitCode::SUCCESS
    } else {
        println!("{r}");
        eprintln!(
            "error: the CPU and GPU runs disagree (iterations {} vs {}, best iteration {} vs {}, Y relative difference {:.3e} against {tol:.0e})",
            r.cpu.iterations(), r.gpu.iterations(), r.cpu.best_iteration(), r.gpu.best_iteration(), r.y_rel_diff
        );
        ExitCode::from(1)
    }
}

fn run_verify(
    a: &RunArgs,
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &Params,
) -> Result<ExitCode, NsaError> {
    let report = nsa_flow::verify(y0, x0, params)?;
    let tol = verify_tolerance(params.common.precision);
    let res = &report.gpu;
    let mut summary = summary_value(res, params);
    summary["verify"] = verify_json(&report, tol, report.agrees(tol));
    write_all(outputs_of(a, res, params, summary)?)?;
    Ok(report_verify(&report, tol, a.quiet))
}
