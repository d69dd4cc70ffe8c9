//! 2-D convolution, the reference for `shaders/conv2d.wgsl`.
//!
//! One output plane per rayon task; each (input channel, tap) adds a shifted, scaled input row
//! to an output row, so the inner loop runs over contiguous memory and vectorizes.

use crate::backend::{conv2d_out_shape, Conv2d};
use rayon::prelude::*;

/// Returns the output and its shape [N, Cout, Ho, Wo].
pub fn conv2d(
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

    #[test]
    fn matches_definition_for_every_geometry() {
        let mut seed = 1u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
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
            let xs = [2, 3, 7, 5];
            let ws = [4, 3, k, k];
            let x: Vec<f32> = (0..xs.iter().product()).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..ws.iter().product()).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..4).map(|_| rnd()).collect();
            let (y, _) = conv2d(&x, &xs, &w, &ws, &b, g, None);
            let r = naive(&x, &xs, &w, &ws, &b, g);
            for (a, e) in y.iter().zip(&r) {
                assert!((a - e).abs() < 1e-5, "k={k} {g:?}: {a} vs {e}");
            }
        }
    }
}
