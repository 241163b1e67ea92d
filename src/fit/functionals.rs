//! The energy terms of nsa_flow 3.5 (REFERENCE.md §7.1–§7.2), each with its closed-form
//! gradient: the orthogonality functionals `D̃`, `Cg`, `C`, `Coff`, and the three fidelities
//! (entrywise anchor, sign-blind subspace, data reconstruction).
//!
//! Every value is dimensionless and in `[0, 1]`, so `w` is a convex weight with no
//! calibration. All matrices are `p×k` column-major (nalgebra), `f64`.

use crate::linalg::{gram, mul_small, sum_sq, trace};
use nalgebra::DMatrix;

/// Column-norm floor of `C` and `Cg` (3.5's `_EPS`).
pub const COLUMN_FLOOR: f64 = 1e-12;

/// Which orthogonality functional the energy charges (3.5's `diagnostics.ORTH`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Orth {
    /// `D̃ = ‖G − I/k‖²/(1 − 1/k)` with `G = YᵀY/tr(YᵀY)`: decorrelation and equal column norms.
    D,
    /// `‖offdiag(YᵀY)‖²/tr(YᵀY)²/(1 − 1/k)`: the decorrelation half of `D`, smooth everywhere.
    Cg,
    /// Mean squared cosine plus a dead-column charge (`‖Ĝ − I‖²/(k(k−1))`, norms floored).
    C,
    /// Mean squared cosine only (`C` without its diagonal).
    Coff,
}

impl Orth {
    /// Every functional, in 3.5's order.
    pub const ALL: [Orth; 4] = [Orth::D, Orth::Cg, Orth::C, Orth::Coff];

    /// The name 3.5 uses (`"D"`, `"Cg"`, `"C"`, `"Coff"`).
    pub fn name(self) -> &'static str {
        match self {
            Orth::D => "D",
            Orth::Cg => "Cg",
            Orth::C => "C",
            Orth::Coff => "Coff",
        }
    }

    /// Parses a name as 3.5 spells it.
    pub fn parse(name: &str) -> Option<Orth> {
        Orth::ALL.into_iter().find(|o| o.name() == name)
    }

    /// The value at `y`.
    pub fn value(self, y: &DMatrix<f64>) -> f64 {
        match self {
            Orth::D => stiefel_defect_normalised(y),
            Orth::Cg => gram_offdiag_defect(y),
            Orth::C => angle_defect(y, true),
            Orth::Coff => angle_defect(y, false),
        }
    }

    /// The value at `y` and its gradient added, times `scale`, into `g`.
    pub fn value_and_add_grad(self, y: &DMatrix<f64>, scale: f64, g: &mut DMatrix<f64>) -> f64 {
        match self {
            Orth::D => {
                let (v, gd) = stiefel_defect_normalised_grad(y);
                if let Some(gd) = gd {
                    axpy_mat(g, scale, &gd);
                }
                v
            }
            Orth::Cg => {
                let (v, gd) = gram_offdiag_grad(y);
                if let Some(gd) = gd {
                    axpy_mat(g, scale, &gd);
                }
                v
            }
            Orth::C | Orth::Coff => {
                let (v, gd) = angle_defect_grad(y, self == Orth::C);
                if let Some(gd) = gd {
                    axpy_mat(g, scale, &gd);
                }
                v
            }
        }
    }
}

/// The raw Stiefel defect `D = ‖G − I/k‖²` (in `[0, 1 − 1/k]`), computed from the difference so
/// it is non-negative by construction.
pub fn stiefel_defect(y: &DMatrix<f64>) -> f64 {
    let s = gram(y, y);
    defect_of_gram(&s, trace(&s))
}

/// `‖S/t − I/k‖²` from the Gram matrix `S` and its trace `t`.
fn defect_of_gram(s: &DMatrix<f64>, t: f64) -> f64 {
    let k = s.ncols();
    let inv_k = 1.0 / k as f64;
    let mut acc = 0.0;
    for j in 0..k {
        for i in 0..k {
            let v = s[(i, j)] / t - if i == j { inv_k } else { 0.0 };
            acc += v * v;
        }
    }
    acc
}

/// `D̃ = D/(1 − 1/k)`, zero for `k = 1`.
pub fn stiefel_defect_normalised(y: &DMatrix<f64>) -> f64 {
    let k = y.ncols();
    if k <= 1 {
        return 0.0;
    }
    stiefel_defect(y) / (1.0 - 1.0 / k as f64)
}

/// `D̃` and its gradient `(4/t²)[YS − (N/t)Y]/(1 − 1/k)` (`None` for `k = 1`, where it is zero).
pub fn stiefel_defect_normalised_grad(y: &DMatrix<f64>) -> (f64, Option<DMatrix<f64>>) {
    let k = y.ncols();
    if k <= 1 {
        return (0.0, None);
    }
    let s = gram(y, y);
    let t = trace(&s);
    let inv_k = 1.0 / k as f64;
    let d = defect_of_gram(&s, t);
    let n = sum_sq(s.as_slice());
    let norm = 1.0 / (1.0 - inv_k);
    let mut g = mul_small(y, &s);
    axpy_mat(&mut g, -n / t, y);
    g *= 4.0 / (t * t) * norm;
    (d / (1.0 - inv_k), Some(g))
}

/// `Cg = ‖offdiag(YᵀY)‖²/tr(YᵀY)²/(1 − 1/k)` (trace floored at [`COLUMN_FLOOR`]).
pub fn gram_offdiag_defect(y: &DMatrix<f64>) -> f64 {
    gram_offdiag_grad_impl(y, false).0
}

/// `Cg` and its gradient `(4/t²)[YA − (‖A‖²/t)Y]/(1 − 1/k)`, `A = offdiag(YᵀY)`.
pub fn gram_offdiag_grad(y: &DMatrix<f64>) -> (f64, Option<DMatrix<f64>>) {
    gram_offdiag_grad_impl(y, true)
}

fn gram_offdiag_grad_impl(y: &DMatrix<f64>, want_grad: bool) -> (f64, Option<DMatrix<f64>>) {
    let k = y.ncols();
    if k <= 1 {
        return (0.0, None);
    }
    let mut a = gram(y, y);
    let t = trace(&a).max(COLUMN_FLOOR);
    for i in 0..k {
        a[(i, i)] = 0.0;
    }
    let a2 = sum_sq(a.as_slice());
    let norm = 1.0 / (1.0 - 1.0 / k as f64);
    let v = a2 / (t * t) * norm;
    if !want_grad {
        return (v, None);
    }
    let mut g = mul_small(y, &a);
    axpy_mat(&mut g, -a2 / t, y);
    g *= 4.0 / (t * t) * norm;
    (v, Some(g))
}

fn column_norms(y: &DMatrix<f64>) -> Vec<f64> {
    (0..y.ncols())
        .map(|j| sum_sq(y.column(j).as_slice()).sqrt())
        .collect()
}

/// `C = ‖Ĝ − R‖²/(k(k−1))` with `Ĝ` the cosine matrix (norms floored at [`COLUMN_FLOOR`]);
/// `R = I` (`diagonal`, the dead-column charge) or `diag(Ĝ)` (`Coff`).
pub fn angle_defect(y: &DMatrix<f64>, diagonal: bool) -> f64 {
    angle_defect_grad_impl(y, diagonal, false).0
}

/// `C` (or `Coff`) and its gradient, tangential to each column's sphere.
pub fn angle_defect_grad(y: &DMatrix<f64>, diagonal: bool) -> (f64, Option<DMatrix<f64>>) {
    angle_defect_grad_impl(y, diagonal, true)
}

fn angle_defect_grad_impl(
    y: &DMatrix<f64>,
    diagonal: bool,
    want_grad: bool,
) -> (f64, Option<DMatrix<f64>>) {
    let (p, k) = y.shape();
    if k <= 1 {
        return (0.0, None);
    }
    let nrm: Vec<f64> = column_norms(y)
        .into_iter()
        .map(|n| n.max(COLUMN_FLOOR))
        .collect();
    let u = DMatrix::from_fn(p, k, |i, j| y[(i, j)] / nrm[j]);
    let mut b = gram(&u, &u);
    for i in 0..k {
        b[(i, i)] = if diagonal { b[(i, i)] - 1.0 } else { 0.0 };
    }
    let kk = (k * (k - 1)) as f64;
    let v = sum_sq(b.as_slice()) / kk;
    if !want_grad {
        return (v, None);
    }
    let mut du = mul_small(&u, &b);
    du *= 4.0 / kk;
    for j in 0..k {
        let radial: f64 = (0..p).map(|i| u[(i, j)] * du[(i, j)]).sum();
        for i in 0..p {
            du[(i, j)] = (du[(i, j)] - radial * u[(i, j)]) / nrm[j];
        }
    }
    (v, Some(du))
}

/// `‖min(0, X0)‖/‖X0‖`: the share of the target a non-negative `Y` cannot reach.
pub fn negative_mass(x0: &DMatrix<f64>) -> f64 {
    let num: f64 = x0.iter().map(|&v| if v < 0.0 { v * v } else { 0.0 }).sum();
    let den = sum_sq(x0.as_slice()).sqrt().max(1e-300);
    num.sqrt() / den
}

/// The projector onto `range(X0)` through a Cholesky factor of `X0ᵀX0 + 1e-12·(tr/k)·I`
/// (3.5's `SubspaceAnchor`); `P·Y` costs `O(pk²)` and `P` is never formed.
#[derive(Clone, Debug)]
pub struct SubspaceAnchor {
    x0: DMatrix<f64>,
    chol: nalgebra::Cholesky<f64, nalgebra::Dyn>,
    /// Whether `X0ᵀX0` is numerically rank deficient (the projector is then regularised).
    pub rank_deficient: bool,
}

impl SubspaceAnchor {
    /// Factors `X0ᵀX0`; `None` when the target spans nothing (zero trace) or the factorisation
    /// fails.
    pub fn new(x0: &DMatrix<f64>) -> Option<SubspaceAnchor> {
        let k = x0.ncols();
        let g = gram(x0, x0);
        let scale = trace(&g) / k as f64;
        if scale.is_nan() || scale <= 0.0 {
            return None;
        }
        let eig = g.clone().symmetric_eigen();
        let top = eig.eigenvalues.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let rtol = k as f64 * f64::EPSILON;
        let rank = eig
            .eigenvalues
            .iter()
            .filter(|v| v.abs() > rtol * top)
            .count();
        let mut reg = g;
        for i in 0..k {
            reg[(i, i)] += 1e-12 * scale;
        }
        let chol = nalgebra::Cholesky::new(reg)?;
        Some(SubspaceAnchor {
            x0: x0.clone(),
            chol,
            rank_deficient: rank < k,
        })
    }

    /// `P·Y`.
    pub fn project(&self, y: &DMatrix<f64>) -> DMatrix<f64> {
        let rhs = gram(&self.x0, y);
        let coef = self.chol.solve(&rhs);
        mul_small(&self.x0, &coef)
    }

    /// `F_sub = ‖(I − P)Y‖²/‖Y‖²` and, when asked, its gradient `(2/‖Y‖²)[(I−P)Y − F·Y]`.
    pub fn fidelity(&self, y: &DMatrix<f64>, want_grad: bool) -> (f64, Option<DMatrix<f64>>) {
        let n2 = sum_sq(y.as_slice()).max(1e-30);
        let mut r = y - self.project(y);
        let f = sum_sq(r.as_slice()) / n2;
        if !want_grad {
            return (f, None);
        }
        axpy_mat(&mut r, -f, y);
        r *= 2.0 / n2;
        (f, Some(r))
    }
}

/// The action of `S = XᵀX` on `V`, either from `S` (formed once, `O(p²k)` per product) or
/// matrix-free from `X` (`O(npk)`, `S` never formed; 3.5 picks it when `p > n`).
#[derive(Clone, Debug)]
pub enum GramOperator {
    /// `S = XᵀX`, `p×p`.
    Dense(DMatrix<f64>),
    /// `X`, `n×p`.
    MatrixFree(DMatrix<f64>),
    /// Either of the above resident on a GPU, the products run there (see
    /// [`super::gpu::GpuGramOperator`]).
    #[cfg(feature = "gpu")]
    Gpu(std::sync::Arc<super::gpu::GpuGramOperator>),
}

impl GramOperator {
    /// `S·V` and `VᵀSV`.
    pub fn both(&self, v: &DMatrix<f64>) -> (DMatrix<f64>, DMatrix<f64>) {
        match self {
            GramOperator::Dense(s) => {
                let sv = mul_by_tall(s, v);
                let a = gram(v, &sv);
                (sv, a)
            }
            GramOperator::MatrixFree(x) => {
                let xv = mul_by_tall(x, v);
                let sv = matmul_tn(x, &xv);
                let a = gram(&xv, &xv);
                (sv, a)
            }
            #[cfg(feature = "gpu")]
            GramOperator::Gpu(g) => g.both(v),
        }
    }

    /// `VᵀSV` only (the matrix-free route skips the `Xᵀ` product).
    pub fn quad(&self, v: &DMatrix<f64>) -> DMatrix<f64> {
        match self {
            GramOperator::Dense(s) => gram(v, &mul_by_tall(s, v)),
            GramOperator::MatrixFree(x) => {
                let xv = mul_by_tall(x, v);
                gram(&xv, &xv)
            }
            #[cfg(feature = "gpu")]
            GramOperator::Gpu(g) => g.quad(v),
        }
    }

    /// Whether `S` is never formed.
    pub fn matrix_free(&self) -> bool {
        match self {
            GramOperator::Dense(_) => false,
            GramOperator::MatrixFree(_) => true,
            #[cfg(feature = "gpu")]
            GramOperator::Gpu(g) => g.host().matrix_free(),
        }
    }

    /// The operator as the CPU holds it (`S` or `X`).
    pub fn host(&self) -> &GramOperator {
        match self {
            #[cfg(feature = "gpu")]
            GramOperator::Gpu(g) => g.host(),
            other => other,
        }
    }

    /// The first device error since the last call (a failed device product answers NaN,
    /// which stops the solver; the fit reports this error instead of its consequence).
    pub fn take_error(&self) -> Option<crate::NsaError> {
        match self {
            #[cfg(feature = "gpu")]
            GramOperator::Gpu(g) => g.take_error(),
            _ => None,
        }
    }
}

/// `A·V` for a wide or square `A` (`m×p`) and a tall, thin, often sparse `V` (`p×k`): one pass
/// over `A`'s columns, each added into the columns of the result that `V`'s row selects.
///
/// The solvers' bases are non-negative with nearly disjoint supports (most of `V` is exactly
/// zero once the columns separate), so skipping `V`'s zeros removes most of the work; each
/// column of `A` is read once whatever `k` is (a general matmul splits `k = 5` into panels and
/// reads `A` once per panel). Every entry is summed over `i` in increasing order: fixed, so the
/// same input gives the same bits, and skipping an exact zero does not change a sum.
pub fn mul_by_tall(a: &DMatrix<f64>, v: &DMatrix<f64>) -> DMatrix<f64> {
    let (m, p) = a.shape();
    let k = v.ncols();
    assert_eq!(v.nrows(), p, "mul_by_tall: inner dimension");
    // Dense `V` (the start of a solve) goes through the general matmul, whose register tiles
    // win when no zeros can be skipped (measured on a 2-core Xeon at 500×500·500×5: 114 µs vs
    // 268 µs dense, 112 µs vs 77 µs at a final basis with 80 % zeros). The switch depends on
    // `V` only.
    let nnz = v.iter().filter(|&&x| x != 0.0).count();
    if nnz * 2 > v.len() {
        return matmul(a, v);
    }
    let mut out = DMatrix::zeros(m, k);
    if m == 0 {
        return out;
    }
    let (av, vv) = (a.as_slice(), v.as_slice());
    let ov = out.as_mut_slice();
    for i in 0..p {
        let col = &av[i * m..(i + 1) * m];
        for c in 0..k {
            let vic = vv[c * p + i];
            if vic != 0.0 {
                for (o, &x) in ov[c * m..(c + 1) * m].iter_mut().zip(col) {
                    *o += x * vic;
                }
            }
        }
    }
    out
}

/// `A·B` for general dense operands, through faer's sequential matmul (fixed order).
pub fn matmul(a: &DMatrix<f64>, b: &DMatrix<f64>) -> DMatrix<f64> {
    use faer::{Accum, MatMut, MatRef, Par};
    let (m, n, kk) = (a.nrows(), b.ncols(), a.ncols());
    let mut out = DMatrix::zeros(m, n);
    if m == 0 || n == 0 || kk == 0 {
        return out;
    }
    let ar = MatRef::from_column_major_slice(a.as_slice(), m, kk);
    let br = MatRef::from_column_major_slice(b.as_slice(), kk, n);
    let o = MatMut::from_column_major_slice_mut(out.as_mut_slice(), m, n);
    faer::linalg::matmul::matmul(o, Accum::Replace, ar, br, 1.0, Par::Seq);
    out
}

/// `Aᵀ·B` for general dense operands.
pub fn matmul_tn(a: &DMatrix<f64>, b: &DMatrix<f64>) -> DMatrix<f64> {
    gram(a, b)
}

/// The data reconstruction fidelity `‖X − XVVᵀ‖²/‖X‖²`, expanded as
/// `(tr S − 2 tr(VᵀSV) + ⟨VᵀSV, VᵀV⟩)/c`, and its gradient
/// `(2/c)(−2SV + SV·VᵀV + V·VᵀSV)`.
pub fn reconstruction_fidelity(
    v: &DMatrix<f64>,
    ops: &GramOperator,
    c: f64,
    tr_s: f64,
    want_grad: bool,
) -> (f64, Option<DMatrix<f64>>) {
    let b = gram(v, v);
    if !want_grad {
        let a = ops.quad(v);
        return (fid_from(&a, &b, c, tr_s), None);
    }
    let (sv, a) = ops.both(v);
    let f = fid_from(&a, &b, c, tr_s);
    let mut g = mul_small(&sv, &b);
    axpy_mat(&mut g, -2.0, &sv);
    g += mul_small(v, &a);
    g *= 2.0 / c;
    (f, Some(g))
}

fn fid_from(a: &DMatrix<f64>, b: &DMatrix<f64>, c: f64, tr_s: f64) -> f64 {
    let k = a.nrows();
    let tr_a: f64 = (0..k).map(|i| a[(i, i)]).sum();
    // ⟨A, Bᵀ⟩ in the order torch sums (A * B')
    let mut ab = 0.0;
    for i in 0..k {
        for j in 0..k {
            ab += a[(i, j)] * b[(j, i)];
        }
    }
    (tr_s - 2.0 * tr_a + ab) / c
}

/// The effective rank `k/(kD + 1)` (participation ratio of the normalised Gram's spectrum).
pub fn effective_rank(y: &DMatrix<f64>) -> f64 {
    let k = y.ncols() as f64;
    k / (k * stiefel_defect(y) + 1.0)
}

/// `y ← y + a·x` for matrices of one shape.
pub fn axpy_mat(y: &mut DMatrix<f64>, a: f64, x: &DMatrix<f64>) {
    for (d, &s) in y.as_mut_slice().iter_mut().zip(x.as_slice()) {
        *d += a * s;
    }
}
