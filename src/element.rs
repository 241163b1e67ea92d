//! The floating-point element types the solver runs in (`f32` and `f64`).

use nalgebra::{DMatrix, RealField};

/// A floating-point element type the CPU backend computes in.
///
/// Implemented for `f32` and `f64`. Besides nalgebra's [`RealField`], it carries the two
/// products the solver is made of, chosen by measurement on tall `p×k` operands
/// (`cargo bench --bench flow -- kernels`, f64, 2-core Xeon): the Gram product `AᵀB` through
/// faer's sequential matmul (38–94 GFLOP/s from 1000×20 to 100000×64, against 4–7 for
/// nalgebra's `tr_mul`), and `A·S` (p×k times k×k) through matrixmultiply (31–51 GFLOP/s,
/// against 13–44 for nalgebra's product).
pub trait Element: RealField + Copy + Send + Sync + 'static {
    /// Machine epsilon of the type.
    const EPS: f64;
    /// Human name, `"f32"` or `"f64"`.
    const NAME: &'static str;
    /// Converts from `f64`, rounding to nearest.
    fn of(v: f64) -> Self;
    /// Converts to `f64` (exact for both types).
    fn as_f64(self) -> f64;
    /// `out ← A[rows]ᵀ·B[rows]` for column-major `A` (p×ka) and `B` (p×kb) restricted to a
    /// range of rows, into column-major `out` (ka×kb); sequential and in a fixed order.
    #[allow(clippy::too_many_arguments)]
    fn gram_rows(
        a: &[Self],
        b: &[Self],
        p: usize,
        ka: usize,
        kb: usize,
        rows: std::ops::Range<usize>,
        out: &mut [Self],
    );
    /// `C ← α·op(A)·op(B) + β·C` on raw column-major storage described by row/column strides.
    ///
    /// # Safety
    /// The pointers and strides must describe valid, non-overlapping (for `c`) matrices of
    /// the given sizes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

/// The two implementations differ only in the type, its constants and matrixmultiply's entry
/// point.
macro_rules! impl_element {
    ($t:ty, $name:literal, $eps:expr, $gemm:path) => {
        impl Element for $t {
            const EPS: f64 = $eps;
            const NAME: &'static str = $name;
            #[inline]
            fn of(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn as_f64(self) -> f64 {
                self as f64
            }
            fn gram_rows(
                a: &[Self],
                b: &[Self],
                p: usize,
                ka: usize,
                kb: usize,
                rows: std::ops::Range<usize>,
                out: &mut [Self],
            ) {
                use faer::{Accum, MatMut, MatRef, Par};
                let n = rows.end - rows.start;
                let a = MatRef::from_column_major_slice_with_stride(&a[rows.start..], n, ka, p);
                let b = MatRef::from_column_major_slice_with_stride(&b[rows.start..], n, kb, p);
                let o = MatMut::from_column_major_slice_mut(out, ka, kb);
                faer::linalg::matmul::matmul(o, Accum::Replace, a.transpose(), b, 1.0, Par::Seq);
            }
            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
            }
        }
    };
}

impl_element!(f64, "f64", f64::EPSILON, matrixmultiply::dgemm);
impl_element!(f32, "f32", f32::EPSILON as f64, matrixmultiply::sgemm);

/// Converts an `f64` matrix to element type `T`.
pub fn cast_from_f64<T: Element>(m: &DMatrix<f64>) -> DMatrix<T> {
    m.map(T::of)
}

/// Converts a matrix of element type `T` to `f64` (exact).
pub fn cast_to_f64<T: Element>(m: &DMatrix<T>) -> DMatrix<f64> {
    m.map(|v| v.as_f64())
}
