//! Weights files: safetensors with the JSON [`ModelMeta`] under the `flowmap` metadata key.
//! F32 and F16 tensors load (F16 is widened to f32). Every way a file can be wrong — unreadable,
//! truncated, not safetensors, no or bad metadata, a newer format, a missing, unexpected,
//! misshapen or non-finite tensor, an unsupported dtype — is a named [`Error`].

use crate::backend::Backend;
use crate::config::{ModelMeta, METADATA_KEY};
use crate::error::{Error, Result};
use crate::net::{param_specs, Network, ParamSource, ParamSpec};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Storage precision of a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDtype {
    F32,
    F16,
}

/// A host tensor as read from or written to a file.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A loaded, validated weights file.
#[derive(Debug, Clone)]
pub struct Weights {
    pub meta: ModelMeta,
    pub tensors: BTreeMap<String, HostTensor>,
    /// The dtypes found in the file (for `flowmap info`).
    pub dtypes: BTreeSet<String>,
    /// Size of the file in bytes.
    pub file_bytes: usize,
}

impl Weights {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// Parses a file and checks that its tensors are exactly those its config names, with the
    /// right shapes and finite values.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::Format(describe(e, bytes.len())))?;
        let meta_json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or(Error::MissingMetadata)?;
        let meta = ModelMeta::from_json(meta_json)?;
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| Error::Format(describe(e, bytes.len())))?;

        let mut tensors = BTreeMap::new();
        let mut dtypes = BTreeSet::new();
        for (name, view) in st.iter() {
            let data = decode(name, &view)?;
            if let Some(index) = data.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    name: name.into(),
                    index,
                });
            }
            dtypes.insert(format!("{:?}", view.dtype()));
            tensors.insert(
                name.to_string(),
                HostTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        let w = Weights {
            meta,
            tensors,
            dtypes,
            file_bytes: bytes.len(),
        };
        w.check_against_config()?;
        Ok(w)
    }

    fn check_against_config(&self) -> Result<()> {
        let specs = param_specs(&self.meta.model)?;
        for spec in &specs {
            let t = self
                .tensors
                .get(&spec.name)
                .ok_or_else(|| Error::MissingTensor(spec.name.clone()))?;
            if t.shape != spec.shape {
                return Err(Error::Shape {
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    found: t.shape.clone(),
                });
            }
        }
        let known: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        if let Some(extra) = self.tensors.keys().find(|k| !known.contains(k.as_str())) {
            return Err(Error::UnexpectedTensor(extra.clone()));
        }
        Ok(())
    }

    /// Number of scalar parameters.
    pub fn parameter_count(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }

    /// Uploads the parameters to a backend and builds the network.
    pub fn network<B: Backend>(&self, backend: &B) -> Result<Network<B>> {
        network_from_tensors(&self.meta.model, &self.tensors, backend)
    }

    /// Serializes a model; `tensors` must match the config's parameter list.
    pub fn to_bytes(
        meta: &ModelMeta,
        tensors: &BTreeMap<String, HostTensor>,
        dtype: StoreDtype,
    ) -> Result<Vec<u8>> {
        meta.validate()?;
        let raw: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(name, t)| {
                let (dt, bytes) = match dtype {
                    StoreDtype::F32 => (
                        Dtype::F32,
                        t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    ),
                    StoreDtype::F16 => (
                        Dtype::F16,
                        t.data
                            .iter()
                            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                            .collect(),
                    ),
                };
                (name.clone(), dt, t.shape.clone(), bytes)
            })
            .collect();
        let views = raw
            .iter()
            .map(|(n, dt, s, b)| {
                Ok((
                    n.as_str(),
                    TensorView::new(*dt, s.clone(), b).map_err(|e| Error::Format(e.to_string()))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let info = HashMap::from([(METADATA_KEY.to_string(), meta.to_json())]);
        let bytes =
            safetensors::serialize(views, Some(info)).map_err(|e| Error::Format(e.to_string()))?;
        // Refuse to write what we could not read back.
        Weights::from_bytes(&bytes)?;
        Ok(bytes)
    }

    /// Writes a model atomically (temporary file, then rename).
    pub fn write(
        path: &Path,
        meta: &ModelMeta,
        tensors: &BTreeMap<String, HostTensor>,
        dtype: StoreDtype,
    ) -> Result<()> {
        let bytes = Self::to_bytes(meta, tensors, dtype)?;
        crate::output::write_atomic(path, &bytes)
    }
}

/// A deterministic random initialisation of every parameter of a config (fan-in scaled normal
/// weights, small biases, unit norms). For tests and benchmarks; never a default model.
pub fn random_tensors(specs: &[ParamSpec], seed: u64) -> BTreeMap<String, HostTensor> {
    let mut rng = crate::rng::Rng::new(seed);
    specs
        .iter()
        .map(|s| {
            let n = s.numel();
            let is_norm = s.name.contains("norm");
            let data: Vec<f32> = if s.name.ends_with(".bias") {
                (0..n).map(|_| 0.1 * rng.normal()).collect()
            } else if is_norm {
                (0..n).map(|_| 1.0 + 0.1 * rng.normal()).collect()
            } else {
                let fan_in: usize = s.shape[1..].iter().product();
                let std = 1.0 / (fan_in.max(1) as f32).sqrt();
                (0..n).map(|_| std * rng.normal()).collect()
            };
            (
                s.name.clone(),
                HostTensor {
                    shape: s.shape.clone(),
                    data,
                },
            )
        })
        .collect()
}

/// Builds a network from named host tensors (a loaded file, or weights made in memory).
pub fn network_from_tensors<B: Backend>(
    config: &crate::config::ModelConfig,
    tensors: &BTreeMap<String, HostTensor>,
    backend: &B,
) -> Result<Network<B>> {
    Network::build(config, &mut Upload { tensors, backend })
}

struct Upload<'a, B: Backend> {
    tensors: &'a BTreeMap<String, HostTensor>,
    backend: &'a B,
}

impl<B: Backend> ParamSource<B> for Upload<'_, B> {
    fn param(&mut self, name: &str, shape: &[usize]) -> Result<B::Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.into()))?;
        if t.shape != shape {
            return Err(Error::Shape {
                name: name.into(),
                expected: shape.to_vec(),
                found: t.shape.clone(),
            });
        }
        self.backend.upload(&t.data, shape)
    }
}

fn decode(name: &str, view: &TensorView) -> Result<Vec<f32>> {
    let b = view.data();
    match view.dtype() {
        Dtype::F32 => Ok(b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()),
        Dtype::F16 => Ok(b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        other => Err(Error::Dtype {
            name: name.into(),
            dtype: format!("{other:?}"),
        }),
    }
}

fn describe(e: safetensors::SafeTensorError, len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => format!("file of {len} bytes is too short to hold a header"),
        E::InvalidHeaderLength => format!(
            "header length exceeds the file size ({len} bytes): truncated or not safetensors"
        ),
        E::MetadataIncompleteBuffer => {
            format!("tensor data is incomplete ({len} bytes): the file is truncated")
        }
        E::InvalidHeaderDeserialization(m) => format!("header is not valid JSON: {m}"),
        other => other.to_string(),
    }
}
