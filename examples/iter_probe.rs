use nalgebra::DMatrix;
use nsa_flow::backend::gpu::GpuBackend;
use nsa_flow::{Control, Mode, NonNeg, OptimizerKind, Params, Precision};
fn mat(p: usize, k: usize, seed: u64) -> DMatrix<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    DMatrix::from_fn(p, k, |_, _| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) - 0.3
    })
}
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let p: usize = args[1].parse().unwrap();
    let k: usize = args[2].parse().unwrap();
    let w: f64 = args[3].parse().unwrap();
    let prec = if args[4] == "f64" {
        Precision::F64
    } else {
        Precision::F32
    };
    let seed: u64 = args[5].parse().unwrap();
    let nmax: usize = args[6].parse().unwrap();
    let ctx = nsa_flow::gpu::GpuContext::new(&nsa_flow::gpu::GpuOptions {
        allow_software: true,
        ..Default::default()
    })
    .unwrap();
    let y0 = mat(p, k, seed);
    let x0 = mat(p, k, seed + 99);
    let mut prev = (0u64, 0u64, 0u64, 0usize, vec![0u64; 64]);
    for n in 1..=nmax {
        let params = Params::default()
            .w(w)
            .mode(Mode::Corrected)
            .precision(prec)
            .optimizer(OptimizerKind::Fast)
            .nonneg(NonNeg::Hard)
            .max_iter(n)
            .tol(0.0);
        let mut g = GpuBackend::new(ctx.clone(), prec).unwrap();
        let mut bt = 0;
        let r = nsa_flow::flow::solve(&mut g, &y0, Some(&x0), &params, &mut |i| {
            bt = i.backtracks;
            Control::Continue
        })
        .unwrap();
        let t = g.traffic();
        let rb = g.readbacks();
        let kern: Vec<u64> = g.launches_by_kernel().iter().map(|x| x.1).collect();
        let mut kd = String::new();
        for (i, (kk, c, _)) in g.launches_by_kernel().iter().enumerate() {
            let d = c - prev.4.get(i).copied().unwrap_or(0);
            if d > 0 {
                kd += &format!(" {:?}={}", kk, d);
            }
        }
        if r.iterations < n {
            println!(
                "n {n} stopped at {} ({:?}) evals {}",
                r.iterations, r.stop_reason, r.energy_evaluations
            );
        }
        println!(
            "it {n} bt {bt} evals+{} launches+{} readbacks+{} passes+{:.1} |{}",
            r.energy_evaluations - prev.3,
            t.launches - prev.0,
            rb - prev.1,
            (t.operand_bytes - prev.2) as f64
                / (p * k * if prec == Precision::F32 { 4 } else { 8 }) as f64,
            kd
        );
        prev = (t.launches, rb, t.operand_bytes, r.energy_evaluations, kern);
        if r.iterations < n {
            break;
        }
    }
}
