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
use crate::gpu::{
    encode_lane, lane_size, GpuContext, HeaderTable, Kernel, Kernels, ParamsHeader, LITERAL,
};
use crate::params::{InvSqrtMethod, Mode, NonNeg, Precision, Retraction};
use crate::retract::RetractOptions;
use nalgebra::DMatrix;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

mod diagnostics;
mod ops;
mod record;
mod sums;

pub use diagnostics::KernelBench;
use ops::{CombineMode, GRAM_CLAMP, MUL_SMALL_CLAMP};
use record::LastWrite;
pub use record::Traffic;
pub(in crate::backend) use sums::SumMode;

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

/// Offsets (in elements) of the regions of the small k×k buffer.
#[derive(Clone, Copy, Debug)]
pub(super) struct SmallLayout {
    pub(super) k: usize,
    /// Gram slots of the energy evaluations (see `GpuBackend::gram_cache`).
    cached: usize,
}

/// Largest `k` whose energy evaluations keep their Grams for the next gradient (a batch of
/// `MAX_BATCH` k×k slots beside the rest of the small buffer).
const GRAM_CACHE_MAX_K: usize = 64;

impl SmallLayout {
    pub(super) fn new(k: usize) -> SmallLayout {
        let cached = if k <= GRAM_CACHE_MAX_K {
            super::MAX_BATCH
        } else {
            0
        };
        SmallLayout { k, cached }
    }
    /// The Gram slot `i` of the energy evaluations (`i < slots()`).
    pub(super) fn cached_gram(&self, i: usize) -> u32 {
        (10 * self.k * self.k + 64 + i * self.k * self.k) as u32
    }
    /// How many energy evaluations keep their Grams.
    pub(super) fn gram_slots(&self) -> usize {
        self.cached
    }
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
        10 * self.k * self.k + 64 + self.cached * self.k * self.k
    }
}

// scalar slots
pub(super) const SC_ALPHA: usize = 0;
pub(super) const SC_RADIAL: usize = 1;
pub(super) const SC_TRACE: usize = 2;
const SC_FACTOR: usize = 3;
const SC_NS: usize = 8; // 5 values
const SC_SGDP: usize = 16; // 4 values

/// Regions of aux where retracted candidates' Gram partials can wait for their reduce (two:
/// a line search's readback usually holds one or two retracted candidates).
const PRODUCT_REGIONS: usize = 2;

/// A Gram whose chunk partials wait at `aux[from..]` to be added into `small[slot]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PendingProduct {
    pub(super) slot: u32,
    pub(super) from: u32,
}

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
        // the partials of the Gram being formed, then PRODUCT_REGIONS regions where
        // candidates' Gram partials wait for the launch that reduces them (`PendingProduct`)
        let gram_len = (1 + PRODUCT_REGIONS) * chunks * k * k;
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
    ring_headers: HeaderTable,
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
    /// The slot of a candidate's Gram whose chunk partials (the workspace's, at `aux[0..]`)
    /// wait to be added: by the retraction's first Newton–Schulz launch, which adds them
    /// itself, or, before anything else is recorded, by a `gram_reduce` launch
    /// (`settle_pending_reduce`).
    pending_reduce: Option<u32>,
    /// Retracted candidates' Grams whose chunk partials wait in a region of their own for
    /// the launch that adds them: the energy's fused sums (which reduce them before reading
    /// the Gram), else a `gram_reduce` launch before anything else could read the slot
    /// (`settle_pending_products`).
    pending_products: smallvec::SmallVec<[PendingProduct; PRODUCT_REGIONS]>,
    /// Whether passes are fused (off only to check that fusing changes no bit).
    fuse: bool,
    /// Loop trips one invocation may make per dispatch ([`TRIP_BUDGET`] on a capped driver).
    pub(super) trip_budget: usize,
    /// The matrices whose Gram `YᵀY` an energy evaluation left in a small-buffer slot
    /// (buffer id, offset, slot), valid until a launch writes that buffer (binds it as `out`)
    /// or a copy lands in it: a candidate's retraction and energy, and the gradient of an
    /// accepted candidate, read it instead of recomputing it (the same kernels on the same
    /// matrix, so the same bits). Off with fusion, and for a problem of a batch.
    gram_cache: smallvec::SmallVec<[(u64, u32, usize); super::MAX_BATCH]>,
    gram_cache_next: usize,
    /// Direct launches and their operand bytes per kernel, indexed by `Kernel as usize`.
    launches_by_kernel: Vec<(u64, u64)>,
    /// Set for one problem of a GPU batch: its work is captured and run by the batch.
    lane: Option<LaneCtx>,
}

fn limit_error(message: String) -> NsaError {
    NsaError::gpu(GpuErrorKind::Limit, message)
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
                RING_SLOTS as u64 * HeaderTable::STRIDE
            } else {
                HeaderTable::STRIDE
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
            ring_headers: HeaderTable::with_slots(if solo { RING_SLOTS } else { 0 }),
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
            pending_reduce: None,
            pending_products: smallvec::SmallVec::new(),
            fuse: true,
            gram_cache: smallvec::SmallVec::new(),
            gram_cache_next: 0,
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
    /// space in one launch, the Newton–Schulz set-up and finish in its steps' launch (k ≤ 32). Fused or not, the results have the same bits; off exists to test
    /// exactly that and to count what fusing saves.
    pub fn set_fusion(&mut self, on: bool) {
        self.fuse = on;
        self.last_write = None;
        self.gram_cache.clear();
    }

    /// The small-buffer slot holding `YᵀY` of `y` from an energy evaluation, if still valid.
    fn cached_gram_of(&self, y: &GpuMat) -> Option<u32> {
        let lay = self.ws().layout;
        self.gram_cache
            .iter()
            .find(|e| e.0 == y.id && e.1 == y.offset)
            .map(|e| lay.cached_gram(e.2))
    }

    /// Where an energy evaluation of `y` writes its Gram: a cache slot (remembered for the
    /// next gradient) when caching is on, else `M`.
    pub(super) fn gram_slot_for_energy(&mut self, y: &GpuMat) -> u32 {
        let lay = self.ws().layout;
        if !self.fuse || self.lane.is_some() || lay.gram_slots() == 0 {
            return lay.m();
        }
        let slot = self.gram_cache_next % lay.gram_slots();
        self.gram_cache_next = (slot + 1) % lay.gram_slots();
        // a Gram still waiting to be reduced into the slot is settled before it is reused
        self.settle_product(lay.cached_gram(slot));
        self.gram_cache
            .retain(|e| e.2 != slot && !(e.0 == y.id && e.1 == y.offset));
        self.gram_cache.push((y.id, y.offset, slot));
        lay.cached_gram(slot)
    }

    /// The slot [`GpuBackend::gram_slot_for_energy`] would hand out next (`None` without
    /// caching, where it answers `M`).
    pub(super) fn next_energy_slot(&self) -> Option<u32> {
        let lay = self.ws().layout;
        if !self.fuse || self.lane.is_some() || lay.gram_slots() == 0 {
            return None;
        }
        Some(lay.cached_gram(self.gram_cache_next % lay.gram_slots()))
    }

    /// Forgets the cached Grams of the matrices in buffer `id` (a launch or copy wrote it).
    pub(super) fn forget_grams_of(&mut self, id: u64) {
        self.gram_cache.retain(|e| e.0 != id);
    }

    /// Forgets every cached Gram (anything recorded may have written a matrix).
    pub(super) fn forget_grams(&mut self) {
        self.gram_cache.clear();
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
        let largest = [p * k, SmallLayout::new(k).len(), plan.aux_len]
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
        self.forget_grams();
        let layout = SmallLayout::new(k);
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

    fn adapter(&self) -> Option<crate::AdapterSummary> {
        Some(self.ctx.adapter().clone())
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

    fn lerp_candidate(&mut self, base: &GpuMat, toward: &GpuMat, alpha: f64, dst: &mut GpuMat) {
        if !(self.same_shape(base, toward) && self.same_shape(base, dst)) {
            return;
        }
        if !self.fuses_candidate_gram(dst) {
            return self.lerp(base, toward, alpha, dst);
        }
        let coefs = [alpha, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        self.combine_with_gram(CombineMode::Lerp, coefs, base, toward, dst);
    }

    fn lincomb_candidate(&mut self, a: f64, x: &GpuMat, b: f64, y: &GpuMat, dst: &mut GpuMat) {
        if !(self.same_shape(x, y) && self.same_shape(x, dst)) {
            return;
        }
        if !self.fuses_candidate_gram(dst) {
            return self.lincomb(a, x, b, y, dst);
        }
        let coefs = [a, b, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        self.combine_with_gram(CombineMode::Lincomb, coefs, x, y, dst);
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
        self.retract_into(src, dst, options, false);
    }

    fn retract_candidate(&mut self, src: &GpuMat, dst: &mut GpuMat, options: &RetractOptions) {
        self.retract_into(src, dst, options, true);
    }

    fn gradient(&mut self, y: &GpuMat, x0: &GpuMat, rule: &GradientRule, out: &mut GpuMat) {
        if !(self.same_shape(y, x0) && self.same_shape(y, out) && self.use_shape(y)) {
            return;
        }
        let lay = self.ws().layout;
        let k = lay.k;
        let m = lay.m();
        let s = self.gram_slot_of(y);
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
        self.reduce_requests(requests, out)
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
