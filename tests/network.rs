//! Whole-network parity: a small `unet` and an `mlp` with random weights, written to a real
//! weights file and loaded back, agree between the GPU kernels and the CPU reference.

mod common;

use common::{assert_close, gpu, temp_dir, tiny_mlp, tiny_unet, write_random_model};
use flowmap::backend::Backend;
use flowmap::cpu::CpuBackend;
use flowmap::rng::Rng;
use flowmap::weights::Weights;

fn parity(name: &str, model: flowmap::config::ModelConfig) {
    let dir = temp_dir(name);
    let path = write_random_model(&dir, "m.safetensors", model, 11);
    let w = Weights::read(&path).unwrap();
    let n = 3;
    let len = w.meta.model.sample_len();
    let mut rng = Rng::new(5);
    let x = rng.normals(n * len, 1.0);
    let s = [0.0f32, 0.3, 0.9];
    let t = [1.0f32, 0.55, 0.9];
    let mut shape = vec![n];
    shape.extend(w.meta.model.sample_shape());

    let cpu = CpuBackend::FAST;
    let net = w.network(&cpu).unwrap();
    let expected = cpu
        .download(
            &net.velocity(&cpu, &cpu.upload(&x, &shape).unwrap(), &s, &t)
                .unwrap(),
        )
        .unwrap();
    assert!(expected.iter().all(|v| v.is_finite()));
    assert!(
        expected.iter().any(|v| v.abs() > 1e-3),
        "a degenerate network would make parity vacuous"
    );

    let Some(g) = gpu() else { return };
    let gnet = w.network(&g).unwrap();
    let got = g
        .download(
            &gnet
                .velocity(&g, &g.upload(&x, &shape).unwrap(), &s, &t)
                .unwrap(),
        )
        .unwrap();
    assert_close(&format!("{name} forward"), &got, &expected);
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
