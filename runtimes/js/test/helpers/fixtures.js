// Shared test helpers: where the fixtures are (made by prepare_fixtures.py with the Python CLI),
// .npy reading, PSNR as dualrate's validation computes it, and a results folder for measured numbers.

import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { parseNpy } from '../../src/npy.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const REPO = path.resolve(ROOT, '..', '..');

/** The Python that has dualrate installed: $DUALRATE_PYTHON, the repo's .venv, else python3. */
export function python() {
  if (process.env.DUALRATE_PYTHON) return process.env.DUALRATE_PYTHON;
  const venv = path.join(REPO, '.venv', 'bin', 'python');
  return existsSync(venv) ? venv : 'python3';
}

/** The fixtures folder: $DUALRATE_JS_FIXTURES or runtimes/js/.fixtures. */
export function fixturesDir() {
  return path.resolve(process.env.DUALRATE_JS_FIXTURES ?? path.join(ROOT, '.fixtures'));
}

/** fixtures.json with absolute paths; throws a clear error when the fixtures were not prepared. */
export function loadFixtures() {
  const dir = fixturesDir();
  const index = path.join(dir, 'fixtures.json');
  if (!existsSync(index)) {
    throw new Error(`no test fixtures at ${dir}: run \`npm test\` (it prepares them) or `
      + `\`${python()} test/helpers/prepare_fixtures.py ${dir}\` first`);
  }
  const data = JSON.parse(readFileSync(index, 'utf8'));
  return { dir, ...data, bundle: (name) => path.join(dir, name), file: (rel) => path.join(dir, rel) };
}

/** @param {string} file */
export function readNpyFile(file) {
  return parseNpy(new Uint8Array(readFileSync(file)), file);
}

/**
 * PSNR of `a` against the reference, in dB, as dualrate's validation (metrics.py) computes it:
 * peak = max |ref|, 10 log10(peak^2 / MSE); Infinity when identical.
 * @param {ArrayLike<number>} a
 * @param {ArrayLike<number>} ref
 */
export function psnr(a, ref) {
  if (a.length !== ref.length) throw new Error(`psnr: ${a.length} vs ${ref.length} elements`);
  let se = 0;
  let peak = 0;
  let maxAbs = 0;
  for (let k = 0; k < ref.length; k++) {
    const d = a[k] - ref[k];
    se += d * d;
    peak = Math.max(peak, Math.abs(ref[k]));
    maxAbs = Math.max(maxAbs, Math.abs(d));
  }
  const mse = se / ref.length;
  return { psnr: mse === 0 ? Infinity : 10 * Math.log10((peak * peak) / mse), maxAbs, mse };
}

/** Write measured numbers to <fixtures>/results/<name>.json (read by the pytest wrapper). */
export function recordResult(name, value) {
  const dir = path.join(fixturesDir(), 'results');
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, `${name}.json`), `${JSON.stringify(value, (k, v) => (v === Infinity ? 'inf' : v), 1)}\n`);
}

/** The PSNR gate of the live tests (final samples, fp32). */
export const PSNR_GATE_DB = 60;
