//! Dense kernels of the CPU oracle: Gram products, tall-times-small products, fixed-order
//! reductions, and the k×k inverse square roots (eigendecomposition, Newton–Schulz, diagonal).
//!
//! Matrices are nalgebra `DMatrix` (column-major), so every kernel here has the same memory
//! layout as the GPU buffers that mirror it.

use crate::element::Element;
use nalgebra::DMatrix;
use rayon::prelude::*;

/// `out ← Aᵀ·B` for tall `p×k` operands (`out` is `k×k`), through a blocked sequential gemm.
pub fn gram_into<T: Element>(a: &DMatrix<T>, b: &DMatrix<T>, out: &mut DMatrix<T>) {
    let (p, ka) = a.shape();
    let (pb, kb) = b.shape();
    assert_eq!(p, pb, "gram: row counts differ");
    assert_eq!(out.shape(), (ka, kb), "gram: output shape");
    if p == 0 {
        out.fill(T::zero());
        return;
    }
    let (sa, sb) = (a.as_slice(), b.as_slice());
    if p * ka.max(kb) < PAR_MIN_ELEMS || p < PARTS {
        T::gram_rows(sa, sb, p, ka, kb, 0..p, out.as_mut_slice());
        return;
    }
    // PARTS fixed row blocks (a function of p only, not of the thread count), summed in a
    // fixed order: the same bits with any number of threads.
    let kk = ka * kb;
    let mut partials = vec![T::zero(); PARTS * kk];
    partials
        .par_chunks_mut(kk)
        .enumerate()
        .for_each(|(i, chunk)| {
            T::gram_rows(sa, sb, p, ka, kb, part(p, i), chunk);
        });
    let (lo, hi) = partials.split_at(2 * kk);
    for (idx, o) in out.as_mut_slice().iter_mut().enumerate() {
        *o = (lo[idx] + lo[kk + idx]) + (hi[idx] + hi[kk + idx]);
    }
}

/// Matrices with at least this many entries go through the parallel blocked kernels.
pub const PAR_MIN_ELEMS: usize = 1 << 17;
/// The number of fixed row blocks of the parallel kernels.
const PARTS: usize = 4;

fn part(p: usize, i: usize) -> std::ops::Range<usize> {
    (i * p / PARTS)..((i + 1) * p / PARTS)
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: used only to hand disjoint row blocks of one output to the threads of a scope.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// `Aᵀ·B` as a new matrix.
///
/// ```
/// let a = nalgebra::DMatrix::from_row_slice(3, 2, &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
/// assert_eq!(nsa_flow::linalg::gram(&a, &a), a.transpose() * &a);
/// ```
pub fn gram<T: Element>(a: &DMatrix<T>, b: &DMatrix<T>) -> DMatrix<T> {
    let mut out = DMatrix::zeros(a.ncols(), b.ncols());
    gram_into(a, b, &mut out);
    out
}

/// `out ← α·A·S + β·out` for a tall `p×k` matrix `A` and a small `k×m` matrix `S`.
pub fn mul_small_into<T: Element>(
    a: &DMatrix<T>,
    s: &DMatrix<T>,
    alpha: T,
    beta: T,
    out: &mut DMatrix<T>,
) {
    let (p, k) = a.shape();
    assert_eq!(s.nrows(), k, "mul_small: inner dimension");
    assert_eq!(out.shape(), (p, s.ncols()), "mul_small: output shape");
    if p == 0 || s.ncols() == 0 {
        return;
    }
    if k == 0 {
        out.scale_mut(beta);
        return;
    }
    let m = s.ncols();
    let (ap, sp) = (SendPtr(a.as_ptr() as *mut T), SendPtr(s.as_ptr() as *mut T));
    let op = SendPtr(out.as_mut_ptr());
    let block = move |rows: std::ops::Range<usize>| {
        let (ap, sp, op) = (ap, sp, op);
        // SAFETY: strides describe the column-major storage of `a`, `s` and `out`; the row
        // blocks handed to different threads are disjoint.
        unsafe {
            T::gemm_raw(
                rows.end - rows.start,
                k,
                m,
                alpha,
                ap.0.add(rows.start),
                1,
                p as isize,
                sp.0,
                1,
                k as isize,
                beta,
                op.0.add(rows.start),
                1,
                p as isize,
            );
        }
    };
    if p * k.max(m) < PAR_MIN_ELEMS || p < PARTS {
        block(0..p);
    } else {
        // each output entry is computed by one thread with the same kernel, whatever the split
        (0..PARTS).into_par_iter().for_each(|i| block(part(p, i)));
    }
}

/// `A·S` as a new matrix.
pub fn mul_small<T: Element>(a: &DMatrix<T>, s: &DMatrix<T>) -> DMatrix<T> {
    let mut out = DMatrix::zeros(a.nrows(), s.ncols());
    mul_small_into(a, s, T::one(), T::zero(), &mut out);
    out
}

const LANES: usize = 8;

/// Runs a fixed-order reduction over [`PARTS`] fixed blocks in parallel for long inputs.
fn blocked<T: Element>(n: usize, f: impl Fn(std::ops::Range<usize>) -> T + Sync) -> T {
    if n < PAR_MIN_ELEMS {
        return f(0..n);
    }
    let mut parts = [T::zero(); PARTS];
    parts
        .par_iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = f(part(n, i)));
    (parts[0] + parts[1]) + (parts[2] + parts[3])
}

/// Σ xᵢ² in a fixed order (8 interleaved partial sums, then combined pairwise; long inputs in
/// four fixed blocks), so the same input always gives the same bits.
pub fn sum_sq<T: Element>(x: &[T]) -> T {
    blocked(x.len(), |r| sum_sq_seq(&x[r]))
}

/// Σ xᵢ·yᵢ in the same fixed order as [`sum_sq`].
pub fn dot<T: Element>(x: &[T], y: &[T]) -> T {
    assert_eq!(x.len(), y.len());
    blocked(x.len(), |r| dot_seq(&x[r.clone()], &y[r]))
}

/// Σ (xᵢ − yᵢ)² in the same fixed order as [`sum_sq`].
pub fn dist_sq<T: Element>(x: &[T], y: &[T]) -> T {
    assert_eq!(x.len(), y.len());
    blocked(x.len(), |r| dist_sq_seq(&x[r.clone()], &y[r]))
}

fn sum_sq_seq<T: Element>(x: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l] * c[l];
        }
    }
    for (l, v) in rem.iter().enumerate() {
        acc[l] += *v * *v;
    }
    combine(acc)
}

fn dot_seq<T: Element>(x: &[T], y: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    let cx = x.chunks_exact(LANES);
    let cy = y.chunks_exact(LANES);
    let (rx, ry) = (cx.remainder(), cy.remainder());
    for (a, b) in cx.zip(cy) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    for (l, (a, b)) in rx.iter().zip(ry).enumerate() {
        acc[l] += *a * *b;
    }
    combine(acc)
}

fn dist_sq_seq<T: Element>(x: &[T], y: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    let cx = x.chunks_exact(LANES);
    let cy = y.chunks_exact(LANES);
    let (rx, ry) = (cx.remainder(), cy.remainder());
    for (a, b) in cx.zip(cy) {
        for l in 0..LANES {
            let d = a[l] - b[l];
            acc[l] += d * d;
        }
    }
    for (l, (a, b)) in rx.iter().zip(ry).enumerate() {
        let d = *a - *b;
        acc[l] += d * d;
    }
    combine(acc)
}

fn combine<T: Element>(a: [T; LANES]) -> T {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// `tr(M)` of a square matrix, summed in f64.
pub fn trace<T: Element>(m: &DMatrix<T>) -> f64 {
    (0..m.nrows().min(m.ncols()))
        .map(|j| m[(j, j)].as_f64())
        .sum()
}

/// Frobenius norm.
pub fn fro<T: Element>(m: &DMatrix<T>) -> T {
    sum_sq(m.as_slice()).sqrt()
}

/// Whether every entry is finite.
pub fn all_finite<T: Element>(x: &[T]) -> bool {
    x.iter().all(|v| v.is_finite())
}

/// `A^{-1/2}` by a symmetric eigendecomposition, eigenvalues clamped below at `eps`
/// (the reference's `_inv_sqrt_eig`).
pub fn inv_sqrt_eig<T: Element>(a: &DMatrix<T>, eps: T) -> DMatrix<T> {
    let k = a.nrows();
    if !all_finite(a.as_slice()) {
        // NaN in, NaN out (the caller checks finiteness); nalgebra's solvers panic on NaN
        return DMatrix::from_element(k, k, T::of(f64::NAN));
    }
    // nalgebra's implicit QR has no iteration cap of its own and can cycle forever on some
    // pathological inputs: cap it, and fall back to the residual-stopped Newton–Schulz.
    let Some(eig) = nalgebra::SymmetricEigen::try_new(
        a.clone(),
        T::default_epsilon(),
        MAX_QR_SWEEPS * k.max(1),
    ) else {
        let mut b = a.clone();
        for j in 0..k {
            b[(j, j)] += eps;
        }
        return inv_sqrt_ns_accurate(&b, 8.0 * T::EPS * (k as f64).sqrt(), 200).0;
    };
    let mut vs = eig.eigenvectors.clone();
    for j in 0..k {
        let lam = eig.eigenvalues[j];
        let lam = if lam > eps { lam } else { eps };
        let f = T::one() / lam.sqrt();
        vs.column_mut(j).scale_mut(f);
    }
    &vs * eig.eigenvectors.transpose()
}

/// `A^{-1/2}` by the coupled Newton–Schulz iteration with Frobenius scaling and a fixed
/// number of iterations, exactly as the reference's `_inv_sqrt_newton_schulz` (which adds
/// `eps·I` once more to its input). Returns `None` when the result is not finite, which the
/// reference answers by falling back to the eigendecomposition.
pub fn inv_sqrt_ns_reference<T: Element>(
    a: &DMatrix<T>,
    eps: T,
    iters: usize,
) -> Option<DMatrix<T>> {
    let k = a.nrows();
    let eye = DMatrix::<T>::identity(k, k);
    let ap = a + &eye * eps;
    let c = fro(&ap);
    if c == T::zero() {
        return Some(eye);
    }
    let mut y = &ap / c;
    let mut z = eye.clone();
    let three = T::of(3.0);
    let half = T::of(0.5);
    for _ in 0..iters {
        let t = (&eye * three - &z * &y) * half;
        y = &y * &t;
        z = &t * &z;
    }
    let out = z / c.sqrt();
    if all_finite(out.as_slice()) {
        Some(out)
    } else {
        None
    }
}

/// Outcome of the accurate Newton–Schulz inverse square root.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NewtonSchulzInfo {
    /// Iterations run.
    pub iterations: usize,
    /// Final residual `‖I − R‖_F/√k`, where `R → I` as the iteration converges.
    pub residual: f64,
    /// Whether the residual reached the tolerance.
    pub converged: bool,
}

/// `A^{-1/2}` for a symmetric positive semi-definite `A` by the symmetric coupled
/// Newton–Schulz iteration with spectral-norm scaling and a residual-based stop.
///
/// `A` is scaled by `s ≥ λ_max(A)` (the smaller of the Gershgorin bound and the Frobenius
/// norm), so every eigenvalue of `R₀ = A/s` lies in (0, 1] and the iteration
/// `Z = (3I − R)/2, Q ← Q·Z, R ← Z·R·Z` converges quadratically once the small eigenvalues
/// have grown (×2.25 per step). It stops when `‖I − R‖_F/√k ≤ tol` or when the residual stops
/// shrinking (the working-precision floor), after at most `max_iter` steps.
pub fn inv_sqrt_ns_accurate<T: Element>(
    a: &DMatrix<T>,
    tol: f64,
    max_iter: usize,
) -> (DMatrix<T>, NewtonSchulzInfo) {
    let k = a.nrows();
    let eye = DMatrix::<T>::identity(k, k);
    let s = spectral_upper_bound(a);
    if s.is_nan() || s <= 0.0 || s.is_infinite() {
        return (
            eye,
            NewtonSchulzInfo {
                iterations: 0,
                residual: f64::NAN,
                converged: false,
            },
        );
    }
    let st = T::of(s);
    let mut r = a / st;
    let mut q = eye.clone();
    let half = T::of(0.5);
    let three = T::of(3.0);
    let sqrt_k = (k as f64).sqrt();
    let mut residual = fro(&(&r - &eye)).as_f64() / sqrt_k;
    let mut it = 0;
    let mut best = residual;
    while it < max_iter && residual > tol {
        let z = (&eye * three - &r) * half;
        q = &q * &z;
        r = &z * &r * &z;
        // keep R symmetric against round-off drift
        r = (&r + r.transpose()) * half;
        it += 1;
        residual = fro(&(&r - &eye)).as_f64() / sqrt_k;
        if !residual.is_finite() {
            break;
        }
        // past the floor of the working precision the residual stalls: stop there
        if residual > 0.5 * best && best < 1e-3 {
            break;
        }
        best = best.min(residual);
    }
    let out = q / st.sqrt();
    let converged =
        residual <= tol || (residual.is_finite() && residual < 1e3 * T::EPS * sqrt_k * 10.0);
    (
        out,
        NewtonSchulzInfo {
            iterations: it,
            residual,
            converged,
        },
    )
}

/// A guaranteed upper bound on λ_max of a symmetric matrix: the smaller of the Gershgorin
/// bound `max_i Σ_j |A_ij|` and the Frobenius norm. (A power-iteration estimate is a lower
/// bound and can miss λ_max entirely when the start vector is orthogonal to its eigenvector,
/// which would make Newton–Schulz converge to a wrong root.)
pub fn spectral_upper_bound<T: Element>(a: &DMatrix<T>) -> f64 {
    let k = a.nrows();
    let mut gersh = 0.0f64;
    let mut fro = 0.0f64;
    for i in 0..k {
        let mut s = 0.0;
        for j in 0..k {
            let v = a[(i, j)].as_f64();
            s += v.abs();
            fro += v * v;
        }
        gersh = gersh.max(s);
    }
    gersh.min(fro.sqrt())
}

/// Iteration cap per dimension for nalgebra's eigen and singular value solvers.
const MAX_QR_SWEEPS: usize = 1000;

/// `diag(max(A_jj, eps)^{-1/2})`, the reference's "diag" inverse square root.
pub fn inv_sqrt_diag<T: Element>(a: &DMatrix<T>, eps: T) -> DMatrix<T> {
    let k = a.nrows();
    let mut out = DMatrix::zeros(k, k);
    for j in 0..k {
        let d = a[(j, j)];
        let d = if d > eps { d } else { eps };
        out[(j, j)] = T::one() / d.sqrt();
    }
    out
}

/// The polar factor `U·Vᵀ` of a thin SVD `A = UΣVᵀ` (orthonormal columns when `p ≥ k`,
/// orthonormal rows when `p < k`).
pub fn polar_factor_svd<T: Element>(a: &DMatrix<T>) -> DMatrix<T> {
    if !all_finite(a.as_slice()) {
        return DMatrix::from_element(a.nrows(), a.ncols(), T::of(f64::NAN));
    }
    let n = a.nrows().max(a.ncols()).max(1);
    let Some(svd) = nalgebra::SVD::try_new(
        a.clone(),
        true,
        true,
        T::default_epsilon(),
        MAX_QR_SWEEPS * n,
    ) else {
        // no convergence (pathological input): the polar factor through YᵀY instead
        let g = a.transpose() * a;
        let tr: f64 = (0..g.nrows()).map(|j| g[(j, j)].as_f64()).sum();
        let floor = T::of((16.0 * T::EPS * tr / g.nrows().max(1) as f64).max(f64::MIN_POSITIVE));
        return a * inv_sqrt_eig(&g, floor);
    };
    let u = svd.u.expect("SVD computed with U");
    let vt = svd.v_t.expect("SVD computed with Vᵀ");
    u * vt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_matrix(p: usize, k: usize, seed: u64) -> DMatrix<f64> {
        let mut rng = crate::rng::Rng::new(seed);
        DMatrix::from_fn(p, k, |_, _| rng.normal())
    }

    #[test]
    fn gram_matches_naive_on_awkward_shapes() {
        for &(p, k) in &[(1, 1), (63, 3), (65, 17), (1031, 17), (5, 1)] {
            let a = test_matrix(p, k, 1);
            let b = test_matrix(p, k, 2);
            let g = gram(&a, &b);
            let naive = a.transpose() * &b;
            let tol = 4.0 * f64::EPSILON * (p as f64) * a.norm() * b.norm();
            assert!((g - naive).norm() <= tol, "p={p} k={k}");
        }
    }

    #[test]
    fn mul_small_matches_naive() {
        for &(p, k) in &[(1, 1), (63, 3), (65, 17), (1031, 17)] {
            let a = test_matrix(p, k, 3);
            let s = test_matrix(k, k, 4);
            let m = mul_small(&a, &s);
            let naive = &a * &s;
            let tol = 4.0 * f64::EPSILON * (k as f64) * a.norm() * s.norm();
            assert!((m - naive).norm() <= tol);
        }
    }

    #[test]
    fn reductions_are_exact_on_small_integers() {
        let x: Vec<f64> = (0..37).map(|i| i as f64).collect();
        let y: Vec<f64> = (0..37).map(|i| (2 * i) as f64).collect();
        assert_eq!(sum_sq(&x), (0..37).map(|i| (i * i) as f64).sum::<f64>());
        assert_eq!(
            dot(&x, &y),
            (0..37).map(|i| (2 * i * i) as f64).sum::<f64>()
        );
        assert_eq!(dist_sq(&x, &y), sum_sq(&x));
    }

    #[test]
    fn accurate_newton_schulz_matches_eig() {
        for &(p, k) in &[(50, 10), (300, 64), (40, 1), (200, 130)] {
            let y = test_matrix(p, k, 7);
            let a = gram(&y, &y);
            let e = inv_sqrt_eig(&a, 1e-300);
            let (n, info) = inv_sqrt_ns_accurate(&a, 1e-13, 100);
            let rel = (&n - &e).norm() / e.norm();
            assert!(rel < 1e-11, "k={k} rel={rel} info={info:?}");
            assert!(info.converged);
        }
    }

    #[test]
    fn newton_schulz_finds_the_principal_root_when_the_ones_vector_misses_lambda_max() {
        // [[3,−2],[−2,3]]: eigenvalues 1 (along (1,1)) and 5 (along (1,−1))
        let a = DMatrix::from_row_slice(2, 2, &[3.0, -2.0, -2.0, 3.0]);
        let (z, info) = inv_sqrt_ns_accurate(&a, 1e-14, 100);
        let e = inv_sqrt_eig(&a, 1e-300);
        assert!((&z - &e).norm() < 1e-12, "{z} vs {e}, {info:?}");
        assert!(spectral_upper_bound(&a) >= 5.0);
    }

    #[test]
    fn four_newton_schulz_iterations_are_inaccurate_as_the_spec_says() {
        let y = test_matrix(258, 129, 0);
        let a = gram(&y, &y);
        let e = inv_sqrt_eig(&a, 1e-8);
        let n4 = inv_sqrt_ns_reference(&a, 1e-8, 4).unwrap();
        let rel = (&n4 - &e).norm() / e.norm();
        assert!(rel > 0.05, "rel={rel}");
    }
}
