// End-to-end test of the demo page in Debian's headless Chromium (WebGPU on SwiftShader): the page
// loads, the slider resamples, the samples equal the native sampler's for the same weights, seed
// and K, the CPU fallback is announced when WebGPU is off, and no console error occurs.
// Run: node --test web/   (after web/build.sh; needs target/release/flowmap or builds it).
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

const types = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.json': 'application/json' };

before(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'flowmap-e2e-'));
  server = createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^\/+/, '');
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

/// The native sampler's output for the same weights, seed and K, read from its .npy.
function native(k, model = MODEL, n = N) {
  const out = join(scratch, `k${k}-${n}.npy`);
  const bin = join(root, 'target/release/flowmap');
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

async function openPage(query) {
  const page = await browser.newPage();
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${base}/index.html?${query}`);
  return { page, errors };
}

async function result(page, k) {
  await page.waitForFunction((k) => window.flowmapResult?.k === k, k, { timeout: 240_000 });
  return page.evaluate(() => window.flowmapResult);
}

test('WebGPU page matches the native sampler and resamples when the slider moves', { timeout: 600_000 }, async () => {
  const { page, errors } = await openPage(`model=${MODEL}&n=${N}&seed=${SEED}&k=2`);
  const first = await result(page, 2);
  assert.ok(first.gpu, `expected WebGPU, got ${first.device}`);
  const d2 = maxDiff(first.samples, await native(2));
  assert.ok(d2 <= GPU_TOL, `K = 2: max |page − native| = ${d2}`);
  // Move the slider to K = 3: the page resamples from the same noise.
  await page.locator('#steps').fill('3');
  const moved = await result(page, 3);
  const d3 = maxDiff(moved.samples, await native(3));
  assert.ok(d3 <= GPU_TOL, `K = 3: max |page − native| = ${d3}`);
  assert.match(await page.textContent('#device'), /Adapter: WebGPU/);
  assert.deepEqual(errors, [], `console errors: ${errors.join('; ')}`);
  await page.close();
});

test('without WebGPU the page says so and falls back to the wasm CPU backend', { timeout: 600_000 }, async () => {
  const { page, errors } = await openPage(`model=${MODEL}&n=${N}&seed=${SEED}&k=2&gpu=off`);
  const r = await result(page, 2);
  assert.equal(r.gpu, false);
  assert.match(await page.textContent('#device'), /WebGPU unavailable.*CPU backend compiled to wasm/);
  assert.match(await page.textContent('#status'), /CPU fallback/);
  const d = maxDiff(r.samples, await native(2));
  assert.ok(d <= CPU_TOL, `CPU fallback: max |page − native| = ${d}`);
  assert.deepEqual(errors, [], `console errors: ${errors.join('; ')}`);
  await page.close();
});

test('the picker offers the shipped models and the default MNIST model draws the native digits', { timeout: 600_000 }, async () => {
  // No ?model=: the page reads web/models.json and starts on its first entry, the digits.
  const n = 4;
  const { page, errors } = await openPage(`n=${n}&seed=${SEED}&k=2`);
  const r = await result(page, 2);
  assert.ok(r.gpu, `expected WebGPU, got ${r.device}`);
  const names = await page.$$eval('#model option', (os) => os.map((o) => o.value));
  assert.deepEqual(names, [DIGITS, MODEL]);
  assert.equal(r.samples.length, n * 28 * 28, 'four 28×28 digits');
  const d = maxDiff(r.samples, await native(2, DIGITS, n));
  // Pixels live in [0, 1]; a deeper network than the MLP, so rounding differences add up more.
  assert.ok(d <= GPU_TOL, `MNIST K = 2: max |page − native| = ${d}`);
  assert.deepEqual(errors, [], `console errors: ${errors.join('; ')}`);
  await page.close();
});

test('a corrupt model file gets a clear message', { timeout: 120_000 }, async () => {
  const { page } = await openPage('model=web/app.js');
  await page.waitForFunction(() => document.getElementById('status').className === 'error', null, { timeout: 60_000 });
  assert.match(await page.textContent('#status'), /is not a usable flowmap model/);
  await page.close();
});
