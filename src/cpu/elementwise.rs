//! Small ops: activations, add, the flow-map update, the time embedding, nearest upsampling,
//! channel concatenation. Mirrors `shaders/elementwise.wgsl`, `embedding.wgsl`, `upsample.wgsl`
//! and `concat.wgsl`.

use crate::config::Activation;
use rayon::prelude::*;

/// Below this many elements the rayon split costs more than it saves.
const PAR_MIN: usize = 1 << 14;

fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "elementwise operands differ in length");
    if a.len() < PAR_MIN {
        a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
    } else {
        a.par_iter()
            .zip(b.par_iter())
            .map(|(&x, &y)| f(x, y))
            .collect()
    }
}

/// The scalar nonlinearity, shared with the linear and norm epilogues.
#[inline]
pub fn act_scalar(x: f32, act: Activation) -> f32 {
    match act {
        Activation::None => x,
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Relu => x.max(0.0),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
    }
}

pub fn activate(x: &[f32], act: Activation) -> Vec<f32> {
    if x.len() < PAR_MIN {
        x.iter().map(|&v| act_scalar(v, act)).collect()
    } else {
        x.par_iter().map(|&v| act_scalar(v, act)).collect()
    }
}

pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    map2(a, b, |x, y| x + y)
}

/// x + dt · v: one flow-map jump X_{s,t}(x) = x + (t − s) v(s, t, x) (METHOD §3).
pub fn flow_step(x: &[f32], v: &[f32], dt: f32) -> Vec<f32> {
    map2(x, v, |x, v| x + dt * v)
}

/// Sinusoidal embedding, [cos | sin] halves. The argument is reduced to [−π, π] before the
/// trigonometric call, exactly as the WGSL kernel does, because GPU sin/cos are only accurate
/// there and time_scale · t reaches 1000.
pub fn timestep_embedding(times: &[f32], dim: usize, max_period: f32, time_scale: f32) -> Vec<f32> {
    let half = dim / 2;
    let freqs = embedding_frequencies(half, max_period);
    let mut out = vec![0.0f32; times.len() * dim];
    for (row, &t) in out.chunks_mut(dim).zip(times) {
        for (i, &freq) in freqs.iter().enumerate() {
            let r = reduce_angle(t * time_scale * freq);
            row[i] = r.cos();
            row[half + i] = r.sin();
        }
    }
    out
}

/// ω_i = max_period^(−i/half), computed once on the host for every backend: GPU exp/log are
/// approximations whose error, multiplied by τ up to `time_scale`, would exceed 1e-4.
pub fn embedding_frequencies(half: usize, max_period: f32) -> Vec<f32> {
    (0..half)
        .map(|i| (-(max_period.ln()) * i as f32 / half as f32).exp())
        .collect()
}

/// a mod 2π, into [−π, π].
#[inline]
pub fn reduce_angle(a: f32) -> f32 {
    use std::f32::consts::TAU;
    let turns = a * (1.0 / TAU);
    (turns - turns.round()) * TAU
}

/// Nearest ×2 upsampling of `planes` planes of h×w.
pub fn upsample_nearest2x(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let (h2, w2) = (2 * h, 2 * w);
    let mut out = vec![0.0f32; planes * h2 * w2];
    out.par_chunks_mut(h2 * w2)
        .enumerate()
        .for_each(|(p, plane)| {
            let src = &x[p * h * w..(p + 1) * h * w];
            for oy in 0..h2 {
                let row = &src[(oy / 2) * w..(oy / 2 + 1) * w];
                for (ox, o) in plane[oy * w2..(oy + 1) * w2].iter_mut().enumerate() {
                    *o = row[ox / 2];
                }
            }
        });
    out
}

/// Per batch item, `a_len` values of a then `b_len` values of b.
pub fn concat_channels(a: &[f32], b: &[f32], n: usize, a_len: usize, b_len: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n * (a_len + b_len)];
    out.par_chunks_mut(a_len + b_len)
        .enumerate()
        .for_each(|(i, o)| {
            o[..a_len].copy_from_slice(&a[i * a_len..(i + 1) * a_len]);
            o[a_len..].copy_from_slice(&b[i * b_len..(i + 1) * b_len]);
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_known_values() {
        // Exact GELU: 0.5 x (1 + erf(x / √2)).
        assert!((act_scalar(1.0, Activation::Gelu) - 0.841_344_7).abs() < 1e-6);
        assert!((act_scalar(-2.0, Activation::Gelu) + 0.045_500_26).abs() < 1e-6);
    }

    #[test]
    fn embedding_matches_direct_formula() {
        let e = timestep_embedding(&[0.37], 8, 1e4, 1000.0);
        for i in 0..4 {
            let a = 370.0f64 * (1e4f64).powf(-(i as f64) / 4.0);
            assert!((e[i] as f64 - a.cos()).abs() < 2e-4, "cos {i}");
            assert!((e[4 + i] as f64 - a.sin()).abs() < 2e-4, "sin {i}");
        }
    }

    #[test]
    fn upsample_and_concat_place_values() {
        let u = upsample_nearest2x(&[1.0, 2.0, 3.0, 4.0], 1, 2, 2);
        assert_eq!(u[..4], [1.0, 1.0, 2.0, 2.0]);
        assert_eq!(u[12..], [3.0, 3.0, 4.0, 4.0]);
        let c = concat_channels(&[1.0, 2.0], &[3.0, 4.0, 5.0, 6.0], 2, 1, 2);
        assert_eq!(c, [1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
    }
}
