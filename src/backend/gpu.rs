//! The wgpu backend: every matrix stays on the device, the k×k work runs in single-workgroup
//! kernels, and the host reads back only the partial sums of the reductions it asks for, one
//! batch per readback.
//!
//! Recording follows the candle pattern: each operation records its dispatches into the
//! open command encoder, parameters go into a uniform ring (one 256-byte slot per dispatch,
//! written once before the submit), bind groups are cached by the buffers they bind, so after
//! the first iteration nothing is created; the encoder is submitted when scalars are read.

use super::gpu_batch::{BatchHub, BufRef, LaneCtx, LaneOp, ReadReq};
use super::{Backend, GradientRule, Operand, OptPass, Projection, Reduction, UpdateRule};
use crate::error::{GpuErrorKind, NsaError, Result};
use crate::gpu::params_size as header_size;
use crate::gpu::{encode_lane, lane_size, GpuContext, Kernel, Kernels, ParamsHeader, LITERAL};
use crate::params::{InvSqrtMethod, Mode, NonNeg, Precision, Retraction};
use crate::retract::RetractOptions;
use nalgebra::DMatrix;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Largest column count the device kernels take (the single-workgroup k×k kernels loop
/// ⌈k²/256⌉ times; at k = 1024 that is 4096 trips, far below the Mesa 22.3 loop cap).
pub const MAX_K: usize = 1024;
/// Largest row count: the row-block grids are one-dimensional in their row direction.
pub const MAX_P: usize = 65_535 * 256;
/// Newton–Schulz steps when the residual decides (the reference's eig, the corrected
/// retraction); the iteration converges from any start in about log₂.₂₅(κ) + 6 steps.
pub(super) const NS_CAP: usize = 100;
/// Entries per thread in the readback reductions (G = ⌈n / (256·this)⌉ partials, at most
/// `MAX_PARTIALS`).
const ENTRIES_PER_THREAD: usize = 16;
const MAX_PARTIALS: usize = 512;
/// Readback slots per round trip.
const MAX_SLOTS: usize = 192;
/// Uniform ring slots (256 bytes each) before an intermediate submit.
const RING_SLOTS: usize = 4096;
const RING_STRIDE: u64 = 256;
/// Bytes of per-problem entries (`struct Lane`: data starts and coefficients) before an
/// intermediate submit.
const LANE_RING: usize = 4 << 20;
/// The span of per-problem entries one dispatch binds: a batched dispatch covers at most this
/// many bytes of entries (1024 problems in f32, 682 in f64) and is split beyond that.
pub(super) const LANE_WINDOW: u64 = 64 << 10;
/// Loop-trip budget per invocation per dispatch of the one-workgroup iterations (Newton–Schulz,
/// Sylvester) on a driver that caps loop trips (a fifth of Mesa 22.3's 65 535: the rest of
/// the shader loops too); the steps are split over several dispatches to stay under it.
pub(super) const TRIP_BUDGET: usize = 12_000;
/// The same budget where no cap is known: every step in one dispatch (at k = 32, 100
/// Newton–Schulz steps are ~43 000 trips).
pub(super) const TRIP_BUDGET_UNCAPPED: usize = 1 << 22;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A p×k matrix resident on the device (column-major, like nalgebra, so uploads need no
/// transpose).
#[derive(Debug)]
pub struct GpuMat {
    buffer: wgpu::Buffer,
    id: u64,
    /// Where the matrix starts in `buffer`, in elements (non-zero for a problem of a batch,
    /// whose matrices are blocks of one buffer).
    offset: u32,
    p: usize,
    k: usize,
}

impl BufRef {
    pub(super) fn of(m: &GpuMat) -> BufRef {
        BufRef {
            id: m.id,
            buffer: m.buffer.clone(),
        }
    }
}

impl GpuMat {
    /// Another handle on the same device buffer (for workspace matrices held by the backend).
    pub(super) fn handle(&self) -> GpuMat {
        GpuMat {
            buffer: self.buffer.clone(),
            id: self.id,
            offset: self.offset,
            p: self.p,
            k: self.k,
        }
    }

    /// Rows.
    pub fn nrows(&self) -> usize {
        self.p
    }
    /// Columns.
    pub fn ncols(&self) -> usize {
        self.k
    }
}

#[doc(hidden)]
/// A single kernel family, for per-kernel benchmarks ([`GpuBackend::record_kernel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelBench {
    /// `S = YᵀY` (both passes): 2pk² flops, pk elements read.
    Gram,
    /// `out = Y·S`: 2pk² flops, 2pk elements moved.
    MulSmall,
    /// `out = a·X + b·Y`: 3pk elements moved.
    Lincomb,
    /// `‖Y − X‖²` partial sums: 2pk elements read.
    DistSq,
    /// `(YᵀY + δI)^{-1/2}` by Newton–Schulz to convergence (k×k only).
    InvSqrt,
}

/// Offsets (in elements) of the regions of the small k×k buffer.
#[derive(Clone, Copy, Debug)]
pub(super) struct SmallLayout {
    pub(super) k: usize,
}

impl SmallLayout {
    pub(super) fn mat(&self, i: usize) -> u32 {
        (i * self.k * self.k) as u32
    }
    /// S = YᵀY
    pub(super) fn s(&self) -> u32 {
        self.mat(0)
    }
    /// M, a second Gram, scratch
    pub(super) fn m(&self) -> u32 {
        self.mat(1)
    }
    /// T (an inverse square root)
    pub(super) fn t(&self) -> u32 {
        self.mat(2)
    }
    pub(super) fn tmp(&self) -> u32 {
        self.mat(3)
    }
    pub(super) fn tmp2(&self) -> u32 {
        self.mat(4)
    }
    /// the Newton–Schulz workspace (5 blocks)
    pub(super) fn ns(&self) -> u32 {
        self.mat(5)
    }
    pub(super) fn scalar(&self, i: usize) -> u32 {
        (10 * self.k * self.k + i) as u32
    }
    fn len(&self) -> usize {
        10 * self.k * self.k + 64
    }
}

// scalar slots
pub(super) const SC_ALPHA: usize = 0;
pub(super) const SC_RADIAL: usize = 1;
pub(super) const SC_TRACE: usize = 2;
const SC_FACTOR: usize = 3;
const SC_NS: usize = 8; // 5 values
const SC_SGDP: usize = 16; // 4 values

/// The sizes of one shape's workspace.
struct WorkspacePlan {
    gram_chunk: usize,
    gram_chunks: usize,
    gram_len: usize,
    partials: usize,
    aux_len: usize,
}

impl WorkspacePlan {
    fn of(p: usize, k: usize) -> WorkspacePlan {
        // Gram chunks: about 256 rows per chunk for small p, at most 4096 rows per chunk,
        // and a partials buffer no larger than a quarter of Y.
        let target = p
            .div_ceil(256)
            .min(1024.max(p.div_ceil(4096)))
            .min((p / (4 * k.max(1))).max(1))
            .max(1);
        let chunk = p.div_ceil(target).div_ceil(64) * 64;
        let chunks = p.div_ceil(chunk);
        let partials = (p * k)
            .div_ceil(256 * ENTRIES_PER_THREAD)
            .clamp(1, MAX_PARTIALS);
        let gram_len = chunks * k * k;
        let aux_len = gram_len + MAX_SLOTS * partials + partials + 5 * p.div_ceil(256);
        WorkspacePlan {
            gram_chunk: chunk,
            gram_chunks: chunks,
            gram_len,
            partials,
            aux_len,
        }
    }
}

/// Per-shape device storage.
pub(super) struct Workspace {
    p: usize,
    pub(super) k: usize,
    small: GpuMat,
    aux: GpuMat,
    /// The readback buffer (none for a problem of a batch: the batch reads back together).
    staging: Option<wgpu::Buffer>,
    pub(super) layout: SmallLayout,
    /// Gram chunking: rows per chunk and chunk count.
    gram_chunk: usize,
    gram_chunks: usize,
    /// aux regions (elements)
    aux_readback: usize,
    pub(super) aux_finalize: usize,
    aux_sgdp: usize,
    pub(super) partials: usize,
    /// Workgroup counts of the next Newton–Schulz step (k > 64), written by the device.
    ns_args: GpuMat,
    /// p×k scratch of the autograd backward, made on first use.
    pub(super) ag_scratch: Option<GpuMat>,
}

/// Where the bytes of one dispatch go.
#[derive(Clone, Copy, Default)]
pub(super) struct Slots<'a> {
    pub(super) a: Option<&'a GpuMat>,
    pub(super) b: Option<&'a GpuMat>,
    pub(super) c: Option<&'a GpuMat>,
    pub(super) out: Option<&'a GpuMat>,
}

/// What the work recorded on one backend moves on the device, counted as it is recorded
/// (a problem of a GPU batch counts nothing here: its batch encodes its work). Operand bytes
/// are the sizes of the matrices a launch binds (each distinct matrix once, a matrix both read
/// and written twice): what the launch may read and write of them, an upper bound on its
/// traffic through the `p×k`-sized operands; the `k×k` workspace and partial sums are not
/// counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Traffic {
    /// Kernel launches (direct and indirect).
    pub launches: u64,
    /// Device-to-device buffer copies.
    pub copies: u64,
    /// Bytes of the operands the launches bind.
    pub operand_bytes: u64,
    /// Bytes the copies read and write.
    pub copy_bytes: u64,
    /// Bytes read back to the host.
    pub readback_bytes: u64,
}

impl Traffic {
    /// Operand and copy bytes together, in passes over a `p×k` matrix of `elem`-byte entries.
    pub fn passes(&self, p: usize, k: usize, elem: usize) -> f64 {
        (self.operand_bytes + self.copy_bytes) as f64 / (p * k * elem).max(1) as f64
    }

    /// `self − earlier`: the traffic of the work recorded in between.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            launches: self.launches - earlier.launches,
            copies: self.copies - earlier.copies,
            operand_bytes: self.operand_bytes - earlier.operand_bytes,
            copy_bytes: self.copy_bytes - earlier.copy_bytes,
            readback_bytes: self.readback_bytes - earlier.readback_bytes,
        }
    }
}

/// The wgpu backend (see the module documentation).
///
/// ```no_run
/// use nalgebra::DMatrix;
/// use nsa_flow::backend::{gpu::GpuBackend, Backend, Reduction};
/// use nsa_flow::gpu::{GpuContext, GpuOptions};
/// use nsa_flow::Precision;
/// let ctx = GpuContext::new(&GpuOptions { allow_software: true, ..Default::default() }).unwrap();
/// let mut be = GpuBackend::new(ctx, Precision::F32).unwrap();
/// let y = be.upload(&DMatrix::from_element(3, 2, 2.0)).unwrap();
/// assert_eq!(be.reduce(&[Reduction::NormSq(&y)]).unwrap(), vec![24.0]);
/// ```
pub struct GpuBackend {
    ctx: Arc<GpuContext>,
    kernels: Arc<Kernels>,
    precision: Precision,
    ws: Option<Workspace>,
    ring: wgpu::Buffer,
    ring_bytes: Vec<u8>,
    ring_used: usize,
    scratch: Vec<u8>,
    encoder: Option<wgpu::CommandEncoder>,
    bind_groups: HashMap<[u64; 6], wgpu::BindGroup>,
    dummy_read: wgpu::Buffer,
    dummy_write: wgpu::Buffer,
    dummy_id: [u64; 2],
    readbacks: u64,
    pub(super) error: Option<NsaError>,
    partial_sums_host: Vec<f64>,
    lane_ring: wgpu::Buffer,
    lane_bytes: Vec<u8>,
    lane_used: usize,
    launches: u64,
    traffic: Traffic,
    /// The last launch, when it wrote a whole matrix through an epilogue that can also clamp
    /// it (`nonneg` then sets that flag instead of launching a pass of its own).
    last_write: Option<LastWrite>,
    /// Whether passes are fused (off only to check that fusing changes no bit).
    fuse: bool,
    /// Loop trips one invocation may make per dispatch ([`TRIP_BUDGET`] on a capped driver).
    pub(super) trip_budget: usize,
    /// Direct launches and their operand bytes per kernel, indexed by `Kernel as usize`.
    launches_by_kernel: Vec<(u64, u64)>,
    /// Set for one problem of a GPU batch: its work is captured and run by the batch.
    lane: Option<LaneCtx>,
}

/// A launch whose output a following hard `nonneg` can clamp in the launch's own epilogue.
#[derive(Clone, Copy)]
struct LastWrite {
    kernel: Kernel,
    out: (u64, u32),
    /// Where its header waits to be uploaded: a ring slot, or an op of this lane's capture.
    at: HeaderAt,
}

#[derive(Clone, Copy)]
enum HeaderAt {
    Ring(usize),
    Lane(usize),
}

/// `combine`'s modes (elementwise.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
enum CombineMode {
    /// `out = c0·a + c1·b`.
    Lincomb = 0,
    /// `out = a + c0·(b − a)`.
    Lerp = 1,
    /// `out = a` (a copy inside one buffer).
    Copy = 2,
}

/// What one partial sum of `partial_sums` (reduce.wgsl's `term`) adds up: the shader's mode
/// numbers, named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum SumMode {
    /// `‖a‖²`.
    NormSq = 0,
    /// `⟨a, b⟩`.
    Dot = 1,
    /// `‖a − b‖²`.
    DistSq = 2,
    /// `‖P(a − t·b) − a‖²`, `P` the clamp at zero when asked.
    GradMapSq = 3,
    /// The count of non-finite entries of `a`.
    NonFinite = 4,
    /// `Σ|a|`.
    AbsSum = 5,
    /// The count of `|c0·a| > c1`.
    CountAbove = 6,
    /// The count of `a ≠ b` (as values).
    CountDiffer = 7,
}

/// One partial sum of [`GpuBackend::partial_sums`]: its mode, operands, where its partials
/// go, and its coefficients (`[t, ·]` and the clamp flag, or CountAbove's pair) if it reads
/// any.
struct SumTerm<'a> {
    mode: SumMode,
    first: &'a GpuMat,
    second: Option<&'a GpuMat>,
    at: usize,
    coefs: Option<([f64; 2], bool)>,
}

impl<'a> SumTerm<'a> {
    fn new(mode: SumMode, first: &'a GpuMat, second: Option<&'a GpuMat>, at: usize) -> Self {
        SumTerm {
            mode,
            first,
            second,
            at,
            coefs: None,
        }
    }
}

/// Up to four partial sums over the same index space waiting to run as one launch of
/// `partial_sums_multi` (each operand read once instead of once per sum): they bind at most
/// three distinct matrices and at most one of them reads coefficients. A lone sum runs as
/// `partial_sums`. Each sum is formed as it would be alone, so the bits do not change.
struct FusedSums<'a> {
    terms: smallvec::SmallVec<[SumTerm<'a>; 4]>,
    /// Off: every sum its own launch.
    fuse: bool,
}

fn same_mat(a: &GpuMat, b: &GpuMat) -> bool {
    a.id == b.id && a.offset == b.offset
}

impl<'a> FusedSums<'a> {
    fn push(&mut self, be: &mut GpuBackend, term: SumTerm<'a>) {
        if !self.fits(&term) {
            self.flush(be);
        }
        self.terms.push(term);
        if self.terms.len() == 4 {
            self.flush(be);
        }
    }

    /// The distinct matrices of the waiting sums and `extra`.
    fn operands(&self, extra: Option<&SumTerm<'a>>) -> smallvec::SmallVec<[&'a GpuMat; 8]> {
        let mut mats = smallvec::SmallVec::<[&'a GpuMat; 8]>::new();
        for t in self.terms.iter().chain(extra) {
            for m in std::iter::once(t.first).chain(t.second) {
                if !mats.iter().any(|x| same_mat(x, m)) {
                    mats.push(m);
                }
            }
        }
        mats
    }

    fn fits(&self, term: &SumTerm<'a>) -> bool {
        let coefs = self.terms.iter().filter(|t| t.coefs.is_some()).count();
        self.fuse
            && self.terms.len() < 4
            && !(coefs > 0 && term.coefs.is_some())
            && self.operands(Some(term)).len() <= 3
    }

    fn flush(&mut self, be: &mut GpuBackend) {
        match self.terms.len() {
            0 => {}
            1 => {
                let t = &self.terms[0];
                let (c, clamp) = t.coefs.unwrap_or(([0.0, 0.0], false));
                be.partial_sums_c(t.mode, t.first, t.second, t.at, c, clamp);
            }
            n => {
                let mats = self.operands(None);
                let index =
                    |m: &GpuMat| mats.iter().position(|x| same_mat(x, m)).unwrap_or(0) as u32;
                let spec = |t: &SumTerm| {
                    let first = index(t.first);
                    let second = t.second.map_or(first, index);
                    t.mode as u32 | first << 8 | second << 16
                };
                let g = be.ws().partials;
                let mut h = ParamsHeader::new();
                h.n = (self.terms[0].first.p * self.terms[0].first.k) as u32;
                h.p = spec(&self.terms[0]);
                h.k = spec(&self.terms[1]);
                h.off0 = self.terms[0].at as u32;
                h.off1 = self.terms[1].at as u32;
                if n >= 3 {
                    h.chunk = spec(&self.terms[2]);
                    h.off2 = self.terms[2].at as u32;
                }
                if n == 4 {
                    h.mode = spec(&self.terms[3]);
                    h.off3 = self.terms[3].at as u32;
                }
                h.slot = n as u32;
                h.groups_x = g as u32;
                let (c, clamp) = self
                    .terms
                    .iter()
                    .find_map(|t| t.coefs)
                    .unwrap_or(([0.0, 0.0], false));
                h.k2 = clamp as u32;
                be.dispatch(
                    Kernel::PartialSumsMulti,
                    h,
                    [c[0], c[1], 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                    Slots {
                        a: mats.first().copied(),
                        b: mats.get(1).copied(),
                        c: mats.get(2).copied(),
                        ..Default::default()
                    },
                    (g as u32, 1),
                );
            }
        }
        self.terms.clear();
    }
}

/// The bytes of the distinct matrices `slots` binds, the output counted again when a launch
/// also reads it (see [`Traffic`]).
fn operand_bytes(slots: &Slots, elem: u64) -> u64 {
    let size = |m: &GpuMat| (m.p * m.k) as u64 * elem;
    let inputs = [slots.a, slots.b, slots.c];
    let mut seen: [u64; 3] = [u64::MAX; 3];
    let mut bytes = 0;
    for (i, m) in inputs.iter().enumerate() {
        if let Some(m) = m {
            if !seen.contains(&m.id) {
                seen[i] = m.id;
                bytes += size(m);
            }
        }
    }
    if let Some(out) = slots.out {
        bytes += size(out);
    }
    bytes
}

/// `mul_small`'s mode bit for a clamp at zero in its epilogue (bits 0 and 1 select the
/// accumulation and the fidelity form).
const MUL_SMALL_CLAMP: u32 = 4;

fn limit_error(message: String) -> NsaError {
    NsaError::Gpu {
        kind: GpuErrorKind::Limit,
        message,
    }
}

impl std::fmt::Debug for GpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBackend")
            .field("adapter", &self.ctx.adapter().label())
            .field("precision", &self.precision)
            .field("shape", &self.ws.as_ref().map(|w| (w.p, w.k)))
            .field("readbacks", &self.readbacks)
            .finish()
    }
}

impl GpuBackend {
    /// A backend on `ctx` computing in `precision` (`f64` needs an adapter with
    /// `SHADER_F64`).
    pub fn new(ctx: Arc<GpuContext>, precision: Precision) -> Result<GpuBackend> {
        Self::with_lane(ctx, precision, None)
    }

    /// The backend of problem `lane` of a batch: what it records is captured and run by the
    /// batch together with the other problems' work (see `gpu_batch`).
    pub(super) fn new_lane(
        ctx: Arc<GpuContext>,
        precision: Precision,
        hub: Arc<BatchHub>,
        lane: usize,
    ) -> Result<GpuBackend> {
        Self::with_lane(ctx, precision, Some(LaneCtx::new(hub, lane)))
    }

    fn with_lane(
        ctx: Arc<GpuContext>,
        precision: Precision,
        lane: Option<LaneCtx>,
    ) -> Result<GpuBackend> {
        let kernels = ctx.kernels(precision)?;
        let device = &ctx.device;
        // a problem of a batch records nothing itself: no rings of its own
        let solo = lane.is_none();
        let ring = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("nsa-flow params ring"),
            size: if solo {
                RING_SLOTS as u64 * RING_STRIDE
            } else {
                RING_STRIDE
            },
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let lane_ring = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("nsa-flow per-problem entries"),
            size: if solo {
                LANE_RING as u64 + LANE_WINDOW
            } else {
                LANE_WINDOW
            },
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mk = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 256,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        // the problems of a batch name the batch's placeholders, so their dispatches compare equal
        let ((dummy_read, dummy_write), dummy_id) = match &lane {
            Some(l) => l.hub.dummies(),
            None => (
                (mk("nsa-flow unused input"), mk("nsa-flow unused output")),
                [
                    NEXT_ID.fetch_add(1, Ordering::Relaxed),
                    NEXT_ID.fetch_add(1, Ordering::Relaxed),
                ],
            ),
        };
        Ok(GpuBackend {
            kernels,
            precision,
            ws: None,
            ring,
            ring_bytes: vec![
                0;
                if solo {
                    RING_SLOTS * RING_STRIDE as usize
                } else {
                    0
                }
            ],
            ring_used: 0,
            scratch: Vec::with_capacity(256),
            encoder: None,
            bind_groups: HashMap::new(),
            dummy_read,
            dummy_write,
            dummy_id,
            readbacks: 0,
            error: None,
            partial_sums_host: Vec::new(),
            lane_ring,
            lane_bytes: Vec::new(),
            lane_used: 0,
            launches: 0,
            traffic: Traffic::default(),
            last_write: None,
            fuse: true,
            trip_budget: match ctx.adapter().loop_trip_cap() {
                Some(_) => TRIP_BUDGET,
                None => TRIP_BUDGET_UNCAPPED,
            },
            launches_by_kernel: vec![(0, 0); Kernel::ALL.len()],
            lane,
            ctx,
        })
    }

    /// The context.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Round trips that read device memory back so far (scalar batches and downloads).
    pub fn readbacks(&self) -> u64 {
        self.readbacks
    }

    /// Kernel launches encoded so far (a launch for many problems of a batch counts once).
    pub fn launches(&self) -> u64 {
        self.launches
    }

    /// What the work recorded so far moves (see [`Traffic`]).
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// Turns the fusion of passes off or on (on by default): a hard `nonneg` clamping in the
    /// epilogue of the launch that wrote its matrix, several partial sums over one index
    /// space in one launch. Fused or not, the results have the same bits; off exists to test
    /// exactly that and to count what fusing saves.
    pub fn set_fusion(&mut self, on: bool) {
        self.fuse = on;
        self.last_write = None;
    }

    /// Clamps `m` at zero in the epilogue of the launch that just wrote it, when that launch
    /// can (the same `select(x, 0, x < 0)` as `nonneg_in_place`, on the same value: the bits
    /// do not change, one pass over `m` and one launch are saved).
    fn clamp_last_write(&mut self, m: &GpuMat) -> bool {
        let Some(lw) = self.last_write.take() else {
            return false;
        };
        if lw.out != (m.id, m.offset) {
            return false;
        }
        let patch = |h: &mut ParamsHeader| match lw.kernel {
            Kernel::MulSmall => h.mode |= MUL_SMALL_CLAMP,
            _ => h.k2 = 1,
        };
        match lw.at {
            HeaderAt::Ring(slot) => {
                let at = slot * RING_STRIDE as usize;
                let size = std::mem::size_of::<ParamsHeader>();
                let mut h: ParamsHeader =
                    bytemuck::pod_read_unaligned(&self.ring_bytes[at..at + size]);
                patch(&mut h);
                self.ring_bytes[at..at + size].copy_from_slice(bytemuck::bytes_of(&h));
            }
            HeaderAt::Lane(op) => {
                let Some(LaneOp::Dispatch { header, .. }) =
                    self.lane.as_mut().and_then(|l| l.ops.get_mut(op))
                else {
                    return false;
                };
                patch(header);
            }
        }
        true
    }

    /// The launches and operand bytes counted in [`GpuBackend::traffic`], per kernel (those
    /// launched at least once), in [`Kernel::ALL`]'s order.
    pub fn launches_by_kernel(&self) -> Vec<(Kernel, u64, u64)> {
        Kernel::ALL
            .iter()
            .map(|&k| {
                let (n, bytes) = self.launches_by_kernel[k as usize];
                (k, n, bytes)
            })
            .filter(|&(_, n, _)| n > 0)
            .collect()
    }

    fn elem(&self) -> usize {
        self.precision.bytes()
    }

    fn check_shape(&self, p: usize, k: usize) -> Result<()> {
        if k > MAX_K {
            return Err(limit_error(format!(
                "k = {k} columns exceeds the GPU backend's maximum of {MAX_K}; use backend = cpu"
            )));
        }
        if p > MAX_P {
            return Err(limit_error(format!(
                "p = {p} rows exceeds the GPU backend's maximum of {MAX_P} (65 535 workgroups of 256 rows); \
                 use backend = cpu"
            )));
        }
        let bytes = (p * k * self.elem()) as u64;
        let lim = &self.ctx.limits;
        if bytes > lim.max_storage_buffer_binding_size {
            return Err(limit_error(format!(
                "a {p}×{k} {} matrix needs {bytes} bytes, more than this adapter's \
                 max_storage_buffer_binding_size of {} bytes; use precision = f32, fewer rows, or backend = cpu",
                self.precision, lim.max_storage_buffer_binding_size
            )));
        }
        if bytes > lim.max_buffer_size {
            return Err(limit_error(format!(
                "a {p}×{k} matrix needs {bytes} bytes, more than this adapter's max_buffer_size of {} bytes",
                lim.max_buffer_size
            )));
        }
        Ok(())
    }

    /// Creates a buffer, turning an allocation failure into an error rather than an abort.
    fn create_buffer(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        self.ctx.create_buffer(label, size, usage)
    }

    /// A device region of `size` bytes: a buffer of its own, or for a problem of a batch its
    /// block of a buffer shared by the batch (the n-th allocation of every problem lands in the
    /// same buffer, so the problems' dispatches bind the same buffers and merge).
    fn alloc(&mut self, label: &str, size: u64, usage: wgpu::BufferUsages) -> Result<GpuMat> {
        if let Some(lane) = &mut self.lane {
            let counter = lane.allocs.entry((size, usage.bits())).or_insert(0);
            let ordinal = *counter;
            *counter += 1;
            let (hub, index) = (lane.hub.clone(), lane.lane);
            let (buffer, id, offset_bytes) =
                hub.block(ordinal, size, usage, index, |label, size, usage| {
                    self.create_buffer(label, size, usage)
                })?;
            let e = self.elem() as u64;
            return Ok(GpuMat {
                buffer,
                id,
                offset: u32::try_from(offset_bytes / e).map_err(|_| {
                    limit_error(format!(
                        "a batch needs more than 2³² elements in one buffer ({label})"
                    ))
                })?,
                p: 0,
                k: 0,
            });
        }
        Ok(GpuMat {
            buffer: self.create_buffer(label, size, usage)?,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            offset: 0,
            p: 0,
            k: 0,
        })
    }

    /// How many problems of p×k one GPU batch can hold: every buffer of the batch (B blocks of
    /// one problem's largest allocation, 256-byte aligned) must fit the adapter's
    /// `max_storage_buffer_binding_size` and `max_buffer_size`. Larger batches run as several
    /// batches one after another.
    pub fn batch_capacity(&self, p: usize, k: usize) -> usize {
        let plan = WorkspacePlan::of(p, k);
        let largest = [p * k, SmallLayout { k }.len(), plan.aux_len]
            .into_iter()
            .max()
            .unwrap_or(1) as u64
            * self.elem() as u64;
        let block = largest.max(4).div_ceil(256) * 256;
        ((self.buffer_budget() / block) as usize).max(1)
    }

    /// The largest buffer a kernel can bind whole on this device.
    pub(super) fn buffer_budget(&self) -> u64 {
        let lim = &self.ctx.limits;
        lim.max_storage_buffer_binding_size.min(lim.max_buffer_size)
    }

    fn ensure_workspace(&mut self, p: usize, k: usize) -> Result<()> {
        if let Some(ws) = &self.ws {
            if ws.p == p && ws.k == k {
                return Ok(());
            }
        }
        self.flush();
        self.bind_groups.clear();
        let layout = SmallLayout { k };
        let plan = WorkspacePlan::of(p, k);
        let (chunk, chunks, partials, aux_len) = (
            plan.gram_chunk,
            plan.gram_chunks,
            plan.partials,
            plan.aux_len,
        );
        let aux_readback = plan.gram_len;
        let aux_finalize = aux_readback + MAX_SLOTS * partials;
        let aux_sgdp = aux_finalize + partials;
        let e = self.elem() as u64;
        let lim = self.ctx.limits.max_storage_buffer_binding_size;
        for (what, len) in [("k×k workspace", layout.len()), ("partial sums", aux_len)] {
            if len as u64 * e > lim {
                return Err(limit_error(format!(
                    "the {what} for a {p}×{k} problem needs {} bytes, more than this adapter's \
                     max_storage_buffer_binding_size of {lim} bytes",
                    len as u64 * e
                )));
            }
        }
        let storage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let small = self.alloc("nsa-flow k×k workspace", layout.len() as u64 * e, storage)?;
        let aux = self.alloc("nsa-flow partial sums", aux_len as u64 * e, storage)?;
        let staging = if self.lane.is_some() {
            None
        } else {
            Some(self.create_buffer(
                "nsa-flow readback",
                (MAX_SLOTS * partials) as u64 * e,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?)
        };
        let ns_args = self.alloc(
            "nsa-flow Newton–Schulz step counts",
            16,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::INDIRECT,
        )?;
        self.ws = Some(Workspace {
            p,
            k,
            small,
            aux,
            staging,
            layout,
            gram_chunk: chunk,
            gram_chunks: chunks,
            aux_readback,
            aux_finalize,
            aux_sgdp,
            partials,
            ns_args,
            ag_scratch: None,
        });
        Ok(())
    }

    /// Sizes the workspace for the operand's shape (a backend may hold matrices of several
    /// shapes; the k×k layout, Gram chunking and partial counts depend on it). A failure is
    /// kept and returned by the next readback.
    pub(super) fn use_shape(&mut self, m: &GpuMat) -> bool {
        if let Some(ws) = &self.ws {
            if ws.p == m.p && ws.k == m.k {
                return true;
            }
        }
        match self.ensure_workspace(m.p, m.k) {
            Ok(()) => true,
            Err(e) => {
                self.error.get_or_insert(e);
                false
            }
        }
    }

    pub(super) fn ws(&self) -> &Workspace {
        self.ws.as_ref().expect("workspace sized by zeros/upload")
    }

    pub(super) fn ws_mut(&mut self) -> &mut Workspace {
        self.ws.as_mut().expect("workspace sized by zeros/upload")
    }

    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        debug_assert!(
            self.lane.is_none(),
            "a problem of a batch records nothing itself"
        );
        if self.encoder.is_none() {
            self.encoder = Some(self.ctx.device.create_command_encoder(
                &wgpu::CommandEncoderDescriptor {
                    label: Some("nsa-flow"),
                },
            ));
        }
        self.encoder.as_mut().unwrap()
    }

    /// Submits what was recorded (writing the rings' parameter entries first).
    pub(super) fn flush(&mut self) {
        self.last_write = None;
        if let Some(enc) = self.encoder.take() {
            if self.ring_used > 0 {
                let used = self.ring_used * RING_STRIDE as usize;
                self.ctx
                    .queue
                    .write_buffer(&self.ring, 0, &self.ring_bytes[..used]);
            }
            if self.lane_used > 0 {
                self.ctx
                    .queue
                    .write_buffer(&self.lane_ring, 0, &self.lane_bytes[..self.lane_used]);
            }
            self.ctx.queue.submit([enc.finish()]);
            self.ring_used = 0;
            self.lane_used = 0;
        }
    }

    /// The buffers of bindings 1–6 for `slots` (placeholders where a slot is empty).
    fn bind_buffers(&self, slots: &Slots) -> [BufRef; 6] {
        let ws = self.ws.as_ref().expect("workspace sized before a dispatch");
        let read = |m: Option<&GpuMat>| match m {
            Some(m) => BufRef::of(m),
            None => BufRef {
                id: self.dummy_id[0],
                buffer: self.dummy_read.clone(),
            },
        };
        [
            read(slots.a),
            read(slots.b),
            read(slots.c),
            match slots.out {
                Some(m) => BufRef::of(m),
                None => BufRef {
                    id: self.dummy_id[1],
                    buffer: self.dummy_write.clone(),
                },
            },
            BufRef::of(&ws.small),
            BufRef::of(&ws.aux),
        ]
    }

    fn bind_group(&mut self, bufs: &[BufRef; 6]) -> wgpu::BindGroup {
        let ids = bufs.each_ref().map(|b| b.id);
        if let Some(bg) = self.bind_groups.get(&ids) {
            return bg.clone();
        }
        if self.bind_groups.len() > 512 {
            self.bind_groups.clear();
        }
        let mut entries = vec![
            wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.ring,
                    offset: 0,
                    size: std::num::NonZeroU64::new(RING_STRIDE),
                }),
            },
            wgpu::BindGroupEntry {
                binding: 7,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.lane_ring,
                    offset: 0,
                    size: std::num::NonZeroU64::new(LANE_WINDOW),
                }),
            },
        ];
        for (i, b) in bufs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.buffer.as_entire_binding(),
            });
        }
        let bg = self
            .ctx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &self.kernels.layout,
                entries: &entries,
            });
        self.bind_groups.insert(ids, bg.clone());
        bg
    }

    /// Records one dispatch.
    pub(super) fn dispatch(
        &mut self,
        kernel: Kernel,
        header: ParamsHeader,
        coefs: [f64; 8],
        slots: Slots,
        groups: (u32, u32),
    ) {
        if groups.0 == 0 || groups.1 == 0 {
            return;
        }
        self.record(kernel, header, coefs, slots, Some(groups), None);
    }

    /// Records one dispatch whose workgroup counts the device wrote into `args` (so a
    /// converged iteration's remaining steps launch nothing).
    fn dispatch_indirect(
        &mut self,
        kernel: Kernel,
        header: ParamsHeader,
        coefs: [f64; 8],
        args: &GpuMat,
    ) {
        self.record(kernel, header, coefs, Slots::default(), None, Some(args));
    }

    fn record(
        &mut self,
        kernel: Kernel,
        header: ParamsHeader,
        coefs: [f64; 8],
        slots: Slots,
        groups: Option<(u32, u32)>,
        indirect: Option<&GpuMat>,
    ) {
        let ws = self.ws.as_ref().expect("workspace sized before a dispatch");
        let off = |m: Option<&GpuMat>| m.map_or(0, |m| m.offset);
        let bases = [
            off(slots.a),
            off(slots.b),
            off(slots.c),
            off(slots.out),
            ws.small.offset,
            ws.aux.offset,
            0,
            0,
        ];
        let mut entry = std::mem::take(&mut self.scratch);
        encode_lane(&bases, &coefs, self.precision, &mut entry);
        let bufs = self.bind_buffers(&slots);
        // these write every entry of `out` once, in their epilogue
        let clampable = matches!(
            kernel,
            Kernel::Combine | Kernel::MulSmall | Kernel::ScaleInPlace
        ) && groups.is_some()
            && slots.out.is_some_and(|o| header.n as usize == o.p * o.k);
        let out_key = slots.out.map(|o| (o.id, o.offset));
        self.last_write = None;
        let indirect = indirect.map(|m| (BufRef::of(m), m.offset as u64 * self.elem() as u64));
        if let Some(lane) = &mut self.lane {
            lane.ops.push(LaneOp::Dispatch {
                kernel,
                header,
                entry: entry.clone(),
                bufs,
                groups,
                indirect,
            });
            if clampable {
                self.last_write = out_key.map(|out| LastWrite {
                    kernel,
                    out,
                    at: HeaderAt::Lane(lane.ops.len() - 1),
                });
            }
        } else {
            let bytes = operand_bytes(&slots, self.elem() as u64);
            self.traffic.launches += 1;
            self.traffic.operand_bytes += bytes;
            let per = &mut self.launches_by_kernel[kernel as usize];
            per.0 += 1;
            per.1 += bytes;
            let indirect = indirect.as_ref().map(|(b, o)| (&b.buffer, *o));
            self.encode_dispatch(kernel, &header, &entry, 1, &bufs, groups, indirect);
            if clampable {
                self.last_write = out_key.map(|out| LastWrite {
                    kernel,
                    out,
                    at: HeaderAt::Ring(self.ring_used - 1),
                });
            }
        }
        self.scratch = entry;
    }

    /// Encodes one kernel launch for `count` problems at once: the header is shared, `entries`
    /// holds each problem's `struct Lane` one after another, and problem `z` runs in the
    /// workgroups with `workgroup_id.z = z` (launches of more problems than a window holds
    /// are split). An indirect launch is for one problem.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn encode_dispatch(
        &mut self,
        kernel: Kernel,
        header: &ParamsHeader,
        entries: &[u8],
        count: usize,
        bufs: &[BufRef; 6],
        groups: Option<(u32, u32)>,
        indirect: Option<(&wgpu::Buffer, u64)>,
    ) {
        let stride = lane_size(self.precision);
        debug_assert_eq!(entries.len(), count * stride);
        let per = (LANE_WINDOW as usize / stride).min(65_535);
        let bg = self.bind_group(bufs);
        let align = (self.ctx.limits.min_storage_buffer_offset_alignment as usize).max(1);
        let mut start = 0;
        while start < count {
            let n = per.min(count - start);
            let bytes = &entries[start * stride..(start + n) * stride];
            if self.ring_used == RING_SLOTS || self.lane_used + bytes.len() > LANE_RING {
                self.flush();
            }
            let slot = self.ring_used;
            self.ring_used += 1;
            self.launches += 1;
            let at = slot * RING_STRIDE as usize;
            self.ring_bytes[at..at + header_size(self.precision)]
                .copy_from_slice(bytemuck::bytes_of(header));
            let lane_at = self.lane_used;
            if self.lane_bytes.len() < lane_at + bytes.len() {
                self.lane_bytes.resize(lane_at + bytes.len(), 0);
            }
            self.lane_bytes[lane_at..lane_at + bytes.len()].copy_from_slice(bytes);
            // the next launch's entries start aligned (the padding is written too)
            self.lane_used = (lane_at + bytes.len()).div_ceil(align) * align;
            if self.lane_bytes.len() < self.lane_used {
                self.lane_bytes.resize(self.lane_used, 0);
            }
            let kernels = self.kernels.clone();
            let enc = self.encoder();
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            pass.set_pipeline(kernels.pipeline(kernel));
            pass.set_bind_group(
                0,
                &bg,
                &[(slot as u64 * RING_STRIDE) as u32, lane_at as u32],
            );
            match (groups, indirect) {
                (Some((x, y)), _) => pass.dispatch_workgroups(x, y, n as u32),
                (None, Some((args, offset))) => pass.dispatch_workgroups_indirect(args, offset),
                (None, None) => {}
            }
            start += n;
        }
    }

    /// Copies `bytes` bytes between two device regions (captured for a problem of a batch).
    pub(super) fn copy_region(
        &mut self,
        src: &GpuMat,
        src_elem: u64,
        dst: &GpuMat,
        dst_elem: u64,
        bytes: u64,
    ) {
        let e = self.elem() as u64;
        self.last_write = None;
        if self.lane.is_some() && src_elem == 0 && dst_elem == 0 && src.p * src.k > 0 {
            // the matrices of a batch share buffers, and a buffer copy cannot stay inside
            // one buffer: a copy kernel (which also merges across the batch)
            let n = (bytes / e) as usize;
            self.elementwise(
                Kernel::Combine,
                CombineMode::Copy as u32,
                [0.0; 8],
                LITERAL,
                Slots {
                    a: Some(src),
                    out: Some(dst),
                    ..Default::default()
                },
                n,
            );
            return;
        }
        let (so, d_o) = (
            (src.offset as u64 + src_elem) * e,
            (dst.offset as u64 + dst_elem) * e,
        );
        if let Some(lane) = &mut self.lane {
            lane.ops.push(LaneOp::Copy {
                src: BufRef::of(src),
                src_off: so,
                dst: BufRef::of(dst),
                dst_off: d_o,
                bytes,
            });
        } else {
            self.traffic.copies += 1;
            self.traffic.copy_bytes += 2 * bytes;
            self.encoder()
                .copy_buffer_to_buffer(&src.buffer, so, &dst.buffer, d_o, bytes);
        }
    }

    /// Reads device regions back (each `(region, first element, elements)`), in one round
    /// trip: the problem's own, or the batch's shared one for a problem of a batch.
    fn read_regions(&mut self, regions: &[(&GpuMat, u64, u64)], out: &mut Vec<f64>) -> Result<()> {
        let e = self.elem() as u64;
        self.last_write = None;
        if let Some(lane) = &mut self.lane {
            self.readbacks += 1;
            let reads = regions
                .iter()
                .map(|(m, first, len)| ReadReq {
                    buf: BufRef::of(m),
                    offset: (m.offset as u64 + first) * e,
                    bytes: len * e,
                })
                .collect();
            let values = lane.exchange(reads)?;
            if let Some(err) = self.error.take() {
                return Err(err);
            }
            *out = values;
            return Ok(());
        }
        let total: u64 = regions.iter().map(|r| r.2 * e).sum();
        self.traffic.readback_bytes += total;
        let staging = match &self.ws.as_ref().and_then(|w| w.staging.clone()) {
            Some(s) if s.size() >= total => s.clone(),
            _ => self.create_buffer(
                "nsa-flow download",
                total,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?,
        };
        let mut at = 0;
        for (m, first, len) in regions {
            let bytes = len * e;
            let from = (m.offset as u64 + first) * e;
            self.encoder()
                .copy_buffer_to_buffer(&m.buffer, from, &staging, at, bytes);
            at += bytes;
        }
        self.flush();
        self.map_values(&staging, total, out)
    }

    /// A 2-D grid of `groups` workgroups (65 535 per dimension).
    pub(super) fn grid(groups: usize) -> (u32, u32) {
        let x = groups.clamp(1, 65_535);
        (x as u32, groups.div_ceil(x) as u32)
    }

    pub(super) fn elementwise(
        &mut self,
        kernel: Kernel,
        mode: u32,
        coefs: [f64; 8],
        src0: u32,
        slots: Slots,
        n: usize,
    ) {
        let (gx, gy) = Self::grid(n.div_ceil(256));
        let mut h = ParamsHeader::new();
        h.n = n as u32;
        h.mode = mode;
        h.groups_x = gx;
        h.src[0] = src0;
        self.dispatch(kernel, h, coefs, slots, (gx, gy));
    }

    /// `small[off] = AᵀB` (symmetrised when `sym`).
    pub(super) fn gram(&mut self, a: &GpuMat, b: &GpuMat, off: u32, sym: bool) {
        let (p, k) = (a.p, a.k);
        let (chunk, chunks) = {
            let ws = self.ws();
            (ws.gram_chunk, ws.gram_chunks)
        };
        let tiles = k.div_ceil(32);
        let mut h = ParamsHeader::new();
        h.p = p as u32;
        h.k = k as u32;
        h.k2 = k as u32;
        h.chunk = chunk as u32;
        h.off0 = 0;
        self.dispatch(
            Kernel::GramPartial,
            h,
            [0.0; 8],
            Slots {
                a: Some(a),
                b: Some(b),
                ..Default::default()
            },
            (chunks as u32, (tiles * tiles) as u32),
        );
        let mut h = ParamsHeader::new();
        h.k = k as u32;
        h.k2 = k as u32;
        h.off0 = 0;
        h.off1 = off;
        h.groups_x = chunks as u32;
        h.mode = sym as u32;
        let (gx, gy) = Self::grid(k * k);
        h.chunk = gx;
        self.dispatch(Kernel::GramReduce, h, [0.0; 8], Slots::default(), (gx, gy));
    }

    /// `out = c0·(A·small[m]) + …` (see matmul_small.wgsl).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mul_small(
        &mut self,
        a: &GpuMat,
        m: u32,
        b: Option<&GpuMat>,
        out: &GpuMat,
        mode: u32,
        coefs: [f64; 8],
        src: [u32; 4],
    ) {
        let (p, k) = (a.p, a.k);
        let mut h = ParamsHeader::new();
        h.p = p as u32;
        h.k = k as u32;
        h.n = (p * k) as u32;
        h.mode = mode;
        h.off0 = m;
        h.src = src;
        self.dispatch(
            Kernel::MulSmall,
            h,
            coefs,
            Slots {
                a: Some(a),
                b,
                out: Some(out),
                ..Default::default()
            },
            (k.div_ceil(16) as u32, p.div_ceil(256) as u32),
        );
    }

    pub(super) fn kk_matmul(&mut self, a: u32, b: u32, c: u32, sym: bool) {
        let k = self.ws().k;
        let mut h = ParamsHeader::new();
        h.k = k as u32;
        h.off0 = a;
        h.off1 = b;
        h.off2 = c;
        h.mode = sym as u32;
        self.dispatch(
            Kernel::KkMatmul,
            h,
            [0.0; 8],
            Slots::default(),
            ((k * k).div_ceil(256) as u32, 1),
        );
    }

    /// `small[out] = (small[s] + shift)^{-1/2}` by Newton–Schulz. `fixed` = Some(steps): the
    /// reference's unconverged iteration (Frobenius scaling); None: run to the residual.
    pub(super) fn inv_sqrt_ns(
        &mut self,
        s: u32,
        out: u32,
        abs_shift: [f64; 2],
        rel_shift: f64,
        fixed: Option<usize>,
        cap: usize,
    ) {
        let lay = self.ws().layout;
        let k = lay.k;
        let slot = lay.scalar(SC_NS);
        let residual_mode = fixed.is_none();
        let steps = fixed.unwrap_or(cap);
        let tol = 8.0 * self.eps() * (k as f64).sqrt();
        let mut h = ParamsHeader::new();
        h.k = k as u32;
        h.off0 = s;
        h.off1 = lay.ns();
        h.off2 = out;
        h.slot = slot;
        h.mode = if residual_mode { 3 } else { 0 };
        let coefs = [
            abs_shift[0],
            abs_shift[1],
            rel_shift,
            tol,
            steps as f64,
            0.0,
            0.0,
            0.0,
        ];
        let args = self.ws().ns_args.handle();
        let with_args = Slots {
            out: Some(&args),
            ..Default::default()
        };
        self.dispatch(Kernel::NsInit, h, coefs, with_args, (1, 1));
        let kk = (k * k).div_ceil(256);
        if k <= 64 {
            // one workgroup runs as many steps per dispatch as the loop-trip budget allows:
            // in workgroup memory (~3·4·k trips a step) for k ≤ 32, on the small buffer above
            let (kernel, trips) = if k <= 32 {
                (Kernel::NsShared, 12 * k + 48)
            } else {
                (Kernel::NsFused, 2 * kk * k + 2 * kk + 16)
            };
            let per = (self.trip_budget / trips).max(1);
            let mut left = steps;
            while left > 0 {
                let now = left.min(per);
                let mut hs = h;
                hs.chunk = now as u32;
                self.dispatch(kernel, hs, coefs, Slots::default(), (1, 1));
                left -= now;
            }
        } else {
            for _ in 0..steps {
                self.dispatch_indirect(Kernel::NsStepA, h, coefs, &args);
                self.dispatch_indirect(Kernel::NsStepB, h, coefs, &args);
                self.dispatch(Kernel::NsCheck, h, coefs, with_args, (1, 1));
            }
        }
        self.dispatch(Kernel::NsFinish, h, coefs, Slots::default(), (kk as u32, 1));
    }

    pub(super) fn inv_sqrt_diag(
        &mut self,
        s: u32,
        out: u32,
        abs_shift: f64,
        rel_shift: f64,
        floor: f64,
        rel_floor: f64,
    ) {
        let k = self.ws().k;
        let mut h = ParamsHeader::new();
        h.k = k as u32;
        h.off0 = s;
        h.off1 = out;
        self.dispatch(
            Kernel::InvSqrtDiag,
            h,
            [abs_shift, rel_shift, floor, rel_floor, 0.0, 0.0, 0.0, 0.0],
            Slots::default(),
            (1, 1),
        );
    }

    pub(super) fn eps(&self) -> f64 {
        match self.precision {
            Precision::F32 => f32::EPSILON as f64,
            Precision::F64 => f64::EPSILON,
        }
    }

    /// `small[t] = inverse square root` of `small[s]` as the corrected retraction computes it:
    /// `(S + δI)^{-1/2}`, `δ = 16·ε·tr(S)/k`.
    pub(super) fn inv_sqrt_corrected(
        &mut self,
        s: u32,
        t: u32,
        method: InvSqrtMethod,
        cap: Option<usize>,
    ) {
        let rel = 16.0 * self.eps();
        match method {
            InvSqrtMethod::Diag => self.inv_sqrt_diag(s, t, 0.0, rel, f64::MIN_POSITIVE, rel),
            _ => self.inv_sqrt_ns(s, t, [0.0, 0.0], rel, None, cap.unwrap_or(NS_CAP).max(1)),
        }
    }

    /// `small[t]` = the reference's `inv_sqrt_sym_adaptive(S + εI)`.
    pub(super) fn inv_sqrt_reference(&mut self, s: u32, t: u32, o: &RetractOptions) {
        let k = self.ws().k;
        let method = match o.inv_method {
            InvSqrtMethod::Auto if k <= o.eig_thresh => InvSqrtMethod::Eig,
            InvSqrtMethod::Auto => InvSqrtMethod::NewtonSchulz,
            m => m,
        };
        match method {
            // eig clamps eigenvalues of S + ε at ε, which is Newton–Schulz run to convergence;
            // eigenvalues below 16·ε_mach·tr(S)/k are rounding noise to an eigensolver too
            // (its results there are arbitrary), and would stop Newton–Schulz converging, so
            // they are lifted to that floor
            InvSqrtMethod::Eig | InvSqrtMethod::Auto => {
                let rel = 16.0 * self.eps();
                self.inv_sqrt_ns(s, t, [o.eps, 0.0], rel, None, NS_CAP)
            }
            InvSqrtMethod::NewtonSchulz => {
                self.inv_sqrt_ns(s, t, [o.eps, o.eps], 0.0, Some(o.ns_iter.unwrap_or(4)), 0)
            }
            InvSqrtMethod::Diag => self.inv_sqrt_diag(s, t, o.eps, 0.0, o.eps, 0.0),
        }
    }

    /// Partial sums of one reduction into aux[at .. at + G].
    pub(super) fn partial_sums(
        &mut self,
        mode: SumMode,
        a: &GpuMat,
        b: Option<&GpuMat>,
        at: usize,
        t: f64,
        clamp: bool,
    ) {
        self.partial_sums_c(mode, a, b, at, [t, 0.0], clamp);
    }

    /// [`GpuBackend::partial_sums`] with two coefficients.
    fn partial_sums_c(
        &mut self,
        mode: SumMode,
        a: &GpuMat,
        b: Option<&GpuMat>,
        at: usize,
        c: [f64; 2],
        clamp: bool,
    ) {
        let g = self.ws().partials;
        let mut h = ParamsHeader::new();
        h.n = (a.p * a.k) as u32;
        h.mode = mode as u32;
        h.off0 = at as u32;
        h.groups_x = g as u32;
        h.k2 = clamp as u32;
        self.dispatch(
            Kernel::PartialSums,
            h,
            [c[0], c[1], 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            Slots {
                a: Some(a),
                b,
                ..Default::default()
            },
            (g as u32, 1),
        );
    }

    /// Reads `slots` readback slots back and adds each one's partials in f64, in order.
    fn read_slots(&mut self, slots: usize, out: &mut Vec<f64>) -> Result<()> {
        let (g, start, aux) = {
            let ws = self.ws();
            (ws.partials, ws.aux_readback, ws.aux.handle())
        };
        let mut host = std::mem::take(&mut self.partial_sums_host);
        let read = self.read_regions(&[(&aux, start as u64, (slots * g) as u64)], &mut host);
        self.partial_sums_host = host;
        read?;
        for s in 0..slots {
            out.push(self.partial_sums_host[s * g..(s + 1) * g].iter().sum());
        }
        Ok(())
    }

    /// Maps `bytes` of a MAP_READ buffer after the work submitted so far and decodes its
    /// elements into `out` (cleared first) as f64, surfacing any deferred or asynchronous
    /// error before a value is used.
    fn map_values(&mut self, buffer: &wgpu::Buffer, bytes: u64, out: &mut Vec<f64>) -> Result<()> {
        self.readbacks += 1;
        let error = &mut self.error;
        self.ctx
            .read_back(buffer, bytes, self.precision, out, || error.take())
    }

    fn to_bytes(&self, m: &DMatrix<f64>) -> Vec<u8> {
        let mut out = Vec::with_capacity(m.len() * self.elem());
        crate::gpu::encode_elements(m.iter().copied(), self.precision, &mut out);
        out
    }

    /// A buffer of its own (for the batch coordinator's staging).
    pub(super) fn create_buffer_pub(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        self.create_buffer(label, size, usage)
    }

    /// [`GpuBackend::map_values`] for the batch coordinator.
    pub(super) fn map_values_pub(
        &mut self,
        buffer: &wgpu::Buffer,
        bytes: u64,
        out: &mut Vec<f64>,
    ) -> Result<()> {
        self.map_values(buffer, bytes, out)
    }

    /// Records a copy between buffers (byte offsets).
    pub(super) fn raw_copy(
        &mut self,
        src: &wgpu::Buffer,
        src_off: u64,
        dst: &wgpu::Buffer,
        dst_off: u64,
        bytes: u64,
    ) {
        self.encoder()
            .copy_buffer_to_buffer(src, src_off, dst, dst_off, bytes);
    }

    pub(super) fn new_mat(&mut self, p: usize, k: usize) -> Result<GpuMat> {
        if p == 0 || k == 0 {
            return Err(NsaError::Empty {
                what: "GPU matrix",
                rows: p,
                cols: k,
            });
        }
        self.check_shape(p, k)?;
        self.ensure_workspace(p, k)?;
        let mut m = self.alloc(
            "nsa-flow matrix",
            (p * k * self.elem()) as u64,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        )?;
        m.p = p;
        m.k = k;
        Ok(m)
    }

    pub(super) fn same_shape(&mut self, a: &GpuMat, b: &GpuMat) -> bool {
        if a.p != b.p || a.k != b.k {
            if self.error.is_none() {
                self.error = Some(NsaError::ShapeMismatch {
                    what: "GPU matrices of one operation",
                    expected_rows: a.p,
                    expected_cols: a.k,
                    got_rows: b.p,
                    got_cols: b.k,
                });
            }
            return false;
        }
        true
    }

    /// Runs an optimizer rule as its passes ([`UpdateRule::passes`]): one `torch_elem`
    /// dispatch per elementwise pass, a buffer copy per copy, and AdamP's projection as
    /// SGDP's rows / decide / apply pattern.
    fn torch_passes(
        &mut self,
        rule: &UpdateRule,
        param: &GpuMat,
        grad: &GpuMat,
        state: &[GpuMat],
        lr: f64,
        out: &GpuMat,
    ) {
        if !self.use_shape(param) {
            return;
        }
        if state.len() < rule.state_len() {
            self.error.get_or_insert(NsaError::InvalidParameter {
                name: "optimizer state",
                reason: format!(
                    "this optimizer needs {} state matrices, got {}",
                    rule.state_len(),
                    state.len()
                ),
            });
            return;
        }
        for m in &state[..rule.state_len()] {
            if !self.same_shape(param, m) {
                return;
            }
        }
        let get = |o: Operand| -> &GpuMat {
            match o {
                Operand::Param => param,
                Operand::Grad => grad,
                Operand::Out => out,
                Operand::State(i) => &state[i],
            }
        };
        let n = param.p * param.k;
        for pass in rule.passes(lr) {
            match pass {
                OptPass::Elem {
                    op,
                    dst,
                    src,
                    mut c,
                    init,
                } => {
                    let mut mode = op as u32;
                    if let Some(v) = init {
                        mode |= 256;
                        c[7] = v;
                    }
                    for (bit, s) in src.iter().enumerate() {
                        if s.is_some() {
                            mode |= 512 << bit;
                        }
                    }
                    let slots = Slots {
                        a: src[0].map(get),
                        b: src[1].map(get),
                        c: src[2].map(get),
                        out: Some(get(dst)),
                    };
                    self.elementwise(Kernel::TorchElem, mode, c, LITERAL, slots, n);
                }
                OptPass::Copy { src, dst } => {
                    let bytes = (n * self.elem()) as u64;
                    let (s, d) = (get(src).handle(), get(dst).handle());
                    self.copy_region(&s, 0, &d, 0, bytes);
                }
                OptPass::Project { eps, delta, step } => {
                    let (lay, at) = {
                        let ws = self.ws();
                        (ws.layout, ws.aux_sgdp)
                    };
                    let (p, k) = (param.p, param.k);
                    let rows = p.div_ceil(256);
                    // sgdp_decide's literals: μ = 0, no weight decay, wd_ratio 1, lr = step
                    let coefs = [0.0, 0.0, eps, 0.0, delta, 1.0, step, 0.0];
                    let mut h = ParamsHeader::new();
                    h.p = p as u32;
                    h.k = k as u32;
                    h.off0 = at as u32;
                    h.slot = lay.scalar(SC_SGDP);
                    h.groups_x = rows as u32;
                    self.dispatch(
                        Kernel::AdampRows,
                        h,
                        coefs,
                        Slots {
                            a: Some(param),
                            b: Some(grad),
                            c: Some(out),
                            ..Default::default()
                        },
                        (rows as u32, 1),
                    );
                    self.dispatch(Kernel::SgdpDecide, h, coefs, Slots::default(), (1, 1));
                    self.dispatch(
                        Kernel::AdampApply,
                        h,
                        coefs,
                        Slots {
                            a: Some(param),
                            out: Some(out),
                            ..Default::default()
                        },
                        (rows as u32, 1),
                    );
                }
            }
        }
    }

    /// The soft-polar blend `dst = src·T_w` with `T_w` built in `small` (both styles).
    fn retract_soft_polar(&mut self, src: &GpuMat, dst: &GpuMat, o: &RetractOptions) {
        let lay = self.ws().layout;
        let k = lay.k;
        let (s, t) = (lay.s(), lay.t());
        self.gram(src, src, s, false);
        let reference = o.style == Mode::Reference;
        let polar = o.retraction == Retraction::Polar;
        let w = if polar { 1.0 } else { o.w };
        if reference {
            if polar || (k > o.diag_thresh && src.p < k) {
                // the reference's SVD polar factor U·Vᵀ = Y·(YᵀY)^{-1/2}
                let rel = 16.0 * self.eps();
                self.inv_sqrt_ns(s, t, [0.0, 0.0], rel, None, NS_CAP);
            } else {
                self.inv_sqrt_reference(s, t, o);
            }
        } else {
            self.inv_sqrt_corrected(s, t, o.inv_method, o.ns_iter);
            self.kk_matmul(t, s, lay.tmp(), false);
        }
        let mut h = ParamsHeader::new();
        h.k = k as u32;
        h.off0 = t;
        h.off1 = s;
        h.off2 = lay.tmp2();
        h.off3 = lay.tmp();
        h.slot = lay.scalar(SC_TRACE);
        h.mode = (!reference) as u32;
        let keep_below = if reference { 1e-24 } else { f64::MIN_POSITIVE };
        self.dispatch(
            Kernel::BlendMatrix,
            h,
            [w, keep_below, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            Slots::default(),
            (1, 1),
        );
        self.mul_small(
            src,
            lay.tmp2(),
            None,
            dst,
            0,
            [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [LITERAL; 4],
        );
        if reference {
            // renormalise to ‖Y‖ from the product itself, on the device
            let (fin, g) = {
                let ws = self.ws();
                (ws.aux_finalize, ws.partials)
            };
            self.partial_sums(SumMode::NormSq, dst, None, fin, 0.0, false);
            let mut h = ParamsHeader::new();
            h.off0 = fin as u32;
            h.off1 = lay.scalar(SC_FACTOR);
            h.off2 = lay.scalar(SC_TRACE);
            h.chunk = g as u32;
            h.mode = 1;
            self.dispatch(Kernel::Finalize, h, [0.0; 8], Slots::default(), (1, 1));
            self.elementwise(
                Kernel::ScaleInPlace,
                0,
                [0.0; 8],
                lay.scalar(SC_FACTOR),
                Slots {
                    out: Some(dst),
                    ..Default::default()
                },
                src.p * src.k,
            );
        }
    }

    /// The adapter's memory bandwidth in GB/s (bytes read plus bytes written per second) as
    /// a plain copy kernel of `bytes` bytes achieves it: the reference point of the bandwidth
    /// bound the benchmarks report. Runs one untimed copy, then `repeats` timed ones.
    pub fn copy_bandwidth(&mut self, bytes: usize, repeats: usize) -> Result<f64> {
        let words = (bytes / 16).max(1);
        let size = (words * 16) as u64;
        if size > self.ctx.limits.max_storage_buffer_binding_size {
            return Err(limit_error(format!(
                "a {size}-byte copy exceeds max_storage_buffer_binding_size ({})",
                self.ctx.limits.max_storage_buffer_binding_size
            )));
        }
        if self.ws.is_none() {
            self.ensure_workspace(1, 1)?;
        }
        let usage = wgpu::BufferUsages::STORAGE;
        let src = GpuMat {
            buffer: self.create_buffer("nsa-flow bandwidth source", size, usage)?,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            offset: 0,
            p: 0,
            k: 0,
        };
        let dst = GpuMat {
            buffer: self.create_buffer("nsa-flow bandwidth destination", size, usage)?,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            offset: 0,
            p: 0,
            k: 0,
        };
        let (gx, gy) = Self::grid(words.div_ceil(256));
        let mut h = ParamsHeader::new();
        // bandwidth.wgsl's uniform is { n4, groups_x, pad, pad }: the first two words
        h.p = words as u32;
        h.k = gx;
        let slots = Slots {
            a: Some(&src),
            out: Some(&dst),
            ..Default::default()
        };
        self.dispatch(Kernel::CopyWords, h, [0.0; 8], slots, (gx, gy));
        self.wait()?;
        let t0 = std::time::Instant::now();
        for _ in 0..repeats.max(1) {
            self.dispatch(Kernel::CopyWords, h, [0.0; 8], slots, (gx, gy));
        }
        self.wait()?;
        let secs = t0.elapsed().as_secs_f64();
        self.bind_groups.clear();
        Ok(2.0 * size as f64 * repeats.max(1) as f64 / secs / 1e9)
    }

    #[doc(hidden)]
    /// Records one launch of a kernel family on `y` (and `x`, `out`) without reading anything
    /// back; [`GpuBackend::wait`] submits and waits. For per-kernel benchmarks.
    pub fn record_kernel(&mut self, which: KernelBench, y: &GpuMat, x: &GpuMat, out: &mut GpuMat) {
        if !(self.same_shape(y, x) && self.same_shape(y, out) && self.use_shape(y)) {
            return;
        }
        let lay = self.ws().layout;
        match which {
            KernelBench::Gram => self.gram(y, y, lay.s(), false),
            KernelBench::MulSmall => self.mul_small(
                y,
                lay.s(),
                None,
                out,
                0,
                [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                [LITERAL; 4],
            ),
            KernelBench::Lincomb => self.lincomb(1.0, y, -0.5, x, out),
            KernelBench::DistSq => {
                let at = self.ws().aux_readback;
                self.partial_sums(SumMode::DistSq, y, Some(x), at, 0.0, false)
            }
            KernelBench::InvSqrt => {
                self.inv_sqrt_corrected(lay.s(), lay.t(), InvSqrtMethod::Auto, None)
            }
        }
    }

    #[doc(hidden)]
    /// Submits what was recorded and waits for the device to finish it (for timing).
    pub fn wait(&mut self) -> Result<()> {
        self.flush();
        let polled = self.ctx.device.poll(wgpu::PollType::wait_indefinitely());
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if let Some(e) = self.ctx.take_error() {
            return Err(e);
        }
        polled.map(|_| ()).map_err(|e| NsaError::Gpu {
            kind: GpuErrorKind::DeviceLost,
            message: format!("waiting for the device: {e}"),
        })
    }

    #[doc(hidden)]
    /// Reads the state of the last Newton–Schulz run: (steps, residual ‖I − R‖_F/√k).
    /// One readback; for diagnostics and tests.
    pub fn last_newton_schulz(&mut self) -> Result<(usize, f64)> {
        let lay = self.ws().layout;
        let small = self.ws().small.handle();
        let mut vals = Vec::new();
        self.read_regions(&[(&small, lay.scalar(SC_NS) as u64, 8)], &mut vals)?;
        Ok((vals[2] as usize, vals[3]))
    }

    /// `A^{-1/2}` of a symmetric positive definite k×k matrix on the device, by Newton–Schulz
    /// run to its residual (spectral scaling, no shift), with the steps taken and the final
    /// residual `‖I − R‖_F/√k`.
    pub fn inv_sqrt_newton_schulz(
        &mut self,
        a: &DMatrix<f64>,
    ) -> Result<(DMatrix<f64>, usize, f64)> {
        let k = a.nrows();
        // a k×k "matrix" uploaded as p = k rows to size the workspace, then placed in S
        let m = self.upload(a)?;
        let lay = self.ws().layout;
        let e = self.elem() as u64;
        let small = self.ws().small.handle();
        self.copy_region(&m, 0, &small, lay.s() as u64, (k * k) as u64 * e);
        self.inv_sqrt_ns(lay.s(), lay.t(), [0.0, 0.0], 0.0, None, NS_CAP);
        let out = self.zeros(k, k)?;
        self.copy_region(&small, lay.t() as u64, &out, 0, (k * k) as u64 * e);
        let t = self.download(&out)?;
        let (steps, residual) = self.last_newton_schulz()?;
        Ok((t, steps, residual))
    }
}

impl Backend for GpuBackend {
    type Mat = GpuMat;

    fn name(&self) -> String {
        format!("gpu-{} ({})", self.precision, self.ctx.adapter().label())
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    /// Up to [`super::MAX_BATCH`] (20, a whole reference backtracking) candidates per
    /// readback, fewer when their p×k matrices would take more than 4 GiB together (2 GiB on
    /// a software adapter, whose memory is the host's).
    fn line_search_batch(&self) -> usize {
        let Some(ws) = &self.ws else { return 4 };
        let bytes = ws.p * ws.k * self.elem();
        let budget: usize = if self.ctx.adapter().is_software {
            2 << 30
        } else {
            4 << 30
        };
        (budget / bytes.max(1)).clamp(4, super::MAX_BATCH)
    }

    fn readbacks(&self) -> Option<u64> {
        Some(self.readbacks)
    }

    fn upload(&mut self, m: &DMatrix<f64>) -> Result<GpuMat> {
        let mat = self.new_mat(m.nrows(), m.ncols())?;
        let bytes = self.to_bytes(m);
        let at = mat.offset as u64 * self.elem() as u64;
        match &mut self.lane {
            Some(lane) => lane.ops.push(LaneOp::Write {
                dst: BufRef::of(&mat),
                offset: at,
                data: bytes,
            }),
            None => self.ctx.queue.write_buffer(&mat.buffer, at, &bytes),
        }
        Ok(mat)
    }

    fn download(&mut self, m: &GpuMat) -> Result<DMatrix<f64>> {
        let mut vals = Vec::with_capacity(m.p * m.k);
        self.read_regions(&[(m, 0, (m.p * m.k) as u64)], &mut vals)?;
        Ok(DMatrix::from_vec(m.p, m.k, vals))
    }

    fn zeros(&mut self, p: usize, k: usize) -> Result<GpuMat> {
        self.new_mat(p, k)
    }

    fn copy(&mut self, src: &GpuMat, dst: &mut GpuMat) {
        if !self.same_shape(src, dst) {
            return;
        }
        let bytes = (src.p * src.k * self.elem()) as u64;
        self.copy_region(src, 0, dst, 0, bytes);
    }

    fn lincomb(&mut self, a: f64, x: &GpuMat, b: f64, y: &GpuMat, dst: &mut GpuMat) {
        if !(self.same_shape(x, y) && self.same_shape(x, dst)) {
            return;
        }
        self.elementwise(
            Kernel::Combine,
            CombineMode::Lincomb as u32,
            [a, b, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            LITERAL,
            Slots {
                a: Some(x),
                b: Some(y),
                out: Some(dst),
                ..Default::default()
            },
            x.p * x.k,
        );
    }

    fn lerp(&mut self, base: &GpuMat, toward: &GpuMat, alpha: f64, dst: &mut GpuMat) {
        if !(self.same_shape(base, toward) && self.same_shape(base, dst)) {
            return;
        }
        self.elementwise(
            Kernel::Combine,
            CombineMode::Lerp as u32,
            [alpha, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            LITERAL,
            Slots {
                a: Some(base),
                b: Some(toward),
                out: Some(dst),
                ..Default::default()
            },
            base.p * base.k,
        );
    }

    fn nonneg(&mut self, m: &mut GpuMat, mode: NonNeg) {
        let kind = match mode {
            NonNeg::None => return,
            NonNeg::Hard => 0,
            NonNeg::Softplus => 1,
        };
        if mode == NonNeg::Hard && self.fuse && self.clamp_last_write(m) {
            return;
        }
        self.elementwise(
            Kernel::NonnegInPlace,
            kind,
            [0.0; 8],
            LITERAL,
            Slots {
                out: Some(m),
                ..Default::default()
            },
            m.p * m.k,
        );
    }

    fn retract(&mut self, src: &GpuMat, dst: &mut GpuMat, options: &RetractOptions) {
        if !self.same_shape(src, dst) {
            return;
        }
        if options.retraction == Retraction::None || options.w <= 0.0 {
            self.copy(src, dst);
            return;
        }
        if !self.use_shape(src) {
            return;
        }
        self.retract_soft_polar(src, dst, options);
    }

    fn gradient(&mut self, y: &GpuMat, x0: &GpuMat, rule: &GradientRule, out: &mut GpuMat) {
        if !(self.same_shape(y, x0) && self.same_shape(y, out) && self.use_shape(y)) {
            return;
        }
        let lay = self.ws().layout;
        let k = lay.k;
        let (s, m) = (lay.s(), lay.m());
        self.gram(y, y, s, false);
        let mut h = ParamsHeader::new();
        h.k = k as u32;
        h.off0 = s;
        h.off1 = m;
        h.off2 = lay.scalar(SC_ALPHA);
        h.mode = rule.simplified.is_some() as u32;
        self.dispatch(
            Kernel::GradCoef,
            h,
            [
                rule.orth,
                rule.simplified.unwrap_or(0.0),
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ],
            Slots::default(),
            (1, 1),
        );
        let dev = [
            lay.scalar(SC_ALPHA),
            lay.scalar(SC_RADIAL),
            LITERAL,
            LITERAL,
        ];
        if rule.projection == Projection::ReferenceOrthOnly {
            // project the orthogonality part alone, then add the fidelity part
            self.mul_small(y, m, None, out, 0, [0.0; 8], dev);
            self.gram(y, out, lay.tmp(), true);
            self.mul_small(
                y,
                lay.tmp(),
                Some(x0),
                out,
                3,
                [-1.0, 0.0, rule.fid, 0.0, 1.0, 0.0, 0.0, 0.0],
                [LITERAL; 4],
            );
            return;
        }
        self.mul_small(
            y,
            m,
            Some(x0),
            out,
            2,
            [0.0, 0.0, rule.fid, 0.0, 0.0, 0.0, 0.0, 0.0],
            dev,
        );
        match rule.projection {
            Projection::None | Projection::ReferenceOrthOnly => {}
            Projection::ReferenceFull => {
                self.gram(y, out, lay.tmp(), true);
                self.mul_small(
                    y,
                    lay.tmp(),
                    None,
                    out,
                    1,
                    [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
                    [LITERAL; 4],
                );
            }
            Projection::PolarFull => {
                let t = lay.t();
                self.inv_sqrt_corrected(s, t, InvSqrtMethod::Auto, None);
                self.gram(y, out, lay.tmp(), false);
                self.kk_matmul(t, lay.tmp(), lay.tmp2(), true);
                self.kk_matmul(t, lay.tmp2(), lay.tmp(), false);
                self.mul_small(
                    y,
                    lay.tmp(),
                    None,
                    out,
                    1,
                    [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
                    [LITERAL; 4],
                );
            }
        }
    }

    fn optimizer_step(
        &mut self,
        rule: &UpdateRule,
        param: &GpuMat,
        grad: &GpuMat,
        state: &mut [GpuMat],
        lr: f64,
        out: &mut GpuMat,
    ) {
        if !(self.same_shape(param, grad) && self.same_shape(param, out)) {
            return;
        }
        match *rule {
            UpdateRule::Sgd => self.lincomb(1.0, param, -lr, grad, out),
            UpdateRule::Sgdp {
                momentum,
                dampening,
                eps,
                weight_decay,
                delta,
                wd_ratio,
                nesterov,
            } => {
                if !self.use_shape(param) {
                    return;
                }
                let Some(buf) = state.first() else {
                    self.error.get_or_insert(NsaError::InvalidParameter {
                        name: "optimizer state",
                        reason: "SGDP needs one state matrix (its momentum buffer)".into(),
                    });
                    return;
                };
                let (lay, at) = {
                    let ws = self.ws();
                    (ws.layout, ws.aux_sgdp)
                };
                let (p, k) = (param.p, param.k);
                let rows = p.div_ceil(256);
                let coefs = [
                    momentum,
                    dampening,
                    eps,
                    weight_decay,
                    delta,
                    wd_ratio,
                    lr,
                    0.0,
                ];
                let mut h = ParamsHeader::new();
                h.p = p as u32;
                h.k = k as u32;
                h.mode = nesterov as u32;
                h.off0 = at as u32;
                h.slot = lay.scalar(SC_SGDP);
                h.groups_x = rows as u32;
                self.dispatch(
                    Kernel::SgdpRows,
                    h,
                    coefs,
                    Slots {
                        a: Some(param),
                        b: Some(grad),
                        out: Some(buf),
                        ..Default::default()
                    },
                    (rows as u32, 1),
                );
                self.dispatch(Kernel::SgdpDecide, h, coefs, Slots::default(), (1, 1));
                self.dispatch(
                    Kernel::SgdpApply,
                    h,
                    coefs,
                    Slots {
                        a: Some(param),
                        b: Some(grad),
                        c: Some(buf),
                        out: Some(out),
                    },
                    (rows as u32, 1),
                );
            }
            _ => self.torch_passes(rule, param, grad, state, lr, out),
        }
    }

    fn reduce_into(
        &mut self,
        requests: &[Reduction<'_, GpuMat>],
        out: &mut Vec<f64>,
    ) -> Result<()> {
        out.clear();
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if requests.is_empty() {
            return Ok(());
        }
        fn shape_of(r: &Reduction<'_, GpuMat>) -> (usize, usize) {
            let m = match *r {
                Reduction::EnergyTerms { y, .. } => y,
                Reduction::NormSq(m) | Reduction::AllFinite(m) | Reduction::AbsSum(m) => m,
                Reduction::CountAbove { m, .. } => m,
                Reduction::Dot(a, _) | Reduction::DistSq(a, _) | Reduction::CountDiffer(a, _) => a,
                Reduction::GradMapSq { y, .. } => y,
            };
            (m.p, m.k)
        }
        for r in requests {
            let ok = match *r {
                Reduction::EnergyTerms { y, target } => self.same_shape(y, target),
                Reduction::Dot(a, b) | Reduction::DistSq(a, b) | Reduction::CountDiffer(a, b) => {
                    self.same_shape(a, b)
                }
                Reduction::GradMapSq { y, g, .. } => self.same_shape(y, g),
                _ => true,
            };
            if !ok {
                return Err(self.error.take().expect("a shape mismatch was recorded"));
            }
        }
        // rounds of one shape each (the partial counts depend on it), ≤ MAX_SLOTS slots;
        // EnergyTerms uses 4 slots, everything else 1
        let mut i = 0;
        while i < requests.len() {
            let shape = shape_of(&requests[i]);
            self.ensure_workspace(shape.0, shape.1)?;
            let g = self.ws().partials;
            let base = self.ws().aux_readback;
            let lay = self.ws().layout;
            let mut used = 0;
            let mut j = i;
            let mut sums = FusedSums {
                terms: smallvec::SmallVec::new(),
                fuse: self.fuse,
            };
            while j < requests.len()
                && used + requests[j].width() <= MAX_SLOTS
                && shape_of(&requests[j]) == shape
            {
                let at = base + used * g;
                match requests[j] {
                    Reduction::EnergyTerms { y, target } => {
                        sums.push(self, SumTerm::new(SumMode::DistSq, y, Some(target), at));
                        self.gram(y, y, lay.m(), false);
                        let mut h = ParamsHeader::new();
                        h.k = lay.k as u32;
                        h.off0 = (at + g) as u32;
                        h.off1 = lay.m();
                        h.chunk = g as u32;
                        self.dispatch(Kernel::GramStats, h, [0.0; 8], Slots::default(), (1, 1));
                        sums.push(self, SumTerm::new(SumMode::NormSq, y, None, at + 3 * g));
                    }
                    Reduction::NormSq(m) => {
                        sums.push(self, SumTerm::new(SumMode::NormSq, m, None, at))
                    }
                    Reduction::Dot(a, b) => {
                        sums.push(self, SumTerm::new(SumMode::Dot, a, Some(b), at))
                    }
                    Reduction::DistSq(a, b) => {
                        sums.push(self, SumTerm::new(SumMode::DistSq, a, Some(b), at))
                    }
                    Reduction::CountDiffer(a, b) => {
                        sums.push(self, SumTerm::new(SumMode::CountDiffer, a, Some(b), at))
                    }
                    Reduction::GradMapSq {
                        y,
                        g: grad,
                        t,
                        clamp,
                    } => {
                        let mut term = SumTerm::new(SumMode::GradMapSq, y, Some(grad), at);
                        term.coefs = Some(([t, 0.0], clamp));
                        sums.push(self, term);
                    }
                    Reduction::AllFinite(m) => {
                        sums.push(self, SumTerm::new(SumMode::NonFinite, m, None, at))
                    }
                    Reduction::AbsSum(m) => {
                        sums.push(self, SumTerm::new(SumMode::AbsSum, m, None, at))
                    }
                    Reduction::CountAbove {
                        m,
                        scale,
                        threshold,
                    } => {
                        let mut term = SumTerm::new(SumMode::CountAbove, m, None, at);
                        term.coefs = Some(([scale, threshold], false));
                        sums.push(self, term);
                    }
                }
                used += requests[j].width();
                j += 1;
            }
            sums.flush(self);
            let from = out.len();
            self.read_slots(used, out)?;
            // non-finite counts become the 1/0 flag
            let mut pos = from;
            for r in &requests[i..j] {
                if let Reduction::AllFinite(_) = r {
                    out[pos] = if out[pos] == 0.0 { 1.0 } else { 0.0 };
                }
                pos += r.width();
            }
            i = j;
        }
        Ok(())
    }
}

impl crate::autograd::DifferentiableBackend for GpuBackend {
    fn energy_gradient(
        &mut self,
        y: &GpuMat,
        x0: &GpuMat,
        spec: &crate::autograd::EnergySpec,
        terms: &crate::energy::EnergyTerms,
        x0_norm_sq: f64,
        out: &mut GpuMat,
    ) {
        self.ag_energy_gradient(y, x0, spec, terms, x0_norm_sq, out);
    }

    fn nonneg_backward(&mut self, pre: &GpuMat, mode: NonNeg, g: &mut GpuMat) {
        self.ag_nonneg_backward(pre, mode, g);
    }

    fn retract_backward(
        &mut self,
        y: &GpuMat,
        options: &RetractOptions,
        g: &GpuMat,
        out: &mut GpuMat,
    ) {
        self.ag_retract_backward(y, options, g, out);
    }
}
