import { EventEmitter } from 'node:events';
import { ProtocolError, field, type BatchStats, type ClientMessage } from '../shared/wire-protocol.ts';
import { AggregatorClient, ConnectionLost, nextEvent, weightsOf, type ClientOptions, type GradientSplit } from './aggregator-client.ts';
import { keepsVersion, ownVersion, versionFloats } from './arena-rooms.ts';
import { alignedFloats } from './host-memory.ts';

interface Part { client: AggregatorClient; lo: number; hi: number }

/** A shard's range [lo, hi) of the flat vector and its weights (hi may be Infinity: one aggregator, the whole vector). */
export interface WeightsRange { lo: number; hi: number; weights?: Float32Array }

/** floats [start, end) of the weights the ranges hold between them (a copy, 64-byte aligned); ConnectionLost if one holds none. */
export function readRanges(ranges: WeightsRange[], start: number, end: number): Float32Array {
  const out = alignedFloats(end - start);
  for (const { lo, hi, weights } of ranges) {
    if (weights === undefined) throw new ConnectionLost();
    const a = Math.max(start, lo);
    const b = Math.min(end, hi, lo + weights.length);
    if (a < b) out.set(weights.subarray(a - lo, b - lo), a - start);
  }
  return out;
}

/**
 * A worker's connections to the aggregator: shard 0 (the coordinator) and,
 * when the run has `--shards K`, the K - 1 follower shards its welcome names.
 * Joins go to shard 0; each shard gets its byte range of the gradient, all in
 * parallel; a weights version is complete when every shard has sent its range
 * for it. Losing any connection drops them all (shard 0 then takes the worker
 * out of the step) and the worker reconnects to every shard.
 * Events: 'weights' (step), 'resend' (step), 'reply' (msg), 'disconnected'.
 */
export class ShardGroup extends EventEmitter {
  readonly options: ClientOptions;
  readonly leader: AggregatorClient;
  private parts: Part[] = [];
  private emittedStep = -1;
  /**
   * With several shards, each version is received into one buffer of the whole vector (each shard's
   * client into its range of it, AggregatorClient.placeWeights), 64-byte aligned: the model then views
   * every tensor in one piece, with none copied out of two shards' ranges (fc6, 74% of VGG-16, spans
   * most shards' ranges), and tfjs-node takes those views as tensor storage without a copy.
   * `total`: the vector's floats (0: one aggregator, clients receive into buffers of their own).
   */
  private total = 0;
  /** Versions being received, or complete and not taken, by step. */
  private readonly versions = new Map<number, Float32Array>();
  /** Whole-vector buffers free again. */
  private readonly free: Float32Array[] = [];

  constructor(options: ClientOptions) {
    super();
    this.options = options;
    this.leader = new AggregatorClient(options);
    this.leader.on('reply', (m) => this.emit('reply', m));
    this.leader.on('resend', (s) => this.emit('resend', s));
    this.leader.on('weights', () => this.onWeights());
    this.leader.on('disconnected', () => this.lost());
  }

  get run(): Record<string, unknown> | undefined { return this.leader.run; }
  get learningRate(): number { return this.leader.learningRate; }
  get shards(): number { return this.parts.length; }

  /** Connects to shard 0, then to the followers it names; retries like AggregatorClient.connect. */
  async connect(giveUp: () => Promise<boolean> = async () => false): Promise<void> {
    for (const p of this.parts) {
      if (p.client === this.leader) continue;
      p.client.removeAllListeners();
      p.client.close();
    }
    this.parts = [];
    this.emittedStep = -1;
    this.releaseVersions(Number.POSITIVE_INFINITY);
    this.total = 0;
    this.leader.placeWeights = undefined;
    await this.leader.connect(giveUp);
    const list = this.leader.run?.shards;
    if (list === undefined) {
      // One aggregator: the whole vector (subarray and the range clamp to its length).
      this.parts = [{ client: this.leader, lo: 0, hi: Number.POSITIVE_INFINITY }];
      return;
    }
    const shards = parseShards(list);
    const total = shards.at(-1)?.hi ?? 0;
    if (this.free.some((b) => b.length !== total)) this.free.length = 0;
    this.total = total;
    const parts: Part[] = [];
    try {
      for (const s of shards) {
        if (s.index === 0) {
          const part = { client: this.leader, lo: s.lo, hi: s.hi };
          this.leader.placeWeights = (step, floats) => this.place(part, step, floats);
          parts.push(part);
          continue;
        }
        const client = new AggregatorClient({ ...this.options, url: s.url });
        const part = { client, lo: s.lo, hi: s.hi };
        client.placeWeights = (step, floats) => this.place(part, step, floats);
        client.on('reply', (m: { t?: string }) => { if (m.t === 'error') this.emit('reply', m); });
        client.on('weights', () => this.onWeights());
        client.on('disconnected', () => { if (this.parts.some((p) => p.client === client)) this.lost(); });
        parts.push(part);
        await client.connect(giveUp);
      }
    } catch (err) {
      for (const p of parts) {
        if (p.client !== this.leader) p.client.removeAllListeners();
        p.client.terminate();
      }
      this.leader.terminate();
      throw err instanceof ProtocolError ? err : new ConnectionLost();
    }
    this.parts = parts;
  }

  /** Sends `ready` to every shard and waits for each one's weights (or an error reply). */
  async ready(modelHash: string): Promise<void> {
    await Promise.all(this.parts.map(async ({ client }) => {
      const answer = client.next(['weights', 'reply']);
      client.send({ t: 'ready', modelHash });
      const { name, value } = await answer;
      const v = value as { t?: string; code?: string; message?: string };
      if (name === 'reply' && v.t === 'error') throw new ProtocolError(String(v.code), String(v.message));
    }));
  }

  /** The step of the weights every shard has sent (-1 while they differ). */
  get weightsStep(): number {
    let step: number | undefined;
    for (const { client } of this.parts) {
      if (step === undefined) step = client.weightsStep;
      else if (client.weightsStep !== step) return -1;
    }
    return step ?? -1;
  }

  private onWeights(): void {
    const s = this.weightsStep;
    if (s > this.emittedStep) {
      this.emittedStep = s;
      // Every shard holds step s now: older versions not taken (or never completed) are free again.
      this.releaseVersions(s);
      this.emit('weights', s);
    }
  }

  /**
   * A shard's range of version `step` in that version's buffer of the whole vector; undefined (the client
   * then receives into a buffer of its own) for a step already handed over, or one this client holds
   * complete already (a broadcast of it again, as after a coordinator's --resume): that buffer's range
   * holds weights someone may read, or is gone to the main thread.
   */
  private place(part: Part, step: number, floats: number): Float32Array | undefined {
    if (floats !== part.hi - part.lo) {
      throw new ProtocolError('VGG_ERR_LAYOUT', `weights-begin.totalFloats: expected ${part.hi - part.lo} (the shard's range [${part.lo}, ${part.hi})), got ${floats}`);
    }
    if (step <= this.emittedStep || part.client.weightsStep >= step) return undefined;
    let whole = this.versions.get(step);
    if (whole === undefined) {
      whole = this.free.pop() ?? versionFloats(this.total);
      this.versions.set(step, whole);
    }
    return whole.subarray(part.lo, part.hi);
  }

  /** Versions before `step` back to the free list (no client holds them: each holds `step` or is past it). */
  private releaseVersions(step: number): void {
    for (const [s, whole] of this.versions) {
      if (s >= step) continue;
      this.versions.delete(s);
      if (keepsVersion(whole)) this.free.push(whole);
    }
  }

  private lost(): void {
    for (const p of this.parts) p.client.terminate();
    this.emit('disconnected');
  }

  get connected(): boolean {
    return this.parts.length > 0 && this.parts.every((p) => p.client.connected);
  }

  /** Control messages (join, idle) go to shard 0. */
  send(msg: ClientMessage): void {
    this.leader.send(msg);
  }

  /**
   * Each shard's newest weights and its range, handed over (see AggregatorClient.takeWeights); with
   * several shards, views of one buffer of the whole vector.
   */
  takeWeights(): WeightsRange[] {
    if (this.total > 0) this.versions.delete(this.emittedStep);
    return this.parts.map(({ client, lo, hi }) => ({ lo, hi, weights: client.takeWeights() }));
  }

  /** Buffers handed over by takeWeights, free again, in the same shard order. */
  recycle(buffers: (Float32Array | undefined)[]): void {
    if (this.total === 0) {
      buffers.forEach((b, i) => { if (b !== undefined) this.parts[i]?.client.recycle(b); });
      return;
    }
    // One version's views of its whole-vector buffer (shard 0's range starts it): the buffer is free again.
    const first = buffers[0];
    if (first === undefined || first.byteOffset + 4 * this.total > first.buffer.byteLength) return;
    const whole = ownVersion(new Float32Array(first.buffer, first.byteOffset, this.total));
    if (keepsVersion(whole)) this.free.push(whole);
  }

  /** floats [start, end) of the complete weights, copied out of the shards' buffers. */
  read(start: number, end: number): Float32Array {
    return readRanges(this.parts.map(({ client, lo, hi }) => ({ lo, hi, weights: client.weights })), start, end);
  }

  /** Resolves with the next event among `names` (or rejects when a connection drops). */
  next<T = unknown>(names: string[], filter: (name: string, value: unknown) => boolean = () => true): Promise<{ name: string; value: T }> {
    return nextEvent<T>(this, names, filter);
  }

  /** Waits until every shard has sent weights of at least `step`, all of the same step. */
  waitForWeights(step: number): Promise<void> {
    return weightsOf(this, step);
  }

  /**
   * Each shard's range of the gradient, in parallel, with the step's attempt and ticket from
   * shard 0. With `split`, [split.at, end) first: a shard whose range lies above it sends at
   * once, one below it once `split.body` resolves, one across it in two parts.
   */
  async sendGradient(step: number, jobId: string, sampleIds: number[], stats: BatchStats, flat: Float32Array, split?: GradientSplit): Promise<void> {
    const admit = { attempt: this.leader.attempt, ...(this.leader.ticket === undefined ? {} : { ticket: this.leader.ticket }) };
    await Promise.all(this.parts.map(async ({ client, lo, hi }) => {
      const range = flat.subarray(lo, hi);
      const end = lo + range.length;
      // An empty range (shard 0 when the workers host the shards) goes at once: its begin seals the step at the leader (early commit).
      if (split === undefined || split.at <= lo || hi === lo) return client.sendGradient(step, jobId, sampleIds, stats, range, admit);
      if (split.at >= end) {
        await split.body;
        return client.sendGradient(step, jobId, sampleIds, stats, range, admit);
      }
      return client.sendGradient(step, jobId, sampleIds, stats, range, admit, { at: split.at - lo, body: split.body });
    }));
  }

  terminate(): void {
    for (const p of this.parts) p.client.terminate();
    if (this.parts.length === 0) this.leader.terminate();
  }

  close(): void {
    for (const p of this.parts) p.client.close();
    if (this.parts.length === 0) this.leader.close();
  }
}

/** The welcome's `run.shards`: [{index, lo, hi, url}], contiguous from 0, shard 0 first. */
function parseShards(raw: unknown): { index: number; lo: number; hi: number; url: string }[] {
  if (!Array.isArray(raw) || raw.length === 0) throw new ProtocolError('VGG_ERR_FRAME_FIELD', `welcome.run.shards: expected a list of shards, got ${JSON.stringify(raw)}`);
  let end = 0;
  return raw.map((s: Record<string, unknown>, i) => {
    const t = { ...s, t: 'welcome.run.shards' };
    const shard = { index: field<number>(t, 'index', 'int'), lo: field<number>(t, 'lo', 'int'), hi: field<number>(t, 'hi', 'int'), url: field<string>(t, 'url', 'string') };
    if (shard.index !== i || shard.lo !== end || shard.hi < shard.lo || (i > 0 && !/^wss?:\/\//.test(shard.url))) {
      throw new ProtocolError('VGG_ERR_FRAME_FIELD', `welcome.run.shards[${i}]: expected shard ${i} from float ${end} with a ws:// URL, got ${JSON.stringify(s)}`);
    }
    end = shard.hi;
    return shard;
  });
}
