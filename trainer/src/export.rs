//! Exporting trained weights in the sampler's format: the EMA parameters, the model config, and
//! provenance (method, steps, data, seed, git commit) in the metadata.

use crate::checkpoint;
use crate::config::TrainConfig;
use crate::data::DataSource;
use crate::params::ParamStore;
use anyhow::{Context, Result};
use flowmap::config::{DataSpec, ModelConfig, ModelMeta, FORMAT_VERSION};
use flowmap::weights::{HostTensor, StoreDtype, Weights};
use std::collections::BTreeMap;
use std::path::Path;

/// The git commit of the source tree the trainer was run from, if it is a git checkout.
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub fn model_meta(
    cfg: &TrainConfig,
    model: &ModelConfig,
    data: DataSpec,
    sigma0: f32,
) -> ModelMeta {
    let mut provenance = BTreeMap::new();
    provenance.insert(
        "data".into(),
        cfg.data
            .images
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| cfg.data.name.clone()),
    );
    provenance.insert("seed".into(), cfg.seed.to_string());
    provenance.insert("batch".into(), cfg.batch.to_string());
    provenance.insert("lr".into(), cfg.lr.to_string());
    provenance.insert("ema".into(), cfg.ema.to_string());
    provenance.insert("git".into(), git_commit());
    if let Some(t) = &cfg.teacher {
        provenance.insert("teacher".into(), t.display().to_string());
    }
    if let Some(i) = &cfg.init {
        provenance.insert("init".into(), i.display().to_string());
    }
    ModelMeta {
        format_version: FORMAT_VERSION,
        model: model.clone(),
        data,
        sigma0,
        interpolant: cfg.interpolant,
        method: cfg.objective.name().into(),
        provenance,
    }
}

/// The metadata a run exports with, from its config alone (for `trainer export`).
pub fn run_meta(cfg: &TrainConfig) -> Result<ModelMeta> {
    let data = DataSource::load(&cfg.data)?;
    let sigma0 = cfg.sigma0.unwrap_or_else(|| data.default_sigma0());
    Ok(model_meta(cfg, &cfg.model(), data.spec(), sigma0))
}

/// Writes `params` (normally the EMA weights) with `meta`, recording the step count.
pub fn write(
    path: &Path,
    meta: &ModelMeta,
    params: &ParamStore,
    steps: usize,
    dtype: StoreDtype,
) -> Result<()> {
    let mut meta = meta.clone();
    meta.provenance.insert("steps".into(), steps.to_string());
    let tensors = params.to_host()?;
    Weights::write(path, &meta, &tensors, dtype)
        .with_context(|| format!("exporting {}", path.display()))
}

/// `trainer export`: a checkpoint's EMA weights (or, with `raw`, its current parameters) to a
/// flowmap weights file.
pub fn from_checkpoint(ckpt: &Path, out: &Path, dtype: StoreDtype, raw: bool) -> Result<ModelMeta> {
    let (cmeta, groups) = checkpoint::load(ckpt)?;
    let meta = run_meta(&cmeta.config)?;
    let group = if raw { "param" } else { "ema" };
    let values = groups
        .get(group)
        .with_context(|| format!("the checkpoint has no `{group}` weights"))?;
    let specs = flowmap::net::param_specs(&meta.model)?;
    let mut tensors = BTreeMap::new();
    for s in specs {
        let data = values
            .get(&s.name)
            .with_context(|| format!("the checkpoint lacks {group}/{}", s.name))?
            .clone();
        tensors.insert(
            s.name.clone(),
            HostTensor {
                shape: s.shape,
                data,
            },
        );
    }
    let mut meta = meta;
    meta.provenance
        .insert("steps".into(), cmeta.step.to_string());
    if raw {
        meta.provenance
            .insert("weights".into(), "raw parameters, not the EMA".into());
    }
    Weights::write(out, &meta, &tensors, dtype)
        .with_context(|| format!("exporting {}", out.display()))?;
    Ok(meta)
}
