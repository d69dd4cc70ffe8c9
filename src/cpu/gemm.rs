//! The one matrix product every fast CPU op is built on: the `gemm` crate (the GEMM that burn
//! `flex` and candle use), which picks AVX-512/AVX2+FMA/NEON/simd128 kernels at run time. The
//! trainer's flex convolution uses this wrapper too, so there is one owner of the unsafe call.

/// How a product may use the cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// On the calling thread (inside an outer parallel loop, or on wasm).
    One,
    /// Split over rayon's global pool.
    All,
}

/// An operand's layout: `false` stores it as written ([m, k] / [k, n], row-major), `true`
/// stores it transposed ([k, m] / [n, k], row-major).
pub type Transposed = bool;

/// dst [m, n] (row-major) = (accumulate ? dst : 0) + a [m, k] · b [k, n], with `ta`/`tb`
/// saying which operands are stored transposed.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    ta: Transposed,
    b: &[f32],
    tb: Transposed,
    threads: Threads,
) {
    assert!(
        dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n,
        "matmul: operands smaller than [{m}, {k}] · [{k}, {n}]"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // (column stride, row stride) of each operand in elements.
    let (a_cs, a_rs) = if ta { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if tb { (k as isize, 1) } else { (1, n as isize) };
    let par = match threads {
        Threads::All if rayon::current_num_threads() > 1 => gemm::Parallelism::Rayon(0),
        _ => gemm::Parallelism::None,
    };
    // SAFETY: the strides above address only elements inside the asserted slice lengths, and
    // dst does not alias a or b (a shared and a mutable borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_matches_the_definition() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.53).cos()).collect();
        let at: Vec<f32> = (0..m * k).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f32> = (0..k * n).map(|i| b[(i % k) * n + i / k]).collect();
        let want: Vec<f32> = (0..m * n)
            .map(|i| (0..k).map(|p| a[(i / n) * k + p] * b[p * n + i % n]).sum())
            .collect();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for threads in [Threads::One, Threads::All] {
                let mut d = vec![1.0f32; m * n];
                let (aa, bb) = (if ta { &at } else { &a }, if tb { &bt } else { &b });
                matmul(m, n, k, &mut d, true, aa, ta, bb, tb, threads);
                for (x, w) in d.iter().zip(&want) {
                    assert!((x - 1.0 - w).abs() < 1e-5, "ta={ta} tb={tb}: {x} vs 1+{w}");
                }
                matmul(m, n, k, &mut d, false, aa, ta, bb, tb, threads);
                for (x, w) in d.iter().zip(&want) {
                    assert!((x - w).abs() < 1e-5);
                }
            }
        }
    }
}
