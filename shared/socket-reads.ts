import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import { inPlaceOf, receiverOf, type ReceiverInternals } from './frame-slot.ts';

/** One read buffer per thread, shared by its sockets (see readIntoOneBuffer). */
let shared: Buffer | undefined;
/** Bytes per socket read: small enough to stay in a core's L2 cache between the kernel's write and our copy out. */
export const READ_BYTES = 256 * 1024;
/** Bytes per socket read straight into a frame's place (no copy follows it, so no cache to fit). */
export const IN_PLACE_READ_BYTES = 1024 * 1024;
/**
 * The read after a frame gathered in place. Large frames come in runs (a gradient's or a weights version's chunks,
 * each a small head fragment and its data fragment: sendChunk, wire-protocol.ts); a full read there carried the next
 * head and ~256 KiB of the next data fragment into the read buffer, to be copied into that fragment's place (V8's
 * memmove, ~2.7% of a hosted 2-worker VGG-16 step's CPU, fp32). A read of this size takes the head fragment, the
 * data fragment's header and a few of its bytes: the fragment's gathering starts and the rest lands in place.
 */
export const NEXT_HEAD_READ_BYTES = 512;

interface SocketInternals {
  _handle: { useUserBuffer?: (buf: Uint8Array) => void } | null;
}

/** Replaces the views into `ab` that ws still holds after a read (a partial header, a small frame's start, a mask) with copies. */
function release(r: ReceiverInternals, ab: ArrayBufferLike): void {
  for (const list of [r._buffers, r._fragments]) {
    for (let i = 0; i < list.length; i += 1) {
      const b = list[i] as Buffer;
      if (b.buffer === ab) list[i] = Buffer.from(b);
    }
  }
  if (r._mask !== undefined && r._mask.buffer === ab) r._mask = Buffer.from(r._mask);
}

/**
 * Has `ws`'s socket read into one buffer, reused for every read of every socket
 * of this thread, instead of a fresh 64 KiB Buffer per read.
 *
 * Each fresh read buffer is external memory to V8, which starts a major
 * garbage collection whenever that has grown by ~64 MB: moving a VGG-16
 * gradient (528 MiB) cost each transport thread ~12 collections per step, a
 * fifth of its CPU (perf, sixth session). Node reads into a caller's buffer
 * (net.Socket's `onread` option); a socket that ws has already upgraded is
 * switched over through the same internals (its kBuffer/kBufferCb slots and
 * the handle's useUserBuffer), as Node 20 has them (checked on 20.20).
 *
 * Safe because nothing keeps a view into the buffer past the read's handling:
 * ws's receiver is fed synchronously (ws emits messages synchronously by default), large
 * frames are gathered into their own room as they arrive (gatherFrames: call it
 * first), and whatever ws still holds afterwards (a partial header, the start of a
 * small frame, a mask) is copied out. The one rule for the caller: a
 * message's Buffers are valid only during its 'message' event, as the
 * aggregator and its client use them (they decode or reduce at once).
 * While gatherFrames gathers a large frame, each read goes straight into the
 * frame's room instead (the socket's kBufferGen, Node's `onread.buffer` function),
 * and only its length is passed on (InPlace.landed). False
 * (nothing changed) where the socket or ws is not what this was written
 * against, or the socket is a TLS one (wss://); then ws reads as before.
 */
export function readIntoOneBuffer(ws: WebSocket): boolean {
  const socket = (ws as unknown as { _socket?: Socket & SocketInternals })._socket;
  const receiver = receiverOf(ws);
  // A TLS socket's reads are its decrypted stream's: left to ws.
  if (socket === undefined || receiver === undefined || (socket as Socket & { encrypted?: boolean }).encrypted === true) return false;
  const symbols = Object.getOwnPropertySymbols(socket);
  const kBuffer = symbols.find((s) => s.description === 'kBuffer');
  const kBufferCb = symbols.find((s) => s.description === 'kBufferCb');
  const kBufferGen = symbols.find((s) => s.description === 'kBufferGen');
  const handle = socket._handle;
  if (kBuffer === undefined || kBufferCb === undefined || handle === null || typeof handle.useUserBuffer !== 'function') return false;
  const slots = socket as unknown as Record<symbol, unknown>;
  if (slots[kBuffer] !== null && slots[kBuffer] !== undefined) return false;
  const buf = (shared ??= Buffer.allocUnsafeSlow(READ_BYTES));
  const head = buf.subarray(0, NEXT_HEAD_READ_BYTES);
  /** The last read completed a frame gathered in place: the next one is a short one (NEXT_HEAD_READ_BYTES). */
  let frameDone = false;
  // While a large frame is being gathered, the socket reads its next bytes straight into their place
  // (Node asks kBufferGen for each read's buffer): no copy out of the read buffer. Thirteenth session: a
  // receiver's CPU 20-50% lower in a probe (276 MB into a cold version buffer or a warm 4 MiB slot); a hosted
  // 2-worker VGG-16 step's CPU ~4% lower (5 alternating pairs). Reads of 1 MiB: 4 MiB measured no better.
  const inPlace = kBufferGen === undefined ? undefined : inPlaceOf(receiver);
  const onRead = (nread: number, into: Uint8Array): boolean => {
    // After a protocol error ws stops listening and lets the socket close; so do we.
    if (receiver._errored) return true;
    if (into !== buf && into !== head) {
      inPlace?.landed(nread);
      frameDone = inPlace?.room(1) === undefined;
      return true;
    }
    const chunk = buf.subarray(0, nread);
    // A write ws has not finished (it never leaves one with synchronous events) would keep the chunk: give it a copy.
    const ok = receiver.write(receiver.writableLength > 0 ? Buffer.from(chunk) : chunk);
    release(receiver, buf.buffer);
    if (!ok) socket.pause(); // as ws's own 'data' listener does; its receiver's 'drain' resumes the socket
    return ok;
  };
  const switchOver = () => {
    slots[kBuffer] = buf;
    slots[kBufferCb] = onRead;
    if (inPlace !== undefined) {
      slots[kBufferGen as symbol] = () => {
        const room = inPlace.room(IN_PLACE_READ_BYTES);
        if (room !== undefined) return room;
        const next = frameDone ? head : buf;
        frameDone = false;
        return next;
      };
    }
    (handle.useUserBuffer as (b: Uint8Array) => void).call(handle, buf);
  };
  // Data Node read before (the upgrade's trailing bytes) must reach ws first.
  if (socket.readableLength === 0) switchOver();
  else {
    const onData = () => {
      if (socket.readableLength > 0) return;
      socket.off('data', onData);
      switchOver();
    };
    socket.on('data', onData);
  }
  return true;
}
