import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { MessageChannel } from 'node:worker_threads';
import { decodeBf16Scalar, encodeBf16Scalar } from '../../shared/half.ts';
import { BF16_ISAS, TENSOR_ALIGN_BYTES, alignedFloats, copyFloats, encodeBf16Native, misalignment, reuseFreedMemory, sharedAlignedFloats, streamDecodeBf16, streamPut } from '../../worker/host-memory.ts';
import { readRanges } from '../../worker/shard-group.ts';

const MODULE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../worker/host-memory.ts');
const MB = 64;

/**
 * A fresh process that (with `reuse`) makes the worker's heap setting, then allocates a 64 MB copy,
 * drops it and collects it, 12 times, and prints the median of the last 8 rounds' minor page faults
 * (the median: V8 may free a block on a background thread after the next one is allocated, so a
 * busy machine sees a round that grows the heap now and then). Its own process: the setting is for
 * the whole process and cannot be taken back.
 */
function faultsPerRound(reuse: boolean): { applied: boolean; faults: number; pages: number } {
  const script = `
    const { reuseFreedMemory } = await import(${JSON.stringify(MODULE)});
    const r = process.env.REUSE === '1' ? reuseFreedMemory() : { applied: false };
    const src = new Float32Array(${MB} * 262144).fill(1);
    const rounds = [];
    for (let i = 0; i < 12; i += 1) {
      const before = process.resourceUsage().minorPageFault;
      let copy = new Float32Array(src);
      if (copy[copy.length - 1] !== 1) throw new Error('copy');
      copy = null;
      globalThis.gc();
      if (i >= 4) rounds.push(process.resourceUsage().minorPageFault - before);
    }
    rounds.sort((a, b) => a - b);
    console.log(JSON.stringify({ applied: r.applied, faults: rounds[4] }));`;
  const out = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', '--input-type=module', '-e', script], {
    encoding: 'utf8', env: { ...process.env, REUSE: reuse ? '1' : '0' },
  });
  assert.equal(out.status, 0, out.stderr);
  const r = JSON.parse(out.stdout.trim().split('\n').at(-1) ?? '{}') as { applied: boolean; faults: number };
  return { ...r, pages: (MB << 20) / 4096 };
}

describe('host memory (worker/native/host_memory.c)', () => {
  test('with the setting, a large block allocated and freed every round stays mapped: almost no page faults after the first rounds', (t) => {
    const tuned = faultsPerRound(true);
    assert.equal(tuned.applied, true, 'glibc takes the setting (Debian, as CI and the images)');
    assert.ok(tuned.faults < tuned.pages * 0.05, `expected under ${tuned.pages * 0.05} faults a round, got ${tuned.faults}`);
    // Without it each round maps fresh pages (fewer faults where transparent huge pages back them).
    const plain = faultsPerRound(false);
    assert.equal(plain.applied, false);
    t.diagnostic(`faults per ${MB} MB round: ${tuned.faults} with the setting, ${plain.faults} without (${tuned.pages} pages)`);
  });

  test('copyFloats copies exactly what TypedArray.set copies: large copies (streamed) at any float alignment, into shared and plain memory, overlapping views; a destination too short is refused and left as it was', () => {
    const n = (1 << 18) + 13; // just over 1 MiB of floats: the streamed path, with a tail
    const src = new Float32Array(n + 8);
    for (let i = 0; i < src.length; i += 1) src[i] = i * 0.5 - 7;
    for (const shared of [true, false]) {
      for (const so of [0, 1, 2, 3]) {
        for (const dofs of [0, 1, 3]) {
          const buf = shared ? new SharedArrayBuffer(4 * (n + 16)) : new ArrayBuffer(4 * (n + 16));
          const dst = new Float32Array(buf, 4 * dofs, n + 8).fill(-1);
          const expect = new Float32Array(n + 8).fill(-1);
          const part = src.subarray(so, so + n);
          copyFloats(dst, 2, part);
          expect.set(part, 2);
          assert.deepEqual(dst, expect, `shared ${shared}, source at +${so}, destination at +${dofs}`);
        }
      }
    }
    // Two views of one memory, overlapping either way: as set() leaves them.
    for (const [from, to] of [[0, 5], [5, 0]] as const) {
      const a = Float32Array.from(src);
      const b = Float32Array.from(src);
      copyFloats(a, to, a.subarray(from, from + n));
      b.set(b.subarray(from, from + n), to);
      assert.deepEqual(a, b, `overlapping, ${from} to ${to}`);
    }
    const short = new Float32Array(n).fill(3);
    assert.throws(() => copyFloats(short, 1, src.subarray(0, n)), /copyFloats: expected 262157 floats to fit at 1 of 262157/);
    assert.ok(short.every((v) => v === 3), 'nothing written');
  });

  test('streamDecodeBf16 decodes exactly as the scalar reference at any float alignment (every code, NaN and Inf included); small, overlapping or short inputs are left to the caller or refused', () => {
    const n = (1 << 18) + 11;
    const codes = new Uint16Array(n + 4);
    for (let i = 0; i < codes.length; i += 1) codes[i] = (i * 40503) & 0xffff; // every code, in a scrambled order
    for (const shared of [true, false]) {
      for (const so of [0, 1, 3]) {
        for (const dofs of [0, 1, 2, 3]) {
          const buf = shared ? new SharedArrayBuffer(4 * (n + 8)) : new ArrayBuffer(4 * (n + 8));
          const out = new Float32Array(buf, 4 * dofs, n + 4).fill(-1);
          const src = codes.subarray(so, so + n);
          assert.equal(streamDecodeBf16(src, out), true);
          const expect = new Float32Array(n + 4).fill(-1);
          decodeBf16Scalar(src, expect);
          assert.deepEqual(new Uint32Array(out.buffer, out.byteOffset, n + 4), new Uint32Array(expect.buffer), `shared ${shared}, codes at +${so}, floats at +${dofs}`);
        }
      }
    }
    assert.equal(streamDecodeBf16(codes.subarray(0, 1000), new Float32Array(1000)), false, 'under 1 MiB of floats: the caller decodes');
    const both = new ArrayBuffer(8 * n);
    const overlapping = new Float32Array(both, 0, n);
    assert.equal(streamDecodeBf16(new Uint16Array(both, 4, n), overlapping), false, 'overlapping: nothing written');
    assert.ok(overlapping.every((v) => v === 0));
    assert.throws(() => streamDecodeBf16(codes.subarray(0, n), new Float32Array(n - 1)), /streamDecodeBf16: expected room for 262155 floats, got 262154/);
  });

  test('streamPut stores 0 + k g as fp32 operations do (bit patterns of every kind, -0, subnormals; every bfloat16 code) at any alignment, and tells a NaN or an Inf wherever it lies; small, overlapping or short inputs are left to the caller or refused', () => {
    const n = (1 << 18) + 11;
    const bits = new Uint32Array(n + 4);
    let x = 12345;
    for (let i = 0; i < bits.length; i += 1) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      // Finite patterns (exponent below all-ones): normals, subnormals and zeros of both signs.
      bits[i] = i % 97 === 0 ? (i % 2) << 31 : i % 89 === 0 ? x & 0x807fffff : x & 0xbfffffff;
    }
    const floats = new Float32Array(bits.buffer);
    const codes = new Uint16Array(n + 4);
    for (let i = 0; i < codes.length; i += 1) codes[i] = (i * 40503) & 0xffff; // every code, in a scrambled order
    const finiteCodes = codes.map((c) => ((c & 0x7f80) === 0x7f80 ? c & 0xff7f : c));
    const f = Math.fround;
    const reference = (src: Float32Array, k: number) => src.map((g) => f(0 + f(k * g)));
    for (const shared of [true, false]) {
      for (const so of [0, 1, 3]) {
        for (const dofs of [0, 1, 2, 3]) {
          const buf = shared ? new SharedArrayBuffer(4 * (n + 8)) : new ArrayBuffer(4 * (n + 8));
          const out = new Float32Array(buf, 4 * dofs, n + 4).fill(Number.NaN);
          const src = floats.subarray(so, so + n);
          assert.equal(streamPut(out, src, 3), true, `floats at +${so} into +${dofs}`);
          const expect = new Float32Array(n + 4).fill(Number.NaN);
          expect.set(reference(src, 3));
          assert.deepEqual(new Uint32Array(out.buffer, out.byteOffset, n + 4), new Uint32Array(expect.buffer), `shared ${shared}, floats at +${so} into +${dofs}`);
          const c = finiteCodes.subarray(so, so + n);
          out.fill(Number.NaN);
          assert.equal(streamPut(out, c, 5), true, `codes at +${so} into +${dofs}`);
          const decoded = new Float32Array(n);
          decodeBf16Scalar(c, decoded);
          expect.set(reference(decoded, 5));
          assert.deepEqual(new Uint32Array(out.buffer, out.byteOffset, n + 4), new Uint32Array(expect.buffer), `shared ${shared}, codes at +${so} into +${dofs}`);
        }
      }
    }
    const out = new Float32Array(n);
    assert.equal(streamPut(out, codes.subarray(0, n), 1), false, 'every code: NaN and Inf among them');
    for (const at of [0, 1, 2, 1000, n - 2, n - 1]) {
      for (const bad of [Number.NaN, Infinity, -Infinity]) {
        const g = floats.slice(0, n);
        g[at] = bad;
        assert.equal(streamPut(out, g, 1), false, `${bad} at ${at}`);
      }
    }
    assert.equal(streamPut(new Float32Array(1000), floats.subarray(0, 1000), 1), undefined, 'under 1 MiB of floats: the caller puts');
    const both = new ArrayBuffer(8 * n);
    const overlapping = new Float32Array(both, 0, n);
    assert.equal(streamPut(overlapping, new Float32Array(both, 4, n).fill(1), 2), undefined, 'overlapping: nothing written');
    assert.ok(overlapping.subarray(0, 1).every((v) => v === 0) && overlapping[1] === 1);
    assert.throws(() => streamPut(new Float32Array(n - 1), floats.subarray(0, n), 1), /streamPut: expected room for 262155 floats, got 262154/);
  });

  test('encodeBf16Native equals the scalar reference bit for bit with every instruction set this CPU runs (ties, NaN, Inf, subnormals, random bits; any alignment and length); the best is used by default; bad calls are refused, writing nothing', () => {
    const specials = [0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xff800001, 0xffffffff, 0x3f808000, 0x3f818000, 0x3f80ffff, 0x7f7fffff, 0xff7fffff, 0x8000, 0x18000, 0x7fff, 0x807fffff];
    let seed = 777;
    const next = () => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed; };
    const bits = Uint32Array.from({ length: 70_000 }, (_, i) => specials[i % 53] ?? (next() ^ (next() << 16)) >>> 0);
    const floats = new Float32Array(bits.buffer);
    const runs = BF16_ISAS.filter((isa) => { try { encodeBf16Native(floats.subarray(0, 8), new Uint16Array(8), isa); return true; } catch { return false; } });
    assert.ok(runs.includes('scalar') && runs.length >= 1, `instruction sets run here: ${runs.join(', ')}`);
    for (const isa of runs) {
      for (const [at, n] of [[0, 70_000 - 3], [1, 69_990], [3, 4103], [2, 31], [0, 16], [5, 0]] as const) {
        const src = floats.subarray(at, at + n);
        const out = new Uint16Array(n + 9).fill(0xabcd);
        assert.equal(encodeBf16Native(src, out.subarray(1, n + 1), isa), isa);
        const expect = new Uint16Array(n + 9).fill(0xabcd);
        encodeBf16Scalar(src, expect.subarray(1, n + 1));
        assert.deepEqual(out, expect, `${isa}, ${n} floats from +${at}`);
      }
    }
    const best = encodeBf16Native(floats, new Uint16Array(floats.length));
    assert.equal(best, runs[0] === 'scalar' ? undefined : runs[0], 'the default is the widest the CPU runs (none without AVX2: the wasm kernel then)');
    assert.equal(encodeBf16Native(floats.subarray(0, 4095), new Uint16Array(4095)), undefined, 'under 4096 floats: the caller encodes');
    assert.throws(() => encodeBf16Native(floats.subarray(0, 16), new Uint16Array(16), 'neon' as 'scalar'), /encodeBf16: expected an instruction set this CPU runs/);
    assert.throws(() => encodeBf16Native(floats.subarray(0, 5000), new Uint16Array(4999)), /encodeBf16Native: expected room for 5000 codes, got 4999/);
    const both = new ArrayBuffer(4 * 8192);
    const codes = new Uint16Array(both, 0, 8192);
    assert.throws(() => encodeBf16Native(new Float32Array(both, 4096, 4096).fill(1), codes), /encodeBf16: expected a destination of at least half the source's bytes, not overlapping it/);
    assert.ok(codes.subarray(0, 2048).every((c) => c === 0), 'nothing written');
  });

  test('VGG_HEAP_REUSE=false leaves malloc as it is; a value that is not true/false is refused', () => {
    assert.deepEqual(reuseFreedMemory({ VGG_HEAP_REUSE: 'false' }), { applied: false, reason: 'VGG_HEAP_REUSE=false' });
    assert.throws(() => reuseFreedMemory({ VGG_HEAP_REUSE: 'sometimes' }), /VGG_HEAP_REUSE: expected true or false, got "sometimes"/);
  });

  test('alignedFloats: zeroed floats at a 64-byte boundary, whatever malloc returns, still there after a transfer to another port', async () => {
    const sizes = [1, 3, 1000, 4097, 262_144, 1 << 22];
    const views = sizes.flatMap((n) => [alignedFloats(n), alignedFloats(n)]);
    views.forEach((v, i) => {
      assert.equal(v.length, sizes[i >> 1]);
      assert.ok(v.every((x) => x === 0));
      assert.equal(misalignment(v), 0, `${v.length} floats`);
    });
    // Plain arrays land wherever malloc puts them: misalignment tells them apart (or this test could not fail).
    const plain = Array.from({ length: 32 }, (_, i) => misalignment(new Float32Array(new ArrayBuffer(4 * (1000 + i) + 16), 16)));
    assert.ok(plain.some((m) => m !== 0), `plain arrays offset by 16 bytes: ${plain.join(' ')}`);
    const big = alignedFloats(1 << 20);
    big[5] = 2.5;
    const { port1, port2 } = new MessageChannel();
    const moved = new Promise<Float32Array>((resolve) => port2.once('message', (m: Float32Array) => resolve(m)));
    port1.postMessage(big, [big.buffer as ArrayBuffer]);
    const got = await moved;
    port1.close();
    assert.equal(big.length, 0, 'transferred');
    assert.equal(got[5], 2.5);
    assert.equal(misalignment(got), 0);
    assert.equal(TENSOR_ALIGN_BYTES % 16, 0);
  });

  test('sharedAlignedFloats: zeroed floats at a 64-byte boundary in shared memory; lent to another port, the same bytes', async () => {
    for (const n of [1, 1000, 4097, 1 << 22]) {
      const v = sharedAlignedFloats(n);
      assert.ok(v.buffer instanceof SharedArrayBuffer);
      assert.equal(v.length, n);
      assert.ok(v.every((x) => x === 0));
      assert.equal(misalignment(v), 0, `${n} floats`);
    }
    // misalignment reads shared memory's addresses too (or the check above could not fail).
    const plain = Array.from({ length: 32 }, (_, i) => misalignment(new Float32Array(new SharedArrayBuffer(4 * (1000 + i) + 16), 16)));
    assert.ok(plain.some((m) => m !== 0), `shared arrays offset by 16 bytes: ${plain.join(' ')}`);
    const lent = sharedAlignedFloats(1 << 20);
    const { port1, port2 } = new MessageChannel();
    const got = new Promise<Float32Array>((resolve) => port2.once('message', (m: Float32Array) => resolve(m)));
    port1.postMessage(lent);
    const other = await got;
    port1.close();
    other[7] = 3.5;
    assert.equal(lent[7], 3.5, 'the other side writes the lender\'s bytes');
    assert.equal(misalignment(other), 0);
  });

  test('a tensor that spans two shards\' ranges is copied into aligned memory', () => {
    const a = alignedFloats(64).fill(1);
    const b = alignedFloats(64).fill(2);
    const out = readRanges([{ lo: 0, hi: 64, weights: a }, { lo: 64, hi: 128, weights: b }], 48, 80);
    assert.deepEqual([...out], [...new Array(16).fill(1), ...new Array(16).fill(2)]);
    assert.equal(misalignment(out), 0);
  });
});
