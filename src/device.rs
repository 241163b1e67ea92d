//! Where a solve ran: the adapter summary and the [`DeviceInfo`] every result carries.
//!
//! Plain data, compiled with or without the `gpu` feature, so a result's device can be read
//! (and matched on) the same way in every build.

use std::fmt;

/// What an adapter is, for listings and summaries.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSummary {
    /// The adapter's name.
    pub name: String,
    /// Graphics API (Vulkan, Metal, Dx12, Gl).
    pub backend: String,
    /// Discrete, integrated, virtual, CPU (software) or other.
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// Whether it is a software rasterizer running on the CPU.
    pub is_software: bool,
    /// Whether it supports `f64` in shaders.
    pub shader_f64: bool,
    /// Largest storage-buffer binding in bytes.
    pub max_storage_buffer_binding_size: u64,
    /// Largest buffer in bytes.
    pub max_buffer_size: u64,
    /// Workgroup memory in bytes.
    pub max_compute_workgroup_storage_size: u32,
    /// Invocations per workgroup.
    pub max_compute_invocations_per_workgroup: u32,
    /// Workgroups per dispatch dimension.
    pub max_compute_workgroups_per_dimension: u32,
    /// Storage buffers per shader stage.
    pub max_storage_buffers_per_shader_stage: u32,
    /// Feature names.
    pub features: Vec<String>,
}

impl AdapterSummary {
    /// The most loop trips one shader invocation may make, when the driver caps them:
    /// llvmpipe/lavapipe before Mesa 23 silently ends an invocation after 65 535 trips in
    /// all (WGPU-NOTES.md §6.1; Mesa 25 has no cap). A Mesa driver whose version cannot be
    /// read is assumed capped. `None`: no known cap.
    pub fn loop_trip_cap(&self) -> Option<usize> {
        let text = format!("{} {}", self.name, self.driver);
        let mesa_major = text.split("Mesa ").nth(1).and_then(|rest| {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse::<u32>().ok()
        });
        let software_mesa = text.contains("llvmpipe") || text.contains("lavapipe");
        match mesa_major {
            Some(v) if v >= 23 => None,
            Some(_) => Some(65_535),
            None if software_mesa || text.contains("Mesa") => Some(65_535),
            None => None,
        }
    }

    /// `name (backend, type)`.
    pub fn label(&self) -> String {
        format!("{} ({}, {})", self.name, self.backend, self.device_type)
    }
}

/// The device a solve ran on, as its result reports it.
///
/// ```
/// use nalgebra::DMatrix;
/// use nsa_flow::{nsa_flow, BackendChoice, Params};
/// let x0 = DMatrix::from_fn(12, 2, |i, j| ((i + 3 * j) % 4) as f64 + 1.0);
/// let res = nsa_flow(&x0, Some(&x0), &Params::default().backend(BackendChoice::Cpu)).unwrap();
/// assert_eq!(res.device.name, "cpu-f64");
/// assert!(!res.device.is_gpu() && res.device.adapter.is_none() && res.device.readbacks.is_none());
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DeviceInfo {
    /// The backend's name: `cpu-f64`, `cpu-f32`, or `gpu-<precision> (<adapter label>)`.
    pub name: String,
    /// The GPU adapter that ran the solve (`None` on the CPU).
    pub adapter: Option<AdapterSummary>,
    /// Round trips that read device memory back (`None` for a backend whose memory is the
    /// host's).
    pub readbacks: Option<u64>,
}

impl DeviceInfo {
    /// What `be` is, with the readbacks it has made so far.
    pub fn of<B: crate::backend::Backend + ?Sized>(be: &B) -> Self {
        DeviceInfo {
            name: be.name(),
            adapter: be.adapter(),
            readbacks: be.readbacks(),
        }
    }

    /// Whether a GPU adapter ran the solve.
    pub fn is_gpu(&self) -> bool {
        self.adapter.is_some()
    }
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}
