//! 2-D convolution: the reference loops for `shaders/conv2d.wgsl` and the fast path.
//!
//! Reference: one output plane per rayon task; each (input channel, tap) adds a shifted, scaled
//! input row to an output row, so the inner loop runs over contiguous memory.
//!
//! Fast: Y_n = W · col(x_n) as a direct convolution, an implicit GEMM over the padded image
//! (split into stride² phases for strided kernels) with our own register-blocked microkernel and
//! no im2col matrix ([`super::direct`]); the epilogue (bias, residual) is fused: each tile adds
//! it as it stores its outputs. A residual block's 1×1 skip projection can be fused into its
//! second convolution ([`conv2d_skip`]). Samples run in parallel, each on one thread; with
//! fewer samples than cores each sample is split over the cores (bands of rows for tall
//! images, blocks of output channels for short ones), so batch 1 uses every core too, for
//! layers with enough work to pay for it.

use super::direct::{self, Direct, Split};
use super::im2col::ConvGeom;
use crate::backend::{conv2d_out_shape, Conv2d};
use rayon::prelude::*;

/// Work below which one sample's convolution is not split over cores at batch 1 (FLOPs per
/// part), about 4 µs of one core's kernel time: splitting smaller layers measured slower (at
/// 1 << 17 a batch-1 U-Net forward took 1.2–1.5× longer), the cost of waking a rayon worker.
const MIN_FLOPS_PER_PART: usize = 1 << 18;

/// Output rows from which a batch-1 convolution is split by bands of rows rather than by
/// output channels.
const MIN_ROWS_SPLIT: usize = 14;

/// The fast path. Returns the output and its shape [N, Cout, Ho, Wo].
pub fn conv2d(
    x: &[f32],
    xs: &[usize],
    w: &[f32],
    ws: &[usize],
    bias: &[f32],
    geom: Conv2d,
    residual: Option<&[f32]>,
) -> (Vec<f32>, Vec<usize>) {
    let direct = Direct::new(w, ws[0], ws[1..].iter().product());
    conv2d_packed(x, xs, &direct, ws, bias, geom, residual)
}

/// [`conv2d`] with the weights already packed for the microkernel (the CPU backend packs each
/// weight tensor once and keeps it with the tensor: at batch 1 packing per call costs a
/// seventh of the convolution).
pub fn conv2d_packed(
    x: &[f32],
    xs: &[usize],
    direct: &Direct,
    ws: &[usize],
    bias: &[f32],
    geom: Conv2d,
    residual: Option<&[f32]>,
) -> (Vec<f32>, Vec<usize>) {
    run(x, xs, None, direct, ws, bias, geom, residual)
}

/// A residual block's second convolution with its 1×1 skip projection fused in:
/// conv(x; W, b) + conv1×1(skip; Ws, bs), one pass over [W | Ws] instead of a second op whose
/// output the first reads back as its residual. `skip` [N, Cs, Ho, Wo] (shape `ss`) must
/// have the output's size (a stride-1, same-size convolution, not upsampled). Returns the
/// output and its shape [N, O, Ho, Wo].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_skip(
    x: &[f32],
    xs: &[usize],
    w: &[f32],
    ws: &[usize],
    bias: &[f32],
    geom: Conv2d,
    skip: &[f32],
    ss: &[usize],
    skip_w: &[f32],
    skip_b: &[f32],
) -> (Vec<f32>, Vec<usize>) {
    let direct = pack_skip(w, ws, skip_w, ss[1]);
    conv2d_skip_packed(x, xs, &direct, ws, bias, geom, skip, ss, skip_b)
}

/// The weights of [`conv2d_skip`] packed for the microkernel ([`join_skip`]'s rows).
pub fn pack_skip(w: &[f32], ws: &[usize], skip_w: &[f32], skip_c: usize) -> Direct {
    let rows: usize = ws[1..].iter().product();
    Direct::new(&join_skip(w, ws, skip_w, skip_c), ws[0], rows + skip_c)
}

/// [W | Ws]: per output channel its C·k·k weights of w [O, C, k, k], then its Cs values of
/// skip_w [O, Cs, 1, 1] (the row order [`ConvGeom::with_skip`] reads).
pub(super) fn join_skip(w: &[f32], ws: &[usize], skip_w: &[f32], skip_c: usize) -> Vec<f32> {
    let (o, rows) = (ws[0], ws[1..].iter().product::<usize>());
    assert!(
        w.len() >= o * rows && skip_w.len() >= o * skip_c,
        "conv2d skip: weights smaller than [{o}, {rows}] and [{o}, {skip_c}]"
    );
    (0..o)
        .flat_map(|oc| {
            w[oc * rows..(oc + 1) * rows]
                .iter()
                .chain(&skip_w[oc * skip_c..(oc + 1) * skip_c])
                .copied()
        })
        .collect()
}

/// [`conv2d_skip`] with [`pack_skip`]'s weights.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_skip_packed(
    x: &[f32],
    xs: &[usize],
    direct: &Direct,
    ws: &[usize],
    bias: &[f32],
    geom: Conv2d,
    skip: &[f32],
    ss: &[usize],
    skip_b: &[f32],
) -> (Vec<f32>, Vec<usize>) {
    run(
        x,
        xs,
        Some((skip, ss)),
        direct,
        ws,
        &skip_bias(bias, skip_b),
        geom,
        None,
    )
}

/// The fused convolution's one bias per output: b + bs.
pub(super) fn skip_bias(bias: &[f32], skip_b: &[f32]) -> Vec<f32> {
    bias.iter().zip(skip_b).map(|(a, b)| a + b).collect()
}

/// [`conv2d_skip`]'s definition, the fused tests' expectation: the 1×1 skip projection by
/// [`conv2d_reference`], then the convolution with it as the residual.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(super) fn conv2d_skip_reference(
    x: &[f32],
    xs: &[usize],
    w: &[f32],
    ws: &[usize],
    bias: &[f32],
    geom: Conv2d,
    skip: &[f32],
    ss: &[usize],
    skip_w: &[f32],
    skip_b: &[f32],
) -> Vec<f32> {
    let sws = [ws[0], ss[1], 1, 1];
    let (s, _) = conv2d_reference(skip, ss, skip_w, &sws, skip_b, Conv2d::POINTWISE, None);
    conv2d_reference(x, xs, w, ws, bias, geom, Some(&s)).0
}

/// The fast path's one body: the convolution, with a fused skip input or not.
#[allow(clippy::too_many_arguments)]
fn run(
    x: &[f32],
    xs: &[usize],
    skip: Option<(&[f32], &[usize])>,
    direct: &Direct,
    ws: &[usize],
    bias: &[f32],
    geom: Conv2d,
    residual: Option<&[f32]>,
) -> (Vec<f32>, Vec<usize>) {
    assert_eq!(
        ws[1], xs[1],
        "conv2d: weight expects {} input channels, got {}",
        ws[1], xs[1]
    );
    let mut g = if geom.upsample {
        ConvGeom::upsampled(xs, ws, geom.stride, geom.padding)
    } else {
        ConvGeom::new(xs, ws, geom.stride, geom.padding)
    };
    if let Some((s, ss)) = skip {
        g = g.with_skip(ss[1]);
        assert!(
            ss == [g.n, g.skip, g.ho, g.wo] && s.len() >= ss.iter().product(),
            "conv2d skip: input {ss:?} is not [{}, {}, {}, {}]",
            g.n,
            g.skip,
            g.ho,
            g.wo
        );
    }
    let (p, len) = (g.positions(), g.o * g.positions());
    // Every value is written: each tile stores its outputs with the epilogue added.
    let mut out = super::pool::Output::new(g.n * len);
    let threads = rayon::current_num_threads();
    // Sample i's fused epilogue: the bias, and its residual [O, Ho·Wo].
    let epilogue = |i: usize| direct::Epilogue {
        bias,
        residual: residual.map(|r| &r[i * len..(i + 1) * len]),
    };
    let xn = |i: usize| &x[i * g.in_len()..(i + 1) * g.in_len()];
    let sn = |i: usize| skip.map_or(&[][..], |(s, _)| &s[i * g.skip * p..(i + 1) * g.skip * p]);
    if g.n >= threads {
        // Samples in parallel, each whole, each worker padding into its own buffers, kept
        // from call to call (a fresh buffer per rayon task cost page faults on every call).
        out.par_chunks_mut(len).enumerate().for_each(|(i, y)| {
            direct::with_scratch(|s| direct.band(&g, xn(i), sn(i), 0, g.ho, y, epilogue(i), s));
        });
    } else {
        // Fewer samples than cores (batch 1 on an edge device): each sample split over the
        // cores when it has enough work to pay for the join; small layers run whole on one
        // thread. Tall images by bands of rows (each task pads its own rows, so no serial
        // padding pass), short ones (7×7, where a band of a few rows wastes tiles) by blocks of
        // output channels over one shared padded input.
        let flops = 2 * g.o * g.rows() * p;
        let parts = (threads / g.n).min(flops / MIN_FLOPS_PER_PART).max(1);
        // The channels-in-lanes tiles take short images by rows as well (no padding columns
        // to waste; by channels measured 1.2× slower at batch 1).
        let split = if g.ho >= MIN_ROWS_SPLIT || direct.channels_in_lanes(g.wo) {
            Split::Rows
        } else {
            Split::Channels
        };
        out.par_chunks_mut(len)
            .enumerate()
            .for_each_init(direct::Scratch::default, |s, (i, y)| {
                direct.sample_split(&g, xn(i), sn(i), y, parts, split, epilogue(i), s);
            });
    }
    (out.into_vec(), vec![g.n, g.o, g.ho, g.wo])
}

/// The reference loops. Returns the output and its shape [N, Cout, Ho, Wo].
pub fn conv2d_reference(
    x: &[f32],
    xs: &[usize],
    w: &[f32],
    ws: &[usize],
    bias: &[f32],
    geom: Conv2d,
    residual: Option<&[f32]>,
) -> (Vec<f32>, Vec<usize>) {
    if geom.upsample {
        // The definition: upsample, then the plain convolution.
        let up = super::upsample_nearest2x(x, xs[0] * xs[1], xs[2], xs[3]);
        let us = [xs[0], xs[1], 2 * xs[2], 2 * xs[3]];
        return conv2d_reference(&up, &us, w, ws, bias, geom.plain(), residual);
    }
    let (cin, h, wd) = (xs[1], xs[2], xs[3]);
    let (cout, k) = (ws[0], ws[2]);
    assert_eq!(
        ws[1], cin,
        "conv2d: weight expects {} input channels, got {cin}",
        ws[1]
    );
    let out_shape = conv2d_out_shape(xs, ws, geom);
    let (ho, wo) = (out_shape[2], out_shape[3]);
    let plane = ho * wo;
    let (s, p) = (geom.stride, geom.padding);
    let mut out = vec![0.0f32; out_shape.iter().product()];
    out.par_chunks_mut(plane).enumerate().for_each(|(idx, o)| {
        let (b, co) = (idx / cout, idx % cout);
        o.fill(bias[co]);
        for ci in 0..cin {
            let src = &x[(b * cin + ci) * h * wd..(b * cin + ci + 1) * h * wd];
            for ky in 0..k {
                for kx in 0..k {
                    let wv = w[((co * cin + ci) * k + ky) * k + kx];
                    // Output columns whose input column ox*s + kx - p lies inside [0, wd).
                    let ox_lo = (p.saturating_sub(kx)).div_ceil(s);
                    let ox_hi = ((wd + p).saturating_sub(kx)).div_ceil(s).min(wo);
                    if ox_lo >= ox_hi {
                        continue;
                    }
                    for oy in 0..ho {
                        let iy = (oy * s + ky) as isize - p as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let row = &src[iy as usize * wd..(iy as usize + 1) * wd];
                        let orow = &mut o[oy * wo..(oy + 1) * wo];
                        if s == 1 {
                            let start = ox_lo + kx - p;
                            let len = ox_hi - ox_lo;
                            for (ov, &iv) in
                                orow[ox_lo..ox_hi].iter_mut().zip(&row[start..start + len])
                            {
                                *ov += wv * iv;
                            }
                        } else {
                            for ox in ox_lo..ox_hi {
                                orow[ox] += wv * row[ox * s + kx - p];
                            }
                        }
                    }
                }
            }
        }
        if let Some(r) = residual {
            for (ov, rv) in o.iter_mut().zip(&r[idx * plane..(idx + 1) * plane]) {
                *ov += rv;
            }
        }
    });
    (out, out_shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, written as plainly as possible, to check the fast loops against. An
    /// upsampled input is read at (⌊y/2⌋, ⌊x/2⌋) over a 2H × 2W grid.
    fn naive(x: &[f32], xs: &[usize], w: &[f32], ws: &[usize], b: &[f32], g: Conv2d) -> Vec<f32> {
        let os = conv2d_out_shape(xs, ws, g);
        let u = if g.upsample { 2 } else { 1 };
        let mut out = vec![0.0; os.iter().product()];
        for n in 0..os[0] {
            for co in 0..os[1] {
                for oy in 0..os[2] {
                    for ox in 0..os[3] {
                        let mut acc = b[co] as f64;
                        for ci in 0..xs[1] {
                            for ky in 0..ws[2] {
                                for kx in 0..ws[3] {
                                    let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                                    if iy >= 0
                                        && ix >= 0
                                        && (iy as usize) < u * xs[2]
                                        && (ix as usize) < u * xs[3]
                                    {
                                        let (sy, sx) = (iy as usize / u, ix as usize / u);
                                        acc += (x[((n * xs[1] + ci) * xs[2] + sy) * xs[3] + sx]
                                            * w[((co * ws[1] + ci) * ws[2] + ky) * ws[3] + kx])
                                            as f64;
                                    }
                                }
                            }
                        }
                        out[((n * os[1] + co) * os[2] + oy) * os[3] + ox] = acc as f32;
                    }
                }
            }
        }
        out
    }

    /// Channel counts past the GEMM's blocking, at batch 1 (bands) and batch 4 (samples); the
    /// second shape's widths (14, and 7 downsampled) and 40 outputs take the channels-in-lanes
    /// tiles on AVX-512 (blocks of 32 and 8 channels), with and without the residual.
    #[test]
    fn fast_path_matches_the_reference_on_wide_layers() {
        for (n, (xs, ws)) in [1, 4].into_iter().flat_map(|n| {
            [
                ([n, 40, 9, 11], [24, 40, 3, 3]),
                ([n, 24, 14, 14], [40, 24, 3, 3]),
            ]
            .map(|s| (n, s))
        }) {
            let x: Vec<f32> = (0..xs.iter().product())
                .map(|i| ((i * 7) % 23) as f32 * 0.04 - 0.4)
                .collect();
            let w: Vec<f32> = (0..ws.iter().product())
                .map(|i| ((i * 5) % 17) as f32 * 0.01 - 0.08)
                .collect();
            let b: Vec<f32> = (0..ws[0]).map(|i| i as f32 * 0.1).collect();
            for g in [Conv2d::SAME, Conv2d::DOWN] {
                let len: usize = conv2d_out_shape(&xs, &ws, g).iter().product();
                let res: Vec<f32> = (0..len).map(|i| ((i * 3) % 11) as f32 * 0.05).collect();
                for residual in [None, Some(&res[..])] {
                    let (f, _) = conv2d(&x, &xs, &w, &ws, &b, g, residual);
                    let (r, _) = conv2d_reference(&x, &xs, &w, &ws, &b, g, residual);
                    for (a, e) in f.iter().zip(&r) {
                        assert!(
                            (a - e).abs() < 1e-4 * (1.0 + e.abs()),
                            "n={n} {xs:?} {g:?} residual {}: {a} vs {e}",
                            residual.is_some()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn both_paths_match_the_definition_for_every_geometry() {
        let mut rnd = super::super::test_values(1);
        for (k, g) in [
            (3, Conv2d::SAME),
            (1, Conv2d::POINTWISE),
            (3, Conv2d::DOWN),
            (3, Conv2d::new(2, 0)),
            (3, Conv2d::UP),
        ] {
            // Batch 1 (GEMM on all cores) and batch 3 (samples in parallel), odd sizes.
            for n in [1, 3] {
                let xs = [n, 3, 7, 5];
                let ws = [4, 3, k, k];
                let x: Vec<f32> = (0..xs.iter().product()).map(|_| rnd()).collect();
                let w: Vec<f32> = (0..ws.iter().product()).map(|_| rnd()).collect();
                let b: Vec<f32> = (0..4).map(|_| rnd()).collect();
                let r = naive(&x, &xs, &w, &ws, &b, g);
                let res: Vec<f32> = (0..r.len()).map(|_| rnd()).collect();
                for fast in [false, true] {
                    let run = if fast { conv2d } else { conv2d_reference };
                    let (y, shape) = run(&x, &xs, &w, &ws, &b, g, None);
                    assert_eq!(shape, conv2d_out_shape(&xs, &ws, g));
                    for (a, e) in y.iter().zip(&r) {
                        assert!((a - e).abs() < 1e-5, "fast={fast} k={k} {g:?}: {a} vs {e}");
                    }
                    // The fused residual epilogue.
                    let (y, _) = run(&x, &xs, &w, &ws, &b, g, Some(&res));
                    for ((a, e), r) in y.iter().zip(&r).zip(&res) {
                        assert!((a - e - r).abs() < 1e-5, "fast={fast} residual {g:?}");
                    }
                }
            }
        }
    }

    /// The skip projection fused into the convolution against its definition, the two
    /// reference convolutions (the 1×1's output as the residual): the channels-in-lanes tiles
    /// (16 and 32 outputs at 28×28, 14×14, 7×7), the few-channel tile (2 outputs), the
    /// positions tiles (odd width), a 1×1 main convolution (read padded, not in place), at
    /// batch 1 (split over the cores) and batch 3.
    #[test]
    fn skip_fusion_matches_the_two_convolutions() {
        let mut rnd = super::super::test_values(7);
        for (c, o, h, w, k, cs) in [
            (16, 16, 28, 28, 3, 48),
            (32, 32, 14, 14, 3, 64),
            (32, 32, 7, 7, 3, 64),
            (5, 2, 9, 11, 3, 3),
            (5, 7, 9, 11, 3, 4),
            (6, 20, 6, 7, 1, 5),
        ] {
            for n in [1, 3] {
                let (xs, ws, ss) = ([n, c, h, w], [o, c, k, k], [n, cs, h, w]);
                let geom = Conv2d::new(1, k / 2);
                let mut v = |len: usize| -> Vec<f32> { (0..len).map(|_| rnd()).collect() };
                let (x, wt, b) = (v(n * c * h * w), v(o * c * k * k), v(o));
                let (skip, sw, sb) = (v(n * cs * h * w), v(o * cs), v(o));
                let want = conv2d_skip_reference(&x, &xs, &wt, &ws, &b, geom, &skip, &ss, &sw, &sb);
                let (got, gshape) = conv2d_skip(&x, &xs, &wt, &ws, &b, geom, &skip, &ss, &sw, &sb);
                assert_eq!(gshape, [n, o, h, w]);
                for (i, (a, e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - e).abs() < 1e-4 * (1.0 + e.abs()),
                        "{xs:?} k={k} + skip {cs}, value {i}: {a} vs {e}"
                    );
                }
            }
        }
    }

    /// An input read upsampled, on the fast path's tile families (the U-Net's up path: 7×7
    /// and 14×14 inputs, 16 and 32 channels, the channels-in-lanes tiles; three outputs, the
    /// few-channel tile; an odd size), at batch 1 (split over the cores) and batch 2, with and
    /// without the residual, against the reference (upsample, then convolve).
    #[test]
    fn upsampled_input_matches_the_reference() {
        let mut rnd = super::super::test_values(5);
        for (n, c, h, w, o) in [
            (1, 32, 7, 7, 32),
            (2, 16, 14, 14, 16),
            (1, 5, 4, 6, 3),
            (2, 7, 5, 3, 20),
        ] {
            let xs = [n, c, h, w];
            let ws = [o, c, 3, 3];
            let x: Vec<f32> = (0..xs.iter().product()).map(|_| rnd()).collect();
            let wt: Vec<f32> = (0..ws.iter().product()).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..o).map(|_| rnd()).collect();
            let res: Vec<f32> = (0..n * o * 4 * h * w).map(|_| rnd()).collect();
            for residual in [None, Some(&res[..])] {
                let (want, ws_) = conv2d_reference(&x, &xs, &wt, &ws, &b, Conv2d::UP, residual);
                let (got, gs) = conv2d(&x, &xs, &wt, &ws, &b, Conv2d::UP, residual);
                assert_eq!((gs, ws_.clone()), (ws_, vec![n, o, 2 * h, 2 * w]));
                for (a, e) in got.iter().zip(&want) {
                    assert!(
                        (a - e).abs() < 1e-4 * (1.0 + e.abs()),
                        "{xs:?} → {o} upsampled, residual {}: {a} vs {e}",
                        residual.is_some()
                    );
                }
            }
        }
    }
}
