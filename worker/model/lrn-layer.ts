import * as tf from '@tensorflow/tfjs';

/**
 * Local response normalisation across channels (Krizhevsky et al. 2012), the
 * "LRN" of config A-LRN: b = a / (k + alpha * sum_{n-window} a^2)^beta with
 * k=2, n=5, alpha=1e-4, beta=0.75. Built from primitive ops (pad, slice,
 * add) so it differentiates on every backend, including wasm, which has no
 * LRN gradient kernel.
 */
export class LocalResponseNorm extends tf.layers.Layer {
  static readonly className = 'VggLocalResponseNorm';
  readonly depthRadius: number;
  readonly bias: number;
  readonly alpha: number;
  readonly beta: number;

  constructor(args: { name?: string; depthRadius?: number; bias?: number; alpha?: number; beta?: number } = {}) {
    super({ name: args.name });
    this.depthRadius = args.depthRadius ?? 2;
    this.bias = args.bias ?? 2;
    this.alpha = args.alpha ?? 1e-4;
    this.beta = args.beta ?? 0.75;
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return tf.tidy(() => {
      const x = (Array.isArray(inputs) ? inputs[0] : inputs) as tf.Tensor4D;
      const channels = x.shape[3];
      const r = this.depthRadius;
      const squared = tf.pad(tf.square(x), [[0, 0], [0, 0], [0, 0], [r, r]]);
      let sum = tf.slice(squared, [0, 0, 0, 0], [-1, -1, -1, channels]);
      for (let i = 1; i <= 2 * r; i += 1) {
        sum = tf.add(sum, tf.slice(squared, [0, 0, 0, i], [-1, -1, -1, channels]));
      }
      const denom = tf.pow(tf.add(tf.mul(sum, this.alpha), this.bias), this.beta);
      return tf.div(x, denom);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), depthRadius: this.depthRadius, bias: this.bias, alpha: this.alpha, beta: this.beta };
  }
}

tf.serialization.registerClass(LocalResponseNorm);
