//! `trainer bench`: (1) the same weights and batch through burn (flex, wgpu) and through the
//! flowmap sampler (CPU, GPU) in one run, forward times and their ratios, so the sampler's
//! kernels are always measured against burn's; (2) training throughput per objective.

use crate::burn_backend::BurnBackend;
use crate::config::TrainConfig;
use crate::objectives::Objective;
use crate::params::ParamStore;
use anyhow::Result;
use burn::tensor::{Device, DeviceKind};
use flowmap::backend::Backend;
use flowmap::config::ModelConfig;
use flowmap::cpu::{in_pool, CpuBackend};
use flowmap::device::{DeviceChoice, Engine};
use flowmap::net::{param_specs, Network};
use flowmap::rng::Rng;
use flowmap::weights::{network_from_tensors, random_tensors};
use std::time::Instant;

fn time_forward<B: Backend>(
    b: &B,
    net: &Network<B>,
    x: &[f32],
    shape: &[usize],
    iters: usize,
) -> Result<f64> {
    let n = shape[0];
    let (s, t) = (vec![0.25; n], vec![0.75; n]);
    let xt = b.upload(x, shape)?;
    b.download(&net.velocity(b, &xt, &s, &t)?)?; // warm-up (and kernel compilation)
    let start = Instant::now();
    for _ in 0..iters {
        b.download(&net.velocity(b, &xt, &s, &t)?)?;
    }
    Ok(start.elapsed().as_secs_f64() / iters as f64)
}

/// Forward time of one config on every backend available, with ratios to flowmap's.
pub fn forward(model: &ModelConfig, batch: usize, iters: usize, with_wgpu: bool) -> Result<()> {
    let tensors = random_tensors(&param_specs(model)?, 0);
    let mut shape = vec![batch];
    shape.extend(model.sample_shape());
    let x = Rng::new(1).normals(shape.iter().product(), 1.0);
    let flops = flowmap::net::forward_costs(model, batch)?.total_flops();
    println!(
        "{} {:?}, batch {batch}: {:.3} GFLOP per forward (read back each time), {iters} iterations",
        model.arch_name(),
        model.sample_shape(),
        flops / 1e9
    );
    let mut results: Vec<(String, f64)> = Vec::new();
    // burn flex with burn's own ops is the baseline; with flowmap's flex ops (conv, fused
    // GroupNorm) is what the trainer runs.
    let mut burn_runs: Vec<(&str, Device, bool)> = vec![
        ("burn flex", Device::flex(), false),
        ("burn flex + flowmap flex ops", Device::flex(), true),
    ];
    if with_wgpu {
        burn_runs.push(("burn wgpu", Device::wgpu(DeviceKind::DefaultDevice), false));
    }
    for (name, dev, fast_ops) in burn_runs {
        let mut be = BurnBackend::new(dev.clone());
        be.fast_ops = fast_ops;
        let net = ParamStore::from_host(model, &tensors, &dev)?.network(model)?;
        // On a rayon worker, as flowmap's CPU backend below: ops that fork with rayon do
        // not hand themselves to the pool from outside (`flowmap::cpu::in_pool`).
        let secs = in_pool(|| time_forward(&be, &net, &x, &shape, iters))?;
        results.push((name.into(), secs));
    }
    for choice in [DeviceChoice::Cpu, DeviceChoice::Gpu] {
        match flowmap::device::open(choice, flowmap::precision::PrecisionChoice::F32) {
            Ok((Engine::Cpu(b), _)) => {
                // The fast path, then the reference loops it is tested against.
                for (name, b) in [
                    ("flowmap cpu", b),
                    ("flowmap cpu (reference loops)", CpuBackend::REFERENCE),
                ] {
                    let net = network_from_tensors(model, &tensors, &b)?;
                    let secs = in_pool(|| time_forward(&b, &net, &x, &shape, iters))?;
                    results.push((name.into(), secs));
                }
            }
            Ok((Engine::Gpu(g), _)) => {
                g.warm_up()?;
                let net = network_from_tensors(model, &tensors, g.as_ref())?;
                results.push((
                    format!("flowmap gpu ({})", g.context().adapter.name),
                    time_forward(g.as_ref(), &net, &x, &shape, iters)?,
                ));
            }
            Err(e) => println!("  flowmap gpu: skipped ({e})"),
        }
    }
    let reference = results
        .iter()
        .find(|(n, _)| n == "burn flex")
        .map(|r| r.1)
        .unwrap_or(1.0);
    println!(
        "  {:<40} {:>12} {:>10} {:>14}",
        "backend", "ms", "GFLOP/s", "× burn flex"
    );
    for (name, secs) in &results {
        println!(
            "  {:<40} {:>12.3} {:>10.2} {:>14.2}",
            name,
            secs * 1e3,
            flops / secs / 1e9,
            reference / secs
        );
    }
    Ok(())
}

/// The architectures `trainer bench --preset` knows, with the data set each trains on.
pub fn preset(name: &str) -> Result<(ModelConfig, &'static str), String> {
    match name {
        "mnist" => Ok((ModelConfig::mnist_default(), "mnist")),
        "toy2d" => Ok((ModelConfig::toy2d_default(), "checkerboard")),
        "toy2d-raw" => Ok((ModelConfig::toy2d_raw(), "checkerboard")),
        "mnist-s2" => Ok((ModelConfig::mnist_stem(), "mnist")),
        other => Err(format!(
            "unknown preset `{other}` (mnist, mnist-s2, toy2d, toy2d-raw)"
        )),
    }
}

/// What `trainer bench --train-steps` trains.
pub struct TrainingBench<'a> {
    pub data: &'a str,
    pub model: ModelConfig,
    pub batch: usize,
    pub steps: usize,
    /// `TrainConfig::share_times`.
    pub share_times: usize,
}

/// Training samples/s of each objective (all when `only` is empty) for `steps` steps on `device`.
pub fn training(
    run: &TrainingBench,
    device: Device,
    label: &str,
    only: &[Objective],
) -> Result<()> {
    let &TrainingBench {
        data,
        ref model,
        batch,
        steps,
        share_times,
    } = run;
    let model = Some(model.clone());
    let dir = std::env::temp_dir().join(format!("flowmap-bench-{}", std::process::id()));
    let mut teacher_cfg = TrainConfig::new(Objective::Fm, data);
    teacher_cfg.model = model.clone();
    teacher_cfg.steps = 2;
    teacher_cfg.batch = batch;
    let teacher = crate::train::train(
        &teacher_cfg,
        device.clone(),
        &dir.join("teacher"),
        None,
        true,
    )?
    .model_path;
    println!("training throughput on {data} ({}), batch {batch}, {} steps (the first, slower one included), (s, t) shared by {share_times}, {label}:", teacher_cfg.model().arch_name(), steps + 1);
    for obj in Objective::ALL {
        if !only.is_empty() && !only.contains(&obj) {
            continue;
        }
        let mut cfg = TrainConfig::new(obj, data);
        cfg.model = model.clone();
        cfg.batch = batch;
        cfg.share_times = share_times;
        cfg.steps = steps + 1;
        cfg.checkpoint_every = usize::MAX / 2;
        if obj.needs_teacher() {
            cfg.teacher = Some(teacher.clone());
        }
        let s = crate::train::train(&cfg, device.clone(), &dir.join(obj.name()), None, true)?;
        println!("  {:<5} {:>10.1} samples/s", obj.name(), s.samples_per_sec);
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
