import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { boolEnv } from '../shared/option-parsers.ts';

const ADDON = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../build/host_memory.node');

interface Addon { reuseFreedMemory: () => boolean; pageOffset: (buffer: ArrayBuffer) => number }
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

/**
 * The alignment TensorFlow needs to use a host buffer as a tensor's storage: TF_NewTensor (tfjs-node's
 * createTensor) wraps the caller's memory only at a multiple of EIGEN_MAX_ALIGN_BYTES (16, 32 or 64 by
 * the build's vector width) and copies it into a buffer of its own otherwise.
 */
export const TENSOR_ALIGN_BYTES = 64;

/**
 * The address of a view's first byte modulo TENSOR_ALIGN_BYTES (0: TensorFlow wraps it without a copy);
 * undefined where the addon is not built or the view is not over an ArrayBuffer.
 */
export function misalignment(view: ArrayBufferView): number | undefined {
  const a = load();
  if (a === null || !(view.buffer instanceof ArrayBuffer)) return undefined;
  return (a.pageOffset(view.buffer) + view.byteOffset) % TENSOR_ALIGN_BYTES;
}

/**
 * `n` zeroed floats starting at a TENSOR_ALIGN_BYTES boundary, in an ArrayBuffer of their own (it can be
 * transferred between threads: the address stays). A worker receives the weights into these: the views
 * of every tensor at a 16-float offset in them (shards are cut at 16 floats) are then aligned, and
 * tfjs-node's createTensor takes them as the host tensors' storage instead of copying 553 MB a step.
 * Where the addon is not built, a plain array (TensorFlow copies what it finds misaligned).
 */
export function alignedFloats(n: number): Float32Array {
  const a = load();
  if (a === null) return new Float32Array(n);
  const buffer = new ArrayBuffer(4 * n + TENSOR_ALIGN_BYTES);
  const skip = (TENSOR_ALIGN_BYTES - (a.pageOffset(buffer) % TENSOR_ALIGN_BYTES)) % TENSOR_ALIGN_BYTES;
  return new Float32Array(buffer, skip, n);
}
