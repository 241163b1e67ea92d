//! One wgpu instance, adapter, device and queue, created once and shared.

use super::kernels::Kernels;
use crate::error::{GpuErrorKind, NsaError, Result};
use crate::params::Precision;
use std::sync::{Arc, Mutex, OnceLock};

pub use crate::device::AdapterSummary;

/// How to choose the adapter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuOptions {
    /// Use the first adapter whose name contains this (case-insensitive); `None` picks by
    /// type: discrete > integrated > virtual > software (CPU) > other. The environment
    /// variable `NSA_FLOW_ADAPTER` is used when this is `None`.
    pub adapter_name: Option<String>,
    /// Accept a software adapter (lavapipe, llvmpipe, WARP, SwiftShader). `backend = gpu`
    /// sets this; `auto` does not, so it falls back to the CPU path instead.
    pub allow_software: bool,
}

impl AdapterSummary {
    fn of(info: &wgpu::AdapterInfo, features: wgpu::Features, limits: &wgpu::Limits) -> Self {
        AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            is_software: info.device_type == wgpu::DeviceType::Cpu,
            shader_f64: features.contains(wgpu::Features::SHADER_F64),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            features: features.iter_names().map(|(n, _)| n.to_string()).collect(),
        }
    }
}

fn type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn backend_rank(b: wgpu::Backend) -> u8 {
    // prefer the native compute APIs over GL (which has no f64)
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    }
}

fn instance() -> wgpu::Instance {
    // honours WGPU_BACKEND and the WGPU_* debugging flags
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter wgpu can see, best first (the order [`GpuContext::new`] chooses in). Empty
/// where no driver is installed; `nsa-flow devices` prints this list.
///
/// ```no_run
/// for a in nsa_flow::gpu::list_adapters() {
///     println!("{} (software: {}, f64: {})", a.label(), a.is_software, a.shader_f64);
/// }
/// ```
pub fn list_adapters() -> Vec<AdapterSummary> {
    let inst = instance();
    let mut adapters = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
    sort_adapters(&mut adapters);
    adapters
        .iter()
        .map(|a| AdapterSummary::of(&a.get_info(), a.features(), &a.limits()))
        .collect()
}

fn sort_adapters(adapters: &mut [wgpu::Adapter]) {
    adapters.sort_by_key(|a| {
        let i = a.get_info();
        (
            type_rank(i.device_type),
            backend_rank(i.backend),
            !a.features().contains(wgpu::Features::SHADER_F64),
        )
    });
}

/// Errors wgpu reports asynchronously (validation, out of memory, device loss), kept until
/// the next readback turns them into an [`NsaError`].
#[derive(Debug, Default)]
pub(crate) struct ErrorSink {
    first: Option<NsaError>,
    lost: bool,
}

impl ErrorSink {
    fn record(&mut self, e: NsaError) {
        if self.first.is_none() {
            self.first = Some(e);
        }
    }
}

/// One device and queue, shared by every solve that uses it (clone the `Arc`).
///
/// ```no_run
/// use nsa_flow::gpu::{GpuContext, GpuOptions};
/// let ctx = GpuContext::new(&GpuOptions::default()).expect("a GPU adapter");
/// println!("{}", ctx.adapter().label());
/// ```
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    adapter: AdapterSummary,
    pub(crate) limits: wgpu::Limits,
    pub(crate) features: wgpu::Features,
    pub(crate) errors: Arc<Mutex<ErrorSink>>,
    /// The pipelines, built on first use per element type and kept with the device.
    kernels: Mutex<Vec<Arc<Kernels>>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.adapter.label())
            .finish()
    }
}

fn no_adapter(reason: String) -> NsaError {
    NsaError::BackendUnavailable {
        name: "gpu".into(),
        reason: format!(
            "{reason}; install a Vulkan driver (on Debian/Ubuntu: apt-get install mesa-vulkan-drivers \
             libvulkan1, or your GPU vendor's driver), or use backend = cpu"
        ),
    }
}

impl GpuContext {
    /// Chooses an adapter (see [`GpuOptions`]) and creates its device with the adapter's own
    /// limits and `SHADER_F64` where it has it.
    pub fn new(options: &GpuOptions) -> Result<Arc<GpuContext>> {
        let inst = instance();
        let mut adapters = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
        if adapters.is_empty() {
            return Err(no_adapter("no GPU adapter was found".into()));
        }
        sort_adapters(&mut adapters);
        let wanted = options.adapter_name.clone().or_else(|| {
            std::env::var("NSA_FLOW_ADAPTER")
                .ok()
                .filter(|s| !s.is_empty())
        });
        let adapter = match &wanted {
            Some(name) => {
                let lower = name.to_lowercase();
                let found = adapters
                    .iter()
                    .position(|a| a.get_info().name.to_lowercase().contains(&lower));
                match found {
                    Some(i) => adapters.swap_remove(i),
                    None => {
                        let names: Vec<String> =
                            adapters.iter().map(|a| a.get_info().name).collect();
                        return Err(NsaError::UnknownName {
                            kind: "GPU adapter",
                            name: name.clone(),
                            expected: names.join(", "),
                        });
                    }
                }
            }
            None => {
                let first = adapters.remove(0);
                if first.get_info().device_type == wgpu::DeviceType::Cpu && !options.allow_software
                {
                    return Err(no_adapter(format!(
                        "only a software adapter ({}) is present, which is slower than the CPU path",
                        first.get_info().name
                    )));
                }
                first
            }
        };
        Self::from_adapter(adapter)
    }

    fn from_adapter(adapter: wgpu::Adapter) -> Result<Arc<GpuContext>> {
        let info = adapter.get_info();
        let features = adapter.features() & wgpu::Features::SHADER_F64;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("nsa-flow"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| no_adapter(format!("the adapter {} refused a device: {e}", info.name)))?;
        let summary = AdapterSummary::of(&info, device.features(), &device.limits());
        Ok(Arc::new(Self::wrap(device, queue, summary)))
    }

    /// Wraps a device and queue the application already has. `adapter` describes it (from
    /// `adapter.get_info()`); the device's own features and limits are used.
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter: &wgpu::AdapterInfo,
    ) -> Arc<GpuContext> {
        let summary = AdapterSummary::of(adapter, device.features(), &device.limits());
        Arc::new(Self::wrap(device, queue, summary))
    }

    fn wrap(device: wgpu::Device, queue: wgpu::Queue, adapter: AdapterSummary) -> GpuContext {
        let errors = Arc::new(Mutex::new(ErrorSink::default()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let err = match &e {
                wgpu::Error::OutOfMemory { .. } => NsaError::gpu_caused(
                    GpuErrorKind::OutOfMemory,
                    "the device could not allocate",
                    e,
                ),
                _ => NsaError::gpu_caused(
                    GpuErrorKind::Validation,
                    "the device rejected a command",
                    e,
                ),
            };
            if let Ok(mut s) = sink.lock() {
                s.record(err);
            }
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut s) = sink.lock() {
                s.lost = true;
                s.record(NsaError::gpu(
                    GpuErrorKind::DeviceLost,
                    format!("{reason:?}: {message}"),
                ));
            }
        });
        let limits = device.limits();
        let features = device.features();
        GpuContext {
            device,
            queue,
            adapter,
            limits,
            features,
            errors,
            kernels: Mutex::new(Vec::new()),
        }
    }

    /// The adapter in use.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// Whether `f64` kernels can run.
    pub fn supports_f64(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F64)
    }

    /// The device (for applications that share it).
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The pipelines for `precision` (built once per context).
    pub fn kernels(&self, precision: Precision) -> Result<Arc<Kernels>> {
        let mut cache = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = cache.iter().find(|k| k.precision == precision) {
            return Ok(k.clone());
        }
        let k = Arc::new(Kernels::new(&self.device, precision)?);
        cache.push(k.clone());
        Ok(k)
    }

    /// A context shared by every caller in this process that asks with the same options
    /// (what `nsa_flow` uses, so repeated solves do not create devices and compile kernels
    /// again).
    pub fn shared(options: &GpuOptions) -> Result<Arc<GpuContext>> {
        type Shared = Mutex<Vec<(GpuOptions, Arc<GpuContext>)>>;
        static SHARED: OnceLock<Shared> = OnceLock::new();
        let cell = SHARED.get_or_init(|| Mutex::new(Vec::new()));
        let mut list = cell.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, ctx)) = list.iter().find(|(o, _)| o == options) {
            if !ctx.is_lost() {
                return Ok(ctx.clone());
            }
        }
        let ctx = GpuContext::new(options)?;
        list.retain(|(o, _)| o != options);
        list.push((options.clone(), ctx.clone()));
        Ok(ctx)
    }

    /// Whether the device was lost (a new context is needed).
    pub fn is_lost(&self) -> bool {
        self.errors.lock().map(|s| s.lost).unwrap_or(true)
    }

    /// The first asynchronous error since the last call, if any.
    pub(crate) fn take_error(&self) -> Option<NsaError> {
        self.errors.lock().ok().and_then(|mut s| s.first.take())
    }

    /// A buffer, with the device's out-of-memory and validation errors turned into typed
    /// errors (the one allocation path of every GPU user in the crate).
    pub(crate) fn create_buffer(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        let device = &self.device;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4),
            usage,
            mapped_at_creation: false,
        });
        let v = pollster::block_on(val.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = o {
            return Err(NsaError::gpu_caused(
                GpuErrorKind::OutOfMemory,
                format!("allocating {size} bytes for {label}"),
                e,
            ));
        }
        if let Some(e) = v {
            return Err(NsaError::gpu_caused(
                GpuErrorKind::Limit,
                format!("allocating {size} bytes for {label}"),
                e,
            ));
        }
        Ok(buffer)
    }

    /// Maps the first `bytes` of a MAP_READ `buffer` after the work submitted so far and
    /// decodes its `precision` elements into `out` (cleared first) as f64: the one readback
    /// path. `pending` is asked, after the wait and before anything is read, for an error the
    /// caller recorded meanwhile (it wins, and the buffer is unmapped); then the device's
    /// asynchronous errors, a lost device and a failed map are typed errors.
    pub(crate) fn read_back(
        &self,
        buffer: &wgpu::Buffer,
        bytes: u64,
        precision: Precision,
        out: &mut Vec<f64>,
        pending: impl FnOnce() -> Option<NsaError>,
    ) -> Result<()> {
        let slice = buffer.slice(0..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        if let Some(e) = pending() {
            buffer.unmap();
            return Err(e);
        }
        if let Some(e) = self.take_error() {
            return Err(e);
        }
        if let Err(e) = polled {
            return Err(NsaError::gpu_caused(
                GpuErrorKind::DeviceLost,
                "waiting for the device",
                e,
            ));
        }
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(NsaError::gpu_caused(
                    GpuErrorKind::DeviceLost,
                    "reading results back",
                    e,
                ))
            }
            Err(_) => {
                return Err(NsaError::gpu(
                    GpuErrorKind::DeviceLost,
                    "the device dropped a readback",
                ))
            }
        }
        out.clear();
        {
            let view = slice.get_mapped_range().map_err(|e| {
                NsaError::gpu_caused(GpuErrorKind::Validation, "mapping the readback", e)
            })?;
            match precision {
                Precision::F32 => out.extend(
                    view.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64),
                ),
                Precision::F64 => out.extend(
                    view.chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().unwrap())),
                ),
            }
        }
        buffer.unmap();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::AdapterSummary;

    fn adapter(name: &str, driver: &str) -> AdapterSummary {
        AdapterSummary {
            name: name.into(),
            backend: "Vulkan".into(),
            device_type: "Cpu".into(),
            driver: driver.into(),
            is_software: true,
            shader_f64: true,
            max_storage_buffer_binding_size: 1 << 27,
            max_buffer_size: 1 << 28,
            max_compute_workgroup_storage_size: 16384,
            max_compute_invocations_per_workgroup: 256,
            max_compute_workgroups_per_dimension: 65535,
            max_storage_buffers_per_shader_stage: 8,
            features: Vec::new(),
        }
    }

    #[test]
    fn loop_trip_cap_follows_the_mesa_version() {
        let llvmpipe = "llvmpipe (LLVM 15.0.6, 256 bits)";
        assert_eq!(
            adapter(llvmpipe, "llvmpipe Mesa 22.3.6 (LLVM 15.0.6)").loop_trip_cap(),
            Some(65_535)
        );
        assert_eq!(
            adapter(llvmpipe, "llvmpipe Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)").loop_trip_cap(),
            None
        );
        assert_eq!(adapter(llvmpipe, "llvmpipe").loop_trip_cap(), Some(65_535));
        assert_eq!(
            adapter("NVIDIA H100 80GB HBM3", "NVIDIA 570.86.15").loop_trip_cap(),
            None
        );
    }
}
