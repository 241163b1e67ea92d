//! The value parsers of the flags: every value is checked (and typed) when the command line
//! is read, so a bad one is a usage error (exit 2) with the library's message.

use nsa_flow::autograd::AutogradParams;
use nsa_flow::{LrChoice, Mode, NsaError, OptimizerKind};
use std::path::{Path, PathBuf};

/// The library's name parsing as a clap value parser: a bad name is a usage error (exit 2)
/// carrying the library's typed message.
pub fn parse_named<T: std::str::FromStr<Err = NsaError>>(s: &str) -> Result<T, NsaError> {
    s.parse()
}

/// `w`: a finite number in [0, 1].
pub fn parse_weight(s: &str) -> Result<f64, NsaError> {
    let w: f64 = parse_number("w", s)?;
    if !(w.is_finite() && (0.0..=1.0).contains(&w)) {
        return Err(NsaError::InvalidWeight(w));
    }
    Ok(w)
}

/// A number in [0, 1] (aggression).
pub fn parse_unit(s: &str) -> Result<f64, NsaError> {
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
pub fn parse_tol(s: &str) -> Result<f64, NsaError> {
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
pub fn parse_positive(s: &str) -> Result<usize, NsaError> {
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

pub fn parse_matrix_path(s: &str) -> Result<PathBuf, NsaError> {
    parse_path_with(s, &["npy", "csv"])
}

pub fn parse_npy_path(s: &str) -> Result<PathBuf, NsaError> {
    parse_path_with(s, &["npy"])
}

pub fn parse_trace_path(s: &str) -> Result<PathBuf, NsaError> {
    parse_path_with(s, &["csv", "json"])
}

pub fn parse_plot_path(s: &str) -> Result<PathBuf, NsaError> {
    parse_path_with(s, &["svg", "png"])
}

pub fn parse_json_path(s: &str) -> Result<PathBuf, NsaError> {
    parse_path_with(s, &["json"])
}

pub fn ext_is(p: &Path, e: &str) -> bool {
    p.extension()
        .and_then(|x| x.to_str())
        .is_some_and(|x| x.eq_ignore_ascii_case(e))
}

/// An adapter name fragment: not empty (an empty one would match every adapter).
pub fn parse_adapter(s: &str) -> Result<String, NsaError> {
    if s.trim().is_empty() {
        return Err(NsaError::InvalidParameter {
            name: "--adapter",
            reason: "an empty name matches every adapter; give part of one (see `nsa-flow info`)"
                .into(),
        });
    }
    Ok(s.to_string())
}

/// An optimizer the autograd solver accepts (its own validation decides: `fast` is not one).
pub fn parse_autograd_optimizer(s: &str) -> Result<OptimizerKind, NsaError> {
    let kind: OptimizerKind = s.parse()?;
    AutogradParams::default()
        .optimizer(kind)
        .validate()
        .map(|()| kind)
}

/// The `--lr-strategy` of `autograd`: `auto` or one of the library's strategies; an unknown
/// one is the library's [`NsaError::UnknownName`].
pub fn parse_lr_strategy(s: &str) -> Result<LrChoice, NsaError> {
    s.parse()
}

/// `run --solver`: a solver of nsa_flow 3.5.
pub fn parse_run_solver(s: &str) -> Result<nsa_flow::fit::FitOptimizer, NsaError> {
    nsa_flow::fit::FitOptimizer::parse(s)
}

/// The modes `bench --mode` runs.
#[derive(Clone, Debug)]
pub struct BenchModes(pub Vec<Mode>);

pub fn parse_bench_modes(s: &str) -> Result<BenchModes, NsaError> {
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

/// The `--ws` of `sweep`: finite, in [0, 1], distinct, at least one.
#[derive(Clone, Debug)]
pub struct WeightList(pub Vec<f64>);

pub fn parse_ws(s: &str) -> Result<WeightList, String> {
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

/// The `--ws` of `batch`: finite, in [0, 1], at least one (repeats allowed: problems differ).
#[derive(Clone, Debug)]
pub struct BatchWeights(pub Vec<f64>);

pub fn parse_batch_ws(s: &str) -> Result<BatchWeights, String> {
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

/// `fit --matrix-free`: auto | yes | no.
#[derive(Clone, Copy, Debug)]
pub enum Tristate {
    Auto,
    Yes,
    No,
}

/// `--matrix-free`: auto, yes or no.
pub fn parse_tristate(s: &str) -> Result<Tristate, NsaError> {
    match s {
        "auto" => Ok(Tristate::Auto),
        "yes" => Ok(Tristate::Yes),
        "no" => Ok(Tristate::No),
        other => Err(NsaError::UnknownName {
            kind: "matrix-free choice",
            name: other.into(),
            expected: "auto, yes, no".into(),
        }),
    }
}

/// `fit --sparseness`: a number in the open interval (0, 1).
pub fn parse_open_unit(s: &str) -> Result<f64, NsaError> {
    let v: f64 = s.trim().parse().map_err(|_| NsaError::InvalidParameter {
        name: "sparseness",
        reason: format!("{s:?} is not a number"),
    })?;
    if !(v > 0.0 && v < 1.0) {
        return Err(NsaError::InvalidParameter {
            name: "sparseness",
            reason: format!("{v:?} is outside (0, 1)"),
        });
    }
    Ok(v)
}

/// A finite number ≥ 0 (`fit --lobe`).
pub fn parse_nonneg_number(s: &str) -> Result<f64, NsaError> {
    let v: f64 = s.trim().parse().map_err(|_| NsaError::InvalidParameter {
        name: "the value",
        reason: format!("{s:?} is not a number"),
    })?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(NsaError::InvalidParameter {
            name: "the value",
            reason: format!("{v:?} is not a finite non-negative number"),
        });
    }
    Ok(v)
}
