import type { WebSocket } from 'ws';

/** The part of ws's Receiver (ws 8, lib/receiver.js) that gatherFrames uses for one socket. */
export interface ReceiverInternals {
  _buffers: Buffer[];
  _bufferedBytes: number;
  _fragments: Buffer[];
  _payloadLength: number;
  _mask?: Buffer;
  _errored: boolean;
  consume(n: number): Buffer;
  getData(cb: (err?: Error) => void): void;
  startLoop(cb: (err?: Error) => void): void;
  _write(chunk: Buffer, encoding: string, cb: (err?: Error) => void): void;
  write(chunk: Buffer): boolean;
  destroy(err?: Error): void;
  readonly writableLength: number;
}

/**
 * The frame a socket's receiver is gathering (gatherFrames), as a place for the socket's next read:
 * readIntoOneBuffer (socket-reads.ts) has the kernel write the frame's next bytes straight there
 * instead of into the thread's read buffer and a copy after it.
 */
export interface InPlace {
  /** Room for the next read: the rest of the frame being gathered, at most `max` bytes; undefined when none is being gathered. */
  room(max: number): Uint8Array | undefined;
  /** The last read put `n` bytes into the room room() gave. */
  landed(n: number): void;
  /** Bytes read into place so far. */
  readonly landedBytes: number;
}

const IN_PLACE = new WeakMap<ReceiverInternals, InPlace>();

/** The receiver's InPlace where gatherFrames was set up on it. */
export function inPlaceOf(receiver: ReceiverInternals): InPlace | undefined {
  return IN_PLACE.get(receiver);
}

/** ws's receiver of `ws` where it is the one this module was written against (ws 8: lib/receiver.js), else undefined. */
export function receiverOf(ws: WebSocket): ReceiverInternals | undefined {
  // null until the socket is open (a client's), undefined in another ws.
  const r = (ws as unknown as { _receiver?: ReceiverInternals | null })._receiver;
  if (r === undefined || r === null || !Array.isArray(r._buffers) || typeof r._bufferedBytes !== 'number' || !Array.isArray(r._fragments)
    || typeof r._payloadLength !== 'number' || typeof r._errored !== 'boolean'
    || ![r.consume, r.getData, r.startLoop, r._write, r.write, r.destroy].every((f) => typeof f === 'function')) return undefined;
  return r;
}

/**
 * Lets a socket's large frames be gathered where the caller says, as they
 * arrive, instead of ws holding every socket read until the frame is complete
 * and then copying them into a fresh Buffer.
 *
 * For each frame of at least `minBytes` whose payload spans socket reads (ws
 * returns a view, no copy, when it lies in one), `where(n, previous)` is asked
 * for n bytes of room (`previous`: the message's earlier fragment, if this
 * frame continues one). A frame whose payload is still arriving when its
 * length is known is copied there read by read (into a fresh Buffer where
 * `where` gives no room), so no socket read outlives its own handling (what
 * readIntoOneBuffer, socket-reads.ts, needs) and each read is copied while it
 * is still in cache; a frame complete in ws's buffers already is gathered in
 * one go. ws then goes on (unmasking, fragments, 'message') with that view.
 * False (nothing changed) where ws's receiver is not the one this was written
 * against.
 */
export function gatherFrames(ws: WebSocket, minBytes: number, where: (n: number, previous: Buffer | undefined) => Uint8Array | undefined): boolean {
  const receiver = receiverOf(ws);
  if (receiver === undefined) return false;
  const room = (r: ReceiverInternals, n: number): Buffer | undefined => {
    const got = where(n, r._fragments.length === 1 ? r._fragments[0] : undefined);
    return got === undefined || got.length !== n ? undefined : Buffer.from(got.buffer, got.byteOffset, n);
  };
  /** The frame being gathered read by read, and how much of it is here. */
  let into: { dst: Buffer; at: number } | undefined;
  const { consume, getData, _write: write } = receiver;
  receiver.getData = function gatherOnArrival(this: ReceiverInternals, cb): void {
    const n = this._payloadLength;
    if (into === undefined && n >= minBytes && this._bufferedBytes < n) {
      const dst = room(this, n) ?? Buffer.allocUnsafe(n);
      let at = 0;
      for (const b of this._buffers) { dst.set(b, at); at += b.length; }
      this._buffers.length = 0;
      into = { dst, at }; // _bufferedBytes still counts these bytes: ws waits for the rest as before
    }
    getData.call(this, cb);
  };
  receiver._write = function writeOnArrival(this: ReceiverInternals, chunk, encoding, cb): void {
    const s = into;
    if (s === undefined || s.at === s.dst.length) { write.call(this, chunk, encoding, cb); return; }
    const take = Math.min(chunk.length, s.dst.length - s.at);
    s.dst.set(take === chunk.length ? chunk : chunk.subarray(0, take), s.at);
    s.at += take;
    this._bufferedBytes += take;
    if (s.at < s.dst.length) { cb(); return; }
    // Complete: what follows in this read is the next frame's; ws's loop takes the payload back through consume.
    if (take < chunk.length) {
      this._buffers.push(chunk.subarray(take));
      this._bufferedBytes += chunk.length - take;
    }
    this.startLoop(cb);
  };
  let landedBytes = 0;
  IN_PLACE.set(receiver, {
    get landedBytes() { return landedBytes; },
    // (Shared memory too: Node reads into a SharedArrayBuffer's view as into an ArrayBuffer's.)
    room: (max) => (into === undefined || into.at === into.dst.length ? undefined
      : into.dst.subarray(into.at, Math.min(into.dst.length, into.at + max))),
    landed(n) {
      const s = into;
      if (s === undefined || receiver._errored) return;
      // As writeOnArrival, without the copy: the bytes are in place.
      s.at += n;
      landedBytes += n;
      receiver._bufferedBytes += n;
      // Complete: ws's loop takes the payload back through consume (as a write's would; an error ends the receiver as a write's does).
      if (s.at === s.dst.length) receiver.startLoop((err) => { if (err !== undefined && err !== null) receiver.destroy(err); });
    },
  });
  receiver.consume = function gather(this: ReceiverInternals, n: number): Buffer {
    if (into !== undefined && into.at === n && into.dst.length === n) {
      const { dst } = into;
      into = undefined;
      this._bufferedBytes -= n;
      return dst;
    }
    const first = this._buffers[0];
    if (n < minBytes || first === undefined || n <= first.length) return consume.call(this, n);
    const dst = room(this, n);
    if (dst === undefined) return consume.call(this, n);
    this._bufferedBytes -= n;
    for (let at = 0; at < n;) {
      const buf = this._buffers[0] as Buffer;
      const take = Math.min(buf.length, n - at);
      dst.set(take === buf.length ? buf : buf.subarray(0, take), at);
      if (take === buf.length) this._buffers.shift();
      else this._buffers[0] = buf.subarray(take);
      at += take;
    }
    return dst;
  };
  return true;
}

/**
 * Reusable receive buffers (in the aggregator's wasm arena) for large frames.
 *
 * ws gathers a frame's payload from its socket reads into a fresh Buffer; the
 * aggregator then copied that into the arena for the SIMD reduce: two copies
 * per gradient chunk. With a slot, a frame of at least `minBytes` is gathered
 * straight into the arena as it arrives (gatherFrames), so the chunk's floats
 * are already where the reduce reads them: one copy. The aggregator handles a
 * message synchronously within ws's 'message' event (ws emits it synchronously
 * by default), so a slot is taken from when a frame's length is known until the
 * message's listeners ran (or the socket closed). Every member streams its
 * chunks at once, so there is one slot per socket streaming, made on first
 * need (`room()`, up to `max`: room the arena reserves costs no memory until
 * used); a frame that finds none free (a fragmented message holds its first
 * fragments until the last), or that is larger, is gathered into a fresh Buffer
 * as ws would.
 */
export class FrameSlot {
  private readonly slots: Uint8Array[] = [];
  private readonly holders: (WebSocket | undefined)[] = [];
  /** Frames gathered into a slot, and frames that could have been but found them taken or too small. */
  readonly counts = { slot: 0, fallback: 0 };

  /** `room()` gives one more slot's bytes (all of the same size), at most `max` times. */
  constructor(private readonly room: () => Uint8Array, private readonly minBytes = 256 * 1024, private readonly max = 1) {}

  /** Slots made so far (each one socket's frame at a time). */
  get made(): number {
    return this.slots.length;
  }

  private free(ws: WebSocket): number {
    if (this.holders.includes(ws)) return -1;
    const i = this.holders.indexOf(undefined);
    if (i >= 0 || this.slots.length >= this.max) return i;
    this.slots.push(this.room());
    this.holders.push(undefined);
    return this.slots.length - 1;
  }

  /** Routes `ws`'s large frames through the slots. Call after the socket's own 'message' listeners are registered. */
  attach(ws: WebSocket): boolean {
    const attached = gatherFrames(ws, this.minBytes, (n) => {
      const i = this.free(ws);
      const slot = this.slots[i];
      if (slot === undefined || n > slot.length) {
        this.counts.fallback += 1;
        return undefined;
      }
      this.holders[i] = ws;
      this.counts.slot += 1;
      return slot.subarray(0, n);
    });
    if (!attached) return false;
    // After the aggregator's own listener: the message has been handled, the slot is free again.
    const release = () => { const i = this.holders.indexOf(ws); if (i >= 0) this.holders[i] = undefined; };
    ws.on('message', release);
    ws.on('close', release);
    return true;
  }
}
