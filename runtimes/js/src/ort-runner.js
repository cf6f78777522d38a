// The runner contract over ONNX Runtime JavaScript (onnxruntime-node or onnxruntime-web: both
// implement onnxruntime-common's InferenceSession and Tensor, which is all this file uses).
// The ort namespace is passed in, so the core depends on no particular backend package.
// Encoder outputs stay ort tensors and are fed to the denoiser as they are.

import { BadInputError, BundleError } from './errors.js';
import { graphsOf } from './spec.js';
import { HostTensor } from './tensor.js';

/**
 * @typedef {object} GraphStats
 * @property {number} calls
 * @property {number} ms   wall time inside session.run (feeds built, outputs returned)
 * @property {number} rows samples processed (sum of batch sizes)
 */

/**
 * @typedef {object} OrtRunnerOptions
 * @property {import('onnxruntime-common').InferenceSession.SessionOptions} [sessionOptions]
 */

export class OrtRunner {
  /**
   * @param {any} ort  the onnxruntime-node or onnxruntime-web namespace
   * @param {import('./spec.js').Spec} spec
   * @param {Record<string, import('onnxruntime-common').InferenceSession>} sessions
   */
  constructor(ort, spec, sessions) {
    this.ort = ort;
    this.spec = spec;
    this.sessions = sessions;
    this.graphs = graphsOf(spec.model);
    /** @type {Record<string, GraphStats>} */
    this.timing = {};
    this.resetStats();
  }

  /**
   * One session per graph of an opened bundle; checks each graph's input and output names
   * against the spec before anything runs.
   * @param {any} ort
   * @param {import('./bundle.js').Bundle} bundle
   * @param {OrtRunnerOptions} [opts]
   */
  static async create(ort, bundle, opts = {}) {
    const sessionOptions = { graphOptimizationLevel: 'all', executionMode: 'sequential', ...(opts.sessionOptions ?? {}) };
    /** @type {Record<string, import('onnxruntime-common').InferenceSession>} */
    const sessions = {};
    try {
      for (const [g, gio] of Object.entries(graphsOf(bundle.spec.model))) {
        const so = { ...sessionOptions };
        if (bundle.externalData?.[g]) so.externalData = [{ path: `${g}.onnx.data`, data: bundle.externalData[g] }];
        let session;
        try {
          const local = bundle.externalData?.[g] && bundle.source.path ? bundle.source.path(`${g}.onnx`) : null;
          session = await ort.InferenceSession.create(local ?? bundle.graphs[g], so);
        } catch (err) {
          throw new BundleError(`bundle ${bundle.name}: ${g}.onnx cannot be loaded by ONNX Runtime: ${firstLine(err)}`);
        }
        sessions[g] = session;
        const want = gio.inputs.map((t) => t.name).sort();
        const got = [...session.inputNames].sort();
        const wantOut = gio.outputs.map((t) => t.name);
        const missingOut = wantOut.filter((o) => !session.outputNames.includes(o));
        if (JSON.stringify(want) !== JSON.stringify(got) || missingOut.length) {
          throw new BundleError(`bundle ${bundle.name}: ${g}.onnx takes inputs [${got.join(', ')}] and outputs `
            + `[${session.outputNames.join(', ')}], but spec.json's model.${g === 'decoder' ? 'decoder.graph' : g} declares `
            + `inputs [${want.join(', ')}] and outputs [${wantOut.join(', ')}]`);
        }
      }
    } catch (err) {
      await Promise.all(Object.values(sessions).map((s) => s.release?.()));
      throw err;
    }
    return new OrtRunner(ort, bundle.spec, sessions);
  }

  resetStats() {
    this.timing = Object.fromEntries(Object.keys(this.graphs).map((g) => [g, { calls: 0, ms: 0, rows: 0 }]));
  }

  /** Per-graph calls and time since the last resetStats(). */
  stats() {
    return JSON.parse(JSON.stringify(this.timing));
  }

  /** @param {Record<string, any>} feeds */
  async encode(feeds) {
    return this.#run('encoder', feeds);
  }

  /** @param {Record<string, any>} feeds */
  async denoise(feeds) {
    const out = await this.#run('denoiser', feeds);
    return out[this.graphs.denoiser.outputs[0].name];
  }

  /** @param {Record<string, any>} feeds */
  async decode(feeds) {
    if (!this.sessions.decoder) throw new BadInputError('this bundle has no decoder graph');
    const out = await this.#run('decoder', feeds);
    return out[this.graphs.decoder.outputs[0].name];
  }

  /** @param {Record<string, any>} features */
  async featuresToHost(features) {
    /** @type {Record<string, {data: any, dims: number[]}>} */
    const out = {};
    for (const [k, t] of Object.entries(features)) out[k] = { data: t.location && t.location !== 'cpu' ? await t.getData() : t.data, dims: t.dims };
    return out;
  }

  /** Free features that live outside the JS heap (GPU buffers); CPU tensors need nothing. */
  releaseFeatures(features) {
    for (const t of Object.values(features)) if (t.location && t.location !== 'cpu' && t.dispose) t.dispose();
  }

  async release() {
    await Promise.all(Object.values(this.sessions).map((s) => s.release?.()));
  }

  /**
   * @param {string} graph
   * @param {Record<string, any>} feeds HostTensors or ort tensors (features)
   */
  async #run(graph, feeds) {
    const ort = this.ort;
    /** @type {Record<string, any>} */
    const ortFeeds = {};
    let rows = 0;
    for (const tio of this.graphs[graph].inputs) {
      const v = feeds[tio.name];
      if (v === undefined) throw new BadInputError(`${graph}: input '${tio.name}' was not fed`);
      ortFeeds[tio.name] = v instanceof HostTensor ? new ort.Tensor(v.type, v.data, v.dims) : v;
      rows = Math.max(rows, v.dims[0]);
    }
    const st = this.timing[graph];
    const t0 = performance.now();
    let out;
    try {
      out = await this.sessions[graph].run(ortFeeds);
    } catch (err) {
      throw new BadInputError(`onnxruntime could not run the ${graph} graph: ${firstLine(err)}`);
    }
    st.ms += performance.now() - t0;
    st.calls += 1;
    st.rows += rows;
    return out;
  }
}

function firstLine(err) {
  const text = String(err?.message ?? err).trim();
  return text.split('\n')[0] || String(err);
}
