//! Multi-head self-attention, the reference for `shaders/attention.wgsl`: the three steps
//! (scores qᵀk/√d, row softmax, weighted sum of v) written out explicitly, where the kernel fuses
//! them with an online softmax.

use super::linear::dot;
use rayon::prelude::*;

/// qkv: [N, 3C, L]; returns [N, C, L].
pub fn attention(qkv: &[f32], n: usize, c: usize, l: usize, heads: usize) -> Vec<f32> {
    let d = c / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = super::pool::take(n * c * l);
    // One task per (sample, head): its output is the contiguous block of d channels.
    out.par_chunks_mut(d * l).enumerate().for_each(|(idx, o)| {
        let (b, h) = (idx / heads, idx % heads);
        let chan = |part: usize, dd: usize| &qkv[((b * 3 + part) * c + h * d + dd) * l..][..l];
        // Token-major copies so that each score is a contiguous dot product.
        let mut q = vec![0.0f32; l * d];
        let mut k = vec![0.0f32; l * d];
        for dd in 0..d {
            for (i, (&qv, &kv)) in chan(0, dd).iter().zip(chan(1, dd)).enumerate() {
                q[i * d + dd] = qv;
                k[i * d + dd] = kv;
            }
        }
        let mut p = vec![0.0f32; l];
        for i in 0..l {
            let qi = &q[i * d..(i + 1) * d];
            for (j, pj) in p.iter_mut().enumerate() {
                *pj = dot(qi, &k[j * d..(j + 1) * d]) * scale;
            }
            let m = p.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for pj in p.iter_mut() {
                *pj = (*pj - m).exp();
                sum += *pj;
            }
            for dd in 0..d {
                o[dd * l + i] = dot(&p, chan(2, dd)) / sum;
            }
        }
    });
    out
}
