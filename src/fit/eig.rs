//! The spectral pieces of nsa_flow 3.5's initialisers: the exact top-`k` eigenvectors of
//! `XᵀX` (through whichever Gram matrix is smaller) with 3.5's sign gauge, and the Varimax
//! rotation with its canonical signs and column order.

use crate::fit::functionals::matmul;
use crate::linalg::gram;
use nalgebra::DMatrix;

/// Symmetric eigendecomposition through faer: eigenvalues ascending, eigenvectors as columns.
/// `None` when the factorisation does not converge or the input is not finite.
pub fn eigh(a: &DMatrix<f64>) -> Option<(Vec<f64>, DMatrix<f64>)> {
    let n = a.nrows();
    if n == 0 || !a.iter().all(|v| v.is_finite()) {
        return None;
    }
    let m = faer::MatRef::from_column_major_slice(a.as_slice(), n, n);
    let evd = m.self_adjoint_eigen(faer::Side::Lower).ok()?;
    let s: Vec<f64> = evd.S().column_vector().iter().copied().collect();
    let u = evd.U();
    let v = DMatrix::from_fn(n, n, |i, j| u[(i, j)]);
    Some((s, v))
}

/// Each column's largest-magnitude entry made positive (3.5's `_canonical_sign`; the first
/// such entry on ties).
pub fn canonical_sign(e: &mut DMatrix<f64>) {
    for j in 0..e.ncols() {
        let mut best = 0;
        let mut bv = -1.0;
        for i in 0..e.nrows() {
            let a = e[(i, j)].abs();
            if a > bv {
                bv = a;
                best = i;
            }
        }
        if e.nrows() > 0 && e[(best, j)] < 0.0 {
            e.column_mut(j).neg_mut();
        }
    }
}

/// Flips every column whose negative part has the larger L2 norm (3.5's
/// `_resolve_column_sign_gauge`).
pub fn resolve_column_sign_gauge(y: &mut DMatrix<f64>) {
    for j in 0..y.ncols() {
        let (pos, neg) = lobe_norms(y, j);
        if neg > pos {
            y.column_mut(j).neg_mut();
        }
    }
}

fn lobe_norms(y: &DMatrix<f64>, j: usize) -> (f64, f64) {
    let mut pos = 0.0;
    let mut neg = 0.0;
    for &v in y.column(j).iter() {
        if v > 0.0 {
            pos += v * v;
        } else {
            neg += v * v;
        }
    }
    (pos.sqrt(), neg.sqrt())
}

/// The top-`k` eigenvectors of `S = XᵀX` (`p×k`, by descending eigenvalue, canonical signs),
/// exactly: from `S` when `p ≤ n`, else from the `n×n` dual Gram `XXᵀ` as `XᵀU/σ`.
pub fn top_k_eigenvectors_of_data(x: &DMatrix<f64>, k: usize) -> Option<DMatrix<f64>> {
    let (n, p) = x.shape();
    if p <= n {
        return top_k_eigenvectors_of_gram(&gram(x, x), k);
    }
    let xt = x.transpose();
    let g = gram(&xt, &xt);
    let g = (&g + g.transpose()) * 0.5;
    let (ev, u) = eigh(&g)?;
    let kk = k.min(n);
    let mut v = DMatrix::zeros(p, kk);
    for j in 0..kk {
        let src = n - 1 - j;
        let sig = ev[src].max(0.0).sqrt();
        let uj = u.column(src).into_owned();
        let col = &xt * uj;
        let nrm = col.norm();
        let scale = if sig > 0.0 { sig } else { nrm }.max(f64::MIN_POSITIVE);
        v.column_mut(j).copy_from(&(col / scale));
    }
    canonical_sign(&mut v);
    Some(v)
}

/// The top-`k` eigenvectors of a symmetric `p×p` Gram matrix.
pub fn top_k_eigenvectors_of_gram(s: &DMatrix<f64>, k: usize) -> Option<DMatrix<f64>> {
    let p = s.nrows();
    let (_, u) = eigh(s)?;
    let kk = k.min(p);
    let mut e = DMatrix::zeros(p, kk);
    for j in 0..kk {
        e.column_mut(j).copy_from(&u.column(p - 1 - j));
    }
    canonical_sign(&mut e);
    Some(e)
}

/// The orthogonal polar factor of a `k×k` matrix (eigh of `BᵀB`, one Newton–Schulz polish;
/// SVD when `BᵀB` is numerically singular).
fn polar_orthogonal(b: &DMatrix<f64>) -> DMatrix<f64> {
    let k = b.ncols();
    let btb = b.transpose() * b;
    let eig = eigh(&btb);
    let singular = match &eig {
        Some((lam, _)) => {
            let mx = lam
                .iter()
                .cloned()
                .fold(f64::NEG_INFINITY, f64::max)
                .max(f64::MIN_POSITIVE);
            let mn = lam.iter().cloned().fold(f64::INFINITY, f64::min);
            mn <= f64::EPSILON * mx
        }
        None => true,
    };
    if singular {
        let svd = b.clone().svd(true, true);
        return match (svd.u, svd.v_t) {
            (Some(u), Some(vt)) => u * vt,
            _ => DMatrix::identity(k, k),
        };
    }
    let (lam, v) = eig.expect("checked above");
    let mut vs = v.clone();
    for (j, &l) in lam.iter().enumerate().take(k) {
        let s = 1.0 / l.max(f64::MIN_POSITIVE).sqrt();
        vs.column_mut(j).scale_mut(s);
    }
    let q = b * (vs * v.transpose());
    let qtq = q.transpose() * &q;
    let polish = DMatrix::identity(k, k) * 1.5 - qtq * 0.5;
    q * polish
}

/// The Varimax rotation `R ∈ O(k)` of `E` (Kaiser-normalised, GPA/polar iterations,
/// `eps = 1e-6`, at most 100 iterations).
pub fn varimax_rotation(e: &DMatrix<f64>) -> DMatrix<f64> {
    let (p, k) = e.shape();
    let mut r = DMatrix::identity(k, k);
    if k < 2 || p < 2 {
        return r;
    }
    // Kaiser normalisation scales every row to unit length. 3.5 does so for any row above
    // the smallest normal, so a feature of zero variance, whose eigenvector row is rounding
    // noise (~1e-17), gets full weight and the rotation follows that noise (digits: 9 such
    // pixels). Rows below 64·eps of the largest are left as they are, i.e. negligible.
    let tiny = f64::MIN_POSITIVE;
    let row_norms: Vec<f64> = (0..p).map(|i| e.row(i).norm()).collect();
    let floor = (64.0 * f64::EPSILON * row_norms.iter().cloned().fold(0.0, f64::max)).max(tiny);
    let mut x = e.clone();
    for i in 0..p {
        let rn = row_norms[i];
        if rn > floor {
            for j in 0..k {
                x[(i, j)] = e[(i, j)] / rn.max(tiny);
            }
        }
    }
    let mut d_prev = 0.0;
    for _ in 0..100 {
        let z = matmul(&x, &r);
        let mut t = z.clone();
        for j in 0..k {
            let ms: f64 = z.column(j).iter().map(|v| v * v).sum::<f64>() / p as f64;
            for i in 0..p {
                let zv = z[(i, j)];
                t[(i, j)] = zv * zv * zv - zv * ms;
            }
        }
        let b = gram(&x, &t);
        let r_new = polar_orthogonal(&b);
        let d: f64 = b.iter().zip(r_new.iter()).map(|(a, c)| a * c).sum();
        r = r_new;
        if d <= d_prev * (1.0 + 1e-6) {
            break;
        }
        d_prev = d;
    }
    r
}

/// `E·R` for the Varimax `R`, with 3.5's gauge: canonical signs, then each column's dominant
/// L2 lobe non-negative, then columns by descending positive-lobe norm.
pub fn varimax(e: &DMatrix<f64>) -> DMatrix<f64> {
    let (p, k) = e.shape();
    if k < 2 || p < 2 {
        let mut out = e.clone();
        resolve_column_sign_gauge(&mut out);
        return out;
    }
    let r = varimax_rotation(e);
    let mut z = matmul(e, &r);
    canonical_sign(&mut z);
    resolve_column_sign_gauge(&mut z);
    let pos: Vec<f64> = (0..k).map(|j| lobe_norms(&z, j).0).collect();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| pos[b].total_cmp(&pos[a]).then(a.cmp(&b)));
    DMatrix::from_fn(p, k, |i, j| z[(i, order[j])])
}
