// The demo page: glue and drawing only. Sampling is flowmap's Rust sampler compiled to wasm,
// reached through flowmap's JavaScript API (web/flowmap.mjs): the WGSL kernels on WebGPU or the
// CPU backend. Query parameters (used by the tests, handy for links): ?model=URL, ?k=, ?seed=,
// ?n= set the starting state (n is clamped to the API's MAX_SAMPLES); ?device=auto|gpu|cpu
// chooses where to sample (auto passes a software WebGPU adapter over for the wasm CPU path;
// ?gpu=off is ?device=cpu); ?precision=auto|f32|f16 is the GPU's tensor storage (auto: f16 where
// the adapter offers shader-f16); ?cpu=reference runs the CPU path on the reference loops (the wasm
// benchmark's baseline, web/bench.mjs).
import { load, initialize, MAX_SAMPLES } from './flowmap.mjs';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const cache = new Map(); // url + device → Promise<Model>: every model is downloaded once
let model = null; // the model in use; a failed load leaves it in place
let modelUrl = null;
let meta = null;
let pending = null;
let running = false;
let notice = ''; // e.g. a clamped ?n=, shown with the next status

function setStatus(text, kind = '') {
  const el = $('status');
  el.textContent = text;
  el.className = kind;
}

const precision = ['auto', 'f32', 'f16'].includes(params.get('precision')) ? params.get('precision') : 'auto';

function loadModel(url, device) {
  const key = `${device} ${url}`;
  if (!cache.has(key)) {
    cache.set(key, load(url, { device, precision }).then((m) => {
      if (params.get('cpu') === 'reference') m.setReferenceKernels(true);
      return m;
    }));
  }
  return cache.get(key).catch((e) => {
    cache.delete(key); // a failed download may be retried
    throw e;
  });
}

function counts() {
  return meta.data.kind === 'image' ? [16, 64, 144] : [1000, 5000, 20000];
}

function describeDevice() {
  const dev = $('device');
  if (model.isGpu) dev.textContent = `Adapter: ${model.device}`;
  else dev.textContent = `Sampling on the CPU backend compiled to wasm: ${model.gpuError ?? 'WebGPU is off'}.`;
}

async function selectModel(url) {
  setStatus(`Loading ${url}…`);
  let next;
  try {
    next = await loadModel(url, $('device-choice').value);
  } catch (e) {
    // The previous model stays selected and usable.
    if (model) $('model').value = modelUrl;
    setStatus(model ? `${e.message}. Still showing the previous model.` : e.message, 'error');
    return;
  }
  model = next;
  modelUrl = url;
  meta = model.meta;
  const count = $('count');
  const before = Number(count.value);
  const options = counts();
  const max = MAX_SAMPLES[meta.data.kind];
  let asked = Math.floor(Number(params.get('n')));
  if (!(asked > 0)) asked = 0;
  if (asked > max) {
    notice = ` (?n=${params.get('n')} clamped to ${max}, the most one run draws)`;
    asked = max;
  }
  if (asked > 0 && !options.includes(asked)) options.unshift(asked); // ?n= (tests, links)
  count.innerHTML = options.map((c) => `<option value="${c}">${c}</option>`).join('');
  if (asked > 0) count.value = String(asked);
  else if (options.includes(before)) count.value = String(before);
  else count.value = String(options[0]);
  describeDevice();
  request();
}

function request() {
  if (!model) return;
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
      const fm = await model.sample({ n: job.n, k: job.k, seed: job.seed, integrator: 'flowmap', keep });
      const eu = await model.sample({ n: job.n, k: job.k, seed: job.seed, integrator: 'euler' });
      if (fm.fellBack || eu.fellBack) describeDevice();
      draw($('flowmap'), fm.samples, job.n);
      draw($('euler'), eu.samples, job.n);
      drawStates(fm.states, job.k, keep);
      $('flowmap-time').textContent = `${fm.totalMs.toFixed(1)} ms total`;
      $('euler-time').textContent = `${eu.totalMs.toFixed(1)} ms total`;
      $('step-times').textContent = `Per jump: ${fm.stepMs.map((m) => m.toFixed(1) + ' ms').join(', ')}`;
      window.flowmapResult = { k: job.k, seed: job.seed, n: job.n, samples: Array.from(fm.samples), euler: Array.from(eu.samples), device: model.device, gpu: model.isGpu, fellBack: fm.fellBack || eu.fellBack, ms: fm.totalMs };
      const where = model.isGpu ? '' : fm.fellBack || eu.fellBack ? ' (the GPU was lost: continuing on the CPU fallback)' : ' (CPU fallback)';
      setStatus(`${job.n} samples, K = ${job.k} jumps, seed ${job.seed}${where}${notice}`, model.isGpu ? '' : 'warn');
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
    await initialize();
  } catch (e) {
    setStatus(`Could not start: ${e.message ?? e}`, 'error');
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
  const device = params.get('gpu') === 'off' ? 'cpu' : params.get('device') ?? 'auto';
  if (['auto', 'gpu', 'cpu'].includes(device)) $('device-choice').value = device;
  $('steps-out').textContent = $('steps').value;
  const select = $('model');
  select.innerHTML = models.map((m) => `<option value="${m.url}">${m.name}</option>`).join('');
  select.addEventListener('change', () => selectModel(select.value));
  $('device-choice').addEventListener('change', () => selectModel(modelUrl ?? select.value));
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
