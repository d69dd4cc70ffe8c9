//! Every WGSL kernel against its CPU reference on random inputs, including odd sizes, tiles that
//! straddle the kernels' block boundaries, and batches > 1. Tolerance: max abs error ≤ 1e-4 of
//! the output scale.

mod common;

use common::{assert_close, gpu, random};
use flowmap::backend::{Backend, Conv2d};
use flowmap::config::Activation;
use flowmap::cpu::CpuBackend;
use flowmap::gpu::{ConvTile, ConvTiles};
use flowmap::rng::Rng;

macro_rules! parity {
    ($what:expr, $inputs:expr, |$b:ident, $t:ident| $body:expr) => {{
        let Some(g) = gpu() else { return };
        parity!(on & g, $what, $inputs, |$b, $t| $body)
    }};
    // On a given GPU backend (one set up by the test, e.g. with a forced conv tile).
    (on $g:expr, $what:expr, $inputs:expr, |$b:ident, $t:ident| $body:expr) => {{
        let inputs: Vec<(Vec<f32>, Vec<usize>)> = $inputs;
        let g: &flowmap::gpu::GpuBackend = $g;
        let cpu = CpuBackend::FAST;
        let expected = {
            let $b = &cpu;
            let $t: Vec<_> = inputs
                .iter()
                .map(|(d, s)| $b.upload(d, s).unwrap())
                .collect();
            $b.download(&$body).unwrap()
        };
        let got = {
            let $b = g;
            let $t: Vec<_> = inputs
                .iter()
                .map(|(d, s)| $b.upload(d, s).unwrap())
                .collect();
            $b.download(&$body).unwrap()
        };
        assert_close($what, &got, &expected);
    }};
}

fn t(rng: &mut Rng, shape: &[usize]) -> (Vec<f32>, Vec<usize>) {
    (random(rng, shape.iter().product()), shape.to_vec())
}

#[test]
fn conv2d_matches_cpu() {
    let mut rng = Rng::new(1);
    // (input shape, c_out, kernel, geometry, with residual)
    let cases = [
        ([2, 3, 9, 7], 5, 3, Conv2d::SAME, false),
        ([3, 17, 6, 6], 70, 1, Conv2d::POINTWISE, true),
        ([2, 4, 8, 8], 6, 3, Conv2d::DOWN, false),
        ([1, 8, 5, 5], 8, 3, Conv2d::DOWN, false),
        ([2, 19, 11, 13], 67, 3, Conv2d::SAME, true),
        // Input channels a multiple of the k-step: K walked tap-major (conv2d.wgsl).
        ([2, 16, 9, 7], 5, 3, Conv2d::SAME, true),
        ([2, 32, 6, 6], 24, 3, Conv2d::DOWN, false),
        ([1, 48, 5, 5], 16, 1, Conv2d::POINTWISE, false),
        // The input read upsampled ×2 (the U-Net's up path), odd sizes, with the residual.
        ([2, 16, 7, 5], 16, 3, Conv2d::UP, true),
        ([1, 3, 4, 6], 5, 3, Conv2d::UP, false),
    ];
    for (xs, cout, k, geom, res) in cases {
        let os = flowmap::backend::conv2d_out_shape(&xs, &[cout, xs[1], k, k], geom);
        let mut inputs = vec![
            t(&mut rng, &xs),
            t(&mut rng, &[cout, xs[1], k, k]),
            t(&mut rng, &[cout]),
        ];
        inputs.push(t(&mut rng, &os));
        parity!(
            &format!("conv2d {xs:?}→{cout} k{k} {geom:?} res={res}"),
            inputs,
            |b, t| b.conv2d(
                &t[0],
                &t[1],
                &t[2],
                geom,
                if res { Some(&t[3]) } else { None }
            )
        );
    }
}

/// A convolution case: input shape, output channels, kernel size, geometry, with a residual.
type ConvCase = ([usize; 4], usize, usize, Conv2d, bool);

/// Each case on `g` (with whatever conv kernel it is set to) against the CPU, random operands.
fn convs_match_cpu(g: &flowmap::gpu::GpuBackend, what: &str, rng: &mut Rng, cases: &[ConvCase]) {
    for &(xs, cout, k, geom, res) in cases {
        let os = flowmap::backend::conv2d_out_shape(&xs, &[cout, xs[1], k, k], geom);
        let inputs = vec![
            t(rng, &xs),
            t(rng, &[cout, xs[1], k, k]),
            t(rng, &[cout]),
            t(rng, &os),
        ];
        parity!(
            on g,
            &format!("{what} {xs:?}→{cout} k{k} {geom:?} res={res}"),
            inputs,
            |b, t| b.conv2d(&t[0], &t[1], &t[2], geom, res.then_some(&t[3]))
        );
    }
}

/// Each of conv2d.wgsl's tiles (64 × 64, 32 × 128, 16 × 256) on channel counts around its
/// height and pixel counts around its width, forced whatever the layer's size
/// (`GpuBackend::set_conv_tiles`).
#[test]
fn every_conv_tile_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(2);
    // (input shape, c_out, kernel, geometry, with residual): 1, 15–17 and 31–33 channels;
    // 300 and 578 pixels (one 256-pixel tile and a part, two and a part), stride 2, 1×1; input
    // channels that do and do not divide into the tile's k-steps.
    let cases = [
        ([3, 5, 10, 10], 1, 3, Conv2d::SAME, true),
        ([3, 5, 10, 10], 15, 3, Conv2d::SAME, false),
        ([2, 7, 17, 17], 17, 3, Conv2d::SAME, true),
        ([2, 6, 17, 17], 31, 3, Conv2d::DOWN, false),
        ([2, 33, 17, 17], 33, 1, Conv2d::POINTWISE, true),
        ([1, 9, 24, 24], 16, 3, Conv2d::SAME, false),
        // Tap-major K (input channels a multiple of the k-step: 16, or 8 for the 16 × 256
        // tile, whose k-step is 8).
        ([2, 16, 17, 17], 16, 3, Conv2d::SAME, true),
        ([2, 32, 9, 9], 33, 3, Conv2d::DOWN, false),
        ([2, 8, 10, 10], 15, 3, Conv2d::SAME, true),
        // The input read upsampled ×2: tap-major (16 channels) and channel-major (7).
        ([2, 16, 9, 9], 17, 3, Conv2d::UP, true),
        ([1, 7, 12, 12], 31, 3, Conv2d::UP, false),
    ];
    for tile in ConvTile::ALL {
        g.set_conv_tiles(ConvTiles::Fixed(tile));
        convs_match_cpu(&g, &format!("conv2d {tile:?}"), &mut rng, &cases);
    }
}

/// conv3x3.wgsl's two tiles (`ConvTiles::Direct` forces one wherever it applies): patches that
/// span one image or many, rows of 3 to 50 pixels, several workgroups of pixels and of
/// channels, input channels that fill its 2-channel steps or leave one empty, the input read
/// upsampled ×2, with and without a residual. Its geometry rule is checked too: a layer it does
/// not apply to runs conv2d.wgsl under the same setting.
#[test]
fn direct_conv3x3_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(5);
    let cases: &[ConvCase] = &[
        // The U-Net's shapes, small: 28×28 (a workgroup's 512 pixels inside one image, and
        // the second image's start), 14×14 and 7×7 (patches across 3 and 11 images).
        ([2, 16, 28, 28], 16, 3, Conv2d::SAME, true),
        ([3, 16, 14, 14], 32, 3, Conv2d::SAME, false),
        ([13, 32, 7, 7], 32, 3, Conv2d::SAME, true),
        // Odd input channels (the last step's second channel empty), 1, 15, 17 and 33 outputs.
        ([2, 3, 10, 10], 1, 3, Conv2d::SAME, false),
        ([2, 5, 9, 11], 15, 3, Conv2d::SAME, true),
        ([1, 7, 23, 19], 17, 3, Conv2d::SAME, false),
        ([2, 1, 6, 6], 33, 3, Conv2d::SAME, true),
        // Rows of 3 pixels (six images in one patch), and of 50 (two rows of loaders per
        // pass).
        ([6, 2, 9, 3], 16, 3, Conv2d::SAME, false),
        ([1, 4, 12, 50], 16, 3, Conv2d::SAME, true),
        // The input read upsampled ×2: 14×14 → 28×28 and an odd 5×7 → 10×14.
        ([2, 32, 14, 14], 32, 3, Conv2d::UP, true),
        ([3, 3, 5, 7], 9, 3, Conv2d::UP, false),
        // Not for conv3x3.wgsl (stride 2, 1×1): conv2d.wgsl runs them.
        ([2, 8, 12, 12], 16, 3, Conv2d::DOWN, false),
    ];
    use flowmap::gpu::{ConvKernel, DirectTile};
    for tile in DirectTile::ALL {
        g.set_conv_tiles(ConvTiles::Direct(tile));
        convs_match_cpu(&g, &format!("conv3x3 direct {tile:?}"), &mut rng, cases);
        // The cases above that it applies to did run it.
        let direct = cases
            .iter()
            .filter(|(xs, cout, _, geom, _)| {
                let os = flowmap::backend::conv2d_out_shape(xs, &[*cout, xs[1], 3, 3], *geom);
                let out = [os[0], os[2], os[3]];
                ConvKernel::for_layer(ConvTiles::Direct(tile), *cout, 3, *geom, out)
                    == ConvKernel::Direct(tile)
            })
            .count();
        assert_eq!(direct, cases.len() - 1, "{tile:?}");
    }
    g.set_conv_tiles(ConvTiles::ByLayer);
}

#[test]
fn group_norm_matches_cpu() {
    let mut rng = Rng::new(2);
    // The modulation's rows: one per sample, one shared by the whole batch (a sampler's jump),
    // one per run of samples, or none.
    for (shape, groups, mod_rows, silu) in [
        ([3, 12, 7, 7], 3, Some(3), true),
        ([2, 8, 4, 4], 8, None, false),
        ([2, 16, 20, 20], 4, Some(1), false),
        ([1, 6, 1, 1], 2, None, true),
        ([4, 8, 5, 5], 2, Some(2), true),
    ] {
        let c = shape[1];
        let mut x = t(&mut rng, &shape);
        // An offset and spread, so that centring matters.
        x.0.iter_mut().for_each(|v| *v = 3.0 + 2.0 * *v);
        let inputs = vec![
            x,
            t(&mut rng, &[c]),
            t(&mut rng, &[c]),
            t(&mut rng, &[mod_rows.unwrap_or(1), 2 * c]),
        ];
        parity!(
            &format!("group_norm {shape:?} g{groups} modulation rows {mod_rows:?} silu={silu}"),
            inputs,
            |b, t| b.group_norm(
                &t[0],
                &t[1],
                &t[2],
                groups,
                1e-5,
                mod_rows.map(|_| &t[3]),
                silu
            )
        );
    }
}

#[test]
fn linear_matches_cpu() {
    let mut rng = Rng::new(3);
    // Modulation rows as in `group_norm_matches_cpu`.
    for (rows, inp, out, mod_rows, act) in [
        (70, 37, 65, Some(70), Activation::Silu),
        (1, 16, 8, None, Activation::None),
        (130, 64, 128, Some(1), Activation::Gelu),
        (5, 3, 200, None, Activation::Relu),
        (70, 37, 65, Some(7), Activation::None),
        // At most four rows: linear.wgsl's `gemv` (one workgroup per column): K below, at and
        // above its 64 threads, every row count, shared and per-row modulation.
        (1, 128, 192, Some(1), Activation::Silu),
        (3, 37, 65, Some(3), Activation::Gelu),
        (4, 300, 70, Some(1), Activation::None),
        (2, 64, 5, None, Activation::Relu),
    ] {
        let inputs = vec![
            t(&mut rng, &[rows, inp]),
            t(&mut rng, &[out, inp]),
            t(&mut rng, &[out]),
            t(&mut rng, &[mod_rows.unwrap_or(1), 2 * out]),
        ];
        parity!(
            &format!("linear {rows}x{inp}→{out} modulation rows {mod_rows:?} {act:?}"),
            inputs,
            |b, t| b.linear(&t[0], &t[1], &t[2], mod_rows.map(|_| &t[3]), act)
        );
    }
}

#[test]
fn timestep_embedding_matches_cpu() {
    let mut rng = Rng::new(4);
    for (n, dim) in [(7, 16), (33, 64)] {
        let times: Vec<f32> = (0..n).map(|_| rng.uniform() as f32).collect();
        parity!(
            &format!("embedding n{n} d{dim}"),
            vec![(times, vec![n])],
            |b, t| b.timestep_embedding(&t[0], dim, 1e4, 1000.0)
        );
    }
}

#[test]
fn attention_matches_cpu() {
    let mut rng = Rng::new(5);
    for (n, c, l, heads) in [
        (2, 16, 49, 2),
        (1, 64, 100, 1),
        (3, 24, 7, 3),
        (2, 128, 33, 2),
    ] {
        let inputs = vec![t(&mut rng, &[n, 3 * c, l])];
        parity!(
            &format!("attention n{n} c{c} l{l} h{heads}"),
            inputs,
            |b, t| b.attention(&t[0], heads)
        );
    }
}

#[test]
fn upsample_concat_elementwise_match_cpu() {
    let mut rng = Rng::new(6);
    parity!("upsample", vec![t(&mut rng, &[2, 3, 5, 7])], |b, t| b
        .upsample_nearest2x(&t[0]));
    parity!(
        "concat",
        vec![t(&mut rng, &[2, 3, 5, 7]), t(&mut rng, &[2, 5, 5, 7])],
        |b, t| b.concat_channels(&t[0], &t[1])
    );
    let pair = || {
        vec![
            t(&mut Rng::new(7), &[3, 1001]),
            t(&mut Rng::new(8), &[3, 1001]),
        ]
    };
    parity!("add", pair(), |b, t| b.add(&t[0], &t[1]));
    parity!("flow_step", pair(), |b, t| b.flow_step(&t[0], &t[1], -0.37));
    for act in [
        Activation::Silu,
        Activation::Relu,
        Activation::Gelu,
        Activation::None,
    ] {
        parity!(&format!("activation {act:?}"), pair(), |b, t| b
            .activation(&t[0], act));
    }
}

/// Hundreds of dispatches in one submission, each with its own parameters: the parameter blocks
/// span several uniform buffers of the ring (256 slots each) and every dispatch reads its own.
#[test]
fn many_dispatches_in_one_submission_each_read_their_parameters() {
    let Some(g) = gpu() else { return };
    let n = 5;
    let x = vec![0.0f32; n];
    let v = vec![1.0f32; n];
    let (mut y, ones) = (g.upload(&x, &[n]).unwrap(), g.upload(&v, &[n]).unwrap());
    // x ← x + dt_k · 1 with dt_k = k: after 600 steps every value is Σ k = 179,700.
    for k in 0..600 {
        y = g.flow_step(&y, &ones, k as f32);
    }
    let got = g.download(&y).unwrap();
    assert_eq!(got, vec![179_700.0; n]);
}

/// The buffer pool keeps freed buffers for reuse, but never more than its cap: sizes from
/// earlier batches do not pile up.
#[test]
fn the_buffer_pool_stays_under_its_cap() {
    let Some(g) = gpu() else { return };
    let run = |n: usize| {
        let x = g.upload(&vec![1.0; n], &[n]).unwrap();
        let mut y = g.add(&x, &x);
        for _ in 0..4 {
            y = g.add(&y, &x);
        }
        g.download(&y).unwrap()
    };
    assert_eq!(run(1000), vec![6.0; 1000]);
    assert!(g.pooled_bytes() > 0, "freed buffers are kept for reuse");
    g.set_pool_cap(8 * 1024);
    assert!(g.pooled_bytes() <= 8 * 1024);
    for n in [1500, 1700, 1900, 2100] {
        assert_eq!(run(n), vec![6.0; n]);
        assert!(
            g.pooled_bytes() <= 8 * 1024,
            "{} bytes pooled",
            g.pooled_bytes()
        );
    }
}

/// A forward's bind groups are made once: the next forward on the same input binds the same
/// pooled buffers and finds all of them in the cache. When the pool lets buffers go, the cache
/// starts again, so it never keeps freed memory alive; results stay right throughout.
#[test]
fn bind_groups_are_reused_and_dropped_with_freed_buffers() {
    let Some(g) = gpu() else { return };
    let dir = common::temp_dir("bind-groups");
    let path = common::write_random_model(&dir, "m.safetensors", common::tiny_unet(), 3);
    let w = flowmap::weights::Weights::read(&path).unwrap();
    let net = w.network(&g).unwrap();
    let mut shape = vec![2];
    shape.extend(w.meta.model.sample_shape());
    let x = g
        .upload(
            &Rng::new(1).normals(2 * w.meta.model.sample_len(), 1.0),
            &shape,
        )
        .unwrap();
    let forward = || {
        g.download(&net.velocity(&g, &x, &[0.1, 0.2], &[0.6, 0.9]).unwrap())
            .unwrap()
    };
    let first = forward();
    // The pool's free lists take a few forwards to settle into the same order every time.
    // (11 forwards for this network: the count is host bookkeeping, the same on every adapter.)
    for _ in 0..16 {
        forward();
    }
    let settled = g.cached_bind_groups();
    let pooled = g.pooled_bytes();
    let dispatches = g.dispatch_count();
    assert_eq!(forward(), first);
    let per_forward = g.dispatch_count() - dispatches;
    assert!(per_forward > 20, "{per_forward} dispatches");
    // The times are uploaded once too (`upload_times` keeps them by value), so every dispatch
    // finds its group.
    assert_eq!(
        g.cached_bind_groups(),
        settled,
        "a repeated forward made new bind groups ({per_forward} dispatches)"
    );
    assert_eq!(g.pooled_bytes(), pooled, "nothing piles up in the pool");
    // A pool with no room frees every buffer it is handed: the cache starts again each time and
    // stays within one forward's groups.
    g.set_pool_cap(0);
    assert_eq!(forward(), first);
    assert!(
        g.cached_bind_groups() as u64 <= per_forward,
        "{} cached after a forward of {per_forward} dispatches",
        g.cached_bind_groups()
    );
    std::fs::remove_dir_all(dir).unwrap();
}
