//! The trainable parameters: one flat burn tensor per flowmap tensor name, in the order
//! `flowmap::net::param_specs` gives. Networks are (re)built from the store each step, which costs
//! only handle clones, so the optimizer can update plain tensors.

use crate::burn_backend::{BurnBackend, BurnTensor};
use burn::tensor::{Device, Tensor, TensorData};
use flowmap::config::ModelConfig;
use flowmap::net::{param_specs, Network, ParamSource, ParamSpec};
use flowmap::rng::Rng;
use flowmap::weights::{HostTensor, Weights};
use flowmap::{Error, Result};
use std::collections::BTreeMap;

#[derive(Clone)]
pub struct ParamStore {
    pub specs: Vec<ParamSpec>,
    pub values: Vec<Tensor<1>>,
}

/// Whether a parameter starts at zero: the last layer of each residual branch and of the network,
/// so that every block starts as the identity and the initial velocity is 0 (as in DDPM's U-Net).
fn zero_init(name: &str) -> bool {
    name.ends_with("conv2.weight")
        || name.ends_with("proj.weight")
        || name == "out.conv.weight"
        || name == "output.weight"
}

impl ParamStore {
    /// Fresh parameters: LeCun-normal weights (std 1/√fan_in), zero biases, unit norms, and the
    /// zero-initialised output layers above.
    pub fn init(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        let specs = param_specs(config)?;
        let mut rng = Rng::new(seed ^ 0x5EED_1417);
        let values = specs
            .iter()
            .map(|s| {
                let n = s.numel();
                let data: Vec<f32> = if s.name.ends_with(".bias") {
                    vec![0.0; n]
                } else if s.name.contains("norm") {
                    vec![1.0; n]
                } else if zero_init(&s.name) {
                    vec![0.0; n]
                } else {
                    let fan_in: usize = s.shape[1..].iter().product();
                    rng.normals(n, 1.0 / (fan_in.max(1) as f32).sqrt())
                };
                flat(data, device)
            })
            .collect();
        Ok(ParamStore { specs, values })
    }

    /// Parameters from a flowmap weights file (a teacher, or weights to fine-tune).
    pub fn from_weights(w: &Weights, device: &Device) -> Result<Self> {
        Self::from_host(&w.meta.model, &w.tensors, device)
    }

    pub fn from_host(
        config: &ModelConfig,
        tensors: &BTreeMap<String, HostTensor>,
        device: &Device,
    ) -> Result<Self> {
        let specs = param_specs(config)?;
        let values = specs
            .iter()
            .map(|s| {
                let t = tensors
                    .get(&s.name)
                    .ok_or_else(|| Error::MissingTensor(s.name.clone()))?;
                if t.shape != s.shape {
                    return Err(Error::Shape {
                        name: s.name.clone(),
                        expected: s.shape.clone(),
                        found: t.shape.clone(),
                    });
                }
                Ok(flat(t.data.clone(), device))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ParamStore { specs, values })
    }

    /// Marks every parameter as a leaf that collects gradients.
    pub fn require_grad(mut self) -> Self {
        self.values = self
            .values
            .into_iter()
            .map(|v| v.detach().require_grad())
            .collect();
        self
    }

    /// The same values outside autodiff: constants for stop-gradient targets and frozen
    /// networks (burn's `detach` would keep a leaf's `require_grad`).
    pub fn frozen(&self) -> Self {
        ParamStore {
            specs: self.specs.clone(),
            values: self
                .values
                .iter()
                .map(|v| v.clone().without_autodiff())
                .collect(),
        }
    }

    /// Builds the flowmap network on these parameters.
    pub fn network(&self, config: &ModelConfig) -> Result<Network<BurnBackend>> {
        let mut src = StoreSource {
            store: self,
            next: 0,
        };
        Network::build(config, &mut src)
    }

    pub fn to_host(&self) -> Result<BTreeMap<String, HostTensor>> {
        self.specs
            .iter()
            .zip(&self.values)
            .map(|(s, v)| {
                let data = v
                    .clone()
                    .try_into_vec_as::<f32>()
                    .map_err(|e| Error::Gpu(format!("reading {}: {e:?}", s.name)))?;
                Ok((
                    s.name.clone(),
                    HostTensor {
                        shape: s.shape.clone(),
                        data,
                    },
                ))
            })
            .collect()
    }

    pub fn numel(&self) -> usize {
        self.specs.iter().map(|s| s.numel()).sum()
    }
}

pub fn flat(data: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = data.len();
    Tensor::<1>::from_data(TensorData::new(data, [n]), device)
}

/// Hands out the store's tensors in build order, checking each name against the spec list.
struct StoreSource<'a> {
    store: &'a ParamStore,
    next: usize,
}

impl ParamSource<BurnBackend> for StoreSource<'_> {
    fn param(&mut self, name: &str, shape: &[usize]) -> Result<BurnTensor> {
        let i = self.next;
        let spec = self
            .store
            .specs
            .get(i)
            .ok_or_else(|| Error::UnexpectedTensor(name.into()))?;
        if spec.name != name || spec.shape != shape {
            return Err(Error::Config(format!(
                "parameter {i} is `{}` {:?}, the network asks for `{name}` {shape:?}",
                spec.name, spec.shape
            )));
        }
        self.next += 1;
        Ok(BurnTensor::from_flat(self.store.values[i].clone(), shape))
    }
}
