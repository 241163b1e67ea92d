//! The WGSL sources (one file per kernel family under `shaders/`) and their specialisation
//! to an element type.
//!
//! Every file is valid standalone WGSL for `f32` (it starts with `alias T = f32;`). For `f64`
//! the host rewrites that alias and, on lines carrying a `// @f64 ` marker, replaces the code
//! before the marker by the code after it (the bit tests of `is_finite`, which depend on the
//! width).

use crate::params::Precision;

/// A kernel family: its file name and source.
#[derive(Clone, Copy, Debug)]
pub struct ShaderFile {
    /// File name under `shaders/`.
    pub name: &'static str,
    /// The `f32` source as written.
    pub source: &'static str,
}

/// Elementwise combinations, scaling and the non-negativity maps.
pub const ELEMENTWISE: ShaderFile = ShaderFile {
    name: "elementwise.wgsl",
    source: include_str!("../../shaders/elementwise.wgsl"),
};
/// Split-row Gram products `AᵀB`.
pub const GRAM: ShaderFile = ShaderFile {
    name: "gram.wgsl",
    source: include_str!("../../shaders/gram.wgsl"),
};
/// p×k times k×k products with a fused epilogue.
pub const MATMUL_SMALL: ShaderFile = ShaderFile {
    name: "matmul_small.wgsl",
    source: include_str!("../../shaders/matmul_small.wgsl"),
};
/// Reductions to readback partials and device scalars.
pub const REDUCE: ShaderFile = ShaderFile {
    name: "reduce.wgsl",
    source: include_str!("../../shaders/reduce.wgsl"),
};
/// k×k work: gradient coefficients, Gram statistics, products, blend matrices.
pub const SMALL: ShaderFile = ShaderFile {
    name: "small.wgsl",
    source: include_str!("../../shaders/small.wgsl"),
};
/// The Newton–Schulz inverse square root.
pub const INV_SQRT: ShaderFile = ShaderFile {
    name: "inv_sqrt.wgsl",
    source: include_str!("../../shaders/inv_sqrt.wgsl"),
};
/// The radial projection of SGDP and AdamP.
pub const OPTIMIZER: ShaderFile = ShaderFile {
    name: "optimizer.wgsl",
    source: include_str!("../../shaders/optimizer.wgsl"),
};
/// The elementwise passes of the torch / torch_optimizer optimizers.
pub const TORCH_OPTIM: ShaderFile = ShaderFile {
    name: "torch_optim.wgsl",
    source: include_str!("../../shaders/torch_optim.wgsl"),
};
/// A copy kernel used only to measure the adapter's memory bandwidth.
pub const BANDWIDTH: ShaderFile = ShaderFile {
    name: "bandwidth.wgsl",
    source: include_str!("../../shaders/bandwidth.wgsl"),
};

/// The k×k work of the autograd backward (the Sylvester sign iteration and its coefficients).
pub const AUTOGRAD: ShaderFile = ShaderFile {
    name: "autograd.wgsl",
    source: include_str!("../../shaders/autograd.wgsl"),
};

/// Dense × skinny products `A·B` (the data fit's Gram operator), split over the inner
/// dimension with a fixed-order reduction.
pub const SKINNY: ShaderFile = ShaderFile {
    name: "skinny.wgsl",
    source: include_str!("../../shaders/skinny.wgsl"),
};

/// Every kernel family.
pub const ALL: [ShaderFile; 11] = [
    ELEMENTWISE,
    GRAM,
    MATMUL_SMALL,
    REDUCE,
    SMALL,
    INV_SQRT,
    OPTIMIZER,
    TORCH_OPTIM,
    BANDWIDTH,
    AUTOGRAD,
    SKINNY,
];

const F32_ALIAS: &str = "alias T = f32;";
const F64_MARKER: &str = "// @f64 ";

/// The source of `file` for element type `precision`.
///
/// ```
/// use nsa_flow::gpu::shaders::{specialize, ELEMENTWISE};
/// use nsa_flow::Precision;
/// assert!(specialize(&ELEMENTWISE, Precision::F32).contains("alias T = f32;"));
/// assert!(specialize(&ELEMENTWISE, Precision::F64).contains("alias T = f64;"));
/// ```
pub fn specialize(file: &ShaderFile, precision: Precision) -> String {
    match precision {
        Precision::F32 => file.source.to_string(),
        Precision::F64 => {
            let mut out = String::with_capacity(file.source.len() + 64);
            for line in file.source.lines() {
                if line.trim() == F32_ALIAS {
                    out.push_str("alias T = f64;");
                } else if let Some(pos) = line.find(F64_MARKER) {
                    let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
                    out.push_str(&indent);
                    out.push_str(&line[pos + F64_MARKER.len()..]);
                } else {
                    out.push_str(line);
                }
                out.push('\n');
            }
            out
        }
    }
}
