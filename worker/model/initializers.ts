import * as tf from '@tensorflow/tfjs';
import type { ParamEntry } from '../../shared/param-layout.ts';
import type { InitializerName } from '../../shared/vgg-configs.ts';

/**
 * Initial value of one parameter.
 * - `paper`: N(0, variance 1e-2) for every kernel, zero biases (Section 3.1).
 * - `kaiming` (default): He et al. (2015) normal, variance 2/fan: fan_out for
 *   conv kernels (as torchvision), fan_in for FC kernels. torchvision's fixed
 *   N(0, 0.01^2) for FC layers starves width-reduced nets (fc 256 wide shrinks
 *   the signal ~6x per layer), so we scale FC layers by fan_in instead.
 * - `glorot`: uniform(+-sqrt(6/(fan_in+fan_out))).
 * BN gamma and moving variance start at 1, beta and moving mean at 0.
 */
export function initialValue(entry: ParamEntry, kind: InitializerName, seed: number): tf.Tensor {
  const { shape, role } = entry;
  if (role === 'bias' || role === 'beta' || role === 'movingMean') return tf.zeros(shape);
  if (role === 'gamma' || role === 'movingVariance') return tf.ones(shape);
  const isConv = shape.length === 4;
  const receptive = isConv ? (shape[0] ?? 1) * (shape[1] ?? 1) : 1;
  const fanIn = receptive * (shape[shape.length - 2] ?? 1);
  const fanOut = receptive * (shape[shape.length - 1] ?? 1);
  switch (kind) {
    case 'paper':
      return tf.randomNormal(shape, 0, 0.1, 'float32', seed);
    case 'glorot': {
      const limit = Math.sqrt(6 / (fanIn + fanOut));
      return tf.randomUniform(shape, -limit, limit, 'float32', seed);
    }
    case 'kaiming':
      return tf.randomNormal(shape, 0, Math.sqrt(2 / (isConv ? fanOut : fanIn)), 'float32', seed);
  }
}
