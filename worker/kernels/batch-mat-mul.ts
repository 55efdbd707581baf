import type * as tf from '@tensorflow/tfjs';
import { callKernel, disposeInfo } from './kernel-call.ts';

/**
 * BatchMatMul with `transposeA` materialises A^T first and calls the stock
 * kernel untransposed: the backward pass of a dense layer (dW = X^T dY) is
 * exactly this case, and the stock wasm kernel leaves XNNPACK's fast path
 * for it.
 */
export function makeBatchMatMul(backendName: string, stock: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { inputs, backend, attrs } = args;
    const { a, b } = inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = attrs as unknown as tf.BatchMatMulAttrs;
    if (!transposeA) return stock(args);
    const rank = a.shape.length;
    const perm = [...Array(rank).keys()];
    perm[rank - 2] = rank - 1;
    perm[rank - 1] = rank - 2;
    const aT = callKernel('Transpose', backendName, backend, { x: a }, { perm });
    const out = callKernel('BatchMatMul', backendName, backend, { a: aT, b }, { transposeA: false, transposeB }, stock);
    disposeInfo(backend, aT);
    return out;
  };
}
