//! `nsa-flow batch`: B problems of one shape solved together.

use super::args::{flow_inputs, flow_params, FlowArgs};
use super::output::{check_paths, dtype_of, pretty, usage_error, write_all, Output};
use super::parse::{parse_batch_ws, parse_json_path, parse_npy_path, BatchWeights};
use clap::error::ErrorKind;
use clap::Args;
use nalgebra::DMatrix;
use nsa_flow::NsaError;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

/// The flags of `batch`.
#[derive(Args)]
pub struct BatchArgs {
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

/// `nsa-flow batch`.
pub fn cmd_batch(a: BatchArgs) -> Result<ExitCode, NsaError> {
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
            "mode": params.common.mode.as_str(),
            "precision": params.common.precision.as_str(),
        });
        outputs.push(Output::Text(p.clone(), pretty(&summary)));
    }
    for y in &ys {
        nsa_flow::validate_matrix("the result", y)?;
    }
    outputs.push(Output::Bytes(
        a.out.clone(),
        nsa_flow::io::batch_bytes(&a.out, &ys, dtype_of(params.common.precision))?,
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
