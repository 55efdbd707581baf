import type { WebSocket } from 'ws';

/** The part of ws's Receiver (ws 8, lib/receiver.js) that gatherFrames uses for one socket. */
interface ReceiverInternals {
  _buffers: Buffer[];
  _bufferedBytes: number;
  _fragments: Buffer[];
  consume(n: number): Buffer;
}

/**
 * Lets a socket's large frames be gathered where the caller says instead of into
 * a fresh Buffer: for each frame of at least `minBytes` whose payload spans
 * socket reads (ws returns a view, no copy, when it lies in one), `where(n,
 * previous)` is asked for n bytes of room (`previous`: the message's earlier
 * fragment, if this frame continues one); given room, the frame is gathered
 * there and ws goes on with that view, else ws gathers it as usual. False
 * (nothing changed) where ws's receiver is not the one this was written against
 * (ws 8: lib/receiver.js).
 */
export function gatherFrames(ws: WebSocket, minBytes: number, where: (n: number, previous: Buffer | undefined) => Uint8Array | undefined): boolean {
  // null until the socket is open (a client's), undefined in another ws.
  const receiver = (ws as unknown as { _receiver?: ReceiverInternals | null })._receiver;
  if (receiver === undefined || receiver === null || typeof receiver.consume !== 'function' || !Array.isArray(receiver._buffers)
    || typeof receiver._bufferedBytes !== 'number' || !Array.isArray(receiver._fragments)) return false;
  const own = receiver.consume;
  receiver.consume = function consume(this: ReceiverInternals, n: number): Buffer {
    const first = this._buffers[0];
    if (n < minBytes || first === undefined || n <= first.length) return own.call(this, n);
    const room = where(n, this._fragments.length === 1 ? this._fragments[0] : undefined);
    if (room === undefined || room.length !== n) return own.call(this, n);
    const dst = Buffer.from(room.buffer, room.byteOffset, n);
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
 * One reusable receive buffer (in the aggregator's wasm arena) for large frames.
 *
 * ws gathers a frame's payload from its ~64 KiB socket reads into a fresh
 * Buffer (`Receiver.consume`); the aggregator then copied that into the arena
 * for the SIMD reduce: two copies per gradient chunk. With the slot, a frame of
 * at least `minBytes` is gathered straight into the arena, so the chunk's
 * floats are already where the reduce reads them: one copy. The aggregator
 * handles a message synchronously within ws's 'message' event (ws emits it
 * synchronously by default), so one slot serves every socket: it is taken when a
 * frame is gathered into it and given back after the message's listeners ran
 * (or the socket closed). A frame that arrives while it is taken (a fragmented
 * message holds its first fragments until the last), or that is larger, is
 * gathered by ws as before.
 */
export class FrameSlot {
  private holder: WebSocket | undefined;
  /** Frames gathered into the slot, and frames that could have been but found it taken or too small. */
  readonly counts = { slot: 0, fallback: 0 };

  constructor(private readonly bytes: Uint8Array, private readonly minBytes = 256 * 1024) {}

  /** Routes `ws`'s large frames through the slot. Call after the socket's own 'message' listeners are registered. */
  attach(ws: WebSocket): boolean {
    const attached = gatherFrames(ws, this.minBytes, (n) => {
      if (this.holder !== undefined || n > this.bytes.length) {
        this.counts.fallback += 1;
        return undefined;
      }
      this.holder = ws;
      this.counts.slot += 1;
      return this.bytes.subarray(0, n);
    });
    if (!attached) return false;
    // After the aggregator's own listener: the message has been handled, the slot is free again.
    ws.on('message', () => { if (this.holder === ws) this.holder = undefined; });
    ws.on('close', () => { if (this.holder === ws) this.holder = undefined; });
    return true;
  }
}
