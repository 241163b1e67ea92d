//! The GPU side: the wgpu context, the WGSL kernels and their pipelines. The backend that runs
//! the flow on them is [`crate::backend::gpu::GpuBackend`].

mod context;
mod kernels;
mod params;
pub mod shaders;

pub use context::{list_adapters, AdapterSummary, GpuContext, GpuOptions};
pub use kernels::{Kernel, Kernels};
pub use params::{
    encode_lane, lane_size, params_size, BandwidthParams, ParamsHeader, ParamsLayout, LITERAL,
};
