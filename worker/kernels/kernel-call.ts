import * as tf from '@tensorflow/tfjs';

type TensorInfo = tf.TensorInfo;
type Attrs = Record<string, unknown>;

/**
 * Calls a registered kernel of `backendName` directly, below the engine: no
 * tape, no tidy. The caller owns the returned TensorInfo and disposes it with
 * `disposeInfo` unless it is the kernel's own result.
 */
export function callKernel(
  kernelName: string,
  backendName: string,
  backend: unknown,
  inputs: Record<string, TensorInfo>,
  attrs: Attrs,
  kernelFunc?: tf.KernelFunc,
): TensorInfo {
  const func = kernelFunc ?? tf.getKernel(kernelName, backendName)?.kernelFunc;
  if (func === undefined) {
    throw new Error(`kernel ${kernelName} is not registered for backend ${backendName}`);
  }
  const out = func({ inputs, backend: backend as tf.KernelBackend, attrs: attrs as tf.NamedAttrMap });
  if (Array.isArray(out)) throw new Error(`kernel ${kernelName} returned ${out.length} outputs; expected one`);
  return out;
}

export function disposeInfo(backend: unknown, ...infos: TensorInfo[]): void {
  for (const info of infos) (backend as tf.KernelBackend).disposeData(info.dataId);
}
