//! The `mlp` architecture for points in R^d: `depth` layers, each linear → time scale-shift →
//! activation (fused in one linear kernel), then a linear read-out.

use super::embed::Dense;
use super::ParamSource;
use crate::backend::Backend;
use crate::config::{Activation, MlpConfig};
use crate::error::Result;

pub struct Mlp<B: Backend> {
    act: Activation,
    layers: Vec<(Dense<B>, Dense<B>)>,
    output: Dense<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn build(c: &MlpConfig, src: &mut dyn ParamSource<B>) -> Result<Self> {
        let mut layers = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let inp = if i == 0 { c.dim } else { c.width };
            let layer = Dense::build(src, &format!("layers.{i}"), inp, c.width)?;
            let emb = Dense::build(src, &format!("layers.{i}.emb"), c.time.hidden, 2 * c.width)?;
            layers.push((layer, emb));
        }
        Ok(Mlp {
            act: c.activation,
            layers,
            output: Dense::build(src, "output", c.width, c.dim)?,
        })
    }

    pub fn forward(&self, be: &B, x: &B::Tensor, cond: &B::Tensor) -> B::Tensor {
        let mut h = x.clone();
        for (layer, emb) in &self.layers {
            let m = emb.forward(be, cond, None, Activation::None);
            h = layer.forward(be, &h, Some(&m), self.act);
        }
        self.output.forward(be, &h, None, Activation::None)
    }
}
