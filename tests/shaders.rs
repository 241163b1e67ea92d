//! Every kernel family, assembled with `shaders/prelude.wgsl`, parses and validates with naga,
//! for f32 and for f64, without a GPU; the Rust and WGSL layouts of the shared uniform struct
//! agree; and every `Kernel`'s entry point exists in its family's assembled module and binds
//! only what the host's bind-group layout provides, with the same kind of buffer.

use nsa_flow::gpu::shaders::{self, assemble, specialize, PRELUDE};
use nsa_flow::gpu::{Kernel, Kernels, ParamsLayout};
use nsa_flow::Precision;
use wgpu::naga;

fn module_of(src: &str, name: &str) -> naga::Module {
    naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name}: parse error\n{}", e.emit_to_string(src)))
}

fn validate(src: &str, name: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = module_of(src, name);
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::FLOAT64,
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{name}: validation error\n{}", e.emit_to_string(src)));
    (module, info)
}

#[test]
fn every_shader_validates_in_both_precisions() {
    for file in shaders::ALL {
        for precision in [Precision::F32, Precision::F64] {
            let src = specialize(&file, precision);
            if file.prelude {
                assert!(
                    assemble(&file).starts_with(PRELUDE.source),
                    "{}: the prelude comes first",
                    file.name
                );
                assert!(
                    !file.source.contains("alias T ="),
                    "{}: T is the prelude's",
                    file.name
                );
            }
            if precision == Precision::F64 && assemble(&file).contains("alias T = f32;") {
                assert!(
                    src.contains("alias T = f64;"),
                    "{}: no f64 alias",
                    file.name
                );
                assert!(
                    !src.contains("f32"),
                    "{}: f32 left in the f64 source",
                    file.name
                );
            }
            validate(&src, &format!("{} ({precision})", file.name));
        }
    }
}

#[test]
fn shader_files_on_disk_match_the_compiled_in_sources() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    on_disk.sort();
    let mut known: Vec<String> = shaders::ALL.iter().map(|f| f.name.to_string()).collect();
    known.push(PRELUDE.name.to_string());
    known.sort();
    assert_eq!(
        on_disk, known,
        "every file under shaders/ is compiled in and tested"
    );
    for file in shaders::ALL.iter().chain([&PRELUDE]) {
        let text = std::fs::read_to_string(dir.join(file.name)).unwrap();
        assert_eq!(text, file.source, "{}", file.name);
    }
}

/// The offsets and sizes naga computes for `struct Params` and `struct Lane` must be the ones
/// the host writes.
#[test]
fn uniform_layouts_agree() {
    for file in shaders::ALL {
        for precision in [Precision::F32, Precision::F64] {
            let src = specialize(&file, precision);
            let (module, _) = validate(&src, file.name);
            let mut layouter = naga::proc::Layouter::default();
            layouter.update(module.to_ctx()).unwrap();
            let mut found = false;
            let mut lanes = false;
            for (handle, ty) in module.types.iter() {
                let want = match ty.name.as_deref() {
                    Some("Params") if file.name == "bandwidth.wgsl" => ParamsLayout::bandwidth(),
                    Some("Params") => ParamsLayout::of(precision),
                    Some("Lane") => {
                        lanes = true;
                        ParamsLayout::lane(precision)
                    }
                    _ => continue,
                };
                found = true;
                let naga::TypeInner::Struct { members, span } = &ty.inner else {
                    panic!("{}: Params is not a struct", file.name)
                };
                let got: Vec<(String, u32)> = members
                    .iter()
                    .map(|m| (m.name.clone().unwrap_or_default(), m.offset))
                    .collect();
                assert_eq!(
                    got, want.members,
                    "{} ({precision}): member offsets",
                    file.name
                );
                assert_eq!(*span, want.size, "{} ({precision}): struct size", file.name);
                assert_eq!(layouter[handle].size, want.size);
            }
            assert!(found, "{}: no Params struct", file.name);
            // every kernel family but the bandwidth probe takes per-problem entries
            assert_eq!(
                lanes,
                file.name != "bandwidth.wgsl",
                "{}: struct Lane",
                file.name
            );
        }
    }
}

/// Every kernel's entry point is a compute entry point of its family's assembled module, in
/// both precisions; every family's entry points are all registered kernels; and every
/// resource the module declares (in particular every one an entry point uses) is at group 0,
/// at a binding of the host's layout, as the same kind of buffer (uniform, or storage with an
/// access the layout allows), with the uniform and the per-problem entries of the shared types.
#[test]
fn kernels_entry_points_and_bindings_agree_with_the_host_layout() {
    let layout = Kernels::layout_entries();
    for (i, e) in layout.iter().enumerate() {
        assert_eq!(e.binding as usize, i, "layout entries in binding order");
    }
    for file in shaders::ALL {
        let entries: Vec<&str> = Kernel::ALL
            .iter()
            .map(|k| k.source())
            .filter(|(f, _)| f.name == file.name)
            .map(|(_, e)| e)
            .collect();
        assert!(!entries.is_empty(), "{}: no kernel uses it", file.name);
        for precision in [Precision::F32, Precision::F64] {
            let name = format!("{} ({precision})", file.name);
            let (module, info) = validate(&specialize(&file, precision), &name);
            let mut in_module: Vec<&str> = module
                .entry_points
                .iter()
                .map(|ep| {
                    assert_eq!(ep.stage, naga::ShaderStage::Compute, "{name}: {}", ep.name);
                    ep.name.as_str()
                })
                .collect();
            in_module.sort();
            let mut registered = entries.clone();
            registered.sort();
            assert_eq!(
                in_module, registered,
                "{name}: entry points against Kernel::source"
            );
            for (handle, var) in module.global_variables.iter() {
                let var_name = var.name.as_deref().unwrap_or("?");
                let Some(rb) = &var.binding else {
                    assert!(
                        matches!(
                            var.space,
                            naga::AddressSpace::Private | naga::AddressSpace::WorkGroup
                        ),
                        "{name}: {var_name} is a resource without a binding"
                    );
                    continue;
                };
                let used_by: Vec<&str> = module
                    .entry_points
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !info.get_entry_point(*i)[handle].is_empty())
                    .map(|(_, ep)| ep.name.as_str())
                    .collect();
                let at = format!(
                    "{name}: {var_name} at @binding({}) (used by {used_by:?})",
                    rb.binding
                );
                assert_eq!(rb.group, 0, "{at}: group");
                let entry = layout
                    .iter()
                    .find(|e| e.binding == rb.binding)
                    .unwrap_or_else(|| panic!("{at}: not in the host's layout"));
                assert!(
                    entry.visibility.contains(wgpu::ShaderStages::COMPUTE),
                    "{at}: visibility"
                );
                let wgpu::BindingType::Buffer { ty, .. } = entry.ty else {
                    panic!("{at}: the host's layout has no buffer there")
                };
                match (ty, var.space) {
                    (wgpu::BufferBindingType::Uniform, naga::AddressSpace::Uniform) => {}
                    (
                        wgpu::BufferBindingType::Storage { read_only },
                        naga::AddressSpace::Storage { access },
                    ) => assert!(
                        !read_only || !access.contains(naga::StorageAccess::STORE),
                        "{at}: written, but read-only in the host's layout"
                    ),
                    (ty, space) => panic!("{at}: {space:?} against the host's {ty:?}"),
                }
                let ty_name = |h: naga::Handle<naga::Type>| module.types[h].name.clone();
                let inner = match module.types[var.ty].inner {
                    naga::TypeInner::Array { base, .. } => ty_name(base),
                    _ => ty_name(var.ty),
                };
                match rb.binding {
                    0 => assert_eq!(inner.as_deref(), Some("Params"), "{at}: type"),
                    7 => assert_eq!(inner.as_deref(), Some("Lane"), "{at}: type"),
                    _ => {}
                }
            }
        }
    }
}

/// Only the matrix bound at binding 4 (`out`) is written by any kernel; bindings 1–3 are
/// read (the host's Gram cache forgets, on each launch, only the Grams of its `out` matrix).
#[test]
fn kernels_write_no_matrix_but_the_out_binding() {
    fn root_global(
        f: &naga::Function,
        mut e: naga::Handle<naga::Expression>,
    ) -> Option<naga::Handle<naga::GlobalVariable>> {
        loop {
            match f.expressions[e] {
                naga::Expression::Access { base, .. }
                | naga::Expression::AccessIndex { base, .. } => e = base,
                naga::Expression::GlobalVariable(g) => return Some(g),
                _ => return None,
            }
        }
    }
    fn walk(block: &naga::Block, stores: &mut Vec<naga::Handle<naga::Expression>>) {
        for st in block.iter() {
            match st {
                naga::Statement::Store { pointer, .. } => stores.push(*pointer),
                naga::Statement::Block(b) => walk(b, stores),
                naga::Statement::If { accept, reject, .. } => {
                    walk(accept, stores);
                    walk(reject, stores);
                }
                naga::Statement::Switch { cases, .. } => {
                    for c in cases {
                        walk(&c.body, stores);
                    }
                }
                naga::Statement::Loop {
                    body, continuing, ..
                } => {
                    walk(body, stores);
                    walk(continuing, stores);
                }
                naga::Statement::Atomic { pointer, .. } => stores.push(*pointer),
                _ => {}
            }
        }
    }
    for file in shaders::ALL {
        let src = specialize(&file, Precision::F32);
        let (module, _) = validate(&src, file.name);
        let functions = module
            .functions
            .iter()
            .map(|(_, f)| f)
            .chain(module.entry_points.iter().map(|ep| &ep.function));
        let mut checked = 0;
        for f in functions {
            let mut stores = Vec::new();
            walk(&f.body, &mut stores);
            for p in stores {
                let Some(g) = root_global(f, p) else { continue };
                let var = &module.global_variables[g];
                if let Some(rb) = &var.binding {
                    checked += 1;
                    assert!(
                        !(1..=3).contains(&rb.binding),
                        "{}: {} writes {} at @binding({})",
                        file.name,
                        f.name.as_deref().unwrap_or("?"),
                        var.name.as_deref().unwrap_or("?"),
                        rb.binding
                    );
                }
            }
        }
        assert!(checked > 0, "{}: no store to a binding found", file.name);
    }
}
