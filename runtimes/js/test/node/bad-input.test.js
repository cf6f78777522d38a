// Bad input in Node.js: a tampered file, an unknown spec version, a missing or unlisted graph, an
// extra file, conditioning of the wrong shape. Each is a clear error naming the file or input, raised
// before any graph runs (the CLI exits 2 and writes nothing).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import { promisify } from 'node:util';

import {
  BadInputError, BundleError, openBundle, openSpecFolder, directorySource, sample,
} from '../../src/node.js';
import { MockRunner } from '../../src/conformance.js';
import { ROOT, loadFixtures } from '../helpers/fixtures.js';
import { storedZip } from '../helpers/zip.js';

const run = promisify(execFile);
const fx = loadFixtures();
const tmp = mkdtempSync(path.join(os.tmpdir(), 'dualrate-js-bad-'));
const CLI = path.join(ROOT, 'bin', 'dualrate-js.js');
test.after(() => rmSync(tmp, { recursive: true, force: true }));

/** A fresh copy of the digits bundle (without the Python compile cache) to break. */
function copyBundle(name) {
  const dir = path.join(tmp, name);
  cpSync(fx.bundle('digits'), dir, { recursive: true, filter: (src) => !src.includes(`${path.sep}targets`) });
  return dir;
}

function rehash(dir, rel) {
  const mpath = path.join(dir, 'manifest.json');
  const m = JSON.parse(readFileSync(mpath, 'utf8'));
  m.files[rel] = createHash('sha256').update(readFileSync(path.join(dir, rel))).digest('hex');
  writeFileSync(mpath, JSON.stringify(m, null, 1));
}

/** The CLI on a bad bundle: exit 2, one error line matching `re`, no output file. */
async function cliRefuses(dir, re) {
  const out = path.join(tmp, `${path.basename(dir)}.npy`);
  const err = await run(process.execPath, [CLI, 'sample', dir, '--class', '3', '-o', out]).then(() => null, (e) => e);
  assert.ok(err, 'the CLI failed');
  assert.equal(err.code, 2);
  assert.match(err.stderr, re);
  assert.equal(err.stderr.trim().split('\n').length, 1, 'one line, no stack trace');
  assert.ok(!existsSync(out), 'nothing written');
}

test('tampered graph: the hash mismatch names the file', async () => {
  const dir = copyBundle('tampered');
  const f = path.join(dir, 'denoiser.onnx');
  const b = readFileSync(f);
  b[b.length >> 1] ^= 1;
  writeFileSync(f, b);
  await assert.rejects(openBundle(dir), (e) => e instanceof BundleError && /denoiser\.onnx has sha256 [0-9a-f]{12}…, the manifest says/.test(e.message));
  await cliRefuses(dir, /^dualrate-js sample: error: bundle .*denoiser\.onnx has sha256/);
});

test('unknown spec version (correctly hashed): names spec_version and what this runtime reads', async () => {
  const dir = copyBundle('v3');
  const s = JSON.parse(readFileSync(path.join(dir, 'spec.json'), 'utf8'));
  writeFileSync(path.join(dir, 'spec.json'), JSON.stringify({ ...s, spec_version: '3.0.0' }));
  rehash(dir, 'spec.json');
  await assert.rejects(openBundle(dir), (e) => e instanceof BundleError && /spec\.json: spec_version 3\.0\.0 has major version 3; this runtime reads 2\.x/.test(e.message));
  await cliRefuses(dir, /spec_version 3\.0\.0/);
  writeFileSync(path.join(dir, 'spec.json'), JSON.stringify({ ...s, spec_version: '1.4.0' }));
  rehash(dir, 'spec.json');
  await assert.rejects(openBundle(dir), /spec_version 1\.4\.0 was written by an earlier dualrate/);
});

test('missing graph: listed but absent, or not listed at all: names encoder.onnx', async () => {
  const dir = copyBundle('missing');
  unlinkSync(path.join(dir, 'encoder.onnx'));
  await assert.rejects(openBundle(dir), /file\(s\) \["encoder\.onnx"\] listed in the manifest are missing/);
  await cliRefuses(dir, /encoder\.onnx/);
  const m = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  delete m.files['encoder.onnx'];
  writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(m));
  await assert.rejects(openBundle(dir), /the manifest lists no encoder\.onnx, which the spec's model needs/);
});

test('extra file and a corrupt manifest entry are refused', async () => {
  const dir = copyBundle('extra');
  writeFileSync(path.join(dir, 'notes.txt'), 'hello');
  await assert.rejects(openBundle(dir), /file\(s\) \["notes\.txt"\] are not in the manifest/);
  unlinkSync(path.join(dir, 'notes.txt'));
  const m = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  m.files['../escape.onnx'] = 'ab';
  writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(m));
  await assert.rejects(openBundle(dir), /manifest\.json entry "\.\.\/escape\.onnx"/);
  await assert.rejects(openBundle(path.join(tmp, 'nope')), /bundle .*nope not found/);
});

/** A runner that must never be called. */
function forbiddenRunner() {
  const calls = [];
  const no = (g) => async () => {
    calls.push(g);
    throw new Error(`${g} ran`);
  };
  return { calls, runner: { encode: no('encoder'), denoise: no('denoiser'), decode: no('decoder') } };
}

test('conditioning of the wrong shape names the input and the expected shape; nothing runs', async () => {
  const bundle = await openBundle(fx.bundle('digits'));
  const { calls, runner } = forbiddenRunner();
  await assert.rejects(sample(runner, bundle.spec, { conditioning: { class_id: { data: new BigInt64Array(4), dims: [2, 2] } } }),
    (e) => e instanceof BadInputError && e.message === "conditioning 'class_id' has shape [2, 2]; expected [batch]");
  await assert.rejects(sample(runner, bundle.spec, { conditioning: [3, 12] }), /class id 12 is out of range for 'class_id'; this model has classes 0\.\.9/);
  await assert.rejects(sample(runner, bundle.spec, { conditioning: [1.5] }), /conditioning 'class_id' has non-integer values/);
  await assert.rejects(sample(runner, bundle.spec, { conditioning: { label: [1] } }), /conditioning 'label' is not an input of this model; it takes 'class_id'/);
  await assert.rejects(sample(runner, bundle.spec, {}), /conditioning 'class_id' is missing/);
  // a text-like input [L, D] with its mask (the golden text variant's spec, mock networks)
  const { spec, nulls } = await openSpecFolder(directorySource(path.join(fx.dir, 'golden', 'v', 'text_guided')));
  const text = { data: new Float32Array(2 * 5 * 8), dims: [2, 5, 8] };
  const mask = { data: new BigInt64Array(2 * 6), dims: [2, 6] };
  await assert.rejects(sample(runner, spec, { conditioning: { text, text_mask: mask }, nulls }),
    (e) => e instanceof BadInputError && e.message === "conditioning 'text' has shape [2, 5, 8]; expected [batch, 6, 8]");
  await assert.rejects(sample(runner, spec, { conditioning: { text: { data: new Float32Array(96), dims: [2, 6, 8] }, text_mask: { data: new BigInt64Array(3 * 6), dims: [3, 6] } }, nulls }),
    /conditioning inputs disagree on the batch size: \{"text":2,"text_mask":3\}/);
  await assert.rejects(sample(runner, spec, { conditioning: { text: { data: new Float32Array(96), dims: [2, 6, 8] }, text_mask: { data: new BigInt64Array(12), dims: [2, 6] } } }),
    /guidance needs the null value of conditioning 'text' \(text\.null\.npy\)/);
  assert.deepEqual(calls, [], 'no graph ran');
  // the same spec with valid input does run (the checks are not simply refusing everything)
  const ok = await sample(new MockRunner(spec), spec, { conditioning: { text: { data: new Float32Array(96), dims: [2, 6, 8] }, text_mask: { data: new BigInt64Array(12).fill(1n), dims: [2, 6] } }, nulls });
  assert.deepEqual(ok.x.dims, [2, ...spec.model.sample_shape]);
});

test('CLI: --conditioning FILE.npz of the wrong shape and bad flags exit 2 with one line', async () => {
  const npz = path.join(tmp, 'bad.npz');
  // np.savez layout written by hand: a stored zip with one member class_id.npy of shape (2, 2)
  const { writeNpy, HostTensor } = await import('../../src/index.js');
  const member = writeNpy(new HostTensor('int64', new BigInt64Array([1n, 2n, 3n, 4n]), [2, 2]));
  writeFileSync(npz, storedZip([['class_id.npy', member, 0]]));
  const out = path.join(tmp, 'x.npy');
  const err = await run(process.execPath, [CLI, 'sample', fx.bundle('digits'), '--conditioning', npz, '-n', '1', '-o', out]).then(() => null, (e) => e);
  assert.equal(err?.code, 2);
  assert.match(err.stderr, /^dualrate-js sample: error: conditioning 'class_id' has shape \[2, 2\]; expected \[batch\]\n$/);
  assert.ok(!existsSync(out));
  const e2 = await run(process.execPath, [CLI, 'sample', fx.bundle('digits'), '--seed', '-3', '-o', out]).then(() => null, (e) => e);
  assert.equal(e2?.code, 2);
  const e3 = await run(process.execPath, [CLI, 'sample', fx.bundle('digits'), '-o', path.join(tmp, 'x.png')]).then(() => null, (e) => e);
  assert.match(e3.stderr, /\.npy only/);
});
