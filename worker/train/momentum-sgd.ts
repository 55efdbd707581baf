import * as tf from '@tensorflow/tfjs';
import { ShapeError } from '../../shared/errors.ts';
import type { ParamLayout } from '../../shared/param-layout.ts';
import type { VggModel } from '../model/vgg-model.ts';

export interface SgdOptions {
  /** @defaultValue 0.01 */
  learningRate: number;
  /** @defaultValue 0.9 */
  momentum: number;
  /** L2 penalty on conv and FC kernels only (not biases, not BN). @defaultValue 5e-4 */
  weightDecay: number;
}

export const DEFAULT_SGD: SgdOptions = { learningRate: 0.01, momentum: 0.9, weightDecay: 5e-4 };

/**
 * Momentum SGD with weight decay, the update of torch.optim.SGD (dampening 0):
 *   v <- mu * v + (g + wd * w)      w <- w - lr * v
 * State is keyed by parameter name, on the compute backend.
 */
export class MomentumSgd {
  readonly options: SgdOptions;
  private readonly velocity = new Map<string, tf.Variable>();
  private readonly layout: ParamLayout;

  constructor(layout: ParamLayout, options: Partial<SgdOptions> = {}) {
    this.options = { ...DEFAULT_SGD, ...options };
    this.layout = layout;
    for (const e of layout.entries) {
      if (!e.trainable) continue;
      this.velocity.set(e.name, tf.tidy(() => tf.variable(tf.zeros(e.shape), false)));
    }
  }

  set learningRate(lr: number) {
    this.options.learningRate = lr;
  }

  get learningRate(): number {
    return this.options.learningRate;
  }

  /** Applies one update from gradients keyed by parameter name; disposes nothing it does not own. */
  apply(vgg: VggModel, grads: Map<string, tf.Tensor>): void {
    const { learningRate: lr, momentum: mu, weightDecay: wd } = this.options;
    // Check every gradient before touching any weight: a bad set changes nothing.
    for (const e of this.layout.entries) {
      if (!e.trainable) continue;
      const g = grads.get(e.name);
      if (g === undefined) throw new ShapeError(`gradient of ${e.name}: expected one, got none`);
      if (g.size !== e.size) throw new ShapeError(`gradient of ${e.name}: expected shape [${e.shape}], got [${g.shape}]`);
    }
    for (const e of this.layout.entries) {
      if (!e.trainable) continue;
      const g = grads.get(e.name) as tf.Tensor;
      const v = this.velocity.get(e.name) as tf.Variable;
      const w = vgg.variables.get(e.name)?.read() as tf.Variable;
      tf.tidy(() => {
        const d = e.decay && wd !== 0 ? tf.add(g, tf.mul(w, wd)) : g;
        const vNew = tf.add(tf.mul(v, mu), d);
        v.assign(vNew);
        w.assign(tf.sub(w, tf.mul(vNew, lr)));
      });
    }
  }

  /** Velocity as a flat vector in layout order (zeros at non-trainable entries). */
  readFlat(): Float32Array {
    const flat = new Float32Array(this.layout.totalSize);
    for (const e of this.layout.entries) {
      const v = this.velocity.get(e.name);
      if (v !== undefined) flat.set(v.dataSync() as Float32Array, e.offset);
    }
    return flat;
  }

  writeFlat(flat: Float32Array): void {
    if (flat.length !== this.layout.totalSize) {
      throw new ShapeError(`momentum: expected ${this.layout.totalSize} floats, got ${flat.length}`);
    }
    for (const e of this.layout.entries) {
      const v = this.velocity.get(e.name);
      if (v !== undefined) tf.tidy(() => v.assign(tf.tensor(flat.slice(e.offset, e.offset + e.size), e.shape)));
    }
  }

  dispose(): void {
    for (const v of this.velocity.values()) v.dispose();
    this.velocity.clear();
  }
}
