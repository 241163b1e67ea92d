//! The data fit's Gram operator on a GPU: `S = XᵀX` (or `X` and `Xᵀ`, matrix-free) stays
//! resident on the device; each evaluation uploads the basis `V` (`p×k`), runs the dense ×
//! skinny products of `skinny.wgsl` and reads back `S·V` (and `X·V`): one submission and one
//! readback per evaluation. Everything of size `k×k` or `p×k` stays on the host, where the
//! L-BFGS-B bookkeeping lives; the `O(p²k)` / `O(npk)` products are what a device speeds up.
//!
//! Buffers, bind groups and uniforms are made once, at construction (the shapes never
//! change during a fit).

use super::functionals::GramOperator;
use crate::error::{GpuErrorKind, NsaError, Result};
use crate::gpu::{
    encode_elements, lane_size, params_size, GpuContext, HeaderTable, Kernel, Kernels, ParamsHeader,
};
use crate::params::Precision;
use nalgebra::DMatrix;
use std::sync::{Arc, Mutex};

/// Most loop trips one invocation of `skinny_partial` may make (Mesa 22.3 stops an
/// invocation after 65 535 in total).
const TRIP_CAP: usize = 4096;
/// Invocations a product should offer before its inner dimension is split for parallelism.
const TARGET_THREADS: usize = 1 << 16;
/// Columns of B one pass of `skinny_partial` handles (`KB` in the shader).
const KB: usize = 8;

/// How one product `A·B` (`A` m×c, `B` c×kb) is cut: `chunk` inner entries per invocation,
/// `chunks` partials added by `skinny_reduce` when more than one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkinnyPlan {
    /// Rows of `A` and of the result.
    pub m: usize,
    /// The inner dimension.
    pub c: usize,
    /// Columns of `B` and of the result.
    pub kb: usize,
    /// Inner entries per invocation.
    pub chunk: usize,
    /// Number of chunks (partials).
    pub chunks: usize,
}

impl SkinnyPlan {
    /// The cut of `A·B` for `A` m×c and `B` c×kb, or a limit error past what one dispatch
    /// grid and 32-bit indices can address.
    pub fn of(m: usize, c: usize, kb: usize) -> Result<SkinnyPlan> {
        if m == 0 || c == 0 || kb == 0 {
            return Err(limit(format!("an empty product ({m}×{c} by {c}×{kb})")));
        }
        let blocks = kb.div_ceil(KB);
        let cap = (TRIP_CAP / blocks).max(1);
        let want_chunks = TARGET_THREADS.div_ceil(m);
        let chunk = c.div_ceil(want_chunks).max(256.min(c)).min(cap).max(1);
        let chunks = c.div_ceil(chunk);
        if blocks * chunk > 60_000 || chunks > 16_384 {
            return Err(limit(format!(
                "a {m}×{c} by {c}×{kb} product needs more loop trips per invocation than \
                 Mesa's cap allows"
            )));
        }
        if m.div_ceil(256) > 65_535 {
            return Err(limit(format!(
                "{m} rows exceed one dispatch grid (65 535 × 256)"
            )));
        }
        // the shader indexes in u32
        m.checked_mul(c.max(kb * chunks))
            .filter(|&e| e < u32::MAX as usize)
            .ok_or_else(|| limit(format!("a {m}×{c} operand exceeds 2³² elements")))?;
        Ok(SkinnyPlan {
            m,
            c,
            kb,
            chunk,
            chunks,
        })
    }

    /// Elements of aux the partials take (0 for one chunk).
    fn aux_len(&self) -> usize {
        if self.chunks > 1 {
            self.chunks * self.m * self.kb
        } else {
            0
        }
    }
}

fn shape_mismatch(what: &'static str, expected: (usize, usize), got: (usize, usize)) -> NsaError {
    NsaError::ShapeMismatch {
        what,
        expected_rows: expected.0,
        expected_cols: expected.1,
        got_rows: got.0,
        got_cols: got.1,
    }
}

fn limit(message: String) -> NsaError {
    NsaError::gpu(GpuErrorKind::Limit, message)
}

struct Dispatch {
    kernel: Kernel,
    uniform_offset: u32,
    groups: (u32, u32),
}

struct Product {
    bind_group: wgpu::BindGroup,
    dispatches: Vec<Dispatch>,
}

/// A chain of products on the device: `out₁ = A₁·V`, then `out₂ = A₂·out₁`: the operands
/// resident, `V` uploaded per run, the chosen results read back in one map.
struct SkinnyChain {
    ctx: Arc<GpuContext>,
    kernels: Arc<Kernels>,
    precision: Precision,
    /// Rows of `V`, and its columns.
    rows_in: usize,
    k: usize,
    /// Rows of each product's result.
    rows_out: Vec<usize>,
    v: wgpu::Buffer,
    outs: Vec<wgpu::Buffer>,
    staging: wgpu::Buffer,
    products: Vec<Product>,
    /// Keeps the operands alive (only the bind groups reference them).
    _resident: Vec<wgpu::Buffer>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    error: Option<NsaError>,
    evaluations: u64,
    upload: Vec<u8>,
}

impl SkinnyChain {
    /// `operands[0]` is m₁×c with c = rows of V; each next operand's columns are the previous
    /// result's rows.
    fn new(
        ctx: Arc<GpuContext>,
        operands: &[&DMatrix<f64>],
        k: usize,
        precision: Precision,
    ) -> Result<SkinnyChain> {
        let kernels = ctx.kernels(precision)?;
        if k == 0 || operands.is_empty() {
            return Err(limit("an empty product chain".into()));
        }
        let rows_in = operands[0].ncols();
        let mut plans = Vec::new();
        let mut c = rows_in;
        for a in operands {
            if a.ncols() != c {
                return Err(shape_mismatch(
                    "a product of the chain",
                    (a.nrows(), c),
                    a.shape(),
                ));
            }
            plans.push(SkinnyPlan::of(a.nrows(), c, k)?);
            c = a.nrows();
        }
        let e = precision.bytes() as u64;
        let device = ctx.device();
        let lim = device.limits();
        let aux_len = plans.iter().map(SkinnyPlan::aux_len).max().unwrap_or(0);
        let check = |what: &str, elems: usize| -> Result<u64> {
            let bytes = (elems as u64)
                .checked_mul(e)
                .ok_or_else(|| limit(format!("{what}: size overflows")))?;
            let most = lim.max_storage_buffer_binding_size.min(lim.max_buffer_size);
            if bytes > most {
                return Err(limit(format!(
                    "{what} needs {bytes} bytes, past the adapter's storage binding limit of \
                     {most} bytes"
                )));
            }
            Ok(bytes.max(4))
        };
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let out_usage = storage | wgpu::BufferUsages::COPY_SRC;
        let make = |label: &str, size: u64, usage| ctx.create_buffer(label, size, usage);
        let mut resident = Vec::new();
        for a in operands {
            let buf = make("fit: operand", check("the data operand", a.len())?, storage)?;
            ctx.queue()
                .write_buffer(&buf, 0, &to_bytes(a.as_slice(), precision));
            resident.push(buf);
        }
        let v = make("fit: V", check("the basis", rows_in * k)?, storage)?;
        let mut outs = Vec::new();
        let mut staging_bytes = 0;
        for plan in &plans {
            let bytes = check("a product", plan.m * k)?;
            staging_bytes += bytes;
            outs.push(make("fit: product", bytes, out_usage)?);
        }
        let aux = make(
            "fit: partials",
            check("the partials", aux_len.max(1))?,
            storage,
        )?;
        let staging = make(
            "fit: staging",
            staging_bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let dummy = make("fit: unused", 256, storage)?;
        let lanes = make("fit: lanes", 256.max(lane_size(precision) as u64), storage)?;

        // one header per dispatch, the solver ring's layout, written once
        let mut headers = HeaderTable::default();
        let mut per_product: Vec<Vec<Dispatch>> = Vec::new();
        for plan in &plans {
            let mut ds = Vec::new();
            let mut h = ParamsHeader::new();
            h.p = plan.m as u32;
            h.k = plan.c as u32;
            h.k2 = plan.kb as u32;
            h.chunk = plan.chunk as u32;
            h.mode = (plan.chunks > 1) as u32;
            ds.push(Dispatch {
                kernel: Kernel::SkinnyPartial,
                uniform_offset: headers.push(&h),
                groups: (plan.m.div_ceil(256) as u32, plan.chunks as u32),
            });
            if plan.chunks > 1 {
                let entries = plan.m * plan.kb;
                let groups = entries.div_ceil(256);
                let gx = groups.clamp(1, 65_535);
                let gy = groups.div_ceil(gx);
                let mut h = ParamsHeader::new();
                h.n = entries as u32;
                h.chunk = plan.chunks as u32;
                h.groups_x = gx as u32;
                ds.push(Dispatch {
                    kernel: Kernel::SkinnyReduce,
                    uniform_offset: headers.push(&h),
                    groups: (gx as u32, gy as u32),
                });
            }
            per_product.push(ds);
        }
        let uniforms = make(
            "fit: uniforms",
            headers.len_bytes(),
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        ctx.queue()
            .write_buffer(&uniforms, 0, headers.bytes(headers.slots()));

        // bindings: 1 = A, 2 = B (V or the previous result), 4 = the result, 6 = partials
        let mut products = Vec::new();
        for (i, dispatches) in per_product.into_iter().enumerate() {
            let input = if i == 0 { &v } else { &outs[i - 1] };
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("fit: product"),
                layout: &kernels.layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &uniforms,
                            offset: 0,
                            size: std::num::NonZeroU64::new(params_size(precision) as u64),
                        }),
                    },
                    entry(1, &resident[i]),
                    entry(2, input),
                    entry(3, &dummy),
                    entry(4, &outs[i]),
                    entry(5, &dummy),
                    entry(6, &aux),
                    wgpu::BindGroupEntry {
                        binding: 7,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &lanes,
                            offset: 0,
                            size: std::num::NonZeroU64::new(lane_size(precision) as u64),
                        }),
                    },
                ],
            });
            products.push(Product {
                bind_group,
                dispatches,
            });
        }
        if let Some(e) = ctx.take_error() {
            return Err(e);
        }
        resident.extend([aux, dummy, lanes, uniforms]);
        Ok(SkinnyChain {
            ctx,
            kernels,
            precision,
            rows_in,
            k,
            rows_out: plans.iter().map(|p| p.m).collect(),
            v,
            outs,
            staging,
            products,
            _resident: resident,
            state: Mutex::new(State::default()),
        })
    }

    /// Runs the first `upto` products on `v` and reads back the results `read` names (indices
    /// into the chain, increasing): one submission, one map. An error is kept for
    /// [`SkinnyChain::take_error`] and answered as NaN.
    fn run(&self, v: &DMatrix<f64>, upto: usize, read: &[usize]) -> Vec<DMatrix<f64>> {
        let nan = || {
            read.iter()
                .map(|&i| DMatrix::from_element(self.rows_out[i], self.k, f64::NAN))
                .collect()
        };
        let Ok(mut state) = self.state.lock() else {
            return nan();
        };
        state.evaluations += 1;
        let got = if v.shape() != (self.rows_in, self.k) {
            Err(shape_mismatch(
                "the basis of a device product",
                (self.rows_in, self.k),
                v.shape(),
            ))
        } else {
            self.submit(&mut state, v, upto, read)
        };
        match got {
            Ok(r) => r,
            Err(e) => {
                state.error.get_or_insert(e);
                nan()
            }
        }
    }

    fn submit(
        &self,
        state: &mut State,
        v: &DMatrix<f64>,
        upto: usize,
        read: &[usize],
    ) -> Result<Vec<DMatrix<f64>>> {
        let e = self.precision.bytes() as u64;
        state.upload.clear();
        encode_elements(v.iter().copied(), self.precision, &mut state.upload);
        let queue = self.ctx.queue();
        queue.write_buffer(&self.v, 0, &state.upload);
        let mut enc = self
            .ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fit: products"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("fit: products"),
                timestamp_writes: None,
            });
            for product in &self.products[..upto] {
                for d in &product.dispatches {
                    pass.set_pipeline(self.kernels.pipeline(d.kernel));
                    pass.set_bind_group(0, &product.bind_group, &[d.uniform_offset, 0]);
                    pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
                }
            }
        }
        let mut at = 0;
        for &i in read {
            let bytes = (self.rows_out[i] * self.k) as u64 * e;
            enc.copy_buffer_to_buffer(&self.outs[i], 0, &self.staging, at, bytes);
            at += bytes;
        }
        queue.submit([enc.finish()]);
        let values = self.map(at)?;
        let mut out = Vec::with_capacity(read.len());
        let mut from = 0;
        for &i in read {
            let len = self.rows_out[i] * self.k;
            out.push(DMatrix::from_column_slice(
                self.rows_out[i],
                self.k,
                &values[from..from + len],
            ));
            from += len;
        }
        Ok(out)
    }

    fn map(&self, bytes: u64) -> Result<Vec<f64>> {
        let mut out = Vec::new();
        self.ctx
            .read_back(&self.staging, bytes, self.precision, &mut out, || None)?;
        Ok(out)
    }

    fn take_error(&self) -> Option<NsaError> {
        self.state.lock().ok().and_then(|mut s| s.error.take())
    }

    fn evaluations(&self) -> u64 {
        self.state.lock().map(|s| s.evaluations).unwrap_or(0)
    }
}

/// `S·V` and `VᵀSV` with `S` (or `X` and `Xᵀ`) resident on a GPU; see the module docs.
pub struct GpuGramOperator {
    chain: SkinnyChain,
    host: GramOperator,
}

impl std::fmt::Debug for GpuGramOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuGramOperator")
            .field("adapter", &self.chain.ctx.adapter().name)
            .field("precision", &self.chain.precision)
            .field("p", &self.chain.rows_in)
            .field("k", &self.chain.k)
            .field("matrix_free", &self.host.matrix_free())
            .finish()
    }
}

impl GpuGramOperator {
    /// Moves `host` (`S` or `X`, as the CPU operator holds it) to the device for bases of `k`
    /// columns, in `precision`. Errors: no `SHADER_F64` for f64, buffers past the adapter's
    /// limits, out of device memory.
    pub fn new(
        ctx: Arc<GpuContext>,
        host: GramOperator,
        k: usize,
        precision: Precision,
    ) -> Result<GpuGramOperator> {
        let chain = match &host {
            GramOperator::Dense(s) => SkinnyChain::new(ctx, &[s], k, precision)?,
            GramOperator::MatrixFree(x) => {
                SkinnyChain::new(ctx, &[x, &x.transpose()], k, precision)?
            }
            GramOperator::Gpu(g) => {
                return GpuGramOperator::new(ctx, g.host.clone(), k, precision);
            }
        };
        Ok(GpuGramOperator { chain, host })
    }

    /// The host form (`S` or `X`), as the CPU operator uses it.
    pub fn host(&self) -> &GramOperator {
        &self.host
    }

    /// The element type on the device.
    pub fn precision(&self) -> Precision {
        self.chain.precision
    }

    /// The adapter the products run on.
    pub fn adapter_name(&self) -> &str {
        &self.chain.ctx.adapter().name
    }

    /// Where the products run, with the round trips so far as its readbacks (named as the
    /// flow's GPU backend names itself).
    pub fn device(&self) -> crate::DeviceInfo {
        let adapter = self.chain.ctx.adapter().clone();
        crate::DeviceInfo {
            name: format!("gpu-{} ({})", self.chain.precision, adapter.label()),
            adapter: Some(adapter),
            readbacks: Some(self.evaluations()),
        }
    }

    /// Evaluations (round trips) so far.
    pub fn evaluations(&self) -> u64 {
        self.chain.evaluations()
    }

    /// The first device error since the last call (an evaluation that failed answered NaN,
    /// which stops the solver; the fit then reports this error).
    pub fn take_error(&self) -> Option<NsaError> {
        self.chain.take_error()
    }

    /// `S·V` and `VᵀSV`.
    pub fn both(&self, v: &DMatrix<f64>) -> (DMatrix<f64>, DMatrix<f64>) {
        if self.host.matrix_free() {
            let mut r = self.chain.run(v, 2, &[0, 1]);
            let sv = r.pop().expect("two results");
            let xv = r.pop().expect("two results");
            let a = crate::linalg::gram(&xv, &xv);
            (sv, a)
        } else {
            let sv = self.chain.run(v, 1, &[0]).pop().expect("one result");
            let a = crate::linalg::gram(v, &sv);
            (sv, a)
        }
    }

    /// `VᵀSV` only (matrix-free: the `Xᵀ` product is skipped).
    pub fn quad(&self, v: &DMatrix<f64>) -> DMatrix<f64> {
        let r = self.chain.run(v, 1, &[0]).pop().expect("one result");
        if self.host.matrix_free() {
            crate::linalg::gram(&r, &r)
        } else {
            crate::linalg::gram(v, &r)
        }
    }
}

fn entry(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

fn to_bytes(values: &[f64], precision: Precision) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * precision.bytes());
    encode_elements(values.iter().copied(), precision, &mut out);
    out
}

/// `A·B` on the device for a dense `A` (m×c) and a skinny `B` (c×kb), in `precision`: the
/// kernel alone, for oracle tests and benches (a fit keeps its operands resident through
/// [`GpuGramOperator`]).
pub fn skinny_product(
    ctx: Arc<GpuContext>,
    a: &DMatrix<f64>,
    b: &DMatrix<f64>,
    precision: Precision,
) -> Result<DMatrix<f64>> {
    if a.ncols() != b.nrows() {
        return Err(shape_mismatch(
            "skinny_product: B",
            (a.ncols(), b.ncols()),
            b.shape(),
        ));
    }
    let chain = SkinnyChain::new(ctx, &[a], b.ncols(), precision)?;
    let out = chain.run(b, 1, &[0]).pop().expect("one result");
    match chain.take_error() {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
