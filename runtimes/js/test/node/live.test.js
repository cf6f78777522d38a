// Live: the shipped digits bundle sampled by `dualrate-js sample` (onnxruntime-node) equals Python's
// `dualrate sample --target onnxruntime` of the same seed and classes at final-sample PSNR >= 60 dB,
// guidance on and off, several seeds and classes, a seed above 2^53, and --conditioning FILE.npz.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import { promisify } from 'node:util';

import * as ort from 'onnxruntime-node';

import { HostTensor, OrtRunner, openBundle, sample, sampleBundle } from '../../src/node.js';
import { PSNR_GATE_DB, ROOT, loadFixtures, psnr, readNpyFile, recordResult } from '../helpers/fixtures.js';

const run = promisify(execFile);
const fx = loadFixtures();
const tmp = mkdtempSync(path.join(os.tmpdir(), 'dualrate-js-live-'));
const CLI = path.join(ROOT, 'bin', 'dualrate-js.js');
const results = [];

test.after(() => {
  rmSync(tmp, { recursive: true, force: true });
  recordResult('live-node', results);
});

for (const c of fx.cases) {
  test(`live (Node CLI): ${c.name} matches Python at >= ${PSNR_GATE_DB} dB`, async (t) => {
    const out = path.join(tmp, `${c.name}.npy`);
    const args = [CLI, 'sample', fx.bundle(c.bundle), '-n', String(c.n), '--seed', c.seed, '-o', out];
    if (c.conditioning_file) args.push('--conditioning', fx.file(c.conditioning_file));
    else args.push('--class', c.classes.join(','));
    const t0 = performance.now();
    const { stdout } = await run(process.execPath, args);
    const seconds = (performance.now() - t0) / 1000;
    const got = readNpyFile(out);
    const ref = readNpyFile(fx.file(c.ref));
    assert.deepEqual(got.dims, ref.dims);
    assert.equal(got.type, 'float32');
    const m = psnr(got.data, ref.data);
    const bitwise = Buffer.compare(Buffer.from(got.data.buffer), Buffer.from(ref.data.buffer)) === 0;
    results.push({ case: c.name, dims: got.dims, psnr_db: m.psnr, max_abs: m.maxAbs, bitwise, js_seconds: seconds, python_seconds: c.python_seconds, cli: stdout.trim() });
    t.diagnostic(`${c.name}: PSNR ${m.psnr} dB, max abs ${m.maxAbs}, bit-identical ${bitwise}; ${stdout.trim()}`);
    assert.ok(m.psnr >= PSNR_GATE_DB, `PSNR ${m.psnr} dB < ${PSNR_GATE_DB} dB`);
  });
}

test('features stay ort tensors between steps (the encoder\'s outputs are fed to the denoiser as they are)', async () => {
  const bundle = await openBundle(fx.bundle('digits'));
  const runner = await OrtRunner.create(ort, bundle);
  const cached = new Set();
  let reused = 0;
  const spy = {
    encode: async (feeds) => {
      const f = await runner.encode(feeds);
      for (const v of Object.values(f)) {
        assert.ok(v instanceof ort.Tensor, 'encoder outputs are ort tensors');
        cached.add(v);
      }
      return f;
    },
    denoise: async (feeds) => {
      for (const tio of bundle.spec.model.denoiser.inputs) {
        if (tio.feeds.startsWith('feature:')) {
          assert.ok(cached.has(feeds[tio.name]), `${tio.name} is the cached ort tensor itself`);
          reused += 1;
        } else assert.ok(feeds[tio.name] instanceof HostTensor);
      }
      return runner.denoise(feeds);
    },
  };
  const res = await sample(spy, bundle.spec, { conditioning: [3], seed: 1 });
  await runner.release();
  assert.equal(cached.size, 8 * 3, '8 encoder calls (one 2B batch: guidance at every step), 3 features each');
  assert.equal(reused, 64 * 3);
  assert.deepEqual(res.refreshLog.cond, [0, 8, 16, 24, 32, 40, 48, 56]);
  assert.deepEqual(res.refreshLog.uncond, [0, 8, 16, 24, 32, 40, 48, 56]);
});

test('timings: per-graph calls and the JS loop overhead (batch 4 guided: 8 rows per call, 64 steps; medians of 3)', async (t) => {
  // the configuration of `dualrate bench --batch 4`, whose "loop overhead" is the same quantity for
  // Python: the share of sampler wall time not spent inside graph calls
  const bundle = await openBundle(fx.bundle('digits'));
  const runner = await OrtRunner.create(ort, bundle);
  await sampleBundle(bundle, { runner, classes: [0, 1, 2, 3], seed: 0 });       // warm-up
  const runs = [];
  for (let r = 0; r < 3; r++) runs.push((await sampleBundle(bundle, { runner, classes: [0, 1, 2, 3], seed: r })).timing);
  await runner.release();
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  for (const timing of runs) {
    assert.equal(timing.graphs.encoder.calls, 8);
    assert.equal(timing.graphs.denoiser.calls, 64);
    assert.equal(timing.graphs.encoder.rows, 8 * 8);
  }
  const share = median(runs.map((x) => x.loopOverheadMs / x.totalMs));
  const perStep = median(runs.map((x) => x.loopOverheadMs / 64));
  const wall = median(runs.map((x) => x.totalMs));
  const enc = median(runs.map((x) => x.graphs.encoder.ms / x.graphs.encoder.calls));
  const den = median(runs.map((x) => x.graphs.denoiser.ms / x.graphs.denoiser.calls));
  recordResult('timing-node', { runs, loop_overhead_share: share, loop_overhead_ms_per_step: perStep, wall_ms: wall, encoder_ms_per_call: enc, denoiser_ms_per_call: den });
  t.diagnostic(`batch 4 guided (8 rows/call): sampler ${wall.toFixed(0)} ms, encoder ${enc.toFixed(1)} ms/call x 8, denoiser `
    + `${den.toFixed(1)} ms/call x 64, loop overhead ${(100 * share).toFixed(1)}% of wall (${perStep.toFixed(2)} ms/step)`);
});
