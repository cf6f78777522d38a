// Opening a bundle: manifest.json (sha256 of every file, verified with WebCrypto), spec.json,
// the graphs the spec's model needs, and the stored null conditioning. Nothing runs on a bundle
// that fails any check; every message names the file.
//
// A bundle is read through a FileSource, so the same code opens a directory in Node.js
// (node.js: directorySource) and a URL in the browser (web.js: urlSource).

import { BundleError, SpecError } from './errors.js';
import { parseNpy } from './npy.js';
import { graphsOf, parseSpec } from './spec.js';
import { hostType } from './tensor.js';

export const FORMAT = 'dualrate-bundle';
export const FORMAT_VERSION = 2;
export const MANIFEST = 'manifest.json';
export const SPEC = 'spec.json';
export const TARGETS_DIR = 'targets';

/**
 * Where a bundle's files come from.
 * @typedef {object} FileSource
 * @property {string} name  the bundle as a user knows it (a path or URL), for messages
 * @property {(rel: string) => Promise<Uint8Array|null>} read  a file's bytes, or null when it does not exist
 * @property {() => Promise<string[]>} [list]  every file below the root (relative, '/'-separated), where listing is possible
 * @property {(rel: string) => string} [path]  a local filesystem path, where there is one
 */

/**
 * @typedef {object} Bundle
 * @property {FileSource} source
 * @property {string} name
 * @property {any} manifest
 * @property {import('./spec.js').Spec} spec
 * @property {Record<string, Uint8Array>} graphs  the verified bytes of each graph (encoder, denoiser, decoder)
 * @property {Record<string, Uint8Array>} externalData  verified <graph>.onnx.data bytes, where a graph has them
 * @property {Record<string, import('./tensor.js').HostTensor>} nulls  stored null conditioning by input name
 */

/**
 * The hex sha256 of bytes, with WebCrypto (Node.js >= 20 and browsers in a secure context).
 * @param {Uint8Array} bytes
 */
export async function sha256Hex(bytes) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    throw new BundleError('WebCrypto (crypto.subtle) is not available here, so bundle hashes cannot be verified; '
      + 'serve the page from https:// or http://127.0.0.1 (a secure context)');
  }
  const digest = new Uint8Array(await subtle.digest('SHA-256', /** @type {BufferSource} */ (bytes)));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

const HEX64 = /^[0-9a-f]{64}$/;

/**
 * Open and verify a bundle: manifest, every listed file's sha256, no missing (and, where the
 * source can list, no extra) files, a valid spec 2.x, the graphs it needs, the stored nulls.
 * @param {FileSource} source
 * @returns {Promise<Bundle>}
 */
export async function openBundle(source) {
  const root = source.name;
  const manifestBytes = await source.read(MANIFEST);
  if (manifestBytes === null) {
    throw new BundleError(`bundle ${root} has no ${MANIFEST}; it is incomplete or not a bundle. Re-export it`);
  }
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(manifestBytes));
  } catch (err) {
    throw new BundleError(`bundle ${root}: ${MANIFEST} is not valid JSON (${err.message})`);
  }
  if (manifest === null || typeof manifest !== 'object' || manifest.format !== FORMAT
      || manifest.files === null || typeof manifest.files !== 'object') {
    throw new BundleError(`bundle ${root}: ${MANIFEST} is not a ${FORMAT} manifest`);
  }
  if (manifest.format_version !== FORMAT_VERSION) {
    throw new BundleError(`bundle ${root}: format_version ${JSON.stringify(manifest.format_version)} is not supported `
      + `(this runtime reads ${FORMAT_VERSION}); re-export with a current dualrate`);
  }
  const listed = manifest.files;
  for (const [rel, digest] of Object.entries(listed)) {
    if (typeof digest !== 'string' || !HEX64.test(digest) || rel.startsWith('/') || rel.split('/').includes('..')) {
      throw new BundleError(`bundle ${root}: ${MANIFEST} entry ${JSON.stringify(rel)}: ${JSON.stringify(digest)} is not a `
        + 'relative path with a sha256 hex digest; the manifest is corrupt. Re-export the bundle');
    }
  }
  if (source.list) {
    const present = (await source.list()).filter((rel) => rel !== MANIFEST && rel.split('/')[0] !== TARGETS_DIR);
    const extra = present.filter((rel) => !(rel in listed)).sort();
    if (extra.length) {
      throw new BundleError(`bundle ${root}: file(s) ${JSON.stringify(extra)} are not in the manifest; remove them or `
        + 're-export (nothing runs on an unverified bundle)');
    }
  }
  // read every listed file once; keep what the runtime needs (spec, graphs, nulls), drop the rest
  /** @type {Map<string, Uint8Array>} */
  const kept = new Map();
  const missing = [];
  const keep = (rel) => rel === SPEC || rel.endsWith('.onnx') || rel.endsWith('.onnx.data') || rel.endsWith('.npy');
  for (const rel of Object.keys(listed).sort()) {
    const bytes = await source.read(rel);
    if (bytes === null) {
      missing.push(rel);
      continue;
    }
    const got = await sha256Hex(bytes);
    if (got !== listed[rel]) {
      throw new BundleError(`bundle ${root}: ${rel} has sha256 ${got.slice(0, 12)}…, the manifest says `
        + `${listed[rel].slice(0, 12)}…; the file was changed after export. Re-export the bundle`);
    }
    if (keep(rel)) kept.set(rel, bytes);
  }
  if (missing.length) {
    throw new BundleError(`bundle ${root}: file(s) ${JSON.stringify(missing)} listed in the manifest are missing; re-export the bundle`);
  }
  if (!kept.has(SPEC)) throw new BundleError(`bundle ${root}: the manifest lists no ${SPEC}; re-export the bundle`);
  let spec;
  try {
    spec = parseSpec(new TextDecoder().decode(kept.get(SPEC)), SPEC);
  } catch (err) {
    if (err instanceof SpecError) throw new BundleError(`bundle ${root}: ${err.message}`);
    throw err;
  }
  /** @type {Record<string, Uint8Array>} */
  const graphs = {};
  /** @type {Record<string, Uint8Array>} */
  const externalData = {};
  for (const g of Object.keys(graphsOf(spec.model))) {
    const rel = `${g}.onnx`;
    if (!kept.has(rel)) {
      throw new BundleError(`bundle ${root}: the manifest lists no ${rel}, which the spec's model needs (the ${g} graph)`);
    }
    graphs[g] = kept.get(rel);
    if (kept.has(`${rel}.data`)) externalData[g] = kept.get(`${rel}.data`);
  }
  /** @type {Record<string, import('./tensor.js').HostTensor>} */
  const nulls = {};
  for (const c of spec.model.conditioning) {
    if (c.null_kind !== 'file') continue;
    if (!kept.has(c.null_file)) {
      throw new BundleError(`bundle ${root}: the manifest lists no ${c.null_file} (the null value of conditioning '${c.name}'); re-export the bundle`);
    }
    nulls[c.name] = readNull(kept.get(c.null_file), c, `bundle ${root}: ${c.null_file}`, BundleError);
  }
  return { source, name: root, manifest, spec, graphs, externalData, nulls };
}

/**
 * A stored null tensor, checked against its declaration (shape; dtype as the spec says).
 * @param {Uint8Array} bytes
 * @param {import('./spec.js').ConditioningSpec} c
 * @param {string} where
 * @param {typeof BundleError} [Err]
 */
export function readNull(bytes, c, where, Err = BundleError) {
  let t;
  try {
    t = parseNpy(bytes, where);
  } catch (err) {
    throw new Err(err.message);
  }
  if (JSON.stringify(t.dims) !== JSON.stringify(c.shape)) {
    throw new Err(`${where} has shape [${t.dims.join(', ')}]; the spec declares [${c.shape.join(', ')}] for conditioning '${c.name}'. Re-export the bundle`);
  }
  if (t.type !== hostType(c.dtype) && !(c.dtype === 'bool' && t.type === 'uint8')) {
    throw new Err(`${where} has dtype ${t.type}; the spec declares ${c.dtype} for conditioning '${c.name}'`);
  }
  return t;
}

/**
 * A spec folder without a manifest (e.g. one variant of `dualrate golden`): spec.json and the
 * stored nulls its conditioning names, relative to spec.json. Not hash-verified.
 * @param {FileSource} source
 */
export async function openSpecFolder(source) {
  const bytes = await source.read(SPEC);
  if (bytes === null) throw new SpecError(`${source.name}: no ${SPEC}`);
  const spec = parseSpec(new TextDecoder().decode(bytes), `${source.name}/${SPEC}`);
  /** @type {Record<string, import('./tensor.js').HostTensor>} */
  const nulls = {};
  for (const c of spec.model.conditioning) {
    if (c.null_kind !== 'file') continue;
    const b = await source.read(c.null_file);
    if (b === null) throw new SpecError(`${source.name}: ${c.null_file} (the null value of conditioning '${c.name}') is missing`);
    nulls[c.name] = readNull(b, c, `${source.name}/${c.null_file}`, SpecError);
  }
  return { spec, nulls };
}
