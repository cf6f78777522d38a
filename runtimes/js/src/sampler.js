// The dual-rate sampling loop, exactly as dualrate/exporter/sampling.py runs it. Per step i
// (time = tables.model_time, what the networks were trained on):
//
//   for each active branch group (cond; uncond while guidance is active at i):
//       if the group must refresh (cache rule): feats[g] = encode(sample=z, time=time[i], cond=cond_g); ctx[g] = i
//       out_g = denoise(sample=z, time=time[i], time_ctx=time[ctx[g]], cond=cond_g, features=feats[g])
//   x0 = guide(to_x0(out)); optional clip
//   z = coef_z[i] z + coef_x0[i] x0 + coef_noise[i] xi[i]
//   (after the last step, with a decoder: decoded = decode(z / scaling_factor + shift_factor))
//
// When guidance is active at every step both branches run as one batch of 2B rows (cond rows
// first); otherwise each branch runs alone and keeps its own feature cache. Features stay in
// whatever form the runner returns (ort tensors) between steps. Arithmetic is float32 with
// float32-rounded table entries, each product and sum rounded (no fused multiply-add), in the
// order written above, so x0 and z match the reference bit for bit given the same predictions.

import { BadInputError, NonFiniteError } from './errors.js';
import { PhiloxNoise } from './philox.js';
import { COND_PREFIX, FEATURE_PREFIX, ROLE_SAMPLE, ROLE_TIME, ROLE_TIME_CTX } from './spec.js';
import { ARRAY_OF, HostTensor, hostType, isBigIntType, isIntegerType, numel, numberAt } from './tensor.js';

export const COND = 'cond';
export const UNCOND = 'uncond';
const fr = Math.fround;

/**
 * @typedef {{branches: string[], refresh: boolean, ctxStep: number}} GroupCall
 * @typedef {{draw(index: number, sampleShape: readonly number[]): Float32Array}} NoiseSource
 * @typedef {object} Runner
 * @property {(feeds: Record<string, any>) => Promise<Record<string, any>>} encode  features by output name (kept as the runner likes)
 * @property {(feeds: Record<string, any>) => Promise<{data: any, dims: readonly number[]}>} denoise  float32 prediction
 * @property {(feeds: Record<string, any>) => Promise<{data: any, dims: readonly number[]}>} [decode]  float32 image
 * @property {(features: Record<string, any>) => Promise<Record<string, {data: any, dims: number[]}>>} [featuresToHost]
 * @property {(features: Record<string, any>) => void} [releaseFeatures]
 * @property {() => any} [stats]
 */

/**
 * Whether guidance runs the unconditional branch at step i.
 * @param {import('./spec.js').Spec} spec
 * @param {number} i
 */
export function guidanceActive(spec, i) {
  const g = spec.guidance;
  if (g.scale === 1) return false;
  if (g.interval_logsnr === null) return true;
  const lam = spec.sampler.tables.logsnr[i];
  return g.interval_logsnr[0] <= lam && lam <= g.interval_logsnr[1];
}

/**
 * The static schedule of graph calls per step, in call order (sampling.py: call_plan). A group
 * refreshes at a refresh step, when it has no cache, or when its cache predates the latest
 * refresh step.
 * @param {import('./spec.js').Spec} spec
 * @returns {GroupCall[][]}
 */
export function callPlan(spec) {
  const n = spec.sampler.num_steps;
  const refresh = new Set(spec.dual_rate.resolved_refresh_steps);
  const guided = Array.from({ length: n }, (_, i) => guidanceActive(spec, i));
  const batched = guided.every(Boolean);
  /** @type {Map<string, number>} */
  const cacheStep = new Map();
  const plan = [];
  let lastRefresh = 0;
  for (let i = 0; i < n; i++) {
    if (refresh.has(i)) lastRefresh = i;
    const groups = batched ? [[COND, UNCOND]] : guided[i] ? [[COND], [UNCOND]] : [[COND]];
    plan.push(groups.map((branches) => {
      const key = branches.join('+');
      const fresh = !cacheStep.has(key) || refresh.has(i) || cacheStep.get(key) < lastRefresh;
      if (fresh) cacheStep.set(key, i);
      return { branches, refresh: fresh, ctxStep: cacheStep.get(key) };
    }));
  }
  return plan;
}

// -- conditioning ------------------------------------------------------------------

const isTyped = (v) => ArrayBuffer.isView(v) && !(v instanceof DataView);

/** Flatten nested arrays of numbers/bigints/booleans; returns [flat values, shape]. */
function flatten(value, where) {
  const dims = [];
  let v = value;
  while (Array.isArray(v)) {
    dims.push(v.length);
    v = v[0];
  }
  const flat = value.flat(Infinity);
  if (flat.length !== numel(dims)) throw new BadInputError(`${where} is a ragged nested array; expected a rectangular one`);
  return [flat, dims];
}

/**
 * A caller's value as [flat values, dims]: a tensor ({data, dims} like HostTensor or ort.Tensor,
 * or {data, shape}), a nested array, or a flat typed array (one value per row).
 */
function asArray(value, where) {
  if (value && typeof value === 'object' && 'data' in value && ('dims' in value || 'shape' in value)) {
    return [value.data, [...(value.dims ?? value.shape)]];
  }
  if (Array.isArray(value)) return flatten(value, where);
  if (isTyped(value)) return [value, [value.length]];
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return [[value], []];
  throw new BadInputError(`${where} is ${Object.prototype.toString.call(value)}; expected a tensor {data, dims}, an array or a typed array`);
}

/** Convert flat values to a typed array of `type`, checking integrality for integer types. */
function toTyped(values, type, where) {
  const Arr = ARRAY_OF[type];
  const out = new Arr(values.length);
  const big = isBigIntType(type);
  const integral = isIntegerType(type);
  for (let k = 0; k < values.length; k++) {
    let v = values[k];
    if (typeof v === 'boolean') v = v ? 1 : 0;
    if (typeof v === 'bigint') {
      if (big) {
        out[k] = v;
        continue;
      }
      v = Number(v);
    }
    if (typeof v !== 'number') throw new BadInputError(`${where} holds ${typeof v} values; expected numbers`);
    if (!Number.isFinite(v)) throw new BadInputError(`${where} contains NaN or Inf`);
    if (integral && !Number.isInteger(v)) throw new BadInputError(`${where} has non-integer values; expected ${type}`);
    if (type === 'float16') out[k] = toHalf(v);
    else out[k] = big ? BigInt(v) : type === 'bool' ? (v ? 1 : 0) : v;
  }
  return out;
}

/** float64 -> IEEE half bits, round to nearest even (as numpy's astype(float16)). */
export function toHalf(x) {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00;                      // rounds to inf
  if (a < 2 ** -24 * 0.5) return sign;                       // rounds to zero (ties-to-even at half the smallest subnormal)
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e -= 1;
  if (2 ** (e + 1) <= a) e += 1;
  if (e < -14) {
    // subnormal: units of 2^-24
    const m = roundEven(a / 2 ** -24);
    return sign | m;                                         // m may reach 1024 = the smallest normal, still correct bits
  }
  let m = roundEven((a / 2 ** e - 1) * 1024);
  if (m === 1024) {
    m = 0;
    e += 1;
  }
  if (e > 15) return sign | 0x7c00;
  return sign | ((e + 15) << 10) | m;
}

function roundEven(v) {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

const shapeText = (dims) => `[${dims.join(', ')}]`;
const wantText = (c) => `[batch${c.shape.map((d) => `, ${d}`).join('')}]`;

/**
 * Check the caller's conditioning against the spec; returns name -> HostTensor [B, ...shape].
 * `conditioning` maps each declared input to its rows; a class-conditional model (one integer
 * input with num_classes) also takes a plain list of class ids.
 * @param {import('./spec.js').Spec} spec
 * @param {Record<string, any>|ArrayLike<number|bigint>|null|undefined} conditioning
 * @returns {Record<string, HostTensor>}
 */
export function checkConditioning(spec, conditioning) {
  const declared = spec.model.conditioning;
  const names = declared.map((c) => `'${c.name}'`).join(', ') || 'no conditioning';
  let cond = conditioning ?? {};
  if (Array.isArray(cond) || isTyped(cond)) {
    const cls = classInput(spec);
    if (!cls) {
      throw new BadInputError(`conditioning was given as a list, but this model's conditioning is ${names}; pass an object name -> tensor`);
    }
    cond = { [cls.name]: cond };
  }
  const unknown = Object.keys(cond).filter((k) => !declared.some((c) => c.name === k)).sort();
  if (unknown.length) throw new BadInputError(`conditioning '${unknown[0]}' is not an input of this model; it takes ${names}`);
  /** @type {Record<string, HostTensor>} */
  const out = {};
  for (const c of declared) {
    if (!(c.name in cond)) {
      throw new BadInputError(`conditioning '${c.name}' is missing; this model takes ${names} (${c.name}: ${c.dtype} ${wantText(c)})`);
    }
    const where = `conditioning '${c.name}'`;
    let [values, dims] = asArray(cond[c.name], where);
    if (dims.length === c.shape.length) dims = [1, ...dims];          // one sample without the batch axis
    if (dims.length !== c.shape.length + 1 || dims.slice(1).some((d, k) => d !== c.shape[k])) {
      throw new BadInputError(`${where} has shape ${shapeText(dims)}; expected ${wantText(c)}`);
    }
    const type = hostType(c.dtype);
    const data = toTyped(values, type, where);
    if (c.num_classes !== null) {
      for (let k = 0; k < data.length; k++) {
        const id = numberAt(data, k);
        if (id < 0 || id >= c.num_classes) {
          const nullNote = c.null_value !== null ? ` (id ${c.null_value} is the null class used for guidance)` : '';
          throw new BadInputError(`class id ${id} is out of range for '${c.name}'; this model has classes 0..${c.num_classes - 1}${nullNote}`);
        }
      }
    }
    out[c.name] = new HostTensor(/** @type {any} */ (type), data, dims);
  }
  const sizes = Object.fromEntries(Object.entries(out).map(([k, t]) => [k, t.dims[0]]));
  if (new Set(Object.values(sizes)).size > 1) throw new BadInputError(`conditioning inputs disagree on the batch size: ${JSON.stringify(sizes)}`);
  if (Object.values(sizes).some((s) => s === 0)) throw new BadInputError('conditioning holds no samples; pass at least one row (one class, one prompt)');
  return out;
}

/**
 * The model's class-id input when it has exactly one conditioning input and it is one.
 * @param {import('./spec.js').Spec} spec
 */
export function classInput(spec) {
  const conds = spec.model.conditioning;
  return conds.length === 1 && conds[0].num_classes !== null ? conds[0] : null;
}

/**
 * The declared null of conditioning c as one sample (flat typed array of the host dtype).
 * @param {import('./spec.js').ConditioningSpec} c
 * @param {Record<string, HostTensor>} [nulls] stored nulls by name (Bundle.nulls)
 */
export function nullRow(c, nulls) {
  const type = hostType(c.dtype);
  if (c.null_kind === 'value') return toTyped(new Array(numel(c.shape)).fill(c.null_value), type, `null value of conditioning '${c.name}'`);
  if (c.null_kind === 'file') {
    const t = nulls?.[c.name];
    if (!t) {
      throw new BadInputError(`guidance needs the null value of conditioning '${c.name}' (${c.null_file}), and none was passed; `
        + 'open the bundle (its nulls) or pass nulls: {name: tensor}');
    }
    if (JSON.stringify(t.dims) !== JSON.stringify(c.shape)) {
      throw new BadInputError(`null value of conditioning '${c.name}' has shape ${shapeText(t.dims)}; expected ${shapeText(c.shape)}`);
    }
    return t.type === type ? t.data : toTyped(Array.from(/** @type {ArrayLike<any>} */ (t.data)), type, `null value of conditioning '${c.name}'`);
  }
  throw new BadInputError(`guidance needs a null value for conditioning '${c.name}', which declares none`);
}

/**
 * Rows of each conditioning input for a group: cond rows first, then null rows.
 * @param {import('./spec.js').Spec} spec
 * @param {Record<string, HostTensor>} cond
 * @param {Record<string, HostTensor>|undefined} nulls
 * @param {string[]} branches
 */
export function groupConditioning(spec, cond, nulls, branches) {
  /** @type {Record<string, HostTensor>} */
  const out = {};
  for (const c of spec.model.conditioning) {
    const rows = cond[c.name];
    if (branches.length === 1 && branches[0] === COND) {
      out[c.name] = rows;
      continue;
    }
    const b = rows.dims[0];
    const per = rows.data.length / b;
    const data = new ARRAY_OF[rows.type](rows.data.length * branches.length);
    branches.forEach((br, k) => {
      if (br === COND) data.set(/** @type {any} */ (rows.data), k * rows.data.length);
      else {
        const row = nullRow(c, nulls);
        for (let r = 0; r < b; r++) data.set(/** @type {any} */ (row), k * rows.data.length + r * per);
      }
    });
    out[c.name] = new HostTensor(rows.type, data, [b * branches.length, ...rows.dims.slice(1)]);
  }
  return out;
}

// -- feeds -------------------------------------------------------------------------

/**
 * A time input: `rows` copies of a time value cast to the input's dtype (float32 rounds,
 * integer types truncate as numpy's astype does).
 * @param {number} value
 * @param {string} dtype
 * @param {number} rows
 */
export function timeTensor(value, dtype, rows) {
  const Arr = ARRAY_OF[dtype];
  const v = isBigIntType(dtype) ? BigInt(Math.trunc(value)) : dtype.startsWith('int') ? Math.trunc(value) : value;
  return new HostTensor(/** @type {any} */ (dtype), new Arr(rows).fill(/** @type {any} */ (v)), [rows]);
}

/**
 * The feeds of one graph call by input name, from values by role (time values are numbers,
 * cast per input).
 * @param {import('./spec.js').GraphIO} gio
 * @param {Record<string, any>} values
 * @param {number} rows
 */
export function graphFeeds(gio, values, rows) {
  /** @type {Record<string, any>} */
  const feeds = {};
  for (const tio of gio.inputs) {
    const v = values[tio.feeds];
    feeds[tio.name] = tio.feeds === ROLE_TIME || tio.feeds === ROLE_TIME_CTX ? timeTensor(v, tio.dtype, rows) : v;
  }
  return feeds;
}

function roleValues(z, time, timeCtx, cond, features) {
  const values = { [ROLE_SAMPLE]: z, [ROLE_TIME]: time };
  if (timeCtx !== null) values[ROLE_TIME_CTX] = timeCtx;
  for (const [k, v] of Object.entries(cond)) values[COND_PREFIX + k] = v;
  for (const [k, v] of Object.entries(features ?? {})) values[FEATURE_PREFIX + k] = v;
  return values;
}

// -- the step arithmetic (float32, element-wise, no FMA) -----------------------------

/**
 * The clean-sample estimate from a model output (float32): v: a*z - s*out; eps: (z - s*out) / a; x0: out.
 * @param {string} prediction
 * @param {Float32Array} out
 * @param {Float32Array} z
 * @param {number} alpha float32 value of tables.alpha[i]
 * @param {number} sigma float32 value of tables.sigma[i]
 */
export function toX0(prediction, out, z, alpha, sigma) {
  const x0 = new Float32Array(out.length);
  if (prediction === 'v') for (let k = 0; k < out.length; k++) x0[k] = fr(alpha * z[k]) - fr(sigma * out[k]);
  else if (prediction === 'eps') for (let k = 0; k < out.length; k++) x0[k] = fr(z[k] - fr(sigma * out[k])) / alpha;
  else if (prediction === 'x0') x0.set(out);
  else throw new BadInputError(`model.prediction is ${prediction}; expected v, eps or x0`);
  return x0;   // each difference / quotient is rounded by the Float32Array store
}

/** x0_uncond + scale * (x0_cond - x0_uncond) in float32 (scale rounded to float32). */
export function guide(x0Cond, x0Uncond, scale) {
  const s = fr(scale);
  const out = new Float32Array(x0Cond.length);
  for (let k = 0; k < out.length; k++) out[k] = x0Uncond[k] + fr(s * fr(x0Cond[k] - x0Uncond[k]));
  return out;
}

/** Clip to [-c, c] (bounds rounded to float32, as numpy clips a float32 array), in place. */
export function clip(x0, c) {
  const lo = fr(-c);
  const hi = fr(c);
  for (let k = 0; k < x0.length; k++) x0[k] = x0[k] < lo ? lo : x0[k] > hi ? hi : x0[k];
  return x0;
}

/**
 * One affine step: (cz*z + cx*x0) + cn*xi, coefficients already float32, each op rounded.
 * @param {Float32Array} z @param {Float32Array} x0
 * @param {number} cz @param {number} cx @param {number} cn
 * @param {Float32Array|null} xi null where cn == 0 (no draw)
 */
export function affineStep(z, x0, cz, cx, cn, xi) {
  const out = new Float32Array(z.length);
  for (let k = 0; k < z.length; k++) out[k] = fr(cz * z[k]) + fr(cx * x0[k]);
  if (xi) for (let k = 0; k < z.length; k++) out[k] = out[k] + fr(cn * xi[k]);
  return out;
}

/**
 * What the decoder is fed: x / float32(scaling_factor) + float32(shift_factor), in float32.
 * @param {Float32Array} x
 * @param {{scaling_factor: number, shift_factor: number}} decoder
 */
export function decoderInput(x, decoder) {
  const s = fr(decoder.scaling_factor);
  const t = fr(decoder.shift_factor);
  const out = new Float32Array(x.length);
  for (let k = 0; k < x.length; k++) out[k] = fr(x[k] / s) + t;
  return out;
}

// -- the loop ---------------------------------------------------------------------

/**
 * @typedef {object} SampleOptions
 * @property {Record<string, any>|ArrayLike<number|bigint>} [conditioning] name -> rows [B, ...shape], or class ids
 * @property {bigint|number|string} [seed] overrides spec.noise.rng.seed
 * @property {number} [batch] samples when the model takes no conditioning (default 1)
 * @property {NoiseSource} [noise] external noise (required where spec.noise.rng.kind is 'external')
 * @property {Record<string, HostTensor>} [nulls] stored nulls (Bundle.nulls)
 * @property {(step: number, total: number) => void|Promise<void>} [onStep]
 * @property {boolean} [record] keep z and x0 after every step
 * @property {boolean} [decode] run the decoder on the final sample where the spec has one (default true)
 *
 * @typedef {object} SampleResult
 * @property {HostTensor} x  final samples float32 [B, C, H, W]
 * @property {HostTensor|null} decoded  the decoder's output, where the spec has a decoder
 * @property {{cond: number[], uncond: number[]}} refreshLog  steps at which each branch ran the encoder
 * @property {{cond: Int32Array, uncond: Int32Array}} ctxSteps  per step, the step whose encoder call filled the cache used (-1: inactive)
 * @property {Float32Array[]} trajectory  z after each step (record)
 * @property {Float32Array[]} x0Estimates  guided, clipped x0 of each step (record)
 * @property {{totalMs: number, callbackMs: number}} timing  wall time of sample(), and the part spent in onStep
 */

/**
 * Run the dual-rate sampler of `spec` on `runner`.
 * @param {Runner} runner
 * @param {import('./spec.js').Spec} spec
 * @param {SampleOptions} [opts]
 * @returns {Promise<SampleResult>}
 */
export async function sample(runner, spec, opts = {}) {
  const t0 = now();
  const m = spec.model;
  const s = spec.sampler;
  const tab = s.tables;
  const shape = m.sample_shape;
  const n = numel(shape);
  const cond = checkConditioning(spec, opts.conditioning);
  const condRows = Object.values(cond)[0]?.dims[0];
  if (condRows !== undefined && opts.batch !== undefined && opts.batch !== condRows) {
    throw new BadInputError(`batch ${opts.batch} disagrees with the conditioning's ${condRows} rows`);
  }
  const b = condRows ?? opts.batch ?? 1;
  if (!Number.isInteger(b) || b < 1) throw new BadInputError(`batch is ${b}; expected at least 1 sample`);
  let noise = opts.noise;
  if (!noise) {
    if (spec.noise.rng.kind === 'external') {
      throw new BadInputError("this spec's noise.rng is 'external': pass the noise tensors explicitly (opts.noise)");
    }
    noise = new PhiloxNoise(opts.seed ?? spec.noise.rng.seed, b);
  }
  const plan = callPlan(spec);
  // every group's rows (nulls included) before any graph runs
  const condOf = new Map();
  for (const step of plan) for (const call of step) {
    const key = call.branches.join('+');
    if (!condOf.has(key)) condOf.set(key, groupConditioning(spec, cond, opts.nulls, call.branches));
  }
  const alpha = tab.alpha.map(fr);
  const sigma = tab.sigma.map(fr);
  const cz = tab.coef_z.map(fr);
  const cx = tab.coef_x0.map(fr);
  const cn = tab.coef_noise.map(fr);
  const times = tab.model_time;
  const drawChecked = (index) => {
    const d = noise.draw(index, shape);
    if (d.length !== b * n) {
      throw new BadInputError(`noise draw ${index} has ${d.length} elements; expected ${b} x [${shape.join(', ')}] = ${b * n}`);
    }
    return d;
  };
  let z = drawChecked(0);
  const caches = new Map();
  const refreshLog = { cond: [], uncond: [] };
  const ctxSteps = { cond: new Int32Array(s.num_steps).fill(-1), uncond: new Int32Array(s.num_steps).fill(-1) };
  const trajectory = [];
  const x0Estimates = [];
  let callbackMs = 0;
  for (let i = 0; i < plan.length; i++) {
    /** @type {Record<string, Float32Array>} */
    const x0By = {};
    for (const call of plan[i]) {
      const key = call.branches.join('+');
      const groups = call.branches.length;
      const rows = b * groups;
      let zData = z;
      if (groups > 1) {
        zData = new Float32Array(rows * n);
        for (let k = 0; k < groups; k++) zData.set(z, k * b * n);
      }
      const zIn = new HostTensor('float32', zData, [rows, ...shape]);
      const rc = condOf.get(key);
      if (call.refresh) {
        const old = caches.get(key);
        const feats = await runner.encode(graphFeeds(m.encoder, roleValues(zIn, times[i], null, rc), rows));
        if (old && runner.releaseFeatures) runner.releaseFeatures(old);
        caches.set(key, feats);
        for (const br of call.branches) refreshLog[br].push(i);
      }
      const feats = caches.get(key);
      const out = await runner.denoise(graphFeeds(m.denoiser, roleValues(zIn, times[i], times[call.ctxStep], rc, feats), rows));
      if (out.data.length !== rows * n) {
        throw new BadInputError(`the denoiser returned ${out.data.length} values at step ${i}; expected ${rows} x [${shape.join(', ')}]`);
      }
      if (!allFinite(out.data)) await raiseNonFinite(runner, feats, call, i);
      call.branches.forEach((br, k) => {
        ctxSteps[br][i] = call.ctxStep;
        const o = out.data.subarray(k * b * n, (k + 1) * b * n);
        x0By[br] = toX0(m.prediction, o, z, alpha[i], sigma[i]);
      });
    }
    let x0 = x0By[COND];
    if (x0By[UNCOND]) x0 = guide(x0, x0By[UNCOND], spec.guidance.scale);
    if (s.clip_x0 !== null) clip(x0, s.clip_x0);
    z = affineStep(z, x0, cz[i], cx[i], cn[i], cn[i] !== 0 ? drawChecked(i + 1) : null);
    if (opts.record) {
      trajectory.push(z);
      x0Estimates.push(x0);
    }
    if (opts.onStep) {
      const tc = now();
      await opts.onStep(i, plan.length);
      callbackMs += now() - tc;
    }
  }
  for (const feats of caches.values()) if (runner.releaseFeatures) runner.releaseFeatures(feats);
  let decoded = null;
  if (m.decoder && opts.decode !== false) decoded = await decode(runner, spec, z, b);
  return {
    x: new HostTensor('float32', z, [b, ...shape]), decoded, refreshLog, ctxSteps, trajectory, x0Estimates,
    timing: { totalMs: now() - t0, callbackMs },
  };
}

/**
 * Run the decoder once on final samples x (flat [B, C, H, W]).
 * @param {Runner} runner
 * @param {import('./spec.js').Spec} spec
 * @param {Float32Array} x
 * @param {number} b
 */
export async function decode(runner, spec, x, b) {
  const d = spec.model.decoder;
  if (!d || !runner.decode) throw new BadInputError('this bundle has no decoder graph');
  const input = new HostTensor('float32', decoderInput(x, d), [b, ...spec.model.sample_shape]);
  const out = await runner.decode(graphFeeds(d.graph, { [ROLE_SAMPLE]: input }, b));
  if (!allFinite(out.data)) throw new NonFiniteError('non-finite values (NaN/Inf) in the decoder output on the final samples');
  return new HostTensor('float32', Float32Array.from(out.data), [b, ...d.output_shape]);
}

function allFinite(data) {
  for (let k = 0; k < data.length; k++) if (!Number.isFinite(data[k])) return false;
  return true;
}

async function raiseNonFinite(runner, feats, call, step) {
  const branch = call.branches.join('+');
  if (runner.featuresToHost) {
    const host = await runner.featuresToHost(feats);
    for (const [name, f] of Object.entries(host)) {
      if (f.data instanceof Float32Array || f.data instanceof Float64Array) {
        if (!allFinite(f.data)) {
          throw new NonFiniteError(`non-finite values (NaN/Inf) in encoder output '${name}' computed at step ${call.ctxStep} (branch ${branch}), seen at step ${step}`);
        }
      }
    }
  }
  throw new NonFiniteError(`non-finite values (NaN/Inf) in the denoiser output at step ${step} (branch ${branch})`);
}

function now() {
  return globalThis.performance ? performance.now() : Date.now();
}
