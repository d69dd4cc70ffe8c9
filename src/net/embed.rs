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
