import type { ParamLayout } from './param-layout.ts';
import { arenaOf } from './simd.ts';

export interface FlatSgdOptions { learningRate: number; momentum: number; weightDecay: number }

/**
 * Momentum SGD on the fp32 master weights held as one flat vector, the same
 * update as worker/train/momentum-sgd.ts and torch.optim.SGD:
 *   v <- mu v + (g + wd w)  (wd on kernels only)      w <- w - lr v
 * Non-trainable entries (BN moving statistics) are replaced by the averaged
 * values the workers report instead. State is per parameter name in layout order.
 */
export class FlatMomentumSgd {
  readonly layout: ParamLayout;
  readonly velocity: Float32Array;
  options: FlatSgdOptions;

  constructor(layout: ParamLayout, options: FlatSgdOptions, velocity?: Float32Array) {
    this.layout = layout;
    this.options = { ...options };
    this.velocity = velocity ?? new Float32Array(layout.totalSize);
  }

  /**
   * One update from `sum` times `scale` (the sample-weighted gradient sum and
   * 1/samples: the mean, formed here in the same pass): averaged gradients at
   * trainable entries, averaged moving statistics at the rest. Each mean value
   * is rounded to fp32 first, as if a scaled copy had been stored.
   */
  apply(weights: Float32Array, sum: Float32Array, scale = 1): void {
    const { learningRate: lr, momentum: mu, weightDecay } = this.options;
    const v = this.velocity;
    // Arrays in one FloatArena: the SIMD kernels (fp32 per operation).
    const arena = arenaOf(weights, v, sum);
    if (arena !== undefined) {
      for (const e of this.layout.entries) {
        if (e.trainable) arena.sgd(weights, v, sum, e.offset, e.offset + e.size, lr, mu, e.decay ? weightDecay : 0, scale);
        else arena.mean(weights, sum, e.offset, e.offset + e.size, scale);
      }
      return;
    }
    for (const e of this.layout.entries) {
      const end = e.offset + e.size;
      if (!e.trainable) {
        for (let i = e.offset; i < end; i += 1) weights[i] = (sum[i] as number) * scale;
        continue;
      }
      const wd = e.decay ? weightDecay : 0;
      for (let i = e.offset; i < end; i += 1) {
        const w = weights[i] as number;
        const vi = Math.fround(mu * (v[i] as number) + (Math.fround((sum[i] as number) * scale) + wd * w));
        v[i] = vi;
        weights[i] = w - lr * vi;
      }
    }
  }
}
