// The wasm CPU benchmark: the demo page's CPU fallback (?gpu=off) in headless Chromium, timing the
// same model, n, K and seed on three builds of the same code:
//   before: the package compiled without simd128, running the reference loops (today's scalar
//           fallback before the fast path existed: the reference loops are that code unchanged);
//   the fast kernels in the scalar package (what the new code does without SIMD);
//   after:  the shipped simd128 package with the fast kernels.
// It prints a Markdown table (best of --runs page loads; the page's own flow-map timing) with
// each row's speed-up over the first.
// Run: web/build.sh && web/build.sh --scalar target/web-scalar && node web/bench.mjs
// Options: --scalar DIR (default target/web-scalar), --n 16, --k 4, --runs 3,
//          --model weights/mnist-f16.safetensors.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { join, extname, normalize } from 'node:path';
import { chromium } from 'playwright-core';

const root = new URL('..', import.meta.url).pathname;
const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []));
const scalarDir = args.scalar ?? 'target/web-scalar';
const n = Number(args.n ?? 16);
const k = Number(args.k ?? 4);
const runs = Number(args.runs ?? 3);
const model = args.model ?? 'weights/mnist-f16.safetensors';

const types = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.json': 'application/json' };
let pkgDir = 'web/pkg';
const server = createServer(async (req, res) => {
  let path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^\/+/, '');
  if (path.startsWith('web/pkg/')) path = join(pkgDir, path.slice('web/pkg/'.length));
  try {
    const body = await readFile(join(root, path || 'index.html'));
    res.writeHead(200, { 'content-type': types[extname(path)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
    res.end(body);
  } catch {
    res.writeHead(404);
    res.end('not found');
  }
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});

const version = browser.version();
const variants = [
  { name: 'scalar wasm, reference loops (before)', pkg: scalarDir, query: '&cpu=reference' },
  { name: 'scalar wasm, fast kernels', pkg: scalarDir, query: '' },
  { name: 'simd128 wasm, fast kernels (after)', pkg: 'web/pkg', query: '' },
];
const rows = [];
try {
  for (const v of variants) {
    pkgDir = v.pkg;
    let best = Infinity;
    for (let r = 0; r < runs; r++) {
      // A fresh context per load, so no cached module from another variant is reused.
      const context = await browser.newContext();
      const page = await context.newPage();
      const errors = [];
      page.on('pageerror', (e) => errors.push(e.message));
      await page.goto(`${base}/index.html?model=${model}&n=${n}&k=${k}&seed=${r + 1}&gpu=off${v.query}`);
      await page.waitForFunction((k) => window.flowmapResult?.k === k || document.getElementById('status').className === 'error', k, { timeout: 600_000 });
      const res = await page.evaluate(() => window.flowmapResult);
      if (!res) throw new Error(`${v.name}: ${await page.textContent('#status')} ${errors.join('; ')}`);
      if (res.gpu) throw new Error(`${v.name}: ran on ${res.device}, not the CPU fallback`);
      best = Math.min(best, res.ms);
      await context.close();
    }
    rows.push({ name: v.name, ms: best });
  }
} finally {
  await browser.close();
  server.close();
}
console.log(`wasm CPU fallback, Chromium ${version} headless, ${model}, n = ${n}, K = ${k}, best of ${runs} page loads\n`);
console.log('| build | ms | samples/s | × before |');
console.log('| --- | ---: | ---: | ---: |');
for (const r of rows) {
  console.log(`| ${r.name} | ${r.ms.toFixed(1)} | ${(n / (r.ms / 1e3)).toFixed(1)} | ${(rows[0].ms / r.ms).toFixed(2)} |`);
}
