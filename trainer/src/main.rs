//! `cargo run -p trainer --release -- …`: trains flow-matching teachers and flow maps on burn
//! (METHOD §2, §4), exports them in the sampler's format, and inspects the training data.

mod bench;
mod burn_backend;
mod checkpoint;
mod config;
mod data;
mod eval;
mod export;
mod flex_ops;
mod flow;
mod gpu_report;
mod interpolant;
mod objectives;
mod optim;
mod params;
mod profile;
mod train;

#[cfg(test)]
mod tests;

use anyhow::{bail, Context, Result};
use burn::tensor::{Device, DeviceKind};
use clap::{Parser, Subcommand};
use config::TrainConfig;
use data::idx::load_images;
use data::toy2d::Toy;
use flowmap::rng::Rng;
use objectives::Objective;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "trainer",
    about = "Train flow maps (fm, lmd, emd, pfmm, lsd, psd, esd) and export them for flowmap"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Convolutions on burn-wgpu (training, bench, the GPU report's burn column): burn (its
    /// conv2d kernels) or gemm (im2col and batched matmuls as burn ops). flex always runs the
    /// trainer's own CPU kernels.
    #[arg(long, global = true, default_value = "burn")]
    wgpu_conv: String,
}

/// Help text for a flag whose value comes from the run config, with the config's default
/// (`config::d`), so the help and the behaviour cannot disagree.
fn with_default(what: &str, default: impl std::fmt::Display) -> String {
    format!("{what} [default: {default}]")
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  trainer train --objective lsd --data checkerboard --steps 20000 --batch 1024 --out runs/cb-lsd
  trainer train --objective fm --data mnist --steps 20000 --out runs/mnist-fm
  trainer train --objective lmd --data mnist --teacher runs/mnist-fm/model.safetensors --init runs/mnist-fm/model.safetensors --out runs/mnist-lmd
  trainer train --resume weights/runs/mnist-lsd                 # continue a committed run
  trainer train --resume weights/runs/mnist-lsd --steps 200000  # ... and train it longer
  trainer train --resume weights/runs/mnist-lmd --out runs/lmd-lr --lr 1e-4 --steps 20000
                                                      # fork it: a new run from its state
  trainer train --config docs/sweep/c-raw-radam-rsqrt.toml --out runs/sweep-raw

Flags override the --config file, which overrides the defaults; the resolved config is saved as
OUT/config.toml beside the checkpoint.")]
struct TrainArgs {
    /// A TOML run config (fields of TrainConfig, trainer/src/config.rs); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// fm, lmd, emd, pfmm, lsd, psd or esd (METHOD §4); required unless --config or --resume
    /// gives it.
    #[arg(long)]
    objective: Option<String>,
    /// mnist, checkerboard, eight-gaussians, two-moons or spiral; required unless --config or
    /// --resume gives it.
    #[arg(long)]
    data: Option<String>,
    /// IDX images (with --labels) instead of the bundled MNIST subset [default: data/].
    #[arg(long)]
    images: Option<PathBuf>,
    /// IDX labels matching --images.
    #[arg(long)]
    labels: Option<PathBuf>,
    #[arg(long, help = with_default("Optimizer steps", config::d::steps()))]
    steps: Option<usize>,
    #[arg(long, help = with_default("Samples per step", config::d::batch()))]
    batch: Option<usize>,
    #[arg(long, help = with_default("Peak learning rate", config::d::lr()))]
    lr: Option<f64>,
    #[arg(long, help = with_default("Linear warm-up steps", config::d::warmup()))]
    warmup: Option<usize>,
    #[arg(long, help = with_default("Global gradient-norm clip", config::d::grad_clip()))]
    grad_clip: Option<f32>,
    #[arg(long, help = with_default("EMA decay of the exported weights", config::d::ema()))]
    ema: Option<f32>,
    /// Seed of initialisation, data order, noise and times [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// The frozen `fm` teacher (lmd, emd, pfmm).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Start from these weights (same architecture) instead of a random initialisation.
    #[arg(long)]
    init: Option<PathBuf>,
    #[arg(long, help = with_default("pfmm: number of stages", config::d::pfmm_stages()))]
    pfmm_stages: Option<usize>,
    /// pfmm: the first stage distills the --init network's two half jumps into one (no --teacher)
    /// instead of the teacher's Euler step.
    #[arg(long)]
    pfmm_from_init: bool,
    /// psd with γ ~ U[0, 1] (PSD-U) instead of γ = 1/2 (PSD-M).
    #[arg(long)]
    psd_uniform: bool,
    #[arg(long, help = with_default("Consecutive samples of a batch that share one draw of (s, t); the time conditioning runs once per draw", config::d::share_times()))]
    share_times: Option<usize>,
    #[arg(long, help = with_default("Share of diagonal pairs t = s in the (s, t) sampler of lmd, emd, lsd, psd and esd (METHOD §4)", config::d::eta()))]
    eta: Option<f64>,
    /// Base standard deviation σ0 [default: 1 for images, the data's standard deviation for 2-D
    /// sets].
    #[arg(long)]
    sigma0: Option<f32>,
    #[arg(long, help = with_default("Steps between checkpoints", config::d::checkpoint_every()))]
    checkpoint_every: Option<usize>,
    #[arg(long, help = with_default("Steps between loss.csv rows", config::d::log_every()))]
    log_every: Option<usize>,
    /// Learning-rate schedule after warm-up: cosine (to lr × 0.1 at --steps) or rsqrt (flat
    /// until --decay-start, then 1/√) [default: cosine].
    #[arg(long)]
    schedule: Option<String>,
    #[arg(long, help = with_default("rsqrt: the step where the 1/√ decay begins", config::d::decay_start()))]
    decay_start: Option<usize>,
    /// adam or radam [default: adam].
    #[arg(long)]
    optimizer: Option<String>,
    /// The run directory: config.toml, checkpoint.safetensors, loss.csv, model.safetensors
    /// [default: runs/latest, or the --resume directory].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from a run directory's checkpoint (the --out directory when no DIR is given).
    /// The run's saved config is the starting point; flags given here override it (e.g. --steps
    /// to train longer). With both DIR and a different --out, the run forks: --out starts from
    /// DIR's checkpoint and loss.csv and DIR is left as it is.
    #[arg(long, num_args = 0..=1, value_name = "DIR")]
    resume: Option<Option<PathBuf>>,
    /// auto (wgpu only on a real GPU adapter), flex (CPU) or wgpu.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Stop after this many minutes (checkpoint and export as at the last step), e.g. to fit a
    /// lent GPU's time; not saved in the run's config.
    #[arg(long)]
    minutes: Option<f64>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model; the EMA weights are exported to OUT/model.safetensors at the end.
    Train(Box<TrainArgs>),
    /// The GPU report (scripts/gpu-report.sh): the adapter, kernel parity at production sizes,
    /// flowmap's WGSL forward against burn-wgpu's, kernel GFLOP/s against a same-run matmul,
    /// sampling throughput and the goals, as Markdown and JSON.
    #[command(after_help = "Examples:
  trainer gpu-report --out gpu-report            # on a machine with a GPU (under a minute on an H200, plus burn-wgpu's autotuning)
  trainer gpu-report --out /tmp/r --dry-run      # tiny sizes, any adapter (CI runs this on lavapipe)")]
    GpuReport {
        /// The directory for gpu-report.md and gpu-report.json.
        #[arg(long)]
        out: PathBuf,
        /// Tiny sizes: checks every code path in seconds, on any adapter (software included).
        #[arg(long)]
        dry_run: bool,
    },
    /// Export a checkpoint's EMA weights in the sampler's format.
    #[command(after_help = "Examples:
  trainer export weights/runs/mnist-lsd --out weights/mnist.safetensors
  trainer export weights/runs/mnist-lsd --out weights/mnist-f16.safetensors --f16
  trainer export weights/runs/mnist-lmd --out /tmp/raw.safetensors --raw   # the parameters, not the EMA")]
    Export {
        /// A run directory or its checkpoint.safetensors.
        run: PathBuf,
        /// The weights file to write (replaced atomically).
        #[arg(long)]
        out: PathBuf,
        /// Store F16 tensors (half the size).
        #[arg(long)]
        f16: bool,
        /// The current parameters instead of their EMA (e.g. to see what the EMA adds).
        #[arg(long)]
        raw: bool,
    },
    /// The quality table of METHOD §7 for K = 1, 2, 4, 8, 16 beside the teacher's Euler and Heun.
    #[command(after_help = "Examples:
  trainer eval --model runs/cb-lsd/model.safetensors --samples 20000   # runs/cb-lsd/eval.md
  trainer eval --model runs/mnist-lsd/model.safetensors --teacher runs/mnist-fm/model.safetensors --ks 1,4
  trainer eval --model weights/checkerboard.safetensors --out /tmp/cb-eval
  trainer eval --teacher runs/mnist-fm/model.safetensors --ks 2                # a teacher alone
  trainer eval --update-results --model ...                             # the shipped models' docs/RESULTS.md")]
    Eval {
        /// Flow-map weights files to evaluate (repeat the flag).
        #[arg(long = "model", required_unless_present = "teacher")]
        models: Vec<PathBuf>,
        /// The `fm` teacher, sampled with Euler and Heun at equal NFE (alone: only its rows, e.g.
        /// to follow a teacher run).
        #[arg(long)]
        teacher: Option<PathBuf>,
        /// The directory for the report (eval.md) and its figures [default: the first model's
        /// run directory for a run's model.safetensors, else <file stem>-eval/ beside the file].
        #[arg(long, conflicts_with = "update_results")]
        out: Option<PathBuf>,
        /// Write the report into the repository's docs/RESULTS.md (this data set's section; the
        /// others are kept) and its figures under docs/results/, as for the shipped models.
        #[arg(long)]
        update_results: bool,
        /// Where sample grids and the plot go [default: results/<data set> beside the report].
        #[arg(long)]
        figures: Option<PathBuf>,
        /// Samples per cell (default 100000 for 2-D data, 1000 for images).
        #[arg(long)]
        samples: Option<usize>,
        /// Jump counts K to evaluate.
        #[arg(long, default_value = "1,2,4,8,16", value_delimiter = ',')]
        ks: Vec<usize>,
        /// Sampling device for flowmap: auto, gpu or cpu.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Tensor storage while sampling: f32 (the figures of record), f16 (f16 storage, f32
        /// arithmetic; emulated on the CPU) or auto (f16 on a hardware GPU with f16 shaders).
        #[arg(long, default_value = "f32")]
        precision: String,
        /// The MNIST feature classifier; trained and saved here when missing.
        #[arg(long, default_value = "weights/classifier.safetensors")]
        classifier: PathBuf,
        /// Seed of the noise every cell starts from.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Network evaluations of the teacher's reference Heun sampler (images; even).
        #[arg(long, default_value_t = 128)]
        teacher_nfe: usize,
    },
    /// Benchmarks: burn vs the flowmap sampler on one forward pass, and training throughput.
    #[command(after_help = "Examples:
  trainer bench --preset mnist --batch 16                 # forward: burn flex vs flowmap CPU (and GPU)
  trainer bench --preset toy2d --batch 1024 --train-steps 20
  trainer bench --preset mnist --batch 32 --profile 5 --objectives fm,lsd")]
    Bench {
        /// mnist, mnist-s2 (stride-2 stem), toy2d or toy2d-raw (the architectures of the presets).
        #[arg(long, default_value = "mnist")]
        preset: String,
        /// Samples per forward or training step.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Timed repetitions of each forward.
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Also time burn-wgpu (slow to start: CubeCL autotunes on first use).
        #[arg(long)]
        wgpu: bool,
        /// Measure training samples/s per objective for this many steps instead.
        #[arg(long)]
        train_steps: Option<usize>,
        /// Training backend for --train-steps and --profile: flex or wgpu.
        #[arg(long, default_value = "flex")]
        backend: String,
        /// Profile this many training steps per objective instead: time per op family, forward
        /// and backward, burn's overhead, GFLOP/s against a same-run matmul (Markdown).
        #[arg(long)]
        profile: Option<usize>,
        /// Objectives for --train-steps and --profile [default: all for --train-steps, fm,lsd
        /// for --profile].
        #[arg(long, value_delimiter = ',')]
        objectives: Vec<String>,
        /// Time the U-Net's 3×3 convolutions through burn's conv2d, burn-op im2col and
        /// flowmap's flex conv.
        #[arg(long)]
        conv: bool,
        /// --profile with burn's own conv2d and GroupNorm on flex instead of flowmap's flex ops.
        #[arg(long)]
        burn_ops: bool,
        /// --train-steps and --profile: consecutive samples that share one (s, t) draw (the
        /// training option of the same name).
        #[arg(long, default_value_t = 1)]
        share_times: usize,
    },
    /// Inspect training data.
    #[command(after_help = "Examples:
  trainer data mnist
  trainer data toy checkerboard 10000 /tmp/checkerboard.npy")]
    Data {
        #[command(subcommand)]
        what: DataCmd,
    },
}

#[derive(Subcommand)]
enum DataCmd {
    /// Summarise an IDX image set (default: the bundled train split).
    Mnist {
        /// IDX images [default: data/train-images-idx3-ubyte.gz].
        images: Option<PathBuf>,
        /// IDX labels matching the images.
        labels: Option<PathBuf>,
    },
    /// Draw points of a 2-D set, optionally to .npy.
    Toy {
        /// checkerboard, eight-gaussians, two-moons or spiral.
        name: String,
        /// How many points.
        #[arg(default_value_t = 10_000)]
        n: usize,
        /// A .npy file for the points.
        out: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    flowmap::alloc::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `auto` takes burn-wgpu only when flowmap finds a hardware adapter (not lavapipe/SwiftShader).
fn pick_device(name: &str) -> Result<(Device, String)> {
    match name {
        "flex" => Ok((Device::flex(), "flex (CPU)".into())),
        "wgpu" => Ok((Device::wgpu(DeviceKind::DefaultDevice), "wgpu".into())),
        "auto" => match flowmap::gpu::GpuContext::new(false) {
            Ok(ctx) => Ok((
                Device::wgpu(DeviceKind::DefaultDevice),
                format!("wgpu on {}", ctx.adapter),
            )),
            Err(_) => Ok((Device::flex(), "flex (CPU; no hardware GPU adapter)".into())),
        },
        other => bail!("unknown backend `{other}` (auto, flex, wgpu)"),
    }
}

impl TrainArgs {
    /// The run directory: --out, else the --resume DIR, else runs/latest.
    fn run_dir(&self) -> PathBuf {
        match (&self.out, &self.resume) {
            (Some(out), _) => out.clone(),
            (None, Some(Some(dir))) => dir.clone(),
            _ => PathBuf::from("runs/latest"),
        }
    }

    /// The run directory whose checkpoint is continued: the --resume DIR, else the run directory.
    fn resume_from(&self) -> Option<PathBuf> {
        match &self.resume {
            Some(Some(dir)) => Some(dir.clone()),
            Some(None) => Some(self.run_dir()),
            None => None,
        }
    }

    /// The config saved in the checkpoint being resumed, if any.
    fn resumed_config(&self) -> Result<Option<TrainConfig>> {
        let Some(from) = self.resume_from() else {
            return Ok(None);
        };
        let ckpt = from.join("checkpoint.safetensors");
        if !ckpt.exists() {
            return Ok(None);
        }
        Ok(Some(checkpoint::load(&ckpt)?.0.config))
    }
}

fn resolve(a: &TrainArgs) -> Result<TrainConfig> {
    let resumed = a.resumed_config()?;
    let mut cfg = match (&a.config, resumed) {
        (None, Some(saved)) => saved,
        (Some(p), _) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str::<TrainConfig>(&text)
                .with_context(|| format!("parsing {}", p.display()))?
        }
        (None, None) => {
            let obj = a
                .objective
                .as_deref()
                .context("pass --objective (or --config FILE)")?;
            let obj = Objective::parse(obj).map_err(anyhow::Error::msg)?;
            TrainConfig::new(
                obj,
                a.data
                    .as_deref()
                    .context("pass --data (or --config FILE)")?,
            )
        }
    };
    if let Some(o) = &a.objective {
        cfg.objective = Objective::parse(o).map_err(anyhow::Error::msg)?;
    }
    if let Some(d) = &a.data {
        cfg.data.name = d.clone();
    }
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { cfg.$f = v; } )* };
    }
    set!(
        steps,
        batch,
        lr,
        warmup,
        grad_clip,
        ema,
        seed,
        pfmm_stages,
        share_times,
        eta,
        checkpoint_every,
        log_every,
        decay_start
    );
    if let Some(s) = &a.schedule {
        cfg.schedule = config::Schedule::parse(s).map_err(anyhow::Error::msg)?;
    }
    if let Some(o) = &a.optimizer {
        cfg.optimizer = optim::Optimizer::parse(o).map_err(anyhow::Error::msg)?;
    }
    if a.init.is_some() {
        cfg.init = a.init.clone();
    }
    if a.teacher.is_some() {
        cfg.teacher = a.teacher.clone();
    }
    if a.sigma0.is_some() {
        cfg.sigma0 = a.sigma0;
    }
    if a.images.is_some() {
        cfg.data.images = a.images.clone();
    }
    if a.labels.is_some() {
        cfg.data.labels = a.labels.clone();
    }
    cfg.psd_uniform |= a.psd_uniform;
    cfg.pfmm_from_init |= a.pfmm_from_init;
    if let Some(m) = a.minutes {
        if !(m > 0.0 && m.is_finite()) {
            bail!("--minutes must be a positive number, got {m}");
        }
        cfg.minutes = Some(m);
    }
    cfg.validate().map_err(anyhow::Error::msg)?;
    Ok(cfg)
}

fn run(cli: Cli) -> Result<()> {
    burn_backend::set_conv_path(
        burn_backend::ConvPath::parse(&cli.wgpu_conv).map_err(anyhow::Error::msg)?,
    );
    match cli.command {
        Command::Train(a) => {
            let cfg = resolve(&a)?;
            let (device, name) = pick_device(&a.backend)?;
            println!(
                "training `{}` on {} with a {} ({} steps × batch {}) on {name}",
                cfg.objective.name(),
                cfg.data.name,
                cfg.model().arch_name(),
                cfg.steps,
                cfg.batch
            );
            // On a rayon worker, so the ops' parallel loops fork inside the pool instead of
            // being handed to it one by one (flowmap::cpu::in_pool).
            let (run_dir, from) = (a.run_dir(), a.resume_from());
            let s = flowmap::cpu::in_pool(|| {
                train::train(&cfg, device, &run_dir, from.as_deref(), a.quiet)
            })?;
            if s.final_loss.is_nan() {
                // No step ran (already at --steps, or --minutes 0): the checkpoint's weights.
                println!(
                    "done: no step ran, the run is at step {}; wrote {}",
                    s.steps,
                    s.model_path.display()
                );
            } else {
                println!(
                    "done: {} steps, final loss {:.5}, {:.1} samples/s; wrote {}",
                    s.steps,
                    s.final_loss,
                    s.samples_per_sec,
                    s.model_path.display()
                );
            }
            Ok(())
        }
        Command::Export { run, out, f16, raw } => {
            let ckpt = if run.is_dir() {
                run.join("checkpoint.safetensors")
            } else {
                run
            };
            let dtype = if f16 {
                flowmap::weights::StoreDtype::F16
            } else {
                flowmap::weights::StoreDtype::F32
            };
            let meta = export::from_checkpoint(&ckpt, &out, dtype, raw)?;
            println!(
                "wrote {} ({}, {} steps)",
                out.display(),
                meta.method,
                meta.provenance
                    .get("steps")
                    .map(String::as_str)
                    .unwrap_or("?")
            );
            Ok(())
        }
        Command::Eval {
            models,
            teacher,
            out,
            update_results,
            figures,
            samples,
            ks,
            device,
            precision,
            classifier,
            seed,
            teacher_nfe,
        } => {
            let out = if update_results {
                PathBuf::from("docs/RESULTS.md")
            } else {
                let first = models
                    .first()
                    .or(teacher.as_ref())
                    .context("pass --model")?;
                out.unwrap_or_else(|| eval::default_dir(first))
                    .join("eval.md")
            };
            let md = eval::run(&eval::EvalArgs {
                models,
                teacher,
                out: out.clone(),
                figures,
                samples,
                ks,
                device,
                precision,
                classifier,
                seed,
                teacher_nfe,
            })?;
            println!("{md}");
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Bench {
            preset,
            batch,
            iters,
            wgpu,
            train_steps,
            backend,
            profile,
            objectives,
            conv,
            burn_ops,
            share_times,
        } => {
            if conv {
                profile::conv_variants(batch);
                return Ok(());
            }
            let (model, data) = bench::preset(&preset).map_err(anyhow::Error::msg)?;
            let objectives = objectives
                .iter()
                .map(|o| Objective::parse(o).map_err(anyhow::Error::msg))
                .collect::<Result<Vec<_>>>()?;
            match (profile, train_steps) {
                (Some(steps), _) => {
                    let (device, name) = pick_device(&backend)?;
                    let objectives = if objectives.is_empty() {
                        vec![Objective::Fm, Objective::Lsd]
                    } else {
                        objectives
                    };
                    if objectives.iter().any(|o| o.needs_teacher()) {
                        bail!("--profile takes teacher-free objectives (fm, lsd, psd, esd)");
                    }
                    for obj in objectives {
                        let mut cfg = TrainConfig::new(obj, data);
                        cfg.model = Some(model.clone());
                        cfg.batch = batch;
                        cfg.share_times = share_times;
                        cfg.validate().map_err(anyhow::Error::msg)?;
                        profile::run(&cfg, device.clone(), steps, &name, burn_ops)?;
                    }
                    Ok(())
                }
                (None, Some(steps)) => {
                    let (device, name) = pick_device(&backend)?;
                    let run = bench::TrainingBench {
                        data,
                        model,
                        batch,
                        steps,
                        share_times,
                    };
                    bench::training(&run, device, &name, &objectives)
                }
                (None, None) => bench::forward(&model, batch, iters, wgpu),
            }
        }
        Command::GpuReport { out, dry_run } => {
            let report = gpu_report::run(&out, dry_run, &mut |line| eprintln!("{line}"))?;
            print!("{}", report.markdown());
            println!("\nwrote {}", out.join("gpu-report.md").display());
            if report.failed() {
                bail!("a GPU parity check failed (see the report's Parity table)");
            }
            Ok(())
        }
        Command::Data { what } => match what {
            DataCmd::Mnist { images, labels } => {
                let dir = data::bundled_dir();
                let images = images.unwrap_or_else(|| dir.join("train-images-idx3-ubyte.gz"));
                let labels = labels.unwrap_or_else(|| dir.join("train-labels-idx1-ubyte.gz"));
                let set = load_images(&images, &labels).context("loading the image set")?;
                let mut counts = [0usize; 10];
                set.labels.iter().for_each(|&l| counts[l as usize] += 1);
                let mean =
                    set.pixels.iter().map(|&p| p as f64).sum::<f64>() / set.pixels.len() as f64;
                println!(
                    "{}: {} images of {}×{}, pixel mean {mean:.4} in [−1, 1]",
                    images.display(),
                    set.n,
                    set.height,
                    set.width
                );
                println!("labels per digit: {counts:?}");
                Ok(())
            }
            DataCmd::Toy { name, n, out } => {
                let toy = Toy::parse(&name).map_err(anyhow::Error::msg)?;
                if n == 0 {
                    bail!("the point count must be at least 1");
                }
                let pts = toy.sample(n, &mut Rng::new(0));
                let (mx, my) = pts.chunks(2).fold((0.0f64, 0.0f64), |(x, y), p| {
                    (x + p[0] as f64, y + p[1] as f64)
                });
                println!(
                    "{}: {n} points, mean ({:.3}, {:.3})",
                    toy.name(),
                    mx / n as f64,
                    my / n as f64
                );
                if let Some(path) = out {
                    flowmap::output::write_atomic(&path, &flowmap::output::npy(&pts, &[n, 2]))?;
                    println!("wrote {}", path.display());
                }
                Ok(())
            }
        },
    }
}

#[cfg(test)]
mod cli_tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag and argument of every subcommand has a help line, every subcommand shows
    /// examples, and the train flags whose values come from the run config print the config's
    /// own defaults.
    #[test]
    fn every_flag_has_help_and_train_shows_the_config_defaults() {
        let mut cli = Cli::command();
        cli.build();
        for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
            let name = sub.get_name();
            assert!(
                sub.get_after_help()
                    .is_some_and(|h| h.to_string().contains("Examples:")),
                "`trainer {name} --help` has no examples"
            );
            let mut todo = vec![sub];
            while let Some(cmd) = todo.pop() {
                todo.extend(cmd.get_subcommands());
                for arg in cmd.get_arguments() {
                    let id = arg.get_id().as_str();
                    if id == "help" {
                        continue;
                    }
                    assert!(
                        arg.get_help().is_some_and(|h| !h.to_string().is_empty()),
                        "`trainer {} {id}` has no help line",
                        cmd.get_name()
                    );
                }
            }
        }
        let help = cli
            .find_subcommand_mut("train")
            .unwrap()
            .render_long_help()
            .to_string();
        for (flag, default) in [
            ("--steps", config::d::steps().to_string()),
            ("--batch", config::d::batch().to_string()),
            ("--lr", config::d::lr().to_string()),
            ("--warmup", config::d::warmup().to_string()),
            ("--ema", config::d::ema().to_string()),
            ("--grad-clip", config::d::grad_clip().to_string()),
            ("--decay-start", config::d::decay_start().to_string()),
            (
                "--checkpoint-every",
                config::d::checkpoint_every().to_string(),
            ),
            ("--log-every", config::d::log_every().to_string()),
            ("--pfmm-stages", config::d::pfmm_stages().to_string()),
        ] {
            let at = help
                .find(&format!("{flag} <"))
                .unwrap_or_else(|| panic!("{flag} missing"));
            let entry = &help[at..];
            let entry = &entry[..entry[2..].find("\n  -").map_or(entry.len(), |e| e + 2)];
            assert!(
                entry.contains(&format!("[default: {default}]")),
                "{flag} help does not show its default {default}: {entry}"
            );
        }
    }
}
