//! Convolution kernels chosen by measurement on the adapter at hand (issue 10, "kernels tuned by
//! measurement").
//!
//! [`ConvKernel::for_layer`] picks a convolution's kernel by a rule of thumb (conv3x3.wgsl at 128
//! workgroups or more, conv2d.wgsl's tile by the channel count), set from one datacenter GPU. On
//! another GPU, or another driver, the fastest kernel for a layer can be a different one. A
//! [`Tuning`] says, for each distinct convolution of a model's forward at the batches asked for,
//! which of the kernels that compute it ([`ConvShape::candidates`]) ran fastest here, with the
//! times of all of them. [`Tuning::measure`] makes one; [`GpuBackend::use_tuning`] makes the
//! backend run the measured kernel for exactly those convolutions (the rule still picks for any
//! other). `flowmap tune` writes one to a file and `flowmap sample --tuning` reads it; the GPU
//! report writes one for the adapter it ran on and times the forward with it beside the rule.
//!
//! A tuning is a JSON file (`flowmap_tuning` = [`TUNING_VERSION`]): the adapter (name, backend,
//! driver), the storage precision, the clock the times are on (`gpu`: timestamp queries; `wall`:
//! the host's clock around a submitted batch of dispatches), the dispatches timed per kernel,
//! and per convolution its shapes, geometry, the layer's name, the batch, how often it runs per
//! forward, the kernel chosen, the rule's kernel, and each candidate's median microseconds.

use super::tiles::{ConvKernel, ConvShape};
use super::GpuBackend;
use crate::backend::Conv2d;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The tuning file format this flowmap writes and reads.
pub const TUNING_VERSION: u32 = 1;

/// Kernels measured on one adapter at one precision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    pub flowmap_tuning: u32,
    /// The adapter's name, as wgpu reports it.
    pub adapter: String,
    /// Vulkan, Metal, Dx12 or Gl.
    pub backend: String,
    /// The driver and its version (informative: a tuning is used under another driver).
    pub driver: String,
    /// `f32` or `f16`: the storage the kernels were timed in.
    pub precision: String,
    /// `gpu` (timestamp queries around each dispatch) or `wall` (the host's clock).
    pub clock: String,
    /// Dispatches timed per kernel and convolution.
    pub reps: usize,
    pub convs: Vec<TunedConv>,
}

/// One convolution of a forward, its kernel, and what each candidate took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunedConv {
    /// The layer shape's name (as `flowmap bench --layers` lists it).
    pub layer: String,
    /// The forward's batch.
    pub batch: usize,
    /// How many times the forward runs it.
    pub count: usize,
    /// Input `[n, c, h, w]`.
    pub x: [usize; 4],
    /// Weights `[c_out, c_in, k, k]`.
    pub w: [usize; 4],
    pub stride: usize,
    pub padding: usize,
    /// The input is read upsampled ×2.
    pub upsample: bool,
    pub residual: bool,
    /// The kernel to run: the fastest measured, by its shader name ([`ConvKernel::shader`]).
    pub kernel: String,
    /// The kernel [`ConvKernel::for_layer`] picks.
    pub rule: String,
    /// Each candidate's median time of one dispatch, in microseconds, by shader name.
    pub us: BTreeMap<String, f64>,
}

impl TunedConv {
    pub fn shape(&self) -> ConvShape {
        ConvShape {
            x: self.x,
            w: self.w,
            geom: Conv2d {
                stride: self.stride,
                padding: self.padding,
                upsample: self.upsample,
            },
            residual: self.residual,
        }
    }

    /// The chosen kernel's time and the rule's, in microseconds (NaN for one with no time,
    /// which a checked tuning does not have).
    pub fn times(&self) -> (f64, f64) {
        let us = |k: &String| self.us.get(k).copied().unwrap_or(f64::NAN);
        (us(&self.kernel), us(&self.rule))
    }

    /// The chosen kernel, checked against the shape: named, among the timed, and applicable.
    fn checked(&self) -> Result<(ConvShape, ConvKernel)> {
        let bad =
            |why: String| Error::Tuning(format!("{} at batch {}: {why}", self.layer, self.batch));
        let shape = self.shape();
        if self.x[1] != self.w[1] || self.w[2] != self.w[3] || self.x.contains(&0) {
            return Err(bad(format!(
                "input {:?} and weights {:?} are not one convolution",
                self.x, self.w
            )));
        }
        if self.stride == 0 || self.w.contains(&0) {
            return Err(bad("zero stride or weight dimension".into()));
        }
        let kernel = |name: &str| {
            ConvKernel::from_shader(name).ok_or_else(|| bad(format!("unknown kernel {name:?}")))
        };
        let chosen = kernel(&self.kernel)?;
        kernel(&self.rule)?;
        for (name, us) in &self.us {
            kernel(name)?;
            if !us.is_finite() || *us < 0.0 {
                return Err(bad(format!("time {us} for {name}")));
            }
        }
        if !self.us.contains_key(&self.kernel) || !self.us.contains_key(&self.rule) {
            return Err(bad("the chosen or the rule's kernel has no time".into()));
        }
        if !chosen.applies(self.w[2], shape.geom, shape.out()) {
            return Err(bad(format!(
                "{} does not compute this convolution",
                self.kernel
            )));
        }
        Ok((shape, chosen))
    }
}

impl Tuning {
    /// Parses and checks a tuning file's text.
    pub fn from_json(text: &str) -> Result<Tuning> {
        let t: Tuning = serde_json::from_str(text)
            .map_err(|e| Error::Tuning(format!("not a tuning file: {e}")))?;
        if t.flowmap_tuning != TUNING_VERSION {
            return Err(Error::Tuning(format!(
                "format version {} (this flowmap reads {TUNING_VERSION})",
                t.flowmap_tuning
            )));
        }
        if !matches!(t.precision.as_str(), "f32" | "f16") {
            return Err(Error::Tuning(format!(
                "unknown precision {:?}",
                t.precision
            )));
        }
        t.table()?;
        Ok(t)
    }

    pub fn read(path: &Path) -> Result<Tuning> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Tuning::from_json(&text)
            .map_err(|e| Error::Tuning(format!("{}: {}", path.display(), strip(&e))))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a tuning serialises") + "\n"
    }

    /// The kernel for each convolution; two entries for one convolution must agree.
    pub fn table(&self) -> Result<HashMap<ConvShape, ConvKernel>> {
        let mut table = HashMap::new();
        for c in &self.convs {
            let (shape, kernel) = c.checked()?;
            if let Some(k) = table.insert(shape, kernel) {
                if k != kernel {
                    return Err(Error::Tuning(format!(
                        "{} at batch {} is listed twice with different kernels",
                        c.layer, c.batch
                    )));
                }
            }
        }
        Ok(table)
    }

    /// The batches measured, ascending.
    pub fn batches(&self) -> Vec<usize> {
        let mut b: Vec<usize> = self.convs.iter().map(|c| c.batch).collect();
        b.sort_unstable();
        b.dedup();
        b
    }

    /// The convolutions of one forward at `batch`, in microseconds: (the rule's kernels, the
    /// chosen ones), each convolution counted as often as the forward runs it.
    pub fn forward_us(&self, batch: usize) -> (f64, f64) {
        self.convs
            .iter()
            .filter(|c| c.batch == batch)
            .fold((0.0, 0.0), |(r, t), c| {
                let (tuned, rule) = c.times();
                (r + rule * c.count as f64, t + tuned * c.count as f64)
            })
    }

    /// Refuses a tuning measured on another adapter or at another precision than `gpu`'s.
    pub fn check_device(&self, gpu: &GpuBackend) -> Result<()> {
        let a = &gpu.context().adapter;
        if (a.name.as_str(), a.backend.as_str()) != (self.adapter.as_str(), self.backend.as_str()) {
            return Err(Error::Tuning(format!(
                "measured on {} ({}), but this device is {} ({}); run `flowmap tune` here",
                self.adapter, self.backend, a.name, a.backend
            )));
        }
        if self.precision != gpu.precision().name() {
            return Err(Error::Tuning(format!(
                "measured in {} storage, but this backend stores {}; tune with --precision {}",
                self.precision,
                gpu.precision().name(),
                gpu.precision().name()
            )));
        }
        Ok(())
    }
}

/// An error's message without the variant's prefix, to nest it under a file name.
fn strip(e: &Error) -> String {
    match e {
        Error::Tuning(m) => m.clone(),
        e => e.to_string(),
    }
}

impl GpuBackend {
    /// Runs `tuning`'s kernel for each convolution it lists (replacing any earlier tuning),
    /// and the rule for any other; refused when it was measured on another adapter or
    /// precision. Returns how many convolutions it covers.
    pub fn use_tuning(&self, tuning: &Tuning) -> Result<usize> {
        tuning.check_device(self)?;
        let table = tuning.table()?;
        let n = table.len();
        *self.tuned.borrow_mut() = table;
        Ok(n)
    }

    /// Back to the rule for every convolution.
    pub fn clear_tuning(&self) {
        self.tuned.borrow_mut().clear();
    }
}

/// The clock a tuning is measured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Clock {
    /// The GPU's (timestamp queries around each dispatch) where the device has them, else the
    /// host's.
    #[default]
    Auto,
    /// The host's, around batches of dispatches submitted and waited for: for drivers whose
    /// timestamps cannot be trusted.
    Wall,
}

impl Clock {
    pub fn parse(s: &str) -> Result<Clock> {
        match s {
            "auto" => Ok(Clock::Auto),
            "wall" => Ok(Clock::Wall),
            _ => Err(Error::Argument(format!("unknown clock `{s}` (auto, wall)"))),
        }
    }
}

/// Measuring needs a blocking wait for the device: native only.
#[cfg(not(target_arch = "wasm32"))]
mod measure {
    use super::*;
    use crate::backend::Backend;
    use crate::bench::Profiled;
    use crate::gpu::ConvTiles;
    use crate::rng::Rng;
    use crate::weights::Weights;

    /// One distinct convolution of a forward: its layer name, shapes, and how often it runs.
    #[derive(Clone, Debug)]
    pub struct ForwardConv {
        pub layer: String,
        pub shape: ConvShape,
        pub count: usize,
    }

    /// The distinct convolutions of `weights`' forward at `batch` on `gpu`, in first-use order:
    /// recorded from one forward on the backend itself, so they are the calls it runs.
    pub fn forward_convs(
        gpu: &GpuBackend,
        weights: &Weights,
        batch: usize,
    ) -> Result<Vec<ForwardConv>> {
        let prof = Profiled::recording(gpu);
        let net = weights.network(&prof)?;
        let mut shape = vec![batch];
        shape.extend(weights.meta.model.sample_shape());
        let x = gpu.upload(&vec![0.0; shape.iter().product()], &shape)?;
        let times = vec![0.5; batch];
        prof.reset();
        drop(net.velocity(&prof, &x, &times, &times)?);
        gpu.sync()?;
        let mut convs: Vec<ForwardConv> = Vec::new();
        for call in prof.calls() {
            let Some(c) = call.conv else { continue };
            let Some(shape) = ConvShape::new(&c.x, &c.w, c.geom, c.residual) else {
                continue;
            };
            match convs.iter_mut().find(|f| f.shape == shape) {
                Some(f) => f.count += 1,
                None => convs.push(ForwardConv {
                    layer: call.layer,
                    shape,
                    count: 1,
                }),
            }
        }
        Ok(convs)
    }

    /// Each candidate's median time of one dispatch on `shape`, in seconds, timed `reps` times
    /// back to back on random operands, after one untimed dispatch; on the GPU's clock where
    /// `clock` allows it and the device has timestamp queries (true), else on the host's
    /// (false).
    pub fn time_candidates(
        gpu: &GpuBackend,
        shape: &ConvShape,
        reps: usize,
        clock: Clock,
    ) -> Result<(Vec<(ConvKernel, f64)>, bool)> {
        let mut rng = Rng::new(9);
        let mut up = |s: &[usize]| gpu.upload(&rng.normals(s.iter().product(), 1.0), s);
        let out = crate::backend::conv2d_out_shape(&shape.x, &shape.w, shape.geom);
        let (x, w, b) = (up(&shape.x)?, up(&shape.w)?, up(&shape.w[..1])?);
        let r = if shape.residual {
            Some(up(&out)?)
        } else {
            None
        };
        let gpu_clock = clock == Clock::Auto && gpu.has_timestamps();
        let reps = reps.max(1);
        let mut times = Vec::new();
        for kernel in shape.candidates() {
            let run = || drop(gpu.conv2d_with(kernel, &x, &w, &b, shape.geom, r.as_ref()));
            run();
            gpu.sync()?;
            let secs = if gpu_clock {
                gpu.start_timing();
                for _ in 0..reps {
                    run();
                }
                gpu.sync()?;
                let timed = gpu.finish_timing()?.unwrap_or_default();
                if timed.dispatches.is_empty() {
                    return Err(Error::Gpu(format!(
                        "{}: no dispatch was timed",
                        kernel.shader()
                    )));
                }
                crate::bench::median(timed.dispatches.iter().map(|d| d.1).collect())
            } else {
                // The host's clock: the best of three batches of dispatches, each submitted
                // and waited for, so one preempted batch does not decide.
                let mut best = f64::INFINITY;
                for _ in 0..3 {
                    let t0 = std::time::Instant::now();
                    for _ in 0..reps {
                        run();
                    }
                    gpu.sync()?;
                    best = best.min(t0.elapsed().as_secs_f64() / reps as f64);
                }
                best
            };
            times.push((kernel, secs));
        }
        Ok((times, gpu_clock))
    }

    impl Tuning {
        /// Times every kernel that computes each distinct convolution of `weights`' forward at
        /// each of `batches` on `gpu` ([`time_candidates`], on `clock`), and keeps the fastest.
        /// `progress` hears of each convolution as it is measured.
        pub fn measure(
            gpu: &GpuBackend,
            weights: &Weights,
            batches: &[usize],
            reps: usize,
            clock: Clock,
            mut progress: impl FnMut(&TunedConv),
        ) -> Result<Tuning> {
            if batches.is_empty() || batches.contains(&0) {
                return Err(Error::Argument(
                    "tune at one or more batches of at least 1".into(),
                ));
            }
            gpu.warm_up()?;
            let a = &gpu.context().adapter;
            let mut convs = Vec::new();
            let mut gpu_clock = true;
            for &batch in batches {
                for f in forward_convs(gpu, weights, batch)? {
                    let (times, on_gpu) = time_candidates(gpu, &f.shape, reps, clock)?;
                    gpu_clock &= on_gpu;
                    let best = times
                        .iter()
                        .min_by(|a, b| a.1.total_cmp(&b.1))
                        .map(|t| t.0)
                        .ok_or_else(|| Error::Gpu(format!("{}: no kernel applies", f.layer)))?;
                    let s = f.shape;
                    let c = TunedConv {
                        layer: f.layer,
                        batch,
                        count: f.count,
                        x: s.x,
                        w: s.w,
                        stride: s.geom.stride,
                        padding: s.geom.padding,
                        upsample: s.geom.upsample,
                        residual: s.residual,
                        kernel: best.shader().into(),
                        rule: s.rule(ConvTiles::ByLayer).shader().into(),
                        us: times
                            .iter()
                            .map(|(k, t)| (k.shader().to_string(), (t * 1e9).round() / 1e3))
                            .collect(),
                    };
                    progress(&c);
                    convs.push(c);
                }
            }
            Ok(Tuning {
                flowmap_tuning: TUNING_VERSION,
                adapter: a.name.clone(),
                backend: a.backend.clone(),
                driver: a.driver.clone(),
                precision: gpu.precision().name().into(),
                clock: if gpu_clock { "gpu" } else { "wall" }.into(),
                reps: reps.max(1),
                convs,
            })
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use measure::{forward_convs, time_candidates, ForwardConv};

#[cfg(test)]
mod tests {
    use super::*;

    fn tuning() -> Tuning {
        let conv = |x: [usize; 4], w: [usize; 4], stride, kernel: &str, rule: &str| TunedConv {
            layer: format!("conv {x:?} {w:?}"),
            batch: x[0],
            count: 2,
            x,
            w,
            stride,
            padding: w[2] / 2,
            upsample: false,
            residual: false,
            kernel: kernel.into(),
            rule: rule.into(),
            us: [
                ("conv2d.wgsl", 30.0),
                ("conv2d.wgsl#c16", 20.0),
                ("conv3x3.wgsl", 10.0),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        };
        Tuning {
            flowmap_tuning: TUNING_VERSION,
            adapter: "A GPU".into(),
            backend: "Vulkan".into(),
            driver: "1.0".into(),
            precision: "f32".into(),
            clock: "gpu".into(),
            reps: 20,
            convs: vec![
                conv(
                    [4, 16, 28, 28],
                    [16, 16, 3, 3],
                    1,
                    "conv3x3.wgsl",
                    "conv2d.wgsl",
                ),
                conv(
                    [4, 16, 28, 28],
                    [16, 16, 3, 3],
                    2,
                    "conv2d.wgsl#c16",
                    "conv2d.wgsl",
                ),
            ],
        }
    }

    fn refused(t: &Tuning) -> String {
        Tuning::from_json(&t.to_json()).unwrap_err().to_string()
    }

    #[test]
    fn a_tuning_round_trips_and_sums_its_forward() {
        let t = tuning();
        assert_eq!(Tuning::from_json(&t.to_json()).unwrap(), t);
        let table = t.table().unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(
            table[&t.convs[0].shape()],
            ConvKernel::Direct(super::super::DirectTile::Wide)
        );
        // Each convolution twice per forward: rule 2 × (30 + 30), tuned 2 × (10 + 20).
        assert_eq!(t.forward_us(4), (120.0, 60.0));
        assert_eq!(t.forward_us(5), (0.0, 0.0));
        assert_eq!(t.batches(), vec![4]);
    }

    #[test]
    fn a_tuning_that_cannot_be_used_is_refused_by_name() {
        let mut t = tuning();
        t.flowmap_tuning = 2;
        assert!(refused(&t).contains("format version 2"));
        let mut t = tuning();
        t.precision = "f64".into();
        assert!(refused(&t).contains("precision"));
        let mut t = tuning();
        t.convs[0].kernel = "conv9x9.wgsl".into();
        assert!(refused(&t).contains("unknown kernel \"conv9x9.wgsl\""));
        // conv3x3.wgsl does not compute a stride-2 convolution.
        let mut t = tuning();
        t.convs[1].kernel = "conv3x3.wgsl".into();
        assert!(refused(&t).contains("does not compute"), "{}", refused(&t));
        let mut t = tuning();
        t.convs[0].us.remove("conv3x3.wgsl");
        assert!(refused(&t).contains("no time"));
        let mut t = tuning();
        t.convs[0].us.insert("conv2d.wgsl".into(), -1.0);
        assert!(refused(&t).contains("time -1"));
        let mut t = tuning();
        t.convs[0].w[1] = 8;
        assert!(refused(&t).contains("not one convolution"));
        let mut t = tuning();
        let mut twin = t.convs[0].clone();
        twin.kernel = "conv2d.wgsl".into();
        t.convs.push(twin);
        assert!(refused(&t).contains("listed twice"));
        // The same entry twice with the same kernel is harmless.
        let mut t = tuning();
        t.convs.push(t.convs[0].clone());
        assert!(Tuning::from_json(&t.to_json()).is_ok());
        let e = Tuning::from_json("{}").unwrap_err().to_string();
        assert!(e.contains("not a tuning file"), "{e}");
    }
}
