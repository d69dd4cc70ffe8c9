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
use flowmap::backend::{conv2d_out_shape, Backend, Conv2d, Shaped};
use flowmap::config::Activation;
use flowmap::{Error, Result};

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

fn pad4(shape: &[usize]) -> [usize; 4] {
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
}

impl BurnBackend {
    pub fn new(device: Device) -> Self {
        BurnBackend { device }
    }

    pub fn tensor(&self, data: Vec<f32>, shape: &[usize]) -> BurnTensor {
        let n = data.len();
        BurnTensor::from_flat(
            Tensor::<1>::from_data(TensorData::new(data, [n]), &self.device),
            shape,
        )
    }
}

fn wrap(t: Tensor<4>, shape: Vec<usize>) -> BurnTensor {
    BurnTensor { t, shape }
}

impl Backend for BurnBackend {
    type Tensor = BurnTensor;

    fn upload(&self, data: &[f32], shape: &[usize]) -> Result<BurnTensor> {
        if data.len() != shape.iter().product::<usize>() {
            return Err(Error::Argument(format!(
                "{} values do not fill shape {shape:?}",
                data.len()
            )));
        }
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
        let out = conv2d_out_shape(&x.shape, &w.shape, geom);
        let opts = ConvOptions::new([geom.stride; 2], [geom.padding; 2], [1, 1], 1);
        let mut y = conv2d(x.t.clone(), w.t.clone(), Some(bias.r1()), opts);
        if let Some(r) = residual {
            y = y + r.t.clone();
        }
        wrap(y, out)
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
        let [n, c, h, w] = pad4(&x.shape);
        let g = x.t.clone().reshape([n, groups, (c / groups) * h * w]);
        let mean = g.clone().mean_dim(2);
        let centred = g - mean;
        let var = centred.clone().square().mean_dim(2);
        let normed = (centred / (var + eps).sqrt()).reshape([n, c, h, w]);
        let mut y = normed * gamma.r1().reshape([1, c, 1, 1]) + beta.r1().reshape([1, c, 1, 1]);
        if let Some(m) = modulation {
            let m = m.r2();
            let scale = m.clone().slice([0..n, 0..c]).reshape([n, c, 1, 1]);
            let shift = m.slice([0..n, c..2 * c]).reshape([n, c, 1, 1]);
            y = y * (scale + 1.0) + shift;
        }
        if silu_after {
            y = silu(y);
        }
        wrap(y, x.shape.clone())
    }

    fn linear(
        &self,
        x: &BurnTensor,
        w: &BurnTensor,
        bias: &BurnTensor,
        modulation: Option<&BurnTensor>,
        act: Activation,
    ) -> BurnTensor {
        let (n, out) = (x.shape[0], w.shape[0]);
        // flowmap stores linear weights [out, in]: y = x wᵀ + b.
        let mut y = x.r2().matmul(w.r2().transpose()) + bias.r1().reshape([1, out]);
        if let Some(m) = modulation {
            let m = m.r2();
            let scale = m.clone().slice([0..n, 0..out]);
            let shift = m.slice([0..n, out..2 * out]);
            y = y * (scale + 1.0) + shift;
        }
        let y = apply_act(y, act);
        wrap(y.reshape([n, out, 1, 1]), vec![n, out])
    }

    fn timestep_embedding(
        &self,
        times: &BurnTensor,
        dim: usize,
        max_period: f32,
        time_scale: f32,
    ) -> BurnTensor {
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
        wrap(y.reshape([n, dim, 1, 1]), vec![n, dim])
    }

    fn attention(&self, qkv: &BurnTensor, heads: usize) -> BurnTensor {
        let (n, c, l) = (qkv.shape[0], qkv.shape[1] / 3, qkv.shape[2]);
        let d = c / heads;
        let all = qkv.r3();
        let part = |i: usize| {
            all.clone()
                .slice([0..n, i * c..(i + 1) * c, 0..l])
                .reshape([n, heads, d, l])
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let scores = q.swap_dims(2, 3).matmul(k) * (1.0 / (d as f32).sqrt()); // [n, h, l, l]
        let p = softmax(scores, 3);
        let o = v.matmul(p.swap_dims(2, 3)); // [n, h, d, l]
        wrap(o.reshape([n, c, l, 1]), vec![n, c, l])
    }

    fn upsample_nearest2x(&self, x: &BurnTensor) -> BurnTensor {
        let s = &x.shape;
        let y = interpolate(
            x.t.clone(),
            InterpolateOptions::new(InterpolateMode::Nearest).with_scale_factor([2.0, 2.0]),
        );
        wrap(y, vec![s[0], s[1], 2 * s[2], 2 * s[3]])
    }

    fn concat_channels(&self, a: &BurnTensor, b: &BurnTensor) -> BurnTensor {
        let mut shape = a.shape.clone();
        shape[1] += b.shape[1];
        wrap(Tensor::cat(vec![a.t.clone(), b.t.clone()], 1), shape)
    }

    fn reshape(&self, t: &BurnTensor, shape: &[usize]) -> BurnTensor {
        BurnTensor::from_flat(t.r1(), shape)
    }

    fn add(&self, a: &BurnTensor, b: &BurnTensor) -> BurnTensor {
        wrap(a.t.clone() + b.t.clone(), a.shape.clone())
    }

    fn activation(&self, x: &BurnTensor, act: Activation) -> BurnTensor {
        wrap(apply_act(x.t.clone(), act), x.shape.clone())
    }

    fn flow_step(&self, x: &BurnTensor, v: &BurnTensor, dt: f32) -> BurnTensor {
        wrap(x.t.clone() + v.t.clone() * dt, x.shape.clone())
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
