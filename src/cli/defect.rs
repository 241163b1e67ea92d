//! `nsa-flow defect`: the invariant orthogonality defect of a matrix.

use super::args::CsvArgs;
use super::parse::parse_named;
use clap::Args;
use nsa_flow::{BackendChoice, NsaError, Params, Precision};
use std::path::PathBuf;
use std::process::ExitCode;

/// The flags of `defect`.
#[derive(Args)]
pub struct DefectArgs {
    /// The matrix (.npy or .csv).
    pub input: PathBuf,
    /// cpu | gpu | auto.
    #[arg(long, default_value = "cpu", value_parser = parse_named::<BackendChoice>)]
    pub backend: BackendChoice,
    /// f64 | f32 (the device's arithmetic; the CPU path always uses f64 here).
    #[arg(long, default_value = "f64", value_parser = parse_named::<Precision>)]
    pub precision: Precision,
    #[command(flatten)]
    pub csv: CsvArgs,
}

/// `nsa-flow defect`.
pub fn cmd_defect(a: DefectArgs) -> Result<ExitCode, NsaError> {
    let y = a.csv.read(&a.input)?;
    nsa_flow::validate_matrix("Y", &y)?;
    if y.iter().all(|v| *v == 0.0) {
        return Err(NsaError::ZeroMatrix {
            what: "Y",
            why: "the invariant defect divides by ‖Y‖⁴",
        });
    }
    let gpu = nsa_flow::flow::gpu_backend_for(
        &Params::default().backend(a.backend).precision(a.precision),
    )?;
    let d = match gpu {
        Some(mut be) => nsa_flow::invariant_orthogonality_defect_on(&mut be, &y)?,
        None => nsa_flow::invariant_orthogonality_defect(&y),
    };
    println!("{d:.17e}");
    Ok(ExitCode::SUCCESS)
}
