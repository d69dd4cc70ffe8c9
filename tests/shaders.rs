//! Every WGSL file parses and validates with naga; needs no adapter, so shader errors fail fast
//! everywhere.

use std::collections::BTreeSet;

#[test]
fn every_wgsl_file_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let src = std::fs::read_to_string(&path).unwrap();
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
        // The f16 build of the file (crate::precision): one `alias S = f32;`, its first
        // declaration, turned into f16 behind `enable f16;`; it must validate with f16 shaders.
        assert_eq!(
            src.matches("alias S = f32;").count(),
            1,
            "{name}: one storage alias `alias S = f32;`"
        );
        let leaked = src
            .lines()
            .find(|l| l.contains("array<f32>") && !l.contains("// f32"));
        if name != "embedding.wgsl" {
            assert!(
                leaked.is_none(),
                "{name}: storage not of type S: {leaked:?}"
            );
        }
        let src16 = flowmap::gpu::shader_source(&src, flowmap::precision::Precision::F16);
        let module16 = naga::front::wgsl::parse_str(&src16)
            .unwrap_or_else(|e| panic!("{name} (f16): {}", e.emit_to_string(&src16)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::SHADER_FLOAT16,
        )
        .validate(&module16)
        .unwrap_or_else(|e| panic!("{name} (f16): {}", e.emit_to_string(&src16)));
        // Within the workgroup memory the device is opened with.
        let bytes = workgroup_bytes(&module);
        assert!(
            bytes <= flowmap::gpu::WORKGROUP_MEMORY,
            "{name}: {bytes} bytes of workgroup memory, over the device's {}",
            flowmap::gpu::WORKGROUP_MEMORY
        );
        // The backend builds each file's bind group layout from its declarations
        // (`flowmap::gpu::bindings_of`): they must say what naga says.
        let (storage, uniform) = flowmap::gpu::bindings_of(&src);
        let mut seen = 0;
        for (_, var) in module.global_variables.iter() {
            let Some(rb) = &var.binding else { continue };
            assert_eq!(rb.group, 0, "{name}");
            match var.space {
                naga::AddressSpace::Storage { access } => {
                    let rw = access.contains(naga::StorageAccess::STORE);
                    assert_eq!(
                        storage.get(rb.binding as usize),
                        Some(&rw),
                        "{name}: binding {}",
                        rb.binding
                    );
                }
                naga::AddressSpace::Uniform => assert_eq!(rb.binding, uniform, "{name}"),
                ref other => panic!("{name}: binding {} in {other:?}", rb.binding),
            }
            seen += 1;
        }
        assert_eq!(
            seen,
            storage.len() + 1,
            "{name}: every binding declared once"
        );
        found.insert(name);
    }
    let listed: BTreeSet<String> = flowmap::gpu::SHADERS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(
        found, listed,
        "shaders/ and flowmap::gpu::SHADERS must list the same files"
    );
    assert!(found.len() >= 8);
}

/// Bytes of workgroup memory a module declares.
fn workgroup_bytes(module: &naga::Module) -> u32 {
    module
        .global_variables
        .iter()
        .filter(|(_, var)| var.space == naga::AddressSpace::WorkGroup)
        .map(|(_, var)| module.types[var.ty].inner.size(module.to_ctx()))
        .sum()
}

/// conv2d.wgsl's tile variants (`flowmap::gpu::ConvTile`) are built by rewriting two constants:
/// each must validate in both precisions and stay within the workgroup memory the device is
/// opened with (`flowmap::gpu::WORKGROUP_MEMORY`, under WebGPU's default 16 KiB).
#[test]
fn every_conv_tile_variant_validates() {
    use flowmap::gpu::{kernel_source, ConvTile};
    use flowmap::precision::Precision;
    for tile in ConvTile::ALL {
        let name = tile.shader();
        let src = kernel_source(name).unwrap();
        for (p, caps) in [
            (Precision::F32, naga::valid::Capabilities::default()),
            (Precision::F16, naga::valid::Capabilities::SHADER_FLOAT16),
        ] {
            let src = flowmap::gpu::shader_source(&src, p);
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{name} ({p:?}): {}", e.emit_to_string(&src)));
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name} ({p:?}): {}", e.emit_to_string(&src)));
            let bytes = workgroup_bytes(&module);
            assert!(
                bytes <= flowmap::gpu::WORKGROUP_MEMORY,
                "{name}: {bytes} bytes of workgroup memory"
            );
            let want = 16 * tile.k_step() * (tile.channels() / 4 + 1 + tile.pixels() / 4 + 1);
            assert_eq!(bytes as usize, want, "{name}: the tiles' size");
        }
    }
}

/// conv3x3.wgsl's constants, in both tiles, are the ones the host sizes its grids and patches
/// by (`flowmap::gpu::direct`, `DirectTile`); each tile validates in both precisions within
/// the device's workgroup memory, and differs from the file in its `CO_T` line alone.
#[test]
fn conv3x3_constants_match_the_host() {
    use flowmap::gpu::{direct, DirectTile};
    use flowmap::precision::Precision;
    let file = flowmap::gpu::kernel_source(direct::SHADER).unwrap();
    for tile in DirectTile::ALL {
        let src = flowmap::gpu::kernel_source(tile.shader()).unwrap();
        for (name, value) in [
            ("THREADS", direct::THREADS),
            ("CO", direct::CHANNELS),
            ("CO_T", tile.channels_per_thread()),
            ("PATCH", direct::PATCH),
            ("MAXR", direct::MAXR),
            ("PX", 4),
        ] {
            let line = format!("const {name}: u32 = {value}u;");
            assert!(src.contains(&line), "{}: `{line}`", tile.shader());
        }
        assert!(src.contains("const TP: u32 = THREADS * CO_T / CO;"));
        assert!(src.contains("const PIXELS: u32 = TP * PX;"));
        let tp = direct::THREADS * tile.channels_per_thread() / direct::CHANNELS;
        assert_eq!(tile.pixels(), tp * 4);
        assert!(src.contains(&format!("@workgroup_size({}, 1, 1)", direct::THREADS)));
        let changed = file
            .lines()
            .zip(src.lines())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, usize::from(tile != DirectTile::Wide), "{tile:?}");
        for (p, caps) in [
            (Precision::F32, naga::valid::Capabilities::default()),
            (Precision::F16, naga::valid::Capabilities::SHADER_FLOAT16),
        ] {
            let src = flowmap::gpu::shader_source(&src, p);
            let module = naga::front::wgsl::parse_str(&src).unwrap();
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{tile:?} ({p:?}): {}", e.emit_to_string(&src)));
            assert!(workgroup_bytes(&module) <= flowmap::gpu::WORKGROUP_MEMORY);
        }
    }
}

/// Every loop of every kernel, counted per file. The GPU backend compiles the kernels without
/// wgpu's loop bounding (`flowmap::gpu::ShaderChecks::NoLoopBounding`), which is sound only
/// while every loop is finite: a file whose count changes fails here until its new loop is
/// read against the SAFETY note in src/gpu/kernels.rs and the count below is updated.
#[test]
fn every_loop_is_accounted_for() {
    let expected = [
        ("attention.wgsl", 13),
        ("concat.wgsl", 0),
        ("conv2d.wgsl", 7),
        ("conv3x3.wgsl", 7),
        ("elementwise.wgsl", 0),
        ("embedding.wgsl", 0),
        ("group_norm.wgsl", 4),
        ("linear.wgsl", 5),
        ("upsample.wgsl", 0),
    ];
    let mut seen = Vec::new();
    for (name, src) in flowmap::gpu::SHADERS {
        let loops: usize = src
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .map(|code| {
                ["for (", "while (", "while(", "loop {", "loop{"]
                    .iter()
                    .map(|k| code.matches(k).count())
                    .sum::<usize>()
            })
            .sum();
        seen.push((*name, loops));
    }
    seen.sort();
    assert_eq!(seen, expected);
}

/// conv2d.wgsl and conv3x3.wgsl take the same parameter block and bindings, filled by one host
/// function (`GpuBackend::conv2d`): WGSL has no includes, so the two declarations are held equal
/// here.
#[test]
fn both_convolution_kernels_declare_the_same_interface() {
    let interface = |name: &str| {
        let src = flowmap::gpu::kernel_source(name).unwrap();
        let start = src.find("struct Params {").unwrap();
        let end = src.find("var<uniform> p: Params;").unwrap();
        src[start..end].to_string()
    };
    assert_eq!(interface("conv2d.wgsl"), interface("conv3x3.wgsl"));
}
