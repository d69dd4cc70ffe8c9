//! Training data: MNIST-format IDX files and the 2-D toy distributions (METHOD §7).

pub mod idx;
pub mod toy2d;

use crate::config::DataConfig;
use anyhow::{Context, Result};
use flowmap::config::DataSpec;
use flowmap::rng::Rng;
use std::path::PathBuf;

/// The bundled data directory (the 10k MNIST subset).
pub fn bundled_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data")
}

/// A source of training samples in model space.
pub enum DataSource {
    Images(idx::ImageSet),
    Toy(toy2d::Toy),
}

impl DataSource {
    pub fn load(cfg: &DataConfig) -> Result<Self> {
        if cfg.name == "mnist" {
            let dir = bundled_dir();
            let images = cfg
                .images
                .clone()
                .unwrap_or_else(|| dir.join("train-images-idx3-ubyte.gz"));
            let labels = cfg
                .labels
                .clone()
                .unwrap_or_else(|| dir.join("train-labels-idx1-ubyte.gz"));
            let set = idx::load_images(&images, &labels).context("loading the training images")?;
            return Ok(DataSource::Images(set));
        }
        Ok(DataSource::Toy(
            toy2d::Toy::parse(&cfg.name).map_err(anyhow::Error::msg)?,
        ))
    }

    /// Shape of one sample.
    pub fn sample_shape(&self) -> Vec<usize> {
        match self {
            DataSource::Images(s) => vec![1, s.height, s.width],
            DataSource::Toy(_) => vec![2],
        }
    }

    /// `n` samples: a uniform draw with replacement from the images, or fresh points.
    pub fn sample(&self, n: usize, rng: &mut Rng) -> Vec<f32> {
        match self {
            DataSource::Images(s) => {
                let len = s.height * s.width;
                let mut out = Vec::with_capacity(n * len);
                for _ in 0..n {
                    let i = (rng.uniform() * s.n as f64) as usize % s.n;
                    out.extend_from_slice(&s.pixels[i * len..(i + 1) * len]);
                }
                out
            }
            DataSource::Toy(t) => t.sample(n, rng),
        }
    }

    /// The default σ0 (METHOD §1): 1 for images, the data's per-coordinate std for 2-D sets
    /// (estimated from 100k points with a fixed seed).
    pub fn default_sigma0(&self) -> f32 {
        match self {
            DataSource::Images(_) => 1.0,
            DataSource::Toy(t) => {
                let pts = t.sample(100_000, &mut Rng::new(12345));
                let n = pts.len() as f64;
                let mean = pts.iter().map(|&v| v as f64).sum::<f64>() / n;
                (pts.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt() as f32
            }
        }
    }

    /// The sampler's description of this data.
    pub fn spec(&self) -> DataSpec {
        match self {
            DataSource::Images(s) => DataSpec::image([1, s.height, s.width], "mnist"),
            DataSource::Toy(t) => DataSpec::points(2, [-1.5, 1.5], t.name()),
        }
    }
}
