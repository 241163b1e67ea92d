//! `nsa-flow info`: the GPU adapters and which one `--backend auto` and `--backend gpu` pick.

use super::output::pretty;
use super::MIB;
use nsa_flow::gpu::{list_adapters, AdapterSummary};
use nsa_flow::{NsaError, Precision};
use serde_json::{json, Value};
use std::process::ExitCode;

/// `nsa-flow info` (`--json` when `as_json`).
pub fn cmd_info(as_json: bool) -> Result<ExitCode, NsaError> {
    if nsa_flow::memory::address_space_tight(nsa_flow::memory::GPU_PROBE_ROOM) {
        let why = format!(
            "adapters not probed: less than {} MiB of address space is left under ulimit -v, and GPU drivers can crash instead of failing there; --backend auto runs on the CPU",
            nsa_flow::memory::GPU_PROBE_ROOM / MIB as u64
        );
        if as_json {
            print!("{}", pretty(&json!({"adapters": [], "probe_skipped": why})));
        } else {
            println!("{why}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let adapters = list_adapters();
    let env = std::env::var("NSA_FLOW_ADAPTER")
        .ok()
        .filter(|s| !s.is_empty());
    let env = env.as_deref();
    let picks = [
        ("gpu", pick(&adapters, env, None)),
        ("auto (f64)", pick(&adapters, env, Some(Precision::F64))),
        ("auto (f32)", pick(&adapters, env, Some(Precision::F32))),
    ];
    if as_json {
        let list: Vec<Value> = adapters
            .iter()
            .enumerate()
            .map(|(i, a)| {
                json!({
                    "index": i,
                    "name": a.name,
                    "api": a.backend,
                    "device_type": a.device_type,
                    "driver": a.driver,
                    "software": a.is_software,
                    "shader_f64": a.shader_f64,
                    "limits": {
                        "max_storage_buffer_binding_size": a.max_storage_buffer_binding_size,
                        "max_buffer_size": a.max_buffer_size,
                        "max_compute_workgroup_storage_size": a.max_compute_workgroup_storage_size,
                        "max_compute_invocations_per_workgroup": a.max_compute_invocations_per_workgroup,
                        "max_compute_workgroups_per_dimension": a.max_compute_workgroups_per_dimension,
                        "max_storage_buffers_per_shader_stage": a.max_storage_buffers_per_shader_stage,
                    },
                    "features": a.features,
                })
            })
            .collect();
        // runs_on: "gpu" (adapter `index`), "cpu" (auto's fallback) or "unavailable" (gpu)
        let pick_json = |r: &Result<usize, String>, fallback: &str| match r {
            Ok(i) => {
                json!({"runs_on": "gpu", "index": i, "name": adapters[*i].name, "api": adapters[*i].backend})
            }
            Err(why) => json!({"runs_on": fallback, "index": null, "reason": why}),
        };
        let v = json!({
            "adapters": list,
            "nsa_flow_adapter": env,
            "picks": {
                "gpu": pick_json(&picks[0].1, "unavailable"),
                "auto_f64": pick_json(&picks[1].1, "cpu"),
                "auto_f32": pick_json(&picks[2].1, "cpu"),
            },
        });
        print!("{}", pretty(&v));
        return Ok(ExitCode::SUCCESS);
    }
    if adapters.is_empty() {
        println!(
            "no GPU adapter found: --backend gpu is unavailable and --backend auto runs on the CPU.\n\
             To use a GPU, install a Vulkan driver (on Debian/Ubuntu: apt-get install mesa-vulkan-drivers \
             libvulkan1, or your GPU vendor's driver)."
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mib = |b: u64| b as f64 / MIB as f64;
    println!(
        "{} GPU adapter{} (best first):",
        adapters.len(),
        if adapters.len() == 1 { "" } else { "s" }
    );
    for (i, a) in adapters.iter().enumerate() {
        println!("[{i}] {}", a.name);
        println!(
            "    api {}, type {}{}, driver {}",
            a.backend,
            a.device_type,
            if a.is_software { " (software)" } else { "" },
            if a.driver.is_empty() { "?" } else { &a.driver }
        );
        println!(
            "    SHADER_F64: {}",
            if a.shader_f64 { "yes" } else { "no (f32 only)" }
        );
        println!(
            "    limits: max_storage_buffer_binding_size {} ({:.0} MiB), max_buffer_size {} ({:.0} MiB), \
             max_compute_workgroup_storage_size {}, max_compute_invocations_per_workgroup {}, \
             max_compute_workgroups_per_dimension {}, max_storage_buffers_per_shader_stage {}",
            a.max_storage_buffer_binding_size,
            mib(a.max_storage_buffer_binding_size),
            a.max_buffer_size,
            mib(a.max_buffer_size),
            a.max_compute_workgroup_storage_size,
            a.max_compute_invocations_per_workgroup,
            a.max_compute_workgroups_per_dimension,
            a.max_storage_buffers_per_shader_stage
        );
        println!(
            "    features: {}",
            if a.features.is_empty() {
                "none".to_string()
            } else {
                a.features.join(", ")
            }
        );
    }
    if let Some(name) = env {
        println!("NSA_FLOW_ADAPTER = '{name}'");
    }
    for (what, r) in &picks {
        match r {
            Ok(i) => println!("--backend {what} uses [{i}] {}", adapters[*i].label()),
            Err(why) if what.starts_with("auto") => {
                println!("--backend {what} uses the CPU: {why}")
            }
            Err(why) => println!("--backend {what} is unavailable: {why}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `--backend auto` (in `precision`) or `--backend gpu` would pick among `adapters`
/// (best first), mirroring `GpuContext::new` and `gpu_backend_for`: an index, or why none.
fn pick(
    adapters: &[AdapterSummary],
    env: Option<&str>,
    auto: Option<Precision>,
) -> Result<usize, String> {
    if adapters.is_empty() {
        return Err("no GPU adapter was found".into());
    }
    let i = match env {
        Some(name) => {
            let lower = name.to_lowercase();
            match adapters
                .iter()
                .position(|a| a.name.to_lowercase().contains(&lower))
            {
                Some(i) => i,
                None => return Err(format!("NSA_FLOW_ADAPTER='{name}' matches no adapter")),
            }
        }
        None => {
            if auto.is_some() && adapters[0].is_software {
                return Err(format!(
                    "the best adapter ({}) is a software one, which auto never picks",
                    adapters[0].name
                ));
            }
            0
        }
    };
    if auto == Some(Precision::F64) && !adapters[i].shader_f64 {
        return Err(format!("{} has no SHADER_F64", adapters[i].name));
    }
    Ok(i)
}
