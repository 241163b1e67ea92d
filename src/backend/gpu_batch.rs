//! Many problems of one shape on one device, solved together: the batch is a dispatch
//! dimension.
//!
//! Every problem runs the ordinary single-problem solver loop ([`crate::flow::solve`]) on
//! its own [`GpuBackend`] in *lane* mode, on a thread of its own. A lane backend allocates its
//! matrices and workspace as blocks of buffers shared by the batch (its n-th allocation of a
//! size is block `lane` of slot n of that size's buffers) and records nothing itself: each kernel launch,
//! copy and upload is captured. When a lane needs values back (a reduction or a download) it
//! hands its captured work to the [`BatchHub`] and waits. Once every unfinished problem is
//! waiting, the coordinator runs one *round*: it walks the problems' captured work, each in
//! its own order, and launches that agree (same kernel, header, shared buffers and grid;
//! their coefficients and data blocks differ) at the heads of several problems' work are
//! encoded once for all those problems (greedily: the most common head launch first), problem `z` of a launch running in the workgroups
//! with `workgroup_id.z = z` and reading its coefficients and data starts from its
//! `struct Lane` entry; then every problem's readback is copied into one buffer and read back
//! at once.
//!
//! So a round costs one submit and one readback for the whole batch, and problems that take
//! the same path (the usual case: the same iteration structure) share every launch. A problem
//! that has finished is simply absent from later rounds. Where paths differ (a backtracking
//! line search that tries another candidate, a converged Newton–Schulz) the launches that
//! disagree are encoded separately, still inside the same round. Every problem computes
//! exactly what it computes alone: the kernels, their arithmetic and their reduction order do
//! not depend on the batch, only the data starts do.

use super::gpu::GpuBackend;
use super::Backend;
use crate::error::{GpuErrorKind, NsaError, Result};
use crate::gpu::{Kernel, ParamsHeader};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

pub use crate::batch::BatchProfile;

/// A buffer as a launch or a copy names it: an id (bind groups are cached by ids, and
/// launches compare by them) and the handle.
#[derive(Clone, Debug)]
pub(crate) struct BufRef {
    pub(crate) id: u64,
    pub(crate) buffer: wgpu::Buffer,
}

/// One captured piece of a problem's work.
// launches are nearly every op, so boxing the large variant would only add an allocation each
#[allow(clippy::large_enum_variant)]
pub(crate) enum LaneOp {
    /// A kernel launch: `entry` is the problem's `struct Lane` bytes.
    Dispatch {
        kernel: Kernel,
        header: ParamsHeader,
        entry: Vec<u8>,
        bufs: [BufRef; 6],
        groups: Option<(u32, u32)>,
        indirect: Option<(BufRef, u64)>,
    },
    /// A copy between device regions (byte offsets).
    Copy {
        src: BufRef,
        src_off: u64,
        dst: BufRef,
        dst_off: u64,
        bytes: u64,
    },
    /// An upload.
    Write {
        dst: BufRef,
        offset: u64,
        data: Vec<u8>,
    },
}

impl LaneOp {
    /// Whether two problems' launches can be one launch: the same kernel, header, buffers and
    /// grid (their `struct Lane` entries differ).
    fn same_launch(&self, other: &LaneOp) -> bool {
        match (self, other) {
            (
                LaneOp::Dispatch {
                    kernel: k1,
                    header: h1,
                    bufs: b1,
                    groups: g1,
                    indirect: None,
                    ..
                },
                LaneOp::Dispatch {
                    kernel: k2,
                    header: h2,
                    bufs: b2,
                    groups: g2,
                    indirect: None,
                    ..
                },
            ) => {
                k1 == k2
                    && h1 == h2
                    && g1 == g2
                    && b1.iter().zip(b2.iter()).all(|(x, y)| x.id == y.id)
            }
            _ => false,
        }
    }
}

/// A region to read back (byte offset and length).
pub(crate) struct ReadReq {
    pub(crate) buf: BufRef,
    pub(crate) offset: u64,
    pub(crate) bytes: u64,
}

struct Request {
    ops: Vec<LaneOp>,
    reads: Vec<ReadReq>,
    reply: mpsc::Sender<Result<Vec<f64>>>,
}

/// The part of a [`GpuBackend`] that makes it one problem of a batch.
pub(crate) struct LaneCtx {
    pub(crate) hub: Arc<BatchHub>,
    pub(crate) lane: usize,
    /// Allocations so far per size class (size, usage).
    pub(crate) allocs: HashMap<(u64, u32), usize>,
    /// Work captured since the last readback.
    pub(crate) ops: Vec<LaneOp>,
}

impl LaneCtx {
    pub(crate) fn new(hub: Arc<BatchHub>, lane: usize) -> LaneCtx {
        LaneCtx {
            hub,
            lane,
            allocs: HashMap::new(),
            ops: Vec::new(),
        }
    }

    /// Hands the captured work and the readback to the batch and waits for the values.
    pub(crate) fn exchange(&mut self, reads: Vec<ReadReq>) -> Result<Vec<f64>> {
        let (tx, rx) = mpsc::channel();
        let ops = std::mem::take(&mut self.ops);
        {
            let mut st = self.hub.state.lock().unwrap_or_else(|e| e.into_inner());
            st.pending[self.lane] = Some(Request {
                ops,
                reads,
                reply: tx,
            });
            st.waiting += 1;
        }
        self.hub.cv.notify_all();
        rx.recv().unwrap_or_else(|_| {
            Err(NsaError::gpu(
                GpuErrorKind::DeviceLost,
                "the batch stopped before answering a readback",
            ))
        })
    }
}

/// The buffers of one size class: each holds `slots` blocks of every problem.
struct SizeClass {
    chunks: Vec<BufRef>,
    stride: u64,
    slots: usize,
}

struct HubState {
    pending: Vec<Option<Request>>,
    live: usize,
    waiting: usize,
}

static NEXT_BUF: AtomicU64 = AtomicU64::new(1 << 62);

/// What the problems of one batch share: the buffers their blocks live in, the placeholder
/// buffers, and the rendezvous with the coordinator.
pub(crate) struct BatchHub {
    lanes: usize,
    blocks: Mutex<HashMap<(u64, u32), SizeClass>>,
    /// The largest buffer the device binds.
    budget: u64,
    dummies: ((wgpu::Buffer, wgpu::Buffer), [u64; 2]),
    state: Mutex<HubState>,
    cv: Condvar,
}

impl BatchHub {
    pub(crate) fn new(device: &wgpu::Device, lanes: usize, budget: u64) -> Arc<BatchHub> {
        let mk = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 256,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        Arc::new(BatchHub {
            lanes,
            blocks: Mutex::new(HashMap::new()),
            budget,
            dummies: (
                (mk("nsa-flow unused input"), mk("nsa-flow unused output")),
                [
                    NEXT_BUF.fetch_add(1, Ordering::Relaxed),
                    NEXT_BUF.fetch_add(1, Ordering::Relaxed),
                ],
            ),
            state: Mutex::new(HubState {
                pending: (0..lanes).map(|_| None).collect(),
                live: lanes,
                waiting: 0,
            }),
            cv: Condvar::new(),
        })
    }

    pub(crate) fn dummies(&self) -> ((wgpu::Buffer, wgpu::Buffer), [u64; 2]) {
        self.dummies.clone()
    }

    /// Where a problem's `n`-th allocation of `size` bytes and `usage` lives: block `lane` of
    /// slot `n` of the size class's buffers (made by `create` on first use, for every problem
    /// at once): (buffer, id, byte offset). The allocations of one size share buffers (up to
    /// 64 slots per buffer), so a launch binds the same buffer whichever of its matrices a
    /// problem uses: the solver swaps matrices (best, candidates) differently per problem,
    /// and the launches still merge.
    pub(crate) fn block(
        &self,
        n: usize,
        size: u64,
        usage: wgpu::BufferUsages,
        lane: usize,
        mut create: impl FnMut(&str, u64, wgpu::BufferUsages) -> Result<wgpu::Buffer>,
    ) -> Result<(wgpu::Buffer, u64, u64)> {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let lanes = self.lanes as u64;
        let class = blocks.entry((size, usage.bits())).or_insert_with(|| {
            // 256-byte blocks: any copy or indirect offset inside is aligned
            let stride = size.max(4).div_ceil(256) * 256;
            let slots = (self.budget / (stride * lanes)).clamp(1, 64) as usize;
            SizeClass {
                chunks: Vec::new(),
                stride,
                slots,
            }
        });
        let (chunk, slot) = (n / class.slots, (n % class.slots) as u64);
        while class.chunks.len() <= chunk {
            let bytes = class.stride * lanes * class.slots as u64;
            let buffer = create("nsa-flow batch blocks", bytes, usage)?;
            class.chunks.push(BufRef {
                id: NEXT_BUF.fetch_add(1, Ordering::Relaxed),
                buffer,
            });
        }
        let buf = &class.chunks[chunk];
        let offset = (slot * lanes + lane as u64) * class.stride;
        Ok((buf.buffer.clone(), buf.id, offset))
    }

    /// Marks a problem finished (its thread has returned).
    pub(crate) fn finish(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.live -= 1;
        drop(st);
        self.cv.notify_all();
    }

    /// Serves rounds until every problem has finished, launching on `exec` (a backend of
    /// its own on the same device). Returns the number of rounds (= readbacks). An error of
    /// a round (the device lost, out of memory) is every waiting problem's answer.
    pub(crate) fn coordinate(&self, exec: &mut GpuBackend) -> BatchProfile {
        let mut profile = BatchProfile::default();
        let mut staging: Option<wgpu::Buffer> = None;
        let mut arena: Option<wgpu::Buffer> = None;
        loop {
            let waited = Instant::now();
            let requests: Vec<(usize, Request)> = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                while st.waiting < st.live {
                    st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.live == 0 && st.waiting == 0 {
                    profile.problems_seconds += waited.elapsed().as_secs_f64();
                    profile.launches = exec.launches();
                    return profile;
                }
                st.waiting = 0;
                st.pending
                    .iter_mut()
                    .enumerate()
                    .filter_map(|(i, r)| r.take().map(|r| (i, r)))
                    .collect()
            };
            profile.problems_seconds += waited.elapsed().as_secs_f64();
            profile.rounds += 1;
            let result = run_round(exec, &requests, &mut staging, &mut arena, &mut profile);
            match result {
                Ok(values) => {
                    for ((_, req), v) in requests.into_iter().zip(values) {
                        let _ = req.reply.send(Ok(v));
                    }
                }
                Err(e) => {
                    for (_, req) in requests {
                        // every problem of the round gets the failure, its cause shared
                        let _ = req.reply.send(Err(match &e {
                            NsaError::Gpu {
                                kind,
                                message,
                                source,
                            } => NsaError::Gpu {
                                kind: *kind,
                                message: message.clone(),
                                source: source.clone(),
                            },
                            other => NsaError::gpu(GpuErrorKind::DeviceLost, other.full_message()),
                        }));
                    }
                }
            }
        }
    }
}

fn grow(
    exec: &GpuBackend,
    slot: &mut Option<wgpu::Buffer>,
    bytes: u64,
    label: &str,
    usage: wgpu::BufferUsages,
) -> Result<wgpu::Buffer> {
    if let Some(b) = slot {
        if b.size() >= bytes {
            return Ok(b.clone());
        }
    }
    let b = exec.create_buffer_pub(label, bytes.next_power_of_two().max(256), usage)?;
    *slot = Some(b.clone());
    Ok(b)
}

/// One round: every request's work, merged where it can be, then all readbacks at once.
fn run_round(
    exec: &mut GpuBackend,
    requests: &[(usize, Request)],
    staging: &mut Option<wgpu::Buffer>,
    arena: &mut Option<wgpu::Buffer>,
    profile: &mut BatchProfile,
) -> Result<Vec<Vec<f64>>> {
    let encoding = Instant::now();
    // uploads go through one arena written before anything of the round runs, and are
    // copied into place in their order among the launches
    let mut upload = Vec::new();
    let mut upload_at: Vec<Vec<u64>> = Vec::with_capacity(requests.len());
    for (_, req) in requests {
        let mut at = Vec::new();
        for op in &req.ops {
            if let LaneOp::Write { data, .. } = op {
                at.push(upload.len() as u64);
                upload.extend_from_slice(data);
                upload.resize(upload.len().div_ceil(4) * 4, 0);
            }
        }
        upload_at.push(at);
    }
    let arena_buf = if upload.is_empty() {
        None
    } else {
        let b = grow(
            exec,
            arena,
            upload.len() as u64,
            "nsa-flow batch uploads",
            wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        )?;
        exec.context().queue.write_buffer(&b, 0, &upload);
        Some(b)
    };
    // Each problem's work runs in its own order; different problems touch different blocks,
    // so their work interleaves freely. Greedy merge: copies, uploads and indirect launches
    // at the head of a problem's work are encoded at once; among the launches at the heads,
    // those that agree (kernel, header, buffers, grid) with the most common one are encoded
    // as one launch for all of them. Problems in the same phase of their loops thus share
    // launches even when one of them had extra work earlier in the round.
    let mut next: Vec<usize> = vec![0; requests.len()];
    let mut entries = Vec::new();
    let mut writes_done: Vec<usize> = vec![0; requests.len()];
    let mut parts: Vec<Vec<usize>> = Vec::new();
    loop {
        parts.clear();
        for (m, (_, req)) in requests.iter().enumerate() {
            // what cannot merge goes straight away
            while let Some(op) = req.ops.get(next[m]) {
                match op {
                    LaneOp::Dispatch { indirect: None, .. } => break,
                    LaneOp::Dispatch {
                        kernel,
                        header,
                        entry,
                        bufs,
                        groups: grid,
                        indirect: Some((args, offset)),
                    } => exec.encode_dispatch(
                        *kernel,
                        header,
                        entry,
                        1,
                        bufs,
                        *grid,
                        Some((&args.buffer, *offset)),
                    ),
                    LaneOp::Copy {
                        src,
                        src_off,
                        dst,
                        dst_off,
                        bytes,
                    } => exec.raw_copy(&src.buffer, *src_off, &dst.buffer, *dst_off, *bytes),
                    LaneOp::Write { dst, offset, data } => {
                        let at = upload_at[m][writes_done[m]];
                        writes_done[m] += 1;
                        let src = arena_buf.as_ref().expect("uploads were staged");
                        exec.raw_copy(src, at, &dst.buffer, *offset, data.len() as u64);
                    }
                }
                next[m] += 1;
            }
            let Some(op) = req.ops.get(next[m]) else {
                continue;
            };
            match parts
                .iter()
                .position(|p| op.same_launch(&requests[p[0]].1.ops[next[p[0]]]))
            {
                Some(p) => parts[p].push(m),
                None => parts.push(vec![m]),
            }
        }
        // weighted majority merge: the launch whose problems have the most work left
        let Some(members) = parts.iter().max_by_key(|p| {
            p.iter()
                .map(|&m| requests[m].1.ops.len() - next[m])
                .sum::<usize>()
        }) else {
            break;
        };
        let Some(LaneOp::Dispatch {
            kernel,
            header,
            bufs,
            groups: grid,
            entry,
            ..
        }) = requests[members[0]].1.ops.get(next[members[0]])
        else {
            unreachable!("parts hold launches only")
        };
        let bytes = if members.len() == 1 {
            entry
        } else {
            entries.clear();
            for &m in members {
                if let LaneOp::Dispatch { entry, .. } = &requests[m].1.ops[next[m]] {
                    entries.extend_from_slice(entry);
                }
            }
            &entries
        };
        exec.encode_dispatch(*kernel, header, bytes, members.len(), bufs, *grid, None);
        for &m in members {
            next[m] += 1;
        }
    }
    // every readback into one buffer
    let total: u64 = requests
        .iter()
        .flat_map(|(_, r)| r.reads.iter().map(|q| q.bytes))
        .sum();
    let stage = grow(
        exec,
        staging,
        total.max(4),
        "nsa-flow batch readback",
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    )?;
    let mut at = 0;
    for (_, req) in requests {
        for q in &req.reads {
            exec.raw_copy(&q.buf.buffer, q.offset, &stage, at, q.bytes);
            at += q.bytes;
        }
    }
    profile.encoding_seconds += encoding.elapsed().as_secs_f64();
    let device = Instant::now();
    exec.flush();
    let mut all = Vec::new();
    let read = exec.map_values_pub(&stage, total.max(4), &mut all);
    profile.device_seconds += device.elapsed().as_secs_f64();
    read?;
    let e = exec.precision().bytes() as u64;
    let mut out = Vec::with_capacity(requests.len());
    let mut pos = 0usize;
    for (_, req) in requests {
        let n: u64 = req.reads.iter().map(|q| q.bytes / e).sum();
        out.push(all[pos..pos + n as usize].to_vec());
        pos += n as usize;
    }
    Ok(out)
}

/// Runs `run(backend, i)` for every problem `i < count`, each on a lane backend of its own
/// (one thread per problem), with `exec`'s device doing the launches and readbacks of all of
/// them together. Returns each problem's answer and where the time went.
pub(crate) fn run_batch<T, F>(
    exec: &mut GpuBackend,
    count: usize,
    run: F,
) -> (Vec<Result<T>>, BatchProfile)
where
    T: Send,
    F: Fn(&mut GpuBackend, usize) -> Result<T> + Sync,
{
    struct Finished(Arc<BatchHub>);
    impl Drop for Finished {
        // also when the solve panics, so the coordinator never waits for a dead problem
        fn drop(&mut self) {
            self.0.finish();
        }
    }
    let ctx = exec.context().clone();
    let precision = exec.precision();
    let budget = exec.buffer_budget();
    let hub = BatchHub::new(&ctx.device, count, budget);
    let mut answers: Vec<Option<Result<T>>> = (0..count).map(|_| None).collect();
    let mut profile = BatchProfile::default();
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(count);
        for (i, answer) in answers.iter_mut().enumerate() {
            let (lane_hub, ctx, run) = (hub.clone(), ctx.clone(), &run);
            let spawned = std::thread::Builder::new()
                .name(format!("nsa-flow problem {i}"))
                .stack_size(2 << 20)
                .spawn_scoped(s, move || {
                    let _finished = Finished(lane_hub.clone());
                    let mut be = GpuBackend::new_lane(ctx, precision, lane_hub, i)?;
                    run(&mut be, i)
                });
            match spawned {
                Ok(h) => handles.push((i, h)),
                Err(e) => {
                    hub.finish();
                    *answer = Some(Err(NsaError::Internal {
                        what: format!("could not start a thread for problem {i}: {e}"),
                    }));
                }
            }
        }
        profile = hub.coordinate(exec);
        for (i, h) in handles {
            answers[i] = Some(h.join().unwrap_or_else(|_| {
                Err(NsaError::Internal {
                    what: format!("the solve of problem {i} panicked"),
                })
            }));
        }
    });
    let answers = answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            a.unwrap_or_else(|| {
                Err(NsaError::Internal {
                    what: format!("problem {i} of the batch was never answered"),
                })
            })
        })
        .collect();
    (answers, profile)
}
