//! Many small problems at once: B random restarts of a 66 × 5 problem (the size of a
//! cortical-thickness loading matrix), each with its own start and weight, solved as one
//! batch, against solving them one after another.
//!
//! On the CPU the batch runs the problems in parallel across cores; on a GPU the batch is a
//! dispatch dimension (every launch covers every problem on the same path, one readback per
//! round for all of them). Each batched result is checked to be bit-identical to the same
//! problem solved alone, and the GPU batch's profile says where its time went: rounds,
//! launches, host time of the problems' loops, encoding, and device time.
//!
//! Run: `cargo run --release --example batch [B] [cpu|gpu|auto]` (default 64 problems on the
//! best backend present: `auto` is a hardware GPU, else the CPU).

use nalgebra::DMatrix;
use nsa_flow::batch::{nsa_flow_batch, BatchProblem, BatchResult};
use nsa_flow::{nsa_flow, BackendChoice, Params, Precision};
use std::time::Instant;

/// `count` problems of p × k: X0 = |N(0, 1)|, Y0 = N(0, 1), w from 0.1 to 0.9.
pub fn restarts(p: usize, k: usize, count: usize) -> Vec<BatchProblem> {
    (0..count)
        .map(|i| {
            let mut rng = nsa_flow::rng::Rng::new(7 + i as u64);
            let x0 = DMatrix::from_fn(p, k, |_, _| rng.normal().abs());
            let y0 = DMatrix::from_fn(p, k, |_, _| rng.normal());
            BatchProblem {
                y0,
                x0: Some(x0),
                w: 0.1 + 0.8 * (i % 9) as f64 / 8.0,
            }
        })
        .collect()
}

/// Solves `problems` as a batch and one after another; checks every result is the same bits.
/// Returns the batch and the seconds of the one-after-another solves.
pub fn batch_vs_alone(
    problems: &[BatchProblem],
    params: &Params,
) -> nsa_flow::Result<(BatchResult, f64)> {
    let batch = nsa_flow_batch(problems, params)?;
    let t = Instant::now();
    for (i, pr) in problems.iter().enumerate() {
        let alone = nsa_flow(&pr.y0, pr.x0.as_ref(), &params.clone().w(pr.w))?;
        assert_eq!(
            alone.y, batch.results[i].y,
            "problem {i}: the batch changed the bits"
        );
        assert_eq!(alone.iterations, batch.results[i].iterations);
    }
    Ok((batch, t.elapsed().as_secs_f64()))
}

#[allow(dead_code)]
fn main() -> nsa_flow::Result<()> {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let backend: BackendChoice = match args.next() {
        Some(b) => b.parse()?,
        None => BackendChoice::Auto,
    };
    let params = Params::default()
        .backend(backend)
        .precision(Precision::F32)
        .max_iter(100);
    let problems = restarts(66, 5, count);
    // the first solve of a process opens the device and compiles the kernels: not timed
    nsa_flow(&problems[0].y0, problems[0].x0.as_ref(), &params)?;
    let (batch, alone) = batch_vs_alone(&problems, &params)?;
    let iters: usize = batch.results.iter().map(|r| r.iterations).sum();
    println!("{count} problems of 66×5 on {}", batch.backend);
    println!(
        "  batch: {:.3} s ({:.3} ms a problem), {} iterations in all; one after another: {:.3} s ({:.3} ms a problem)",
        batch.seconds,
        1e3 * batch.seconds / count as f64,
        iters,
        alone,
        1e3 * alone / count as f64
    );
    println!("  every result bit-identical to its solve alone");
    if let Some(p) = batch.profile {
        println!(
            "  GPU batch: {} rounds (readbacks), {} launches; host {:.3} s in the problems' loops, {:.3} s encoding; {:.3} s submitting, on the device and mapping",
            p.rounds, p.launches, p.problems_seconds, p.encoding_seconds, p.device_seconds
        );
    }
    Ok(())
}
