//! `trainer gpu-report` (scripts/gpu-report.sh): everything one run on a GPU must show, in one
//! command (issue 10). On the adapter wgpu picks, in this order:
//! 1. the adapter: name, backend, driver, the features that matter (SHADER_F16, timestamps) and
//!    the limits the kernels meet;
//! 2. kernel parity at production sizes: the shipped U-Net at batch 256 and MLP at batch 65,536
//!    run op by op on the CPU backend and the WGSL kernels with the same inputs
//!    ([`flowmap::parity::OpParity`]), and whole forwards GPU against CPU;
//! 3. timings on the same adapter and weights: flowmap's WGSL forward (GPU timestamps where the
//!    adapter has them, and wall clock with readback), burn-wgpu's forward, a 4096² matmul
//!    through burn-wgpu and through flowmap's linear kernel as the reachable peak, GFLOP/s per
//!    kernel family against that peak, and sampling throughput at K = 1, 4, 16;
//! 4. the performance goals, checked;
//!
//! and writes `gpu-report.md` and `gpu-report.json` to the output directory. `--dry-run` runs
//! the same code at tiny sizes (CI runs it on lavapipe so the report cannot rot).

use crate::burn_backend::BurnBackend;
use crate::params::ParamStore;
use anyhow::{bail, Context, Result};
use burn::tensor::{Device, DeviceKind};
use flowmap::backend::Backend;
use flowmap::bench::{median, Profiled};
use flowmap::cpu::CpuBackend;
use flowmap::gpu::tune::{Clock, TunedConv};
use flowmap::gpu::{ConvKernel, ConvTile, ConvTiles, GpuBackend, GpuContext, ShaderChecks, Tuning};
use flowmap::net::Network;
use flowmap::output::write_atomic;
use flowmap::parity::{scaled_error, OpParity};
use flowmap::precision::Precision;
use flowmap::rng::Rng;
use flowmap::sampler::{self, Integrator};
use flowmap::weights::Weights;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

/// Per-op parity tolerance: max |gpu − cpu| ≤ tol · max(1, max |cpu|), as in tests/common.
pub const OP_TOL: f32 = 1e-4;
/// Whole-forward tolerance (rounding differences compound through ~100 ops).
pub const NET_TOL: f32 = 1e-3;
/// The same for the f16 kernels against the CPU backend emulating f16 storage
/// (flowmap::precision): one f16 rounding step per op, compounding through the forward
/// (tests/f16.rs states what lavapipe measured).
pub const F16_OP_TOL: f32 = 2e-3;
pub const F16_NET_TOL: f32 = 2e-2;

/// The sizes of one report.
#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    pub unet_batches: Vec<usize>,
    pub mlp_batches: Vec<usize>,
    pub parity_unet: usize,
    pub parity_mlp: usize,
    pub matmul: usize,
    pub sample_counts: Vec<usize>,
    pub jumps: Vec<usize>,
    pub iters: usize,
}

impl Sizes {
    pub fn full() -> Self {
        Sizes {
            unet_batches: vec![1, 16, 64, 256],
            mlp_batches: vec![4096, 65536],
            parity_unet: 256,
            parity_mlp: 65536,
            matmul: 4096,
            sample_counts: vec![64, 256],
            jumps: vec![1, 4, 16],
            iters: 10,
        }
    }

    /// Tiny sizes that exercise every path on a software adapter in seconds.
    pub fn dry_run() -> Self {
        Sizes {
            unet_batches: vec![1, 2],
            mlp_batches: vec![64],
            parity_unet: 2,
            parity_mlp: 64,
            matmul: 64,
            sample_counts: vec![2],
            jumps: vec![1, 4],
            iters: 1,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub software: bool,
    pub shader_f16: bool,
    pub timestamp_query: bool,
    pub features: Vec<String>,
    pub limits: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct ParityRow {
    pub model: String,
    pub batch: usize,
    /// An op family, or `forward` for the whole network GPU against CPU.
    pub scope: String,
    pub calls: usize,
    pub max_abs: f32,
    pub scale: f32,
    pub tol: f32,
    pub pass: bool,
}

#[derive(Debug, Serialize)]
pub struct PeakRow {
    pub what: String,
    pub n: usize,
    pub ms: f64,
    pub gflops: f64,
}

#[derive(Debug, Serialize)]
pub struct ForwardRow {
    pub model: String,
    pub batch: usize,
    pub gflop: f64,
    /// flowmap WGSL, GPU clock (first pass start to last pass end), median.
    pub wgsl_gpu_ms: Option<f64>,
    /// flowmap WGSL, wall clock with upload-free forward and readback, median.
    pub wgsl_wall_ms: f64,
    /// burn-wgpu, wall clock with readback, median.
    pub burn_wall_ms: Option<f64>,
    /// flowmap WGSL with f16 storage (where the adapter has SHADER_F16), on the same clock as
    /// the f32 figure the ratio uses (GPU clock where there is one).
    pub wgsl_f16_ms: Option<f64>,
    pub f16_over_f32: Option<f64>,
    /// flowmap WGSL compiled with wgpu's loop bounding (`ShaderChecks::Wgpu`, the kernels as
    /// they ran before the sixteenth session), on the same clock as the default.
    pub wgsl_bounded_ms: Option<f64>,
    pub bounded_over_default: Option<f64>,
    /// flowmap WGSL with the fastest kernel per convolution as measured in this run (the
    /// sweep; `flowmap tune`), on the same clock as the default (the rule's kernels).
    pub wgsl_tuned_ms: Option<f64>,
    /// The same with f16 storage and the f16 tuning, against `wgsl_f16_ms`.
    pub wgsl_f16_tuned_ms: Option<f64>,
    pub wgsl_gflops: f64,
    pub pct_of_peak: f64,
    pub wgsl_over_burn: Option<f64>,
}

impl ForwardRow {
    /// The default WGSL forward on the clock its variants are compared on: the GPU's where
    /// there are timestamps, else the wall clock.
    fn default_ms(&self) -> f64 {
        self.wgsl_gpu_ms.unwrap_or(self.wgsl_wall_ms)
    }
}

#[derive(Debug, Serialize)]
pub struct KernelRow {
    pub model: String,
    pub batch: usize,
    /// `conv3x3`, `conv1x1`, `group_norm`, ...
    pub kernel: String,
    pub dispatches: usize,
    pub ms: f64,
    pub share: f64,
    pub gflops: f64,
    pub gbytes_per_s: f64,
    pub pct_of_peak: f64,
}

#[derive(Debug, Serialize)]
pub struct SampleRow {
    pub model: String,
    /// Tensor storage: f32 or f16.
    pub precision: String,
    pub samples: usize,
    pub jumps: usize,
    pub ms: f64,
    pub samples_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub sizes: Sizes,
    pub adapter: AdapterReport,
    /// `gpu timestamps` or `wall clock`.
    pub clock: String,
    pub parity: Vec<ParityRow>,
    pub peaks: Vec<PeakRow>,
    pub forward: Vec<ForwardRow>,
    pub kernels: Vec<KernelRow>,
    /// The U-Net's convolutions per layer shape at batch 1 and the largest batch (`kernel` is
    /// the layer).
    pub layers: Vec<KernelRow>,
    /// The U-Net's convolutions one at a time, with each kernel that computes them.
    pub sweep: Vec<SweepRow>,
    /// The sweep as a tuning file for this adapter (written beside the report as tuning.json).
    #[serde(skip)]
    pub tuning: Option<Tuning>,
    /// The same measured in f16 storage (tuning-f16.json), where the adapter has it.
    #[serde(skip)]
    pub tuning_f16: Option<Tuning>,
    pub sampling: Vec<SampleRow>,
    pub goals: Vec<Goal>,
    pub notes: Vec<String>,
    pub seconds: f64,
}

/// The convolution sweep: a row per layer and batch, a column per kernel (µs per dispatch,
/// GFLOP/s), the fastest in bold and the rule's marked; nothing where there are no rows.
fn sweep_table(m: &mut String, rows: &[SweepRow], clock: &str) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(m, "\n## Convolutions alone, by kernel ({clock})\n\nEach distinct U-Net convolution run alone on random operands of its shapes, back to back, with every kernel that computes it (`flowmap tune`'s measurement, src/gpu/tune.rs): median µs of one dispatch (GFLOP/s). conv2d.wgsl is the implicit GEMM with its 64 × 64, 32 × 128 (`#c32`) and 16 × 256 (`#c16`) tiles; conv3x3.wgsl the direct kernel (512 pixels × 16 channels a workgroup) and `#small` its 128-pixel tile, on the same-size 3×3 layers. **Bold** the fastest, † the kernel `ConvKernel::for_layer`'s rule picks; the last column is the rule's time over the fastest. The forward runs each row ×count times. The fastest per row are written to tuning.json beside this report (`flowmap sample --tuning`).\n");
    let mut head = "| layer | batch | ×count | GFLOP |".to_string();
    let mut line = "|---|---:|---:|---:|".to_string();
    for k in ConvKernel::ALL {
        let _ = write!(head, " {} |", k.shader());
        line.push_str("---|");
    }
    let _ = writeln!(m, "{head} rule ÷ fastest |\n{line}---:|");
    for r in rows {
        let _ = write!(
            m,
            "| {} | {} | {} | {:.4} |",
            r.layer, r.batch, r.count, r.gflop
        );
        let mut rule_us = f64::NAN;
        let mut best_us = f64::NAN;
        for k in ConvKernel::ALL {
            match r.times.iter().find(|t| t.kernel == k.shader()) {
                Some(t) => {
                    let mut cell = format!("{:.1} µs ({})", t.us, rate(t.gflops));
                    if t.kernel == r.fastest {
                        best_us = t.us;
                        cell = format!("**{cell}**");
                    }
                    if t.kernel == r.rule {
                        rule_us = t.us;
                        cell.push_str(" †");
                    }
                    let _ = write!(m, " {cell} |");
                }
                None => {
                    let _ = write!(m, " – |");
                }
            }
        }
        let _ = writeln!(m, " {:.2} |", rule_us / best_us);
    }
}

/// The forward rows that have a variant's time, as a table under `heading` whose last three
/// columns are `columns`: `variant` gives a row's baseline and variant times in ms, and the
/// table adds their ratio. Nothing where no row has both.
fn variant_table(
    m: &mut String,
    heading: &str,
    columns: &str,
    forward: &[ForwardRow],
    variant: impl Fn(&ForwardRow) -> (Option<f64>, Option<f64>),
) {
    let rows: Vec<(&ForwardRow, f64, f64)> = forward
        .iter()
        .filter_map(|f| match variant(f) {
            (Some(base), Some(ms)) => Some((f, base, ms)),
            _ => None,
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        m,
        "\n{heading}\n\n| model | batch {columns}\n|---|---:|---:|---:|---:|"
    );
    for (f, base, ms) in rows {
        let _ = writeln!(
            m,
            "| {} | {} | {base:.3} | {ms:.3} | {:.2} |",
            f.model,
            f.batch,
            ms / base
        );
    }
}

/// A table of kernel rows (per family or per layer) under `heading`, unless there are none.
fn kernel_table(m: &mut String, heading: &str, what: &str, rows: &[KernelRow]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(m, "\n{heading}\n\n| model | batch | {what} | dispatches | ms | share | GFLOP/s | GB/s | % of peak |\n|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for k in rows {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {:.3} | {:.0}% | {} | {} | {:.1} |",
            k.model,
            k.batch,
            k.kernel,
            k.dispatches,
            k.ms,
            100.0 * k.share,
            rate(k.gflops),
            rate(k.gbytes_per_s),
            k.pct_of_peak
        );
    }
}

/// One convolution of the U-Net (a distinct layer shape at one batch) run alone, back to back,
/// with every kernel that computes it.
#[derive(Debug, Serialize)]
pub struct SweepRow {
    pub layer: String,
    pub batch: usize,
    /// How many times the forward runs it.
    pub count: usize,
    pub gflop: f64,
    /// The shader `ConvKernel::for_layer`'s rule runs it with.
    pub rule: String,
    /// The fastest shader measured: the tuning's choice.
    pub fastest: String,
    pub times: Vec<SweepTime>,
}

/// One kernel's time for a [`SweepRow`]'s convolution.
#[derive(Debug, Serialize)]
pub struct SweepTime {
    /// The shader (`ConvKernel::shader`): conv2d.wgsl, conv2d.wgsl#c32, conv2d.wgsl#c16,
    /// conv3x3.wgsl or conv3x3.wgsl#small.
    pub kernel: String,
    /// Median time of one dispatch, in microseconds.
    pub us: f64,
    pub gflops: f64,
}

impl SweepRow {
    fn new(c: &TunedConv) -> SweepRow {
        let flops = c.shape().flops();
        SweepRow {
            layer: c.layer.clone(),
            batch: c.batch,
            count: c.count,
            gflop: flops / 1e9,
            rule: c.rule.clone(),
            fastest: c.kernel.clone(),
            times: c
                .us
                .iter()
                .map(|(k, &us)| SweepTime {
                    kernel: k.clone(),
                    us,
                    gflops: flops / us / 1e3,
                })
                .collect(),
        }
    }
}

fn adapter_report(ctx: &GpuContext) -> AdapterReport {
    let l = &ctx.adapter_limits;
    let limits = [
        ("max_buffer_size", l.max_buffer_size),
        (
            "max_storage_buffer_binding_size",
            l.max_storage_buffer_binding_size,
        ),
        (
            "max_storage_buffers_per_shader_stage",
            l.max_storage_buffers_per_shader_stage as u64,
        ),
        (
            "max_compute_workgroup_storage_size",
            l.max_compute_workgroup_storage_size as u64,
        ),
        (
            "max_compute_invocations_per_workgroup",
            l.max_compute_invocations_per_workgroup as u64,
        ),
        (
            "max_compute_workgroups_per_dimension",
            l.max_compute_workgroups_per_dimension as u64,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let f = ctx.adapter_features;
    AdapterReport {
        name: ctx.adapter.name.clone(),
        backend: ctx.adapter.backend.clone(),
        device_type: ctx.adapter.device_type.clone(),
        driver: ctx.adapter.driver.clone(),
        software: ctx.adapter.is_software,
        shader_f16: f.contains(wgpu::Features::SHADER_F16),
        timestamp_query: f.contains(wgpu::Features::TIMESTAMP_QUERY),
        features: f.iter_names().map(|(n, _)| n.to_string()).collect(),
        limits,
    }
}

/// The network input of a forward: seeded noise and the times every row uses.
fn input(w: &Weights, batch: usize) -> (Vec<f32>, Vec<usize>, Vec<f32>, Vec<f32>) {
    let mut shape = vec![batch];
    shape.extend(w.meta.model.sample_shape());
    let x = Rng::new(1).normals(shape.iter().product(), 1.0);
    (x, shape, vec![0.25; batch], vec![0.75; batch])
}

fn parity(
    gpu: &GpuBackend,
    name: &str,
    w: &Weights,
    batch: usize,
    rows: &mut Vec<ParityRow>,
) -> Result<()> {
    // The f16 kernels are held to the CPU backend emulating f16 storage.
    let cpu = CpuBackend::FAST.with_storage(gpu.precision());
    let (op_tol, net_tol, name) = match gpu.precision() {
        Precision::F32 => (OP_TOL, NET_TOL, name.to_string()),
        Precision::F16 => (F16_OP_TOL, F16_NET_TOL, format!("{name} (f16)")),
    };
    let (x, shape, s, t) = input(w, batch);
    // Op by op, each kernel on the CPU's inputs.
    let op = OpParity::new(cpu, gpu);
    let net = w.network(&op)?;
    let want = op.download(&net.velocity(&op, &op.upload(&x, &shape)?, &s, &t)?)?;
    for (family, worst) in op.results()? {
        rows.push(ParityRow {
            model: name.clone(),
            batch,
            scope: family.name().into(),
            calls: worst.calls,
            max_abs: worst.max_abs,
            scale: worst.scale,
            tol: op_tol,
            pass: worst.rel <= op_tol,
        });
    }
    // The whole forward on the GPU alone.
    let gnet = w.network(gpu)?;
    let got = gpu.download(&gnet.velocity(gpu, &gpu.upload(&x, &shape)?, &s, &t)?)?;
    let (abs, scale) = scaled_error(&got, &want);
    rows.push(ParityRow {
        model: name,
        batch,
        scope: "forward".into(),
        calls: 1,
        max_abs: abs,
        scale,
        tol: net_tol,
        pass: abs <= net_tol * scale,
    });
    Ok(())
}

/// Median wall time of forward + readback.
fn wall_forward<B: Backend>(
    b: &B,
    net: &Network<B>,
    w: &Weights,
    batch: usize,
    iters: usize,
) -> Result<f64> {
    let (x, shape, s, t) = input(w, batch);
    let xt = b.upload(&x, &shape)?;
    b.download(&net.velocity(b, &xt, &s, &t)?)?; // warm-up (and compilation / autotuning)
    b.download(&net.velocity(b, &xt, &s, &t)?)?;
    let mut times = Vec::new();
    for _ in 0..iters {
        let t0 = Instant::now();
        b.download(&net.velocity(b, &xt, &s, &t)?)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// One timed dispatch: its op family's label (`conv3x3`, `group_norm`, ...), its layer shape
/// (`conv3x3 32→32 14×14 s1 +res`; the family's name for other ops), GPU seconds and its cost.
#[derive(Debug, Clone)]
struct Dispatch {
    label: String,
    layer: String,
    secs: f64,
    flops: f64,
    bytes: f64,
}

/// GPU-clock times of one forward: the span, and every dispatch.
type Dispatches = Vec<Dispatch>;

/// A forward's time in seconds, with its dispatches where the GPU clock timed them.
type ClockedForward = (f64, Option<Dispatches>);

fn gpu_forward(
    gpu: &GpuBackend,
    w: &Weights,
    batch: usize,
    iters: usize,
) -> Result<Option<(f64, Dispatches)>> {
    if !gpu.has_timestamps() {
        return Ok(None);
    }
    let prof = Profiled::recording(gpu);
    let net = w.network(&prof)?;
    let (x, shape, s, t) = input(w, batch);
    let xt = gpu.upload(&x, &shape)?;
    gpu.download(&net.velocity(&prof, &xt, &s, &t)?)?;
    let mut spans = Vec::new();
    let mut best: Option<Dispatches> = None;
    let mut best_span = f64::INFINITY;
    for _ in 0..iters.max(1) {
        prof.reset();
        gpu.start_timing();
        let y = net.velocity(&prof, &xt, &s, &t)?;
        gpu.sync()?;
        let times = gpu.finish_timing()?.context("timing window was open")?;
        drop(y);
        let calls = prof.calls();
        if times.untimed > 0 || times.dispatches.len() != calls.len() {
            bail!(
                "{} dispatches timed for {} op calls ({} untimed)",
                times.dispatches.len(),
                calls.len(),
                times.untimed
            );
        }
        spans.push(times.span);
        if times.span < best_span {
            best_span = times.span;
            best = Some(
                calls
                    .into_iter()
                    .zip(times.dispatches)
                    .map(|(c, (shader, secs))| Dispatch {
                        // A convolution's layer names the kernel and tile that ran it.
                        layer: if c.label.starts_with("conv") {
                            format!("{} [{shader}]", c.layer)
                        } else {
                            c.layer
                        },
                        label: c.label,
                        secs,
                        flops: c.flops,
                        bytes: c.bytes,
                    })
                    .collect(),
            );
        }
    }
    Ok(Some((median(spans), best.unwrap_or_default())))
}

/// `g`'s forward of `w` at `batch` on the clock a forward row uses: the GPU clock, with the
/// dispatches, where `gpu_clock` (`None` without timestamps), else the wall clock.
fn forward_on_clock(
    g: &GpuBackend,
    w: &Weights,
    batch: usize,
    iters: usize,
    gpu_clock: bool,
) -> Result<Option<ClockedForward>> {
    if gpu_clock {
        return Ok(gpu_forward(g, w, batch, iters)?.map(|(span, d)| (span, Some(d))));
    }
    let net = w.network(g)?;
    Ok(Some((wall_forward(g, &net, w, batch, iters)?, None)))
}

/// `g`'s tuning for `w`'s convolutions at `batch` (`Tuning::measure`, 2 × `iters` dispatches a
/// kernel), and the forward with it on the clock [`forward_on_clock`] uses; the rule's kernels
/// are back when it returns.
fn tuned_forward(
    g: &GpuBackend,
    w: &Weights,
    batch: usize,
    iters: usize,
    gpu_clock: bool,
) -> Result<(Tuning, Option<ClockedForward>)> {
    let t = Tuning::measure(g, w, &[batch], 2 * iters, Clock::Auto, |_| {})?;
    g.use_tuning(&t)?;
    let run = forward_on_clock(g, w, batch, iters, gpu_clock);
    g.clear_tuning();
    Ok((t, run?))
}

/// One forward's timed dispatches summed per op family, as report rows; `suffix` is appended
/// to each family's name.
fn kernel_rows<'a>(
    model: &'a str,
    batch: usize,
    span: f64,
    dispatches: Dispatches,
    peak: f64,
    suffix: &'a str,
) -> impl Iterator<Item = KernelRow> + 'a {
    summed(dispatches, |d| d.label.clone())
        .into_iter()
        .map(move |(kernel, sum)| {
            kernel_row(model, batch, format!("{kernel}{suffix}"), sum, span, peak)
        })
}

/// A report row from (dispatches, seconds, flops, bytes) summed over a forward of `span` s.
fn kernel_row(
    model: &str,
    batch: usize,
    kernel: String,
    (count, secs, flops, bytes): (usize, f64, f64, f64),
    span: f64,
    peak: f64,
) -> KernelRow {
    let secs = secs.max(1e-9);
    KernelRow {
        model: model.into(),
        batch,
        kernel,
        dispatches: count,
        ms: secs * 1e3,
        share: secs / span.max(1e-9),
        gflops: flops / secs / 1e9,
        gbytes_per_s: bytes / secs / 1e9,
        pct_of_peak: 100.0 * flops / secs / 1e9 / peak,
    }
}

/// (dispatches, seconds, flops, bytes) summed per key.
fn summed(
    dispatches: Dispatches,
    key: impl Fn(&Dispatch) -> String,
) -> BTreeMap<String, (usize, f64, f64, f64)> {
    let mut by: BTreeMap<String, (usize, f64, f64, f64)> = BTreeMap::new();
    for d in dispatches {
        let e = by.entry(key(&d)).or_default();
        e.0 += 1;
        e.1 += d.secs;
        e.2 += d.flops;
        e.3 += d.bytes;
    }
    by
}

/// One forward's convolutions summed per layer shape, slowest first: which layers hold the
/// convolution back on this adapter.
fn layer_rows(
    model: &str,
    batch: usize,
    span: f64,
    dispatches: Dispatches,
    peak: f64,
) -> Vec<KernelRow> {
    let convs = dispatches
        .into_iter()
        .filter(|d| d.label.starts_with("conv"))
        .collect();
    let mut rows: Vec<KernelRow> = summed(convs, |d| d.layer.clone())
        .into_iter()
        .map(|(layer, sum)| kernel_row(model, batch, layer, sum, span, peak))
        .collect();
    rows.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    rows
}

/// flowmap's linear kernel on an n×n by n×n product, GPU clock where it can (else wall clock).
fn wgsl_matmul(gpu: &GpuBackend, n: usize, iters: usize) -> Result<f64> {
    let a = gpu.upload(&Rng::new(3).normals(n * n, 1.0), &[n, n])?;
    let w = gpu.upload(&Rng::new(4).normals(n * n, 1.0), &[n, n])?;
    let b = gpu.upload(&vec![0.0; n], &[n])?;
    let act = flowmap::config::Activation::None;
    gpu.download(&gpu.linear(&a, &w, &b, None, act))?;
    let mut times = Vec::new();
    for _ in 0..iters.max(3) {
        let t0 = Instant::now();
        let timing = gpu.start_timing();
        let y = gpu.linear(&a, &w, &b, None, act);
        gpu.sync()?;
        let secs = match (timing, gpu.finish_timing()?) {
            (true, Some(t)) => t.span,
            _ => t0.elapsed().as_secs_f64(),
        };
        drop(y);
        times.push(secs);
    }
    Ok(median(times))
}

fn burn_forward(w: &Weights, batch: usize, iters: usize) -> Result<f64> {
    let dev = Device::wgpu(DeviceKind::DefaultDevice);
    let be = BurnBackend::new(dev.clone());
    let net = ParamStore::from_weights(w, &dev)?.network(&w.meta.model)?;
    wall_forward(&be, &net, w, batch, iters)
}

fn sampling(gpu: &GpuBackend, name: &str, w: &Weights, n: usize, k: usize) -> Result<SampleRow> {
    let net = w.network(gpu)?;
    let noise = sampler::initial_noise(&w.meta, n, 0);
    let grid = sampler::uniform_grid(k)?;
    sampler::sample(gpu, &net, &noise, &grid, Integrator::FlowMap, n)?; // warm-up
    let mut times = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        sampler::sample(gpu, &net, &noise, &grid, Integrator::FlowMap, n)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    let secs = median(times);
    Ok(SampleRow {
        model: name.into(),
        precision: gpu.precision().to_string(),
        samples: n,
        jumps: k,
        ms: secs * 1e3,
        samples_per_s: n as f64 / secs,
    })
}

/// Runs the whole report and writes it to `out` (gpu-report.md, gpu-report.json). Errors only
/// when no adapter opens or the report cannot be written; a failed section is noted in the report
/// and makes [`Report::failed`] true.
pub fn run(out: &Path, dry_run: bool, log: &mut dyn FnMut(&str)) -> Result<Report> {
    let started = Instant::now();
    let sizes = if dry_run {
        Sizes::dry_run()
    } else {
        Sizes::full()
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let gpu = GpuBackend::new(GpuContext::new(true).context("opening a GPU adapter")?);
    gpu.warm_up()?;
    let adapter = adapter_report(gpu.context());
    log(&format!(
        "adapter: {} (shader-f16 {}, timestamps {})",
        gpu.context().adapter,
        adapter.shader_f16,
        adapter.timestamp_query
    ));
    let mut notes: Vec<String> = Vec::new();
    // The f16 storage path (issue 10 §3) on a second device of the same adapter.
    let gpu16 = if adapter.shader_f16 {
        let g = GpuContext::new(true).and_then(|c| GpuBackend::with_precision(c, Precision::F16));
        match g.and_then(|g| g.warm_up().map(|_| g)) {
            Ok(g) => Some(g),
            Err(e) => {
                notes.push(format!("f16: the f16 backend failed to open: {e}"));
                None
            }
        }
    } else {
        notes.push("no SHADER_F16: f16 storage is not offered, f16 rows are absent".into());
        None
    };
    let gpus: Vec<&GpuBackend> = std::iter::once(&gpu).chain(gpu16.as_ref()).collect();
    // The kernels as wgpu compiles them by default, with a loop counter in every loop
    // (flowmap::gpu::ShaderChecks): what turning that off gains, timed on a third device.
    let bounded = GpuContext::new(true)
        .map(|c| GpuBackend::new(c).with_shader_checks(ShaderChecks::Wgpu))
        .and_then(|g| g.warm_up().map(|_| g));
    let bounded = match bounded {
        Ok(g) => Some(g),
        Err(e) => {
            notes.push(format!(
                "the backend with wgpu's loop bounding failed to open: {e}"
            ));
            None
        }
    };
    if adapter.software {
        notes.push(
            "software adapter: the numbers below check the code paths, not kernel quality".into(),
        );
    }
    let clock = if gpu.has_timestamps() {
        "gpu timestamps"
    } else {
        notes.push("no timestamp queries: GPU times are wall clock".into());
        "wall clock"
    };
    let mut report = Report {
        dry_run,
        sizes: sizes.clone(),
        adapter,
        clock: clock.into(),
        parity: Vec::new(),
        peaks: Vec::new(),
        forward: Vec::new(),
        kernels: Vec::new(),
        layers: Vec::new(),
        sweep: Vec::new(),
        tuning: None,
        tuning_f16: None,
        sampling: Vec::new(),
        goals: Vec::new(),
        notes: std::mem::take(&mut notes),
        seconds: 0.0,
    };
    let models: Vec<(&str, Weights)> = ["mnist", "checkerboard"]
        .iter()
        .map(|n| Ok((*n, flowmap::models::find(n)?.load()?)))
        .collect::<Result<_>>()?;
    let model = |n: &str| pick(&models, n);
    let big_batch = *sizes.unet_batches.iter().max().unwrap_or(&1);
    let batches = |n: &str| {
        if n == "mnist" {
            sizes.unet_batches.clone()
        } else {
            sizes.mlp_batches.clone()
        }
    };

    // 2. Parity.
    for (name, batch) in [
        ("mnist", sizes.parity_unet),
        ("checkerboard", sizes.parity_mlp),
    ] {
        for g in &gpus {
            let p = g.precision();
            log(&format!("parity: {name} at batch {batch} ({p})"));
            if let Err(e) = parity(g, name, model(name), batch, &mut report.parity) {
                report.notes.push(format!(
                    "parity {name} batch {batch} ({p}) failed to run: {e:#}"
                ));
                report.parity.push(ParityRow {
                    model: name.into(),
                    batch,
                    scope: "error".into(),
                    calls: 0,
                    max_abs: f32::NAN,
                    scale: f32::NAN,
                    tol: OP_TOL,
                    pass: false,
                });
            }
            report.save(out, started)?;
        }
    }

    // 3. Peaks.
    log(&format!("matmul {0}×{0}×{0}", sizes.matmul));
    let n = sizes.matmul;
    let flop = 2.0 * (n as f64).powi(3);
    let mut peaks = Vec::new();
    let burn_peak = std::panic::catch_unwind(|| {
        crate::profile::matmul_gflops(&Device::wgpu(DeviceKind::DefaultDevice), n)
    });
    match burn_peak {
        Ok(g) => peaks.push(PeakRow {
            what: "burn-wgpu matmul (wall clock, with a sum readback)".into(),
            n,
            ms: flop / g / 1e6,
            gflops: g,
        }),
        Err(_) => notes.push("burn-wgpu matmul panicked".into()),
    }
    match wgsl_matmul(&gpu, n, sizes.iters) {
        Ok(secs) => peaks.push(PeakRow {
            what: format!("flowmap linear.wgsl ({clock})"),
            n,
            ms: secs * 1e3,
            gflops: flop / secs / 1e9,
        }),
        Err(e) => notes.push(format!("flowmap matmul failed: {e:#}")),
    }
    if let Some(b) = &bounded {
        match wgsl_matmul(b, n, sizes.iters) {
            Ok(secs) => peaks.push(PeakRow {
                what: format!("flowmap linear.wgsl with wgpu's loop bounding ({clock})"),
                n,
                ms: secs * 1e3,
                gflops: flop / secs / 1e9,
            }),
            Err(e) => notes.push(format!("flowmap matmul with loop bounding failed: {e:#}")),
        }
    }
    let peak = peaks.iter().map(|p| p.gflops).fold(0.0, f64::max).max(1e-9);
    report.peaks = peaks;
    report.notes.append(&mut notes);
    report.save(out, started)?;

    // Sampling.
    for &n in &sizes.sample_counts {
        for &k in &sizes.jumps {
            for g in &gpus {
                let p = g.precision();
                log(&format!("sampling: {n} MNIST samples at K = {k} ({p})"));
                match sampling(g, "mnist", model("mnist"), n, k) {
                    Ok(r) => report.sampling.push(r),
                    Err(e) => notes.push(format!("sampling {n} at K = {k} ({p}) failed: {e:#}")),
                }
            }
        }
    }
    report.notes.append(&mut notes);
    report.save(out, started)?;

    // Forwards and kernels.
    for name in ["mnist", "checkerboard"] {
        let w = model(name);
        for batch in batches(name) {
            log(&format!("forward: {name} at batch {batch}"));
            let gflop = flowmap::net::forward_costs(&w.meta.model, batch)?.total_flops() / 1e9;
            let net = w.network(&gpu)?;
            let wall = match wall_forward(&gpu, &net, w, batch, sizes.iters) {
                Ok(v) => v,
                Err(e) => {
                    notes.push(format!("{name} batch {batch}: WGSL forward failed: {e:#}"));
                    continue;
                }
            };
            let timed = match gpu_forward(&gpu, w, batch, sizes.iters) {
                Ok(t) => t,
                Err(e) => {
                    notes.push(format!("{name} batch {batch}: GPU timing failed: {e:#}"));
                    None
                }
            };
            let burn = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                burn_forward(w, batch, sizes.iters)
            })) {
                Ok(Ok(v)) => Some(v),
                Ok(Err(e)) => {
                    notes.push(format!("{name} batch {batch}: burn-wgpu failed: {e:#}"));
                    None
                }
                Err(_) => {
                    notes.push(format!("{name} batch {batch}: burn-wgpu panicked"));
                    None
                }
            };
            let gpu_secs = timed.as_ref().map(|t| t.0);
            let secs = gpu_secs.unwrap_or(wall);
            // The same forward with wgpu's loop bounding, and with f16 storage (with its
            // dispatches where the GPU clock timed them), each on the same clock as `secs`.
            let gpu_clock = gpu_secs.is_some();
            let mut also = |g: &GpuBackend, what: &str| {
                forward_on_clock(g, w, batch, sizes.iters, gpu_clock).unwrap_or_else(|e| {
                    notes.push(format!("{name} batch {batch}: {what} failed: {e:#}"));
                    None
                })
            };
            let bounded_secs = bounded
                .as_ref()
                .and_then(|b| also(b, "forward with loop bounding"))
                .map(|t| t.0);
            let f16_run = gpu16.as_ref().and_then(|g16| also(g16, "f16 forward"));
            let f16_secs = f16_run.as_ref().map(|t| t.0);
            let f16_timed = f16_run.and_then(|(span, d)| d.map(|d| (span, d)));
            report.forward.push(ForwardRow {
                model: name.into(),
                batch,
                gflop,
                wgsl_gpu_ms: gpu_secs.map(|s| s * 1e3),
                wgsl_wall_ms: wall * 1e3,
                burn_wall_ms: burn.map(|s| s * 1e3),
                wgsl_f16_ms: f16_secs.map(|s| s * 1e3),
                wgsl_bounded_ms: bounded_secs.map(|s| s * 1e3),
                bounded_over_default: bounded_secs.map(|s| s / secs),
                wgsl_tuned_ms: None,
                wgsl_f16_tuned_ms: None,
                f16_over_f32: f16_secs.map(|s| s / secs),
                wgsl_gflops: gflop / secs,
                pct_of_peak: 100.0 * gflop / secs / peak,
                wgsl_over_burn: burn.map(|b| wall / b),
            });
            if let Some((span, dispatches)) = timed {
                if name == "mnist" && (batch == 1 || batch == big_batch) {
                    report
                        .layers
                        .extend(layer_rows(name, batch, span, dispatches.clone(), peak));
                }
                report
                    .kernels
                    .extend(kernel_rows(name, batch, span, dispatches, peak, ""));
                // The convolutions again with conv2d.wgsl alone (the implicit GEMM with
                // ConvTile::for_layer's tiles: what conv3x3.wgsl gains or loses) and with its
                // 64 × 64 tile alone (what the per-layer tiles gain or lose), on this adapter.
                if name == "mnist" {
                    for (tiles, suffix) in [
                        (ConvTiles::GemmOnly, " (conv2d.wgsl only)"),
                        (ConvTiles::Fixed(ConvTile::C64), " (64×64 tiles)"),
                    ] {
                        gpu.set_conv_tiles(tiles);
                        match gpu_forward(&gpu, w, batch, sizes.iters) {
                            Ok(Some((span, d))) => {
                                if batch == big_batch && tiles == ConvTiles::GemmOnly {
                                    report.layers.extend(
                                        layer_rows(name, batch, span, d.clone(), peak)
                                            .into_iter()
                                            .map(|r| KernelRow {
                                                kernel: format!("{}{suffix}", r.kernel),
                                                ..r
                                            }),
                                    );
                                }
                                report.kernels.extend(
                                    kernel_rows(name, batch, span, d, peak, suffix)
                                        .filter(|k| k.kernel.starts_with("conv")),
                                )
                            }
                            Ok(None) => {}
                            Err(e) => notes.push(format!(
                                "{name} batch {batch}: timing the convolutions{suffix} failed: {e:#}"
                            )),
                        }
                    }
                    gpu.set_conv_tiles(ConvTiles::ByLayer);
                }
            }
            if name == "mnist" {
                log(&format!("convolutions alone: {name} at batch {batch}"));
                // The tuning measured in each storage precision, and the forward again with
                // it (what `flowmap sample --tuning` runs), on the default's clock. The sweep
                // table lists the f32 measurement; both are written beside the report.
                for g in &gpus {
                    let f16 = g.precision() == Precision::F16;
                    let tuned = tuned_forward(g, w, batch, sizes.iters, gpu_clock);
                    let (t, run) = match tuned {
                        Ok(v) => v,
                        Err(e) => {
                            notes.push(format!(
                                "{name} batch {batch} ({}): tuning failed: {e:#}",
                                g.precision()
                            ));
                            continue;
                        }
                    };
                    if let Some(row) = report
                        .forward
                        .iter_mut()
                        .rev()
                        .find(|f| f.model == name && f.batch == batch)
                    {
                        let ms = run.as_ref().map(|r| r.0 * 1e3);
                        if f16 {
                            row.wgsl_f16_tuned_ms = ms;
                        } else {
                            row.wgsl_tuned_ms = ms;
                        }
                    }
                    if !f16 {
                        report.sweep.extend(t.convs.iter().map(SweepRow::new));
                        if let Some((span, Some(d))) = run {
                            report.kernels.extend(
                                kernel_rows(name, batch, span, d, peak, " (tuned)")
                                    .filter(|k| k.kernel.starts_with("conv")),
                            );
                        }
                    }
                    let all = if f16 {
                        &mut report.tuning_f16
                    } else {
                        &mut report.tuning
                    };
                    match all {
                        Some(all) => all.convs.extend(t.convs),
                        None => *all = Some(t),
                    }
                }
            }
            // The f16 forward's kernels: its traffic is half the f32 count (every stored value
            // is an f16), so GB/s compare like for like.
            if let Some((span, d)) = f16_timed {
                let d = d
                    .into_iter()
                    .map(|d| Dispatch {
                        bytes: d.bytes / 2.0,
                        ..d
                    })
                    .collect();
                report
                    .kernels
                    .extend(kernel_rows(name, batch, span, d, peak, " (f16)"));
            }
            report.notes.append(&mut notes);
            report.save(out, started)?;
        }
    }

    report.goals = goals(
        &report.sizes,
        &report.forward,
        &report.kernels,
        &report.sampling,
        &report.peaks,
    );
    report.save(out, started)?;
    Ok(report)
}

fn pick<'a>(models: &'a [(&str, Weights)], name: &str) -> &'a Weights {
    &models
        .iter()
        .find(|m| m.0 == name)
        .expect("a shipped model")
        .1
}

/// The performance goals (issue 10 §2), checked against this run.
fn goals(
    sizes: &Sizes,
    forward: &[ForwardRow],
    kernels: &[KernelRow],
    samples: &[SampleRow],
    peaks: &[PeakRow],
) -> Vec<Goal> {
    let mut goals = Vec::new();
    let big = *sizes.unet_batches.iter().max().unwrap_or(&1);
    for batch in [64, big] {
        let row = forward
            .iter()
            .find(|r| r.model == "mnist" && r.batch == batch);
        goals.push(Goal {
            goal: format!("WGSL U-Net forward ≤ 0.5× burn-wgpu's at batch {batch}"),
            measured: match row.and_then(|r| r.wgsl_over_burn) {
                Some(x) => format!("{x:.2}×"),
                None => "not measured".into(),
            },
            met: row.and_then(|r| r.wgsl_over_burn).map(|x| x <= 0.5),
        });
    }
    let burn_peak = peaks.iter().find(|p| p.what.starts_with("burn"));
    let conv_row = |kernel: &str| {
        kernels
            .iter()
            .find(|k| k.model == "mnist" && k.batch == big && k.kernel == kernel)
    };
    let conv = conv_row("conv3x3");
    goals.push(Goal {
        goal: format!("conv3x3 ≥ 70% of the same-run matmul (burn-wgpu) at batch {big}"),
        measured: match (conv, burn_peak) {
            (Some(c), Some(p)) => {
                let share = |c: &KernelRow| {
                    format!(
                        "{:.0} GFLOP/s = {:.0}%",
                        c.gflops,
                        100.0 * c.gflops / p.gflops
                    )
                };
                let tuned = conv_row("conv3x3 (tuned)")
                    .map(|t| format!("; tuned: {}", share(t)))
                    .unwrap_or_default();
                format!("{} of {:.0}{tuned}", share(c), p.gflops)
            }
            _ => "not measured".into(),
        },
        met: match (conv, burn_peak) {
            (Some(c), Some(p)) => Some(c.gflops >= 0.7 * p.gflops),
            _ => None,
        },
    });
    // The faster of the two storage precisions: `--precision auto` takes f16 where it exists.
    let rows: Vec<&SampleRow> = samples
        .iter()
        .filter(|s| s.samples == 64 && s.jumps == 4)
        .collect();
    let best = rows.iter().map(|s| s.ms).fold(f64::INFINITY, f64::min);
    goals.push(Goal {
        goal: "64 MNIST samples at K = 4 in < 20 ms end to end (H100-class)".into(),
        measured: if rows.is_empty() {
            "not measured".into()
        } else {
            rows.iter()
                .map(|s| format!("{:.2} ms ({})", s.ms, s.precision))
                .collect::<Vec<_>>()
                .join(", ")
        },
        met: (!rows.is_empty()).then_some(best < 20.0),
    });
    goals
}

/// A rate with three significant digits or so, whatever its size.
fn rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

impl Report {
    /// Writes gpu-report.json and gpu-report.md as they stand (after every section, so a run
    /// cut short still leaves what it measured).
    fn save(&mut self, out: &Path, started: Instant) -> Result<()> {
        self.seconds = started.elapsed().as_secs_f64();
        for (t, file) in [
            (&self.tuning, "tuning.json"),
            (&self.tuning_f16, "tuning-f16.json"),
        ] {
            if let Some(t) = t {
                write_atomic(&out.join(file), t.to_json().as_bytes())?;
            }
        }
        write_atomic(
            &out.join("gpu-report.json"),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )?;
        Ok(write_atomic(
            &out.join("gpu-report.md"),
            self.markdown().as_bytes(),
        )?)
    }

    /// True when a parity check failed or could not run.
    pub fn failed(&self) -> bool {
        self.parity.iter().any(|p| !p.pass)
    }

    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let a = &self.adapter;
        let _ = writeln!(
            m,
            "# flowmap GPU report{}\n",
            if self.dry_run {
                " (dry run: tiny sizes)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            m,
            "Written by `scripts/gpu-report.sh` (`trainer gpu-report`) in {:.0} s. Times of flowmap's kernels are on the {}.\n",
            self.seconds, self.clock
        );
        let _ = writeln!(m, "## Adapter\n");
        let _ = writeln!(m, "| | |\n|---|---|");
        let _ = writeln!(m, "| name | {} |", a.name);
        let _ = writeln!(m, "| backend | {} |", a.backend);
        let _ = writeln!(
            m,
            "| type | {}{} |",
            a.device_type,
            if a.software { " (software)" } else { "" }
        );
        let _ = writeln!(m, "| driver | {} |", a.driver);
        let _ = writeln!(m, "| SHADER_F16 | {} |", a.shader_f16);
        let _ = writeln!(m, "| TIMESTAMP_QUERY | {} |", a.timestamp_query);
        for (k, v) in &a.limits {
            let _ = writeln!(m, "| {k} | {v} |");
        }
        let _ = writeln!(m, "| features | {} |\n", a.features.join(", "));

        let _ = writeln!(m, "## Parity (GPU against the CPU backend)\n");
        let _ = writeln!(m, "Each op family: every call of one forward, the GPU kernel run on the CPU's inputs; `forward`: the whole network on the GPU against the CPU. Pass: max |gpu − cpu| ≤ tol × scale, scale = max(1, max |cpu|).\n");
        let _ = writeln!(m, "| model | batch | scope | calls | max abs | scale | tol | pass |\n|---|---:|---|---:|---:|---:|---:|---|");
        for p in &self.parity {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {:.3e} | {:.3} | {:.0e} | {} |",
                p.model,
                p.batch,
                p.scope,
                p.calls,
                p.max_abs,
                p.scale,
                p.tol,
                if p.pass { "yes" } else { "**NO**" }
            );
        }
        let _ = writeln!(
            m,
            "\n## Reachable peak\n\n| what | n | ms | GFLOP/s |\n|---|---:|---:|---:|"
        );
        for p in &self.peaks {
            let _ = writeln!(
                m,
                "| {} | {} | {:.3} | {} |",
                p.what,
                p.n,
                p.ms,
                rate(p.gflops)
            );
        }
        let _ = writeln!(
            m,
            "\n## Forward: flowmap WGSL against burn-wgpu (same adapter, same weights)\n"
        );
        let _ = writeln!(m, "WGSL GPU: first pass start to last pass end on the GPU clock. Wall: forward + readback of the output, input already on the GPU. % of peak: WGSL GFLOP/s (GPU clock where there is one) against the best matmul above. burn-wgpu: burn 0.22 with its `autotune` and `fusion` features (as burn-wgpu's defaults), the trainer's training backend; its warm-up forward absorbs the autotuning.\n");
        let _ = writeln!(m, "f16: the WGSL forward with f16 storage and f32 arithmetic (where the adapter has SHADER_F16), on the GPU clock where there is one, else wall; f16 ÷ f32 on that same clock.\n");
        let _ = writeln!(m, "| model | batch | GFLOP | WGSL GPU ms | WGSL wall ms | burn-wgpu wall ms | WGSL ÷ burn (wall) | WGSL GFLOP/s | % of peak | WGSL f16 ms | f16 ÷ f32 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for f in &self.forward {
            let _ = writeln!(
                m,
                "| {} | {} | {:.3} | {} | {:.3} | {} | {} | {} | {:.1} | {} | {} |",
                f.model,
                f.batch,
                f.gflop,
                opt(f.wgsl_gpu_ms, 3),
                f.wgsl_wall_ms,
                opt(f.burn_wall_ms, 3),
                opt(f.wgsl_over_burn, 2),
                rate(f.wgsl_gflops),
                f.pct_of_peak,
                opt(f.wgsl_f16_ms, 3),
                opt(f.f16_over_f32, 2)
            );
        }
        variant_table(
            &mut m,
            "## Loop bounding (wgpu's runtime checks)\n\nThe same WGSL forward compiled as wgpu does by default, with a 64-bit counter in every loop (`ShaderChecks::Wgpu`, how the kernels ran until the sixteenth session), against the default without it (`ShaderChecks::NoLoopBounding`); bounds and division checks stay in both. Same clock as the forward table. The matmul's two rows are in \"Reachable peak\".",
            "| default ms | with loop bounding ms | bounded ÷ default |",
            &self.forward,
            |f| (Some(f.default_ms()), f.wgsl_bounded_ms),
        );
        variant_table(
            &mut m,
            "## Kernels tuned by measurement\n\nThe WGSL forward with, for every convolution, the kernel that ran it fastest in \"Convolutions alone, by kernel\" below (the run's tuning.json: `flowmap tune` and `sample --tuning`, src/gpu/tune.rs), against the default, whose kernels `ConvKernel::for_layer`'s rule picks. Same clock as the forward table.",
            "| rule's kernels ms | tuned ms | tuned ÷ rule |",
            &self.forward,
            |f| (Some(f.default_ms()), f.wgsl_tuned_ms),
        );
        variant_table(
            &mut m,
            "The same in f16 storage, with the tuning measured in f16 (tuning-f16.json), against the f16 forward with the rule's kernels:",
            "| f16, rule's kernels ms | f16 tuned ms | tuned ÷ rule |",
            &self.forward,
            |f| (f.wgsl_f16_ms, f.wgsl_f16_tuned_ms),
        );
        kernel_table(
            &mut m,
            "## Kernels (GPU clock, one forward)",
            "kernel",
            &self.kernels,
        );
        kernel_table(
            &mut m,
            "## Convolutions by layer (GPU clock, one forward, slowest first)\n\nEach U-Net convolution by input → output channels, input size and stride (the key of `flowmap bench --layers`); in brackets the shader that ran it (`ConvKernel::for_layer`'s choice, src/gpu/tiles.rs: conv3x3.wgsl for the large same-size 3×3 layers, else conv2d.wgsl or its `#c32`/`#c16` tiles); at the largest batch the same layers again with conv2d.wgsl alone.",
            "layer",
            &self.layers,
        );
        sweep_table(&mut m, &self.sweep, &self.clock);
        let _ = writeln!(m, "\n## Sampling (end to end: upload, K jumps, readback; wall clock)\n\n| model | storage | samples | K | ms | samples/s |\n|---|---|---:|---:|---:|---:|");
        for s in &self.sampling {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {:.2} | {:.0} |",
                s.model, s.precision, s.samples, s.jumps, s.ms, s.samples_per_s
            );
        }
        let _ = writeln!(
            m,
            "\n## Goals (issue 10)\n\n| goal | measured | met |\n|---|---|---|"
        );
        for g in &self.goals {
            let met = match g.met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "–",
            };
            let _ = writeln!(m, "| {} | {} | {met} |", g.goal, g.measured);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(m, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(m, "- {n}");
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispatch(label: &str, layer: &str, secs: f64) -> Dispatch {
        Dispatch {
            label: label.into(),
            layer: layer.into(),
            secs,
            flops: 2e9 * secs,
            bytes: 1e6,
        }
    }

    /// The per-layer table sums the dispatches of each convolution shape, leaves the other ops
    /// out, and lists the slowest layer first.
    #[test]
    fn layer_rows_sum_each_convolution_shape_slowest_first() {
        let d = vec![
            dispatch("conv3x3", "conv3x3 16→16 28×28 s1", 0.001),
            dispatch("group_norm", "group_norm", 0.005),
            dispatch("conv1x1", "conv1x1 32→16 28×28 s1", 0.0015),
            dispatch("conv3x3", "conv3x3 16→16 28×28 s1", 0.001),
        ];
        let rows = layer_rows("mnist", 4, 0.01, d, 100.0);
        let got: Vec<(&str, usize)> = rows
            .iter()
            .map(|r| (r.kernel.as_str(), r.dispatches))
            .collect();
        assert_eq!(
            got,
            [("conv3x3 16→16 28×28 s1", 2), ("conv1x1 32→16 28×28 s1", 1)]
        );
        assert!((rows[0].ms - 2.0).abs() < 1e-9 && (rows[0].share - 0.2).abs() < 1e-9);
        assert!((rows[0].gflops - 2.0).abs() < 1e-9 && (rows[0].pct_of_peak - 2.0).abs() < 1e-9);
    }
}
