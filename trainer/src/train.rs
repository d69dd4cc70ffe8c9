//! The training loop: Adam with warm-up and cosine decay, global gradient-norm clipping, EMA
//! weights, seeded and reproducible, a progress bar, a CSV loss log, atomic resumable
//! checkpoints, and a clear stop on NaN/Inf. At the end the EMA weights are exported in the
//! sampler's format.

use crate::burn_backend::BurnBackend;
use crate::checkpoint::{self, CheckpointMeta, Groups};
use crate::config::TrainConfig;
use crate::data::DataSource;
use crate::export;
use crate::flow::FlowModel;
use crate::objectives::{self, Batch, Ctx};
use crate::optim::{self, Adam};
use crate::params::{flat, ParamStore};
use anyhow::{bail, Context, Result};
use burn::tensor::{Device, Tensor};
use flowmap::config::ModelConfig;
use flowmap::net::Network;
use flowmap::rng::Rng;
use flowmap::weights::Weights;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The files of a run directory.
pub struct RunPaths {
    pub dir: PathBuf,
}

impl RunPaths {
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint.safetensors")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("loss.csv")
    }
    pub fn model(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
}

/// Mutable training state.
struct State {
    params: ParamStore,
    ema: Vec<Tensor<1>>,
    adam: Adam,
    step: usize,
    rng: Rng,
    /// pfmm: the frozen previous-stage student and its stage.
    stage_teacher: Option<(usize, ParamStore)>,
}

/// What a finished run reports.
pub struct Summary {
    pub steps: usize,
    pub final_loss: f32,
    pub samples_per_sec: f64,
    pub model_path: PathBuf,
}

/// Wall-clock seconds of one step's phases.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepTimes {
    /// Sampling the batch, times and noise on the host, and uploading them.
    pub data: f64,
    /// Building the loss: every network evaluation of the objective, with the autodiff graph.
    pub forward: f64,
    /// `loss.backward()`.
    pub backward: f64,
    /// Gradient norm, clipping, the optimiser update and the EMA.
    pub update: f64,
}

/// What one optimiser step reports.
pub struct StepOutput {
    pub loss: f32,
    /// The loss's parts, read back only when logged.
    pub parts: Vec<Tensor<1>>,
    pub grad_norm: f32,
    pub lr: f32,
    pub times: StepTimes,
}

/// A run's model, data, teacher and state, ready to step: shared by `train` and the profiler.
pub struct Session {
    pub cfg: TrainConfig,
    pub model_cfg: ModelConfig,
    pub data: DataSource,
    pub sigma0: f32,
    pub be: BurnBackend,
    teacher: Option<Network<BurnBackend>>,
    st: State,
}

impl Session {
    /// Loads the data and teacher and starts from the checkpoint in `resume_from` when it has
    /// one, else from `--init` or a fresh initialisation.
    pub fn open(cfg: &TrainConfig, device: Device, resume_from: Option<&Path>) -> Result<Self> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        let model_cfg = cfg.model();
        let data = DataSource::load(&cfg.data)?;
        if data.sample_shape() != model_cfg.sample_shape() {
            bail!(
                "the data's samples are {:?} but the model takes {:?}",
                data.sample_shape(),
                model_cfg.sample_shape()
            );
        }
        let sigma0 = cfg.sigma0.unwrap_or_else(|| data.default_sigma0());
        let device = device.autodiff();
        let be = BurnBackend::new(device.clone());

        let teacher = match &cfg.teacher {
            Some(p) => {
                let w =
                    Weights::read(p).with_context(|| format!("loading teacher {}", p.display()))?;
                if w.meta.model.sample_shape() != model_cfg.sample_shape() {
                    bail!(
                        "teacher {} generates {:?}, this run {:?}",
                        p.display(),
                        w.meta.model.sample_shape(),
                        model_cfg.sample_shape()
                    );
                }
                Some(
                    ParamStore::from_weights(&w, &device)?
                        .frozen()
                        .network(&w.meta.model)?,
                )
            }
            None => None,
        };

        let mut st = match resume_from.filter(|p| p.exists()) {
            Some(ckpt) => {
                let (meta, groups) = checkpoint::load(ckpt)?;
                checkpoint::check_compatible(&meta.config, cfg)?;
                restore(&model_cfg, &meta, &groups, &device)?
            }
            None => {
                let init = match &cfg.init {
                    Some(p) => Some(load_init(p, &model_cfg, &device)?),
                    None => None,
                };
                let mut st = fresh(&model_cfg, cfg.seed, init, &device)?;
                if cfg.pfmm_from_init {
                    // Stage 0's teacher map: the initial network, frozen (METHOD §4 pfmm).
                    st.stage_teacher = Some((0, st.params.frozen()));
                }
                st
            }
        };
        st.adam.rule = cfg.optimizer;
        Ok(Session {
            cfg: cfg.clone(),
            model_cfg,
            data,
            sigma0,
            be,
            teacher,
            st,
        })
    }

    /// Optimiser steps completed.
    pub fn step_count(&self) -> usize {
        self.st.step
    }

    pub fn numel(&self) -> usize {
        self.st.params.numel()
    }

    /// One optimiser step of the configured objective.
    pub fn step(&mut self) -> Result<StepOutput> {
        let (cfg, st) = (&self.cfg, &mut self.st);
        let step = st.step;
        let t0 = Instant::now();
        let lr = cfg.lr_at(step) as f32;
        let (stage, max_gap) = cfg.pfmm_gap(step);
        if cfg.objective == objectives::Objective::Pfmm
            && stage > 0
            && st.stage_teacher.as_ref().map(|s| s.0) != Some(stage)
        {
            // A new stage distills the previous stage's student (METHOD §4 pfmm).
            st.stage_teacher = Some((stage, st.params.frozen()));
        }

        let x1 = self.data.sample(cfg.batch, &mut st.rng);
        let x0 = st
            .rng
            .normals(cfg.batch * self.model_cfg.sample_len(), self.sigma0);
        let batch = Batch {
            x0,
            x1,
            shape: self.model_cfg.sample_shape(),
            n: cfg.batch,
        };
        let student = st.params.network(&self.model_cfg)?;
        let student_sg = st.params.frozen().network(&self.model_cfg)?;
        let stage_net: Option<Network<BurnBackend>> = match &st.stage_teacher {
            Some((_, p)) => Some(p.network(&self.model_cfg)?),
            None => None,
        };
        let ctx = Ctx {
            be: &self.be,
            student: &student,
            student_sg: &student_sg,
            teacher: self.teacher.as_ref().map(|t| t as &dyn FlowModel),
            teacher_map: stage_net.as_ref().map(|t| t as &dyn FlowModel),
            interpolant: cfg.interpolant,
            max_gap,
            psd_uniform: cfg.psd_uniform,
            share_times: cfg.share_times,
            eta: cfg.eta,
        };
        let t1 = Instant::now();
        let loss = objectives::loss(cfg.objective, &ctx, &batch, &mut st.rng)?;
        let loss_value: f32 = loss.total.clone().into_scalar::<f32>();
        if !loss_value.is_finite() {
            bail!("training stopped at step {step}: the {} loss became {loss_value} (lower --lr or check the data)", cfg.objective.name());
        }
        let t2 = Instant::now();
        let grads = loss.total.backward();
        if self.be.profile.is_some() {
            // Profiling: wait for the backward's kernels (burn-wgpu queues them and returns), so
            // its time is not counted in the update's first readback.
            let _ = self.be.device.sync();
        }
        let t3 = Instant::now();
        let (g, norm) = optim::gradients(&st.params.values, &grads);
        if !norm.is_finite() {
            bail!("training stopped at step {step}: the gradient norm became {norm}");
        }
        let updated = st.adam.step(
            &mut st.params.values,
            &g,
            step,
            lr,
            optim::clip_factor(norm, cfg.grad_clip),
        );
        let decay = optim::ema_decay(cfg.ema, step);
        for (e, p) in st.ema.iter_mut().zip(updated) {
            *e = e.clone() * decay + p * (1.0 - decay);
        }
        st.step += 1;
        let parts = loss.parts.into_iter().map(|(_, t)| t).collect();
        let t4 = Instant::now();
        Ok(StepOutput {
            loss: loss_value,
            parts,
            grad_norm: norm,
            lr,
            times: StepTimes {
                data: (t1 - t0).as_secs_f64(),
                forward: (t2 - t1).as_secs_f64(),
                backward: (t3 - t2).as_secs_f64(),
                update: (t4 - t3).as_secs_f64(),
            },
        })
    }

    /// Writes the checkpoint (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        save(path, &self.cfg, &self.st)
    }

    /// The EMA weights, as exported.
    pub fn ema(&self) -> ParamStore {
        ParamStore {
            specs: self.st.params.specs.clone(),
            values: self.st.ema.clone(),
        }
    }
}

/// Trains `cfg` in the run directory `dir`. `resume` names the run directory whose checkpoint is
/// continued: `dir` itself, or another run, which is then forked: `dir` starts from its
/// checkpoint and its loss.csv, and it is left untouched.
pub fn train(
    cfg: &TrainConfig,
    device: Device,
    dir: &Path,
    resume: Option<&Path>,
    quiet: bool,
) -> Result<Summary> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating run directory {}", dir.display()))?;
    let paths = RunPaths {
        dir: dir.to_path_buf(),
    };
    // A run killed while writing left its temporary files; the files themselves are whole.
    for p in [&paths.checkpoint(), &paths.model(), &paths.log()] {
        flowmap::output::remove_stale_temporaries(p);
    }
    let from = resume.map(|d| RunPaths {
        dir: d.to_path_buf(),
    });
    let fork_from = from.as_ref().filter(|s| !same_dir(&s.dir, dir));
    if let Some(src) = fork_from {
        check_fork(src, &paths)?;
    }
    let ckpt = from.as_ref().map(RunPaths::checkpoint);
    if let Some(c) = ckpt.as_ref().filter(|c| !c.exists()) {
        eprintln!("note: no checkpoint {}, starting fresh", c.display());
    }
    let mut sess = Session::open(cfg, device, ckpt.as_deref())?;
    // The fork's log is copied once its checkpoint has loaded (a refused one leaves nothing).
    if let Some(src) = fork_from.filter(|s| s.log().exists()) {
        let log =
            std::fs::read(src.log()).with_context(|| format!("reading {}", src.log().display()))?;
        flowmap::output::write_atomic(&paths.log(), &log)?;
    }
    if sess.step_count() >= cfg.steps {
        eprintln!(
            "note: the run is already at step {} of {}; pass --steps to train it longer",
            sess.step_count(),
            cfg.steps
        );
    }
    if !quiet {
        println!(
            "{} parameters; run directory {}",
            sess.numel(),
            dir.display()
        );
    }
    std::fs::write(paths.config(), toml::to_string(cfg)?)
        .with_context(|| format!("writing {}", paths.config().display()))?;

    let mut log = open_log(&paths.log(), sess.step_count())?;
    let bar = progress_bar(cfg.steps as u64, sess.step_count() as u64, quiet);
    let meta = export::model_meta(cfg, &sess.model_cfg, sess.data.spec(), sess.sigma0);
    let started = Instant::now();
    let start_step = sess.step_count();
    let mut last_loss = f32::NAN;

    let deadline = cfg
        .minutes
        .map(|m| std::time::Duration::from_secs_f64(m.max(0.0) * 60.0));
    let mut saved_at = sess.step_count();
    while sess.step_count() < cfg.steps {
        if deadline.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let out = sess.step()?;
        let step = sess.step_count();
        last_loss = out.loss;
        if step % cfg.log_every == 0 || step == cfg.steps {
            let rate =
                (step - start_step) as f64 * cfg.batch as f64 / started.elapsed().as_secs_f64();
            let parts: Vec<String> = out
                .parts
                .iter()
                .map(|p| format!("{:.6}", p.clone().into_scalar::<f32>()))
                .collect();
            writeln!(
                log,
                "{step},{:.6e},{:.6},{},{:.4},{rate:.1}",
                out.lr,
                out.loss,
                parts.join(";"),
                out.grad_norm
            )
            .context("writing loss.csv")?;
            bar.set_message(format!("loss {:.4}  {rate:.0} samples/s", out.loss));
        }
        bar.set_position(step as u64);
        if step % cfg.checkpoint_every == 0 || step == cfg.steps {
            sess.save(&paths.checkpoint())?;
            saved_at = step;
        }
    }
    if saved_at != sess.step_count() {
        // Stopped by --minutes between checkpoints.
        sess.save(&paths.checkpoint())?;
    }
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    let rate = (sess.step_count() - start_step) as f64 * cfg.batch as f64 / secs.max(1e-9);
    export::write(
        &paths.model(),
        &meta,
        &sess.ema(),
        sess.step_count(),
        flowmap::weights::StoreDtype::F32,
    )?;
    Ok(Summary {
        steps: sess.step_count(),
        final_loss: last_loss,
        samples_per_sec: rate,
        model_path: paths.model(),
    })
}

/// The starting weights of `--init`; the file must hold exactly this run's architecture.
fn load_init(path: &Path, model: &ModelConfig, device: &Device) -> Result<ParamStore> {
    let w = Weights::read(path).with_context(|| format!("loading --init {}", path.display()))?;
    if &w.meta.model != model {
        bail!(
            "--init {} holds a {} model {}, this run trains {}",
            path.display(),
            w.meta.model.arch_name(),
            serde_json::to_string(&w.meta.model)?,
            serde_json::to_string(model)?
        );
    }
    Ok(ParamStore::from_weights(&w, device)?)
}

fn fresh(
    model: &ModelConfig,
    seed: u64,
    init: Option<ParamStore>,
    device: &Device,
) -> Result<State> {
    let params = match init {
        Some(p) => p,
        None => ParamStore::init(model, seed, device)?,
    }
    .require_grad();
    Ok(State {
        ema: params
            .values
            .iter()
            .map(|v| v.clone().without_autodiff())
            .collect(),
        adam: Adam::new(&params.values),
        params,
        step: 0,
        rng: Rng::new(seed),
        stage_teacher: None,
    })
}

fn groups_of(st: &State) -> Result<Groups> {
    let names: Vec<String> = st.params.specs.iter().map(|s| s.name.clone()).collect();
    let read = |ts: &[Tensor<1>]| -> Result<BTreeMap<String, Vec<f32>>> {
        names
            .iter()
            .zip(ts)
            .map(|(n, t)| {
                Ok((
                    n.clone(),
                    t.clone()
                        .without_autodiff()
                        .try_into_vec_as::<f32>()
                        .map_err(|e| anyhow::anyhow!("reading {n}: {e:?}"))?,
                ))
            })
            .collect()
    };
    let mut g = Groups::new();
    g.insert("param".into(), read(&st.params.values)?);
    g.insert("ema".into(), read(&st.ema)?);
    g.insert("adam_m".into(), read(&st.adam.m)?);
    g.insert("adam_v".into(), read(&st.adam.v)?);
    if let Some((_, p)) = &st.stage_teacher {
        g.insert("stage_teacher".into(), read(&p.values)?);
    }
    Ok(g)
}

fn save(path: &Path, cfg: &TrainConfig, st: &State) -> Result<()> {
    let meta = CheckpointMeta {
        version: 1,
        config: cfg.clone(),
        step: st.step,
        rng: st.rng.state(),
        teacher_stage: st.stage_teacher.as_ref().map(|s| s.0),
    };
    checkpoint::save(path, &meta, &groups_of(st)?)
}

fn restore(
    model: &ModelConfig,
    meta: &CheckpointMeta,
    groups: &Groups,
    device: &Device,
) -> Result<State> {
    let specs = flowmap::net::param_specs(model)?;
    let take = |group: &str| -> Result<Vec<Tensor<1>>> {
        let g = groups
            .get(group)
            .with_context(|| format!("checkpoint has no `{group}` tensors"))?;
        specs
            .iter()
            .map(|s| {
                let v = g
                    .get(&s.name)
                    .with_context(|| format!("checkpoint lacks {group}/{}", s.name))?;
                if v.len() != s.numel() {
                    bail!(
                        "checkpoint tensor {group}/{} has {} values, the model needs {}",
                        s.name,
                        v.len(),
                        s.numel()
                    );
                }
                Ok(flat(v.clone(), device))
            })
            .collect()
    };
    let inner = |ts: Vec<Tensor<1>>| {
        ts.into_iter()
            .map(|t| t.without_autodiff())
            .collect::<Vec<_>>()
    };
    let params = ParamStore {
        specs: specs.clone(),
        values: take("param")?,
    }
    .require_grad();
    let stage_teacher = match meta.teacher_stage {
        Some(stage) => Some((
            stage,
            ParamStore {
                specs: specs.clone(),
                values: take("stage_teacher")?,
            }
            .frozen(),
        )),
        None => None,
    };
    Ok(State {
        params,
        ema: inner(take("ema")?),
        adam: Adam {
            m: inner(take("adam_m")?),
            v: inner(take("adam_v")?),
            rule: Default::default(),
        },
        step: meta.step,
        rng: Rng::from_state(meta.rng.0, meta.rng.1),
        stage_teacher,
    })
}

/// Whether two paths name one directory (both exist by now, or they are compared as written).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Whether the run directory `to` may start as a fork of the run `from`: `from` has a
/// checkpoint, and `to` holds no run of its own (a fork never overwrites another run's state).
fn check_fork(from: &RunPaths, to: &RunPaths) -> Result<()> {
    if !from.checkpoint().exists() {
        bail!(
            "nothing to resume: {} has no checkpoint",
            from.checkpoint().display()
        );
    }
    if to.checkpoint().exists() {
        bail!(
            "{} already holds a run; resume it with --resume {}, or fork into an empty directory",
            to.dir.display(),
            to.dir.display()
        );
    }
    Ok(())
}

/// Opens loss.csv for a run at `step`: a fresh file for a new run; for a resumed one, the log with
/// any rows past the checkpoint's step dropped first (a run killed between checkpoints logged
/// steps that the resumed run will log again).
fn open_log(path: &Path, step: usize) -> Result<std::fs::File> {
    let append = step > 0;
    let exists = path.exists();
    if append && exists {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let keep: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.split(',')
                    .next()
                    .and_then(|s| s.parse::<usize>().ok())
                    .is_none_or(|s| s <= step)
            })
            .collect();
        if keep.len() != text.lines().count() {
            flowmap::output::write_atomic(path, (keep.join("\n") + "\n").as_bytes())?;
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if !append || !exists {
        writeln!(f, "step,lr,loss,parts,grad_norm,samples_per_s")?;
    }
    Ok(f)
}

fn progress_bar(len: u64, pos: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} {msg} eta {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar.set_position(pos);
    bar
}
