import { timingSafeEqual } from 'node:crypto';
import { Packr } from 'msgpackr';
import { VggError } from './errors.ts';
import { decode16, type WireFormat } from './half.ts';

/** Bumped on any incompatible change of the messages below. */
export const PROTOCOL_VERSION = 1;

/** Floats per tensor chunk: 1 Mi floats = 4 MiB, inside the measured 4-16 MiB sweet spot. */
export const CHUNK_FLOATS = 1 << 20;

/** ws maxPayload on both ends: a chunk plus its header, with room to spare. */
export const MAX_PAYLOAD_BYTES = 8 * CHUNK_FLOATS + 64 * 1024;

/** Metrics of one member's batch, sent with its gradient. */
export interface BatchStats { samples: number; loss: number; top1: number; top5: number; skipped: number }

export type ClientMessage =
  | { t: 'hello'; protocol: number; token: string; workerId: string; host: string; gpu: number | null; backend: string }
  /** Sent after `welcome`, once the worker has built the model named in the run info. */
  | { t: 'ready'; modelHash: string }
  /** I hold a job and will contribute to `step` (the version of my weights). */
  | { t: 'join'; step: number; jobId: string; lockToken: string }
  /** I have no job; do not wait for me. */
  | { t: 'idle'; step: number }
  /**
   * `attempt`: the step's attempt (0, then the number of the last `resend`); `ticket`: the
   * leader's from `joined`. Both only matter to follower shards (`aggregator start --shard`).
   * `split` (default 0): the chunks cover [split, totalFloats) in order, then [0, split), so the
   * classifier's gradients (ready first, at the end of the layout) can go out first.
   */
  | { t: 'grad-begin'; step: number; jobId: string; sampleIds: number[]; stats: BatchStats; totalFloats: number; attempt?: number; ticket?: string; split?: number; values?: 'fp32' }
  | { t: 'grad-chunk'; step: number; offset: number; data: Uint8Array }
  | { t: 'grad-end'; step: number };

export type ServerMessage =
  | { t: 'welcome'; memberId: number; step: number; modelHash: string; run: Record<string, unknown> }
  | { t: 'weights-begin'; step: number; totalFloats: number; learningRate: number; split?: number }
  | { t: 'weights-chunk'; step: number; offset: number; data: Uint8Array }
  | { t: 'weights-end'; step: number; learningRate?: number }
  /** Your join/gradient is for an older step; new weights follow or came already. */
  | { t: 'stale'; step: number }
  /** A member was lost mid-step: send your gradient for `step` again, as attempt `attempt`. */
  | { t: 'resend'; step: number; attempt: number }
  /** Accepted: you are expected in `step`; with shards, `ticket` admits the gradient at the followers. */
  | { t: 'joined'; step: number; attempt: number; ticket?: string }
  | { t: 'error'; code: string; message: string };

/**
 * Between a follower shard (`aggregator start --shard i/K`) and the leader (shard 0, in the
 * coordinator). Follower to leader: shard-hello, shard-ready, have (a complete gradient for
 * step/attempt arrived), lost (a worker's socket closed), state-chunk/state-end (its range of
 * weights and momentum, when asked). Leader to follower: shard-init + state-chunk/state-end (the
 * range to start from), commit, abort, state-request. See docs/PROTOCOL.md.
 */
export type ShardMessage =
  | { t: 'shard-hello'; protocol: number; token: string; shard: number; shards: number }
  | { t: 'shard-init'; shard: number; shards: number; step: number; lo: number; hi: number; modelHash: string; model: Record<string, unknown>; sgd: { learningRate: number; momentum: number; weightDecay: number }; secret: string; run: Record<string, unknown> }
  | { t: 'shard-ready'; url: string }
  | { t: 'have'; step: number; attempt: number; jobId: string }
  | { t: 'lost'; workerId: string }
  | { t: 'roster'; step: number; attempt: number; jobs: string[]; totalSamples: number; divisor: number; learningRate: number }
  | { t: 'commit'; step: number; attempt: number; jobs: string[]; totalSamples: number; divisor: number; learningRate: number }
  | { t: 'abort'; step: number; attempt: number }
  | { t: 'state-request'; step: number }
  | { t: 'state-end'; step: number; floats: number };

/** A frame that fails validation. The code is stable; the message says what was expected and what came. */
export class ProtocolError extends VggError {
  constructor(code: string, message: string) {
    super(code, message);
  }
}

const packr = new Packr({ useRecords: false, moreTypes: false });

export function encode(message: ClientMessage | ServerMessage | ShardMessage): Buffer {
  return packr.pack(message);
}

/**
 * A tensor chunk without copying the floats: a msgpack map
 * `{t, step, offset, pad, data}` split into its head (everything up to and
 * including data's bin32 header) and the floats' own bytes. `pad` makes the head
 * a multiple of 8 bytes, so the floats start aligned in the received frame and
 * decode as a zero-copy Float32Array view. Send the two parts as one WebSocket
 * message in two fragments (sendChunk). Decoding is plain msgpack.
 */
export function chunkFrame(t: ChunkType, step: number, offset: number, floats: Float32Array | Uint16Array): [Buffer, Uint8Array] {
  return [chunkHead(t, step, offset, floats.byteLength), bytesOf(floats)];
}

type ChunkType = 'grad-chunk' | 'weights-chunk' | 'state-chunk';

/**
 * A chunk as one buffer, its values written by `fill` into `body` (8-byte aligned),
 * sent as a single-fragment message. For values that must be converted anyway:
 * workers use it for 16-bit gradients (fp32 ones go as chunkFrame's two fragments,
 * which the aggregator takes as fragments: no concatenation, no copy at the sender).
 */
export function chunkMessage(t: ChunkType, step: number, offset: number, bodyBytes: number, fill: (body: Uint8Array) => void, room?: Buffer): Buffer {
  const head = chunkHead(t, step, offset, bodyBytes);
  // `room`: a buffer to reuse (if large enough: CHUNK_MESSAGE_BYTES for 16-bit chunks), else a fresh one.
  const frame = room !== undefined && room.length >= head.length + bodyBytes ? room.subarray(0, head.length + bodyBytes) : Buffer.allocUnsafeSlow(head.length + bodyBytes);
  head.copy(frame, 0);
  fill(frame.subarray(head.length));
  return frame;
}

/** Room for a chunkMessage of up to CHUNK_FLOATS 16-bit values (its head is well under 256 bytes); fp32 chunks go as two fragments (chunkFrame). */
export const CHUNK_MESSAGE_BYTES = CHUNK_FLOATS * 2 + 256;

/** A chunk head's last entry without its bytes: the key "data" as a fixstr (5 bytes) and a bin32 header (5 bytes). */
const DATA_ENTRY_BYTES = 10;

function chunkHead(t: ChunkType, step: number, offset: number, byteLength: number): Buffer {
  const head = packr.pack({ t, step, offset, pad: '' });
  // head is a map of 4 entries ending with the empty fixstr; then the data entry.
  const padLength = (8 - ((head.length + DATA_ENTRY_BYTES) % 8)) % 8;
  const out = Buffer.allocUnsafe(head.length + padLength + DATA_ENTRY_BYTES);
  head.copy(out, 0);
  // One more entry in the map header (msgpackr writes objects as map16; a fixmap is handled too).
  if (out[0] === 0xde) out.writeUInt16BE(5, 1);
  else if (out[0] === 0x84) out[0] = 0x85;
  else throw new Error(`chunkFrame: unexpected msgpack map header 0x${out[0]?.toString(16)}`);
  out[head.length - 1] = 0xa0 | padLength; // the pad fixstr, then its bytes
  out.fill(0x20, head.length, head.length + padLength);
  let i = head.length + padLength;
  out[i++] = 0xa4;
  i += out.write('data', i, 'latin1');
  out[i++] = 0xc6;
  out.writeUInt32BE(byteLength, i);
  return out;
}

/**
 * A chunkFrame's first part received as a fragment of its own: its fields (t, step, offset) and the
 * byte count its data field announces (the second fragment's length); undefined for anything else.
 */
export function chunkHeadOf(head: Uint8Array): { msg: Record<string, unknown>; bytes: number } | undefined {
  const n = head.length;
  const entry = n - DATA_ENTRY_BYTES;
  if (entry < 6 || head[entry] !== 0xa4 || head[entry + 5] !== 0xc6 || Buffer.from(head.buffer, head.byteOffset + entry + 1, 4).toString('latin1') !== 'data') return undefined;
  const fields = Buffer.from(head.subarray(0, entry)); // a small copy: the map header loses the data entry
  if (fields[0] === 0xde && fields.readUInt16BE(1) === 5) fields.writeUInt16BE(4, 1);
  else if (fields[0] === 0x85) fields[0] = 0x84;
  else return undefined;
  try {
    const msg = packr.unpack(fields) as unknown;
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) return undefined;
    return { msg: msg as Record<string, unknown>, bytes: Buffer.from(head.buffer, head.byteOffset, n).readUInt32BE(n - 4) };
  } catch {
    return undefined;
  }
}

/** The bytes of a message received as its fragments. */
export function fragmentBytes(parts: Buffer[]): number {
  return parts.reduce((n, p) => n + p.length, 0);
}

/**
 * A message received as its fragments (ws `binaryType = 'fragments'`): a chunk sent by sendChunk
 * keeps its data fragment as it arrived (no concatenation); anything else is decoded whole.
 */
export function decodeFragments(parts: Buffer[]): Record<string, unknown> {
  if (parts.length === 2) {
    const head = chunkHeadOf(parts[0] as Buffer);
    if (head !== undefined && head.bytes === (parts[1] as Buffer).length) return { ...head.msg, data: parts[1] };
  }
  return decodeFrame(parts.length === 1 ? parts[0] as Buffer : parts);
}

/**
 * Sends a chunkFrame as one message in two fragments: the floats are not copied (the caller keeps them
 * unchanged until sent); `done` once its bytes are out (or the socket failed).
 */
export function sendChunk(ws: { send: (data: Uint8Array, options: { binary: boolean; fin: boolean }, cb?: (err?: Error) => void) => void }, [head, body]: [Buffer, Uint8Array], done?: (err?: Error) => void): void {
  ws.send(head, { binary: true, fin: false });
  ws.send(body, { binary: true, fin: true }, done);
}

/** Decodes any frame into a plain object; garbage bytes become a ProtocolError. */
export function decodeFrame(bytes: Buffer | ArrayBuffer | Buffer[]): Record<string, unknown> {
  const buf = Array.isArray(bytes) ? Buffer.concat(bytes) : Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes);
  let value: unknown;
  try {
    value = packr.unpack(buf);
  } catch (err) {
    throw new ProtocolError('VGG_ERR_FRAME_DECODE', `frame: expected msgpack, got ${buf.length} undecodable bytes (${(err as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value) || typeof (value as { t?: unknown }).t !== 'string') {
    throw new ProtocolError('VGG_ERR_FRAME_SHAPE', `frame: expected an object with a string "t", got ${describe(value)}`);
  }
  return value as Record<string, unknown>;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (v instanceof Uint8Array) return `${v.length} bytes`;
  return typeof v === 'object' ? `an object with keys ${Object.keys(v as object).join(',')}` : `${typeof v} ${JSON.stringify(v)}`;
}

/** Whether `given` is the string `expected`, compared in constant time (tokens, tickets). */
export function sameSecret(given: unknown, expected: string): boolean {
  const a = Buffer.from(typeof given === 'string' ? given : '');
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Field checks used by both ends' message validators. */
export function field<T>(msg: Record<string, unknown>, key: string, kind: 'string' | 'number' | 'int' | 'bytes' | 'object' | 'int[]'): T {
  const v = msg[key];
  const ok = kind === 'string' ? typeof v === 'string'
    : kind === 'number' ? typeof v === 'number' && Number.isFinite(v)
      : kind === 'int' ? Number.isSafeInteger(v) && (v as number) >= 0
        : kind === 'bytes' ? v instanceof Uint8Array
          : kind === 'int[]' ? Array.isArray(v) && v.every((x) => Number.isSafeInteger(x) && x >= 0)
            : typeof v === 'object' && v !== null;
  if (!ok) {
    throw new ProtocolError('VGG_ERR_FRAME_FIELD', `${String(msg.t)}.${key}: expected ${kind}, got ${describe(v)}`);
  }
  return v as T;
}

/** Float32 view of a chunk's bytes: zero-copy when 4-byte aligned, else one copy into `scratch`. */
export function floatsOf(data: Uint8Array, scratch?: Float32Array): Float32Array {
  if (data.byteLength % 4 !== 0) {
    throw new ProtocolError('VGG_ERR_FRAME_FIELD', `chunk data: expected a multiple of 4 bytes, got ${data.byteLength}`);
  }
  const n = data.byteLength / 4;
  if (data.byteOffset % 4 === 0) return new Float32Array(data.buffer, data.byteOffset, n);
  const out = scratch !== undefined && scratch.length >= n ? scratch.subarray(0, n) : new Float32Array(n);
  new Uint8Array(out.buffer, out.byteOffset, data.byteLength).set(data);
  return out;
}

/**
 * A chunk's values as fp32 for the run's wire format: fp32 as a zero-copy view
 * (see floatsOf), 16-bit codes decoded into `scratch` (at least as long) by
 * `decode` (default decode16; a worker's weights version is decoded its own way).
 */
export function valuesOf(data: Uint8Array, wire: WireFormat, scratch: Float32Array, decode: typeof decode16 = decode16): Float32Array {
  if (wire === 'fp32') return floatsOf(data, scratch);
  const codes = codesOf(data, wire, scratch.length);
  const out = scratch.subarray(0, codes.length);
  decode(wire, codes, out);
  return out;
}

/** A 16-bit chunk's codes: a zero-copy view when 2-byte aligned; at most `max` of them. */
export function codesOf(data: Uint8Array, wire: 'bf16' | 'fp16', max: number): Uint16Array {
  if (data.byteLength % 2 !== 0) {
    throw new ProtocolError('VGG_ERR_FRAME_FIELD', `chunk data: expected a multiple of 2 bytes (${wire}), got ${data.byteLength}`);
  }
  const n = data.byteLength / 2;
  if (n > max) throw new ProtocolError('VGG_ERR_LAYOUT', `chunk data: expected at most ${max} values, got ${n}`);
  if (data.byteOffset % 2 === 0) return new Uint16Array(data.buffer, data.byteOffset, n);
  // A copy (not data.slice(): on a Node Buffer that is a view of the whole, maybe odd-sized, receive buffer).
  const out = new Uint16Array(n);
  new Uint8Array(out.buffer).set(data);
  return out;
}

/** Bytes of a value range (fp32 or 16-bit codes), without copying. */
export function bytesOf(floats: Float32Array | Uint16Array): Uint8Array {
  return new Uint8Array(floats.buffer, floats.byteOffset, floats.byteLength);
}
