//! Sample-quality metrics (METHOD §7): histogram KL and sliced Wasserstein for 2-D sets, Fréchet
//! distance between feature distributions for images. Pure Rust, f64 accumulation.

use flowmap::rng::Rng;

/// KL(data ‖ model) between 2-D histograms of `bins`² cells over `range`². Both histograms are
/// normalised by their total sample count, so model mass outside the window counts as missing;
/// empty model cells where the data has mass get 1e-10 (documented in docs/RESULTS.md).
pub fn kl_histogram(data: &[f32], model: &[f32], bins: usize, range: [f32; 2]) -> f64 {
    let hist = |pts: &[f32]| {
        let mut h = vec![0f64; bins * bins];
        let n = (pts.len() / 2) as f64;
        let span = range[1] - range[0];
        for p in pts.chunks_exact(2) {
            let fx = (p[0] - range[0]) / span;
            let fy = (p[1] - range[0]) / span;
            if (0.0..1.0).contains(&fx) && (0.0..1.0).contains(&fy) {
                h[(fy * bins as f32) as usize * bins + (fx * bins as f32) as usize] += 1.0 / n;
            }
        }
        h
    };
    let (p, q) = (hist(data), hist(model));
    p.iter()
        .zip(&q)
        .filter(|(p, _)| **p > 0.0)
        .map(|(p, q)| p * (p / q.max(1e-10)).ln())
        .sum()
}

/// Sliced 2-Wasserstein distance: sqrt of the mean over `projections` random directions of the
/// squared W2 between the sorted 1-D projections. Uses min(len) samples of each set.
pub fn sliced_wasserstein(a: &[f32], b: &[f32], dim: usize, projections: usize, seed: u64) -> f64 {
    let n = (a.len() / dim).min(b.len() / dim);
    let mut rng = Rng::new(seed);
    let mut total = 0.0;
    for _ in 0..projections {
        let mut dir: Vec<f64> = (0..dim).map(|_| rng.normal() as f64).collect();
        let norm = dir.iter().map(|v| v * v).sum::<f64>().sqrt();
        dir.iter_mut().for_each(|v| *v /= norm);
        let proj = |x: &[f32]| {
            let mut p: Vec<f64> = x
                .chunks_exact(dim)
                .take(n)
                .map(|r| r.iter().zip(&dir).map(|(a, d)| *a as f64 * d).sum())
                .collect();
            p.sort_by(|a, b| a.total_cmp(b));
            p
        };
        let (pa, pb) = (proj(a), proj(b));
        total += pa
            .iter()
            .zip(&pb)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            / n as f64;
    }
    (total / projections as f64).sqrt()
}

/// Mean and covariance of row vectors.
pub fn moments(feats: &[f32], dim: usize) -> (Vec<f64>, Vec<f64>) {
    let n = feats.len() / dim;
    let mut mean = vec![0.0; dim];
    for r in feats.chunks_exact(dim) {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += v as f64 / n as f64;
        }
    }
    let mut cov = vec![0.0; dim * dim];
    for r in feats.chunks_exact(dim) {
        for i in 0..dim {
            let di = r[i] as f64 - mean[i];
            for j in i..dim {
                cov[i * dim + j] += di * (r[j] as f64 - mean[j]);
            }
        }
    }
    for i in 0..dim {
        for j in i..dim {
            let v = cov[i * dim + j] / (n as f64 - 1.0).max(1.0);
            cov[i * dim + j] = v;
            cov[j * dim + i] = v;
        }
    }
    (mean, cov)
}

/// Fréchet distance between Gaussians fitted to two feature sets:
/// |μ1 − μ2|² + Tr(Σ1 + Σ2 − 2 (Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}).
pub fn frechet_distance(a: &[f32], b: &[f32], dim: usize) -> f64 {
    let (m1, s1) = moments(a, dim);
    let (m2, s2) = moments(b, dim);
    let diff: f64 = m1.iter().zip(&m2).map(|(x, y)| (x - y).powi(2)).sum();
    let r1 = sym_sqrt(&s1, dim);
    let inner = matmul(&matmul(&r1, &s2, dim), &r1, dim);
    let (evals, _) = jacobi_eigen(&inner, dim);
    let tr_sqrt: f64 = evals.iter().map(|&e| e.max(0.0).sqrt()).sum();
    let tr = |m: &[f64]| (0..dim).map(|i| m[i * dim + i]).sum::<f64>();
    diff + tr(&s1) + tr(&s2) - 2.0 * tr_sqrt
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            for j in 0..n {
                c[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    c
}

/// The symmetric positive semi-definite square root V diag(√λ) Vᵀ.
fn sym_sqrt(m: &[f64], n: usize) -> Vec<f64> {
    let (evals, vecs) = jacobi_eigen(m, n);
    let mut out = vec![0.0; n * n];
    for k in 0..n {
        let s = evals[k].max(0.0).sqrt();
        for i in 0..n {
            for j in 0..n {
                out[i * n + j] += vecs[i * n + k] * s * vecs[j * n + k];
            }
        }
    }
    out
}

/// Eigenvalues and eigenvectors (columns) of a symmetric matrix by cyclic Jacobi rotations.
pub fn jacobi_eigen(m: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = m.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        let scale: f64 = (0..n)
            .map(|i| a[i * n + i].powi(2))
            .sum::<f64>()
            .max(1e-300);
        if off <= 1e-22 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frechet_matches_the_closed_form_for_diagonal_gaussians() {
        // N(0, diag(1, 4)) vs N((1, 0), diag(4, 1)): |μ|² = 1, Tr = 5 + 5 − 2(2 + 2) = 2 → 3.
        let mut rng = Rng::new(1);
        let n = 200_000;
        let a: Vec<f32> = (0..n)
            .flat_map(|_| [rng.normal(), 2.0 * rng.normal()])
            .collect();
        let b: Vec<f32> = (0..n)
            .flat_map(|_| [1.0 + 2.0 * rng.normal(), rng.normal()])
            .collect();
        let fd = frechet_distance(&a, &b, 2);
        assert!((fd - 3.0).abs() < 0.05, "{fd}");
        assert!(frechet_distance(&a, &a, 2).abs() < 1e-9);
    }

    #[test]
    fn eigen_decomposition_reconstructs() {
        let m = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 1.0];
        let (e, v) = jacobi_eigen(&m, 3);
        for i in 0..3 {
            for j in 0..3 {
                let r: f64 = (0..3).map(|k| v[i * 3 + k] * e[k] * v[j * 3 + k]).sum();
                assert!((r - m[i * 3 + j]).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn kl_and_sliced_wasserstein_separate_distributions() {
        let mut rng = Rng::new(2);
        let a: Vec<f32> = (0..100_000)
            .map(|_| rng.uniform() as f32 * 2.0 - 1.0)
            .collect();
        let b: Vec<f32> = (0..100_000)
            .map(|_| rng.uniform() as f32 * 2.0 - 1.0)
            .collect();
        let c: Vec<f32> = a.iter().map(|v| v * 0.5).collect();
        assert!(kl_histogram(&a, &b, 20, [-1.0, 1.0]) < 0.01);
        assert!(kl_histogram(&a, &c, 20, [-1.0, 1.0]) > 0.5);
        assert!(sliced_wasserstein(&a, &b, 2, 64, 0) < 0.01);
        assert!(sliced_wasserstein(&a, &c, 2, 64, 0) > 0.1);
    }
}
