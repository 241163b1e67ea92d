//! The same problem on the CPU (nalgebra) and on the GPU (wgpu): how closely they agree and
//! how long each takes.
//!
//! The problem is the one of the `golub` example: the 3051 × 3 PCA loadings of the Golub
//! leukaemia data (data/golub_multtest_pca_loadings_k3.npy), each flipped to be mostly
//! positive, as start and target, corrected mode, w = 0.5. It runs in f64 when the adapter
//! has `SHADER_F64` and always in f32. [`nsa_flow::verify`] runs both backends with the same
//! parameters and compares the returned `Y` and the energy traces; then, on a hardware
//! adapter, each backend is timed again (best of 3 solves). Times are of the solver loop
//! only: device creation and kernel compilation happen once per process and are timed
//! separately.
//!
//! `backend = gpu` accepts any adapter, software ones too (lavapipe), so this also runs on a
//! machine without a GPU that has Mesa's lavapipe installed (slowly: about 0.25 s an
//! iteration, so on a software adapter the solves are timed once, not best of 3). With no adapter at all
//! it says so and exits 0.
//!
//! Run: `cargo run --release --example cpu_vs_gpu`
//! (`NSA_FLOW_ADAPTER=<name part>` picks an adapter; `nsa-flow devices` lists them).

use nalgebra::DMatrix;
use nsa_flow::gpu::{list_adapters, GpuContext, GpuOptions};
use nsa_flow::{nsa_flow, verify, BackendChoice, NsaResult, Params, Precision};
use std::path::Path;
use std::time::Instant;

fn best_of(n: usize, y0: &DMatrix<f64>, params: &Params) -> nsa_flow::Result<NsaResult> {
    let mut best: Option<NsaResult> = None;
    for _ in 0..n {
        let r = nsa_flow(y0, Some(y0), params)?;
        if best.as_ref().is_none_or(|b| r.seconds < b.seconds) {
            best = Some(r);
        }
    }
    Ok(best.expect("n ≥ 1"))
}

pub(crate) fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/golub_multtest_pca_loadings_k3.npy");
    let mut x0 = nsa_flow::io::read_matrix(&path)?;
    for mut col in x0.column_iter_mut() {
        let pos: f64 = col.iter().filter(|&&a| a > 0.0).map(|a| a * a).sum();
        let neg: f64 = col.iter().filter(|&&a| a < 0.0).map(|a| a * a).sum();
        if neg > pos {
            col.neg_mut();
        }
    }
    let (p, k) = x0.shape();
    println!("Problem: Golub PCA loadings, {p} × {k}, Y0 = X0, corrected mode, w = 0.5\n");

    let adapters = list_adapters();
    if adapters.is_empty() {
        println!(
            "No GPU adapter found (not even a software one), so there is nothing to compare the CPU with.\n\
             Install a Vulkan driver (your GPU vendor's, or Mesa's: apt-get install mesa-vulkan-drivers\n\
             libvulkan1 gives the lavapipe software adapter) and run this again."
        );
        return Ok(());
    }
    println!("Adapters (best first):");
    for a in &adapters {
        println!(
            "  {}{}{}",
            a.label(),
            if a.shader_f64 { ", f64" } else { ", f32 only" },
            if a.is_software { ", software" } else { "" }
        );
    }

    // What `backend = gpu` uses: the shared context for these options. Creating it first
    // times the one-off setup, and the solves below reuse it.
    let options = GpuOptions {
        adapter_name: None,
        allow_software: true,
    };
    let t = Instant::now();
    let ctx = match GpuContext::shared(&options) {
        Ok(ctx) => ctx,
        Err(e) => {
            println!("\nThe GPU backend cannot start here: {e}");
            return Ok(());
        }
    };
    let setup = t.elapsed().as_secs_f64();
    println!(
        "\nUsing {}{}; device created in {:.3} s",
        ctx.adapter().label(),
        if ctx.adapter().is_software {
            " (a software adapter: expect it to be slower than the CPU)"
        } else {
            ""
        },
        setup
    );

    let mut precisions = vec![];
    if ctx.supports_f64() {
        precisions.push(Precision::F64);
    } else {
        println!("(the adapter has no SHADER_F64: f64 is skipped)");
    }
    precisions.push(Precision::F32);

    let mut table = Vec::new();
    for precision in precisions {
        let t = Instant::now();
        ctx.kernels(precision)?;
        println!(
            "\n--- {precision} (kernels compiled in {:.3} s) ---",
            t.elapsed().as_secs_f64()
        );
        let params = Params::default().w(0.5).precision(precision);
        let report = verify(&x0, Some(&x0), &params)?;
        println!("{report}");
        // f32 rounding changes the line-search decisions a little, so f32 runs may take a
        // different path; f64 should agree to rounding.
        let y_tol = match precision {
            Precision::F64 => 1e-8,
            Precision::F32 => 1e-3,
        };
        println!(
            "agree (same iterations, same best iteration, Y within {y_tol:.0e}): {}",
            if report.agrees(y_tol) { "yes" } else { "no" }
        );
        if !report.agrees(y_tol) && report.y_rel_diff <= y_tol {
            let stops = if report.cpu.stop_reason == report.gpu.stop_reason {
                format!("both {}", report.cpu.stop_reason)
            } else {
                format!("{} / {}", report.cpu.stop_reason, report.gpu.stop_reason)
            };
            println!(
                "  (the Y's agree to {:.1e}; the runs stop at different iterations because in {precision}\n   \
                 rounding ends the line search ({stops}) on each backend at its own point)",
                report.y_rel_diff
            );
        }
        println!(
            "sparsity cpu {:.1} % / gpu {:.1} %, defect cpu {:.4e} / gpu {:.4e}",
            100.0 * report.cpu.sparsity(),
            100.0 * report.gpu.sparsity(),
            report.cpu.defect(),
            report.gpu.defect()
        );
        // lavapipe takes ~0.25 s an iteration: time a software adapter once (verify's runs)
        let repeats = if ctx.adapter().is_software { 0 } else { 3 };
        if repeats == 0 {
            table.push((precision, report.cpu, report.gpu, report.y_rel_diff));
            continue;
        }
        let cpu = best_of(repeats, &x0, &params.clone().backend(BackendChoice::Cpu))?;
        let gpu = best_of(repeats, &x0, &params.clone().backend(BackendChoice::Gpu))?;
        table.push((precision, cpu, gpu, report.y_rel_diff));
    }

    let timing = if ctx.adapter().is_software {
        "one solve (ms)"
    } else {
        "best of 3 (ms)"
    };
    println!(
        "\n| precision | backend | iterations | {timing} | ms / iteration | readbacks | ‖ΔY‖/‖Y‖ |"
    );
    println!("|-----------|---------|-----------:|---------------:|---------------:|----------:|---------:|");
    for (precision, cpu, gpu, diff) in &table {
        for (name, r) in [("cpu", cpu), ("gpu", gpu)] {
            println!(
                "| {:<9} | {:<7} | {:>10} | {:>14.2} | {:>14.3} | {:>9} | {:>8} |",
                precision.to_string(),
                name,
                r.iterations,
                1e3 * r.seconds,
                1e3 * r.seconds / r.iterations as f64,
                r.device
                    .readbacks
                    .map_or("-".to_string(), |n| n.to_string()),
                if name == "gpu" {
                    format!("{diff:.1e}")
                } else {
                    "-".to_string()
                }
            );
        }
    }
    println!("\nGPU: {}", ctx.adapter().label());
    Ok(())
}
