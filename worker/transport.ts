import { EventEmitter } from 'node:events';
import type { Worker } from 'node:worker_threads';
import type { Logger } from '../shared/logger.ts';
import { busyMeter, type Metrics } from '../shared/metrics.ts';
import { boolEnv } from '../shared/option-parsers.ts';
import type { ShardSpec } from '../shared/shard.ts';
import { ProtocolError, type BatchStats, type ClientMessage } from '../shared/wire-protocol.ts';
import { tryArena, type FloatArena } from '../shared/simd.ts';
import { ConnectionLost, nextEvent, weightsOf, type GradientSplit } from './aggregator-client.ts';
import { SEND_ROOM_RESERVE_BYTES, versionReserveBytes } from './arena-rooms.ts';
import { readRanges, type WeightsRange } from './shard-group.ts';
import { tsThread } from './ts-thread.ts';

/**
 * The shortest gradient tensor worth handing to the transport thread (putGradient): 1 MB. A message per
 * smaller one costs more than its copy (tiny models' epochs were ~4% slower with all of them sent).
 */
export const PUT_MIN_FLOATS = 1 << 18;

/**
 * The memory a worker hosting a shard shares between its threads (TransportInit.memory): a page short of 4 GiB,
 * the most one wasm memory holds with a shared pointer. Address space: pages are touched as they are used. A
 * hosting worker of VGG-16 uses ~2.9 GB of it at 2 workers, ~3.7 GB alone (the shard's weights, momentum and sum
 * of the whole vector); what does not fit goes to memory of its own as before.
 */
const HOSTING_MEMORY_FLOATS = 65534 * 16384;

/** What the transport thread is started with (structured-cloneable). */
export interface TransportInit {
  client: { url: string; token: string; workerId: string; host: string; gpu: number | null; backend: string; backoffMs?: number; maxBackoffMs?: number };
  logBindings: Record<string, unknown>;
  /**
   * Aggregator shard i of K hosted by this worker (`worker start --host-shard i/K`, or 'any' free one), on the transport
   * thread: it follows the coordinator at `client.url`, serves the other workers at host:port (or
   * `advertise`), and this worker reaches it in process (shared/local-link.ts).
   */
  hostShard?: { shard: ShardSpec | 'any'; host: string; port: number; advertise?: string };
  /** The hosted shard on a thread of its own (worker/shard-thread.ts), reached over loopback; else on the transport thread, in process. */
  hostShardThread?: boolean;
  /**
   * With hostShard and oneMemory: one shared wasm memory (HOSTING_MEMORY_FLOATS, touched as used) that both threads allocate
   * from through its shared pointer (FloatArena's share.bump): the hosted shard's state, the gradient, the
   * weights versions and the send rooms. The hosted shard then reduces this worker's gradient and this worker
   * decodes the shard's codes without staging them (the SIMD kernels read and write only their own memory).
   */
  memory?: WebAssembly.Memory;
}

export type ToThread =
  | { op: 'call'; id: number; method: 'connect' | 'ready' | 'sendGradient'; args: unknown[] }
  | { op: 'body'; id: number }
  | { op: 'gradient'; buffer: SharedArrayBuffer; offset: number; floats: number; memory?: WebAssembly.Memory; used?: number; inShared?: boolean }
  | { op: 'put'; offset: number; values: Float32Array }
  | { op: 'give-up'; id: number; value: boolean }
  | { op: 'send'; msg: ClientMessage }
  | { op: 'recycle'; buffers: (Float32Array | undefined)[] }
  | { op: 'terminate' }
  | { op: 'close' };

export type FromThread =
  | { op: 'result'; id: number; ok: boolean; value?: unknown; error?: { name: string; code?: string; message: string } }
  | { op: 'weights'; step: number; learningRate: number; parts: WeightsRange[] }
  | { op: 'event'; name: 'reply' | 'disconnected'; value: unknown }
  | { op: 'resend'; step: number; attempt: number }
  | { op: 'started'; step: number; attempt: number }
  | { op: 'give-up?'; id: number; call: number };

/**
 * The worker's link to the aggregator shards, run on a transport thread
 * (worker/transport-thread.ts) so that communication goes on while this thread
 * computes: the same surface and events as ShardGroup ('weights', 'resend',
 * 'reply', 'disconnected'). The gradient lives in `gradient` (shared memory);
 * sendGradient with a split streams [at, end) at once and the rest when told
 * the body is written, the overlap of issue 5.
 */
export class Transport extends EventEmitter {
  /** Write gradients here (shared with the transport thread; see allocateGradient); sendGradient sends from it. */
  gradient: Float32Array<ArrayBufferLike> = new Float32Array(0);
  run?: Record<string, unknown>;
  learningRate = 0;
  weightsStep = -1;
  private isConnected = false;
  private parts: WeightsRange[] = [];
  /** The newest version as one array, when its parts are consecutive ranges of one buffer (several shards). */
  private whole?: Float32Array;
  /**
   * The version the model holds views of (view(), modelWritten()): not given back to the thread
   * when a newer one arrives, only once the model holds a newer one.
   */
  private inModel: WeightsRange[] = [];
  private readonly thread: Worker;
  private nextCall = 1;
  private readonly calls = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; giveUp?: () => Promise<boolean> }>();
  private readonly metrics?: Metrics;
  private readonly hostsShard: boolean;
  /** The memory shared with the thread when hosting a shard (TransportInit.memory). */
  private readonly memory?: FloatArena;
  /** putGradient copies arrays shorter than this here (PUT_MIN_FLOATS unless told otherwise). */
  private readonly putMinFloats: number;
  private exited = false;
  /** The step and attempt of the last gradient send the thread started. */
  private sent?: { step: number; attempt: number };

  /**
   * `oneMemory` (default: `VGG_HOSTED_ONE_MEMORY`, on; `=0` turns it off): with hostShard, the shard's state, the
   * gradient and the weights versions in one memory (TransportInit.memory; hosted 2-worker steps here -17% CPU fp32,
   * -13% bf16). Where that memory cannot be made (4 GiB of address space refused), each has a memory of its own.
   * `shardThread` (default: `VGG_HOSTED_SHARD_THREAD`, off): with hostShard, the shard on a thread of its own
   * (worker/shard-thread.ts): its sockets off this worker's transport thread, its own range over loopback.
   */
  constructor(o: { client: TransportInit['client']; log: Logger; metrics?: Metrics; hostShard?: TransportInit['hostShard']; putMinFloats?: number; oneMemory?: boolean; shardThread?: boolean }) {
    super();
    this.metrics = o.metrics;
    this.putMinFloats = o.putMinFloats ?? PUT_MIN_FLOATS;
    this.hostsShard = o.hostShard !== undefined;
    this.memory = this.hostsShard && (o.oneMemory ?? boolEnv('VGG_HOSTED_ONE_MEMORY', true)) ? tryArena(HOSTING_MEMORY_FLOATS, 1, { shared: true, bump: true }) : undefined;
    const hostShardThread = this.hostsShard && (o.shardThread ?? boolEnv('VGG_HOSTED_SHARD_THREAD', false));
    const init: TransportInit = { client: o.client, logBindings: o.log.bindings(), hostShard: o.hostShard, hostShardThread, ...(this.memory === undefined ? {} : { memory: this.memory.memory }) };
    this.thread = tsThread(new URL('./transport-thread.ts', import.meta.url).href, init);
    this.busyRatio = busyMeter(this.thread.performance.eventLoopUtilization.bind(this.thread.performance));
    this.thread.on('message', (m: FromThread & { sent: number; received: number }) => this.onMessage(m));
    this.thread.on('error', (err) => {
      o.log.error({ err: err.message, stack: err.stack }, 'transport thread failed');
      this.fail(err);
    });
    // Not a lost connection: without its thread the worker cannot talk at all (the job loop's failure count then ends it).
    this.thread.on('exit', () => { this.exited = true; this.fail(new Error('the transport thread exited')); });
  }

  /** The gradient buffer, `floats` long, in memory both threads see (once the model is known). */
  allocateGradient(floats: number): Float32Array<ArrayBufferLike> {
    // A worker hosting a shard takes it from the memory the thread shares (TransportInit.memory) while it has room.
    const hosting = this.memory !== undefined && this.memory.free >= 4 * floats + SEND_ROOM_RESERVE_BYTES ? this.memory.alloc(floats) : undefined;
    if (hosting !== undefined) {
      this.gradient = hosting;
      this.post({ op: 'gradient', buffer: hosting.buffer as SharedArrayBuffer, offset: hosting.byteOffset, floats, inShared: true });
      return hosting;
    }
    // Else in a shared wasm memory (where there is SIMD) that the thread adopts as its FloatArena, with room
    // for the 16-bit send rooms after it: the bf16/fp16 encode reads the gradient and writes the codes
    // in place (0.50 ns a float here, against 0.78 through the encoder's staging room); and room for the
    // weights versions (allowVersionRooms), without it where the whole would pass the 4 GiB of a memory.
    // (Room not used costs address space only: pages are touched on use.)
    const arena = tryArena(floats + (SEND_ROOM_RESERVE_BYTES + versionReserveBytes(floats)) / 4, 1, { shared: true })
      ?? tryArena(floats + SEND_ROOM_RESERVE_BYTES / 4, 1, { shared: true });
    this.gradient = arena?.alloc(floats) ?? new Float32Array(new SharedArrayBuffer(floats * 4));
    this.post({ op: 'gradient', buffer: this.gradient.buffer as SharedArrayBuffer, offset: this.gradient.byteOffset, floats, ...(arena === undefined ? {} : { memory: arena.memory, used: arena.used }) });
    return this.gradient;
  }

  get connected(): boolean {
    return this.isConnected;
  }

  /**
   * The share of the time since the last call (or the thread's start) that the transport thread was
   * busy: its event loop's utilization (sockets, the hosted shard's reduce and update; waiting in the
   * poll is idle). Near 1, the thread is what the step waits for (bench:scaling's model).
   */
  readonly busyRatio: () => number;

  private fail(err: Error): void {
    for (const c of this.calls.values()) c.reject(err);
    this.calls.clear();
    if (this.isConnected) {
      this.isConnected = false;
      this.emit('disconnected');
    }
  }

  private onMessage(m: FromThread & { sent: number; received: number }): void {
    if (m.sent > 0) this.metrics?.sentBytes.inc(m.sent);
    if (m.received > 0) this.metrics?.receivedBytes.inc(m.received);
    switch (m.op) {
      case 'result': {
        const c = this.calls.get(m.id);
        this.calls.delete(m.id);
        if (c === undefined) return;
        if (m.ok) { c.resolve(m.value); return; }
        const e = m.error ?? { name: 'Error', message: 'unknown' };
        c.reject(e.name === 'ConnectionLost' ? new ConnectionLost() : e.code !== undefined ? new ProtocolError(e.code, e.message) : new Error(e.message));
        return;
      }
      case 'give-up?': {
        const ask = this.calls.get(m.call)?.giveUp ?? (async () => true);
        void ask().catch(() => true).then((value) => this.post({ op: 'give-up', id: m.id, value }));
        return;
      }
      case 'weights': {
        // The previous version's buffers go back to be received into again, unless the model holds views of them.
        const old = this.parts;
        this.parts = m.parts;
        this.whole = wholeOf(m.parts);
        this.learningRate = m.learningRate;
        this.weightsStep = m.step;
        if (old !== this.inModel) this.giveBack(old);
        this.emit('weights', m.step);
        return;
      }
      case 'started':
        this.sent = { step: m.step, attempt: m.attempt };
        return;
      case 'resend':
        // A resend the thread took before it started the current send is answered by that send
        // already (it went out as the new attempt): only a later attempt means "send again".
        if (this.sent?.step === m.step && m.attempt > this.sent.attempt) this.emit('resend', m.step);
        return;
      case 'event':
        if (m.name === 'disconnected') {
          if (!this.isConnected) return;
          this.isConnected = false;
        }
        this.emit(m.name, m.value);
    }
  }

  private post(msg: ToThread, transfer: ArrayBuffer[] = []): void {
    if (!this.exited) this.thread.postMessage(msg, transfer);
  }

  private call<T>(method: 'connect' | 'ready' | 'sendGradient', args: unknown[], giveUp?: () => Promise<boolean>): { id: number; done: Promise<T> } {
    const id = this.nextCall++;
    const done = new Promise<T>((resolve, reject) => {
      if (this.exited) { reject(new Error('the transport thread exited')); return; }
      this.calls.set(id, { resolve: resolve as (v: unknown) => void, reject, giveUp });
    });
    this.post({ op: 'call', id, method, args });
    return { id, done };
  }

  /** Connects to shard 0 and the followers it names, retrying until `giveUp` says so (ShardGroup.connect). */
  async connect(giveUp: () => Promise<boolean> = async () => false): Promise<void> {
    this.run = await this.call<Record<string, unknown>>('connect', [], giveUp).done;
    this.weightsStep = -1;
    this.isConnected = true;
  }

  async ready(modelHash: string): Promise<void> {
    await this.call('ready', [modelHash]).done;
  }

  /** Control messages (join, idle) go to shard 0; thrown at once when not connected. */
  send(msg: ClientMessage): void {
    if (!this.isConnected) throw new ConnectionLost();
    this.post({ op: 'send', msg });
  }

  next<T = unknown>(names: string[], filter: (name: string, value: unknown) => boolean = () => true): Promise<{ name: string; value: T }> {
    return nextEvent<T>(this, names, filter);
  }

  waitForWeights(step: number): Promise<void> {
    return weightsOf(this, step);
  }

  /** floats [start, end) of the newest complete weights (a copy). */
  read(start: number, end: number): Float32Array {
    return readRanges(this.parts, start, end);
  }

  /**
   * floats [start, end) of the newest complete weights without a copy where they lie in one shard's
   * range (a copy where they span two). The views stay valid, whatever versions arrive meanwhile,
   * until modelWritten() is called after a newer version was viewed: write the model from view()
   * and call modelWritten() at once (the cpu backend keeps the arrays it is given as the tensors'
   * storage, tfjs-node until their first use).
   */
  view(start: number, end: number): Float32Array {
    if (this.whole !== undefined && end <= this.whole.length) return this.whole.subarray(start, end);
    for (const { lo, hi, weights } of this.parts) {
      if (weights === undefined || start < lo || end > hi) continue;
      if (end - lo <= weights.length) return weights.subarray(start - lo, end - lo);
    }
    return readRanges(this.parts, start, end);
  }

  /** The model now holds the newest version (written from view()): the version it held before goes back to the thread. */
  modelWritten(): void {
    const before = this.inModel;
    this.inModel = this.parts;
    if (before !== this.parts) this.giveBack(before);
  }

  /** Versions given back to the thread so far (giveBack). */
  versionsGivenBack = 0;

  /**
   * A version's buffers, free again, back to the thread to receive into: lent (shared memory, the
   * worker's versions: sharedAlignedFloats), or transferred where they are ArrayBuffers.
   */
  private giveBack(parts: WeightsRange[]): void {
    const buffers = parts.map((p) => p.weights);
    if (!buffers.some((b) => b !== undefined)) return;
    this.versionsGivenBack += 1;
    this.post({ op: 'recycle', buffers }, transferList(buffers));
  }

  /**
   * Has the thread copy a gradient tensor's values into `gradient` at `offset`, so that this thread
   * goes on at once: with tfjs-node the copy of the classifier's 494 MB would otherwise hold back the
   * dispatch of the conv body's backward (the GPU idles until this thread enqueues it). `values` must
   * be an array nobody else reads (tfjs-node's and wasm's dataSync of an op's output hand out a fresh
   * one; the cpu backend's is the tensor's storage): its buffer is transferred (detached here). A view
   * into a larger buffer is copied here instead, and so is an array under 1 MB (PUT_MIN_FLOATS): its
   * message would cost more than its copy. Ordered before the sendGradient and body that follow.
   */
  putGradient(offset: number, values: Float32Array): void {
    const buffer = values.buffer;
    if (offset < 0 || offset + values.length > this.gradient.length) {
      throw new RangeError(`putGradient: expected floats within [0, ${this.gradient.length}), got [${offset}, ${offset + values.length})`);
    }
    if (values.length < this.putMinFloats || this.exited || !(buffer instanceof ArrayBuffer) || values.byteOffset !== 0 || values.byteLength !== buffer.byteLength) {
      this.gradient.set(values, offset);
      return;
    }
    this.post({ op: 'put', offset, values }, [buffer]);
  }

  /**
   * Sends `this.gradient` (every shard its range). With `split`, [split.at, end) goes at once
   * and the rest when `split.body` resolves: write the body's floats before resolving it.
   */
  async sendGradient(step: number, jobId: string, sampleIds: number[], stats: BatchStats, split?: GradientSplit): Promise<void> {
    const { id, done } = this.call('sendGradient', [step, jobId, sampleIds, stats, split?.at ?? null]);
    split?.body.then(() => this.post({ op: 'body', id }), () => this.post({ op: 'terminate' }));
    await done;
  }

  /** Drops every connection (the aggregator takes this worker out of the step). */
  terminate(): void {
    this.post({ op: 'terminate' });
    this.fail(new ConnectionLost());
  }

  /**
   * Leaves cleanly and stops the thread (at once if the close handshakes take over 2 s). A worker
   * hosting a shard keeps serving it until the coordinator ends the run or is lost (no time limit).
   */
  async close(): Promise<void> {
    this.post({ op: 'close' });
    this.isConnected = false;
    if (this.exited) return;
    const exit = new Promise<void>((resolve) => this.thread.once('exit', () => resolve()));
    const timer = this.hostsShard ? undefined : setTimeout(() => { void this.thread.terminate(); }, 2000);
    await exit;
    clearTimeout(timer);
  }
}

/** The ArrayBuffers under `views`, each once (a transfer list names a buffer at most once; shared memory is not transferred). */
export function transferList(views: readonly (ArrayBufferView | undefined)[]): ArrayBuffer[] {
  return [...new Set(views.flatMap((v) => (v === undefined || !(v.buffer instanceof ArrayBuffer) ? [] : [v.buffer])))];
}

/** The parts as one array when they are consecutive ranges [0, end) of one buffer, in order (ShardGroup with several shards). */
function wholeOf(parts: WeightsRange[]): Float32Array | undefined {
  const first = parts[0]?.weights;
  if (parts.length < 2 || first === undefined || parts[0]?.lo !== 0) return undefined;
  let end = 0;
  for (const { lo, hi, weights } of parts) {
    if (weights === undefined || weights.buffer !== first.buffer || lo !== end || weights.length !== hi - lo || weights.byteOffset !== first.byteOffset + 4 * lo) return undefined;
    end = hi;
  }
  return new Float32Array(first.buffer, first.byteOffset, end);
}
