// `dualrate golden` vectors (mock networks) replayed through this runtime in Node.js: Philox words,
// time inputs, nulls and the refresh audit exactly; the teacher-forced step arithmetic bit for bit;
// draws, mock probes and the free-running loop within the golden tolerance (and counted where bitwise).
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';

import { VARIANTS, replayVariant, summarize } from '../../src/conformance.js';
import { directorySource } from '../../src/node.js';
import { loadFixtures, recordResult } from '../helpers/fixtures.js';

const fx = loadFixtures();
const reports = [];

for (const pred of fx.golden) {
  for (const variant of VARIANTS) {
    test(`golden ${pred}/${variant} replays in Node`, async (t) => {
      const dir = path.join(fx.dir, 'golden', pred, variant);
      const report = await replayVariant(directorySource(dir), `${pred}/${variant}`);
      reports.push(report);
      for (const c of report.checks) {
        if (!c.pass) t.diagnostic(`${c.check}: ${c.mismatches}/${c.count} off, worst ${c.worst} x tol, max abs ${c.maxAbs}`);
      }
      assert.ok(report.pass, report.checks.filter((c) => !c.pass).map((c) => c.check).join('; '));
    });
  }
}

test('golden summary (Node)', (t) => {
  assert.equal(reports.length, fx.golden.length * VARIANTS.length);
  const s = summarize(reports);
  recordResult('golden-node', { variants: reports.length, ...s });
  t.diagnostic(`exact ${s.exact.count} values (${s.exact.mismatches} off); bitwise ${s.bitwise.count} float32 values `
    + `(${s.bitwise.mismatches} off); tolerance ${s.tolerance.count} values, worst ${s.tolerance.worst} x tol, `
    + `max abs ${s.tolerance.maxAbs}, ${s.tolerance.bitwiseEqual} of them bit-identical`);
  assert.equal(s.exact.mismatches + s.bitwise.mismatches + s.tolerance.mismatches, 0);
});
