import { createHmac, randomBytes } from 'node:crypto';
import type { WebSocket } from 'ws';
import { shardRange, type FloatRange } from '../shared/shard.ts';
import type { ModelConfig } from '../shared/vgg-configs.ts';
import { PROTOCOL_VERSION, ProtocolError, encode, field, sameSecret, type ShardMessage } from '../shared/wire-protocol.ts';
import type { Aggregator, Roster } from './aggregator.ts';
import type { ShardState } from './run-state.ts';
import { RangeStateReceiver, sendRangeState } from './shard-state.ts';

export interface ShardLeaderOptions {
  count: number;
  /** The model the followers build their layout from (and check the hash against). */
  model: ModelConfig;
  /** A follower's link broke: its range's state is gone, the run cannot go on (resume from the checkpoint). */
  onShardLost: (index: number, reason: string) => void;
  /**
   * The workers host shards 1..K-1 (`worker start --host-shard i/K`): shard 0 owns no floats, so no
   * gradient byte goes through the coordinator. @defaultValue false
   */
  leaderOwnsNone?: boolean;
}

interface Link {
  index: number;
  ws: WebSocket;
  url: string;
  ready: boolean;
  lastSeen: number;
  /** `${step}|${attempt}|${jobId}` of complete gradients in the current step. */
  haves: Set<string>;
  gather?: { resolve: () => void; reject: (e: Error) => void; receiver: RangeStateReceiver };
}

/**
 * The leader's side of a sharded aggregator: shard 0 lives in the coordinator
 * and decides every step (membership, aborts, commits, the ledger); followers
 * own contiguous byte ranges of the flat vector and reduce, update and
 * broadcast only those. A follower is accepted only before the run starts (it
 * is sent its range of the current weights and momentum); a follower lost later
 * stops the run, which then resumes from the last checkpoint (--resume).
 * Shard 0's Aggregator attaches itself (token, model hash, step, SGD settings
 * and the whole vector's weights and momentum come from it).
 */
export class ShardLeader {
  readonly options: ShardLeaderOptions;
  ranges: FloatRange[] = [];
  readonly links = new Map<number, Link>();
  /** Each follower's last URL, kept after its link is gone (for status). */
  private readonly urls = new Map<number, string>();
  private readonly secret = randomBytes(32);
  private started = false;
  private heartbeat?: NodeJS.Timeout;
  private agg!: Aggregator;
  /** The whole flat vector's master weights and momentum; the followers' ranges are filled in by gather(). */
  private weights!: Float32Array;
  private velocity!: Float32Array;

  constructor(options: ShardLeaderOptions) {
    this.options = options;
  }

  /** Called by shard 0's Aggregator with the whole vector's weights and momentum; returns shard 0's range. */
  attach(agg: Aggregator, weights: Float32Array, velocity: Float32Array): FloatRange {
    Object.assign(this, { agg, weights, velocity });
    this.ranges = Array.from({ length: this.options.count }, (_, i) => shardRange(weights.length, i, this.options.count, this.options.leaderOwnsNone));
    const timeout = this.heartbeatTimeoutMs;
    this.heartbeat = setInterval(() => {
      for (const l of this.links.values()) {
        if (performance.now() - l.lastSeen > timeout) this.fail(l, `silent for ${timeout} ms`);
        else if (l.ws.readyState === l.ws.OPEN) l.ws.ping();
      }
    }, Math.max(10, Math.floor(timeout / 3)));
    return this.ranges[0] as FloatRange;
  }

  private get heartbeatTimeoutMs(): number {
    return this.agg.options.heartbeatTimeoutMs ?? 30_000;
  }

  shardList(): { index: number; lo: number; hi: number; url: string }[] {
    return this.ranges.map((r, index) => ({ index, ...r, url: index === 0 ? '' : this.links.get(index)?.url ?? '' }));
  }

  /** Every shard for `status`: its range, URL, and whether it is connected and ready (shard 0 always). */
  shardStates(): ShardState[] {
    return this.shardList().map((s) => ({ ...s, url: this.urls.get(s.index) ?? '', ready: s.index === 0 || this.links.get(s.index)?.ready === true }));
  }

  ready(): boolean {
    if (!this.started) this.started = this.links.size === this.options.count - 1 && [...this.links.values()].every((l) => l.ready);
    return this.started;
  }

  ticket(step: number, workerId: string, jobId: string): string {
    return shardTicket(this.secret, step, workerId, jobId);
  }

  complete(step: number, attempt: number, jobs: string[]): boolean {
    for (const l of this.links.values()) for (const j of jobs) if (!l.haves.has(`${step}|${attempt}|${j}`)) return false;
    return this.links.size === this.options.count - 1;
  }

  commit(step: number, attempt: number, jobs: string[], totalSamples: number, divisor: number, learningRate: number): void {
    for (const l of this.links.values()) {
      l.haves.clear();
      this.send(l, { t: 'commit', step, attempt, jobs, totalSamples, divisor, learningRate });
    }
  }

  /** The step's membership is sealed: the followers may update and send each range every job has sent. */
  roster(r: Roster): void {
    for (const l of this.links.values()) this.send(l, { t: 'roster', ...r });
  }

  abort(step: number, attempt: number): void {
    for (const l of this.links.values()) this.send(l, { t: 'abort', step, attempt });
  }

  /**
   * Fills the followers' ranges of the full weights and momentum with their
   * state after `step` (for a checkpoint). Each follower answers after it has
   * applied every commit sent before this request.
   */
  async gather(step: number): Promise<void> {
    await Promise.all([...this.links.values()].map((l) => new Promise<void>((resolve, reject) => {
      const { lo, hi } = this.ranges[l.index] as FloatRange;
      l.gather = { resolve, reject, receiver: new RangeStateReceiver(this.weights.subarray(lo, hi), this.velocity.subarray(lo, hi)) };
      this.send(l, { t: 'state-request', step });
    })));
  }

  /** Takes over a socket whose first frame was a `shard-hello`; false if it was not one. */
  accept(ws: WebSocket, msg: Record<string, unknown>): ((msg: Record<string, unknown>) => void) | undefined {
    if (msg.t !== 'shard-hello') return undefined;
    const protocol = field<number>(msg, 'protocol', 'int');
    if (protocol !== PROTOCOL_VERSION) throw new ProtocolError('VGG_ERR_PROTOCOL_VERSION', `shard-hello.protocol: expected ${PROTOCOL_VERSION}, got ${protocol}`);
    if (!sameSecret(msg.token, this.agg.options.token)) throw new ProtocolError('VGG_ERR_AUTH', 'shard-hello.token: expected the run token, got a wrong or missing one');
    const shards = field<number>(msg, 'shards', 'int');
    const asked = field<number>(msg, 'shard', 'int');
    // shard 0 of 0: any free shard (worker start --host-shard auto); none free is not an error for such a worker.
    const any = asked === 0 && shards === 0;
    const count = this.options.count;
    const index = any ? Array.from({ length: count - 1 }, (_, i) => i + 1).find((i) => !this.links.has(i)) : asked;
    if (index === undefined) throw new ProtocolError('VGG_ERR_SHARD_UNAVAILABLE', `shard-hello: expected a free shard, got none: all ${count - 1} are taken`);
    if (any && this.started) throw new ProtocolError('VGG_ERR_SHARD_UNAVAILABLE', `shard-hello: expected before the run starts, got a request for any shard at step ${this.agg.step}`);
    if (!any && shards !== count) throw new ProtocolError('VGG_ERR_SHARD', `shard-hello.shards: expected ${count} (the coordinator's --shards), got ${shards}`);
    if (index < 1 || index >= count) throw new ProtocolError('VGG_ERR_SHARD', `shard-hello.shard: expected 1..${count - 1} (shard 0 is the coordinator), got ${index}`);
    if (this.started) throw new ProtocolError('VGG_ERR_SHARD', `shard-hello: expected before the run starts, got shard ${index}/${shards} at step ${this.agg.step} (restart the coordinator with --resume)`);
    if (this.links.has(index)) throw new ProtocolError('VGG_ERR_SHARD', `shard-hello.shard: shard ${index}/${shards} is already connected`);
    const link: Link = { index, ws, url: '', ready: false, lastSeen: performance.now(), haves: new Set() };
    this.links.set(index, link);
    ws.on('pong', () => { link.lastSeen = performance.now(); });
    ws.on('close', () => { if (this.links.get(index) === link) this.fail(link, 'connection closed'); });
    const { lo, hi } = this.ranges[index] as FloatRange;
    const { options: o, step } = this.agg;
    const { momentum, weightDecay } = o.sgd.options;
    this.send(link, {
      t: 'shard-init', shard: index, shards: count, step, lo, hi, modelHash: o.modelHash, model: this.options.model as unknown as Record<string, unknown>,
      sgd: { learningRate: 0, momentum, weightDecay }, secret: this.secret.toString('hex'),
      run: { run: o.runInfo.run, wire: o.wire ?? 'fp32', heartbeatTimeoutMs: this.heartbeatTimeoutMs },
    });
    // Not copied: no step runs before every follower is ready, and a follower is ready only once all of this arrived.
    sendRangeState(ws, step, this.weights.subarray(lo, hi), this.velocity.subarray(lo, hi));
    o.log.info({ shard: index, lo, hi }, 'follower shard connected; state sent');
    return (m) => this.onFrame(link, m);
  }

  private onFrame(link: Link, msg: Record<string, unknown>): void {
    link.lastSeen = performance.now();
    try {
      switch (msg.t) {
        case 'shard-ready':
          link.url = field<string>(msg, 'url', 'string');
          if (!/^wss?:\/\//.test(link.url)) throw new ProtocolError('VGG_ERR_SHARD', `shard-ready.url: expected a ws:// URL workers can reach, got ${JSON.stringify(link.url)}`);
          link.ready = true;
          this.urls.set(link.index, link.url);
          this.agg.options.log.info({ shard: link.index, url: link.url }, 'follower shard ready');
          if (this.ready()) this.agg.welcomeWaiting();
          return;
        case 'have':
          link.haves.add(`${field<number>(msg, 'step', 'int')}|${field<number>(msg, 'attempt', 'int')}|${field<string>(msg, 'jobId', 'string')}`);
          this.agg.commitWhenComplete();
          return;
        case 'lost':
          this.agg.dropWorker(field<string>(msg, 'workerId', 'string'));
          return;
        case 'state-chunk':
        case 'state-end': {
          const g = link.gather;
          if (g === undefined) throw new ProtocolError('VGG_ERR_LAYOUT', `${msg.t}: expected after a state-request, got none pending`);
          if (msg.t === 'state-chunk') {
            g.receiver.chunk(msg);
            return;
          }
          g.receiver.end();
          link.gather = undefined;
          g.resolve();
          return;
        }
        default:
          throw new ProtocolError('VGG_ERR_UNKNOWN_TYPE', `shard frame.t: expected shard-ready, have, lost, state-chunk or state-end, got ${JSON.stringify(msg.t)}`);
      }
    } catch (err) {
      this.fail(link, (err as Error).message);
    }
  }

  private fail(link: Link, reason: string): void {
    if (this.links.get(link.index) !== link) return;
    this.links.delete(link.index);
    link.gather?.reject(new Error(`shard ${link.index}/${this.options.count}: ${reason}`));
    link.ws.terminate();
    this.agg.options.log.error({ shard: link.index, reason }, 'follower shard lost');
    this.options.onShardLost(link.index, reason);
  }

  private send(link: Link, msg: ShardMessage): void {
    if (link.ws.readyState === link.ws.OPEN) link.ws.send(encode(msg));
  }

  close(): void {
    clearInterval(this.heartbeat);
    for (const l of this.links.values()) {
      this.links.delete(l.index);
      l.ws.close(1000, 'run over');
    }
  }
}

/** The follower-side check of a `joined` ticket: HMAC of step, worker and job under the leader's per-run secret. */
export function shardTicket(secret: Buffer, step: number, workerId: string, jobId: string): string {
  return createHmac('sha256', secret).update(`${step}|${workerId}|${jobId}`).digest('base64url');
}
