#!/usr/bin/env node
// Prepare the test fixtures with the Python dualrate CLI (see prepare_fixtures.py); cached by a stamp.
import { spawnSync } from 'node:child_process';
import path from 'node:path';

import { ROOT, fixturesDir, python } from './fixtures.js';

const script = path.join(ROOT, 'test', 'helpers', 'prepare_fixtures.py');
const t0 = Date.now();
const res = spawnSync(python(), [script, fixturesDir()], { stdio: 'inherit', cwd: ROOT });
if (res.error) {
  console.error(`prepare: cannot run ${python()} (${res.error.message}); set DUALRATE_PYTHON to a Python with dualrate installed`);
  process.exit(2);
}
if (res.status === 0) console.error(`prepare: fixtures ready at ${fixturesDir()} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
process.exit(res.status ?? 1);
