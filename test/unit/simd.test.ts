import { afterEach, describe, test } from 'node:test';
import { MessageChannel } from 'node:worker_threads';
import assert from 'node:assert/strict';
import { FlatMomentumSgd } from '../../shared/flat-sgd.ts';
import { decodeBf16, decodeBf16Scalar, encodeBf16, encodeBf16Scalar } from '../../shared/half.ts';
import { buildLayout } from '../../shared/param-layout.ts';
import { FloatArena, PARALLEL_MIN_UNITS, arenaOf, updateThreads } from '../../shared/simd.ts';
import { TINY_VGG_A } from '../../shared/vgg-configs.ts';
import { SGD, join, startAggregator, stats, type Harness } from '../helpers/aggregator-harness.ts';
import { wave } from '../helpers/numeric.ts';


/** The floats' bit patterns (an exact comparison that tells -0 from 0 and NaN payloads apart). */
const bitsOf = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

/** Largest |a - b| relative to max(1, |b|). */
function worst(a: Float32Array, b: Float32Array): number {
  let w = 0;
  for (let i = 0; i < a.length; i += 1) w = Math.max(w, Math.abs((a[i] as number) - (b[i] as number)) / Math.max(1, Math.abs(b[i] as number)));
  return w;
}

describe('the SIMD kernels (FloatArena)', () => {
  test('accumulate equals the scalar reduce, at any offset and length, from inside or outside the arena, and finds NaN and Inf', () => {
    const arena = new FloatArena(1 << 21);
    for (const [offset, len] of [[0, 1024], [3, 1021], [16, 7], [5, 1]] as const) {
      const sum = arena.copyOf(wave(2048, 1));
      const expected = sum.slice();
      const g = wave(len, 2);
      // fp32 per operation: n g rounded, then the add.
      for (let i = 0; i < len; i += 1) expected[offset + i] = Math.fround((expected[offset + i] as number) + Math.fround(3 * (g[i] as number)));
      assert.equal(arena.accumulate(sum, offset, g, 3), true);
      assert.deepEqual(bitsOf(sum), bitsOf(expected), `offset ${offset}, length ${len}`);
      const inside = arena.copyOf(g);
      const again = sum.slice();
      assert.equal(arena.accumulate(sum, offset, inside, 3), true);
      for (let i = 0; i < len; i += 1) again[offset + i] = Math.fround((again[offset + i] as number) + Math.fround(3 * (g[i] as number)));
      assert.deepEqual(bitsOf(sum), bitsOf(again));
    }
    for (const bad of [Number.NaN, Infinity, -Infinity]) {
      for (const at of [0, 6, 1022]) {
        const g = wave(1023, 3);
        g[at] = bad;
        assert.equal(arena.accumulate(arena.alloc(1023), 0, g, 1), false, `${bad} at ${at}`);
      }
    }
  });

  test('put stores 0 + n g without reading the sum (stale NaN there is not seen), bit for bit what accumulate into zeros gives, fp32 and bf16', () => {
    const arena = new FloatArena(1 << 22);
    // (From 2^18 floats on, the put is the addon's streamPut, with streaming stores.)
    for (const [offset, len] of [[0, 1024], [3, 1021], [16, 7], [5, 1], [3, (1 << 18) + 5]] as const) {
      const g = wave(len, 7);
      g[0] = -0; // 0 + (-0) is +0, as the zeroed sum gave
      const codes = new Uint16Array(len);
      encodeBf16(g, codes);
      for (const kind of ['fp32', 'bf16'] as const) {
        const stale = arena.alloc(offset + len + 16).fill(Number.NaN);
        const zeros = arena.alloc(offset + len + 16);
        const put = kind === 'fp32' ? arena.accumulate(stale, offset, g, 3, true) : arena.accumulateBf16(stale, offset, codes, 3, true);
        const add = kind === 'fp32' ? arena.accumulate(zeros, offset, g, 3) : arena.accumulateBf16(zeros, offset, codes, 3);
        assert.equal(put, true, `${kind} offset ${offset}`);
        assert.equal(add, true);
        assert.deepEqual(new Uint32Array(stale.buffer, stale.byteOffset + 4 * offset, len), new Uint32Array(zeros.buffer, zeros.byteOffset + 4 * offset, len), `${kind} offset ${offset}, length ${len}`);
        assert.ok(Number.isNaN(stale[offset + len] as number), 'nothing past the range written');
      }
    }
    const g = wave(1023, 3);
    g[700] = Infinity;
    assert.equal(arena.accumulate(arena.alloc(1023), 0, g, 1, true), false);
  });

  test('with helper threads (shared memory) every kernel gives what one thread gives, bit for bit (SGD and the means split over them); closed, it runs alone', async () => {
    const n = 5 * 4 * PARALLEL_MIN_UNITS + 13; // five parts' worth: split over all threads, odd tail
    const one = new FloatArena(16 * n + 4096);
    const four = new FloatArena(16 * n + 4096, 4);
    assert.equal(four.threads, 4);
    assert.ok(four.memory.buffer instanceof SharedArrayBuffer);
    const results = [one, four].map((a) => {
      const sum = a.alloc(n).fill(Number.NaN); // stale: put must not read it
      const w = a.copyOf(wave(n, 1));
      const v = a.copyOf(wave(n, 2));
      const codes = new Uint16Array(n);
      encodeBf16(wave(n, 3), codes);
      const probes = [a.accumulate(sum, 0, wave(n, 4), 3, true), a.accumulateBf16(sum, 0, codes, 2), a.accumulate(sum, 7, wave(n - 7, 5), 1)];
      a.sgd(w, v, sum, 3, n - 2, 0.01, 0.9, 5e-4, 0.25);
      const m = a.alloc(n);
      a.mean(m, sum, 0, n, 0.5);
      return { probes, bytes: [sum, w, v, m].map((x) => Buffer.from(x.buffer, x.byteOffset, x.byteLength).toString('base64')) };
    });
    assert.deepEqual(results[1]?.probes, [true, true, true]);
    assert.deepEqual(results[1], results[0]);
    await four.close();
    assert.equal(four.threads, 1);
    const w = four.copyOf(wave(n, 1));
    const v = four.copyOf(wave(n, 2));
    four.sgd(w, v, four.copyOf(wave(n, 3)), 0, n, 0.01, 0.9, 0, 1);
    assert.notDeepEqual(w, wave(n, 1));
  });

  test('arenas sharing an allocation pointer (share.bump) over one memory take disjoint room; past the end a clear error that changes nothing', () => {
    const a = new FloatArena(1 << 16, 1, { shared: true, bump: true });
    const b = new FloatArena(0, 1, { memory: a.memory, bump: true });
    const taken: [number, number][] = [];
    for (let k = 0; k < 20; k += 1) {
      const x = (k % 2 === 0 ? a : b).alloc(100 + k);
      taken.push([x.byteOffset, x.byteOffset + x.byteLength]);
      assert.equal(x.byteOffset % 16, 0);
    }
    taken.sort((p, q) => p[0] - q[0]);
    for (let k = 1; k < taken.length; k += 1) assert.ok((taken[k - 1] as [number, number])[1] <= (taken[k] as [number, number])[0], 'ranges overlap');
    assert.ok((taken[0] as [number, number])[0] >= 16, 'the pointer\'s own bytes are not handed out');
    assert.equal(a.used, b.used);
    const used = a.used;
    assert.throws(() => b.alloc(1 << 20), /FloatArena: expected room for 4194304 more bytes, got \d+/);
    assert.equal(a.used, used);
    assert.throws(() => new FloatArena(0, 1, { memory: new WebAssembly.Memory({ initial: 1, maximum: 1 }), bump: true }), /expected a shared memory/);
  });

  test('an arena adopting another thread\'s shared memory sees its floats, allocates after what it used, and refuses unshared memory', async () => {
    const owner = new FloatArena(4096, 1, { shared: true });
    const g = owner.alloc(1000);
    g.set(wave(1000, 8));
    const { port1, port2 } = new MessageChannel();
    const got = new Promise<{ memory: WebAssembly.Memory; used: number }>((resolve) => { port2.once('message', resolve); });
    port1.postMessage({ memory: owner.memory, used: owner.used }); // as to the transport thread
    const { memory, used } = await got;
    port1.close();
    const adopted = new FloatArena(0, 1, { memory, used });
    const view = new Float32Array(adopted.memory.buffer, g.byteOffset, 1000);
    assert.deepEqual(view, g);
    const codes = adopted.alloc16(1000);
    assert.ok(codes.byteOffset >= g.byteOffset + g.byteLength, 'after the gradient');
    encodeBf16(view, codes); // in place: both in the adopted arena
    const expected = new Uint16Array(1000);
    encodeBf16Scalar(g, expected);
    assert.deepEqual(codes, expected);
    assert.throws(() => new FloatArena(0, 1, { memory: new WebAssembly.Memory({ initial: 1, maximum: 1 }) }), /expected a shared memory to adopt, got an unshared one/);
  });

  test('VGG_UPDATE_THREADS sets the threads; a bad value is a clear error', () => {
    const before = process.env.VGG_UPDATE_THREADS;
    try {
      process.env.VGG_UPDATE_THREADS = '3';
      assert.equal(updateThreads(), 3);
      process.env.VGG_UPDATE_THREADS = 'many';
      assert.throws(() => updateThreads(), /VGG_UPDATE_THREADS: expected an integer 1-64, got "many"/);
      delete process.env.VGG_UPDATE_THREADS;
      assert.equal(updateThreads(), 1); // opt-in
    } finally {
      if (before === undefined) delete process.env.VGG_UPDATE_THREADS;
      else process.env.VGG_UPDATE_THREADS = before;
    }
  });

  test('momentum SGD on arena arrays equals the JS loop bit for bit (fp32 per operation both), BN statistics averaged', () => {
    const layout = buildLayout({ ...TINY_VGG_A, batchNorm: true });
    const n = layout.totalSize;
    const arena = new FloatArena(4 * n + 64);
    const w = arena.copyOf(wave(n, 4));
    const v = arena.copyOf(wave(n, 5));
    const s = arena.copyOf(wave(n, 6));
    assert.equal(arenaOf(w, v, s), arena);
    const wJs = w.slice();
    const simd = new FlatMomentumSgd(layout, SGD, v);
    const js = new FlatMomentumSgd(layout, SGD, v.slice());
    for (let step = 0; step < 3; step += 1) {
      simd.apply(w, s, 0.25);
      js.apply(wJs, s, 0.25);
    }
    assert.deepEqual(bitsOf(w), bitsOf(wJs), 'weights');
    assert.deepEqual(bitsOf(simd.velocity), bitsOf(js.velocity), 'momentum');
    const bn = layout.entries.find((e) => !e.trainable);
    assert.ok(bn !== undefined);
    assert.equal(w[bn.offset], Math.fround((s[bn.offset] as number) * 0.25));
    assert.notDeepEqual(w, wave(n, 4));
  });

  test('the staged update (early commit): stage() writes the new weights elsewhere and leaves weights and momentum alone; finish() then leaves exactly what apply() does, BN statistics included, over ranges cut anywhere, SIMD and JS', () => {
    const layout = buildLayout({ ...TINY_VGG_A, batchNorm: true });
    const n = layout.totalSize;
    const cuts = [0, 3, 1001, 4099, Math.floor(n / 2) + 1, n - 5, n];
    for (const simd of [true, false]) {
      const arena = new FloatArena(10 * n + 256);
      const make = (seed: number) => simd ? arena.copyOf(wave(n, seed)) : wave(n, seed);
      const want = { w: make(4), sgd: new FlatMomentumSgd(layout, SGD, make(5)), s: make(6) };
      want.sgd.apply(want.w, want.s, 0.25);
      const w = make(4);
      const sgd = new FlatMomentumSgd(layout, SGD, make(5));
      const s = make(6);
      const out = simd ? arena.alloc(n) : new Float32Array(n);
      for (let k = 0; k + 1 < cuts.length; k += 1) sgd.stage(w, s, 0.25, cuts[k] as number, cuts[k + 1] as number, out.subarray(cuts[k] as number));
      assert.deepEqual([w, sgd.velocity], [make(4), make(5)], 'weights and momentum untouched by stage');
      assert.deepEqual(out, want.w, `${simd ? 'SIMD' : 'JS'}: the staged weights are the update's`);
      for (let k = cuts.length - 1; k > 0; k -= 1) sgd.finish(w, s, 0.25, cuts[k - 1] as number, cuts[k] as number);
      assert.deepEqual(w, want.w, `${simd ? 'SIMD' : 'JS'} weights`);
      assert.deepEqual(sgd.velocity, want.sgd.velocity, `${simd ? 'SIMD' : 'JS'} momentum`);
    }
  });
});

let hs: Harness[] = [];
afterEach(async () => { for (const h of hs) await h.close(); hs = []; });

describe('bfloat16 conversions (SIMD)', () => {
  test('encode and decode equal the scalar reference bit for bit: random bit patterns, ties, NaN, Inf, subnormals, any length', () => {
    const specials = [0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xffffffff, 0x3f808000, 0x3f818000, 0x3f80ffff, 0x7f7fffff, 0xff7fffff, 0x8000, 0x18000];
    let seed = 12345;
    const next = () => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed; };
    for (const n of [(1 << 20) + 13, 71, 64]) {
      const bits = Uint32Array.from({ length: n }, (_, i) => specials[i % 97] ?? (next() ^ (next() << 16)) >>> 0);
      const f = new Float32Array(bits.buffer);
      const fast = new Uint16Array(n);
      const slow = new Uint16Array(n);
      encodeBf16(f, fast);
      encodeBf16Scalar(f, slow);
      assert.deepEqual(fast, slow, `encode, ${n} values`);
      const back = new Float32Array(n);
      const ref = new Float32Array(n);
      decodeBf16(fast, back);
      decodeBf16Scalar(fast, ref);
      assert.deepEqual(new Uint32Array(back.buffer), new Uint32Array(ref.buffer), `decode, ${n} values`);
    }
  });

  test('encode without NaN (the kernel alone, no element-by-element redo) equals the scalar reference; one NaN is kept NaN', () => {
    let seed = 777;
    const next = () => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed; };
    const n = (3 << 20) + 5;
    const specials = [0, 0x80000000, 0x7f800000, 0xff800000, 0x3f808000, 0x3f818000, 0x3f80ffff, 0x7f7fffff, 0xff7fffff, 0x7f7f8000, 0x8000, 0x18000];
    // Random patterns with the exponent kept below 0xff: finite (or, among the specials, Inf), never NaN.
    const bits = Uint32Array.from({ length: n }, (_, i) => {
      const s = specials[i % 89];
      if (s !== undefined) return s;
      const x = (next() ^ (next() << 16)) >>> 0;
      return ((x & 0x7f800000) === 0x7f800000 ? x & 0xbfffffff : x) >>> 0;
    });
    const f = new Float32Array(bits.buffer);
    const fast = new Uint16Array(n);
    const slow = new Uint16Array(n);
    encodeBf16(f, fast);
    encodeBf16Scalar(f, slow);
    assert.deepEqual(fast, slow);
    for (const nan of [0x7fffffff, 0xffff8001, 0x7f800001]) {
      bits[(2 << 20) + 9] = nan; // in the third slice of 2^20: the others stay on the kernel
      encodeBf16(f, fast);
      encodeBf16Scalar(f, slow);
      assert.deepEqual(fast, slow);
      const back = new Float32Array(1);
      decodeBf16Scalar(fast.subarray((2 << 20) + 9, (2 << 20) + 10), back);
      assert.ok(Number.isNaN(back[0] as number), `0x${nan.toString(16)} encoded as a NaN`);
    }
  });

  test('the fused bf16 reduce equals decode-then-reduce, and finds NaN and Inf codes', () => {
    const arena = new FloatArena(1 << 22);
    const n = 1029;
    const codes = Uint16Array.from({ length: n }, (_, i) => (i * 2654435761) & 0x7f7f);
    const values = new Float32Array(n);
    decodeBf16Scalar(codes, values);
    const sum = arena.copyOf(wave(n + 5, 9));
    const expected = sum.slice();
    for (let i = 0; i < n; i += 1) expected[5 + i] = Math.fround((expected[5 + i] as number) + Math.fround(3 * (values[i] as number)));
    assert.equal(arena.accumulateBf16(sum, 5, codes, 3), true);
    assert.deepEqual(sum, expected);
    for (const [at, code] of [[0, 0x7fc0], [1027, 0xff80], [500, 0x7f80]] as const) {
      const bad = codes.slice();
      bad[at] = code;
      assert.equal(arena.accumulateBf16(arena.alloc(n), 0, bad, 1), false, `code ${code.toString(16)} at ${at}`);
    }
  });
});

describe('an aggregator on a FloatArena', () => {
  for (const wire of ['fp32', 'bf16'] as const) test(`a two-member step (${wire} wire) gives the weights of the plain-array aggregator`, async () => {
    const results: Float32Array[] = [];
    for (const arena of [false, true]) {
      const h = await startAggregator({ arena, wire });
      hs.push(h);
      const n = h.layout.totalSize;
      const a = await h.member('a');
      const b = await h.member('b');
      await join(a, 'job-1');
      await join(b, 'job-2');
      const next = a.next(['weights'], (_n, s) => (s as number) === 1);
      await a.sendGradient(0, 'job-1', [1, 2, 3], stats(3), wave(n, 7));
      await b.sendGradient(0, 'job-2', [4], stats(1), wave(n, 8));
      await next;
      assert.equal(arenaOf(h.weights) !== undefined, arena);
      results.push(h.weights.slice());
    }
    // The plain arrays' JS loops compute fp32 per operation as the kernels do: the same weights, bit for bit.
    assert.deepEqual(bitsOf(results[1] as Float32Array), bitsOf(results[0] as Float32Array));
    assert.notDeepEqual(results[1], hs[1]?.initial);
  });
});
