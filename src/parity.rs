//! Kernel parity at any size: a backend that runs every op on the CPU backend and, with the very
//! same inputs, on the WGSL kernels, and keeps the worst difference per op family. Driving a
//! whole network through it checks every kernel on the shapes and values that network produces
//! (the GPU report runs it at production sizes on real adapters, where workgroup memory, barriers
//! and uniformity can go wrong in ways lavapipe never shows). Each GPU op gets the CPU's inputs,
//! so an error is the kernel's own and does not compound through the network.

use crate::backend::{Backend, Conv2d, OpFamily};
use crate::config::Activation;
use crate::cpu::{CpuBackend, CpuTensor};
use crate::error::{Error, Result};
use crate::gpu::{GpuBackend, GpuTensor};
pub use crate::tolerance::scaled_error;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// The worst difference seen in one op family.
#[derive(Debug, Clone, Copy, Default)]
pub struct Worst {
    pub calls: usize,
    /// Largest |gpu − cpu| over every element of every call.
    pub max_abs: f32,
    /// The reference's scale at that call: max(1, max |cpu|), what tolerances multiply.
    pub scale: f32,
    /// max_abs / scale, the number held to a tolerance.
    pub rel: f32,
}

pub struct OpParity<'a> {
    pub cpu: CpuBackend,
    gpu: &'a GpuBackend,
    worst: RefCell<BTreeMap<OpFamily, Worst>>,
    error: RefCell<Option<Error>>,
}

impl<'a> OpParity<'a> {
    pub fn new(cpu: CpuBackend, gpu: &'a GpuBackend) -> Self {
        OpParity {
            cpu,
            gpu,
            worst: RefCell::default(),
            error: RefCell::default(),
        }
    }

    /// The worst difference per family so far, or the first GPU error met.
    pub fn results(&self) -> Result<BTreeMap<OpFamily, Worst>> {
        if let Some(e) = self.error.borrow_mut().take() {
            return Err(e);
        }
        Ok(self.worst.borrow().clone())
    }

    fn up(&self, t: &CpuTensor) -> Result<GpuTensor> {
        self.gpu.upload(&t.data, &t.shape)
    }

    /// Books the GPU result of one op against the CPU's and returns the CPU's.
    fn check(
        &self,
        family: OpFamily,
        want: CpuTensor,
        gpu: impl FnOnce(&Self) -> Result<GpuTensor>,
    ) -> CpuTensor {
        if self.error.borrow().is_some() {
            return want;
        }
        match gpu(self).and_then(|g| self.gpu.download(&g)) {
            Ok(got) => {
                let (abs, scale) = scaled_error(&got, &want.data);
                let mut worst = self.worst.borrow_mut();
                let w = worst.entry(family).or_default();
                w.calls += 1;
                if abs / scale >= w.rel {
                    *w = Worst {
                        calls: w.calls,
                        max_abs: abs,
                        scale,
                        rel: abs / scale,
                    };
                }
            }
            Err(e) => *self.error.borrow_mut() = Some(e),
        }
        want
    }
}

impl Backend for OpParity<'_> {
    type Tensor = CpuTensor;

    fn upload(&self, data: &[f32], shape: &[usize]) -> Result<CpuTensor> {
        self.cpu.upload(data, shape)
    }
    fn upload_times(&self, data: &[f32], shape: &[usize]) -> Result<CpuTensor> {
        self.cpu.upload_times(data, shape)
    }
    fn download(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        self.cpu.download(t)
    }
    fn sync(&self) -> Result<()> {
        self.gpu.sync()
    }
    fn conv2d(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        b: &CpuTensor,
        g: Conv2d,
        r: Option<&CpuTensor>,
    ) -> CpuTensor {
        let want = self.cpu.conv2d(x, w, b, g, r);
        self.check(OpFamily::Conv2d, want, |s| {
            let r = r.map(|r| s.up(r)).transpose()?;
            Ok(s.gpu.conv2d(&s.up(x)?, &s.up(w)?, &s.up(b)?, g, r.as_ref()))
        })
    }
    fn conv2d_skip(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        b: &CpuTensor,
        g: Conv2d,
        skip: &CpuTensor,
        sw: &CpuTensor,
        sb: &CpuTensor,
    ) -> CpuTensor {
        let want = self.cpu.conv2d_skip(x, w, b, g, skip, sw, sb);
        self.check(OpFamily::Conv2d, want, |s| {
            let (x, w, b) = (s.up(x)?, s.up(w)?, s.up(b)?);
            let (skip, sw, sb) = (s.up(skip)?, s.up(sw)?, s.up(sb)?);
            Ok(s.gpu.conv2d_skip(&x, &w, &b, g, &skip, &sw, &sb))
        })
    }
    fn group_norm(
        &self,
        x: &CpuTensor,
        ga: &CpuTensor,
        be: &CpuTensor,
        groups: usize,
        eps: f32,
        m: Option<&CpuTensor>,
        silu: bool,
    ) -> CpuTensor {
        let want = self.cpu.group_norm(x, ga, be, groups, eps, m, silu);
        self.check(OpFamily::GroupNorm, want, |s| {
            let m = m.map(|m| s.up(m)).transpose()?;
            Ok(s.gpu.group_norm(
                &s.up(x)?,
                &s.up(ga)?,
                &s.up(be)?,
                groups,
                eps,
                m.as_ref(),
                silu,
            ))
        })
    }
    fn linear(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        b: &CpuTensor,
        m: Option<&CpuTensor>,
        act: Activation,
    ) -> CpuTensor {
        let want = self.cpu.linear(x, w, b, m, act);
        self.check(OpFamily::Linear, want, |s| {
            let m = m.map(|m| s.up(m)).transpose()?;
            Ok(s.gpu
                .linear(&s.up(x)?, &s.up(w)?, &s.up(b)?, m.as_ref(), act))
        })
    }
    fn timestep_embedding(&self, t: &CpuTensor, dim: usize, mp: f32, ts: f32) -> CpuTensor {
        let want = self.cpu.timestep_embedding(t, dim, mp, ts);
        self.check(OpFamily::Embedding, want, |s| {
            let t = s.gpu.upload_times(&t.data, &t.shape)?;
            Ok(s.gpu.timestep_embedding(&t, dim, mp, ts))
        })
    }
    fn attention(&self, qkv: &CpuTensor, heads: usize) -> CpuTensor {
        let want = self.cpu.attention(qkv, heads);
        self.check(OpFamily::Attention, want, |s| {
            Ok(s.gpu.attention(&s.up(qkv)?, heads))
        })
    }
    fn upsample_nearest2x(&self, x: &CpuTensor) -> CpuTensor {
        let want = self.cpu.upsample_nearest2x(x);
        self.check(OpFamily::Upsample, want, |s| {
            Ok(s.gpu.upsample_nearest2x(&s.up(x)?))
        })
    }
    fn concat_channels(&self, a: &CpuTensor, b: &CpuTensor) -> CpuTensor {
        let want = self.cpu.concat_channels(a, b);
        self.check(OpFamily::Concat, want, |s| {
            Ok(s.gpu.concat_channels(&s.up(a)?, &s.up(b)?))
        })
    }
    fn reshape(&self, t: &CpuTensor, shape: &[usize]) -> CpuTensor {
        self.cpu.reshape(t, shape)
    }
    fn add(&self, a: &CpuTensor, b: &CpuTensor) -> CpuTensor {
        let want = self.cpu.add(a, b);
        self.check(OpFamily::Elementwise, want, |s| {
            Ok(s.gpu.add(&s.up(a)?, &s.up(b)?))
        })
    }
    fn activation(&self, x: &CpuTensor, act: Activation) -> CpuTensor {
        let want = self.cpu.activation(x, act);
        self.check(OpFamily::Elementwise, want, |s| {
            Ok(s.gpu.activation(&s.up(x)?, act))
        })
    }
    fn flow_step(&self, x: &CpuTensor, v: &CpuTensor, dt: f32) -> CpuTensor {
        let want = self.cpu.flow_step(x, v, dt);
        self.check(OpFamily::Elementwise, want, |s| {
            Ok(s.gpu.flow_step(&s.up(x)?, &s.up(v)?, dt))
        })
    }
}
