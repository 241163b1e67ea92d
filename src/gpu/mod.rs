//! The GPU side: the wgpu context, the WGSL kernels and their pipelines. The backend that runs
//! the flow on them is [`crate::backend::gpu::GpuBackend`].

mod context;
mod kernels;
mod params;
// The shader sources, the pipelines and the uniform's layout are internals that tests and
// benches reach (no stability promise): hidden from the documentation.
#[doc(hidden)]
pub mod shaders;

pub use context::{list_adapters, AdapterSummary, GpuContext, GpuOptions};
pub use kernels::Kernel;
#[doc(hidden)]
pub use kernels::Kernels;
pub(crate) use params::{encode_elements, HeaderTable};
#[doc(hidden)]
pub use params::{
    encode_lane, lane_size, params_size, BandwidthParams, ParamsHeader, ParamsLayout, LITERAL,
};
