import * as tf from '@tensorflow/tfjs';
import { makeBatchMatMul } from './batch-mat-mul.ts';
import { makeConv2DBackpropFilter } from './conv2d-backprop-filter.ts';
import { makeConv2DBackpropInput } from './conv2d-backprop-input.ts';

/** The backends whose training kernels we replace. */
export type PatchableBackend = 'wasm' | 'cpu';

const stockKernels = new Map<string, tf.KernelConfig | undefined>();

function replace(backendName: string, kernelName: string, make: (stock: tf.KernelFunc | undefined) => tf.KernelFunc): void {
  const key = `${backendName}/${kernelName}`;
  if (stockKernels.has(key)) return;
  const stock = tf.getKernel(kernelName, backendName);
  stockKernels.set(key, stock);
  if (stock !== undefined) tf.unregisterKernel(kernelName, backendName);
  tf.registerKernel({ kernelName, backendName, kernelFunc: make(stock?.kernelFunc) });
}

/**
 * Registers our training kernels on `backendName` through the public
 * registerKernel API. Idempotent. Stock wasm has no Conv2DBackpropFilter at
 * all; stock cpu has a naive one (~95% of a small VGG step).
 */
export function installTrainingKernels(backendName: PatchableBackend): void {
  replace(backendName, 'Conv2DBackpropFilter', () => makeConv2DBackpropFilter(backendName));
  replace(backendName, 'Conv2DBackpropInput', (stock) => {
    if (stock === undefined) throw new Error(`backend ${backendName} has no stock Conv2DBackpropInput to fall back on`);
    return makeConv2DBackpropInput(backendName, stock);
  });
  if (backendName === 'wasm') {
    replace(backendName, 'BatchMatMul', (stock) => {
      if (stock === undefined) throw new Error('backend wasm has no stock BatchMatMul');
      return makeBatchMatMul(backendName, stock);
    });
  }
}

/** Puts the stock kernels back (benchmarks and tests compare against them). */
export function uninstallTrainingKernels(backendName: PatchableBackend): void {
  for (const [key, stock] of [...stockKernels]) {
    const [name, kernelName] = key.split('/') as [string, string];
    if (name !== backendName) continue;
    tf.unregisterKernel(kernelName, backendName);
    if (stock !== undefined) tf.registerKernel(stock);
    stockKernels.delete(key);
  }
}

export function trainingKernelsInstalled(backendName: PatchableBackend): boolean {
  return stockKernels.has(`${backendName}/Conv2DBackpropFilter`);
}
