//! GroupNorm with the fused time scale-shift and SiLU, the reference for
//! `shaders/group_norm.wgsl`. Statistics are accumulated in f64 (two passes: mean, then the
//! centred variance), so this is the more accurate side of every parity test.

use super::elementwise::act_scalar;
use crate::config::Activation;
use rayon::prelude::*;

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
    let (n, c) = (shape[0], shape[1]);
    let hw: usize = shape[2..].iter().product();
    let cpg = c / groups;
    let glen = cpg * hw;
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
            if let Some(m) = modulation {
                let scale = 1.0 + m[b * 2 * c + ch];
                let shift = m[b * 2 * c + c + ch];
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
