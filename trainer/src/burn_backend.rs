//! flowmap's op set ([`flowmap::backend::Backend`]) implemented on burn tensors, with autodiff
//! when the device has it. The trainer runs *the sampler's own network code* (`flowmap::net`) on
//! this backend, so the architecture, its tensor names and its shapes exist once, and training
//! differentiates exactly the function the sampler evaluates.
//!
//! Tensors are stored as rank-4 burn tensors (trailing dimensions of size 1 pad lower ranks) next
//! to their logical flowmap shape; reshapes are views.

use burn::tensor::activation::{gelu, relu, silu, softmax};
use burn::tensor::module::{conv2d, interpolate};
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor, TensorData};
use flowmap::backend::{conv2d_out_shape, Backend, Conv2d, OpFamily, Shaped};
use flowmap::config::Activation;
use flowmap::{Error, Result};
use std::time::Instant;

pub use crate::profile::{Op, OpCall, OpLog};

/// A burn tensor with its flowmap shape.
#[derive(Clone, Debug)]
pub struct BurnTensor {
    pub t: Tensor<4>,
    shape: Vec<usize>,
}

impl Shaped for BurnTensor {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
}

pub(crate) fn pad4(shape: &[usize]) -> [usize; 4] {
    assert!(
        shape.len() <= 4,
        "flowmap tensors have rank ≤ 4, got {shape:?}"
    );
    let mut s = [1usize; 4];
    s[..shape.len()].copy_from_slice(shape);
    s
}

impl BurnTensor {
    pub fn new(t: Tensor<4>, shape: &[usize]) -> Self {
        debug_assert_eq!(t.dims(), pad4(shape));
        BurnTensor {
            t,
            shape: shape.to_vec(),
        }
    }

    /// Wraps a burn tensor of any rank ≤ 4 given its logical shape.
    pub fn from_flat(t: Tensor<1>, shape: &[usize]) -> Self {
        BurnTensor {
            t: t.reshape(pad4(shape)),
            shape: shape.to_vec(),
        }
    }

    /// sg(·): the same values cut from the autodiff graph.
    pub fn detached(&self) -> Self {
        BurnTensor {
            t: self.t.clone().detach(),
            shape: self.shape.clone(),
        }
    }

    pub fn r1(&self) -> Tensor<1> {
        self.t.clone().reshape([self.len()])
    }

    /// A modulation [M, 2C] as the [N, 2C] its rows stand for, row m serving N / M consecutive
    /// samples ([`flowmap::backend::modulation_repeat`]): a broadcast view, whose gradient
    /// burn sums over each row's samples.
    pub fn modulation_rows(&self, n: usize) -> Tensor<2> {
        let (m, k) = (self.shape[0], self.len() / self.shape[0].max(1));
        let rep = flowmap::backend::modulation_repeat(n, k / 2, self.len());
        if rep == 1 {
            return self.r2();
        }
        self.r2()
            .reshape([m, 1, k])
            .expand([m, rep, k])
            .reshape([n, k])
    }

    pub fn r2(&self) -> Tensor<2> {
        self.t
            .clone()
            .reshape([self.shape[0], self.len() / self.shape[0]])
    }

    pub fn r3(&self) -> Tensor<3> {
        let [a, b, c, _] = pad4(&self.shape);
        self.t.clone().reshape([a, b, c * pad4(&self.shape)[3]])
    }
}

/// The burn device to compute on; autodiff if the device has it.
#[derive(Clone, Debug)]
pub struct BurnBackend {
    pub device: Device,
    /// When set, every op's wall time, FLOPs and shapes are recorded (`trainer bench --profile`).
    /// Meaningful on `flex`, which executes each op eagerly.
    pub profile: Option<OpLog>,
    /// Convolutions and GroupNorm through [`crate::flex_ops`] (flex devices) instead of burn's ops.
    pub fast_ops: bool,
    /// How convolutions run where `fast_ops` is off (burn-wgpu); see [`ConvPath`].
    pub conv: ConvPath,
}

/// The convolution of the burn path (where [`crate::flex_ops`] does not apply, i.e. burn-wgpu).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConvPath {
    /// burn's `conv2d` (autotuned CubeCL kernels, and their own weight and data gradients).
    #[default]
    Burn,
    /// im2col as burn ops (zero padding, one strided slice per tap, concatenation) and one
    /// batched matmul: its backward is matmuls too, the weight gradient a product batched over
    /// the samples and summed, so it never runs a long single contraction over N·H·W.
    Gemm,
}

impl ConvPath {
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "burn" => Ok(ConvPath::Burn),
            "gemm" => Ok(ConvPath::Gemm),
            _ => Err(format!("unknown convolution path `{s}` (burn, gemm)")),
        }
    }
}

static CONV_PATH: std::sync::OnceLock<ConvPath> = std::sync::OnceLock::new();

/// Sets the process's convolution path for burn-wgpu (the trainer's `--wgpu-conv` flag); once, before
/// the first [`BurnBackend::new`].
pub fn set_conv_path(path: ConvPath) {
    let _ = CONV_PATH.set(path);
}

impl BurnBackend {
    pub fn new(device: Device) -> Self {
        let fast_ops = matches!(
            device.clone().inner().as_dispatch(),
            burn::backend::DispatchDevice::Flex(_)
        );
        BurnBackend {
            device,
            profile: None,
            fast_ops,
            conv: CONV_PATH.get().copied().unwrap_or_default(),
        }
    }

    /// Starts a clock if profiling.
    fn tick(&self) -> Option<Instant> {
        self.profile.as_ref().map(|_| Instant::now())
    }

    /// Records an op that started at `start` and produced `y`.
    fn note(&self, start: Option<Instant>, op: Op, y: &BurnTensor) {
        if let (Some(log), Some(start)) = (&self.profile, start) {
            log.record(OpCall {
                op,
                secs: start.elapsed().as_secs_f64(),
                grad: y.t.is_tracked(),
            });
        }
    }

    pub fn tensor(&self, data: Vec<f32>, shape: &[usize]) -> BurnTensor {
        let n = data.len();
        BurnTensor::from_flat(
            Tensor::<1>::from_data(TensorData::new(data, [n]), &self.device),
            shape,
        )
    }
}

/// [`ConvPath::Gemm`]: y[n] = W · cols(x[n]) + b, with W laid out [C_out, (ky, kx, C_in)] and the
/// columns [N, (ky, kx, C_in), H_out·W_out] gathered by one strided slice of the zero-padded
/// input per tap.
pub fn conv2d_gemm(
    x: Tensor<4>,
    w: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    use burn::tensor::ops::PadMode;
    use burn::tensor::Slice;
    let [n, c, h, wd] = x.dims();
    let [co, ci, kh, kw] = w.dims();
    debug_assert_eq!(c, ci);
    let ho = (h + 2 * padding - kh) / stride + 1;
    let wo = (wd + 2 * padding - kw) / stride + 1;
    let k = ci * kh * kw;
    let cols = if kh == 1 && kw == 1 && stride == 1 && padding == 0 {
        x.reshape([n, c, h * wd])
    } else {
        let xp = if padding > 0 {
            x.pad((padding, padding, padding, padding), PadMode::Constant(0.0))
        } else {
            x
        };
        let span = |o: usize, len: usize| {
            Slice::new(
                o as isize,
                Some((o + stride * (len - 1) + 1) as isize),
                stride as isize,
            )
        };
        let mut taps = Vec::with_capacity(kh * kw);
        for ky in 0..kh {
            for kx in 0..kw {
                taps.push(xp.clone().slice([
                    Slice::new(0, Some(n as isize), 1),
                    Slice::new(0, Some(c as isize), 1),
                    span(ky, ho),
                    span(kx, wo),
                ]));
            }
        }
        Tensor::cat(taps, 1).reshape([n, k, ho * wo])
    };
    let w2 = w.permute([0, 2, 3, 1]).reshape([1, co, k]);
    let y = w2.matmul(cols) + bias.reshape([1, co, 1]);
    y.reshape([n, co, ho, wo])
}

fn wrap(t: Tensor<4>, shape: Vec<usize>) -> BurnTensor {
    BurnTensor { t, shape }
}

impl Backend for BurnBackend {
    type Tensor = BurnTensor;

    fn upload(&self, data: &[f32], shape: &[usize]) -> Result<BurnTensor> {
        flowmap::backend::check_fill(data.len(), shape)?;
        Ok(self.tensor(data.to_vec(), shape))
    }

    fn download(&self, t: &BurnTensor) -> Result<Vec<f32>> {
        t.t.clone()
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::Gpu(format!("burn readback: {e:?}")))
    }

    fn sync(&self) -> Result<()> {
        self.device
            .sync()
            .map_err(|e| Error::Gpu(format!("burn sync: {e:?}")))
    }

    fn conv2d(
        &self,
        x: &BurnTensor,
        w: &BurnTensor,
        bias: &BurnTensor,
        geom: Conv2d,
        residual: Option<&BurnTensor>,
    ) -> BurnTensor {
        if geom.upsample {
            // Training keeps the two ops (the upsample's gradient is burn's): the fused read is
            // the sampler backends' saving.
            let up = self.upsample_nearest2x(x);
            return self.conv2d(&up, w, bias, geom.plain(), residual);
        }
        let start = self.tick();
        let out = conv2d_out_shape(&x.shape, &w.shape, geom);
        let mut y = if self.fast_ops {
            crate::flex_ops::conv2d(
                x.t.clone(),
                w.t.clone(),
                bias.r1(),
                geom.stride,
                geom.padding,
            )
        } else if self.conv == ConvPath::Gemm {
            conv2d_gemm(
                x.t.clone(),
                w.t.clone(),
                bias.r1(),
                geom.stride,
                geom.padding,
            )
        } else {
            let opts = ConvOptions::new([geom.stride; 2], [geom.padding; 2], [1, 1], 1);
            conv2d(x.t.clone(), w.t.clone(), Some(bias.r1()), opts)
        };
        if let Some(r) = residual {
            y = y + r.t.clone();
        }
        let y = wrap(y, out);
        self.note(
            start,
            Op::Conv2d {
                x: pad4(&x.shape),
                w: pad4(&w.shape),
                geom,
                residual: residual.is_some(),
            },
            &y,
        );
        y
    }

    fn group_norm(
        &self,
        x: &BurnTensor,
        gamma: &BurnTensor,
        beta: &BurnTensor,
        groups: usize,
        eps: f32,
        modulation: Option<&BurnTensor>,
        silu_after: bool,
    ) -> BurnTensor {
        let start = self.tick();
        let [n, c, h, w] = pad4(&x.shape);
        let gamma = gamma.r1().reshape([1, c]);
        let beta = beta.r1().reshape([1, c]);
        // The affine and the time scale-shift folded into one per-(sample, channel) factor and
        // offset on [N, C]: y = x̂ · a + b with a = γ · (1 + scale), b = β · (1 + scale) + shift.
        let (a, b) = match modulation {
            Some(m) => {
                let m = m.modulation_rows(n);
                let scale = m.clone().slice([0..n, 0..c]) + 1.0;
                let shift = m.slice([0..n, c..2 * c]);
                (gamma * scale.clone(), beta * scale + shift)
            }
            None => (gamma.expand([n, c]), beta.expand([n, c])),
        };
        let y = if self.fast_ops {
            crate::flex_ops::group_norm(x.t.clone(), a, b, groups, eps, silu_after)
        } else {
            // Two full-size passes after the statistics; the profile (docs/BENCHMARKS.md) found
            // GroupNorm memory-bound.
            let cg = c / groups;
            let g = x.t.clone().reshape([n, groups, cg * h * w]);
            let mean = g.clone().mean_dim(2);
            let centred = g - mean;
            let var = centred.clone().square().mean_dim(2);
            let rstd = (var + eps)
                .sqrt()
                .recip()
                .expand([n, groups, cg])
                .reshape([n, c]);
            let y = centred.reshape([n, c, h, w]) * (rstd * a).reshape([n, c, 1, 1])
                + b.reshape([n, c, 1, 1]);
            if silu_after {
                silu(y)
            } else {
                y
            }
        };
        let y = wrap(y, x.shape.clone());
        self.note(
            start,
            Op::GroupNorm {
                x: pad4(&x.shape),
                groups,
                modulation: modulation.is_some(),
                silu: silu_after,
            },
            &y,
        );
        y
    }

    fn linear(
        &self,
        x: &BurnTensor,
        w: &BurnTensor,
        bias: &BurnTensor,
        modulation: Option<&BurnTensor>,
        act: Activation,
    ) -> BurnTensor {
        let start = self.tick();
        let (n, out) = (x.shape[0], w.shape[0]);
        // flowmap stores linear weights [out, in]: y = x wᵀ + b.
        let y = if self.fast_ops {
            // GEMM with the bias, then modulation and activation in one pass, each one node.
            let y = crate::flex_ops::linear(x.r2(), w.r2(), bias.r1());
            if modulation.is_none() && act == Activation::None {
                y
            } else {
                crate::flex_ops::modulate_act(y, modulation.map(|m| m.modulation_rows(n)), act)
            }
        } else {
            let mut y = x.r2().matmul(w.r2().transpose()) + bias.r1().reshape([1, out]);
            if let Some(m) = modulation {
                let m = m.modulation_rows(n);
                let scale = m.clone().slice([0..n, 0..out]);
                let shift = m.slice([0..n, out..2 * out]);
                y = y * (scale + 1.0) + shift;
            }
            apply_act(y, act)
        };
        let y = wrap(y.reshape([n, out, 1, 1]), vec![n, out]);
        self.note(
            start,
            Op::Linear {
                n,
                inp: w.shape[1],
                out,
                modulation: modulation.is_some(),
                act,
            },
            &y,
        );
        y
    }

    fn timestep_embedding(
        &self,
        times: &BurnTensor,
        dim: usize,
        max_period: f32,
        time_scale: f32,
    ) -> BurnTensor {
        let start = self.tick();
        let n = times.shape[0];
        let half = dim / 2;
        let freqs: Vec<f32> = flowmap::cpu::embedding_frequencies(half, max_period)
            .into_iter()
            .map(|f| f * time_scale)
            .collect();
        let freqs =
            Tensor::<1>::from_data(TensorData::new(freqs, [half]), &self.device).reshape([1, half]);
        let args = times.r1().reshape([n, 1]) * freqs;
        let y = Tensor::cat(vec![args.clone().cos(), args.sin()], 1);
        let y = wrap(y.reshape([n, dim, 1, 1]), vec![n, dim]);
        self.note(start, Op::Other(OpFamily::Embedding), &y);
        y
    }

    fn attention(&self, qkv: &BurnTensor, heads: usize) -> BurnTensor {
        let start = self.tick();
        let (n, c, l) = (qkv.shape[0], qkv.shape[1] / 3, qkv.shape[2]);
        let d = c / heads;
        let all = qkv.r3();
        if self.fast_ops {
            // One fused op with its own backward (flex_ops::attention): burn's version below
            // copies the strided q, k, v views and runs the softmax as separate passes.
            let o = crate::flex_ops::attention(all, heads);
            let y = wrap(o.reshape([n, c, l, 1]), vec![n, c, l]);
            self.note(start, Op::Attention { n, c, l, heads }, &y);
            return y;
        }
        let part = |i: usize| {
            all.clone()
                .slice([0..n, i * c..(i + 1) * c, 0..l])
                .reshape([n, heads, d, l])
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let scores = q.swap_dims(2, 3).matmul(k) * (1.0 / (d as f32).sqrt()); // [n, h, l, l]
        let p = softmax(scores, 3);
        let o = v.matmul(p.swap_dims(2, 3)); // [n, h, d, l]
        let y = wrap(o.reshape([n, c, l, 1]), vec![n, c, l]);
        self.note(start, Op::Attention { n, c, l, heads }, &y);
        y
    }

    fn upsample_nearest2x(&self, x: &BurnTensor) -> BurnTensor {
        let start = self.tick();
        let s = &x.shape;
        let y = interpolate(
            x.t.clone(),
            InterpolateOptions::new(InterpolateMode::Nearest).with_scale_factor([2.0, 2.0]),
        );
        let y = wrap(y, vec![s[0], s[1], 2 * s[2], 2 * s[3]]);
        self.note(start, Op::Other(OpFamily::Upsample), &y);
        y
    }

    fn concat_channels(&self, a: &BurnTensor, b: &BurnTensor) -> BurnTensor {
        let start = self.tick();
        let mut shape = a.shape.clone();
        shape[1] += b.shape[1];
        let y = wrap(Tensor::cat(vec![a.t.clone(), b.t.clone()], 1), shape);
        self.note(start, Op::Other(OpFamily::Concat), &y);
        y
    }

    fn reshape(&self, t: &BurnTensor, shape: &[usize]) -> BurnTensor {
        BurnTensor::from_flat(t.r1(), shape)
    }

    fn add(&self, a: &BurnTensor, b: &BurnTensor) -> BurnTensor {
        let start = self.tick();
        let y = wrap(a.t.clone() + b.t.clone(), a.shape.clone());
        self.note(start, Op::Other(OpFamily::Elementwise), &y);
        y
    }

    fn activation(&self, x: &BurnTensor, act: Activation) -> BurnTensor {
        let start = self.tick();
        let y = wrap(apply_act(x.t.clone(), act), x.shape.clone());
        self.note(start, Op::Other(OpFamily::Elementwise), &y);
        y
    }

    fn flow_step(&self, x: &BurnTensor, v: &BurnTensor, dt: f32) -> BurnTensor {
        let start = self.tick();
        let y = wrap(x.t.clone() + v.t.clone() * dt, x.shape.clone());
        self.note(start, Op::Other(OpFamily::Elementwise), &y);
        y
    }
}

fn apply_act<const D: usize>(y: Tensor<D>, act: Activation) -> Tensor<D> {
    match act {
        Activation::None => y,
        Activation::Silu => silu(y),
        Activation::Relu => relu(y),
        Activation::Gelu => gelu(y),
    }
}
