import * as tf from '@tensorflow/tfjs';
import { callKernel, disposeInfo } from './kernel-call.ts';

const { backend_util } = tf;

/**
 * Conv2DBackpropInput for stride 1 as a forward Conv2D of dY with the filter
 * flipped in space and with in/out channels swapped, padded by (k - 1 - pad).
 * Other strides (and paddings wider than the kernel) go to `fallback`, the
 * backend's stock kernel.
 */
export function makeConv2DBackpropInput(backendName: string, fallback: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { inputs, backend, attrs } = args;
    const { dy, filter } = inputs as { dy: tf.TensorInfo; filter: tf.TensorInfo };
    const { strides, pad, dataFormat, dimRoundingMode, inputShape } = attrs as unknown as tf.Conv2DBackpropInputAttrs;
    const format = backend_util.convertConv2DDataFormat(dataFormat);
    const [kh, kw] = filter.shape as [number, number, number, number];
    const info = backend_util.computeConv2DInfo(
      inputShape, filter.shape as [number, number, number, number], strides, 1, pad, dimRoundingMode, false, format);
    const { top, bottom, left, right } = info.padInfo;
    const padTop = kh - 1 - top;
    const padBottom = kh - 1 - bottom;
    const padLeft = kw - 1 - left;
    const padRight = kw - 1 - right;
    if (format !== 'channelsLast' || info.strideHeight !== 1 || info.strideWidth !== 1
      || Math.min(padTop, padBottom, padLeft, padRight) < 0) {
      return fallback(args);
    }
    const call = (name: string, ins: Record<string, tf.TensorInfo>, at: Record<string, unknown>) =>
      callKernel(name, backendName, backend, ins, at);

    const swapped = call('Transpose', { x: filter }, { perm: [0, 1, 3, 2] });
    const flipped = call('Reverse', { x: swapped }, { dims: [0, 1] });
    disposeInfo(backend, swapped);
    const out = call('Conv2D', { x: dy, filter: flipped }, {
      strides: [1, 1],
      pad: [[0, 0], [padTop, padBottom], [padLeft, padRight], [0, 0]],
      dataFormat: 'NHWC',
      dilations: [1, 1],
      dimRoundingMode: undefined,
    });
    disposeInfo(backend, flipped);
    return out;
  };
}
