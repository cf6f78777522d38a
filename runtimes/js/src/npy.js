// .npy read/write and .npz (zip) read, enough for bundles (stored nulls), --conditioning files
// and the CLI's float32 output. Little-endian, C order.

import { BadInputError } from './errors.js';
import { ARRAY_OF, HostTensor, numel } from './tensor.js';

const DESCR = {
  '<f4': 'float32', '<f8': 'float64', '<f2': 'float16', '<i8': 'int64', '<u8': 'uint64', '<i4': 'int32',
  '<u4': 'uint32', '<i2': 'int16', '<u2': 'uint16', '|i1': 'int8', '|u1': 'uint8', '|b1': 'bool',
};
const DESCR_OF = Object.fromEntries(Object.entries(DESCR).map(([k, v]) => [v, k]));
const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];   // \x93NUMPY

/**
 * Parse a .npy file into a HostTensor.
 * @param {Uint8Array} bytes
 * @param {string} where names the file in errors
 * @returns {HostTensor}
 */
export function parseNpy(bytes, where) {
  const bad = (why) => new BadInputError(`${where} is not a readable .npy file: ${why}`);
  if (bytes.length < 10 || MAGIC.some((m, i) => bytes[i] !== m)) throw bad('no \\x93NUMPY magic');
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerLen;
  let start;
  if (major === 1) {
    headerLen = view.getUint16(8, true);
    start = 10;
  } else if (major === 2 || major === 3) {
    headerLen = view.getUint32(8, true);
    start = 12;
  } else throw bad(`format version ${major}`);
  if (start + headerLen > bytes.length) throw bad('truncated header');
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr'\s*:\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) throw bad(`header ${header.trim()}`);
  const type = DESCR[descr];
  if (!type) throw bad(`dtype ${descr} (supported: ${Object.keys(DESCR).join(' ')})`);
  if (fortran === 'True') throw bad('Fortran order (save it C-ordered)');
  const dims = shapeText.split(',').map((s) => s.trim()).filter((s) => s).map(Number);
  if (dims.some((d) => !Number.isInteger(d) || d < 0)) throw bad(`shape (${shapeText})`);
  const Arr = ARRAY_OF[type];
  const n = numel(dims);
  const offset = start + headerLen;
  const nbytes = n * Arr.BYTES_PER_ELEMENT;
  if (offset + nbytes > bytes.length) throw bad(`${bytes.length - offset} data bytes for ${n} ${type} elements`);
  const data = new Arr(ownBytes(bytes.subarray(offset, offset + nbytes)));
  return new HostTensor(/** @type {any} */ (type), data, dims);
}

/**
 * A copy of bytes in an ArrayBuffer of its own (aligned; Buffer.slice would share the pool).
 * @param {Uint8Array} bytes
 * @returns {ArrayBuffer}
 */
export function ownBytes(bytes) {
  const out = new Uint8Array(bytes.byteLength);
  out.set(bytes);
  return out.buffer;
}

/**
 * Serialize a tensor as .npy (version 1.0).
 * @param {{type: string, data: ArrayLike<any> & {buffer: ArrayBufferLike, byteOffset: number, byteLength: number}, dims: readonly number[]}} t
 * @returns {Uint8Array}
 */
export function writeNpy(t) {
  const descr = DESCR_OF[t.type];
  if (!descr) throw new BadInputError(`cannot write dtype ${t.type} as .npy`);
  const shape = t.dims.length === 1 ? `(${t.dims[0]},)` : `(${t.dims.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const head = new TextEncoder().encode(header);
  const out = new Uint8Array(10 + head.length + t.data.byteLength);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  new DataView(out.buffer).setUint16(8, head.length, true);
  out.set(head, 10);
  out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), 10 + head.length);
  return out;
}

/**
 * Parse an .npz (zip of .npy members, stored or deflated) into name -> HostTensor.
 * @param {Uint8Array} bytes
 * @param {string} where
 * @param {{inflateRaw?: (data: Uint8Array) => Promise<Uint8Array>|Uint8Array}} [opts]
 *   deflate decoder for compressed members (np.savez_compressed); defaults to DecompressionStream
 * @returns {Promise<Record<string, HostTensor>>}
 */
export async function parseNpz(bytes, where, opts = {}) {
  const bad = (why) => new BadInputError(`${where} is not a readable .npz file: ${why}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let eocd = -1;
  for (let i = bytes.length - 22; i >= Math.max(0, bytes.length - 22 - 65535); i--) {
    if (view.getUint32(i, true) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw bad('no zip end-of-central-directory record');
  let count = view.getUint16(eocd + 10, true);
  let cdOffset = view.getUint32(eocd + 16, true);
  if (cdOffset === 0xffffffff || count === 0xffff) {
    // zip64: the locator sits just before the EOCD
    const loc = eocd - 20;
    if (loc < 0 || view.getUint32(loc, true) !== 0x07064b50) throw bad('zip64 without a locator');
    const z64 = Number(view.getBigUint64(loc + 8, true));
    count = Number(view.getBigUint64(z64 + 32, true));
    cdOffset = Number(view.getBigUint64(z64 + 48, true));
  }
  /** @type {Record<string, HostTensor>} */
  const out = {};
  let p = cdOffset;
  for (let k = 0; k < count; k++) {
    if (view.getUint32(p, true) !== 0x02014b50) throw bad('corrupt central directory');
    const method = view.getUint16(p + 10, true);
    let csize = view.getUint32(p + 20, true);
    const nameLen = view.getUint16(p + 28, true);
    const extraLen = view.getUint16(p + 30, true);
    const commentLen = view.getUint16(p + 32, true);
    let local = view.getUint32(p + 42, true);
    const name = new TextDecoder().decode(bytes.subarray(p + 46, p + 46 + nameLen));
    // zip64 extra field: sizes / offset that overflowed 32 bits, in this order
    let e = p + 46 + nameLen;
    const eEnd = e + extraLen;
    while (e + 4 <= eEnd) {
      const id = view.getUint16(e, true);
      const size = view.getUint16(e + 2, true);
      if (id === 0x0001) {
        let q = e + 4;
        if (view.getUint32(p + 24, true) === 0xffffffff) q += 8;          // uncompressed size
        if (csize === 0xffffffff) {
          csize = Number(view.getBigUint64(q, true));
          q += 8;
        }
        if (local === 0xffffffff) local = Number(view.getBigUint64(q, true));
      }
      e += 4 + size;
    }
    p = eEnd + commentLen;
    if (view.getUint32(local, true) !== 0x04034b50) throw bad(`corrupt local header of ${name}`);
    const dataStart = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    let member = bytes.subarray(dataStart, dataStart + csize);
    if (method === 8) member = await (opts.inflateRaw ?? inflateRawStream)(member);
    else if (method !== 0) throw bad(`member ${name} uses zip method ${method}`);
    const key = name.endsWith('.npy') ? name.slice(0, -4) : name;
    out[key] = parseNpy(member, `${where}: ${name}`);
  }
  return out;
}

/** @param {Uint8Array} data */
async function inflateRawStream(data) {
  if (typeof DecompressionStream === 'undefined') {
    throw new BadInputError('this .npz is compressed and this JavaScript runtime has no DecompressionStream');
  }
  const stream = new Blob([/** @type {BlobPart} */ (data)]).stream().pipeThrough(new DecompressionStream('deflate-raw'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
