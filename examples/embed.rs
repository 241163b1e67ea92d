//! Embedding: a native application that already has its own wgpu device (for rendering, or
//! its own compute) hands that device to nsa-flow instead of letting nsa-flow open another.
//!
//! The steps:
//! 1. the application creates its wgpu `Instance`, `Adapter`, `Device` and `Queue` as it
//!    always does (here with wgpu's default limits and no optional features);
//! 2. `GpuContext::from_device(device, queue, &adapter.get_info())` wraps them (wgpu devices
//!    and queues are cheap handles: the application keeps its clones and goes on using them);
//! 3. `GpuBackend::new(ctx, precision)` builds the backend, and `nsa_flow::flow::solve` runs
//!    the solver loop on it, with a per-iteration callback;
//! 4. asking for f64 on a device created without `SHADER_F64` is a typed error,
//!    `NsaError::Gpu { kind: GpuErrorKind::MissingFeature, .. }`, not a panic; an application
//!    that wants f64 requests the feature when it creates its device, as shown last.
//!
//! With no adapter at all it says so and exits 0. A software adapter (lavapipe) works, slowly.
//!
//! Run: `cargo run --release --example embed`

use nalgebra::DMatrix;
use nsa_flow::backend::gpu::GpuBackend;
use nsa_flow::gpu::GpuContext;
use nsa_flow::rng::Rng;
use nsa_flow::{flow, nsa_flow, BackendChoice, Control, GpuErrorKind, NsaError, Params, Precision};

pub(crate) fn main() -> Result<(), Box<dyn std::error::Error>> {
    // --- 1. The application's own wgpu setup (wgpu 30) -----------------------------------
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = match pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    })) {
        Ok(adapter) => adapter,
        Err(e) => {
            println!(
                "No GPU adapter ({e}): an application without a device would use the CPU path\n\
                 (nsa_flow::nsa_flow with backend = auto or cpu). Nothing to embed here."
            );
            return Ok(());
        }
    };
    let info = adapter.get_info();
    println!(
        "application's adapter: {} ({:?}, {:?})",
        info.name, info.backend, info.device_type
    );
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("my-app device"),
        ..Default::default() // default limits, no optional features (so no SHADER_F64)
    }))?;

    // --- 2. Hand it to nsa-flow (the application keeps `device` and `queue`) -------------
    let ctx = GpuContext::from_device(device.clone(), queue.clone(), &info);
    println!(
        "nsa-flow wraps it: {} (f64 shaders: {})",
        ctx.adapter().label(),
        ctx.supports_f64()
    );

    // --- 4 (first). f64 on a device without SHADER_F64: a typed error -------------------
    match GpuBackend::new(ctx.clone(), Precision::F64) {
        Err(NsaError::Gpu {
            kind: GpuErrorKind::MissingFeature,
            message,
            ..
        }) => println!("f64 backend on this device → GpuErrorKind::MissingFeature: {message}"),
        Err(e) => println!("f64 backend on this device → another error: {e}"),
        Ok(_) => println!("f64 backend on this device: available"),
    }

    // --- 3. An f32 backend on the application's device, and one solve ------------------
    let mut rng = Rng::new(7);
    let x0 = DMatrix::from_fn(256, 4, |_, _| rng.normal().abs());
    let params = Params::default()
        .w(0.5)
        .precision(Precision::F32)
        .max_iter(30);
    let mut backend = GpuBackend::new(ctx.clone(), Precision::F32)?;
    println!("\nsolving a 256 × 4 problem (w = 0.5, f32, at most 30 iterations) on the application's device:");
    let res = flow::solve(&mut backend, &x0, Some(&x0), &params, &mut |info| {
        if info.iter == 1 || info.iter % 3 == 0 {
            println!(
                "  iter {:>3}: energy {:.6e}, orthogonality {:.3e}, {:.2} s",
                info.iter, info.total_energy, info.orthogonality, info.elapsed
            );
        }
        Control::Continue
    })?;
    println!(
        "done: {} iterations (stop: {}), defect {:.3e}, sparsity {:.1} %, {} readbacks, {:.3} s on {}",
        res.iterations,
        res.stop_reason,
        res.defect(),
        100.0 * res.sparsity(),
        res.device.readbacks.unwrap_or(0),
        res.seconds,
        res.device
    );
    let cpu = nsa_flow(&x0, Some(&x0), &params.clone().backend(BackendChoice::Cpu))?;
    println!(
        "the same on the CPU (f32): {} iterations, ‖Y_gpu − Y_cpu‖/‖Y_cpu‖ = {:.2e}",
        cpu.iterations,
        (&res.y - &cpu.y).norm() / cpu.y.norm()
    );

    // The application goes on using its device and queue, e.g. uploading the result into a
    // buffer of its own (for a renderer).
    let data: Vec<f32> = res.y.iter().map(|&v| v as f32).collect();
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("my-app: NSA-Flow loadings"),
        size: (data.len() * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&buffer, 0, bytemuck::cast_slice(&data));
    queue.submit([]);
    println!(
        "the application wrote Y into its own {}-byte buffer on the same device",
        buffer.size()
    );

    // --- An application that wants f64 asks for SHADER_F64 when it creates its device -----
    if adapter.features().contains(wgpu::Features::SHADER_F64) {
        let (device64, queue64) =
            pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("my-app device with f64"),
                required_features: wgpu::Features::SHADER_F64,
                ..Default::default()
            }))?;
        let ctx64 = GpuContext::from_device(device64, queue64, &info);
        let mut backend64 = GpuBackend::new(ctx64, Precision::F64)?;
        let params64 = params.precision(Precision::F64);
        let res64 = flow::solve(&mut backend64, &x0, Some(&x0), &params64, &mut |_| {
            Control::Continue
        })?;
        println!(
            "\nwith SHADER_F64 requested: f64 on the device, {} iterations, defect {:.6e} ({})",
            res64.iterations,
            res64.defect(),
            res64.device
        );
    } else {
        println!("\n(this adapter has no SHADER_F64, so f64 stays on the CPU)");
    }
    Ok(())
}
