//! The plain-Rust backend: the oracle for every WGSL kernel and a real fallback for machines
//! without a GPU (edge devices, browsers without WebGPU). Ops are split over the cores with
//! rayon; each op family lives in its own file beside the WGSL kernel it mirrors
//! (`shaders/<op>.wgsl`), with two implementations: the reference loops, written to be read,
//! and the fast path (GEMM-based conv and linear, vectorizable GroupNorm and SiLU) that the
//! backend runs by default. Each file's tests hold the fast path to the reference loops.

mod attention;
mod conv;
pub mod direct;
mod elementwise;
pub mod gemm;
pub mod im2col;
mod linear;
mod norm;
mod simd;

pub use attention::attention;
pub use conv::{conv2d, conv2d_reference};
pub use elementwise::{
    activate, activate_reference, add, concat_channels, embedding_frequencies, exp_fast, flow_step,
    silu_fast, timestep_embedding, upsample_nearest2x,
};
pub use linear::{linear, linear_reference};
pub use norm::{group_norm, group_norm_reference, sum8};

use crate::backend::{Backend, Conv2d, Shaped};
use crate::config::Activation;
use crate::error::{Error, Result};
use std::sync::Arc;

/// A host tensor: shared data (cheap clones) and a shape.
#[derive(Debug, Clone)]
pub struct CpuTensor {
    pub data: Arc<Vec<f32>>,
    pub shape: Vec<usize>,
}

impl CpuTensor {
    pub fn new(data: Vec<f32>, shape: &[usize]) -> Self {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        CpuTensor {
            data: Arc::new(data),
            shape: shape.to_vec(),
        }
    }
}

impl Shaped for CpuTensor {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
}

/// Which implementation of each op the CPU backend runs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum CpuKernels {
    /// GEMM-based conv and linear, vectorized GroupNorm and activations (the default).
    #[default]
    Fast,
    /// The plain reference loops, the oracle the fast path is tested against.
    Reference,
}

/// The CPU backend. Stateless apart from the kernel choice: parallelism comes from rayon's
/// global pool.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend {
    pub kernels: CpuKernels,
}

impl CpuBackend {
    /// The fast kernels.
    pub const FAST: CpuBackend = CpuBackend {
        kernels: CpuKernels::Fast,
    };
    /// The reference loops.
    pub const REFERENCE: CpuBackend = CpuBackend {
        kernels: CpuKernels::Reference,
    };

    fn fast(&self) -> bool {
        self.kernels == CpuKernels::Fast
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;

    fn upload(&self, data: &[f32], shape: &[usize]) -> Result<CpuTensor> {
        if data.len() != shape.iter().product::<usize>() {
            return Err(Error::Argument(format!(
                "{} values do not fill shape {shape:?}",
                data.len()
            )));
        }
        Ok(CpuTensor::new(data.to_vec(), shape))
    }

    fn download(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(t.data.as_ref().clone())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn conv2d(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        bias: &CpuTensor,
        geom: Conv2d,
        residual: Option<&CpuTensor>,
    ) -> CpuTensor {
        let run = if self.fast() {
            conv2d
        } else {
            conv2d_reference
        };
        let (data, shape) = run(
            &x.data,
            &x.shape,
            &w.data,
            &w.shape,
            &bias.data,
            geom,
            residual.map(|r| r.data.as_slice()),
        );
        CpuTensor::new(data, &shape)
    }

    fn group_norm(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        groups: usize,
        eps: f32,
        modulation: Option<&CpuTensor>,
        silu: bool,
    ) -> CpuTensor {
        let run = if self.fast() {
            group_norm
        } else {
            group_norm_reference
        };
        let y = run(
            &x.data,
            &x.shape,
            &gamma.data,
            &beta.data,
            groups,
            eps,
            modulation.map(|m| m.data.as_slice()),
            silu,
        );
        CpuTensor::new(y, &x.shape)
    }

    fn linear(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        bias: &CpuTensor,
        modulation: Option<&CpuTensor>,
        act: Activation,
    ) -> CpuTensor {
        let (n, out) = (x.shape[0], w.shape[0]);
        let run = if self.fast() {
            linear
        } else {
            linear_reference
        };
        let y = run(
            &x.data,
            n,
            x.shape[1],
            &w.data,
            out,
            &bias.data,
            modulation.map(|m| m.data.as_slice()),
            act,
        );
        CpuTensor::new(y, &[n, out])
    }

    fn timestep_embedding(
        &self,
        times: &CpuTensor,
        dim: usize,
        max_period: f32,
        time_scale: f32,
    ) -> CpuTensor {
        let y = timestep_embedding(&times.data, dim, max_period, time_scale);
        CpuTensor::new(y, &[times.shape[0], dim])
    }

    fn attention(&self, qkv: &CpuTensor, heads: usize) -> CpuTensor {
        let (n, c3, l) = (qkv.shape[0], qkv.shape[1], qkv.shape[2]);
        let y = attention(&qkv.data, n, c3 / 3, l, heads);
        CpuTensor::new(y, &[n, c3 / 3, l])
    }

    fn upsample_nearest2x(&self, x: &CpuTensor) -> CpuTensor {
        let s = &x.shape;
        let y = upsample_nearest2x(&x.data, s[0] * s[1], s[2], s[3]);
        CpuTensor::new(y, &[s[0], s[1], 2 * s[2], 2 * s[3]])
    }

    fn concat_channels(&self, a: &CpuTensor, b: &CpuTensor) -> CpuTensor {
        let (n, ca, cb) = (a.shape[0], a.shape[1], b.shape[1]);
        let hw: usize = a.shape[2..].iter().product();
        let y = concat_channels(&a.data, &b.data, n, ca * hw, cb * hw);
        let mut shape = a.shape.clone();
        shape[1] = ca + cb;
        CpuTensor::new(y, &shape)
    }

    fn reshape(&self, t: &CpuTensor, shape: &[usize]) -> CpuTensor {
        assert_eq!(
            t.len(),
            shape.iter().product::<usize>(),
            "reshape {:?} to {shape:?}",
            t.shape
        );
        CpuTensor {
            data: t.data.clone(),
            shape: shape.to_vec(),
        }
    }

    fn add(&self, a: &CpuTensor, b: &CpuTensor) -> CpuTensor {
        CpuTensor::new(add(&a.data, &b.data), &a.shape)
    }

    fn activation(&self, x: &CpuTensor, act: Activation) -> CpuTensor {
        let y = if self.fast() {
            activate(&x.data, act)
        } else {
            activate_reference(&x.data, act)
        };
        CpuTensor::new(y, &x.shape)
    }

    fn flow_step(&self, x: &CpuTensor, v: &CpuTensor, dt: f32) -> CpuTensor {
        CpuTensor::new(flow_step(&x.data, &v.data, dt), &x.shape)
    }
}

/// Uniform values in [−0.5, 0.5) from a fixed LCG, for the op files' fast-vs-reference tests.
#[cfg(test)]
fn test_values(mut seed: u32) -> impl FnMut() -> f32 {
    move || {
        seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
        (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    }
}
