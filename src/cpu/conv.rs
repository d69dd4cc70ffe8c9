//! 2-D convolution: the reference loops for `shaders/conv2d.wgsl` and the fast path.
//!
//! Reference: one output plane per rayon task; each (input channel, tap) adds a shifted, scaled
//! input row to an output row, so the inner loop runs over contiguous memory.
//!
//! Fast: Y_n = W · col(x_n) as a direct convolution, an implicit GEMM over the padded image
//! (split into stride² phases for strided kernels) with our own register-blocked microkernel and
//! no im2col matrix ([`super::direct`]); the epilogue (bias, residual) is fused by starting the
//! output at it. Samples run in parallel, each on one thread; with fewer samples than cores each
//! sample is split into bands of output rows, so batch 1 uses every core too.

use super::direct::{self, Direct};
use super::im2col::ConvGeom;
use crate::backend::{conv2d_out_shape, Conv2d};
use rayon::prelude::*;

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
    assert_eq!(
        ws[1], xs[1],
        "conv2d: weight expects {} input channels, got {}",
        ws[1], xs[1]
    );
    let g = ConvGeom::new(xs, ws, geom.stride, geom.padding);
    let (p, len) = (g.positions(), g.o * g.positions());
    let mut out = vec![0.0f32; g.n * len];
    let threads = rayon::current_num_threads();
    let direct = Direct::new(w, g.o, g.rows());
    // Output rows [y0, y1) of sample i into y [O, (y1 − y0)·Wo], started at bias (+ residual).
    let band = |s: &mut direct::Scratch, i: usize, y0: usize, y1: usize, y: &mut [f32]| {
        let pb = (y1 - y0) * g.wo;
        for (o, row) in y.chunks_mut(pb).enumerate() {
            row.fill(bias[o]);
            if let Some(r) = residual {
                let r = &r[i * len + o * p + y0 * g.wo..][..pb];
                row.iter_mut().zip(r).for_each(|(y, r)| *y += r);
            }
        }
        let xn = &x[i * g.in_len()..(i + 1) * g.in_len()];
        direct.band(&g, xn, y0, y1, y, s);
    };
    if g.n >= threads {
        // Samples in parallel, each whole.
        out.par_chunks_mut(len)
            .enumerate()
            .for_each_init(direct::Scratch::default, |s, (i, y)| band(s, i, 0, g.ho, y));
    } else {
        // Fewer samples than cores (batch 1 on an edge device): bands of output rows of each
        // sample in parallel.
        let bands = threads.div_ceil(g.n).min(g.ho);
        let rows_per = g.ho.div_ceil(bands);
        for (i, yn) in out.chunks_mut(len).enumerate() {
            let parts: Vec<(usize, Vec<f32>)> = (0..g.ho.div_ceil(rows_per))
                .into_par_iter()
                .map_init(direct::Scratch::default, |s, b| {
                    let (y0, y1) = (b * rows_per, ((b + 1) * rows_per).min(g.ho));
                    let mut y = vec![0.0f32; g.o * (y1 - y0) * g.wo];
                    band(s, i, y0, y1, &mut y);
                    (y0, y)
                })
                .collect();
            for (y0, y) in parts {
                let pb = y.len() / g.o;
                for (o, row) in y.chunks(pb).enumerate() {
                    yn[o * p + y0 * g.wo..][..pb].copy_from_slice(row);
                }
            }
        }
    }
    (out, vec![g.n, g.o, g.ho, g.wo])
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

    /// The definition, written as plainly as possible, to check the fast loops against.
    fn naive(x: &[f32], xs: &[usize], w: &[f32], ws: &[usize], b: &[f32], g: Conv2d) -> Vec<f32> {
        let os = conv2d_out_shape(xs, ws, g);
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
                                        && (iy as usize) < xs[2]
                                        && (ix as usize) < xs[3]
                                    {
                                        acc += (x[((n * xs[1] + ci) * xs[2] + iy as usize) * xs[3]
                                            + ix as usize]
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

    /// Channel counts past the GEMM's blocking, at batch 1 (bands) and batch 4 (samples).
    #[test]
    fn fast_path_matches_the_reference_on_wide_layers() {
        for n in [1, 4] {
            let (xs, ws) = ([n, 40, 9, 11], [24, 40, 3, 3]);
            let x: Vec<f32> = (0..xs.iter().product())
                .map(|i| ((i * 7) % 23) as f32 * 0.04 - 0.4)
                .collect();
            let w: Vec<f32> = (0..ws.iter().product())
                .map(|i| ((i * 5) % 17) as f32 * 0.01 - 0.08)
                .collect();
            let b: Vec<f32> = (0..24).map(|i| i as f32 * 0.1).collect();
            for g in [Conv2d::SAME, Conv2d::DOWN] {
                let (f, _) = conv2d(&x, &xs, &w, &ws, &b, g, None);
                let (r, _) = conv2d_reference(&x, &xs, &w, &ws, &b, g, None);
                for (a, e) in f.iter().zip(&r) {
                    assert!(
                        (a - e).abs() < 1e-4 * (1.0 + e.abs()),
                        "n={n} {g:?}: {a} vs {e}"
                    );
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
            (
                3,
                Conv2d {
                    stride: 2,
                    padding: 0,
                },
            ),
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
}
