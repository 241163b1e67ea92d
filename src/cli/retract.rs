//! `nsa-flow retract`: the retraction applied once.

use super::args::CsvArgs;
use super::output::{check_paths, dtype_of, write_all, Output};
use super::parse::{parse_matrix_path, parse_named, parse_weight};
use clap::Args;
use nsa_flow::{
    BackendChoice, InvSqrtMethod, Mode, NsaError, Params, Precision, RetractOptions, Retraction,
};
use std::path::PathBuf;

/// The flags of `retract`.
#[derive(Args)]
pub struct RetractArgs {
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

/// `nsa-flow retract`.
pub fn cmd_retract(a: RetractArgs) -> Result<(), NsaError> {
    let mut opts = RetractOptions::default()
        .retraction(a.retraction)
        .w(a.w)
        .inv_method(a.inv_sqrt)
        .style(a.mode);
    opts.ns_iter = a.ns_iter;
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
    let gpu =
        nsa_flow::flow::gpu_backend_for(&Params::default().backend(backend).precision(precision))?;
    let r = match (gpu, precision) {
        (Some(mut be), _) => nsa_flow::retract_on(&mut be, &y, &opts)?,
        (None, Precision::F64) => nsa_flow::retract_in::<f64>(&y, &opts)?,
        (None, Precision::F32) => nsa_flow::retract_in::<f32>(&y, &opts)?,
    };
    write_all(vec![Output::Matrix(a.out, r, dtype_of(precision))])
}
