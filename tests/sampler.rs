//! The sampler: determinism for a seed, K = 1 equals one flow-map call, custom grids, batch
//! splitting that does not change results, and the GPU path agreeing with the CPU path.

mod common;

use common::{assert_close, gpu, meta_for, temp_dir, tiny_mlp, tiny_unet, write_random_model};
use flowmap::backend::Backend;
use flowmap::cpu::CpuBackend;
use flowmap::sampler::{self, initial_noise, uniform_grid, Integrator};
use flowmap::weights::Weights;

fn model(name: &str, cfg: flowmap::config::ModelConfig) -> Weights {
    let dir = temp_dir(name);
    let w = Weights::read(&write_random_model(&dir, "m.safetensors", cfg, 3)).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    w
}

#[test]
fn same_seed_same_samples_other_seed_other_samples() {
    let w = model("det", tiny_mlp());
    let cpu = CpuBackend::FAST;
    let net = w.network(&cpu).unwrap();
    let grid = uniform_grid(3).unwrap();
    let run = |seed| {
        sampler::sample(
            &cpu,
            &net,
            &initial_noise(&w.meta, 16, seed),
            &grid,
            Integrator::FlowMap,
            16,
        )
        .unwrap()
        .0
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn one_step_is_one_flow_map_call() {
    let w = model("k1", tiny_unet());
    let cpu = CpuBackend::FAST;
    let net = w.network(&cpu).unwrap();
    let noise = initial_noise(&w.meta, 4, 1);
    let (samples, report) = sampler::sample(
        &cpu,
        &net,
        &noise,
        &uniform_grid(1).unwrap(),
        Integrator::FlowMap,
        4,
    )
    .unwrap();
    // Pipelined by default: no per-step times.
    assert!(report.step_times.is_empty());
    let mut shape = vec![4];
    shape.extend(w.meta.model.sample_shape());
    let x = cpu.upload(&noise, &shape).unwrap();
    // X_{0,1}(x) = x + (1 − 0) v(0, 1, x), computed by hand from the velocity.
    let v = cpu
        .download(&net.velocity(&cpu, &x, &[0.0; 4], &[1.0; 4]).unwrap())
        .unwrap();
    let by_hand: Vec<f32> = noise.iter().zip(&v).map(|(x, v)| x + v).collect();
    assert_eq!(samples, by_hand);
}

#[test]
fn custom_grid_composes_the_given_jumps() {
    let w = model("grid", tiny_mlp());
    let cpu = CpuBackend::FAST;
    let net = w.network(&cpu).unwrap();
    let noise = initial_noise(&w.meta, 8, 2);
    let grid = sampler::parse_grid("0, 0.1,0.6,1").unwrap();
    let (samples, report) = sampler::sample_paced(
        &cpu,
        &net,
        &noise,
        &grid,
        Integrator::FlowMap,
        8,
        sampler::Pace::TimeSteps,
    )
    .unwrap();
    assert_eq!(report.step_times.len(), 3);
    let (pipelined, _) =
        sampler::sample(&cpu, &net, &noise, &grid, Integrator::FlowMap, 8).unwrap();
    assert_eq!(
        pipelined, samples,
        "the pacing changes nothing but the waiting"
    );
    let mut x = cpu.upload(&noise, &[8, 2]).unwrap();
    for (s, t) in [(0.0, 0.1), (0.1, 0.6), (0.6, 1.0)] {
        x = net.flow_map(&cpu, &x, s, t).unwrap();
    }
    assert_eq!(samples, cpu.download(&x).unwrap());
    // A different grid gives different samples.
    let (uniform, _) = sampler::sample(
        &cpu,
        &net,
        &noise,
        &uniform_grid(3).unwrap(),
        Integrator::FlowMap,
        8,
    )
    .unwrap();
    assert_ne!(samples, uniform);
}

#[test]
fn bad_grids_and_step_counts_are_refused() {
    for g in ["0,1,0.5", "0.1,1", "0,0.5", "0", "0,x,1", "0,0.5,0.5,1"] {
        assert!(sampler::parse_grid(g).is_err(), "{g}");
    }
    assert!(uniform_grid(0)
        .unwrap_err()
        .to_string()
        .contains("at least 1"));
    assert!(uniform_grid(sampler::MAX_STEPS + 1).is_err());
}

#[test]
fn splitting_the_batch_does_not_change_samples() {
    let w = model("split", tiny_mlp());
    let cpu = CpuBackend::FAST;
    let net = w.network(&cpu).unwrap();
    let noise = initial_noise(&w.meta, 10, 4);
    let grid = uniform_grid(2).unwrap();
    let (whole, r1) = sampler::sample(&cpu, &net, &noise, &grid, Integrator::Heun, 10).unwrap();
    let (parts, r2) = sampler::sample(&cpu, &net, &noise, &grid, Integrator::Heun, 3).unwrap();
    assert_eq!((r1.chunks, r2.chunks), (1, 4));
    assert_eq!(whole, parts);
    // The default U-Net on the CPU fast path: GEMM conv (per sample, or in bands of rows when a
    // chunk has fewer samples than cores) and fixed-shape GEMM blocks in linear keep every
    // sample's bits whatever the chunk size.
    let w = model("split-unet", flowmap::config::ModelConfig::mnist_default());
    let net = w.network(&cpu).unwrap();
    let noise = initial_noise(&w.meta, 5, 4);
    let grid = uniform_grid(2).unwrap();
    let (whole, _) = sampler::sample(&cpu, &net, &noise, &grid, Integrator::FlowMap, 5).unwrap();
    for chunk in [1, 2, 3] {
        let (parts, _) =
            sampler::sample(&cpu, &net, &noise, &grid, Integrator::FlowMap, chunk).unwrap();
        assert!(
            whole == parts,
            "U-Net samples change with chunk size {chunk}"
        );
    }
    // The batch limit follows the largest buffer of one sample.
    let meta = meta_for(tiny_unet());
    let per_sample = sampler::max_batch(&meta, usize::MAX / 2).unwrap();
    assert!(per_sample > 1000);
    assert!(sampler::max_batch(&meta, 10).is_err());
    // Parameters do not grow with the batch: the tiny MLP's largest per-sample buffer is its
    // [2 · width] modulation (64 values), not its [width, width] weights.
    assert_eq!(
        sampler::max_batch(&meta_for(tiny_mlp()), 1 << 20).unwrap(),
        (1 << 20) / 64
    );
    // On a GPU the sum of a pass's activations is bounded too: a huge binding limit no longer
    // means a huge chunk, and the chunk shrinks with the budget.
    let huge = usize::MAX / 2;
    let big = sampler::max_gpu_batch(&meta, huge, sampler::GPU_PASS_BYTES, 4).unwrap();
    // f16 storage: twice the samples in the same bytes.
    let half = sampler::max_gpu_batch(&meta, huge, sampler::GPU_PASS_BYTES, 2).unwrap();
    assert!(
        half >= 2 * big - 1 && half <= 2 * big + 1,
        "{half} vs {big}"
    );
    assert!(big < per_sample, "{big} vs {per_sample}");
    let small = sampler::max_gpu_batch(&meta, huge, sampler::GPU_PASS_BYTES / 8, 4).unwrap();
    assert!(small >= 1 && small <= big / 7, "{small} vs {big}");
    assert_eq!(sampler::max_gpu_batch(&meta, huge, 1, 4).unwrap(), 1);
}

#[test]
fn gpu_sampling_matches_cpu_sampling() {
    let w = model("gpusample", tiny_unet());
    let cpu = CpuBackend::FAST;
    let grid = uniform_grid(4).unwrap();
    let noise = initial_noise(&w.meta, 5, 9);
    let (expected, _) = sampler::sample(
        &cpu,
        &w.network(&cpu).unwrap(),
        &noise,
        &grid,
        Integrator::FlowMap,
        5,
    )
    .unwrap();
    let Some(g) = gpu() else { return };
    // Chunks of 2 also exercise the split path on the GPU.
    let (got, rep) = sampler::sample(
        &g,
        &w.network(&g).unwrap(),
        &noise,
        &grid,
        Integrator::FlowMap,
        2,
    )
    .unwrap();
    assert_eq!(rep.chunks, 3);
    assert_close("gpu sampling", &got, &expected);
}

/// `--device auto` retries an out-of-memory pass in halves; other errors and a one-sample
/// out-of-memory are returned as they are.
#[test]
fn out_of_memory_passes_are_retried_in_halves() {
    use flowmap::Error;
    let mut tried = Vec::new();
    let (v, used) = sampler::halve_on_oom(100, |c| {
        tried.push(c);
        if c > 20 {
            Err(Error::GpuOutOfMemory(format!("{c} samples")))
        } else {
            Ok(c * 2)
        }
    })
    .unwrap();
    assert_eq!((v, used, tried), (24, 12, vec![100, 50, 25, 12]));
    let e = sampler::halve_on_oom(4, |c| -> flowmap::Result<()> {
        Err(Error::GpuOutOfMemory(format!("{c}")))
    })
    .unwrap_err();
    assert!(matches!(e, Error::GpuOutOfMemory(ref m) if m == "1"), "{e}");
    let mut calls = 0;
    let e = sampler::halve_on_oom(8, |_| -> flowmap::Result<()> {
        calls += 1;
        Err(Error::Gpu("lost".into()))
    })
    .unwrap_err();
    assert!(matches!(e, Error::Gpu(_)) && calls == 1);
}
