//! Benchmark helpers: a backend wrapper that times every op (synchronising after each, so GPU
//! work is attributed to the op that issued it) and adds up time and FLOPs per op family.
//! Synchronising per op adds a submit-and-wait to each GPU op, so per-family sums exceed the
//! unsynchronised forward time; the forward time is measured separately without it.

use crate::backend::{Backend, Conv2d, OpFamily, Shaped};
use crate::config::Activation;
use crate::error::Result;
use crate::shape::{ShapeBackend, ShapeTensor};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Accumulated per-family cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct FamilyStats {
    pub calls: usize,
    pub time: Duration,
    pub flops: f64,
    pub bytes: f64,
}

/// One op call as the wrapper saw it, in program order (one GPU dispatch each).
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub family: OpFamily,
    /// The family's name, or `conv3x3` / `conv1x1` for convolutions by kernel size.
    pub label: String,
    /// The layer shape ([`Profiled::layer_stats`]'s key): a convolution's geometry, else the
    /// family's name.
    pub layer: String,
    pub flops: f64,
    pub bytes: f64,
    /// A convolution's operands, to run it again alone (the GPU report's sweep of the
    /// convolution kernels); `None` for other ops.
    pub conv: Option<ConvCall>,
}

/// The operand shapes and geometry of one `conv2d` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvCall {
    pub x: Vec<usize>,
    pub w: Vec<usize>,
    pub geom: Conv2d,
    pub residual: bool,
}

pub struct Profiled<'a, B: Backend> {
    inner: &'a B,
    shapes: ShapeBackend,
    stats: RefCell<BTreeMap<OpFamily, FamilyStats>>,
    /// The same costs per layer shape ([`Self::layer_stats`]).
    layers: RefCell<BTreeMap<String, FamilyStats>>,
    calls: RefCell<Vec<Call>>,
    /// The per-family and per-layer costs of each forward finished by [`Self::end_forward`].
    forwards: RefCell<Vec<Forward>>,
    /// Synchronise and time each op on the host clock (false: only record the calls, for
    /// callers that time on the GPU's clock).
    sync_each: bool,
}

impl<'a, B: Backend> Profiled<'a, B> {
    /// Times every op on the host clock, synchronising after each.
    pub fn new(inner: &'a B) -> Self {
        Profiled {
            inner,
            shapes: ShapeBackend::new(),
            stats: RefCell::default(),
            layers: RefCell::default(),
            calls: RefCell::default(),
            forwards: RefCell::default(),
            sync_each: true,
        }
    }

    /// Records each op's call (family, label, cost) without synchronising or timing.
    pub fn recording(inner: &'a B) -> Self {
        Profiled {
            sync_each: false,
            ..Self::new(inner)
        }
    }

    /// The calls recorded since the last [`Self::reset`].
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// Time and cost per op family of one forward: each family's entry from the forward, of
    /// those finished since the last [`Self::reset`] ([`Self::end_forward`]), whose time for
    /// that family is the median. A median, not a mean, because a batch-1 forward's ops take
    /// microseconds and one preempted forward on a shared VM (measured: 7–11 ms against a
    /// 0.63 ms median) otherwise moves a 200-forward mean by a fifth.
    pub fn stats(&self) -> BTreeMap<OpFamily, FamilyStats> {
        median_forward(self.forwards.borrow().iter().map(|f| &f.families))
    }

    /// Time and cost per layer shape, per forward as in [`Self::stats`]: each convolution by
    /// its geometry (`conv3x3 16→32 28×28 s1`, the input's size), every other op by its
    /// family, summed over the calls of that shape in a forward. The profile that says which
    /// layers hold a backend back.
    pub fn layer_stats(&self) -> BTreeMap<String, FamilyStats> {
        median_forward(self.forwards.borrow().iter().map(|f| &f.layers))
    }

    /// Closes the forward whose ops ran since the last call: its costs join those that
    /// [`Self::stats`] and [`Self::layer_stats`] take the median of.
    pub fn end_forward(&self) {
        self.forwards.borrow_mut().push(Forward {
            families: std::mem::take(&mut *self.stats.borrow_mut()),
            layers: std::mem::take(&mut *self.layers.borrow_mut()),
        });
    }

    pub fn reset(&self) {
        self.stats.borrow_mut().clear();
        self.layers.borrow_mut().clear();
        self.calls.borrow_mut().clear();
        self.forwards.borrow_mut().clear();
    }

    /// Times `run` (synchronised) and books it with the cost the shape backend computes.
    fn timed<T>(
        &self,
        cost: impl FnOnce(&ShapeBackend) -> ShapeTensor,
        run: impl FnOnce(&B) -> T,
    ) -> T {
        self.labelled(None, None, cost, run)
    }

    fn labelled<T>(
        &self,
        label: Option<String>,
        layer: Option<String>,
        cost: impl FnOnce(&ShapeBackend) -> ShapeTensor,
        run: impl FnOnce(&B) -> T,
    ) -> T {
        // Taken, not copied: a copy of the whole list per op grew with the run and, at batch
        // 1, evicted the caches between the ops it timed (an eighth of their time).
        self.shapes.take_ops();
        cost(&self.shapes);
        let c = self.shapes.take_ops()[0];
        let layer = layer.unwrap_or_else(|| c.family.name().to_string());
        self.calls.borrow_mut().push(Call {
            family: c.family,
            label: label.unwrap_or_else(|| c.family.name().to_string()),
            layer: layer.clone(),
            flops: c.flops,
            bytes: c.bytes,
            conv: None,
        });
        if !self.sync_each {
            return run(self.inner);
        }
        let t0 = Instant::now();
        let out = run(self.inner);
        // A failed sync shows up at the caller's next download.
        let _ = self.inner.sync();
        let time = t0.elapsed();
        let add = |s: &mut FamilyStats| {
            s.calls += 1;
            s.time += time;
            s.flops += c.flops;
            s.bytes += c.bytes;
        };
        add(self.stats.borrow_mut().entry(c.family).or_default());
        add(self.layers.borrow_mut().entry(layer).or_default());
        out
    }
}

/// One forward's costs, per op family and per layer shape.
struct Forward {
    families: BTreeMap<OpFamily, FamilyStats>,
    layers: BTreeMap<String, FamilyStats>,
}

/// Per key, the entry of the forward whose time for that key is the median (the upper one of
/// an even count); a key missing from some forwards takes the median of those it is in.
fn median_forward<'a, K: Ord + Clone + 'a>(
    forwards: impl Iterator<Item = &'a BTreeMap<K, FamilyStats>>,
) -> BTreeMap<K, FamilyStats> {
    let mut all: BTreeMap<K, Vec<FamilyStats>> = BTreeMap::new();
    for f in forwards {
        for (k, s) in f {
            all.entry(k.clone()).or_default().push(*s);
        }
    }
    all.into_iter()
        .map(|(k, mut v)| {
            v.sort_by_key(|s| s.time);
            (k, v[v.len() / 2])
        })
        .collect()
}

fn st<T: Shaped>(t: &T) -> ShapeTensor {
    ShapeTensor(t.shape().to_vec())
}

impl<B: Backend> Backend for Profiled<'_, B> {
    type Tensor = B::Tensor;

    fn upload(&self, data: &[f32], shape: &[usize]) -> Result<B::Tensor> {
        self.inner.upload(data, shape)
    }
    fn upload_times(&self, data: &[f32], shape: &[usize]) -> Result<B::Tensor> {
        self.inner.upload_times(data, shape)
    }
    fn download(&self, t: &B::Tensor) -> Result<Vec<f32>> {
        self.inner.download(t)
    }
    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }
    fn flush(&self) {
        self.inner.flush()
    }
    fn conv2d(
        &self,
        x: &B::Tensor,
        w: &B::Tensor,
        b: &B::Tensor,
        g: Conv2d,
        r: Option<&B::Tensor>,
    ) -> B::Tensor {
        let rs = r.map(st);
        let (xs, ws) = (x.shape(), w.shape());
        let k = ws[2];
        let layer = format!(
            "conv{k}x{k} {}→{} {}×{} s{}{}{}",
            ws[1],
            ws[0],
            xs[2],
            xs[3],
            g.stride,
            if r.is_some() { " +res" } else { "" },
            if g.upsample { " up" } else { "" }
        );
        let out = self.labelled(
            Some(format!("conv{k}x{k}")),
            Some(layer),
            |s| s.conv2d(&st(x), &st(w), &st(b), g, rs.as_ref()),
            |i| i.conv2d(x, w, b, g, r),
        );
        if let Some(call) = self.calls.borrow_mut().last_mut() {
            call.conv = Some(ConvCall {
                x: xs.to_vec(),
                w: ws.to_vec(),
                geom: g,
                residual: r.is_some(),
            });
        }
        out
    }
    fn fuses_conv2d_skip(&self) -> bool {
        self.inner.fuses_conv2d_skip()
    }
    fn conv2d_skip(
        &self,
        x: &B::Tensor,
        w: &B::Tensor,
        b: &B::Tensor,
        g: Conv2d,
        skip: &B::Tensor,
        sw: &B::Tensor,
        sb: &B::Tensor,
    ) -> B::Tensor {
        if !self.inner.fuses_conv2d_skip() {
            // Booked as the two convolutions the backend runs.
            return crate::backend::conv2d_skip_unfused(self, x, w, b, g, skip, sw, sb);
        }
        let (xs, ws, ss) = (x.shape(), w.shape(), skip.shape());
        let k = ws[2];
        let layer = format!(
            "conv{k}x{k} {}→{} {}×{} s{} +skip1x1 {}→{}",
            ws[1], ws[0], xs[2], xs[3], g.stride, ss[1], ws[0]
        );
        self.labelled(
            Some(format!("conv{k}x{k}")),
            Some(layer),
            |s| s.conv2d_skip(&st(x), &st(w), &st(b), g, &st(skip), &st(sw), &st(sb)),
            |i| i.conv2d_skip(x, w, b, g, skip, sw, sb),
        )
    }
    fn group_norm(
        &self,
        x: &B::Tensor,
        ga: &B::Tensor,
        be: &B::Tensor,
        groups: usize,
        eps: f32,
        m: Option<&B::Tensor>,
        silu: bool,
    ) -> B::Tensor {
        let ms = m.map(st);
        self.timed(
            |s| s.group_norm(&st(x), &st(ga), &st(be), groups, eps, ms.as_ref(), silu),
            |i| i.group_norm(x, ga, be, groups, eps, m, silu),
        )
    }
    fn linear(
        &self,
        x: &B::Tensor,
        w: &B::Tensor,
        b: &B::Tensor,
        m: Option<&B::Tensor>,
        act: Activation,
    ) -> B::Tensor {
        let ms = m.map(st);
        // Products of a few rows apart: on a GPU they take linear.wgsl's `gemv` entry, and the
        // report times the two kinds as separate kernels.
        let label = (x.shape()[0] <= crate::gpu::GEMV_ROWS)
            .then(|| format!("linear (≤ {} rows)", crate::gpu::GEMV_ROWS));
        self.labelled(
            label,
            None,
            |s| s.linear(&st(x), &st(w), &st(b), ms.as_ref(), act),
            |i| i.linear(x, w, b, m, act),
        )
    }
    fn timestep_embedding(&self, t: &B::Tensor, dim: usize, mp: f32, ts: f32) -> B::Tensor {
        self.timed(
            |s| s.timestep_embedding(&st(t), dim, mp, ts),
            |i| i.timestep_embedding(t, dim, mp, ts),
        )
    }
    fn attention(&self, qkv: &B::Tensor, heads: usize) -> B::Tensor {
        self.timed(
            |s| s.attention(&st(qkv), heads),
            |i| i.attention(qkv, heads),
        )
    }
    fn upsample_nearest2x(&self, x: &B::Tensor) -> B::Tensor {
        self.timed(
            |s| s.upsample_nearest2x(&st(x)),
            |i| i.upsample_nearest2x(x),
        )
    }
    fn concat_channels(&self, a: &B::Tensor, b: &B::Tensor) -> B::Tensor {
        self.timed(
            |s| s.concat_channels(&st(a), &st(b)),
            |i| i.concat_channels(a, b),
        )
    }
    fn reshape(&self, t: &B::Tensor, shape: &[usize]) -> B::Tensor {
        self.inner.reshape(t, shape)
    }
    fn add(&self, a: &B::Tensor, b: &B::Tensor) -> B::Tensor {
        self.timed(|s| s.add(&st(a), &st(b)), |i| i.add(a, b))
    }
    fn activation(&self, x: &B::Tensor, act: Activation) -> B::Tensor {
        self.timed(|s| s.activation(&st(x), act), |i| i.activation(x, act))
    }
    fn flow_step(&self, x: &B::Tensor, v: &B::Tensor, dt: f32) -> B::Tensor {
        self.timed(
            |s| s.flow_step(&st(x), &st(v), dt),
            |i| i.flow_step(x, v, dt),
        )
    }
}

/// The median of timings (the upper one of an even count): what every repeated measurement
/// here reports, so one preempted run on a shared machine does not move it. Panics on none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// GFLOP/s of an n×n×n f32 product through the fast CPU ops' GEMM on all threads, over
/// `iters` products after one warm-up: the best, the same-run peak that per-op rates are
/// compared against, and the median (on a shared VM the best is the rate of its quietest
/// moment; a median per-op rate against it is the conservative comparison).
pub fn gemm_gflops(n: usize, iters: usize) -> GemmRate {
    use crate::cpu::gemm::{matmul, Threads};
    let a: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut c = vec![0.0f32; n * n];
    let mut times = Vec::with_capacity(iters.max(1));
    for i in 0..=iters.max(1) {
        let t0 = Instant::now();
        matmul(n, n, n, &mut c, false, &a, false, &b, false, Threads::All);
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let rate = |t: f64| 2.0 * (n as f64).powi(3) / t / 1e9;
    GemmRate {
        best: rate(times[0]),
        median: rate(times[times.len() / 2]),
    }
}

/// [`gemm_gflops`]'s result, GFLOP/s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmRate {
    pub best: f64,
    pub median: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(k: u64) -> FamilyStats {
        FamilyStats {
            calls: 3,
            time: Duration::from_millis(k),
            flops: 10.0,
            bytes: 4.0,
        }
    }

    #[test]
    fn median_forward_takes_each_keys_median_forward() {
        let f = |pairs: &[(&str, u64)]| -> BTreeMap<String, FamilyStats> {
            pairs.iter().map(|&(k, t)| (k.to_string(), ms(t))).collect()
        };
        // "a": 5, 1, 90 (an outlier), 2 → sorted 1, 2, 5, 90 → the upper median 5.
        // "b" only in two forwards: 7, 3 → 7.
        let runs = [
            f(&[("a", 5), ("b", 7)]),
            f(&[("a", 1)]),
            f(&[("a", 90), ("b", 3)]),
            f(&[("a", 2)]),
        ];
        let m = median_forward(runs.iter());
        assert_eq!(m["a"].time, Duration::from_millis(5));
        assert_eq!(m["b"].time, Duration::from_millis(7));
        assert_eq!((m["a"].calls, m["a"].flops), (3, 10.0));
        assert!(median_forward(std::iter::empty::<&BTreeMap<String, FamilyStats>>()).is_empty());
    }

    #[test]
    fn gemm_rate_best_is_at_least_the_median() {
        let g = gemm_gflops(64, 5);
        assert!(g.median > 0.0 && g.best >= g.median, "{g:?}");
    }

    #[test]
    fn profile_books_each_forward_separately() {
        use crate::cpu::CpuBackend;
        let be = CpuBackend::FAST;
        let prof = Profiled::new(&be);
        let x = prof.upload(&[1.0, -2.0, 3.0, 4.0], &[1, 4]).unwrap();
        for _ in 0..3 {
            let y = prof.activation(&x, Activation::Silu);
            let _ = prof.add(&y, &x);
            prof.end_forward();
        }
        let s = prof.stats();
        // Two elementwise calls per forward, not six: the stats are one forward's.
        assert_eq!(s[&OpFamily::Elementwise].calls, 2);
        prof.reset();
        assert!(prof.stats().is_empty());
    }
}
