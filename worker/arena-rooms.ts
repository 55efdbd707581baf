/**
 * Rooms a worker's transport takes from its gradient's arena (the transport thread's shared memory), so that
 * the SIMD kernels and the addon read and write in place instead of through staging copies: 16-bit send
 * rooms for the gradient's chunks, weights versions, and rooms for a weights chunk's 16-bit codes.
 */
import { decode16 } from '../shared/half.ts';
import { arenaOf, type FloatArena } from '../shared/simd.ts';
import { CHUNK_FLOATS, CHUNK_MESSAGE_BYTES } from '../shared/wire-protocol.ts';
import { TENSOR_ALIGN_BYTES, alignedWithin, sharedAlignedFloats, streamDecodeBf16 } from './host-memory.ts';

/** Backpressure: above the high watermark of queued bytes, wait until the socket drained to the low one. */
export const HIGH_WATER_BYTES = 64 * 1024 * 1024;
export const LOW_WATER_BYTES = 16 * 1024 * 1024;
/** 16-bit message buffers kept for reuse: as many as the high watermark lets be in flight, and the one being encoded. */
export const SEND_ROOMS = Math.ceil(HIGH_WATER_BYTES / CHUNK_MESSAGE_BYTES) + 2;
/** What the arena keeps free for its own staging rooms (a chunk's floats and codes, 4 + 2 MiB, taken on first use). */
const STAGING_MARGIN_BYTES = 8 << 20;
/** Room the gradient's arena keeps for 16-bit send rooms (transport.ts): four connections' worth, then plain Buffers. */
export const SEND_ROOM_RESERVE_BYTES = 4 * SEND_ROOMS * CHUNK_MESSAGE_BYTES + STAGING_MARGIN_BYTES;

/** Arenas that hold a gradient and room for send rooms after it (the transport thread's). */
const ROOM_ARENAS = new WeakSet<FloatArena>();

/** Lets 16-bit send rooms for gradients in `arena` be taken from its free room. */
export function allowSendRooms(arena: FloatArena): void {
  ROOM_ARENAS.add(arena);
}

/**
 * A 16-bit message buffer: in the gradient's arena while it has room (the SIMD encode then writes
 * the codes in place instead of through its staging room), else a plain one.
 */
export function sendRoomFor(flat: Float32Array): Buffer {
  const arena = arenaOf(flat);
  if (arena !== undefined && ROOM_ARENAS.has(arena) && arena.free >= CHUNK_MESSAGE_BYTES + STAGING_MARGIN_BYTES) {
    const b = arena.allocBytes(CHUNK_MESSAGE_BYTES);
    return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  }
  return Buffer.allocUnsafeSlow(CHUNK_MESSAGE_BYTES);
}

/**
 * Weights versions the gradient's arena keeps room for (transport.ts): the one the model holds and the one being
 * received. More at once (a version re-sent after a coordinator's --resume) get buffers of their own.
 */
export const VERSION_ROOMS = 2;
/** Rooms for a weights chunk's 16-bit codes in that arena (one per shard client, each gathers one frame at a time). */
const CODE_ROOMS = 8;
/** What the gradient's arena keeps for weights versions of `floats` floats and their code rooms, in bytes. */
export const versionReserveBytes = (floats: number): number => VERSION_ROOMS * (4 * floats + TENSOR_ALIGN_BYTES) + CODE_ROOMS * 2 * CHUNK_FLOATS;

/** The arena weights versions are received into (allowVersionRooms), how many rooms of each kind it has left, and the versions taken, by byte offset. */
let versionArena: { arena: FloatArena; versions: number; codes: number; taken: Map<number, Float32Array> } | undefined;

/**
 * Lets weights versions and their code rooms be taken from `arena` (the transport thread's gradient arena, made
 * with versionReserveBytes of room): a 16-bit version is then decoded straight into place, its codes gathered in
 * the same memory (the SIMD decode reads and writes only its arena's memory; with a version outside it, each chunk
 * went through a staging room and a copy out, ~2/3 of the decode's cost: 20% of a hosted bf16 step's CPU, perf).
 */
export function allowVersionRooms(arena: FloatArena): void {
  versionArena = { arena, versions: VERSION_ROOMS, codes: CODE_ROOMS, taken: new Map() };
}

/**
 * `n` zeroed floats for a weights version at a TENSOR_ALIGN_BYTES boundary, in shared memory (lent to the main
 * thread, see sharedAlignedFloats): from the version arena while it has rooms left, else a buffer of their own.
 */
export function versionFloats(n: number): Float32Array {
  const v = versionArena;
  if (v !== undefined && v.versions > 0 && v.arena.free >= 4 * n + TENSOR_ALIGN_BYTES + STAGING_MARGIN_BYTES) {
    v.versions -= 1;
    const version = alignedWithin(v.arena.alloc(n + TENSOR_ALIGN_BYTES / 4), n);
    v.taken.set(version.byteOffset, version);
    return version;
  }
  return sharedAlignedFloats(n);
}

/**
 * This thread's own view of a weights version the main thread gave back: a view posted between threads is over
 * another SharedArrayBuffer object (the same memory), and the SIMD decode writes in place only into views of its
 * arena's own buffer object (arenaOf). `view` itself where it is not a version of the version arena.
 */
export function ownVersion(view: Float32Array): Float32Array {
  const v = versionArena;
  const b = view.buffer;
  if (v === undefined || b === v.arena.memory.buffer || !(b instanceof SharedArrayBuffer) || b.byteLength !== v.arena.memory.buffer.byteLength) return view;
  const own = v.taken.get(view.byteOffset);
  return own !== undefined && own.length === view.length ? own : view;
}

/**
 * Whether a free weights buffer (this thread's own view, ownVersion) is worth keeping for the next version: not
 * one outside the version arena while the arena has version rooms left (the first versions arrive before the
 * gradient, and so the arena, is there; dropped, their place is taken from the arena).
 */
export function keepsVersion(buf: Float32Array): boolean {
  const v = versionArena;
  return v === undefined || v.versions === 0 || buf.buffer === v.arena.memory.buffer;
}

/**
 * Room for a 16-bit weights chunk's codes: `room` itself where it is in the version arena, or where that has no
 * code rooms left; else one from the arena (a room made before the gradient's arena was there is replaced).
 */
export function codeRoom(room: Uint8Array | undefined): Uint8Array {
  const v = versionArena;
  if (room !== undefined && (v === undefined || room.buffer === v.arena.memory.buffer || v.codes === 0)) return room;
  if (v !== undefined && v.codes > 0 && v.arena.free >= 2 * CHUNK_FLOATS + STAGING_MARGIN_BYTES) {
    v.codes -= 1;
    return v.arena.allocBytes(2 * CHUNK_FLOATS);
  }
  return room ?? new Uint8Array(2 * CHUNK_FLOATS);
}

/** A weights chunk's 16-bit codes decoded into the version (bf16 with streaming stores where large: the version is cold). */
export const decodeWeights: typeof decode16 = (wire, codes, out) => {
  if (wire !== 'bf16' || !streamDecodeBf16(codes, out)) decode16(wire, codes, out);
};
