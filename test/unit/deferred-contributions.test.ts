import { afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { Aggregator } from '../../coordinator/aggregator.ts';
import { DeferredContributions } from '../../coordinator/deferred-contributions.ts';
import { shardTicket } from '../../coordinator/shard-leader.ts';
import { FlatMomentumSgd } from '../../shared/flat-sgd.ts';
import { LocalSocket } from '../../shared/local-link.ts';
import { FloatArena } from '../../shared/simd.ts';
import { decodeBf16Scalar, encodeBf16Scalar } from '../../shared/half.ts';
import { chunkFrame, decodeFragments } from '../../shared/wire-protocol.ts';
import { hasStreamPutTwo, streamPutTwo } from '../../worker/host-memory.ts';
import { RawPeer, SGD, frame, hello, startAggregator, stats, type Harness } from '../helpers/aggregator-harness.ts';

/** Finite fp32 bit patterns of every kind (normals, subnormals, zeros of both signs), seeded. */
function finiteFloats(n: number, seed: number): Float32Array {
  const bits = new Uint32Array(n);
  let x = seed;
  for (let i = 0; i < n; i += 1) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    bits[i] = i % 97 === 0 ? (i % 2) << 31 : i % 89 === 0 ? x & 0x807fffff : x & 0xbfffffff;
  }
  return new Float32Array(bits.buffer);
}

const f = Math.fround;
/** A put of a (k a) then a reduce of b (k b), as the SIMD kernels compute them, per float. */
const reference = (a: Float32Array, ka: number, b: Float32Array, kb: number) => a.map((x, i) => f(f(0 + f(ka * x)) + f((b[i] as number) * kb)));
const bitsOf = (v: Float32Array) => new Uint32Array(v.buffer, v.byteOffset, v.length);

describe('streamPutTwo (two contributions into the sum in one pass)', () => {
  test('the addon has it (npm test builds it)', () => assert.equal(hasStreamPutTwo(), true));

  test('stores (0 + ka a) + kb b as a put then a reduce do, bit for bit, at any alignment; tells which source held a NaN or an Inf', () => {
    const n = 70_003;
    const a = finiteFloats(n + 4, 1);
    const b = finiteFloats(n + 4, 2);
    for (const [ao, bo, dofs] of [[0, 0, 0], [1, 3, 2], [3, 0, 1], [2, 2, 3]] as const) {
      const out = new Float32Array(n + 8).fill(Number.NaN);
      const x = a.subarray(ao, ao + n);
      const y = b.subarray(bo, bo + n);
      assert.equal(streamPutTwo(out.subarray(dofs, dofs + n), x, 3, y, 5), 0, `offsets ${ao}, ${bo} into ${dofs}`);
      const expect = new Float32Array(n + 8).fill(Number.NaN);
      expect.set(reference(x, 3, y, 5), dofs);
      assert.deepEqual(bitsOf(out), bitsOf(expect), `offsets ${ao}, ${bo} into ${dofs}`);
    }
    const out = new Float32Array(n);
    for (const at of [0, 1, 5, 1000, n - 1]) {
      for (const bad of [Number.NaN, Infinity, -Infinity]) {
        const x = a.slice(0, n);
        const y = b.slice(0, n);
        x[at] = bad;
        assert.equal(streamPutTwo(out, x, 1, y, 1), 1, `${bad} at ${at} in the first`);
        assert.equal(streamPutTwo(out, y, 1, x, 1), 2, `${bad} at ${at} in the second`);
        assert.equal(streamPutTwo(out, x, 1, x, 1), 3, `${bad} at ${at} in both`);
      }
    }
  });

  test('with bfloat16 codes for the second source and the first rounded to bfloat16 (a bf16 run\'s hosting worker): the floats of a put of its codes and a reduce of the other\'s, bit for bit; a float that rounds to Inf is told', () => {
    const n = 50_001;
    const a = finiteFloats(n + 3, 7);
    const codes = Uint16Array.from({ length: n + 3 }, (_, i) => { const c = (i * 40503) & 0xffff; return (c & 0x7f80) === 0x7f80 ? c & 0xff7f : c; });
    for (const [ao, bo] of [[0, 0], [1, 3], [3, 1]] as const) {
      const x = a.subarray(ao, ao + n);
      const c = codes.subarray(bo, bo + n);
      const out = new Float32Array(n);
      assert.equal(streamPutTwo(out, x, 3, c, 5, true), 0, `offsets ${ao}, ${bo}`);
      const xc = new Uint16Array(n);
      encodeBf16Scalar(x, xc);
      const xr = new Float32Array(n);
      const cr = new Float32Array(n);
      decodeBf16Scalar(xc, xr);
      decodeBf16Scalar(c, cr);
      assert.deepEqual(bitsOf(out), bitsOf(reference(xr, 3, cr, 5)), `offsets ${ao}, ${bo}`);
      // Without `round`, the floats themselves (the fp32 run's case, with codes from the other).
      assert.equal(streamPutTwo(out, x, 3, c, 5), 0);
      assert.deepEqual(bitsOf(out), bitsOf(reference(x, 3, cr, 5)));
    }
    const x = a.slice(0, n);
    x[17] = 3.4e38; // finite, but past bfloat16's largest: rounds to Inf, as the worker's encode would send it
    assert.equal(streamPutTwo(new Float32Array(n), x, 1, codes.subarray(0, n), 1, true), 1);
    assert.equal(streamPutTwo(new Float32Array(n), x, 1, codes.subarray(0, n), 1), 0, 'not rounded: finite');
    x[17] = Number.NaN;
    assert.equal(streamPutTwo(new Float32Array(n), x, 1, codes.subarray(0, n), 1, true), 1);
    const badCodes = codes.slice(0, n);
    badCodes[9] = 0x7fc0;
    assert.equal(streamPutTwo(new Float32Array(n), a.subarray(0, n), 1, badCodes, 1, true), 2);
  });

  test('a destination overlapping a source is left to the caller; sources of two lengths or a short destination are refused', () => {
    const both = new Float32Array(2000);
    const other = new Float32Array(1000).fill(1);
    assert.equal(streamPutTwo(both.subarray(0, 1000), both.subarray(500, 1500), 1, other, 1), undefined);
    assert.equal(streamPutTwo(both.subarray(0, 1000), other, 1, both.subarray(999, 1999), 1), undefined);
    assert.ok(both.every((v) => v === 0), 'nothing written');
    assert.throws(() => streamPutTwo(new Float32Array(1000), other, 1, new Float32Array(999), 1), /streamPutTwo: expected sources of one length and room for them, got 1000 and 999 values into 1000/);
    assert.throws(() => streamPutTwo(new Float32Array(999), other, 1, other, 1), /streamPutTwo: expected sources of one length and room for them, got 1000 and 1000 values into 999/);
  });
});

describe('DeferredContributions', () => {
  // Its own arena, made directly: the class is used only where the aggregator has one (not under VGG_NO_SIMD=1).
  const ar = new FloatArena(1 << 16);
  test('a waiting run and another member\'s chunk across it: the overlap fused, the rest of the chunk put alone, the rest of the run kept', () => {
    const n = 10_000;
    const sum = ar.alloc(n).fill(Number.NaN); // a sum's floats before anything wrote them
    const mine = finiteFloats(n, 3);
    const theirs = ar.copyOf(finiteFloats(n, 4));
    const d = new DeferredContributions<string>();
    // The hosting worker's floats [2000, 6000) wait; the other member sends [4000, 9000).
    d.add({ member: 'host', lo: 2000, hi: 6000, g: mine.subarray(2000, 6000), n: 3, round: false });
    assert.equal(d.has('host'), true);
    const r = d.putWith(ar, sum, 4000, 9000, theirs.subarray(4000, 9000), 2);
    assert.deepEqual(r, { finite: true, voided: [] });
    const fused = reference(mine.subarray(4000, 6000), 3, theirs.subarray(4000, 6000), 2);
    assert.deepEqual(bitsOf(sum.subarray(4000, 6000)), bitsOf(fused), 'both at once, as a put then a reduce');
    assert.deepEqual(bitsOf(sum.subarray(6000, 9000)), bitsOf(theirs.subarray(6000, 9000).map((x) => f(0 + f(2 * x)))), 'theirs alone, a put');
    assert.ok(sum.subarray(0, 4000).every(Number.isNaN) && sum.subarray(9000).every(Number.isNaN), 'nothing else written');
    // [2000, 4000) still waits; taken out for a put of its own, split at 3000.
    assert.equal(d.size, 1);
    const first = d.takeWithin(0, 3000);
    assert.deepEqual(first.map((x) => [x.member, x.lo, x.hi, x.g.length, x.g[0]]), [['host', 2000, 3000, 1000, mine[2000]]]);
    const rest = d.takeWithin(0, n);
    assert.deepEqual(rest.map((x) => [x.lo, x.hi, x.g[0]]), [[3000, 4000, mine[3000]]]);
    assert.equal(d.size, 0);
    assert.equal(d.has('host'), false);
  });

  test('a waiting run that is not finite: its member is named and its other runs dropped; a NaN in the chunk itself is told apart', () => {
    const sum = ar.alloc(4000);
    const bad = finiteFloats(4000, 5);
    bad[1500] = Number.NaN;
    const good = ar.copyOf(finiteFloats(4000, 6));
    const d = new DeferredContributions<string>();
    d.add({ member: 'host', lo: 1000, hi: 2000, g: bad.subarray(1000, 2000), n: 1, round: false });
    d.add({ member: 'host', lo: 3000, hi: 4000, g: bad.subarray(3000, 4000), n: 1, round: false });
    d.add({ member: 'other', lo: 0, hi: 500, g: good.subarray(0, 500), n: 1, round: false });
    assert.deepEqual(d.putWith(ar, sum, 1000, 2000, good.subarray(1000, 2000), 1), { finite: true, voided: ['host'] });
    assert.equal(d.has('host'), false, "the voided member's other run is gone too");
    assert.equal(d.has('other'), true);
    const nan = good.slice(0, 500);
    nan[7] = Infinity;
    assert.deepEqual(d.putWith(ar, sum, 0, 500, ar.copyOf(nan), 1), { finite: false, voided: [] });
    d.drop('other');
    assert.equal(d.size, 0);
  });
});

/**
 * A worker's end of the in-process link to a follower shard, speaking frames of the test's choosing: fp32 chunks go
 * as the worker sends them (head and floats as two fragments, the floats not copied). Each send resolves once the
 * aggregator has handled the frame (the link's callback comes after the other end's listeners).
 */
class LocalPeer {
  private readonly end: LocalSocket;
  private readonly replies: Record<string, unknown>[] = [];
  private waiter?: () => void;

  constructor(agg: Aggregator) {
    const [mine, theirs] = LocalSocket.pair();
    this.end = mine;
    mine.binaryType = 'fragments';
    mine.on('message', (parts: Buffer[]) => {
      const m = decodeFragments(parts);
      if (String(m.t).startsWith('weights-')) return;
      this.replies.push(m);
      this.waiter?.();
    });
    agg.acceptLocal(theirs);
  }

  send(...frames: Buffer[]): Promise<void> {
    return new Promise((resolve) => frames.forEach((f, i) => this.end.send(f, i === frames.length - 1 ? () => resolve() : undefined)));
  }

  chunk(offset: number, values: Float32Array | Uint16Array): Promise<void> {
    const [head, body] = chunkFrame('grad-chunk', 0, offset, values);
    return new Promise((resolve) => { this.end.send(head, { fin: false }); this.end.send(body, { fin: true }, () => resolve()); });
  }

  async reply(): Promise<Record<string, unknown>> {
    for (;;) {
      const m = this.replies.shift();
      if (m !== undefined) return m;
      await new Promise<void>((resolve) => { this.waiter = resolve; });
    }
  }
}

describe('a follower shard defers its hosting worker\'s chunks', () => {
  let h: Harness | undefined;
  afterEach(async () => { await h?.close(); h = undefined; });

  /** A follower-shard aggregator (its leader's hooks recorded) with two workers on in-process links, each past its welcome. */
  async function follower(wire: 'fp32' | 'bf16' = 'fp32'): Promise<{ host: LocalPeer; other: LocalPeer; haves: string[]; lost: string[]; secret: Buffer; begin: (worker: string, job: string, ids: number[], over?: Record<string, unknown>) => Buffer }> {
    const secret = randomBytes(32);
    const haves: string[] = [];
    const lost: string[] = [];
    h = await startAggregator({ arena: true, wire, follower: { secret, onHave: (_s, _a, job) => { haves.push(job); }, onLost: (w) => { lost.push(w); } } });
    const peers = [new LocalPeer(h.agg), new LocalPeer(h.agg)] as const;
    for (const [i, p] of peers.entries()) {
      await p.send(hello({ workerId: ['host', 'other'][i] }), frame({ t: 'ready', modelHash: 'hash-1' }));
      assert.equal((await p.reply()).t, 'welcome');
    }
    const n = h.layout.totalSize;
    const begin = (worker: string, job: string, ids: number[], over: Record<string, unknown> = {}) =>
      frame({ t: 'grad-begin', step: 0, jobId: job, sampleIds: ids, stats: stats(ids.length), totalFloats: n, ticket: shardTicket(secret, 0, worker, job), ...over });
    return { host: peers[0], other: peers[1], haves, lost, secret, begin };
  }

  test('its floats wait for the next member\'s, and the leader hears of its gradient only then; the step is the put and the reduce, bit for bit', async () => {
    const { host, other, haves, begin } = await follower();
    const harness = h as Harness;
    const n = harness.layout.totalSize;
    const mine = Float32Array.from({ length: n }, (_, i) => Math.sin(i) / 10);
    const theirs = Float32Array.from({ length: n }, (_, i) => Math.cos(3 * i) / 7);
    await host.send(begin('host', 'job-h', [1, 2, 3]));
    await host.chunk(0, mine);
    await other.send(begin('other', 'job-o', [4]));
    await host.send(frame({ t: 'grad-end', step: 0 }));
    assert.deepEqual(haves, [], 'complete, but its floats wait while another member sends');
    await other.chunk(0, theirs);
    assert.deepEqual(haves, ['job-h'], 'none waits any more');
    await other.send(frame({ t: 'grad-end', step: 0 }));
    assert.deepEqual(haves, ['job-h', 'job-o']);
    await harness.agg.leaderCommit({ step: 0, attempt: 0, jobs: ['job-h', 'job-o'], totalSamples: 4, divisor: 4, learningRate: SGD.learningRate });
    const sum = mine.map((x, i) => f(f(0 + f(3 * x)) + f((theirs[i] as number) * 1)));
    const expected = harness.initial.slice();
    new FlatMomentumSgd(harness.layout, SGD).apply(expected, sum, 1 / 4);
    assert.deepEqual(bitsOf(harness.weights), bitsOf(expected));
  });

  test('a NaN among its waiting floats is refused when they go in with another member\'s (VGG_ERR_NONFINITE), the leader told to drop it; the other member\'s gradient stands', async () => {
    const { host, other, haves, lost, begin } = await follower();
    const harness = h as Harness;
    const n = harness.layout.totalSize;
    const bad = new Float32Array(n).fill(0.5);
    bad[n - 3] = Number.NaN;
    await host.send(begin('host', 'job-h', [1]));
    await host.chunk(0, bad);
    assert.deepEqual(lost, [], 'not looked at yet: it waits');
    await other.send(begin('other', 'job-o', [4]));
    await other.chunk(0, new Float32Array(n).fill(0.25));
    const reply = await host.reply();
    assert.deepEqual([reply.t, reply.code, reply.message], ['error', 'VGG_ERR_NONFINITE', 'grad-chunk: expected finite values, got NaN or Inf (job job-h)']);
    assert.deepEqual(lost, ['host']);
    assert.equal(harness.agg.rejected.get('VGG_ERR_NONFINITE'), 1);
    await host.send(frame({ t: 'grad-end', step: 0 })); // the rest of its gradient is dropped, as after a refused chunk
    await other.send(frame({ t: 'grad-end', step: 0 }));
    assert.deepEqual(haves, ['job-o']);
    assert.deepEqual(harness.weights, harness.initial, 'nothing applied');
  });

  test('with no other member sending, its floats go in when its gradient is complete, and a NaN among them is refused then', async () => {
    const { host, haves, lost, begin } = await follower();
    const n = (h as Harness).layout.totalSize;
    const bad = new Float32Array(n).fill(0.5);
    bad[0] = Infinity;
    await host.send(begin('host', 'job-h', [1]));
    await host.chunk(0, bad);
    await host.send(frame({ t: 'grad-end', step: 0 }));
    const reply = await host.reply();
    assert.deepEqual([reply.t, reply.code], ['error', 'VGG_ERR_NONFINITE']);
    assert.deepEqual([haves, lost], [[], ['host']]);
  });
  test('in a bf16 run it sends its floats as fp32 (values: fp32) and they go in rounded as its encode would have sent them: bit for bit a put of its codes and a reduce of the other\'s', async () => {
    const { host, other, haves, begin } = await follower('bf16');
    const harness = h as Harness;
    const n = harness.layout.totalSize;
    const mine = Float32Array.from({ length: n }, (_, i) => Math.sin(i) / 10);
    const theirs = new Uint16Array(n);
    encodeBf16Scalar(Float32Array.from({ length: n }, (_, i) => Math.cos(3 * i) / 7), theirs);
    await host.send(begin('host', 'job-h', [1, 2, 3], { values: 'fp32' }));
    await host.chunk(0, mine);
    await other.send(begin('other', 'job-o', [4]));
    await host.send(frame({ t: 'grad-end', step: 0 }));
    assert.deepEqual(haves, [], 'its floats wait');
    await other.chunk(0, theirs);
    await other.send(frame({ t: 'grad-end', step: 0 }));
    assert.deepEqual(haves, ['job-h', 'job-o']);
    await harness.agg.leaderCommit({ step: 0, attempt: 0, jobs: ['job-h', 'job-o'], totalSamples: 4, divisor: 4, learningRate: SGD.learningRate });
    const mineCodes = new Uint16Array(n);
    encodeBf16Scalar(mine, mineCodes);
    const [a, b] = [new Float32Array(n), new Float32Array(n)];
    decodeBf16Scalar(mineCodes, a);
    decodeBf16Scalar(theirs, b);
    const expected = harness.initial.slice();
    new FlatMomentumSgd(harness.layout, SGD).apply(expected, reference(a, 3, b, 1), 1 / 4);
    assert.deepEqual(bitsOf(harness.weights), bitsOf(expected));
  });

  test('a second worker in the process sending fp32 values while the first one\'s floats wait elsewhere: its floats go in rounded too (put alone where nobody wrote), bit for bit', async () => {
    const { host, other, haves, begin } = await follower('bf16');
    const harness = h as Harness;
    const n = harness.layout.totalSize;
    const half = 16 * Math.floor(n / 32);
    const mine = Float32Array.from({ length: n }, (_, i) => Math.sin(i) / 10);
    const theirs = Float32Array.from({ length: n }, (_, i) => Math.cos(3 * i) / 7 + 1e-3 * Math.sin(7 * i));
    // The host sends its classifier part [half, n) first (split): it waits. The other, also in process, sends from 0.
    await host.send(begin('host', 'job-h', [1, 2, 3], { values: 'fp32', split: half }));
    await host.chunk(half, mine.subarray(half));
    await other.send(begin('other', 'job-o', [4], { values: 'fp32' }));
    await other.chunk(0, theirs.subarray(0, half));
    await other.chunk(half, theirs.subarray(half));
    await other.send(frame({ t: 'grad-end', step: 0 }));
    await host.chunk(0, mine.subarray(0, half));
    await host.send(frame({ t: 'grad-end', step: 0 }));
    assert.deepEqual([...haves].sort(), ['job-h', 'job-o']);
    await harness.agg.leaderCommit({ step: 0, attempt: 0, jobs: ['job-h', 'job-o'], totalSamples: 4, divisor: 4, learningRate: SGD.learningRate });
    const round = (v: Float32Array) => { const c = new Uint16Array(v.length); encodeBf16Scalar(v, c); const out = new Float32Array(v.length); decodeBf16Scalar(c, out); return out; };
    const expected = harness.initial.slice();
    new FlatMomentumSgd(harness.layout, SGD).apply(expected, reference(round(mine), 3, round(theirs), 1), 1 / 4);
    assert.deepEqual(bitsOf(harness.weights), bitsOf(expected));
  });

  test('values: fp32 is taken only from a worker in the process and only in a bf16 run', async () => {
    const { secret } = await follower('fp32');
    const harness = h as Harness;
    const n = harness.layout.totalSize;
    const peer = new RawPeer(harness.port);
    await peer.handshake();
    peer.send(frame({ t: 'grad-begin', step: 0, jobId: 'job-r', sampleIds: [1], stats: stats(1), totalFloats: n, ticket: shardTicket(secret, 0, 'w', 'job-r'), values: 'fp32' }));
    const reply = await peer.reply();
    assert.deepEqual([reply?.code, reply?.message], ['VGG_ERR_FRAME_FIELD', 'grad-begin.values: expected "fp32" only from a worker in this process in a bf16 run, got "fp32" over a socket in a fp32 run']);
    assert.equal(await peer.closed, 1008);
    await harness.close();
    const b = await follower('bf16');
    const again = new RawPeer((h as Harness).port);
    await again.handshake();
    again.send(frame({ t: 'grad-begin', step: 0, jobId: 'job-r', sampleIds: [1], stats: stats(1), totalFloats: n, ticket: shardTicket(b.secret, 0, 'w', 'job-r'), values: 'fp64' }));
    assert.equal((await again.reply())?.message, 'grad-begin.values: expected "fp32" only from a worker in this process in a bf16 run, got "fp64" over a socket in a bf16 run');
  });
});
