// The demo page: glue and drawing only. Sampling is flowmap's Rust sampler compiled to wasm
// (web/pkg, built by web/build.sh), running the WGSL kernels on WebGPU or, without WebGPU, the
// CPU backend. Query parameters (used by the tests, handy for links): ?model=URL, ?k=, ?seed=,
// ?n= set the starting state; ?gpu=off forces the CPU fallback; ?cpu=reference runs the fallback
// on the reference loops (the wasm benchmark's baseline, web/bench.mjs).
import init, { WebSampler } from './pkg/flowmap.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const cache = new Map(); // url → Promise<WebSampler>: every model is downloaded once
let sampler = null;
let meta = null;
let pending = null;
let running = false;

function setStatus(text, kind = '') {
  const el = $('status');
  el.textContent = text;
  el.className = kind;
}

async function loadModel(url) {
  if (!cache.has(url)) {
    cache.set(url, (async () => {
      let res;
      try {
        res = await fetch(url);
      } catch (e) {
        throw new Error(`could not download ${url}: ${e.message}`);
      }
      if (!res.ok) throw new Error(`could not download ${url}: HTTP ${res.status}`);
      const bytes = new Uint8Array(await res.arrayBuffer());
      const useGpu = !!navigator.gpu && params.get('gpu') !== 'off';
      try {
        const s = await WebSampler.create(bytes, useGpu);
        if (params.get('cpu') === 'reference') s.set_reference_kernels(true);
        return s;
      } catch (e) {
        throw new Error(`${url} is not a usable flowmap model: ${e.message ?? e}`);
      }
    })());
  }
  try {
    return await cache.get(url);
  } catch (e) {
    cache.delete(url); // a failed download may be retried
    throw e;
  }
}

function counts() {
  return meta.data.kind === 'image' ? [16, 64, 144] : [1000, 5000, 20000];
}

async function selectModel(url) {
  setStatus(`Loading ${url}…`);
  try {
    sampler = await loadModel(url);
  } catch (e) {
    sampler = null;
    setStatus(e.message, 'error');
    return;
  }
  meta = JSON.parse(sampler.meta_json);
  const count = $('count');
  const before = Number(count.value);
  const options = counts();
  const asked = Number(params.get('n'));
  if (asked > 0 && !options.includes(asked)) options.unshift(asked); // ?n= (tests, links)
  count.innerHTML = options.map((c) => `<option value="${c}">${c}</option>`).join('');
  if (asked > 0) count.value = String(asked);
  else if (options.includes(before)) count.value = String(before);
  else count.value = String(options[0]);
  const dev = $('device');
  if (sampler.is_gpu) {
    dev.textContent = `Adapter: ${sampler.device}`;
  } else {
    dev.textContent = `WebGPU unavailable (${sampler.gpu_error}): sampling on the CPU backend compiled to wasm.`;
  }
  request();
}

function request() {
  if (!sampler) return;
  pending = { k: Number($('steps').value), seed: Number($('seed').value) >>> 0, n: Number($('count').value) };
  if (!running) drain();
}

// The latest request wins: moving the slider while sampling replaces the queued job.
async function drain() {
  running = true;
  while (pending) {
    const job = pending;
    pending = null;
    try {
      setStatus(`Sampling ${job.n} with K = ${job.k}…`);
      const keep = meta.data.kind === 'image' ? 8 : Math.min(job.n, 2000);
      const fm = await sampler.sample(job.n, job.k, job.seed, 'flowmap', keep);
      const eu = await sampler.sample(job.n, job.k, job.seed, 'euler', 0);
      const fmSamples = fm.samples;
      draw($('flowmap'), fmSamples, job.n);
      draw($('euler'), eu.samples, job.n);
      drawStates(fm.states, job.k, keep);
      const ms = Array.from(fm.step_ms);
      $('flowmap-time').textContent = `${fm.total_ms.toFixed(1)} ms total`;
      $('euler-time').textContent = `${eu.total_ms.toFixed(1)} ms total`;
      $('step-times').textContent = `Per jump: ${ms.map((m) => m.toFixed(1) + ' ms').join(', ')}`;
      window.flowmapResult = { k: job.k, seed: job.seed, n: job.n, samples: Array.from(fmSamples), euler: Array.from(eu.samples), device: sampler.device, gpu: sampler.is_gpu, ms: fm.total_ms };
      setStatus(`${job.n} samples, K = ${job.k} jumps, seed ${job.seed}${sampler.is_gpu ? '' : ' (CPU fallback)'}`, sampler.is_gpu ? '' : 'warn');
    } catch (e) {
      setStatus(`Sampling failed: ${e.message ?? e}`, 'error');
    }
  }
  running = false;
}

function draw(canvas, samples, n) {
  if (meta.data.kind === 'image') drawImages(canvas, samples, n);
  else drawPoints(canvas, samples, n, canvas.width, 0, canvas.height);
}

function drawImages(canvas, samples, n, cols = Math.ceil(Math.sqrt(n))) {
  const [c, h, w] = meta.data.shape;
  const rows = Math.ceil(n / cols);
  const [lo, hi] = meta.data.range;
  const img = new ImageData(cols * w, rows * h);
  for (let i = 0; i < n; i++) {
    const ox = (i % cols) * w;
    const oy = Math.floor(i / cols) * h;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const p = ((oy + y) * cols * w + ox + x) * 4;
        for (let k = 0; k < 3; k++) {
          const v = samples[i * c * h * w + (c === 3 ? k : 0) * h * w + y * w + x];
          img.data[p + k] = Math.round(255 * Math.min(1, Math.max(0, (v - lo) / (hi - lo))));
        }
        img.data[p + 3] = 255;
      }
    }
  }
  const tmp = new OffscreenCanvas(img.width, img.height);
  tmp.getContext('2d').putImageData(img, 0, 0);
  canvas.width = img.width * Math.max(1, Math.floor(512 / img.width));
  canvas.height = img.height * Math.max(1, Math.floor(512 / img.width));
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(tmp, 0, 0, canvas.width, canvas.height);
}

function drawPoints(canvas, pts, n, size, x0, height, clear = true) {
  const ctx = canvas.getContext('2d');
  const [lo, hi] = meta.data.range;
  if (clear) {
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }
  ctx.fillStyle = 'rgba(31, 90, 180, 0.35)';
  const dim = meta.data.shape[0];
  for (let i = 0; i < n; i++) {
    const x = ((pts[i * dim] - lo) / (hi - lo)) * size;
    const y = (1 - (pts[i * dim + 1] - lo) / (hi - lo)) * height;
    if (x >= 0 && x < size && y >= 0 && y < height) ctx.fillRect(x0 + x, y, 1.5, 1.5);
  }
}

function drawStates(states, k, keep) {
  const canvas = $('states');
  const len = meta.data.shape.reduce((a, b) => a * b, 1);
  if (meta.data.kind === 'image') {
    // One row per jump, `keep` samples across.
    drawImages(canvas, states, k * keep, keep);
  } else {
    const panel = 96;
    canvas.width = panel * k;
    canvas.height = panel;
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    for (let s = 0; s < k; s++) {
      drawPoints(canvas, states.subarray(s * keep * len, (s + 1) * keep * len), keep, panel, s * panel, panel, false);
    }
  }
}

async function main() {
  try {
    await init();
  } catch (e) {
    // The package is built with WebAssembly SIMD (web/build.sh), which every current browser
    // has (Chrome/Edge 91+, Firefox 89+, Safari 16.4+); older ones fail to compile it.
    const simd = WebAssembly.validate(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]));
    const why = simd ? '' : ' (this browser lacks WebAssembly SIMD, which the package needs: update the browser)';
    setStatus(`Could not load the wasm module: ${e.message ?? e}${why}`, 'error');
    return;
  }
  let models;
  if (params.get('model')) {
    models = [{ name: params.get('model'), url: params.get('model') }];
  } else {
    try {
      models = await (await fetch('web/models.json')).json();
    } catch (e) {
      setStatus(`Could not read web/models.json: ${e.message}`, 'error');
      return;
    }
  }
  if (params.get('k')) $('steps').value = params.get('k');
  if (params.get('seed')) $('seed').value = params.get('seed');
  $('steps-out').textContent = $('steps').value;
  const select = $('model');
  select.innerHTML = models.map((m) => `<option value="${m.url}">${m.name}</option>`).join('');
  select.addEventListener('change', () => selectModel(select.value));
  $('steps').addEventListener('input', () => {
    $('steps-out').textContent = $('steps').value;
    request();
  });
  $('seed').addEventListener('change', request);
  $('count').addEventListener('change', request);
  $('new').addEventListener('click', () => {
    $('seed').value = String((Number($('seed').value) + 1) >>> 0);
    request();
  });
  await selectModel(models[0].url);
}

main();
