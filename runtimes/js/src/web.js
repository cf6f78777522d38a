// Browser entry: bundles over fetch (relative to a base URL), onnxruntime-web passed in by the page
// (import * as ort from 'onnxruntime-web'), so this file loads nothing itself.

import { openBundle as openFromSource } from './bundle.js';
import { BundleError } from './errors.js';
import { OrtRunner } from './ort-runner.js';

export * from './index.js';

/**
 * A FileSource over HTTP: `${base}/${rel}`; 404 means the file is missing.
 * @param {string|URL} base  the bundle's URL (a folder)
 * @param {{fetch?: typeof fetch}} [opts]
 * @returns {import('./bundle.js').FileSource}
 */
export function urlSource(base, opts = {}) {
  const root = new URL(String(base).endsWith('/') ? String(base) : `${base}/`, globalThis.location?.href);
  const doFetch = opts.fetch ?? globalThis.fetch.bind(globalThis);
  return {
    name: String(base),
    async read(rel) {
      let res;
      try {
        res = await doFetch(new URL(rel.split('/').map(encodeURIComponent).join('/'), root), { cache: 'no-store' });
      } catch (err) {
        throw new BundleError(`bundle ${base}: ${rel} cannot be fetched (${err.message})`);
      }
      if (res.status === 404) return null;
      if (!res.ok) throw new BundleError(`bundle ${base}: ${rel} cannot be fetched (HTTP ${res.status})`);
      return new Uint8Array(await res.arrayBuffer());
    },
  };
}

/**
 * Open and verify a bundle served at a URL.
 * @param {string|URL} base
 */
export async function openBundleUrl(base) {
  return openFromSource(urlSource(base));
}

/**
 * An OrtRunner on onnxruntime-web (WASM by default).
 * @param {any} ort  the onnxruntime-web namespace
 * @param {import('./bundle.js').Bundle} bundle
 * @param {import('./ort-runner.js').OrtRunnerOptions} [opts]
 */
export async function createRunner(ort, bundle, opts = {}) {
  return OrtRunner.create(ort, bundle, { ...opts, sessionOptions: { executionProviders: ['wasm'], ...(opts.sessionOptions ?? {}) } });
}
