//! Whole-network parity: a small `unet` and an `mlp` with random weights, written to a real
//! weights file and loaded back, agree between the GPU kernels and the CPU reference.

mod common;

use common::{assert_close, gpu, temp_dir, tiny_mlp, tiny_unet, write_random_model};
use flowmap::backend::Backend;
use flowmap::cpu::CpuBackend;
use flowmap::gpu::{ConvTile, ConvTiles};
use flowmap::rng::Rng;
use flowmap::weights::Weights;

fn parity(name: &str, model: flowmap::config::ModelConfig) {
    parity_at(name, model, &[0.0, 0.3, 0.9], &[1.0, 0.55, 0.9]);
}

/// Parity at per-sample times `s`, `t`.
fn parity_at(name: &str, model: flowmap::config::ModelConfig, s: &[f32], t: &[f32]) {
    let dir = temp_dir(name);
    let path = write_random_model(&dir, "m.safetensors", model, 11);
    let w = Weights::read(&path).unwrap();
    let n = s.len();
    let len = w.meta.model.sample_len();
    let mut rng = Rng::new(5);
    let x = rng.normals(n * len, 1.0);
    let mut shape = vec![n];
    shape.extend(w.meta.model.sample_shape());

    let cpu = CpuBackend::FAST;
    let net = w.network(&cpu).unwrap();
    let expected = cpu
        .download(
            &net.velocity(&cpu, &cpu.upload(&x, &shape).unwrap(), s, t)
                .unwrap(),
        )
        .unwrap();
    assert!(expected.iter().all(|v| v.is_finite()));
    // Samples that share their times get the time conditioning once per distinct (s, t), each
    // row read by its run of samples (`Backend::linear`'s modulation): each sample alone (its
    // own conditioning) must give the same values.
    for i in 0..n {
        let xi = &x[i * len..(i + 1) * len];
        let mut one = shape.clone();
        one[0] = 1;
        let alone = cpu
            .download(
                &net.velocity(&cpu, &cpu.upload(xi, &one).unwrap(), &s[i..=i], &t[i..=i])
                    .unwrap(),
            )
            .unwrap();
        assert_close(
            &format!("{name} sample {i} alone vs in the batch"),
            &expected[i * len..(i + 1) * len],
            &alone,
        );
    }
    assert!(
        expected.iter().any(|v| v.abs() > 1e-3),
        "a degenerate network would make parity vacuous"
    );

    let Some(g) = gpu() else { return };
    let forward = |g: &flowmap::gpu::GpuBackend| {
        let net = w.network(g).unwrap();
        let x = g.upload(&x, &shape).unwrap();
        g.download(&net.velocity(g, &x, s, t).unwrap()).unwrap()
    };
    // Test sizes give every convolution a small grid, so the default keeps the 64 × 64 tile;
    // each of conv2d.wgsl's tiles runs the whole network too, and each of conv3x3.wgsl's every
    // layer it applies to.
    use flowmap::gpu::DirectTile;
    let tiles = [ConvTiles::ByLayer, ConvTiles::GemmOnly]
        .into_iter()
        .chain(DirectTile::ALL.map(ConvTiles::Direct))
        .chain(ConvTile::ALL.map(ConvTiles::Fixed));
    for tiles in tiles {
        g.set_conv_tiles(tiles);
        assert_close(
            &format!("{name} forward, {tiles:?}"),
            &forward(&g),
            &expected,
        );
    }
    // The kernels as wgpu compiles them by default (with loop bounding), as the GPU report
    // times them beside the default.
    use flowmap::gpu::{GpuBackend, GpuContext, ShaderChecks};
    assert_eq!(g.shader_checks(), ShaderChecks::NoLoopBounding);
    let gw = GpuBackend::new(GpuContext::new(true).unwrap()).with_shader_checks(ShaderChecks::Wgpu);
    assert_close(
        &format!("{name} forward, wgpu's checks"),
        &forward(&gw),
        &expected,
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unet_gpu_matches_cpu() {
    parity("unet", tiny_unet());
}

#[test]
fn mlp_gpu_matches_cpu() {
    parity("mlp", tiny_mlp());
}

/// Times shared in runs (a sampler's jump: one (s, t) for the batch; a training batch with
/// grouped times: runs of 2 and 4 tile as runs of 2).
#[test]
fn shared_times_gpu_match_cpu() {
    let (s, t) = ([0.25f32; 4], [0.75f32; 4]);
    parity_at("unet-shared", tiny_unet(), &s, &t);
    parity_at("mlp-shared", tiny_mlp(), &s, &t);
    let s = [0.1f32, 0.1, 0.4, 0.4, 0.4, 0.4, 0.0, 0.0];
    let t = [0.1f32, 0.1, 0.9, 0.9, 0.9, 0.9, 1.0, 1.0];
    parity_at("unet-runs", tiny_unet(), &s, &t);
    parity_at("mlp-runs", tiny_mlp(), &s, &t);
}

/// The authors' raw-time MLP ([s, t, x] input, no time embedding): the times reach the first
/// layer through the channel concatenation on every backend.
#[test]
fn raw_time_mlp_gpu_matches_cpu() {
    let mut cfg = tiny_mlp();
    if let flowmap::config::ModelConfig::Mlp(c) = &mut cfg {
        c.conditioning = flowmap::config::Conditioning::Raw;
    }
    parity("mlp-raw", cfg);
}

#[test]
fn default_configs_build_and_name_their_tensors_uniquely() {
    for model in [
        flowmap::config::ModelConfig::mnist_default(),
        flowmap::config::ModelConfig::toy2d_default(),
        flowmap::config::ModelConfig::toy2d_raw(),
    ] {
        let specs = flowmap::net::param_specs(&model).unwrap();
        let mut names: Vec<_> = specs.iter().map(|s| s.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), specs.len(), "tensor names must be unique");
        let costs = flowmap::net::forward_costs(&model, 2).unwrap();
        assert!(costs.total_flops() > 0.0);
    }
}

#[test]
fn f16_files_load_and_match_f32_within_half_precision() {
    use flowmap::weights::{random_tensors, StoreDtype};
    let meta = common::meta_for(tiny_mlp());
    let tensors = random_tensors(&flowmap::net::param_specs(&meta.model).unwrap(), 4);
    let f32_bytes = Weights::to_bytes(&meta, &tensors, StoreDtype::F32).unwrap();
    let f16_bytes = Weights::to_bytes(&meta, &tensors, StoreDtype::F16).unwrap();
    assert!(f16_bytes.len() < f32_bytes.len() * 6 / 10);
    let a = Weights::from_bytes(&f32_bytes).unwrap();
    let b = Weights::from_bytes(&f16_bytes).unwrap();
    assert!(b.dtypes.contains("F16"));
    for (name, t) in &a.tensors {
        let h = &b.tensors[name];
        assert_eq!(t.shape, h.shape);
        for (x, y) in t.data.iter().zip(&h.data) {
            // f16 keeps 11 significant bits: relative error ≤ 2^-11.
            assert!(
                (x - y).abs() <= x.abs() * 4.9e-4 + 1e-7,
                "{name}: {x} vs {y}"
            );
        }
    }
}

/// The CPU backend's fast path (GEMM conv and linear, vectorized GroupNorm and SiLU) against its
/// reference loops, whole networks: the shipped models and the stem U-Net preset, at batch 1
/// (conv split into bands of rows) and batch 3 (samples in parallel), several (s, t).
#[test]
fn cpu_fast_path_matches_the_reference_loops_on_whole_networks() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = temp_dir("fast-vs-reference");
    let stem = write_random_model(
        &dir,
        "stem.safetensors",
        flowmap::config::ModelConfig::mnist_stem(),
        4,
    );
    for path in [
        root.join("weights/mnist.safetensors"),
        root.join("weights/checkerboard.safetensors"),
        stem,
    ] {
        let w = Weights::read(&path).unwrap();
        let len = w.meta.model.sample_len();
        for n in [1usize, 3] {
            let x = Rng::new(9).normals(n * len, 1.0);
            let s: Vec<f32> = (0..n).map(|i| 0.1 * i as f32).collect();
            let t: Vec<f32> = (0..n).map(|i| 0.5 + 0.25 * i as f32).collect();
            let mut shape = vec![n];
            shape.extend(w.meta.model.sample_shape());
            let run = |b: CpuBackend| {
                let net = w.network(&b).unwrap();
                let v = net
                    .velocity(&b, &b.upload(&x, &shape).unwrap(), &s, &t)
                    .unwrap();
                b.download(&v).unwrap()
            };
            let (fast, reference) = (run(CpuBackend::FAST), run(CpuBackend::REFERENCE));
            assert!(reference.iter().any(|v| v.abs() > 1e-3));
            assert_close(
                &format!("{} batch {n}: fast vs reference", path.display()),
                &fast,
                &reference,
            );
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}
