//! Bench and diagnostic hooks (hidden from the docs): the copy-bandwidth probe, single kernel
//! launches, and the Newton–Schulz kernels on their own.

use super::*;

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

impl GpuBackend {
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
        polled.map(|_| ()).map_err(|e| {
            NsaError::gpu_caused(GpuErrorKind::DeviceLost, "waiting for the device", e)
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
