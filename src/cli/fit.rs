//! `nsa-flow fit` (the solvers of nsa_flow 3.5) and `run --solver lbfgsb|spg`.

use super::args::CsvArgs;
use super::output::{check_paths, write_all, Output};
use super::parse::{
    parse_adapter, parse_json_path, parse_matrix_path, parse_named, parse_nonneg_number,
    parse_open_unit, parse_positive, parse_tol, parse_tristate, parse_weight, Tristate,
};
use clap::Args;
use nalgebra::DMatrix;
use nsa_flow::fit::{
    self, BasisReport, Fidelity, FitMode, FitOptimizer, FitParams, FitResult, Init, Orth,
};
use nsa_flow::io::NpyDtype;
use nsa_flow::{BackendChoice, NsaError, Precision};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `nsa-flow fit`.
#[derive(Args)]
pub struct FitArgs {
    /// The input (.npy or .csv): a data matrix X (n samples × p features) for the data and
    /// signed modes, or a target X0 (p×k) for the anchored mode (alias --target).
    #[arg(long, visible_alias = "target")]
    data: PathBuf,
    /// Number of components (data and signed modes). Without it, --mode auto treats the
    /// input as an anchored target.
    #[arg(long, value_parser = parse_positive)]
    k: Option<usize>,
    /// Weight in [0, 1]: 0 = fidelity only, 1 = orthogonality only.
    #[arg(long, default_value_t = 0.5, value_parser = parse_weight)]
    w: f64,
    /// auto (anchored without --k; signed when X has an entry below −1e-12; else data) |
    /// data (alias nonneg) | signed (alias contrast) | anchored (alias target).
    #[arg(long, default_value = "auto", value_parser = parse_named::<FitMode>)]
    mode: FitMode,
    /// Orthogonality functional: D | Cg | C | Coff (default D; Cg in the signed mode).
    #[arg(long, value_parser = parse_named::<Orth>)]
    orth: Option<Orth>,
    /// lbfgsb (projected L-BFGS-B) | spg (spectral projected gradient).
    #[arg(long, default_value = "lbfgsb", value_parser = parse_named::<FitOptimizer>)]
    optimizer: FitOptimizer,
    /// Start: auto | clamp | varimax | pca_clamp | relax | random (data); auto | split |
    /// varimax | pca_split | adaptive | relax (signed); auto | varimax (anchored).
    #[arg(long, default_value = "auto", value_parser = parse_named::<Init>, conflicts_with = "init_file")]
    init: Init,
    /// Start from this matrix (p×k; p×2k parts [V⁺|V⁻] in the signed mode).
    #[arg(long)]
    init_file: Option<PathBuf>,
    /// Seed of --init random.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Column quantile sparseness q in (0, 1), then a fixed-support re-solve.
    #[arg(long, value_parser = parse_open_unit)]
    sparseness: Option<f64>,
    /// Signed mode: exactly disjoint supports (each feature in its largest part), re-solved.
    #[arg(long)]
    consolidate: bool,
    /// Signed mode: lobe penalty weight.
    #[arg(long, default_value_t = 1.0, value_parser = parse_nonneg_number)]
    lobe: f64,
    /// Anchored mode: auto | anchor | subspace.
    #[arg(long, default_value = "auto", value_parser = parse_named::<Fidelity>)]
    fidelity: Fidelity,
    /// Budget in gradient evaluations, per solve stage.
    #[arg(long, default_value_t = 20_000, value_parser = parse_positive)]
    max_grad: usize,
    /// Stop when the certificate ‖P(Y − ‖Y‖²∇E) − Y‖/‖Y‖ is at most this (default 1e-6;
    /// 1e-4 with --precision f32).
    #[arg(long, value_parser = parse_tol)]
    tol: Option<f64>,
    /// Data/signed: where the products with XᵀX run. auto: a hardware GPU computing in
    /// --precision when the products are large, else the CPU; gpu: any adapter, software
    /// ones included (an error without one); cpu. The anchored mode runs on the CPU.
    #[arg(long, default_value = "auto", value_parser = parse_named::<BackendChoice>)]
    backend: BackendChoice,
    /// Data/signed: f64 | f32, the arithmetic of the device products (f32 needs a GPU).
    #[arg(long, default_value = "f64", value_parser = parse_named::<Precision>)]
    precision: Precision,
    /// GPU adapter: a case-insensitive substring of its name (see `nsa-flow info`).
    #[arg(long, value_parser = parse_adapter)]
    adapter: Option<String>,
    /// Data/signed: auto (when p > n) | yes (never form XᵀX) | no.
    #[arg(long, default_value = "auto", value_parser = parse_tristate)]
    matrix_free: Tristate,
    /// Output: the basis V (p×k; signed V = V⁺ − V⁻) as .npy (f64) or .csv.
    #[arg(long, value_parser = parse_matrix_path)]
    out: PathBuf,
    /// Signed mode: also write the parts [V⁺|V⁻] (p×2k).
    #[arg(long, value_parser = parse_matrix_path)]
    parts: Option<PathBuf>,
    /// Summary (.json): certificate, stop_reason, n_grad, energies, basis_report, ….
    #[arg(long, value_parser = parse_json_path)]
    summary: Option<PathBuf>,
    /// Print one line per iteration on stderr.
    #[arg(long, short)]
    verbose: bool,
    /// Print nothing on success.
    #[arg(long, short, conflicts_with = "verbose")]
    quiet: bool,
    #[command(flatten)]
    csv: CsvArgs,
}

pub fn report_json(r: &BasisReport) -> Value {
    json!({
        "defect_D": r.defect_d, "defect_Cg": r.defect_cg, "defect_C": r.defect_c,
        "defect_Coff": r.defect_coff, "raw_defect": r.raw_defect,
        "effective_rank": r.effective_rank,
        "column_norm_ratio": if r.column_norm_ratio.is_finite() { json!(r.column_norm_ratio) } else { Value::Null },
        "sparsity": r.sparsity, "max_support": r.max_support, "mean_support": r.mean_support,
        "n_dead_columns": r.n_dead_columns, "support_overlap": r.support_overlap,
    })
}

fn finite_or_null(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

pub fn summary_json(r: &FitResult) -> Value {
    let mut s = json!({
        "solver": "nsa_flow 3.5",
        "mode": r.mode.name(), "optimizer": r.optimizer.name(), "orth": r.orth.name(),
        "init": r.init, "w": r.w, "shape": [r.y.nrows(), r.y.ncols()],
        "energy": r.energy, "fidelity": r.fidelity, "defect": r.defect,
        "iters": r.iters, "n_grad": r.n_grad, "n_energy": r.n_energy,
        "stop_reason": r.stop_reason.name(), "certificate": r.certificate.name(),
        "converged": r.converged, "grad_map": finite_or_null(r.grad_map), "tol": r.tol,
        "seconds": r.seconds, "energy_start": finite_or_null(r.energy_start),
        "grad_map_start": finite_or_null(r.grad_map_start),
        "energy_reduction": finite_or_null(r.energy_reduction()),
        "basis_report": report_json(&r.report),
        "backend": r.device.name, "precision": r.precision.to_string(),
        "adapter": super::output::adapter_json(r.device.adapter.as_ref()),
        "readbacks": r.device.readbacks,
    });
    let o = s.as_object_mut().expect("an object");
    if let Some(f) = r.fidelity_mode {
        o.insert("fidelity_mode".into(), json!(f.name()));
    }
    for (key, v) in [
        ("target_negative_mass", r.target_negative_mass),
        ("clamp_distance", r.clamp_distance),
        ("scale_ratio", r.scale_ratio),
        ("lobe_overlap", r.lobe_overlap),
    ] {
        if let Some(v) = v {
            o.insert(key.into(), finite_or_null(v));
        }
    }
    if r.mode == FitMode::Anchored {
        o.insert("w_schedule".into(), json!(r.w_schedule));
    }
    if let Some(mf) = r.matrix_free {
        o.insert("matrix_free".into(), json!(mf));
    }
    if let Some(pr) = &r.parts_report {
        o.insert("parts_report".into(), report_json(pr));
        o.insert("consolidated".into(), json!(r.consolidated));
    }
    if let Some(ps) = &r.part_stats {
        o.insert("parts_nnz".into(), json!(ps.nnz_per_part));
        o.insert("parts_n_dead".into(), json!(ps.n_dead));
        o.insert("parts_max_nnz".into(), json!(ps.max_nnz));
        o.insert("parts_mean_nnz".into(), json!(ps.mean_nnz));
        o.insert("parts_disjoint_ideal".into(), json!(ps.disjoint_ideal));
        o.insert("parts_mass_in_ideal".into(), json!(ps.mass_in_ideal));
    }
    s
}

fn final_line(r: &FitResult) -> String {
    format!(
        "{} {}: {} ({}) after {} gradient evaluations, energy {:.6e}, certificate {:.2e} (tol {:.0e}), defect_D {:.3e}, sparsity {:.3}, {:.3} s on {}",
        r.mode.name(), r.optimizer.name(), r.stop_reason, r.certificate.name(), r.n_grad, r.energy, r.grad_map, r.tol, r.report.defect_d, r.report.sparsity, r.seconds, device_of(r)
    )
}

fn device_of(r: &FitResult) -> &str {
    &r.device.name
}

pub fn cmd_fit(a: FitArgs) -> Result<ExitCode, NsaError> {
    check_paths(
        "fit",
        &[
            ("--out", Some(a.out.as_path())),
            ("--parts", a.parts.as_deref()),
            ("--summary", a.summary.as_deref()),
        ],
        &[
            ("--data", Some(a.data.as_path())),
            ("--init-file", a.init_file.as_deref()),
        ],
    );
    let x = a.csv.read(&a.data)?;
    let mut p = FitParams::default();
    p.w = a.w;
    p.orth = a.orth;
    p.optimizer = a.optimizer;
    p.max_grad = a.max_grad;
    p.tol = a.tol;
    p.backend = a.backend;
    p.precision = a.precision;
    p.gpu_adapter = a.adapter.clone();
    p.sparseness = a.sparseness;
    p.consolidate = a.consolidate;
    p.lobe = a.lobe;
    p.fidelity = a.fidelity;
    p.matrix_free = match a.matrix_free {
        Tristate::Auto => None,
        Tristate::Yes => Some(true),
        Tristate::No => Some(false),
    };
    p.init = match (&a.init_file, a.init.clone()) {
        (Some(f), _) => Init::Matrix(a.csv.read(f)?),
        (None, Init::Random(_)) => Init::Random(a.seed),
        (None, i) => i,
    };
    let verbose = a.verbose;
    let mut cb = |it: usize, e: f64, g: f64, n: usize| {
        if verbose {
            eprintln!("iter {it:6}  energy {e:.12e}  grad_map {g:.3e}  n_grad {n}");
        }
        true
    };
    let r = fit_dispatch(&x, a.k, a.mode, &p, &mut cb)?;
    if a.parts.is_some() && r.parts.is_none() {
        return Err(NsaError::InvalidParameter {
            name: "--parts",
            reason: format!(
                "only the signed mode has parts; this fit ran the {} mode",
                r.mode.name()
            ),
        });
    }
    let mut outs = vec![Output::Matrix(a.out.clone(), r.y.clone(), NpyDtype::F64)];
    if let (Some(pp), Some(parts)) = (&a.parts, &r.parts) {
        outs.push(Output::Matrix(pp.clone(), parts.clone(), NpyDtype::F64));
    }
    if let Some(s) = &a.summary {
        outs.push(Output::Text(
            s.clone(),
            serde_json::to_string_pretty(&summary_json(&r)).expect("serialisable") + "\n",
        ));
    }
    write_all(outs)?;
    if !a.quiet {
        println!("{}", final_line(&r));
    }
    Ok(ExitCode::SUCCESS)
}

fn fit_dispatch(
    x: &DMatrix<f64>,
    k: Option<usize>,
    mode: FitMode,
    p: &FitParams,
    cb: &mut dyn FnMut(usize, f64, f64, usize) -> bool,
) -> Result<FitResult, NsaError> {
    // the same rule as fit::fit, with the observer threaded through
    let resolved = match (mode, k) {
        (FitMode::Auto, None) => FitMode::Anchored,
        (FitMode::Auto, Some(_)) => {
            nsa_flow::validate_matrix("the input", x)?;
            if x.min() < -1e-12 {
                FitMode::Signed
            } else {
                FitMode::Data
            }
        }
        (m, _) => m,
    };
    if resolved != FitMode::Anchored && p.fidelity != Fidelity::Auto {
        return fit::fit(x, k, resolved, p); // the library's typed refusal
    }
    match resolved {
        FitMode::Anchored => {
            if k.is_some_and(|k| k != x.ncols()) {
                return fit::fit(x, k, resolved, p);
            }
            fit::fit_anchored_with_callback(x, p, Some(cb))
        }
        FitMode::Data | FitMode::Signed => {
            let Some(k) = k else {
                return Err(NsaError::InvalidParameter {
                    name: "--k",
                    reason: format!(
                        "the {} mode needs the number of components",
                        resolved.name()
                    ),
                });
            };
            if resolved == FitMode::Data {
                fit::fit_data_with_callback(x, k, p, Some(cb))
            } else {
                fit::fit_signed_with_callback(x, k, p, Some(cb))
            }
        }
        FitMode::Auto => unreachable!("resolved above"),
    }
}

/// `run --solver lbfgsb|spg`: 3.5's anchored solve of the target X0 (or, without --x0, of
/// Y0's target), started from Y0.
#[allow(clippy::too_many_arguments)]
pub fn run_anchored(
    y0: &DMatrix<f64>,
    x0: Option<&DMatrix<f64>>,
    w: f64,
    optimizer: FitOptimizer,
    max_grad: Option<usize>,
    tol: Option<f64>,
    out: Option<PathBuf>,
    summary: Option<PathBuf>,
    quiet: bool,
) -> Result<ExitCode, NsaError> {
    let mut p = FitParams::default();
    p.w = w;
    p.optimizer = optimizer;
    if let Some(m) = max_grad {
        p.max_grad = m;
    }
    p.tol = tol;
    let target = x0.unwrap_or(y0);
    if x0.is_some() {
        p.init = Init::Matrix(y0.clone());
    }
    let r = fit::fit_anchored(target, &p)?;
    let mut outs = Vec::new();
    if let Some(o) = out {
        outs.push(Output::Matrix(o, r.y.clone(), NpyDtype::F64));
    }
    if let Some(s) = summary {
        outs.push(Output::Text(
            s,
            serde_json::to_string_pretty(&summary_json(&r)).expect("serialisable") + "\n",
        ));
    }
    write_all(outs)?;
    if !quiet {
        println!("{}", final_line(&r));
    }
    Ok(ExitCode::SUCCESS)
}
