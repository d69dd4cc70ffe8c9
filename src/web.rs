//! The browser API (wasm32 only): the same network, kernels and sampler as the CLI, driven from
//! JavaScript through wasm-bindgen. GPU work is awaited, never blocked on; the CPU fallback yields
//! to the event loop between steps so the page stays responsive.

use crate::backend::{Backend, Shaped};
use crate::clock::Stopwatch;
use crate::cpu::CpuBackend;
use crate::gpu::{GpuBackend, GpuContext};
use crate::net::Network;
use crate::precision::PrecisionChoice;
use crate::sampler::{self, Integrator};
use crate::weights::Weights;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

enum Engine {
    Gpu(Box<GpuBackend>, Network<GpuBackend>),
    Cpu(Network<CpuBackend>),
}

/// A loaded model on WebGPU or, failing that, on the CPU backend compiled to wasm.
#[wasm_bindgen]
pub struct WebSampler {
    weights: Weights,
    engine: Engine,
    device: String,
    gpu_error: Option<String>,
    /// The CPU backend's kernels (fast by default; the reference loops for benchmarks).
    cpu: CpuBackend,
}

/// The result of one sampling run.
#[wasm_bindgen]
pub struct SampleRun {
    samples: Vec<f32>,
    states: Vec<f32>,
    step_ms: Vec<f64>,
    total_ms: f64,
}

#[wasm_bindgen]
impl SampleRun {
    /// The samples in data range, sample-major.
    #[wasm_bindgen(getter)]
    pub fn samples(&self) -> js_sys::Float32Array {
        js_sys::Float32Array::from(&self.samples[..])
    }
    /// The first `keep` samples after every step, step-major.
    #[wasm_bindgen(getter)]
    pub fn states(&self) -> js_sys::Float32Array {
        js_sys::Float32Array::from(&self.states[..])
    }
    #[wasm_bindgen(getter)]
    pub fn step_ms(&self) -> js_sys::Float64Array {
        js_sys::Float64Array::from(&self.step_ms[..])
    }
    #[wasm_bindgen(getter)]
    pub fn total_ms(&self) -> f64 {
        self.total_ms
    }
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// Resolves after the browser has had a turn of its event loop.
async fn yield_now() {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let set_timeout = js_sys::Reflect::get(&js_sys::global(), &"setTimeout".into()).ok();
        if let Some(f) = set_timeout.and_then(|f| f.dyn_into::<js_sys::Function>().ok()) {
            let _ = f.call2(&JsValue::NULL, &resolve, &JsValue::from(0));
        } else {
            let _ = resolve.call0(&JsValue::NULL);
        }
    });
    let _ = JsFuture::from(promise).await;
}

#[wasm_bindgen]
impl WebSampler {
    /// Parses a weights file and opens WebGPU when `use_gpu` is set and an adapter is granted,
    /// otherwise the CPU backend (`gpu_error` then says why). `precision` (auto, f32, f16) is
    /// the GPU's tensor storage: auto takes f16 where the adapter offers `shader-f16`; an f16
    /// the adapter lacks leaves the GPU unused, with the reason in `gpu_error`.
    pub async fn create(
        bytes: Vec<u8>,
        use_gpu: bool,
        precision: String,
    ) -> Result<WebSampler, JsError> {
        let weights = Weights::from_bytes(&bytes).map_err(js_err)?;
        let choice = PrecisionChoice::parse(&precision).map_err(js_err)?;
        let mut gpu_error = None;
        if use_gpu {
            let backend = GpuContext::new_async(true)
                .await
                .and_then(|ctx| GpuBackend::with_choice(ctx, choice));
            match backend {
                Ok(backend) => {
                    let device = format!(
                        "WebGPU: {}, {} storage",
                        backend.context().adapter,
                        backend.precision()
                    );
                    let backend = Box::new(backend);
                    let net = weights.network(backend.as_ref()).map_err(js_err)?;
                    return Ok(WebSampler {
                        weights,
                        engine: Engine::Gpu(backend, net),
                        device,
                        gpu_error,
                        cpu: CpuBackend::FAST,
                    });
                }
                Err(e) => gpu_error = Some(e.to_string()),
            }
        } else {
            gpu_error = Some("WebGPU is not available in this browser".into());
        }
        let net = weights.network(&CpuBackend::FAST).map_err(js_err)?;
        Ok(WebSampler {
            weights,
            engine: Engine::Cpu(net),
            device: "CPU (wasm fallback)".into(),
            gpu_error,
            cpu: CpuBackend::FAST,
        })
    }

    /// Runs the CPU fallback on the reference loops instead of the fast kernels (the page's
    /// `?cpu=reference`, for the wasm benchmark's baseline).
    pub fn set_reference_kernels(&mut self, on: bool) {
        self.cpu = if on {
            CpuBackend::REFERENCE
        } else {
            CpuBackend::FAST
        };
    }

    #[wasm_bindgen(getter)]
    pub fn device(&self) -> String {
        self.device.clone()
    }

    #[wasm_bindgen(getter)]
    pub fn is_gpu(&self) -> bool {
        matches!(self.engine, Engine::Gpu(..))
    }

    /// Why the GPU is not in use, if it is not.
    #[wasm_bindgen(getter)]
    pub fn gpu_error(&self) -> Option<String> {
        self.gpu_error.clone()
    }

    /// The file's metadata as JSON (architecture, data kind and shape, range, method).
    #[wasm_bindgen(getter)]
    pub fn meta_json(&self) -> String {
        self.weights.meta.to_json()
    }

    /// Draws `n` samples from `seed` with `steps` jumps (`integrator` = "flowmap", or "euler" on
    /// the diagonal v(t, t, ·) at the same number of evaluations), keeping the first `keep`
    /// samples after every step. On WebGPU only those `keep` samples are read back per step, and
    /// with `keep` = 0 nothing is until the end (`step_ms` is then empty).
    pub async fn sample(
        &self,
        n: usize,
        steps: usize,
        seed: u32,
        integrator: String,
        keep: usize,
    ) -> Result<SampleRun, JsError> {
        if n == 0 {
            return Err(js_err("the sample count must be at least 1"));
        }
        let grid = sampler::uniform_grid(steps).map_err(js_err)?;
        let integrator = Integrator::parse(&integrator).map_err(js_err)?;
        let meta = &self.weights.meta;
        let noise = sampler::initial_noise(meta, n, seed as u64);
        let mut shape = vec![n];
        shape.extend(meta.model.sample_shape());
        let keep_len = keep.min(n) * meta.model.sample_len();
        let total = Stopwatch::start();
        let mut step_ms = Vec::with_capacity(steps);
        let mut states = Vec::with_capacity(steps * keep_len);
        let samples = match &self.engine {
            Engine::Gpu(b, net) => {
                let b = b.as_ref();
                // Batches are split so that a pass's activations fit the browser's budget.
                let len = meta.model.sample_len();
                let chunk = b.max_batch(meta).map_err(js_err)?;
                let mut out = Vec::with_capacity(noise.len());
                for (c, part) in noise.chunks(chunk * len).enumerate() {
                    shape[0] = part.len() / len;
                    let mut x = b.upload(part, &shape).map_err(js_err)?;
                    // The step view shows the first samples, which are in the first chunk.
                    let view = if c == 0 { keep_len.min(part.len()) } else { 0 };
                    for w in grid.windows(2) {
                        let t0 = Stopwatch::start();
                        x = sampler::step(b, net, &x, w[0], w[1], integrator).map_err(js_err)?;
                        if view > 0 {
                            // Only the samples the step view shows come back; the readback
                            // also waits for the step, which times it.
                            let state = b.download_prefix_async(&x, view).await.map_err(js_err)?;
                            states.extend_from_slice(&state);
                            step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                        } else {
                            // Nothing to show: submit and go on; the readback at the end waits.
                            b.flush();
                        }
                    }
                    out.extend(b.download_async(&x).await.map_err(js_err)?);
                }
                out
            }
            Engine::Cpu(net) => {
                let b = &self.cpu;
                let mut x = b.upload(&noise, &shape).map_err(js_err)?;
                for w in grid.windows(2) {
                    let t0 = Stopwatch::start();
                    x = sampler::step(b, net, &x, w[0], w[1], integrator).map_err(js_err)?;
                    states.extend_from_slice(&x.data[..keep_len]);
                    step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                    yield_now().await;
                }
                debug_assert_eq!(x.shape(), &shape[..]);
                x.data.to_vec()
            }
        };
        let to_data = |v: Vec<f32>| {
            v.into_iter()
                .map(|x| meta.data.to_data(x))
                .collect::<Vec<f32>>()
        };
        Ok(SampleRun {
            samples: to_data(samples),
            states: to_data(states),
            step_ms,
            total_ms: total.elapsed().as_secs_f64() * 1e3,
        })
    }
}
