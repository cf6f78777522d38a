// Host tensors: typed arrays with a dtype and dims (the fields of an onnxruntime-common Tensor),
// so values the sampler builds and tensors a runtime returns read the same way.

import { BadInputError } from './errors.js';

/**
 * @typedef {'float32'|'float64'|'float16'|'bfloat16'|'int64'|'int32'|'int16'|'int8'|'uint8'|'uint16'|'uint32'|'uint64'|'bool'} DType
 * @typedef {Float32Array|Float64Array|Uint16Array|BigInt64Array|BigUint64Array|Int32Array|Int16Array|Int8Array|Uint8Array|Uint32Array} TypedArray
 */

/** A tensor in host memory (C order). Same field names as onnxruntime-common's Tensor. */
export class HostTensor {
  /**
   * @param {DType} type
   * @param {TypedArray} data
   * @param {readonly number[]} dims
   */
  constructor(type, data, dims) {
    this.type = type;
    this.data = data;
    this.dims = [...dims];
    const n = numel(this.dims);
    if (data.length !== n) {
      throw new BadInputError(`tensor of shape [${this.dims}] needs ${n} elements; got ${data.length}`);
    }
  }
}

/** @param {readonly number[]} dims */
export function numel(dims) {
  let n = 1;
  for (const d of dims) n *= d;
  return n;
}

/** The typed array constructor holding a spec dtype on the host (bfloat16 stays float32, as in Python). */
export const ARRAY_OF = {
  float32: Float32Array,
  bfloat16: Float32Array,
  float64: Float64Array,
  float16: Uint16Array,
  int64: BigInt64Array,
  uint64: BigUint64Array,
  int32: Int32Array,
  uint32: Uint32Array,
  int16: Int16Array,
  uint16: Uint16Array,
  int8: Int8Array,
  uint8: Uint8Array,
  bool: Uint8Array,
};

/** The dtype a host tensor of spec dtype `name` carries (bfloat16 is fed as float32). */
export function hostType(name) {
  return name === 'bfloat16' ? 'float32' : name;
}

/** @param {string} type */
export function isIntegerType(type) {
  return type.startsWith('int') || type.startsWith('uint') || type === 'bool';
}

/** @param {string} type */
export function isBigIntType(type) {
  return type === 'int64' || type === 'uint64';
}

/** Element k of a typed array as a JS number (BigInt elements converted). */
export function numberAt(data, k) {
  const v = data[k];
  return typeof v === 'bigint' ? Number(v) : v;
}
