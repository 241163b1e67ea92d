//! Every WGSL file parses and validates with naga, for f32 and for f64, without a GPU; and the
//! Rust and WGSL layouts of the shared uniform struct agree.

use nsa_flow::gpu::shaders::{self, specialize};
use nsa_flow::gpu::ParamsLayout;
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
            if precision == Precision::F64 && file.source.contains("alias T = f32;") {
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
    known.sort();
    assert_eq!(
        on_disk, known,
        "every file under shaders/ is compiled in and tested"
    );
    for file in shaders::ALL {
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
