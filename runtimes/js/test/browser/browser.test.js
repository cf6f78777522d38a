// The runtime in headless Chromium (Debian's chromium via playwright-core), loaded as a page loads it:
// ES modules and onnxruntime-web (WASM) from node_modules, served on 127.0.0.1 with COOP/COEP.
// Philox known answers, the `dualrate golden` replay, the live digits bundle against Python's samples,
// and bad input (tampered / future-version / missing-graph bundles over HTTP, wrong-shape conditioning).
import assert from 'node:assert/strict';
import test from 'node:test';

import { VARIANTS, summarize } from '../../src/conformance.js';
import { NO_CHROMIUM, chromiumPath, launchChromium } from '../helpers/browser.js';
import { PSNR_GATE_DB, loadFixtures, psnr, readNpyFile, recordResult } from '../helpers/fixtures.js';
import { startServer } from '../helpers/server.js';
import { PHILOX_KAT } from '../kat.js';

const fx = loadFixtures();
const skip = process.env.DUALRATE_JS_SKIP_BROWSER === '1' ? 'DUALRATE_JS_SKIP_BROWSER=1' : false;
let server;
let chrome;
let page;

test.before(async () => {
  if (skip) return;
  if (!chromiumPath()) throw new Error(NO_CHROMIUM);
  server = await startServer({ fixtures: fx.dir });
  chrome = await launchChromium();
  page = await chrome.newPage();
  await page.goto(`${server.url}/test/browser/harness.html`);
  await page.waitForFunction(() => document.body?.dataset.ready === '1', null, { timeout: 30000 });
});

test.after(async () => {
  await chrome?.close();
  await server?.close();
});

test('the page is cross-origin isolated and WebCrypto is available', { skip }, async () => {
  const env = await page.evaluate(() => ({ coi: globalThis.crossOriginIsolated, subtle: !!globalThis.crypto?.subtle, ua: navigator.userAgent }));
  assert.ok(env.coi, 'COOP/COEP headers give crossOriginIsolated (WASM threads possible)');
  assert.ok(env.subtle);
});

test('Philox4x32-10 Random123 known answers in Chromium', { skip }, async () => {
  const got = await page.evaluate((kats) => kats.map((k) => Array.from(window.harness.dr.philox4x32_10(...k.ctr, ...k.key))), PHILOX_KAT);
  assert.deepEqual(got, PHILOX_KAT.map((k) => k.out));
});

const goldenReports = [];
for (const pred of fx.golden) {
  test(`golden ${pred}/* replays in Chromium`, { skip }, async (t) => {
    for (const variant of VARIANTS) {
      const report = await page.evaluate(async ([url, name]) => {
        const { dr, conformance } = window.harness;
        return conformance.replayVariant(dr.urlSource(url), name);
      }, [`${server.url}/fixtures/golden/${pred}/${variant}/`, `${pred}/${variant}`]);
      goldenReports.push(report);
      const bad = report.checks.filter((c) => !c.pass);
      for (const c of bad) t.diagnostic(`${report.variant} ${c.check}: ${c.mismatches}/${c.count} off, worst ${c.worst} x tol`);
      assert.ok(report.pass, `${report.variant}: ${bad.map((c) => c.check).join('; ')}`);
    }
  });
}

test('golden summary (Chromium)', { skip }, (t) => {
  assert.equal(goldenReports.length, fx.golden.length * VARIANTS.length);
  const s = summarize(goldenReports);
  recordResult('golden-browser', { variants: goldenReports.length, ...s });
  t.diagnostic(`exact ${s.exact.count} values (${s.exact.mismatches} off); bitwise ${s.bitwise.count} float32 values `
    + `(${s.bitwise.mismatches} off); tolerance ${s.tolerance.count} values, worst ${s.tolerance.worst} x tol, `
    + `max abs ${s.tolerance.maxAbs}, ${s.tolerance.bitwiseEqual} of them bit-identical`);
  assert.equal(s.exact.mismatches + s.bitwise.mismatches + s.tolerance.mismatches, 0);
});

const live = [];
for (const c of fx.cases) {
  test(`live (Chromium, onnxruntime-web WASM): ${c.name} matches Python at >= ${PSNR_GATE_DB} dB`, { skip }, async (t) => {
    const out = await page.evaluate(async ([base, c]) => {
      const { dr, ort } = window.harness;
      window.cache ??= {};
      if (!window.cache[c.bundle]) {
        const bundle = await dr.openBundleUrl(`${base}/fixtures/${c.bundle}/`);
        window.cache[c.bundle] = { bundle, runner: await dr.createRunner(ort, bundle) };
      }
      const { bundle, runner } = window.cache[c.bundle];
      let conditioning;
      if (c.conditioning_file) {
        // --conditioning FILE.npz: every row repeated n times, as the CLIs do
        const bytes = new Uint8Array(await (await fetch(`${base}/fixtures/${c.conditioning_file}`)).arrayBuffer());
        const arrays = await dr.parseNpz(bytes, c.conditioning_file);
        conditioning = Object.fromEntries(Object.entries(arrays).map(([k, a]) => [k, {
          data: a.data.constructor.from({ length: a.data.length * c.n }, (_, j) => a.data[Math.floor(j / c.n)]),
          dims: [a.dims[0] * c.n],
        }]));
      }
      const t0 = performance.now();
      const res = await dr.sampleBundle(ort, bundle, {
        runner, n: c.n, seed: c.seed, classes: c.conditioning_file ? undefined : c.classes, conditioning,
      });
      return { dims: res.images.dims, data: Array.from(res.images.data), timing: res.timing, ms: performance.now() - t0, threads: ort.env.wasm.numThreads };
    }, [server.url, c]);
    const ref = readNpyFile(fx.file(c.ref));
    assert.deepEqual(out.dims, ref.dims);
    const m = psnr(out.data, ref.data);
    const bitwise = out.data.every((v, k) => Object.is(v, ref.data[k]));
    live.push({ case: c.name, psnr_db: m.psnr, max_abs: m.maxAbs, bitwise, ms: out.ms, timing: out.timing, wasm_threads: out.threads });
    t.diagnostic(`${c.name}: PSNR ${m.psnr} dB, max abs ${m.maxAbs}, bit-identical ${bitwise}; ${out.ms.toFixed(0)} ms `
      + `(encoder ${out.timing.graphs.encoder.calls} calls ${out.timing.graphs.encoder.ms.toFixed(0)} ms, denoiser `
      + `${out.timing.graphs.denoiser.calls} calls ${out.timing.graphs.denoiser.ms.toFixed(0)} ms, loop overhead `
      + `${out.timing.loopOverheadMs.toFixed(0)} ms; ${out.threads} WASM thread(s))`);
    assert.ok(m.psnr >= PSNR_GATE_DB, `PSNR ${m.psnr} dB < ${PSNR_GATE_DB} dB`);
  });
}

test('live results recorded', { skip }, () => {
  recordResult('live-browser', live);
  assert.equal(live.length, fx.cases.length);
});

const TAMPERED = [
  ['hash', /bundle .*\/tampered\/hash\/: denoiser\.onnx has sha256 [0-9a-f]{12}…, the manifest says [0-9a-f]{12}…; the file was changed after export/],
  ['version', /spec\.json: spec_version 3\.0\.0 has major version 3; this runtime reads 2\.x/],
  ['missing-graph', /file\(s\) \["encoder\.onnx"\] listed in the manifest are missing/],
  ['unlisted-graph', /the manifest lists no encoder\.onnx, which the spec's model needs/],
];

test('bad bundles over HTTP are refused in Chromium with the file named; no session is created', { skip }, async () => {
  for (const [name, re] of TAMPERED) {
    const res = await page.evaluate(async (url) => {
      const { dr, ort } = window.harness;
      let created = 0;
      const spyOrt = { ...ort, InferenceSession: { create: async (...a) => { created += 1; return ort.InferenceSession.create(...a); } } };
      try {
        const bundle = await dr.openBundleUrl(url);
        await dr.createRunner(spyOrt, bundle);
        return { ok: true, created };
      } catch (err) {
        return { ok: false, name: err.name, message: err.message, created };
      }
    }, `${server.url}/tampered/${name}/`);
    assert.equal(res.ok, false, `${name} was accepted`);
    assert.equal(res.name, 'BundleError');
    assert.match(res.message, re);
    assert.equal(res.created, 0, 'no ONNX Runtime session was created');
  }
});

test('conditioning of the wrong shape is refused in Chromium, naming the input; no graph runs', { skip }, async () => {
  const res = await page.evaluate(async (base) => {
    const { dr } = window.harness;
    const calls = [];
    const no = (g) => async () => { calls.push(g); throw new Error(`${g} ran`); };
    const runner = { encode: no('encoder'), denoise: no('denoiser') };
    const { bundle } = window.cache?.digits ?? { bundle: await dr.openBundleUrl(`${base}/fixtures/digits/`) };
    const errors = [];
    for (const conditioning of [{ class_id: { data: new BigInt64Array(4), dims: [2, 2] } }, [3, 10]]) {
      try {
        await dr.sample(runner, bundle.spec, { conditioning });
        errors.push(null);
      } catch (err) {
        errors.push(`${err.name}: ${err.message}`);
      }
    }
    const { spec, nulls } = await dr.openSpecFolder(dr.urlSource(`${base}/fixtures/golden/v/text_guided/`));
    try {
      await dr.sample(runner, spec, { nulls, conditioning: { text: { data: new Float32Array(80), dims: [2, 5, 8] }, text_mask: { data: new BigInt64Array(12), dims: [2, 6] } } });
      errors.push(null);
    } catch (err) {
      errors.push(`${err.name}: ${err.message}`);
    }
    return { errors, calls };
  }, server.url);
  assert.deepEqual(res.errors, [
    "BadInputError: conditioning 'class_id' has shape [2, 2]; expected [batch]",
    "BadInputError: class id 10 is out of range for 'class_id'; this model has classes 0..9 (id 10 is the null class used for guidance)",
    "BadInputError: conditioning 'text' has shape [2, 5, 8]; expected [batch, 6, 8]",
  ]);
  assert.deepEqual(res.calls, []);
});

test('the sampling page shows a tampered bundle\'s error (file named) and samples nothing', { skip }, async () => {
  const p = await chrome.newPage();
  try {
    await p.goto(`${server.url}/web/index.html?bundle=/tampered/hash/`);
    await p.waitForFunction(() => document.body.dataset.state === 'error', null, { timeout: 60000 });
    const text = await p.textContent('#error');
    assert.match(text, /BundleError: bundle \/tampered\/hash\/: denoiser\.onnx has sha256/);
    const result = await p.evaluate(() => window.dualrateResult);
    assert.equal(result.data, undefined);
    assert.equal(await p.isDisabled('#run'), true);
  } finally {
    await p.close();
  }
});
