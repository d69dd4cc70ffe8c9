//! The `mlp` architecture for points in R^d: `depth` layers, each linear → (time scale-shift) →
//! activation (fused in one linear kernel), then a linear read-out. With `raw` conditioning the
//! first layer reads [s, t, x] and no layer is modulated (the authors' checkerboard network,
//! RECIPES.md).

use super::embed::{Cond, Dense};
use super::ParamSource;
use crate::backend::{Backend, Shaped};
use crate::config::{Activation, Conditioning, MlpConfig};
use crate::error::Result;

pub struct Mlp<B: Backend> {
    act: Activation,
    conditioning: Conditioning,
    /// Each layer with its time modulation (`embed` conditioning only).
    layers: Vec<(Dense<B>, Option<Dense<B>>)>,
    output: Dense<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn build(c: &MlpConfig, src: &mut dyn ParamSource<B>) -> Result<Self> {
        let raw = c.conditioning == Conditioning::Raw;
        let mut layers = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let inp = match (i, raw) {
                (0, true) => c.dim + 2,
                (0, false) => c.dim,
                _ => c.width,
            };
            let layer = Dense::build(src, &format!("layers.{i}"), inp, c.width)?;
            let emb = if raw {
                None
            } else {
                Some(Dense::build(
                    src,
                    &format!("layers.{i}.emb"),
                    c.time.hidden,
                    2 * c.width,
                )?)
            };
            layers.push((layer, emb));
        }
        Ok(Mlp {
            act: c.activation,
            conditioning: c.conditioning,
            layers,
            output: Dense::build(src, "output", c.width, c.dim)?,
        })
    }

    pub fn conditioning(&self) -> Conditioning {
        self.conditioning
    }

    /// `embed`: x with the conditioning vector `cond`. `raw`: x is already [s, t, x] and `cond`
    /// is None.
    pub fn forward(&self, be: &B, x: &B::Tensor, cond: Option<&Cond<B>>) -> B::Tensor {
        let mut h = x.clone();
        for (layer, emb) in &self.layers {
            let m = match (emb, cond) {
                (Some(emb), Some(cond)) => Some(cond.project(be, emb)),
                _ => None,
            };
            h = layer.forward(be, &h, m.as_ref(), self.act);
        }
        self.output.forward(be, &h, None, Activation::None)
    }
}

/// The `raw` input [s, t, x] of a batch x [N, d]: the times are uploaded as [N, 2] and joined
/// to x along the feature axis by the backend's channel concatenation.
pub fn raw_input<B: Backend>(be: &B, x: &B::Tensor, s: &[f32], t: &[f32]) -> Result<B::Tensor> {
    let (n, d) = (x.shape()[0], x.shape()[1]);
    let st: Vec<f32> = s.iter().zip(t).flat_map(|(&s, &t)| [s, t]).collect();
    let st = be.upload(&st, &[n, 2, 1, 1])?;
    let x4 = be.reshape(x, &[n, d, 1, 1]);
    let joined = be.concat_channels(&st, &x4);
    Ok(be.reshape(&joined, &[n, d + 2]))
}
