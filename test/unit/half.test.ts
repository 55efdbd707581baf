import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorFeedback, decode16, decodeFp16, encode16, encodeFp16 } from '../../shared/half.ts';
import { Rng } from '../../shared/rng.ts';
import { codesOf } from '../../shared/wire-protocol.ts';

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

describe('error feedback on a 16-bit wire', () => {
  for (const wire of ['bf16', 'fp16'] as const) {
    test(`${wire}: what was sent over 64 steps sums to the true gradients within one rounding; without it the error grows`, () => {
      const n = 1000;
      // Values a 16-bit format cannot hold, the same every step (the worst case for plain rounding: its error repeats).
      const g = Float32Array.from({ length: n }, (_, i) => (1 + (i % 97) / 1000) * 1e-3 * (i % 2 === 0 ? 1 : -1));
      const ef = new ErrorFeedback(wire, n);
      const sentWith = new Float64Array(n);
      const sentWithout = new Float64Array(n);
      const codes = new Uint16Array(n);
      const back = new Float32Array(n);
      const steps = 64;
      for (let s = 0; s < steps; s += 1) {
        const x = g.slice();
        ef.compensate(x);
        encode16(wire, x, codes);
        decode16(wire, codes, back);
        for (let i = 0; i < n; i += 1) sentWith[i] = (sentWith[i] as number) + (back[i] as number);
        encode16(wire, g, codes);
        decode16(wire, codes, back);
        for (let i = 0; i < n; i += 1) sentWithout[i] = (sentWithout[i] as number) + (back[i] as number);
      }
      let worstWith = 0;
      let worstWithout = 0;
      for (let i = 0; i < n; i += 1) {
        const truth = steps * (g[i] as number);
        worstWith = Math.max(worstWith, Math.abs((sentWith[i] as number) - truth) / Math.abs(g[i] as number));
        worstWithout = Math.max(worstWithout, Math.abs((sentWithout[i] as number) - truth) / Math.abs(g[i] as number));
      }
      // One rounding of one gradient is at most 2^-8 (bf16) or 2^-11 (fp16) of it; the residual holds it.
      const ulp = wire === 'bf16' ? 2 ** -8 : 2 ** -11;
      assert.ok(worstWith <= 1.01 * ulp, `${wire} with feedback: off by ${worstWith} of one gradient after ${steps} steps`);
      assert.ok(worstWithout > 8 * ulp, `${wire} without feedback: off by ${worstWithout} (expected to grow with the steps)`);
    });
  }

  test('a gradient of another length is refused', () => {
    assert.throws(() => new ErrorFeedback('bf16', 4).compensate(new Float32Array(5)), /expected 4 values, got 5/);
  });
});

test('16-bit chunk data at an odd offset of an odd-sized receive buffer (a Node Buffer) is copied, not misread', () => {
  const codes = Uint16Array.from([1, 0x3f80, 0xbf80, 65535, 7]);
  const whole = Buffer.alloc(1 + codes.byteLength + 2); // odd total size, data at byte 1
  Buffer.from(codes.buffer).copy(whole, 1);
  const data = whole.subarray(1, 1 + codes.byteLength);
  assert.deepEqual([...codesOf(data, 'bf16', 16)], [...codes]);
  assert.throws(() => codesOf(data, 'bf16', 4), /expected at most 4 values, got 5/);
});
