//! Training checkpoints: one safetensors file holding the parameters, their EMA, Adam's moments
//! and (pfmm) the stage teacher, with the run config, step and RNG state in its metadata.
//! Written atomically; `--resume` continues the run bit for bit.

use crate::config::TrainConfig;
use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const KEY: &str = "flowmap-trainer";
const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub version: u32,
    pub config: TrainConfig,
    /// Optimizer steps completed.
    pub step: usize,
    pub rng: ([u64; 4], Option<f64>),
    /// The pfmm stage whose teacher is stored (if any).
    #[serde(default)]
    pub teacher_stage: Option<usize>,
}

/// Named groups of tensors ("param", "ema", "adam_m", "adam_v", "stage_teacher"), each a map
/// from flowmap tensor name to flat values.
pub type Groups = BTreeMap<String, BTreeMap<String, Vec<f32>>>;

pub fn save(path: &Path, meta: &CheckpointMeta, groups: &Groups) -> Result<()> {
    save_groups(path, KEY, &serde_json::to_string(meta)?, groups)
}

/// Writes named tensor groups (as `group/name`, F32) with one JSON metadata entry under `key`.
pub fn save_groups(path: &Path, key: &str, meta_json: &str, groups: &Groups) -> Result<()> {
    let raw: Vec<(String, Vec<u8>, usize)> = groups
        .iter()
        .flat_map(|(g, m)| {
            m.iter().map(move |(n, v)| {
                (
                    format!("{g}/{n}"),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    v.len(),
                )
            })
        })
        .collect();
    let views = raw
        .iter()
        .map(|(n, b, len)| Ok((n.as_str(), TensorView::new(Dtype::F32, vec![*len], b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let info = HashMap::from([(key.to_string(), meta_json.to_string())]);
    let bytes = safetensors::serialize(views, Some(info))?;
    flowmap::output::write_atomic(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

pub fn load(path: &Path) -> Result<(CheckpointMeta, Groups)> {
    let (json, groups) = load_groups(path, KEY)?;
    let meta: CheckpointMeta = serde_json::from_str(&json)
        .with_context(|| format!("{}: unreadable checkpoint metadata", path.display()))?;
    if meta.version != VERSION {
        bail!(
            "{}: checkpoint version {} is not the supported {VERSION}",
            path.display(),
            meta.version
        );
    }
    Ok((meta, groups))
}

/// Reads what [`save_groups`] wrote; fails with a message naming the file if `key` is absent.
pub fn load_groups(path: &Path, key: &str) -> Result<(String, Groups)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(key))
        .with_context(|| format!("{} is not a flowmap `{key}` file", path.display()))?
        .clone();
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: corrupt or truncated file", path.display()))?;
    let mut groups = Groups::new();
    for (name, view) in st.iter() {
        let (g, n) = name
            .split_once('/')
            .with_context(|| format!("{}: stray tensor `{name}`", path.display()))?;
        if view.dtype() != Dtype::F32 {
            bail!("{}: tensor `{name}` is not F32", path.display());
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        groups
            .entry(g.to_string())
            .or_default()
            .insert(n.to_string(), data);
    }
    Ok((json, groups))
}

/// Refuses to resume a run with a checkpoint of a different model, objective or data.
pub fn check_compatible(found: &TrainConfig, wanted: &TrainConfig) -> Result<()> {
    if found.model() != wanted.model() {
        bail!(
            "incompatible checkpoint: it holds a {} model {}, this run trains {}",
            found.model().arch_name(),
            serde_json::to_string(&found.model())?,
            serde_json::to_string(&wanted.model())?
        );
    }
    if found.objective != wanted.objective || found.data.name != wanted.data.name {
        bail!(
            "incompatible checkpoint: it was trained with `{}` on {}, this run asks for `{}` on {}",
            found.objective.name(),
            found.data.name,
            wanted.objective.name(),
            wanted.data.name
        );
    }
    Ok(())
}
