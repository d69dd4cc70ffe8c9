//! What a loss needs from a model: v(s, t, x) for a batch with per-sample times. The network and
//! the closed-form Gaussian oracle (METHOD §8) both provide it, so every loss can be checked
//! against the exact flow map.

use crate::burn_backend::{BurnBackend, BurnTensor};
use flowmap::backend::{Backend, Shaped};
use flowmap::net::Network;
use flowmap::Result;

pub trait FlowModel {
    /// v(s, t, x); the flow map is X_{s,t}(x) = x + (t − s) v(s, t, x) (METHOD §3).
    fn velocity(
        &self,
        be: &BurnBackend,
        x: &BurnTensor,
        s: &[f32],
        t: &[f32],
    ) -> Result<BurnTensor>;

    /// X_{s,t}(x) with per-sample times.
    fn flow_map(
        &self,
        be: &BurnBackend,
        x: &BurnTensor,
        s: &[f32],
        t: &[f32],
    ) -> Result<BurnTensor> {
        let v = self.velocity(be, x, s, t)?;
        let dt: Vec<f32> = s.iter().zip(t).map(|(s, t)| t - s).collect();
        Ok(be.add(x, &scale_rows(be, &v, &dt)))
    }
}

impl FlowModel for Network<BurnBackend> {
    fn velocity(
        &self,
        be: &BurnBackend,
        x: &BurnTensor,
        s: &[f32],
        t: &[f32],
    ) -> Result<BurnTensor> {
        Network::velocity(self, be, x, s, t)
    }
}

/// Multiplies sample i of x by c[i].
pub fn scale_rows(be: &BurnBackend, x: &BurnTensor, c: &[f32]) -> BurnTensor {
    let n = x.shape()[0];
    let mut cs = vec![1usize; x.shape().len()];
    cs[0] = n;
    let col = be.tensor(c.to_vec(), &[n]).t.reshape(pad(&cs));
    BurnTensor::new(x.t.clone() * col, x.shape())
}

fn pad(s: &[usize]) -> [usize; 4] {
    let mut p = [1usize; 4];
    p[..s.len()].copy_from_slice(s);
    p
}

#[cfg(test)]
pub use oracle::GaussianOracle;

#[cfg(test)]
mod oracle {
    use super::*;

    /// Gaussian data N(μ·1, σ1² I) from the base N(0, σ0² I) under the linear interpolant: the flow
    /// map is known exactly (METHOD §8).
    #[derive(Debug, Clone, Copy)]
    pub struct GaussianOracle {
        pub mu: f32,
        pub sigma0: f32,
        pub sigma1: f32,
    }

    impl GaussianOracle {
        /// s_t² = (1 − t)² σ0² + t² σ1².
        pub fn std_at(&self, t: f64) -> f64 {
            (((1.0 - t) * self.sigma0 as f64).powi(2) + (t * self.sigma1 as f64).powi(2)).sqrt()
        }

        /// c_t = (t σ1² − (1 − t) σ0²) / s_t², so b_t(x) = μ + c_t (x − t μ).
        pub fn c_at(&self, t: f64) -> f64 {
            (t * (self.sigma1 as f64).powi(2) - (1.0 - t) * (self.sigma0 as f64).powi(2))
                / self.std_at(t).powi(2)
        }

        /// v(s, t, x) = a x + b μ per sample: from X_{s,t}(x) = t μ + (s_t / s_s)(x − s μ).
        fn coefficients(&self, s: f32, t: f32) -> (f32, f32) {
            let (s, t) = (s as f64, t as f64);
            if (t - s).abs() < 1e-7 {
                let c = self.c_at(t);
                return (c as f32, (1.0 - c * t) as f32);
            }
            let r = self.std_at(t) / self.std_at(s);
            (((r - 1.0) / (t - s)) as f32, ((t - r * s) / (t - s)) as f32)
        }

        /// ∂_t X_{s,t}(x) = μ + (ṡ_t / s_s)(x − s μ), per sample.
        pub fn dt_flow_map(&self, x: &[f32], len: usize, s: &[f32], t: &[f32]) -> Vec<f32> {
            let mut out = vec![0.0; x.len()];
            for (i, (row, o)) in x.chunks(len).zip(out.chunks_mut(len)).enumerate() {
                let (si, ti) = (s[i] as f64, t[i] as f64);
                let st = self.std_at(ti);
                let sdot = (-(1.0 - ti) * (self.sigma0 as f64).powi(2)
                    + ti * (self.sigma1 as f64).powi(2))
                    / st;
                let k = sdot / self.std_at(si);
                for (ov, &xv) in o.iter_mut().zip(row) {
                    *ov = (self.mu as f64 + k * (xv as f64 - si * self.mu as f64)) as f32;
                }
            }
            out
        }
    }

    impl FlowModel for GaussianOracle {
        fn velocity(
            &self,
            be: &BurnBackend,
            x: &BurnTensor,
            s: &[f32],
            t: &[f32],
        ) -> Result<BurnTensor> {
            let (a, b): (Vec<f32>, Vec<f32>) = s
                .iter()
                .zip(t)
                .map(|(&s, &t)| self.coefficients(s, t))
                .unzip();
            let mu = be.tensor(vec![self.mu; x.len()], x.shape());
            Ok(be.add(&scale_rows(be, x, &a), &scale_rows(be, &mu, &b)))
        }
    }
}
