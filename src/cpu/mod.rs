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
pub mod pool;
mod simd;

pub use attention::{attention, attention_probs, attention_reference};
pub use conv::{
    conv2d, conv2d_packed, conv2d_reference, conv2d_skip, conv2d_skip_packed, pack_skip,
};
pub use elementwise::{
    activate, activate_reference, add, concat_channels, embedding_frequencies, exp_fast, flow_step,
    silu_fast, timestep_embedding, upsample_nearest2x,
};
pub use linear::{linear, linear_reference};
pub use norm::{group_norm, group_norm_reference, sum16};
pub use simd::Isa;

use crate::backend::{Backend, Conv2d, Shaped};
use crate::config::Activation;
use crate::error::Result;
use crate::precision::Precision;
use direct::Direct;
use std::sync::{Arc, OnceLock};

/// Runs `f` on a worker of rayon's global pool and returns its result. The fast ops split their
/// loops with rayon; called from a thread outside the pool, each op is handed to the pool and
/// its caller sleeps until a worker has run it, two thread wake-ups per op, which at batch 1
/// (70 ops of 10–60 µs in a U-Net forward) cost as much as the arithmetic. Called from a
/// worker, an op's parallel halves are queued for idle workers to steal while the caller runs
/// its own half. Wrap a whole forward, sampling or training run (the CLI, `flowmap bench` and
/// the trainer do).
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// [`in_pool`], with every other worker of the pool kept busy polling for `f`'s parallel
/// halves until `f` returns, instead of going to sleep between ops and being woken for the
/// next one (tens of microseconds on a VM, as long as a batch-1 op). For latency-bound work
/// (batch 1, fewer samples than cores): the other cores spin while `f` runs (yielding to any
/// other runnable thread), as an OpenMP runtime's active wait does. The CLI samples this way
/// when a chunk has fewer samples than cores.
pub fn in_pool_warm<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    let helpers = rayon::current_num_threads().saturating_sub(1);
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let owner = rayon::current_thread_index();
        let done = &done;
        for _ in 0..helpers {
            s.spawn(move |_| {
                // A helper this worker takes itself (while `f` waits inside a join) must not
                // spin on top of the `f` that is to end it; nor need one that starts late.
                if rayon::current_thread_index() == owner {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::thread::yield_now();
                    }
                }
            });
        }
        let r = f();
        done.store(true, Ordering::Release);
        r
    })
}

/// [`in_pool_warm`] for work on fewer samples than there are cores (every op latency-bound),
/// [`in_pool`] otherwise: the one rule the CLI's `sample` and `bench` both follow.
pub fn in_pool_for<R: Send>(samples: usize, f: impl FnOnce() -> R + Send) -> R {
    if samples < rayon::current_num_threads() {
        in_pool_warm(f)
    } else {
        in_pool(f)
    }
}

/// Row r's [scale | shift] of a modulation [M, 2·out] over n rows, each of its rows serving n / M
/// of them ([`crate::backend::modulation_repeat`]); None without a modulation.
pub(crate) fn modulation_rows<'a>(
    n: usize,
    out: usize,
    modulation: Option<&'a [f32]>,
) -> impl Fn(usize) -> Option<&'a [f32]> + Sync + 'a {
    let rep = modulation.map_or(1, |m| crate::backend::modulation_repeat(n, out, m.len()));
    move |r| modulation.map(|m| &m[r / rep * 2 * out..][..2 * out])
}

/// A host tensor: shared data (cheap clones) and a shape.
#[derive(Debug, Clone)]
pub struct CpuTensor {
    /// The values, given back to [`pool`] when the last clone is dropped.
    pub data: Arc<pool::Buffer>,
    pub shape: Vec<usize>,
    /// The data packed for the direct convolution's microkernel, made the first time the
    /// tensor is a conv weight and shared by its clones (tensors are immutable).
    conv_packed: Arc<OnceLock<Direct>>,
    /// This weight and a skip weight packed together ([`conv::pack_skip`]), made the first
    /// time the tensor is [`Backend::conv2d_skip`]'s main weight, with the skip weight's data
    /// it was made from (kept alive, so a later call can tell whether it pairs with the same).
    skip_packed: Arc<OnceLock<(Arc<pool::Buffer>, Direct)>>,
}

impl CpuTensor {
    pub fn new(data: Vec<f32>, shape: &[usize]) -> Self {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        Self::shared(Arc::new(pool::Buffer::new(data)), shape)
    }

    fn shared(data: Arc<pool::Buffer>, shape: &[usize]) -> Self {
        CpuTensor {
            data,
            shape: shape.to_vec(),
            conv_packed: Arc::default(),
            skip_packed: Arc::default(),
        }
    }

    /// This tensor, a weight [O, C, k, k], packed for [`direct::Direct`] (once per tensor).
    fn conv_packed(&self) -> &Direct {
        self.conv_packed.get_or_init(|| {
            Direct::new(&self.data, self.shape[0], self.shape[1..].iter().product())
        })
    }

    /// This tensor, a weight [O, C, k, k], and `skip` [O, Cs, 1, 1] packed together for a
    /// fused skip convolution: kept with this tensor for the first skip weight it meets, made
    /// afresh (`Cow::Owned`) for any other.
    fn skip_packed(&self, skip: &CpuTensor) -> std::borrow::Cow<'_, Direct> {
        let pack = || conv::pack_skip(&self.data, &self.shape, &skip.data, skip.shape[1]);
        let (with, direct) = self
            .skip_packed
            .get_or_init(|| (Arc::clone(&skip.data), pack()));
        if Arc::ptr_eq(with, &skip.data) {
            std::borrow::Cow::Borrowed(direct)
        } else {
            std::borrow::Cow::Owned(pack())
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

/// The CPU backend. Stateless apart from the kernel choice and the storage precision:
/// parallelism comes from rayon's global pool.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend {
    pub kernels: CpuKernels,
    /// f32, or f16 emulated: every uploaded tensor and every op's output rounded to f16, the
    /// arithmetic in f32, as the f16 WGSL kernels do (crate::precision).
    pub storage: Precision,
}

impl CpuBackend {
    /// The fast kernels.
    pub const FAST: CpuBackend = CpuBackend {
        kernels: CpuKernels::Fast,
        storage: Precision::F32,
    };
    /// The reference loops.
    pub const REFERENCE: CpuBackend = CpuBackend {
        kernels: CpuKernels::Reference,
        storage: Precision::F32,
    };

    /// This backend storing its tensors in `storage`.
    pub const fn with_storage(self, storage: Precision) -> Self {
        CpuBackend { storage, ..self }
    }

    fn fast(&self) -> bool {
        self.kernels == CpuKernels::Fast
    }

    /// An op's output as this backend stores it.
    fn out(&self, mut data: Vec<f32>, shape: &[usize]) -> CpuTensor {
        if self.storage == Precision::F16 {
            crate::precision::round_slice_f16(&mut data);
        }
        CpuTensor::new(data, shape)
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;

    fn upload(&self, data: &[f32], shape: &[usize]) -> Result<CpuTensor> {
        crate::backend::check_fill(data.len(), shape)?;
        Ok(self.out(data.to_vec(), shape))
    }

    fn upload_times(&self, data: &[f32], shape: &[usize]) -> Result<CpuTensor> {
        crate::backend::check_fill(data.len(), shape)?;
        Ok(CpuTensor::new(data.to_vec(), shape))
    }

    fn download(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(t.data.to_vec())
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
        let (data, shape) = if self.fast() {
            conv2d_packed(
                &x.data,
                &x.shape,
                w.conv_packed(),
                &w.shape,
                &bias.data,
                geom,
                residual.map(|r| r.data.as_slice()),
            )
        } else {
            conv2d_reference(
                &x.data,
                &x.shape,
                &w.data,
                &w.shape,
                &bias.data,
                geom,
                residual.map(|r| r.data.as_slice()),
            )
        };
        self.out(data, &shape)
    }

    /// On the fast path in f32, on AVX-512: there the channels-in-lanes tiles read the skip
    /// input in place (0.86–1.02× the two ops' time per U-Net layer). The other tiles read it
    /// from the padded copy, which measured 0.96–1.06× on AVX2 and 0.98–1.05× on the baseline
    /// (docs/BENCHMARKS.md), so they keep the two ops.
    fn fuses_conv2d_skip(&self) -> bool {
        self.fast() && self.storage == Precision::F32 && Isa::detect() == Isa::Avx512
    }

    fn conv2d_skip(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        bias: &CpuTensor,
        geom: Conv2d,
        skip: &CpuTensor,
        skip_w: &CpuTensor,
        skip_b: &CpuTensor,
    ) -> CpuTensor {
        // Fused where the fast path takes it: stored in f32 (f16 storage rounds the skip's
        // output before the sum, as the GPU's two ops do), a stride-1 same-size convolution,
        // a 1×1 skip weight, and tiles that read the skip input in place.
        let out = crate::backend::conv2d_out_shape(&x.shape, &w.shape, geom);
        let shapes = self.fuses_conv2d_skip()
            && geom.stride == 1
            && !geom.upsample
            && out[2..] == x.shape[2..]
            && skip.shape.len() == 4
            && skip.shape[0] == out[0]
            && skip.shape[2..] == out[2..]
            && skip_w.shape.len() == 4
            && skip_w.shape[0] == out[1]
            && skip_w.shape[1] == skip.shape[1]
            && skip_w.shape[2..] == [1, 1];
        let direct = shapes
            .then(|| w.skip_packed(skip_w))
            .filter(|d| d.channels_in_lanes(out[3]));
        let Some(direct) = direct else {
            return crate::backend::conv2d_skip_unfused(
                self, x, w, bias, geom, skip, skip_w, skip_b,
            );
        };
        let (data, shape) = conv::conv2d_skip_packed(
            &x.data,
            &x.shape,
            &direct,
            &w.shape,
            &bias.data,
            geom,
            &skip.data,
            &skip.shape,
            &skip_b.data,
        );
        self.out(data, &shape)
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
        self.out(y, &x.shape)
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
        self.out(y, &[n, out])
    }

    fn timestep_embedding(
        &self,
        times: &CpuTensor,
        dim: usize,
        max_period: f32,
        time_scale: f32,
    ) -> CpuTensor {
        let y = timestep_embedding(&times.data, dim, max_period, time_scale);
        self.out(y, &[times.shape[0], dim])
    }

    fn attention(&self, qkv: &CpuTensor, heads: usize) -> CpuTensor {
        let (n, c3, l) = (qkv.shape[0], qkv.shape[1], qkv.shape[2]);
        let y = if self.fast() {
            attention(&qkv.data, n, c3 / 3, l, heads)
        } else {
            attention_reference(&qkv.data, n, c3 / 3, l, heads)
        };
        self.out(y, &[n, c3 / 3, l])
    }

    fn upsample_nearest2x(&self, x: &CpuTensor) -> CpuTensor {
        let s = &x.shape;
        let y = upsample_nearest2x(&x.data, s[0] * s[1], s[2], s[3]);
        // Layout copies move stored values: nothing to round.
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
        CpuTensor::shared(t.data.clone(), shape)
    }

    fn add(&self, a: &CpuTensor, b: &CpuTensor) -> CpuTensor {
        self.out(add(&a.data, &b.data), &a.shape)
    }

    fn activation(&self, x: &CpuTensor, act: Activation) -> CpuTensor {
        let y = if self.fast() {
            activate(&x.data, act)
        } else {
            activate_reference(&x.data, act)
        };
        self.out(y, &x.shape)
    }

    fn flow_step(&self, x: &CpuTensor, v: &CpuTensor, dt: f32) -> CpuTensor {
        self.out(flow_step(&x.data, &v.data, dt), &x.shape)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways into the pool return `f`'s value and run the fast ops to the same bits, also
    /// nested and from two threads at once (a helper waiting on a caller that waits on it would
    /// hang here).
    #[test]
    fn in_pool_runs_ops_nested_and_concurrently() {
        let mut rnd = test_values(5);
        let x = CpuTensor::new(
            (0..2 * 8 * 20 * 20).map(|_| rnd()).collect(),
            &[2, 8, 20, 20],
        );
        let w = CpuTensor::new((0..16 * 8 * 9).map(|_| rnd()).collect(), &[16, 8, 3, 3]);
        let b = CpuTensor::new(vec![0.1; 16], &[16]);
        let geom = Conv2d::SAME;
        let f = CpuBackend::FAST;
        let want = f.conv2d(&x, &w, &b, geom, None).data.to_vec();
        let run = || f.conv2d(&x, &w, &b, geom, None).data.to_vec();
        assert_eq!(in_pool(run), want);
        assert_eq!(in_pool_warm(run), want);
        assert_eq!(in_pool_warm(|| in_pool_warm(run)), want);
        assert_eq!(in_pool(|| in_pool_warm(|| in_pool(run))), want);
        let want = &want;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|i| {
                    s.spawn(move || {
                        (0..20)
                            .map(|_| {
                                if i % 2 == 0 {
                                    in_pool_warm(run)
                                } else {
                                    in_pool(run)
                                }
                            })
                            .all(|y| &y == want)
                    })
                })
                .collect();
            for h in handles {
                assert!(h.join().unwrap());
            }
        });
    }

    /// A recycled buffer holds the values of its last use: every op that takes its output from
    /// the pool must write all of it. The pool is filled with NaN buffers of each output's
    /// length first, so a value an op leaves unwritten shows as NaN, against the reference.
    #[test]
    fn ops_overwrite_recycled_buffers() {
        let mut rnd = test_values(3);
        let mut t = |shape: &[usize]| {
            let n = shape.iter().product();
            CpuTensor::new((0..n).map(|_| rnd()).collect(), shape)
        };
        let poison = |len: usize| {
            assert!(
                len >= pool::MIN_LEN,
                "a test output the pool would not keep"
            );
            for _ in 0..3 {
                pool::give(vec![f32::NAN; len]);
            }
        };
        let close = |what: &str, got: CpuTensor, want: CpuTensor| {
            assert_eq!(got.shape, want.shape, "{what}");
            for (i, (a, e)) in got.data.iter().zip(want.data.iter()).enumerate() {
                assert!(
                    a.is_finite() && (a - e).abs() <= 1e-3 * (1.0 + e.abs()),
                    "{what}, value {i}: {a} vs {e}"
                );
            }
        };
        let (f, r) = (CpuBackend::FAST, CpuBackend::REFERENCE);
        let geom = Conv2d::SAME;
        // Batch 1 (channels split over tasks) and batch 3 (samples in parallel).
        for n in [1, 3] {
            let (x, w, b, res) = (
                t(&[n, 8, 20, 20]),
                t(&[16, 8, 3, 3]),
                t(&[16]),
                t(&[n, 16, 20, 20]),
            );
            poison(n * 16 * 400);
            let got = f.conv2d(&x, &w, &b, geom, Some(&res));
            close("conv2d", got, r.conv2d(&x, &w, &b, geom, Some(&res)));
            // The skip projection fused in (a width the channels-in-lanes tiles take), and the
            // same main weight with a second skip weight (its packing is kept for the first
            // one only).
            let (x, skip, b2) = (t(&[n, 8, 21, 21]), t(&[n, 12, 21, 21]), t(&[16]));
            for sw in [t(&[16, 12, 1, 1]), t(&[16, 12, 1, 1])] {
                for _ in 0..2 {
                    poison(n * 16 * 441);
                    let got = f.conv2d_skip(&x, &w, &b, geom, &skip, &sw, &b2);
                    let want = r.conv2d_skip(&x, &w, &b, geom, &skip, &sw, &b2);
                    close("conv2d_skip", got, want);
                }
            }
        }
        let (x, gamma, beta, m) = (t(&[2, 32, 16, 16]), t(&[32]), t(&[32]), t(&[2, 64]));
        poison(x.len());
        let got = f.group_norm(&x, &gamma, &beta, 8, 1e-5, Some(&m), true);
        let want = r.group_norm(&x, &gamma, &beta, 8, 1e-5, Some(&m), true);
        close("group_norm", got, want);
        let (x, w, b, m) = (t(&[64, 128]), t(&[128, 128]), t(&[128]), t(&[64, 256]));
        poison(64 * 128);
        let got = f.linear(&x, &w, &b, Some(&m), Activation::Silu);
        let want = r.linear(&x, &w, &b, Some(&m), Activation::Silu);
        close("linear", got, want);
        let qkv = t(&[1, 48, 16, 16]);
        poison(16 * 256);
        close("attention", f.attention(&qkv, 2), r.attention(&qkv, 2));
        let (a, b) = (t(&[1, 8, 24, 24]), t(&[1, 8, 24, 24]));
        poison(a.len() * 4);
        close(
            "upsample",
            f.upsample_nearest2x(&a),
            r.upsample_nearest2x(&a),
        );
        poison(a.len() * 2);
        close(
            "concat",
            f.concat_channels(&a, &b),
            r.concat_channels(&a, &b),
        );
        poison(a.len());
        close("add", f.add(&a, &b), r.add(&a, &b));
        poison(a.len());
        let got = f.activation(&a, Activation::Silu);
        close("activation", got, r.activation(&a, Activation::Silu));
        poison(a.len());
        close(
            "flow_step",
            f.flow_step(&a, &b, 0.3),
            r.flow_step(&a, &b, 0.3),
        );
    }
}
