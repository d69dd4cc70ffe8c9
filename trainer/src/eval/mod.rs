//! `trainer eval`: the quality table of METHOD §7 for K = 1, 2, 4, 8, 16, beside the teacher's
//! Euler and Heun at equal network evaluations (NFE). Samples come from the flowmap sampler
//! itself (what ships is what is measured). Writes Markdown, sample grids and a
//! quality-versus-NFE plot.

pub mod classifier;
pub mod metrics;
mod plot;

use crate::data::idx::load_images;
use crate::data::{bundled_dir, toy2d::Toy};
use anyhow::{bail, Context, Result};
use burn::tensor::Device;
use classifier::{Classifier, Predictions, FEATURES};
use flowmap::config::{DataKind, ModelMeta};
use flowmap::device::{DeviceChoice, Engine};
use flowmap::precision::PrecisionChoice;
use flowmap::rng::Rng;
use flowmap::sampler::{self, Integrator};
use flowmap::weights::Weights;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Clone)]
pub struct EvalArgs {
    pub models: Vec<PathBuf>,
    pub teacher: Option<PathBuf>,
    pub out: PathBuf,
    /// Where sample grids and the plot go; default `results/<data set>` beside the report.
    pub figures: Option<PathBuf>,
    pub samples: Option<usize>,
    pub ks: Vec<usize>,
    pub device: String,
    /// auto, f32 or f16 (flowmap::precision).
    pub precision: String,
    pub classifier: PathBuf,
    pub seed: u64,
    /// NFE of the teacher's reference Heun run (images).
    pub teacher_nfe: usize,
}

/// One row of the table: a method and its metric at each K.
pub struct Row {
    pub label: String,
    /// (NFE, metrics) per column; None where the method has no sampler at that NFE.
    pub cells: Vec<Option<Metrics>>,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    /// Checkerboard: KL(data ‖ model); MNIST: Fréchet distance.
    pub primary: f64,
    /// Checkerboard: sliced W2; MNIST: the smallest class share × 10 (1 = perfectly balanced).
    pub secondary: f64,
    /// MNIST: samples per predicted class.
    pub classes: Option<[usize; 10]>,
    /// MNIST: the fraction of samples the classifier assigns a class with probability ≥ 0.9
    /// ([`CONFIDENT`]): readable digits.
    pub confident: Option<f64>,
}

/// The class probability above which a sample counts as a readable digit.
pub const CONFIDENT: f32 = 0.9;

/// A model's name in the report and its figures' file names: the file stem, or the run
/// directory's name for a run's `model.safetensors`.
fn model_label(path: &std::path::Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    match stem.as_deref() {
        Some("model") => path
            .parent()
            .and_then(|d| d.file_name())
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
        Some(s) => s.to_string(),
        None => String::new(),
    }
}

/// Where an eval of `model` goes by default: its run directory for a run's `model.safetensors`,
/// else `<file stem>-eval/` beside the file, so an experiment never rewrites the repository's
/// docs/RESULTS.md (that takes `--update-results`).
pub fn default_dir(model: &std::path::Path) -> PathBuf {
    let parent = model
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    match model.file_stem().and_then(|s| s.to_str()) {
        Some("model") => parent.to_path_buf(),
        Some(stem) => parent.join(format!("{stem}-eval")),
        None => parent.join("eval"),
    }
}

/// Samples per row of the across-K picture of an image model.
const STRIP: usize = 12;

/// Draws `n` samples (data range) with an integrator at `nfe` network evaluations.
fn draw(
    engine: &Engine,
    w: &Weights,
    integrator: Integrator,
    nfe: usize,
    n: usize,
    seed: u64,
) -> Result<Option<Vec<f32>>> {
    let per = integrator.evals_per_step();
    if !nfe.is_multiple_of(per) {
        return Ok(None);
    }
    let grid = sampler::uniform_grid(nfe / per)?;
    let noise = sampler::initial_noise(&w.meta, n, seed);
    let out = match engine {
        Engine::Cpu(b) => {
            let net = w.network(b)?;
            flowmap::cpu::in_pool(|| sampler::sample(b, &net, &noise, &grid, integrator, 4096))?.0
        }
        Engine::Gpu(g) => {
            let net = w.network(g.as_ref())?;
            let chunk = g.max_batch(&w.meta)?;
            sampler::sample(g.as_ref(), &net, &noise, &grid, integrator, chunk)?.0
        }
    };
    Ok(Some(
        out.into_iter().map(|v| w.meta.data.to_data(v)).collect(),
    ))
}

/// Reference data and the metric for one kind of model.
enum Judge {
    Points {
        reference: Vec<f32>,
        floor: Metrics,
    },
    Images {
        classifier: Box<Classifier>,
        test_feats: Vec<f32>,
        floor: Metrics,
        accuracy: f64,
        /// The confident fraction of the real test images.
        test_confident: f64,
    },
}

impl Judge {
    fn new(meta: &ModelMeta, n: usize, args: &EvalArgs) -> Result<Self> {
        match meta.data.kind {
            DataKind::Points => {
                let toy = Toy::parse(&meta.data.name).map_err(anyhow::Error::msg)?;
                let reference = toy.sample(n, &mut Rng::new(args.seed ^ 0xDA7A));
                let other = toy.sample(n, &mut Rng::new(args.seed ^ 0x0DA7A2));
                let floor = points_metrics(&reference, &other);
                Ok(Judge::Points { reference, floor })
            }
            DataKind::Image => {
                let dir = bundled_dir();
                let train = load_images(
                    &dir.join("train-images-idx3-ubyte.gz"),
                    &dir.join("train-labels-idx1-ubyte.gz"),
                )?;
                let test = load_images(
                    &dir.join("test-images-idx3-ubyte.gz"),
                    &dir.join("test-labels-idx1-ubyte.gz"),
                )?;
                let device = Device::flex();
                let classifier = if args.classifier.exists() {
                    Classifier::load(&args.classifier, &device)?
                } else {
                    eprintln!(
                        "training the feature classifier (saved to {}) …",
                        args.classifier.display()
                    );
                    let c = Classifier::train(&train, 600, 0, &device)?;
                    if let Some(dir) = args.classifier.parent() {
                        std::fs::create_dir_all(dir).ok();
                    }
                    c.save(&args.classifier)?;
                    c
                };
                let accuracy = classifier.accuracy(&test)?;
                // The classifier reads model space [−1, 1], as the IDX loader returns it.
                let test_pred = classifier.features(&test.pixels)?;
                let test_confident = test_pred.confident_share(CONFIDENT);
                let test_feats = test_pred.feats;
                // Floor: as many train images as each cell has samples, against the test
                // images, so the floor carries the same small-sample bias as the cells.
                let m = n.min(test.n).min(train.n);
                let idx: Vec<usize> = (0..m).map(|i| i * train.n / m).collect();
                let train_px: Vec<f32> = idx
                    .iter()
                    .flat_map(|&i| {
                        train.pixels[i * 784..(i + 1) * 784]
                            .iter()
                            .map(|p| (p + 1.0) / 2.0)
                    })
                    .collect();
                let judge_floor = {
                    let pred = classifier.features(&to_model(&train_px))?;
                    image_metrics(&pred, &test_feats)
                };
                Ok(Judge::Images {
                    classifier: Box::new(classifier),
                    test_feats,
                    floor: judge_floor,
                    accuracy,
                    test_confident,
                })
            }
        }
    }

    fn judge(&self, samples: &[f32]) -> Result<Metrics> {
        match self {
            Judge::Points { reference, .. } => Ok(points_metrics(reference, samples)),
            Judge::Images {
                classifier,
                test_feats,
                ..
            } => {
                let pred = classifier.features(&to_model(samples))?;
                Ok(image_metrics(&pred, test_feats))
            }
        }
    }

    fn floor(&self) -> &Metrics {
        match self {
            Judge::Points { floor, .. } | Judge::Images { floor, .. } => floor,
        }
    }
}

/// Data range [0, 1] → the classifier's input range [−1, 1].
fn to_model(px: &[f32]) -> Vec<f32> {
    px.iter().map(|p| p.clamp(0.0, 1.0) * 2.0 - 1.0).collect()
}

fn points_metrics(reference: &[f32], samples: &[f32]) -> Metrics {
    Metrics {
        primary: metrics::kl_histogram(reference, samples, 50, [-1.0, 1.0]),
        secondary: metrics::sliced_wasserstein(reference, samples, 2, 128, 7),
        classes: None,
        confident: None,
    }
}

fn image_metrics(pred: &Predictions, test_feats: &[f32]) -> Metrics {
    let mut counts = [0usize; 10];
    pred.classes.iter().for_each(|&c| counts[c as usize] += 1);
    let min_share = *counts.iter().min().unwrap() as f64 / pred.classes.len().max(1) as f64;
    Metrics {
        primary: metrics::frechet_distance(&pred.feats, test_feats, FEATURES),
        secondary: 10.0 * min_share,
        classes: Some(counts),
        confident: Some(pred.confident_share(CONFIDENT)),
    }
}

pub fn run(args: &EvalArgs) -> Result<String> {
    if args.models.is_empty() && args.teacher.is_none() {
        bail!("pass at least one --model, or a --teacher alone");
    }
    if args.ks.is_empty() || args.ks.contains(&0) {
        bail!("--ks must list positive step counts");
    }
    let models: Vec<(PathBuf, Weights)> = args
        .models
        .iter()
        .map(|p| {
            Ok((
                p.clone(),
                Weights::read(p).with_context(|| format!("loading {}", p.display()))?,
            ))
        })
        .collect::<Result<_>>()?;
    let teacher = match &args.teacher {
        Some(p) => {
            Some(Weights::read(p).with_context(|| format!("loading teacher {}", p.display()))?)
        }
        None => None,
    };
    // Every file against the first (the first model, else the teacher).
    let all: Vec<(&PathBuf, &Weights)> = models
        .iter()
        .map(|(p, w)| (p, w))
        .chain(
            teacher
                .iter()
                .map(|t| (args.teacher.as_ref().expect("teacher path"), t)),
        )
        .collect();
    let (path0, w0) = all[0];
    let meta0 = &w0.meta;
    for (p, w) in &all[1..] {
        if w.meta.data.kind != meta0.data.kind || w.meta.data.name != meta0.data.name {
            bail!(
                "{} models a different data set ({}) than {} ({})",
                p.display(),
                w.meta.data.name,
                path0.display(),
                meta0.data.name
            );
        }
    }
    let images = meta0.data.kind == DataKind::Image;
    let n = args.samples.unwrap_or(if images { 1000 } else { 100_000 });
    let (engine, notice) = flowmap::device::open(
        DeviceChoice::parse(&args.device)?,
        PrecisionChoice::parse(&args.precision)?,
    )?;
    if let Some(msg) = notice {
        eprintln!("{msg}");
    }
    let judge = Judge::new(meta0, n, args)?;
    let figures = match &args.figures {
        Some(f) => f.clone(),
        None => args
            .out
            .parent()
            .unwrap_or(std::path::Path::new(""))
            .join("results")
            .join(&meta0.data.name),
    };
    std::fs::create_dir_all(&figures).with_context(|| format!("creating {}", figures.display()))?;

    let mut rows = Vec::new();
    for (path, w) in &models {
        let stem = model_label(path);
        let mut cells = Vec::new();
        let mut strip = Vec::new();
        for &k in &args.ks {
            let s = draw(&engine, w, Integrator::FlowMap, k, n, args.seed)?
                .expect("flow map takes any K");
            let len = w.meta.model.sample_len();
            strip.extend_from_slice(&s[..STRIP.min(n) * len]);
            let grid_n = 64.min(n);
            let png = flowmap::output::encode(
                &s[..grid_n * w.meta.model.sample_len()],
                grid_n,
                &w.meta.data,
                flowmap::output::OutputFormat::Png,
            )?;
            let scatter_png = if images {
                png
            } else {
                flowmap::output::encode(
                    &s,
                    n.min(20_000),
                    &w.meta.data,
                    flowmap::output::OutputFormat::Png,
                )?
            };
            let scatter_png = plot::labelled(
                &scatter_png,
                &format!("K = {k}: {} flow map ({stem})", w.meta.method),
                &[],
            )?;
            flowmap::output::write_atomic(&figures.join(format!("{stem}-k{k}.png")), &scatter_png)?;
            let m = judge.judge(&s)?;
            eprintln!(
                "{} ({}) K = {k}: {:.4} / {:.4}",
                stem, w.meta.method, m.primary, m.secondary
            );
            cells.push(Some(m));
        }
        if images {
            // One row per K from the same noise: the README's picture of quality against K.
            let png = flowmap::output::image_rows(
                &strip,
                STRIP.min(n) * args.ks.len(),
                STRIP.min(n),
                &w.meta.data.shape,
                w.meta.data.range,
            )?;
            let labels: Vec<String> = args.ks.iter().map(|k| format!("K = {k}")).collect();
            let png = plot::labelled(
                &png,
                &format!(
                    "{} flow map ({stem}): one row per K, same noise",
                    w.meta.method
                ),
                &labels,
            )?;
            flowmap::output::write_atomic(&figures.join(format!("{stem}-across-k.png")), &png)?;
        }
        rows.push(Row {
            label: format!("{} ({stem}), K jumps", w.meta.method),
            cells,
        });
    }
    let mut best_teacher = None;
    if let Some(t) = &teacher {
        for integ in [Integrator::Euler, Integrator::Heun] {
            let mut cells = Vec::new();
            for &k in &args.ks {
                let m = match draw(&engine, t, integ, k, n, args.seed)? {
                    Some(s) => Some(judge.judge(&s)?),
                    None => None,
                };
                cells.push(m);
            }
            rows.push(Row {
                label: format!("teacher ({}), {:?} at equal NFE", t.meta.method, integ),
                cells,
            });
        }
        if images {
            let s = draw(&engine, t, Integrator::Heun, args.teacher_nfe, n, args.seed)?
                .context("--teacher-nfe must be even (Heun takes 2 evaluations a step)")?;
            best_teacher = Some(judge.judge(&s)?);
        }
    }
    let floor = judge.floor().clone();
    plot::quality_vs_nfe(
        &figures.join("quality-vs-nfe.png"),
        &format!(
            "{}: sample quality against network evaluations",
            meta0.data.name
        ),
        if images {
            "Fréchet distance (LeNet features), lower is better"
        } else {
            "KL(data ‖ model), 50×50 histogram, lower is better"
        },
        &args.ks,
        &rows,
        floor.primary,
    )?;
    let md = markdown(
        args,
        &figures,
        &models,
        args.teacher.as_deref().zip(teacher.as_ref()),
        &rows,
        &floor,
        &judge,
        best_teacher.as_ref(),
        n,
        &engine,
    );
    let existing = std::fs::read_to_string(&args.out).ok();
    let report = merge_section(existing.as_deref(), &meta0.data.name, &md);
    flowmap::output::write_atomic(&args.out, report.as_bytes())?;
    Ok(md)
}

const REPORT_HEADER: &str = "# Quality versus steps\n\nGenerated by `trainer eval`: each data set's section below is rewritten by the eval of that data set and the others are kept. The commands that trained and evaluated each model are in the README.\n";

/// The report with `name`'s section replaced by `body` (or appended when new); other sections
/// are kept, so one report collects the evals of several data sets.
fn merge_section(existing: Option<&str>, name: &str, body: &str) -> String {
    let (open, close) = (
        format!("<!-- trainer eval: {name} -->"),
        format!("<!-- end trainer eval: {name} -->"),
    );
    let section = format!("{open}\n{body}{close}\n");
    let old = existing.unwrap_or("");
    match (old.find(&open), old.find(&close)) {
        (Some(a), Some(b)) if b > a => {
            format!(
                "{}{section}{}",
                &old[..a],
                old[b + close.len()..].trim_start_matches('\n')
            )
        }
        _ => {
            let mut out = if old.trim().is_empty() {
                REPORT_HEADER.to_string()
            } else {
                old.trim_end().to_string() + "\n"
            };
            out.push('\n');
            out.push_str(&section);
            out
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    args: &EvalArgs,
    figures: &std::path::Path,
    models: &[(PathBuf, Weights)],
    teacher: Option<(&std::path::Path, &Weights)>,
    rows: &[Row],
    floor: &Metrics,
    judge: &Judge,
    best: Option<&Metrics>,
    n: usize,
    engine: &Engine,
) -> String {
    let mut md = String::new();
    let images = matches!(judge, Judge::Images { .. });
    let (p, s) = if images {
        (
            "Fréchet distance (LeNet features)",
            "class balance (10 × smallest class share) / share of samples classified with confidence ≥ 0.9",
        )
    } else {
        ("KL(data ‖ model), 50×50 histogram", "sliced W2")
    };
    let data = models.first().map(|m| &m.1).or(teacher.map(|t| t.1));
    let _ = writeln!(
        md,
        "## {}\n",
        data.map_or("", |w| w.meta.data.name.as_str())
    );
    let _ = writeln!(
        md,
        "Generated by `trainer eval` ({} samples per cell, seed {}, sampled by flowmap on {}). Lower is better for the first number; K is the number of network evaluations (NFE).\n",
        n,
        args.seed,
        engine.describe()
    );
    if let Judge::Images {
        accuracy,
        test_confident,
        ..
    } = judge
    {
        let _ = writeln!(md, "Feature classifier: LeNet-style, trained on the 9,000-image train split, test accuracy {:.2}% on the 1,000 test images, {:.1}% of which it classifies with confidence ≥ {CONFIDENT}.\n", accuracy * 100.0, test_confident * 100.0);
    }
    let _ = writeln!(
        md,
        "Cells: {p} / {s}. Floor ({}): {:.4} / {:.4}{}.\n",
        if images {
            "as many train images as samples per cell, vs the 1,000 test images"
        } else {
            "two independent data draws"
        },
        floor.primary,
        floor.secondary,
        floor
            .confident
            .map(|c| format!(" / {:.0}%", c * 100.0))
            .unwrap_or_default()
    );
    let _ = writeln!(md, "Models (from their provenance metadata):\n");
    for (path, w) in models.iter().map(|(p, w)| (p.as_path(), w)).chain(teacher) {
        let pv = &w.meta.provenance;
        let get = |k: &str| pv.get(k).map(String::as_str).unwrap_or("?");
        let _ = write!(
            md,
            "- `{}`: {} {}, {} steps × batch {}, lr {}, seed {}",
            path.display(),
            w.meta.method,
            w.meta.model.arch_name(),
            get("steps"),
            get("batch"),
            get("lr"),
            get("seed")
        );
        if let Some(t) = pv.get("teacher") {
            let _ = write!(md, ", teacher {t}");
        }
        if let Some(i) = pv.get("init") {
            let _ = write!(md, ", initialised from {i}");
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md);
    let _ = write!(md, "| method |");
    for k in &args.ks {
        let _ = write!(md, " K = {k} |");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---|{}", "---:|".repeat(args.ks.len()));
    for r in rows {
        let _ = write!(md, "| {} |", r.label);
        for c in &r.cells {
            match c {
                Some(m) => {
                    let _ = write!(md, " {} |", cell_text(m));
                }
                None => {
                    let _ = write!(md, " — |");
                }
            }
        }
        let _ = writeln!(md);
    }
    if let Some(b) = best {
        let _ = writeln!(
            md,
            "\nTeacher's best: Heun at {} NFE: {}.",
            args.teacher_nfe,
            cell_text(b)
        );
    }
    if images {
        let _ = writeln!(
            md,
            "\nClass histograms (samples per predicted digit 0–9):\n"
        );
        for r in rows {
            for (k, c) in args.ks.iter().zip(&r.cells) {
                if let Some(Metrics {
                    classes: Some(h), ..
                }) = c
                {
                    let _ = writeln!(md, "- {} K = {k}: {h:?}", r.label);
                }
            }
        }
    }
    let fig = relative_to_report(figures, &args.out);
    let _ = writeln!(md, "\n![quality versus NFE]({fig}/quality-vs-nfe.png)\n");
    for (path, w) in models {
        let stem = model_label(path);
        let _ = writeln!(md, "Samples of `{}` ({}):\n", stem, w.meta.method);
        if images {
            let _ = writeln!(md, "![{stem} across K]({fig}/{stem}-across-k.png)\n\nOne row per K = {}, top to bottom, from the same noise; {} samples per K below.\n", args.ks.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "), 64.min(n));
        }
        for k in &args.ks {
            let _ = write!(md, "K = {k} ![K={k}]({fig}/{stem}-k{k}.png) ");
        }
        let _ = writeln!(md, "\n");
    }
    let _ = writeln!(md, "Metric definitions: docs/METRICS.md.");
    md
}

/// The figure folder as a link from the report's own folder (docs/results from docs/RESULTS.md is
/// `results`), or as given when it lies elsewhere.
fn relative_to_report(figures: &std::path::Path, report: &std::path::Path) -> String {
    let dir = report.parent().unwrap_or(std::path::Path::new(""));
    figures
        .strip_prefix(dir)
        .unwrap_or(figures)
        .display()
        .to_string()
}

/// A table cell: primary / secondary metric, then the confident share where there is one.
fn cell_text(m: &Metrics) -> String {
    let mut t = format!("{:.4} / {:.3}", m.primary, m.secondary);
    if let Some(c) = m.confident {
        let _ = write!(t, " / {:.0}%", c * 100.0);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::{default_dir, merge_section};

    #[test]
    fn a_data_sets_section_is_replaced_and_the_others_kept() {
        let one = merge_section(None, "mnist", "## mnist\nold\n");
        assert!(one.starts_with("# Quality versus steps"), "{one}");
        let two = merge_section(Some(&one), "checkerboard", "## checkerboard\nboard\n");
        let three = merge_section(Some(&two), "mnist", "## mnist\nnew\n");
        assert!(three.contains("new") && !three.contains("old"), "{three}");
        assert!(three.contains("board"), "{three}");
        assert_eq!(three.matches("<!-- trainer eval: mnist -->").count(), 1);
        // By default a run's eval stays in the run: never the repository's docs/RESULTS.md.
        use std::path::Path;
        assert_eq!(
            default_dir(Path::new("runs/cb-lmd/model.safetensors")),
            Path::new("runs/cb-lmd")
        );
        assert_eq!(
            default_dir(Path::new("weights/mnist.safetensors")),
            Path::new("weights/mnist-eval")
        );
        assert_eq!(
            default_dir(Path::new("m.safetensors")),
            Path::new("./m-eval")
        );
        // mnist stays where it was: before checkerboard.
        assert!(three.find("## mnist").unwrap() < three.find("## checkerboard").unwrap());
    }
}
