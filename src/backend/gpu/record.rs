//! Recording: the open encoder, the uniform ring, cached bind groups, the dispatches with
//! their traffic counts, copies, and the one readback path (submit, map, decode).

use super::*;

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

/// A launch whose output a following hard `nonneg` can clamp in the launch's own epilogue.
#[derive(Clone, Copy)]
pub(super) struct LastWrite {
    kernel: Kernel,
    out: (u64, u32),
    /// Where its header waits to be uploaded: a ring slot, or an op of this lane's capture.
    at: HeaderAt,
}

#[derive(Clone, Copy)]
pub(super) enum HeaderAt {
    Ring(usize),
    Lane(usize),
}

/// The bytes of the distinct matrices `slots` binds, the output counted again when a launch
/// also reads it (see [`Traffic`]).
pub(super) fn operand_bytes(slots: &Slots, elem: u64) -> u64 {
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

impl GpuBackend {
    /// Clamps `m` at zero in the epilogue of the launch that just wrote it, when that launch
    /// can (the same `select(x, 0, x < 0)` as `nonneg_in_place`, on the same value: the bits
    /// do not change, one pass over `m` and one launch are saved).
    pub(super) fn clamp_last_write(&mut self, m: &GpuMat) -> bool {
        let Some(lw) = self.last_write.take() else {
            return false;
        };
        if lw.out != (m.id, m.offset) {
            return false;
        }
        let patch = |h: &mut ParamsHeader| match lw.kernel {
            Kernel::MulSmall => h.mode |= MUL_SMALL_CLAMP,
            Kernel::GramPartial => h.mode |= GRAM_CLAMP,
            _ => h.k2 = 1,
        };
        match lw.at {
            HeaderAt::Ring(slot) => {
                let mut h = self.ring_headers.get(slot);
                patch(&mut h);
                self.ring_headers.put(slot, &h);
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

    pub(super) fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        // whatever is recorded next may read the Gram a pending reduce writes (a waiting
        // candidate Gram is settled by `record` and the copies, which know what they record)
        self.settle_pending_reduce();
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

    /// Launches the `gram_reduce` a candidate's Gram waits for, if any.
    pub(super) fn settle_pending_reduce(&mut self) {
        if let Some(slot) = self.pending_reduce.take() {
            // the workspace is the one the partials were formed in: resizing it flushes first
            let (k, chunks) = (self.ws().k, self.ws().gram_chunks);
            self.gram_reduce(k, chunks, 0, slot, false);
        }
    }

    /// Submits what was recorded (writing the rings' parameter entries first).
    pub(in crate::backend) fn flush(&mut self) {
        self.settle_pending_reduce();
        self.settle_pending_products();
        self.last_write = None;
        if let Some(enc) = self.encoder.take() {
            if self.ring_used > 0 {
                self.ctx
                    .queue
                    .write_buffer(&self.ring, 0, self.ring_headers.bytes(self.ring_used));
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
    pub(super) fn bind_buffers(&self, slots: &Slots) -> [BufRef; 6] {
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

    pub(super) fn bind_group(&mut self, bufs: &[BufRef; 6]) -> wgpu::BindGroup {
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
                    size: std::num::NonZeroU64::new(HeaderTable::STRIDE),
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
    pub(in crate::backend) fn dispatch(
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
    pub(super) fn dispatch_indirect(
        &mut self,
        kernel: Kernel,
        header: ParamsHeader,
        coefs: [f64; 8],
        args: &GpuMat,
    ) {
        self.record(kernel, header, coefs, Slots::default(), None, Some(args));
    }

    pub(super) fn record(
        &mut self,
        kernel: Kernel,
        header: ParamsHeader,
        coefs: [f64; 8],
        slots: Slots,
        groups: Option<(u32, u32)>,
        indirect: Option<&GpuMat>,
    ) {
        // the launch may read the Gram a pending reduce writes (a Newton–Schulz launch that
        // adds the partials itself took it already)
        self.settle_pending_reduce();
        // A candidate Gram waiting for its sums launch may wait through the launches that
        // form and retract the next candidate and reduce other Grams (they read other slots
        // and write other partials: `gram_slot_of` and `gram_slot_for_energy` settle a slot
        // they read or hand out); anything else may read it.
        if !matches!(
            kernel,
            Kernel::GramPartial | Kernel::GramReduce | Kernel::NsShared | Kernel::PartialSumsMulti
        ) {
            self.settle_pending_products();
        }
        // A launch writes one matrix, the one bound as `out` (binding 4; every other binding
        // is only read, which tests/shaders.rs checks), besides the small and aux buffers:
        // the cached Grams of that buffer's matrices are forgotten. These write none but
        // partial sums and small-buffer entries other than the cached Grams (gram_partial's
        // `out`, a candidate it forms, had its Gram registered just before).
        if !matches!(
            kernel,
            Kernel::GramPartial
                | Kernel::GramReduce
                | Kernel::GramStats
                | Kernel::PartialSums
                | Kernel::PartialSumsMulti
        ) {
            if let Some(out) = slots.out {
                self.forget_grams_of(out.id);
            }
        }
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
        // these write every entry of `out` once, in their epilogue (gram_partial when it forms
        // a candidate, the only way it has an `out`)
        let clampable = matches!(
            kernel,
            Kernel::Combine | Kernel::MulSmall | Kernel::ScaleInPlace | Kernel::GramPartial
        ) && groups.is_some()
            && slots.out.is_some_and(|o| header.n as usize == o.p * o.k);
        let out_key = slots.out.map(|o| (o.id, o.offset));
        // gram_reduce reads only partials and writes a k×k slot: a clamp of the candidate
        // whose partials it adds still patches the launch that formed them (the patch lands
        // before the submission, so the partials it reads are the clamped candidate's)
        if kernel != Kernel::GramReduce {
            self.last_write = None;
        }
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
    pub(in crate::backend) fn encode_dispatch(
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
            self.ring_headers.put(slot, header);
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
            pass.set_bind_group(0, &bg, &[HeaderTable::offset(slot), lane_at as u32]);
            match (groups, indirect) {
                (Some((x, y)), _) => pass.dispatch_workgroups(x, y, n as u32),
                (None, Some((args, offset))) => pass.dispatch_workgroups_indirect(args, offset),
                (None, None) => {}
            }
            start += n;
        }
    }

    /// Copies `bytes` bytes between two device regions (captured for a problem of a batch).
    pub(in crate::backend) fn copy_region(
        &mut self,
        src: &GpuMat,
        src_elem: u64,
        dst: &GpuMat,
        dst_elem: u64,
        bytes: u64,
    ) {
        let e = self.elem() as u64;
        self.last_write = None;
        self.forget_grams_of(dst.id);
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
            self.settle_pending_products();
            self.encoder()
                .copy_buffer_to_buffer(&src.buffer, so, &dst.buffer, d_o, bytes);
        }
    }

    /// Reads device regions back (each `(region, first element, elements)`), in one round
    /// trip: the problem's own, or the batch's shared one for a problem of a batch.
    pub(super) fn read_regions(
        &mut self,
        regions: &[(&GpuMat, u64, u64)],
        out: &mut Vec<f64>,
    ) -> Result<()> {
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
        self.settle_pending_products();
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

    /// Reads `slots` readback slots back and adds each one's partials in f64, in order.
    pub(super) fn read_slots(&mut self, slots: usize, out: &mut Vec<f64>) -> Result<()> {
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
    pub(super) fn map_values(
        &mut self,
        buffer: &wgpu::Buffer,
        bytes: u64,
        out: &mut Vec<f64>,
    ) -> Result<()> {
        self.readbacks += 1;
        let error = &mut self.error;
        self.ctx
            .read_back(buffer, bytes, self.precision, out, || error.take())
    }

    pub(super) fn to_bytes(&self, m: &DMatrix<f64>) -> Vec<u8> {
        let mut out = Vec::with_capacity(m.len() * self.elem());
        crate::gpu::encode_elements(m.iter().copied(), self.precision, &mut out);
        out
    }

    /// A buffer of its own (for the batch coordinator's staging).
    pub(in crate::backend) fn create_buffer_pub(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        self.create_buffer(label, size, usage)
    }

    /// [`GpuBackend::map_values`] for the batch coordinator.
    pub(in crate::backend) fn map_values_pub(
        &mut self,
        buffer: &wgpu::Buffer,
        bytes: u64,
        out: &mut Vec<f64>,
    ) -> Result<()> {
        self.map_values(buffer, bytes, out)
    }

    /// Records a copy between buffers (byte offsets).
    pub(in crate::backend) fn raw_copy(
        &mut self,
        src: &wgpu::Buffer,
        src_off: u64,
        dst: &wgpu::Buffer,
        dst_off: u64,
        bytes: u64,
    ) {
        self.settle_pending_products();
        self.encoder()
            .copy_buffer_to_buffer(src, src_off, dst, dst_off, bytes);
    }
}
