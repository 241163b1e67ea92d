//! The one parameter layer: the Python wrappers pass their keyword arguments as a dict, and
//! each solver's parameters are read from it here, by the reference's names. Every key must
//! be used: an option this layer does not read is an error, never silently dropped.

use crate::arrays;
use crate::errors::{invalid, IntoPy};
use nsa_flow::autograd::AutogradParams;
use nsa_flow::fit::{Fidelity, FitMode, FitOptimizer, FitParams, Init, Orth};
use nsa_flow::{
    BackendChoice, InvSqrtMethod, LearningRate, Mode, NonNeg, OptimizerKind, Params, Precision,
    RetractOptions, Retraction,
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
        if let Some(v) = o.get::<f64>("w")? {
            p.w = v;
        }
        if let Some(v) = o.name::<Retraction>("retraction")? {
            p.retraction = v;
        }
        if let Some(v) = o.count("max_iter")? {
            p.max_iter = v;
        }
        if let Some(v) = o.get::<f64>("tol")? {
            p.tol = v;
        }
        if let Some(v) = o.get::<u64>("seed")? {
            p.seed = v;
        }
        if let Some(v) = nonneg(o, "apply_nonneg")? {
            p.nonneg = v;
        }
        if let Some(v) = o.count("record_every")? {
            p.record_every = v;
        }
        if let Some(v) = o.count("window_size")? {
            p.window_size = v;
        }
        if let Some(v) = precision(o)? {
            p.precision = v;
        }
        if let Some(v) = o.name::<Mode>("mode")? {
            p.mode = v;
        }
        let (b, a) = device(o)?;
        if let Some(b) = b {
            p.backend = b;
        }
        p.gpu_adapter = a;
        p.perturbed_start = o.matrix("perturbed_start")?;
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
    if let Some(v) = o.get::<bool>("simplified")? {
        p.simplified = v;
    }
    if let Some(v) = o.get::<bool>("project_full_gradient")? {
        p.project_full_gradient = v;
    }
    // c1_armijo: the reference accepts it and never reads it (REFERENCE.md §1.1). Reference
    // mode reproduces that; corrected mode refuses a value other than the default rather
    // than ignore it.
    if let Some(c1) = o.get::<f64>("c1_armijo")? {
        if p.mode == Mode::Corrected && c1 != 1e-6 {
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
        p.optimizer = v;
    }
    p.learning_rate = o.get::<f64>("initial_learning_rate")?;
    if let Some(v) = o.get::<String>("lr_strategy")? {
        p.lr_strategy = v;
    }
    if let Some(v) = o.get::<f64>("aggression")? {
        p.aggression = v;
    }
    if let Some(v) = o.name("fidelity_type")? {
        p.fidelity_type = v;
    }
    if let Some(v) = o.name("orth_type")? {
        p.orth_type = v;
    }
    p.validate().py_err()?;
    Ok(p)
}

/// `nsa_flow_retract_auto` options.
pub fn retract_options(o: &mut Opts<'_, '_>) -> PyResult<RetractOptions> {
    let mut r = RetractOptions::default();
    if let Some(v) = o.name::<Mode>("mode")? {
        r.style = v;
    }
    if let Some(v) = o.get::<f64>("w_retract")? {
        r.w = v;
    }
    if let Some(v) = o.name::<Retraction>("retraction_type")? {
        r.retraction = v;
    }
    if let Some(v) = o.get::<f64>("eps_rf")? {
        r.eps = v;
    }
    if let Some(v) = o.name::<InvSqrtMethod>("inv_method")? {
        r.inv_method = v;
    }
    r.ns_iter = o.count("ns_iter")?;
    if let Some(v) = o.count("eig_thresh")? {
        r.eig_thresh = v;
    }
    if let Some(v) = o.count("diag_thresh")? {
        r.diag_thresh = v;
    }
    Ok(r)
}

/// The 3.5 parameters (`nsa_flow(data_or_target, k, …)`, `nsa_flow_data`, `nsa_flow_signed`).
pub fn fit_params(o: &mut Opts<'_, '_>) -> PyResult<FitParams> {
    let mut p = FitParams::default();
    if let Some(v) = o.get::<f64>("w")? {
        p.w = v;
    }
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
    if let Some(v) = o.count("memory")? {
        p.memory = v;
    }
    if let Some(v) = o.get::<f64>("sigma")? {
        p.sigma = v;
    }
    p.sparseness = o.get::<f64>("sparseness")?;
    if let Some(v) = o.get::<bool>("consolidate")? {
        p.consolidate = v;
    }
    if let Some(v) = o.get::<f64>("lobe")? {
        p.lobe = v;
    }
    if let Some(s) = o.get::<String>("fidelity")? {
        p.fidelity = Fidelity::parse(&s).py_err()?;
    }
    if let Some(v) = o.get::<f64>("neg_mass_tol")? {
        p.neg_mass_tol = v;
    }
    if let Some(v) = o.get::<bool>("nonneg_target")? {
        p.nonneg = v;
    }
    if let Some(v) = o.count("continuation")? {
        p.continuation = v;
    }
    if let Some(v) = o.get::<f64>("w_start")? {
        p.w_start = v;
    }
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
    if let Some(v) = precision(o)? {
        p.precision = v;
    }
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
