use nalgebra::DMatrix;
use std::time::Instant;
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (p, k) = (args[0], args[1]);
    let mut rng = nsa_flow::rng::Rng::new(1);
    let y = DMatrix::from_fn(p, k, |_, _| rng.normal());
    let s = DMatrix::from_fn(k, k, |_, _| rng.normal());
    let mut g = DMatrix::zeros(k, k);
    let mut out = DMatrix::zeros(p, k);
    let n = 200;
    let t = Instant::now();
    for _ in 0..n { nsa_flow::linalg::gram_into(&y, &y, &mut g); }
    let dt = t.elapsed().as_secs_f64() / n as f64;
    println!("gram mm: {:.3} ms  {:.1} GFLOP/s", dt * 1e3, 2.0 * (p * k * k) as f64 / dt / 1e9);
    let t = Instant::now();
    for _ in 0..n { g = y.tr_mul(&y); }
    let dt = t.elapsed().as_secs_f64() / n as f64;
    println!("gram nalgebra tr_mul: {:.3} ms", dt * 1e3);
    let t = Instant::now();
    for _ in 0..n { nsa_flow::linalg::mul_small_into(&y, &s, 1.0, 0.0, &mut out); }
    let dt = t.elapsed().as_secs_f64() / n as f64;
    println!("Y*S mm: {:.3} ms  {:.1} GFLOP/s", dt * 1e3, 2.0 * (p * k * k) as f64 / dt / 1e9);
    {
        use faer::{MatRef, MatMut, Accum, Par};
        let t = Instant::now();
        for _ in 0..n {
            let a = MatRef::from_column_major_slice(y.as_slice(), p, k);
            let gm = MatMut::from_column_major_slice_mut(g.as_mut_slice(), k, k);
            faer::linalg::matmul::matmul(gm, Accum::Replace, a.transpose(), a, 1.0, Par::Seq);
        }
        let dt = t.elapsed().as_secs_f64() / n as f64;
        println!("gram faer: {:.3} ms  {:.1} GFLOP/s", dt * 1e3, 2.0 * (p * k * k) as f64 / dt / 1e9);
        let t = Instant::now();
        for _ in 0..n {
            let a = MatRef::from_column_major_slice(y.as_slice(), p, k);
            let b = MatRef::from_column_major_slice(s.as_slice(), k, k);
            let o = MatMut::from_column_major_slice_mut(out.as_mut_slice(), p, k);
            faer::linalg::matmul::matmul(o, Accum::Replace, a, b, 1.0, Par::Seq);
        }
        let dt = t.elapsed().as_secs_f64() / n as f64;
        println!("Y*S faer: {:.3} ms  {:.1} GFLOP/s", dt * 1e3, 2.0 * (p * k * k) as f64 / dt / 1e9);
    }
    let t = Instant::now();
    for _ in 0..n { let _e = nalgebra::SymmetricEigen::new(s.clone() + s.transpose()); }
    println!("eig 32: {:.3} ms", t.elapsed().as_secs_f64() / n as f64 * 1e3);
    let s10 = DMatrix::from_fn(10, 10, |i, j| (i + j) as f64 + if i == j { 10.0 } else { 0.0 });
    let t = Instant::now();
    for _ in 0..2000 { let _e = nsa_flow::linalg::inv_sqrt_eig(&s10, 1e-8); }
    println!("inv_sqrt_eig 10: {:.3} us", t.elapsed().as_secs_f64() / 2000.0 * 1e6);
    let t = Instant::now();
    for _ in 0..n { let _x = nsa_flow::linalg::sum_sq(y.as_slice()); }
    println!("sum_sq: {:.3} ms", t.elapsed().as_secs_f64() / n as f64 * 1e3);
}
#[allow(dead_code)]
fn faer_part() {}
