import { afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Aggregator, type Contribution } from '../../coordinator/aggregator.ts';
import { FlatMomentumSgd } from '../../shared/flat-sgd.ts';
import { createLogger } from '../../shared/logger.ts';
import { buildLayout } from '../../shared/param-layout.ts';
import { TINY_VGG_A } from '../../shared/vgg-configs.ts';
import { PROTOCOL_VERSION, decodeFrame, encode } from '../../shared/wire-protocol.ts';
import { AggregatorClient } from '../../worker/aggregator-client.ts';

const log = createLogger();
log.level = 'silent';
const layout = buildLayout(TINY_VGG_A);
let agg: Aggregator | undefined;
const clients: AggregatorClient[] = [];

async function start(): Promise<{ port: number; commits: Contribution[][]; weights: Float32Array }> {
  const weights = Float32Array.from({ length: layout.totalSize }, (_, i) => ((i % 13) - 6) / 100);
  const commits: Contribution[][] = [];
  agg = new Aggregator({
    host: '127.0.0.1', port: 0, token: 'secret', modelHash: 'hash-1', weights, step: 0, runInfo: { run: 't' },
    sgd: new FlatMomentumSgd(layout, { learningRate: 0.1, momentum: 0.9, weightDecay: 0 }),
    jobStatus: (id) => (id.startsWith('job') ? 'pending' : 'unknown'),
    onCommit: async (_step, c) => { commits.push(c); },
    onMemberLost: () => {}, log,
  });
  return { port: await agg.start(), commits, weights };
}

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await agg?.close();
});

/** Raw socket: sends frames, collects decoded replies until close. */
function raw(port: number, frames: Buffer[]): Promise<{ replies: Record<string, unknown>[]; closeCode: number }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}`);
    const replies: Record<string, unknown>[] = [];
    ws.on('open', () => { for (const f of frames) ws.send(f); });
    ws.on('message', (d: Buffer) => replies.push(decodeFrame(d)));
    ws.on('close', (code) => resolve({ replies, closeCode: code }));
    ws.on('error', () => {});
  });
}

const hello = (over: Record<string, unknown> = {}) => encode({ t: 'hello', protocol: PROTOCOL_VERSION, token: 'secret', workerId: 'w', host: 'h', gpu: null, backend: 'cpu', ...over } as never);

async function member(port: number, id: string): Promise<AggregatorClient> {
  const c = new AggregatorClient({ url: `ws://127.0.0.1:${port}`, token: 'secret', workerId: id, host: 'h', gpu: null, backend: 'cpu', log });
  clients.push(c);
  await c.connect();
  const w = c.next(['weights']);
  c.send({ t: 'ready', modelHash: 'hash-1' });
  await w;
  return c;
}

async function join(c: AggregatorClient, jobId: string): Promise<string> {
  const reply = c.next<{ t: string }>(['reply']);
  c.send({ t: 'join', step: c.weightsStep, jobId, lockToken: 'tok' });
  return (await reply).value.t;
}

const stats = (samples: number) => ({ samples, loss: 1, top1: 0, top5: 0, skipped: 0 });

describe('aggregator handshake rejects bad peers with a stable code and closes', () => {
  for (const [name, frames, code, message] of [
    ['a wrong token', [hello({ token: 'nope' })], 'VGG_ERR_AUTH', 'hello.token: expected the run token, got a wrong or missing one'],
    ['another protocol version', [hello({ protocol: 99 })], 'VGG_ERR_PROTOCOL_VERSION', `hello.protocol: expected ${PROTOCOL_VERSION}, got 99`],
    ['garbage bytes', [Buffer.from([0xc1, 0xff, 0x00])], 'VGG_ERR_FRAME_DECODE', undefined],
    ['a frame before hello', [encode({ t: 'idle', step: 0 })], 'VGG_ERR_HANDSHAKE', 'first frame: expected "hello", got "idle"'],
  ] as const) {
    test(name, async () => {
      const { port } = await start();
      const { replies, closeCode } = await raw(port, [...frames]);
      assert.equal(closeCode, 1008);
      assert.equal(replies[0]?.code, code);
      if (message !== undefined) assert.equal(replies[0]?.message, message);
    });
  }

  test('a model hash that differs from the run is refused at ready', async () => {
    const { port } = await start();
    const { replies, closeCode } = await raw(port, [hello(), encode({ t: 'ready', modelHash: 'other' })]);
    assert.equal(replies[0]?.t, 'welcome');
    assert.equal(replies[1]?.code, 'VGG_ERR_MODEL_HASH');
    assert.equal(replies[1]?.message, 'ready.modelHash: expected hash-1, got other');
    assert.equal(closeCode, 1008);
  });
});

describe('synchronous steps', () => {
  test('two members: the update uses the sample-weighted mean gradient; a stale join is told so', async () => {
    const { port, commits, weights } = await start();
    const w0 = weights.slice();
    const a = await member(port, 'a');
    const b = await member(port, 'b');
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
    assert.ok(Math.abs((a.weights?.[i] as number) - ((w0[i] as number) - 0.175)) < 1e-6);
    assert.deepEqual(commits[0]?.map((c) => c.jobId).sort(), ['job-1', 'job-2']);
    const reply = a.next<{ t: string; step: number }>(['reply']);
    a.send({ t: 'join', step: 0, jobId: 'job-3', lockToken: 'tok' });
    assert.deepEqual((await reply).value, { t: 'stale', step: 1 });
  });

  test('a member lost mid-step aborts the step; the survivor resends and the step commits without the lost gradient', async () => {
    const { port, commits, weights } = await start();
    const w0 = weights.slice();
    const a = await member(port, 'a');
    const b = await member(port, 'b');
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
      assert.ok(Math.abs((weights[i] as number) - ((w0[i] as number) - 0.2)) < 1e-6);
      assert.deepEqual(commits.at(-1)?.map((c) => c.jobId), ['job-1']);
    } else {
      assert.deepEqual(commits.at(-1)?.map((c) => c.jobId).sort(), ['job-1', 'job-2']);
    }
  });

  test('NaN in a gradient is refused with VGG_ERR_NONFINITE and the weights stay untouched', async () => {
    const { port, commits, weights } = await start();
    const w0 = weights.slice();
    const a = await member(port, 'a');
    await join(a, 'job-1');
    const g = new Float32Array(layout.totalSize).fill(1);
    g[10] = Number.NaN;
    const reply = a.next<{ t: string; code: string }>(['reply']);
    await a.sendGradient(0, 'job-1', [1], stats(1), g);
    assert.equal((await reply).value.code, 'VGG_ERR_NONFINITE');
    assert.deepEqual(weights, w0);
    assert.equal(commits.length, 0);
    assert.equal(agg?.rejected.get('VGG_ERR_NONFINITE'), 1);
  });
});
