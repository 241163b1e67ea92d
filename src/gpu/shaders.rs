//! The WGSL sources (one file per kernel family under `shaders/`) and their specialisation
//! to an element type.
//!
//! What every family shares (the element type `T`, `struct Params`, `struct Lane`, `LITERAL`,
//! the workspace bindings 0, 5, 6 and 7, the lane bases with `enter_lane`, `coef`,
//! `is_finite` and `reduce2`) is written once, in `shaders/prelude.wgsl` ([`PRELUDE`]);
//! [`assemble`] puts it in front of a family's own source, so a family file is WGSL only once
//! assembled. The prelude starts with `alias T = f32;`: for `f64`, [`specialize`] rewrites
//! that alias in the assembled source and, on lines carrying a `// @f64 ` marker, replaces the
//! code before the marker by the code after it (the bit tests of `is_finite` and the other
//! width-dependent constants). `bandwidth.wgsl` has its own uniform and takes no prelude.

use crate::params::Precision;

/// A kernel family: its file name and source.
#[derive(Clone, Copy, Debug)]
pub struct ShaderFile {
    /// File name under `shaders/`.
    pub name: &'static str,
    /// The `f32` source as written (without the prelude; see [`assemble`]).
    pub source: &'static str,
    /// Whether [`PRELUDE`] goes in front of `source` (every family but the bandwidth probe).
    pub prelude: bool,
}

/// `shaders/prelude.wgsl`: the declarations and helpers every kernel family shares.
pub const PRELUDE: ShaderFile = ShaderFile {
    name: "prelude.wgsl",
    source: include_str!("../../shaders/prelude.wgsl"),
    prelude: false,
};

/// Elementwise combinations, scaling and the non-negativity maps.
pub const ELEMENTWISE: ShaderFile = ShaderFile {
    name: "elementwise.wgsl",
    source: include_str!("../../shaders/elementwise.wgsl"),
    prelude: true,
};
/// Split-row Gram products `AᵀB`.
pub const GRAM: ShaderFile = ShaderFile {
    name: "gram.wgsl",
    source: include_str!("../../shaders/gram.wgsl"),
    prelude: true,
};
/// p×k times k×k products with a fused epilogue.
pub const MATMUL_SMALL: ShaderFile = ShaderFile {
    name: "matmul_small.wgsl",
    source: include_str!("../../shaders/matmul_small.wgsl"),
    prelude: true,
};
/// Reductions to readback partials and device scalars.
pub const REDUCE: ShaderFile = ShaderFile {
    name: "reduce.wgsl",
    source: include_str!("../../shaders/reduce.wgsl"),
    prelude: true,
};
/// k×k work: gradient coefficients, Gram statistics, products, blend matrices.
pub const SMALL: ShaderFile = ShaderFile {
    name: "small.wgsl",
    source: include_str!("../../shaders/small.wgsl"),
    prelude: true,
};
/// The Newton–Schulz inverse square root.
pub const INV_SQRT: ShaderFile = ShaderFile {
    name: "inv_sqrt.wgsl",
    source: include_str!("../../shaders/inv_sqrt.wgsl"),
    prelude: true,
};
/// The radial projection of SGDP and AdamP.
pub const OPTIMIZER: ShaderFile = ShaderFile {
    name: "optimizer.wgsl",
    source: include_str!("../../shaders/optimizer.wgsl"),
    prelude: true,
};
/// The elementwise passes of the torch / torch_optimizer optimizers.
pub const TORCH_OPTIM: ShaderFile = ShaderFile {
    name: "torch_optim.wgsl",
    source: include_str!("../../shaders/torch_optim.wgsl"),
    prelude: true,
};
/// A copy kernel used only to measure the adapter's memory bandwidth.
pub const BANDWIDTH: ShaderFile = ShaderFile {
    name: "bandwidth.wgsl",
    source: include_str!("../../shaders/bandwidth.wgsl"),
    prelude: false,
};

/// The k×k work of the autograd backward (the Sylvester sign iteration and its coefficients).
pub const AUTOGRAD: ShaderFile = ShaderFile {
    name: "autograd.wgsl",
    source: include_str!("../../shaders/autograd.wgsl"),
    prelude: true,
};

/// Dense × skinny products `A·B` (the data fit's Gram operator), split over the inner
/// dimension with a fixed-order reduction.
pub const SKINNY: ShaderFile = ShaderFile {
    name: "skinny.wgsl",
    source: include_str!("../../shaders/skinny.wgsl"),
    prelude: true,
};

/// Every kernel family (the prelude is not one: it is part of each family's source).
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

/// The `f32` source of `file` as compiled: [`PRELUDE`] followed by the family's own source
/// (or the file alone where `file.prelude` is false).
///
/// ```
/// use nsa_flow::gpu::shaders::{assemble, BANDWIDTH, ELEMENTWISE, PRELUDE};
/// assert!(assemble(&ELEMENTWISE).starts_with(PRELUDE.source));
/// assert!(assemble(&ELEMENTWISE).ends_with(ELEMENTWISE.source));
/// assert_eq!(assemble(&BANDWIDTH), BANDWIDTH.source);
/// ```
pub fn assemble(file: &ShaderFile) -> String {
    if !file.prelude {
        return file.source.to_string();
    }
    let mut out = String::with_capacity(PRELUDE.source.len() + file.source.len() + 64);
    out.push_str(PRELUDE.source);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push('\n');
    out.push_str("// ---- shaders/");
    out.push_str(file.name);
    out.push_str(" ----\n\n");
    out.push_str(file.source);
    out
}

/// The assembled source of `file` ([`assemble`]) for element type `precision`.
///
/// ```
/// use nsa_flow::gpu::shaders::{specialize, ELEMENTWISE};
/// use nsa_flow::Precision;
/// assert!(specialize(&ELEMENTWISE, Precision::F32).contains("alias T = f32;"));
/// assert!(specialize(&ELEMENTWISE, Precision::F64).contains("alias T = f64;"));
/// ```
pub fn specialize(file: &ShaderFile, precision: Precision) -> String {
    let source = assemble(file);
    match precision {
        Precision::F32 => source,
        Precision::F64 => {
            let mut out = String::with_capacity(source.len() + 64);
            for line in source.lines() {
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
