//! `nsa_flow_rs._native`: the native half of the Python package `nsa-flow-rs`. The public API
//! (argument names and defaults, result objects, numpy/torch handling) lives in the Python
//! package `nsa_flow_rs`; this module is its thin layer over the `nsa-flow` crate, in four
//! parts: arrays ([`arrays`]), errors ([`errors`]), parameters ([`params`]) and running a solve
//! ([`run`]).

mod arrays;
mod errors;
mod params;
mod run;

use arrays::{batch_to_numpy, matrix, opt_matrix, to_numpy};
use errors::{no_panic, shape, IntoPy};
use nalgebra::DMatrix;
use nsa_flow::batch::BatchProblem;
use nsa_flow::fit::FitResult;
use nsa_flow::layer::LayerOutput;
use nsa_flow::{NsaFlowLayer, NsaResult, TraceRow};
use numpy::ndarray::Array2;
use numpy::IntoPyArray;
use params::Opts;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

fn traces<'py>(py: Python<'py>, rows: &[TraceRow]) -> Bound<'py, PyAny> {
    Array2::from_shape_fn((rows.len(), 5), |(i, j)| {
        let r = &rows[i];
        match j {
            0 => r.iter as f64,
            1 => r.time,
            2 => r.fidelity,
            3 => r.orthogonality,
            _ => r.total_energy,
        }
    })
    .into_pyarray(py)
    .into_any()
}

// the keys are interned: one string object each for the process, not 23 per call
fn flow_dict<'py>(py: Python<'py>, r: NsaResult) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item(intern!(py, "traces"), traces(py, &r.traces))?;
    d.set_item(intern!(py, "final_iter"), r.final_iter)?;
    d.set_item(intern!(py, "best_total_energy"), r.best_total_energy)?;
    d.set_item(intern!(py, "best_Y_iteration"), r.best_iteration)?;
    d.set_item(intern!(py, "iterations"), r.iterations)?;
    d.set_item(intern!(py, "stop_reason"), r.stop_reason.as_str())?;
    d.set_item(intern!(py, "certificate"), r.certificate.value)?;
    d.set_item(
        intern!(py, "certificate_satisfied"),
        r.certificate.satisfied,
    )?;
    d.set_item(
        intern!(py, "learning_rate_initial"),
        r.learning_rate_initial,
    )?;
    d.set_item(intern!(py, "learning_rate_final"), r.learning_rate_final)?;
    d.set_item(intern!(py, "energy_evaluations"), r.energy_evaluations)?;
    d.set_item(intern!(py, "mode"), r.mode.as_str())?;
    d.set_item(intern!(py, "precision"), r.precision.as_str())?;
    d.set_item(intern!(py, "backend"), &r.device.name)?;
    d.set_item(
        intern!(py, "adapter"),
        r.device.adapter.as_ref().map(|a| a.label()),
    )?;
    d.set_item(intern!(py, "readbacks"), r.device.readbacks)?;
    d.set_item(intern!(py, "seconds"), r.seconds)?;
    d.set_item(intern!(py, "defect"), r.defect())?;
    d.set_item(intern!(py, "sparsity"), r.sparsity())?;
    d.set_item(intern!(py, "fid_weight"), r.scaling.fid_weight)?;
    d.set_item(intern!(py, "orth_weight"), r.scaling.orth_weight)?;
    d.set_item(intern!(py, "Y"), to_numpy(py, r.y))?;
    d.set_item(intern!(py, "target"), to_numpy(py, r.target))?;
    d.set_item(intern!(py, "start"), to_numpy(py, r.start))?;
    Ok(d)
}

/// `nsa_flow` of 0.7.7 (both modes): the result as a dict of the reference's keys and more.
#[pyfunction]
#[pyo3(signature = (y0, x0, opts, verbose=false, n_threads=None))]
fn flow<'py>(
    py: Python<'py>,
    y0: &Bound<'py, PyAny>,
    x0: Option<&Bound<'py, PyAny>>,
    opts: &Bound<'py, PyDict>,
    verbose: bool,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let y0 = matrix(y0, "Y0")?;
    let x0 = opt_matrix(x0, "X0")?;
    let mut o = Opts::new(Some(opts));
    let p = params::flow_params(&mut o)?;
    o.finish("nsa_flow")?;
    let r = run::solve(py, n_threads, verbose, |g| {
        nsa_flow::nsa_flow_with_callback(&y0, x0.as_ref(), &p, |i| g.on_iteration(i))
    })?;
    flow_dict(py, r)
}

/// The solver's own time for `repeats` calls of `nsa_flow` on one input (seconds per call),
/// measured inside Rust: the baseline of the Python call-overhead bench.
#[pyfunction]
#[pyo3(signature = (y0, x0, opts, repeats))]
fn time_flow<'py>(
    y0: &Bound<'py, PyAny>,
    x0: Option<&Bound<'py, PyAny>>,
    opts: &Bound<'py, PyDict>,
    repeats: usize,
) -> PyResult<f64> {
    let y0 = matrix(y0, "Y0")?;
    let x0 = opt_matrix(x0, "X0")?;
    let mut o = Opts::new(Some(opts));
    let p = params::flow_params(&mut o)?;
    o.finish("time_flow")?;
    no_panic(|| {
        let t = std::time::Instant::now();
        for _ in 0..repeats.max(1) {
            std::hint::black_box(nsa_flow::nsa_flow(&y0, x0.as_ref(), &p).py_err()?);
        }
        Ok(t.elapsed().as_secs_f64() / repeats.max(1) as f64)
    })
}

/// `nsa_flow_autograd`.
#[pyfunction]
#[pyo3(signature = (y0, x0, opts, verbose=false, n_threads=None))]
fn autograd<'py>(
    py: Python<'py>,
    y0: &Bound<'py, PyAny>,
    x0: Option<&Bound<'py, PyAny>>,
    opts: &Bound<'py, PyDict>,
    verbose: bool,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let y0 = matrix(y0, "Y0")?;
    let x0 = opt_matrix(x0, "X0")?;
    let mut o = Opts::new(Some(opts));
    let p = params::autograd_params(&mut o)?;
    o.finish("nsa_flow_autograd")?;
    let r = run::solve(py, n_threads, verbose, |g| {
        nsa_flow::autograd::nsa_flow_autograd_with_callback(&y0, x0.as_ref(), &p, |i| {
            g.on_iteration(i)
        })
    })?;
    let d = PyDict::new(py);
    d.set_item("traces", traces(py, &r.traces))?;
    d.set_item("final_iter", r.traces.len())?;
    d.set_item("iterations", r.iterations)?;
    d.set_item("best_total_energy", r.best_total_energy)?;
    d.set_item("best_Y_iteration", r.best_iteration)?;
    d.set_item("scale", r.scale)?;
    d.set_item("fid_eta", r.fid_eta)?;
    d.set_item("c_orth", r.c_orth)?;
    d.set_item("optimizer", r.optimizer.as_str())?;
    d.set_item("learning_rate", r.learning_rate)?;
    d.set_item("learning_rate_source", &r.learning_rate_source)?;
    d.set_item("final_grad_norm", r.final_grad_norm)?;
    d.set_item("gradient_evaluations", r.gradient_evaluations)?;
    d.set_item("stop_reason", r.stop_reason.as_str())?;
    d.set_item("mode", r.mode.as_str())?;
    d.set_item("precision", r.precision.as_str())?;
    d.set_item("backend", &r.device.name)?;
    d.set_item("adapter", r.device.adapter.as_ref().map(|a| a.label()))?;
    d.set_item("readbacks", r.device.readbacks)?;
    d.set_item("Y", to_numpy(py, r.y))?;
    d.set_item("target", to_numpy(py, r.target))?;
    Ok(d)
}

fn report_dict<'py>(
    py: Python<'py>,
    r: &nsa_flow::fit::BasisReport,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("defect_D", r.defect_d)?;
    d.set_item("defect_Cg", r.defect_cg)?;
    d.set_item("defect_C", r.defect_c)?;
    d.set_item("defect_Coff", r.defect_coff)?;
    d.set_item("raw_defect", r.raw_defect)?;
    d.set_item("effective_rank", r.effective_rank)?;
    d.set_item("column_norm_ratio", r.column_norm_ratio)?;
    d.set_item("sparsity", r.sparsity)?;
    d.set_item("max_support", r.max_support)?;
    d.set_item("mean_support", r.mean_support)?;
    d.set_item("n_dead_columns", r.n_dead_columns)?;
    d.set_item("support_overlap", r.support_overlap)?;
    Ok(d)
}

fn fit_dict<'py>(py: Python<'py>, r: FitResult) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("w", r.w)?;
    d.set_item("orth", r.orth.name())?;
    d.set_item("mode", r.mode.name())?;
    d.set_item("optimizer", r.optimizer.name())?;
    d.set_item("energy", r.energy)?;
    d.set_item("fidelity", r.fidelity)?;
    d.set_item("defect", r.defect)?;
    d.set_item("iters", r.iters)?;
    d.set_item("stop_reason", r.stop_reason.name())?;
    d.set_item("grad_map", r.grad_map)?;
    d.set_item("tol", r.tol)?;
    d.set_item("converged", r.converged)?;
    d.set_item("certificate", r.certificate.name())?;
    d.set_item("seconds", r.seconds)?;
    d.set_item("energy_start", r.energy_start)?;
    d.set_item("grad_map_start", r.grad_map_start)?;
    d.set_item("energy_reduction", r.energy_start - r.energy)?;
    d.set_item("n_grad", r.n_grad)?;
    d.set_item("n_energy", r.n_energy)?;
    d.set_item("basis_report", report_dict(py, &r.report)?)?;
    d.set_item("fidelity_mode", r.fidelity_mode.map(|f| f.name()))?;
    d.set_item("target_negative_mass", r.target_negative_mass)?;
    d.set_item("clamp_distance", r.clamp_distance)?;
    d.set_item("scale_ratio", r.scale_ratio)?;
    d.set_item("w_schedule", r.w_schedule.clone())?;
    d.set_item("matrix_free", r.matrix_free)?;
    d.set_item(
        "parts_report",
        r.parts_report
            .as_ref()
            .map(|p| report_dict(py, p))
            .transpose()?,
    )?;
    d.set_item("lobe_overlap", r.lobe_overlap)?;
    d.set_item("consolidated", r.consolidated)?;
    if let Some(s) = &r.part_stats {
        d.set_item("parts_n_dead", s.n_dead)?;
        d.set_item("parts_max_nnz", s.max_nnz)?;
        d.set_item("parts_mean_nnz", s.mean_nnz)?;
        d.set_item("parts_disjoint_ideal", s.disjoint_ideal)?;
        d.set_item("parts_mass_in_ideal", s.mass_in_ideal)?;
        d.set_item("parts_nnz", s.nnz_per_part.clone())?;
    }
    d.set_item("init", r.init)?;
    d.set_item("backend", &r.device.name)?;
    d.set_item("precision", r.precision.as_str())?;
    d.set_item("adapter", r.device.adapter.as_ref().map(|a| a.label()))?;
    d.set_item("readbacks", r.device.readbacks)?;
    d.set_item("parts", r.parts.map(|p| to_numpy(py, p)))?;
    d.set_item("Y", to_numpy(py, r.y))?;
    Ok(d)
}

/// 3.5's `nsa_flow(data_or_target, k, w, mode=…)` (`mode` one of auto, data, signed,
/// anchored and their aliases).
#[pyfunction]
#[pyo3(signature = (input, k, mode, opts, n_threads=None))]
fn fit<'py>(
    py: Python<'py>,
    input: &Bound<'py, PyAny>,
    k: Option<usize>,
    mode: &str,
    opts: &Bound<'py, PyDict>,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let x = matrix(input, "data_or_target")?;
    let mode = params::fit_mode(mode)?;
    let mut o = Opts::new(Some(opts));
    let p = params::fit_params(&mut o)?;
    o.finish("nsa_flow (3.5)")?;
    if k == Some(0) {
        return Err(errors::invalid("k", "must be at least 1"));
    }
    let r = run::solve(py, n_threads, false, |g| {
        let mut cb = |_: usize, _: f64, _: f64, _: usize| !g.poll();
        let mode = match mode {
            nsa_flow::fit::FitMode::Auto => match k {
                None => nsa_flow::fit::FitMode::Anchored,
                Some(_) => {
                    nsa_flow::validate_matrix("data_or_target", &x)?;
                    if x.min() < -1e-12 {
                        nsa_flow::fit::FitMode::Signed
                    } else {
                        nsa_flow::fit::FitMode::Data
                    }
                }
            },
            m => m,
        };
        match (mode, k) {
            // a k that disagrees with the target's columns: the library's dispatcher reports it
            (nsa_flow::fit::FitMode::Anchored, Some(k)) if k != x.ncols() => {
                nsa_flow::fit::fit(&x, Some(k), mode, &p)
            }
            (nsa_flow::fit::FitMode::Anchored, _) => {
                nsa_flow::fit::fit_anchored_with_callback(&x, &p, Some(&mut cb))
            }
            (nsa_flow::fit::FitMode::Data, Some(k)) => {
                check_fidelity(&p, mode)?;
                nsa_flow::fit::fit_data_with_callback(&x, k, &p, Some(&mut cb))
            }
            (nsa_flow::fit::FitMode::Signed, Some(k)) => {
                check_fidelity(&p, mode)?;
                nsa_flow::fit::fit_signed_with_callback(&x, k, &p, Some(&mut cb))
            }
            // the library's own dispatcher reports the missing k
            (m, None) => nsa_flow::fit::fit(&x, None, m, &p),
            (nsa_flow::fit::FitMode::Auto, _) => unreachable!("resolved above"),
        }
    })?;
    fit_dict(py, r)
}

fn check_fidelity(
    p: &nsa_flow::fit::FitParams,
    mode: nsa_flow::fit::FitMode,
) -> nsa_flow::Result<()> {
    if p.fidelity != nsa_flow::fit::Fidelity::Auto {
        return Err(nsa_flow::NsaError::InvalidParameter {
            name: "fidelity",
            reason: format!(
                "'{}' applies to the anchored mode only; mode '{}' uses the data reconstruction term",
                p.fidelity.name(),
                mode.name()
            ),
        });
    }
    Ok(())
}

/// `nsa_flow_retract_auto`.
#[pyfunction]
fn retract<'py>(
    py: Python<'py>,
    y: &Bound<'py, PyAny>,
    opts: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyAny>> {
    let y = matrix(y, "Y_cand")?;
    let mut o = Opts::new(Some(opts));
    let r = params::retract_options(&mut o)?;
    o.finish("nsa_flow_retract_auto")?;
    let out = no_panic(|| nsa_flow::retract(&y, &r).py_err())?;
    Ok(to_numpy(py, out).into_any())
}

/// `invariant_orthogonality_defect`.
#[pyfunction]
fn defect(y: &Bound<'_, PyAny>) -> PyResult<f64> {
    let y = matrix(y, "V")?;
    nsa_flow::validate_matrix("V", &y).py_err()?;
    no_panic(|| Ok(nsa_flow::invariant_orthogonality_defect(&y)))
}

/// `defect_fast`.
#[pyfunction]
fn defect_fast(y: &Bound<'_, PyAny>) -> PyResult<f64> {
    let y = matrix(y, "V")?;
    nsa_flow::validate_matrix("V", &y).py_err()?;
    no_panic(|| Ok(nsa_flow::defect_fast(&y)))
}

/// 3.5's `varimax` (Kaiser-normalised rotation with its sign gauge and column order).
#[pyfunction]
fn varimax<'py>(py: Python<'py>, e: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let e = matrix(e, "E")?;
    nsa_flow::validate_matrix("E", &e).py_err()?;
    let out = no_panic(|| Ok(nsa_flow::fit::eig::varimax(&e)))?;
    Ok(to_numpy(py, out).into_any())
}

/// 3.5's `basis_report`.
#[pyfunction]
fn basis_report<'py>(py: Python<'py>, y: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
    let y = matrix(y, "Y")?;
    nsa_flow::validate_matrix("Y", &y).py_err()?;
    let r = no_panic(|| Ok(nsa_flow::fit::basis_report(&y)))?;
    report_dict(py, &r)
}

/// The optimizer registry's names.
#[pyfunction]
fn optimizers() -> Vec<String> {
    nsa_flow::optimizers()
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `nsa_flow_batch`: B problems `[B, p, k]`, each with its own `w`.
#[pyfunction]
#[pyo3(signature = (y0s, x0s, ws, opts, n_threads=None, verbose=false))]
fn batch<'py>(
    py: Python<'py>,
    y0s: &Bound<'py, PyAny>,
    x0s: Option<&Bound<'py, PyAny>>,
    ws: Vec<f64>,
    opts: &Bound<'py, PyDict>,
    n_threads: Option<usize>,
    verbose: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let y0s = arrays::batch(y0s, "Y0")?;
    let x0s = match x0s {
        Some(x) if !x.is_none() => Some(arrays::batch(x, "X0")?),
        _ => None,
    };
    if let Some(x) = &x0s {
        if x.len() != y0s.len() {
            return Err(shape(format!(
                "X0 holds {} problems, Y0 {}",
                x.len(),
                y0s.len()
            )));
        }
    }
    if ws.len() != y0s.len() {
        return Err(shape(format!(
            "{} weights for {} problems",
            ws.len(),
            y0s.len()
        )));
    }
    let mut o = Opts::new(Some(opts));
    let p = params::flow_params(&mut o)?;
    o.finish("nsa_flow_batch")?;
    let problems: Vec<BatchProblem> = y0s
        .into_iter()
        .enumerate()
        .map(|(i, y0)| BatchProblem {
            y0,
            x0: x0s.as_ref().map(|x| x[i].clone()),
            w: ws[i],
        })
        .collect();
    let r = run::solve_waiting(py, n_threads, verbose, |guard| {
        nsa_flow::batch::nsa_flow_batch_with_callback(&problems, &p, |i, info| {
            guard.say(|| format!("[NSA-Flow] problem {i:3} | {}", run::iter_line(info)));
            guard.control()
        })
    })?;
    let d = PyDict::new(py);
    d.set_item("backend", &r.backend)?;
    d.set_item("seconds", r.seconds)?;
    let list = PyList::empty(py);
    for res in r.results {
        list.append(flow_dict(py, res)?)?;
    }
    d.set_item("results", list)?;
    Ok(d)
}

/// The layer's forward state, kept for its backward.
#[pyclass(module = "nsa_flow_rs._native", frozen)]
struct LayerState {
    out: LayerOutput,
}

/// `NsaFlowLayer`: a batch forward and the exact backward of its unrolled iterations.
#[pyclass(module = "nsa_flow_rs._native", frozen)]
struct Layer {
    layer: NsaFlowLayer,
}

#[pymethods]
impl Layer {
    #[new]
    fn new(opts: &Bound<'_, PyDict>) -> PyResult<Self> {
        let mut o = Opts::new(Some(opts));
        let p = params::flow_params(&mut o)?;
        o.finish("NSAFlowLayer")?;
        Ok(Layer {
            layer: NsaFlowLayer::new(p).py_err()?,
        })
    }

    /// `[B, p, k]` targets (and optional starts) → (`[B, p, k]` solutions, the state).
    #[pyo3(signature = (x0, y0=None, n_threads=None))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x0: &Bound<'py, PyAny>,
        y0: Option<&Bound<'py, PyAny>>,
        n_threads: Option<usize>,
    ) -> PyResult<(Bound<'py, PyAny>, LayerState)> {
        let x0 = arrays::batch(x0, "X0")?;
        let y0 = match y0 {
            Some(y) if !y.is_none() => Some(arrays::batch(y, "Y0")?),
            _ => None,
        };
        let out = run::solve_unstoppable(py, n_threads, || self.layer.forward(&x0, y0.as_deref()))?;
        Ok((batch_to_numpy(py, &out.ys).into_any(), LayerState { out }))
    }

    /// `dL/dY` `[B, p, k]` → (`dL/dX0`, `dL/dY0` or `None`).
    fn backward<'py>(
        &self,
        py: Python<'py>,
        state: &LayerState,
        grad_y: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
        let g: Vec<DMatrix<f64>> = arrays::batch(grad_y, "grad_Y")?;
        let r = run::solve_unstoppable(py, None, || self.layer.backward(&state.out, &g))?;
        Ok((
            batch_to_numpy(py, &r.x0).into_any(),
            r.y0.map(|y| batch_to_numpy(py, &y).into_any()),
        ))
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(flow, m)?)?;
    m.add_function(wrap_pyfunction!(time_flow, m)?)?;
    m.add_function(wrap_pyfunction!(autograd, m)?)?;
    m.add_function(wrap_pyfunction!(fit, m)?)?;
    m.add_function(wrap_pyfunction!(retract, m)?)?;
    m.add_function(wrap_pyfunction!(defect, m)?)?;
    m.add_function(wrap_pyfunction!(defect_fast, m)?)?;
    m.add_function(wrap_pyfunction!(varimax, m)?)?;
    m.add_function(wrap_pyfunction!(basis_report, m)?)?;
    m.add_function(wrap_pyfunction!(optimizers, m)?)?;
    m.add_function(wrap_pyfunction!(batch, m)?)?;
    m.add_class::<Layer>()?;
    m.add_class::<LayerState>()?;
    Ok(())
}
