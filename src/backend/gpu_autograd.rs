//! The autograd backward passes on the GPU backend: the energy gradient (fused into the
//! p×k·k×k product's epilogue), the non-negativity backward (elementwise), and the
//! retraction's backward, whose k×k part — the derivative of `(YᵀY)^{-1/2}` — solves the
//! Sylvester equation `S½·X + X·S½ = G` by the Newton–Schulz sign iteration on the small
//! buffer (shaders/autograd.wgsl), so the host reads nothing back.

use super::gpu::{GpuBackend, GpuMat, Slots, SumMode, NS_CAP, SC_ALPHA, SC_RADIAL, SC_TRACE};
use crate::autograd::grad::OrthGrad;
use crate::autograd::EnergySpec;
use crate::energy::EnergyTerms;
use crate::error::NsaError;
use crate::gpu::{Kernel, ParamsHeader, LITERAL};
use crate::params::{InvSqrtMethod, Mode, NonNeg, Retraction};
use crate::retract::RetractOptions;

// scalar slots of the backward (the forward uses 0..20)
const AG_GM: usize = 32;
const AG_M2: usize = 33;
const AG_COEF: usize = 34; // 3 values
const AG_GAGB: usize = 37; // 2 values
const AG_SYL: usize = 40; // 5 values

/// Sign-iteration steps recorded per backward; converged steps launch only a k² copy. Even,
/// so the result lies in the first pair of blocks. 48 steps reach the tolerance for
/// cond(S½) up to ~1e7 (the small eigenvalues grow ×1.5 per step).
const SYL_STEPS: usize = 48;

impl GpuBackend {
    fn scratch(&mut self, like: &GpuMat) -> Option<GpuMat> {
        if let Some(m) = self.ws().ag_scratch.as_ref() {
            return Some(m.handle());
        }
        match self.new_mat(like.nrows(), like.ncols()) {
            Ok(m) => {
                let h = m.handle();
                self.ws_mut().ag_scratch = Some(m);
                Some(h)
            }
            Err(e) => {
                self.error.get_or_insert(e);
                None
            }
        }
    }

    fn fail(&mut self, reason: String) {
        self.error.get_or_insert(NsaError::BackendUnavailable {
            name: "gpu".into(),
            reason,
        });
    }

    pub(super) fn ag_energy_gradient(
        &mut self,
        y: &GpuMat,
        x0: &GpuMat,
        spec: &EnergySpec,
        terms: &EnergyTerms,
        x0_norm_sq: f64,
        out: &mut GpuMat,
    ) {
        if !(self.same_shape(y, x0) && self.same_shape(y, out) && self.use_shape(y)) {
            return;
        }
        let coefs = spec.gradient_coefficients(terms, x0_norm_sq);
        let (a, b) = (coefs.a, coefs.b);
        let lay = self.ws().layout;
        let k = lay.k;
        match coefs.orth {
            OrthGrad::Zero => {
                use super::Backend;
                self.lincomb(a + b, y, -a, x0, out);
            }
            OrthGrad::Defect { c, .. } => {
                // n and D again from the device's own Gram, as the flow's gradient does
                self.gram(y, y, lay.s(), false);
                let mut h = ParamsHeader::new();
                h.k = k as u32;
                h.off0 = lay.s();
                h.off1 = lay.m();
                h.off2 = lay.scalar(SC_ALPHA);
                self.dispatch(
                    Kernel::GradCoef,
                    h,
                    [c, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                    Slots::default(),
                    (1, 1),
                );
                let dev = [
                    lay.scalar(SC_ALPHA),
                    lay.scalar(SC_RADIAL),
                    LITERAL,
                    LITERAL,
                ];
                self.mul_small(
                    y,
                    lay.m(),
                    Some(x0),
                    out,
                    2,
                    [0.0, b, a, 0.0, 0.0, 0.0, 0.0, 0.0],
                    dev,
                );
            }
            OrthGrad::Basic { c } => {
                self.gram(y, y, lay.s(), false);
                self.kk_affine(lay.s(), None, lay.m(), [1.0, 0.0, -1.0, 0.0], LITERAL);
                self.mul_small(
                    y,
                    lay.m(),
                    Some(x0),
                    out,
                    2,
                    [c, b, a, 0.0, 0.0, 0.0, 0.0, 0.0],
                    [LITERAL; 4],
                );
            }
        }
    }

    pub(super) fn ag_nonneg_backward(&mut self, pre: &GpuMat, mode: NonNeg, g: &mut GpuMat) {
        let kind = match mode {
            NonNeg::None => return,
            NonNeg::Hard => 0,
            NonNeg::Softplus => 1,
        };
        if !self.same_shape(pre, g) {
            return;
        }
        self.elementwise(
            Kernel::NonnegBackward,
            kind,
            [0.0; 8],
            LITERAL,
            Slots {
                a: Some(pre),
                out: Some(g),
                ..Default::default()
            },
            g.nrows() * g.ncols(),
        );
    }

    /// `small[c] = c0·small[a] + (c1 + c3·small[rel]/k)·small[b] + c2·I`.
    fn kk_affine(&mut self, a: u32, b: Option<u32>, c: u32, coefs: [f64; 4], rel: u32) {
        let k = self.ws().k;
        let mut h = ParamsHeader::new();
        h.k = k as u32;
        h.off0 = a;
        h.off1 = b.unwrap_or(LITERAL);
        h.off2 = c;
        h.src = [rel, LITERAL, LITERAL, LITERAL];
        self.dispatch(
            Kernel::KkAffine,
            h,
            [coefs[0], coefs[1], coefs[2], coefs[3], 0.0, 0.0, 0.0, 0.0],
            Slots::default(),
            ((k * k).div_ceil(256) as u32, 1),
        );
    }

    /// `small[sum] = ⟨a, b⟩` (or `‖a‖²` without `b`), summed on the device.
    fn device_dot(&mut self, a: &GpuMat, b: Option<&GpuMat>, slot: u32) {
        let (fin, g) = (self.ws().aux_finalize, self.ws().partials);
        let mode = if b.is_some() {
            SumMode::Dot
        } else {
            SumMode::NormSq
        };
        self.partial_sums(mode, a, b, fin, 0.0, false);
        let mut h = ParamsHeader::new();
        h.off0 = fin as u32;
        h.off1 = slot;
        h.chunk = g as u32;
        h.mode = 0;
        self.dispatch(Kernel::Finalize, h, [0.0; 8], Slots::default(), (1, 1));
    }

    /// Solves `S½·X + X·S½ = f·sym(G)` (S½ at `s_half`, G at `g`) by the sign iteration;
    /// `−2X` ends in the second ns block (an even number of steps).
    fn sylvester(&mut self, s_half: u32, g: u32, f: f64) {
        let lay = self.ws().layout;
        let k = lay.k;
        let kk = lay.k * lay.k;
        let ns = lay.ns();
        let blocks = [
            ns,
            ns + kk as u32,
            ns + 2 * kk as u32,
            ns + 3 * kk as u32,
            ns + 4 * kk as u32,
            lay.tmp(),
        ];
        let slot = lay.scalar(AG_SYL);
        let mut h = ParamsHeader::new();
        h.k = k as u32;
        h.off0 = blocks[0];
        h.off1 = blocks[1];
        h.slot = slot;
        h.src = [LITERAL, LITERAL, s_half, g];
        self.dispatch(
            Kernel::SylInit,
            h,
            [f, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            Slots::default(),
            (1, 1),
        );
        let tol = 8.0 * self.eps() * (k as f64).sqrt();
        if k <= 64 {
            // whole steps in one workgroup: ~3·⌈k²/256⌉·k loop trips a step
            let per = (self.trip_budget / (3 * kk.div_ceil(256) * k + 32)).clamp(1, SYL_STEPS);
            let mut left = SYL_STEPS;
            while left > 0 {
                let now = left.min(per);
                let mut h = ParamsHeader::new();
                h.k = k as u32;
                h.off0 = blocks[0];
                h.off1 = blocks[1];
                h.off2 = blocks[2];
                h.off3 = blocks[3];
                h.slot = slot;
                h.chunk = now as u32;
                h.src = [blocks[4], blocks[5], LITERAL, LITERAL];
                let coefs = [tol, SYL_STEPS as f64, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
                self.dispatch(Kernel::SylFused, h, coefs, Slots::default(), (1, 1));
                left -= now;
            }
            return;
        }
        let groups = (kk.div_ceil(256) as u32, 1);
        for step in 0..SYL_STEPS {
            let (cur, next) = if step % 2 == 0 {
                ((blocks[0], blocks[1]), (blocks[4], blocks[5]))
            } else {
                ((blocks[4], blocks[5]), (blocks[0], blocks[1]))
            };
            let mut h = ParamsHeader::new();
            h.k = k as u32;
            h.off0 = cur.0;
            h.off1 = cur.1;
            h.off2 = blocks[2];
            h.off3 = blocks[3];
            h.slot = slot;
            h.src = [next.0, next.1, LITERAL, LITERAL];
            let coefs = [tol, SYL_STEPS as f64, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
            self.dispatch(Kernel::SylProducts, h, coefs, Slots::default(), groups);
            self.dispatch(Kernel::SylUpdate, h, coefs, Slots::default(), groups);
            self.dispatch(Kernel::SylCheck, h, coefs, Slots::default(), (1, 1));
        }
    }

    /// `small[s] = gS + gSᵀ` from the sign iteration's `Q` (see `backward_finish`).
    fn finish(&mut self, mode: u32, q: u32, t: u32, t2: u32, coefs: [f64; 4]) {
        let lay = self.ws().layout;
        let mut h = ParamsHeader::new();
        h.k = lay.k as u32;
        h.off0 = q;
        h.off1 = t;
        h.off2 = lay.s();
        h.off3 = t2;
        h.mode = mode;
        h.src = [lay.scalar(AG_GAGB), lay.scalar(SC_TRACE), LITERAL, LITERAL];
        self.dispatch(
            Kernel::BackwardFinish,
            h,
            [coefs[0], coefs[1], coefs[2], coefs[3], 0.0, 0.0, 0.0, 0.0],
            Slots::default(),
            (1, 1),
        );
    }

    pub(super) fn ag_retract_backward(
        &mut self,
        y: &GpuMat,
        o: &RetractOptions,
        g: &GpuMat,
        out: &mut GpuMat,
    ) {
        use super::Backend;
        if !(self.same_shape(y, g) && self.same_shape(y, out)) {
            return;
        }
        if o.retraction == Retraction::None || o.w <= 0.0 {
            self.copy(g, out);
            return;
        }
        if !self.use_shape(y) {
            return;
        }
        let (p, k) = (y.nrows(), y.ncols());
        let lay = self.ws().layout;
        let reference = o.style == Mode::Reference;
        let polar = o.retraction == Retraction::Polar;
        let method = match o.inv_method {
            InvSqrtMethod::Auto if k <= o.eig_thresh => InvSqrtMethod::Eig,
            InvSqrtMethod::Auto => InvSqrtMethod::NewtonSchulz,
            m => m,
        };
        if reference && k > p {
            return self.fail(format!(
                "the GPU backward of the reference retraction needs k ≤ p (here {p}×{k}: YᵀY is singular); use backend = cpu"
            ));
        }
        if (reference && !polar && method == InvSqrtMethod::NewtonSchulz)
            || (!reference && method == InvSqrtMethod::Diag)
        {
            return self.fail(format!(
                "the GPU has no backward for the {} style's {} inverse square root; use backend = cpu",
                if reference { "reference" } else { "corrected" },
                if reference { "fixed-step Newton–Schulz" } else { "diag" }
            ));
        }
        let Some(m1) = self.scratch(y) else { return };
        let (s, m, t, tmp, tmp2) = (lay.s(), lay.m(), lay.t(), lay.tmp(), lay.tmp2());
        let one = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let w = if polar { 1.0 } else { o.w };
        self.gram(y, y, s, false);
        if reference {
            let eps_a = if polar { 0.0 } else { o.eps };
            if polar {
                self.inv_sqrt_ns(s, t, [0.0, 0.0], 16.0 * self.eps(), None, NS_CAP);
            } else {
                self.inv_sqrt_reference(s, t, o);
            }
            self.blend_matrix(true, w, s);
            // M = Y·T_w, and the renormalisation's coefficients from ⟨g, M⟩, ‖M‖², tr S
            self.mul_small(y, tmp2, None, &m1, 0, one, [LITERAL; 4]);
            self.device_dot(g, Some(&m1), lay.scalar(AG_GM));
            self.device_dot(&m1, None, lay.scalar(AG_M2));
            let mut h = ParamsHeader::new();
            h.src = [
                lay.scalar(SC_TRACE),
                lay.scalar(AG_GM),
                lay.scalar(AG_M2),
                LITERAL,
            ];
            h.slot = lay.scalar(AG_COEF);
            self.dispatch(Kernel::RefCoefs, h, [0.0; 8], Slots::default(), (1, 1));
            // gM = c_g·g + c_M·M into out
            let c = lay.scalar(AG_COEF);
            self.mul_small(
                g,
                tmp2,
                Some(&m1),
                out,
                0,
                [0.0; 8],
                [LITERAL, c, c + 1, LITERAL],
            );
            // gT_w = Yᵀ·gM; then M ← gM·T_w (the direct part of gY)
            self.gram(y, out, m, false);
            self.mul_small(out, tmp2, None, &m1, 0, one, [LITERAL; 4]);
            if method == InvSqrtMethod::Diag && !polar {
                self.finish(2, m, t, s, [w, 0.0, o.eps, o.eps]);
            } else {
                // G = T·gT_w·T, S½ = (S + εI)·T
                self.kk_matmul(t, m, tmp, false);
                self.kk_matmul(tmp, t, m, false);
                self.kk_matmul(s, t, tmp, false);
                self.kk_affine(tmp, Some(t), tmp2, [1.0, eps_a, 0.0, 0.0], LITERAL);
                // gT = w·gT_w; the derivative of A^{-1/2} is −A^{-1/2}·L⁻¹(gT)... through
                // S½X + XS½ = −T·gT·T
                self.sylvester(tmp2, m, -w);
                let q = lay.ns() + (k * k) as u32;
                self.finish(0, q, t, tmp, [0.0, 1e-24, 0.0, 0.0]);
            }
            // gY = Y·(gA + gAᵀ) + gM·T_w + c_Y·Y
            self.mul_small(
                y,
                s,
                Some(&m1),
                out,
                0,
                [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                [LITERAL, c + 2, LITERAL, LITERAL],
            );
        } else {
            self.inv_sqrt_corrected(s, t, o.inv_method, o.ns_iter);
            // T_w to tmp2 and TS to tmp, as the forward retraction builds them
            self.blend_matrix(false, w, s);
            // the direct part g·T_w, and gT_w = Yᵀ·g
            self.mul_small(g, tmp2, None, &m1, 0, one, [LITERAL; 4]);
            self.gram(y, g, m, false);
            // gT = w·c·gT_w + ga·S + gb·(TS + ST), ga, gb from c = tr(TS)/tr(TST)
            let mut h = ParamsHeader::new();
            h.k = k as u32;
            h.off0 = s;
            h.off1 = t;
            h.off2 = tmp;
            h.off3 = m;
            h.slot = lay.scalar(AG_GAGB);
            self.dispatch(
                Kernel::CorrectedCoefs,
                h,
                [w, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                Slots::default(),
                (1, 1),
            );
            // G = T·gT·T, S½ = (S + δI)·T with δ = 16·ε·tr(S)/k
            self.kk_matmul(t, m, tmp2, false);
            self.kk_matmul(tmp2, t, m, false);
            self.kk_matmul(s, t, tmp, false);
            let rel = 16.0 * self.eps();
            self.kk_affine(
                tmp,
                Some(t),
                tmp2,
                [1.0, 0.0, 0.0, rel],
                lay.scalar(SC_TRACE),
            );
            self.sylvester(tmp2, m, -1.0);
            self.kk_matmul(t, t, tmp, false);
            let q = lay.ns() + (k * k) as u32;
            self.finish(1, q, t, tmp, [rel / k as f64, f64::MIN_POSITIVE, 0.0, 0.0]);
            self.mul_small(
                y,
                s,
                Some(&m1),
                out,
                0,
                [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                [LITERAL; 4],
            );
        }
    }
}
