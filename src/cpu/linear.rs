//! Fully connected layer with the fused time scale-shift and activation, the reference for
//! `shaders/linear.wgsl`. Weights are [out, in], so each output is a dot product of two
//! contiguous rows.

use super::elementwise::act_scalar;
use crate::config::Activation;
use rayon::prelude::*;

#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    n: usize,
    inp: usize,
    w: &[f32],
    out: usize,
    bias: &[f32],
    modulation: Option<&[f32]>,
    act: Activation,
) -> Vec<f32> {
    assert_eq!(w.len(), out * inp, "linear: weight is not [{out}, {inp}]");
    let mut y = vec![0.0f32; n * out];
    y.par_chunks_mut(out).enumerate().for_each(|(row, yr)| {
        let xr = &x[row * inp..(row + 1) * inp];
        for (o, yv) in yr.iter_mut().enumerate() {
            let mut v = dot(xr, &w[o * inp..(o + 1) * inp]) + bias[o];
            if let Some(m) = modulation {
                v = v * (1.0 + m[row * 2 * out + o]) + m[row * 2 * out + out + o];
            }
            *yv = act_scalar(v, act);
        }
    });
    debug_assert_eq!(y.len(), n * out);
    y
}

/// Dot product with eight independent accumulators, so the compiler can vectorize it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}
