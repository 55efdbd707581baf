import * as tf from '@tensorflow/tfjs';
import { ShapeError } from '../../shared/errors.ts';
import type { VggModel } from '../model/vgg-model.ts';

export interface StepResult {
  /** Mean softmax cross-entropy over the batch. */
  loss: number;
  /** Layout name -> gradient of the mean loss (trainable parameters only). The caller disposes. */
  grads: Map<string, tf.Tensor>;
  top1: number;
  top5: number;
  samples: number;
}

function checkBatch(vgg: VggModel, images: Float32Array, labels: Int32Array): number {
  const n = labels.length;
  const side = vgg.config.inputSize;
  if (images.length !== n * side * side * 3) {
    throw new ShapeError(`images: expected ${n}x${side}x${side}x3 = ${n * side * side * 3} floats for ${n} labels, got ${images.length}`);
  }
  for (const l of labels) {
    if (l < 0 || l >= vgg.config.numClasses) throw new ShapeError(`label: expected 0..${vgg.config.numClasses - 1}, got ${l}`);
  }
  return n;
}

/** Counts of labels in the top-1 and top-5 of each row of logits. */
export function topKCorrect(logits: tf.Tensor2D, labels: tf.Tensor1D): { top1: number; top5: number } {
  return tf.tidy(() => {
    const k = Math.min(5, logits.shape[1]);
    const { indices } = tf.topk(logits, k);
    const hits = tf.equal(indices, tf.expandDims(labels, 1)).cast('float32');
    const top1 = tf.sum(tf.slice(hits, [0, 0], [-1, 1])).dataSync()[0] ?? 0;
    const top5 = tf.sum(hits).dataSync()[0] ?? 0;
    return { top1, top5 };
  });
}

/**
 * Called during the backward pass with a parameter's complete gradient, as soon as
 * backpropagation has produced it (the tensor belongs to the pass: copy, do not dispose).
 */
export type GradientReady = (name: string, grad: tf.Tensor) => void;

/**
 * Reads of the parameters in `names` go through an identity whose gradient function hands
 * the incoming gradient to `ready`: backpropagation reaches it once every use of the
 * parameter is differentiated, i.e. the parameter's gradient is final. For VGG's classifier
 * (used once each) that is before any conv layer's backward has run.
 */
function hookReads(vgg: VggModel, names: Iterable<string>, ready: GradientReady): () => void {
  const restore: (() => void)[] = [];
  for (const name of names) {
    const v = vgg.variables.get(name);
    if (v === undefined) throw new ShapeError(`gradient hook on ${name}: expected a parameter of the model, got none`);
    const read = v.read;
    const identity = tf.customGrad((x, _save) => ({
      value: (x as tf.Tensor).clone(),
      gradFunc: (dy) => { ready(name, dy as tf.Tensor); return dy; },
    }));
    v.read = () => identity(read.call(v)) as tf.Variable;
    restore.push(() => { v.read = read; });
  }
  return () => { for (const r of restore) r(); };
}

/**
 * Forward and backward pass of one batch (training mode: dropout on, BN
 * batch statistics). Returns the gradient of the mean loss; applies nothing.
 * `early`: parameters whose gradients are handed to `early.ready` during the backward pass,
 * and the loss and hit counts handed to `early.forward` before it.
 */
export function computeGradients(vgg: VggModel, images: Float32Array, labels: Int32Array,
  early?: { names: Iterable<string>; ready: GradientReady; forward?: (r: Omit<StepResult, 'grads'>) => void }): StepResult {
  const n = checkBatch(vgg, images, labels);
  if (n === 0) return { loss: 0, grads: new Map(), top1: 0, top5: 0, samples: 0 };
  const side = vgg.config.inputSize;
  const trainable = vgg.layout.entries.filter((e) => e.trainable);
  const vars = trainable.map((e) => vgg.variables.get(e.name)?.read() as tf.Variable);
  let top = { top1: 0, top5: 0 };
  const { value, grads } = tf.tidy(() => {
    const x = tf.tensor4d(images, [n, side, side, 3]);
    const y = tf.tensor1d(labels, 'int32');
    const unhook = early === undefined ? undefined : hookReads(vgg, early.names, early.ready);
    try {
      return tf.variableGrads(() => {
        const logits = vgg.model.apply(x, { training: true }) as tf.Tensor2D;
        top = topKCorrect(logits, y);
        const loss = tf.losses.softmaxCrossEntropy(tf.oneHot(y, vgg.config.numClasses), logits) as tf.Scalar;
        // The batch's figures before the backward pass (a gradient sent early carries them).
        early?.forward?.({ loss: loss.dataSync()[0] ?? NaN, ...top, samples: n });
        return loss;
      }, vars);
    } finally {
      unhook?.();
    }
  });
  const loss = value.dataSync()[0] ?? NaN;
  value.dispose();
  const out = new Map<string, tf.Tensor>();
  trainable.forEach((e, i) => {
    const g = grads[(vars[i] as tf.Variable).name];
    if (g === undefined) throw new ShapeError(`gradient of ${e.name}: expected one, got none`);
    out.set(e.name, g);
  });
  return { loss, grads: out, ...top, samples: n };
}

/** Forward pass in inference mode; returns top-1/top-5 hit counts and the summed loss. */
export function evaluateBatch(vgg: VggModel, images: Float32Array, labels: Int32Array): { top1: number; top5: number; lossSum: number; samples: number } {
  const n = checkBatch(vgg, images, labels);
  if (n === 0) return { top1: 0, top5: 0, lossSum: 0, samples: 0 };
  const side = vgg.config.inputSize;
  return tf.tidy(() => {
    const x = tf.tensor4d(images, [n, side, side, 3]);
    const y = tf.tensor1d(labels, 'int32');
    const logits = vgg.model.apply(x, { training: false }) as tf.Tensor2D;
    const loss = tf.losses.softmaxCrossEntropy(tf.oneHot(y, vgg.config.numClasses), logits, undefined, undefined, tf.Reduction.SUM);
    return { ...topKCorrect(logits, y), lossSum: loss.dataSync()[0] ?? NaN, samples: n };
  });
}
