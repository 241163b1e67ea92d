//! Every compute pipeline, built once per device and element type, over one shared bind-group
//! layout ([`Kernels::layout_entries`]): binding 0 the uniform (dynamic offset into a ring),
//! 1–6 read-write storage (the inputs, the output, the small k×k buffer, the aux partials
//! buffer), 7 the read-only per-problem entries (dynamic offset). The WGSL side of bindings 0,
//! 5, 6 and 7 is declared once, in `shaders/prelude.wgsl`.

use super::shaders::{self, specialize, ShaderFile};
use crate::error::{GpuErrorKind, NsaError, Result};
use crate::params::Precision;

/// A pipeline by what it computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Kernel {
    Combine,
    ScaleInPlace,
    NonnegInPlace,
    GramPartial,
    GramReduce,
    MulSmall,
    PartialSums,
    PartialSumsMulti,
    Finalize,
    GradCoef,
    GramStats,
    KkMatmul,
    BlendMatrix,
    InvSqrtDiag,
    NsInit,
    NsFused,
    NsShared,
    NsStepA,
    NsStepB,
    NsCheck,
    NsFinish,
    SgdpRows,
    SgdpDecide,
    SgdpApply,
    CopyWords,
    NonnegBackward,
    KkAffine,
    RefCoefs,
    CorrectedCoefs,
    SylInit,
    SylProducts,
    SylUpdate,
    SylCheck,
    BackwardFinish,
    SylFused,
    TorchElem,
    AdampRows,
    AdampApply,
    SkinnyPartial,
    SkinnyReduce,
}

impl Kernel {
    /// Every kernel, in declaration order.
    pub const ALL: [Kernel; 40] = [
        Kernel::Combine,
        Kernel::ScaleInPlace,
        Kernel::NonnegInPlace,
        Kernel::GramPartial,
        Kernel::GramReduce,
        Kernel::MulSmall,
        Kernel::PartialSums,
        Kernel::PartialSumsMulti,
        Kernel::Finalize,
        Kernel::GradCoef,
        Kernel::GramStats,
        Kernel::KkMatmul,
        Kernel::BlendMatrix,
        Kernel::InvSqrtDiag,
        Kernel::NsInit,
        Kernel::NsFused,
        Kernel::NsShared,
        Kernel::NsStepA,
        Kernel::NsStepB,
        Kernel::NsCheck,
        Kernel::NsFinish,
        Kernel::SgdpRows,
        Kernel::SgdpDecide,
        Kernel::SgdpApply,
        Kernel::CopyWords,
        Kernel::NonnegBackward,
        Kernel::KkAffine,
        Kernel::RefCoefs,
        Kernel::CorrectedCoefs,
        Kernel::SylInit,
        Kernel::SylProducts,
        Kernel::SylUpdate,
        Kernel::SylCheck,
        Kernel::BackwardFinish,
        Kernel::SylFused,
        Kernel::TorchElem,
        Kernel::AdampRows,
        Kernel::AdampApply,
        Kernel::SkinnyPartial,
        Kernel::SkinnyReduce,
    ];

    /// The kernel family (file) of this kernel and its entry point there.
    #[doc(hidden)]
    pub fn source(self) -> (ShaderFile, &'static str) {
        use Kernel::*;
        match self {
            Combine => (shaders::ELEMENTWISE, "combine"),
            ScaleInPlace => (shaders::ELEMENTWISE, "scale_in_place"),
            NonnegInPlace => (shaders::ELEMENTWISE, "nonneg_in_place"),
            GramPartial => (shaders::GRAM, "gram_partial"),
            GramReduce => (shaders::GRAM, "gram_reduce"),
            MulSmall => (shaders::MATMUL_SMALL, "mul_small"),
            PartialSums => (shaders::REDUCE, "partial_sums"),
            PartialSumsMulti => (shaders::REDUCE, "partial_sums_multi"),
            Finalize => (shaders::REDUCE, "finalize"),
            GradCoef => (shaders::SMALL, "grad_coef"),
            GramStats => (shaders::SMALL, "gram_stats"),
            KkMatmul => (shaders::SMALL, "kk_matmul"),
            BlendMatrix => (shaders::SMALL, "blend_matrix"),
            InvSqrtDiag => (shaders::SMALL, "inv_sqrt_diag"),
            NsInit => (shaders::INV_SQRT, "ns_init"),
            NsFused => (shaders::INV_SQRT, "ns_fused"),
            NsShared => (shaders::INV_SQRT, "ns_shared"),
            NsStepA => (shaders::INV_SQRT, "ns_step_a"),
            NsStepB => (shaders::INV_SQRT, "ns_step_b"),
            NsCheck => (shaders::INV_SQRT, "ns_check"),
            NsFinish => (shaders::INV_SQRT, "ns_finish"),
            SgdpRows => (shaders::OPTIMIZER, "sgdp_rows"),
            SgdpDecide => (shaders::OPTIMIZER, "sgdp_decide"),
            SgdpApply => (shaders::OPTIMIZER, "sgdp_apply"),
            CopyWords => (shaders::BANDWIDTH, "copy_words"),
            NonnegBackward => (shaders::ELEMENTWISE, "nonneg_backward"),
            KkAffine => (shaders::AUTOGRAD, "kk_affine"),
            RefCoefs => (shaders::AUTOGRAD, "ref_coefs"),
            CorrectedCoefs => (shaders::AUTOGRAD, "corrected_coefs"),
            SylInit => (shaders::AUTOGRAD, "syl_init"),
            SylProducts => (shaders::AUTOGRAD, "syl_products"),
            SylUpdate => (shaders::AUTOGRAD, "syl_update"),
            SylCheck => (shaders::AUTOGRAD, "syl_check"),
            BackwardFinish => (shaders::AUTOGRAD, "backward_finish"),
            SylFused => (shaders::AUTOGRAD, "syl_fused"),
            TorchElem => (shaders::TORCH_OPTIM, "torch_elem"),
            AdampRows => (shaders::OPTIMIZER, "adamp_rows"),
            AdampApply => (shaders::OPTIMIZER, "adamp_apply"),
            SkinnyPartial => (shaders::SKINNY, "skinny_partial"),
            SkinnyReduce => (shaders::SKINNY, "skinny_reduce"),
        }
    }
}

/// The pipelines of one element type, and the layout they share.
pub struct Kernels {
    pub(crate) layout: wgpu::BindGroupLayout,
    pipelines: Vec<wgpu::ComputePipeline>,
    /// The element type the pipelines compute in.
    pub precision: Precision,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels")
            .field("precision", &self.precision)
            .field("pipelines", &self.pipelines.len())
            .finish()
    }
}

fn storage(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

impl Kernels {
    /// The entries of the bind-group layout every pipeline shares (one per binding, in
    /// binding order); `tests/shaders.rs` checks every kernel's WGSL bindings against them.
    #[doc(hidden)]
    pub fn layout_entries() -> [wgpu::BindGroupLayoutEntry; 8] {
        [
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: None,
                },
                count: None,
            },
            // read-write although the kernels only read them: the matrices of a batch are
            // blocks of shared buffers, and one buffer may be bound as input and output
            // of a launch (read-only and read-write uses of one buffer cannot mix)
            storage(1, false),
            storage(2, false),
            storage(3, false),
            storage(4, false),
            storage(5, false),
            storage(6, false),
            // one `struct Lane` per problem of a launch, at a per-launch offset
            wgpu::BindGroupLayoutEntry {
                binding: 7,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: true },
                    has_dynamic_offset: true,
                    min_binding_size: None,
                },
                count: None,
            },
        ]
    }

    /// Compiles every kernel family for `precision` on `device`.
    pub fn new(device: &wgpu::Device, precision: Precision) -> Result<Kernels> {
        if precision == Precision::F64 && !device.features().contains(wgpu::Features::SHADER_F64) {
            return Err(NsaError::gpu(
                GpuErrorKind::MissingFeature,
                "this adapter has no SHADER_F64 (f64 in shaders); use precision = f32, or \
                 backend = cpu for f64",
            ));
        }
        let entries = Kernels::layout_entries();
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("nsa-flow kernels"),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("nsa-flow kernels"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut modules: Vec<(&'static str, wgpu::ShaderModule)> = Vec::new();
        for file in shaders::ALL {
            let src = specialize(&file, precision);
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(file.name),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
            modules.push((file.name, module));
        }
        let mut pipelines = Vec::with_capacity(Kernel::ALL.len());
        for kernel in Kernel::ALL {
            let (file, entry) = kernel.source();
            let module = &modules.iter().find(|(n, _)| *n == file.name).unwrap().1;
            pipelines.push(
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&pipeline_layout),
                    module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions::default(),
                    cache: None,
                }),
            );
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(NsaError::gpu_caused(
                GpuErrorKind::Validation,
                format!("building the {precision} kernels failed"),
                e,
            ));
        }
        Ok(Kernels {
            layout,
            pipelines,
            precision,
        })
    }

    /// The pipeline of a kernel.
    pub(crate) fn pipeline(&self, k: Kernel) -> &wgpu::ComputePipeline {
        let i = Kernel::ALL.iter().position(|x| *x == k).unwrap();
        &self.pipelines[i]
    }
}
