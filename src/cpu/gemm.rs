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

/// A matrix inside a slice: element (i, j) at `data[i·rs + j·cs]`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl View<'_> {
    /// Whether every element of a rows × cols matrix lies inside `data`.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// dst (m × n, element (i, j) at `dst[i·dst_rs + j·dst_cs]`) = (accumulate ? dst : 0) + a · b
/// for strided views a (m × k) and b (k × n), on the calling thread: e.g. one tap of a
/// convolution's weight gradient read straight from a padded image ([`super::direct`]).
#[allow(clippy::too_many_arguments)]
pub fn matmul_view(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    a: View,
    b: View,
) {
    let d = View {
        data: dst,
        rs: dst_rs,
        cs: dst_cs,
    };
    assert!(
        d.holds(m, n) && a.holds(m, k) && b.holds(k, n),
        "matmul_view: a view reaches past its slice"
    );
    // Distinct (i, j) must be distinct elements of dst.
    assert!(
        m <= 1 || n <= 1 || dst_rs >= n * dst_cs || dst_cs >= m * dst_rs,
        "matmul_view: dst elements overlap"
    );
    if m == 0 || n == 0 || k == 0 {
        if !accumulate && k == 0 {
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_rs + j * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    // SAFETY: every element addressed lies inside its slice (asserted above), dst's elements
    // are distinct and dst does not alias a or b (a mutable and shared borrows); one thread.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
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

    #[test]
    fn strided_views_match_the_definition() {
        // a is 3 × 4 stored column-major with a gap, b is 4 × 2 read with stride 5, dst is
        // written every other element of each row.
        let (m, n, k) = (3, 2, 4);
        let a_data: Vec<f32> = (0..20).map(|i| (i as f32 * 0.41).sin()).collect();
        let b_data: Vec<f32> = (0..30).map(|i| (i as f32 * 0.29).cos()).collect();
        let a = View {
            data: &a_data,
            rs: 1,
            cs: 4,
        };
        let b = View {
            data: &b_data,
            rs: 5,
            cs: 2,
        };
        let at = |i: usize, p: usize| a_data[i + p * 4];
        let bt = |p: usize, j: usize| b_data[p * 5 + j * 2];
        let mut dst = vec![1.0f32; 3 * 6];
        matmul_view(m, n, k, &mut dst, 6, 2, true, a, b);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
                assert!((dst[i * 6 + j * 2] - 1.0 - want).abs() < 1e-5);
                assert_eq!(dst[i * 6 + j * 2 + 1], 1.0, "untouched between columns");
            }
        }
        matmul_view(m, n, k, &mut dst, 6, 2, false, a, b);
        assert!((dst[0] - (0..k).map(|p| at(0, p) * bt(p, 0)).sum::<f32>()).abs() < 1e-5);
    }
}
