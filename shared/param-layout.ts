import { createHash } from 'node:crypto';
import { ShapeError } from './errors.ts';
import { featureSide, scaledChannels, TABLE_1, type ModelConfig } from './vgg-configs.ts';

/** What a parameter is; decides weight decay and how the aggregator treats it. */
export type ParamRole = 'kernel' | 'bias' | 'gamma' | 'beta' | 'movingMean' | 'movingVariance';

export interface ParamEntry {
  /** `<layer>/<weight>`, e.g. `conv3_2/kernel`, the same name the tf.layers model uses. */
  name: string;
  layer: string;
  role: ParamRole;
  shape: number[];
  /** Offset in floats into the flat vector. */
  offset: number;
  size: number;
  /** Updated by SGD. BN moving statistics are not (they are averaged). */
  trainable: boolean;
  /** Weight decay applies to conv and FC kernels only. */
  decay: boolean;
}

/** One layer of the network as it will be built; the model builder and `model info` read this. */
export interface LayerPlan {
  name: string;
  type: 'conv' | 'batchNorm' | 'relu' | 'lrn' | 'pool' | 'flatten' | 'dense' | 'dropout';
  outputShape: number[];
  kernel?: number;
  units?: number;
  activation?: 'relu' | 'linear';
}

export interface ParamLayout {
  entries: ParamEntry[];
  /** Total floats in the flat vector (trainable and moving statistics). */
  totalSize: number;
  trainableSize: number;
  byName: Map<string, ParamEntry>;
}

/**
 * The network of a config as an ordered list of layers, with output shapes.
 * Layer names follow the Caffe release of the paper: convB_I, poolB, fc6..fc8.
 */
export function planLayers(cfg: ModelConfig): LayerPlan[] {
  const plan: LayerPlan[] = [];
  let side = cfg.inputSize;
  let channels = 3;
  let block = 1;
  let index = 1;
  for (const item of TABLE_1[cfg.config]) {
    if (item.kind === 'conv') {
      const name = `conv${block}_${index}`;
      channels = scaledChannels(item.channels, cfg.widthMultiplier);
      const shape = [side, side, channels];
      plan.push({ name, type: 'conv', kernel: item.kernel, outputShape: shape, activation: cfg.batchNorm ? 'linear' : 'relu' });
      if (cfg.batchNorm) {
        plan.push({ name: `${name}_bn`, type: 'batchNorm', outputShape: shape });
        plan.push({ name: `${name}_relu`, type: 'relu', outputShape: shape });
      }
      index += 1;
    } else if (item.kind === 'lrn') {
      plan.push({ name: 'norm1', type: 'lrn', outputShape: [side, side, channels] });
    } else {
      side = Math.floor(side / 2);
      plan.push({ name: `pool${block}`, type: 'pool', outputShape: [side, side, channels] });
      block += 1;
      index = 1;
    }
  }
  const flat = featureSide(cfg.inputSize) ** 2 * channels;
  plan.push({ name: 'flatten', type: 'flatten', outputShape: [flat] });
  plan.push({ name: 'fc6', type: 'dense', units: cfg.fcUnits, activation: 'relu', outputShape: [cfg.fcUnits] });
  if (cfg.dropout > 0) plan.push({ name: 'drop6', type: 'dropout', outputShape: [cfg.fcUnits] });
  plan.push({ name: 'fc7', type: 'dense', units: cfg.fcUnits, activation: 'relu', outputShape: [cfg.fcUnits] });
  if (cfg.dropout > 0) plan.push({ name: 'drop7', type: 'dropout', outputShape: [cfg.fcUnits] });
  plan.push({ name: 'fc8', type: 'dense', units: cfg.numClasses, activation: 'linear', outputShape: [cfg.numClasses] });
  return plan;
}

function layerParams(layer: LayerPlan, inShape: number[], batchNorm: boolean): Omit<ParamEntry, 'offset'>[] {
  const entry = (role: ParamRole, shape: number[], trainable: boolean, decay: boolean) => ({
    name: `${layer.name}/${role}`, layer: layer.name, role, shape,
    size: shape.reduce((a, b) => a * b, 1), trainable, decay,
  });
  const inC = inShape[inShape.length - 1] ?? 0;
  if (layer.type === 'conv') {
    const k = layer.kernel ?? 3;
    const outC = layer.outputShape[2] ?? 0;
    const out = [entry('kernel', [k, k, inC, outC], true, true)];
    if (!batchNorm) out.push(entry('bias', [outC], true, false));
    return out;
  }
  if (layer.type === 'batchNorm') {
    return [entry('gamma', [inC], true, false), entry('beta', [inC], true, false),
      entry('movingMean', [inC], false, false), entry('movingVariance', [inC], false, false)];
  }
  if (layer.type === 'dense') {
    const units = layer.units ?? 0;
    return [entry('kernel', [inC, units], true, true), entry('bias', [units], true, false)];
  }
  return [];
}

/**
 * The flat parameter layout: every weight of the model in build order, each
 * with its offset into one Float32Array. This is the wire and checkpoint
 * layout; two peers agree on it iff their model hashes agree.
 */
export function buildLayout(cfg: ModelConfig): ParamLayout {
  const entries: ParamEntry[] = [];
  let offset = 0;
  let trainableSize = 0;
  let inShape = [cfg.inputSize, cfg.inputSize, 3];
  for (const layer of planLayers(cfg)) {
    for (const p of layerParams(layer, inShape, cfg.batchNorm)) {
      entries.push({ ...p, offset });
      offset += p.size;
      if (p.trainable) trainableSize += p.size;
    }
    inShape = layer.outputShape;
  }
  return { entries, totalSize: offset, trainableSize, byName: new Map(entries.map((e) => [e.name, e])) };
}

/** sha256 over the config and the layout (names, shapes, offsets); 16 hex digits. */
export function modelHash(cfg: ModelConfig, layout: ParamLayout = buildLayout(cfg)): string {
  const canonical = JSON.stringify({
    config: cfg.config, batchNorm: cfg.batchNorm, numClasses: cfg.numClasses, inputSize: cfg.inputSize,
    widthMultiplier: cfg.widthMultiplier, fcUnits: cfg.fcUnits, dropout: cfg.dropout,
    layout: layout.entries.map((e) => [e.name, e.shape, e.offset]),
  });
  return createHash('sha256').update(canonical).digest('hex').slice(0, 16);
}

/** Copies named arrays into one flat vector; every entry must be present with its exact size. */
export function flatten(layout: ParamLayout, named: Map<string, Float32Array>, out?: Float32Array): Float32Array {
  const flat = out ?? new Float32Array(layout.totalSize);
  if (flat.length !== layout.totalSize) {
    throw new ShapeError(`flat vector: expected ${layout.totalSize} floats, got ${flat.length}`);
  }
  for (const e of layout.entries) {
    const values = named.get(e.name);
    if (values === undefined) throw new ShapeError(`parameter ${e.name}: expected ${e.size} floats, got none`);
    if (values.length !== e.size) {
      throw new ShapeError(`parameter ${e.name}: expected ${e.size} floats (shape [${e.shape}]), got ${values.length}`);
    }
    flat.set(values, e.offset);
  }
  return flat;
}

/** Views (no copy) of each parameter inside a flat vector. */
export function unflatten(layout: ParamLayout, flat: Float32Array): Map<string, Float32Array> {
  if (flat.length !== layout.totalSize) {
    throw new ShapeError(`flat vector: expected ${layout.totalSize} floats, got ${flat.length}`);
  }
  return new Map(layout.entries.map((e) => [e.name, flat.subarray(e.offset, e.offset + e.size)]));
}
