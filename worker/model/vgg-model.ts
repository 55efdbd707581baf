import * as tf from '@tensorflow/tfjs';
import { ShapeError } from '../../shared/errors.ts';
import { buildLayout, planLayers, type ParamLayout } from '../../shared/param-layout.ts';
import type { InitializerName, ModelConfig } from '../../shared/vgg-configs.ts';
import { initialValue } from './initializers.ts';
import { LocalResponseNorm } from './lrn-layer.ts';

/** A built network with its flat layout and, per layout entry, the tf.Variable holding it. */
export interface VggModel {
  config: ModelConfig;
  model: tf.LayersModel;
  layout: ParamLayout;
  /** Layout name -> variable, in layout order. */
  variables: Map<string, tf.LayerVariable>;
}

const ROLE_TO_KERAS: Record<string, string> = {
  kernel: 'kernel', bias: 'bias', gamma: 'gamma', beta: 'beta', movingMean: 'moving_mean', movingVariance: 'moving_variance',
};

/** Builds the tf.layers Sequential model of a config; output is logits. */
export function buildVgg(cfg: ModelConfig, options: { init?: InitializerName; seed?: number } = {}): VggModel {
  const init = options.init ?? 'kaiming';
  const seed = options.seed ?? 1;
  const layout = buildLayout(cfg);
  const model = tf.sequential({ name: `vgg_${cfg.config.replace('-', '_').toLowerCase()}${cfg.batchNorm ? '_bn' : ''}` });
  let first = true;
  const inputShape = (): { inputShape?: number[] } => {
    if (!first) return {};
    first = false;
    return { inputShape: [cfg.inputSize, cfg.inputSize, 3] };
  };
  for (const layer of planLayers(cfg)) {
    switch (layer.type) {
      case 'conv':
        model.add(tf.layers.conv2d({
          ...inputShape(), name: layer.name, filters: layer.outputShape[2] ?? 0, kernelSize: layer.kernel ?? 3,
          padding: 'same', activation: layer.activation, useBias: !cfg.batchNorm,
        }));
        break;
      case 'batchNorm':
        model.add(tf.layers.batchNormalization({ name: layer.name, momentum: 0.9, epsilon: 1e-5 }));
        break;
      case 'relu':
        model.add(tf.layers.reLU({ name: layer.name }));
        break;
      case 'lrn':
        model.add(new LocalResponseNorm({ name: layer.name }));
        break;
      case 'pool':
        model.add(tf.layers.maxPooling2d({ name: layer.name, poolSize: 2, strides: 2, padding: 'valid' }));
        break;
      case 'flatten':
        model.add(tf.layers.flatten({ name: layer.name }));
        break;
      case 'dense':
        model.add(tf.layers.dense({ name: layer.name, units: layer.units ?? 0, activation: layer.activation }));
        break;
      case 'dropout':
        model.add(tf.layers.dropout({ name: layer.name, rate: cfg.dropout }));
        break;
    }
  }
  const variables = mapVariables(model, layout);
  // Deterministic initialisation: parameter i gets seed + i, whatever the backend.
  layout.entries.forEach((entry, i) => {
    const variable = variables.get(entry.name);
    if (variable === undefined) throw new ShapeError(`parameter ${entry.name}: expected in the model, got none`);
    tf.tidy(() => { variable.write(initialValue(entry, init, seed + i)); });
  });
  return { config: cfg, model, layout, variables };
}

function mapVariables(model: tf.LayersModel, layout: ParamLayout): Map<string, tf.LayerVariable> {
  const byKerasName = new Map<string, tf.LayerVariable>();
  for (const layer of model.layers) {
    for (const w of layer.weights) {
      const short = w.originalName.split('/').pop() ?? w.originalName;
      byKerasName.set(`${layer.name}/${short}`, w);
    }
  }
  const variables = new Map<string, tf.LayerVariable>();
  for (const e of layout.entries) {
    const w = byKerasName.get(`${e.layer}/${ROLE_TO_KERAS[e.role]}`);
    if (w === undefined) throw new ShapeError(`parameter ${e.name}: expected in the model, got none`);
    if (w.shape.join(',') !== e.shape.join(',')) {
      throw new ShapeError(`parameter ${e.name}: expected shape [${e.shape}], got [${w.shape}]`);
    }
    variables.set(e.name, w);
  }
  if (variables.size !== byKerasName.size) {
    throw new ShapeError(`model weights: expected ${layout.entries.length}, got ${byKerasName.size}`);
  }
  return variables;
}

/** Reads every parameter into one flat vector in layout order. */
export function readFlat(vgg: VggModel, out?: Float32Array): Float32Array {
  const flat = out ?? new Float32Array(vgg.layout.totalSize);
  for (const e of vgg.layout.entries) {
    const v = vgg.variables.get(e.name);
    if (v === undefined) throw new ShapeError(`parameter ${e.name}: missing`);
    flat.set(v.read().dataSync() as Float32Array, e.offset);
  }
  return flat;
}

/** Writes a flat vector (layout order) into the model's variables. */
export function writeFlat(vgg: VggModel, flat: Float32Array | ((start: number, end: number) => Float32Array)): void {
  if (typeof flat !== 'function' && flat.length !== vgg.layout.totalSize) {
    throw new ShapeError(`flat weights: expected ${vgg.layout.totalSize} floats, got ${flat.length}`);
  }
  // A copy per entry of a flat array (slice): the cpu backend keeps the arrays it is given as the tensors'
  // storage. A reader may hand out views instead if it keeps them unchanged until the model is written again
  // (Transport.view).
  const read = typeof flat === 'function' ? flat : (start: number, end: number) => flat.slice(start, end);
  for (const e of vgg.layout.entries) {
    const v = vgg.variables.get(e.name);
    if (v === undefined) throw new ShapeError(`parameter ${e.name}: missing`);
    tf.tidy(() => { v.write(tf.tensor(read(e.offset, e.offset + e.size), e.shape)); });
  }
}

/** Frees the model's variables. */
export function disposeVgg(vgg: VggModel): void {
  vgg.model.dispose();
}
