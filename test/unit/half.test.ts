import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeBf16, decodeFp16, encodeBf16, encodeFp16 } from '../../shared/half.ts';
import { Rng } from '../../shared/rng.ts';

test('fp16: every finite half survives decode and encode; random values round within half an ulp; overflow saturates, NaN/Inf stay', () => {
  const codes = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const values = new Float32Array(65536);
  decodeFp16(codes, values);
  const back = new Uint16Array(65536);
  encodeFp16(values, back);
  for (let i = 0; i < 65536; i += 1) if (((i >> 10) & 31) !== 31) assert.equal(back[i], i, `code ${i}`);
  const rng = new Rng(11);
  const x = Float32Array.from({ length: 50_000 }, () => (rng.next() - 0.5) * 2 ** rng.int(-14, 15));
  const h = new Uint16Array(x.length);
  encodeFp16(x, h);
  const y = new Float32Array(x.length);
  decodeFp16(h, y);
  x.forEach((v, i) => assert.ok(Math.abs((y[i] as number) - v) <= Math.abs(v) * 2 ** -11 + 2 ** -25, `${v} -> ${y[i]}`));
  const special = Float32Array.of(Number.NaN, Infinity, -Infinity, 1e6, -1e6, 0);
  encodeFp16(special, h.subarray(0, 6));
  decodeFp16(h.subarray(0, 6), y.subarray(0, 6));
  assert.deepEqual(Array.from(y.subarray(0, 6)), [Number.NaN, Infinity, -Infinity, 65504, -65504, 0]);
});

test('bf16: rounds to nearest even within 2^-8 relative, keeps the fp32 range, NaN and Inf', () => {
  const rng = new Rng(12);
  const x = Float32Array.from({ length: 50_000 }, () => (rng.next() - 0.5) * 2 ** rng.int(-100, 100));
  const h = new Uint16Array(x.length);
  encodeBf16(x, h);
  const y = new Float32Array(x.length);
  decodeBf16(h, y);
  x.forEach((v, i) => assert.ok(Math.abs((y[i] as number) - v) <= Math.abs(v) * 2 ** -8, `${v} -> ${y[i]}`));
  // Ties go to even: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7.
  const tie = Float32Array.of(1 + 2 ** -8, 1 + 3 * 2 ** -8, Number.NaN, -Infinity, 3e38);
  encodeBf16(tie, h.subarray(0, 5));
  decodeBf16(h.subarray(0, 5), y.subarray(0, 5));
  assert.deepEqual(Array.from(y.subarray(0, 4)), [1, 1 + 2 ** -6, Number.NaN, -Infinity]);
  assert.ok(Math.abs((y[4] as number) - 3e38) / 3e38 < 2 ** -8);
});
