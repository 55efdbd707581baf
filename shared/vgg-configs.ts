import { ConfigError } from './errors.ts';

/** The six columns of Table 1 of Simonyan & Zisserman (2014). */
export const CONFIG_NAMES = ['A', 'A-LRN', 'B', 'C', 'D', 'E'] as const;
export type ConfigName = (typeof CONFIG_NAMES)[number];

/** One entry of a column of Table 1: a conv layer (3x3 or 1x1), max-pool, or LRN. */
export type LayerItem =
  | { kind: 'conv'; kernel: 3 | 1; channels: number }
  | { kind: 'pool' }
  | { kind: 'lrn' };

const c3 = (channels: number): LayerItem => ({ kind: 'conv', kernel: 3, channels });
const c1 = (channels: number): LayerItem => ({ kind: 'conv', kernel: 1, channels });
const M: LayerItem = { kind: 'pool' };
const LRN: LayerItem = { kind: 'lrn' };

/** Table 1, convolutional part; every column ends in FC-4096, FC-4096, FC-1000. */
export const TABLE_1: Record<ConfigName, LayerItem[]> = {
  A: [c3(64), M, c3(128), M, c3(256), c3(256), M, c3(512), c3(512), M, c3(512), c3(512), M],
  'A-LRN': [c3(64), LRN, M, c3(128), M, c3(256), c3(256), M, c3(512), c3(512), M, c3(512), c3(512), M],
  B: [c3(64), c3(64), M, c3(128), c3(128), M, c3(256), c3(256), M, c3(512), c3(512), M, c3(512), c3(512), M],
  C: [c3(64), c3(64), M, c3(128), c3(128), M, c3(256), c3(256), c1(256), M,
    c3(512), c3(512), c1(512), M, c3(512), c3(512), c1(512), M],
  D: [c3(64), c3(64), M, c3(128), c3(128), M, c3(256), c3(256), c3(256), M,
    c3(512), c3(512), c3(512), M, c3(512), c3(512), c3(512), M],
  E: [c3(64), c3(64), M, c3(128), c3(128), M, c3(256), c3(256), c3(256), c3(256), M,
    c3(512), c3(512), c3(512), c3(512), M, c3(512), c3(512), c3(512), c3(512), M],
};

export const INITIALIZERS = ['kaiming', 'paper', 'glorot'] as const;
export type InitializerName = (typeof INITIALIZERS)[number];

/** Everything that defines a network's shape. */
export interface ModelConfig {
  /** Column of Table 1. */
  config: ConfigName;
  /** Conv layers without bias, each followed by batch norm. @defaultValue false */
  batchNorm: boolean;
  /** @defaultValue 1000 */
  numClasses: number;
  /** Square input side in pixels; at least 32 (five 2x2 pools). @defaultValue 224 */
  inputSize: number;
  /** Scales every conv layer's channel count (rounded, at least 1). @defaultValue 1 */
  widthMultiplier: number;
  /** Units of fc6 and fc7. @defaultValue 4096 */
  fcUnits: number;
  /** Dropout rate after fc6 and fc7 (0 disables). @defaultValue 0.5 */
  dropout: number;
}

export const DEFAULT_MODEL_CONFIG: ModelConfig = {
  config: 'D',
  batchNorm: false,
  numClasses: 1000,
  inputSize: 224,
  widthMultiplier: 1,
  fcUnits: 4096,
  dropout: 0.5,
};

/** The tiny VGG-A used by tests and `bench:step`: 8,M,16,M,32,32,M,64,64,M,64,64,M; FC 256-256-10; 32x32. */
export const TINY_VGG_A: ModelConfig = {
  config: 'A', batchNorm: false, numClasses: 10, inputSize: 32, widthMultiplier: 0.125, fcUnits: 256, dropout: 0.5,
};

function checkInt(name: string, value: number, min: number): void {
  if (!Number.isInteger(value) || value < min) {
    throw new ConfigError(`${name}: expected an integer >= ${min}, got ${value}`);
  }
}

/** Fills defaults and validates; throws ConfigError naming the option. */
export function resolveModelConfig(partial: Partial<ModelConfig>): ModelConfig {
  const cfg = { ...DEFAULT_MODEL_CONFIG, ...partial };
  if (!(CONFIG_NAMES as readonly string[]).includes(cfg.config)) {
    throw new ConfigError(`config: expected one of ${CONFIG_NAMES.join(', ')}, got ${JSON.stringify(cfg.config)}`);
  }
  checkInt('numClasses', cfg.numClasses, 2);
  checkInt('inputSize', cfg.inputSize, 32);
  checkInt('fcUnits', cfg.fcUnits, 1);
  if (!(cfg.widthMultiplier > 0 && cfg.widthMultiplier <= 4)) {
    throw new ConfigError(`widthMultiplier: expected a number in (0, 4], got ${cfg.widthMultiplier}`);
  }
  if (!(cfg.dropout >= 0 && cfg.dropout < 1)) {
    throw new ConfigError(`dropout: expected a number in [0, 1), got ${cfg.dropout}`);
  }
  return cfg;
}

/** Conv channels after the width multiplier. */
export function scaledChannels(channels: number, widthMultiplier: number): number {
  return Math.max(1, Math.round(channels * widthMultiplier));
}

/** Spatial side after the five pools (floor division, as 'valid' 2x2 pooling does). */
export function featureSide(inputSize: number): number {
  let side = inputSize;
  for (let i = 0; i < 5; i += 1) side = Math.floor(side / 2);
  return side;
}
