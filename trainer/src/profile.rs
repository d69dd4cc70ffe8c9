//! `trainer bench --profile`: where the time of a training step goes. Each op of the burn
//! backend is timed where it runs (flex executes eagerly, so an op's wall time is its cost); the
//! backward pass, which burn runs as one call, is split by replaying every recorded op that
//! carries a gradient in isolation (forward, then forward + backward of its sum); what no op
//! accounts for is burn's graph and allocation overhead. FLOPs come from flowmap's shape backend,
//! the same accounting as `flowmap info` and `flowmap bench`, and a large matmul through burn in
//! the same run gives the rate the step's arithmetic is held against.

use crate::burn_backend::{BurnBackend, BurnTensor};
use crate::config::TrainConfig;
use crate::train::{Session, StepTimes};
use anyhow::Result;
use burn::tensor::{Device, Distribution, Tensor};
use flowmap::backend::{Backend, Conv2d, OpFamily};
use flowmap::config::Activation;
use flowmap::shape::{ShapeBackend, ShapeTensor};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One op call with the shapes needed to cost and replay it.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Conv2d {
        x: [usize; 4],
        w: [usize; 4],
        geom: Conv2d,
        residual: bool,
    },
    GroupNorm {
        x: [usize; 4],
        groups: usize,
        modulation: bool,
        silu: bool,
    },
    Linear {
        n: usize,
        inp: usize,
        out: usize,
        modulation: bool,
        act: Activation,
    },
    Attention {
        n: usize,
        c: usize,
        l: usize,
        heads: usize,
    },
    /// Ops too cheap to replay (embedding, upsample, concat, elementwise).
    Other(OpFamily),
}

impl Op {
    pub fn family(&self) -> OpFamily {
        match self {
            Op::Conv2d { .. } => OpFamily::Conv2d,
            Op::GroupNorm { .. } => OpFamily::GroupNorm,
            Op::Linear { .. } => OpFamily::Linear,
            Op::Attention { .. } => OpFamily::Attention,
            Op::Other(f) => *f,
        }
    }

    /// The shapes of the op's tensor operands, in the order [`Op::call`] takes them; None for
    /// `Other`.
    fn operands(&self) -> Option<Vec<Vec<usize>>> {
        Some(match self {
            Op::Conv2d {
                x,
                w,
                geom,
                residual,
                ..
            } => {
                let mut v = vec![x.to_vec(), w.to_vec(), vec![w[0]]];
                if *residual {
                    v.push(flowmap::backend::conv2d_out_shape(x, w, *geom));
                }
                v
            }
            Op::GroupNorm { x, modulation, .. } => {
                let mut v = vec![x.to_vec(), vec![x[1]], vec![x[1]]];
                if *modulation {
                    v.push(vec![x[0], 2 * x[1]]);
                }
                v
            }
            Op::Linear {
                n,
                inp,
                out,
                modulation,
                ..
            } => {
                let mut v = vec![vec![*n, *inp], vec![*out, *inp], vec![*out]];
                if *modulation {
                    v.push(vec![*n, 2 * out]);
                }
                v
            }
            Op::Attention { n, c, l, .. } => vec![vec![*n, 3 * c, *l]],
            Op::Other(_) => return None,
        })
    }

    /// Runs the op on `be` with operands shaped as [`Op::operands`] says.
    fn call<B: Backend>(&self, be: &B, t: &[B::Tensor]) -> Option<B::Tensor> {
        Some(match self {
            Op::Conv2d { geom, .. } => be.conv2d(&t[0], &t[1], &t[2], *geom, t.get(3)),
            Op::GroupNorm { groups, silu, .. } => {
                be.group_norm(&t[0], &t[1], &t[2], *groups, 1e-5, t.get(3), *silu)
            }
            Op::Linear { act, .. } => be.linear(&t[0], &t[1], &t[2], t.get(3), *act),
            Op::Attention { heads, .. } => be.attention(&t[0], *heads),
            Op::Other(_) => return None,
        })
    }

    /// Forward FLOPs, as flowmap's shape backend counts them (0 for `Other`).
    pub fn flops(&self) -> f64 {
        let sb = ShapeBackend::new();
        if let Some(shapes) = self.operands() {
            let t: Vec<ShapeTensor> = shapes.into_iter().map(ShapeTensor).collect();
            self.call(&sb, &t);
        }
        sb.total_flops()
    }

    /// Seconds of (forward, forward + backward) of this op alone on `device` (autodiff), the
    /// median of `reps` runs after one warm-up; None for `Other`.
    fn replay(&self, device: &Device, reps: usize, fast_ops: bool) -> Option<(f64, f64)> {
        let mut be = BurnBackend::new(device.clone());
        be.fast_ops = be.fast_ops && fast_ops;
        let shapes = self.operands()?;
        let run = |backward: bool| -> f64 {
            let t: Vec<BurnTensor> = shapes
                .iter()
                .map(|s| {
                    let numel: usize = s.iter().product();
                    let v = Tensor::<1>::random([numel], Distribution::Normal(0.0, 0.5), device)
                        .require_grad();
                    BurnTensor::from_flat(v, s)
                })
                .collect();
            let start = Instant::now();
            match self.call(&be, &t) {
                Some(y) => finish(start, y, backward, device),
                None => 0.0,
            }
        };
        run(true);
        let median =
            |backward: bool| flowmap::bench::median((0..reps).map(|_| run(backward)).collect());
        Some((median(false), median(true)))
    }
}

/// Seconds from `start` until `y` (and, if asked, the backward of its sum) is computed. The
/// backward waits for the device: on burn-wgpu `backward()` returns once its kernels are queued.
fn finish(start: Instant, y: BurnTensor, backward: bool, device: &Device) -> f64 {
    let s = y.t.sum();
    if backward {
        let g = s.backward();
        let _ = device.sync();
        drop(g);
    } else {
        let _ = s.into_scalar::<f32>();
    }
    start.elapsed().as_secs_f64()
}

/// One recorded op call.
#[derive(Debug, Clone)]
pub struct OpCall {
    pub op: Op,
    pub secs: f64,
    /// Whether the output carries a gradient (the op is differentiated in the backward pass).
    pub grad: bool,
}

/// A shared log of op calls.
#[derive(Debug, Clone, Default)]
pub struct OpLog(Arc<Mutex<Vec<OpCall>>>);

impl OpLog {
    pub fn record(&self, call: OpCall) {
        if let Ok(mut v) = self.0.lock() {
            v.push(call);
        }
    }

    pub fn take(&self) -> Vec<OpCall> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// burn's matmul rate on `device` for an n×n×n product (median of 5), in GFLOP/s.
pub fn matmul_gflops(device: &Device, n: usize) -> f64 {
    let a = Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), device);
    let b = Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), device);
    let _ = a.clone().matmul(b.clone()).sum().into_scalar::<f32>();
    let mut v: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let _ = a.clone().matmul(b.clone()).sum().into_scalar::<f32>();
            start.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    2.0 * (n as f64).powi(3) / v[2] / 1e9
}

#[derive(Default, Clone, Copy)]
struct Row {
    calls: usize,
    fwd_secs: f64,
    fwd_flops: f64,
    bwd_secs: f64,
    bwd_flops: f64,
}

/// Profiles `steps` training steps of `cfg` on `device` (after one warm-up step) and prints the
/// breakdown as Markdown.
/// With `burn_ops`, flex runs burn's own conv2d and GroupNorm instead of [`crate::flex_ops`]
/// (the "before" of docs/BENCHMARKS.md).
pub fn run(
    cfg: &TrainConfig,
    device: Device,
    steps: usize,
    label: &str,
    burn_ops: bool,
) -> Result<()> {
    let mut sess = Session::open(cfg, device.clone(), None)?;
    if burn_ops {
        sess.be.fast_ops = false;
    }
    sess.step()?; // warm-up: first allocations
    let log = OpLog::default();
    sess.be.profile = Some(log.clone());
    let mut times = StepTimes::default();
    let started = Instant::now();
    for _ in 0..steps {
        let t = sess.step()?.times;
        times.data += t.data;
        times.forward += t.forward;
        times.backward += t.backward;
        times.update += t.update;
    }
    let total = started.elapsed().as_secs_f64();
    sess.be.profile = None;
    let calls = log.take();
    let per = |x: f64| x / steps as f64;

    // Aggregate by family; replay each distinct differentiated op once.
    let mut rows: BTreeMap<OpFamily, Row> = BTreeMap::new();
    let mut distinct: Vec<(Op, usize)> = Vec::new();
    for c in &calls {
        let r = rows.entry(c.op.family()).or_default();
        r.calls += 1;
        r.fwd_secs += c.secs;
        r.fwd_flops += c.op.flops();
        if c.grad && !matches!(c.op, Op::Other(_)) {
            match distinct.iter_mut().find(|(op, _)| *op == c.op) {
                Some((_, n)) => *n += 1,
                None => distinct.push((c.op.clone(), 1)),
            }
        }
    }
    let ad = device.clone().autodiff();
    for (op, n) in &distinct {
        if let Some((f, fb)) = op.replay(&ad, 5, sess.be.fast_ops) {
            let r = rows.entry(op.family()).or_default();
            r.bwd_secs += (fb - f).max(0.0) * *n as f64;
            // Backward of a linear map: the input and the weight gradients, 2× the forward.
            r.bwd_flops += 2.0 * op.flops() * *n as f64;
        }
    }

    let step = per(total);
    let fwd_ops: f64 = rows.values().map(|r| r.fwd_secs).sum();
    // Ops replayed alone run colder than inside the graph (and vice versa); their times give the
    // split of the measured backward, scaled to its total.
    let replayed: f64 = rows.values().map(|r| r.bwd_secs).sum();
    let bwd_scale = if replayed > 0.0 {
        times.backward / replayed
    } else {
        0.0
    };
    for r in rows.values_mut() {
        r.bwd_secs *= bwd_scale;
    }
    let flops: f64 = rows.values().map(|r| r.fwd_flops + r.bwd_flops).sum();
    let peak = matmul_gflops(&device, 1024);
    println!(
        "### `{}` on {} ({}, batch {}), {label}{}: {steps} steps after a warm-up\n",
        cfg.objective.name(),
        cfg.data.name,
        cfg.model().arch_name(),
        cfg.batch,
        if sess.be.fast_ops {
            ", flowmap's flex ops"
        } else {
            ", burn's ops"
        }
    );
    println!(
        "step {:.1} ms ({:.1} samples/s): data {:.1} ms, forward {:.1} ms, backward {:.1} ms, update {:.1} ms; \
         {:.2} GFLOP per step = {:.1} GFLOP/s, {:.0}% of burn's 1024³ matmul in this run ({peak:.1} GFLOP/s)\n",
        step * 1e3,
        cfg.batch as f64 / step,
        per(times.data) * 1e3,
        per(times.forward) * 1e3,
        per(times.backward) * 1e3,
        per(times.update) * 1e3,
        per(flops) / 1e9,
        per(flops) / step / 1e9,
        100.0 * per(flops) / step / 1e9 / peak
    );
    println!(
        "The backward pass is one call into burn; its split by op family comes from replaying each differentiated op alone ({:.1} ms per step in all), scaled to the measured {:.1} ms.\n",
        per(replayed) * 1e3,
        per(times.backward) * 1e3
    );
    println!("| op family | calls/step | forward ms | forward GFLOP/s | backward ms | backward GFLOP/s | share of step |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (fam, r) in &rows {
        let rate = |f: f64, s: f64| {
            if f > 0.0 && s > 0.0 {
                format!("{:.1}", f / s / 1e9)
            } else {
                "–".into()
            }
        };
        println!(
            "| {} | {:.0} | {:.2} | {} | {:.2} | {} | {:.0}% |",
            fam.name(),
            r.calls as f64 / steps as f64,
            per(r.fwd_secs) * 1e3,
            rate(r.fwd_flops, r.fwd_secs),
            per(r.bwd_secs) * 1e3,
            rate(r.bwd_flops, r.bwd_secs),
            100.0 * (r.fwd_secs + r.bwd_secs) / total
        );
    }
    println!(
        "| outside the ops (graph building, allocation, slicing, loss algebra; forward only) | | {:.2} | | | | {:.0}% |",
        per(times.forward - fwd_ops) * 1e3,
        100.0 * (times.forward - fwd_ops) / total
    );
    println!(
        "| data, optimiser update and EMA | | | | | | {:.0}% |",
        100.0 * (times.data + times.update) / total
    );
    println!();
    Ok(())
}

/// 3×3 same-padding convolution as one GEMM over the im2col matrix, in channels-last order:
/// [N·H·W, 9·C_in] × [9·C_in, C_out]. burn differentiates the slices, the concatenation and the
/// matmul, so the backward is two more large GEMMs and a scatter of the slices.
pub fn conv3x3_gemm(x: Tensor<4>, w: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    let [n, c, h, wd] = x.dims();
    let o = w.dims()[0];
    let xp = x.permute([0, 2, 3, 1]).pad(
        [(0, 0), (1, 1), (1, 1), (0, 0)],
        burn::tensor::ops::PadMode::Constant(0.0),
    );
    let mut cols = Vec::with_capacity(9);
    for dy in 0..3 {
        for dx in 0..3 {
            cols.push(xp.clone().slice([0..n, dy..dy + h, dx..dx + wd, 0..c]));
        }
    }
    let cols = Tensor::cat(cols, 3).reshape([n * h * wd, 9 * c]);
    // [O, C, 3, 3] → [3, 3, C, O] → [9C, O], matching the column order (dy, dx, c).
    let wm = w.permute([2, 3, 1, 0]).reshape([9 * c, o]);
    let y = cols.matmul(wm) + bias.reshape([1, o]);
    y.reshape([n, h, wd, o]).permute([0, 3, 1, 2])
}

/// `trainer bench --conv`: the U-Net's 3×3 convolutions at `batch` through burn's conv2d and
/// through [`conv3x3_gemm`], forward and forward + backward, in one run.
pub fn conv_variants(batch: usize) {
    let dev = Device::flex().autodiff();
    let shapes = [
        (16, 16, 28),
        (32, 16, 28),
        (32, 32, 14),
        (64, 32, 14),
        (32, 32, 7),
        (64, 32, 7),
    ];
    println!("| conv (C_in → C_out, H×W) | GFLOP | burn conv2d fwd ms | burn-op im2col GEMM fwd ms | fastconv fwd ms | burn fwd+bwd ms | burn-op im2col fwd+bwd ms | fastconv fwd+bwd ms | fastconv speed-up fwd+bwd | fastconv ∂x ms (GFLOP/s) | fastconv ∂w, ∂b ms (GFLOP/s) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (cin, cout, hw) in shapes {
        let x = Tensor::<4>::random([batch, cin, hw, hw], Distribution::Normal(0.0, 1.0), &dev)
            .require_grad();
        let w = Tensor::<4>::random([cout, cin, 3, 3], Distribution::Normal(0.0, 0.1), &dev)
            .require_grad();
        let b = Tensor::<1>::random([cout], Distribution::Normal(0.0, 0.1), &dev).require_grad();
        // The median of six timed runs of `f`, in ms.
        let median = |f: &dyn Fn()| {
            let mut v: Vec<f64> = (0..6)
                .map(|_| {
                    let start = Instant::now();
                    f();
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v[3]
        };
        let time = |variant: u8, backward: bool| -> f64 {
            median(&|| {
                let y = match variant {
                    0 => burn::tensor::module::conv2d(
                        x.clone(),
                        w.clone(),
                        Some(b.clone()),
                        burn::tensor::ops::ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
                    ),
                    1 => conv3x3_gemm(x.clone(), w.clone(), b.clone()),
                    _ => crate::flex_ops::conv2d(x.clone(), w.clone(), b.clone(), 1, 1),
                };
                let s = y.sum();
                if backward {
                    drop(s.backward());
                } else {
                    let _ = s.into_scalar::<f32>();
                }
            })
        };
        let gflop = 2.0 * (batch * cout * hw * hw * cin * 9) as f64 / 1e9;
        let fwd: Vec<f64> = (0..3).map(|v| time(v, false)).collect();
        let both: Vec<f64> = (0..3).map(|v| time(v, true)).collect();
        // The fast backward's two products alone, on plain slices (no graph).
        let g =
            flowmap::cpu::im2col::ConvGeom::new(&[batch, cin, hw, hw], &[cout, cin, 3, 3], 1, 1);
        let xs = vec![0.5f32; batch * cin * hw * hw];
        let (ws, dy) = (
            vec![0.01f32; cout * cin * 9],
            vec![0.1f32; batch * cout * hw * hw],
        );
        let dx = median(&|| drop(crate::flex_ops::backward_x(&ws, &dy, g)));
        let dw = median(&|| drop(crate::flex_ops::backward_wb(&xs, &dy, g)));
        println!(
            "| {cin} → {cout}, {hw}×{hw} | {gflop:.3} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}× | {dx:.2} ({:.0}) | {dw:.2} ({:.0}) |",
            fwd[0], fwd[1], fwd[2], both[0], both[1], both[2], both[0] / both[2],
            gflop / dx * 1e3, gflop / dw * 1e3
        );
    }
}
