//! `nsa-flow autograd`: differentiable NSA-Flow, optionally verified CPU against GPU.

use super::args::CsvArgs;
use super::output::{
    adapter_json, check_paths, dtype_of, pretty, render_trace_file, trace_rows_text, usage_error,
    write_all, Output,
};
use super::parse::{
    parse_adapter, parse_autograd_optimizer, parse_json_path, parse_lr_strategy, parse_matrix_path,
    parse_named, parse_plot_path, parse_positive, parse_tol, parse_trace_path, parse_unit,
    parse_weight,
};
use super::progress::Progress;
use super::run::{report_verify, verify_json, verify_tolerance};
use clap::error::ErrorKind;
use clap::Args;
use nalgebra::DMatrix;
use nsa_flow::autograd::{nsa_flow_autograd_with_callback, AutogradParams, AutogradResult};
use nsa_flow::{
    BackendChoice, Control, FidelityType, LearningRate, LrChoice, Mode, NonNeg, NsaError,
    OptimizerKind, OrthType, Precision, Retraction,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

/// The flags of `autograd`.
#[derive(Args)]
pub struct AutogradArgs {
    /// Start matrix Y0 (p×k, .npy or .csv).
    #[arg(long)]
    y0: PathBuf,
    /// Target X0 (p×k); without it the target is Y0's non-negative part and the start a 5 %
    /// perturbation of Y0 drawn with --seed.
    #[arg(long)]
    x0: Option<PathBuf>,
    /// Weight in [0, 1]: 0 = fidelity only, 1 = orthogonality only.
    #[arg(long, default_value_t = 0.5, value_parser = parse_weight)]
    w: f64,
    /// soft_polar | polar | none.
    #[arg(long, default_value = "soft_polar", value_parser = parse_named::<Retraction>)]
    retraction: Retraction,
    /// Maximum number of iterations (at least 1).
    #[arg(long, default_value_t = 500, value_parser = parse_positive)]
    max_iter: usize,
    /// Threshold of the energy-window test (corrected mode: also of the stationarity test).
    #[arg(long, default_value_t = 1e-6, value_parser = parse_tol)]
    tol: f64,
    /// hard | softplus | none (the map after the retraction).
    #[arg(long, default_value = "hard", value_parser = parse_named::<NonNeg>)]
    nonneg: NonNeg,
    /// An optimizer of the registry (see `nsa-flow optimizers`).
    #[arg(long, default_value = "asgd", value_parser = parse_autograd_optimizer)]
    optimizer: OptimizerKind,
    /// Initial learning rate: 'default' (let --lr-strategy choose) or a positive number.
    #[arg(long, default_value = "default", value_parser = parse_named::<LearningRate>)]
    lr: LearningRate,
    /// auto | armijo | armijo_aggressive | exponential | linear | adaptive | poly_decay |
    /// momentum_boost | random | entropy | bayes | grid. Reference mode: auto = 1e-3.
    #[arg(long, default_value = "auto", value_parser = parse_lr_strategy)]
    lr_strategy: LrChoice,
    /// Aggression of the learning-rate strategy, in [0, 1].
    #[arg(long, default_value_t = 0.5, value_parser = parse_unit)]
    aggression: f64,
    /// basic | scale_invariant | symmetric.
    #[arg(long, default_value = "scale_invariant", value_parser = parse_named::<FidelityType>)]
    fidelity_type: FidelityType,
    /// basic | scale_invariant.
    #[arg(long, default_value = "scale_invariant", value_parser = parse_named::<OrthType>)]
    orth_type: OrthType,
    /// Record a trace row every N iterations (at least 1).
    #[arg(long, default_value_t = 1, value_parser = parse_positive)]
    record_every: usize,
    /// Length of the energy window of the stopping test (at least 1).
    #[arg(long, default_value_t = 5, value_parser = parse_positive)]
    window_size: usize,
    /// nsa_flow's off-diagonal penalty: not part of the autograd energy (use --orth-type); an
    /// error here.
    #[arg(long, hide = true)]
    simplified: bool,
    /// nsa_flow's tangent projection: the autograd gradient is exact, so this is an error here.
    #[arg(long, hide = true)]
    project_full_gradient: bool,
    /// f64 | f32.
    #[arg(long, default_value = "f64", value_parser = parse_named::<Precision>)]
    precision: Precision,
    /// corrected | reference.
    #[arg(long, default_value = "corrected", value_parser = parse_named::<Mode>)]
    mode: Mode,
    /// auto | cpu | gpu (as for `run`).
    #[arg(long, default_value = "auto", value_parser = parse_named::<BackendChoice>)]
    backend: BackendChoice,
    /// GPU adapter: a case-insensitive substring of its name (see `nsa-flow info`).
    #[arg(long, value_parser = parse_adapter)]
    adapter: Option<String>,
    /// Run on the CPU and on the GPU, print how they compare, exit 0 when they agree (same
    /// iterations and best iteration, Y within 1e-8 relative in f64, 1e-3 in f32), 1 when not.
    /// The outputs given are written from the GPU run.
    #[arg(long, conflicts_with = "verbose")]
    verify: bool,
    /// Seed of the X0 = None perturbation and of random learning-rate strategies.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// With no --x0: the perturbed start to use instead of drawing one.
    #[arg(long)]
    start: Option<PathBuf>,
    #[command(flatten)]
    csv: CsvArgs,
    /// Output: the best Y (.npy in the run's precision, or .csv). Required unless --verify.
    #[arg(long, required_unless_present = "verify", value_parser = parse_matrix_path)]
    out: Option<PathBuf>,
    /// Trace output (.csv or .json; orthogonality is the weighted term, as the reference's
    /// autograd traces record it).
    #[arg(long, value_parser = parse_trace_path)]
    trace: Option<PathBuf>,
    /// Trace figure (.svg or .png): the fidelity and orthogonality terms of each recorded
    /// iteration on two y-axes, titled with the retraction and w (as for `run`).
    #[arg(long, value_parser = parse_plot_path)]
    plot: Option<PathBuf>,
    /// Summary output (.json).
    #[arg(long, value_parser = parse_json_path)]
    summary: Option<PathBuf>,
    /// Print one line per iteration on stderr instead of the progress bar.
    #[arg(long, short)]
    verbose: bool,
    /// Print nothing on success (no progress bar, no final line).
    #[arg(long, short, conflicts_with = "verbose")]
    quiet: bool,
}

/// `nsa-flow autograd`.
pub fn cmd_autograd(a: AutogradArgs) -> Result<ExitCode, NsaError> {
    let backend = a.backend;
    for (given, flag, why) in [
        (
            a.simplified,
            "--simplified",
            "the autograd energy's orthogonality term is chosen with --orth-type",
        ),
        (
            a.project_full_gradient,
            "--project-full-gradient",
            "the autograd gradient is the exact gradient, never projected",
        ),
    ] {
        if given {
            usage_error(
                "autograd",
                ErrorKind::ArgumentConflict,
                format!("{flag} is a flag of `run` only: {why}"),
            );
        }
    }
    if backend == BackendChoice::Cpu && a.adapter.is_some() {
        usage_error(
            "autograd",
            ErrorKind::ArgumentConflict,
            "--adapter names a GPU adapter, but --backend cpu runs on the CPU; drop one of them"
                .into(),
        );
    }
    if a.verify && backend == BackendChoice::Cpu {
        usage_error(
            "autograd",
            ErrorKind::ArgumentConflict,
            "--verify compares the CPU with the GPU, so --backend cpu makes no sense with it"
                .into(),
        );
    }
    let learning_rate = match a.lr {
        LearningRate::Default => None,
        LearningRate::Value(v) => Some(v),
    };
    let mut params = AutogradParams::default()
        .w(a.w)
        .retraction(a.retraction)
        .max_iter(a.max_iter)
        .tol(a.tol)
        .seed(a.seed)
        .nonneg(a.nonneg)
        .optimizer(a.optimizer)
        .lr_strategy(a.lr_strategy)
        .aggression(a.aggression)
        .fidelity_type(a.fidelity_type)
        .orth_type(a.orth_type)
        .record_every(a.record_every)
        .window_size(a.window_size)
        .precision(a.precision)
        .mode(a.mode)
        .backend(backend);
    params.learning_rate = learning_rate;
    params.common.gpu_adapter = a.adapter.clone();
    params.validate()?;
    check_paths(
        "autograd",
        &[
            ("--out", a.out.as_deref()),
            ("--trace", a.trace.as_deref()),
            ("--plot", a.plot.as_deref()),
            ("--summary", a.summary.as_deref()),
        ],
        &[
            ("--y0", Some(a.y0.as_path())),
            ("--x0", a.x0.as_deref()),
            ("--start", a.start.as_deref()),
        ],
    );
    let y0 = a.csv.read(&a.y0)?;
    let x0 = a.x0.as_deref().map(|p| a.csv.read(p)).transpose()?;
    if let Some(s) = &a.start {
        params.common.perturbed_start = Some(a.csv.read(s)?);
    }
    let mut exit = ExitCode::SUCCESS;
    let (res, verify) = if a.verify {
        // the CPU oracle and the GPU through the library's one comparison (as `run --verify`)
        let report = nsa_flow::verify_autograd(&y0, x0.as_ref(), &params)?;
        let tol = verify_tolerance(params.common.precision);
        exit = report_verify(&report, tol, a.quiet);
        let v = verify_json(&report, tol, report.agrees(tol));
        (report.gpu, Some(v))
    } else {
        let mut progress = Progress::new(!a.quiet && !a.verbose);
        let res = autograd_on(&params, &y0, x0.as_ref(), a.verbose, &mut progress)?;
        (res, None)
    };
    let mut summary = autograd_summary(&res, &params);
    if let Some(v) = verify {
        summary["verify"] = v;
    }
    let mut outputs = Vec::new();
    if let Some(o) = &a.out {
        outputs.push(Output::Matrix(
            o.clone(),
            res.y.clone(),
            dtype_of(params.common.precision),
        ));
    }
    if let Some(t) = &a.trace {
        outputs.push(Output::Text(t.clone(), trace_rows_text(t, &res.traces)?));
    }
    if let Some(p) = &a.plot {
        outputs.push(Output::Bytes(
            p.clone(),
            render_trace_file(p, &res.traces, res.retraction.as_str(), params.common.w)?,
        ));
    }
    if let Some(s) = &a.summary {
        outputs.push(Output::Text(s.clone(), pretty(&summary)));
    }
    write_all(outputs)?;
    if !a.quiet {
        println!(
            "{} iterations ({}), best energy {:.6e} at iteration {}, defect {:.4e}, sparsity {:.3}, lr {:.3e} ({}), {} {}, {:.3} s on {}",
            res.iterations,
            res.stop_reason,
            res.best_total_energy,
            res.best_iteration,
            nsa_flow::invariant_orthogonality_defect(&res.y),
            nsa_flow::sparsity(&res.y),
            res.learning_rate,
            res.learning_rate_source,
            res.optimizer,
            res.mode,
            res.seconds,
            res.device,
        );
    }
    Ok(exit)
}

/// One autograd run with the CLI's progress bar (and `--verbose` lines).
fn autograd_on(
    params: &AutogradParams,
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    verbose: bool,
    progress: &mut Progress,
) -> Result<AutogradResult, NsaError> {
    progress.start_run(params.common.max_iter, String::new());
    let callback = |i: &nsa_flow::IterInfo| {
        if verbose {
            eprintln!(
                "iter {:5}  total_energy {:.8e}  fidelity {:.6e}  orthogonality {:.6e}  |grad| {:.3e}",
                i.iter, i.total_energy, i.fidelity, i.orthogonality, i.stationarity
            );
        }
        progress.update(i, "orth");
        Control::Continue
    };
    let res = nsa_flow_autograd_with_callback(y0, x0, params, callback);
    progress.finish();
    res
}

fn autograd_summary(res: &AutogradResult, params: &AutogradParams) -> Value {
    json!({
        "iterations": res.iterations,
        "best_iteration": res.best_iteration,
        "final_iter": res.best_iteration,
        "best_total_energy": res.best_total_energy,
        "stop_reason": res.stop_reason.as_str(),
        "defect": nsa_flow::invariant_orthogonality_defect(&res.y),
        "sparsity": nsa_flow::sparsity(&res.y),
        "seconds": res.seconds,
        "backend": res.device.name,
        "adapter": adapter_json(res.device.adapter.as_ref()),
        "readbacks": res.device.readbacks,
        "mode": res.mode.as_str(),
        "precision": res.precision.as_str(),
        "p": res.y.nrows(),
        "k": res.y.ncols(),
        "w": params.common.w,
        "nonneg": params.nonneg.as_str(),
        "gradient_evaluations": res.gradient_evaluations,
        "final_grad_norm": res.final_grad_norm,
        "scale": res.scale,
        "fid_eta": res.fid_eta,
        "c_orth": res.c_orth,
        "settings": {
            "fidelity_type": res.fidelity_type.to_string(),
            "orth_type": res.orth_type.to_string(),
            "retraction": res.retraction.as_str(),
            "optimizer": res.optimizer.as_str(),
            "learning_rate": res.learning_rate,
            "learning_rate_source": res.learning_rate_source,
            "lr_strategy": params.lr_strategy.as_str(),
            "aggression": params.aggression,
        },
    })
}
