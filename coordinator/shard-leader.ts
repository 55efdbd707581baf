import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { WebSocket } from 'ws';
import type { Logger } from '../shared/logger.ts';
import { shardRange, type FloatRange } from '../shared/shard.ts';
import type { ModelConfig } from '../shared/vgg-configs.ts';
import {
  CHUNK_FLOATS, PROTOCOL_VERSION, ProtocolError, chunkFrame, encode, field, floatsOf, sendChunk, type ShardMessage,
} from '../shared/wire-protocol.ts';

export interface ShardLeaderOptions {
  count: number;
  token: string;
  modelHash: string;
  model: ModelConfig;
  /** The whole flat vector's master weights and momentum; followers' ranges are filled in by gather(). */
  weights: Float32Array;
  velocity: Float32Array;
  sgd: { momentum: number; weightDecay: number };
  /** Run info for the followers' welcomes (wire format, heartbeat). */
  run: Record<string, unknown>;
  heartbeatTimeoutMs: number;
  log: Logger;
  /** A follower's link broke: its range's state is gone, the run cannot go on (resume from the checkpoint). */
  onShardLost: (index: number, reason: string) => void;
  /** All followers ready: welcome the workers that waited. */
  onAllReady: () => void;
  /** A follower reported a complete gradient (a commit may be due). */
  onHave: () => void;
  /** A worker's socket to a follower closed: drop it from the step here too. */
  onWorkerLost: (workerId: string) => void;
}

interface Link {
  index: number;
  ws: WebSocket;
  url: string;
  ready: boolean;
  lastSeen: number;
  /** `${step}|${attempt}|${jobId}` of complete gradients in the current step. */
  haves: Set<string>;
  gather?: { resolve: () => void; reject: (e: Error) => void; next: number };
}

/**
 * The leader's side of a sharded aggregator: shard 0 lives in the coordinator
 * and decides every step (membership, aborts, commits, the ledger); followers
 * own contiguous byte ranges of the flat vector and reduce, update and
 * broadcast only those. A follower is accepted only before the run starts (it
 * is sent its range of the current weights and momentum); a follower lost later
 * stops the run, which then resumes from the last checkpoint (--resume).
 */
export class ShardLeader {
  readonly options: ShardLeaderOptions;
  readonly ranges: FloatRange[];
  readonly links = new Map<number, Link>();
  private readonly secret = randomBytes(32);
  step = 0;
  private started = false;
  private heartbeat?: NodeJS.Timeout;

  constructor(options: ShardLeaderOptions) {
    this.options = options;
    this.ranges = Array.from({ length: options.count }, (_, i) => shardRange(options.weights.length, i, options.count));
    const timeout = options.heartbeatTimeoutMs;
    this.heartbeat = setInterval(() => {
      for (const l of this.links.values()) {
        if (performance.now() - l.lastSeen > timeout) this.fail(l, `silent for ${timeout} ms`);
        else if (l.ws.readyState === l.ws.OPEN) l.ws.ping();
      }
    }, Math.max(10, Math.floor(timeout / 3)));
  }

  shardList(): { index: number; lo: number; hi: number; url: string }[] {
    return this.ranges.map((r, index) => ({ index, ...r, url: index === 0 ? '' : this.links.get(index)?.url ?? '' }));
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

  commit(step: number, attempt: number, jobs: string[], totalSamples: number, learningRate: number): void {
    for (const l of this.links.values()) {
      l.haves.clear();
      this.send(l, { t: 'commit', step, attempt, jobs, totalSamples, learningRate });
    }
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
      l.gather = { resolve, reject, next: 0 };
      this.send(l, { t: 'state-request', step });
    })));
  }

  /** Takes over a socket whose first frame was a `shard-hello`; false if it was not one. */
  accept(ws: WebSocket, msg: Record<string, unknown>): ((msg: Record<string, unknown>) => void) | undefined {
    if (msg.t !== 'shard-hello') return undefined;
    const protocol = field<number>(msg, 'protocol', 'int');
    if (protocol !== PROTOCOL_VERSION) throw new ProtocolError('VGG_ERR_PROTOCOL_VERSION', `shard-hello.protocol: expected ${PROTOCOL_VERSION}, got ${protocol}`);
    const token = Buffer.from(typeof msg.token === 'string' ? msg.token : '');
    const want = Buffer.from(this.options.token);
    if (token.length !== want.length || !timingSafeEqual(token, want)) throw new ProtocolError('VGG_ERR_AUTH', 'shard-hello.token: expected the run token, got a wrong or missing one');
    const shards = field<number>(msg, 'shards', 'int');
    const index = field<number>(msg, 'shard', 'int');
    if (shards !== this.options.count) throw new ProtocolError('VGG_ERR_SHARD', `shard-hello.shards: expected ${this.options.count} (the coordinator's --shards), got ${shards}`);
    if (index < 1 || index >= shards) throw new ProtocolError('VGG_ERR_SHARD', `shard-hello.shard: expected 1..${shards - 1} (shard 0 is the coordinator), got ${index}`);
    if (this.started) throw new ProtocolError('VGG_ERR_SHARD', `shard-hello: expected before the run starts, got shard ${index}/${shards} at step ${this.step} (restart the coordinator with --resume)`);
    if (this.links.has(index)) throw new ProtocolError('VGG_ERR_SHARD', `shard-hello.shard: shard ${index}/${shards} is already connected`);
    const link: Link = { index, ws, url: '', ready: false, lastSeen: performance.now(), haves: new Set() };
    this.links.set(index, link);
    ws.on('pong', () => { link.lastSeen = performance.now(); });
    ws.on('close', () => { if (this.links.get(index) === link) this.fail(link, 'connection closed'); });
    const { lo, hi } = this.ranges[index] as FloatRange;
    this.send(link, {
      t: 'shard-init', step: this.step, lo, hi, modelHash: this.options.modelHash, model: this.options.model as unknown as Record<string, unknown>,
      sgd: { learningRate: 0, ...this.options.sgd }, secret: this.secret.toString('hex'), run: this.options.run,
    });
    this.sendState(link, this.step, lo, hi);
    this.options.log.info({ shard: index, lo, hi }, 'follower shard connected; state sent');
    return (m) => this.onFrame(link, m);
  }

  /** The range [lo, hi) of weights then momentum, as state-chunks (copied: the leader's arrays keep changing). */
  private sendState(link: Link, step: number, lo: number, hi: number): void {
    const n = hi - lo;
    for (let off = 0; off < 2 * n; off += CHUNK_FLOATS) {
      const end = Math.min(2 * n, off + CHUNK_FLOATS);
      const part = new Float32Array(end - off);
      for (let i = off; i < end; i += 1) part[i - off] = i < n ? this.options.weights[lo + i] as number : this.options.velocity[lo + i - n] as number;
      if (link.ws.readyState === link.ws.OPEN) sendChunk(link.ws, chunkFrame('state-chunk', step, off, part));
    }
    this.send(link, { t: 'state-end', step, floats: 2 * n });
  }

  private onFrame(link: Link, msg: Record<string, unknown>): void {
    link.lastSeen = performance.now();
    try {
      switch (msg.t) {
        case 'shard-ready':
          link.url = field<string>(msg, 'url', 'string');
          if (!/^wss?:\/\//.test(link.url)) throw new ProtocolError('VGG_ERR_SHARD', `shard-ready.url: expected a ws:// URL workers can reach, got ${JSON.stringify(link.url)}`);
          link.ready = true;
          this.options.log.info({ shard: link.index, url: link.url }, 'follower shard ready');
          if (this.ready()) this.options.onAllReady();
          return;
        case 'have':
          link.haves.add(`${field<number>(msg, 'step', 'int')}|${field<number>(msg, 'attempt', 'int')}|${field<string>(msg, 'jobId', 'string')}`);
          this.options.onHave();
          return;
        case 'lost':
          this.options.onWorkerLost(field<string>(msg, 'workerId', 'string'));
          return;
        case 'state-chunk': {
          const g = link.gather;
          const offset = field<number>(msg, 'offset', 'int');
          const values = floatsOf(field<Uint8Array>(msg, 'data', 'bytes'));
          const { lo, hi } = this.ranges[link.index] as FloatRange;
          const n = hi - lo;
          if (g === undefined || offset !== g.next || offset + values.length > 2 * n) {
            throw new ProtocolError('VGG_ERR_LAYOUT', `state-chunk: expected offset ${g?.next ?? '(no request)'} within ${2 * n} floats, got ${offset} + ${values.length}`);
          }
          for (let i = 0; i < values.length; i += 1) {
            const k = offset + i;
            if (k < n) this.options.weights[lo + k] = values[i] as number;
            else this.options.velocity[lo + k - n] = values[i] as number;
          }
          g.next = offset + values.length;
          return;
        }
        case 'state-end': {
          const g = link.gather;
          const { lo, hi } = this.ranges[link.index] as FloatRange;
          if (g === undefined || g.next !== 2 * (hi - lo)) throw new ProtocolError('VGG_ERR_LAYOUT', `state-end: expected ${2 * (hi - lo)} floats, got ${g?.next ?? 0}`);
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
    this.options.log.error({ shard: link.index, reason }, 'follower shard lost');
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
