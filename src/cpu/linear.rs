//! Fully connected layer with the fused time scale-shift and activation: the reference loops
//! for `shaders/linear.wgsl` (weights are [out, in], so each output is a dot product of two
//! contiguous rows) and the fast path (one GEMM Y = X · Wᵀ started at the bias, then the
//! modulation and activation in one pass over each row), in fixed blocks of rows.

use super::elementwise::{act_scalar, activate_in_place};
use super::gemm::{matmul, Threads};
use crate::config::Activation;
use rayon::prelude::*;

/// Rows per GEMM call: every call of a layer has the same shape, the last block padded with
/// zero rows, so a sample's output does not depend on how many samples share the batch or on
/// the thread count (the GEMM picks kernels and blocking by shape): the sampler's batch
/// splitting stays bit-exact on the fast path too. Wide layers (the MLP's 256 × 256) take 128
/// rows, 25% faster there than 32; the others that reach the GEMM ([`dot_rows`]) 32, so
/// batch 1 pads less. The choice depends on the layer's shape alone.
fn rows_per_call(inp: usize, out: usize) -> usize {
    if inp * out >= 1 << 16 {
        128
    } else {
        32
    }
}

/// Small layers (the U-Net's time conditioning: 64 or 128 inputs, at most 128 outputs) run as
/// one dot product per output, the reference's own arithmetic, instead of a GEMM call: at the
/// one row per distinct (s, t) that sampling gives them, the GEMM's fixed block of 32 rows was
/// 31 of padding, and its packing cost more than the arithmetic (15 calls took 0.23 ms of a
/// 1.3 ms batch-1 U-Net forward, 1 GFLOP/s). Chosen by the layer's shape alone, so a row's bits
/// still do not depend on the batch. Rows shorter than 16 inputs (the MLP's first layer) keep the
/// GEMM, whose kernels handle them better than a dot product that barely vectorizes.
fn dot_rows(inp: usize, out: usize) -> bool {
    inp >= 16 && inp * out < 1 << 16
}

/// The time scale-shift y·(1 + scale) + shift, then the activation, on one output row.
fn epilogue(yr: &mut [f32], modulation: Option<&[f32]>, act: Activation) {
    if let Some(m) = modulation {
        let (scale, shift) = m.split_at(yr.len());
        for ((v, s), t) in yr.iter_mut().zip(scale).zip(shift) {
            *v = *v * (1.0 + s) + t;
        }
    }
    activate_in_place(yr, act);
}

/// The fast path; same arguments and result as [`linear_reference`].
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
    assert_eq!(x.len(), n * inp, "linear: input is not [{n}, {inp}]");
    // Row r's [scale | shift]: row r / rep of the modulation.
    let modrow = super::modulation_rows(n, out, modulation);
    let mut y = super::pool::take(n * out);
    if dot_rows(inp, out) {
        let row = |(r, yr): (usize, &mut [f32])| {
            let xr = &x[r * inp..][..inp];
            for (o, v) in yr.iter_mut().enumerate() {
                *v = dot(xr, &w[o * inp..][..inp]) + bias[o];
            }
            epilogue(yr, modrow(r), act);
        };
        if n * inp * out < 1 << 17 {
            y.chunks_mut(out).enumerate().for_each(row);
        } else {
            y.par_chunks_mut(out).enumerate().for_each(row);
        }
        return y;
    }
    // Every row is started at the bias before the GEMM adds to it.
    let rows_per = rows_per_call(inp, out);
    let block = |(xpad, ypad): &mut (Vec<f32>, Vec<f32>), (blk, yb): (usize, &mut [f32])| {
        let rows = yb.len() / out;
        let xb = &x[blk * rows_per * inp..][..rows * inp];
        let (xs, ys): (&[f32], &mut [f32]) = if rows == rows_per {
            (xb, yb)
        } else {
            xpad.clear();
            xpad.extend_from_slice(xb);
            xpad.resize(rows_per * inp, 0.0);
            ypad.resize(rows_per * out, 0.0);
            (xpad, ypad)
        };
        for row in ys.chunks_mut(out) {
            row.copy_from_slice(&bias[..out]);
        }
        matmul(
            rows_per,
            out,
            inp,
            ys,
            true,
            xs,
            false,
            w,
            true,
            Threads::One,
        );
        if rows != rows_per {
            yb.copy_from_slice(&ypad[..rows * out]);
        }
        for (r, yr) in yb.chunks_mut(out).enumerate() {
            let row = blk * rows_per + r;
            epilogue(yr, modrow(row), act);
        }
    };
    if n <= rows_per {
        block(&mut (Vec::new(), Vec::new()), (0, &mut y));
    } else {
        y.par_chunks_mut(rows_per * out)
            .enumerate()
            .for_each_init(|| (Vec::new(), Vec::new()), block);
    }
    y
}

/// The reference loops.
#[allow(clippy::too_many_arguments)]
pub fn linear_reference(
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
    let modrow = super::modulation_rows(n, out, modulation);
    let mut y = vec![0.0f32; n * out];
    y.par_chunks_mut(out).enumerate().for_each(|(row, yr)| {
        let xr = &x[row * inp..(row + 1) * inp];
        for (o, yv) in yr.iter_mut().enumerate() {
            let mut v = dot(xr, &w[o * inp..(o + 1) * inp]) + bias[o];
            if let Some(m) = modrow(row) {
                v = v * (1.0 + m[o]) + m[out + o];
            }
            *yv = act_scalar(v, act);
        }
    });
    debug_assert_eq!(y.len(), n * out);
    y
}

/// Dot product with eight independent accumulators, so the compiler can vectorize it (inlined
/// always, so that it takes the vector width of a `multiversion!` caller).
#[inline(always)]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path against the reference loops: odd sizes, a batch that spans several
    /// epilogue tasks, with and without modulation, every activation.
    #[test]
    fn fast_path_matches_the_reference() {
        let mut rnd = super::super::test_values(7);
        for (n, inp, out) in [
            (1, 3, 5),
            (130, 37, 19),
            (300, 64, 129),
            (32, 8, 8),
            (150, 256, 257),
            // The dot-product path: the U-Net's conditioning layers, one row and a batch.
            (1, 128, 64),
            (40, 64, 128),
            (9, 16, 3),
        ] {
            let x: Vec<f32> = (0..n * inp).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..out * inp).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..out).map(|_| rnd()).collect();
            let m: Vec<f32> = (0..n * 2 * out).map(|_| rnd()).collect();
            for act in [
                Activation::None,
                Activation::Silu,
                Activation::Relu,
                Activation::Gelu,
            ] {
                for modulation in [None, Some(m.as_slice())] {
                    let f = linear(&x, n, inp, &w, out, &b, modulation, act);
                    // Row by row: the same bits whatever the batch.
                    if n > 1 {
                        let m1 = modulation.map(|m| &m[2 * out..4 * out]);
                        let one = linear(&x[inp..2 * inp], 1, inp, &w, out, &b, m1, act);
                        assert_eq!(
                            one,
                            f[out..2 * out],
                            "row 1 alone differs from row 1 of {n}"
                        );
                    }
                    let r = linear_reference(&x, n, inp, &w, out, &b, modulation, act);
                    for (a, e) in f.iter().zip(&r) {
                        assert!(
                            (a - e).abs() < 1e-5 * (1.0 + e.abs()),
                            "[{n}, {inp}] → {out} {act:?} mod={}: {a} vs {e}",
                            modulation.is_some()
                        );
                    }
                }
                // A modulation shared by runs of rows (a batch with shared times) is the same
                // as its rows repeated, on both paths, bit for bit.
                for rows in [1, 2, 5, n].into_iter().filter(|r| n % r == 0) {
                    let shared = &m[..rows * 2 * out];
                    let repeated: Vec<f32> = (0..n)
                        .flat_map(|i| &shared[i / (n / rows) * 2 * out..][..2 * out])
                        .copied()
                        .collect();
                    for run in [linear, linear_reference] {
                        let a = run(&x, n, inp, &w, out, &b, Some(shared), act);
                        let e = run(&x, n, inp, &w, out, &b, Some(&repeated), act);
                        assert_eq!(a, e, "[{n}, {inp}] → {out}: {rows} shared rows");
                    }
                }
            }
        }
    }
}
