//! The one parameter layer: the Python wrappers pass their keyword arguments as a dict, and
//! each solver's parameters are read from it here, by the reference's names. Every key must
//! be used: an option this layer does not read is an error, never silently dropped.

use crate::arrays;
use crate::errors::{invalid, IntoPy};
use nsa_flow::autograd::AutogradParams;
use nsa_flow::fit::{Fidelity, FitMode, FitOptimizer, FitParams, Init, Orth};
use nsa_flow::{
    BackendChoice, InvSqrtMethod, LearningRate, LrChoice, Mode, NonNeg, OptimizerKind, Params,
    Precision, RetractOptions, Retraction,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::HashSet;
use std::str::FromStr;

/// A dict of options, read once each.
pub struct Opts<'a, 'py> {
    dict: Option<&'a Bound<'py, PyDict>>,
    used: HashSet<String>,
}

impl<'a, 'py> Opts<'a, 'py> {
    pub fn new(dict: Option<&'a Bound<'py, PyDict>>) -> Self {
        Opts {
            dict,
            used: HashSet::new(),
        }
    }

    fn raw(&mut self, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(d) = self.dict else { return Ok(None) };
        self.used.insert(key.to_string());
        Ok(d.get_item(key)?.filter(|v| !v.is_none()))
    }

    /// A value extracted as `T`, `None` when absent or `None`.
    pub fn get<T: for<'b> FromPyObjectOwned<'py>>(&mut self, key: &str) -> PyResult<Option<T>> {
        match self.raw(key)? {
            None => Ok(None),
            Some(v) => v
                .extract::<T>()
                .map(Some)
                .map_err(|_| invalid(key, format!("cannot use {} here", repr(&v)))),
        }
    }

    /// A name parsed by the library's `FromStr` (its error lists the accepted names).
    pub fn name<T: FromStr<Err = nsa_flow::NsaError>>(&mut self, key: &str) -> PyResult<Option<T>> {
        match self.get::<String>(key)? {
            None => Ok(None),
            Some(s) => s.parse::<T>().py_err().map(Some),
        }
    }

    /// A non-negative integer.
    pub fn count(&mut self, key: &str) -> PyResult<Option<usize>> {
        match self.raw(key)? {
            None => Ok(None),
            Some(v) => {
                if v.is_instance_of::<pyo3::types::PyBool>() {
                    return Err(invalid(key, "expected an integer, got a bool"));
                }
                let i: i64 = v
                    .extract()
                    .map_err(|_| invalid(key, format!("expected an integer, got {v}")))?;
                usize::try_from(i)
                    .map(Some)
                    .map_err(|_| invalid(key, format!("{i} is negative")))
            }
        }
    }

    /// A matrix option.
    pub fn matrix(&mut self, key: &str) -> PyResult<Option<nalgebra::DMatrix<f64>>> {
        let v = self.raw(key)?;
        arrays::opt_matrix(v.as_ref(), key)
    }

    /// Fails on any key that was not read.
    pub fn finish(self, what: &str) -> PyResult<()> {
        let Some(d) = self.dict else { return Ok(()) };
        for k in d.keys() {
            let k: String = k.extract()?;
            if !self.used.contains(&k) {
                return Err(crate::errors::UnknownNameError::new_err(format!(
                    "unknown option '{k}' for {what}"
                )));
            }
        }
        Ok(())
    }
}

use pyo3::conversion::FromPyObjectOwned;

/// `*slot = v` when the option was given; the default stays otherwise.
fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

fn repr(v: &Bound<'_, PyAny>) -> String {
    v.repr()
        .map_or_else(|_| "this value".into(), |r| r.to_string())
}

/// `apply_nonneg`: a bool (the reference's `True`/`False`) or a mode name.
fn nonneg(o: &mut Opts<'_, '_>, key: &str) -> PyResult<Option<NonNeg>> {
    match o.raw(key)? {
        None => Ok(None),
        Some(v) => {
            if let Ok(b) = v.extract::<bool>() {
                Ok(Some(if b { NonNeg::Hard } else { NonNeg::None }))
            } else if let Ok(s) = v.extract::<String>() {
                s.parse::<NonNeg>().py_err().map(Some)
            } else {
                Err(invalid(
                    key,
                    format!("expected a bool or 'hard'/'softplus'/'none', got {v}"),
                ))
            }
        }
    }
}

/// `precision`: "float64"/"f64" or "float32"/"f32".
fn precision(o: &mut Opts<'_, '_>) -> PyResult<Option<Precision>> {
    o.name::<Precision>("precision")
}

/// The common device keys: backend, gpu_adapter.
fn device(o: &mut Opts<'_, '_>) -> PyResult<(Option<BackendChoice>, Option<String>)> {
    Ok((
        o.name::<BackendChoice>("backend")?,
        o.get::<String>("gpu_adapter")?,
    ))
}

/// Reads the options `nsa_flow` and `nsa_flow_autograd` share (the same names, types and
/// meaning in `Params` and `AutogradParams`) into `$p`; a macro because the two structs
/// share the field names, not a type.
macro_rules! read_common {
    ($o:expr, $p:expr) => {{
        let (o, p) = ($o, $p);
        set(&mut p.common.w, o.get::<f64>("w")?);
        set(
            &mut p.common.retraction,
            o.name::<Retraction>("retraction")?,
        );
        set(&mut p.common.max_iter, o.count("max_iter")?);
        set(&mut p.tol, o.get::<f64>("tol")?);
        set(&mut p.common.seed, o.get::<u64>("seed")?);
        set(&mut p.nonneg, nonneg(o, "apply_nonneg")?);
        set(&mut p.common.record_every, o.count("record_every")?);
        set(&mut p.common.window_size, o.count("window_size")?);
        set(&mut p.common.precision, precision(o)?);
        set(&mut p.common.mode, o.name::<Mode>("mode")?);
        let (b, a) = device(o)?;
        if let Some(b) = b {
            p.common.backend = b;
        }
        p.common.gpu_adapter = a;
        p.common.perturbed_start = o.matrix("perturbed_start")?;
    }};
}

/// `nsa_flow` (0.7.7) parameters. `verbose` is read by the caller.
pub fn flow_params(o: &mut Opts<'_, '_>) -> PyResult<Params> {
    let mut p = Params::default();
    read_common!(&mut *o, &mut p);
    if let Some(v) = o.get::<String>("optimizer")? {
        p.optimizer = OptimizerKind::from_str(&v).py_err()?;
    }
    if let Some(v) = o.raw("initial_learning_rate")? {
        p.learning_rate = if let Ok(s) = v.extract::<String>() {
            s.parse::<LearningRate>().py_err()?
        } else {
            let x: f64 = v.extract().map_err(|_| {
                invalid(
                    "initial_learning_rate",
                    format!("expected 'default' or a number, got {v}"),
                )
            })?;
            LearningRate::Value(x)
        };
    }
    set(&mut p.simplified, o.get::<bool>("simplified")?);
    set(
        &mut p.project_full_gradient,
        o.get::<bool>("project_full_gradient")?,
    );
    // c1_armijo: the reference accepts it and never reads it (REFERENCE.md §1.1). Reference
    // mode reproduces that; corrected mode refuses a value other than the default rather
    // than ignore it.
    if let Some(c1) = o.get::<f64>("c1_armijo")? {
        if p.common.mode == Mode::Corrected && c1 != 1e-6 {
            return Err(invalid(
                "c1_armijo",
                "nsa_flow 0.7.7 never reads c1_armijo; mode='reference' accepts any value as it did, mode='corrected' uses its own line search and accepts only the default 1e-6",
            ));
        }
    }
    p.validate().py_err()?;
    Ok(p)
}

/// `nsa_flow_autograd` parameters.
pub fn autograd_params(o: &mut Opts<'_, '_>) -> PyResult<AutogradParams> {
    let mut p = AutogradParams::default();
    read_common!(&mut *o, &mut p);
    if let Some(v) = o.get::<String>("optimizer")? {
        p.optimizer = OptimizerKind::from_str(&v).py_err()?;
    }
    p.learning_rate = o.get::<f64>("initial_learning_rate")?;
    if let Some(v) = o.get::<String>("lr_strategy")? {
        p.lr_strategy = LrChoice::from_str(&v).py_err()?;
    }
    set(&mut p.aggression, o.get::<f64>("aggression")?);
    set(&mut p.fidelity_type, o.name("fidelity_type")?);
    set(&mut p.orth_type, o.name("orth_type")?);
    p.validate().py_err()?;
    Ok(p)
}

/// `nsa_flow_retract_auto` options.
pub fn retract_options(o: &mut Opts<'_, '_>) -> PyResult<RetractOptions> {
    let mut r = RetractOptions::default();
    set(&mut r.style, o.name::<Mode>("mode")?);
    set(&mut r.w, o.get::<f64>("w_retract")?);
    set(&mut r.retraction, o.name::<Retraction>("retraction_type")?);
    set(&mut r.eps, o.get::<f64>("eps_rf")?);
    set(&mut r.inv_method, o.name::<InvSqrtMethod>("inv_method")?);
    r.ns_iter = o.count("ns_iter")?;
    set(&mut r.eig_thresh, o.count("eig_thresh")?);
    set(&mut r.diag_thresh, o.count("diag_thresh")?);
    Ok(r)
}

/// The 3.5 parameters (`nsa_flow(data_or_target, k, …)`, `nsa_flow_data`, `nsa_flow_signed`).
pub fn fit_params(o: &mut Opts<'_, '_>) -> PyResult<FitParams> {
    let mut p = FitParams::default();
    set(&mut p.w, o.get::<f64>("w")?);
    if let Some(s) = o.get::<String>("orth")? {
        p.orth = Some(Orth::from_str(&s).py_err()?);
    }
    if let Some(s) = o.get::<String>("optimizer")? {
        p.optimizer = FitOptimizer::parse(&s).py_err()?;
    }
    if let Some(v) = o.count("max_iter")? {
        if v == 0 {
            return Err(invalid("max_iter", "must be at least 1"));
        }
        p.max_grad = v;
    }
    p.tol = o.get::<f64>("tol")?;
    set(&mut p.memory, o.count("memory")?);
    set(&mut p.sigma, o.get::<f64>("sigma")?);
    p.sparseness = o.get::<f64>("sparseness")?;
    set(&mut p.consolidate, o.get::<bool>("consolidate")?);
    set(&mut p.lobe, o.get::<f64>("lobe")?);
    if let Some(s) = o.get::<String>("fidelity")? {
        p.fidelity = Fidelity::parse(&s).py_err()?;
    }
    set(&mut p.neg_mass_tol, o.get::<f64>("neg_mass_tol")?);
    set(&mut p.nonneg, o.get::<bool>("nonneg_target")?);
    set(&mut p.continuation, o.count("continuation")?);
    set(&mut p.w_start, o.get::<f64>("w_start")?);
    p.matrix_free = o.get::<bool>("matrix_free")?;
    let seed = o.get::<u64>("seed")?;
    if let Some(init) = o.raw("init")? {
        p.init = if let Ok(s) = init.extract::<String>() {
            match Init::parse(&s).py_err()? {
                Init::Random(_) => Init::Random(seed.unwrap_or(0)),
                i => i,
            }
        } else {
            Init::Matrix(arrays::matrix(&init, "init")?)
        };
    }
    if seed.is_some() && !matches!(p.init, Init::Random(_)) {
        return Err(invalid("seed", "only init='random' draws random numbers"));
    }
    set(&mut p.precision, precision(o)?);
    let (b, a) = device(o)?;
    if let Some(b) = b {
        p.backend = b;
    }
    p.gpu_adapter = a;
    Ok(p)
}

/// 3.5's mode name.
pub fn fit_mode(s: &str) -> PyResult<FitMode> {
    FitMode::parse(s).py_err()
}
