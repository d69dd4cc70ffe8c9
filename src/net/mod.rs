//! The flow-map networks, written once against [`Backend`]. Building a network walks its
//! architecture and asks a [`ParamSource`] for each parameter by its stable name; walking it with
//! the shape-only backend is how [`param_specs`] lists the tensor names, so the names live here
//! and nowhere else.
//!
//! Tensor names (see also docs/FORMAT.md):
//! - `time.s.{0,1}.{weight,bias}`, `time.d.{0,1}.{weight,bias}`: the MLPs on the embeddings of
//!   s and of (t − s) (METHOD §3).
//! - unet: `conv_in`, `down.{level}.res.{i}`, `down.{level}.attn.{i}`, `down.{level}.downsample`,
//!   `mid.res.{0,1}`, `mid.attn`, `up.{level}.res.{i}`, `up.{level}.attn.{i}`, `up.{level}.upsample`,
//!   `out.norm`, `out.conv`; a residual block has `norm1, conv1, emb, norm2, conv2` and `skip`
//!   when its channel count changes; an attention block has `norm, qkv, proj`. Each ends in
//!   `.weight` / `.bias`.
//! - mlp: `layers.{i}` and `layers.{i}.emb`, `output`.

mod blocks;
mod embed;
mod mlp;
mod unet;

pub use embed::TimeEmbed;

use crate::backend::Backend;
use crate::config::{Conditioning, ModelConfig, ModelMeta};
use crate::error::{Error, Result};
use crate::shape::{ShapeBackend, ShapeTensor};

/// Where a network's parameters come from while it is built.
pub trait ParamSource<B: Backend> {
    fn param(&mut self, name: &str, shape: &[usize]) -> Result<B::Tensor>;
}

/// One parameter: its stable name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Records names and shapes; used by [`param_specs`].
#[derive(Default)]
struct SpecRecorder(Vec<ParamSpec>);

impl ParamSource<ShapeBackend> for SpecRecorder {
    fn param(&mut self, name: &str, shape: &[usize]) -> Result<ShapeTensor> {
        self.0.push(ParamSpec {
            name: name.to_string(),
            shape: shape.to_vec(),
        });
        Ok(ShapeTensor(shape.to_vec()))
    }
}

/// Every parameter of a config, in build order. The single list of tensor names and shapes.
pub fn param_specs(config: &ModelConfig) -> Result<Vec<ParamSpec>> {
    config.validate()?;
    let mut rec = SpecRecorder::default();
    Network::<ShapeBackend>::build(config, &mut rec)?;
    Ok(rec.0)
}

/// The cost of one forward pass at a batch size, op by op, from the shape backend.
pub fn forward_costs(config: &ModelConfig, batch: usize) -> Result<ShapeBackend> {
    let mut rec = SpecRecorder::default();
    let net = Network::<ShapeBackend>::build(config, &mut rec)?;
    let analyser = ShapeBackend::new();
    let mut shape = vec![batch];
    shape.extend(config.sample_shape());
    let x = ShapeTensor(shape);
    let times = vec![0.0; batch];
    net.velocity(&analyser, &x, &times, &times)?;
    Ok(analyser)
}

enum Body<B: Backend> {
    Unet(Box<unet::Unet<B>>),
    Mlp(mlp::Mlp<B>),
}

/// v_θ(s, t, x): the network of METHOD §3, for either architecture.
pub struct Network<B: Backend> {
    /// The time embedding; None for an `mlp` with `raw` conditioning.
    time: Option<TimeEmbed<B>>,
    body: Body<B>,
    sample_shape: Vec<usize>,
}

impl<B: Backend> Network<B> {
    pub fn build(config: &ModelConfig, src: &mut dyn ParamSource<B>) -> Result<Self> {
        config.validate()?;
        let time = if config.has_time_embedding() {
            Some(TimeEmbed::build(config.time(), src)?)
        } else {
            None
        };
        let body = match config {
            ModelConfig::Unet(c) => Body::Unet(Box::new(unet::Unet::build(c, src)?)),
            ModelConfig::Mlp(c) => Body::Mlp(mlp::Mlp::build(c, src)?),
        };
        Ok(Network {
            time,
            body,
            sample_shape: config.sample_shape(),
        })
    }

    /// Builds the network described by a file's metadata.
    pub fn from_meta(meta: &ModelMeta, src: &mut dyn ParamSource<B>) -> Result<Self> {
        Self::build(&meta.model, src)
    }

    /// The shape of one sample.
    pub fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }

    /// v_θ(s, t, x) for a batch x with per-sample times s and t.
    pub fn velocity(&self, b: &B, x: &B::Tensor, s: &[f32], t: &[f32]) -> Result<B::Tensor> {
        use crate::backend::Shaped;
        let n = x.shape()[0];
        if x.shape()[1..] != self.sample_shape[..] {
            return Err(Error::Argument(format!(
                "input shape {:?} does not match the model's sample shape {:?}",
                &x.shape()[1..],
                self.sample_shape
            )));
        }
        if s.len() != n || t.len() != n {
            return Err(Error::Argument(format!(
                "{n} samples need {n} times s and t"
            )));
        }
        let cond = match &self.time {
            Some(time) => {
                // Once per distinct (s, t): a sampler's jump shares them over the whole batch.
                let repeat = embed::shared_run(s, t);
                let s: Vec<f32> = s.iter().step_by(repeat).copied().collect();
                let dt: Vec<f32> = s
                    .iter()
                    .zip(t.iter().step_by(repeat))
                    .map(|(s, t)| t - s)
                    .collect();
                let s_t = b.upload_times(&s, &[s.len()])?;
                let dt_t = b.upload_times(&dt, &[dt.len()])?;
                // Every block's projection runs on these rows, and the norm or linear layer
                // it modulates reads each row for its run of samples: no copy per sample (on a
                // GPU, the MLP's four copies had taken 18% of its forward at batch 65,536).
                Some(embed::Cond {
                    rows: time.forward(b, &s_t, &dt_t),
                })
            }
            None => None,
        };
        match (&self.body, cond) {
            (Body::Unet(u), Some(cond)) => Ok(u.forward(b, x, &cond)),
            (Body::Mlp(m), cond) if m.conditioning() == Conditioning::Embed => {
                Ok(m.forward(b, x, cond.as_ref()))
            }
            (Body::Mlp(m), _) => Ok(m.forward(b, &mlp::raw_input(b, x, s, t)?, None)),
            (Body::Unet(_), None) => Err(Error::Config("a unet needs its time embedding".into())),
        }
    }

    /// One flow-map jump X_{s,t}(x) = x + (t − s) v_θ(s, t, x) for the whole batch (METHOD §3).
    pub fn flow_map(&self, b: &B, x: &B::Tensor, s: f32, t: f32) -> Result<B::Tensor> {
        use crate::backend::Shaped;
        let n = x.shape()[0];
        let v = self.velocity(b, x, &vec![s; n], &vec![t; n])?;
        Ok(b.flow_step(x, &v, t - s))
    }
}
