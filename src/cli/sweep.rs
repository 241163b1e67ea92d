//! `nsa-flow sweep`: the flow at several weights w, tabulated and plotted.

use super::args::{flow_inputs, flow_params, read_inputs, FlowArgs};
use super::output::{check_paths, dtype_of, write_all, Output};
use super::parse::{parse_ws, WeightList};
use super::progress::{verbose_flow_line, Progress};
use clap::Args;
use nalgebra::DMatrix;
use nsa_flow::{Control, NsaError};
use std::path::PathBuf;
use std::process::ExitCode;

/// The flags of `sweep`.
#[derive(Args)]
pub struct SweepArgs {
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

/// `nsa-flow sweep`.
pub fn cmd_sweep(a: SweepArgs) -> Result<ExitCode, NsaError> {
    let ws = a.ws.0.clone();
    let mut params = flow_params(&a.flow, ws[0], "sweep")?;
    for &w in &ws {
        params.clone().w(w).validate()?;
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
            let run_params = params.clone().w(w);
            let tag = nsa_flow::plot::fmt_w(w);
            let prefix = format!("w {tag}  ");
            let mut callback = |i: &nsa_flow::IterInfo| {
                verbose_flow_line(&prefix, i);
                Control::Continue
            };
            match nsa_flow::nsa_flow_with_callback(&y0, x0.as_ref(), &run_params, &mut callback) {
                Ok(res) => out.push(res),
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
        backend_name = res.device.name.clone();
        outputs.push(Output::Matrix(
            a.out_dir.join(format!("Y_w{tag}.npy")),
            res.y,
            dtype_of(params.common.precision),
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
        params.common.retraction.as_str(),
        params.common.mode.as_str(),
        params.common.precision.as_str()
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
    eprintln!(
        "error: the run at w = {tag} failed, so nothing was written: {}",
        e.full_message()
    );
    ExitCode::from(1)
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
