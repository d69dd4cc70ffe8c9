//! The stochastic interpolant I_t = α_t x0 + β_t x1 and its time derivative (METHOD §1).

use flowmap::config::Interpolant;

/// (α_t, β_t, α̇_t, β̇_t).
pub fn coefficients(kind: Interpolant, t: f32) -> (f32, f32, f32, f32) {
    match kind {
        Interpolant::Linear => (1.0 - t, t, -1.0, 1.0),
        Interpolant::Trigonometric => {
            let h = std::f32::consts::FRAC_PI_2;
            (
                (h * t).cos(),
                (h * t).sin(),
                -h * (h * t).sin(),
                h * (h * t).cos(),
            )
        }
    }
}

/// I_t and İ_t for a batch (row i of x0 and x1 at time t[i]).
pub fn interpolate(kind: Interpolant, x0: &[f32], x1: &[f32], t: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let len = x0.len() / t.len();
    let mut it = vec![0.0; x0.len()];
    let mut dit = vec![0.0; x0.len()];
    for (i, &ti) in t.iter().enumerate() {
        let (a, b, da, db) = coefficients(kind, ti);
        for j in i * len..(i + 1) * len {
            it[j] = a * x0[j] + b * x1[j];
            dit[j] = da * x0[j] + db * x1[j];
        }
    }
    (it, dit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_derivative() {
        for kind in [Interpolant::Linear, Interpolant::Trigonometric] {
            let (i0, _) = interpolate(kind, &[2.0], &[5.0], &[0.0]);
            let (i1, _) = interpolate(kind, &[2.0], &[5.0], &[1.0]);
            assert!((i0[0] - 2.0).abs() < 1e-6 && (i1[0] - 5.0).abs() < 1e-6);
            let h = 1e-3;
            let (a, _) = interpolate(kind, &[2.0], &[5.0], &[0.4 + h]);
            let (b, _) = interpolate(kind, &[2.0], &[5.0], &[0.4 - h]);
            let (_, d) = interpolate(kind, &[2.0], &[5.0], &[0.4]);
            assert!(((a[0] - b[0]) / (2.0 * h) - d[0]).abs() < 1e-2, "{kind:?}");
        }
    }
}
