/**
 * The host-side copies a tfjs-node(-gpu) worker makes every step, outside the all-reduce, for the
 * benchmarks to do for real (`bench:scaling --host-copies true`, worker-proc.ts `--host-copies`) and to
 * calibrate their model on. Per parameter tensor (worker/job-loop.ts, worker/model/vgg-model.ts):
 *
 * - weights in: `Transport.view(lo, hi)` (a view of the received version; a copy only for a tensor
 *   that spans two shards' ranges; until the tenth session a copy, `read`), then tf.tensor's values
 *   written into a TF host tensor at their first use (tfjs-node's createTensor: a fresh buffer, a
 *   copy), then host-to-device (DMA; not done here, see H2D_MS);
 * - gradients out: device-to-host into a TF host tensor (DMA; D2H_MS), `dataSync()` (tfjs-node's
 *   tensorDataSync: a fresh array, a copy), then `flat.set(..., offset)` into the shared gradient buffer
 *   (a copy).
 *
 * Three copies of the 553 MB per step (four before the views), two into freshly allocated memory
 * (mapped already with worker/heap-reuse.ts), all on the worker's main thread, none of it overlapped
 * with the GPU's compute except the classifier's gradients (which come out during the conv body's
 * backward when the worker overlaps).
 */
import type { ParamEntry } from '../../shared/param-layout.ts';

/**
 * H200, VGG-16's 553 MB of fp32 gradients device-to-host (docs/measurements/, bench/gpu/vgg16_overlap.py):
 * 40.5 ms into pageable memory, 10.1 ms into pinned. tfjs-node's host tensors are ordinary (pageable)
 * memory, so the pageable figure; its extra over pinned is the driver's copy through a pinned staging
 * buffer. Host-to-device was not measured: taken as the same.
 */
export const D2H_MS = 40.5;
export const H2D_MS = 40.5;

/** The weights side: per tensor the values as `read` gives them (Transport.view) and TF's copy of them. Returns the ms taken. */
export function copyWeightsIn(entries: readonly ParamEntry[], read: (lo: number, hi: number) => Float32Array): number {
  const t = performance.now();
  let keep = 0;
  for (const e of entries) {
    const values = read(e.offset, e.offset + e.size);
    const tfHost = new Float32Array(values); // createTensor's copy into TF's host buffer
    keep += tfHost[tfHost.length - 1] ?? 0;
  }
  sink += keep;
  return performance.now() - t;
}

/**
 * The gradients side for `entries`: per tensor dataSync's fresh copy of TF's host tensor (`device`, the
 * stand-in for it), then the copy into the shared gradient buffer `flat`. Returns the ms taken.
 */
export function copyGradientsOut(entries: readonly ParamEntry[], device: Float32Array, flat: Float32Array): number {
  const t = performance.now();
  for (const e of entries) {
    const synced = device.slice(e.offset, e.offset + e.size); // tensorDataSync: a fresh array
    flat.set(synced, e.offset);
  }
  return performance.now() - t;
}

/** Keeps the copies' results observable (no engine may drop them as unused). */
let sink = 0;
export const hostCopySink = (): number => sink;
