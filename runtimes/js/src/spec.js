// spec.json (dualrate-sampler, spec 2.x): parse and check every invariant this runtime relies on.
// Each message names the field, as dualrate's Python SpecError does.

import { SpecError } from './errors.js';

export const SPEC_NAME = 'dualrate-sampler';
export const SPEC_MAJOR = 2;
export const SPEC_VERSION = '2.0.0';
export const ROLE_SAMPLE = 'sample';
export const ROLE_TIME = 'time';
export const ROLE_TIME_CTX = 'time_ctx';
export const COND_PREFIX = 'cond:';
export const FEATURE_PREFIX = 'feature:';
export const TIME_INPUTS = ['logsnr', 't', 'timestep'];
export const DTYPES = ['float32', 'float16', 'bfloat16', 'float64', 'int64', 'int32', 'bool'];
export const TIME_DTYPES = ['float32', 'float64', 'int64', 'int32'];
export const SAMPLERS = ['ancestral', 'ddim'];
export const FINAL_STEPS = ['return_x0', 'step'];
export const RNG_KINDS = ['philox4x32-10', 'external'];

/**
 * @typedef {{name: string, shape: Array<number|string>, dtype: string, feeds?: string}} TensorIO
 * @typedef {{inputs: TensorIO[], outputs: TensorIO[]}} GraphIO
 * @typedef {{name: string, shape: number[], dtype: string, null_kind: 'none'|'value'|'file',
 *            null_value: number|null, null_file: string|null, num_classes: number|null}} ConditioningSpec
 * @typedef {{graph: GraphIO, scaling_factor: number, shift_factor: number, output_shape: number[],
 *            data_range: [number, number]}} DecoderSpec
 * @typedef {{sample_shape: number[], prediction: 'v'|'eps'|'x0', encoder: GraphIO, denoiser: GraphIO,
 *            conditioning: ConditioningSpec[], decoder: DecoderSpec|null, time_input: string,
 *            data_range: [number, number]}} ModelSpec
 * @typedef {{t: number[], logsnr: number[], alpha: number[], sigma: number[], coef_z: number[],
 *            coef_x0: number[], coef_noise: number[], model_time: number[]}} Tables
 * @typedef {{type: string, eta: number, num_steps: number, tables: Tables, clip_x0: number|null,
 *            final_step: string}} SamplerSpec
 * @typedef {{model: ModelSpec, sampler: SamplerSpec,
 *            dual_rate: {refresh: {kind: string, params: object}, resolved_refresh_steps: number[]},
 *            guidance: {scale: number, interval_logsnr: [number, number]|null, networks: string[]},
 *            noise: {rng: {kind: string, seed: bigint|null}}, spec: string, spec_version: string,
 *            process: object, provenance: object}} Spec
 */

const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
const isInt = (v) => Number.isInteger(v);
const list = (v) => `[${v.join(', ')}]`;

function need(cond, msg) {
  if (!cond) throw new SpecError(msg);
}

/**
 * Parse spec.json text; throws SpecError naming the field. Seeds above 2^53 are read exactly
 * from the text (JSON numbers are doubles in JavaScript).
 * @param {string} text
 * @param {string} [where] prefix for messages (e.g. the file)
 * @returns {Spec}
 */
export function parseSpec(text, where = 'spec.json') {
  let data;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new SpecError(`${where} is not valid JSON (${err.message})`);
  }
  try {
    return checkSpec(data, text);
  } catch (err) {
    if (err instanceof SpecError && where !== 'spec') throw new SpecError(`${where}: ${err.message}`);
    throw err;
  }
}

/** The exact seed from the spec text (a JSON integer may exceed 2^53). */
function exactSeed(value, text) {
  if (value === null || value === undefined) return null;
  need(isInt(value) && value >= 0, `noise.rng.seed is ${JSON.stringify(value)}; expected an integer in [0, 2^64)`);
  if (Number.isSafeInteger(value) || text === undefined) return BigInt(value);
  const found = [...text.matchAll(/"seed"\s*:\s*([0-9]+)/g)].map((m) => BigInt(m[1])).filter((b) => Number(b) === value);
  need(new Set(found.map(String)).size === 1, `noise.rng.seed ${value} is above 2^53 and cannot be read exactly`);
  return found[0];
}

/**
 * Check a parsed spec object (see parseSpec).
 * @param {any} data
 * @param {string} [text] the JSON text, for exact large seeds
 * @returns {Spec}
 */
export function checkSpec(data, text) {
  need(isObj(data), 'expected a JSON object');
  checkVersion(data.spec_version);
  need(data.spec === SPEC_NAME, `spec is ${JSON.stringify(data.spec)}; expected ${JSON.stringify(SPEC_NAME)}`);
  for (const key of ['model', 'sampler', 'dual_rate']) need(isObj(data[key]), `${key}: required field is missing`);
  const spec = {
    ...data,
    guidance: { scale: 1, interval_logsnr: null, networks: ['encoder', 'denoiser'], ...(data.guidance ?? {}) },
    noise: { ...(data.noise ?? {}), rng: { kind: 'philox4x32-10', seed: 0, ...(data.noise?.rng ?? {}) } },
  };
  spec.noise.rng.seed = exactSeed(spec.noise.rng.seed, text);
  const m = (spec.model = checkModel(data.model));
  const s = (spec.sampler = checkSampler(data.sampler, m));
  checkRefresh(data.dual_rate, s.num_steps);
  const g = spec.guidance;
  need(isNum(g.scale) && g.scale >= 0, `guidance.scale is ${g.scale}; expected a finite number >= 0 (1 = no guidance)`);
  if (g.interval_logsnr !== null) {
    const iv = g.interval_logsnr;
    need(Array.isArray(iv) && iv.length === 2 && iv.every(isNum) && iv[0] <= iv[1],
      `guidance.interval_logsnr is ${JSON.stringify(iv)}; expected [low, high] with low <= high`);
  }
  need(Array.isArray(g.networks) && g.networks.length === 2 && g.networks.includes('encoder') && g.networks.includes('denoiser'),
    `guidance.networks is ${JSON.stringify(g.networks)}; this version runs both nets per branch`);
  if (g.scale !== 1) {
    need(m.conditioning.length > 0, `guidance.scale is ${g.scale} but the model takes no conditioning; use scale 1`);
    const missing = m.conditioning.filter((c) => c.null_kind === 'none');
    need(!missing.length, `guidance.scale is ${g.scale} but conditioning '${missing[0]?.name}' declares no null value for the unconditional branch`);
  }
  const rng = spec.noise.rng;
  need(RNG_KINDS.includes(rng.kind), `noise.rng.kind is ${JSON.stringify(rng.kind)}; expected one of ${RNG_KINDS.join(', ')}`);
  if (rng.kind !== 'external') {
    need(rng.seed !== null && rng.seed < 1n << 64n, `noise.rng.seed is ${rng.seed}; expected an integer in [0, 2^64)`);
  }
  return /** @type {Spec} */ (spec);
}

/** @param {unknown} version */
export function checkVersion(version) {
  need(typeof version === 'string' && /^[0-9]+\.[0-9]+\.[0-9]+$/.test(version),
    `spec_version is ${JSON.stringify(version)}; expected a semantic version such as '${SPEC_VERSION}'`);
  const major = Number(String(version).split('.')[0]);
  need(major >= SPEC_MAJOR, `spec_version ${version} was written by an earlier dualrate (inputs bound by position); `
    + `this runtime reads ${SPEC_MAJOR}.x with inputs bound by role. Re-export the bundle with a current dualrate`);
  need(major <= SPEC_MAJOR, `spec_version ${version} has major version ${major}; this runtime reads ${SPEC_MAJOR}.x. `
    + 'Upgrade dualrate-js or re-export the bundle');
}

function checkShape(shape, where, { batch = false } = {}) {
  need(Array.isArray(shape), `${where} is ${JSON.stringify(shape)}; expected a list`);
  const rest = batch ? shape.slice(1) : shape;
  if (batch) {
    need(shape.length > 0 && (shape[0] === 'batch' || (isInt(shape[0]) && shape[0] > 0)),
      `${where} ${JSON.stringify(shape)} must start with the batch axis ('batch' or a size)`);
  }
  need(rest.every((d) => isInt(d) && d >= 1), `${where} ${JSON.stringify(shape)} must have fixed positive sizes${batch ? ' after the batch axis' : ''}`);
  return shape;
}

function checkGraph(gio, where) {
  need(isObj(gio) && Array.isArray(gio.inputs) && Array.isArray(gio.outputs), `${where}: expected {inputs, outputs}`);
  for (const [kind, ios] of [['input', gio.inputs], ['output', gio.outputs]]) {
    for (const tio of ios) {
      need(isObj(tio) && typeof tio.name === 'string', `${where}: an ${kind} has no name`);
      need(DTYPES.includes(tio.dtype), `${where} ${kind} '${tio.name}': dtype ${JSON.stringify(tio.dtype)} is not one of ${DTYPES.join(', ')}`);
      checkShape(tio.shape, `${where} ${kind} '${tio.name}': shape`, { batch: true });
    }
  }
  const names = [...gio.inputs, ...gio.outputs].map((t) => t.name);
  need(new Set(names).size === names.length, `${where}: input/output names repeat: ${list(names)}`);
  return gio;
}

function checkModel(m) {
  need(Array.isArray(m.sample_shape) && m.sample_shape.length === 3 && m.sample_shape.every((d) => isInt(d) && d >= 1),
    `model.sample_shape is ${JSON.stringify(m.sample_shape)}; expected [C, H, W] with positive sizes`);
  need(['v', 'eps', 'x0'].includes(m.prediction), `model.prediction is ${JSON.stringify(m.prediction)}; expected v, eps or x0`);
  need((m.layout ?? 'NCHW') === 'NCHW' && (m.dtype ?? 'float32') === 'float32', 'model.layout/dtype must be NCHW/float32');
  const model = { time_input: 'logsnr', conditioning: [], decoder: null, data_range: [-1, 1], ...m };
  need(TIME_INPUTS.includes(model.time_input), `model.time_input is ${JSON.stringify(model.time_input)}; expected one of ${TIME_INPUTS.join(', ')}`);
  model.conditioning = (model.conditioning ?? []).map((c, k) => checkConditioning(c, k));
  const names = model.conditioning.map((c) => c.name);
  need(new Set(names).size === names.length, `model.conditioning names repeat: ${list(names)}`);
  checkGraph(model.encoder, 'model.encoder');
  checkGraph(model.denoiser, 'model.denoiser');
  if (model.decoder !== null) {
    const d = (model.decoder = { scaling_factor: 1, shift_factor: 0, output_shape: [], data_range: [-1, 1], ...model.decoder });
    checkGraph(d.graph, 'model.decoder.graph');
    need(isNum(d.scaling_factor) && d.scaling_factor !== 0 && isNum(d.shift_factor),
      `model.decoder.scaling_factor/shift_factor are ${d.scaling_factor}/${d.shift_factor}; expected finite numbers and a non-zero scaling factor`);
    need(d.graph.outputs.length === 1, `model.decoder.graph.outputs has ${d.graph.outputs.length} entries; expected 1`);
    need(JSON.stringify(d.graph.outputs[0].shape.slice(1)) === JSON.stringify(d.output_shape),
      `model.decoder.output_shape is ${JSON.stringify(d.output_shape)} but its graph outputs ${JSON.stringify(d.graph.outputs[0].shape)}`);
  }
  checkBindings(model);
  return model;
}

function checkConditioning(c, k) {
  need(isObj(c) && typeof c.name === 'string' && /^[A-Za-z_][A-Za-z0-9_.-]*$/.test(c.name),
    `model.conditioning[${k}]: name ${JSON.stringify(c?.name)} must start with a letter or _ and hold letters, digits, _ . -`);
  const where = `model.conditioning[${c.name}]`;
  const out = { null_kind: 'none', null_value: null, null_file: null, num_classes: null, ...c };
  need(DTYPES.includes(out.dtype), `${where}.dtype is ${JSON.stringify(out.dtype)}; expected one of ${DTYPES.join(', ')}`);
  checkShape(out.shape, `${where}.shape`);
  need(['none', 'value', 'file'].includes(out.null_kind), `${where}.null_kind is ${JSON.stringify(out.null_kind)}; expected none, value or file`);
  need((out.null_kind === 'value') === (out.null_value !== null), `${where}: null_value is given exactly when null_kind is 'value'`);
  need(out.null_value === null || isNum(out.null_value), `${where}.null_value is ${JSON.stringify(out.null_value)}; expected a number`);
  need((out.null_kind === 'file') === (out.null_file !== null), `${where}: null_file is given exactly when null_kind is 'file'`);
  if (out.null_file !== null) {
    need(typeof out.null_file === 'string' && !out.null_file.startsWith('/') && !out.null_file.split('/').includes('..')
      && out.null_file.endsWith('.npy'), `${where}.null_file is ${JSON.stringify(out.null_file)}; expected a relative .npy path inside the bundle`);
  }
  if (out.num_classes !== null) {
    need(out.dtype.startsWith('int') && isInt(out.num_classes) && out.num_classes >= 1,
      `${where}: num_classes applies to integer class ids with at least one class`);
  }
  return out;
}

function checkBindings(m) {
  const encOut = new Map(m.encoder.outputs.map((o) => [o.name, o]));
  need(encOut.size > 0, 'model.encoder.outputs is empty; the encoder must emit at least one feature');
  const conds = new Map(m.conditioning.map((c) => [COND_PREFIX + c.name, c]));
  const allowed = {
    encoder: new Set([ROLE_SAMPLE, ROLE_TIME, ...conds.keys()]),
    denoiser: new Set([ROLE_SAMPLE, ROLE_TIME, ROLE_TIME_CTX, ...conds.keys(), ...[...encOut.keys()].map((n) => FEATURE_PREFIX + n)]),
    decoder: new Set([ROLE_SAMPLE]),
  };
  for (const [graph, gio] of Object.entries(graphsOf(m))) {
    const seen = new Set();
    for (const tio of gio.inputs) {
      const where = `model.${graph} input '${tio.name}'`;
      need(allowed[graph].has(tio.feeds), `${where} is fed ${JSON.stringify(tio.feeds)}; a ${graph} input is fed one of ${[...allowed[graph]].sort().join(', ')}`);
      need(!seen.has(tio.feeds), `${where}: role '${tio.feeds}' feeds two inputs; one input per role`);
      seen.add(tio.feeds);
      if (tio.feeds === ROLE_TIME || tio.feeds === ROLE_TIME_CTX) {
        need(tio.shape.length === 1 && TIME_DTYPES.includes(tio.dtype),
          `${where} (${tio.feeds}) is ${tio.dtype} ${JSON.stringify(tio.shape)}; a time input is [batch] of ${TIME_DTYPES.join(', ')}`);
      }
      let want = null;
      if (tio.feeds === ROLE_SAMPLE) want = ['float32', m.sample_shape];
      else if (conds.has(tio.feeds)) want = [conds.get(tio.feeds).dtype, conds.get(tio.feeds).shape];
      else if (tio.feeds.startsWith(FEATURE_PREFIX)) {
        const o = encOut.get(tio.feeds.slice(FEATURE_PREFIX.length));
        want = [o.dtype, o.shape.slice(1)];
      }
      if (want) {
        need(tio.dtype === want[0] && JSON.stringify(tio.shape.slice(1)) === JSON.stringify(want[1]),
          `${where} (${tio.feeds}) is ${tio.dtype} ${JSON.stringify(tio.shape)}; expected ${want[0]} [batch${want[1].map((d) => `, ${d}`).join('')}]`);
      }
    }
    if (graph !== 'encoder') need(seen.has(ROLE_SAMPLE), `model.${graph} takes no input fed 'sample'; the ${graph} must read the sample`);
  }
  need(m.denoiser.outputs.length === 1, `model.denoiser.outputs has ${m.denoiser.outputs.length} entries; expected 1 (the prediction)`);
  need(JSON.stringify(m.denoiser.outputs[0].shape.slice(1)) === JSON.stringify(m.sample_shape),
    `model.denoiser output is ${JSON.stringify(m.denoiser.outputs[0].shape)}; expected [batch, ${m.sample_shape.join(', ')}] (the sample's shape)`);
}

/**
 * Every graph of the model by name (decoder only where there is one).
 * @param {ModelSpec} m
 * @returns {Record<string, GraphIO>}
 */
export function graphsOf(m) {
  const out = { encoder: m.encoder, denoiser: m.denoiser };
  if (m.decoder) out.decoder = m.decoder.graph;
  return out;
}

function sigmoid(x) {
  const e = Math.exp(-Math.abs(x));
  return x >= 0 ? 1 / (1 + e) : e / (1 + e);
}

function checkSampler(s, m) {
  const out = { clip_x0: null, final_step: 'return_x0', time_grid: 'uniform_t', ...s };
  need(SAMPLERS.includes(out.type), `sampler.type is ${JSON.stringify(out.type)}; supported: ${SAMPLERS.join(', ')}`);
  need(isNum(out.eta) && out.eta >= 0 && out.eta <= 1 && (out.type !== 'ancestral' || out.eta === 1),
    `sampler.eta is ${out.eta}; expected 0..1 for ddim and exactly 1 for ancestral`);
  need(FINAL_STEPS.includes(out.final_step), `sampler.final_step is ${JSON.stringify(out.final_step)}; expected one of ${FINAL_STEPS.join(', ')}`);
  need(out.clip_x0 === null || (isNum(out.clip_x0) && out.clip_x0 > 0), `sampler.clip_x0 is ${out.clip_x0}; expected a positive number or null`);
  need(isInt(out.num_steps) && out.num_steps >= 1, `sampler.num_steps is ${out.num_steps}; expected at least 1`);
  const n = out.num_steps;
  const tab = out.tables;
  need(isObj(tab), 'sampler.tables: required field is missing');
  for (const key of ['t', 'logsnr', 'alpha', 'sigma', 'coef_z', 'coef_x0', 'coef_noise', 'model_time']) {
    const want = ['t', 'logsnr', 'alpha', 'sigma'].includes(key) ? n + 1 : n;
    need(Array.isArray(tab[key]), `sampler.tables.${key}: required field is missing`);
    need(tab[key].length === want, `sampler.tables.${key} has ${tab[key].length} entries; expected ${want} for num_steps=${n}`);
    need(tab[key].every(isNum), `sampler.tables.${key} contains non-finite values`);
  }
  for (let i = 0; i < n; i++) {
    need(tab.t[i + 1] < tab.t[i], `sampler.tables.t must decrease strictly (t[0] = noise); t[${i}]=${tab.t[i]} and t[${i + 1}]=${tab.t[i + 1]}`);
    need(tab.logsnr[i + 1] > tab.logsnr[i], `sampler.tables.logsnr must increase strictly; logsnr[${i}]=${tab.logsnr[i]}, logsnr[${i + 1}]=${tab.logsnr[i + 1]}`);
  }
  if (m.time_input === 'logsnr' || m.time_input === 't') {
    for (let i = 0; i < n; i++) {
      need(tab.model_time[i] === tab[m.time_input][i], `sampler.tables.model_time[${i}] is ${tab.model_time[i]} but model.time_input ${m.time_input} says it is sampler.tables.${m.time_input}[${i}] = ${tab[m.time_input][i]}`);
    }
  } else {
    tab.model_time.forEach((v, i) => need(isInt(v) && v >= 0, `sampler.tables.model_time[${i}] is ${v}; discrete timesteps are non-negative integers`));
  }
  // the step coefficients and alpha/sigma must be what the log-SNR grid gives (an edited or corrupt
  // table is refused); the sampler itself only ever reads the tables
  const close = (got, want) => Math.abs(got - want) <= 1e-12 + 1e-9 * Math.abs(want);
  for (let i = 0; i <= n; i++) {
    const lam = tab.logsnr[i];
    need(close(tab.alpha[i], Math.sqrt(sigmoid(lam))), `sampler.tables.alpha[${i}] is ${tab.alpha[i]} but logsnr gives ${Math.sqrt(sigmoid(lam))}; the tables are inconsistent (edited or corrupt)`);
    need(close(tab.sigma[i], Math.sqrt(sigmoid(-lam))), `sampler.tables.sigma[${i}] is ${tab.sigma[i]} but logsnr gives ${Math.sqrt(sigmoid(-lam))}; the tables are inconsistent (edited or corrupt)`);
  }
  for (let i = 0; i < n; i++) {
    const want = affine(out.type, out.eta, tab.logsnr[i], tab.logsnr[i + 1]);
    if (i === n - 1 && out.final_step === 'return_x0') want.splice(0, 3, 0, 1, 0);
    ['coef_z', 'coef_x0', 'coef_noise'].forEach((key, j) => need(close(tab[key][i], want[j]),
      `sampler.tables.${key}[${i}] is ${tab[key][i]} but the ${out.type} step from logsnr gives ${want[j]}; the tables are inconsistent (edited or corrupt)`));
  }
  return out;
}

/** (A, B, C) of the affine step from log-SNR lt to ls (exporter/sampler_tables.py), float64. */
function affine(type, eta, lt, ls) {
  const at = Math.sqrt(sigmoid(lt));
  const st = Math.sqrt(sigmoid(-lt));
  const as = Math.sqrt(sigmoid(ls));
  const ss = Math.sqrt(sigmoid(-ls));
  const c = -Math.expm1(lt - ls);
  if (type === 'ancestral') return [(as * Math.exp(lt - ls)) / at, as * c, ss * Math.sqrt(c)];
  const a = (ss * Math.sqrt(1 - eta * eta * c)) / st;
  return [a, as - a * at, eta * ss * Math.sqrt(c)];
}

function checkRefresh(dr, n) {
  const steps = dr.resolved_refresh_steps;
  const field = 'dual_rate.resolved_refresh_steps';
  need(Array.isArray(steps) && steps.every(isInt), `${field} must hold integers; found ${JSON.stringify(steps)}`);
  need(steps.length > 0 && steps[0] === 0, `${field} is ${list(steps)}; it must start with step 0 (the first step always runs the encoder)`);
  need(steps.every((s, i) => i === 0 || s > steps[i - 1]), `${field} is ${list(steps)}; it must be strictly increasing with no repeats`);
  need(steps[steps.length - 1] < n, `${field} contains step ${steps[steps.length - 1]}, out of range for ${n} steps (valid: 0..${n - 1})`);
}
