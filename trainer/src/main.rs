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
}

#[derive(clap::Args)]
struct TrainArgs {
    /// A TOML run config (fields of TrainConfig); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// fm, lmd, emd, pfmm, lsd, psd or esd.
    #[arg(long)]
    objective: Option<String>,
    /// mnist, checkerboard, eight-gaussians, two-moons or spiral.
    #[arg(long)]
    data: Option<String>,
    /// IDX images (with --labels) instead of the bundled MNIST subset.
    #[arg(long)]
    images: Option<PathBuf>,
    #[arg(long)]
    labels: Option<PathBuf>,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    warmup: Option<usize>,
    #[arg(long)]
    grad_clip: Option<f32>,
    #[arg(long)]
    ema: Option<f32>,
    #[arg(long)]
    seed: Option<u64>,
    /// The frozen `fm` teacher (lmd, emd, pfmm).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Start from these weights (same architecture) instead of a random initialisation.
    #[arg(long)]
    init: Option<PathBuf>,
    #[arg(long)]
    pfmm_stages: Option<usize>,
    /// psd with γ ~ U[0, 1] (PSD-U) instead of γ = 1/2 (PSD-M).
    #[arg(long)]
    psd_uniform: bool,
    #[arg(long)]
    sigma0: Option<f32>,
    #[arg(long)]
    checkpoint_every: Option<usize>,
    #[arg(long)]
    log_every: Option<usize>,
    /// Learning-rate schedule after warm-up: cosine or rsqrt (flat until --decay-start, then 1/√).
    #[arg(long)]
    schedule: Option<String>,
    /// rsqrt: the step where the 1/√ decay begins.
    #[arg(long)]
    decay_start: Option<usize>,
    /// adam or radam.
    #[arg(long)]
    optimizer: Option<String>,
    /// The run directory: config.toml, checkpoint.safetensors, loss.csv, model.safetensors
    /// [default: runs/latest, or the --resume directory].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from a run directory's checkpoint (the --out directory when no DIR is given).
    /// The run's saved config is the starting point; flags given here override it (e.g. --steps
    /// to train longer).
    #[arg(long, num_args = 0..=1, value_name = "DIR")]
    resume: Option<Option<PathBuf>>,
    /// auto (wgpu only on a real GPU adapter), flex (CPU) or wgpu.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model; the EMA weights are exported to OUT/model.safetensors at the end.
    Train(Box<TrainArgs>),
    /// Export a checkpoint's EMA weights in the sampler's format.
    Export {
        /// A run directory or its checkpoint.safetensors.
        run: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Store F16 tensors (half the size).
        #[arg(long)]
        f16: bool,
    },
    /// The quality table of METHOD §7 for K = 1, 2, 4, 8, 16 beside the teacher's Euler and Heun.
    Eval {
        /// Flow-map weights files to evaluate (repeat the flag).
        #[arg(long = "model", required = true)]
        models: Vec<PathBuf>,
        /// The `fm` teacher, sampled with Euler and Heun at equal NFE.
        #[arg(long)]
        teacher: Option<PathBuf>,
        /// The Markdown report.
        #[arg(long, default_value = "docs/RESULTS.md")]
        out: PathBuf,
        /// Where sample grids and the plot go [default: results/<data set> beside the report].
        #[arg(long)]
        figures: Option<PathBuf>,
        /// Samples per cell (default 100000 for 2-D data, 1000 for images).
        #[arg(long)]
        samples: Option<usize>,
        #[arg(long, default_value = "1,2,4,8,16", value_delimiter = ',')]
        ks: Vec<usize>,
        /// Sampling device for flowmap: auto, gpu or cpu.
        #[arg(long, default_value = "auto")]
        device: String,
        /// The MNIST feature classifier; trained and saved here when missing.
        #[arg(long, default_value = "weights/classifier.safetensors")]
        classifier: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Network evaluations of the teacher's reference Heun sampler (images; even).
        #[arg(long, default_value_t = 128)]
        teacher_nfe: usize,
    },
    /// Benchmarks: burn vs the flowmap sampler on one forward pass, and training throughput.
    Bench {
        /// mnist (the default U-Net) or toy2d (the default MLP).
        #[arg(long, default_value = "mnist")]
        preset: String,
        #[arg(long, default_value_t = 64)]
        batch: usize,
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
    },
    /// Inspect training data.
    Data {
        #[command(subcommand)]
        what: DataCmd,
    },
}

#[derive(Subcommand)]
enum DataCmd {
    /// Summarise an IDX image set (default: the bundled train split).
    Mnist {
        images: Option<PathBuf>,
        labels: Option<PathBuf>,
    },
    /// Draw points of a 2-D set, optionally to .npy.
    Toy {
        name: String,
        #[arg(default_value_t = 10_000)]
        n: usize,
        out: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
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

    /// The config saved in the checkpoint being resumed, if any.
    fn resumed_config(&self) -> Result<Option<TrainConfig>> {
        if self.resume.is_none() {
            return Ok(None);
        }
        let ckpt = self.run_dir().join("checkpoint.safetensors");
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
    cfg.validate().map_err(anyhow::Error::msg)?;
    Ok(cfg)
}

fn run(cli: Cli) -> Result<()> {
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
            let s = train::train(&cfg, device, &a.run_dir(), a.resume.is_some(), a.quiet)?;
            println!(
                "done: {} steps, final loss {:.5}, {:.1} samples/s; wrote {}",
                s.steps,
                s.final_loss,
                s.samples_per_sec,
                s.model_path.display()
            );
            Ok(())
        }
        Command::Export { run, out, f16 } => {
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
            let meta = export::from_checkpoint(&ckpt, &out, dtype)?;
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
            figures,
            samples,
            ks,
            device,
            classifier,
            seed,
            teacher_nfe,
        } => {
            let md = eval::run(&eval::EvalArgs {
                models,
                teacher,
                out: out.clone(),
                figures,
                samples,
                ks,
                device,
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
                        profile::run(&cfg, device.clone(), steps, &name, burn_ops)?;
                    }
                    Ok(())
                }
                (None, Some(steps)) => {
                    let (device, name) = pick_device(&backend)?;
                    bench::training(data, Some(model), batch, steps, device, &name, &objectives)
                }
                (None, None) => bench::forward(&model, batch, iters, wgpu),
            }
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
