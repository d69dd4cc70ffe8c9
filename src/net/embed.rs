//! Two-time conditioning (METHOD §3): sinusoidal embeddings of s and of (t − s), each through
//! its own MLP, summed, then SiLU. Every block reads this conditioning vector through its own
//! linear layer.

use super::ParamSource;
use crate::backend::Backend;
use crate::config::{Activation, TimeEmbedConfig};
use crate::error::Result;

/// Linear layer parameters: weight [out, in] and bias [out].
pub struct Dense<B: Backend> {
    pub w: B::Tensor,
    pub b: B::Tensor,
}

impl<B: Backend> Dense<B> {
    pub fn build(src: &mut dyn ParamSource<B>, name: &str, inp: usize, out: usize) -> Result<Self> {
        Ok(Dense {
            w: src.param(&format!("{name}.weight"), &[out, inp])?,
            b: src.param(&format!("{name}.bias"), &[out])?,
        })
    }

    pub fn forward(
        &self,
        be: &B,
        x: &B::Tensor,
        modulation: Option<&B::Tensor>,
        act: Activation,
    ) -> B::Tensor {
        be.linear(x, &self.w, &self.b, modulation, act)
    }
}

/// The time conditioning of a batch: one row per distinct (s, t), each shared by consecutive
/// samples (one row each when every sample has its own times, as in training; one row for the
/// whole batch when a sampler's jump moves it at once). A block reads it through its own linear
/// layer, which runs on the distinct rows only; the ops that take the result as their
/// modulation spread each row over its samples themselves ([`Backend::linear`]).
pub struct Cond<B: Backend> {
    pub rows: B::Tensor,
}

impl<B: Backend> Cond<B> {
    /// emb(cond) for each distinct (s, t), [M, out]: a modulation for a batch of N samples
    /// with M dividing N.
    pub fn project(&self, be: &B, emb: &Dense<B>) -> B::Tensor {
        emb.forward(be, &self.rows, None, Activation::None)
    }
}

/// The length of the runs of equal consecutive (s, t) pairs that tile the batch: the greatest
/// common divisor of the run lengths, so that every block of that many samples shares its times.
pub fn shared_run(s: &[f32], t: &[f32]) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let (mut g, mut run) = (0, 0);
    for i in 0..s.len() {
        if i > 0 && (s[i] != s[i - 1] || t[i] != t[i - 1]) {
            g = gcd(g, run);
            run = 0;
        }
        run += 1;
    }
    gcd(g, run).max(1)
}

pub struct TimeEmbed<B: Backend> {
    cfg: TimeEmbedConfig,
    s: [Dense<B>; 2],
    d: [Dense<B>; 2],
}

impl<B: Backend> TimeEmbed<B> {
    pub fn build(cfg: &TimeEmbedConfig, src: &mut dyn ParamSource<B>) -> Result<Self> {
        let mlp = |src: &mut dyn ParamSource<B>, name: &str| -> Result<[Dense<B>; 2]> {
            Ok([
                Dense::build(src, &format!("time.{name}.0"), cfg.dim, cfg.hidden)?,
                Dense::build(src, &format!("time.{name}.1"), cfg.hidden, cfg.hidden)?,
            ])
        };
        Ok(TimeEmbed {
            cfg: cfg.clone(),
            s: mlp(src, "s")?,
            d: mlp(src, "d")?,
        })
    }

    /// Width of the conditioning vector.
    pub fn width(&self) -> usize {
        self.cfg.hidden
    }

    /// SiLU(MLP_s(emb(s)) + MLP_d(emb(t − s))): [N, hidden].
    pub fn forward(&self, be: &B, s: &B::Tensor, dt: &B::Tensor) -> B::Tensor {
        let c = &self.cfg;
        let branch = |mlp: &[Dense<B>; 2], times: &B::Tensor| {
            let e = be.timestep_embedding(times, c.dim, c.max_period, c.time_scale);
            let h = mlp[0].forward(be, &e, None, Activation::Silu);
            mlp[1].forward(be, &h, None, Activation::None)
        };
        let sum = be.add(&branch(&self.s, s), &branch(&self.d, dt));
        be.activation(&sum, Activation::Silu)
    }
}

#[cfg(test)]
mod tests {
    use super::shared_run;

    #[test]
    fn shared_run_is_the_gcd_of_the_run_lengths() {
        assert_eq!(shared_run(&[0.5; 6], &[1.0; 6]), 6);
        assert_eq!(shared_run(&[0.1, 0.2, 0.3], &[0.5, 0.5, 0.5]), 1);
        // Runs of 2, 4, 2: blocks of 2 share their times.
        let s = [0.1, 0.1, 0.4, 0.4, 0.4, 0.4, 0.0, 0.0];
        let t = [0.1, 0.1, 0.9, 0.9, 0.9, 0.9, 1.0, 1.0];
        assert_eq!(shared_run(&s, &t), 2);
        // Equal s but different t breaks a run; runs of 3 and 1 leave no sharing.
        assert_eq!(shared_run(&[0.2; 4], &[0.3, 0.3, 0.3, 0.4]), 1);
        assert_eq!(shared_run(&[], &[]), 1);
    }
}
