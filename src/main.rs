//! `nsa-flow`: the command-line tool.
//!
//! Exit codes: 0 success, 1 bad input or failed computation (message on stderr, no output
//! file written), 2 command-line usage error.

use clap::{Args, Parser, Subcommand};
use nalgebra::DMatrix;
use nsa_flow::io::{read_matrix, write_matrix, write_text, NpyDtype};
use nsa_flow::{
    BackendChoice, Control, InvSqrtMethod, LearningRate, Mode, NonNeg, NsaError, NsaResult,
    OptimizerKind, Params, Precision, RetractOptions,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "nsa-flow",
    version,
    about = "NSA-Flow: non-negative, nearly orthogonal approximation of a p×k matrix"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run NSA-Flow from Y0 towards X0 and write the best Y.
    ///
    /// Example: nsa-flow run --y0 Y0.npy --x0 X0.npy --w 0.8 --out Y.npy --summary s.json
    Run(RunArgs),
    /// Print the invariant orthogonality defect of a matrix.
    ///
    /// Example: nsa-flow defect Y.npy
    Defect {
        /// The matrix (.npy or .csv).
        input: PathBuf,
    },
    /// Time the flow on random data: seconds per iteration on the CPU backend.
    ///
    /// Example: nsa-flow bench --p 10000 --k 32 --mode reference
    Bench(BenchArgs),
    /// Apply the retraction (nsa_flow_retract_auto) once.
    ///
    /// Example: nsa-flow retract Y.npy --w 0.5 --inv-sqrt ns --ns-iter 10 --out R.npy
    Retract(RetractArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Start matrix Y0 (p×k, .npy or .csv).
    #[arg(long)]
    y0: PathBuf,
    /// Target X0 (p×k); without it the target is Y0's non-negative part and the start a 5 %
    /// perturbation of Y0 drawn with --seed.
    #[arg(long)]
    x0: Option<PathBuf>,
    /// Weight in [0, 1]: 0 = fidelity only, 1 = orthogonality only.
    #[arg(long, default_value_t = 0.5)]
    w: f64,
    /// soft_polar | polar | none.
    #[arg(long, default_value = "soft_polar")]
    retraction: String,
    /// Maximum number of iterations.
    #[arg(long, default_value_t = 500)]
    max_iter: usize,
    /// Convergence tolerance.
    #[arg(long, default_value_t = 1e-5)]
    tol: f64,
    /// hard | softplus | none.
    #[arg(long, default_value = "hard")]
    nonneg: String,
    /// fast | sgdp.
    #[arg(long, default_value = "fast")]
    optimizer: String,
    /// Initial learning rate: 'default' or a positive number.
    #[arg(long, default_value = "default")]
    lr: String,
    /// Record a trace row every N iterations.
    #[arg(long, default_value_t = 1)]
    record_every: usize,
    /// Length of the energy window of the plateau test.
    #[arg(long, default_value_t = 5)]
    window_size: usize,
    /// Use the off-diagonal Gram penalty instead of the invariant defect.
    #[arg(long)]
    simplified: bool,
    /// Project the whole gradient onto the tangent space.
    #[arg(long)]
    project_full_gradient: bool,
    /// f64 | f32.
    #[arg(long, default_value = "f64")]
    precision: String,
    /// corrected | reference.
    #[arg(long, default_value = "corrected")]
    mode: String,
    /// auto | cpu | gpu.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// GPU adapter: a case-insensitive substring of its name (see `nsa-flow info`).
    #[arg(long)]
    adapter: Option<String>,
    /// Seed of the X0 = None perturbation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// With no --x0: the perturbed start to use instead of drawing one (to replay a
    /// reference run).
    #[arg(long)]
    start: Option<PathBuf>,
    /// Output: the best Y (.npy in the run's precision, or .csv).
    #[arg(long)]
    out: PathBuf,
    /// Trace output (.csv with header iter,time,fidelity,orthogonality,total_energy, or .json).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Summary output (.json).
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Print one line per iteration (what the reference's verbose=True printed).
    #[arg(long, short)]
    verbose: bool,
    /// Print nothing on success.
    #[arg(long, short, conflicts_with = "verbose")]
    quiet: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Rows.
    #[arg(long, default_value_t = 1000)]
    p: usize,
    /// Columns.
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// Iterations per run (tol = 0, so every run does them all unless it stalls).
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// Timed runs (the best is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// corrected | reference | both.
    #[arg(long, default_value = "both")]
    mode: String,
    /// f64 | f32.
    #[arg(long, default_value = "f64")]
    precision: String,
    /// auto | cpu | gpu.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Random seed of the data (N(0,1) entries for Y0 and X0, as in the reference's quick start).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct RetractArgs {
    /// The matrix to retract (.npy or .csv).
    input: PathBuf,
    /// Blend weight (≤ 0 returns the input).
    #[arg(long, default_value_t = 1.0)]
    w: f64,
    /// soft_polar | polar | none.
    #[arg(long, default_value = "soft_polar")]
    retraction: String,
    /// auto | eig | ns | diag.
    #[arg(long, default_value = "auto")]
    inv_sqrt: String,
    /// Newton–Schulz iterations (reference: exactly this many, default 4; corrected: the cap,
    /// default 100).
    #[arg(long)]
    ns_iter: Option<usize>,
    /// reference (nsa_flow_retract_auto exactly) | corrected (scale-invariant blend,
    /// accurate Newton–Schulz).
    #[arg(long, default_value = "reference")]
    mode: String,
    /// f64 | f32.
    #[arg(long, default_value = "f64")]
    precision: String,
    /// Output (.npy or .csv).
    #[arg(long)]
    out: PathBuf,
}

fn dtype_of(p: Precision) -> NpyDtype {
    match p {
        Precision::F64 => NpyDtype::F64,
        Precision::F32 => NpyDtype::F32,
    }
}

/// Outputs are produced in memory, then written; if one write fails, those already written
/// by this invocation are removed, so a failure leaves nothing behind.
enum Output {
    Matrix(PathBuf, DMatrix<f64>, NpyDtype),
    Text(PathBuf, String),
}

fn write_all(outputs: Vec<Output>) -> Result<(), NsaError> {
    let mut written: Vec<PathBuf> = Vec::new();
    for o in outputs {
        let (path, res) = match o {
            Output::Matrix(p, m, d) => {
                let r = write_matrix(&p, &m, d);
                (p, r)
            }
            Output::Text(p, t) => {
                let r = write_text(&p, &t);
                (p, r)
            }
        };
        if let Err(e) = res {
            for w in &written {
                let _ = std::fs::remove_file(w);
            }
            return Err(e);
        }
        written.push(path);
    }
    Ok(())
}

fn ext_is(p: &Path, e: &str) -> bool {
    p.extension()
        .and_then(|x| x.to_str())
        .is_some_and(|x| x.eq_ignore_ascii_case(e))
}

/// Rejects an output path whose extension is not one of `exts`, before any work is done.
fn check_ext(flag: &'static str, path: &Path, exts: &[&str]) -> Result<(), NsaError> {
    if exts.iter().any(|e| ext_is(path, e)) {
        return Ok(());
    }
    Err(NsaError::InvalidParameter {
        name: flag,
        reason: format!(
            "{}: the extension must be one of {}",
            path.display(),
            exts.join(", ")
        ),
    })
}

fn trace_text(path: &Path, res: &NsaResult) -> Result<String, NsaError> {
    if ext_is(path, "json") {
        let rows: Vec<_> = res
            .traces
            .iter()
            .map(|t| json!({"iter": t.iter, "time": t.time, "fidelity": t.fidelity, "orthogonality": t.orthogonality, "total_energy": t.total_energy}))
            .collect();
        Ok(serde_json::to_string_pretty(&rows).expect("serialisable") + "\n")
    } else if ext_is(path, "csv") {
        let mut s = String::from("iter,time,fidelity,orthogonality,total_energy\n");
        for t in &res.traces {
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

fn summary_json(res: &NsaResult, params: &Params) -> String {
    let v = json!({
        "iterations": res.iterations,
        "final_iter": res.final_iter,
        "best_iteration": res.best_iteration,
        "best_total_energy": res.best_total_energy,
        "stop_reason": res.stop_reason.as_str(),
        "defect": res.defect(),
        "sparsity": res.sparsity(),
        "seconds": res.seconds,
        "backend": res.backend,
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
    });
    serde_json::to_string_pretty(&v).expect("serialisable") + "\n"
}

fn cmd_run(a: RunArgs) -> Result<(), NsaError> {
    let params = Params {
        w: a.w,
        retraction: a.retraction.parse()?,
        max_iter: a.max_iter,
        tol: a.tol,
        seed: a.seed,
        nonneg: a.nonneg.parse::<NonNeg>()?,
        optimizer: a.optimizer.parse::<OptimizerKind>()?,
        learning_rate: a.lr.parse::<LearningRate>()?,
        record_every: a.record_every,
        window_size: a.window_size,
        simplified: a.simplified,
        project_full_gradient: a.project_full_gradient,
        precision: a.precision.parse::<Precision>()?,
        mode: a.mode.parse::<Mode>()?,
        backend: a.backend.parse::<BackendChoice>()?,
        gpu_adapter: a.adapter.clone(),
        perturbed_start: None,
    };
    params.validate()?;
    // check output names before the work, so a typo does not cost a long run
    check_ext("--out", &a.out, &["npy", "csv"])?;
    if let Some(t) = &a.trace {
        check_ext("--trace", t, &["csv", "json"])?;
    }
    if let Some(p) = &a.summary {
        check_ext("--summary", p, &["json"])?;
    }
    let y0 = read_matrix(&a.y0)?;
    let x0 = a.x0.as_ref().map(read_matrix).transpose()?;
    let mut params = params;
    if let Some(s) = &a.start {
        params.perturbed_start = Some(read_matrix(s)?);
    }
    let verbose = a.verbose;
    let res = nsa_flow::nsa_flow_with_callback(&y0, x0.as_ref(), &params, |i| {
        if verbose {
            eprintln!(
                "iter {:5}  total_energy {:.8e}  fidelity {:.6e}  orthogonality {:.6e}  lr {:.3e}  backtracks {}",
                i.iter, i.total_energy, i.fidelity, i.orthogonality, i.learning_rate, i.backtracks
            );
        }
        Control::Continue
    })?;
    let mut outputs = vec![Output::Matrix(
        a.out.clone(),
        res.y.clone(),
        dtype_of(params.precision),
    )];
    if let Some(t) = &a.trace {
        outputs.push(Output::Text(t.clone(), trace_text(t, &res)?));
    }
    if let Some(s) = &a.summary {
        outputs.push(Output::Text(s.clone(), summary_json(&res, &params)));
    }
    write_all(outputs)?;
    if !a.quiet {
        println!(
            "{} iterations ({}), best energy {} at iteration {}, defect {:.4e}, sparsity {:.3}, certificate {:.2e}, {:.3} s on {}",
            res.iterations,
            res.stop_reason,
            res.best_total_energy.map_or("n/a".to_string(), |e| format!("{e:.6e}")),
            res.best_iteration,
            res.defect(),
            res.sparsity(),
            res.certificate.value,
            res.seconds,
            res.backend
        );
    }
    Ok(())
}

fn cmd_retract(a: RetractArgs) -> Result<(), NsaError> {
    let style: Mode = a.mode.parse()?;
    let opts = RetractOptions {
        retraction: a.retraction.parse()?,
        w: a.w,
        inv_method: a.inv_sqrt.parse::<InvSqrtMethod>()?,
        ns_iter: a.ns_iter,
        style,
        ..RetractOptions::default()
    };
    let precision: Precision = a.precision.parse()?;
    check_ext("--out", &a.out, &["npy", "csv"])?;
    let y = read_matrix(&a.input)?;
    let r = match precision {
        Precision::F64 => nsa_flow::retract_in::<f64>(&y, &opts)?,
        Precision::F32 => nsa_flow::retract_in::<f32>(&y, &opts)?,
    };
    write_all(vec![Output::Matrix(a.out, r, dtype_of(precision))])
}

fn cmd_bench(a: BenchArgs) -> Result<(), NsaError> {
    let modes: Vec<Mode> = if a.mode == "both" {
        vec![Mode::Reference, Mode::Corrected]
    } else {
        vec![a.mode.parse()?]
    };
    let precision: Precision = a.precision.parse()?;
    let backend: BackendChoice = a.backend.parse()?;
    if a.p == 0 || a.k == 0 || a.iters == 0 || a.repeats == 0 {
        return Err(NsaError::InvalidParameter {
            name: "bench sizes",
            reason: "p, k, iters and repeats must be positive".into(),
        });
    }
    let mut rng = nsa_flow::rng::Rng::new(a.seed);
    let y0 = DMatrix::from_fn(a.p, a.k, |_, _| rng.normal());
    let x0 = DMatrix::from_fn(a.p, a.k, |_, _| rng.normal());
    for mode in modes {
        let params = Params {
            w: 0.5,
            max_iter: a.iters,
            tol: 0.0,
            mode,
            precision,
            backend,
            ..Params::default()
        };
        let mut best = f64::INFINITY;
        let mut iters = 0;
        let mut evals = 0;
        for _ in 0..a.repeats {
            let res = nsa_flow::nsa_flow(&y0, Some(&x0), &params)?;
            let per = res.seconds / res.iterations.max(1) as f64;
            if per < best {
                best = per;
                iters = res.iterations;
                evals = res.energy_evaluations;
            }
        }
        println!(
            "{}x{} {} {} {}: {:.3} ms/iteration ({} iterations, {:.2} energy evaluations/iteration)",
            a.p, a.k, mode, precision, backend, best * 1e3, iters, evals as f64 / iters.max(1) as f64
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Defect { input } => read_matrix(&input).and_then(|y| {
            nsa_flow::validate_matrix("Y", &y)?;
            println!("{:.17e}", nsa_flow::invariant_orthogonality_defect(&y));
            Ok(())
        }),
        Command::Retract(a) => cmd_retract(a),
        Command::Bench(a) => cmd_bench(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
