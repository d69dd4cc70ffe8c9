//! The `flowmap` command line: `sample`, `info`, `bench` (native only).

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use flowmap::backend::{Backend, OpFamily};
use flowmap::bench::{median, FamilyStats, Profiled};
use flowmap::config::{DataSpec, ModelConfig, ModelMeta};
use flowmap::cpu::CpuBackend;
use flowmap::device::{self, DeviceChoice, Engine};
use flowmap::gpu::tune::Clock;
use flowmap::gpu::{GpuBackend, Tuning};
use flowmap::models;
use flowmap::net::{forward_costs, param_specs, Network};
use flowmap::output::{encode, write_atomic, OutputFormat};
use flowmap::precision::PrecisionChoice;
use flowmap::sampler::{self, Integrator};
use flowmap::weights::{random_tensors, Weights};
use flowmap::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// `println!` that ignores a closed stdout (`flowmap info … | head`) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "flowmap",
    version,
    about = "Few-step generative sampling with learned flow maps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Draw samples by composing K flow-map jumps from noise (t = 0) to data (t = 1).
    #[command(after_help = "Examples:
  flowmap sample --steps 4 --out samples.png                  # 64 digits from the shipped MNIST model
  flowmap sample --model checkerboard --steps 1 --n 20000 --out cb.png
  flowmap sample --weights runs/cb-lsd/model.safetensors --steps 2 --out cb.npy --device cpu
  flowmap sample --grid 0,0.5,0.8,1 --seed 7 --out custom-grid.png
  flowmap sample --integrator heun --steps 8 --out heun.png   # the diagonal velocity, 16 evaluations")]
    Sample {
        /// A shipped model compiled into this binary: mnist (the default) or checkerboard.
        #[arg(long, conflicts_with = "weights")]
        model: Option<String>,
        /// A flowmap weights file (.safetensors) instead of a shipped model.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Number of jumps K on a uniform grid (ignored when --grid is given).
        #[arg(long, default_value_t = 4)]
        steps: usize,
        /// Number of samples.
        #[arg(long, default_value_t = 64)]
        n: usize,
        /// Seed of the starting noise (the same seed gives the same samples on every device).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output: .png (image grid or 2-D scatter plot) or .npy (raw float32 samples in data range).
        #[arg(long, default_value = "samples.png")]
        out: PathBuf,
        /// auto (a hardware GPU if present, else CPU), gpu (any adapter), cpu.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Tensor storage: auto (f16 on a hardware GPU with f16 shaders, else f32), f32, or f16
        /// (f16 storage, f32 arithmetic; on the CPU emulated, to see what f16 does).
        #[arg(long, default_value = "auto")]
        precision: String,
        /// A custom time grid, e.g. 0,0.1,0.5,1 (overrides --steps).
        #[arg(long)]
        grid: Option<String>,
        /// flowmap (the learned jumps), or euler / heun on the diagonal velocity v(t, t, ·).
        #[arg(long, default_value = "flowmap")]
        integrator: String,
        /// Print each step's time (waits for the device after every step, so the host no longer
        /// records a step while the device runs the previous one).
        #[arg(long)]
        step_times: bool,
        /// A kernel tuning file written by `flowmap tune` on this GPU: its convolutions run the
        /// kernels measured fastest instead of the built-in rule.
        #[arg(long)]
        tuning: Option<PathBuf>,
    },
    /// Time every convolution kernel on this GPU for a model's layers and write the fastest
    /// per layer to a tuning file (for `sample --tuning` and `bench --tuning`).
    #[command(after_help = "Examples:
  flowmap tune --out tuning.json                              # the shipped MNIST model at batch 64
  flowmap tune --batch 1,64,256 --precision f32 --out tuning.json
  flowmap sample --tuning tuning.json --steps 4 --out samples.png")]
    Tune {
        /// A shipped model compiled into this binary: mnist (the default) or checkerboard.
        #[arg(long, conflicts_with = "weights")]
        model: Option<String>,
        /// A flowmap weights file (.safetensors) instead of a shipped model.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Batches to tune, comma-separated: a sampling pass has min(--n, the GPU's largest
        /// pass) samples.
        #[arg(long, default_value = "64")]
        batch: String,
        /// Tensor storage to tune in: auto, f32 or f16 (as `sample --precision`).
        #[arg(long, default_value = "auto")]
        precision: String,
        /// Dispatches timed per kernel and convolution.
        #[arg(long, default_value_t = 20)]
        reps: usize,
        /// auto (the GPU's timestamps where the adapter has them, else the host's clock) or
        /// wall (the host's clock, for drivers whose timestamps cannot be trusted).
        #[arg(long, default_value = "auto")]
        clock: String,
        /// The tuning file to write (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a weights file's config, parameter count, FLOPs per forward and provenance.
    #[command(after_help = "Examples:
  flowmap info mnist
  flowmap info weights/checkerboard-f16.safetensors --tensors")]
    Info {
        /// A weights file, or the name of a shipped model (mnist, checkerboard).
        file: PathBuf,
        /// Also list every tensor with its shape.
        #[arg(long)]
        tensors: bool,
    },
    /// Time the forward pass and sampling on the GPU and the CPU backend, per op family.
    #[command(after_help = "Examples:
  flowmap bench --preset mnist --batch 16
  flowmap bench --preset toy2d --batch 4096 --device cpu --reference   # fast path vs reference loops
  flowmap bench --preset mnist --batch 16 --device cpu --layers        # per layer shape, slowest first
  flowmap bench --weights weights/mnist.safetensors --batch 64 --device gpu")]
    Bench {
        /// A weights file; without it, random weights for --preset (timing only).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// mnist (the default U-Net) or toy2d (the default MLP), used without --weights.
        #[arg(long, default_value = "mnist")]
        preset: String,
        /// Samples per forward.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// all (GPU adapter and CPU), gpu or cpu.
        #[arg(long, default_value = "all")]
        device: String,
        /// The GPU's tensor storage: auto, f32, f16, or both (f32 and f16 side by side).
        #[arg(long, default_value = "auto")]
        precision: String,
        /// Timed repetitions of each measurement.
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Also time the CPU backend's reference loops (the fast path's oracle), for a
        /// before/after in one run.
        #[arg(long)]
        reference: bool,
        /// Also print the time per layer shape (each convolution by its channels, input size
        /// and stride), slowest first.
        #[arg(long)]
        layers: bool,
        /// A kernel tuning file (`flowmap tune`) for the GPU backend at its precision.
        #[arg(long)]
        tuning: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    flowmap::alloc::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sample {
            model,
            weights,
            steps,
            n,
            seed,
            out,
            device,
            precision,
            grid,
            integrator,
            step_times,
            tuning,
        } => run_sample(
            model.as_deref(),
            weights.as_deref(),
            steps,
            n,
            seed,
            &out,
            &device,
            &precision,
            grid.as_deref(),
            &integrator,
            step_times,
            tuning.as_deref(),
        ),
        Command::Tune {
            model,
            weights,
            batch,
            precision,
            reps,
            clock,
            out,
        } => run_tune(
            model.as_deref(),
            weights.as_deref(),
            &batch,
            &precision,
            reps,
            &clock,
            &out,
        ),
        Command::Info { file, tensors } => run_info(&file, tensors),
        Command::Bench {
            weights,
            preset,
            batch,
            device,
            precision,
            iters,
            reference,
            layers,
            tuning,
        } => run_bench(
            weights.as_deref(),
            &preset,
            batch,
            &device,
            &precision,
            iters,
            reference,
            layers,
            tuning.as_deref(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<Weights> {
    Weights::read(path).with_context(|| format!("loading weights {}", path.display()))
}

/// The weights `sample` uses and how to name them: `--weights FILE`, else the shipped
/// `--model` (default mnist).
fn choose(model: Option<&str>, weights: Option<&Path>) -> Result<(Weights, String)> {
    match weights {
        Some(p) => Ok((load(p)?, p.display().to_string())),
        None => {
            let m = models::find(model.unwrap_or(models::DEFAULT))?;
            let w = m
                .load()
                .with_context(|| format!("loading the shipped model {}", m.name))?;
            Ok((w, format!("{} (shipped, {})", m.name, m.file)))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_sample(
    model: Option<&str>,
    weights: Option<&Path>,
    steps: usize,
    n: usize,
    seed: u64,
    out: &Path,
    device: &str,
    precision: &str,
    grid: Option<&str>,
    integrator: &str,
    step_times: bool,
    tuning: Option<&Path>,
) -> Result<()> {
    // Check every argument before any work, so that bad input costs nothing.
    if n == 0 {
        bail!("--n must be at least 1");
    }
    let grid = match grid {
        Some(g) => sampler::parse_grid(g)?,
        None => sampler::uniform_grid(steps)?,
    };
    let integrator = Integrator::parse(integrator)?;
    let format = OutputFormat::from_path(out)?;
    let choice = DeviceChoice::parse(device)?;
    let precision = PrecisionChoice::parse(precision)?;
    check_writable(out)?;
    let tuning_path = tuning;
    let tuning = tuning.map(Tuning::read).transpose()?;
    let (w, label) = choose(model, weights)?;
    let meta = &w.meta;
    check_memory(meta, n)?;
    say!(
        "model: {} ({} {:?}, method {}, {} parameters)",
        label,
        meta.model.arch_name(),
        meta.data.shape,
        meta.method,
        w.parameter_count()
    );
    let (engine, notice) = device::open(choice, precision)?;
    if let Some(msg) = notice {
        eprintln!("{msg}");
    }
    say!("device: {}", engine.describe());
    let noise = sampler::initial_noise(meta, n, seed);
    let pace = if step_times {
        sampler::Pace::TimeSteps
    } else {
        sampler::Pace::Pipelined
    };
    let (samples, report) = match &engine {
        Engine::Cpu(b) => {
            if tuning.is_some() {
                eprintln!(
                    "notice: --tuning is for the GPU backend; sampling on the CPU ignores it"
                );
            }
            let net = w.network(b)?;
            let chunk = sampler::max_batch(meta, 1 << 28)?;
            // Fewer samples than cores: every op is latency-bound, so the idle cores poll.
            flowmap::cpu::in_pool_for(n, || {
                sampler::sample_paced(b, &net, &noise, &grid, integrator, chunk, pace)
            })?
        }
        Engine::Gpu(b) => {
            b.warm_up()?;
            let net = w.network(b.as_ref())?;
            let chunk = b.max_batch(meta)?;
            if let (Some(t), Some(path)) = (&tuning, tuning_path) {
                apply_tuning(b, t, path, n.min(chunk))?;
            }
            let run = |chunk| {
                sampler::sample_paced(b.as_ref(), &net, &noise, &grid, integrator, chunk, pace)
            };
            if choice == DeviceChoice::Auto {
                // An out-of-memory pass is retried in smaller chunks.
                let (result, used) = sampler::halve_on_oom(chunk, run)?;
                if used < chunk {
                    eprintln!(
                        "notice: the GPU ran out of memory at {chunk} samples a pass; sampled {used} at a time"
                    );
                }
                result
            } else {
                run(chunk).map_err(|e| match e {
                    Error::GpuOutOfMemory(m) => anyhow::anyhow!(
                        "the GPU ran out of memory ({m}); --device auto retries in smaller chunks"
                    ),
                    e => e.into(),
                })?
            }
        }
    };
    let k = grid.len() - 1;
    say!(
        "sampled {n} with {k} step(s) ({:?}, {} network evaluations per sample){}",
        integrator,
        k * integrator.evals_per_step(),
        if report.chunks > 1 {
            format!(", in {} chunks of ≤ {}", report.chunks, report.chunk_size)
        } else {
            String::new()
        }
    );
    for (i, (w, t)) in grid.windows(2).zip(&report.step_times).enumerate() {
        say!(
            "  step {:>3}/{k}  t {:.4} → {:.4}  {:>9.2} ms",
            i + 1,
            w[0],
            w[1],
            t.as_secs_f64() * 1e3
        );
    }
    let secs = report.total.as_secs_f64();
    say!(
        "total {:.2} ms, {:.1} samples/s",
        secs * 1e3,
        n as f64 / secs
    );
    let data: Vec<f32> = samples.iter().map(|&v| meta.data.to_data(v)).collect();
    let bytes = encode(&data, n, &meta.data, format)?;
    write_atomic(out, &bytes)?;
    say!("wrote {}", out.display());
    Ok(())
}

/// Installs `t` (read from `path`) on the GPU backend and says what it covers; a notice when
/// the run's passes of `pass` samples are not among the batches it was measured at.
fn apply_tuning(b: &GpuBackend, t: &Tuning, path: &Path, pass: usize) -> Result<()> {
    let n = b
        .use_tuning(t)
        .with_context(|| format!("--tuning {}", path.display()))?;
    let batches = t.batches();
    say!(
        "kernels: tuned for {n} convolution shapes at batch {} ({})",
        join(&batches),
        path.display()
    );
    if !batches.contains(&pass) {
        eprintln!(
            "notice: {} was tuned at batch {}, but this run's passes have {pass} samples, so the built-in rule picks their kernels (tune with --batch {pass})",
            path.display(),
            join(&batches)
        );
    }
    Ok(())
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `--batch 1,64,256`: positive, distinct, in the order given.
fn parse_batches(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let b: usize = part
            .trim()
            .parse()
            .ok()
            .filter(|&b| b > 0)
            .with_context(|| format!("--batch: {part:?} is not a positive integer"))?;
        if !out.contains(&b) {
            out.push(b);
        }
    }
    Ok(out)
}

fn run_tune(
    model: Option<&str>,
    weights: Option<&Path>,
    batch: &str,
    precision: &str,
    reps: usize,
    clock: &str,
    out: &Path,
) -> Result<()> {
    let batches = parse_batches(batch)?;
    if reps == 0 {
        bail!("--reps must be at least 1");
    }
    let clock = Clock::parse(clock).context("--clock")?;
    let precision = PrecisionChoice::parse(precision)?;
    check_writable(out)?;
    let (w, label) = choose(model, weights)?;
    let (engine, _) = device::open(DeviceChoice::Gpu, precision)?;
    let Engine::Gpu(b) = &engine else {
        bail!("tuning needs a GPU adapter");
    };
    say!("model: {label}");
    say!("device: {}", engine.describe());
    let most = b.max_batch(&w.meta)?;
    if let Some(&big) = batches.iter().find(|&&b| b > most) {
        bail!("--batch {big} is more than one pass holds on this GPU ({most} samples)");
    }
    say!(
        "clock: {}; µs per dispatch of each kernel and convolution",
        if clock == Clock::Wall {
            format!("the host's (--clock wall), best of 3 batches of {reps} dispatches")
        } else if b.has_timestamps() {
            format!("the GPU's (timestamp queries), median of {reps} dispatches")
        } else {
            format!("the host's (this adapter has no timestamp queries), best of 3 batches of {reps} dispatches")
        }
    );
    let t = Tuning::measure(b, &w, &batches, reps, clock, |c| {
        let times: Vec<String> = c.us.iter().map(|(k, us)| format!("{k} {us:.1}")).collect();
        let (tuned, rule) = c.times();
        say!(
            "  batch {:>4}  {:<34} ×{}  {}  → {}{}",
            c.batch,
            c.layer,
            c.count,
            times.join(", "),
            c.kernel,
            if c.kernel == c.rule {
                " (the rule's)".to_string()
            } else {
                format!(" ({:.2}× the rule's {})", rule / tuned, c.rule)
            }
        );
    })?;
    if t.convs.is_empty() {
        bail!("{label} runs no convolution, so there is nothing to tune");
    }
    for batch in t.batches() {
        let (rule, tuned) = t.forward_us(batch);
        say!(
            "batch {batch}: the forward's convolutions take {:.3} ms with the rule's kernels, {:.3} ms tuned ({:.2}×)",
            rule / 1e3,
            tuned / 1e3,
            rule / tuned
        );
    }
    write_atomic(out, t.to_json().as_bytes())?;
    say!("wrote {}", out.display());
    Ok(())
}

/// Refuses a sample count whose host buffers ([`sampler::host_bytes`]) exceed the memory the
/// system has available (`MemAvailable` in /proc/meminfo; 8 GiB where that cannot be read).
fn check_memory(meta: &ModelMeta, n: usize) -> Result<()> {
    let (limit, source) = match available_memory() {
        Some(b) => (b, "available memory"),
        None => (8 << 30, "the assumed 8 GiB"),
    };
    let per_sample = sampler::host_bytes(meta, 1).unwrap_or(u64::MAX).max(1);
    let most = limit / per_sample;
    match sampler::host_bytes(meta, n) {
        Some(b) if b <= limit => Ok(()),
        need => bail!(
            "--n {n} needs {} of memory for the samples, more than {source} ({:.1} GiB); the most that fits is --n {most}",
            need.map_or("more than 16 EiB".into(), |b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)),
            limit as f64 / (1u64 << 30) as f64
        ),
    }
}

fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Fails early (before sampling) when the output's directory does not exist or is not writable.
fn check_writable(out: &Path) -> Result<()> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let probe = dir.join(format!(".flowmap-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("output directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    if out.is_dir() {
        bail!("output {} is a directory", out.display());
    }
    Ok(())
}

fn run_info(file: &Path, list_tensors: bool) -> Result<()> {
    // A bare name that is not a file names a shipped model.
    let shipped = match file.to_str() {
        Some(name) if !file.exists() => models::find(name).ok(),
        _ => None,
    };
    let w = match shipped {
        Some(m) => m.load()?,
        None => load(file)?,
    };
    let m = &w.meta;
    say!(
        "file:         {} ({} bytes, {})",
        file.display(),
        w.file_bytes,
        w.dtypes.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    say!("format:       version {}", m.format_version);
    say!("method:       {}", m.method);
    say!("architecture: {}", m.model.arch_name());
    say!("config:       {}", serde_json::to_string(&m.model)?);
    say!(
        "data:         {} {:?} {:?}, data = model × {} + {}, range {:?}",
        m.data.name,
        m.data.kind,
        m.data.shape,
        m.data.scale,
        m.data.offset,
        m.data.range
    );
    say!(
        "base:         N(0, {}²), {:?} interpolant",
        m.sigma0,
        m.interpolant
    );
    say!("parameters:   {}", w.parameter_count());
    let costs = forward_costs(&m.model, 1)?;
    say!(
        "FLOPs:        {:.3} MFLOP per forward per sample",
        costs.total_flops() / 1e6
    );
    for fam in OpFamily::ALL {
        let f: f64 = costs
            .ops()
            .iter()
            .filter(|o| o.family == fam)
            .map(|o| o.flops)
            .sum();
        if f > 0.0 {
            say!("              {:<12} {:>10.3} MFLOP", fam.name(), f / 1e6);
        }
    }
    if m.provenance.is_empty() {
        say!("provenance:   (none)");
    } else {
        say!("provenance:");
        for (k, v) in &m.provenance {
            say!("              {k}: {v}");
        }
    }
    if list_tensors {
        say!("tensors:");
        for spec in param_specs(&m.model)? {
            say!("  {:<40} {:?}", spec.name, spec.shape);
        }
    }
    Ok(())
}

fn preset_meta(preset: &str) -> Result<ModelMeta> {
    let (model, name) = match preset {
        "mnist" => (ModelConfig::mnist_default(), "mnist"),
        "toy2d" => (ModelConfig::toy2d_default(), "checkerboard"),
        _ => bail!("unknown preset `{preset}` (mnist, toy2d)"),
    };
    let data = DataSpec::for_model(&model, name);
    Ok(ModelMeta::untrained(model, data))
}

#[allow(clippy::too_many_arguments)]
fn run_bench(
    weights: Option<&Path>,
    preset: &str,
    batch: usize,
    device: &str,
    precision: &str,
    iters: usize,
    reference: bool,
    layers: bool,
    tuning: Option<&Path>,
) -> Result<()> {
    if batch == 0 || iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    let tuning = tuning
        .map(|p| Ok::<_, Error>((Tuning::read(p)?, p)))
        .transpose()?;
    let precisions = match precision {
        "both" => vec![PrecisionChoice::F32, PrecisionChoice::F16],
        p => vec![PrecisionChoice::parse(p).context("--precision: auto, f32, f16 or both")?],
    };
    let w = match weights {
        Some(p) => load(p)?,
        None => {
            let meta = preset_meta(preset)?;
            let tensors = random_tensors(&param_specs(&meta.model)?, 0);
            Weights::from_bytes(&Weights::to_bytes(
                &meta,
                &tensors,
                flowmap::weights::StoreDtype::F32,
            )?)?
        }
    };
    let source = weights
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| format!("preset {preset}, random weights"));
    let flops = forward_costs(&w.meta.model, batch)?.total_flops();
    say!(
        "model: {source}: {} {:?}, {} parameters",
        w.meta.model.arch_name(),
        w.meta.data.shape,
        w.parameter_count()
    );
    say!(
        "batch {batch}: {:.3} GFLOP per forward; {iters} timed iterations after one warm-up",
        flops / 1e9
    );
    let mut engines = Vec::new();
    if device == "all" || device == "gpu" {
        for &p in &precisions {
            match device::open(DeviceChoice::Gpu, p) {
                Ok((e, _)) => engines.push(e),
                Err(e) if device == "all" => say!("\nGPU ({p:?}): skipped ({e})"),
                Err(e) => return Err(e.into()),
            }
        }
    }
    if device == "all" || device == "cpu" {
        engines.push(device::open(DeviceChoice::Cpu, PrecisionChoice::F32)?.0);
        if reference {
            engines.push(Engine::Cpu(CpuBackend::REFERENCE));
        }
    }
    if engines.is_empty() {
        bail!("unknown device `{device}` (all, gpu, cpu)");
    }
    // The cores' reachable rate through the GEMM the fast CPU ops use, measured in this run.
    let peak = engines
        .iter()
        .any(|e| matches!(e, Engine::Cpu(_)))
        .then(|| {
            // A fixed count whatever --iters: the best of more products reads higher (over 300
            // the best ran 9% above the best of 20 here), which would make the reference
            // depend on how long the forward is timed.
            let g = flowmap::bench::gemm_gflops(1024, GEMM_PEAK_REPS);
            say!(
                "\nCPU GEMM peak (1024³ f32 through the fast ops' GEMM, all threads): {:.1} GFLOP/s (best of {GEMM_PEAK_REPS}; median {:.1}); shares below are of the best",
                g.best,
                g.median
            );
            g.best
        });
    for engine in &engines {
        match engine {
            Engine::Cpu(b) => {
                say!("\n== {} ==", engine.describe());
                // As `sample` runs it: with fewer samples than cores, the idle cores poll for
                // work (otherwise the profile's gaps between ops put them to sleep, and each
                // batch-1 op would read the time of waking them).
                flowmap::cpu::in_pool_for(batch, || {
                    bench_backend(b, &w, batch, iters, flops, peak, b.storage, layers)
                })?
            }
            Engine::Gpu(b) => {
                say!("\n== {} ==", engine.describe());
                b.warm_up()?;
                if let Some((t, path)) = &tuning {
                    if t.precision == engine.precision().name() {
                        apply_tuning(b, t, path, batch)?;
                    } else {
                        say!(
                            "kernels: the rule's ({} was tuned in {})",
                            path.display(),
                            t.precision
                        );
                    }
                }
                bench_backend(
                    b.as_ref(),
                    &w,
                    batch,
                    iters,
                    flops,
                    None,
                    engine.precision(),
                    layers,
                )?;
                host_recording(b, &w, batch, iters)?;
            }
        }
    }
    Ok(())
}

/// The host's share of a GPU forward: the time to record one (bind groups, compute passes,
/// wgpu's validation), not waiting for the device, which runs it after.
fn host_recording(b: &GpuBackend, w: &Weights, batch: usize, iters: usize) -> Result<()> {
    let net: Network<GpuBackend> = w.network(b)?;
    let mut shape = vec![batch];
    shape.extend(w.meta.model.sample_shape());
    let x = b.upload(&sampler::initial_noise(&w.meta, batch, 0), &shape)?;
    let (s, t) = (vec![0.25; batch], vec![0.75; batch]);
    b.download(&net.velocity(b, &x, &s, &t)?)?;
    let (mut record, mut submit) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    let before = b.dispatch_count();
    for _ in 0..iters {
        let t0 = Instant::now();
        let v = net.velocity(b, &x, &s, &t)?;
        let t1 = Instant::now();
        b.flush();
        record.push((t1 - t0).as_secs_f64());
        submit.push(t1.elapsed().as_secs_f64());
        b.sync()?;
        drop(v);
    }
    let (record, submit) = (median(record), median(submit));
    let per = (b.dispatch_count() - before) as f64 / iters as f64;
    say!(
        "host: one forward takes {:.3} ms to record and {:.3} ms to finish and submit (medians), {per:.0} dispatches, {:.1} µs each",
        record * 1e3,
        submit * 1e3,
        (record + submit) * 1e6 / per.max(1.0)
    );
    Ok(())
}

/// Products timed for the CPU GEMM peak that `flowmap bench` compares op rates against.
const GEMM_PEAK_REPS: usize = 20;

#[allow(clippy::too_many_arguments)]
fn bench_backend<B: Backend>(
    b: &B,
    w: &Weights,
    batch: usize,
    iters: usize,
    flops: f64,
    peak: Option<f64>,
    storage: flowmap::precision::Precision,
    layers: bool,
) -> Result<()> {
    let meta = &w.meta;
    // The cost model counts 4 bytes a value; f16 storage moves half that.
    let byte_scale = storage.bytes() as f64 / 4.0;
    let net: Network<B> = w.network(b)?;
    let noise = sampler::initial_noise(meta, batch, 0);
    let mut shape = vec![batch];
    shape.extend(meta.model.sample_shape());
    let x = b.upload(&noise, &shape)?;
    let (s, t) = (vec![0.25; batch], vec![0.75; batch]);
    // Warm-up, then the unsynchronised-per-op forward time: the median forward (robust to a
    // preempted one on a shared machine), with the mean beside it.
    b.download(&net.velocity(b, &x, &s, &t)?)?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t0 = Instant::now();
        let v = net.velocity(b, &x, &s, &t)?;
        b.sync()?;
        times.push(t0.elapsed().as_secs_f64());
        drop(v);
    }
    let mean = times.iter().sum::<f64>() / iters as f64;
    times.sort_by(f64::total_cmp);
    let fwd = times[iters / 2];
    let of_peak = |gflops: f64| {
        peak.map(|p| format!("{:>8.0}%", 100.0 * gflops / p))
            .unwrap_or_default()
    };
    say!(
        "forward: {:.3} ms (median of {iters}; mean {:.3} ms), {:.2} GFLOP/s{}, {:.1} samples/s",
        fwd * 1e3,
        mean * 1e3,
        flops / fwd / 1e9,
        peak.map(|p| format!(" ({:.0}% of the GEMM peak)", 100.0 * flops / fwd / 1e9 / p))
            .unwrap_or_default(),
        batch as f64 / fwd
    );

    let prof = Profiled::new(b);
    let pnet: Network<Profiled<B>> = w.network(&prof)?;
    // A warm-up forward as above: the first one packs each convolution's weights for the
    // microkernels (batch 1: it read conv2d 1.3–1.7× slower over 50 forwards).
    prof.download(&pnet.velocity(&prof, &x, &s, &t)?)?;
    prof.reset();
    for _ in 0..iters {
        prof.download(&pnet.velocity(&prof, &x, &s, &t)?)?;
        prof.end_forward();
    }
    // One table: a title, then a row per name (an op family or a layer shape).
    let table = |title: &str, what: &str, width: usize, rows: &[(String, FamilyStats)]| {
        say!("{title}");
        say!(
            "  {what:<width$} {:>6} {:>10} {:>10} {:>9}{}",
            "calls",
            "ms",
            "GFLOP/s",
            "GB/s",
            if peak.is_some() { "  of GEMM" } else { "" }
        );
        for (name, st) in rows {
            let secs = st.time.as_secs_f64();
            let gflops = st.flops / secs / 1e9;
            say!(
                "  {name:<width$} {:>6} {:>10.3} {:>10.2} {:>9.2}{}",
                st.calls,
                secs * 1e3,
                gflops,
                st.bytes * byte_scale / secs / 1e9,
                of_peak(gflops)
            );
        }
    };
    let families: Vec<_> = prof
        .stats()
        .into_iter()
        .map(|(fam, st)| (fam.name().to_string(), st))
        .collect();
    table(
        "per op family (synchronised after every op; per forward, the median forward of each):",
        "family",
        12,
        &families,
    );
    if layers {
        let mut by_time: Vec<_> = prof.layer_stats().into_iter().collect();
        by_time.sort_by_key(|(_, st)| std::cmp::Reverse(st.time));
        table(
            "per layer shape, slowest first (input channels→output channels, input size, stride):",
            "layer",
            30,
            &by_time,
        );
    }
    drop(pnet);

    let chunk = batch;
    // One untimed run first, as for the forward: the first run after the profile above found
    // the allocator's and the caches' state of another network (batch 1: 4–5 ms against 1.2).
    sampler::sample(
        b,
        &net,
        &noise,
        &sampler::uniform_grid(1)?,
        Integrator::FlowMap,
        chunk,
    )?;
    for k in [1usize, 4, 16] {
        let grid = sampler::uniform_grid(k)?;
        let (_, rep) = sampler::sample(b, &net, &noise, &grid, Integrator::FlowMap, chunk)?;
        say!(
            "sampling K = {k:>2}: {:>9.2} ms, {:>9.1} samples/s",
            rep.total.as_secs_f64() * 1e3,
            batch as f64 / rep.total.as_secs_f64()
        );
    }
    Ok(())
}
