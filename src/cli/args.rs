//! The flags several subcommands share: the input and settings of the flow ([`FlowArgs`],
//! `run`, `sweep` and `batch`) and how .csv inputs are read ([`CsvArgs`]).

use super::output::usage_error;
use super::parse::{parse_adapter, parse_named, parse_positive, parse_tol};
use clap::error::ErrorKind;
use clap::Args;
use nalgebra::DMatrix;
use nsa_flow::io::{read_matrix_with, CsvHeader, ReadOptions};
use nsa_flow::{
    BackendChoice, LearningRate, Mode, NonNeg, NsaError, OptimizerKind, Params, Precision,
    Retraction,
};
use std::path::{Path, PathBuf};

/// The flags `run` and `sweep` share: the input and every setting of the flow but `w`.
#[derive(Args)]
pub struct FlowArgs {
    /// Start matrix Y0 (p×k, .npy or .csv).
    #[arg(long)]
    pub y0: PathBuf,
    /// Target X0 (p×k); without it the target is Y0's non-negative part and the start a 5 %
    /// perturbation of Y0 drawn with --seed.
    #[arg(long)]
    pub x0: Option<PathBuf>,
    /// soft_polar | polar | none.
    #[arg(long, default_value = "soft_polar", value_parser = parse_named::<Retraction>)]
    pub retraction: Retraction,
    /// Maximum number of iterations (at least 1).
    #[arg(long, default_value_t = 500, value_parser = parse_positive)]
    pub max_iter: usize,
    /// Convergence tolerance (finite, ≥ 0).
    #[arg(long, default_value_t = 1e-5, value_parser = parse_tol)]
    pub tol: f64,
    /// hard | softplus | none.
    #[arg(long, default_value = "hard", value_parser = parse_named::<NonNeg>)]
    pub nonneg: NonNeg,
    /// fast (the plain gradient step) or a registry name: adabound, adagrad, adam, adamax,
    /// adamp, adamw, asgd, lars, lbfgs, lookahead, nadam, pid, qhadam, qhm, radam, rmsprop,
    /// rprop, sgd, sgd_nesterov, sgdp, yogi (see `nsa-flow optimizers`; padam is an error).
    #[arg(long, default_value = "fast", value_parser = parse_named::<OptimizerKind>)]
    pub optimizer: OptimizerKind,
    /// Initial learning rate: 'default' or a positive number.
    #[arg(long, default_value = "default", value_parser = parse_named::<LearningRate>)]
    pub lr: LearningRate,
    /// Record a trace row every N iterations (at least 1).
    #[arg(long, default_value_t = 1, value_parser = parse_positive)]
    pub record_every: usize,
    /// Length of the energy window of the plateau test (at least 1).
    #[arg(long, default_value_t = 5, value_parser = parse_positive)]
    pub window_size: usize,
    /// Use the off-diagonal Gram penalty instead of the invariant defect.
    #[arg(long)]
    pub simplified: bool,
    /// Project the whole gradient onto the tangent space.
    #[arg(long)]
    pub project_full_gradient: bool,
    /// f64 | f32.
    #[arg(long, default_value = "f64", value_parser = parse_named::<Precision>)]
    pub precision: Precision,
    /// corrected | reference.
    #[arg(long, default_value = "corrected", value_parser = parse_named::<Mode>)]
    pub mode: Mode,
    /// auto | cpu | gpu. auto: a hardware GPU that computes in --precision when present, else
    /// the CPU; gpu: any adapter, software ones included (an error without one).
    #[arg(long, default_value = "auto", value_parser = parse_named::<BackendChoice>)]
    pub backend: BackendChoice,
    /// GPU adapter: a case-insensitive substring of its name (see `nsa-flow info`). A usage
    /// error with --backend cpu.
    #[arg(long, value_parser = parse_adapter)]
    pub adapter: Option<String>,
    /// Seed of the X0 = None perturbation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// With no --x0: the perturbed start to use instead of drawing one (to replay a
    /// reference run).
    #[arg(long)]
    pub start: Option<PathBuf>,
    #[command(flatten)]
    pub csv: CsvArgs,
}

/// How .csv inputs are read.
#[derive(Args)]
pub struct CsvArgs {
    /// Whether the first row of a .csv input is a header: auto (only when none of its cells
    /// is a number; a row with some numbers and a bad cell is an error), yes (always skip
    /// it), no (it is data).
    #[arg(long, default_value = "auto", value_parser = parse_named::<CsvHeader>)]
    csv_header: CsvHeader,
}

impl CsvArgs {
    /// Reads the matrix at `path` (.npy, or .csv read with these settings).
    pub fn read(&self, path: &Path) -> Result<DMatrix<f64>, NsaError> {
        read_matrix_with(
            path,
            &ReadOptions {
                csv_header: self.csv_header,
            },
        )
    }
}

/// The flow's parameters from the shared flags and `w`; `sub` names the subcommand for
/// usage errors.
pub fn flow_params(f: &FlowArgs, w: f64, sub: &str) -> Result<Params, NsaError> {
    let backend = f.backend;
    if backend == BackendChoice::Cpu && f.adapter.is_some() {
        usage_error(
            sub,
            ErrorKind::ArgumentConflict,
            "--adapter names a GPU adapter, but --backend cpu runs on the CPU; drop one of them"
                .into(),
        );
    }
    let mut params = Params::default()
        .w(w)
        .retraction(f.retraction)
        .max_iter(f.max_iter)
        .tol(f.tol)
        .seed(f.seed)
        .nonneg(f.nonneg)
        .optimizer(f.optimizer)
        .learning_rate(f.lr)
        .record_every(f.record_every)
        .window_size(f.window_size)
        .simplified(f.simplified)
        .project_full_gradient(f.project_full_gradient)
        .precision(f.precision)
        .mode(f.mode)
        .backend(backend);
    params.common.gpu_adapter = f.adapter.clone();
    params.validate()?;
    Ok(params)
}

/// The input files of the shared flags, for the same-file check.
pub fn flow_inputs(f: &FlowArgs) -> [(&'static str, Option<&Path>); 3] {
    [
        ("--y0", Some(f.y0.as_path())),
        ("--x0", f.x0.as_deref()),
        ("--start", f.start.as_deref()),
    ]
}

/// Reads Y0, X0 and the replayed start named by the shared flags.
pub fn read_inputs(
    f: &FlowArgs,
    params: &mut Params,
) -> Result<(DMatrix<f64>, Option<DMatrix<f64>>), NsaError> {
    let y0 = f.csv.read(&f.y0)?;
    let x0 = f.x0.as_deref().map(|p| f.csv.read(p)).transpose()?;
    if let Some(s) = &f.start {
        params.common.perturbed_start = Some(f.csv.read(s)?);
    }
    Ok((y0, x0))
}
