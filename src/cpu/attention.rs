//! Multi-head self-attention, the reference for `shaders/attention.wgsl`: the three steps
//! (scores qᵀk/√d, row softmax, weighted sum of v) written out explicitly, where the kernel fuses
//! them with an online softmax.
//!
//! Fast path ([`attention`]): the same three steps per (sample, head), the two products through
//! the GEMM (reading the channel-major qkv in place), the softmax vectorized with the
//! exponentials through [`exp_fast`], per-worker scratch instead of three allocations per task.
//! The U-Net's attention runs at 7 × 7 (49 tokens, 32 channels, one head), where the reference
//! spends its time in short dot products, their horizontal sums and libm's `exp`.

use super::elementwise::exp_fast;
use super::gemm::{matmul, Threads};
use super::linear::dot;
use super::norm::sum16;
use crate::multiversion;
use rayon::prelude::*;

/// qkv: [N, 3C, L]; returns [N, C, L]. The reference loops.
pub fn attention_reference(qkv: &[f32], n: usize, c: usize, l: usize, heads: usize) -> Vec<f32> {
    let d = c / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0f32; n * c * l];
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

/// The fast path; same arguments and result as [`attention_reference`].
pub fn attention(qkv: &[f32], n: usize, c: usize, l: usize, heads: usize) -> Vec<f32> {
    let d = c / heads;
    let mut out = super::pool::take(n * c * l);
    let head = |p: &mut Vec<f32>, (idx, o): (usize, &mut [f32])| {
        let (b, h) = (idx / heads, idx % heads);
        let base = (b * 3 * c + h * d) * l;
        let part = |i: usize| &qkv[base + i * c * l..][..d * l];
        p.resize(l * l, 0.0);
        one_head(part(0), part(1), part(2), o, p, d, l);
    };
    // A (sample, head) at 7 × 7 is about 0.15 MFLOP: below a few of them the fork costs more.
    if n * heads * l * l * d < 1 << 17 {
        let mut p = Vec::new();
        out.chunks_mut(d * l)
            .enumerate()
            .for_each(|task| head(&mut p, task));
    } else {
        out.par_chunks_mut(d * l)
            .enumerate()
            .for_each_init(Vec::new, head);
    }
    out
}

/// One head of one sample: q, k, v and o are [d, l] (channel-major, as stored), `p` is l × l
/// scratch. The two products go through the GEMM on this thread (scores = qᵀ·k, o = v·pᵀ, both
/// read in place through the GEMM's strides); the softmax between them runs row by row.
fn one_head(q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], p: &mut [f32], d: usize, l: usize) {
    attention_probs(q, k, p, d, l);
    matmul(d, l, l, o, false, v, false, p, true, Threads::One);
}

/// One head's attention weights: p [l, l] = softmax by rows of qᵀ·k / √d, with q and k [d, l]
/// (channel-major, as stored), on this thread. The forward's own, so the trainer's attention
/// gradient recomputes exactly the weights the forward used.
pub fn attention_probs(q: &[f32], k: &[f32], p: &mut [f32], d: usize, l: usize) {
    matmul(l, l, d, p, false, q, true, k, false, Threads::One);
    softmax_rows(p, l, 1.0 / (d as f32).sqrt());
}

multiversion! {
    /// Each row of p (length l) becomes softmax(scale · row).
    fn softmax_rows(p: &mut [f32], l: usize, scale: f32) {
        for row in p.chunks_exact_mut(l) {
            let m = max16(row);
            row.iter_mut().for_each(|s| *s = exp_fast((*s - m) * scale));
            let inv = (1.0 / sum16(row, |v| v)) as f32;
            row.iter_mut().for_each(|s| *s *= inv);
        }
    }
}

/// The largest value, in sixteen lanes (see [`sum16`]): a comparison and a blend each, which
/// vectorize, where a NaN-aware `f32::max` fold stays scalar.
#[inline(always)]
fn max16(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = v.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    acc.iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path against the reference loops: the U-Net's geometry (49 tokens, 32 channels,
    /// one head), odd sizes, a batch, large scores (the softmax's shift), several heads.
    #[test]
    fn fast_path_matches_the_reference() {
        let mut rnd = super::super::test_values(11);
        for (n, c, l, heads, amp) in [
            (1, 32, 49, 1, 1.0),
            (3, 32, 49, 1, 1.0),
            (3, 64, 49, 4, 1.0),
            (2, 12, 13, 3, 8.0),
            (1, 5, 1, 1, 1.0),
            (4, 48, 256, 2, 3.0),
        ] {
            let qkv: Vec<f32> = (0..n * 3 * c * l).map(|_| amp * rnd()).collect();
            let f = attention(&qkv, n, c, l, heads);
            let r = attention_reference(&qkv, n, c, l, heads);
            assert_eq!(f.len(), r.len());
            for (i, (a, e)) in f.iter().zip(&r).enumerate() {
                assert!(
                    (a - e).abs() < 1e-5 * (1.0 + e.abs()),
                    "[{n}, {c}, {l}] heads {heads} amp {amp} at {i}: {a} vs {e}"
                );
            }
        }
    }
}
