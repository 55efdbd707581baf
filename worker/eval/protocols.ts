import * as tf from '@tensorflow/tfjs';
import { ShapeError } from '../../shared/errors.ts';
import { featureSide } from '../../shared/vgg-configs.ts';
import type { VggModel } from '../model/vgg-model.ts';

/**
 * The paper's test-time protocols (Section 3.2, 4.1-4.3) on one image.
 * Every function returns class posteriors (soft-max), so protocols combine by
 * averaging, as the paper does.
 */

/** Top-left corners of an n x n grid of `size` crops over a width x height image, corners included (5 x 5 in the paper). */
export function cropGrid(width: number, height: number, size: number, n = 5): { x: number; y: number }[] {
  if (width < size || height < size) throw new ShapeError(`crop grid: expected an image of at least ${size}x${size}, got ${width}x${height}`);
  const at = (span: number, i: number) => (n === 1 ? Math.floor(span / 2) : Math.round((i * span) / (n - 1)));
  const out: { x: number; y: number }[] = [];
  for (let j = 0; j < n; j += 1) for (let i = 0; i < n; i += 1) out.push({ x: at(width - size, i), y: at(height - size, j) });
  return out;
}

/** Side of the class score map of dense evaluation on an image of side `side`. */
export function denseMapSide(side: number, inputSize: number): number {
  return featureSide(side) - featureSide(inputSize) + 1;
}

interface LayerLike { getClassName(): string; getConfig(): Record<string, unknown>; getWeights(): tf.Tensor[]; apply(x: tf.Tensor, kw?: Record<string, unknown>): tf.Tensor | tf.Tensor[] }

/**
 * Dense evaluation's network (Section 3.2): the conv body applied to the whole
 * image, then fc6 as a conv with a featureSide x featureSide kernel (7x7 at
 * 224) and fc7, fc8 as 1x1 convs. Returns the class score map [N, h, w, K]
 * (logits). On an input of exactly inputSize it equals the standard forward.
 */
export function denseScoreMap(vgg: VggModel, x: tf.Tensor4D): tf.Tensor4D {
  return tf.tidy(() => {
    let h: tf.Tensor4D = x;
    const layers = vgg.model.layers as unknown as LayerLike[];
    let i = 0;
    for (; i < layers.length && layers[i]?.getClassName() !== 'Flatten'; i += 1) {
      const layer = layers[i] as LayerLike;
      if (layer.getClassName() === 'Dropout') continue;
      h = layer.apply(h, { training: false }) as tf.Tensor4D;
    }
    const f = featureSide(vgg.config.inputSize);
    let first = true;
    for (; i < layers.length; i += 1) {
      const layer = layers[i] as LayerLike;
      if (layer.getClassName() !== 'Dense') continue;
      const [kernel, bias] = layer.getWeights() as [tf.Tensor2D, tf.Tensor1D];
      const [inUnits, units] = kernel.shape;
      // Flatten of NHWC numbers inputs (row, col, channel): the same order as a conv filter [kh, kw, in, out].
      const filter = first ? kernel.reshape([f, f, inUnits / (f * f), units]) as tf.Tensor4D : kernel.reshape([1, 1, inUnits, units]) as tf.Tensor4D;
      if (first && h.shape[3] !== inUnits / (f * f)) {
        throw new ShapeError(`dense evaluation: expected ${inUnits / (f * f)} channels into fc6, got ${h.shape[3]}`);
      }
      first = false;
      h = tf.add(tf.conv2d(h, filter, 1, 'valid'), bias);
      if (layer.getConfig().activation === 'relu') h = tf.relu(h);
    }
    return h;
  });
}

/** Dense evaluation of one image [H, W, 3]: score map spatially averaged, soft-max, averaged with the flipped image's. */
export function denseSoftmax(vgg: VggModel, image: tf.Tensor3D): tf.Tensor1D {
  return tf.tidy(() => {
    const both = tf.stack([image, tf.reverse(image, 1)]) as tf.Tensor4D;
    const scores = tf.mean(denseScoreMap(vgg, both), [1, 2]) as tf.Tensor2D;
    return tf.mean(tf.softmax(scores), 0) as tf.Tensor1D;
  });
}

/** Multi-crop evaluation of one image [H, W, 3]: the 5x5 grid of crops and their flips, soft-max averaged. */
export function multiCropSoftmax(vgg: VggModel, image: tf.Tensor3D, grid = 5): tf.Tensor1D {
  const size = vgg.config.inputSize;
  const [height, width] = image.shape;
  return tf.tidy(() => {
    const crops = cropGrid(width, height, size, grid).map(({ x, y }) => tf.slice(image, [y, x, 0], [size, size, 3]));
    const batch = tf.stack([...crops, ...crops.map((c) => tf.reverse(c, 1))]) as tf.Tensor4D;
    const logits = vgg.model.apply(batch, { training: false }) as tf.Tensor2D;
    return tf.mean(tf.softmax(logits), 0) as tf.Tensor1D;
  });
}

/** The standard single-crop view: centre crop of inputSize, soft-max. */
export function centreCropSoftmax(vgg: VggModel, image: tf.Tensor3D): tf.Tensor1D {
  const size = vgg.config.inputSize;
  const [height, width] = image.shape;
  return tf.tidy(() => {
    const crop = tf.slice(image, [Math.floor((height - size) / 2), Math.floor((width - size) / 2), 0], [size, size, 3]);
    return tf.squeeze(tf.softmax(vgg.model.apply(tf.expandDims(crop, 0), { training: false }) as tf.Tensor2D), [0]) as tf.Tensor1D;
  });
}
