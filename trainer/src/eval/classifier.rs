//! The MNIST feature extractor for the Fréchet distance (METHOD §7): a LeNet-style network
//! (5×5 conv 1→16, ReLU, 2×2 max-pool; 5×5 conv 16→32, ReLU, 2×2 max-pool; linear 512→128, ReLU;
//! linear 128→10), trained with cross-entropy on the train split. The 128 ReLU features feed the
//! Fréchet distance; the logits give the class histogram.

use crate::data::idx::ImageSet;
use crate::optim::{self, Adam};
use crate::params::flat;
use anyhow::{bail, Context, Result};
use burn::tensor::activation::{log_softmax, relu, softmax};
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Int, Tensor, TensorData};
use flowmap::rng::Rng;
use std::collections::BTreeMap;
use std::path::Path;

const KEY: &str = "flowmap-classifier";

/// Width of the feature vector.
pub const FEATURES: usize = 128;

const LAYOUT: [(&str, &[usize]); 8] = [
    ("conv1.weight", &[16, 1, 5, 5]),
    ("conv1.bias", &[16]),
    ("conv2.weight", &[32, 16, 5, 5]),
    ("conv2.bias", &[32]),
    ("fc1.weight", &[FEATURES, 512]),
    ("fc1.bias", &[FEATURES]),
    ("fc2.weight", &[10, FEATURES]),
    ("fc2.bias", &[10]),
];

pub struct Classifier {
    params: Vec<Tensor<1>>,
    device: Device,
}

fn r<const D: usize>(t: &Tensor<1>, shape: &[usize]) -> Tensor<D> {
    let mut s = [0usize; D];
    s.copy_from_slice(shape);
    t.clone().reshape(s)
}

/// What the classifier says about a set of images.
pub struct Predictions {
    /// [n, FEATURES] penultimate-layer features.
    pub feats: Vec<f32>,
    pub classes: Vec<u8>,
    /// The largest class probability of each image.
    pub confidence: Vec<f32>,
}

impl Predictions {
    /// The fraction of images classified with confidence ≥ `threshold`.
    pub fn confident_share(&self, threshold: f32) -> f64 {
        self.confidence.iter().filter(|&&c| c >= threshold).count() as f64
            / self.confidence.len().max(1) as f64
    }
}

impl Classifier {
    fn init(device: &Device, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let params = LAYOUT
            .iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let data = if name.ends_with("bias") {
                    vec![0.0; n]
                } else {
                    let fan_in: usize = shape[1..].iter().product();
                    rng.normals(n, (2.0 / fan_in as f32).sqrt())
                };
                flat(data, device)
            })
            .collect();
        Classifier {
            params,
            device: device.clone(),
        }
    }

    /// (features [N, 128], logits [N, 10]) for images [N, 1, 28, 28] in [−1, 1].
    fn forward(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let p = &self.params;
        let pool = || MaxPoolOptions::new([2, 2]).with_stride([2, 2]);
        let conv = || ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let h = relu(conv2d(x, r(&p[0], LAYOUT[0].1), Some(p[1].clone()), conv()));
        let h = max_pool2d(h, pool());
        let h = relu(conv2d(h, r(&p[2], LAYOUT[2].1), Some(p[3].clone()), conv()));
        let h = max_pool2d(h, pool());
        let n = h.dims()[0];
        let h: Tensor<2> = h.reshape([n, 512]);
        let f = relu(
            h.matmul(r::<2>(&p[4], LAYOUT[4].1).transpose()) + p[5].clone().reshape([1, FEATURES]),
        );
        let logits = f.clone().matmul(r::<2>(&p[6], LAYOUT[6].1).transpose())
            + p[7].clone().reshape([1, 10]);
        (f, logits)
    }

    fn images(&self, pixels: &[f32], n: usize) -> Tensor<4> {
        Tensor::<1>::from_data(TensorData::new(pixels.to_vec(), [n * 784]), &self.device)
            .reshape([n, 1, 28, 28])
    }

    /// Trains on `train` with Adam (lr 1e-3, batch 128) for `steps` steps.
    pub fn train(train: &ImageSet, steps: usize, seed: u64, device: &Device) -> Result<Self> {
        if (train.height, train.width) != (28, 28) {
            bail!(
                "the classifier expects 28×28 images, got {}×{}",
                train.height,
                train.width
            );
        }
        let device = device.clone().autodiff();
        let mut c = Classifier::init(&device, seed);
        c.params = c.params.into_iter().map(|p| p.require_grad()).collect();
        let mut adam = Adam::new(&c.params);
        let mut rng = Rng::new(seed ^ 0xC1A55);
        let batch = 128;
        for step in 0..steps {
            let idx: Vec<usize> = (0..batch)
                .map(|_| (rng.uniform() * train.n as f64) as usize % train.n)
                .collect();
            let px: Vec<f32> = idx
                .iter()
                .flat_map(|&i| train.pixels[i * 784..(i + 1) * 784].iter().copied())
                .collect();
            let labels: Vec<i64> = idx.iter().map(|&i| train.labels[i] as i64).collect();
            let (_, logits) = c.forward(c.images(&px, batch));
            let onehot: Tensor<2> =
                Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &device)
                    .one_hot(10)
                    .float();
            let loss = (log_softmax(logits, 1) * onehot).sum().neg() / batch as f32;
            let grads = loss.backward();
            let (g, norm) = optim::gradients(&c.params, &grads);
            if !norm.is_finite() {
                bail!("classifier training diverged at step {step}");
            }
            adam.step(
                &mut c.params,
                &g,
                step,
                1e-3,
                optim::clip_factor(norm, 10.0),
            );
        }
        c.params = c.params.into_iter().map(|p| p.without_autodiff()).collect();
        c.device = device.without_autodiff();
        Ok(c)
    }

    /// Features, predicted classes and the predictions' confidence (the largest softmax
    /// probability), in batches of 500.
    pub fn features(&self, pixels: &[f32]) -> Result<Predictions> {
        let n = pixels.len() / 784;
        let (mut feats, mut classes) = (Vec::with_capacity(n * FEATURES), Vec::with_capacity(n));
        let mut confidence = Vec::with_capacity(n);
        for chunk in pixels.chunks(500 * 784) {
            let m = chunk.len() / 784;
            let (f, logits) = self.forward(self.images(chunk, m));
            feats.extend(
                f.try_into_vec_as::<f32>()
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?,
            );
            confidence.extend(
                softmax(logits.clone(), 1)
                    .max_dim(1)
                    .reshape([m])
                    .try_into_vec_as::<f32>()
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?,
            );
            let arg: Vec<i64> = logits
                .argmax(1)
                .reshape([m])
                .try_into_vec_as::<i64>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            classes.extend(arg.into_iter().map(|c| c as u8));
        }
        Ok(Predictions {
            feats,
            classes,
            confidence,
        })
    }

    pub fn accuracy(&self, set: &ImageSet) -> Result<f64> {
        let pred = self.features(&set.pixels)?.classes;
        Ok(pred.iter().zip(&set.labels).filter(|(a, b)| a == b).count() as f64 / set.n as f64)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut g = crate::checkpoint::Groups::new();
        let mut m = BTreeMap::new();
        for ((name, _), p) in LAYOUT.iter().zip(&self.params) {
            m.insert(
                name.to_string(),
                p.clone()
                    .try_into_vec_as::<f32>()
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?,
            );
        }
        g.insert("classifier".into(), m);
        crate::checkpoint::save_groups(path, KEY, "{\"arch\":\"lenet\",\"features\":128}", &g)
    }

    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let (_, g) = crate::checkpoint::load_groups(path, KEY)?;
        let m = g
            .get("classifier")
            .with_context(|| format!("{} holds no classifier", path.display()))?;
        let params = LAYOUT
            .iter()
            .map(|(name, shape)| {
                let v = m
                    .get(*name)
                    .with_context(|| format!("classifier file lacks {name}"))?;
                if v.len() != shape.iter().product::<usize>() {
                    bail!("classifier tensor {name} has the wrong size");
                }
                Ok(flat(v.clone(), device))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Classifier {
            params,
            device: device.clone(),
        })
    }
}
