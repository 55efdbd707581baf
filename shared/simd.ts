/**
 * The aggregator's per-element loops (reduce on arrival, momentum SGD, the
 * mean of BN statistics) as WebAssembly SIMD (f32x4) kernels over one linear
 * memory, the FloatArena. V8 runs the plain JS loops one scalar at a time with
 * bounds checks; these do four lanes per instruction. The module is assembled
 * here from its instructions (no toolchain, nothing to build); arrays must be
 * views into the arena's memory, so the weights, momentum and sum of an
 * aggregator are allocated there. Arithmetic is fp32 per operation, as in
 * torch.optim.SGD and the single-process trainer's tfjs ops.
 */

import { streamPut } from '../worker/host-memory.ts';
import { KernelPool, type PoolOp } from './kernel-pool.ts';

/** Float32Array views into one wasm memory, and the kernels that run on them. */
export class FloatArena {
  readonly memory: WebAssembly.Memory;
  private readonly k: Kernels;
  private next = 0;
  private readonly limit: number;
  /** A chunk's worth of floats for values that arrive outside the arena (socket buffers). */
  private staging?: Float32Array;

  /** Helper threads for the kernels over large ranges, when made with threads > 1 (until closed). */
  private pool?: KernelPool;

  /**
   * Room for `floats` floats (each allocation rounded up to 16 bytes); at most 4 GiB in all.
   * With `threads` > 1 the memory is shared and the update's kernels over large ranges (SGD, the
   * BN means) run split over this thread and `threads` - 1 helpers (kernel-pool.ts); the reduce on
   * arrival stays on the calling thread. `share.shared`: the memory is shared anyway (another thread
   * may adopt it); `share.memory`: this arena is over that shared memory, made by another thread's
   * arena whose first `share.used` bytes are taken (`floats` is then ignored). `share.bump`: every arena
   * made with it over one memory (a new one, or `share.memory` made so) allocates from one pointer kept in
   * the memory's first 16 bytes (Atomics), so threads can each take room in it at any time.
   */
  constructor(floats: number, threads = 1, share: { shared?: boolean; memory?: WebAssembly.Memory; used?: number; bump?: boolean } = {}) {
    this.limit = share.memory !== undefined ? share.memory.buffer.byteLength : Math.ceil((floats * 4) / 65536) * 65536 + 65536;
    const pages = this.limit / 65536;
    // (A shared pointer is a Uint32: its memory stops a page short of 4 GiB.)
    const maxPages = share.bump === true ? 65535 : 65536;
    if (pages > maxPages) throw new RangeError(`FloatArena: expected at most ${maxPages} pages of 64 KiB, got ${pages} (${floats} floats)`);
    if (!Number.isInteger(threads) || threads < 1) throw new RangeError(`FloatArena: expected threads >= 1, got ${threads}`);
    const shared = threads > 1 || share.shared === true || share.memory !== undefined;
    if (share.memory !== undefined && !(share.memory.buffer instanceof SharedArrayBuffer)) throw new TypeError('FloatArena: expected a shared memory to adopt, got an unshared one');
    this.memory = share.memory ?? new WebAssembly.Memory({ initial: pages, maximum: pages, shared });
    this.next = Math.ceil((share.used ?? 0) / 16) * 16;
    if (share.bump === true) {
      if (!(this.memory.buffer instanceof SharedArrayBuffer)) throw new TypeError('FloatArena: expected a shared memory for a shared allocation pointer');
      this.bump = new Uint32Array(this.memory.buffer, 0, 4);
      if (share.memory === undefined) Atomics.store(this.bump, 0, 16);
    }
    const instance = new WebAssembly.Instance(module(shared), { env: { memory: this.memory } });
    this.k = instance.exports as unknown as Kernels;
    if (threads > 1) this.pool = new KernelPool(module(shared), this.memory, threads - 1);
    ARENAS.set(this.memory.buffer, this);
  }

  /**
   * Kernel `op` over `n` units (4 or 8 lanes) from the pointers `ptrs`, each advancing by its
   * `strides` bytes a unit, then `scalars`: on this thread, or split into parts of at least
   * PARALLEL_MIN_UNITS over the pool. Returns the sum of the parts' results (NaN probes).
   */
  private run(op: PoolOp, ptrs: number[], strides: number[], n: number, scalars: number[]): number {
    const k = this.k[op] as (...a: number[]) => number | undefined;
    const parts = this.pool === undefined ? 1 : Math.min(this.pool.helpers + 1, Math.floor(n / PARALLEL_MIN_UNITS));
    if (parts <= 1) return k(...ptrs, n, ...scalars) ?? 0;
    const per = Math.ceil(n / parts);
    const list: number[][] = [];
    for (let lo = 0; lo < n; lo += per) list.push([...ptrs.map((q, i) => q + (strides[i] as number) * lo), Math.min(per, n - lo), ...scalars]);
    return (this.pool as KernelPool).run(op, list, (a) => k(...a) ?? 0);
  }

  /** Threads the kernels run on: this one and the pool's helpers. */
  get threads(): number {
    return 1 + (this.pool?.helpers ?? 0);
  }

  /** Stops the helper threads, if any: the arena's kernels then run on the calling thread only. */
  async close(): Promise<void> {
    const pool = this.pool;
    this.pool = undefined;
    await pool?.close();
  }

  /** The allocation pointer shared by every arena over this memory (share.bump), if any. */
  private bump?: Uint32Array;

  /** Bytes allocated so far (what an arena adopting this memory must leave alone). */
  get used(): number {
    return this.bump === undefined ? this.next : Atomics.load(this.bump, 0);
  }

  /** Bytes not allocated yet: what the next allocations can take (with share.bump, other threads' too). */
  get free(): number {
    return this.limit - this.used;
  }

  /** `n` zeroed floats, 16-byte aligned. */
  alloc(n: number): Float32Array {
    return new Float32Array(this.memory.buffer, this.take(n * 4), n);
  }

  /** `n` zeroed bytes, 16-byte aligned. */
  allocBytes(n: number): Uint8Array {
    return new Uint8Array(this.memory.buffer, this.take(n), n);
  }

  /** `n` zeroed 16-bit codes, 16-byte aligned. */
  alloc16(n: number): Uint16Array {
    return new Uint16Array(this.memory.buffer, this.take(n * 2), n);
  }

  private take(bytes: number): number {
    const size = Math.ceil(bytes / 16) * 16;
    const b = this.bump;
    // With a shared pointer, retried until no other thread took room between the read and the exchange.
    for (;;) {
      const start = b === undefined ? this.next : Atomics.load(b, 0);
      if (start + size > this.limit) throw new RangeError(`FloatArena: expected room for ${bytes} more bytes, got ${Math.max(0, this.limit - start)}`);
      if (b === undefined) {
        this.next = start + size;
        return start;
      }
      if (Atomics.compareExchange(b, 0, start, start + size) === start) return start;
    }
  }

  /** A chunk's worth of 16-bit codes staged into the arena. */
  private staging16?: Uint16Array;

  /** `n` floats of staging room in the arena (grown to at least a chunk, kept for the next call). */
  private scratch32(n: number): Float32Array {
    if (this.staging === undefined || this.staging.length < n) this.staging = this.alloc(Math.max(n, 1 << 20));
    return this.staging.subarray(0, n);
  }

  private scratch16(n: number): Uint16Array {
    if (this.staging16 === undefined || this.staging16.length < n) this.staging16 = this.alloc16(Math.max(n, 1 << 20));
    return this.staging16.subarray(0, n);
  }

  /** `n` codes of the arena's staging room for codes (kept, and overwritten by the next call that stages codes). */
  stagingCodes(n: number): Uint16Array {
    return this.scratch16(n);
  }

  /** `values` themselves if they live in the arena, else a copy in its staging room. */
  private staged32(values: Float32Array): Float32Array {
    if (this.owns(values)) return values;
    const s = this.scratch32(values.length);
    s.set(values);
    return s;
  }

  private staged16(codes: Uint16Array): Uint16Array {
    if (this.owns(codes)) return codes;
    const s = this.scratch16(codes.length);
    s.set(codes);
    return s;
  }

  /**
   * sum[offset + i] += n * bf16(codes[i]) (with `put`: sum[offset + i] = 0 + n * bf16(codes[i]),
   * the sum not read); false when a code is NaN or Inf.
   */
  accumulateBf16(sum: Float32Array, offset: number, codes: Uint16Array, n: number, put = false): boolean {
    const streamed = put ? streamPut(sum.subarray(offset, offset + codes.length), codes, n) : undefined;
    if (streamed !== undefined) return streamed;
    const c = this.staged16(codes);
    const len = c.length;
    const body = len - (len % 8);
    let probe = (put ? this.k.putbf16 : this.k.accbf16)(sum.byteOffset + 4 * offset, c.byteOffset, body / 8, n);
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    for (let i = body; i < len; i += 1) {
      u[0] = (c[i] as number) << 16;
      const a = f[0] as number;
      probe += a * 0;
      sum[offset + i] = (put ? 0 : sum[offset + i] as number) + Math.fround(n * a);
    }
    return !Number.isNaN(probe);
  }

  /**
   * fp32 to bfloat16 codes, rounded to nearest even, NaN kept NaN (as
   * half.ts's encodeBf16Scalar), in slices of at most `slice` values staged
   * through the arena when the arrays live outside it. `tail` converts the last < 8.
   */
  encodeBf16(src: Float32Array, dst: Uint16Array, tail: (s: Float32Array, d: Uint16Array) => void, slice = 1 << 20): void {
    for (let off = 0; off < src.length; off += slice) {
      const part = src.subarray(off, Math.min(src.length, off + slice));
      const out = dst.subarray(off, off + part.length);
      const s = this.staged32(part);
      const body = part.length - (part.length % 8);
      const direct = this.owns(out);
      const d = direct ? out : this.scratch16(part.length);
      if (this.k.bf16enc(s.byteOffset, d.byteOffset, body / 8) !== 0) tail(part, out); // a NaN: exact, element by element
      else {
        if (!direct) out.set(d.subarray(0, body));
        tail(part.subarray(body), out.subarray(body));
      }
    }
  }

  /** bfloat16 codes to fp32 (exact), staged like encodeBf16. */
  decodeBf16(src: Uint16Array, dst: Float32Array, slice = 1 << 20): void {
    for (let off = 0; off < src.length; off += slice) {
      const part = src.subarray(off, Math.min(src.length, off + slice));
      const out = dst.subarray(off, off + part.length);
      const c = this.staged16(part);
      const body = part.length - (part.length % 8);
      const direct = this.owns(out);
      const d = direct ? out : this.scratch32(part.length);
      this.k.bf16dec(c.byteOffset, d.byteOffset, body / 8);
      if (!direct) out.set(d.subarray(0, body));
      const u = new Uint32Array(out.buffer, out.byteOffset, out.length);
      for (let i = body; i < part.length; i += 1) u[i] = (part[i] as number) << 16;
    }
  }

  /** A copy of `values` in the arena. */
  copyOf(values: Float32Array): Float32Array {
    const a = this.alloc(values.length);
    a.set(values);
    return a;
  }

  owns(a: Float32Array | Uint16Array): boolean {
    return a.buffer === this.memory.buffer;
  }

  /**
   * sum[offset + i] += n * g[i] for every i (with `put`: sum[offset + i] = 0 + n * g[i], the
   * first contribution, the sum not read); false when g holds a NaN or an Inf.
   * g outside the arena is staged into it first (one memcpy per chunk).
   */
  accumulate(sum: Float32Array, offset: number, g: Float32Array, n: number, put = false): boolean {
    // The first contribution from 1 MiB on: streaming stores (the sum is read next at the commit; worker/host-memory.ts).
    const streamed = put ? streamPut(sum.subarray(offset, offset + g.length), g, n) : undefined;
    if (streamed !== undefined) return streamed;
    g = this.staged32(g);
    const len = g.length;
    const body = len - (len % 4);
    // On this thread only: a chunk's reduce split over the pool measured slower (see kernel-pool.ts).
    let probe = (put ? this.k.put : this.k.acc)(sum.byteOffset + 4 * offset, g.byteOffset, body / 4, n);
    for (let i = body; i < len; i += 1) {
      const a = g[i] as number;
      probe += a * 0;
      sum[offset + i] = (put ? 0 : sum[offset + i] as number) + Math.fround(n * a);
    }
    return !Number.isNaN(probe);
  }

  /** v <- mu v + (scale s + wd w); w <- w - lr v, over [lo, hi) of all three arrays. */
  sgd(w: Float32Array, v: Float32Array, s: Float32Array, lo: number, hi: number, lr: number, mu: number, wd: number, scale: number): void {
    const len = hi - lo;
    const body = len - (len % 4);
    this.run('sgd', [w.byteOffset + 4 * lo, v.byteOffset + 4 * lo, s.byteOffset + 4 * lo], [16, 16, 16], body / 4, [lr, mu, wd, scale]);
    sgdTail(w, v, s, lo + body, hi, { lr, mu, wd, scale }, v, w, 0);
  }

  /**
   * sgd's update of [lo, hi) staged, w and v left as they are: s <- v' (the new momentum, over the
   * sum it was computed from), out[i - lo] <- w' (the new weights). sgdFinish later makes them the
   * state, bit for bit what sgd would have left. On this thread (a chunk at a time).
   */
  sgdTo(w: Float32Array, v: Float32Array, s: Float32Array, lo: number, hi: number, out: Float32Array, lr: number, mu: number, wd: number, scale: number): void {
    const len = hi - lo;
    const body = len - (len % 4);
    this.k.sgdto(w.byteOffset + 4 * lo, v.byteOffset + 4 * lo, s.byteOffset + 4 * lo, out.byteOffset, s.byteOffset + 4 * lo, body / 4, lr, mu, wd, scale);
    sgdTail(w, v, s, lo + body, hi, { lr, mu, wd, scale }, s, out, lo);
  }

  /** After sgdTo over [lo, hi): v <- s; w <- w - lr s (the `out` it gave). */
  sgdFinish(w: Float32Array, v: Float32Array, s: Float32Array, lo: number, hi: number, lr: number): void {
    const len = hi - lo;
    const body = len - (len % 4);
    this.k.fin(w.byteOffset + 4 * lo, v.byteOffset + 4 * lo, s.byteOffset + 4 * lo, body / 4, lr);
    finishTail(w, v, s, lo + body, hi, lr);
  }

  /** out[i - lo] <- scale s[i] over [lo, hi) (mean's value, staged). */
  meanTo(s: Float32Array, lo: number, hi: number, out: Float32Array, scale: number): void {
    const len = hi - lo;
    const body = len - (len % 4);
    this.k.avg(out.byteOffset, s.byteOffset + 4 * lo, body / 4, scale);
    meanTail(s, lo + body, hi, out, lo, scale);
  }

  /** w <- scale s over [lo, hi) (averaged BN statistics). */
  mean(w: Float32Array, s: Float32Array, lo: number, hi: number, scale: number): void {
    const len = hi - lo;
    const body = len - (len % 4);
    this.run('avg', [w.byteOffset + 4 * lo, s.byteOffset + 4 * lo], [16, 16], body / 4, [scale]);
    meanTail(s, lo + body, hi, w, 0, scale);
  }
}

const ARENAS = new WeakMap<ArrayBufferLike, FloatArena>();

/** Units (vectors of 4 floats or 8 codes) a helper thread's part has at least: 256 KiB of floats. */
export const PARALLEL_MIN_UNITS = 16384;

/** Applies `--update-threads` (sets VGG_UPDATE_THREADS, which worker threads and child processes inherit). */
export function setUpdateThreads(n: number | undefined): void {
  if (n !== undefined) process.env.VGG_UPDATE_THREADS = String(n);
}

/**
 * Threads an aggregator's arena runs its SGD update on: VGG_UPDATE_THREADS (1-64; `--update-threads`
 * of the commands that aggregate sets it), else 1. Opt-in, because more than 1 makes the arena's
 * memory shared, and V8 copies into a SharedArrayBuffer (TypedArray.set: the socket reads into the
 * frame slots) with its relaxed memmove: 4 MiB in 0.19-0.21 ms here against 0.09 ms into plain memory.
 * On the device machine's 16-core Xeon SGD over 138M floats took 153-168 ms on one thread and 54 ms on
 * 4 (kernel-pool.ts), but whole steps with 4 threads were slower in most layouts there (the reduce was
 * split too in that run): the trade is the update's time against every received byte's copy.
 */
export function updateThreads(): number {
  const set = process.env.VGG_UPDATE_THREADS;
  if (set !== undefined && set !== '') {
    const n = Number(set);
    if (!Number.isInteger(n) || n < 1 || n > 64) throw new RangeError(`VGG_UPDATE_THREADS: expected an integer 1-64, got ${JSON.stringify(set)}`);
    return n;
  }
  return 1;
}

/** Frame slots an aggregator's arena has room for: one per member streaming a chunk at once (frame-slot.ts). */
export const FRAME_SLOTS_MAX = 64;
/** Floats of one frame slot: a gradient chunk (CHUNK_FLOATS of wire-protocol.ts, which imports this file) and 64 KiB. */
export const FRAME_SLOT_FLOATS = (1 << 20) + 16 * 1024;

/**
 * The momentum kernels' arithmetic on single floats (fp32 per operation, as the f32x4 lanes): v' into vOut[i], w'
 * into wOut[i - wAt] (sgd: v and w themselves; sgdTo: s and out). The kernels' last < 4 of a range, and the whole
 * update where there is no arena (flat-sgd.ts): the same floats either way, bit for bit.
 */
export function sgdTail(w: Float32Array, v: Float32Array, s: Float32Array, a: number, b: number, k: { lr: number; mu: number; wd: number; scale: number },
  vOut: Float32Array, wOut: Float32Array, wAt: number): void {
  const f = Math.fround;
  const { lr, mu, wd, scale } = k;
  for (let i = a; i < b; i += 1) {
    const wi = w[i] as number;
    const vi = f(f(f(mu) * (v[i] as number)) + f(f((s[i] as number) * f(scale)) + f(f(wd) * wi)));
    vOut[i] = vi;
    wOut[i - wAt] = f(wi - f(f(lr) * vi));
  }
}

/** The `fin` kernel on single floats (after sgdTo over [a, b): v <- s; w <- w - lr s), fp32 per operation, as sgdTail. */
export function finishTail(w: Float32Array, v: Float32Array, s: Float32Array, a: number, b: number, lr: number): void {
  const f = Math.fround;
  for (let i = a; i < b; i += 1) {
    v[i] = s[i] as number;
    w[i] = f((w[i] as number) - f(f(lr) * (s[i] as number)));
  }
}

/** The `avg` kernel on single floats: out[i - outAt] <- scale s[i] over [a, b) (fp32: scale rounded, one product), as sgdTail. */
export function meanTail(s: Float32Array, a: number, b: number, out: Float32Array, outAt: number, scale: number): void {
  const k = Math.fround(scale);
  for (let i = a; i < b; i += 1) out[i - outAt] = (s[i] as number) * k;
}

/**
 * Room an aggregator over `n` floats takes in its arena: weights, momentum, the
 * sum, chunk-sized staging (a
 * 16-bit chunk's decoded floats), up to FRAME_SLOTS_MAX frame slots of a
 * chunk (4 MiB) each and STAGE_ROOMS rooms of staged weights (early commit) or
 * 16-bit codes (a bf16/fp16 broadcast, encoded a chunk at a time). (Unused room costs address space, not memory: pages are
 * touched on use, a slot only once that many members stream at once.)
 */
export function aggregatorArenaFloats(n: number): number {
  return 3 * n + 4 * (1 << 20) + FRAME_SLOTS_MAX * FRAME_SLOT_FLOATS + STAGE_ROOMS * STAGE_ROOM_FLOATS * 1.5;
}

/** Rooms of a chunk's staged new weights (fp32 and its 16-bit codes) for the early commit's broadcast (aggregator.ts). */
export const STAGE_ROOMS = 8;
/** Floats of one stage room: a chunk (CHUNK_FLOATS of wire-protocol.ts). */
export const STAGE_ROOM_FLOATS = 1 << 20;

/**
 * An arena for `floats` floats, or undefined where it cannot be had (over 4 GiB,
 * or no WebAssembly SIMD): the callers then use plain arrays and the JS loops.
 * `threads` (default updateThreads()): see FloatArena.
 */
export function tryArena(floats: number, threads = updateThreads(), share: ConstructorParameters<typeof FloatArena>[2] = {}): FloatArena | undefined {
  if (process.env.VGG_NO_SIMD === '1') return undefined;
  try {
    return new FloatArena(floats, threads, share);
  } catch {
    return undefined;
  }
}

/** The arena all of `arrays` live in, if they share one. */
export function arenaOf(...arrays: Float32Array[]): FloatArena | undefined {
  const arena = ARENAS.get((arrays[0] as Float32Array).buffer);
  return arena !== undefined && arrays.every((a) => a.buffer === arena.memory.buffer) ? arena : undefined;
}

interface Kernels {
  acc(dst: number, src: number, n4: number, k: number): number;
  accbf16(dst: number, src: number, n8: number, k: number): number;
  put(dst: number, src: number, n4: number, k: number): number;
  putbf16(dst: number, src: number, n8: number, k: number): number;
  bf16enc(src: number, dst: number, n8: number): number;
  bf16dec(src: number, dst: number, n8: number): void;
  sgd(w: number, v: number, s: number, n4: number, lr: number, mu: number, wd: number, scale: number): void;
  avg(w: number, s: number, n4: number, scale: number): void;
  sgdto(w: number, v: number, s: number, wo: number, vo: number, n4: number, lr: number, mu: number, wd: number, scale: number): void;
  fin(w: number, v: number, s: number, n4: number, lr: number): void;
}

// ---- the module, assembled ---------------------------------------------------------------

const I32 = 0x7f;
const F32 = 0x7d;
const V128 = 0x7b;

const uleb = (n: number): number[] => {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
};
const vec = (items: number[][]): number[] => [...uleb(items.length), ...items.flat()];
const str = (s: string): number[] => [...uleb(s.length), ...Buffer.from(s, 'latin1')];
const section = (id: number, body: number[]): number[] => [id, ...uleb(body.length), ...body];

// Instructions.
const get = (i: number) => [0x20, i];
const set = (i: number) => [0x21, i];
const i32c = (v: number) => [0x41, v];
const simd = (op: number, ...imm: number[]) => [0xfd, ...uleb(op), ...imm];
const load = simd(0x00, 4, 0); // v128.load align=16 offset=0
const store = simd(0x0b, 4, 0);
const splat = simd(0x13);
const lane = (l: number) => simd(0x1f, l);
const add = simd(0xe4);
const sub = simd(0xe5);
const mul = simd(0xe6);
const i32splat = simd(0x11);
const and = simd(0x4e);
const or = simd(0x50);
const anyTrue = simd(0x53); // v128.any_true
const f32ne = simd(0x42); // f32x4.ne
const narrowU = simd(0x86); // i16x8.narrow_i32x4_u
const extLowU = simd(0xa9); // i32x4.extend_low_i16x8_u
const extHighU = simd(0xaa);
const shl = simd(0xab); // i32x4.shl
const shrU = simd(0xad); // i32x4.shr_u
const iadd = simd(0xae); // i32x4.add
const i32big = (v: number) => { // i32.const, signed LEB128
  const out = [0x41];
  let x = v | 0;
  for (;;) {
    const b = x & 0x7f;
    x >>= 7;
    if ((x === 0 && (b & 0x40) === 0) || (x === -1 && (b & 0x40) !== 0)) { out.push(b); return out; }
    out.push(b | 0x80);
  }
};
const i32v = (v: number) => [...i32big(v), ...i32splat];
const F32ADD = [0x92];
/** i += 1; each pointer += its step (16 bytes unless given as [pointer, step]) */
const advance = (i: number, ptrs: (number | [number, number])[]) => [
  ...ptrs.flatMap((p) => { const [q, step] = typeof p === 'number' ? [p, 16] : p; return [...get(q), ...i32c(step), 0x6a, ...set(q)]; }),
  ...get(i), ...i32c(1), 0x6a, ...set(i),
];
/** block { loop { if (i >= n) break; body; advance; continue } } */
const forEach = (i: number, n: number, body: number[], ptrs: (number | [number, number])[]) => [
  0x02, 0x40, 0x03, 0x40, ...get(i), ...get(n), 0x4f, 0x0d, 1, ...body, ...advance(i, ptrs), 0x0c, 0, 0x0b, 0x0b,
];
const fn = (locals: [number, number][], code: number[]) => {
  const body = [...vec(locals.map(([count, type]) => [...uleb(count), type])), ...code, 0x0b];
  return [...uleb(body.length), ...body];
};

function assemble(shared: boolean): Uint8Array<ArrayBuffer> {
  // acc(dst 0, src 1, n4 2, k 3) -> f32; locals: i 4, kv 5, probe 6, g 7, zero 8.
  // put: the same with dst = 0 + k g (the first contribution: dst is not read; + 0 keeps -0 as the sum did).
  const accOrPut = (put: boolean) => fn([[1, I32], [4, V128]], [
    ...get(3), ...splat, ...set(5),
    ...forEach(4, 2, [
      ...get(1), ...load, ...set(7),
      ...get(0), ...(put ? get(8) : [...get(0), ...load]), ...get(7), ...get(5), ...mul, ...add, ...store,
      ...get(6), ...get(7), ...get(8), ...mul, ...add, ...set(6),
    ], [0, 1]),
    ...get(6), ...lane(0), ...get(6), ...lane(1), ...F32ADD, ...get(6), ...lane(2), ...F32ADD, ...get(6), ...lane(3), ...F32ADD,
  ]);
  // The momentum update, operation for operation the same in its two kernels: v' <- mu v + (scale s + wd w), w' <- w - lr v'.
  // sgd(w 0, v 1, s 2, n4 3, lr 4, mu 5, wd 6, scale 7): in place. sgdto(w 0, v 1, s 2, wo 3, vo 4, n4 5, lr 6, mu 7, wd 8,
  // scale 9): v' to vo, w' to wo. Locals after the parameters: i, lrv, muv, wdv, scv, wv, vv.
  const momentumSgd = (to: boolean) => {
    const n = to ? 5 : 3; // n4's index: the pointers come before it
    const [wo, vo] = to ? [3, 4] : [0, 1];
    const lr = n + 1; // then mu, wd, scale
    const i = n + 5;
    const [lrv, muv, wdv, scv, wv, vv] = [i + 1, i + 2, i + 3, i + 4, i + 5, i + 6];
    return fn([[1, I32], [6, V128]], [
      ...get(lr), ...splat, ...set(lrv), ...get(lr + 1), ...splat, ...set(muv), ...get(lr + 2), ...splat, ...set(wdv), ...get(lr + 3), ...splat, ...set(scv),
      ...forEach(i, n, [
        ...get(0), ...load, ...set(wv),
        ...get(1), ...load, ...get(muv), ...mul,
        ...get(2), ...load, ...get(scv), ...mul, ...get(wv), ...get(wdv), ...mul, ...add,
        ...add, ...set(vv),
        ...get(vo), ...get(vv), ...store,
        ...get(wo), ...get(wv), ...get(vv), ...get(lrv), ...mul, ...sub, ...store,
      ], Array.from({ length: n }, (_, k) => k)),
    ]);
  };
  const sgd = momentumSgd(false);
  const sgdTo = momentumSgd(true);
  // fin(w 0, v 1, s 2, n4 3, lr 4); locals: i 5, lrv 6, sv 7: v <- s; w <- w - lr s (sgdto's wo when s holds its vo).
  const fin = fn([[1, I32], [2, V128]], [
    ...get(4), ...splat, ...set(6),
    ...forEach(5, 3, [
      ...get(2), ...load, ...set(7),
      ...get(1), ...get(7), ...store,
      ...get(0), ...get(0), ...load, ...get(7), ...get(6), ...mul, ...sub, ...store,
    ], [0, 1, 2]),
  ]);
  // avg(w 0, s 1, n4 2, scale 3); locals: i 4, scv 5
  const avg = fn([[1, I32], [1, V128]], [
    ...get(3), ...splat, ...set(5),
    ...forEach(4, 2, [...get(0), ...get(1), ...load, ...get(5), ...mul, ...store], [0, 1]),
  ]);
  // accbf16(dst 0, src 1, n8 2, k 3) -> f32; locals: i 4, kv 5, probe 6, c 7, g 8, zero 9
  const widen = (half: number[]) => [...get(7), ...half, ...i32c(16), ...shl, ...set(8)];
  const accOne = (put: boolean, at: number) => [
    ...get(0), ...(put ? get(9) : [...get(0), ...load.slice(0, -1), at]), ...get(8), ...get(5), ...mul, ...add, ...store.slice(0, -1), at,
    ...get(6), ...get(8), ...get(9), ...mul, ...add, ...set(6),
  ];
  const accOrPutBf16 = (put: boolean) => fn([[1, I32], [5, V128]], [
    ...get(3), ...splat, ...set(5),
    ...forEach(4, 2, [
      ...get(1), ...load, ...set(7),
      ...widen(extLowU), ...accOne(put, 0),
      ...widen(extHighU), ...accOne(put, 16),
    ], [[0, 32], 1]),
    ...get(6), ...lane(0), ...get(6), ...lane(1), ...F32ADD, ...get(6), ...lane(2), ...F32ADD, ...get(6), ...lane(3), ...F32ADD,
  ]);
  // bf16enc(src 0, dst 1, n8 2) -> i32; locals: i 3, x 4, (5 unused), then constants splat once (V8 does not hoist a splat
  // out of the loop) 1 6, 0x7fff 7, (8, 9 unused), and the NaN probe 10. Per 4 lanes of x: (x + 0x7fff + ((x >> 16) & 1))
  // >> 16, rounded to nearest even; the probe ORs in each lane's x != x (one compare where |x| > Inf took an and and a
  // compare with two more constants: 0.23 against 0.32 ns a float in cache here). A NaN would round wrongly (to Inf,
  // or past the sign bit): a call whose probe is set is redone by the caller element by element. (An i8x16.shuffle
  // taking the top halves of 8 lanes in place of the shifts and the narrow ran no faster: V8 lowers a two-operand
  // shuffle to two pshufb and a por; with a zero vector in place of the decode's extends and shifts, at half speed.)
  const round = (at: number) => [
    ...get(0), ...load.slice(0, -1), at, ...set(4),
    ...get(10), ...get(4), ...get(4), ...f32ne, ...or, ...set(10),
    ...get(4), ...get(7), ...iadd, ...get(4), ...i32c(16), ...shrU, ...get(6), ...and, ...iadd, ...i32c(16), ...shrU,
  ];
  const bf16enc = fn([[1, I32], [7, V128]], [
    ...i32v(1), ...set(6), ...i32v(0x7fff), ...set(7),
    ...forEach(3, 2, [...get(1), ...round(0), ...round(16), ...narrowU, ...store], [[0, 32], 1]),
    ...get(10), ...anyTrue,
  ]);
  // bf16dec(src 0, dst 1, n8 2); locals: i 3, c 4
  const bf16dec = fn([[1, I32], [1, V128]], [
    ...forEach(3, 2, [
      ...get(0), ...load, ...set(4),
      ...get(1), ...get(4), ...extLowU, ...i32c(16), ...shl, ...store,
      ...get(1), ...get(4), ...extHighU, ...i32c(16), ...shl, ...store.slice(0, -1), 16,
    ], [0, [1, 32]]),
  ]);
  const types = [
    [0x60, ...vec([[I32], [I32], [I32], [F32]]), ...vec([[F32]])],
    [0x60, ...vec([[I32], [I32], [I32], [I32], [F32], [F32], [F32], [F32]]), ...vec([])],
    [0x60, ...vec([[I32], [I32], [I32], [F32]]), ...vec([])],
    [0x60, ...vec([[I32], [I32], [I32]]), ...vec([])],
    [0x60, ...vec([[I32], [I32], [I32], [I32], [I32], [I32], [F32], [F32], [F32], [F32]]), ...vec([])],
    [0x60, ...vec([[I32], [I32], [I32], [I32], [F32]]), ...vec([])],
    [0x60, ...vec([[I32], [I32], [I32]]), ...vec([[I32]])],
  ];
  const bytes = [
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, vec(types)),
    // memory import: limits flag 0x00 (min 0, no max) or 0x03 (shared, min 0, max 65536 pages).
    ...section(2, vec([[...str('env'), ...str('memory'), 0x02, ...(shared ? [0x03, 0x00, ...uleb(65536)] : [0x00, 0x00])]])),
    ...section(3, vec([[0], [1], [2], [0], [6], [3], [0], [0], [4], [5]])),
    ...section(7, vec([[...str('acc'), 0x00, 0], [...str('sgd'), 0x00, 1], [...str('avg'), 0x00, 2], [...str('accbf16'), 0x00, 3], [...str('bf16enc'), 0x00, 4], [...str('bf16dec'), 0x00, 5], [...str('put'), 0x00, 6], [...str('putbf16'), 0x00, 7], [...str('sgdto'), 0x00, 8], [...str('fin'), 0x00, 9]])),
    ...section(10, vec([accOrPut(false), sgd, avg, accOrPutBf16(false), bf16enc, bf16dec, accOrPut(true), accOrPutBf16(true), sgdTo, fin])),
  ];
  return new Uint8Array(bytes);
}

const compiled = new Map<boolean, WebAssembly.Module>();
/** The module importing an unshared memory, or (`shared`) a shared one of at most 4 GiB. */
function module(shared = false): WebAssembly.Module {
  let m = compiled.get(shared);
  if (m === undefined) compiled.set(shared, m = new WebAssembly.Module(assemble(shared)));
  return m;
}
