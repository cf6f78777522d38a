#!/usr/bin/env node
// dualrate-js: sample a dualrate bundle with ONNX Runtime for Node.js, like `dualrate sample`.
//
//   dualrate-js sample BUNDLE [--class C[,C..] | --conditioning FILE.npz] [-n N] [--seed S] -o FILE.npy [--force]
//   dualrate-js verify BUNDLE        open and verify a bundle (hashes, spec, graphs), print what it holds
//   dualrate-js golden DIR           replay `dualrate golden DIR` conformance vectors through this runtime
//
// Exit codes: 0 ok, 1 conformance failure or non-finite output, 2 bad input.

import { existsSync } from 'node:fs';
import { readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { BadInputError, DualrateError, directorySource, openBundle, readNpz, sampleBundle, writeNpy, parseSeed } from '../src/node.js';

const PKG = JSON.parse(await readFile(path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'package.json'), 'utf8'));

const USAGE = `usage: dualrate-js <command> [options]

commands:
  sample BUNDLE -o FILE.npy [--class C[,C..] | --conditioning FILE.npz] [-n N (8)] [--seed S (0)] [--threads T] [--force]
      sample a class grid (each class -n times, in order) or the rows of FILE.npz (arrays by
      conditioning input name, each row -n times) and write float32 [N, C, H, W] (decoded where
      the bundle has a decoder), exactly as \`dualrate sample BUNDLE --target onnxruntime ... -o FILE.npy\`
  verify BUNDLE
      open the bundle (every sha256 in manifest.json, spec.json, graphs, stored nulls) and describe it
  golden DIR
      replay the conformance vectors written by \`dualrate golden BUNDLE -o DIR\` (mock networks)

exit codes: 0 ok, 1 conformance failure or non-finite output, 2 bad input`;

function fail(cmd, err) {
  if (err instanceof DualrateError) {
    process.stderr.write(`dualrate-js ${cmd}: error: ${err.message}\n`);
    return err.exitCode;
  }
  throw err;
}

async function cmdSample(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      class: { type: 'string' }, conditioning: { type: 'string' }, n: { type: 'string', short: 'n', default: '8' },
      seed: { type: 'string', default: '0' }, output: { type: 'string', short: 'o' }, force: { type: 'boolean', default: false },
      threads: { type: 'string', default: '0' }, quiet: { type: 'boolean', short: 'q', default: false },
    },
  });
  if (positionals.length !== 1) throw new BadInputError('expected exactly one BUNDLE directory');
  if (!values.output) throw new BadInputError('-o FILE.npy is required');
  if (!values.output.endsWith('.npy')) throw new BadInputError(`-o ${values.output}: dualrate-js writes raw float32 samples as .npy only`);
  if (existsSync(values.output) && !values.force) throw new BadInputError(`${values.output} exists; pass --force to replace it`);
  const n = Number(values.n);
  if (!Number.isInteger(n) || n < 1) throw new BadInputError(`-n ${values.n}: expected at least 1 sample per class`);
  const seed = parseSeed(values.seed, '--seed');
  const threads = Number(values.threads);
  if (!Number.isInteger(threads) || threads < 0) throw new BadInputError(`--threads ${values.threads}: expected a count (0 = all cores)`);
  if (values.class !== undefined && values.conditioning !== undefined) throw new BadInputError('give either --class or --conditioning, not both');
  const bundle = await openBundle(positionals[0]);
  let classes;
  let conditioning;
  let rows;
  if (values.class !== undefined) {
    classes = values.class.split(',').filter((c) => c.trim()).map((c) => {
      if (!/^\s*-?\d+\s*$/.test(c)) throw new BadInputError(`--class ${JSON.stringify(values.class)}: expected comma-separated integers`);
      return Number(c);
    });
  }
  if (values.conditioning !== undefined) {
    const arrays = await readNpz(values.conditioning);
    const sizes = new Set(Object.values(arrays).filter((t) => t.dims.length > 0).map((t) => t.dims[0]));
    if (sizes.size !== 1) {
      throw new BadInputError(`--conditioning ${values.conditioning}: arrays must share one first axis (rows); found ${JSON.stringify([...sizes].sort())}`);
    }
    rows = [...sizes][0];
    conditioning = Object.fromEntries(Object.entries(arrays).map(([k, t]) => [k, repeatRows(t, n)]));
  }
  const steps = bundle.spec.sampler.num_steps;
  const tty = process.stderr.isTTY && !values.quiet;
  const out = await sampleBundle(bundle, {
    classes, conditioning, n, seed,
    runnerOptions: threads ? { sessionOptions: { intraOpNumThreads: threads } } : undefined,
    onStep: tty ? (i) => {
      process.stderr.write(`\rsampling step ${i + 1}/${steps}${i + 1 === steps ? '\n' : ''}`);
    } : undefined,
  });
  const tmp = `${values.output}.tmp-${process.pid}`;
  await writeFile(tmp, writeNpy(out.images));
  await rename(tmp, values.output);
  const t = out.timing;
  const g = t.graphs;
  const per = Object.entries(g).map(([k, s]) => `${k} ${s.calls} calls ${s.ms.toFixed(0)} ms`).join(', ');
  console.log(`wrote ${values.output}: ${rows ?? out.rows} row(s) x ${n} samples, ${steps} steps, encoder ran at `
    + `${out.result.refreshLog.cond.length} steps${out.decoded ? ', decoded' : ''}, on onnxruntime-node `
    + `(${per}; loop overhead ${t.loopOverheadMs.toFixed(0)} ms of ${t.totalMs.toFixed(0)} ms)`);
  return 0;
}

/** np.repeat(t, n, axis=0). */
function repeatRows(t, n) {
  if (t.dims.length === 0) return t;
  const per = t.data.length / t.dims[0];
  const data = new t.data.constructor(t.data.length * n);
  for (let r = 0; r < t.dims[0]; r++) {
    for (let k = 0; k < n; k++) data.set(t.data.subarray(r * per, (r + 1) * per), (r * n + k) * per);
  }
  return { type: t.type, data, dims: [t.dims[0] * n, ...t.dims.slice(1)] };
}

async function cmdVerify(argv) {
  const { positionals } = parseArgs({ args: argv, allowPositionals: true, options: {} });
  if (positionals.length !== 1) throw new BadInputError('expected exactly one BUNDLE directory');
  const b = await openBundle(positionals[0]);
  const m = b.spec.model;
  const s = b.spec.sampler;
  console.log(`${positionals[0]}: verified ${Object.keys(b.manifest.files).length} files (sha256), spec ${b.spec.spec_version}`);
  console.log(`  graphs: ${Object.keys(b.graphs).join(', ')}; sample [${m.sample_shape}], prediction ${m.prediction}, time ${m.time_input}`);
  console.log(`  conditioning: ${m.conditioning.map((c) => `${c.name} ${c.dtype} [${c.shape}] null ${c.null_kind}`).join('; ') || 'none'}`);
  console.log(`  sampler: ${s.type} eta ${s.eta}, ${s.num_steps} steps, refresh at [${b.spec.dual_rate.resolved_refresh_steps}], guidance ${b.spec.guidance.scale}`);
  return 0;
}

async function cmdGolden(argv) {
  const { positionals } = parseArgs({ args: argv, allowPositionals: true, options: {} });
  if (positionals.length !== 1) throw new BadInputError('expected exactly one DIR written by `dualrate golden`');
  const { replayVariant, summarize, VARIANTS } = await import('../src/conformance.js');
  const dir = positionals[0];
  const names = VARIANTS.filter((v) => existsSync(path.join(dir, v, 'vectors.json')));
  if (!names.length) throw new BadInputError(`${dir} holds no conformance variants (vectors.json); run \`dualrate golden BUNDLE -o ${dir}\``);
  const reports = [];
  for (const v of names) {
    const r = await replayVariant(directorySource(path.join(dir, v)), v);
    reports.push(r);
    const bad = r.checks.filter((c) => !c.pass);
    console.log(`  ${v.padEnd(18)} ${r.pass ? 'PASS' : 'FAIL'}  ${r.checks.length} checks${bad.map((c) => `; ${c.check}: ${c.mismatches}/${c.count} off (worst ${c.worst.toPrecision(3)} x tol)`).join('')}`);
  }
  const sum = summarize(reports);
  console.log(`exact: ${sum.exact.count} values, ${sum.exact.mismatches} off; bitwise float32: ${sum.bitwise.count} values, `
    + `${sum.bitwise.mismatches} off; tolerance: ${sum.tolerance.count} values, worst ${sum.tolerance.worst.toPrecision(3)} x tol `
    + `(max abs ${sum.tolerance.maxAbs.toExponential(2)}), ${sum.tolerance.bitwiseEqual} bit-identical`);
  return reports.every((r) => r.pass) ? 0 : 1;
}

async function main(argv) {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === '-h' || cmd === '--help') {
    console.log(USAGE);
    return cmd ? 0 : 2;
  }
  if (cmd === '--version') {
    console.log(`dualrate-js ${PKG.version}`);
    return 0;
  }
  const commands = { sample: cmdSample, verify: cmdVerify, golden: cmdGolden };
  if (!(cmd in commands)) {
    process.stderr.write(`dualrate-js: unknown command ${JSON.stringify(cmd)}\n${USAGE}\n`);
    return 2;
  }
  try {
    return await commands[cmd](rest);
  } catch (err) {
    if (err?.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || err?.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' || err?.code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
      return fail(cmd, new BadInputError(err.message));
    }
    return fail(cmd, err);
  }
}

process.exitCode = await main(process.argv.slice(2));
