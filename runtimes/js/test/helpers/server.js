// A static HTTP server on 127.0.0.1 for the browser tests, with the cross-origin isolation headers
// (COOP/COEP) WASM threads need. Serves the runtime (src/, web/, test/browser/,
// node_modules/onnxruntime-web/dist/), the fixtures under /fixtures/, and tampered copies of the
// digits bundle under /tampered/<case>/ (made in memory, so the browser meets real bad bundles).

import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';

import { ROOT } from './fixtures.js';

const MIME = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.json': 'application/json', '.wasm': 'application/wasm',
};
export const ISOLATION = {
  'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin', 'Cache-Control': 'no-store',
};
const MOUNTS = ['src/', 'web/', 'test/browser/', 'node_modules/onnxruntime-web/dist/'];

const sha = (b) => createHash('sha256').update(b).digest('hex');

/**
 * The tampered cases: rel -> bytes | null (404), over the bundle at `base`.
 * @param {string} base the digits bundle folder
 */
export function tamperedCases(base) {
  const manifest = JSON.parse(readFileSync(path.join(base, 'manifest.json'), 'utf8'));
  const withManifest = (files, over) => ({ ...over, 'manifest.json': Buffer.from(`${JSON.stringify({ ...manifest, files }, null, 1)}\n`) });
  const flipped = Buffer.from(readFileSync(path.join(base, 'denoiser.onnx')));
  flipped[flipped.length >> 1] ^= 0x01;
  const spec = JSON.parse(readFileSync(path.join(base, 'spec.json'), 'utf8'));
  const v3 = Buffer.from(`${JSON.stringify({ ...spec, spec_version: '3.0.0' }, null, 1)}\n`);
  const { 'encoder.onnx': _, ...unlisted } = manifest.files;
  return {
    // one bit of denoiser.onnx changed after export
    hash: { 'denoiser.onnx': flipped },
    // a spec from a future major version, correctly hashed
    version: withManifest({ ...manifest.files, 'spec.json': sha(v3) }, { 'spec.json': v3 }),
    // encoder.onnx listed but gone
    'missing-graph': { 'encoder.onnx': null },
    // encoder.onnx neither listed nor present
    'unlisted-graph': withManifest(unlisted, { 'encoder.onnx': null }),
  };
}

/**
 * @param {{fixtures: string}} opts
 * @returns {Promise<{url: string, close: () => Promise<void>}>}
 */
export async function startServer({ fixtures }) {
  const digits = path.join(fixtures, 'digits');
  const cases = tamperedCases(digits);
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const p = decodeURIComponent(url.pathname);
    let body = null;
    let file = null;
    const tampered = /^\/tampered\/([^/]+)\/(.+)$/.exec(p);
    if (tampered && cases[tampered[1]]) {
      const over = cases[tampered[1]];
      if (tampered[2] in over) body = over[tampered[2]];
      else file = safeJoin(digits, tampered[2]);
    } else if (p.startsWith('/fixtures/')) {
      file = safeJoin(fixtures, p.slice('/fixtures/'.length));
    } else if (MOUNTS.some((m) => p.startsWith(`/${m}`))) {
      file = safeJoin(ROOT, p.slice(1));
    }
    if (body === null && file) {
      try {
        if (statSync(file).isFile()) body = readFileSync(file);
      } catch {
        body = null;
      }
    }
    const headers = { ...ISOLATION };
    if (body === null) {
      res.writeHead(404, { ...headers, 'Content-Type': 'text/plain' });
      res.end('not found\n');
      return;
    }
    headers['Content-Type'] = MIME[path.extname(p)] ?? 'application/octet-stream';
    headers['Content-Length'] = body.length;
    res.writeHead(200, headers);
    res.end(body);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = /** @type {import('node:net').AddressInfo} */ (server.address());
  return {
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise((resolve) => {
      server.closeAllConnections?.();
      server.close(() => resolve());
    }),
  };
}

function safeJoin(root, rel) {
  const target = path.resolve(root, rel);
  return target.startsWith(path.resolve(root) + path.sep) ? target : null;
}
