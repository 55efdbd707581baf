import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decode16, decodeFp16, encode16, encodeFp16 } from '../../shared/half.ts';
import { Rng } from '../../shared/rng.ts';

/** x through the 16-bit format and back. */
function roundTrip(wire: 'bf16' | 'fp16', x: Float32Array): Float32Array {
  const codes = new Uint16Array(x.length);
  encode16(wire, x, codes);
  const y = new Float32Array(x.length);
  decode16(wire, codes, y);
  return y;
}

test('fp16: every finite half survives decode and encode; random values round within half an ulp; overflow saturates, NaN/Inf stay', () => {
  const codes = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const values = new Float32Array(65536);
  decodeFp16(codes, values);
  const back = new Uint16Array(65536);
  encodeFp16(values, back);
  for (let i = 0; i < 65536; i += 1) if (((i >> 10) & 31) !== 31) assert.equal(back[i], i, `code ${i}`);
  const rng = new Rng(11);
  const x = Float32Array.from({ length: 50_000 }, () => (rng.next() - 0.5) * 2 ** rng.int(-14, 15));
  const y = roundTrip('fp16', x);
  x.forEach((v, i) => assert.ok(Math.abs((y[i] as number) - v) <= Math.abs(v) * 2 ** -11 + 2 ** -25, `${v} -> ${y[i]}`));
  assert.deepEqual(Array.from(roundTrip('fp16', Float32Array.of(Number.NaN, Infinity, -Infinity, 1e6, -1e6, 0))),
    [Number.NaN, Infinity, -Infinity, 65504, -65504, 0]);
});

test('bf16: rounds to nearest even within 2^-8 relative, keeps the fp32 range, NaN and Inf', () => {
  const rng = new Rng(12);
  const x = Float32Array.from({ length: 50_000 }, () => (rng.next() - 0.5) * 2 ** rng.int(-100, 100));
  const y = roundTrip('bf16', x);
  x.forEach((v, i) => assert.ok(Math.abs((y[i] as number) - v) <= Math.abs(v) * 2 ** -8, `${v} -> ${y[i]}`));
  // Ties go to even: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7.
  const t = roundTrip('bf16', Float32Array.of(1 + 2 ** -8, 1 + 3 * 2 ** -8, Number.NaN, -Infinity, 3e38));
  assert.deepEqual(Array.from(t.subarray(0, 4)), [1, 1 + 2 ** -6, Number.NaN, -Infinity]);
  assert.ok(Math.abs((t[4] as number) - 3e38) / 3e38 < 2 ** -8);
});
