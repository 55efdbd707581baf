import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConnectionLost } from '../../worker/aggregator-client.ts';
import { decodeBf16Scalar, encodeBf16Scalar, type WireFormat } from '../../shared/half.ts';
import { tryArena } from '../../shared/simd.ts';
import { misalignment } from '../../worker/host-memory.ts';
import { Transport } from '../../worker/transport.ts';
import { SGD, join, log, startAggregator, stats } from '../helpers/aggregator-harness.ts';

test('the transport thread: handshake, a split gradient whose head streams before its body is written, weights for every step read on the main thread', async (t) => {
  const h = await startAggregator();
  const tr = new Transport({ client: { url: `ws://127.0.0.1:${h.port}`, token: 'secret', workerId: 'tw', host: 'h', gpu: null, backend: 'cpu' }, log });
  t.after(async () => { await tr.close(); await h.close(); });
  await tr.connect();
  await tr.ready('hash-1');
  assert.equal(tr.weightsStep, 0);
  assert.deepEqual(tr.read(0, h.layout.totalSize), h.weights, 'the initial weights, read from the buffer the thread handed over');
  const g = tr.allocateGradient(h.layout.totalSize);
  const at = h.layout.byName.get('fc6/kernel')?.offset ?? 0;
  for (let step = 0; step < 3; step += 1) {
    const joined = tr.next<{ t: string }>(['reply']);
    tr.send({ t: 'join', step, jobId: `job-${step}`, lockToken: 'tok' });
    assert.equal((await joined).value.t, 'joined');
    // Only the head is written when the send starts; the body is written after the aggregator has the head.
    g.fill(0);
    g.fill(0.5, at);
    let release!: () => void;
    const body = new Promise<void>((r) => { release = r; });
    const next = tr.next(['weights'], (_n, s) => (s as number) === step + 1);
    const sending = tr.sendGradient(step, `job-${step}`, [step], stats(1), { at, body });
    const member = () => [...h.agg.members.values()].find((m) => m.workerId === 'tw');
    for (let k = 0; !(member()?.receiving?.wrapped === true); k += 1) {
      if (k > 2000) throw new Error('the head did not arrive before the body was released');
      await new Promise((r) => setTimeout(r, 5));
    }
    g.fill(0.25, 0, at);
    release();
    await sending;
    await next;
    assert.equal(tr.weightsStep, step + 1);
    assert.deepEqual(tr.read(0, h.layout.totalSize), h.weights, `weights of step ${step + 1}`);
  }
  const sum = h.commits.flat().length;
  assert.equal(sum, 3);
  // A dropped connection is reported as such, and later sends fail the same way.
  const lost = tr.next(['weights']);
  tr.terminate();
  await assert.rejects(lost, ConnectionLost);
  assert.throws(() => tr.send({ t: 'idle', step: 3 }), ConnectionLost);
});

/** A harness aggregator and a transport `workerId` that has its initial weights and its gradient buffer. */
async function readyTransport(t: { after: (f: () => Promise<void>) => void }, workerId: string, putMinFloats?: number, wire?: WireFormat) {
  const h = await startAggregator({ wire });
  const tr = new Transport({ client: { url: `ws://127.0.0.1:${h.port}`, token: 'secret', workerId, host: 'h', gpu: null, backend: 'cpu' }, log, putMinFloats });
  t.after(async () => { await tr.close(); await h.close(); });
  await tr.connect();
  await tr.ready('hash-1');
  const n = h.layout.totalSize;
  return { h, tr, n, g: tr.allocateGradient(n) };
}

/** Joins step `s`, sends the gradient as it is, and waits for the weights of step s + 1. */
async function fullStep(tr: Transport, s: number): Promise<void> {
  const joined = tr.next<{ t: string }>(['reply']);
  tr.send({ t: 'join', step: s, jobId: `job-${s}`, lockToken: 'tok' });
  assert.equal((await joined).value.t, 'joined');
  const next = tr.next(['weights'], (_n, v) => (v as number) === s + 1);
  await tr.sendGradient(s, `job-${s}`, [s], stats(1));
  await next;
}

/** The largest difference of `w` from one momentum step from zero velocity and no decay: w0 - lr g. */
function worstFromOneStep(w: Float32Array, w0: Float32Array, g: Float32Array): number {
  let worst = 0;
  for (let i = 0; i < w.length; i += 1) worst = Math.max(worst, Math.abs((w[i] as number) - Math.fround((w0[i] as number) - Math.fround(SGD.learningRate * (g[i] as number)))));
  return worst;
}

/**
 * A harness aggregator, a transport `tw` and a ShardGroup member `b`, both joined to step 0,
 * b's whole gradient (100s) already in the sum: the scene of a step b is about to be lost from.
 */
async function twoMembers(t: { after: (f: () => Promise<void>) => void }) {
  const { h, tr, n, g } = await readyTransport(t, 'tw');
  const b = await h.group('b');
  assert.equal(await join(b, 'job-b'), 'joined');
  const joined = tr.next<{ t: string }>(['reply']);
  tr.send({ t: 'join', step: 0, jobId: 'job-t', lockToken: 'tok' });
  assert.equal((await joined).value.t, 'joined');
  await b.sendGradient(0, 'job-b', [9], stats(1), new Float32Array(n).fill(100));
  return { h, tr, n, g, b };
}

test('a split gradient cut by an abort (another member lost mid-gradient) is resent whole and the update is exactly the survivors\'', async (t) => {
  const { h, tr, n, g, b } = await twoMembers(t);
  h.agg.options.sgd.options.weightDecay = 0;
  const at = h.layout.byName.get('fc6/kernel')?.offset ?? 0;
  // b's whole gradient is in the sum; then the transport's head part arrives, and b is lost before its body.
  const expected = Float32Array.from({ length: n }, (_, i) => ((i % 7) - 3) / 50);
  g.set(expected.subarray(at), at);
  let release!: () => void;
  const body = new Promise<void>((r) => { release = r; });
  const outcome = tr.next(['weights', 'resend'], (name, v) => name === 'resend' || (v as number) === 1);
  const sending = tr.sendGradient(0, 'job-t', [1, 2], stats(2), { at, body });
  const member = () => [...h.agg.members.values()].find((m) => m.workerId === 'tw');
  for (let k = 0; member()?.receiving?.wrapped !== true; k += 1) {
    if (k > 2000) throw new Error('head not received');
    await new Promise((r) => setTimeout(r, 5));
  }
  b.terminate();
  assert.equal((await outcome).name, 'resend');
  g.set(expected.subarray(0, at), 0);
  release();
  await sending;
  const next = tr.next(['weights'], (_n, s) => (s as number) === 1);
  await tr.sendGradient(0, 'job-t', [1, 2], stats(2));
  await next;
  assert.deepEqual(h.commits.at(-1)?.map((c) => c.jobId), ['job-t']);
  // One momentum step from zero velocity: w1 = w0 - lr * g (the mean over t's 2 samples is g itself).
  const worst = worstFromOneStep(tr.read(0, n), h.initial, expected);
  assert.ok(worst < 1e-6, `largest difference from the survivor-only update: ${worst}`);
});

test('a resend the thread took before the send started is not answered twice (the send already carries its attempt)', async (t) => {
  const { h, tr, n, g, b } = await twoMembers(t);
  g.fill(0.5);
  // Resumed in the microtask right after the aggregator aborted the step and sent the resend, before any other event here.
  const aborted = new Promise<void>((resolve) => {
    const onLost = h.agg.options.onMemberLost;
    h.agg.options.onMemberLost = (m) => { onLost(m); resolve(); };
  });
  b.terminate();
  await aborted;
  assert.equal(h.agg.attempt, 1);
  // This thread busy (as when computing) while the transport thread takes the resend; then the send starts.
  const until = performance.now() + 200;
  while (performance.now() < until) { /* computing */ }
  const outcome = tr.next(['weights', 'resend'], (name, v) => name === 'resend' || (v as number) === 1);
  await tr.sendGradient(0, 'job-t', [1], stats(1));
  assert.equal((await outcome).name, 'weights', 'committed with the one send, no second one');
  assert.deepEqual(h.commits.at(-1)?.map((c) => c.jobId), ['job-t']);
  assert.equal(h.agg.rejected.get('VGG_ERR_DUPLICATE_GRADIENT') ?? 0, 0);
  assert.equal(g.length, n);
});

test('weights viewed for the model are not received into again until the model holds a newer version (view, modelWritten)', async (t) => {
  const { h, tr, n, g } = await readyTransport(t, 'tv');
  const step = async (s: number) => {
    g.fill(0.01 * (s + 1));
    await fullStep(tr, s);
    return Float32Array.from(h.weights);
  };
  const w0 = Float32Array.from(h.weights);
  const v0 = tr.view(0, n);
  assert.equal(tr.view(0, n).buffer, v0.buffer, 'a view of the received buffer, not a copy');
  assert.deepEqual(v0, w0);
  tr.modelWritten();
  assert.ok(v0.buffer instanceof SharedArrayBuffer, 'versions are shared memory, lent to this thread');
  // Two more versions arrive while the model holds version 0: the thread receives them into other buffers.
  await step(0);
  const w2 = await step(1);
  assert.equal(tr.versionsGivenBack, 1, 'version 1 (replaced before the model took it) given back, version 0 not');
  assert.deepEqual(v0, w0, 'version 0 unchanged while the model holds it');
  assert.deepEqual(tr.view(0, n), w2);
  // The model takes version 2: version 0 goes back to the thread, free to be received into again.
  tr.modelWritten();
  assert.equal(tr.versionsGivenBack, 2, 'version 0 given back once the model holds a newer one');
  const w3 = await step(2);
  assert.deepEqual(tr.read(0, n), w3);
});

test('the received weights start at 64-byte boundaries: every tensor at a 16-float offset is viewed where TensorFlow takes it without a copy', async (t) => {
  const { h, tr, n, g } = await readyTransport(t, 'ta');
  const aligned = h.layout.entries.filter((e) => e.offset % 16 === 0);
  assert.ok(aligned.length >= h.layout.entries.length / 2, 'most of the test layout\'s tensors start at 16 floats');
  const check = (when: string) => {
    for (const e of aligned) assert.equal(misalignment(tr.view(e.offset, e.offset + e.size)), 0, `${e.name} ${when}`);
    assert.equal(misalignment(tr.view(0, n)), 0);
  };
  check('in the first version');
  // Later versions are received into new buffers, then into those given back (lent to this thread and back).
  for (let s = 0; s < 3; s += 1) {
    g.fill(0.01);
    await fullStep(tr, s);
    tr.modelWritten();
    check(`in version ${s + 1}`);
  }
});

test('weights versions are received into the gradient\'s shared memory once it is there (bf16 decoded in place), two of them reused step after step; without SIMD (VGG_NO_SIMD=1, no wasm memory) into buffers of their own', async (t) => {
  const { h, tr, n, g } = await readyTransport(t, 'tb', undefined, 'bf16');
  // The gradient lives in a wasm memory (room for the versions after it) where there is SIMD.
  const simd = tryArena(16, 1) !== undefined;
  const inGradientMemory = (v: Float32Array) => v.buffer.byteLength === g.buffer.byteLength && v.byteOffset >= g.byteOffset + g.byteLength;
  assert.ok(!inGradientMemory(tr.view(0, n)), 'the first version arrived before the gradient (and its memory) was allocated');
  const offsets = new Set<number>();
  for (let s = 0; s < 5; s += 1) {
    g.fill(0.01 * (s + 1));
    await fullStep(tr, s);
    tr.modelWritten();
    const v = tr.view(0, n);
    const codes = new Uint16Array(n);
    encodeBf16Scalar(h.weights, codes);
    const expected = new Float32Array(n);
    decodeBf16Scalar(codes, expected);
    assert.deepEqual(v, expected, `version ${s + 1}: the aggregator's weights through bf16`);
    assert.equal(misalignment(v), 0);
    // From version 2 on (version 1 was received into a buffer given back before the gradient's memory had room taken).
    if (s >= 1) {
      assert.equal(inGradientMemory(v), simd, `version ${s + 1} ${simd ? 'in' : 'outside'} the gradient's memory`);
      if (simd) offsets.add(v.byteOffset);
    }
  }
  if (simd) assert.equal(offsets.size, 2, 'two version buffers in that memory, reused');
});

test('putGradient: a tensor\'s values handed to the thread (transferred) land in the gradient before the send that follows; a view, or a short array, is copied instead', async (t) => {
  // (The test layout's tensors are small: the threshold of short arrays, 1 MB in a worker, is 16 floats here.)
  const { h, tr, n, g } = await readyTransport(t, 'tp', 16);
  h.agg.options.sgd.options.weightDecay = 0;
  const expected = Float32Array.from({ length: n }, (_, i) => ((i % 11) - 5) / 40);
  const cut = [0, ...h.layout.entries.map((e) => e.offset + e.size)];
  const parent = new Float32Array(n + 8);
  g.fill(123); // stale values that must all be overwritten
  const handed: Float32Array[] = [];
  const short: Float32Array[] = [];
  for (let k = 0; k + 1 < cut.length; k += 1) {
    const [lo, hi] = [cut[k] as number, cut[k + 1] as number];
    if (k % 3 === 2) {
      // A view into a larger buffer (as the cpu backend's storage may be): copied on this thread, left attached.
      parent.set(expected.subarray(lo, hi), 4);
      const view = parent.subarray(4, 4 + hi - lo);
      tr.putGradient(lo, view);
      assert.equal(view.length, hi - lo, 'a view is not transferred');
    } else {
      const values = expected.slice(lo, hi);
      (values.length < 16 ? short : handed).push(values);
      tr.putGradient(lo, values);
    }
  }
  assert.ok(handed.length > 1 && handed.every((v) => v.length === 0), 'whole arrays of 16 floats or more are transferred');
  assert.ok(short.length > 0 && short.every((v) => v.length > 0), 'shorter ones are copied here, not transferred');
  assert.throws(() => tr.putGradient(n - 2, new Float32Array(4)), /putGradient: expected floats within \[0, \d+\), got/);
  await fullStep(tr, 0);
  const worst = worstFromOneStep(tr.read(0, n), h.initial, expected);
  assert.ok(worst < 1e-6, `largest difference from the update with the handed values: ${worst}`);
});
