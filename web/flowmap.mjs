// flowmap's JavaScript API: load a model, sample it with K jumps, get the samples and timings.
// It wraps the wasm package (web/pkg, built by web/build.sh) and adds what a page needs around
// it: the choice of device, a CPU fallback that takes over when the GPU is lost, and named
// errors. The demo page (web/app.js) and the minimal example (web/example.html) use only this.
//
//   import { load } from './web/flowmap.mjs';
//   const model = await load('weights/mnist-f16.safetensors');      // a URL, bytes or a Response
//   const run = await model.sample({ k: 4, seed: 0, n: 16 });
//   run.samples  // Float32Array, n × model.meta.data.shape values in data space (pixels in [0, 1])
//   run.totalMs  // wall time; run.stepMs: per jump (when `keep` > 0); run.device: where it ran
//
// load(source, { device, precision }) → Promise<Model>
//   source  a URL string, a URL, an ArrayBuffer / Uint8Array of a .safetensors file, or a Response
//   device  'auto' (default): WebGPU on a hardware adapter, else the wasm CPU path. A software
//           WebGPU adapter (SwiftShader and other fallback adapters) is passed over, as
//           `flowmap sample --device auto` passes over lavapipe: it is ~50× slower than the wasm
//           path. 'gpu': WebGPU on any adapter (falls back to the CPU only if there is none).
//           'cpu': the wasm CPU path.
//   precision  the GPU's tensor storage: 'auto' (default: f16 where the adapter offers
//           `shader-f16`, else f32), 'f32', or 'f16' (f16 storage, f32 arithmetic). An 'f16' the
//           adapter lacks leaves WebGPU unused: the model samples on the CPU and gpuError says why.
//   Rejects with an Error naming the problem: a download that failed (with the HTTP status), or
//   a file that is not a usable flowmap model (the loader's own message).
//
// Model
//   meta        the file's metadata: { model, data: { kind, shape, range }, method, sigma0, … }
//   device      a description of where it samples ("WebGPU: …, f16 storage" or "CPU (wasm fallback)")
//   isGpu       whether it samples on WebGPU
//   gpuError    why it does not (no WebGPU, a software adapter, a lost device), or null
//   sample({ k = 4, seed = 0, n = 16, integrator = 'flowmap', keep = 0 }) → Promise<Run>
//               integrator 'flowmap' (K jumps) or 'euler' (the diagonal velocity, K evaluations);
//               keep: how many samples' intermediate states to return per jump. n is at most
//               MAX_SAMPLES[meta.data.kind]; a larger n is a RangeError, not an attempt.
//               If the GPU fails mid-run (device lost), the model moves to the CPU path for good,
//               reruns the request there, and the Run says so (fellBack, with gpuError set).
//   setReferenceKernels(on)  the CPU path on the reference loops (the wasm benchmark's baseline)
//   free()      releases the wasm object
//
// Run: { samples, states, stepMs, totalMs, device, gpu, fellBack }

import init, { WebSampler } from './pkg/flowmap.js';

/** The largest sample count one call draws, by data kind (a page clamps URLs to these). */
export const MAX_SAMPLES = Object.freeze({ image: 1024, points: 100000 });

let ready = null;

/** Initialises the wasm module once; `load` calls it, a page may call it early. */
export function initialize() {
  ready ??= init().catch((e) => {
    ready = null;
    // The package uses WebAssembly SIMD, which every current browser has; older ones fail here.
    const simd = WebAssembly.validate(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]));
    const why = simd ? '' : ' (this browser lacks WebAssembly SIMD, which the package needs: update the browser)';
    throw new Error(`could not load the wasm module: ${e.message ?? e}${why}`);
  });
  return ready;
}

/** Why the browser's WebGPU adapter should be passed over under 'auto', or null if it should not. */
async function softwareAdapter() {
  if (!navigator.gpu) return null;
  let adapter;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch {
    return null;
  }
  if (!adapter) return null;
  const info = adapter.info ?? {};
  const name = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ');
  if (info.isFallbackAdapter || adapter.isFallbackAdapter || /swiftshader|llvmpipe|lavapipe|software/i.test(name)) {
    return `the WebGPU adapter is a software renderer (${name || 'fallback adapter'}), slower than the wasm CPU path`;
  }
  return null;
}

async function bytesOf(source) {
  if (source instanceof Uint8Array) return source;
  if (source instanceof ArrayBuffer) return new Uint8Array(source);
  let res = source;
  if (!(source instanceof Response)) {
    const url = String(source);
    try {
      res = await fetch(url);
    } catch (e) {
      throw new Error(`could not download ${url}: ${e.message}`);
    }
  }
  if (!res.ok) throw new Error(`could not download ${res.url || source}: HTTP ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

async function create(bytes, useGpu, precision, label) {
  try {
    return await WebSampler.create(bytes, useGpu, precision);
  } catch (e) {
    throw new Error(`${label} is not a usable flowmap model: ${e.message ?? e}`);
  }
}

export class Model {
  #bytes;
  #inner;
  #gpuError;

  constructor(bytes, inner, gpuError) {
    this.#bytes = bytes;
    this.#inner = inner;
    this.#gpuError = gpuError;
    this.meta = JSON.parse(inner.meta_json);
  }

  get device() { return this.#inner.device; }
  get isGpu() { return this.#inner.is_gpu; }
  get gpuError() { return this.#gpuError ?? this.#inner.gpu_error ?? null; }

  async sample({ k = 4, seed = 0, n = 16, integrator = 'flowmap', keep = 0 } = {}) {
    const max = MAX_SAMPLES[this.meta.data.kind] ?? MAX_SAMPLES.image;
    if (!Number.isInteger(n) || n < 1 || n > max) throw new RangeError(`n = ${n}: the sample count must be a whole number from 1 to ${max}`);
    if (!Number.isInteger(k) || k < 1) throw new RangeError(`k = ${k}: the number of jumps must be a whole number ≥ 1`);
    const call = () => this.#inner.sample(n, k, seed >>> 0, integrator, keep);
    let fellBack = false;
    let r;
    try {
      r = await call();
    } catch (e) {
      if (!this.#inner.is_gpu) throw new Error(`sampling failed: ${e.message ?? e}`);
      // The GPU failed (typically a lost device): continue on the CPU path for good.
      this.#gpuError = `the GPU failed mid-run and sampling moved to the CPU: ${e.message ?? e}`;
      const cpu = await create(this.#bytes, false, 'f32', 'the model');
      this.#inner.free();
      this.#inner = cpu;
      fellBack = true;
      r = await call();
    }
    const run = {
      samples: r.samples,
      states: r.states,
      stepMs: Array.from(r.step_ms),
      totalMs: r.total_ms,
      device: this.#inner.device,
      gpu: this.#inner.is_gpu,
      fellBack,
    };
    r.free();
    return run;
  }

  /** Runs the CPU path on the reference loops instead of the fast kernels (benchmarks). */
  setReferenceKernels(on) { this.#inner.set_reference_kernels(on); }

  free() { this.#inner.free(); }
}

/** Loads a model from a URL, bytes or a Response; see the top of this file. */
export async function load(source, { device = 'auto', precision = 'auto' } = {}) {
  if (!['auto', 'gpu', 'cpu'].includes(device)) throw new RangeError(`device '${device}': use 'auto', 'gpu' or 'cpu'`);
  if (!['auto', 'f32', 'f16'].includes(precision)) throw new RangeError(`precision '${precision}': use 'auto', 'f32' or 'f16'`);
  await initialize();
  const bytes = await bytesOf(source);
  const label = typeof source === 'string' || source instanceof URL ? String(source) : source instanceof Response ? source.url || 'the response' : 'the bytes';
  let gpuError = null;
  let useGpu = device !== 'cpu' && !!navigator.gpu;
  if (device === 'auto' && useGpu) {
    gpuError = await softwareAdapter();
    if (gpuError) useGpu = false;
  }
  if (device === 'cpu') gpuError = 'the CPU path was asked for';
  const inner = await create(bytes, useGpu, precision, label);
  return new Model(bytes, inner, gpuError);
}
