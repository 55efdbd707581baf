import * as tf from '@tensorflow/tfjs';
import { callKernel, disposeInfo } from './kernel-call.ts';

const { backend_util } = tf;

/**
 * Conv2DBackpropFilter expressed as one forward Conv2D, so it runs on the
 * backend's fast convolution (XNNPACK on wasm).
 *
 * dW[i, j, c, o] = sum_{n, y, x} X[n, y*s + i - pad, x*s + j - pad, c] * dY[n, y, x, o]
 *
 * which is a stride-1 convolution of X^T (channels as batch: [C, H, W, N])
 * with dY^T as the filter ([OH, OW, N, O]) dilated by the forward stride. The
 * result [C, kh', kw', O] has kh' >= kh rows (the extra ones come from bottom or
 * right padding the forward pass never reached); we keep the first kh x kw and
 * transpose back to [kh, kw, C, O].
 */
export function makeConv2DBackpropFilter(backendName: string): tf.KernelFunc {
  return ({ inputs, backend, attrs }) => {
    const { x, dy } = inputs as { x: tf.TensorInfo; dy: tf.TensorInfo };
    const { strides, pad, dataFormat, dimRoundingMode, filterShape } = attrs as unknown as tf.Conv2DBackpropFilterAttrs;
    const format = backend_util.convertConv2DDataFormat(dataFormat);
    if (format !== 'channelsLast') {
      throw new Error(`Conv2DBackpropFilter on ${backendName}: expected dataFormat NHWC, got ${dataFormat}`);
    }
    const info = backend_util.computeConv2DInfo(
      x.shape as [number, number, number, number], filterShape, strides, 1, pad, dimRoundingMode, false, format);
    const [kh, kw, inC, outC] = filterShape;
    const call = (name: string, ins: Record<string, tf.TensorInfo>, at: Record<string, unknown>) =>
      callKernel(name, backendName, backend, ins, at);

    const xT = call('Transpose', { x }, { perm: [3, 1, 2, 0] });
    const dyT = call('Transpose', { x: dy }, { perm: [1, 2, 0, 3] });
    const { top, bottom, left, right } = info.padInfo;
    const conv = call('Conv2D', { x: xT, filter: dyT }, {
      strides: [1, 1],
      pad: [[0, 0], [top, bottom], [left, right], [0, 0]],
      dataFormat: 'NHWC',
      dilations: [info.strideHeight, info.strideWidth],
      dimRoundingMode: undefined,
    });
    disposeInfo(backend, xT, dyT);

    let cropped = conv;
    if (conv.shape[1] !== kh || conv.shape[2] !== kw) {
      cropped = call('Slice', { x: conv }, { begin: [0, 0, 0, 0], size: [inC, kh, kw, outC] });
      disposeInfo(backend, conv);
    }
    const out = call('Transpose', { x: cropped }, { perm: [1, 2, 0, 3] });
    disposeInfo(backend, cropped);
    return out;
  };
}
