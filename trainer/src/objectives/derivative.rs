//! Time and space derivatives of the flow map by central finite differences (METHOD §5).
//!
//! burn 0.22 has reverse-mode autodiff only (no JVP), so ∂_t X_{s,t}(x) is taken as
//! (X_{s,t+h}(x) − X_{s,t−h}(x)) / (t₊ − t₋) with t± clamped to [0, 1]. h = 1e-3 balances the
//! O(h²) truncation error against f32 rounding (≈ ε|X|/h ≈ 1e-4 |X|); the test below checks this
//! step on the exact flow map of METHOD §8. Both evaluations run as one doubled batch, and
//! gradients flow through both.

use crate::burn_backend::{BurnBackend, BurnTensor};
use crate::flow::{scale_rows, FlowModel};
use burn::tensor::Tensor;
use flowmap::backend::Shaped;
use flowmap::Result;

pub const FD_STEP: f32 = 1e-3;

/// Which time argument is differentiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrt {
    S,
    T,
}

/// (∂X_{s,t}(x) / ∂s or ∂t, and the midpoint (X₊ + X₋)/2 ≈ X_{s,t}(x)).
pub fn time_derivative(
    model: &dyn FlowModel,
    be: &BurnBackend,
    x: &BurnTensor,
    s: &[f32],
    t: &[f32],
    wrt: Wrt,
    h: f32,
) -> Result<(BurnTensor, BurnTensor)> {
    let n = s.len();
    let (mut s2, mut t2, mut inv) = (
        Vec::with_capacity(2 * n),
        Vec::with_capacity(2 * n),
        Vec::with_capacity(n),
    );
    let mut lo_part = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let c = if wrt == Wrt::T { t[i] } else { s[i] };
        let (hi, lo) = ((c + h).min(1.0), (c - h).max(0.0));
        inv.push(1.0 / (hi - lo));
        match wrt {
            Wrt::T => {
                s2.push(s[i]);
                t2.push(hi);
                lo_part.0.push(s[i]);
                lo_part.1.push(lo);
            }
            Wrt::S => {
                s2.push(hi);
                t2.push(t[i]);
                lo_part.0.push(lo);
                lo_part.1.push(t[i]);
            }
        }
    }
    s2.extend(lo_part.0);
    t2.extend(lo_part.1);
    let x2 = be.concat_batch(x, x);
    let y = model.flow_map(be, &x2, &s2, &t2)?;
    let (plus, minus) = be.split_batch(&y, n);
    let diff = BurnTensor::new(plus.t.clone() - minus.t.clone(), plus.shape());
    let mid = BurnTensor::new((plus.t + minus.t) * 0.5, x.shape());
    Ok((scale_rows(be, &diff, &inv), mid))
}

/// The directional derivative ∇_x X_{s,t}(x) · d ≈ (X(x + h d) − X(x − h d)) / 2h.
pub fn space_derivative(
    model: &dyn FlowModel,
    be: &BurnBackend,
    x: &BurnTensor,
    d: &BurnTensor,
    s: &[f32],
    t: &[f32],
    h: f32,
) -> Result<BurnTensor> {
    let n = s.len();
    let xp = BurnTensor::new(x.t.clone() + d.t.clone() * h, x.shape());
    let xm = BurnTensor::new(x.t.clone() - d.t.clone() * h, x.shape());
    let x2 = be.concat_batch(&xp, &xm);
    let s2: Vec<f32> = s.iter().chain(s).copied().collect();
    let t2: Vec<f32> = t.iter().chain(t).copied().collect();
    let y = model.flow_map(be, &x2, &s2, &t2)?;
    let (plus, minus) = be.split_batch(&y, n);
    Ok(BurnTensor::new((plus.t - minus.t) * (0.5 / h), x.shape()))
}

impl BurnBackend {
    /// Stacks two batches of the same sample shape.
    pub fn concat_batch(&self, a: &BurnTensor, b: &BurnTensor) -> BurnTensor {
        let mut shape = a.shape().to_vec();
        shape[0] += b.shape()[0];
        BurnTensor::new(Tensor::cat(vec![a.t.clone(), b.t.clone()], 0), &shape)
    }

    /// The first `n` samples and the rest.
    pub fn split_batch(&self, x: &BurnTensor, n: usize) -> (BurnTensor, BurnTensor) {
        let total = x.shape()[0];
        let dims = x.t.dims();
        let mut s1 = x.shape().to_vec();
        s1[0] = n;
        let mut s2 = x.shape().to_vec();
        s2[0] = total - n;
        let a =
            x.t.clone()
                .slice([0..n, 0..dims[1], 0..dims[2], 0..dims[3]]);
        let b =
            x.t.clone()
                .slice([n..total, 0..dims[1], 0..dims[2], 0..dims[3]]);
        (BurnTensor::new(a, &s1), BurnTensor::new(b, &s2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::GaussianOracle;
    use burn::tensor::Device;
    use flowmap::backend::Backend;
    use flowmap::rng::Rng;

    /// The step size of training, checked against the exact ∂_t X of METHOD §8.
    #[test]
    fn fd_time_derivative_matches_the_exact_one() {
        let be = BurnBackend::new(Device::flex());
        let oracle = GaussianOracle {
            mu: 0.7,
            sigma0: 1.0,
            sigma1: 0.3,
        };
        let mut rng = Rng::new(1);
        let n = 64;
        let x = rng.normals(n * 3, 1.0);
        let s: Vec<f32> = (0..n).map(|i| 0.9 * i as f32 / n as f32).collect();
        // Interior times (central differences) and t = 1 (one-sided there: O(h) error).
        let t: Vec<f32> = s
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i % 8 == 0 {
                    1.0
                } else {
                    s + 0.05 + (0.9 - s) * (i % 7) as f32 / 7.0
                }
            })
            .collect();
        let xt = be.tensor(x.clone(), &[n, 3]);
        let (fd, mid) = time_derivative(&oracle, &be, &xt, &s, &t, Wrt::T, FD_STEP).unwrap();
        let fd = be.download(&fd).unwrap();
        let exact = oracle.dt_flow_map(&x, 3, &s, &t);
        for (i, (a, b)) in fd.chunks(3).zip(exact.chunks(3)).enumerate() {
            let tol = if t[i] == 1.0 { 2e-2 } else { 1e-3 };
            let worst = a
                .iter()
                .zip(b)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < tol,
                "FD ∂_t X off by {worst} at s = {}, t = {}",
                s[i],
                t[i]
            );
        }
        // The midpoint is X_{s,t} up to O(h²) (O(h) where t is clamped at 1).
        let direct = be
            .download(&oracle.flow_map(&be, &xt, &s, &t).unwrap())
            .unwrap();
        let mid = be.download(&mid).unwrap();
        let worst = mid
            .iter()
            .zip(&direct)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "midpoint off by {worst}");
    }
}
