// The sampling page as `dualrate serve BUNDLE` serves it, in headless Chromium: it verifies the digits
// bundle in the browser, samples the class grid (seed 0, classes 0..9) on onnxruntime-web with
// progress and per-graph timings. Checked by a screenshot (the grid canvas, decoded, equals Python's
// sample drawn the way `dualrate sample` draws its PNG) and by reading the sampled values back
// (PSNR against Python's `dualrate sample`).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import path from 'node:path';
import test from 'node:test';
import { mkdirSync, writeFileSync } from 'node:fs';

import { NO_CHROMIUM, chromiumPath, launchChromium } from '../helpers/browser.js';
import { PSNR_GATE_DB, REPO, loadFixtures, psnr, python, readNpyFile, recordResult } from '../helpers/fixtures.js';
import { decodePng } from '../helpers/png.js';

const fx = loadFixtures();
const skip = process.env.DUALRATE_JS_SKIP_BROWSER === '1' ? 'DUALRATE_JS_SKIP_BROWSER=1' : false;
const outDir = path.join(fx.dir, 'results');

/** Start `dualrate serve BUNDLE --port 0`; resolves with {url, proc} once it prints its address. */
function serve(bundle) {
  const proc = spawn(python(), ['-m', 'dualrate', 'serve', bundle, '--port', '0'], {
    cwd: REPO, env: { ...process.env, PYTHONPATH: REPO }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  proc.stderr.on('data', (d) => {
    stderr += d;
  });
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: proc.stdout });
    lines.on('line', (line) => {
      const m = /at (http:\/\/127\.0\.0\.1:\d+)\//.exec(line);
      if (m) resolve({ url: m[1], proc, stderr: () => stderr });
    });
    proc.on('exit', (code) => reject(new Error(`dualrate serve exited ${code}: ${stderr.trim()}`)));
  });
}

/** Python's to_uint8 + grid(): the expected pixels [H', W'] of a one-channel grid. */
function expectedGrid(ref, rows, [lo, hi]) {
  const [n, c, h, w] = ref.dims;
  const scale = Math.max(1, Math.ceil(48 / w));
  const pad = 2;
  const cols = Math.ceil(n / rows);
  const W = cols * (w * scale + pad) + pad;
  const H = rows * (h * scale + pad) + pad;
  const px = new Uint8Array(W * H).fill(255);
  for (let k = 0; k < n; k++) {
    const r = Math.floor(k / cols);
    const q = k % cols;
    for (let y = 0; y < h * scale; y++) {
      for (let x = 0; x < w * scale; x++) {
        const v = ref.data[(k * c * h + Math.floor(y / scale)) * w + Math.floor(x / scale)];
        const u = (Math.min(Math.max(v, lo), hi) - lo) / (hi - lo);
        px[(pad + r * (h * scale + pad) + y) * W + pad + q * (w * scale + pad) + x] = Math.floor(u * 255 + 0.5);
      }
    }
  }
  return { W, H, px };
}

test('`dualrate serve` page: class grid with progress and timings, screenshot and values match Python', { skip, timeout: 240000 }, async (t) => {
  if (!chromiumPath()) throw new Error(NO_CHROMIUM);
  const server = await serve(fx.bundle('digits'));
  const chrome = await launchChromium();
  try {
    const page = await chrome.newPage();
    const headers = (await page.goto(`${server.url}/?seed=0&n=1`)).headers();
    assert.equal(headers['cross-origin-opener-policy'], 'same-origin');
    assert.equal(headers['cross-origin-embedder-policy'], 'require-corp');
    // progress: the bar advances while sampling
    await page.waitForFunction(() => document.querySelector('#progress').value > 0, null, { timeout: 120000 });
    const seen = await page.evaluate(() => document.querySelector('#progress').value);
    await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), null, { timeout: 180000 });
    const result = await page.evaluate(() => window.dualrateResult);
    assert.equal(result.error, undefined, result.error);
    assert.ok(seen > 0 && (await page.evaluate(() => document.querySelector('#progress').value)) === 1);
    mkdirSync(outDir, { recursive: true });
    const shot = path.join(outDir, 'page.png');
    await page.screenshot({ path: shot, fullPage: true });
    const gridPng = await page.locator('#grid').screenshot();
    writeFileSync(path.join(outDir, 'page-grid.png'), gridPng);

    // the values read back from the page
    const ref = readNpyFile(fx.file('refs/guided-s0-grid.npy'));
    assert.deepEqual(result.dims, ref.dims);
    const m = psnr(result.data, ref.data);
    // the screenshot of the grid canvas, pixel for pixel against Python's sample drawn as its PNG grid
    const img = decodePng(gridPng);
    const want = expectedGrid(ref, 10, result.dataRange);
    const border = (img.width - want.W) / 2;             // a CSS border would sit inside the element screenshot (0: outline)
    assert.ok(border >= 0 && border === (img.height - want.H) / 2, `screenshot ${img.width}x${img.height} vs grid ${want.W}x${want.H}`);
    let maxDiff = 0;
    let exact = 0;
    for (let y = 0; y < want.H; y++) {
      for (let x = 0; x < want.W; x++) {
        const o = ((y + border) * img.width + x + border) * img.channels;
        const got = img.data[o];
        const d = Math.abs(got - want.px[y * want.W + x]);
        maxDiff = Math.max(maxDiff, d);
        if (d === 0) exact += 1;
        for (let j = 1; j < Math.min(3, img.channels); j++) assert.equal(img.data[o + j], got, 'gray');
      }
    }
    // timings on the page: encoder calls vs denoiser calls
    const rows = await page.$$eval('#timings tbody tr', (trs) => trs.map((tr) => Array.from(tr.cells, (c) => c.textContent)));
    const byGraph = Object.fromEntries(rows.map((r) => [r[0], { calls: Number(r[1]), rows: Number(r[2]), ms: Number(r[3]) }]));
    recordResult('page-browser', {
      psnr_db: m.psnr, max_abs: m.maxAbs, screenshot: shot, grid_pixels: want.px.length, grid_pixels_exact: exact,
      grid_max_level_diff: maxDiff, timings_table: byGraph, timing: result.timing, wall_ms: result.wallMs,
      wasm_threads: result.threads, cross_origin_isolated: result.crossOriginIsolated,
    });
    t.diagnostic(`page: PSNR ${m.psnr} dB vs Python (max abs ${m.maxAbs}); grid screenshot ${want.W}x${want.H}, `
      + `${exact}/${want.px.length} pixels equal Python's grid, max diff ${maxDiff} level(s); encoder ${byGraph.encoder.calls} calls `
      + `${byGraph.encoder.ms} ms, denoiser ${byGraph.denoiser.calls} calls ${byGraph.denoiser.ms} ms; wall ${result.wallMs.toFixed(0)} ms; screenshot ${shot}`);
    assert.ok(m.psnr >= PSNR_GATE_DB, `PSNR ${m.psnr} dB < ${PSNR_GATE_DB} dB`);
    assert.ok(maxDiff <= 1, `screenshot differs from Python's grid by ${maxDiff} levels`);
    assert.ok(exact / want.px.length > 0.999);
    assert.deepEqual([byGraph.encoder.calls, byGraph.denoiser.calls], [8, 64]);
    assert.deepEqual([byGraph.encoder.rows, byGraph.denoiser.rows], [8 * 20, 64 * 20]);
    assert.ok(result.crossOriginIsolated);
    assert.match(await page.textContent('#bundle-info'), /files verified \(sha256\)/);
  } finally {
    await chrome.close();
    server.proc.kill('SIGTERM');
  }
});

test('`dualrate serve` refuses a tampered bundle before serving (exit 2, file named)', { skip }, async () => {
  const { mkdtempSync, cpSync, readFileSync, rmSync } = await import('node:fs');
  const os = await import('node:os');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dualrate-serve-bad-'));
  try {
    cpSync(path.join(fx.dir, 'digits'), dir, { recursive: true, filter: (src) => !src.includes(`${path.sep}targets`) });
    const b = readFileSync(path.join(dir, 'encoder.onnx'));
    b[100] ^= 1;
    writeFileSync(path.join(dir, 'encoder.onnx'), b);
    const err = await serve(dir).then((s) => {
      s.proc.kill('SIGTERM');
      return null;
    }, (e) => e);
    assert.ok(err);
    assert.match(err.message, /exited 2: dualrate serve: error: bundle .*: encoder\.onnx has sha256 [0-9a-f]{12}…, the manifest says/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
