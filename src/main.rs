//! `nsa-flow`: the command-line tool.
//!
//! Exit codes: 0 success, 1 bad input or failed computation (message on stderr, no output
//! file written) or, for `run --verify` and `autograd --verify`, CPU and GPU runs that
//! disagree, 2 command-line usage error (`nsa-flow --help` says the same).

#[path = "cli/fit.rs"]
mod cli_fit;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use nalgebra::DMatrix;
use nsa_flow::autograd::{solve_autograd, AutogradParams, AutogradResult};
use nsa_flow::backend::cpu::CpuBackend;
use nsa_flow::backend::gpu::GpuBackend;
use nsa_flow::backend::Backend;
use nsa_flow::gpu::{list_adapters, AdapterSummary};
use nsa_flow::io::{read_matrix_with, CsvHeader, NpyDtype, OutputSet, ReadOptions};
use nsa_flow::{
    BackendChoice, Control, FidelityType, InvSqrtMethod, LearningRate, Mode, NonNeg, NsaError,
    NsaResult, OptimizerKind, OrthType, Params, Precision, RetractOptions, Retraction,
    VerifyReport,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// The exit codes, shown at the end of every --help.
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure: bad input, a failed computation, or (run/autograd --verify) CPU and GPU runs that
     disagree; the message is on stderr and no output file is written (--verify excepted)
  2  usage error: an unknown or malformed flag or value, or conflicting flags";

#[derive(Parser)]
#[command(
    name = "nsa-flow",
    version,
    about = "NSA-Flow: non-negative, nearly orthogonal approximation of a p×k matrix",
    long_about = "NSA-Flow: non-negative, nearly orthogonal approximation of a p×k matrix.\n\n\
        Finds a non-negative Y close to a target X0 whose columns are nearly orthogonal; the \
        weight w in [0, 1] trades fidelity (w = 0) against orthogonality (w = 1). Runs on the \
        CPU or on a GPU (wgpu: Vulkan, Metal, DX12). `nsa-flow <command> --help` shows a \
        command's flags and examples.",
    after_help = EXIT_CODES,
    after_long_help = concat!(
        "Examples:\n",
        "  nsa-flow run --y0 Y0.npy --x0 X0.npy --w 0.5 --out Y.npy --plot trace.svg\n",
        "  nsa-flow sweep --y0 Y0.npy --ws 0.1,0.5,0.9 --out-dir sweep/\n",
        "  nsa-flow autograd --y0 Y0.npy --w 0.5 --optimizer adam --out Y.npy\n",
        "  nsa-flow info\n\n",
        "Exit codes:\n",
        "  0  success\n",
        "  1  failure: bad input, a failed computation, or (run/autograd --verify) CPU and GPU runs that\n",
        "     disagree; the message is on stderr and no output file is written (--verify excepted)\n",
        "  2  usage error: an unknown or malformed flag or value, or conflicting flags"
    )
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run NSA-Flow from Y0 towards X0 and write the best Y.
    ///
    /// On a terminal, a run that lasts over a second shows a progress bar on stderr
    /// (iteration, energy, orthogonality defect, iterations per second); --verbose prints one
    /// plain line per iteration instead, --quiet nothing. The final line goes to stdout.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow run --y0 Y0.npy --x0 X0.npy --w 0.8 --out Y.npy --summary s.json\n",
            "  nsa-flow run --y0 Y0.npy --w 0.5 --out Y.csv --trace t.csv --plot trace.svg\n",
            "  nsa-flow run --y0 Y0.npy --x0 X0.npy --backend gpu --precision f32 --out Y.npy --plot trace.png\n",
            "  nsa-flow run --y0 Y0.npy --x0 X0.npy --mode reference --optimizer sgdp --lr 1e-2 --max-iter 50 --out Y.npy\n\n",
            "Exit codes: 0 success; 1 failure (message on stderr, nothing written) or, with --verify,\n",
            "CPU and GPU disagree; 2 usage error."
        )
    )]
    Run(Box<RunArgs>),
    /// Run the flow at several weights w on one input and tabulate and plot the results: the
    /// figure to choose w with.
    ///
    /// Each w runs exactly as `nsa-flow run --w <w>` with the same flags would (its Y is
    /// identical), and all of them together: in parallel across cores on the CPU, as one
    /// batch on a GPU (every w a problem of the same launches, one readback per round for all).
    /// With --verbose the weights run one after another, to print every iteration. Writes into
    /// --out-dir:
    ///
    /// - Y_w<w>.npy: the best Y of each w, in the run's precision; <w> is the shortest decimal
    ///   that reads back as the same number (Y_w0.5.npy, Y_w0.25.npy, Y_w1.npy).
    ///
    /// - sweep.csv: one row per w, in the order given, with the columns w, iterations,
    ///   best_total_energy, fidelity, defect, sparsity.
    ///
    /// - sweep.svg: sparsity and fidelity (left axis) and defect (right axis, log scale)
    ///   against w.
    ///
    /// The columns: iterations run; best_total_energy, the energy of Y in the mode's own
    /// scaling (nan when a reference run accepted no step); fidelity, the relative fidelity
    /// error ‖Y − X‖_F / ‖X‖_F against the target X the flow fitted (X0 after the
    /// non-negativity projection, or Y0's non-negative part without --x0), so 0 is a perfect
    /// fit; defect, the invariant orthogonality defect of Y (0 = orthogonal columns); sparsity,
    /// the fraction of entries of Y that are exactly 0.
    ///
    /// Nothing is written unless every w succeeds.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow sweep --y0 Y0.npy --x0 X0.npy --ws 0.1,0.5,0.9 --out-dir sweep/\n",
            "  nsa-flow sweep --y0 loadings.npy --ws 0.05,0.25,0.5,0.75,0.95 --backend gpu --out-dir golub-sweep/\n\n",
            "Exit codes: 0 success; 1 failure (message on stderr, nothing written); 2 usage error\n",
            "(including a bad --ws: empty, not a number, outside [0, 1], or repeated)."
        )
    )]
    Sweep(Box<SweepArgs>),
    /// Solve B problems of the same shape together (3-D .npy [B, p, k] in and out), each with
    /// its own start, target and weight; on the CPU in parallel across cores, each result
    /// bit-identical to `nsa-flow run` on that problem.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow batch --y0 Y0s.npy --x0 X0s.npy --ws 0.5 --out Ys.npy --summary s.json\n",
            "  nsa-flow batch --y0 Y0s.npy --ws 0.1,0.5,0.9 --out Ys.npy     # one w per problem\n\n",
            "Exit codes: 0 success; 1 failure (message on stderr, nothing written); 2 usage error\n"
        )
    )]
    Batch(Box<BatchArgs>),
    /// Print the invariant orthogonality defect of a matrix.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow defect Y.npy\n",
            "  nsa-flow defect Y.npy --backend gpu --precision f32\n\n",
            "Exit codes: 0 success; 1 failure (message on stderr); 2 usage error."
        )
    )]
    Defect {
        /// The matrix (.npy or .csv).
        input: PathBuf,
        /// cpu | gpu | auto.
        #[arg(long, default_value = "cpu", value_parser = parse_named::<BackendChoice>)]
        backend: BackendChoice,
        /// f64 | f32 (the device's arithmetic; the CPU path always uses f64 here).
        #[arg(long, default_value = "f64", value_parser = parse_named::<Precision>)]
        precision: Precision,
        #[command(flatten)]
        csv: CsvArgs,
    },
    /// Time the flow on random data: seconds per iteration on the CPU or a GPU, against the
    /// memory-bandwidth bound.
    ///
    /// A perfect iteration reads Y and X0 and writes Y once: 3·p·k·(4 or 8) bytes. The bound is
    /// that traffic at the bandwidth a plain copy achieves on the same device (a copy kernel of
    /// min(256 MiB, max_storage_buffer_binding_size) on a GPU; a parallel copy of a 256 MiB
    /// buffer on the host), and the ratio measured/bound says how far an iteration is from it.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow bench --p 100000 --k 32 --backend gpu --precision f32 --iters 20\n",
            "  nsa-flow bench --p 5000 --k 20 --mode corrected --json\n\n",
            "Exit codes: 0 success; 1 failure (message on stderr); 2 usage error."
        )
    )]
    Bench(BenchArgs),
    /// List the GPU adapters (best first), their limits and features, and which one
    /// `--backend auto` and `--backend gpu` would use.
    ///
    /// Always exits 0: it is informational, also when there is no adapter.
    #[command(after_long_help = concat!(
        "Examples:\n",
        "  nsa-flow info\n",
        "  nsa-flow info --json\n",
        "  NSA_FLOW_ADAPTER=llvmpipe nsa-flow info\n\n",
        "Exit codes: 0 always (2 for a usage error)."
    ))]
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Differentiable NSA-Flow (nsa_flow_autograd): minimise E(nonneg(R_w(Z))) over Z with an
    /// optimizer, the gradient by the exact backward through the retraction.
    ///
    /// Progress, --verbose and --quiet behave as for `run`.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow autograd --y0 Y0.npy --x0 X0.npy --w 0.5 --out Y.npy\n",
            "  nsa-flow autograd --y0 Y0.npy --x0 X0.npy --w 0.5 --optimizer adam --lr 1e-2 \\\n",
            "      --fidelity-type basic --orth-type scale_invariant --out Y.npy --trace t.csv --plot t.svg\n",
            "  nsa-flow autograd --y0 Y0.npy --w 0.9 --lr-strategy armijo --backend gpu --out Y.npy\n\n",
            "Exit codes: 0 success; 1 failure (message on stderr, nothing written) or, with --verify,\n",
            "CPU and GPU disagree; 2 usage error."
        )
    )]
    Autograd(Box<AutogradArgs>),
    /// Apply the retraction (nsa_flow_retract_auto) once.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow retract Y.npy --w 0.5 --out R.npy\n",
            "  nsa-flow retract Y.npy --w 0.5 --inv-sqrt ns --ns-iter 10 --out R.npy\n",
            "  nsa-flow retract Y.npy --retraction polar --mode corrected --backend gpu --out R.csv\n\n",
            "Exit codes: 0 success; 1 failure (message on stderr, nothing written); 2 usage error."
        )
    )]
    Retract(RetractArgs),
    /// Print the optimizer registry (the reference's get_torch_optimizer names), one name per
    /// line.
    ///
    /// Every name but padam (which the reference cannot construct) is accepted by
    /// `--optimizer`, as is "fast", the default plain gradient step of `run`.
    #[command(after_long_help = concat!(
        "Examples:\n",
        "  nsa-flow optimizers\n",
        "  for o in $(nsa-flow optimizers | grep -v padam); do\n",
        "      nsa-flow run --y0 Y0.npy --optimizer \"$o\" --out \"Y_$o.npy\" --quiet; done\n\n",
        "Exit codes: 0 always (2 for a usage error)."
    ))]
    Optimizers,
    /// Fit with the solvers of nsa_flow 3.5: a calibration-free energy
    /// (1 − w)·fidelity + w·orthogonality minimised over V ≥ 0 by projected L-BFGS-B (or SPG)
    /// until the scale-invariant certificate ‖P(V − ‖V‖²∇E) − V‖/‖V‖ ≤ --tol.
    ///
    /// Modes: data (a non-negative basis V reconstructing X: ‖X − XVVᵀ‖²/‖X‖², matrix-free
    /// when p > n), signed (V = V⁺ − V⁻ with near-disjoint non-negative parts), anchored (V
    /// close to a target X0, entrywise or, for a signed target, sign-blind through
    /// range(X0)). Runs on the CPU in f64. The final line goes to stdout; --summary holds
    /// certificate, stop_reason, n_grad and the basis_report.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow fit --data X.npy --k 5 --w 0.5 --out V.npy --summary s.json\n",
            "  nsa-flow fit --data Xc.npy --k 5 --mode signed --consolidate --out V.npy --parts W.npy\n",
            "  nsa-flow fit --data X.npy --k 5 --orth Cg --sparseness 0.8 --init relax --out V.npy\n",
            "  nsa-flow fit --target loadings.npy --w 0.5 --out Y.npy\n\n",
            "Exit codes: 0 success (whatever the stop reason: see the summary's certificate); 1 failure\n",
            "(message on stderr, nothing written); 2 usage error."
        )
    )]
    Fit(Box<cli_fit::FitArgs>),
}

/// The flags `run` and `sweep` share: the input and every setting of the flow but `w`.
#[derive(Args)]
struct FlowArgs {
    /// Start matrix Y0 (p×k, .npy or .csv).
    #[arg(long)]
    y0: PathBuf,
    /// Target X0 (p×k); without it the target is Y0's non-negative part and the start a 5 %
    /// perturbation of Y0 drawn with --seed.
    #[arg(long)]
    x0: Option<PathBuf>,
    /// soft_polar | polar | none.
    #[arg(long, default_value = "soft_polar", value_parser = parse_named::<Retraction>)]
    retraction: Retraction,
    /// Maximum number of iterations (at least 1).
    #[arg(long, default_value_t = 500, value_parser = parse_positive)]
    max_iter: usize,
    /// Convergence tolerance (finite, ≥ 0).
    #[arg(long, default_value_t = 1e-5, value_parser = parse_tol)]
    tol: f64,
    /// hard | softplus | none.
    #[arg(long, default_value = "hard", value_parser = parse_named::<NonNeg>)]
    nonneg: NonNeg,
    /// fast (the plain gradient step) or a registry name: adabound, adagrad, adam, adamax,
    /// adamp, adamw, asgd, lars, lbfgs, lookahead, nadam, pid, qhadam, qhm, radam, rmsprop,
    /// rprop, sgd, sgd_nesterov, sgdp, yogi (see `nsa-flow optimizers`; padam is an error).
    #[arg(long, default_value = "fast", value_parser = parse_named::<OptimizerKind>)]
    optimizer: OptimizerKind,
    /// Initial learning rate: 'default' or a positive number.
    #[arg(long, default_value = "default", value_parser = parse_named::<LearningRate>)]
    lr: LearningRate,
    /// Record a trace row every N iterations (at least 1).
    #[arg(long, default_value_t = 1, value_parser = parse_positive)]
    record_every: usize,
    /// Length of the energy window of the plateau test (at least 1).
    #[arg(long, default_value_t = 5, value_parser = parse_positive)]
    window_size: usize,
    /// Use the off-diagonal Gram penalty instead of the invariant defect.
    #[arg(long)]
    simplified: bool,
    /// Project the whole gradient onto the tangent space.
    #[arg(long)]
    project_full_gradient: bool,
    /// f64 | f32.
    #[arg(long, default_value = "f64", value_parser = parse_named::<Precision>)]
    precision: Precision,
    /// corrected | reference.
    #[arg(long, default_value = "corrected", value_parser = parse_named::<Mode>)]
    mode: Mode,
    /// auto | cpu | gpu. auto: a hardware GPU that computes in --precision when present, else
    /// the CPU; gpu: any adapter, software ones included (an error without one).
    #[arg(long, default_value = "auto", value_parser = parse_named::<BackendChoice>)]
    backend: BackendChoice,
    /// GPU adapter: a case-insensitive substring of its name (see `nsa-flow info`). A usage
    /// error with --backend cpu.
    #[arg(long, value_parser = parse_adapter)]
    adapter: Option<String>,
    /// Seed of the X0 = None perturbation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// With no --x0: the perturbed start to use instead of drawing one (to replay a
    /// reference run).
    #[arg(long)]
    start: Option<PathBuf>,
    #[command(flatten)]
    csv: CsvArgs,
}

/// How .csv inputs are read.
#[derive(Args)]
struct CsvArgs {
    /// Whether the first row of a .csv input is a header: auto (only when none of its cells
    /// is a number; a row with some numbers and a bad cell is an error), yes (always skip
    /// it), no (it is data).
    #[arg(long, default_value = "auto", value_parser = parse_named::<CsvHeader>)]
    csv_header: CsvHeader,
}

impl CsvArgs {
    fn read(&self, path: &Path) -> Result<DMatrix<f64>, NsaError> {
        read_matrix_with(
            path,
            &ReadOptions {
                csv_header: self.csv_header,
            },
        )
    }
}

#[derive(Args)]
struct RunArgs {
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
    solver: Option<nsa_flow::fit::FitOptimizer>,
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

#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    flow: FlowArgs,
    /// The weights to run, comma-separated, each in [0, 1], no duplicates: e.g.
    /// 0.1,0.25,0.5,0.75,0.9.
    #[arg(long, value_parser = parse_ws, allow_hyphen_values = true)]
    ws: WeightList,
    /// Output folder (created if missing): Y_w<w>.npy per w, sweep.csv and sweep.svg.
    #[arg(long)]
    out_dir: PathBuf,
    /// Print one line per iteration on stderr, prefixed with w, instead of the progress bar.
    #[arg(long, short)]
    verbose: bool,
    /// Print nothing on success.
    #[arg(long, short, conflicts_with = "verbose")]
    quiet: bool,
}

#[derive(Args)]
struct BatchArgs {
    #[command(flatten)]
    flow: FlowArgs,
    /// The weights: one for every problem, or a single one for all (default 0.5).
    #[arg(long, value_parser = parse_batch_ws, default_value = "0.5")]
    ws: BatchWeights,
    /// Output: the best Y of each problem, a 3-D .npy [B, p, k] in the run's precision.
    #[arg(long, value_parser = parse_npy_path)]
    out: PathBuf,
    /// Summary (.json): one entry per problem (w, iterations, best_iteration,
    /// best_total_energy, stop_reason, defect, sparsity) and the batch's backend and seconds.
    #[arg(long, value_parser = parse_json_path)]
    summary: Option<PathBuf>,
    /// Print nothing on success.
    #[arg(long, short)]
    quiet: bool,
}

/// The `--ws` of `batch`: finite, in [0, 1], at least one (repeats allowed: problems differ).
#[derive(Clone, Debug)]
struct BatchWeights(Vec<f64>);

fn parse_batch_ws(s: &str) -> Result<BatchWeights, String> {
    s.split(',')
        .map(|item| {
            let t = item.trim();
            let w: f64 = t.parse().map_err(|_| format!("'{t}' is not a number"))?;
            if !w.is_finite() || !(0.0..=1.0).contains(&w) {
                return Err(format!("w = {t} is outside [0, 1]"));
            }
            Ok(w)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(BatchWeights)
}

fn cmd_batch(a: BatchArgs) -> Result<ExitCode, NsaError> {
    if a.flow.start.is_some() {
        usage_error(
            "batch",
            ErrorKind::ArgumentConflict,
            "--start replays one perturbed start; a batch has one start per problem (--y0)".into(),
        );
    }
    let params = flow_params(&a.flow, a.ws.0[0], "batch")?;
    check_paths(
        "batch",
        &[
            ("--out", Some(a.out.as_path())),
            ("--summary", a.summary.as_deref()),
        ],
        &flow_inputs(&a.flow),
    );
    let y0s = nsa_flow::io::read_batch(&a.flow.y0)?;
    let x0s = a
        .flow
        .x0
        .as_ref()
        .map(nsa_flow::io::read_batch)
        .transpose()?;
    let b = y0s.len();
    if let Some(x) = &x0s {
        if x.len() != b {
            return Err(NsaError::InvalidParameter {
                name: "--x0",
                reason: format!("{} targets for {b} starts", x.len()),
            });
        }
    }
    let ws = match a.ws.0.len() {
        1 => vec![a.ws.0[0]; b],
        n if n == b => a.ws.0.clone(),
        n => {
            return Err(NsaError::InvalidParameter {
                name: "--ws",
                reason: format!("{n} weights for {b} problems: give one, or one per problem"),
            })
        }
    };
    let problems: Vec<nsa_flow::batch::BatchProblem> = y0s
        .into_iter()
        .enumerate()
        .map(|(i, y0)| nsa_flow::batch::BatchProblem {
            y0,
            x0: x0s.as_ref().map(|x| x[i].clone()),
            w: ws[i],
        })
        .collect();
    let res = nsa_flow::batch::nsa_flow_batch(&problems, &params)?;
    let ys: Vec<DMatrix<f64>> = res.results.iter().map(|r| r.y.clone()).collect();
    let mut outputs = Vec::new();
    if let Some(p) = &a.summary {
        let entries: Vec<Value> = res
            .results
            .iter()
            .zip(&ws)
            .map(|(r, w)| {
                json!({
                    "w": w,
                    "iterations": r.iterations,
                    "best_iteration": r.best_iteration,
                    "best_total_energy": r.best_total_energy,
                    "stop_reason": r.stop_reason.as_str(),
                    "defect": r.defect(),
                    "sparsity": r.sparsity(),
                })
            })
            .collect();
        let summary = json!({
            "problems": entries,
            "backend": res.backend,
            "seconds": res.seconds,
            "rounds": res.rounds,
            "mode": params.mode.as_str(),
            "precision": params.precision.as_str(),
        });
        outputs.push(Output::Text(p.clone(), pretty(&summary)));
    }
    for y in &ys {
        nsa_flow::validate_matrix("the result", y)?;
    }
    outputs.push(Output::Bytes(
        a.out.clone(),
        nsa_flow::io::batch_bytes(&a.out, &ys, dtype_of(params.precision))?,
    ));
    write_all(outputs)?;
    if !a.quiet {
        println!(
            "{b} problems of {}×{} in {:.3} s on {}{}",
            problems[0].y0.nrows(),
            problems[0].y0.ncols(),
            res.seconds,
            res.backend,
            res.rounds.map_or(String::new(), |r| format!(
                ", {r} readbacks for the whole batch"
            ))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--ws` of `sweep`: finite, in [0, 1], distinct, at least one.
#[derive(Clone, Debug)]
struct WeightList(Vec<f64>);

fn parse_ws(s: &str) -> Result<WeightList, String> {
    let mut ws: Vec<f64> = Vec::new();
    for item in s.split(',') {
        let t = item.trim();
        if t.is_empty() {
            return Err(format!(
                "'{s}' has an empty entry: give comma-separated weights, e.g. 0.1,0.5,0.9"
            ));
        }
        let w: f64 = t.parse().map_err(|_| format!("'{t}' is not a number"))?;
        if !w.is_finite() || !(0.0..=1.0).contains(&w) {
            return Err(format!("w = {t} is outside [0, 1]"));
        }
        if ws.contains(&w) {
            return Err(format!("w = {t} is given twice"));
        }
        ws.push(w);
    }
    Ok(WeightList(ws))
}

#[derive(Args)]
struct AutogradArgs {
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
    optimizer: String,
    /// Initial learning rate: 'default' (let --lr-strategy choose) or a positive number.
    #[arg(long, default_value = "default", value_parser = parse_named::<LearningRate>)]
    lr: LearningRate,
    /// auto | armijo | armijo_aggressive | exponential | linear | adaptive | poly_decay |
    /// momentum_boost | random | entropy | bayes | grid. Reference mode: auto = 1e-3.
    #[arg(long, default_value = "auto", value_parser = parse_lr_strategy)]
    lr_strategy: String,
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

#[derive(Args)]
struct BenchArgs {
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

/// The modes `bench --mode` runs.
#[derive(Clone, Debug)]
struct BenchModes(Vec<Mode>);

fn parse_bench_modes(s: &str) -> Result<BenchModes, NsaError> {
    if s == "both" {
        Ok(BenchModes(vec![Mode::Reference, Mode::Corrected]))
    } else {
        s.parse()
            .map(|m| BenchModes(vec![m]))
            .map_err(|_| NsaError::UnknownName {
                kind: "mode",
                name: s.to_string(),
                expected: "corrected, reference, both".into(),
            })
    }
}

/// `run --solver`: a solver of nsa_flow 3.5.
fn parse_run_solver(s: &str) -> Result<nsa_flow::fit::FitOptimizer, NsaError> {
    nsa_flow::fit::FitOptimizer::parse(s)
}

/// The library's name parsing as a clap value parser: a bad name is a usage error (exit 2)
/// carrying the library's typed message.
fn parse_named<T: std::str::FromStr<Err = NsaError>>(s: &str) -> Result<T, NsaError> {
    s.parse()
}

/// `w`: a finite number in [0, 1].
fn parse_weight(s: &str) -> Result<f64, NsaError> {
    let w: f64 = parse_number("w", s)?;
    if !(w.is_finite() && (0.0..=1.0).contains(&w)) {
        return Err(NsaError::InvalidWeight(w));
    }
    Ok(w)
}

/// A number in [0, 1] (aggression).
fn parse_unit(s: &str) -> Result<f64, NsaError> {
    let v: f64 = parse_number("the value", s)?;
    if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
        return Err(NsaError::InvalidParameter {
            name: "the value",
            reason: format!("{v:?} is outside [0, 1]"),
        });
    }
    Ok(v)
}

/// A tolerance: finite and ≥ 0.
fn parse_tol(s: &str) -> Result<f64, NsaError> {
    let v: f64 = parse_number("tol", s)?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(NsaError::InvalidParameter {
            name: "tol",
            reason: format!("{v:?} is not a finite non-negative number"),
        });
    }
    Ok(v)
}

/// A count of at least 1.
fn parse_positive(s: &str) -> Result<usize, NsaError> {
    match s.parse::<usize>() {
        Ok(0) => Err(NsaError::InvalidParameter {
            name: "the count",
            reason: "must be at least 1".into(),
        }),
        Ok(n) => Ok(n),
        Err(e) => Err(NsaError::InvalidParameter {
            name: "the count",
            reason: format!("{:?} is not a whole number below 2^64 ({e})", short(s)),
        }),
    }
}

fn parse_number(name: &'static str, s: &str) -> Result<f64, NsaError> {
    s.trim()
        .parse::<f64>()
        .map_err(|_| NsaError::InvalidParameter {
            name,
            reason: format!("{:?} is not a number", short(s)),
        })
}

/// At most 40 characters of a user's value, for messages.
fn short(s: &str) -> String {
    if s.chars().count() <= 40 {
        s.to_string()
    } else {
        s.chars().take(40).collect::<String>() + "…"
    }
}

fn parse_path_with(s: &str, exts: &[&str]) -> Result<PathBuf, NsaError> {
    let p = PathBuf::from(s);
    if exts.iter().any(|e| ext_is(&p, e)) {
        return Ok(p);
    }
    Err(NsaError::InvalidParameter {
        name: "the path",
        reason: format!(
            "{}: the extension must be one of .{}",
            p.display(),
            exts.join(", .")
        ),
    })
}

fn parse_matrix_path(s: &str) -> Result<PathBuf, NsaError> {
    parse_path_with(s, &["npy", "csv"])
}

fn parse_npy_path(s: &str) -> Result<PathBuf, NsaError> {
    parse_path_with(s, &["npy"])
}

fn parse_trace_path(s: &str) -> Result<PathBuf, NsaError> {
    parse_path_with(s, &["csv", "json"])
}

fn parse_plot_path(s: &str) -> Result<PathBuf, NsaError> {
    parse_path_with(s, &["svg", "png"])
}

fn parse_json_path(s: &str) -> Result<PathBuf, NsaError> {
    parse_path_with(s, &["json"])
}

/// An optimizer name the autograd solver accepts (its own validation decides).
fn parse_autograd_optimizer(s: &str) -> Result<String, NsaError> {
    AutogradParams {
        optimizer: s.to_string(),
        ..AutogradParams::default()
    }
    .validate()
    .map(|()| s.to_string())
}

/// An adapter name fragment: not empty (an empty one would match every adapter).
fn parse_adapter(s: &str) -> Result<String, NsaError> {
    if s.trim().is_empty() {
        return Err(NsaError::InvalidParameter {
            name: "--adapter",
            reason: "an empty name matches every adapter; give part of one (see `nsa-flow info`)"
                .into(),
        });
    }
    Ok(s.to_string())
}

/// A learning-rate strategy name (or auto).
fn parse_lr_strategy(s: &str) -> Result<String, NsaError> {
    AutogradParams {
        lr_strategy: s.to_string(),
        ..AutogradParams::default()
    }
    .validate()
    .map(|()| s.to_string())
}

/// Refuses, as a usage error of `sub`, outputs that name one file or that name an input.
fn check_paths(sub: &str, outputs: &[(&str, Option<&Path>)], inputs: &[(&str, Option<&Path>)]) {
    let outs: Vec<(&str, &Path)> = outputs
        .iter()
        .filter_map(|(f, p)| p.map(|p| (*f, p)))
        .collect();
    let ins: Vec<(&str, &Path)> = inputs
        .iter()
        .filter_map(|(f, p)| p.map(|p| (*f, p)))
        .collect();
    if let Err(same) = nsa_flow::io::check_distinct(&outs, &ins) {
        usage_error(sub, ErrorKind::ArgumentConflict, same.to_string());
    }
}

/// Reports a usage error of `subcommand` the way clap does (usage line, exit code 2).
fn usage_error(subcommand: &str, kind: ErrorKind, message: String) -> ! {
    let mut cmd = Cli::command();
    cmd.build();
    match cmd.find_subcommand_mut(subcommand) {
        Some(sub) => sub.error(kind, message).exit(),
        None => cmd.error(kind, message).exit(),
    }
}

#[derive(Args)]
struct RetractArgs {
    /// The matrix to retract (.npy or .csv).
    input: PathBuf,
    /// Blend weight in [0, 1] (0 returns the input, 1 the polar factor).
    #[arg(long, default_value_t = 1.0, value_parser = parse_weight)]
    w: f64,
    /// soft_polar | polar | none.
    #[arg(long, default_value = "soft_polar", value_parser = parse_named::<Retraction>)]
    retraction: Retraction,
    /// auto | eig | ns | diag.
    #[arg(long, default_value = "auto", value_parser = parse_named::<InvSqrtMethod>)]
    inv_sqrt: InvSqrtMethod,
    /// Newton–Schulz iterations (reference: exactly this many, default 4; corrected: the cap,
    /// default 100).
    #[arg(long)]
    ns_iter: Option<usize>,
    /// reference (nsa_flow_retract_auto exactly) | corrected (scale-invariant blend,
    /// accurate Newton–Schulz).
    #[arg(long, default_value = "reference", value_parser = parse_named::<Mode>)]
    mode: Mode,
    /// f64 | f32.
    #[arg(long, default_value = "f64", value_parser = parse_named::<Precision>)]
    precision: Precision,
    /// cpu | gpu | auto (where the retraction runs; the result is the same to working
    /// precision).
    #[arg(long, default_value = "cpu", value_parser = parse_named::<BackendChoice>)]
    backend: BackendChoice,
    /// Output (.npy or .csv).
    #[arg(long, value_parser = parse_matrix_path)]
    out: PathBuf,
    #[command(flatten)]
    csv: CsvArgs,
}

fn dtype_of(p: Precision) -> NpyDtype {
    match p {
        Precision::F64 => NpyDtype::F64,
        Precision::F32 => NpyDtype::F32,
    }
}

/// Outputs are produced in memory, then written together ([`OutputSet`]): every file lands,
/// or none changes.
enum Output {
    Matrix(PathBuf, DMatrix<f64>, NpyDtype),
    Text(PathBuf, String),
    /// An encoded file (a figure).
    Bytes(PathBuf, Vec<u8>),
}

fn write_all(outputs: Vec<Output>) -> Result<(), NsaError> {
    let mut set = OutputSet::new();
    for o in outputs {
        match o {
            Output::Matrix(p, m, d) => {
                // a matrix with NaN/Inf is never an answer (the solvers refuse it already)
                nsa_flow::validate_matrix("the result", &m)?;
                let bytes = nsa_flow::io::matrix_bytes(&p, &m, d)?;
                set.add(p, bytes)?;
            }
            Output::Text(p, t) => set.add(p, t.into_bytes())?,
            Output::Bytes(p, b) => set.add(p, b)?,
        }
    }
    set.commit()
}

fn ext_is(p: &Path, e: &str) -> bool {
    p.extension()
        .and_then(|x| x.to_str())
        .is_some_and(|x| x.eq_ignore_ascii_case(e))
}

fn trace_text(path: &Path, res: &NsaResult) -> Result<String, NsaError> {
    trace_rows_text(path, &res.traces)
}

fn trace_rows_text(path: &Path, traces: &[nsa_flow::TraceRow]) -> Result<String, NsaError> {
    if ext_is(path, "json") {
        let rows: Vec<_> = traces
            .iter()
            .map(|t| json!({"iter": t.iter, "time": t.time, "fidelity": t.fidelity, "orthogonality": t.orthogonality, "total_energy": t.total_energy}))
            .collect();
        Ok(serde_json::to_string_pretty(&rows).expect("serialisable") + "\n")
    } else if ext_is(path, "csv") {
        let mut s = String::from("iter,time,fidelity,orthogonality,total_energy\n");
        for t in traces {
            s.push_str(&format!(
                "{},{:?},{:?},{:?},{:?}\n",
                t.iter, t.time, t.fidelity, t.orthogonality, t.total_energy
            ));
        }
        Ok(s)
    } else {
        Err(NsaError::InvalidParameter {
            name: "--trace",
            reason: format!("{}: the extension must be .csv or .json", path.display()),
        })
    }
}

/// The trace figure for `path` (its extension picks SVG or PNG), in memory.
fn render_trace_file(
    path: &Path,
    traces: &[nsa_flow::TraceRow],
    retraction: &str,
    w: f64,
) -> Result<Vec<u8>, NsaError> {
    let format = nsa_flow::plot::ImageFormat::from_path(path)?;
    nsa_flow::plot::render_trace(traces, retraction, w, format)
}

/// The adapter a GPU run used, for summaries: name, graphics API, device type, software or not.
fn adapter_json(a: Option<&AdapterSummary>) -> Value {
    match a {
        Some(a) => json!({
            "name": a.name,
            "api": a.backend,
            "device_type": a.device_type,
            "software": a.is_software,
        }),
        None => Value::Null,
    }
}

fn summary_value(res: &NsaResult, params: &Params, adapter: Option<&AdapterSummary>) -> Value {
    json!({
        "iterations": res.iterations,
        "final_iter": res.final_iter,
        "best_iteration": res.best_iteration,
        "best_total_energy": res.best_total_energy,
        "stop_reason": res.stop_reason.as_str(),
        "defect": res.defect(),
        "sparsity": res.sparsity(),
        "seconds": res.seconds,
        "backend": res.backend,
        "adapter": adapter_json(adapter),
        "readbacks": res.readbacks,
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
        "w": params.w,
        "retraction": params.retraction.as_str(),
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

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("serialisable") + "\n"
}

/// The Y tolerance of `run --verify`: 1e-8 relative in f64, 1e-3 in f32.
fn verify_tolerance(p: Precision) -> f64 {
    match p {
        Precision::F64 => 1e-8,
        Precision::F32 => 1e-3,
    }
}

/// The adapter a finished GPU run used, recovered from its backend name
/// (`gpu-<precision> (<adapter label>)`) among the listed adapters.
fn adapter_of_run(res: &NsaResult) -> Option<AdapterSummary> {
    list_adapters()
        .into_iter()
        .find(|a| res.backend == format!("gpu-{} ({})", res.precision, a.label()))
}

/// The flow's parameters from the shared flags and `w`; `sub` names the subcommand for
/// usage errors.
fn flow_params(f: &FlowArgs, w: f64, sub: &str) -> Result<Params, NsaError> {
    let backend = f.backend;
    if backend == BackendChoice::Cpu && f.adapter.is_some() {
        usage_error(
            sub,
            ErrorKind::ArgumentConflict,
            "--adapter names a GPU adapter, but --backend cpu runs on the CPU; drop one of them"
                .into(),
        );
    }
    let params = Params {
        w,
        retraction: f.retraction,
        max_iter: f.max_iter,
        tol: f.tol,
        seed: f.seed,
        nonneg: f.nonneg,
        optimizer: f.optimizer,
        learning_rate: f.lr,
        record_every: f.record_every,
        window_size: f.window_size,
        simplified: f.simplified,
        project_full_gradient: f.project_full_gradient,
        precision: f.precision,
        mode: f.mode,
        backend,
        gpu_adapter: f.adapter.clone(),
        perturbed_start: None,
    };
    params.validate()?;
    Ok(params)
}

/// The input files of the shared flags, for the same-file check.
fn flow_inputs(f: &FlowArgs) -> [(&'static str, Option<&Path>); 3] {
    [
        ("--y0", Some(f.y0.as_path())),
        ("--x0", f.x0.as_deref()),
        ("--start", f.start.as_deref()),
    ]
}

/// Reads Y0, X0 and the replayed start named by the shared flags.
fn read_inputs(
    f: &FlowArgs,
    params: &mut Params,
) -> Result<(DMatrix<f64>, Option<DMatrix<f64>>), NsaError> {
    let y0 = f.csv.read(&f.y0)?;
    let x0 = f.x0.as_deref().map(|p| f.csv.read(p)).transpose()?;
    if let Some(s) = &f.start {
        params.perturbed_start = Some(f.csv.read(s)?);
    }
    Ok((y0, x0))
}

/// One flow run, as `nsa_flow_with_callback` does it but keeping hold of the adapter: on the
/// GPU that `params` selects (its context is the process-wide shared one, so a sweep opens
/// the device once), else on the CPU.
fn solve_flow<F: FnMut(&nsa_flow::IterInfo) -> Control>(
    params: &Params,
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    callback: &mut F,
) -> Result<(NsaResult, Option<AdapterSummary>), NsaError> {
    Ok(match nsa_flow::flow::gpu_backend_for(params)? {
        Some(mut be) => {
            let adapter = be.context().adapter().clone();
            let res = nsa_flow::flow::solve(&mut be, y0, x0, params, callback)?;
            (res, Some(adapter))
        }
        None => {
            let res = match params.precision {
                Precision::F64 => {
                    nsa_flow::flow::solve(&mut CpuBackend::<f64>::new(), y0, x0, params, callback)?
                }
                Precision::F32 => {
                    nsa_flow::flow::solve(&mut CpuBackend::<f32>::new(), y0, x0, params, callback)?
                }
            };
            (res, None)
        }
    })
}

/// The progress bar of `run`, `autograd` and `sweep` on stderr: iteration, energy,
/// orthogonality, rate. Drawn only when stderr is a terminal, the command is neither
/// --quiet nor --verbose, and it has already lasted a second (short runs never show it).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    shown: bool,
    last_msg: Option<Instant>,
}

/// How long a command runs before its progress bar appears.
const PROGRESS_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

impl Progress {
    fn new(enabled: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::hidden(),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix}[{elapsed}] {bar:16.cyan/blue} {pos}/{len} it  {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
            shown: false,
            last_msg: None,
        }
    }

    /// Starts a run of at most `len` iterations, labelled `prefix`.
    fn start_run(&mut self, len: usize, prefix: String) {
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_length(len as u64);
            bar.set_prefix(prefix);
            bar.set_message("");
            self.last_msg = None;
        }
    }

    /// A spinner with `msg` for work that reports no iterations (a batch of solves).
    fn start_spinner(&mut self, msg: String) {
        if let Some(bar) = &self.bar {
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .expect("a valid template"),
            );
            bar.set_message(msg);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            self.shown = true;
        }
    }

    fn update(&mut self, i: &nsa_flow::IterInfo, orth_name: &str) {
        let Some(bar) = &self.bar else { return };
        if !self.shown {
            if self.started.elapsed() < PROGRESS_DELAY {
                bar.set_position(i.iter as u64);
                return;
            }
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            self.shown = true;
        }
        // formatting the message is cheap, but not free at thousands of iterations a second
        if self
            .last_msg
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(50))
        {
            bar.set_message(format!(
                "E {:.4e}  {orth_name} {:.2e}  {:.0} it/s",
                i.total_energy,
                i.orthogonality,
                bar.per_sec()
            ));
            self.last_msg = Some(Instant::now());
        }
        bar.set_position(i.iter as u64);
    }

    /// Runs `f` (which prints on stdout) with the bar out of the way.
    fn suspend(&self, f: impl FnOnce()) {
        match &self.bar {
            Some(bar) if self.shown => bar.suspend(f),
            _ => f(),
        }
    }

    /// Removes the bar (the final summary line takes its place).
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The plain line `--verbose` prints per iteration of `run` and `sweep`.
fn verbose_flow_line(prefix: &str, i: &nsa_flow::IterInfo) {
    eprintln!(
        "{prefix}iter {:5}  total_energy {:.8e}  fidelity {:.6e}  orthogonality {:.6e}  lr {:.3e}  backtracks {}",
        i.iter, i.total_energy, i.fidelity, i.orthogonality, i.learning_rate, i.backtracks
    );
}

/// `run --solver lbfgsb|spg`.
fn cmd_run_fit(
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
    cli_fit::run_anchored(
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

fn cmd_run(a: RunArgs) -> Result<ExitCode, NsaError> {
    let mut params = flow_params(&a.flow, a.w, "run")?;
    if a.verify && params.backend == BackendChoice::Cpu {
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
    progress.start_run(params.max_iter, String::new());
    let mut callback = |i: &nsa_flow::IterInfo| {
        if verbose {
            verbose_flow_line("", i);
        }
        progress.update(i, "defect");
        Control::Continue
    };
    let solved = solve_flow(&params, &y0, x0.as_ref(), &mut callback);
    progress.finish();
    let (res, adapter) = solved?;
    let summary = summary_value(&res, &params, adapter.as_ref());
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
            res.backend,
            readbacks_note(&res),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `‖Y − T‖_F / ‖T‖_F`: the relative fidelity error of `y` against the target `t` the flow
/// fitted (X0 after the non-negativity projection, or the self-target).
fn relative_fidelity_error(y: &DMatrix<f64>, t: &DMatrix<f64>) -> f64 {
    (y - t).norm() / t.norm().max(f64::MIN_POSITIVE)
}

/// A CSV field: `{:?}` round-trips an f64 exactly.
fn csv_f64(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else {
        format!("{v:?}")
    }
}

fn cmd_sweep(a: SweepArgs) -> Result<ExitCode, NsaError> {
    let ws = a.ws.0.clone();
    let mut params = flow_params(&a.flow, ws[0], "sweep")?;
    for &w in &ws {
        Params {
            w,
            ..params.clone()
        }
        .validate()?;
    }
    if a.out_dir.exists() && !a.out_dir.is_dir() {
        return Err(NsaError::InvalidParameter {
            name: "--out-dir",
            reason: format!("{} exists and is not a folder", a.out_dir.display()),
        });
    }
    let out_paths: Vec<PathBuf> = ws
        .iter()
        .map(|&w| {
            a.out_dir
                .join(format!("Y_w{}.npy", nsa_flow::plot::fmt_w(w)))
        })
        .chain([a.out_dir.join("sweep.csv"), a.out_dir.join("sweep.svg")])
        .collect();
    check_paths(
        "sweep",
        &out_paths
            .iter()
            .map(|p| ("--out-dir", Some(p.as_path())))
            .collect::<Vec<_>>(),
        &flow_inputs(&a.flow),
    );
    let (y0, x0) = read_inputs(&a.flow, &mut params)?;
    let verbose = a.verbose;
    let mut progress = Progress::new(!a.quiet && !verbose);
    let mut outputs = Vec::new();
    let mut points = Vec::new();
    let mut csv = String::from("w,iterations,best_total_energy,fidelity,defect,sparsity\n");
    let mut backend_name = String::new();
    // without --verbose every w is solved together (in parallel on the CPU, as one batch on a
    // GPU: nsa_flow::batch::sweep_w); --verbose solves them one after another so that each
    // iteration's line can be printed. The Ys are identical either way.
    let solved: Vec<nsa_flow::NsaResult> = if verbose {
        let mut out = Vec::with_capacity(ws.len());
        for &w in &ws {
            let run_params = Params {
                w,
                ..params.clone()
            };
            let tag = nsa_flow::plot::fmt_w(w);
            let prefix = format!("w {tag}  ");
            let mut callback = |i: &nsa_flow::IterInfo| {
                verbose_flow_line(&prefix, i);
                Control::Continue
            };
            match solve_flow(&run_params, &y0, x0.as_ref(), &mut callback) {
                Ok((res, _)) => out.push(res),
                Err(e) => return Ok(sweep_failed(&tag, &e)),
            }
        }
        out
    } else {
        progress.start_spinner(format!("solving {} weights together", ws.len()));
        let batch = nsa_flow::batch::sweep_w(&y0, x0.as_ref(), &ws, &params);
        progress.finish();
        match batch {
            Ok(b) => b.results,
            Err(NsaError::InBatch { index, source }) => {
                return Ok(sweep_failed(&nsa_flow::plot::fmt_w(ws[index]), &source));
            }
            Err(e) => return Err(e),
        }
    };
    for (&w, res) in ws.iter().zip(solved) {
        let tag = nsa_flow::plot::fmt_w(w);
        let point = nsa_flow::plot::SweepPoint {
            w,
            fidelity: relative_fidelity_error(&res.y, &res.target),
            defect: res.defect(),
            sparsity: res.sparsity(),
        };
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            tag,
            res.iterations,
            res.best_total_energy.map_or("nan".into(), csv_f64),
            csv_f64(point.fidelity),
            csv_f64(point.defect),
            csv_f64(point.sparsity)
        ));
        if !a.quiet {
            let row = format!(
                "w {tag:<6} {:>6} iterations ({}), fidelity error {:.4e}, defect {:.4e}, sparsity {:.3}, {:.3} s",
                res.iterations, res.stop_reason, point.fidelity, point.defect, point.sparsity, res.seconds
            );
            progress.suspend(|| println!("{row}"));
        }
        backend_name = res.backend.clone();
        outputs.push(Output::Matrix(
            a.out_dir.join(format!("Y_w{tag}.npy")),
            res.y,
            dtype_of(params.precision),
        ));
        points.push(point);
    }
    progress.finish();
    let mut sorted = points.clone();
    sorted.sort_by(|p, q| p.w.total_cmp(&q.w));
    let subtitle = format!(
        "{}×{}, {} retraction, {} mode, {}",
        y0.nrows(),
        y0.ncols(),
        params.retraction.as_str(),
        params.mode.as_str(),
        params.precision.as_str()
    );
    let svg = nsa_flow::plot::render_sweep(&sorted, &subtitle, nsa_flow::plot::ImageFormat::Svg)?;
    outputs.push(Output::Text(a.out_dir.join("sweep.csv"), csv));
    outputs.push(Output::Bytes(a.out_dir.join("sweep.svg"), svg));
    let created = !a.out_dir.exists();
    std::fs::create_dir_all(&a.out_dir).map_err(|source| NsaError::Io {
        path: a.out_dir.clone(),
        source,
    })?;
    if let Err(e) = write_all(outputs) {
        if created {
            // only removes the folder this command made, and only while it is empty
            let _ = std::fs::remove_dir(&a.out_dir);
        }
        return Err(e);
    }
    if !a.quiet {
        println!(
            "wrote {} Y_w<w>.npy, sweep.csv and sweep.svg to {} ({})",
            ws.len(),
            a.out_dir.display(),
            backend_name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The error line of a sweep whose run at one w failed (exit 1, nothing written).
fn sweep_failed(tag: &str, e: &NsaError) -> ExitCode {
    eprintln!("error: the run at w = {tag} failed, so nothing was written: {e}");
    ExitCode::from(1)
}

fn autograd_summary(
    res: &AutogradResult,
    params: &AutogradParams,
    adapter: Option<&AdapterSummary>,
) -> Value {
    json!({
        "iterations": res.iterations,
        "best_iteration": res.best_iteration,
        "final_iter": res.best_iteration,
        "best_total_energy": res.best_total_energy,
        "stop_reason": res.stop_reason.as_str(),
        "defect": nsa_flow::invariant_orthogonality_defect(&res.y),
        "sparsity": nsa_flow::sparsity(&res.y),
        "seconds": res.seconds,
        "backend": res.backend,
        "adapter": adapter_json(adapter),
        "readbacks": res.readbacks,
        "mode": res.mode.as_str(),
        "precision": res.precision.as_str(),
        "p": res.y.nrows(),
        "k": res.y.ncols(),
        "w": params.w,
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
            "optimizer": res.optimizer,
            "learning_rate": res.learning_rate,
            "learning_rate_source": res.learning_rate_source,
            "lr_strategy": params.lr_strategy,
            "aggression": params.aggression,
        },
    })
}

fn autograd_on(
    params: &AutogradParams,
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    verbose: bool,
    progress: &mut Progress,
) -> Result<(AutogradResult, Option<AdapterSummary>), NsaError> {
    progress.start_run(params.max_iter, String::new());
    let mut callback = |i: &nsa_flow::IterInfo| {
        if verbose {
            eprintln!(
                "iter {:5}  total_energy {:.8e}  fidelity {:.6e}  orthogonality {:.6e}  |grad| {:.3e}",
                i.iter, i.total_energy, i.fidelity, i.orthogonality, i.stationarity
            );
        }
        progress.update(i, "orth");
        Control::Continue
    };
    let flow_params = Params {
        backend: params.backend,
        gpu_adapter: params.gpu_adapter.clone(),
        precision: params.precision,
        ..Params::default()
    };
    let res = (|| {
        Ok(match nsa_flow::flow::gpu_backend_for(&flow_params)? {
            Some(mut be) => {
                let adapter = be.context().adapter().clone();
                (
                    solve_autograd(&mut be, y0, x0, params, &mut callback)?,
                    Some(adapter),
                )
            }
            None => {
                let res = match params.precision {
                    Precision::F64 => solve_autograd(
                        &mut CpuBackend::<f64>::new(),
                        y0,
                        x0,
                        params,
                        &mut callback,
                    )?,
                    Precision::F32 => solve_autograd(
                        &mut CpuBackend::<f32>::new(),
                        y0,
                        x0,
                        params,
                        &mut callback,
                    )?,
                };
                (res, None)
            }
        })
    })();
    progress.finish();
    res
}

fn cmd_autograd(a: AutogradArgs) -> Result<ExitCode, NsaError> {
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
    let mut params = AutogradParams {
        w: a.w,
        retraction: a.retraction,
        max_iter: a.max_iter,
        tol: a.tol,
        seed: a.seed,
        nonneg: a.nonneg,
        optimizer: a.optimizer.clone(),
        learning_rate,
        lr_strategy: a.lr_strategy.clone(),
        aggression: a.aggression,
        fidelity_type: a.fidelity_type,
        orth_type: a.orth_type,
        record_every: a.record_every,
        window_size: a.window_size,
        precision: a.precision,
        mode: a.mode,
        backend,
        gpu_adapter: a.adapter.clone(),
        perturbed_start: None,
    };
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
        params.perturbed_start = Some(a.csv.read(s)?);
    }
    let mut exit = ExitCode::SUCCESS;
    let (res, adapter, verify) = if a.verify {
        let cpu_params = AutogradParams {
            backend: BackendChoice::Cpu,
            gpu_adapter: None,
            ..params.clone()
        };
        let mut progress = Progress::new(!a.quiet);
        let (cpu, _) = autograd_on(&cpu_params, &y0, x0.as_ref(), false, &mut progress)?;
        let gpu_params = AutogradParams {
            backend: BackendChoice::Gpu,
            ..params.clone()
        };
        let (gpu, adapter) = autograd_on(&gpu_params, &y0, x0.as_ref(), false, &mut progress)?;
        let tol = verify_tolerance(params.precision);
        let rel = (&gpu.y - &cpu.y).norm() / cpu.y.norm().max(f64::MIN_POSITIVE);
        let agrees = cpu.iterations == gpu.iterations
            && cpu.best_iteration == gpu.best_iteration
            && rel <= tol;
        if !a.quiet {
            println!(
                "verify: cpu {} iterations (best {}), gpu {} iterations (best {}), Y relative difference {rel:.3e} (tol {tol:.0e}): {}",
                cpu.iterations, cpu.best_iteration, gpu.iterations, gpu.best_iteration,
                if agrees { "agree" } else { "DISAGREE" }
            );
        }
        if !agrees {
            exit = ExitCode::from(1);
        }
        let v = json!({"agrees": agrees, "y_tol": tol, "y_rel_diff": rel, "cpu": {"backend": cpu.backend, "iterations": cpu.iterations, "best_iteration": cpu.best_iteration, "seconds": cpu.seconds}});
        (gpu, adapter, Some(v))
    } else {
        let mut progress = Progress::new(!a.quiet && !a.verbose);
        let (res, adapter) = autograd_on(&params, &y0, x0.as_ref(), a.verbose, &mut progress)?;
        (res, adapter, None)
    };
    let mut summary = autograd_summary(&res, &params, adapter.as_ref());
    if let Some(v) = verify {
        summary["verify"] = v;
    }
    let mut outputs = Vec::new();
    if let Some(o) = &a.out {
        outputs.push(Output::Matrix(
            o.clone(),
            res.y.clone(),
            dtype_of(params.precision),
        ));
    }
    if let Some(t) = &a.trace {
        outputs.push(Output::Text(t.clone(), trace_rows_text(t, &res.traces)?));
    }
    if let Some(p) = &a.plot {
        outputs.push(Output::Bytes(
            p.clone(),
            render_trace_file(p, &res.traces, res.retraction.as_str(), params.w)?,
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
            res.backend,
        );
    }
    Ok(exit)
}

/// `, N readbacks (r per iteration)` for a device run, nothing on the CPU.
fn readbacks_note(res: &NsaResult) -> String {
    match res.readbacks {
        Some(r) => format!(
            ", {r} readbacks ({:.2} per iteration)",
            r as f64 / res.iterations.max(1) as f64
        ),
        None => String::new(),
    }
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
            dtype_of(params.precision),
        ));
    }
    if let Some(t) = &a.trace {
        outputs.push(Output::Text(t.clone(), trace_text(t, res)?));
    }
    if let Some(p) = &a.plot {
        outputs.push(Output::Bytes(
            p.clone(),
            render_trace_file(p, &res.traces, params.retraction.as_str(), params.w)?,
        ));
    }
    if let Some(s) = &a.summary {
        outputs.push(Output::Text(s.clone(), pretty(&summary)));
    }
    Ok(outputs)
}

fn verify_json(r: &VerifyReport, tol: f64, agrees: bool) -> Value {
    json!({
        "agrees": agrees,
        "y_tol": tol,
        "y_rel_diff": r.y_rel_diff,
        "max_energy_rel_diff": r.max_energy_rel_diff,
        "first_divergence": r.first_divergence,
        "energy_tol": r.energy_tol,
        "cpu": {
            "backend": r.cpu.backend,
            "iterations": r.cpu.iterations,
            "best_iteration": r.cpu.best_iteration,
            "stop_reason": r.cpu.stop_reason.as_str(),
            "seconds": r.cpu.seconds,
        },
    })
}

fn run_verify(
    a: &RunArgs,
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    params: &Params,
) -> Result<ExitCode, NsaError> {
    let report = nsa_flow::verify(y0, x0, params)?;
    let tol = verify_tolerance(params.precision);
    let agrees = report.agrees(tol);
    let res = &report.gpu;
    let adapter = adapter_of_run(res);
    let mut summary = summary_value(res, params, adapter.as_ref());
    summary["verify"] = verify_json(&report, tol, agrees);
    write_all(outputs_of(a, res, params, summary)?)?;
    if agrees {
        if !a.quiet {
            println!("{report}");
            println!("agree: same iterations and best iteration, Y within {tol:.0e}");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{report}");
        eprintln!(
            "error: the CPU and GPU runs disagree (iterations {} vs {}, best iteration {} vs {}, Y relative difference {:.3e} against {tol:.0e})",
            report.cpu.iterations, report.gpu.iterations, report.cpu.best_iteration, report.gpu.best_iteration, report.y_rel_diff
        );
        Ok(ExitCode::from(1))
    }
}

fn cmd_retract(a: RetractArgs) -> Result<(), NsaError> {
    let opts = RetractOptions {
        retraction: a.retraction,
        w: a.w,
        inv_method: a.inv_sqrt,
        ns_iter: a.ns_iter,
        style: a.mode,
        ..RetractOptions::default()
    };
    let precision = a.precision;
    let backend = a.backend;
    check_paths(
        "retract",
        &[("--out", Some(a.out.as_path()))],
        &[("input", Some(a.input.as_path()))],
    );
    let y = a.csv.read(&a.input)?;
    nsa_flow::validate_matrix("Y", &y)?;
    if y.iter().all(|v| *v == 0.0) {
        // the library's reference style reproduces nsa_flow_retract_auto at 0; the command
        // refuses it as `run` refuses a zero start
        return Err(NsaError::ZeroMatrix {
            what: "Y",
            why: "the retraction needs a non-zero matrix (its polar factor is undefined at 0)",
        });
    }
    let gpu = nsa_flow::flow::gpu_backend_for(&Params {
        backend,
        precision,
        ..Params::default()
    })?;
    let r = match (gpu, precision) {
        (Some(mut be), _) => nsa_flow::retract_on(&mut be, &y, &opts)?,
        (None, Precision::F64) => nsa_flow::retract_in::<f64>(&y, &opts)?,
        (None, Precision::F32) => nsa_flow::retract_in::<f32>(&y, &opts)?,
    };
    write_all(vec![Output::Matrix(a.out, r, dtype_of(precision))])
}

/// Best-of-`repeats` timing of one mode on one backend.
struct BenchRun {
    backend: String,
    seconds_per_iteration: f64,
    iterations: usize,
    energy_evaluations: usize,
    readbacks: Option<u64>,
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
                backend: res.backend.clone(),
                seconds_per_iteration: per,
                iterations: res.iterations,
                energy_evaluations: res.energy_evaluations,
                readbacks: be.readbacks().map(|r| r - before.unwrap_or(0)),
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

const MIB: usize = 1 << 20;

fn cmd_bench(a: BenchArgs) -> Result<ExitCode, NsaError> {
    if a.backend == BackendChoice::Cpu && a.adapter.is_some() {
        usage_error(
            "bench",
            ErrorKind::ArgumentConflict,
            "--adapter names a GPU adapter, but --backend cpu runs on the CPU; drop one of them"
                .into(),
        );
    }
    let precision = a.precision;
    let base = Params {
        w: 0.5,
        max_iter: a.iters,
        tol: 0.0,
        precision,
        backend: a.backend,
        gpu_adapter: a.adapter.clone(),
        ..Params::default()
    };
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
                runs.push((
                    mode,
                    bench_on(
                        &mut be,
                        &y0,
                        &x0,
                        &Params {
                            mode,
                            ..base.clone()
                        },
                        a.repeats,
                    )?,
                ));
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
                let params = Params {
                    mode,
                    ..base.clone()
                };
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
    }
    Ok(ExitCode::SUCCESS)
}

/// What `--backend auto` (in `precision`) or `--backend gpu` would pick among `adapters`
/// (best first), mirroring `GpuContext::new` and `gpu_backend_for`: an index, or why none.
fn pick(
    adapters: &[AdapterSummary],
    env: Option<&str>,
    auto: Option<Precision>,
) -> Result<usize, String> {
    if adapters.is_empty() {
        return Err("no GPU adapter was found".into());
    }
    let i = match env {
        Some(name) => {
            let lower = name.to_lowercase();
            match adapters
                .iter()
                .position(|a| a.name.to_lowercase().contains(&lower))
            {
                Some(i) => i,
                None => return Err(format!("NSA_FLOW_ADAPTER='{name}' matches no adapter")),
            }
        }
        None => {
            if auto.is_some() && adapters[0].is_software {
                return Err(format!(
                    "the best adapter ({}) is a software one, which auto never picks",
                    adapters[0].name
                ));
            }
            0
        }
    };
    if auto == Some(Precision::F64) && !adapters[i].shader_f64 {
        return Err(format!("{} has no SHADER_F64", adapters[i].name));
    }
    Ok(i)
}

fn cmd_info(as_json: bool) -> Result<ExitCode, NsaError> {
    if nsa_flow::memory::address_space_tight(nsa_flow::memory::GPU_PROBE_ROOM) {
        let why = format!(
            "adapters not probed: less than {} MiB of address space is left under ulimit -v, and GPU drivers can crash instead of failing there; --backend auto runs on the CPU",
            nsa_flow::memory::GPU_PROBE_ROOM / MIB as u64
        );
        if as_json {
            print!("{}", pretty(&json!({"adapters": [], "probe_skipped": why})));
        } else {
            println!("{why}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let adapters = list_adapters();
    let env = std::env::var("NSA_FLOW_ADAPTER")
        .ok()
        .filter(|s| !s.is_empty());
    let env = env.as_deref();
    let picks = [
        ("gpu", pick(&adapters, env, None)),
        ("auto (f64)", pick(&adapters, env, Some(Precision::F64))),
        ("auto (f32)", pick(&adapters, env, Some(Precision::F32))),
    ];
    if as_json {
        let list: Vec<Value> = adapters
            .iter()
            .enumerate()
            .map(|(i, a)| {
                json!({
                    "index": i,
                    "name": a.name,
                    "api": a.backend,
                    "device_type": a.device_type,
                    "driver": a.driver,
                    "software": a.is_software,
                    "shader_f64": a.shader_f64,
                    "limits": {
                        "max_storage_buffer_binding_size": a.max_storage_buffer_binding_size,
                        "max_buffer_size": a.max_buffer_size,
                        "max_compute_workgroup_storage_size": a.max_compute_workgroup_storage_size,
                        "max_compute_invocations_per_workgroup": a.max_compute_invocations_per_workgroup,
                        "max_compute_workgroups_per_dimension": a.max_compute_workgroups_per_dimension,
                        "max_storage_buffers_per_shader_stage": a.max_storage_buffers_per_shader_stage,
                    },
                    "features": a.features,
                })
            })
            .collect();
        // runs_on: "gpu" (adapter `index`), "cpu" (auto's fallback) or "unavailable" (gpu)
        let pick_json = |r: &Result<usize, String>, fallback: &str| match r {
            Ok(i) => {
                json!({"runs_on": "gpu", "index": i, "name": adapters[*i].name, "api": adapters[*i].backend})
            }
            Err(why) => json!({"runs_on": fallback, "index": null, "reason": why}),
        };
        let v = json!({
            "adapters": list,
            "nsa_flow_adapter": env,
            "picks": {
                "gpu": pick_json(&picks[0].1, "unavailable"),
                "auto_f64": pick_json(&picks[1].1, "cpu"),
                "auto_f32": pick_json(&picks[2].1, "cpu"),
            },
        });
        print!("{}", pretty(&v));
        return Ok(ExitCode::SUCCESS);
    }
    if adapters.is_empty() {
        println!(
            "no GPU adapter found: --backend gpu is unavailable and --backend auto runs on the CPU.\n\
             To use a GPU, install a Vulkan driver (on Debian/Ubuntu: apt-get install mesa-vulkan-drivers \
             libvulkan1, or your GPU vendor's driver)."
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mib = |b: u64| b as f64 / MIB as f64;
    println!(
        "{} GPU adapter{} (best first):",
        adapters.len(),
        if adapters.len() == 1 { "" } else { "s" }
    );
    for (i, a) in adapters.iter().enumerate() {
        println!("[{i}] {}", a.name);
        println!(
            "    api {}, type {}{}, driver {}",
            a.backend,
            a.device_type,
            if a.is_software { " (software)" } else { "" },
            if a.driver.is_empty() { "?" } else { &a.driver }
        );
        println!(
            "    SHADER_F64: {}",
            if a.shader_f64 { "yes" } else { "no (f32 only)" }
        );
        println!(
            "    limits: max_storage_buffer_binding_size {} ({:.0} MiB), max_buffer_size {} ({:.0} MiB), \
             max_compute_workgroup_storage_size {}, max_compute_invocations_per_workgroup {}, \
             max_compute_workgroups_per_dimension {}, max_storage_buffers_per_shader_stage {}",
            a.max_storage_buffer_binding_size,
            mib(a.max_storage_buffer_binding_size),
            a.max_buffer_size,
            mib(a.max_buffer_size),
            a.max_compute_workgroup_storage_size,
            a.max_compute_invocations_per_workgroup,
            a.max_compute_workgroups_per_dimension,
            a.max_storage_buffers_per_shader_stage
        );
        println!(
            "    features: {}",
            if a.features.is_empty() {
                "none".to_string()
            } else {
                a.features.join(", ")
            }
        );
    }
    if let Some(name) = env {
        println!("NSA_FLOW_ADAPTER = '{name}'");
    }
    for (what, r) in &picks {
        match r {
            Ok(i) => println!("--backend {what} uses [{i}] {}", adapters[*i].label()),
            Err(why) if what.starts_with("auto") => {
                println!("--backend {what} uses the CPU: {why}")
            }
            Err(why) => println!("--backend {what} is unavailable: {why}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    use clap::parser::ValueSource;
    use clap::FromArgMatches;
    let matches = Cli::command().get_matches();
    // `run --solver` needs to know which of --max-iter/--tol were given (their defaults are the
    // flow's, not the 3.5 solver's)
    let explicit = |name: &str| {
        matches
            .subcommand_matches("run")
            .is_some_and(|m| m.value_source(name) == Some(ValueSource::CommandLine))
    };
    let run_explicit = (explicit("max_iter"), explicit("tol"));
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let res = match cli.command {
        Command::Run(a) if a.solver.is_some() => cmd_run_fit(*a, run_explicit),
        Command::Run(a) => cmd_run(*a),
        Command::Fit(a) => cli_fit::cmd_fit(*a),
        Command::Sweep(a) => cmd_sweep(*a),
        Command::Batch(a) => cmd_batch(*a),
        Command::Defect {
            input,
            backend,
            precision,
            csv,
        } => (|| {
            let y = csv.read(&input)?;
            nsa_flow::validate_matrix("Y", &y)?;
            if y.iter().all(|v| *v == 0.0) {
                return Err(NsaError::ZeroMatrix {
                    what: "Y",
                    why: "the invariant defect divides by ‖Y‖⁴",
                });
            }
            let gpu = nsa_flow::flow::gpu_backend_for(&Params {
                backend,
                precision,
                ..Params::default()
            })?;
            let d = match gpu {
                Some(mut be) => nsa_flow::invariant_orthogonality_defect_on(&mut be, &y)?,
                None => nsa_flow::invariant_orthogonality_defect(&y),
            };
            println!("{d:.17e}");
            Ok(ExitCode::SUCCESS)
        })(),
        Command::Retract(a) => cmd_retract(a).map(|()| ExitCode::SUCCESS),
        Command::Autograd(a) => cmd_autograd(*a),
        Command::Bench(a) => cmd_bench(a),
        Command::Info { json } => cmd_info(json),
        Command::Optimizers => {
            for name in nsa_flow::optimizers() {
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
