// Conformance against `dualrate golden` vectors: the analytic mock networks of the golden README
// (exporter/conformance.py MOCK_FORMULAS) as a runner, a reader for the raw .bin tensors
// (vectors.json), and a replay of one variant that runs every check the README lists, through
// this runtime's own code (Philox, the call plan, the step arithmetic, the loop). Works in Node.js
// (directorySource) and in the browser (urlSource).

import { openSpecFolder } from './bundle.js';
import { BadInputError } from './errors.js';
import { ownBytes } from './npy.js';
import { PhiloxNoise, normalDraw, philox4x32_10, seedKey } from './philox.js';
import {
  COND, UNCOND, affineStep, clip, decoderInput, graphFeeds, guide, nullRow, sample, timeTensor, toX0,
} from './sampler.js';
import { COND_PREFIX, FEATURE_PREFIX, ROLE_SAMPLE, ROLE_TIME, ROLE_TIME_CTX, graphsOf } from './spec.js';
import { ARRAY_OF, HostTensor, numel, numberAt } from './tensor.js';

export const ATOL = 1e-5;
export const RTOL = 1e-4;
export const FEATURES = ['feat0', 'feat1'];
export const VARIANTS = ['ancestral_k4', 'ddim_eta0', 'guided_interval', 'guided_clip', 'timestep_trailing', 'text_guided', 'latent_decoder'];

/**
 * feat0 at full resolution, feat1 2x2-pooled (ceil for odd sizes).
 * @param {readonly number[]} sampleShape [C, H, W]
 * @returns {number[][]}
 */
export function mockFeatureShapes(sampleShape) {
  const [c, h, w] = sampleShape;
  return [[c, h, w], [c, Math.ceil(h / 2), Math.ceil(w / 2)]];
}

/** The mock's log-SNR of a fed time value. */
export function mockLogsnr(timeInput, u) {
  if (timeInput === 'logsnr') return u;
  if (timeInput === 't') return 6 - 12 * u;
  return 3 - (8 * u) / 1000;
}

const sigmoid = (x) => 1 / (1 + Math.exp(-x));

/**
 * The golden README's mock networks behind the runner contract: inputs read by role, outputs by
 * name, float64 evaluation rounded to float32 once.
 */
export class MockRunner {
  /** @param {import('./spec.js').Spec} spec */
  constructor(spec) {
    this.spec = spec;
    this.graphs = graphsOf(spec.model);
    this.timing = {};
    this.resetStats();
    const got = spec.model.encoder.outputs.map((o) => [o.name, o.shape.slice(1)]);
    const want = FEATURES.map((n, k) => [n, mockFeatureShapes(spec.model.sample_shape)[k]]);
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      throw new BadInputError(`the mock encoder emits ${JSON.stringify(want)}, but this spec's encoder outputs are ${JSON.stringify(got)}`);
    }
  }

  resetStats() {
    this.timing = Object.fromEntries(Object.keys(this.graphs).map((g) => [g, { calls: 0, ms: 0, rows: 0 }]));
  }

  stats() {
    return JSON.parse(JSON.stringify(this.timing));
  }

  #values(graph, feeds) {
    const values = {};
    for (const tio of this.graphs[graph].inputs) {
      if (!(tio.name in feeds)) throw new BadInputError(`${graph}: input '${tio.name}' was not fed`);
      values[tio.feeds] = feeds[tio.name];
    }
    const rows = Object.values(values)[0].dims[0];
    const st = this.timing[graph];
    st.calls += 1;
    st.rows += rows;
    return [values, rows];
  }

  #lam(values, role, rows) {
    const t = values[role];
    return Float64Array.from({ length: rows }, (_, b) => (t ? mockLogsnr(this.spec.model.time_input, numberAt(t.data, b)) : 0));
  }

  #embedding(values, rows) {
    const e = new Float64Array(rows);
    for (const c of this.spec.model.conditioning) {
      const x = values[COND_PREFIX + c.name];
      if (!x) continue;
      if (c.num_classes !== null) {
        for (let b = 0; b < rows; b++) e[b] += Math.sin(0.9 * numberAt(x.data, b) + 0.5);
      } else if (x.type.startsWith('float')) {
        const per = numel(x.dims.slice(1));
        const d = x.dims[x.dims.length - 1];
        const l = per / d;
        const mask = values[`${COND_PREFIX}${c.name}_mask`];
        for (let b = 0; b < rows; b++) {
          let num = 0;
          let den = 0;
          for (let li = 0; li < l; li++) {
            let acc = 0;
            for (let di = 0; di < d; di++) acc += numberAt(x.data, b * per + li * d + di) * Math.cos(1.3 * di + 0.2);
            const m = mask ? numberAt(mask.data, b * l + li) : 1;
            num += m * Math.tanh(0.5 * acc);
            den += m;
          }
          e[b] += (1.5 * num) / Math.max(1, den);
        }
      }
    }
    return e;
  }

  /** @param {Record<string, any>} feeds */
  async encode(feeds) {
    const [values, rows] = this.#values('encoder', feeds);
    const [c, h, w] = this.spec.model.sample_shape;
    const n = c * h * w;
    const z = values[ROLE_SAMPLE]?.data ?? new Float32Array(rows * n);
    const lam = this.#lam(values, ROLE_TIME, rows);
    const e = this.#embedding(values, rows);
    const [, [, ph, pw]] = mockFeatureShapes([c, h, w]);
    const f0 = new Float32Array(rows * n);
    const f1 = new Float32Array(rows * c * ph * pw);
    const bb = new Float64Array(n);
    for (let r = 0; r < rows; r++) {
      for (let k = 0; k < n; k++) {
        const zk = z[r * n + k];
        f0[r * n + k] = Math.tanh(0.8 * zk + 0.1 * lam[r] + e[r]);
        bb[k] = Math.tanh(1.3 * zk - 0.05 * lam[r] - 0.5 * e[r]);
      }
      for (let ch = 0; ch < c; ch++) {
        for (let p = 0; p < ph; p++) {
          const h0 = 2 * p;
          const h1 = Math.min(2 * p + 1, h - 1);
          for (let q = 0; q < pw; q++) {
            const w0 = 2 * q;
            const w1 = Math.min(2 * q + 1, w - 1);
            const at = (y, x) => bb[ch * h * w + y * w + x];
            f1[((r * c + ch) * ph + p) * pw + q] = (at(h0, w0) + at(h0, w1) + at(h1, w0) + at(h1, w1)) / 4;
          }
        }
      }
    }
    return { feat0: new HostTensor('float32', f0, [rows, c, h, w]), feat1: new HostTensor('float32', f1, [rows, c, ph, pw]) };
  }

  /** @param {Record<string, any>} feeds */
  async denoise(feeds) {
    const [values, rows] = this.#values('denoiser', feeds);
    const [c, h, w] = this.spec.model.sample_shape;
    const n = c * h * w;
    const [, [, ph, pw]] = mockFeatureShapes([c, h, w]);
    const z = values[ROLE_SAMPLE].data;
    const e = this.#embedding(values, rows);
    const lam = this.#lam(values, ROLE_TIME, rows);
    const lamCtx = this.#lam(values, ROLE_TIME_CTX, rows);
    const hasCtx = ROLE_TIME_CTX in values;
    const f0 = values[`${FEATURE_PREFIX}feat0`]?.data;
    const f1 = values[`${FEATURE_PREFIX}feat1`]?.data;
    const out = new Float32Array(rows * n);
    const pred = this.spec.model.prediction;
    for (let r = 0; r < rows; r++) {
      const d = hasCtx ? lam[r] - lamCtx[r] : 0;
      const alpha = Math.sqrt(sigmoid(lam[r]));
      const sigma = Math.sqrt(sigmoid(-lam[r]));
      for (let ch = 0; ch < c; ch++) {
        for (let y = 0; y < h; y++) {
          for (let x = 0; x < w; x++) {
            const k = r * n + ch * h * w + y * w + x;
            const a0 = f0 ? f0[k] : 0;
            const up = f1 ? f1[((r * c + ch) * ph + (y >> 1)) * pw + (x >> 1)] : 0;
            const xt = Math.tanh(0.5 * z[k] + 0.9 * a0 - 0.6 * up + 0.4 * e[r] + 0.3 * Math.tanh(0.5 * d) + 0.02 * lam[r]);
            out[k] = pred === 'v' ? (alpha * z[k] - xt) / sigma : pred === 'eps' ? (z[k] - alpha * xt) / sigma : xt;
          }
        }
      }
    }
    return new HostTensor('float32', out, [rows, c, h, w]);
  }

  /** @param {Record<string, any>} feeds */
  async decode(feeds) {
    const [values, rows] = this.#values('decoder', feeds);
    const [c, h, w] = this.spec.model.sample_shape;
    const [o, oh, ow] = this.spec.model.decoder.output_shape;
    const s = values[ROLE_SAMPLE].data;
    const out = new Float32Array(rows * o * oh * ow);
    for (let r = 0; r < rows; r++) {
      for (let ch = 0; ch < o; ch++) {
        for (let y = 0; y < oh; y++) {
          const i = Math.floor((y * h) / oh);
          for (let x = 0; x < ow; x++) {
            const j = Math.floor((x * w) / ow);
            const at = (cc) => s[((r * c + cc) * h + i) * w + j];
            out[((r * o + ch) * oh + y) * ow + x] = Math.tanh(0.4 * at(ch % c) - 0.2 * at((ch + 1) % c) + 0.1 * ch);
          }
        }
      }
    }
    return new HostTensor('float32', out, [rows, o, oh, ow]);
  }

  async featuresToHost(features) {
    return features;
  }
}

// -- raw tensors --------------------------------------------------------------------

/**
 * Read vectors.json and every .bin it indexes: name -> HostTensor (little-endian, C order).
 * @param {import('./bundle.js').FileSource} source  the variant folder
 */
export async function readVectors(source) {
  const idxBytes = await source.read('vectors.json');
  if (idxBytes === null) throw new BadInputError(`${source.name}: no vectors.json`);
  const index = JSON.parse(new TextDecoder().decode(idxBytes));
  if (index.format !== 'dualrate-conformance-tensors') throw new BadInputError(`${source.name}/vectors.json: format is ${index.format}`);
  if ((index.byte_order ?? 'little') !== 'little') throw new BadInputError(`${source.name}/vectors.json: byte order ${index.byte_order}`);
  const out = {};
  await Promise.all(Object.entries(index.tensors).map(async ([name, t]) => {
    const Arr = ARRAY_OF[t.dtype];
    if (!Arr) throw new BadInputError(`${source.name}/vectors.json: ${name} has dtype ${t.dtype}`);
    const bytes = await source.read(t.file);
    if (bytes === null) throw new BadInputError(`${source.name}: ${t.file} is missing`);
    const n = numel(t.shape);
    if (bytes.byteLength !== n * Arr.BYTES_PER_ELEMENT) {
      throw new BadInputError(`${source.name}: ${t.file} holds ${bytes.byteLength} bytes; expected ${n} ${t.dtype}`);
    }
    out[name] = new HostTensor(t.dtype, new Arr(ownBytes(bytes)), t.shape);
  }));
  return out;
}

// -- comparisons --------------------------------------------------------------------

/**
 * @typedef {object} Check
 * @property {string} check  what was compared
 * @property {'exact'|'bitwise'|'tolerance'} kind  exact: integers / words; bitwise: float32 bit patterns; tolerance: |d| <= atol + rtol |want|
 * @property {number} count  elements compared
 * @property {number} mismatches  elements that failed the check's criterion
 * @property {number} maxAbs  max |got - want|
 * @property {number} worst  max |got - want| / (atol + rtol |want|) (tolerance checks)
 * @property {number} bitwiseEqual  elements whose bits match exactly
 * @property {boolean} pass
 * @property {string} [note]
 */

/** Same value, bit for bit (for floats: Object.is, so -0 differs from 0; BigInts by value). */
function bitsEqual(a, b) {
  if (typeof a === 'bigint' || typeof b === 'bigint') return BigInt(a) === BigInt(b);
  return Object.is(a, b);
}

/**
 * Compare two flat arrays.
 * @param {string} check
 * @param {'exact'|'bitwise'|'tolerance'} kind
 * @param {ArrayLike<number|bigint>} got
 * @param {ArrayLike<number|bigint>} want
 * @returns {Check}
 */
export function compare(check, kind, got, want) {
  const res = { check, kind, count: want.length, mismatches: 0, maxAbs: 0, worst: 0, bitwiseEqual: 0, pass: true };
  if (got.length !== want.length) {
    return { ...res, mismatches: want.length, pass: false, note: `length ${got.length} vs ${want.length}` };
  }
  for (let k = 0; k < want.length; k++) {
    const g = got[k];
    const w = want[k];
    const same = bitsEqual(g, w);
    if (same) res.bitwiseEqual += 1;
    const gn = typeof g === 'bigint' ? Number(g) : g;
    const wn = typeof w === 'bigint' ? Number(w) : w;
    const d = Math.abs(gn - wn);
    if (!(d <= res.maxAbs)) res.maxAbs = Number.isNaN(d) ? Infinity : d;
    const ratio = d / (ATOL + RTOL * Math.abs(wn));
    if (!(ratio <= res.worst)) res.worst = Number.isNaN(ratio) ? Infinity : ratio;
    const ok = kind === 'tolerance' ? ratio <= 1 : same;
    if (!ok) res.mismatches += 1;
  }
  res.pass = res.mismatches === 0;
  return res;
}

const slice = (t, i) => {
  const per = t.data.length / t.dims[0];
  return t.data.subarray(i * per, (i + 1) * per);
};

/** The dtype the networks take time in (the denoiser's, else the encoder's; float64 if neither). */
function timeDtype(model) {
  for (const gio of [model.denoiser, model.encoder]) {
    const tio = gio.inputs.find((t) => t.feeds === ROLE_TIME);
    if (tio) return tio.dtype;
  }
  return 'float64';
}

/**
 * Replay one `dualrate golden` variant through this runtime: RNG, time inputs, nulls, the mock
 * networks' probes, the teacher-forced step arithmetic (bitwise) and the full loop (tolerance),
 * plus the refresh / context-step audit (exact).
 * @param {import('./bundle.js').FileSource} source  the variant folder (spec.json, vectors.json, nulls)
 * @param {string} [name]
 * @returns {Promise<{variant: string, checks: Check[], pass: boolean, refresh: {cond: number[], uncond: number[]}}>}
 */
export async function replayVariant(source, name = source.name) {
  const { spec, nulls } = await openSpecFolder(source);
  const v = await readVectors(source);
  const m = spec.model;
  const s = spec.sampler;
  const tab = s.tables;
  const nSteps = s.num_steps;
  const batch = v.z_init.dims[0];
  const shape = m.sample_shape;
  /** @type {Check[]} */
  const checks = [];
  const seed = spec.noise.rng.seed;

  // 1. RNG: raw Philox words exact, then the normals
  const key = seedKey(seed);
  checks.push(compare('rng_key', 'exact', Uint32Array.from(key), v.rng_key.data));
  checks.push(compare('seed', 'exact', [seed], v.seed.data));
  const words = [];
  for (let j = 0; j < v.rng_counters.dims[0]; j++) {
    const c = v.rng_counters.data.subarray(4 * j, 4 * j + 4);
    words.push(...philox4x32_10(c[0], c[1], c[2], c[3], v.rng_key.data[0], v.rng_key.data[1]));
  }
  checks.push(compare('rng_words (Philox4x32-10)', 'exact', words, v.rng_words.data));
  checks.push(compare('rng_first_draws', 'tolerance', normalDraw(seed, 0, 1, [v.rng_first_draws.dims[0]]), v.rng_first_draws.data));
  const noise = new PhiloxNoise(seed, batch);
  checks.push(compare('z_init (draw 0)', 'tolerance', noise.draw(0, shape), v.z_init.data));
  const xi = new Float32Array(v.xi.data.length);
  for (let i = 0; i < nSteps; i++) xi.set(noise.draw(i + 1, shape), i * batch * numel(shape));
  checks.push(compare('xi (draws 1..N)', 'tolerance', xi, v.xi.data));

  // 2. inputs: time per step cast to the time inputs' dtype; declared nulls
  const tType = timeDtype(m);
  const times = [];
  for (let i = 0; i < nSteps; i++) times.push(timeTensor(tab.model_time[i], tType, 1).data[0]);
  checks.push(compare(`time (model_time as ${tType})`, 'exact', times, v.time.data));
  for (const c of m.conditioning) {
    if (c.null_kind === 'none') continue;
    checks.push(compare(`null.${c.name}`, 'exact', nullRow(c, nulls), v[`null.${c.name}`].data));
  }

  // 3. the mock networks on the probe inputs
  const runner = new MockRunner(spec);
  /** @type {Record<string, HostTensor>} */
  const cond = {};
  for (const c of m.conditioning) cond[c.name] = v[`cond.${c.name}`];
  const roleVals = (t, tCtx, feats) => {
    const vals = { [ROLE_SAMPLE]: v.z_init, [ROLE_TIME]: t };
    if (tCtx) vals[ROLE_TIME_CTX] = tCtx;
    for (const [k, x] of Object.entries(cond)) vals[COND_PREFIX + k] = x;
    for (const [k, x] of Object.entries(feats ?? {})) vals[FEATURE_PREFIX + k] = x;
    return vals;
  };
  const byName = (gio, vals) => Object.fromEntries(gio.inputs.map((tio) => [tio.name, vals[tio.feeds]]));
  const feats = await runner.encode(byName(m.encoder, roleVals(v.probe_time_ctx, null)));
  checks.push(compare('probe_feat0 (mock encoder)', 'tolerance', feats.feat0.data, v.probe_feat0.data));
  checks.push(compare('probe_feat1 (mock encoder)', 'tolerance', feats.feat1.data, v.probe_feat1.data));
  const probe = await runner.denoise(byName(m.denoiser, roleVals(v.probe_time, v.probe_time_ctx, feats)));
  checks.push(compare('probe_prediction (mock denoiser)', 'tolerance', probe.data, v.probe_prediction.data));
  if (m.decoder) {
    const dec = await runner.decode(graphFeeds(m.decoder.graph, { [ROLE_SAMPLE]: v.decoder_input }, batch));
    checks.push(compare('decoded (mock decoder on decoder_input)', 'tolerance', dec.data, v.decoded.data));
  }

  // 4. teacher-forced step arithmetic, bit for bit
  const fr = Math.fround;
  const x0Got = new Float32Array(v.x0.data.length);
  const zGot = new Float32Array(v.z.data.length);
  for (let i = 0; i < nSteps; i++) {
    const zPrev = i === 0 ? v.z_init.data : slice(v.z, i - 1);
    const a = fr(tab.alpha[i]);
    const sg = fr(tab.sigma[i]);
    let x0 = toX0(m.prediction, slice(v.pred_cond, i), zPrev, a, sg);
    if (Number(v.guided.data[i])) x0 = guide(x0, toX0(m.prediction, slice(v.pred_uncond, i), zPrev, a, sg), spec.guidance.scale);
    if (s.clip_x0 !== null) clip(x0, s.clip_x0);
    x0Got.set(x0, i * x0.length);
    const cn = fr(tab.coef_noise[i]);
    const zi = affineStep(zPrev, slice(v.x0, i), fr(tab.coef_z[i]), fr(tab.coef_x0[i]), cn, cn !== 0 ? slice(v.xi, i) : null);
    zGot.set(zi, i * zi.length);
  }
  checks.push(compare('x0[i] from recorded predictions (to_x0, guidance, clip)', 'bitwise', x0Got, v.x0.data));
  checks.push(compare('z[i] from recorded x0[i], xi[i] (affine step)', 'bitwise', zGot, v.z.data));
  if (m.decoder) checks.push(compare('decoder_input from final', 'bitwise', decoderInput(v.final.data, m.decoder), v.decoder_input.data));

  // 5. the loop, with the mocks
  const res = await sample(runner, spec, { conditioning: m.conditioning.length ? cond : undefined, batch: m.conditioning.length ? undefined : batch, nulls, record: true });
  const cat = (list) => {
    const out = new Float32Array(list.reduce((a, x) => a + x.length, 0));
    let o = 0;
    for (const x of list) {
      out.set(x, o);
      o += x.length;
    }
    return out;
  };
  checks.push(compare('loop z (every step)', 'tolerance', cat(res.trajectory), v.z.data));
  checks.push(compare('loop x0 (every step)', 'tolerance', cat(res.x0Estimates), v.x0.data));
  checks.push(compare('loop final', 'tolerance', res.x.data, v.final.data));
  if (m.decoder) checks.push(compare('loop decoded', 'tolerance', res.decoded.data, v.decoded.data));
  checks.push(compare('refresh_cond (audit)', 'exact', res.refreshLog[COND], v.refresh_cond.data));
  checks.push(compare('refresh_uncond (audit)', 'exact', res.refreshLog[UNCOND], v.refresh_uncond.data));
  checks.push(compare('ctx_step_cond (audit)', 'exact', res.ctxSteps[COND], v.ctx_step_cond.data));
  checks.push(compare('ctx_step_uncond (audit)', 'exact', res.ctxSteps[UNCOND], v.ctx_step_uncond.data));
  checks.push(compare('guided (audit)', 'exact', Array.from(res.ctxSteps[UNCOND], (x) => (x >= 0 ? 1 : 0)), v.guided.data));
  return { variant: name, checks, pass: checks.every((c) => c.pass), refresh: res.refreshLog };
}

/**
 * Summarize replays: per kind, the elements compared and (tolerance) the worst error as a
 * fraction of the tolerance and the share of float elements that matched bit for bit.
 * @param {Array<{variant: string, checks: Check[]}>} reports
 */
export function summarize(reports) {
  const out = { exact: { count: 0, mismatches: 0 }, bitwise: { count: 0, mismatches: 0 }, tolerance: { count: 0, mismatches: 0, worst: 0, maxAbs: 0, bitwiseEqual: 0 } };
  for (const r of reports) {
    for (const c of r.checks) {
      const k = out[c.kind];
      k.count += c.count;
      k.mismatches += c.mismatches;
      if (c.kind === 'tolerance') {
        k.worst = Math.max(k.worst, c.worst);
        k.maxAbs = Math.max(k.maxAbs, c.maxAbs);
        k.bitwiseEqual += c.bitwiseEqual;
      }
    }
  }
  return out;
}
