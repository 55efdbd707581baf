import { afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Aggregator } from '../../coordinator/aggregator.ts';
import { decision, startFollower, type FollowerHandle } from '../../coordinator/shard-follower.ts';
import { ShardLeader } from '../../coordinator/shard-leader.ts';
import { FlatMomentumSgd } from '../../shared/flat-sgd.ts';
import { createMetrics } from '../../shared/metrics.ts';
import { buildLayout, modelHash } from '../../shared/param-layout.ts';
import { parseShard, shardRange, sliceLayout } from '../../shared/shard.ts';
import { tryArena } from '../../shared/simd.ts';
import { TINY_VGG_A, resolveModelConfig } from '../../shared/vgg-configs.ts';
import { PROTOCOL_VERSION, type ProtocolError } from '../../shared/wire-protocol.ts';
import { misalignment } from '../../worker/host-memory.ts';
import { ShardGroup } from '../../worker/shard-group.ts';
import { Transport } from '../../worker/transport.ts';
import { RawPeer, SGD, frame, hello, log, stats } from '../helpers/aggregator-harness.ts';
import { maxAbsDifference, wave } from '../helpers/numeric.ts';

describe('shard ranges', () => {
  test('K ranges split the bytes evenly, contiguous from 0 to the end, 64-byte aligned inside', () => {
    const vgg16 = buildLayout(resolveModelConfig({ config: 'D' })).totalSize;
    assert.equal(vgg16, 138_357_544);
    for (const total of [vgg16, buildLayout(TINY_VGG_A).totalSize, 17]) {
      for (let k = 1; k <= 8; k += 1) {
        const ranges = Array.from({ length: k }, (_, i) => shardRange(total, i, k));
        assert.equal(ranges[0]?.lo, 0);
        assert.equal(ranges.at(-1)?.hi, total);
        for (let i = 1; i < k; i += 1) {
          assert.equal(ranges[i]?.lo, ranges[i - 1]?.hi, `contiguous at ${i}/${k}`);
          assert.equal((ranges[i]?.lo as number) % 16 === 0 || ranges[i]?.lo === total, true, `aligned at ${i}/${k}`);
        }
        if (total > 16 * k) for (const r of ranges) assert.ok(Math.abs(r.hi - r.lo - total / k) <= 16, `${total}/${k}: ${r.hi - r.lo} floats`);
      }
    }
    // fc6 (74% of VGG-16) is cut: the split is by bytes, not by layers.
    const fc6 = buildLayout(resolveModelConfig({ config: 'D' })).byName.get('fc6/kernel');
    const cut = shardRange(vgg16, 1, 2).lo;
    assert.ok(fc6 !== undefined && fc6.offset < cut && cut < fc6.offset + fc6.size);
  });

  test('with the shards hosted by the workers, shard 0 owns no floats and shards 1..K-1 split them all evenly', () => {
    const total = 138_357_544;
    for (let k = 2; k <= 8; k += 1) {
      const ranges = Array.from({ length: k }, (_, i) => shardRange(total, i, k, true));
      assert.deepEqual(ranges[0], { lo: 0, hi: 0 });
      assert.equal(ranges[1]?.lo, 0);
      assert.equal(ranges.at(-1)?.hi, total);
      for (let i = 2; i < k; i += 1) assert.equal(ranges[i]?.lo, ranges[i - 1]?.hi, `contiguous at ${i}/${k}`);
      for (const r of ranges.slice(1)) assert.ok(Math.abs(r.hi - r.lo - total / (k - 1)) <= 16, `${k}: ${r.hi - r.lo} floats`);
    }
  });

  test('momentum SGD over the sliced layouts equals it over the whole vector, bit for bit', () => {
    const layout = buildLayout({ ...TINY_VGG_A, batchNorm: true });
    const n = layout.totalSize;
    const rand = (seed: number) => wave(n, seed);
    const w = rand(1);
    const g = rand(2);
    const whole = new FlatMomentumSgd(layout, SGD, rand(3));
    const wWhole = w.slice();
    whole.apply(wWhole, g, 0.25);
    const wParts = w.slice();
    const v = rand(3);
    for (let i = 0; i < 3; i += 1) {
      const r = shardRange(n, i, 3);
      new FlatMomentumSgd(sliceLayout(layout, r), SGD, v.subarray(r.lo, r.hi)).apply(wParts.subarray(r.lo, r.hi), g.subarray(r.lo, r.hi), 0.25);
    }
    assert.deepEqual(wParts, wWhole);
    assert.deepEqual(v, whole.velocity);
  });

  test('--shard takes i/K with 0 <= i < K', () => {
    assert.deepEqual(parseShard('--shard', '1/4'), { index: 1, count: 4 });
    for (const bad of ['4/4', '1', 'a/b', '-1/2', '1/0', '1/65']) assert.throws(() => parseShard('--shard', bad), /--shard: expected i\/K/);
  });
});

interface Pair { agg: Aggregator; leader: ShardLeader; follower: FollowerHandle; port: number; weights: Float32Array; initial: Float32Array }
let pair: Pair | undefined;
const groups: ShardGroup[] = [];
afterEach(async () => {
  for (const g of groups.splice(0)) g.close();
  await pair?.follower.close();
  await pair?.agg.close();
  pair = undefined;
});

/** A leader aggregator (shard 0 of 2) with its follower, both on loopback, the tiny model; `hosted`: no follower (a worker hosts shard 1). */
async function startPair(hosted = false): Promise<Pair> {
  const layout = buildLayout(TINY_VGG_A);
  const hash = modelHash(TINY_VGG_A, layout);
  const weights = Float32Array.from({ length: layout.totalSize }, (_, i) => ((i % 13) - 6) / 100);
  const velocity = new Float32Array(layout.totalSize);
  const leader = new ShardLeader({ count: 2, model: TINY_VGG_A, onShardLost: () => {} });
  const agg = new Aggregator({
    host: '127.0.0.1', port: 0, token: 'secret', modelHash: hash, step: 0, runInfo: { run: 't', wire: 'fp32' }, shardLeader: leader,
    weights, sgd: new FlatMomentumSgd(layout, { ...SGD, weightDecay: 0 }, velocity),
    jobStatus: (id) => (id.startsWith('job') ? 'pending' : 'unknown'), onCommit: async () => {}, onMemberLost: () => {}, log,
  });
  const port = await agg.start();
  const follower = hosted ? { close: async () => {} } as FollowerHandle
    : await startFollower({ leader: `ws://127.0.0.1:${port}`, token: 'secret', shard: { index: 1, count: 2 }, host: '127.0.0.1', port: 0, log });
  if (!hosted) await new Promise<void>((resolve) => { const t = setInterval(() => { if (leader.ready()) { clearInterval(t); resolve(); } }, 5); });
  return { agg, leader, follower, port, weights, initial: weights.slice() };
}

async function member(p: Pair, id: string): Promise<ShardGroup> {
  const g = new ShardGroup({ url: `ws://127.0.0.1:${p.port}`, token: 'secret', workerId: id, host: 'h', gpu: null, backend: 'cpu', log });
  groups.push(g);
  await g.connect();
  await g.ready(p.agg.options.modelHash);
  return g;
}

async function joinGroup(g: ShardGroup, jobId: string): Promise<void> {
  const reply = g.next<{ t: string }>(['reply']);
  g.send({ t: 'join', step: g.weightsStep, jobId, lockToken: 'tok' });
  assert.equal((await reply).value.t, 'joined');
}

describe('leader and follower shards', () => {
  test('two workers, two shards: one step applies the sample-weighted mean on both ranges; workers get the whole new vector', async () => {
    pair = await startPair();
    const a = await member(pair, 'a');
    const b = await member(pair, 'b');
    assert.equal(a.shards, 2);
    await joinGroup(a, 'job-1');
    await joinGroup(b, 'job-2');
    const n = pair.weights.length;
    const next = a.next(['weights'], (_n, s) => (s as number) === 1);
    await Promise.all([a.sendGradient(0, 'job-1', [1, 2, 3], stats(3), new Float32Array(n).fill(1)), b.sendGradient(0, 'job-2', [4], stats(1), new Float32Array(n).fill(4))]);
    await next;
    // mean = (3*1 + 1*4) / 4 = 1.75; first momentum step, no decay: w -= 0.1 * 1.75, in every range.
    const got = a.read(0, n);
    let worst = 0;
    for (let i = 0; i < n; i += 1) worst = Math.max(worst, Math.abs((got[i] as number) - ((pair.initial[i] as number) - 0.175)));
    assert.ok(worst < 1e-6, `largest error ${worst}`);
    // The checkpoint path: the follower's range comes back into the leader's full arrays.
    await pair.leader.gather(1);
    assert.deepEqual(pair.weights, got);
  });

  test('a step without one of the workers is divided by the full step\'s samples on every shard (the leader\'s divisor)', async () => {
    pair = await startPair();
    const a = await member(pair, 'a');
    const b = await member(pair, 'b');
    const n = pair.weights.length;
    await joinGroup(a, 'job-1');
    await joinGroup(b, 'job-2');
    let next = a.next(['weights'], (_n, s) => (s as number) === 1);
    await Promise.all([a.sendGradient(0, 'job-1', [1, 2, 3], stats(3), new Float32Array(n).fill(1)), b.sendGradient(0, 'job-2', [4], stats(1), new Float32Array(n).fill(4))]);
    await next;
    b.send({ t: 'idle', step: 1 });
    await joinGroup(a, 'job-3');
    next = a.next(['weights'], (_n, s) => (s as number) === 2);
    await a.sendGradient(1, 'job-3', [5, 6, 7], stats(3), new Float32Array(n).fill(1));
    await next;
    // Step 1 has 3 of the full step's 4 samples: the sum 3 * 1 over 4, in both ranges (over 3 it would be 1).
    const sgd = new FlatMomentumSgd(buildLayout(TINY_VGG_A), { ...SGD, weightDecay: 0 });
    const expected = pair.initial.slice();
    sgd.apply(expected, new Float32Array(n).fill(7), 1 / 4);
    sgd.apply(expected, new Float32Array(n).fill(3), 1 / 4);
    const worst = maxAbsDifference(a.read(0, n), expected);
    assert.ok(worst < 1e-6, `largest difference from the expected weights ${worst}`);
  });

  test('a leader\'s commit or roster: its divisor, the step\'s samples when it has none (an earlier leader), refused below them', () => {
    const msg = { t: 'commit', step: 3, attempt: 0, jobs: ['job-1'], totalSamples: 8, learningRate: 0.1 };
    assert.equal(decision({ ...msg, divisor: 12 }).divisor, 12);
    assert.equal(decision(msg).divisor, 8);
    assert.throws(() => decision({ ...msg, t: 'roster', divisor: 4 }), (e: ProtocolError) => e.code === 'VGG_ERR_FRAME_FIELD' && e.message === 'roster.divisor: expected an integer >= totalSamples (8), got 4');
    assert.throws(() => decision({ ...msg, divisor: 9.5 }), (e: ProtocolError) => e.code === 'VGG_ERR_FRAME_FIELD' && e.message === 'commit.divisor: expected int, got number 9.5');
  });

  test('a follower refuses a gradient without the leader\'s ticket (VGG_ERR_AUTH) and a join; its sum stays untouched', async () => {
    pair = await startPair();
    const peer = new RawPeer(pair.follower.port);
    await peer.opened();
    peer.send(hello({ workerId: 'mallory' }), frame({ t: 'ready', modelHash: pair.agg.options.modelHash }));
    assert.equal((await peer.reply())?.t, 'welcome');
    peer.send(frame({ t: 'grad-begin', step: 0, jobId: 'job-9', sampleIds: [1], stats: stats(1), totalFloats: 16, attempt: 0, ticket: 'forged' }));
    const r = await peer.reply();
    assert.equal(r?.code, 'VGG_ERR_AUTH');
    assert.match(String(r?.message), /expected the leader's ticket for job job-9 at step 0/);
    assert.equal(await peer.closed, 1008);
    const joiner = new RawPeer(pair.follower.port);
    await joiner.opened();
    joiner.send(hello({ workerId: 'j' }), frame({ t: 'ready', modelHash: pair.agg.options.modelHash }), frame({ t: 'join', step: 0, jobId: 'job-1', lockToken: 'x' }));
    assert.equal((await joiner.reply())?.t, 'welcome');
    assert.match(String((await joiner.reply())?.message), /join: expected at shard 0/);
    // An honest step afterwards is exact: nothing of the refused frames is in the follower's sum.
    const a = await member(pair, 'a');
    await joinGroup(a, 'job-1');
    const n = pair.weights.length;
    const next = a.next(['weights'], (_n, s) => (s as number) === 1);
    await a.sendGradient(0, 'job-1', [1], stats(1), new Float32Array(n).fill(2));
    await next;
    const got = a.read(0, n);
    for (const i of [0, n - 1]) assert.ok(Math.abs((got[i] as number) - ((pair.initial[i] as number) - 0.2)) < 1e-6);
  });

  test('the leader refuses a shard-hello with a wrong K, index or token, and a follower after the run started', async () => {
    pair = await startPair();
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ shards: 3 }, /shard-hello.shards: expected 2 \(the coordinator's --shards\), got 3/],
      [{ shard: 0 }, /shard-hello.shard: expected 1..1 \(shard 0 is the coordinator\), got 0/],
      [{ token: 'wrong' }, /shard-hello.token: expected the run token/],
      [{}, /expected before the run starts, got shard 1\/2/],
    ];
    for (const [over, message] of cases) {
      const p: RawPeer = new RawPeer(pair.port);
      await p.opened();
      p.send(frame({ t: 'shard-hello', protocol: PROTOCOL_VERSION, token: 'secret', shard: 1, shards: 2, ...over }));
      const r = await p.reply();
      assert.match(String(r?.message), message);
      assert.equal(await p.closed, 1008);
    }
    assert.equal(pair.leader.links.size, 1, 'the running follower kept its place');
  });

  test('a follower asking for any shard (worker start --host-shard auto) gets the lowest free one; none free is VGG_ERR_SHARD_UNAVAILABLE', async () => {
    const layout = buildLayout(TINY_VGG_A);
    const leader = new ShardLeader({ count: 3, model: TINY_VGG_A, onShardLost: () => {}, leaderOwnsNone: true });
    const agg = new Aggregator({
      host: '127.0.0.1', port: 0, token: 'secret', modelHash: modelHash(TINY_VGG_A, layout), step: 0, runInfo: { run: 't', wire: 'fp32' }, shardLeader: leader,
      weights: new Float32Array(layout.totalSize), sgd: new FlatMomentumSgd(layout, SGD, new Float32Array(layout.totalSize)),
      jobStatus: () => 'pending', onCommit: async () => {}, onMemberLost: () => {}, log,
    });
    const port = await agg.start();
    const started: FollowerHandle[] = [];
    try {
      const follow = (shard: { index: number; count: number } | 'any') => startFollower({ leader: `ws://127.0.0.1:${port}`, token: 'secret', shard, host: '127.0.0.1', port: 0, log });
      started.push(await follow({ index: 2, count: 3 }), await follow('any'));
      assert.deepEqual(started.map((h) => h.shard), [{ index: 2, count: 3 }, { index: 1, count: 3 }]);
      assert.deepEqual(leader.shardStates().map((x) => [x.index, x.hi - x.lo > 0]), [[0, false], [1, true], [2, true]]);
      await assert.rejects(follow('any'), (err: ProtocolError) => err.code === 'VGG_ERR_SHARD_UNAVAILABLE' && /expected a free shard, got none: all 2 are taken/.test(err.message));
      assert.equal(leader.links.size, 2);
    } finally {
      for (const h of started) await h.close();
      await agg.close();
    }
  });

  test('with several shards each version arrives in one aligned buffer of the whole vector, reused once given back', async () => {
    pair = await startPair();
    const a = await member(pair, 'a');
    const n = pair.weights.length;
    const oneBuffer = (parts: ReturnType<ShardGroup['takeWeights']>) => {
      const [first, second] = parts;
      assert.ok(first?.weights !== undefined && second?.weights !== undefined);
      assert.equal(second.weights.buffer, first.weights.buffer, 'both shards\' ranges in one buffer');
      assert.equal(second.weights.byteOffset, first.weights.byteOffset + 4 * second.lo, 'consecutive');
      assert.equal(misalignment(first.weights), 0);
      return first.weights.buffer;
    };
    const step = async (s: number) => {
      await joinGroup(a, `job-${s}`);
      const next = a.next(['weights'], (_n, v) => (v as number) === s + 1);
      await a.sendGradient(s, `job-${s}`, [s], stats(1), new Float32Array(n).fill(0.5));
      await next;
    };
    const v0 = a.takeWeights();
    const b0 = oneBuffer(v0);
    assert.deepEqual(new Float32Array(b0, v0[0]?.weights?.byteOffset, n), pair.weights);
    await step(0);
    const v1 = a.takeWeights();
    assert.notEqual(oneBuffer(v1), b0, 'version 0 is still held: version 1 in another buffer');
    a.recycle(v0.map((p) => p.weights));
    await step(1);
    assert.equal(oneBuffer(a.takeWeights()), b0, 'version 0\'s buffer, given back, is received into again');
    // Versions nobody takes are free again once a newer one is complete: two buffers in all, not one per step.
    const held = a as unknown as { versions: Map<number, Float32Array>; free: Float32Array[] };
    for (let s = 2; s < 7; s += 1) await step(s);
    assert.deepEqual([...held.versions.keys()], [7]);
    assert.equal(held.versions.size + held.free.length, 2);
    // A step broadcast again (as after a coordinator's --resume) to a client that holds it complete, or one
    // handed over already, goes into a buffer of the client's own: the shared one may be read, or be gone
    // to the main thread (a sharded resume run crashed the transport thread on a detached buffer).
    const inner = a as unknown as { place: (part: unknown, step: number, floats: number) => Float32Array | undefined; parts: { client: { weightsStep: number }; lo: number; hi: number }[]; emittedStep: number };
    const part = inner.parts[1];
    assert.ok(part !== undefined);
    assert.equal(part.client.weightsStep, 7);
    assert.equal(inner.place(part, 7, part.hi - part.lo), undefined, 'the step this client holds complete');
    assert.equal(inner.place(part, 6, part.hi - part.lo), undefined, 'a step handed over');
    assert.equal(inner.place(part, 8, part.hi - part.lo)?.length, part.hi - part.lo, 'the next step, placed');
  });

  const hostings = [
    { oneMemory: true, shardThread: false, what: 'keeps its gradient and weights versions in one memory with the shard (no staging between them, the default)' },
    { oneMemory: false, shardThread: false, what: 'with oneMemory false keeps the shard in a memory of its own' },
    { oneMemory: true, shardThread: true, what: 'with shardThread runs the shard on a thread of its own, in the same memory' },
  ];
  for (const { oneMemory, shardThread, what } of hostings) test(`a worker hosting a shard ${what}; a step through it applies the mean`, async (t) => {
    pair = await startPair(true);
    const metrics = createMetrics({ role: 'test' });
    const tr = new Transport({ client: { url: `ws://127.0.0.1:${pair.port}`, token: 'secret', workerId: 'th', host: 'h', gpu: null, backend: 'cpu' }, log, metrics, hostShard: { shard: { index: 1, count: 2 }, host: '127.0.0.1', port: 0 }, ...(oneMemory ? {} : { oneMemory }), ...(shardThread ? { shardThread } : {}) });
    t.after(() => tr.close());
    await tr.connect();
    await tr.ready(pair.agg.options.modelHash);
    const n = pair.weights.length;
    const g = tr.allocateGradient(n);
    const sameMemory = (v: Float32Array) => v.buffer instanceof SharedArrayBuffer && v.buffer.byteLength === g.buffer.byteLength;
    // The memories are wasm arenas: without them (VGG_NO_SIMD=1) each array has a buffer of its own, and the step is the same.
    const arenas = tryArena(16) !== undefined;
    const hostingMemory = oneMemory && arenas;
    // (The hosting memory has address space for the shard, the gradient and the versions; the gradient's own is its size and room for versions.)
    assert.equal(g.buffer.byteLength > 2 ** 31, hostingMemory, `the gradient's memory: ${g.buffer.byteLength} bytes`);
    if (hostingMemory) assert.ok(sameMemory(tr.view(0, n)), 'the initial weights received into that memory (it exists before the first version)');
    for (let s = 0; s < 3; s += 1) {
      const reply = tr.next<{ t: string }>(['reply']);
      tr.send({ t: 'join', step: s, jobId: `job-${s}`, lockToken: 'tok' });
      assert.equal((await reply).value.t, 'joined');
      const before = tr.read(0, n);
      g.fill(2);
      const next = tr.next(['weights'], (_n, v) => (v as number) === s + 1);
      await tr.sendGradient(s, `job-${s}`, [s], stats(1));
      await next;
      const v = tr.view(0, n);
      assert.equal(sameMemory(v), arenas, `version ${s + 1} in the gradient's memory (with arenas)`);
      assert.equal(misalignment(v), 0);
      tr.modelWritten();
      // The first step of momentum SGD without decay moves every weight by lr * g = 0.2 (both ranges; later
      // steps add the momentum), the same on the leader's range and the hosted one.
      if (s === 0) {
        let worst = 0;
        for (let i = 0; i < n; i += 1) worst = Math.max(worst, Math.abs((v[i] as number) - ((before[i] as number) - 0.2)));
        assert.ok(worst < 1e-6, `largest error ${worst}`);
      }
    }
    // Socket bytes (the in-process link's are not counted): the shard's range too only when the shard is on its own thread.
    const sent = (await metrics.sentBytes.get()).values[0]?.value ?? 0;
    assert.equal(sent >= 3 * 4 * n, shardThread, `${sent} bytes sent over sockets in 3 steps of ${n} floats`);
    if (!hostingMemory) return;
    // The memory's allocation pointer (FloatArena share.bump: its first word) is past the hosted shard's weights and
    // momentum, the gradient and two versions: the shard's state came from it too.
    const range = shardRange(n, 1, 2);
    const used = Atomics.load(new Uint32Array(g.buffer, 0, 1), 0);
    assert.ok(used >= 4 * (2 * (range.hi - range.lo) + 3 * n), `allocated ${used} bytes, expected the shard's state, the gradient and two versions`);
  });

  test('a worker\'s model views a tensor that spans both shards\' ranges without a copy', async (t) => {
    pair = await startPair();
    const tr = new Transport({ client: { url: `ws://127.0.0.1:${pair.port}`, token: 'secret', workerId: 'tv', host: 'h', gpu: null, backend: 'cpu' }, log });
    t.after(() => tr.close());
    await tr.connect();
    await tr.ready(pair.agg.options.modelHash);
    const layout = buildLayout(TINY_VGG_A);
    const cut = shardRange(layout.totalSize, 1, 2).lo;
    const across = layout.entries.find((e) => e.offset < cut && e.offset + e.size > cut);
    assert.ok(across !== undefined, 'a tensor across the two ranges');
    const whole = tr.view(0, layout.totalSize);
    const v = tr.view(across.offset, across.offset + across.size);
    assert.equal(v.buffer, whole.buffer, `${across.name}: a view, not a copy`);
    assert.equal(v.byteOffset, whole.byteOffset + 4 * across.offset);
    assert.deepEqual(v, pair.weights.subarray(across.offset, across.offset + across.size));
  });
});
