//! The f16 storage path (issue 10 §3, crate::precision): the f16 WGSL kernels against the CPU
//! backend emulating f16 storage, op by op and on whole networks, and the shipped models in f16
//! against f32. Runs on any adapter with SHADER_F16 (lavapipe has it); on one without, the f16
//! path must be refused by name while auto stays on f32.

mod common;

use common::{gpu, temp_dir, tiny_mlp, tiny_unet, write_random_model};
use flowmap::backend::{Backend, OpFamily};
use flowmap::config::Activation;
use flowmap::cpu::CpuBackend;
use flowmap::gpu::{GpuBackend, GpuContext};
use flowmap::parity::OpParity;
use flowmap::precision::{round_f16, Precision, PrecisionChoice};
use flowmap::rng::Rng;
use flowmap::sampler::{self, initial_noise, uniform_grid, Integrator};
use flowmap::tolerance::scaled_error;
use flowmap::weights::Weights;

/// The CPU backend storing f16, as the f16 kernels do.
const CPU16: CpuBackend = CpuBackend::FAST.with_storage(Precision::F16);

/// Per-op tolerance of the f16 kernels against the f16 CPU reference, relative to
/// max(1, max |reference|): both compute in f32 and round once to f16, so they may differ by
/// one f16 rounding step (2^-11 relative, 2^-10 where the orders of summation put the f32
/// values on either side of a rounding boundary).
const OP_TOL: f32 = 2.0e-3;

/// An f16 GPU backend, or None (after checking the refusal) where the adapter lacks SHADER_F16.
fn gpu16() -> Option<GpuBackend> {
    // `gpu()` fails loudly under CI when there is no adapter at all.
    gpu()?;
    let ctx = GpuContext::new(true).ok()?;
    if ctx.has_f16() {
        return Some(GpuBackend::with_precision(ctx, Precision::F16).unwrap());
    }
    // No f16 shaders: auto stays on f32, and an explicit f16 is refused naming the adapter.
    let name = ctx.adapter.to_string();
    assert_eq!(
        PrecisionChoice::Auto
            .for_gpu(false, ctx.adapter.is_software, &name)
            .unwrap(),
        Precision::F32
    );
    let e = GpuBackend::with_precision(ctx, Precision::F16)
        .err()
        .expect("f16 without SHADER_F16 must be refused");
    let msg = e.to_string();
    assert!(
        msg.contains(&name) && msg.contains("does not offer f16"),
        "{msg}"
    );
    eprintln!("\n*** f16 parity not run: {name} has no SHADER_F16; its refusal was checked ***\n");
    None
}

/// Every value a backend downloads from f16 storage is an f16 value.
fn assert_all_f16(what: &str, v: &[f32]) {
    if let Some((i, x)) = v.iter().enumerate().find(|(_, &x)| round_f16(x) != x) {
        panic!("{what}: value {i} = {x} is not an f16 value: not stored in f16");
    }
}

#[test]
fn f16_kernels_match_the_f16_cpu_reference_op_by_op() {
    let Some(g) = gpu16() else { return };
    let dir = temp_dir("f16-ops");
    let mut rng = Rng::new(3);
    let mut seen = std::collections::BTreeSet::new();
    for (name, model) in [
        ("unet", tiny_unet()),
        // conv3x3.wgsl's two tiles on every layer they apply to (the tiny sizes never choose
        // them).
        ("unet-direct", tiny_unet()),
        ("unet-direct-small", tiny_unet()),
        ("mlp", tiny_mlp()),
        ("raw-mlp", {
            let mut m = tiny_mlp();
            if let flowmap::config::ModelConfig::Mlp(c) = &mut m {
                c.conditioning = flowmap::config::Conditioning::Raw;
            }
            m
        }),
    ] {
        g.set_conv_tiles(match name {
            "unet-direct" => flowmap::gpu::ConvTiles::Direct(flowmap::gpu::DirectTile::Wide),
            "unet-direct-small" => flowmap::gpu::ConvTiles::Direct(flowmap::gpu::DirectTile::Small),
            _ => flowmap::gpu::ConvTiles::ByLayer,
        });
        let path = write_random_model(&dir, &format!("{name}.safetensors"), model, 7);
        let w = Weights::read(&path).unwrap();
        let op = OpParity::new(CPU16, &g);
        let net = w.network(&op).unwrap();
        let n = 3;
        let mut shape = vec![n];
        shape.extend(w.meta.model.sample_shape());
        let x = rng.normals(n * w.meta.model.sample_len(), 1.0);
        let x = op.upload(&x, &shape).unwrap();
        let v = net
            .velocity(&op, &x, &[0.0, 0.3, 0.9], &[1.0, 0.55, 0.9])
            .unwrap();
        // The flow-map step too (elementwise).
        op.download(&net.flow_map(&op, &v, 0.25, 0.75).unwrap())
            .unwrap();
        for (family, worst) in op.results().unwrap() {
            eprintln!(
                "{name} {}: {} calls, max |gpu − cpu| {:.3e} at scale {:.2} ({:.2e})",
                family.name(),
                worst.calls,
                worst.max_abs,
                worst.scale,
                worst.rel
            );
            assert!(
                worst.rel <= OP_TOL,
                "{name} {}: {} > {OP_TOL}",
                family.name(),
                worst.rel
            );
            seen.insert(family);
        }
    }
    // Every family the networks use: since the up path's convolutions read their input
    // upsampled (Conv2d::UP), no network calls the upsample op, whose f16 kernel
    // `f16_elementwise_and_layout_ops_on_odd_lengths` below checks alone.
    let all: std::collections::BTreeSet<OpFamily> = OpFamily::ALL
        .into_iter()
        .filter(|&f| f != OpFamily::Upsample)
        .collect();
    assert_eq!(seen, all, "every kernel family the networks use ran in f16");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Odd lengths: the last f16 of a buffer shares its 4-byte word with padding, and neighbouring
/// threads write the two halves of one word (a 16-bit store done as a masked 32-bit one would
/// clobber its neighbour).
#[test]
fn f16_elementwise_and_layout_ops_on_odd_lengths() {
    let Some(g) = gpu16() else { return };
    let mut rng = Rng::new(9);
    for len in [1usize, 7, 257, 1023] {
        let a = rng.normals(len, 2.0);
        let b = rng.normals(len, 2.0);
        let (ga, gb) = (g.upload(&a, &[len]).unwrap(), g.upload(&b, &[len]).unwrap());
        let (ca, cb) = (
            CPU16.upload(&a, &[len]).unwrap(),
            CPU16.upload(&b, &[len]).unwrap(),
        );
        let cases = [
            ("add", g.add(&ga, &gb), CPU16.add(&ca, &cb)),
            (
                "silu",
                g.activation(&ga, Activation::Silu),
                CPU16.activation(&ca, Activation::Silu),
            ),
            (
                "flow_step",
                g.flow_step(&ga, &gb, 0.37),
                CPU16.flow_step(&ca, &cb, 0.37),
            ),
            ("upload", ga.clone(), ca.clone()),
        ];
        for (what, got, want) in cases {
            let got = g.download(&got).unwrap();
            let want = CPU16.download(&want).unwrap();
            assert_all_f16(what, &got);
            let (abs, scale) = scaled_error(&got, &want);
            assert!(abs / scale <= OP_TOL, "{what} len {len}: {abs} at {scale}");
        }
        // Channel concatenation and ×2 upsampling of odd-sized planes.
        let (ga3, gb3) = (
            g.reshape(&ga, &[1, len, 1, 1]),
            g.reshape(&gb, &[1, len, 1, 1]),
        );
        let (ca3, cb3) = (
            CPU16.reshape(&ca, &[1, len, 1, 1]),
            CPU16.reshape(&cb, &[1, len, 1, 1]),
        );
        let got = g.download(&g.concat_channels(&ga3, &gb3)).unwrap();
        assert_eq!(
            got,
            CPU16.download(&CPU16.concat_channels(&ca3, &cb3)).unwrap()
        );
        let got = g.download(&g.upsample_nearest2x(&ga3)).unwrap();
        assert_eq!(
            got,
            CPU16.download(&CPU16.upsample_nearest2x(&ca3)).unwrap()
        );
    }
}

/// K flow-map jumps of `noise` on `b`.
fn draw<B: Backend>(b: &B, w: &Weights, noise: &[f32], grid: &[f32], n: usize) -> Vec<f32> {
    let net = w.network(b).unwrap();
    sampler::sample(b, &net, noise, grid, Integrator::FlowMap, n)
        .unwrap()
        .0
}

/// The shipped models sampled in f16 on the GPU: within a few f16 rounding steps of the f16 CPU
/// reference, and within the stated distance of f32 (the precision's own effect; docs/GPU.md).
#[test]
fn shipped_models_in_f16_stay_close_to_f32() {
    let Some(g) = gpu16() else { return };
    let cpu = CpuBackend::FAST;
    for shipped in flowmap::models::SHIPPED {
        let w = shipped.load().unwrap();
        let images = w.meta.model.sample_shape().len() == 3;
        let n = if images { 2 } else { 512 };
        let noise = initial_noise(&w.meta, n, 1);
        for k in [1, 4] {
            let grid = uniform_grid(k).unwrap();
            let f32s = draw(&cpu, &w, &noise, &grid, n);
            let emulated = draw(&CPU16, &w, &noise, &grid, n);
            let got = draw(&g, &w, &noise, &grid, n);
            let max = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0f32, f32::max)
            };
            let vs_emulated = max(&got, &emulated);
            let vs_f32 = max(&got, &f32s);
            let emulated_vs_f32 = max(&emulated, &f32s);
            eprintln!(
                "{} K = {k}: f16 GPU vs f16 CPU {vs_emulated:.2e}, vs f32 {vs_f32:.2e} (f16 CPU vs f32 {emulated_vs_f32:.2e})",
                shipped.name
            );
            // Measured on lavapipe (data range: pixels in [0, 1], checkerboard points within
            // ±4): against the f16 reference at most 2.0e-3, against f32 at most 4.3e-3 (MNIST,
            // K = 4). About 3× that, since another GPU sums in another order.
            let (tol_emulated, tol_f32) = (0.006, 0.015);
            assert!(
                vs_emulated <= tol_emulated,
                "{} K = {k}: {vs_emulated}",
                shipped.name
            );
            assert!(vs_f32 <= tol_f32, "{} K = {k}: {vs_f32}", shipped.name);
        }
    }
}
