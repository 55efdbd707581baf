import { readFileSync } from 'node:fs';
import { ConfigError } from '../shared/errors.ts';
import { WIRE_FORMATS, type WireFormat } from '../shared/half.ts';
import { boolOption as bool, choiceOption, intListOption, intOption, numberOption, scaleRangeOption, tokenFromEnv } from '../shared/option-parsers.ts';
import { PARTIAL_STEPS, type PartialSteps } from './aggregator.ts';
import { CONFIG_NAMES, INITIALIZERS, type ConfigName, type InitializerName } from '../shared/vgg-configs.ts';

/** Everything a distributed run is defined by. */
export interface RunConfig {
  /** Run name: prefixes queues and Redis keys. */
  run: string;
  /** Dataset root; empty: the built-in dataset. */
  data: string;
  redis: string;
  /** Aggregator bind address and port (0: any free port). */
  host: string;
  port: number;
  /** Shared secret of the handshake; required unless host is loopback. */
  token: string;
  config: ConfigName;
  batchNorm: boolean;
  /** 0: the dataset's class count. */
  numClasses: number;
  inputSize: number;
  width: number;
  fcUnits: number;
  dropout: number;
  init: InitializerName;
  seed: number;
  epochs: number;
  /** Samples per job (per worker per step). */
  batchSize: number;
  lr: number;
  /** Epochs (1-based) after which lr is divided by 10; empty: the paper's plateau rule. */
  lrDropEpochs: number[];
  momentum: number;
  weightDecay: number;
  scale: [number, number];
  evalScale: number;
  normalize: 'mean' | 'mean-std';
  checkpointDir: string;
  checkpointEvery: number;
  keep: number;
  resume: boolean;
  /** Jobs are enqueued once this many workers are ready. */
  minWorkers: number;
  trainLimit: number;
  valLimit: number;
  lockDurationMs: number;
  /** A worker silent (no frame, no pong) this long is removed from the step. */
  heartbeatTimeoutMs: number;
  /** Checkpoint of config A whose first four convs and FC layers start this run (paper, Section 3.1); empty: none. */
  warmStart: string;
  /** Fine-tuning: every weight from this checkpoint of the same model (new scale and lr, fresh momentum); empty: none. */
  initFrom: string;
  /** Values on the wire between workers and aggregator; master weights and momentum stay fp32. */
  wire: WireFormat;
  /** Aggregator shards: the coordinator is shard 0, `aggregator start --shard i/K` the others. */
  shards: number;
  /** Workers carry each step's 16-bit rounding error into the next step's gradient (--wire bf16|fp16). */
  errorFeedback: boolean;
  /** With shards K > 1: the workers host shards 1..K-1 (`worker start --host-shard i/K`) and the coordinator's shard 0 owns no floats. */
  hostedShards: boolean;
  /** Early commit: each range's update and new weights go out once every worker of the step sent it (VGG_EARLY_COMMIT=1 too). */
  earlyCommit: boolean;
  /** A step with fewer samples than the run's full step (a worker lost): moves in proportion ('scale') or as far ('mean'); see PartialSteps. */
  partialSteps: PartialSteps;
  /** Prometheus /metrics and /healthz: bind address and port (0: off). */
  metricsHost: string;
  metricsPort: number;
}

interface Spec { key: keyof RunConfig; flag: string; parse: (v: string) => unknown; description: string }

const str = (flag: string) => (v: string): string => {
  if (typeof v !== 'string') throw new ConfigError(`${flag}: expected a string, got ${JSON.stringify(v)}`);
  return v;
};

/** Option table: flag, environment variable (VGG_ + upper snake of the flag) and config-file key (camelCase). */
export const RUN_OPTIONS: Spec[] = [
  { key: 'run', flag: '--run', parse: str('--run'), description: 'run name (queue and key prefix)' },
  { key: 'data', flag: '--data', parse: str('--data'), description: 'ImageNet-layout dataset root (default: built-in)' },
  { key: 'redis', flag: '--redis', parse: str('--redis'), description: 'Redis URL (redis:// or rediss://)' },
  { key: 'host', flag: '--host', parse: str('--host'), description: 'aggregator bind address' },
  { key: 'port', flag: '--port', parse: intOption('--port', 0, 65535), description: 'aggregator port (0: any free)' },
  { key: 'token', flag: '--token', parse: str('--token'), description: 'handshake token (required off loopback)' },
  { key: 'config', flag: '--config', parse: choiceOption('--config', CONFIG_NAMES), description: 'Table 1 column' },
  { key: 'batchNorm', flag: '--batch-norm', parse: bool('--batch-norm'), description: 'batch norm after each conv' },
  { key: 'numClasses', flag: '--num-classes', parse: intOption('--num-classes', 0), description: 'classes (0: from the dataset)' },
  { key: 'inputSize', flag: '--input-size', parse: intOption('--input-size', 32), description: 'crop side' },
  { key: 'width', flag: '--width', parse: numberOption('--width', 0, 4, true), description: 'conv channel multiplier' },
  { key: 'fcUnits', flag: '--fc-units', parse: intOption('--fc-units', 1), description: 'units of fc6/fc7' },
  { key: 'dropout', flag: '--dropout', parse: numberOption('--dropout', 0, 0.99), description: 'dropout after fc6/fc7' },
  { key: 'init', flag: '--init', parse: choiceOption('--init', INITIALIZERS), description: 'initialiser' },
  { key: 'seed', flag: '--seed', parse: intOption('--seed', 0), description: 'seed' },
  { key: 'epochs', flag: '--epochs', parse: intOption('--epochs', 1), description: 'epochs' },
  { key: 'batchSize', flag: '--batch-size', parse: intOption('--batch-size', 1), description: 'samples per job (per worker per step)' },
  { key: 'lr', flag: '--lr', parse: numberOption('--lr', 0, 10, true), description: 'initial learning rate' },
  { key: 'lrDropEpochs', flag: '--lr-drop-epochs', parse: intListOption('--lr-drop-epochs'), description: 'divide lr by 10 after these epochs, e.g. 5,7 (default: on validation plateau, as the paper)' },
  { key: 'momentum', flag: '--momentum', parse: numberOption('--momentum', 0, 0.999), description: 'momentum' },
  { key: 'weightDecay', flag: '--weight-decay', parse: numberOption('--weight-decay', 0, 1), description: 'L2 on kernels' },
  { key: 'scale', flag: '--scale', parse: scaleRangeOption('--scale'), description: 'training scale S or Smin:Smax' },
  { key: 'evalScale', flag: '--eval-scale', parse: intOption('--eval-scale', 1), description: 'validation scale Q' },
  { key: 'normalize', flag: '--normalize', parse: choiceOption('--normalize', ['mean', 'mean-std'] as const), description: 'mean (paper) or mean-std' },
  { key: 'checkpointDir', flag: '--checkpoint-dir', parse: str('--checkpoint-dir'), description: 'checkpoint folder (empty: none)' },
  { key: 'checkpointEvery', flag: '--checkpoint-every', parse: intOption('--checkpoint-every', 0), description: 'also checkpoint every N steps' },
  { key: 'keep', flag: '--keep', parse: intOption('--keep', 1), description: 'checkpoints kept' },
  { key: 'resume', flag: '--resume', parse: bool('--resume'), description: 'continue from the newest checkpoint' },
  { key: 'minWorkers', flag: '--min-workers', parse: intOption('--min-workers', 1), description: 'wait for this many workers before the first step' },
  { key: 'trainLimit', flag: '--train-limit', parse: intOption('--train-limit', 0), description: 'use only the first n training images (0: all)' },
  { key: 'valLimit', flag: '--val-limit', parse: intOption('--val-limit', 0), description: 'use only the first n validation images (0: all)' },
  { key: 'lockDurationMs', flag: '--lock-duration-ms', parse: intOption('--lock-duration-ms', 1000), description: 'BullMQ job lock' },
  { key: 'warmStart', flag: '--warm-start', parse: str('--warm-start'), description: 'start from the first four convs and the FC layers of a checkpoint of config A' },
  { key: 'initFrom', flag: '--init-from', parse: str('--init-from'), description: 'fine-tune: all weights from a checkpoint of the same model (fresh momentum)' },
  { key: 'wire', flag: '--wire', parse: choiceOption('--wire', WIRE_FORMATS), description: 'gradients and weights on the wire: fp32, bf16 or fp16 (fp32 master weights either way)' },
  { key: 'errorFeedback', flag: '--error-feedback', parse: bool('--error-feedback'), description: 'with --wire bf16|fp16: workers add what rounding dropped from a gradient to the next one (error feedback)' },
  { key: 'shards', flag: '--shards', parse: intOption('--shards', 1, 64), description: 'aggregator shards K, split by bytes: the coordinator is shard 0; start `aggregator start --shard i/K` for i = 1..K-1' },
  { key: 'hostedShards', flag: '--hosted-shards', parse: bool('--hosted-shards'), description: 'with --shards K: workers host shards 1..K-1 (`worker start --host-shard i/K`), the coordinator owns no floats and only decides the steps' },
  { key: 'earlyCommit', flag: '--early-commit', parse: bool('--early-commit'), description: 'seal each step once every worker has begun its gradient, then update and send each range as soon as all have sent it (the weights stay exact; opt-in: pays where a core is idle during the compute)' },
  { key: 'partialSteps', flag: '--partial-steps', parse: choiceOption('--partial-steps', PARTIAL_STEPS), description: 'a step with fewer samples than the full step (a worker lost): scale (moves in proportion: the same learning rate per sample) or mean (as far as a full step)' },
  { key: 'metricsHost', flag: '--metrics-host', parse: str('--metrics-host'), description: 'bind address of /metrics and /healthz' },
  { key: 'metricsPort', flag: '--metrics-port', parse: intOption('--metrics-port', 0, 65535), description: 'port of /metrics and /healthz (0: off)' },
  { key: 'heartbeatTimeoutMs', flag: '--heartbeat-timeout-ms', parse: intOption('--heartbeat-timeout-ms', 100), description: 'remove a worker silent this long (no frame, no pong) from the step' },
];

/** Defaults: the paper's recipe on a real dataset. */
export const PAPER_DEFAULTS: RunConfig = {
  run: 'default', data: '', redis: 'redis://127.0.0.1:6379', host: '127.0.0.1', port: 7070, token: '',
  config: 'D', batchNorm: false, numClasses: 0, inputSize: 224, width: 1, fcUnits: 4096, dropout: 0.5, init: 'kaiming',
  seed: 1, epochs: 74, batchSize: 64, lr: 0.01, lrDropEpochs: [], momentum: 0.9, weightDecay: 5e-4, scale: [256, 256], evalScale: 256,
  // The paper subtracts the mean only (with its small N(0, 1e-2) init); with the default He init,
  // 0-255 inputs diverge at lr 0.01, so we also divide by the std. `--normalize mean --init paper` is the paper's.
  normalize: 'mean-std', checkpointDir: '', checkpointEvery: 0, keep: 3, resume: false, minWorkers: 1, trainLimit: 0,
  valLimit: 0, lockDurationMs: 30000, heartbeatTimeoutMs: 30000, warmStart: '', initFrom: '', wire: 'fp32', shards: 1, errorFeedback: false, hostedShards: false, earlyCommit: false, partialSteps: 'scale', metricsHost: '127.0.0.1', metricsPort: 0,
};

/** Defaults without --data: a small VGG-A on the built-in 32x32 dataset, minutes on a CPU. */
export const BUILT_IN_DEFAULTS: Partial<RunConfig> = {
  config: 'A', inputSize: 32, width: 0.125, fcUnits: 256, epochs: 2, batchSize: 32, scale: [32, 36], evalScale: 32, normalize: 'mean-std',
};

export function envName(flag: string): string {
  return `VGG_${flag.replace(/^--/, '').replace(/-/g, '_').toUpperCase()}`;
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);

/**
 * Merges flags (given as strings or values by commander), then environment
 * (VGG_*), then a JSON config file, then defaults; flags win. Every value goes
 * through the option's parser, so errors name the option.
 */
export function resolveRunConfig(flags: Partial<Record<keyof RunConfig, unknown>>, env: NodeJS.ProcessEnv = process.env, configFile?: string): RunConfig {
  let file: Record<string, unknown> = {};
  if (configFile !== undefined) {
    try {
      file = JSON.parse(readFileSync(configFile, 'utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new ConfigError(`--config-file: expected a readable JSON object, got ${JSON.stringify(configFile)} (${(err as Error).message})`);
    }
    const known = new Set(RUN_OPTIONS.map((o) => o.key as string));
    const unknown = Object.keys(file).filter((k) => !known.has(k));
    if (unknown.length > 0) throw new ConfigError(`--config-file: unknown keys ${unknown.join(', ')}; expected some of ${[...known].join(', ')}`);
  }
  const dataGiven = flags.data ?? env[envName('--data')] ?? file.data;
  const cfg: Record<string, unknown> = { ...PAPER_DEFAULTS, ...(dataGiven === undefined || dataGiven === '' ? BUILT_IN_DEFAULTS : {}) };
  for (const o of RUN_OPTIONS) {
    const raw = flags[o.key] ?? env[envName(o.flag)] ?? file[o.key];
    if (raw === undefined) continue;
    const text = Array.isArray(raw) ? raw.join(o.key === 'scale' ? ':' : ',') : String(raw);
    cfg[o.key] = typeof raw === 'boolean' ? raw : o.parse(text);
  }
  const c = cfg as unknown as RunConfig;
  if (c.token === '') c.token = tokenFromEnv(env);
  if (c.token === '' && !LOOPBACK.has(c.host)) {
    throw new ConfigError(`--token: expected a token when the aggregator listens on ${c.host} (not loopback), got none (set --token, VGG_TOKEN or VGG_TOKEN_FILE)`);
  }
  if (c.hostedShards && c.shards < 2) throw new ConfigError(`--hosted-shards: expected --shards K >= 2 (the coordinator plus at least one worker-hosted shard), got --shards ${c.shards}`);
  if (c.scale[0] < c.inputSize) throw new ConfigError(`--scale: expected S >= --input-size (${c.inputSize}), got ${c.scale[0]}`);
  if (c.evalScale < c.inputSize) throw new ConfigError(`--eval-scale: expected Q >= --input-size (${c.inputSize}), got ${c.evalScale}`);
  return c;
}
