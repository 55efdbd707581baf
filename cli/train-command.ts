import type { Command } from 'commander';
import { ensureDefaultDataset } from '../coordinator/default-dataset.ts';
import { BUILT_IN_DEFAULTS, PAPER_DEFAULTS, type RunConfig } from '../coordinator/run-config.ts';
import { indexDataset } from '../coordinator/dataset-index.ts';
import { ConfigError } from '../shared/errors.ts';
import { createLogger } from '../shared/logger.ts';
import { choiceOption, intOption, numberOption, scaleRangeOption } from '../shared/option-parsers.ts';
import { CONFIG_NAMES, INITIALIZERS, resolveModelConfig, type ConfigName, type InitializerName } from '../shared/vgg-configs.ts';
import { BACKEND_CHOICES, selectBackend, type BackendChoice } from '../worker/backend.ts';
import { train } from '../worker/train/trainer.ts';

interface TrainFlags {
  data?: string; config?: ConfigName; batchNorm: boolean; numClasses?: number; inputSize?: number; width?: number;
  fcUnits?: number; dropout?: number; init: InitializerName; seed: number; epochs?: number; batchSize?: number; lr: number;
  momentum: number; weightDecay: number; scale?: [number, number]; evalScale?: number; normalize?: 'mean' | 'mean-std';
  checkpointDir?: string; checkpointEvery: number; keep: number; resume: boolean; warmStart?: string; initFrom?: string;
  trainLimit?: number; valLimit?: number; backend?: BackendChoice; gpu?: number; json: boolean;
}

/**
 * The run defaults of `coordinator start` and `local` (the paper's recipe with
 * --data, a small VGG-A on the built-in dataset without), except that one
 * process takes the paper's whole batch of 256 instead of one worker's share.
 */
const BUILT_IN: RunConfig = { ...PAPER_DEFAULTS, ...BUILT_IN_DEFAULTS };
const PAPER: RunConfig = { ...PAPER_DEFAULTS, batchSize: 256 };

export function registerTrainCommand(program: Command): void {
  program.command('train')
    .description('single-process training (no Redis); without --data it trains a small VGG on the built-in dataset')
    .option('--data <dir>', 'ImageNet-layout dataset root (default: built-in Fashion-MNIST or generated set)')
    .option('--config <name>', `Table 1 column: ${CONFIG_NAMES.join(', ')}`, choiceOption('--config', CONFIG_NAMES))
    .option('--batch-norm', 'batch norm after every conv', false)
    .option('--num-classes <n>', 'classes (default: from the dataset)', intOption('--num-classes', 2))
    .option('--input-size <px>', 'crop side (default 224; built-in 32)', intOption('--input-size', 32))
    .option('--width <m>', 'conv channel multiplier', numberOption('--width', 0, 4, true))
    .option('--fc-units <n>', 'units of fc6/fc7', intOption('--fc-units', 1))
    .option('--dropout <p>', 'dropout after fc6/fc7', numberOption('--dropout', 0, 0.99))
    .option('--init <name>', `initialiser: ${INITIALIZERS.join(', ')}`, choiceOption('--init', INITIALIZERS), 'kaiming')
    .option('--seed <n>', 'seed for init, shuffling and augmentation', intOption('--seed', 0), 1)
    .option('--epochs <n>', 'epochs (paper: 74)', intOption('--epochs', 1))
    .option('--batch-size <n>', 'batch size (paper: 256)', intOption('--batch-size', 1))
    .option('--lr <x>', 'initial learning rate', numberOption('--lr', 0, 10, true), 0.01)
    .option('--momentum <x>', 'momentum', numberOption('--momentum', 0, 0.999), 0.9)
    .option('--weight-decay <x>', 'L2 on kernels', numberOption('--weight-decay', 0, 1), 5e-4)
    .option('--scale <S|Smin:Smax>', 'training scale S, or a jitter range', scaleRangeOption('--scale'))
    .option('--eval-scale <Q>', 'validation scale Q (centre crop)', intOption('--eval-scale', 1))
    .option('--normalize <mode>', 'mean (paper) or mean-std', choiceOption('--normalize', ['mean', 'mean-std'] as const))
    .option('--checkpoint-dir <dir>', 'write checkpoints here')
    .option('--checkpoint-every <steps>', 'also checkpoint every N steps', intOption('--checkpoint-every', 0), 0)
    .option('--keep <k>', 'checkpoints kept', intOption('--keep', 1), 3)
    .option('--resume', 'continue from the newest checkpoint in --checkpoint-dir', false)
    .option('--warm-start <ckpt>', 'copy the first four convs and FC layers from a checkpoint of config A')
    .option('--init-from <ckpt>', 'fine-tune: all weights from a checkpoint of the same model (new --scale and --lr; fresh momentum)')
    .option('--train-limit <n>', 'use only the first n training images', intOption('--train-limit', 1))
    .option('--val-limit <n>', 'use only the first n validation images', intOption('--val-limit', 1))
    .option('--backend <name>', `compute backend: ${BACKEND_CHOICES.join(', ')} (env VGG_BACKEND)`, choiceOption('--backend', BACKEND_CHOICES))
    .option('--gpu <n>', 'GPU index (sets CUDA_VISIBLE_DEVICES)', intOption('--gpu', 0))
    .option('--json', 'last line of output is one JSON object', false)
    .action(async (f: TrainFlags) => {
      const log = createLogger({ role: 'train' });
      const backend = await selectBackend({ backend: f.backend, gpu: f.gpu, log });
      const builtIn = f.data === undefined;
      const d = builtIn ? BUILT_IN : PAPER;
      const data = f.data ?? (await ensureDefaultDataset(log)).root;
      const index = await indexDataset(data);
      const scale = f.scale ?? d.scale;
      const inputSize = f.inputSize ?? d.inputSize;
      if (scale[0] < inputSize) throw new ConfigError(`--scale: expected S >= --input-size (${inputSize}), got ${scale[0]}`);
      const evalQ = f.evalScale ?? Math.max(d.evalScale, inputSize);
      if (evalQ < inputSize) throw new ConfigError(`--eval-scale: expected Q >= --input-size (${inputSize}), got ${evalQ}`);
      const model = resolveModelConfig({
        config: f.config ?? d.config, batchNorm: f.batchNorm, numClasses: f.numClasses ?? index.classes.length,
        inputSize, widthMultiplier: f.width ?? d.width, fcUnits: f.fcUnits ?? d.fcUnits, dropout: f.dropout ?? d.dropout,
      });
      const result = await train({
        data, model, init: f.init, seed: f.seed, epochs: f.epochs ?? d.epochs, batchSize: f.batchSize ?? d.batchSize,
        sgd: { learningRate: f.lr, momentum: f.momentum, weightDecay: f.weightDecay },
        sMin: scale[0], sMax: scale[1], evalQ, normalizeStd: (f.normalize ?? d.normalize) === 'mean-std',
        checkpointDir: f.checkpointDir, checkpointEverySteps: f.checkpointEvery, keepCheckpoints: f.keep, resume: f.resume,
        warmStartFrom: f.warmStart, initFrom: f.initFrom, trainLimit: f.trainLimit, valLimit: f.valLimit, log,
      });
      for (const e of result.history) {
        process.stdout.write(`epoch ${e.epoch + 1}: train loss ${e.trainLoss.toFixed(4)}  val top-1 ${(100 * e.valTop1).toFixed(2)}%  top-5 ${(100 * e.valTop5).toFixed(2)}%  lr ${e.lr}  ${e.seconds.toFixed(1)} s\n`);
      }
      const summary = {
        backend: backend.name, data, config: model.config, epochs: result.epochs, steps: result.steps,
        valTop1: result.valTop1, valTop5: result.valTop5, skippedImages: result.skippedImages, wallSeconds: result.wallSeconds,
      };
      process.stdout.write(f.json ? `${JSON.stringify(summary)}\n`
        : `done: ${result.steps} steps, val top-1 ${(100 * result.valTop1).toFixed(2)}%, top-5 ${(100 * result.valTop5).toFixed(2)}%, ${result.wallSeconds.toFixed(1)} s on ${backend.name}\n`);
    });
}
