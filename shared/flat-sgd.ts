import type { ParamLayout } from './param-layout.ts';
import { arenaOf, finishTail, meanTail, sgdTail } from './simd.ts';

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
   * is rounded to fp32 first, as if a scaled copy had been stored. Over
   * [lo, hi) only when given (the rest untouched).
   */
  apply(weights: Float32Array, sum: Float32Array, scale = 1, lo = 0, hi = weights.length): void {
    const { learningRate: lr, momentum: mu, weightDecay } = this.options;
    const v = this.velocity;
    // Arrays in one FloatArena: the SIMD kernels (fp32 per operation).
    const arena = arenaOf(weights, v, sum);
    for (const [e, a, b] of this.within(lo, hi)) {
      if (arena !== undefined) {
        if (e.trainable) arena.sgd(weights, v, sum, a, b, lr, mu, e.decay ? weightDecay : 0, scale);
        else arena.mean(weights, sum, a, b, scale);
        continue;
      }
      if (!e.trainable) {
        meanTail(sum, a, b, weights, 0, scale);
        continue;
      }
      sgdTail(weights, v, sum, a, b, { lr, mu, wd: e.decay ? weightDecay : 0, scale }, v, weights, 0);
    }
  }

  /**
   * apply() over [lo, hi) staged, for a broadcast before the step is decided: the new
   * weights go to `out` (out[0] is lo's), the new momentum over `sum`'s range; the
   * weights and momentum stay as they are (an aborted step leaves them so). finish()
   * then makes the state what apply() would have left, bit for bit; moving statistics
   * are taken from `sum`, which stage() leaves alone at their entries.
   */
  stage(weights: Float32Array, sum: Float32Array, scale: number, lo: number, hi: number, out: Float32Array): void {
    const { learningRate: lr, momentum: mu, weightDecay } = this.options;
    const v = this.velocity;
    const arena = arenaOf(weights, v, sum, out);
    for (const [e, a, b] of this.within(lo, hi)) {
      const o = out.subarray(a - lo, b - lo);
      if (arena !== undefined) {
        if (e.trainable) arena.sgdTo(weights, v, sum, a, b, o, lr, mu, e.decay ? weightDecay : 0, scale);
        else arena.meanTo(sum, a, b, o, scale);
        continue;
      }
      if (!e.trainable) {
        meanTail(sum, a, b, o, a, scale);
        continue;
      }
      sgdTail(weights, v, sum, a, b, { lr, mu, wd: e.decay ? weightDecay : 0, scale }, sum, o, a);
    }
  }

  /** Applies what stage() computed over [lo, hi) (same options, scale and learning rate). */
  finish(weights: Float32Array, sum: Float32Array, scale: number, lo: number, hi: number, lr = this.options.learningRate): void {
    const v = this.velocity;
    const arena = arenaOf(weights, v, sum);
    for (const [e, a, b] of this.within(lo, hi)) {
      if (!e.trainable) {
        if (arena !== undefined) arena.mean(weights, sum, a, b, scale);
        else meanTail(sum, a, b, weights, 0, scale);
        continue;
      }
      if (arena !== undefined) arena.sgdFinish(weights, v, sum, a, b, lr);
      else finishTail(weights, v, sum, a, b, lr);
    }
  }

  /** The layout entries meeting [lo, hi), each with its part of that range. */
  private *within(lo: number, hi: number): Generator<[ParamLayout['entries'][number], number, number]> {
    for (const e of this.layout.entries) {
      const a = Math.max(lo, e.offset);
      const b = Math.min(hi, e.offset + e.size);
      if (a < b) yield [e, a, b];
    }
  }
}
