//! What the commands write and report: the output files, produced in memory and written
//! together through the library's atomic [`OutputSet`]; the same-file check and usage
//! errors; traces, trace figures and the JSON pieces several summaries share.

use super::parse::ext_is;
use crate::Cli;
use clap::error::ErrorKind;
use clap::CommandFactory;
use nalgebra::DMatrix;
use nsa_flow::gpu::AdapterSummary;
use nsa_flow::io::{NpyDtype, OutputSet};
use nsa_flow::{NsaError, NsaResult, Precision};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The .npy element type of a run in precision `p`.
pub fn dtype_of(p: Precision) -> NpyDtype {
    match p {
        Precision::F64 => NpyDtype::F64,
        Precision::F32 => NpyDtype::F32,
    }
}

/// Outputs are produced in memory, then written together ([`OutputSet`]): every file lands,
/// or none changes.
pub enum Output {
    Matrix(PathBuf, DMatrix<f64>, NpyDtype),
    Text(PathBuf, String),
    /// An encoded file (a figure).
    Bytes(PathBuf, Vec<u8>),
}

/// Writes `outputs` together: every file lands, or none changes.
pub fn write_all(outputs: Vec<Output>) -> Result<(), NsaError> {
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

/// Refuses, as a usage error of `sub`, outputs that name one file or that name an input.
pub fn check_paths(sub: &str, outputs: &[(&str, Option<&Path>)], inputs: &[(&str, Option<&Path>)]) {
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
pub fn usage_error(subcommand: &str, kind: ErrorKind, message: String) -> ! {
    let mut cmd = Cli::command();
    cmd.build();
    match cmd.find_subcommand_mut(subcommand) {
        Some(sub) => sub.error(kind, message).exit(),
        None => cmd.error(kind, message).exit(),
    }
}

/// A run's trace as the text of `path` ([`trace_rows_text`]).
pub fn trace_text(path: &Path, res: &NsaResult) -> Result<String, NsaError> {
    trace_rows_text(path, &res.traces)
}

/// Trace rows as .csv (header iter,time,fidelity,orthogonality,total_energy) or .json text,
/// as the extension of `path` says.
pub fn trace_rows_text(path: &Path, traces: &[nsa_flow::TraceRow]) -> Result<String, NsaError> {
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
pub fn render_trace_file(
    path: &Path,
    traces: &[nsa_flow::TraceRow],
    retraction: &str,
    w: f64,
) -> Result<Vec<u8>, NsaError> {
    let format = nsa_flow::plot::ImageFormat::from_path(path)?;
    nsa_flow::plot::render_trace(traces, retraction, w, format)
}

/// The adapter a GPU run used, for summaries: name, graphics API, device type, software or not.
pub fn adapter_json(a: Option<&AdapterSummary>) -> Value {
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

/// Pretty-printed JSON with a final newline.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("serialisable") + "\n"
}
