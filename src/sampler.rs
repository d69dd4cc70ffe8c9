//! Sampling (METHOD §6): start from x ~ N(0, σ0² I) at t = 0 and compose K flow-map jumps
//! x ← X_{t_k, t_{k+1}}(x) on a grid 0 = t_0 < … < t_K = 1. The baselines integrate the same
//! network's diagonal velocity v(t, t, ·) with Euler or Heun at equal network evaluations.

use crate::backend::{Backend, Shaped};
use crate::clock::Stopwatch;
use crate::config::ModelMeta;
use crate::error::{Error, Result};
use crate::net::{forward_costs, Network};
use crate::rng::Rng;
use crate::shape::OpCost;
use std::time::Duration;

/// More steps than this is a mistake, not a request (the grid would be finer than f32 resolves
/// usefully and the run would take hours).
pub const MAX_STEPS: usize = 4096;

/// How a step from t_k to t_{k+1} is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrator {
    /// The learned flow map X_{s,t}(x) = x + (t − s) v(s, t, x): one evaluation per step.
    FlowMap,
    /// Euler on the diagonal velocity v(t, t, ·): one evaluation per step.
    Euler,
    /// Heun on v(t, t, ·): two evaluations per step.
    Heun,
}

impl Integrator {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "flowmap" => Ok(Integrator::FlowMap),
            "euler" => Ok(Integrator::Euler),
            "heun" => Ok(Integrator::Heun),
            _ => Err(Error::Argument(format!(
                "unknown integrator `{s}` (flowmap, euler, heun)"
            ))),
        }
    }

    /// Network evaluations per step.
    pub fn evals_per_step(self) -> usize {
        match self {
            Integrator::Heun => 2,
            _ => 1,
        }
    }
}

/// The uniform grid t_k = k / K.
pub fn uniform_grid(steps: usize) -> Result<Vec<f32>> {
    check_steps(steps)?;
    Ok((0..=steps).map(|k| k as f32 / steps as f32).collect())
}

fn check_steps(steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(Error::Argument("steps must be at least 1".into()));
    }
    if steps > MAX_STEPS {
        return Err(Error::Argument(format!(
            "{steps} steps is more than the limit of {MAX_STEPS}"
        )));
    }
    Ok(())
}

/// Checks a custom grid: finite, strictly increasing, from 0 to 1.
pub fn validate_grid(grid: &[f32]) -> Result<()> {
    if grid.len() < 2 {
        return Err(Error::Argument(
            "a time grid needs at least two points (0 and 1)".into(),
        ));
    }
    check_steps(grid.len() - 1)?;
    if grid[0] != 0.0 || grid[grid.len() - 1] != 1.0 {
        return Err(Error::Argument(format!(
            "a time grid must start at 0 and end at 1, got {} … {}",
            grid[0],
            grid[grid.len() - 1]
        )));
    }
    if let Some(w) = grid
        .windows(2)
        .find(|w| w[1].partial_cmp(&w[0]) != Some(std::cmp::Ordering::Greater))
    {
        return Err(Error::Argument(format!(
            "the time grid must increase strictly ({} then {})",
            w[0], w[1]
        )));
    }
    Ok(())
}

/// Parses "0,0.5,1".
pub fn parse_grid(text: &str) -> Result<Vec<f32>> {
    let grid = text
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<f32>()
                .map_err(|_| Error::Argument(format!("`{p}` in --grid is not a number")))
        })
        .collect::<Result<Vec<_>>>()?;
    validate_grid(&grid)?;
    Ok(grid)
}

/// The starting noise for `n` samples: N(0, σ0² I) from the portable PRNG, drawn for the whole
/// batch at once so that results do not depend on how the batch is split.
pub fn initial_noise(meta: &ModelMeta, n: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).normals(n * meta.model.sample_len(), meta.sigma0)
}

/// Timing of a sampling run.
#[derive(Debug, Clone, Default)]
pub struct SampleReport {
    /// Wall time of each step, summed over batch chunks.
    pub step_times: Vec<Duration>,
    pub total: Duration,
    /// Number of chunks the batch was split into.
    pub chunks: usize,
    pub chunk_size: usize,
}

/// The largest batch whose every buffer fits in `max_elems` f32 values: activations grow with the
/// batch, parameters do not (a parameter over the limit is an error whatever the batch).
pub fn max_batch(meta: &ModelMeta, max_elems: usize) -> Result<usize> {
    max_batch_of(&forward_costs(&meta.model, 1)?.ops(), max_elems)
}

/// [`max_batch`] from the op costs of one sample's forward.
fn max_batch_of(ops: &[OpCost], max_elems: usize) -> Result<usize> {
    let per_sample = ops.iter().map(|o| o.max_elems).max().unwrap_or(1);
    let largest_param = ops.iter().map(|o| o.param_elems).max().unwrap_or(0);
    if largest_param > max_elems {
        return Err(Error::Argument(format!(
            "a parameter tensor of {largest_param} elements exceeds the device's buffer limit ({max_elems})"
        )));
    }
    let batch = max_elems / per_sample.max(1);
    if batch == 0 {
        return Err(Error::Argument(format!(
            "one sample needs a {per_sample}-element buffer, more than the device allows ({max_elems})"
        )));
    }
    Ok(batch)
}

/// How many bytes of activations one pass may make on a GPU: 2 GiB natively, 256 MiB in a
/// browser (which shares the card with the page and whose out-of-memory is a lost device). The
/// pool recycles buffers op to op, but nothing bounds what a pass holds at once better than all
/// it makes, so batches are split to fit that (issue 10: a card with a 2 GiB binding limit
/// otherwise got chunks of tens of thousands of samples).
pub const GPU_PASS_BYTES: usize = if cfg!(target_arch = "wasm32") {
    256 << 20
} else {
    2 << 30
};

/// The largest batch for one GPU pass: every buffer within the binding limit (`max_elems`
/// values, [`max_batch`]) and all of a pass's activations, at `value_bytes` a value (4 in f32,
/// 2 in f16 storage), within `budget_bytes`. [`crate::gpu::GpuBackend::max_batch`] fills these
/// in for a device.
pub fn max_gpu_batch(
    meta: &ModelMeta,
    max_elems: usize,
    budget_bytes: usize,
    value_bytes: usize,
) -> Result<usize> {
    let ops = forward_costs(&meta.model, 1)?.ops();
    let single = max_batch_of(&ops, max_elems)?;
    let per_sample: usize = ops.iter().map(|o| o.max_elems * value_bytes).sum();
    Ok(single.min((budget_bytes / per_sample.max(1)).max(1)))
}

/// Runs `attempt(chunk)`, halving `chunk` after each GPU out-of-memory error until an attempt
/// succeeds or a chunk of one sample runs out of memory too (that error is returned). Returns
/// the result and the chunk that worked. `flowmap sample --device auto` samples through this.
pub fn halve_on_oom<T>(
    mut chunk: usize,
    mut attempt: impl FnMut(usize) -> Result<T>,
) -> Result<(T, usize)> {
    loop {
        match attempt(chunk) {
            Err(Error::GpuOutOfMemory(_)) if chunk > 1 => chunk /= 2,
            r => return r.map(|v| (v, chunk)),
        }
    }
}

/// Host bytes `flowmap sample` holds for `n` samples: the noise, the result, its data-space copy
/// and the encoded file (at most 4 bytes a value), 16 bytes per value in all; `None` when the
/// count overflows.
pub fn host_bytes(meta: &ModelMeta, n: usize) -> Option<u64> {
    (n as u64)
        .checked_mul(meta.model.sample_len() as u64)?
        .checked_mul(16)
}

/// One step of an integrator from s to t.
pub fn step<B: Backend>(
    b: &B,
    net: &Network<B>,
    x: &B::Tensor,
    s: f32,
    t: f32,
    integrator: Integrator,
) -> Result<B::Tensor> {
    let n = x.shape()[0];
    match integrator {
        Integrator::FlowMap => net.flow_map(b, x, s, t),
        Integrator::Euler => {
            let v = net.velocity(b, x, &vec![s; n], &vec![s; n])?;
            Ok(b.flow_step(x, &v, t - s))
        }
        Integrator::Heun => {
            let v0 = net.velocity(b, x, &vec![s; n], &vec![s; n])?;
            let x1 = b.flow_step(x, &v0, t - s);
            let v1 = net.velocity(b, &x1, &vec![t; n], &vec![t; n])?;
            let avg = b.flow_step(&v0, &v1, 1.0);
            Ok(b.flow_step(x, &avg, 0.5 * (t - s)))
        }
    }
}

/// How [`sample`] paces the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Each step is submitted as soon as it is recorded and nothing waits until the final
    /// readback, so the host records step k + 1 while the device runs step k. The fastest;
    /// `SampleReport::step_times` stays empty.
    Pipelined,
    /// Wait for the device after every step and time each one (`flowmap sample --step-times`).
    TimeSteps,
}

/// Runs the integrator over the grid from the given noise (model space, n × sample_len) and
/// returns the samples in model space. `chunk` caps the batch per pass.
pub fn sample<B: Backend>(
    b: &B,
    net: &Network<B>,
    noise: &[f32],
    grid: &[f32],
    integrator: Integrator,
    chunk: usize,
) -> Result<(Vec<f32>, SampleReport)> {
    sample_paced(b, net, noise, grid, integrator, chunk, Pace::Pipelined)
}

/// [`sample`] with the pacing chosen.
pub fn sample_paced<B: Backend>(
    b: &B,
    net: &Network<B>,
    noise: &[f32],
    grid: &[f32],
    integrator: Integrator,
    chunk: usize,
    pace: Pace,
) -> Result<(Vec<f32>, SampleReport)> {
    validate_grid(grid)?;
    let len: usize = net.sample_shape().iter().product();
    if noise.is_empty() || !noise.len().is_multiple_of(len) {
        return Err(Error::Argument(format!(
            "noise of {} values is not a whole number of samples",
            noise.len()
        )));
    }
    let n = noise.len() / len;
    let chunk = chunk.clamp(1, n);
    let mut report = SampleReport {
        step_times: match pace {
            Pace::TimeSteps => vec![Duration::ZERO; grid.len() - 1],
            Pace::Pipelined => Vec::new(),
        },
        chunks: n.div_ceil(chunk),
        chunk_size: chunk,
        ..Default::default()
    };
    let start = Stopwatch::start();
    let mut out = Vec::with_capacity(noise.len());
    for part in noise.chunks(chunk * len) {
        let mut shape = vec![part.len() / len];
        shape.extend(net.sample_shape());
        let mut x = b.upload(part, &shape)?;
        for (k, w) in grid.windows(2).enumerate() {
            let t0 = Stopwatch::start();
            x = step(b, net, &x, w[0], w[1], integrator)?;
            match pace {
                Pace::TimeSteps => {
                    b.sync()?;
                    report.step_times[k] += t0.elapsed();
                }
                Pace::Pipelined => b.flush(),
            }
        }
        out.extend(b.download(&x)?);
    }
    report.total = start.elapsed();
    Ok((out, report))
}
