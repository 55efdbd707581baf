import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { boolEnv } from '../shared/option-parsers.ts';

const ADDON = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../build/host_memory.node');

interface Addon { reuseFreedMemory: () => boolean; viewOffset: (view: Uint8Array) => number; streamCopy: (dst: ArrayBufferView, src: ArrayBufferView) => void; streamDecodeBf16: (dst: Float32Array, src: Uint16Array) => boolean; streamPut: (dst: Float32Array, src: Float32Array | Uint16Array, k: number) => boolean | undefined; streamPutTwo?: (dst: Float32Array, a: Float32Array, ka: number, b: Float32Array | Uint16Array, kb: number, round: boolean) => number | undefined; encodeBf16: (dst: Uint16Array, src: Float32Array, isa?: string) => string | undefined }
let addon: Addon | null | undefined;
/** worker/native/host_memory.c, loaded once per thread; null where it is not built. */
function load(): Addon | null {
  addon ??= existsSync(ADDON) ? createRequire(import.meta.url)(ADDON) as Addon : null;
  return addon;
}

/**
 * Has glibc keep freed large blocks mapped for reuse (worker/native/host_memory.c), so a worker's
 * per-step host copies of the weights and gradients (hundreds of MB, allocated and freed every step)
 * land in memory already mapped instead of faulting in and zeroing fresh pages each time. On by
 * default for workers; `VGG_HEAP_REUSE=false` leaves malloc as it is. Returns what happened, for the log.
 */
export function reuseFreedMemory(env: NodeJS.ProcessEnv = process.env): { applied: boolean; reason: string } {
  if (!boolEnv('VGG_HEAP_REUSE', true, env)) return { applied: false, reason: 'VGG_HEAP_REUSE=false' };
  const a = load();
  if (a === null) return { applied: false, reason: `${ADDON} not built (npm run build:native)` };
  return a.reuseFreedMemory() ? { applied: true, reason: 'mallopt: M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GiB' } : { applied: false, reason: 'not glibc' };
}

/** Copies of at least this many bytes bypass the cache (copyFloats); smaller ones are likely read again soon. */
const STREAM_MIN_BYTES = 1 << 20;

/**
 * dst.set(src, at), for the worker's large copies into memory read next only much later (a tensor's gradient
 * into the gradient buffer, a hosted shard's weights chunk into the weights version): from 1 MiB on, with
 * non-temporal stores (worker/native/host_memory.c streamCopy: no read of each destination line first; 69M
 * floats into shared memory 17 against 21 ms from a cold source, 12 against 15.5 from hot 4 MiB chunks, an
 * in-process probe here). TypedArray.set where the addon is not built and for small copies; overlapping views are copied as set() copies them.
 */
export function copyFloats(dst: Float32Array, at: number, src: Float32Array): void {
  const a = src.length * 4 >= STREAM_MIN_BYTES ? load() : null;
  if (a === null) {
    dst.set(src, at);
    return;
  }
  if (!Number.isInteger(at) || at < 0 || at + src.length > dst.length) throw new RangeError(`copyFloats: expected ${src.length} floats to fit at ${at} of ${dst.length}`);
  a.streamCopy(dst.subarray(at, at + src.length), src);
}

/**
 * bfloat16 `codes` decoded into `out` (at least as long) with non-temporal stores, for a weights chunk decoded
 * into the weights version (the addon's streamDecodeBf16: 138M floats into a cold version 24-26 ms against
 * 34-37 with plain stores, a C probe here). False, nothing written, for fewer than 1 MiB of floats, without the
 * addon, or where the two overlap: the caller decodes them its own way.
 */
export function streamDecodeBf16(codes: Uint16Array, out: Float32Array): boolean {
  if (codes.length * 4 < STREAM_MIN_BYTES) return false;
  if (out.length < codes.length) throw new RangeError(`streamDecodeBf16: expected room for ${codes.length} floats, got ${out.length}`);
  return load()?.streamDecodeBf16(out, codes) ?? false;
}

/**
 * The alignment TensorFlow needs to use a host buffer as a tensor's storage: TF_NewTensor (tfjs-node's
 * createTensor) wraps the caller's memory only at a multiple of EIGEN_MAX_ALIGN_BYTES (16, 32 or 64 by
 * the build's vector width) and copies it into a buffer of its own otherwise.
 */
export const TENSOR_ALIGN_BYTES = 64;

/** The address of byte `at` of `buffer` (shared or not) modulo TENSOR_ALIGN_BYTES; undefined where the addon is not built. */
function offsetAt(buffer: ArrayBufferLike, at: number): number | undefined {
  const a = load();
  return a === null ? undefined : a.viewOffset(new Uint8Array(buffer, at, 0)) % TENSOR_ALIGN_BYTES;
}

/**
 * The address of a view's first byte modulo TENSOR_ALIGN_BYTES (0: TensorFlow wraps it without a copy);
 * undefined where the addon is not built.
 */
export function misalignment(view: ArrayBufferView): number | undefined {
  return offsetAt(view.buffer, view.byteOffset);
}

/**
 * `n` zeroed floats starting at a TENSOR_ALIGN_BYTES boundary, in an ArrayBuffer of their own (it can be
 * transferred between threads: the address stays): what a thread keeps for itself, e.g. a tensor copied
 * out of two shards' ranges (readRanges). Where the addon is not built, unaligned (TensorFlow copies what
 * it finds misaligned).
 */
export function alignedFloats(n: number): Float32Array {
  return alignedIn(new ArrayBuffer(4 * n + TENSOR_ALIGN_BYTES), n);
}

/**
 * `n` zeroed floats at a TENSOR_ALIGN_BYTES boundary in shared memory: a worker's weights versions (the
 * views of every tensor at a 16-float offset in them, shards being cut at 16 floats, are then aligned, and
 * tfjs-node's createTensor takes them as the host tensors' storage instead of copying 553 MB a step). The
 * transport thread receives a version into one and lends it to the main thread, which gives it back,
 * both by posting the view (no transfer): a 553 MB ArrayBuffer transferred to a thread counts there as
 * new external memory, and V8 answered each arrival with a major collection (one a step on each side,
 * ~10 ms each here; thirteenth session). The lending rules (ShardGroup.place: no version the main thread
 * holds is received into) keep the two threads off the same bytes.
 */
export function sharedAlignedFloats(n: number): Float32Array {
  return alignedIn(new SharedArrayBuffer(4 * n + TENSOR_ALIGN_BYTES), n);
}

/**
 * `n` floats of `room` (at least n + TENSOR_ALIGN_BYTES / 4 floats, 4-byte aligned) from its first TENSOR_ALIGN_BYTES
 * boundary; from its start where the addon cannot tell.
 */
export function alignedWithin(room: Float32Array, n: number): Float32Array {
  const offset = misalignment(room);
  if (room.length < n + TENSOR_ALIGN_BYTES / 4) throw new RangeError(`alignedWithin: expected room for ${n + TENSOR_ALIGN_BYTES / 4} floats, got ${room.length}`);
  const skip = offset === undefined ? 0 : ((TENSOR_ALIGN_BYTES - offset) % TENSOR_ALIGN_BYTES) / 4;
  return room.subarray(skip, skip + n);
}

/** `n` floats of `buffer` (4 n + TENSOR_ALIGN_BYTES bytes) from its first TENSOR_ALIGN_BYTES boundary (from 0 where the addon cannot tell). */
function alignedIn(buffer: ArrayBufferLike, n: number): Float32Array {
  const offset = offsetAt(buffer, 0);
  const skip = offset === undefined ? 0 : (TENSOR_ALIGN_BYTES - offset) % TENSOR_ALIGN_BYTES;
  return new Float32Array(buffer, skip, n);
}

/**
 * dst[i] = 0 + k * src[i] (src floats, or bfloat16 codes) with non-temporal stores: the first contribution to a
 * range of an aggregator's gradient sum, read next only at the commit (the addon's streamPut, bit for bit the SIMD
 * kernels' put and putbf16; 69M floats 18 against 24.6 ms with plain stores from a cold source, 11.4 against 16.7
 * from a hot 4 MiB chunk, a C probe here). Whether src was finite (no NaN, no Inf), or undefined, nothing written,
 * for fewer than 1 MiB of floats, without the addon, or where the two overlap: the caller puts them its own way.
 */
export function streamPut(dst: Float32Array, src: Float32Array | Uint16Array, k: number): boolean | undefined {
  if (src.length * 4 < STREAM_MIN_BYTES) return undefined;
  if (dst.length < src.length) throw new RangeError(`streamPut: expected room for ${src.length} floats, got ${dst.length}`);
  return load()?.streamPut(dst, src, k) ?? undefined;
}

/** Whether streamPutTwo is there (the addon, built with it). */
export const hasStreamPutTwo = (): boolean => load()?.streamPutTwo !== undefined;

/**
 * dst[i] = (0 + ka * a[i]) + kb * b[i] with non-temporal stores: the first two contributions to a range of an
 * aggregator's sum in one pass, operation for operation a put of `a` (streamPut, the SIMD put) then the SIMD reduce
 * of `b`, so the same floats bit for bit, without the sum's write and read between them. Bit 0 of the result: `a`
 * held a NaN or an Inf; bit 1: `b` did (dst is written all the same, as the kernels do). Undefined, nothing
 * written, without the addon or where dst overlaps a source; a RangeError where a and b differ in length or dst is
 * shorter. `b` may be bfloat16 codes; with `round`, a's floats are rounded to bfloat16 precision first (as the
 * worker's encode would have sent them; one that rounds to Inf counts as not finite).
 */
export function streamPutTwo(dst: Float32Array, a: Float32Array, ka: number, b: Float32Array | Uint16Array, kb: number, round = false): number | undefined {
  if (a.length !== b.length || dst.length < a.length) throw new RangeError(`streamPutTwo: expected sources of one length and room for them, got ${a.length} and ${b.length} values into ${dst.length}`);
  return load()?.streamPutTwo?.(dst, a, ka, b, kb, round) ?? undefined;
}

/** The instruction sets the addon's bfloat16 encoder has, best first ('scalar' for the tests only). */
export const BF16_ISAS = ['avx512', 'avx2', 'scalar'] as const;

/** Below this many floats a conversion stays in the SIMD kernel of the caller's arena (a call into the addon costs more). */
const NATIVE_MIN_FLOATS = 4096;

/**
 * fp32 to bfloat16 codes in the addon (encodeBf16Scalar's rule, bit for bit: round to nearest even, NaN kept NaN) with
 * the widest vectors the CPU has: 16 lanes (AVX-512BW) or 8 (AVX2) against the wasm kernel's 4. 69M floats from cache
 * 5.1 against 14 ms, from a cold source 16-17 against 19-20 (C probe here). The instruction set used, or undefined,
 * nothing written, for fewer than 4096 floats, without the addon, or on a CPU with neither (the caller's wasm kernel is
 * as fast there). `isa` (tests): one of BF16_ISAS; a RangeError where the CPU lacks it.
 */
export function encodeBf16Native(src: Float32Array, dst: Uint16Array, isa?: (typeof BF16_ISAS)[number]): string | undefined {
  if (isa === undefined && src.length < NATIVE_MIN_FLOATS) return undefined;
  if (dst.length < src.length) throw new RangeError(`encodeBf16Native: expected room for ${src.length} codes, got ${dst.length}`);
  const a = load();
  if (a === null) return undefined;
  return isa === undefined ? a.encodeBf16(dst, src) : a.encodeBf16(dst, src, isa);
}
