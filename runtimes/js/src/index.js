// dualrate-js core: the portable sampler of a dualrate bundle (spec 2.x). Depends on nothing but
// the onnxruntime-common API, which the runner gets as an `ort` namespace: onnxruntime-node
// (see ./node.js) or onnxruntime-web (see ./web.js).

export { BadInputError, BundleError, DualrateError, NonFiniteError, SpecError } from './errors.js';
export { FORMAT, FORMAT_VERSION, openBundle, openSpecFolder, readNull, sha256Hex } from './bundle.js';
export { PhiloxNoise, TWO_PI, fillNormals, mulhi32, normalDraw, parseSeed, philox4x32_10, seedKey } from './philox.js';
export {
  COND, UNCOND, affineStep, callPlan, checkConditioning, classInput, clip, decode, decoderInput, graphFeeds,
  groupConditioning, guidanceActive, guide, nullRow, sample, timeTensor, toX0,
} from './sampler.js';
export { SPEC_MAJOR, SPEC_NAME, SPEC_VERSION, checkSpec, graphsOf, parseSpec } from './spec.js';
export { HostTensor, numel } from './tensor.js';
export { parseNpy, parseNpz, writeNpy } from './npy.js';
export { OrtRunner } from './ort-runner.js';
export { gridClasses, sampleBundle } from './run.js';
