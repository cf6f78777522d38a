// Philox4x32-10 (Salmon et al., SC'11; Random123) and the spec's Gaussian noise (noise.rng,
// kind "philox4x32-10"), exactly as dualrate/exporter/rng.py defines it:
//
//   key (k0, k1) = (seed & 0xFFFFFFFF, seed >> 32); counter (c0, c1, c2, c3) = (block, draw, sample, 0)
//   element e of a sample's flattened C-order tensor = lane e % 4 of block e // 4
//   u_j = (x_j + 0.5) / 2^32 (float64); lanes (0, 1) -> r cos t, r sin t with r = sqrt(-2 ln u_0),
//   t = TWO_PI * u_1; lanes (2, 3) likewise; each normal rounded to float32 once, at the end.
//
// The 32x32 -> 64-bit products of the Philox round are split into 16-bit limbs, so every
// intermediate is an exact integer below 2^53 (no BigInt in the hot loop).

import { BadInputError } from './errors.js';

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;
const ROUNDS = 10;
const TWO32 = 4294967296;
/** The float64 nearest 2*pi (6.283185307179586), the spec's TWO_PI. */
export const TWO_PI = 2 * Math.PI;

/**
 * High 32 bits of the 64-bit product of two uint32 values, from 16-bit limbs (all partial sums exact).
 * @param {number} a uint32
 * @param {number} b uint32
 */
export function mulhi32(a, b) {
  const a0 = a & 0xffff;
  const a1 = a >>> 16;
  const b0 = b & 0xffff;
  const b1 = b >>> 16;
  const p00 = a0 * b0;
  const p01 = a0 * b1;
  const p10 = a1 * b0;
  const p11 = a1 * b1;
  const mid = (p00 >>> 16) + (p01 & 0xffff) + (p10 & 0xffff);   // < 3 * 2^16
  return (p11 + (p01 >>> 16) + (p10 >>> 16) + (mid >>> 16)) >>> 0;
}

/**
 * Philox4x32-10 of one counter under one key; writes the 4 output words into `out`.
 * @param {number} c0 @param {number} c1 @param {number} c2 @param {number} c3 counter words (uint32)
 * @param {number} k0 @param {number} k1 key words (uint32)
 * @param {Uint32Array} [out]
 * @returns {Uint32Array}
 */
export function philox4x32_10(c0, c1, c2, c3, k0, k1, out = new Uint32Array(4)) {
  c0 >>>= 0; c1 >>>= 0; c2 >>>= 0; c3 >>>= 0; k0 >>>= 0; k1 >>>= 0;
  for (let r = 0; r < ROUNDS; r++) {
    if (r) {
      k0 = (k0 + W0) >>> 0;
      k1 = (k1 + W1) >>> 0;
    }
    const hi0 = mulhi32(M0, c0);
    const lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi32(M1, c2);
    const lo1 = Math.imul(M1, c2) >>> 0;
    const n0 = (hi1 ^ c1 ^ k0) >>> 0;
    const n2 = (hi0 ^ c3 ^ k1) >>> 0;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
  return out;
}

/**
 * A seed as an integer in [0, 2^64): a BigInt, a safe integer, or a decimal / 0x string.
 * @param {bigint|number|string} seed
 * @param {string} [name]
 * @returns {bigint}
 */
export function parseSeed(seed, name = 'seed') {
  let v;
  if (typeof seed === 'bigint') v = seed;
  else if (typeof seed === 'number') {
    if (!Number.isSafeInteger(seed)) {
      throw new BadInputError(`${name} is ${seed}; expected an integer in [0, 2^64) (pass seeds above 2^53 as a BigInt or a string)`);
    }
    v = BigInt(seed);
  } else if (typeof seed === 'string' && /^\s*(0x[0-9a-fA-F]+|[0-9]+)\s*$/.test(seed)) v = BigInt(seed.trim());
  else throw new BadInputError(`${name} is ${JSON.stringify(seed)}; expected an integer in [0, 2^64)`);
  if (v < 0n || v >= 1n << 64n) throw new BadInputError(`${name} is ${v}; expected an integer in [0, 2^64)`);
  return v;
}

/**
 * The Philox key of a seed: (seed & 0xFFFFFFFF, seed >> 32).
 * @param {bigint|number|string} seed
 * @returns {[number, number]}
 */
export function seedKey(seed) {
  const s = parseSeed(seed);
  return [Number(s & 0xffffffffn), Number(s >> 32n)];
}

function u32(value, name) {
  if (!Number.isInteger(value) || value < 0 || value >= TWO32) {
    throw new BadInputError(`${name} is ${value}; expected an integer in [0, 2^32)`);
  }
  return value;
}

/**
 * n standard normals (float64 before the final rounding) of one sample: key (k0, k1), counter
 * (block, draw, sample, 0); written into `out` (a Float32Array rounds each value once).
 * @param {number} k0 @param {number} k1 @param {number} sample @param {number} draw
 * @param {Float32Array|Float64Array} out
 * @param {number} [offset]
 * @param {number} [n]
 */
export function fillNormals(k0, k1, sample, draw, out, offset = 0, n = out.length - offset) {
  const w = new Uint32Array(4);
  const v = new Float64Array(4);
  const blocks = Math.ceil(n / 4);
  if (blocks > TWO32) throw new BadInputError(`a sample of ${n} elements exceeds 4 * 2^32 (the block lane is uint32)`);
  for (let b = 0; b < blocks; b++) {
    philox4x32_10(b, draw, sample, 0, k0, k1, w);
    for (let p = 0; p < 4; p += 2) {
      const u0 = (w[p] + 0.5) / TWO32;
      const u1 = (w[p + 1] + 0.5) / TWO32;
      const r = Math.sqrt(-2.0 * Math.log(u0));
      const t = TWO_PI * u1;
      v[p] = r * Math.cos(t);
      v[p + 1] = r * Math.sin(t);
    }
    const base = 4 * b;
    const lanes = Math.min(4, n - base);
    for (let j = 0; j < lanes; j++) out[offset + base + j] = v[j];
  }
  return out;
}

/**
 * Standard normals as float32 [batch, ...sampleShape]; row b uses counter sample = b + sampleOffset.
 * @param {bigint|number|string} seed
 * @param {number} draw 0 = the initial z, i + 1 = the noise of step i
 * @param {number} batch
 * @param {readonly number[]} sampleShape
 * @param {number} [sampleOffset]
 */
export function normalDraw(seed, draw, batch, sampleShape, sampleOffset = 0) {
  return new PhiloxNoise(seed, batch, sampleOffset).draw(draw, sampleShape);
}

/**
 * The sampler's noise source (spec noise.rng = philox4x32-10): one seed for the batch, row b uses
 * sample lane b (what the spec's noise.rng.seed means). `PhiloxNoise.perRow(seeds)`: row b uses
 * key seeds[b] and sample 0, so a row is reproducible from its seed alone.
 */
export class PhiloxNoise {
  /**
   * @param {bigint|number|string} seed
   * @param {number} batch
   * @param {number} [sampleOffset]
   */
  constructor(seed, batch, sampleOffset = 0) {
    const [k0, k1] = seedKey(seed);
    u32(batch, 'batch');
    if (batch < 1) throw new BadInputError(`batch is ${batch}; expected at least 1`);
    u32(sampleOffset, 'sampleOffset');
    if (sampleOffset + batch > TWO32) throw new BadInputError(`sampleOffset ${sampleOffset} + batch ${batch} exceeds 2^32`);
    /** @type {Array<[number, number, number]>} (k0, k1, sample) per row */
    this.rows = Array.from({ length: batch }, (_, b) => [k0, k1, sampleOffset + b]);
  }

  /** @param {Array<bigint|number|string>} seeds */
  static perRow(seeds) {
    if (!seeds.length) throw new BadInputError('seeds is empty; expected one seed per batch row');
    const self = Object.create(PhiloxNoise.prototype);
    self.rows = seeds.map((s, i) => {
      const key = seedKey(parseSeed(s, `seeds[${i}]`));
      return [key[0], key[1], 0];
    });
    return self;
  }

  get batch() {
    return this.rows.length;
  }

  /**
   * float32 [batch, ...sampleShape] (flat); index 0 = initial noise, i + 1 = noise of step i.
   * @param {number} index
   * @param {readonly number[]} sampleShape
   */
  draw(index, sampleShape) {
    u32(index, 'draw index');
    let n = 1;
    for (const d of sampleShape) n *= d;
    const out = new Float32Array(this.rows.length * n);
    this.rows.forEach(([k0, k1, sample], b) => fillNormals(k0, k1, sample, index, out, b * n, n));
    return out;
  }
}
