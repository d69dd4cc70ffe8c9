// End-to-end test of the demo page and the API example in Debian's headless Chromium (WebGPU on
// SwiftShader): the page loads, the slider resamples, the samples equal the native sampler's for
// the same weights, seed and K, the CPU fallback is announced when WebGPU is off, `auto` passes
// the software adapter over, a GPU lost mid-run hands over to the CPU, a bad or missing model
// leaves the previous one in use, an absurd ?n= is clamped, and no console error occurs.
// Run: node --test web/   (after web/build.sh; the native sampler is $FLOWMAP_BIN, by default
// target/release/flowmap: `cargo build --release`. CI passes the debug build that `cargo test`
// already made: the same code, optimised at level 2 (Cargo.toml), within CPU_TOL of the release build.)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { readFile, mkdtemp } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, extname, normalize } from 'node:path';
import { chromium } from 'playwright-core';

const root = new URL('..', import.meta.url).pathname;
const MODEL = 'weights/checkerboard-f16.safetensors';
const DIGITS = 'weights/mnist-f16.safetensors';
const N = 200;
const SEED = 3;
// SwiftShader and the CPU may round differently in exp/sin/fma; samples live in [-1.5, 1.5].
const GPU_TOL = 2e-3;
const CPU_TOL = 1e-4;

let server;
let base;
let browser;
let scratch;
let wrongArch;

const types = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.json': 'application/json' };

before(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'flowmap-e2e-'));
  wrongArch = await wrongArchitecture(MODEL);
  server = createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^\/+/, '');
    if (path === '__test/wrong-arch.safetensors') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.end(wrongArch);
      return;
    }
    try {
      const body = await readFile(join(root, path || 'index.html'));
      res.writeHead(200, { 'content-type': types[extname(path)] ?? 'application/octet-stream' });
      res.end(body);
    } catch {
      res.writeHead(404);
      res.end('not found');
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${server.address().port}`;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic', '--no-first-run'],
  });
});

after(async () => {
  await browser?.close();
  server?.close();
});

/// A valid safetensors file whose metadata declares an MLP twice as wide as its tensors.
async function wrongArchitecture(model) {
  const b = await readFile(join(root, model));
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString());
  const meta = JSON.parse(header.__metadata__.flowmap);
  meta.model.width *= 2;
  header.__metadata__.flowmap = JSON.stringify(meta);
  const text = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(text.length));
  return Buffer.concat([len, text, b.subarray(8 + n)]);
}

/// The native sampler's output for the same weights, seed and K, read from its .npy.
function native(k, model = MODEL, n = N) {
  const out = join(scratch, `k${k}-${n}.npy`);
  const bin = process.env.FLOWMAP_BIN ?? join(root, 'target/release/flowmap');
  execFileSync(bin, ['sample', '--weights', join(root, model), '--steps', String(k), '--n', String(n), '--seed', String(SEED), '--out', out, '--device', 'cpu'], { stdio: 'pipe' });
  return readFile(out).then((b) => {
    const hlen = b.readUInt16LE(8);
    const data = b.subarray(10 + hlen);
    return Array.from(new Float32Array(data.buffer, data.byteOffset, data.length / 4));
  });
}

function maxDiff(a, b) {
  assert.equal(a.length, b.length, 'sample counts differ');
  return a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
}

async function openPage(query, path = 'index.html') {
  const page = await browser.newPage();
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${base}/${path}?${query}`);
  return { page, errors };
}

async function result(page, k) {
  await page.waitForFunction((k) => window.flowmapResult?.k === k, k, { timeout: 240_000 });
  return page.evaluate(() => window.flowmapResult);
}

test('WebGPU page matches the native sampler and resamples when the slider moves', { timeout: 600_000 }, async () => {
  const { page, errors } = await openPage(`model=${MODEL}&n=${N}&seed=${SEED}&k=2&device=gpu`);
  const first = await result(page, 2);
  assert.ok(first.gpu, `expected WebGPU, got ${first.device}`);
  const d2 = maxDiff(first.samples, await native(2));
  assert.ok(d2 <= GPU_TOL, `K = 2: max |page − native| = ${d2}`);
  // Move the slider to K = 3: the page resamples from the same noise.
  await page.locator('#steps').fill('3');
  const moved = await result(page, 3);
  const d3 = maxDiff(moved.samples, await native(3));
  assert.ok(d3 <= GPU_TOL, `K = 3: max |page − native| = ${d3}`);
  // auto precision: f16 storage only where the adapter offers shader-f16 (SwiftShader does not).
  const f16 = await page.evaluate(async () => (await navigator.gpu.requestAdapter()).features.has('shader-f16'));
  assert.match(await page.textContent('#device'), f16 ? /Adapter: WebGPU: .*, f16 storage/ : /Adapter: WebGPU: .*, f32 storage/);
  assert.deepEqual(errors, [], `console errors: ${errors.join('; ')}`);
  await page.close();
});

test('an f16 request on an adapter without shader-f16 is refused by name and samples on the CPU', { timeout: 600_000 }, async () => {
  const { page, errors } = await openPage(`model=${MODEL}&n=${N}&seed=${SEED}&k=2&device=gpu&precision=f16`);
  const f16 = await page.evaluate(async () => (await navigator.gpu.requestAdapter()).features.has('shader-f16'));
  const r = await result(page, 2);
  if (f16) {
    // An adapter with f16 shaders: the page samples on it in f16 storage.
    assert.ok(r.gpu && /f16 storage/.test(r.device), r.device);
  } else {
    assert.equal(r.gpu, false, `expected the CPU path, got ${r.device}`);
    assert.match(await page.textContent('#device'), /does not offer f16 shaders/);
    const d = maxDiff(r.samples, await native(2));
    assert.ok(d <= CPU_TOL, `CPU path after the refusal: max |page − native| = ${d}`);
  }
  assert.deepEqual(errors, [], `console errors: ${errors.join('; ')}`);
  await page.close();
});

test('without WebGPU the page says so and falls back to the wasm CPU backend', { timeout: 600_000 }, async () => {
  const { page, errors } = await openPage(`model=${MODEL}&n=${N}&seed=${SEED}&k=2&gpu=off`);
  const r = await result(page, 2);
  assert.equal(r.gpu, false);
  assert.match(await page.textContent('#device'), /CPU backend compiled to wasm/);
  assert.match(await page.textContent('#status'), /CPU fallback/);
  const d = maxDiff(r.samples, await native(2));
  assert.ok(d <= CPU_TOL, `CPU fallback: max |page − native| = ${d}`);
  assert.deepEqual(errors, [], `console errors: ${errors.join('; ')}`);
  await page.close();
});

test('the picker offers the shipped models and, on a software adapter, auto draws the native digits on the wasm path', { timeout: 600_000 }, async () => {
  // No ?model=: the page reads web/models.json and starts on its first entry, the digits. No
  // ?device=: auto passes SwiftShader over for the wasm CPU path, as --device auto does natively.
  const n = 4;
  const { page, errors } = await openPage(`n=${n}&seed=${SEED}&k=2`);
  const r = await result(page, 2);
  assert.equal(r.gpu, false, `auto should prefer the wasm path over SwiftShader, got ${r.device}`);
  assert.match(await page.textContent('#device'), /software renderer/);
  assert.equal(await page.inputValue('#device-choice'), 'auto');
  const names = await page.$$eval('#model option', (os) => os.map((o) => o.value));
  assert.deepEqual(names, [DIGITS, MODEL]);
  assert.equal(r.samples.length, n * 28 * 28, 'four 28×28 digits');
  const d = maxDiff(r.samples, await native(2, DIGITS, n));
  assert.ok(d <= CPU_TOL, `MNIST K = 2: max |page − native| = ${d}`);
  assert.deepEqual(errors, [], `console errors: ${errors.join('; ')}`);
  await page.close();
});

test('a GPU device lost mid-run hands over to the CPU fallback and says so', { timeout: 600_000 }, async () => {
  const page = await browser.newPage();
  // Keep a handle on the device the wasm module asks for, to destroy it as a driver reset would.
  await page.addInitScript(() => {
    const request = GPUAdapter.prototype.requestDevice;
    GPUAdapter.prototype.requestDevice = async function (...args) {
      const device = await request.apply(this, args);
      window.__flowmapDevice = device;
      return device;
    };
  });
  await page.goto(`${base}/index.html?model=${MODEL}&n=${N}&seed=${SEED}&k=1&device=gpu`);
  const first = await result(page, 1);
  assert.ok(first.gpu, `expected WebGPU, got ${first.device}`);
  // Ask for K = 2 and destroy the device while that run is in flight.
  await page.evaluate(() => {
    const s = document.getElementById('steps');
    s.value = '2';
    s.dispatchEvent(new Event('input'));
    setTimeout(() => window.__flowmapDevice.destroy(), 0);
  });
  const r = await result(page, 2);
  assert.equal(r.gpu, false);
  assert.equal(r.fellBack, true);
  assert.match(await page.textContent('#status'), /GPU was lost: continuing on the CPU fallback/);
  assert.match(await page.textContent('#device'), /moved to the CPU/);
  const d = maxDiff(r.samples, await native(2));
  assert.ok(d <= CPU_TOL, `after the loss: max |page − native| = ${d}`);
  await page.close();
});

test('a missing or wrong-architecture model gets a clear message and the previous model stays usable', { timeout: 600_000 }, async () => {
  const { page } = await openPage(`model=${MODEL}&n=${N}&seed=${SEED}&k=1&device=cpu`);
  await result(page, 1);
  const pick = (url) => page.evaluate((url) => {
    const s = document.getElementById('model');
    s.add(new Option(url, url));
    s.value = url;
    s.dispatchEvent(new Event('change'));
  }, url);
  const error = () => page.waitForFunction(() => document.getElementById('status').className === 'error', null, { timeout: 60_000 });
  await pick('weights/no-such-model.safetensors');
  await error();
  assert.match(await page.textContent('#status'), /HTTP 404.*Still showing the previous model/);
  await pick('__test/wrong-arch.safetensors');
  await error();
  assert.match(await page.textContent('#status'), /not a usable flowmap model.*shape.*Still showing the previous model/);
  assert.equal(await page.inputValue('#model'), MODEL);
  // The previous model still samples.
  await page.locator('#steps').fill('3');
  const r = await result(page, 3);
  const d = maxDiff(r.samples, await native(3));
  assert.ok(d <= CPU_TOL, `previous model after failed loads: max |page − native| = ${d}`);
  await page.close();
});

test('an absurd sample count in the URL is clamped, not run', { timeout: 600_000 }, async () => {
  const { page, errors } = await openPage(`model=${MODEL}&n=1000000000&seed=${SEED}&k=1&device=cpu`);
  const r = await result(page, 1);
  assert.equal(r.n, 100000);
  assert.equal(r.samples.length, 100000 * 2);
  assert.match(await page.textContent('#status'), /clamped to 100000/);
  assert.deepEqual(errors, [], `console errors: ${errors.join('; ')}`);
  await page.close();
});

test('the API example page draws the native digits', { timeout: 600_000 }, async () => {
  const { page, errors } = await openPage(`device=cpu&k=2&seed=${SEED}`, 'web/example.html');
  await page.waitForFunction(() => window.exampleRun, null, { timeout: 240_000 });
  const r = await page.evaluate(() => window.exampleRun);
  assert.equal(r.gpu, false);
  const d = maxDiff(r.samples, await native(2, DIGITS, 16));
  assert.ok(d <= CPU_TOL, `example page: max |page − native| = ${d}`);
  assert.match(await page.textContent('#info'), /16 samples in .* ms on CPU/);
  assert.deepEqual(errors, [], `console errors: ${errors.join('; ')}`);
  await page.close();
});

test('a corrupt model file gets a clear message', { timeout: 120_000 }, async () => {
  const { page } = await openPage('model=web/app.js');
  await page.waitForFunction(() => document.getElementById('status').className === 'error', null, { timeout: 60_000 });
  assert.match(await page.textContent('#status'), /is not a usable flowmap model/);
  await page.close();
});
