//! Reductions to scalars: the partial sums of reduce.wgsl (fused up to four over one index
//! space) and `Backend::reduce_into`'s rounds of readback slots.

use super::*;

/// What one partial sum of `partial_sums` (reduce.wgsl's `term`) adds up: the shader's mode
/// numbers, named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(in crate::backend) enum SumMode {
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
    /// The count of `a ≠ b` (as values; `AnyDiffer` turns it into a flag).
    CountDiffer = 7,
    /// `Σ b²` over the entries with `a > 0` or `b < 0`.
    FreeNormSq = 8,
}

/// One partial sum of [`GpuBackend::partial_sums`]: its mode, operands, where its partials
/// go, and its coefficients (`[t, ·]` and the clamp flag, or CountAbove's pair) if it reads
/// any.
pub(super) struct SumTerm<'a> {
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
pub(super) struct FusedSums<'a> {
    terms: smallvec::SmallVec<[SumTerm<'a>; 4]>,
    /// Off: every sum its own launch.
    fuse: bool,
    /// Up to two energy evaluations' Gram statistics (`‖S‖²`, `‖diag S‖²`) waiting to run in
    /// the sums' launch instead of `gram_stats` launches of their own: (k, the Gram's slot in
    /// `small`, the first of its two readback slots in `aux`, and where the Gram's chunk
    /// partials start in `aux` when the launch is to reduce them first).
    stats: smallvec::SmallVec<[GramStat; 2]>,
}

/// One energy evaluation's Gram statistics waiting for the sums' launch (see
/// `FusedSums::stats`).
type GramStat = (u32, u32, u32, Option<u32>);

/// Most Gram statistics one `partial_sums_multi` launch takes (reduce.wgsl).
const MAX_STATS: usize = 2;

/// ‖S‖² and ‖diag S‖² of the k×k Gram at `small[gram]` into the readback slots at
/// `aux[dest]` and `aux[dest + g]` (gram_stats in small.wgsl).
fn gram_stats(be: &mut GpuBackend, k: u32, gram: u32, dest: u32, g: usize) {
    let mut h = ParamsHeader::new();
    h.k = k;
    h.off0 = dest;
    h.off1 = gram;
    h.chunk = g as u32;
    be.dispatch(Kernel::GramStats, h, [0.0; 8], Slots::default(), (1, 1));
}

pub(super) fn same_mat(a: &GpuMat, b: &GpuMat) -> bool {
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

    /// Whether a further Gram's statistics can wait for the sums' launch (else flush first).
    fn stats_full(&self) -> bool {
        self.stats.len() == MAX_STATS
    }

    fn flush(&mut self, be: &mut GpuBackend) {
        if self.terms.is_empty() {
            let g = be.ws().partials;
            for (k, gram, dest, fold) in std::mem::take(&mut self.stats) {
                if let Some(from) = fold {
                    let chunks = be.ws().gram_chunks;
                    be.gram_reduce(k as usize, chunks, from, gram, false);
                }
                gram_stats(be, k, gram, dest, g);
            }
            return;
        }
        let alone = self.terms.len() == 1 && self.stats.is_empty();
        match self.terms.len() {
            _ if alone => {
                let t = &self.terms[0];
                let (c, clamp) = t.coefs.unwrap_or(([0.0, 0.0], false));
                be.partial_sums_c(t.mode, t.first, t.second, t.at, c, clamp);
            }
            n => {
                // n = 1 here only to carry Gram statistics
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
                h.off0 = self.terms[0].at as u32;
                if n >= 2 {
                    h.k = spec(&self.terms[1]);
                    h.off1 = self.terms[1].at as u32;
                }
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
                // the statistics: k in the top byte of the first spec (k ≤ 64 here), then
                // (Gram slot, readback slot) pairs in src, LITERAL where unused
                if let Some(&(k, ..)) = self.stats.first() {
                    debug_assert!(k < 256 && self.stats.iter().all(|s| s.0 == k));
                    h.p |= k << 24;
                }
                for (m, &(_, gram, dest, fold)) in self.stats.iter().enumerate() {
                    h.src[2 * m] = gram;
                    h.src[2 * m + 1] = dest;
                    if let Some(from) = fold {
                        h.fold[m] = from;
                        h.fold[2] = be.ws().gram_chunks as u32;
                    }
                }
                self.stats.clear();
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

impl GpuBackend {
    /// Partial sums of one reduction into aux[at .. at + G].
    pub(in crate::backend) fn partial_sums(
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
    pub(super) fn partial_sums_c(
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

    /// `Backend::reduce_into`: the requests in rounds of one shape and at most
    /// `MAX_SLOTS` slots, each round one readback.
    pub(in crate::backend) fn reduce_requests(
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
                Reduction::Dot(a, _) | Reduction::DistSq(a, _) | Reduction::AnyDiffer(a, _) => a,
                Reduction::GradMapSq { y, .. } | Reduction::FreeNormSq { y, .. } => y,
            };
            (m.p, m.k)
        }
        for r in requests {
            let ok = match *r {
                Reduction::EnergyTerms { y, target } => self.same_shape(y, target),
                Reduction::Dot(a, b) | Reduction::DistSq(a, b) | Reduction::AnyDiffer(a, b) => {
                    self.same_shape(a, b)
                }
                Reduction::GradMapSq { y, g, .. } | Reduction::FreeNormSq { y, g } => {
                    self.same_shape(y, g)
                }
                _ => true,
            };
            if !ok {
                return Err(self.error.take().unwrap_or_else(|| NsaError::Internal {
                    what: "a reduction's operands differ in shape but no error was recorded".into(),
                }));
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
                stats: smallvec::SmallVec::new(),
            };
            // the statistics wait for the sums' launch only where each evaluation's Gram has
            // a slot of its own that outlives the wait (the rotating cache, ≥ MAX_STATS + 1
            // slots, k ≤ 64), never in a batch lane (one shared slot)
            let defer_stats = self.fuse && self.lane.is_none() && lay.gram_slots() > MAX_STATS;
            while j < requests.len()
                && used + requests[j].width() <= MAX_SLOTS
                && shape_of(&requests[j]) == shape
            {
                let at = base + used * g;
                match requests[j] {
                    Reduction::EnergyTerms { y, target } => {
                        sums.push(self, SumTerm::new(SumMode::DistSq, y, Some(target), at));
                        let cached = self.cached_gram_of(y);
                        // a Gram written now must not land in a slot a waiting statistic
                        // reads (the candidates' own Grams fill slots ahead of this)
                        let next = self.next_energy_slot();
                        let hazard =
                            cached.is_none() && sums.stats.iter().any(|s| Some(s.1) == next);
                        if sums.stats_full() || hazard {
                            sums.flush(self);
                        }
                        // the candidate's launch formed its Gram (combine_with_gram), else
                        // it is taken here
                        let mut fold = None;
                        let slot = match cached {
                            Some(slot) => {
                                // a retracted candidate's Gram waiting for its reduce: the
                                // sums' launch adds its partials where the trip budget allows
                                let reduce_trips =
                                    super::ops::gram_fold_trips(self.ws().gram_chunks);
                                let sum_trips = (shape.0 * shape.1).div_ceil(256 * g);
                                let folds = sums.stats.iter().filter(|s| s.3.is_some()).count();
                                let fits =
                                    sum_trips + (folds + 1) * reduce_trips + 64 <= self.trip_budget;
                                if defer_stats && fits {
                                    fold = self.take_pending_product(slot).map(|p| p.from);
                                } else {
                                    self.settle_product(slot);
                                }
                                slot
                            }
                            None => {
                                let slot = self.gram_slot_for_energy(y);
                                self.gram(y, y, slot, false);
                                slot
                            }
                        };
                        let stats = (lay.k as u32, slot, (at + g) as u32, fold);
                        if defer_stats {
                            sums.stats.push(stats);
                        } else {
                            debug_assert!(fold.is_none());
                            gram_stats(self, stats.0, stats.1, stats.2, g);
                        }
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
                    Reduction::AnyDiffer(a, b) => {
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
                    Reduction::FreeNormSq { y, g: grad } => {
                        sums.push(self, SumTerm::new(SumMode::FreeNormSq, y, Some(grad), at))
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
            // non-finite counts become the 1/0 flag, counts of differences the 0/1 flag (a sum
            // of ones is 0 only when every term is)
            let mut pos = from;
            for r in &requests[i..j] {
                match r {
                    Reduction::AllFinite(_) => {
                        out[pos] = if out[pos] == 0.0 { 1.0 } else { 0.0 };
                    }
                    Reduction::AnyDiffer(..) => {
                        out[pos] = if out[pos] == 0.0 { 0.0 } else { 1.0 };
                    }
                    _ => {}
                }
                pos += r.width();
            }
            i = j;
        }
        Ok(())
    }
}
