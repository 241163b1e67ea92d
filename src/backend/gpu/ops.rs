//! The typed calls of the kernel families that are not reductions: elementwise passes, the
//! Gram and p×k-by-k×k products, the k×k chain (products, inverse square roots) and the
//! retraction built from them, and the optimizer passes.

use super::*;

/// ns_shared's mode bits: run ns_init's work first, ns_finish's last (inv_sqrt.wgsl).
const NS_SHARED_INIT: u32 = 4;
const NS_SHARED_FINISH: u32 = 8;
/// And first of all add a Gram's chunk partials (aux[n..], p chunks) into small[off0], as
/// gram_reduce would.
const NS_SHARED_REDUCE: u32 = 32;

/// gram_partial's mode: write the (single chunk's) product to small[off1] (gram.wgsl).
const GRAM_DIRECT: u32 = 1;
/// gram_partial's operand is `combine` of its a and b (mode in off2), written to out.
const GRAM_COMBINE: u32 = 2;
/// That operand clamped at zero (set by `clamp_last_write`).
pub(super) const GRAM_CLAMP: u32 = 4;
/// gram_partial's operand is `c0·(a·small[off3])`, written to out.
const GRAM_PRODUCT: u32 = 8;

/// blend_matrix's mode bit: compute `TS = T·S` first, in the same launch (small.wgsl).
const BLEND_WITH_TS: u32 = 2;
/// ns_shared's mode bit: end with the corrected blend of its T (inv_sqrt.wgsl).
const NS_SHARED_BLEND: u32 = 16;
/// Loop trips the fused blend adds to an invocation for k ≤ 32 (TS: ≤ 4 entries of 32 terms,
/// the traces, the writes and two reductions: about 200).
const BLEND_TRIPS: usize = 256;

/// The corrected soft-polar blend a Newton–Schulz chain can end with: the weight and the
/// `tr S` threshold below which `T_w = I`.
#[derive(Clone, Copy, Debug)]
pub(in crate::backend) struct ThenBlend {
    pub(in crate::backend) w: f64,
    pub(in crate::backend) keep_below: f64,
}

/// `combine`'s modes (elementwise.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum CombineMode {
    /// `out = c0·a + c1·b`.
    Lincomb = 0,
    /// `out = a + c0·(b − a)`.
    Lerp = 1,
    /// `out = a` (a copy inside one buffer).
    Copy = 2,
}

/// `mul_small`'s mode bit for a clamp at zero in its epilogue (bits 0 and 1 select the
/// accumulation and the fidelity form).
pub(super) const MUL_SMALL_CLAMP: u32 = 4;

impl GpuBackend {
    /// A 2-D grid of `groups` workgroups (65 535 per dimension).
    pub(in crate::backend) fn grid(groups: usize) -> (u32, u32) {
        let x = groups.clamp(1, 65_535);
        (x as u32, groups.div_ceil(x) as u32)
    }

    pub(in crate::backend) fn elementwise(
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
    pub(in crate::backend) fn gram(&mut self, a: &GpuMat, b: &GpuMat, off: u32, sym: bool) {
        let (p, k) = (a.p, a.k);
        let (chunk, chunks) = {
            let ws = self.ws();
            (ws.gram_chunk, ws.gram_chunks)
        };
        let tiles = k.div_ceil(32);
        // one chunk: its partial is the Gram itself (gram_reduce would add it to zeros),
        // written straight to small[off] by the one launch
        let direct = chunks == 1 && !sym && self.fuse;
        let mut h = ParamsHeader::new();
        h.p = p as u32;
        h.k = k as u32;
        h.k2 = k as u32;
        h.chunk = chunk as u32;
        h.off0 = 0;
        if direct {
            h.mode = GRAM_DIRECT;
            h.off1 = off;
        }
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
        if direct {
            return;
        }
        self.gram_reduce(k, chunks, 0, off, sym);
    }

    /// The slot holding `mᵀm`: its cached Gram, else taken now into the layout's `s` slot.
    pub(super) fn gram_slot_of(&mut self, m: &GpuMat) -> u32 {
        match self.cached_gram_of(m) {
            Some(slot) => {
                self.settle_product(slot);
                slot
            }
            None => {
                let s = self.ws().layout.s();
                self.gram(m, m, s, false);
                s
            }
        }
    }

    /// Whether a candidate written to `dst` can have its Gram formed in the same pass
    /// ([`GpuBackend::combine_with_gram`]): fused, not a batch lane (whose Gram has no cache
    /// slot), one 32-column tile, the whole matrix.
    pub(super) fn fuses_candidate_gram(&self, dst: &GpuMat) -> bool {
        let Some(ws) = &self.ws else { return false };
        self.fuse
            && self.lane.is_none()
            && ws.p == dst.p
            && ws.k == dst.k
            && dst.k <= 32
            && ws.layout.gram_slots() > 0
    }

    /// `dst = combine(a, b)` (lerp or lincomb, `coefs` as `combine` takes them) and its Gram
    /// `dstᵀdst` into an energy Gram slot, remembered for `dst` (so the retraction or the
    /// energy evaluation that follows reads it instead of taking it again): one
    /// `gram_partial` launch that forms each entry as `combine` would, writes it and stages
    /// it (plus `gram_reduce` when p spans several row chunks). A following hard
    /// non-negativity clamps it in that launch (`clamp_last_write`).
    pub(super) fn combine_with_gram(
        &mut self,
        mode: CombineMode,
        coefs: [f64; 8],
        a: &GpuMat,
        b: &GpuMat,
        dst: &GpuMat,
    ) {
        let slots = Slots {
            a: Some(a),
            b: Some(b),
            out: Some(dst),
            ..Default::default()
        };
        self.form_with_gram(GRAM_COMBINE, mode as u32, 0, coefs, slots, dst);
    }

    /// Whether `product_with_gram` fits the loop-trip budget for `dst`'s shape.
    fn product_gram_fits(&self, dst: &GpuMat) -> bool {
        let chunk = self.ws().gram_chunk;
        chunk.div_ceil(32) * (4 * dst.k + 40) <= self.trip_budget
    }

    /// `dst = src·small[m]` as `mul_small` forms it (c0 = 1, nothing added) and its Gram into
    /// an energy Gram slot remembered for `dst`, in one `gram_partial` launch (plus
    /// `gram_reduce` over several row chunks); a following hard non-negativity clamps it there.
    pub(super) fn product_with_gram(&mut self, src: &GpuMat, m: u32, dst: &GpuMat) {
        let slots = Slots {
            a: Some(src),
            out: Some(dst),
            ..Default::default()
        };
        let coefs = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        self.form_with_gram(GRAM_PRODUCT, 0, m, coefs, slots, dst);
    }

    /// The launch(es) of `combine_with_gram` and `product_with_gram`.
    fn form_with_gram(
        &mut self,
        kind: u32,
        off2: u32,
        off3: u32,
        coefs: [f64; 8],
        slots: Slots,
        dst: &GpuMat,
    ) {
        let (p, k) = (dst.p, dst.k);
        let (chunk, chunks) = {
            let ws = self.ws();
            (ws.gram_chunk, ws.gram_chunks)
        };
        let slot = self.gram_slot_for_energy(dst);
        let direct = chunks == 1;
        let mut h = ParamsHeader::new();
        h.p = p as u32;
        h.k = k as u32;
        h.k2 = k as u32;
        h.n = (p * k) as u32;
        h.chunk = chunk as u32;
        h.off0 = 0;
        h.off2 = off2;
        h.off3 = off3;
        h.mode = kind;
        if direct {
            h.mode |= GRAM_DIRECT;
            h.off1 = slot;
        }
        if !direct && kind == GRAM_PRODUCT {
            // a retracted candidate's Gram: its partials wait in a region of their own for the
            // energy's sums launch, which adds them before reading the Gram
            h.off0 = self.product_region();
        }
        self.dispatch(Kernel::GramPartial, h, coefs, slots, (chunks as u32, 1));
        if !direct {
            if kind == GRAM_COMBINE {
                // a candidate's Gram: the retraction's first Newton–Schulz launch may add the
                // partials itself; anything else recorded first launches gram_reduce
                self.pending_reduce = Some(slot);
            } else {
                self.pending_products
                    .push(PendingProduct { slot, from: h.off0 });
            }
        }
    }

    /// A free region for a retracted candidate's Gram partials; when both wait, the older
    /// one's reduce is launched first.
    fn product_region(&mut self) -> u32 {
        let len = (self.ws().gram_chunks * self.ws().k * self.ws().k) as u32;
        let regions = (1..=PRODUCT_REGIONS as u32).map(|r| r * len);
        if let Some(free) = regions
            .clone()
            .find(|&r| self.pending_products.iter().all(|p| p.from != r))
        {
            return free;
        }
        let oldest = self.pending_products.remove(0);
        self.reduce_product(oldest);
        oldest.from
    }

    /// `gram_reduce` of a pending candidate Gram's partials.
    pub(super) fn reduce_product(&mut self, pending: PendingProduct) {
        let (k, chunks) = (self.ws().k, self.ws().gram_chunks);
        self.gram_reduce(k, chunks, pending.from, pending.slot, false);
    }

    /// Takes the pending candidate Gram in `slot`, if any (its partials are then the caller's
    /// to add).
    pub(super) fn take_pending_product(&mut self, slot: u32) -> Option<PendingProduct> {
        let i = self.pending_products.iter().position(|p| p.slot == slot)?;
        Some(self.pending_products.remove(i))
    }

    /// Launches the reduce of the pending candidate Gram in `slot`, if any (before the slot is
    /// read or handed to another matrix).
    pub(super) fn settle_product(&mut self, slot: u32) {
        if let Some(pending) = self.take_pending_product(slot) {
            self.reduce_product(pending);
        }
    }

    /// Launches the reduces of every pending candidate Gram.
    pub(super) fn settle_pending_products(&mut self) {
        for pending in std::mem::take(&mut self.pending_products) {
            self.reduce_product(pending);
        }
    }

    /// `small[off]` = the sum of `chunks` k×k partials at `aux[from..]` in chunk order
    /// (symmetrised when `sym`).
    pub(super) fn gram_reduce(&mut self, k: usize, chunks: usize, from: u32, off: u32, sym: bool) {
        let mut h = ParamsHeader::new();
        h.k = k as u32;
        h.k2 = k as u32;
        h.off0 = from;
        h.off1 = off;
        h.groups_x = chunks as u32;
        h.mode = sym as u32;
        let (gx, gy) = Self::grid(k * k);
        h.chunk = gx;
        self.dispatch(Kernel::GramReduce, h, [0.0; 8], Slots::default(), (gx, gy));
    }

    /// `out = c0·(A·small[m]) + …` (see matmul_small.wgsl).
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend) fn mul_small(
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

    pub(in crate::backend) fn kk_matmul(&mut self, a: u32, b: u32, c: u32, sym: bool) {
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
    pub(in crate::backend) fn inv_sqrt_ns(
        &mut self,
        s: u32,
        out: u32,
        abs_shift: [f64; 2],
        rel_shift: f64,
        fixed: Option<usize>,
        cap: usize,
    ) {
        self.inv_sqrt_ns_then(s, out, abs_shift, rel_shift, fixed, cap, None);
    }

    /// [`GpuBackend::inv_sqrt_ns`], and then, when `blend` is given and the chain's last
    /// launch has room for it (k ≤ 32, fused, within the trip budget), the corrected blend
    /// in that launch: `T_w` to `tmp2`, `TS` to `tmp`, `tr S` to the trace slot, as
    /// blend_matrix with TS computes them. Returns whether it did.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend) fn inv_sqrt_ns_then(
        &mut self,
        s: u32,
        out: u32,
        abs_shift: [f64; 2],
        rel_shift: f64,
        fixed: Option<usize>,
        cap: usize,
        blend: Option<ThenBlend>,
    ) -> bool {
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
            blend.map_or(0.0, |b| b.w),
            blend.map_or(0.0, |b| b.keep_below),
            0.0,
        ];
        let args = self.ws().ns_args.handle();
        let with_args = Slots {
            out: Some(&args),
            ..Default::default()
        };
        let kk = (k * k).div_ceil(256);
        if k <= 32 && steps > 0 && self.fuse {
            // in workgroup memory (~3·4·k trips a step), as many steps per dispatch as the
            // loop-trip budget allows; the first dispatch also sets the iteration up
            // (ns_init's work) and the last one writes T (ns_finish's)
            let trips = 12 * k + 48;
            let per = (self.trip_budget / trips).max(1);
            // the Gram's partials, when they wait for their reduce, are added by the first
            // launch
            let chunks = self.ws().gram_chunks;
            let reduce_trips = gram_fold_trips(chunks);
            let fold = self.pending_reduce == Some(s) && reduce_trips + trips <= self.trip_budget;
            let first_per = if fold {
                (self.trip_budget - reduce_trips) / trips
            } else {
                per
            };
            let mut left = steps;
            let mut first = true;
            let mut blended = false;
            while left > 0 {
                let now = left.min(if first { first_per.max(1) } else { per });
                left -= now;
                let mut hs = h;
                hs.chunk = now as u32;
                if first {
                    hs.mode |= NS_SHARED_INIT;
                    if fold {
                        hs.mode |= NS_SHARED_REDUCE;
                        hs.p = chunks as u32;
                        hs.n = 0;
                        self.pending_reduce = None;
                    }
                }
                if left == 0 {
                    hs.mode |= NS_SHARED_FINISH;
                    if blend.is_some() && now * trips + BLEND_TRIPS <= self.trip_budget {
                        hs.mode |= NS_SHARED_BLEND;
                        hs.off3 = lay.tmp();
                        hs.k2 = lay.tmp2();
                        hs.groups_x = lay.scalar(SC_TRACE);
                        blended = true;
                    }
                }
                let slots = if first { with_args } else { Slots::default() };
                self.dispatch(Kernel::NsShared, hs, coefs, slots, (1, 1));
                first = false;
            }
            return blended;
        }
        self.dispatch(Kernel::NsInit, h, coefs, with_args, (1, 1));
        if k <= 64 {
            // one workgroup runs as many steps per dispatch as the loop-trip budget allows:
            // in workgroup memory for k ≤ 32 (unfused, or zero steps), on the small buffer
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
        false
    }

    pub(in crate::backend) fn inv_sqrt_diag(
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

    pub(in crate::backend) fn eps(&self) -> f64 {
        match self.precision {
            Precision::F32 => f32::EPSILON as f64,
            Precision::F64 => f64::EPSILON,
        }
    }

    /// `small[t] = inverse square root` of `small[s]` as the corrected retraction computes it:
    /// `(S + δI)^{-1/2}`, `δ = 16·ε·tr(S)/k`.
    pub(in crate::backend) fn inv_sqrt_corrected(
        &mut self,
        s: u32,
        t: u32,
        method: InvSqrtMethod,
        cap: Option<usize>,
    ) {
        self.inv_sqrt_corrected_then(s, t, method, cap, None);
    }

    /// [`GpuBackend::inv_sqrt_corrected`], ending with the corrected blend where the chain
    /// allows ([`GpuBackend::inv_sqrt_ns_then`]); returns whether it did.
    pub(in crate::backend) fn inv_sqrt_corrected_then(
        &mut self,
        s: u32,
        t: u32,
        method: InvSqrtMethod,
        cap: Option<usize>,
        blend: Option<ThenBlend>,
    ) -> bool {
        let rel = 16.0 * self.eps();
        match method {
            InvSqrtMethod::Diag => {
                self.inv_sqrt_diag(s, t, 0.0, rel, f64::MIN_POSITIVE, rel);
                false
            }
            _ => self.inv_sqrt_ns_then(
                s,
                t,
                [0.0, 0.0],
                rel,
                None,
                cap.unwrap_or(NS_CAP).max(1),
                blend,
            ),
        }
    }

    /// `small[t]` = the reference's `inv_sqrt_sym_adaptive(S + εI)`.
    pub(in crate::backend) fn inv_sqrt_reference(&mut self, s: u32, t: u32, o: &RetractOptions) {
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

    /// Runs an optimizer rule as its passes ([`UpdateRule::passes`]): one `torch_elem`
    /// dispatch per elementwise pass, a buffer copy per copy, and AdamP's projection as
    /// SGDP's rows / decide / apply pattern.
    pub(super) fn torch_passes(
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

    /// `T_w` into `tmp2` from T, S at `small[s]` (and in corrected style TS, computed in the same launch
    /// when fusing and k ≤ 64, else by kk_matmul first), `tr S` into the trace slot.
    pub(in crate::backend) fn blend_matrix(&mut self, reference: bool, w: f64, s: u32) {
        let lay = self.ws().layout;
        let k = lay.k;
        let t = lay.t();
        let ts_in_blend = !reference && self.fuse && k <= 64;
        if !reference && !ts_in_blend {
            self.kk_matmul(t, s, lay.tmp(), false);
        }
        let mut h = ParamsHeader::new();
        h.k = k as u32;
        h.off0 = t;
        h.off1 = s;
        h.off2 = lay.tmp2();
        h.off3 = lay.tmp();
        h.slot = lay.scalar(SC_TRACE);
        h.mode = (!reference) as u32 | if ts_in_blend { BLEND_WITH_TS } else { 0 };
        let keep_below = if reference { 1e-24 } else { f64::MIN_POSITIVE };
        self.dispatch(
            Kernel::BlendMatrix,
            h,
            [w, keep_below, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            Slots::default(),
            (1, 1),
        );
    }

    /// `Backend::retract` and `retract_candidate` (`gram_of_dst`, see `retract_soft_polar`):
    /// the shape checks, the copy when there is no retraction, else the soft-polar blend.
    pub(super) fn retract_into(
        &mut self,
        src: &GpuMat,
        dst: &mut GpuMat,
        options: &RetractOptions,
        gram_of_dst: bool,
    ) {
        if !self.same_shape(src, dst) {
            return;
        }
        if options.retraction == Retraction::None || options.w <= 0.0 {
            crate::backend::Backend::copy(self, src, dst);
            return;
        }
        if !self.use_shape(src) {
            return;
        }
        self.retract_soft_polar(src, dst, options, gram_of_dst);
    }

    /// The soft-polar blend `dst = src·T_w` with `T_w` built in `small` (both styles).
    ///
    /// `gram_of_dst`: `dst` is a line-search candidate whose Gram comes next; the corrected
    /// blend then forms it with the product where it can (`product_with_gram`).
    pub(super) fn retract_soft_polar(
        &mut self,
        src: &GpuMat,
        dst: &GpuMat,
        o: &RetractOptions,
        gram_of_dst: bool,
    ) {
        let lay = self.ws().layout;
        let k = lay.k;
        let t = lay.t();
        // the Gram the candidate's own launch formed, else taken here
        let s = self.gram_slot_of(src);
        let reference = o.style == Mode::Reference;
        let polar = o.retraction == Retraction::Polar;
        let w = if polar { 1.0 } else { o.w };
        let blended = if reference {
            if polar || (k > o.diag_thresh && src.p < k) {
                // the reference's SVD polar factor U·Vᵀ = Y·(YᵀY)^{-1/2}
                let rel = 16.0 * self.eps();
                self.inv_sqrt_ns(s, t, [0.0, 0.0], rel, None, NS_CAP);
            } else {
                self.inv_sqrt_reference(s, t, o);
            }
            false
        } else {
            // the blend rides in the chain's last launch where it can (k ≤ 32, fused)
            let then = ThenBlend {
                w,
                keep_below: f64::MIN_POSITIVE,
            };
            self.inv_sqrt_corrected_then(s, t, o.inv_method, o.ns_iter, Some(then))
        };
        if !blended {
            self.blend_matrix(reference, w, s);
        }
        if gram_of_dst
            && !reference
            && self.fuses_candidate_gram(dst)
            && self.product_gram_fits(dst)
        {
            self.product_with_gram(src, lay.tmp2(), dst);
            return;
        }
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
}

/// Loop trips one invocation makes in `reduce_gram_partials` (prelude.wgsl), the fold of
/// `chunks` Gram partials into a launch: at most `chunks + 64 + 63` for each of its ≤ 4
/// entries.
pub(super) fn gram_fold_trips(chunks: usize) -> usize {
    4 * (chunks + 128)
}
