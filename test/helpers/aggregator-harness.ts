import WebSocket from 'ws';
import { Aggregator, type Contribution, type FollowerHooks, type Member, type PartialSteps } from '../../coordinator/aggregator.ts';
import { FlatMomentumSgd } from '../../shared/flat-sgd.ts';
import type { WireFormat } from '../../shared/half.ts';
import { createLogger } from '../../shared/logger.ts';
import { buildLayout, type ParamLayout } from '../../shared/param-layout.ts';
import { TINY_VGG_A } from '../../shared/vgg-configs.ts';
import { FloatArena, aggregatorArenaFloats } from '../../shared/simd.ts';
import { PROTOCOL_VERSION, decodeFrame, encode } from '../../shared/wire-protocol.ts';
import { AggregatorClient } from '../../worker/aggregator-client.ts';
import { ShardGroup } from '../../worker/shard-group.ts';

export const log = createLogger();
log.level = 'silent';

export const SGD = { learningRate: 0.1, momentum: 0.9, weightDecay: 5e-4 };

/** A real aggregator on a loopback port; jobs named `job*` are pending, all else unknown. */
export interface Harness {
  agg: Aggregator;
  port: number;
  layout: ParamLayout;
  weights: Float32Array;
  /** The weights before any step. */
  initial: Float32Array;
  commits: Contribution[][];
  lost: Member[];
  /** An honest member that finished the handshake and holds the weights. */
  member(id: string): Promise<AggregatorClient>;
  /** The same as the worker runs it: a ShardGroup (sends each gradient with the step's attempt). */
  group(id: string): Promise<ShardGroup>;
  close(): Promise<void>;
}

/** `arena`: weights and momentum in a FloatArena, so the aggregator runs its SIMD loops. `follower`: a follower shard's, with these hooks for its leader. */
export async function startAggregator(options: { layout?: ParamLayout; heartbeatTimeoutMs?: number; step?: number; wire?: WireFormat; arena?: boolean; deferFinishAbove?: number; finishSliceFloats?: number; earlyCommit?: boolean; partialSteps?: PartialSteps; follower?: FollowerHooks } = {}): Promise<Harness> {
  const layout = options.layout ?? buildLayout(TINY_VGG_A);
  const arena = options.arena === true ? new FloatArena(aggregatorArenaFloats(layout.totalSize)) : undefined;
  const plain = Float32Array.from({ length: layout.totalSize }, (_, i) => ((i % 13) - 6) / 100);
  const weights = arena?.copyOf(plain) ?? plain;
  const commits: Contribution[][] = [];
  const lost: Member[] = [];
  const clients: (AggregatorClient | ShardGroup)[] = [];
  const agg = new Aggregator({
    host: '127.0.0.1', port: 0, token: 'secret', modelHash: 'hash-1', weights, step: options.step ?? 0, runInfo: { run: 't', wire: options.wire ?? 'fp32' }, wire: options.wire,
    sgd: new FlatMomentumSgd(layout, SGD, arena?.alloc(layout.totalSize)),
    jobStatus: (id) => (id.startsWith('job') ? 'pending' : 'unknown'),
    onCommit: async (_step, c) => { commits.push(c); },
    onMemberLost: (m) => { lost.push(m); }, log, heartbeatTimeoutMs: options.heartbeatTimeoutMs, deferFinishAbove: options.deferFinishAbove, finishSliceFloats: options.finishSliceFloats, earlyCommit: options.earlyCommit,
    partialSteps: options.partialSteps, follower: options.follower,
  });
  const port = await agg.start();
  return {
    agg, port, layout, weights, initial: weights.slice(), commits, lost,
    async member(id) {
      const c = new AggregatorClient({ url: `ws://127.0.0.1:${port}`, token: 'secret', workerId: id, host: 'h', gpu: null, backend: 'cpu', log });
      clients.push(c);
      await c.connect();
      const w = c.next(['weights']);
      c.send({ t: 'ready', modelHash: 'hash-1' });
      await w;
      return c;
    },
    async group(id) {
      const g = new ShardGroup({ url: `ws://127.0.0.1:${port}`, token: 'secret', workerId: id, host: 'h', gpu: null, backend: 'cpu', log });
      clients.push(g);
      await g.connect();
      await g.ready('hash-1');
      return g;
    },
    async close() {
      for (const c of clients) c.close();
      await agg.close();
    },
  };
}

export const hello = (over: Record<string, unknown> = {}): Buffer =>
  encode({ t: 'hello', protocol: PROTOCOL_VERSION, token: 'secret', workerId: 'w', host: 'h', gpu: null, backend: 'cpu', ...over } as never);

export const frame = (msg: Record<string, unknown>): Buffer => encode(msg as never);

export const stats = (samples: number) => ({ samples, loss: 1, top1: 0, top5: 0, skipped: 0 });

/** Joins `jobId` at the client's weights step; resolves with the reply type. */
export async function join(c: AggregatorClient | ShardGroup, jobId: string): Promise<string> {
  const reply = c.next<{ t: string }>(['reply']);
  c.send({ t: 'join', step: c.weightsStep, jobId, lockToken: 'tok' });
  return (await reply).value.t;
}

/**
 * A raw socket speaking frames of our choosing. Replies are decoded and
 * queued; `reply()` resolves with the next one that is not part of a weights
 * broadcast; `closed` with the close code.
 */
export class RawPeer {
  readonly ws: WebSocket;
  readonly closed: Promise<number>;
  private readonly queue: Record<string, unknown>[] = [];
  private waiter?: () => void;

  constructor(port: number, options: { autoPong?: boolean } = {}) {
    this.ws = new WebSocket(`ws://127.0.0.1:${port}`, { autoPong: options.autoPong ?? true });
    this.ws.on('error', () => {});
    this.ws.on('message', (d: Buffer) => {
      const msg = decodeFrame(d);
      if (typeof msg.t === 'string' && msg.t.startsWith('weights-')) return;
      this.queue.push(msg);
      this.waiter?.();
    });
    this.closed = new Promise((resolve) => this.ws.on('close', (code) => { this.waiter?.(); resolve(code); }));
  }

  opened(): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.ws.readyState === WebSocket.OPEN) resolve();
      this.ws.once('open', () => resolve());
      this.ws.once('close', () => reject(new Error('closed before open')));
    });
  }

  send(...frames: Buffer[]): void {
    for (const f of frames) this.ws.send(f);
  }

  /** The next non-weights reply, or undefined once the socket is closed and nothing is queued. */
  async reply(): Promise<Record<string, unknown> | undefined> {
    for (;;) {
      const m = this.queue.shift();
      if (m !== undefined) return m;
      if (this.ws.readyState === WebSocket.CLOSED) return undefined;
      await new Promise<void>((resolve) => { this.waiter = resolve; });
      this.waiter = undefined;
    }
  }

  /** Handshake as a ready member (welcome consumed). */
  async handshake(): Promise<void> {
    await this.opened();
    this.send(hello(), frame({ t: 'ready', modelHash: 'hash-1' }));
    const welcome = await this.reply();
    if (welcome?.t !== 'welcome') throw new Error(`expected welcome, got ${JSON.stringify(welcome)}`);
  }
}
