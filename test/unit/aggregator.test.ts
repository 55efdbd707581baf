import { afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { PARTIAL_STEPS } from '../../coordinator/aggregator.ts';
import { maxAbsDifference } from '../helpers/numeric.ts';
import { PROTOCOL_VERSION, encode } from '../../shared/wire-protocol.ts';
import { FlatMomentumSgd } from '../../shared/flat-sgd.ts';
import { decode16, encode16 } from '../../shared/half.ts';
import type { AggregatorClient } from '../../worker/aggregator-client.ts';
import { FrameSlot } from '../../shared/frame-slot.ts';
import { buildLayout } from '../../shared/param-layout.ts';
import { TINY_VGG_A } from '../../shared/vgg-configs.ts';
import { RawPeer, SGD, frame, hello, join, startAggregator, stats, type Harness } from '../helpers/aggregator-harness.ts';

let h: Harness | undefined;
afterEach(async () => { await h?.close(); h = undefined; });

describe('synchronous steps', () => {
  test('two members: the update uses the sample-weighted mean gradient; a stale join is told so', async () => {
    h = await startAggregator();
    const { layout, commits, initial } = h;
    h.agg.options.sgd.options.weightDecay = 0;
    const a = await h.member('a');
    const b = await h.member('b');
    assert.equal(await join(a, 'job-1'), 'joined');
    assert.equal(await join(b, 'job-2'), 'joined');
    const ga = new Float32Array(layout.totalSize).fill(1);
    const gb = new Float32Array(layout.totalSize).fill(4);
    const next = a.next(['weights'], (_n, s) => (s as number) === 1);
    await a.sendGradient(0, 'job-1', [1, 2, 3], stats(3), ga);
    await b.sendGradient(0, 'job-2', [4], stats(1), gb);
    await next;
    // mean = (3*1 + 1*4) / 4 = 1.75; first momentum step: w -= 0.1 * 1.75 (no decay here)
    const i = layout.byName.get('fc8/bias')?.offset ?? 0;
    assert.ok(Math.abs((a.weights?.[i] as number) - ((initial[i] as number) - 0.175)) < 1e-6);
    assert.deepEqual(commits[0]?.map((c) => c.jobId).sort(), ['job-1', 'job-2']);
    const reply = a.next<{ t: string; step: number }>(['reply']);
    a.send({ t: 'join', step: 0, jobId: 'job-3', lockToken: 'tok' });
    assert.deepEqual((await reply).value, { t: 'stale', step: 1 });
  });

  for (const mode of PARTIAL_STEPS) {
    test(`--partial-steps ${mode}: a step with fewer samples than the run's full step moves ${mode === 'scale' ? 'in proportion to its samples' : 'as far as a full step'}`, async () => {
      h = await startAggregator({ partialSteps: mode });
      const { layout } = h;
      const a = await h.member('a');
      const b = await h.member('b');
      const n = layout.totalSize;
      const ga = Float32Array.from({ length: n }, (_, i) => Math.sin(i) / 10);
      const gb = Float32Array.from({ length: n }, (_, i) => Math.cos(i) / 10);
      await join(a, 'job-1');
      await join(b, 'job-2');
      let next = a.next(['weights'], (_n, s) => (s as number) === 1);
      await a.sendGradient(0, 'job-1', [1, 2], stats(2), ga);
      await b.sendGradient(0, 'job-2', [3, 4], stats(2), gb);
      await next;
      // Step 1 without b (it has no job, as a worker still loading one says): 2 of the full step's 4 samples.
      b.send({ t: 'idle', step: 1 });
      await join(a, 'job-3');
      next = a.next(['weights'], (_n, s) => (s as number) === 2);
      await a.sendGradient(1, 'job-3', [5, 6], stats(2), ga);
      await next;
      assert.equal(h.agg.fullStepSamples, 4);
      const sgd = new FlatMomentumSgd(layout, SGD);
      const expected = h.initial.slice();
      sgd.apply(expected, ga.map((v, i) => 2 * v + 2 * (gb[i] as number)), 1 / 4);
      sgd.apply(expected, ga.map((v) => 2 * v), mode === 'scale' ? 1 / 4 : 1 / 2);
      const worst = maxAbsDifference(h.weights, expected);
      assert.ok(worst < 1e-6, `largest difference from the expected weights ${worst}`);
    });
  }

  test('a member lost mid-step aborts the step; the survivor resends and the step commits without the lost gradient', async () => {
    h = await startAggregator();
    const { layout, commits, weights, initial } = h;
    h.agg.options.sgd.options.weightDecay = 0;
    const a = await h.member('a');
    const b = await h.member('b');
    await join(a, 'job-1');
    await join(b, 'job-2');
    const resend = a.next(['resend']);
    await a.sendGradient(0, 'job-1', [1], stats(1), new Float32Array(layout.totalSize).fill(2));
    await b.sendGradient(0, 'job-2', [2], stats(1), new Float32Array(layout.totalSize).fill(100)).catch(() => {});
    b.terminate();
    // b completed its gradient, so the step may commit before b's loss is seen: accept either order, but never b's gradient after its loss.
    const outcome = await Promise.race([resend.then(() => 'resend'), a.next(['weights'], (_n, s) => (s as number) === 1).then(() => 'committed')]);
    if (outcome === 'resend') {
      const next = a.next(['weights'], (_n, s) => (s as number) === 1);
      await a.sendGradient(0, 'job-1', [1], stats(1), new Float32Array(layout.totalSize).fill(2));
      await next;
      const i = layout.byName.get('fc8/bias')?.offset ?? 0;
      assert.ok(Math.abs((weights[i] as number) - ((initial[i] as number) - 0.2)) < 1e-6);
      assert.deepEqual(commits.at(-1)?.map((c) => c.jobId), ['job-1']);
    } else {
      assert.deepEqual(commits.at(-1)?.map((c) => c.jobId).sort(), ['job-1', 'job-2']);
    }
  });

  test('after an abort, a member that joined before it but had not sent, and one that joins after it, send as the new attempt and the step commits', { timeout: 30000 }, async () => {
    // The churn test's rare hang: both kept attempt 0, the aggregator dropped their gradients as an old attempt's, and the step waited forever.
    h = await startAggregator();
    const { layout, commits } = h;
    const a = await h.group('a');
    const b = await h.group('b');
    assert.equal(await join(a, 'job-1'), 'joined');
    assert.equal(await join(b, 'job-2'), 'joined');
    await a.sendGradient(0, 'job-1', [1], stats(1), new Float32Array(layout.totalSize).fill(1));
    const lost = new Promise<void>((resolve) => { const t = setInterval(() => { if (h?.lost.length === 1) { clearInterval(t); resolve(); } }, 5); });
    a.terminate();
    await lost;
    assert.equal(h.agg.attempt, 1, 'a had contributed: its loss aborted the attempt');
    const c = await h.group('c');
    assert.equal(await join(c, 'job-3'), 'joined');
    const next = b.next(['weights'], (_n, s) => (s as number) === 1);
    await b.sendGradient(0, 'job-2', [2], stats(1), new Float32Array(layout.totalSize).fill(2));
    await c.sendGradient(0, 'job-3', [3], stats(1), new Float32Array(layout.totalSize).fill(3));
    await next;
    assert.deepEqual(commits.at(-1)?.map((x) => x.jobId).sort(), ['job-2', 'job-3']);
  });

  test('gradient chunks gathered by ws straight into the arena give the update of chunks gathered the usual way, bit for bit', async () => {
    // FC 1024: 1,270,970 floats, a full 4 MiB chunk and a 1 MiB one per gradient.
    const layout = buildLayout({ ...TINY_VGG_A, fcUnits: 1024 });
    const run = async (arena: boolean): Promise<{ weights: Float32Array; counts?: { slot: number; fallback: number } }> => {
      const hh = await startAggregator({ layout, arena });
      try {
        const a = await hh.group('a');
        const b = await hh.group('b');
        for (let step = 0; step < 2; step += 1) {
          assert.equal(await join(a, `job-a${step}`), 'joined');
          assert.equal(await join(b, `job-b${step}`), 'joined');
          const next = a.next(['weights'], (_n, s) => (s as number) === step + 1);
          await a.sendGradient(step, `job-a${step}`, [1, 2], stats(2), Float32Array.from({ length: layout.totalSize }, (_, i) => Math.sin(i + step) / 10));
          await b.sendGradient(step, `job-b${step}`, [3], stats(1), Float32Array.from({ length: layout.totalSize }, (_, i) => Math.cos(i * step) / 10));
          await next;
        }
        return { weights: hh.weights.slice(), counts: hh.agg.frameSlot === undefined ? undefined : { ...hh.agg.frameSlot.counts } };
      } finally {
        await hh.close();
      }
    };
    const slot = await run(true);
    // The same run with ws gathering every frame itself, as before the slot.
    const attach = FrameSlot.prototype.attach;
    FrameSlot.prototype.attach = () => false;
    const usual = await run(true).finally(() => { FrameSlot.prototype.attach = attach; });
    assert.deepEqual(usual.counts, { slot: 0, fallback: 0 });
    assert.deepEqual(slot.counts, { slot: 8, fallback: 0 }, '2 steps x 2 members x 2 chunks, all gathered into the arena');
    assert.equal(Buffer.compare(Buffer.from(usual.weights.buffer), Buffer.from(slot.weights.buffer)), 0);
  });

  test('a worker gathers fp32 weights chunks straight into the weights it assembles, the codes of 16-bit ones into one reused room (decoded into place)', async () => {
    const layout = buildLayout({ ...TINY_VGG_A, fcUnits: 1024 }); // a full 4 MiB chunk and a 1 MiB one
    for (const wire of ['fp32', 'bf16'] as const) {
      const hh = await startAggregator({ layout, arena: true, wire });
      try {
        const a = await hh.member('a');
        const want = wire === 'fp32' ? hh.weights : new Float32Array(hh.weights.length);
        if (wire === 'bf16') {
          const codes = new Uint16Array(hh.weights.length);
          encode16('bf16', hh.weights, codes);
          decode16('bf16', codes, want);
        }
        assert.equal(Buffer.compare(Buffer.from((a.weights as Float32Array).buffer, (a.weights as Float32Array).byteOffset, want.byteLength), Buffer.from(want.buffer, want.byteOffset, want.byteLength)), 0, wire);
        assert.equal(a.gatheredInPlace, wire === 'fp32' ? 2 : 0, wire);
        assert.equal(a.gatheredCodes, wire === 'fp32' ? 0 : 2, wire);
      } finally {
        await hh.close();
      }
    }
  });

  test('a gradient split at the classifier: its head arrives while the body is still pending, and the update equals the unsplit one bit for bit (also with the other member\'s whole gradient arriving in between: the sum\'s ranges then are first written by different members)', async () => {
    const run = async (split: boolean, otherBetween = false): Promise<Float32Array> => {
      const hh = await startAggregator();
      try {
        const { layout } = hh;
        const a = await hh.group('a');
        const b = await hh.group('b');
        assert.equal(await join(a, 'job-1'), 'joined');
        assert.equal(await join(b, 'job-2'), 'joined');
        const ga = Float32Array.from({ length: layout.totalSize }, (_, i) => Math.sin(i) / 10);
        const gb = Float32Array.from({ length: layout.totalSize }, (_, i) => Math.cos(i) / 10);
        const at = layout.byName.get('fc6/kernel')?.offset ?? 0;
        let release!: () => void;
        const body = new Promise<void>((r) => { release = r; });
        const next = a.next(['weights'], (_n, s) => (s as number) === 1);
        const sending = a.sendGradient(0, 'job-1', [1, 2], stats(2), ga, split ? { at, body } : undefined);
        if (split) {
          // The head [at, end) is in before the body is released: the aggregator waits at offset 0 of the second part.
          const member = () => [...hh.agg.members.values()].find((m) => m.workerId === 'a');
          for (let k = 0; !(member()?.receiving?.wrapped === true && member()?.receiving?.next === 0); k += 1) {
            if (k > 2000) throw new Error(`head part not received: ${JSON.stringify(member()?.receiving)}`);
            await new Promise((r) => setTimeout(r, 5));
          }
        }
        if (otherBetween) await b.sendGradient(0, 'job-2', [3], stats(1), gb);
        release();
        await sending;
        if (!otherBetween) await b.sendGradient(0, 'job-2', [3], stats(1), gb);
        await next;
        return hh.weights.slice();
      } finally {
        await hh.close();
      }
    };
    const plain = await run(false);
    const split = await run(true);
    assert.equal(Buffer.compare(Buffer.from(plain.buffer), Buffer.from(split.buffer)), 0);
    const between = await run(true, true);
    assert.equal(Buffer.compare(Buffer.from(plain.buffer), Buffer.from(between.buffer)), 0);
  });

  test('a silent member (no close, no pong) is removed after the heartbeat timeout and the step commits without it', async () => {
    h = await startAggregator({ heartbeatTimeoutMs: 300 });
    const a = await h.member('a');
    const silent = new RawPeer(h.port, { autoPong: false });
    await silent.handshake();
    silent.send(frame({ t: 'join', step: 0, jobId: 'job-silent', lockToken: 'tok' }));
    assert.equal((await silent.reply())?.t, 'joined');
    await join(a, 'job-1');
    const next = a.next(['weights'], (_n, s) => (s as number) === 1);
    await a.sendGradient(0, 'job-1', [1], stats(1), new Float32Array(h.layout.totalSize).fill(1));
    await next;
    assert.deepEqual(h.commits.at(-1)?.map((c) => c.jobId), ['job-1']);
    assert.equal(h.agg.rejected.get('VGG_ERR_HEARTBEAT'), 1);
    assert.deepEqual(h.lost.map((m) => m.jobId), ['job-silent']);
    silent.ws.terminate();
  });
});

describe('early commit: a range\'s update goes out once every member of the step has sent it', () => {
  // FC 2048: 4,494,522 floats; the classifier [144,560, end) is 4.15 chunks, the conv body one partial chunk.
  const layout = buildLayout({ ...TINY_VGG_A, fcUnits: 2048 });
  const at = layout.byName.get('fc6/kernel')?.offset ?? 0;
  const ga = Float32Array.from({ length: layout.totalSize }, (_, i) => Math.sin(i) / 10);
  const gb = Float32Array.from({ length: layout.totalSize }, (_, i) => Math.cos(i) / 10);
  const same = (x: Float32Array, y: Float32Array) => Buffer.compare(Buffer.from(x.buffer, x.byteOffset, x.byteLength), Buffer.from(y.buffer, y.byteOffset, y.byteLength)) === 0;
  const until = async (what: string, ok: () => boolean) => {
    for (let k = 0; !ok(); k += 1) {
      if (k > 4000) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  /** Runs `scenario` on a fresh aggregator (early commit on or off); its weights, momentum and what it returns. */
  const withAggregator = async <T>(o: { early: boolean; arena: boolean; wire: 'fp32' | 'bf16' }, scenario: (hh: Harness) => Promise<T>) => {
    const hh = await startAggregator({ layout, arena: o.arena, wire: o.wire, earlyCommit: o.early });
    try {
      const out = await scenario(hh);
      return { out, weights: hh.weights.slice(), velocity: hh.agg.options.sgd.velocity.slice(), early: hh.agg.lastEarlyFloats };
    } finally {
      await hh.close();
    }
  };

  for (const o of [{ arena: true, wire: 'fp32' }, { arena: false, wire: 'fp32' }, { arena: true, wire: 'bf16' }] as const) {
    test(`${o.wire}${o.arena ? '' : ', JS loops'}: the classifier's update goes out while a member's conv body is pending, the master weights stay untouched until the commit, and the state after it is the update without early commit, bit for bit`, async () => {
      const step = (early: boolean) => withAggregator({ ...o, early }, async (hh) => {
        const a = await hh.group('a');
        const b = await hh.group('b');
        assert.equal(await join(a, 'job-1'), 'joined');
        assert.equal(await join(b, 'job-2'), 'joined');
        const next = [a, b].map((c) => c.next(['weights'], (_n, s) => (s as number) === 1));
        await a.sendGradient(0, 'job-1', [1, 2], stats(2), ga, { at, body: Promise.resolve() });
        let release!: () => void;
        const sending = b.sendGradient(0, 'job-2', [3], stats(1), gb, { at, body: new Promise<void>((r) => { release = r; }) });
        let staged = 0;
        if (early) {
          await until('the classifier staged', () => hh.agg.earlyFloats >= layout.totalSize - at);
          staged = hh.agg.earlyFloats;
          assert.ok(same(hh.weights, hh.initial), 'the master weights are not touched before the commit');
        }
        release();
        await sending;
        await Promise.all(next);
        return { staged, a: a.read(0, layout.totalSize), b: b.read(0, layout.totalSize) };
      });
      const plain = await step(false);
      const early = await step(true);
      assert.equal(plain.early, 0);
      assert.equal(early.out.staged, layout.totalSize - at, 'every whole classifier chunk, and none of the body, before the body was sent');
      assert.ok(early.early >= layout.totalSize - at);
      assert.ok(same(plain.weights, early.weights), 'master weights');
      assert.ok(same(plain.velocity, early.velocity), 'momentum');
      for (const w of [early.out.a, early.out.b]) assert.ok(same(w, plain.out.a), 'what the workers assembled');
    });
  }

  test('a member lost after part of the update went out: the step is aborted, the survivor resends, and weights, momentum and what the survivor assembled are exactly its update alone', async () => {
    const o = { arena: true, wire: 'fp32' } as const;
    const alone = await withAggregator({ ...o, early: true }, async (hh) => {
      const a = await hh.group('a');
      assert.equal(await join(a, 'job-1'), 'joined');
      const next = a.next(['weights'], (_n, s) => (s as number) === 1);
      await a.sendGradient(0, 'job-1', [1, 2], stats(2), ga, { at, body: Promise.resolve() });
      await next;
      return a.read(0, layout.totalSize);
    });
    const aborted = await withAggregator({ ...o, early: true }, async (hh) => {
      const a = await hh.group('a');
      const b = await hh.group('b');
      assert.equal(await join(a, 'job-1'), 'joined');
      assert.equal(await join(b, 'job-2'), 'joined');
      const resend = a.next(['resend']);
      await a.sendGradient(0, 'job-1', [1, 2], stats(2), ga, { at, body: Promise.resolve() });
      b.sendGradient(0, 'job-2', [3], stats(1), gb, { at, body: new Promise<void>(() => {}) }).catch(() => {});
      await until('part of the update sent', () => hh.agg.earlyFloats >= layout.totalSize - at);
      b.terminate();
      await resend;
      assert.equal(hh.agg.attempt, 1);
      assert.ok(same(hh.weights, hh.initial), 'an aborted early update leaves the master weights as they were');
      const next = a.next(['weights'], (_n, s) => (s as number) === 1);
      await a.sendGradient(0, 'job-1', [1, 2], stats(2), ga, { at, body: Promise.resolve() });
      await next;
      assert.deepEqual(hh.commits.at(-1)?.map((c) => c.jobId), ['job-1']);
      return a.read(0, layout.totalSize);
    });
    assert.ok(same(alone.weights, aborted.weights), 'master weights');
    assert.ok(same(alone.velocity, aborted.velocity), 'momentum');
    assert.ok(same(alone.out, aborted.out), 'what the survivor assembled');
    assert.ok(same(aborted.out, aborted.weights), 'the survivor has the master weights');
  });

  test('a commit that finishes its staged ranges after its weights went out (deferred, a slice per turn) leaves, over three steps, exactly the state without early commit; the next gradient waits for the finish', async () => {
    const o = { arena: true, wire: 'fp32' } as const;
    const run = (early: boolean) => {
      // Small slices: the finish is still running when the next step's gradients come.
      return startAggregator({ layout, ...o, deferFinishAbove: 0, finishSliceFloats: 4096, earlyCommit: early }).then(async (hh) => {
        try {
          const a = await hh.group('a');
          const b = await hh.group('b');
          for (let s = 0; s < 3; s += 1) {
            assert.equal(await join(a, `job-a${s}`), 'joined');
            assert.equal(await join(b, `job-b${s}`), 'joined');
            const next = [a, b].map((c) => c.next(['weights'], (_n, v) => (v as number) === s + 1));
            // b's whole gradient right after a's: the step's first chunk arrives while the last commit may still be finishing.
            await Promise.all([a.sendGradient(s, `job-a${s}`, [1, 2], stats(2), ga, { at, body: Promise.resolve() }), b.sendGradient(s, `job-b${s}`, [3], stats(1), gb, { at, body: Promise.resolve() })]);
            await Promise.all(next);
          }
          const seen = { early: hh.agg.lastEarlyFloats, client: a.read(0, layout.totalSize) };
          hh.agg.settle();
          return { ...seen, weights: hh.weights.slice(), velocity: hh.agg.options.sgd.velocity.slice() };
        } finally {
          await hh.close();
        }
      });
    };
    const plain = await run(false);
    const early = await run(true);
    assert.equal(plain.early, 0);
    assert.ok(early.early > 0, 'part of the last step went out early');
    assert.ok(same(plain.weights, early.weights), 'master weights');
    assert.ok(same(plain.velocity, early.velocity), 'momentum');
    assert.ok(same(plain.client, early.client), 'what the workers assembled');
  });

  test('a join after the step is sealed (every ready member has begun its gradient) waits for the next step', async () => {
    h = await startAggregator({ layout, earlyCommit: true });
    const a = await h.group('a');
    const b = await h.group('b');
    assert.equal(await join(a, 'job-1'), 'joined');
    b.send({ t: 'idle', step: 0 });
    let release!: () => void;
    const sending = a.sendGradient(0, 'job-1', [1], stats(1), ga, { at, body: new Promise<void>((r) => { release = r; }) });
    await until('the classifier staged', () => (h as Harness).agg.earlyFloats > 0);
    assert.equal(await join(b, 'job-2'), 'stale');
    release();
    await sending;
    await b.waitForWeights(1);
    assert.deepEqual(h.commits.at(-1)?.map((c) => c.jobId), ['job-1']);
    assert.equal(await join(b, 'job-2'), 'joined');
  });
});

describe('16-bit wires', () => {
  for (const wire of ['bf16', 'fp16'] as const) {
    test(`${wire}: workers get the master weights rounded; the fp32 master takes exactly the SGD step of the decoded gradient`, async () => {
      h = await startAggregator({ wire });
      const c = await h.member('a');
      assert.equal(c.wire, wire);
      const round = (x: Float32Array) => { const q = new Uint16Array(x.length); encode16(wire, x, q); const y = new Float32Array(x.length); decode16(wire, q, y); return y; };
      assert.deepEqual(c.weights, round(h.initial));
      assert.equal(await join(c, 'job-1'), 'joined');
      const grad = Float32Array.from({ length: h.layout.totalSize }, (_, i) => Math.sin(i) / 10);
      const next = c.next(['weights'], (_n, s) => (s as number) === 1);
      await c.sendGradient(0, 'job-1', [1, 2], stats(2), grad);
      await next;
      const expected = h.initial.slice();
      new FlatMomentumSgd(h.layout, SGD).apply(expected, round(grad).map((v) => 2 * v), 1 / 2);
      assert.deepEqual(h.weights, expected);
      assert.notDeepEqual(h.weights, round(expected));
      assert.deepEqual(c.weights, round(expected));
    });
  }

  test('bf16: a broadcast of more chunks than stage rooms (each chunk encoded into a room, sent, the room reused) gives every member every chunk, also two members and a third that becomes ready meanwhile, over two steps', async () => {
    // FC 4096: 20.9M floats, 20 chunks against 8 rooms.
    const layout = buildLayout({ ...TINY_VGG_A, fcUnits: 4096 });
    h = await startAggregator({ layout, wire: 'bf16', arena: true });
    const round = (x: Float32Array) => { const q = new Uint16Array(x.length); encode16('bf16', x, q); const y = new Float32Array(x.length); decode16('bf16', q, y); return y; };
    const a = await h.group('a');
    const b = await h.group('b');
    assert.ok(layout.totalSize > 16 * (1 << 20));
    for (let s = 0; s < 2; s += 1) {
      assert.equal(await join(a, `job-a${s}`), 'joined');
      assert.equal(await join(b, `job-b${s}`), 'joined');
      const next = [a, b].map((c) => c.next(['weights'], (_n, v) => (v as number) === s + 1));
      await a.sendGradient(s, `job-a${s}`, [1], stats(1), Float32Array.from({ length: layout.totalSize }, (_, i) => Math.sin(i + s) / 10));
      const late = s === 0 ? h.group('c') : undefined; // its broadcast of step 0 may meet the commit's
      await b.sendGradient(s, `job-b${s}`, [2], stats(1), Float32Array.from({ length: layout.totalSize }, (_, i) => Math.cos(i - s) / 10));
      await Promise.all(next);
      await late;
      const want = round(h.weights);
      for (const c of [a, b]) assert.deepEqual(c.read(0, layout.totalSize), want, `step ${s + 1}`);
    }
  });
});

describe('the handshake refuses bad peers with a stable code and closes', () => {
  const full = encode({ t: 'hello', protocol: PROTOCOL_VERSION, token: 'secret', workerId: 'w', host: 'h', gpu: null, backend: 'cpu' });
  for (const [name, frames, code, message] of [
    ['a wrong token', [hello({ token: 'nope' })], 'VGG_ERR_AUTH', 'hello.token: expected the run token, got a wrong or missing one'],
    ['a missing token', [hello({ token: undefined })], 'VGG_ERR_AUTH', 'hello.token: expected the run token, got none'],
    ['another protocol version', [hello({ protocol: 99 })], 'VGG_ERR_PROTOCOL_VERSION', `hello.protocol: expected ${PROTOCOL_VERSION}, got 99`],
    ['garbage bytes', [Buffer.from([0xc1, 0xff, 0x00])], 'VGG_ERR_FRAME_DECODE', /^frame: expected msgpack, got 3 undecodable bytes/],
    ['a truncated frame', [full.subarray(0, full.length - 5)], 'VGG_ERR_FRAME_DECODE', `frame: expected msgpack, got ${full.length - 5} undecodable bytes`],
    ['a frame that is not an object', [encode(42 as never)], 'VGG_ERR_FRAME_SHAPE', 'frame: expected an object with a string "t", got number 42'],
    ['a frame before hello', [frame({ t: 'idle', step: 0 })], 'VGG_ERR_HANDSHAKE', 'first frame: expected "hello", got "idle"'],
    ['a hello with a field of the wrong type', [hello({ workerId: 7 })], 'VGG_ERR_FRAME_FIELD', 'hello.workerId: expected string, got number 7'],
  ] as const) {
    test(name, async () => {
      h = await startAggregator();
      const peer = new RawPeer(h.port);
      await peer.opened();
      peer.send(...frames);
      const reply = await peer.reply();
      assert.equal(reply?.code, code);
      if (typeof message === 'string') assert.ok(String(reply?.message).startsWith(message), String(reply?.message));
      else assert.match(String(reply?.message), message);
      assert.equal(await peer.closed, 1008);
      assert.equal(h.agg.members.size, 0);
    });
  }
});

/**
 * Each case: a handshaken raw peer sends `frames` (some valid, the last
 * broken); the answer carries the code and message; the peer is dropped
 * unless the error is one an honest worker can cause by racing; the weights
 * are untouched, and an honest member's next step gives exactly the weights
 * it should.
 */
describe('frames after the handshake are validated before they touch state', () => {
  const S = 2; // the aggregator's step in these cases
  const g = (n: number, v = 0.25) => new Float32Array(n).fill(v);
  const bytes = (f: Float32Array) => new Uint8Array(f.buffer, f.byteOffset, f.byteLength);
  const begin = (total: number, over: Record<string, unknown> = {}) =>
    frame({ t: 'grad-begin', step: S, jobId: 'job-h', sampleIds: [1, 2], stats: stats(2), totalFloats: total, ...over });
  const joinH = frame({ t: 'join', step: S, jobId: 'job-h', lockToken: 'tok' });
  const chunk = (offset: number, data: Uint8Array, step = S) => frame({ t: 'grad-chunk', step, offset, data });
  const end = frame({ t: 'grad-end', step: S });
  type Case = [string, (total: number) => Buffer[], string, string | RegExp, boolean];
  const cases: Case[] = [
    ['a model hash of another model', () => [], 'VGG_ERR_MODEL_HASH', 'ready.modelHash: expected hash-1, got other', true],
    ['an unknown message type', () => [frame({ t: 'shutdown' })], 'VGG_ERR_UNKNOWN_TYPE',
      'frame.t: expected ready, join, idle, grad-begin, grad-chunk or grad-end, got "shutdown"', true],
    ['a gradient for an older step', (n) => [joinH, begin(n, { step: S - 1 })], 'VGG_ERR_STALE_STEP', `grad-begin.step: expected ${S}, got the older ${S - 1}`, false],
    ['a gradient for a future step', (n) => [joinH, begin(n, { step: S + 3 })], 'VGG_ERR_FUTURE_STEP', `grad-begin.step: expected ${S}, got ${S + 3}, a step not reached yet`, true],
    ['a negative step', (n) => [joinH, begin(n, { step: -1 })], 'VGG_ERR_FRAME_FIELD', 'grad-begin.step: expected int, got number -1', true],
    ['a gradient without a join', (n) => [begin(n)], 'VGG_ERR_NOT_JOINED', 'grad-begin.jobId: expected the joined job (none), got job-h', true],
    ['a join of a job nobody queued', () => [frame({ t: 'join', step: S, jobId: 'forged', lockToken: 'tok' })], 'VGG_ERR_DUPLICATE_JOB',
      'join.jobId: expected a pending job, got forged (unknown)', false],
    ['a gradient of the wrong length', (n) => [joinH, begin(n + 1)], 'VGG_ERR_LAYOUT', /^grad-begin.totalFloats: expected \d+, got \d+$/, true],
    ['stats that disagree with the sample ids', (n) => [joinH, begin(n, { stats: stats(5) })], 'VGG_ERR_FRAME_FIELD',
      'grad-begin.stats: expected samples = 2 sample ids and top1, top5 <= it, got samples 5, top1 0, top5 0', true],
    ['an Inf loss', (n) => [joinH, begin(n, { stats: { ...stats(2), loss: Infinity } })], 'VGG_ERR_NONFINITE',
      'grad-begin.stats.loss: expected a finite number, got Infinity', false],
    ['a chunk at an offset outside the layout', (n) => [joinH, begin(n), chunk(n + 10, bytes(g(4)))],
      'VGG_ERR_LAYOUT', 'grad-chunk.offset: expected 0, got', true],
    ['a split outside the layout', (n) => [joinH, begin(n, { split: n })], 'VGG_ERR_LAYOUT', 'grad-begin.split: expected 0..', true],
    ['a split gradient that starts at 0', (n) => [joinH, begin(n, { split: 8 }), chunk(0, bytes(g(8)))],
      'VGG_ERR_LAYOUT', 'grad-chunk.offset: expected 8, got 0', true],
    ['a chunk across the split', (n) => [joinH, begin(n, { split: 8 }), chunk(8, bytes(g(n - 8))), chunk(0, bytes(g(10)))],
      'VGG_ERR_LAYOUT', 'grad-chunk at 0: expected at most 8 floats', true],
    ['a split gradient ended after its first part', (n) => [joinH, begin(n, { split: 8 }), chunk(8, bytes(g(n - 8))), end],
      'VGG_ERR_LAYOUT', /^grad-end: expected (\d+) floats, got (?!\1$)\d+$/, true],
    ['a chunk longer than the layout', (n) => [joinH, begin(n), chunk(0, bytes(g(n + 3)))],
      'VGG_ERR_LAYOUT', 'grad-chunk at 0: expected at most', true],
    ['a chunk whose bytes are not whole floats', (n) => [joinH, begin(n), chunk(0, new Uint8Array(7))],
      'VGG_ERR_FRAME_FIELD', 'chunk data: expected a multiple of 4 bytes, got 7', true],
    ['a chunk of another step', (n) => [joinH, begin(n), chunk(0, bytes(g(4)), S + 1)],
      'VGG_ERR_STEP_MISMATCH', `grad-chunk.step: expected ${S}, got ${S + 1}`, true],
    ['NaN after a valid first half', (n) => {
      const half = Math.floor(n / 2);
      const bad = g(n - half);
      bad[3] = Number.NaN;
      return [joinH, begin(n), chunk(0, bytes(g(half))), chunk(half, bytes(bad))];
    }, 'VGG_ERR_NONFINITE', /^grad-chunk at \d+: expected finite values, got NaN or Inf \(job job-h\)$/, false],
    ['a grad-end before all floats came', (n) => [joinH, begin(n), chunk(0, bytes(g(5))), end],
      'VGG_ERR_LAYOUT', /^grad-end: expected \d+ floats, got 5$/, true],
    ['a field of the wrong type', () => [frame({ t: 'join', step: 'two', jobId: 'job-h', lockToken: 'tok' })], 'VGG_ERR_FRAME_FIELD',
      'join.step: expected int, got string "two"', true],
    ['garbage after the handshake', () => [Buffer.from('not msgpack at all, just text')], 'VGG_ERR_FRAME_DECODE', 'frame: expected msgpack, got', true],
  ];
  for (const [name, make, code, message, closes] of cases) {
    test(name, async () => {
      h = await startAggregator({ step: S });
      const n = h.layout.totalSize;
      const peer = new RawPeer(h.port);
      await peer.opened();
      const modelHash = code === 'VGG_ERR_MODEL_HASH' ? 'other' : 'hash-1';
      peer.send(hello(), frame({ t: 'ready', modelHash }), ...make(n));
      let reply = await peer.reply();
      while (reply?.t === 'welcome' || reply?.t === 'joined') reply = await peer.reply();
      assert.equal(reply?.code, code, JSON.stringify(reply));
      if (typeof message === 'string') assert.ok(String(reply?.message).startsWith(message), String(reply?.message));
      else assert.match(String(reply?.message), message);
      if (closes) assert.equal(await peer.closed, 1008);
      assert.equal(h.agg.rejected.get(code), 1);
      assert.deepEqual(h.weights, h.initial);
      assert.equal(h.agg.step, S);
      if (!closes) peer.ws.terminate();
      await honestStep(h);
    });
  }

  test('a second gradient in the same step is refused; the first is dropped from the sum with the peer', async () => {
    h = await startAggregator({ step: S });
    const n = h.layout.totalSize;
    const a = await h.member('a');
    assert.equal(await join(a, 'job-ok'), 'joined'); // keeps the step open
    const peer = new RawPeer(h.port);
    await peer.handshake();
    peer.send(joinH, begin(n), chunk(0, bytes(g(n, 9))), end, begin(n));
    let reply = await peer.reply();
    while (reply?.t === 'joined') reply = await peer.reply();
    assert.equal(reply?.code, 'VGG_ERR_DUPLICATE_GRADIENT');
    assert.equal(reply?.message, `grad-begin: expected one gradient per member and step, got a second for step ${S}`);
    assert.equal(await peer.closed, 1008);
    assert.deepEqual(h.weights, h.initial);
    await honestStep(h, a);
  });

  test('a frame over maxPayload closes the socket (1009), is counted, and changes nothing', async () => {
    h = await startAggregator({ step: S });
    const peer = new RawPeer(h.port);
    await peer.handshake();
    peer.send(Buffer.alloc(9 * 1024 * 1024));
    assert.equal(await peer.closed, 1009);
    assert.equal(h.agg.rejected.get('VGG_ERR_FRAME_TOO_LARGE'), 1);
    assert.deepEqual(h.weights, h.initial);
    await honestStep(h);
  });
});

/** One member, one step: the weights must be exactly the momentum-SGD update of the initial ones by its gradient. */
async function honestStep(harness: Harness, joined?: AggregatorClient): Promise<void> {
  const c = joined ?? await harness.member('honest');
  const step = harness.agg.step;
  if (joined === undefined) assert.equal(await join(c, 'job-ok'), 'joined');
  const grad = Float32Array.from({ length: harness.layout.totalSize }, (_, i) => Math.sin(i) / 10);
  const next = c.next(['weights'], (_n, s) => (s as number) === step + 1);
  await c.sendGradient(step, 'job-ok', [7, 8], stats(2), grad);
  await next;
  const expected = harness.initial.slice();
  // The aggregator sums 2 * g (fp32) and applies with scale 1/2.
  new FlatMomentumSgd(harness.layout, SGD).apply(expected, grad.map((v) => 2 * v), 1 / 2);
  assert.deepEqual(harness.weights, expected);
  assert.deepEqual(harness.commits.map((cs) => cs.map((x) => x.jobId)), [['job-ok']]);
}
