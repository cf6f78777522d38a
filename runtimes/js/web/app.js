// The sampling page: opens the bundle at ?bundle= (default /bundle/, as `dualrate serve` serves it),
// verifies it in the browser (sha256 of every file), samples a class grid on ONNX Runtime Web (WASM)
// with the spec's seed rule, draws it like `dualrate sample`'s PNG grid, and reports per-graph
// timings. The sampled values are exposed as window.dualrateResult for tests.

import * as ort from 'onnxruntime-web';

import { classInput, createRunner, openBundleUrl, parseSeed, sampleBundle } from '../src/web.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const bundleUrl = params.get('bundle') ?? '/bundle/';
let bundle = null;
let runner = null;

function setState(state, text) {
  document.body.dataset.state = state;
  if (text !== undefined) $('status-text').textContent = text;
}

function showError(err) {
  const msg = err?.message ?? String(err);
  $('error').hidden = false;
  $('error').textContent = `${err?.name ?? 'Error'}: ${msg}`;
  setState('error', 'failed');
  window.dualrateResult = { done: true, error: msg, errorName: err?.name ?? 'Error' };
  $('run').disabled = !runner;
}

/** Python's to_uint8: clip to the data range, map to [0, 255], round half up. */
function toUint8(v, [lo, hi]) {
  const x = (Math.min(Math.max(v, lo), hi) - lo) / (hi - lo);
  return Math.floor(x * 255 + 0.5);
}

/** Python's grid(): rows of tiles, `scale`x nearest upscaling, 2 px white padding. */
function drawGrid(images, rows, dataRange) {
  const [n, c, h, w] = images.dims;
  const size = w;
  const scale = Math.max(1, Math.ceil(48 / size));
  const pad = 2;
  const cols = Math.ceil(n / rows);
  const tileH = h * scale + pad;
  const tileW = w * scale + pad;
  const H = rows * tileH + pad;
  const W = cols * tileW + pad;
  const canvas = $('grid');
  canvas.width = W;
  canvas.height = H;
  canvas.style.width = `${W}px`;
  canvas.style.height = `${H}px`;
  const img = new ImageData(W, H);
  img.data.fill(255);
  const ch = Math.min(c, 3);
  for (let k = 0; k < n; k++) {
    const r = Math.floor(k / cols);
    const q = k % cols;
    for (let y = 0; y < h * scale; y++) {
      for (let x = 0; x < w * scale; x++) {
        const o = ((pad + r * tileH + y) * W + (pad + q * tileW + x)) * 4;
        const sy = Math.floor(y / scale);
        const sx = Math.floor(x / scale);
        for (let j = 0; j < 3; j++) {
          const cc = ch === 1 ? 0 : j;
          img.data[o + j] = toUint8(images.data[((k * c + cc) * h + sy) * w + sx], dataRange);
        }
        img.data[o + 3] = 255;
      }
    }
  }
  canvas.getContext('2d').putImageData(img, 0, 0);
  snapToPixels(canvas);
  return { width: W, height: H, scale };
}

/** Shift the canvas onto whole device pixels, so the nearest-neighbour grid is not resampled. */
function snapToPixels(canvas) {
  canvas.style.transform = '';
  const r = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const dx = (Math.round((r.x + scrollX) * dpr) - (r.x + scrollX) * dpr) / dpr;
  const dy = (Math.round((r.y + scrollY) * dpr) - (r.y + scrollY) * dpr) / dpr;
  if (dx || dy) canvas.style.transform = `translate(${dx}px, ${dy}px)`;
}

function showTimings(timing, wallMs) {
  const body = $('timings').tBodies[0];
  body.replaceChildren();
  for (const [g, s] of Object.entries(timing.graphs)) {
    const tr = body.insertRow();
    tr.dataset.graph = g;
    for (const v of [g, s.calls, s.rows, s.ms.toFixed(1), s.calls ? (s.ms / s.calls).toFixed(2) : '–']) tr.insertCell().textContent = v;
  }
  const foot = $('timings').tFoot;
  foot.replaceChildren();
  for (const [label, v] of [['loop overhead (JS)', timing.loopOverheadMs], ['sampler total', timing.totalMs], ['wall (incl. page updates)', wallMs]]) {
    const tr = foot.insertRow();
    tr.insertCell().textContent = label;
    const td = tr.insertCell();
    td.colSpan = 4;
    td.textContent = `${v.toFixed(1)} ms`;
  }
}

function parseClasses(text, numClasses) {
  if (!text.trim()) return Array.from({ length: Math.min(numClasses, 10) }, (_, k) => k);
  return text.split(',').filter((s) => s.trim()).map((s) => {
    if (!/^\s*\d+\s*$/.test(s)) throw new Error(`classes: ${JSON.stringify(text)} is not a comma-separated list of class ids`);
    return Number(s);
  });
}

/** Yield to the browser so the progress bar paints (a message, not setTimeout: no 4 ms clamp). */
function yieldToPage() {
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => resolve();
    ch.port2.postMessage(null);
  });
}

async function run() {
  $('error').hidden = true;
  $('run').disabled = true;
  window.dualrateResult = { done: false };
  try {
    const spec = bundle.spec;
    const cls = classInput(spec);
    const seed = parseSeed($('seed').value.trim() || '0', 'seed');
    const n = Number($('n').value);
    const classes = cls ? parseClasses($('classes').value, cls.num_classes) : undefined;
    const steps = spec.sampler.num_steps;
    const rows = classes ? classes.length : 1;
    setState('sampling', `sampling ${rows * n} image(s), ${steps} steps…`);
    $('progress').value = 0;
    const t0 = performance.now();
    let lastPaint = 0;
    const out = await sampleBundle(ort, bundle, {
      runner, classes, n, seed,
      onStep: async (i) => {
        $('progress').value = (i + 1) / steps;
        $('status-text').textContent = `step ${i + 1} / ${steps}`;
        if (performance.now() - lastPaint > 30 || i + 1 === steps) {
          lastPaint = performance.now();
          await yieldToPage();
        }
      },
    });
    const wallMs = performance.now() - t0;
    const dataRange = out.decoded ? spec.model.decoder.data_range : spec.model.data_range;
    const grid = drawGrid(out.images, rows, dataRange);
    showTimings(out.timing, wallMs);
    $('grid-caption').textContent = `${rows} row(s) x ${n}, seed ${seed}${classes ? `, classes ${classes.join(',')}` : ''}; `
      + `encoder ran at steps [${out.result.refreshLog.cond.join(', ')}]`;
    setState('done', `done: ${rows * n} image(s) in ${(wallMs / 1000).toFixed(2)} s`);
    window.dualrateResult = {
      done: true, seed: String(seed), classes, n, rows, dims: out.images.dims, data: Array.from(out.images.data),
      decoded: out.decoded, timing: out.timing, wallMs, refreshLog: out.result.refreshLog, grid, dataRange,
      threads: ort.env.wasm.numThreads, crossOriginIsolated: globalThis.crossOriginIsolated,
    };
  } catch (err) {
    showError(err);
  } finally {
    $('run').disabled = !runner;
  }
}

async function start() {
  window.dualrateResult = { done: false };
  if (params.has('seed')) $('seed').value = params.get('seed');
  if (params.has('n')) $('n').value = params.get('n');
  if (params.has('classes')) $('classes').value = params.get('classes');
  try {
    setState('loading', 'verifying the bundle (sha256 of every file)…');
    const t0 = performance.now();
    bundle = await openBundleUrl(bundleUrl);
    const m = bundle.spec.model;
    const s = bundle.spec.sampler;
    $('bundle-info').textContent = `${bundleUrl}: ${Object.keys(bundle.manifest.files).length} files verified (sha256) in `
      + `${(performance.now() - t0).toFixed(0)} ms; spec ${bundle.spec.spec_version}; graphs ${Object.keys(bundle.graphs).join(', ')}; `
      + `sample [${m.sample_shape}] (${m.prediction}); ${s.type}, ${s.num_steps} steps, encoder at `
      + `${bundle.spec.dual_rate.resolved_refresh_steps.length} of them; guidance ${bundle.spec.guidance.scale}`;
    if (!classInput(bundle.spec)) $('classes').disabled = true;
    setState('loading', 'creating ONNX Runtime Web sessions…');
    runner = await createRunner(ort, bundle);
    $('run').disabled = false;
    setState('ready', 'ready');
    if (params.get('autorun') !== '0') await run();
  } catch (err) {
    showError(err);
  }
}

$('controls').addEventListener('submit', (ev) => {
  ev.preventDefault();
  if (runner) run();
});
start();
