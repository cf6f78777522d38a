// Philox4x32-10 and the spec's normals: Random123 known answers, the limb multiply against BigInt,
// the seed rule (key words, seeds above 2^53), and the batch / per-row counter rules.
import assert from 'node:assert/strict';
import test from 'node:test';

import { PhiloxNoise, mulhi32, normalDraw, parseSeed, philox4x32_10, seedKey } from '../../src/index.js';
import { PHILOX_KAT } from '../kat.js';

const hex = (a) => Array.from(a, (x) => x.toString(16).padStart(8, '0')).join(' ');

for (const kat of PHILOX_KAT) {
  test(`Philox4x32-10 Random123 known answer: ${kat.name}`, () => {
    assert.equal(hex(philox4x32_10(...kat.ctr, ...kat.key)), hex(kat.out));
  });
}

test('mulhi32 (16-bit limbs) equals the BigInt 64-bit product, 20000 pseudo-random pairs and the edges', () => {
  const pairs = [[0, 0], [0xffffffff, 0xffffffff], [0xd2511f53, 0xffffffff], [0xcd9e8d57, 1], [0x80000000, 0x80000000]];
  let x = 0x12345678;
  for (let k = 0; k < 20000; k++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    const y = (Math.imul(x ^ 0x9e3779b9, 22695477) + 1) >>> 0;
    pairs.push([x, y]);
  }
  for (const [a, b] of pairs) assert.equal(mulhi32(a, b), Number((BigInt(a) * BigInt(b)) >> 32n), `${a} * ${b}`);
});

test('seed -> key: (seed & 0xFFFFFFFF, seed >> 32), exact above 2^53 (BigInt or string)', () => {
  assert.deepEqual(seedKey(0x000abcde12345678n), [0x12345678, 0x000abcde]);
  assert.deepEqual(seedKey('18364758544493064720'), [0x76543210, 0xfedcba98]);
  assert.deepEqual(seedKey('0xFEDCBA9876543210'), [0x76543210, 0xfedcba98]);
  assert.throws(() => parseSeed(2 ** 60), /2\^53/);
  assert.throws(() => parseSeed(-1), /\[0, 2\^64\)/);
  assert.throws(() => parseSeed(1n << 64n), /\[0, 2\^64\)/);
});

test('normals: sample b of a batch equals the sample drawn alone; a shorter tensor is a prefix', () => {
  const batch = new PhiloxNoise(42, 3).draw(5, [2, 3, 5]);
  const alone = normalDraw(42, 5, 1, [2, 3, 5], 2);
  assert.deepEqual(batch.subarray(60, 90), alone);
  assert.deepEqual(normalDraw(42, 5, 1, [7])[0], normalDraw(42, 5, 1, [30])[0]);
  assert.deepEqual(normalDraw(42, 5, 1, [7]), normalDraw(42, 5, 1, [30]).subarray(0, 7));
  assert.deepEqual(PhiloxNoise.perRow([42n]).draw(3, [16]), new PhiloxNoise(42, 1).draw(3, [16]));
});

test('normals are standard: mean ~ 0, variance ~ 1 over 2^16 draws', () => {
  const x = normalDraw(7, 0, 1, [1 << 16]);
  let s = 0;
  let s2 = 0;
  for (const v of x) {
    s += v;
    s2 += v * v;
  }
  const mean = s / x.length;
  assert.ok(Math.abs(mean) < 0.02, `mean ${mean}`);
  assert.ok(Math.abs(s2 / x.length - mean * mean - 1) < 0.03, `variance ${s2 / x.length}`);
});
