//! Small ops: activations, add, the flow-map update, the time embedding, nearest upsampling,
//! channel concatenation. Mirrors `shaders/elementwise.wgsl`, `embedding.wgsl`, `upsample.wgsl`
//! and `concat.wgsl`.

use crate::config::Activation;
use crate::multiversion;
use rayon::prelude::*;

/// Below this many elements the rayon split costs more than it saves.
const PAR_MIN: usize = 1 << 14;

fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "elementwise operands differ in length");
    let mut out = super::pool::take(a.len());
    let each = |((o, &x), &y): ((&mut f32, &f32), &f32)| *o = f(x, y);
    if a.len() < PAR_MIN {
        out.iter_mut().zip(a).zip(b).for_each(each);
    } else {
        out.par_iter_mut()
            .zip(a.par_iter())
            .zip(b.par_iter())
            .for_each(each);
    }
    out
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

/// act(x) with the reference scalar functions.
pub fn activate_reference(x: &[f32], act: Activation) -> Vec<f32> {
    if x.len() < PAR_MIN {
        x.iter().map(|&v| act_scalar(v, act)).collect()
    } else {
        x.par_iter().map(|&v| act_scalar(v, act)).collect()
    }
}

/// act(x), the fast path: SiLU through [`exp_fast`], each activation its own loop so the
/// compiler vectorizes it (GELU keeps libm's erf).
pub fn activate(x: &[f32], act: Activation) -> Vec<f32> {
    let mut y = super::pool::take(x.len());
    y.copy_from_slice(x);
    if y.len() < PAR_MIN {
        activate_in_place(&mut y, act);
    } else {
        y.par_chunks_mut(PAR_MIN)
            .for_each(|c| activate_in_place(c, act));
    }
    y
}

multiversion! {
    /// act applied in place, vectorized at the CPU's width (see [`activate`]).
    pub fn activate_in_place(v: &mut [f32], act: Activation) {
        match act {
            Activation::None => {}
            Activation::Silu => v.iter_mut().for_each(|x| *x = silu_fast(*x)),
            Activation::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
            Activation::Gelu => v
                .iter_mut()
                .for_each(|x| *x = act_scalar(*x, Activation::Gelu)),
        }
    }
}

/// x · sigmoid(x) through [`exp_fast`].
#[inline(always)]
pub fn silu_fast(x: f32) -> f32 {
    x / (1.0 + exp_fast(-x))
}

/// e^x in f32 without branches or calls, so loops over it vectorize (std's `exp` is a libm
/// call per element). Cephes' expf: x = n·ln 2 + r with |r| ≤ ln 2 / 2, e^r by its degree-7
/// minimax polynomial, 2^n written into the exponent bits. Arguments are clamped to
/// [−87, 88] (results stay normal); relative error ≤ 2 ulp there (tested against std).
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // t's bits are those of ROUND plus n; move n + 127 into the exponent field.
    let scale = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    e * scale
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
    let mut out = super::pool::take(planes * h2 * w2);
    if h == 0 || w == 0 {
        return out;
    }
    // Each source row is doubled once into the first of its two output rows (pairs, which
    // vectorize), and that row copied to the second: an index division per output value had
    // made this 15 µs for the U-Net's 32 × 14 × 14 at batch 1.
    out.par_chunks_mut(h2 * w2)
        .zip(x.par_chunks(h * w))
        .for_each(|(plane, src)| {
            for (rows, row) in plane.chunks_exact_mut(2 * w2).zip(src.chunks_exact(w)) {
                let (first, second) = rows.split_at_mut(w2);
                double_into(first, row);
                second.copy_from_slice(first);
            }
        });
    out
}

/// dst[2j] = dst[2j + 1] = src[j]: one row upsampled ×2 along its width, written as pairs
/// (which vectorize). Also the padding of a convolution that reads its input upsampled
/// (`direct::Scratch::pad_upsampled`).
pub(super) fn double_into(dst: &mut [f32], src: &[f32]) {
    for (pair, &v) in dst.chunks_exact_mut(2).zip(src) {
        pair[0] = v;
        pair[1] = v;
    }
}

/// Per batch item, `a_len` values of a then `b_len` values of b.
pub fn concat_channels(a: &[f32], b: &[f32], n: usize, a_len: usize, b_len: usize) -> Vec<f32> {
    let mut out = super::pool::take(n * (a_len + b_len));
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
    fn exp_fast_is_within_two_ulp_of_std() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (a, e) = (exp_fast(x) as f64, x.exp() as f64);
            worst = worst.max(((a - e) / e).abs());
            x += 0.001_7;
        }
        assert!(
            worst < 2.0 * f32::EPSILON as f64,
            "worst relative error {worst:e}"
        );
        assert_eq!(exp_fast(0.0), 1.0);
        // Clamped, finite and ordered at the ends.
        assert!(exp_fast(-1e4) > 0.0 && exp_fast(1e4).is_finite());
        let mut v = vec![-30.0f32, -1.5, 0.0, 0.7, 12.0];
        let want: Vec<f32> = v.iter().map(|&x| act_scalar(x, Activation::Silu)).collect();
        activate_in_place(&mut v, Activation::Silu);
        for (a, e) in v.iter().zip(&want) {
            assert!((a - e).abs() <= 1e-6 * (1.0 + e.abs()), "silu {a} vs {e}");
        }
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
