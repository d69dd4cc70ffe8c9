//! The training run's configuration: flags, an optional TOML file, and the defaults below. The
//! resolved config is saved as `config.toml` beside the checkpoint.

use crate::objectives::Objective;
use crate::optim::Optimizer;
use flowmap::config::{Interpolant, ModelConfig};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where training data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `mnist` (IDX images) or a 2-D set: `checkerboard`, `eight-gaussians`, `two-moons`, `spiral`.
    pub name: String,
    /// IDX image file (default: the bundled train split in `data/`).
    #[serde(default)]
    pub images: Option<PathBuf>,
    /// IDX label file matching `images`.
    #[serde(default)]
    pub labels: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub objective: Objective,
    pub data: DataConfig,
    /// The architecture; default: `ModelConfig::mnist_default()` for images,
    /// `ModelConfig::toy2d_default()` for 2-D data.
    #[serde(default)]
    pub model: Option<ModelConfig>,
    /// Optimizer steps. Default 2000.
    #[serde(default = "d::steps")]
    pub steps: usize,
    /// Samples per step. Default 64.
    #[serde(default = "d::batch")]
    pub batch: usize,
    /// Peak Adam learning rate. Default 1e-3.
    #[serde(default = "d::lr")]
    pub lr: f64,
    /// Linear warm-up steps, then the `schedule`. Default 100.
    #[serde(default = "d::warmup")]
    pub warmup: usize,
    /// After warm-up: `cosine` decay to `lr · final_lr_ratio` at `steps`, or `rsqrt`: flat until
    /// `decay_start`, then lr · √(decay_start / step), the authors' schedule (RECIPES.md), which
    /// does not depend on `steps`, so a run can be extended on resume without changing its past.
    /// Default `cosine`.
    #[serde(default)]
    pub schedule: Schedule,
    /// `cosine`: the final learning rate as a fraction of `lr`. Default 0.1.
    #[serde(default = "d::final_lr_ratio")]
    pub final_lr_ratio: f64,
    /// `rsqrt`: the step where the 1/√ decay begins. Default 35,000 (the authors' value).
    #[serde(default = "d::decay_start")]
    pub decay_start: usize,
    /// `adam` or `radam` (the authors' choice). Default `adam`.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Global gradient-norm clip. Default 10 (METHOD §7's checkerboard runs).
    #[serde(default = "d::grad_clip")]
    pub grad_clip: f32,
    /// EMA decay of the exported weights, reached after a ramp (1 + step) / (10 + step). Default 0.999.
    #[serde(default = "d::ema")]
    pub ema: f32,
    /// Seed of initialisation, data order, noise and times. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Stop after this many minutes of training, checkpointing and exporting as at the last
    /// step (`--minutes`, for a fixed time budget such as a lent GPU's). A property of one
    /// invocation, not of the run, so it is never saved in config.toml.
    #[serde(skip)]
    pub minutes: Option<f64>,
    /// A flowmap weights file of a trained `fm` teacher (lmd, emd, pfmm).
    #[serde(default)]
    pub teacher: Option<PathBuf>,
    /// A flowmap weights file of the same architecture whose weights start the run instead of a
    /// random initialisation; distillation usually starts the student from its `fm` teacher,
    /// whose diagonal v(t, t, ·) is already right (METHOD §4), so only the off-diagonal is learnt.
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// pfmm: number of stages; δ_k = 2^(k − stages + 1), so the last stage allows |t − s| ≤ 1.
    /// Default 4.
    #[serde(default = "d::pfmm_stages")]
    pub pfmm_stages: usize,
    /// pfmm: the first stage's teacher map is the `init` network itself, frozen (its two half
    /// jumps X_{u,t} ∘ X_{s,u} are the target), instead of the `fm` teacher's Euler step; no
    /// `teacher` is needed. Progressive distillation of a trained flow map into itself: each
    /// stage's student learns in one jump what the previous stage's made in two.
    #[serde(default)]
    pub pfmm_from_init: bool,
    /// psd: γ ~ U[0, 1] (PSD-U) instead of γ = 1/2 (PSD-M).
    #[serde(default)]
    pub psd_uniform: bool,
    /// Consecutive samples of a batch that share one draw of their times (s, t). The network's
    /// time conditioning runs once per distinct (s, t) (`flowmap::net::embed::Cond`), so sharing
    /// cuts the FLOPs of models whose conditioning is a large share of the work (the embedded
    /// MLP: about 60%) at the price of fewer distinct times per batch. Default 1 (no sharing).
    #[serde(default = "d::share_times")]
    pub share_times: usize,
    /// The η of the (s, t) sampler (METHOD §4): the share of diagonal pairs t = s, which train
    /// the velocity v(t, t, ·); the rest are jumps s < t. Default 0.75, the authors' value.
    #[serde(default = "d::eta")]
    pub eta: f64,
    /// Base standard deviation; default 1 for images and the data's standard deviation for 2-D
    /// sets (METHOD §1).
    #[serde(default)]
    pub sigma0: Option<f32>,
    #[serde(default)]
    pub interpolant: Interpolant,
    /// Steps between checkpoints. Default 500.
    #[serde(default = "d::checkpoint_every")]
    pub checkpoint_every: usize,
    /// Steps between CSV rows. Default 10.
    #[serde(default = "d::log_every")]
    pub log_every: usize,
}

/// The learning-rate curve after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    #[default]
    Cosine,
    Rsqrt,
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Schedule::Cosine),
            "rsqrt" => Ok(Schedule::Rsqrt),
            _ => Err(format!("unknown schedule `{s}` (cosine, rsqrt)")),
        }
    }
}

/// The defaults, in one place: serde fills a config file's gaps from them and the CLI's help
/// prints them.
pub mod d {
    pub fn steps() -> usize {
        2000
    }
    pub fn batch() -> usize {
        64
    }
    pub fn lr() -> f64 {
        1e-3
    }
    pub fn warmup() -> usize {
        100
    }
    pub fn final_lr_ratio() -> f64 {
        0.1
    }
    pub fn decay_start() -> usize {
        35_000
    }
    pub fn grad_clip() -> f32 {
        10.0
    }
    pub fn ema() -> f32 {
        0.999
    }
    pub fn pfmm_stages() -> usize {
        4
    }
    pub fn checkpoint_every() -> usize {
        500
    }
    pub fn share_times() -> usize {
        1
    }
    pub fn eta() -> f64 {
        0.75
    }
    pub fn log_every() -> usize {
        10
    }
}

impl TrainConfig {
    pub fn new(objective: Objective, data: &str) -> Self {
        toml::from_str(&format!(
            "objective = \"{}\"\n[data]\nname = \"{data}\"\n",
            objective.name()
        ))
        .expect("defaults parse")
    }

    pub fn is_images(&self) -> bool {
        self.data.name == "mnist"
    }

    /// The architecture this run trains.
    pub fn model(&self) -> ModelConfig {
        self.model.clone().unwrap_or_else(|| {
            if self.is_images() {
                ModelConfig::mnist_default()
            } else {
                ModelConfig::toy2d_default()
            }
        })
    }

    /// Checks values that would otherwise fail deep inside training.
    pub fn validate(&self) -> Result<(), String> {
        if self.steps == 0 || self.batch == 0 {
            return Err("steps and batch must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("lr must be positive, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.ema) {
            return Err(format!("ema must be in [0, 1), got {}", self.ema));
        }
        if self.pfmm_from_init && (self.objective != Objective::Pfmm || self.init.is_none()) {
            return Err("pfmm_from_init distills the --init network: it needs --objective pfmm and --init FILE".into());
        }
        if self.objective.needs_teacher() && self.teacher.is_none() && !self.pfmm_from_init {
            return Err(format!(
                "{} distills a teacher: pass --teacher FILE (an `fm` model)",
                self.objective.name()
            ));
        }
        if self.pfmm_stages == 0 {
            return Err("pfmm_stages must be at least 1".into());
        }
        if self.share_times == 0 || self.share_times > self.batch {
            return Err(format!(
                "share_times must be between 1 and the batch size {}, got {}",
                self.batch, self.share_times
            ));
        }
        if !(0.0..=1.0).contains(&self.eta) {
            return Err(format!("eta must be in [0, 1], got {}", self.eta));
        }
        if self.log_every == 0 || self.checkpoint_every == 0 {
            return Err("log_every and checkpoint_every must be at least 1".into());
        }
        self.model().validate().map_err(|e| e.to_string())
    }

    /// The learning rate at a step: linear warm-up, then the schedule.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        if self.schedule == Schedule::Rsqrt {
            let start = self.decay_start.max(1);
            return if step <= start {
                self.lr
            } else {
                self.lr * (start as f64 / step as f64).sqrt()
            };
        }
        let span = (self.steps - self.warmup.min(self.steps)).max(1) as f64;
        let p = ((step - self.warmup) as f64 / span).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
        self.lr * (self.final_lr_ratio + (1.0 - self.final_lr_ratio) * cos)
    }

    /// pfmm: the stage and the largest |t − s| at a step (stages of equal length, δ doubling).
    /// From a trained flow map (`pfmm_from_init`) every stage spans the whole |t − s| ≤ 1: the
    /// teacher map jumps anywhere, so the stages only say when it is refreshed.
    pub fn pfmm_gap(&self, step: usize) -> (usize, f32) {
        let stage = (step * self.pfmm_stages / self.steps).min(self.pfmm_stages - 1);
        if self.pfmm_from_init {
            return (stage, 1.0);
        }
        (stage, 2f32.powi(stage as i32 + 1 - self.pfmm_stages as i32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let mut c = TrainConfig::new(Objective::Pfmm, "checkerboard");
        c.steps = 1000;
        c.warmup = 100;
        assert!((c.lr_at(0) - 1e-5).abs() < 1e-12);
        assert!((c.lr_at(99) - 1e-3).abs() < 1e-12);
        assert!((c.lr_at(999) - 1e-4).abs() < 1e-6);
        assert_eq!(c.pfmm_gap(0), (0, 0.125));
        assert_eq!(c.pfmm_gap(999), (3, 1.0));
        c.pfmm_from_init = true;
        assert_eq!(c.pfmm_gap(0), (0, 1.0));
        assert_eq!(c.pfmm_gap(500), (2, 1.0));
    }

    /// pfmm_from_init distills the init network: it needs both, and then no teacher.
    #[test]
    fn pfmm_from_init_needs_pfmm_and_init_and_no_teacher() {
        let mut c = TrainConfig::new(Objective::Pfmm, "checkerboard");
        c.pfmm_from_init = true;
        assert!(c.validate().unwrap_err().contains("--init"));
        c.init = Some("model.safetensors".into());
        c.validate().unwrap();
        c.objective = Objective::Lsd;
        assert!(c.validate().unwrap_err().contains("pfmm"));
    }

    #[test]
    fn rsqrt_schedule_is_flat_then_inverse_square_root() {
        let mut c = TrainConfig::new(Objective::Lsd, "checkerboard");
        c.schedule = Schedule::Rsqrt;
        c.warmup = 10;
        c.decay_start = 1000;
        c.steps = 500; // the total does not matter to rsqrt
        assert!((c.lr_at(4) - 5e-4).abs() < 1e-12);
        assert_eq!(c.lr_at(10), 1e-3);
        assert_eq!(c.lr_at(1000), 1e-3);
        assert!((c.lr_at(4000) - 5e-4).abs() < 1e-12);
        assert!((c.lr_at(16_000) - 2.5e-4).abs() < 1e-12);
        let longer = TrainConfig {
            steps: 100_000,
            ..c.clone()
        };
        assert!((0..20_000)
            .step_by(97)
            .all(|s| c.lr_at(s) == longer.lr_at(s)));
        assert_eq!(Schedule::parse("rsqrt"), Ok(Schedule::Rsqrt));
        assert!(Schedule::parse("linear").is_err());
    }

    #[test]
    fn toml_round_trip_and_errors() {
        let c = TrainConfig::new(Objective::Lsd, "mnist");
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<TrainConfig>(&text).unwrap(), c);
        assert!(toml::from_str::<TrainConfig>(
            "objective = \"lsd\"\nbogus = 1\n[data]\nname=\"mnist\""
        )
        .is_err());
        let mut d = TrainConfig::new(Objective::Lmd, "mnist");
        assert!(d.validate().unwrap_err().contains("--teacher"));
        d.teacher = Some("t.safetensors".into());
        assert!(d.validate().is_ok());
    }
}
