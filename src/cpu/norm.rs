//! GroupNorm with the fused time scale-shift and SiLU.
//!
//! Reference (for `shaders/group_norm.wgsl`): statistics accumulated in f64 (two passes: mean,
//! then the centred variance), so it is the more accurate side of every parity test.
//! Fast: the same two passes with sixteen f32 partial sums each (combined in f64), which the
//! compiler vectorizes, affine and modulation folded into one factor and offset per channel, and
//! SiLU through [`silu_fast`]: one read pass for the statistics, one read-write pass for the
//! output.

use super::elementwise::{act_scalar, silu_fast};
use crate::config::Activation;
use crate::multiversion;
use rayon::prelude::*;

/// Σ f(v) with sixteen independent f32 accumulators, combined in f64: a sum the compiler
/// vectorizes (an f64 or single running sum is a serial chain). Sixteen, not eight: with eight,
/// LLVM's SLP vectorizer split the accumulators into two 2-lane vectors and four scalars at every
/// width; sixteen become one AVX-512, two AVX2 or four SSE registers. The trainer's GroupNorm
/// uses it.
#[inline(always)]
pub fn sum16(v: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0.0f32; 16];
    let chunks = v.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    acc.iter().map(|&a| a as f64).sum::<f64>() + rest.iter().map(|&x| f(x) as f64).sum::<f64>()
}

/// Values below which [`group_norm`] runs as one task.
const SERIAL_LEN: usize = 4096;

/// The fast path; same arguments and result as [`group_norm_reference`].
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    x: &[f32],
    shape: &[usize],
    gamma: &[f32],
    beta: &[f32],
    groups: usize,
    eps: f32,
    modulation: Option<&[f32]>,
    silu: bool,
) -> Vec<f32> {
    let c = shape[1];
    let hw: usize = shape[2..].iter().product();
    let cpg = c / groups;
    let glen = cpg * hw;
    let modrow = super::modulation_rows(shape[0], c, modulation);
    let mut out = super::pool::take(x.len());
    // With fewer samples than cores (batch 1) the blocks are a few µs each: one task per core
    // rather than rayon's finer split (GroupNorm 0.17–0.18 against 0.18–0.20 ms per batch-1
    // forward, three rounds); at larger batches the finer split balanced better. A tensor
    // below SERIAL_LEN values (the U-Net's 7×7 layers) is one task: the fork cost more than
    // half its work (batch-1 GroupNorm 0.161–0.170 → 0.152–0.164 ms, four rounds).
    let threads = rayon::current_num_threads();
    let min = if x.len() < SERIAL_LEN {
        shape[0] * groups
    } else if shape[0] < threads {
        (shape[0] * groups).div_ceil(threads)
    } else {
        1
    };
    out.par_chunks_mut(glen)
        .with_min_len(min)
        .enumerate()
        .for_each(|(idx, o)| {
            let (b, g) = (idx / groups, idx % groups);
            let src = &x[idx * glen..(idx + 1) * glen];
            let chans = g * cpg..(g + 1) * cpg;
            let m = modrow(b).map(|m| {
                let (scale, shift) = m.split_at(c);
                (&scale[chans.clone()], &shift[chans.clone()])
            });
            normalize_group(
                src,
                o,
                hw,
                &gamma[chans.clone()],
                &beta[chans],
                m,
                eps,
                silu,
            );
        });
    out
}

multiversion! {
    /// One group of one sample: statistics, then every channel's y = act(x·a + b) with the
    /// affine and modulation folded into a and b.
    #[allow(clippy::too_many_arguments)]
    fn normalize_group(
        src: &[f32],
        o: &mut [f32],
        hw: usize,
        gamma: &[f32],
        beta: &[f32],
        modulation: Option<(&[f32], &[f32])>,
        eps: f32,
        silu: bool,
    ) {
        let len = src.len() as f64;
        let mean = (sum16(src, |v| v) / len) as f32;
        let var = sum16(src, |v| (v - mean) * (v - mean)) / len;
        let rstd = (1.0 / (var + eps as f64).sqrt()) as f32;
        for (cc, (oc, xc)) in o.chunks_mut(hw).zip(src.chunks(hw)).enumerate() {
            let mut a = rstd * gamma[cc];
            let mut sh = beta[cc] - mean * a;
            if let Some((scale, shift)) = modulation {
                a *= 1.0 + scale[cc];
                sh = sh * (1.0 + scale[cc]) + shift[cc];
            }
            if silu {
                oc.iter_mut()
                    .zip(xc)
                    .for_each(|(ov, &xv)| *ov = silu_fast(xv * a + sh));
            } else {
                oc.iter_mut().zip(xc).for_each(|(ov, &xv)| *ov = xv * a + sh);
            }
        }
    }
}

/// The reference loops.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_reference(
    x: &[f32],
    shape: &[usize],
    gamma: &[f32],
    beta: &[f32],
    groups: usize,
    eps: f32,
    modulation: Option<&[f32]>,
    silu: bool,
) -> Vec<f32> {
    let (n, c) = (shape[0], shape[1]);
    let hw: usize = shape[2..].iter().product();
    let cpg = c / groups;
    let glen = cpg * hw;
    let modrow = super::modulation_rows(n, c, modulation);
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(glen).enumerate().for_each(|(idx, o)| {
        let (b, g) = (idx / groups, idx % groups);
        let src = &x[idx * glen..(idx + 1) * glen];
        let mean = src.iter().map(|&v| v as f64).sum::<f64>() / glen as f64;
        let var = src.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / glen as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for cc in 0..cpg {
            let ch = g * cpg + cc;
            let (mut a, mut sh) = (
                (rstd * gamma[ch] as f64) as f32,
                (beta[ch] as f64 - mean * rstd * gamma[ch] as f64) as f32,
            );
            if let Some(m) = modrow(b) {
                let scale = 1.0 + m[ch];
                let shift = m[c + ch];
                a *= scale;
                sh = sh * scale + shift;
            }
            let act = if silu {
                Activation::Silu
            } else {
                Activation::None
            };
            for (ov, &xv) in o[cc * hw..(cc + 1) * hw]
                .iter_mut()
                .zip(&src[cc * hw..(cc + 1) * hw])
            {
                *ov = act_scalar(xv * a + sh, act);
            }
        }
    });
    debug_assert_eq!(out.len(), n * c * hw);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path against the reference: odd spatial sizes, batch > 1, a mean far from zero
    /// (where single-pass f32 statistics would lose digits), with and without modulation and SiLU.
    #[test]
    fn fast_path_matches_the_reference() {
        let mut rnd = super::super::test_values(3);
        for (shape, groups) in [
            ([2usize, 6, 5, 7], 3),
            ([3, 16, 14, 14], 8),
            ([1, 4, 1, 1], 2),
        ] {
            let len: usize = shape.iter().product();
            let x: Vec<f32> = (0..len).map(|_| 40.0 + 3.0 * rnd()).collect();
            let gamma: Vec<f32> = (0..shape[1]).map(|_| 1.0 + rnd()).collect();
            let beta: Vec<f32> = (0..shape[1]).map(|_| rnd()).collect();
            let m: Vec<f32> = (0..shape[0] * 2 * shape[1]).map(|_| rnd()).collect();
            for modulation in [None, Some(m.as_slice())] {
                for silu in [false, true] {
                    let f = group_norm(&x, &shape, &gamma, &beta, groups, 1e-5, modulation, silu);
                    let r = group_norm_reference(
                        &x, &shape, &gamma, &beta, groups, 1e-5, modulation, silu,
                    );
                    for (a, e) in f.iter().zip(&r) {
                        assert!(
                            (a - e).abs() < 2e-5 * (1.0 + e.abs()),
                            "{shape:?} mod={} silu={silu}: {a} vs {e}",
                            modulation.is_some()
                        );
                    }
                }
            }
            // One modulation row shared by the whole batch is the same as its copies, on
            // both paths, bit for bit.
            let (n, c) = (shape[0], shape[1]);
            let shared = &m[..2 * c];
            let repeated: Vec<f32> = shared.iter().copied().cycle().take(n * 2 * c).collect();
            for run in [group_norm, group_norm_reference] {
                let a = run(&x, &shape, &gamma, &beta, groups, 1e-5, Some(shared), true);
                let e = run(
                    &x,
                    &shape,
                    &gamma,
                    &beta,
                    groups,
                    1e-5,
                    Some(&repeated),
                    true,
                );
                assert_eq!(a, e, "{shape:?}: one shared modulation row");
            }
        }
    }
}
