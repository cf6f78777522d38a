// Node.js entry: bundles from a directory, onnxruntime-node as the runtime, .npz via zlib.

import { readFile, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { inflateRawSync } from 'node:zlib';

import { openBundle as openFromSource } from './bundle.js';
import { BadInputError, BundleError } from './errors.js';
import { parseNpz } from './npy.js';
import { OrtRunner } from './ort-runner.js';
import { sampleBundle as sampleWith } from './run.js';

export * from './index.js';

/**
 * A FileSource over a local directory (lists files, so extra files are refused too).
 * @param {string} dir
 * @returns {import('./bundle.js').FileSource}
 */
export function directorySource(dir) {
  const root = path.resolve(dir);
  return {
    name: dir,
    async read(rel) {
      try {
        return new Uint8Array(await readFile(path.join(root, ...rel.split('/'))));
      } catch (err) {
        if (err.code === 'ENOENT' || err.code === 'EISDIR') return null;
        throw err;
      }
    },
    async list() {
      const out = [];
      for (const entry of await readdir(root, { recursive: true, withFileTypes: true })) {
        if (entry.isDirectory()) continue;
        const e = /** @type {any} */ (entry);
        const dirPath = e.parentPath ?? e.path;
        out.push(path.relative(root, path.join(dirPath, entry.name)).split(path.sep).join('/'));
      }
      return out;
    },
    path(rel) {
      return path.join(root, ...rel.split('/'));
    },
  };
}

/** The onnxruntime-node namespace (an optional peer dependency, loaded on first use). */
export async function nodeOrt() {
  try {
    return await import('onnxruntime-node');
  } catch (err) {
    throw new BadInputError(`onnxruntime-node cannot be loaded (${err.message}); npm install onnxruntime-node`);
  }
}

/**
 * Open and verify a bundle directory.
 * @param {string} dir
 */
export async function openBundle(dir) {
  const s = await stat(dir).catch(() => null);
  if (!s?.isDirectory()) {
    throw new BundleError(`bundle ${dir} not found (expected a directory made by \`dualrate export\`)`);
  }
  return openFromSource(directorySource(dir));
}

/**
 * An OrtRunner on onnxruntime-node for an opened bundle.
 * @param {import('./bundle.js').Bundle} bundle
 * @param {import('./ort-runner.js').OrtRunnerOptions} [opts]
 */
export async function createRunner(bundle, opts) {
  return OrtRunner.create(await nodeOrt(), bundle, opts);
}

/**
 * Sample a bundle on onnxruntime-node (see run.js sampleBundle).
 * @param {import('./bundle.js').Bundle} bundle
 * @param {import('./run.js').SampleBundleOptions} [opts]
 */
export async function sampleBundle(bundle, opts) {
  return sampleWith(await nodeOrt(), bundle, opts);
}

/**
 * Read an .npz (np.savez or np.savez_compressed) into name -> HostTensor.
 * @param {string} file
 */
export async function readNpz(file) {
  let bytes;
  try {
    bytes = new Uint8Array(await readFile(file));
  } catch (err) {
    throw new BadInputError(`${file} cannot be read (${err.code ?? err.message})`);
  }
  return parseNpz(bytes, file, { inflateRaw: (d) => new Uint8Array(inflateRawSync(d)) });
}
