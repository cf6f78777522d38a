// One call from an opened bundle to samples: a class grid (or conditioning rows), the spec's
// seed rule, the decoder where there is one, and per-graph timings.

import { BadInputError } from './errors.js';
import { OrtRunner } from './ort-runner.js';
import { classInput, sample } from './sampler.js';

/**
 * The class ids of a grid: each class repeated n times, in order (as `dualrate sample --class`).
 * @param {number[]} classes
 * @param {number} n
 */
export function gridClasses(classes, n) {
  return classes.flatMap((c) => Array(n).fill(c));
}

/**
 * @typedef {object} SampleBundleOptions
 * @property {number[]} [classes] class ids (class-conditional models); default every class, up to 10
 * @property {number} [n] samples per class (default 1)
 * @property {Record<string, any>} [conditioning] name -> rows, instead of classes
 * @property {bigint|number|string} [seed] default: the spec's noise.rng.seed
 * @property {OrtRunner} [runner] a runner to reuse (else one is created and released)
 * @property {import('./ort-runner.js').OrtRunnerOptions} [runnerOptions]
 * @property {(step: number, total: number) => void|Promise<void>} [onStep]
 */

/**
 * Sample an opened bundle on an ONNX Runtime namespace (`ort`), like `dualrate sample`: returns
 * the images (decoded where there is a decoder) as float32 [N, C, H, W], with timings.
 * @param {any} ort
 * @param {import('./bundle.js').Bundle} bundle
 * @param {SampleBundleOptions} [opts]
 */
export async function sampleBundle(ort, bundle, opts = {}) {
  const spec = bundle.spec;
  const n = opts.n ?? 1;
  if (!Number.isInteger(n) || n < 1) throw new BadInputError(`n is ${n}; expected at least 1 sample per class`);
  let conditioning;
  let rows = 1;
  if (opts.conditioning) {
    if (opts.classes) throw new BadInputError('give either classes or conditioning, not both');
    conditioning = opts.conditioning;
  } else {
    const cls = classInput(spec);
    if (cls) {
      const classes = opts.classes ?? Array.from({ length: Math.min(cls.num_classes, 10) }, (_, k) => k);
      rows = classes.length;
      conditioning = { [cls.name]: gridClasses(classes, n) };
    } else if (spec.model.conditioning.length) {
      throw new BadInputError(`this model is conditioned on ${spec.model.conditioning.map((c) => c.name).join(', ')}: pass conditioning with those arrays`);
    } else if (opts.classes) {
      throw new BadInputError('this model takes no class ids');
    }
  }
  const batch = conditioning ? undefined : n;
  const runner = opts.runner ?? (await OrtRunner.create(ort, bundle, opts.runnerOptions));
  runner.resetStats();
  try {
    const result = await sample(runner, spec, {
      conditioning, batch, seed: opts.seed, nulls: bundle.nulls, onStep: opts.onStep,
    });
    const images = result.decoded ?? result.x;
    const graphs = runner.stats();
    const graphMs = Object.values(graphs).reduce((a, g) => a + g.ms, 0);
    return {
      images, result, rows, decoded: result.decoded !== null,
      // loop overhead: everything but the graphs and the caller's onStep (conditioning, tables,
      // noise, step arithmetic, tensor wrapping)
      timing: {
        totalMs: result.timing.totalMs, graphs, callbackMs: result.timing.callbackMs,
        loopOverheadMs: result.timing.totalMs - graphMs - result.timing.callbackMs,
      },
    };
  } finally {
    if (!opts.runner) await runner.release();
  }
}
