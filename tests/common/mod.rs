//! Shared test helpers: the GPU backend (or a loud failure under CI), random data, tolerances,
//! and random-weight model files in the real format.
#![allow(dead_code)]

use flowmap::config::{DataSpec, ModelConfig, ModelMeta};
use flowmap::gpu::{GpuBackend, GpuContext};
use flowmap::net::param_specs;
use flowmap::rng::Rng;
use flowmap::weights::{random_tensors, StoreDtype, Weights};
use std::path::{Path, PathBuf};

/// The GPU backend on whatever adapter exists (lavapipe in CI). Without an adapter the test
/// fails when `CI` is set, and otherwise says loudly that it did not run.
pub fn gpu() -> Option<GpuBackend> {
    match GpuContext::new(true) {
        Ok(ctx) => Some(GpuBackend::new(ctx)),
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set but no GPU adapter was found: {e}");
            }
            eprintln!("\n*** GPU TEST NOT RUN: {e} (set CI=1 to make this a failure) ***\n");
            None
        }
    }
}

pub fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

/// Asserts max |a − b| ≤ 1e-4 · max(1, max |b|): the tolerance relative to the output scale.
pub fn assert_close(what: &str, a: &[f32], b: &[f32]) {
    assert_close_tol(what, a, b, 1e-4);
}

pub fn assert_close_tol(what: &str, a: &[f32], b: &[f32], tol: f32) {
    flowmap::tolerance::assert_close(what, a, b, tol);
}

pub fn tiny_unet() -> ModelConfig {
    serde_json::from_str(
        r#"{"arch":"unet","in_channels":1,"height":8,"width":8,"base_channels":8,"channel_mult":[1,2],
            "blocks_per_level":1,"attention_levels":[1],"heads":2,"groups":4,
            "time":{"dim":16,"hidden":32}}"#,
    )
    .unwrap()
}

pub fn tiny_mlp() -> ModelConfig {
    serde_json::from_str(r#"{"arch":"mlp","dim":2,"width":32,"depth":3,"activation":"gelu","time":{"dim":16,"hidden":32}}"#).unwrap()
}

pub fn meta_for(model: ModelConfig) -> ModelMeta {
    let data = DataSpec::for_model(&model, "test");
    ModelMeta::untrained(model, data)
}

/// Writes a random-weight model in the real format and returns its path.
pub fn write_random_model(dir: &Path, name: &str, model: ModelConfig, seed: u64) -> PathBuf {
    let meta = meta_for(model);
    let tensors = random_tensors(&param_specs(&meta.model).unwrap(), seed);
    let path = dir.join(name);
    Weights::write(&path, &meta, &tensors, StoreDtype::F32).unwrap();
    path
}

/// A fresh temporary directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowmap-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
