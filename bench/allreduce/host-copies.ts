/**
 * The host-side copies a tfjs-node(-gpu) worker makes every step, outside the all-reduce, for the
 * benchmarks to do for real (`bench:scaling --host-copies true`, worker-proc.ts `--host-copies`) and to
 * calibrate their model on. Per parameter tensor (worker/job-loop.ts, worker/model/vgg-model.ts):
 *
 * - weights in: `Transport.view(lo, hi)` (a view of the received version, one buffer of the whole vector
 *   even with several shards since the eleventh session; until the tenth session a copy), then tf.tensor's values
 *   made a TF host tensor at their first use (tfjs-node's createTensor: TF_NewTensor takes the array as
 *   the tensor's storage when it lies at a multiple of EIGEN_MAX_ALIGN_BYTES, and copies it into a
 *   fresh buffer otherwise; the received weights start at 64-byte boundaries since the eleventh
 *   session, worker/host-memory.ts), then host-to-device (DMA; not done here, see H2D_MS);
 * - gradients out: device-to-host into a TF host tensor (DMA; D2H_MS), `dataSync()` (tfjs-node's
 *   tensorDataSync: a fresh array, a copy), then `flat.set(..., offset)` into the shared gradient buffer
 *   (a copy; on the transport thread since the eleventh session, Transport.putGradient).
 *
 * Read in tfjs-node's binding (tfjs_backend.cc: CreateTFE_TensorHandleFromTypedArray,
 * CopyTFE_TensorHandleDataToTypedArray) and TensorFlow's tf_tensor.cc; not run here (no libtensorflow).
 * Two copies of the 553 MB per step since the aligned weights (three before, four before the views),
 * both of the gradients, into freshly allocated memory (mapped already with worker/host-memory.ts).
 */
import type { ParamEntry } from '../../shared/param-layout.ts';
import { misalignment } from '../../worker/host-memory.ts';

/**
 * H200, VGG-16's 553 MB of fp32 gradients device-to-host (docs/measurements/, bench/gpu/vgg16_overlap.py):
 * 40.5 ms into pageable memory, 10.1 ms into pinned. tfjs-node's host tensors are ordinary (pageable)
 * memory, so the pageable figure; its extra over pinned is the driver's copy through a pinned staging
 * buffer. Host-to-device was not measured: taken as the same.
 */
export const D2H_MS = 40.5;
export const H2D_MS = 40.5;

/**
 * The weights side: per tensor the values as `read` gives them (Transport.view), and TF's copy of them
 * where it makes one (createTensor copies a misaligned array; where the alignment is unknown, as if
 * misaligned). Returns the ms taken and the bytes copied.
 */
export function copyWeightsIn(entries: readonly ParamEntry[], read: (lo: number, hi: number) => Float32Array): { ms: number; copiedBytes: number } {
  const t = performance.now();
  let keep = 0;
  let copiedBytes = 0;
  for (const e of entries) {
    const values = read(e.offset, e.offset + e.size);
    const tfHost = misalignment(values) === 0 ? values : new Float32Array(values);
    if (tfHost !== values) copiedBytes += tfHost.byteLength;
    keep += tfHost[tfHost.length - 1] ?? 0;
  }
  sink += keep;
  return { ms: performance.now() - t, copiedBytes };
}

/**
 * The gradients side for `entries`: per tensor dataSync's fresh copy of TF's host tensor (`device`, the
 * stand-in for it), handed to `put` (the copy into the shared gradient buffer, here or through
 * Transport.putGradient on the transport thread). Returns the ms taken on this thread.
 */
export function copyGradientsOut(entries: readonly ParamEntry[], device: Float32Array, put: (offset: number, values: Float32Array) => void): number {
  const t = performance.now();
  for (const e of entries) put(e.offset, device.slice(e.offset, e.offset + e.size)); // tensorDataSync: a fresh array
  return performance.now() - t;
}

/** Keeps the copies' results observable (no engine may drop them as unused). */
let sink = 0;
export const hostCopySink = (): number => sink;
