//! Backend selection, in one place: the caller's [`DeviceOptions`], the `auto` policy, and
//! [`AnyBackend`] with the [`with_backend!`](crate::with_backend) dispatch, so the solver
//! entry points never name a device type.
//!
//! The policy: `cpu` is the CPU; `gpu` takes any adapter, software ones included (an error
//! naming the fix without one); `auto` takes a hardware adapter that computes in the
//! requested precision, and the CPU otherwise. A named adapter that is missing is an error,
//! never a silent fallback. Contexts are shared per process ([`GpuContext::shared`]), and an
//! `auto` that found no adapter remembers it, so repeated solves neither re-create devices
//! nor enumerate adapters again.

use super::cpu::CpuBackend;
#[cfg(feature = "gpu")]
use super::gpu::GpuBackend;
use crate::error::{NsaError, Result};
#[cfg(feature = "gpu")]
use crate::gpu::{GpuContext, GpuOptions};
use crate::params::{BackendChoice, Precision};
use crate::setters::with_setters;
#[cfg(feature = "gpu")]
use std::sync::Arc;

with_setters! {
    /// Where a computation runs: the backend asked for, its precision, and an adapter by name.
    #[derive(Clone, Debug, PartialEq)]
    #[non_exhaustive]
    pub struct DeviceOptions {
        /// `auto` (default), `cpu` or `gpu`.
        pub backend: BackendChoice => named(with_backend),
        /// The arithmetic (default f64).
        pub precision: Precision,
        /// A case-insensitive substring of the adapter's name (an error with `cpu`).
        pub adapter: Option<String> => Some(into String),
    }
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            backend: BackendChoice::Auto,
            precision: Precision::F64,
            adapter: None,
        }
    }
}

impl DeviceOptions {
    /// The device part of the common options (of a flow or an autograd flow).
    pub fn of(params: &crate::CommonOptions) -> DeviceOptions {
        DeviceOptions {
            backend: params.backend,
            precision: params.precision,
            adapter: params.gpu_adapter.clone(),
        }
    }

    /// An adapter named with `backend = cpu` is an error.
    pub fn validate(&self) -> Result<()> {
        if self.backend == BackendChoice::Cpu && self.adapter.is_some() {
            return Err(NsaError::InvalidParameter {
                name: "gpu_adapter",
                reason: "an adapter was named but backend = cpu".into(),
            });
        }
        Ok(())
    }

    #[cfg(feature = "gpu")]
    fn gpu_options(&self) -> GpuOptions {
        GpuOptions {
            adapter_name: self.adapter.clone(),
            allow_software: self.backend == BackendChoice::Gpu || self.adapter.is_some(),
        }
    }

    #[cfg(feature = "gpu")]
    /// The GPU these options run on, or `None` for the CPU. `worth_it` is the caller's say on
    /// whether a GPU would gain anything (`auto` stays on the CPU when it is false); `gpu`
    /// and a named adapter ignore it.
    pub fn gpu_context(&self, worth_it: bool) -> Result<Option<Arc<GpuContext>>> {
        self.validate()?;
        match self.backend {
            BackendChoice::Cpu => Ok(None),
            BackendChoice::Gpu => Ok(Some(GpuContext::shared(&self.gpu_options())?)),
            BackendChoice::Auto if !worth_it && self.adapter.is_none() => Ok(None),
            BackendChoice::Auto => {
                let Some(ctx) = auto_context(&self.gpu_options())? else {
                    return Ok(None);
                };
                if self.precision == Precision::F64 && !ctx.supports_f64() {
                    return Ok(None);
                }
                Ok(Some(ctx))
            }
        }
    }

    /// The GPU backend these options ask for (see the module docs), or `None` for the CPU.
    #[cfg(feature = "gpu")]
    pub fn gpu_backend(&self) -> Result<Option<GpuBackend>> {
        let auto = self.backend == BackendChoice::Auto;
        match self.gpu_context(true)? {
            None => Ok(None),
            // auto answers the CPU when the device cannot build its kernels
            Some(ctx) if auto => Ok(GpuBackend::new(ctx, self.precision).ok()),
            Some(ctx) => Ok(Some(GpuBackend::new(ctx, self.precision)?)),
        }
    }

    /// The backend these options ask for, ready to solve on.
    pub fn backend(&self) -> Result<AnyBackend> {
        #[cfg(feature = "gpu")]
        if let Some(gpu) = self.gpu_backend()? {
            return Ok(AnyBackend::Gpu(Box::new(gpu)));
        }
        #[cfg(not(feature = "gpu"))]
        self.no_gpu()?;
        Ok(match self.precision {
            Precision::F64 => AnyBackend::CpuF64(CpuBackend::new()),
            Precision::F32 => AnyBackend::CpuF32(CpuBackend::new()),
        })
    }

    /// Without the `gpu` feature: `gpu` and a named adapter are errors, `auto` is the CPU.
    #[cfg(not(feature = "gpu"))]
    pub(crate) fn no_gpu(&self) -> Result<()> {
        self.validate()?;
        if self.backend == BackendChoice::Gpu || self.adapter.is_some() {
            return Err(NsaError::InvalidParameter {
                name: "backend",
                reason: "this build of nsa-flow has no GPU backend (its `gpu` feature is off); \
                         use backend cpu or auto"
                    .into(),
            });
        }
        Ok(())
    }
}

#[cfg(feature = "gpu")]
/// The GPU backend `params.backend` asks for: `gpu` must get one (an error naming the fix
/// otherwise); `auto` takes a hardware adapter that can compute in the requested precision and
/// answers `None` (the CPU) otherwise ([`DeviceOptions::gpu_backend`]). Contexts are shared
/// per process ([`GpuContext::shared`]), so repeated solves reuse one device and its compiled
/// kernels.
///
/// ```
/// use nsa_flow::{flow::gpu_backend_for, BackendChoice, Params};
/// let cpu = Params::default().backend(BackendChoice::Cpu);
/// assert!(gpu_backend_for(&cpu).unwrap().is_none());
/// // `auto` answers Some(GpuBackend) only where a suitable hardware adapter exists
/// let maybe_gpu = gpu_backend_for(&Params::default()).unwrap();
/// println!("auto runs on {}", if maybe_gpu.is_some() { "the GPU" } else { "the CPU" });
/// ```
pub fn gpu_backend_for(params: &crate::Params) -> Result<Option<GpuBackend>> {
    DeviceOptions::of(&params.common).gpu_backend()
}

/// The hardware adapter `auto` runs on (or the one `options` names), or `None` for the CPU.
#[cfg(feature = "gpu")]
fn auto_context(options: &GpuOptions) -> Result<Option<Arc<GpuContext>>> {
    // Without a usable adapter, auto answers the CPU for the rest of the process rather than
    // enumerating adapters again on every solve (which costs tens of ms and starts driver
    // threads).
    static NO_ADAPTER: std::sync::Mutex<Vec<GpuOptions>> = std::sync::Mutex::new(Vec::new());
    let named = options.adapter_name.is_some();
    let known_absent = |o: &GpuOptions| NO_ADAPTER.lock().map(|v| v.contains(o)).unwrap_or(false);
    if !named && known_absent(options) {
        return Ok(None);
    }
    // Under a tight address-space limit some drivers (Mesa's GL) crash inside the enumeration
    // instead of failing; auto then does not probe and runs on the CPU.
    if !named && crate::memory::address_space_tight(crate::memory::GPU_PROBE_ROOM) {
        return Ok(None);
    }
    match GpuContext::shared(options) {
        Ok(ctx) => Ok(Some(ctx)),
        Err(e) if named => Err(e),
        Err(_) => {
            if let Ok(mut v) = NO_ADAPTER.lock() {
                v.push(options.clone());
            }
            Ok(None)
        }
    }
}

/// One of the backends, chosen at run time ([`DeviceOptions::backend`]); code generic over
/// [`super::Backend`] runs on it through [`with_backend!`](crate::with_backend).
#[derive(Debug)]
pub enum AnyBackend {
    /// The CPU in f64 (the oracle).
    CpuF64(CpuBackend<f64>),
    /// The CPU in f32.
    CpuF32(CpuBackend<f32>),
    /// A GPU, in the precision it was made for.
    #[cfg(feature = "gpu")]
    Gpu(Box<GpuBackend>),
}

/// Runs `$body` with `$be` bound to the concrete backend inside an [`AnyBackend`]
/// (`&mut AnyBackend` in, `&mut` the backend in the body).
///
/// ```
/// use nsa_flow::backend::select::DeviceOptions;
/// use nsa_flow::backend::Backend;
/// use nsa_flow::{with_backend, BackendChoice};
/// let opts = DeviceOptions::default().with_backend(BackendChoice::Cpu);
/// let mut any = opts.backend().unwrap();
/// let name = with_backend!(&mut any, be => be.name());
/// assert_eq!(name, "cpu-f64");
/// ```
#[cfg(feature = "gpu")]
#[macro_export]
macro_rules! with_backend {
    ($any:expr, $be:ident => $body:expr) => {
        match $any {
            $crate::backend::select::AnyBackend::CpuF64($be) => $body,
            $crate::backend::select::AnyBackend::CpuF32($be) => $body,
            $crate::backend::select::AnyBackend::Gpu($be) => {
                let $be = &mut **$be;
                $body
            }
        }
    };
}

/// Runs `$body` with `$be` bound to the concrete backend inside an [`AnyBackend`] (this build
/// has no GPU variant: the feature is decided here, not at the call site).
#[cfg(not(feature = "gpu"))]
#[macro_export]
macro_rules! with_backend {
    ($any:expr, $be:ident => $body:expr) => {
        match $any {
            $crate::backend::select::AnyBackend::CpuF64($be) => $body,
            $crate::backend::select::AnyBackend::CpuF32($be) => $body,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_the_cpu_in_its_precision_and_an_adapter_with_it_is_an_error() {
        let cpu = DeviceOptions {
            backend: BackendChoice::Cpu,
            precision: Precision::F32,
            adapter: None,
        };
        assert!(matches!(cpu.backend().unwrap(), AnyBackend::CpuF32(_)));
        let named = DeviceOptions {
            adapter: Some("any".into()),
            ..cpu
        };
        assert!(matches!(
            named.backend(),
            Err(NsaError::InvalidParameter {
                name: "gpu_adapter",
                ..
            })
        ));
    }

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn without_the_gpu_feature_gpu_is_an_error_and_auto_the_cpu() {
        let gpu = DeviceOptions {
            backend: BackendChoice::Gpu,
            ..DeviceOptions::default()
        };
        assert!(matches!(
            gpu.backend(),
            Err(NsaError::InvalidParameter {
                name: "backend",
                ..
            })
        ));
        let auto = DeviceOptions::default();
        assert!(matches!(auto.backend().unwrap(), AnyBackend::CpuF64(_)));
        let named = DeviceOptions {
            adapter: Some("any".into()),
            ..DeviceOptions::default()
        };
        assert!(named.backend().is_err(), "a named adapter is never ignored");
    }
}
