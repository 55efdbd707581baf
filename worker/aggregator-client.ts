import { EventEmitter } from 'node:events';
import WebSocket from 'ws';
import { Backoff, sleep } from '../shared/backoff.ts';
import { gatherFrames } from '../shared/frame-slot.ts';
import { connectLocal } from '../shared/local-link.ts';
import { readIntoOneBuffer } from '../shared/socket-reads.ts';
import { advance, complete, runEnd, startAt, type SplitCursor } from '../shared/split-order.ts';
import type { Logger } from '../shared/logger.ts';
import { WIRE_FORMATS, encode16, wireBytes, type WireFormat } from '../shared/half.ts';
import type { Metrics } from '../shared/metrics.ts';
import { HIGH_WATER_BYTES, LOW_WATER_BYTES, SEND_ROOMS, codeRoom, decodeWeights, keepsVersion, ownVersion, sendRoomFor, versionFloats } from './arena-rooms.ts';
import { copyFloats } from './host-memory.ts';
import {
  CHUNK_FLOATS, CHUNK_MESSAGE_BYTES, MAX_PAYLOAD_BYTES, PROTOCOL_VERSION, ProtocolError, chunkFrame, chunkHeadOf, chunkMessage, decodeFragments, encode, field, fragmentBytes, sendChunk, valuesOf,
  type BatchStats, type ClientMessage,
} from '../shared/wire-protocol.ts';

export interface ClientOptions {
  url: string;
  token: string;
  workerId: string;
  host: string;
  gpu: number | null;
  backend: string;
  log: Logger;
  /** First reconnect delay; doubles up to maxBackoffMs. @defaultValue 200 */
  backoffMs?: number;
  /** @defaultValue 5000 */
  maxBackoffMs?: number;
  /** Bytes in and out are counted here when given. */
  metrics?: Metrics;
}

/**
 * The next of `names` that `source` emits and `filter` accepts; rejects with
 * ConnectionLost on 'disconnected', or at once when it is not connected.
 */
export function nextEvent<T>(source: EventEmitter & { readonly connected: boolean }, names: string[], filter: (name: string, value: unknown) => boolean): Promise<{ name: string; value: T }> {
  return new Promise((resolve, reject) => {
    const handlers = new Map<string, (v: unknown) => void>();
    const cleanup = () => { for (const [n, h] of handlers) source.off(n, h); source.off('disconnected', lost); };
    const lost = () => { cleanup(); reject(new ConnectionLost()); };
    for (const name of names) {
      const h = (value: unknown) => { if (filter(name, value)) { cleanup(); resolve({ name, value: value as T }); } };
      handlers.set(name, h);
      source.on(name, h);
    }
    source.on('disconnected', lost);
    if (!source.connected) lost();
  });
}

/** Resolves once `source` holds weights of at least `step` (its 'weights' events carry the step). */
export async function weightsOf(source: EventEmitter & { readonly connected: boolean; readonly weightsStep: number }, step: number): Promise<void> {
  if (source.weightsStep >= step) return;
  await nextEvent(source, ['weights'], (_n, s) => (s as number) >= step);
}

/** A gradient sent in two parts: [at, end) at once, [0, at) when `body` resolves. */
export interface GradientSplit { at: number; body: Promise<void> }

/** Why a wait ended without the expected answer. */
export class ConnectionLost extends Error {
  constructor() {
    super('connection to the aggregator lost');
  }
}

/**
 * The worker's end of the all-reduce: handshake, receiving weight versions,
 * join / idle / gradient streaming, reconnect with exponential backoff.
 * Events: 'weights' (step), 'welcome' (run info), 'resend' (step), 'reply' (msg), 'disconnected'.
 */
export class AggregatorClient extends EventEmitter {
  readonly options: ClientOptions;
  /** The newest complete weights and their step. */
  weights?: Float32Array;
  weightsStep = -1;
  learningRate = 0;
  run?: Record<string, unknown>;
  /** The coordinator's model hash, from the welcome. */
  modelHash = '';
  /** Values on the wire, from the welcome's run info (`--wire`). */
  wire: WireFormat = 'fp32';
  private ws?: WebSocket;
  private lastSeen = 0;
  /**
   * The weights being assembled, in the order of shared/split-order.ts (an early stream follows
   * the gradients' order; a plain broadcast has split 0).
   */
  private incoming?: SplitCursor & { step: number; buf: Float32Array };
  /** Weights chunks whose floats ws gathered straight into place (see weightsRoom). */
  gatheredInPlace = 0;
  /** 16-bit weights chunks whose codes ws gathered into room16. */
  gatheredCodes = 0;
  /** Where a 16-bit weights chunk's codes are gathered (one socket, one frame at a time, decoded at once). */
  private room16?: Uint8Array;
  private stopped = false;
  /** Where bytes in and out are counted: the options' metrics, none over an in-process link. */
  private wireMetrics?: Metrics;
  /** Connected through the in-process link (to the shard this worker hosts). */
  private local = false;
  /** Gradient message buffers free again (their send was written to the socket), reused by sendRange. */
  private readonly sendRooms: Buffer[] = [];
  /**
   * Where this client receives a version of its range (floats, of `step`): set by a ShardGroup of
   * several shards, which puts every shard's range of a version in one buffer so that the model views
   * any tensor in one piece; unset, or where it answers undefined, the client receives into a buffer
   * of its own. May throw a ProtocolError.
   */
  placeWeights?: (step: number, floats: number) => Float32Array | undefined;
  /** The current step's attempt (0 after `joined`, then the last `resend`'s) and the ticket of the `joined`. */
  attempt = 0;
  ticket?: string;

  constructor(options: ClientOptions) {
    super();
    this.options = options;
  }

  /** Connects, retrying with backoff until the welcome arrives or `giveUp` says so. */
  async connect(giveUp: () => Promise<boolean> = async () => false): Promise<void> {
    const backoff = new Backoff(this.options.backoffMs ?? 200, Math.max(this.options.backoffMs ?? 200, this.options.maxBackoffMs ?? 5000));
    while (!this.stopped && !(await giveUp())) {
      try {
        await this.open();
        return;
      } catch (err) {
        if (err instanceof ProtocolError) throw err;
        const retryMs = backoff.next();
        this.options.log.warn({ url: this.options.url, err: (err as Error).message, retryMs }, 'aggregator unreachable; retrying');
        await sleep(retryMs);
      }
    }
    throw new ConnectionLost();
  }

  private open(): Promise<void> {
    return new Promise((resolve, reject) => {
      // An all-zero mask lets ws send tensor bytes without masking them into a copy. Masking
      // protects HTTP intermediaries from browser-made payloads; a worker is not a browser.
      // A shard this process hosts (worker start --host-shard) is reached in process, not over a socket.
      const local = connectLocal(this.options.url);
      // Bytes through the in-process link are not network traffic: not counted.
      this.wireMetrics = local === undefined ? this.options.metrics : undefined;
      this.local = local !== undefined;
      const ws = (local as unknown as WebSocket | undefined)
        ?? new WebSocket(this.options.url, { maxPayload: MAX_PAYLOAD_BYTES, perMessageDeflate: false, generateMask: (mask: Buffer) => { mask.fill(0); } });
      // Messages arrive as their fragments (a weights chunk's floats are not concatenated with its
      // head), and a weights chunk's floats are gathered by ws straight into the buffer being assembled.
      ws.binaryType = 'fragments';
      let welcomed = false;
      let silence: NodeJS.Timeout | undefined;
      ws.on('error', (err) => { if (!welcomed) reject(err); else this.options.log.warn({ err: err.message }, 'aggregator socket error'); });
      ws.on('open', () => {
        this.ws = ws;
        if (gatherFrames(ws, 64 * 1024, (n, previous) => this.weightsRoom(n, previous))) readIntoOneBuffer(ws);
        this.send({
          t: 'hello', protocol: PROTOCOL_VERSION, token: this.options.token,
          workerId: this.options.workerId, host: this.options.host, gpu: this.options.gpu, backend: this.options.backend,
        });
      });
      ws.on('ping', () => { this.lastSeen = performance.now(); });
      ws.on('message', (parts: Buffer[]) => {
        this.lastSeen = performance.now();
        this.wireMetrics?.receivedBytes.inc(fragmentBytes(parts));
        try {
          const msg = decodeFragments(parts);
          if (welcomed) this.onMessage(msg);
          else if (msg.t === 'error') reject(new ProtocolError(String(msg.code), String(msg.message)));
          else if (msg.t === 'welcome') {
            this.run = field<Record<string, unknown>>(msg, 'run', 'object');
            this.modelHash = field<string>(msg, 'modelHash', 'string');
            const wire = this.run.wire ?? 'fp32';
            if (!(WIRE_FORMATS as readonly unknown[]).includes(wire)) throw new ProtocolError('VGG_ERR_FRAME_FIELD', `welcome.run.wire: expected one of ${WIRE_FORMATS.join(', ')}, got ${JSON.stringify(wire)}`);
            this.wire = wire as WireFormat;
            welcomed = true;
            silence = this.watchSilence(ws, Number(this.run.heartbeatTimeoutMs) || 30_000);
            this.emit('welcome', this.run);
            resolve();
          } else this.options.log.warn({ t: msg.t }, 'frame before welcome ignored');
        } catch (err) {
          // A broken frame from the aggregator: this connection cannot be trusted; reconnect.
          this.options.log.warn({ code: (err as ProtocolError).code, err: (err as Error).message }, 'bad frame from the aggregator; reconnecting');
          ws.terminate();
        }
      });
      ws.on('close', () => {
        clearInterval(silence);
        if (this.ws === ws) this.ws = undefined;
        this.incoming = undefined;
        if (!welcomed) reject(new Error('closed before welcome'));
        else this.emit('disconnected');
      });
    });
  }

  /** The aggregator pings every third of its heartbeat timeout; silence for the whole timeout means it is gone. */
  private watchSilence(ws: WebSocket, timeoutMs: number): NodeJS.Timeout {
    this.lastSeen = performance.now();
    return setInterval(() => {
      if (performance.now() - this.lastSeen <= timeoutMs) return;
      this.options.log.warn({ silentMs: Math.round(performance.now() - this.lastSeen) }, 'aggregator silent; reconnecting');
      ws.terminate();
    }, Math.max(10, Math.floor(timeoutMs / 3)));
  }

  /**
   * Where ws should gather a frame of `n` bytes that continues the fragment `previous`: the floats of
   * the fp32 weights chunk the assembly expects next go straight to their place in it (one copy from
   * the socket instead of three); a 16-bit one's codes into one reused room, decoded into place by
   * onMessage while its message is handled. Anything else (another chunk, a bad head) is left to
   * ws and checked by onMessage as before.
   */
  private weightsRoom(n: number, previous: Buffer | undefined): Uint8Array | undefined {
    const inc = this.incoming;
    const size = this.wire === 'fp32' ? 4 : 2;
    if (previous === undefined || inc === undefined || n % size !== 0) return undefined;
    const head = chunkHeadOf(previous);
    if (head === undefined || head.bytes !== n || head.msg.t !== 'weights-chunk' || head.msg.step !== inc.step || head.msg.offset !== inc.next
      || inc.next + n / size > runEnd(inc, inc.buf.length)) return undefined;
    if (size === 2) {
      if (n > CHUNK_FLOATS * 2) return undefined;
      this.gatheredCodes += 1;
      this.room16 = codeRoom(this.room16);
      return this.room16.subarray(0, n);
    }
    this.gatheredInPlace += 1;
    return new Uint8Array(inc.buf.buffer, inc.buf.byteOffset + 4 * inc.next, n);
  }

  /** Frames after the welcome; malformed ones throw a ProtocolError (the caller drops the connection). */
  private onMessage(msg: Record<string, unknown>): void {
    switch (msg.t) {
      case 'weights-begin': {
        // A second begin of a step restarts it (an early stream of an aborted attempt is void).
        const n = field<number>(msg, 'totalFloats', 'int');
        const split = msg.split === undefined ? 0 : field<number>(msg, 'split', 'int');
        if (split < 0 || (split > 0 && split >= n)) throw new ProtocolError('VGG_ERR_LAYOUT', `weights-begin.split: expected 0..${n - 1}, got ${split}`);
        const step = field<number>(msg, 'step', 'int');
        // (An interrupted version's buffer is reused only if it is this client's own: a placed one is the group's.)
        const buf = this.placeWeights === undefined
          ? (this.incoming?.buf.length === n ? this.incoming.buf : this.scratch(n))
          : this.placeWeights(step, n) ?? this.scratch(n);
        this.incoming = { step, buf, ...startAt(split) };
        this.learningRate = field<number>(msg, 'learningRate', 'number');
        return;
      }
      case 'weights-chunk': {
        const inc = this.incoming;
        const raw = field<Uint8Array>(msg, 'data', 'bytes');
        if (inc === undefined || msg.step !== inc.step || msg.offset !== inc.next) return;
        // 16-bit codes are decoded straight into place; fp32 values are there already (weightsRoom) or copied there.
        const data = valuesOf(raw, this.wire, inc.buf.subarray(inc.next, inc.next + CHUNK_FLOATS), decodeWeights);
        const end = runEnd(inc, inc.buf.length);
        if (inc.next + data.length > end) {
          throw new ProtocolError('VGG_ERR_LAYOUT', `weights-chunk at ${inc.next}: expected at most ${end - inc.next} floats, got ${data.length}`);
        }
        if (data.buffer !== inc.buf.buffer || data.byteOffset !== inc.buf.byteOffset + 4 * inc.next) copyFloats(inc.buf, inc.next, data);
        advance(inc, data.length, inc.buf.length);
        return;
      }
      case 'weights-end': {
        const inc = this.incoming;
        if (inc === undefined || !complete(inc, inc.buf.length)) return;
        if (msg.learningRate !== undefined) this.learningRate = field<number>(msg, 'learningRate', 'number');
        this.incoming = undefined;
        const previous = this.weights;
        this.weights = inc.buf;
        // (A placed version's buffer is the group's to reuse.)
        if (this.placeWeights === undefined && previous !== undefined && keepsVersion(previous)) this.spare = previous;
        this.weightsStep = inc.step;
        this.emit('weights', inc.step);
        return;
      }
      case 'resend':
        this.attempt = typeof msg.attempt === 'number' ? msg.attempt : this.attempt + 1;
        this.emit('resend', msg.step);
        return;
      case 'joined':
        this.attempt = typeof msg.attempt === 'number' ? msg.attempt : 0;
        this.ticket = typeof msg.ticket === 'string' ? msg.ticket : undefined;
        this.emit('reply', msg);
        return;
      default:
        this.emit('reply', msg);
    }
  }

  private spare?: Float32Array;

  /** Hands over the newest weights (the client no longer touches them; a later version gets a new buffer). */
  takeWeights(): Float32Array | undefined {
    const w = this.weights;
    this.weights = undefined;
    return w;
  }

  /** A buffer handed over before, free again: the next weights version is received into it. */
  recycle(buf: Float32Array): void {
    const own = ownVersion(buf);
    if ((this.spare === undefined || this.spare.length === 0) && keepsVersion(own)) this.spare = own;
  }

  /**
   * Reuses the previous weights buffer for the next version: no allocation per step. A new one starts
   * at a 64-byte boundary, so tfjs-node takes the model's views of it as tensor storage without a copy.
   */
  private scratch(n: number): Float32Array {
    const s = this.spare;
    this.spare = undefined;
    return s !== undefined && s.length === n ? s : versionFloats(n);
  }

  get connected(): boolean {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  send(msg: ClientMessage): void {
    if (this.ws?.readyState !== WebSocket.OPEN) throw new ConnectionLost();
    this.ws.send(encode(msg));
  }

  /** Resolves with the next event among `names` (or rejects when the connection drops). */
  next<T = unknown>(names: string[], filter: (name: string, value: unknown) => boolean = () => true): Promise<{ name: string; value: T }> {
    return nextEvent<T>(this, names, filter);
  }

  /** Waits until weights of at least `step` have arrived. */
  waitForWeights(step: number): Promise<void> {
    return weightsOf(this, step);
  }

  /**
   * Streams a flat gradient in chunks with backpressure. With `split`, floats [split.at, end)
   * go first and [0, split.at) once `split.body` resolves (the classifier's gradients, at the
   * end of the layout, are on the wire while the conv body's are still being computed).
   */
  async sendGradient(step: number, jobId: string, sampleIds: number[], stats: BatchStats, flat: Float32Array, admit: { attempt?: number; ticket?: string } = {},
    split?: GradientSplit): Promise<void> {
    const at = split?.at ?? 0;
    // To the shard this worker hosts, a bf16 run's floats go as they are (no encode; the shard rounds them as it would).
    const fp32Values = this.local && this.wire === 'bf16';
    this.send({ t: 'grad-begin', step, jobId, sampleIds, stats, totalFloats: flat.length, ...admit, ...(at > 0 ? { split: at } : {}), ...(fp32Values ? { values: 'fp32' as const } : {}) });
    await this.sendRange(step, flat, at, flat.length, fp32Values);
    if (at > 0) {
      await split?.body;
      await this.sendRange(step, flat, 0, at, fp32Values);
    }
    this.send({ t: 'grad-end', step });
  }

  private async sendRange(step: number, flat: Float32Array, lo: number, hi: number, fp32Values: boolean): Promise<void> {
    for (let offset = lo; offset < hi; offset += CHUNK_FLOATS) {
      const ws = this.ws;
      if (ws === undefined) throw new ConnectionLost();
      if (ws.bufferedAmount > HIGH_WATER_BYTES) {
        while (ws.bufferedAmount > LOW_WATER_BYTES && ws.readyState === WebSocket.OPEN) await new Promise((r) => setTimeout(r, 1));
      }
      if (ws.readyState !== WebSocket.OPEN) throw new ConnectionLost();
      const part = flat.subarray(offset, Math.min(hi, offset + CHUNK_FLOATS));
      const wire = this.wire;
      if (wire === 'fp32' || fp32Values) {
        // The head, then the floats where they are, as the message's second fragment (no copy): the
        // aggregator gathers that fragment straight into its arena. The gradient is not written again
        // before the step's weights arrive, and they come only after every chunk was received.
        const frame = chunkFrame('grad-chunk', step, offset, part);
        sendChunk(ws, frame);
        this.wireMetrics?.sentBytes.inc(frame[0].length + frame[1].length);
        continue;
      }
      // 16-bit: one message per chunk, encoded into a buffer whose last send was written to the socket
      // (no fresh pages to fault in per chunk): see chunkMessage.
      const room = this.sendRooms.pop() ?? sendRoomFor(flat);
      const frame = chunkMessage('grad-chunk', step, offset, part.length * wireBytes(wire),
        (body) => encode16(wire, part, new Uint16Array(body.buffer, body.byteOffset, part.length)), room);
      ws.send(frame, () => { if (this.sendRooms.length < SEND_ROOMS) this.sendRooms.push(room); });
      this.wireMetrics?.sentBytes.inc(frame.length);
    }
  }

  close(): void {
    this.stopped = true;
    this.ws?.close(1000, 'worker leaving');
  }

  /** For tests: drop the connection without a close frame. */
  terminate(): void {
    this.ws?.terminate();
  }
}
