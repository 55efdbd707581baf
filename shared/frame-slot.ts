import type { WebSocket } from 'ws';

/** The part of ws's Receiver (ws 8, lib/receiver.js) that FrameSlot replaces for one socket. */
interface ReceiverInternals {
  _buffers: Buffer[];
  _bufferedBytes: number;
  consume(n: number): Buffer;
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

  /**
   * Routes `ws`'s large frames through the slot. Call after the socket's own
   * 'message' listeners are registered. False (nothing changed) where ws's
   * receiver is not the one this was written against.
   */
  attach(ws: WebSocket): boolean {
    const receiver = (ws as unknown as { _receiver?: ReceiverInternals })._receiver;
    if (receiver === undefined || typeof receiver.consume !== 'function' || !Array.isArray(receiver._buffers)
      || typeof receiver._bufferedBytes !== 'number') return false;
    const own = receiver.consume;
    const slot = this;
    receiver.consume = function consume(this: ReceiverInternals, n: number): Buffer {
      const first = this._buffers[0];
      // ws returns a view without copying when the payload lies in one read; keep that.
      if (n < slot.minBytes || first === undefined || n <= first.length) return own.call(this, n);
      if (slot.holder !== undefined || n > slot.bytes.length) {
        slot.counts.fallback += 1;
        return own.call(this, n);
      }
      slot.holder = ws;
      slot.counts.slot += 1;
      const dst = Buffer.from(slot.bytes.buffer, slot.bytes.byteOffset, n);
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
    // After the aggregator's own listener: the message has been handled, the slot is free again.
    ws.on('message', () => { if (slot.holder === ws) slot.holder = undefined; });
    ws.on('close', () => { if (slot.holder === ws) slot.holder = undefined; });
    return true;
  }
}
