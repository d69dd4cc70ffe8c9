//! Adam (with bias correction) over flat parameter tensors, and the global gradient norm used
//! for clipping. Parameters are updated outside autodiff and re-marked as gradient leaves.

use burn::tensor::{Gradients, Tensor};

pub const BETA1: f32 = 0.9;
pub const BETA2: f32 = 0.999;
pub const EPS: f32 = 1e-8;

pub struct Adam {
    pub m: Vec<Tensor<1>>,
    pub v: Vec<Tensor<1>>,
}

impl Adam {
    pub fn new(params: &[Tensor<1>]) -> Self {
        let zeros: Vec<Tensor<1>> = params
            .iter()
            .map(|p| p.clone().without_autodiff().zeros_like())
            .collect();
        Adam {
            m: zeros.clone(),
            v: zeros,
        }
    }

    /// One update at step index `step` (0-based) with gradients scaled by `clip`; returns the new
    /// values outside autodiff (for the EMA).
    pub fn step(
        &mut self,
        params: &mut [Tensor<1>],
        grads: &[Tensor<1>],
        step: usize,
        lr: f32,
        clip: f32,
    ) -> Vec<Tensor<1>> {
        let t = (step + 1) as i32;
        let (c1, c2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        let mut out = Vec::with_capacity(params.len());
        for i in 0..params.len() {
            let g = grads[i].clone() * clip;
            self.m[i] = self.m[i].clone() * BETA1 + g.clone() * (1.0 - BETA1);
            self.v[i] = self.v[i].clone() * BETA2 + g.square() * (1.0 - BETA2);
            let update = (self.m[i].clone() / c1) / ((self.v[i].clone() / c2).sqrt() + EPS) * lr;
            let p = params[i].clone().without_autodiff() - update;
            params[i] = p.clone().autodiff().require_grad();
            out.push(p);
        }
        out
    }
}

/// Each parameter's gradient (zeros where a parameter did not take part) and their global L2 norm.
pub fn gradients(params: &[Tensor<1>], grads: &Gradients) -> (Vec<Tensor<1>>, f32) {
    let g: Vec<Tensor<1>> = params
        .iter()
        .map(|p| {
            p.grad(grads)
                .unwrap_or_else(|| p.clone().without_autodiff().zeros_like())
        })
        .collect();
    let norm_sq = g
        .iter()
        .map(|t| t.clone().square().sum())
        .reduce(|a, b| a + b)
        .expect("at least one parameter");
    let norm = norm_sq.into_scalar::<f32>().sqrt();
    (g, norm)
}

/// The factor that scales a gradient of norm `norm` down to at most `max`.
pub fn clip_factor(norm: f32, max: f32) -> f32 {
    if norm > max {
        max / norm
    } else {
        1.0
    }
}

/// The EMA decay at `step`: min(ema, (1 + step) / (10 + step)). The ramp keeps the average over
/// roughly the last tenth of the run early on; a fixed 0.999 would still hold 0.999^1500 ≈ 22%
/// of the random initialisation after 1,500 steps, which made short runs export noise.
pub fn ema_decay(ema: f32, step: usize) -> f32 {
    let ramp = (1.0 + step as f32) / (10.0 + step as f32);
    ema.min(ramp)
}

#[cfg(test)]
mod ema_tests {
    use super::ema_decay;

    #[test]
    fn the_ema_ramp_forgets_the_initialisation_in_short_runs() {
        assert!(ema_decay(0.999, 0) < 0.11);
        assert_eq!(ema_decay(0.999, 100_000), 0.999);
        // The weight left on the starting point after n steps.
        let left = |n: usize| (0..n).map(|t| ema_decay(0.999, t) as f64).product::<f64>();
        assert!(left(1500) < 1e-6, "{}", left(1500));
        assert!(left(300) < 1e-4, "{}", left(300));
    }
}
