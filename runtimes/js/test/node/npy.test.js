// .npy / .npz: round trips, Buffers that are views into a larger pool, np.savez (stored) and
// np.savez_compressed (deflate, through node:zlib and through DecompressionStream).
import assert from 'node:assert/strict';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import test from 'node:test';

import { HostTensor, parseNpy, parseNpz, writeNpy } from '../../src/index.js';
import { readNpz } from '../../src/node.js';
import { storedZip } from '../helpers/zip.js';

test('writeNpy / parseNpy round trip, also from a Buffer view at an odd offset', () => {
  const tensors = [
    new HostTensor('float32', Float32Array.from([1.5, -0, Math.fround(1e-7), 3]), [2, 2]),
    new HostTensor('int64', BigInt64Array.from([1n, -2n, 2n ** 62n]), [3]),
    new HostTensor('bool', Uint8Array.from([1, 0, 1, 1, 0, 0]), [2, 3]),
    new HostTensor('float64', Float64Array.from([Math.PI]), []),
  ];
  for (const t of tensors) {
    const bytes = writeNpy(t);
    const pool = Buffer.alloc(bytes.length + 13);
    pool.set(bytes, 13);
    for (const view of [bytes, pool.subarray(13)]) {
      const back = parseNpy(view, 'x.npy');
      assert.equal(back.type, t.type);
      assert.deepEqual(back.dims, t.dims);
      assert.deepEqual(Array.from(back.data), Array.from(t.data));
    }
  }
  assert.throws(() => parseNpy(new Uint8Array(20), 'bad.npy'), /bad\.npy is not a readable \.npy file/);
});

test('npz: stored and deflated members; the inflater is node:zlib or DecompressionStream', async () => {
  const a = writeNpy(new HostTensor('int64', BigInt64Array.from([2n, 6n]), [2]));
  const b = writeNpy(new HostTensor('float32', Float32Array.from({ length: 40 }, (_, k) => k / 7), [2, 4, 5]));
  const stored = storedZip([['class_id.npy', a, 0], ['text.npy', b, 0]]);
  const deflated = storedZip([['class_id.npy', a, 8], ['text.npy', b, 8]], deflateRawSync);
  for (const [zip, opts] of [[stored, {}], [deflated, {}], [deflated, { inflateRaw: (d) => new Uint8Array(inflateRawSync(d)) }]]) {
    const got = await parseNpz(zip, 'rows.npz', opts);
    assert.deepEqual(Object.keys(got).sort(), ['class_id', 'text']);
    assert.deepEqual(Array.from(got.class_id.data), [2n, 6n]);
    assert.deepEqual(got.text.dims, [2, 4, 5]);
    assert.equal(got.text.data[39], Math.fround(39 / 7));
  }
  await assert.rejects(parseNpz(new Uint8Array(30), 'x.npz'), /x\.npz is not a readable \.npz file/);
  await assert.rejects(readNpz('/nonexistent/rows.npz'), /rows\.npz cannot be read/);
});
