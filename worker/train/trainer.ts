import * as tf from '@tensorflow/tfjs';
import { indexDataset, type DatasetIndex } from '../../coordinator/dataset-index.ts';
import { ShapeError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import { initialPlateau, stepPlateau, type PlateauState } from '../../shared/lr-schedule.ts';
import { modelHash } from '../../shared/param-layout.ts';
import { planEpoch } from '../../coordinator/epoch-plan.ts';
import { subsetIds } from '../../shared/subset.ts';
import type { InitializerName, ModelConfig } from '../../shared/vgg-configs.ts';
import { estimateRgbStats, loadBatch, type AugmentOptions, type BatchItem, type LoadedBatch } from '../data/image-pipeline.ts';
import { buildVgg, disposeVgg, readFlat, type VggModel } from '../model/vgg-model.ts';
import { initFromCheckpoint, warmStartFromCheckpoint } from '../model/warm-start.ts';
import { loadCheckpoint, modelTopology, restoreWeights, saveCheckpoint } from './checkpoint.ts';
import { computeGradients, evaluateBatch } from './gradient-step.ts';
import { MomentumSgd, type SgdOptions } from './momentum-sgd.ts';

export interface TrainOptions {
  data: string;
  model: ModelConfig;
  init: InitializerName;
  seed: number;
  epochs: number;
  batchSize: number;
  sgd: SgdOptions;
  /** Training scale range and evaluation scale Q. */
  sMin: number;
  sMax: number;
  evalQ: number;
  /** Divide pixels by the training set's RGB std after mean subtraction (the paper subtracts the mean only). */
  normalizeStd: boolean;
  checkpointDir?: string;
  /** Also checkpoint every N steps (0: only at epoch ends). */
  checkpointEverySteps: number;
  keepCheckpoints: number;
  resume: boolean;
  /** Checkpoint of config A to warm-start from (first four convs + FC layers). */
  warmStartFrom?: string;
  /** Fine-tuning: every weight from this checkpoint of the same model; fresh momentum, step 0 (--scale, --lr anew). */
  initFrom?: string;
  /** Stop after this many training samples per epoch / validation samples (smoke runs). */
  trainLimit?: number;
  valLimit?: number;
  log?: Logger;
  onStep?: (info: StepInfo) => void;
}

export interface StepInfo { step: number; epoch: number; loss: number; top1: number; top5: number; samples: number; ms: number; lr: number }
export interface EpochInfo { epoch: number; trainLoss: number; trainTop1: number; valTop1: number; valTop5: number; valLoss: number; lr: number; seconds: number }

export interface TrainResult {
  epochs: number;
  steps: number;
  valTop1: number;
  valTop5: number;
  history: EpochInfo[];
  skippedImages: number;
  wallSeconds: number;
}

/** The samples of a split (an even spread of `limit` of them), with their dataset positions as ids. */
function items(index: DatasetIndex, split: 'train' | 'val', limit?: number): BatchItem[] {
  return subsetIds(index[split].length, limit).map((id) => ({ id, path: index[split][id]?.path ?? '', label: index[split][id]?.label ?? 0 }));
}

/** Validation (single scale Q, centre crop) over `vals`; returns top-1/top-5 accuracy and mean loss. */
export async function validate(vgg: VggModel, root: string, vals: BatchItem[], augment: AugmentOptions, q: number, batchSize: number) {
  let top1 = 0;
  let top5 = 0;
  let lossSum = 0;
  let n = 0;
  for (let i = 0; i < vals.length; i += batchSize) {
    const batch = await loadBatch(root, vals.slice(i, i + batchSize), augment, { kind: 'eval', q });
    const r = evaluateBatch(vgg, batch.images, batch.labels);
    top1 += r.top1;
    top5 += r.top5;
    lossSum += r.lossSum;
    n += r.samples;
  }
  return { top1: n > 0 ? top1 / n : 0, top5: n > 0 ? top5 / n : 0, loss: n > 0 ? lossSum / n : NaN, samples: n };
}

/**
 * Single-process training, top to bottom: index, (resume), per epoch a seeded
 * shuffle, prefetching batches while the current one computes, momentum SGD,
 * validation, the plateau schedule, checkpoints.
 */
export async function train(o: TrainOptions): Promise<TrainResult> {
  const started = performance.now();
  const index = await indexDataset(o.data);
  if (o.model.numClasses !== index.classes.length) {
    throw new ShapeError(`--num-classes: the dataset has ${index.classes.length} classes, the model ${o.model.numClasses}`);
  }
  const trainItems = items(index, 'train', o.trainLimit);
  const valItems = items(index, 'val', o.valLimit);
  const stats = await estimateRgbStats(index.root, trainItems.map((t) => t.path));
  const augment: AugmentOptions = {
    inputSize: o.model.inputSize, sMin: o.sMin, sMax: o.sMax, flip: true, pcaStd: 0.1,
    meanRgb: stats.meanRgb, stdRgb: o.normalizeStd ? stats.stdRgb : [1, 1, 1],
  };
  const vgg = buildVgg(o.model, { init: o.init, seed: o.seed });
  const hash = modelHash(o.model, vgg.layout);
  const topology = modelTopology(vgg);
  const sgd = new MomentumSgd(vgg.layout, o.sgd);
  let plateau: PlateauState = initialPlateau(o.sgd.learningRate);
  let step = 0;
  let startEpoch = 0;
  let startBatch = 0;
  if (o.initFrom !== undefined) await initFromCheckpoint(vgg, o.initFrom, o.log);
  if (o.warmStartFrom !== undefined) await warmStartFromCheckpoint(vgg, o.warmStartFrom, o.log);
  if (o.resume && o.checkpointDir !== undefined) {
    try {
      const ck = await loadCheckpoint(o.checkpointDir);
      if (ck.state.modelHash !== hash) {
        throw new ShapeError(`--resume: checkpoint model hash ${ck.state.modelHash} does not match this model's ${hash}`);
      }
      restoreWeights(vgg, ck.weights);
      tf.dispose(Object.values(ck.weights));
      sgd.writeFlat(ck.momentum);
      ({ step, epoch: startEpoch, batchInEpoch: startBatch } = ck.state);
      plateau = ck.state.schedule as unknown as PlateauState;
      o.log?.info({ dir: ck.dir, step, epoch: startEpoch, batch: startBatch }, 'resumed');
    } catch (err) {
      if (err instanceof ShapeError) throw err;
      o.log?.warn({ err: (err as Error).message }, 'no checkpoint to resume from; starting fresh');
    }
  }
  sgd.learningRate = plateau.learningRate;
  const save = async (epoch: number, batchInEpoch: number) => {
    if (o.checkpointDir === undefined) return;
    const dir = await saveCheckpoint(o.checkpointDir, {
      topology, layout: vgg.layout, weights: readFlat(vgg), momentum: sgd.readFlat(),
      state: {
        step, epoch, batchInEpoch, modelHash: hash, modelConfig: o.model,
        runConfig: { ...o, log: undefined, onStep: undefined }, schedule: { ...plateau }, createdAt: new Date().toISOString(),
        normalization: { meanRgb: augment.meanRgb, stdRgb: augment.stdRgb }, trainScale: [augment.sMin, augment.sMax],
      },
    }, o.keepCheckpoints);
    o.log?.info({ dir, step, epoch }, 'checkpoint written');
  };

  const history: EpochInfo[] = [];
  let skippedImages = 0;
  let last = { top1: 0, top5: 0 };
  const byId = new Map(trainItems.map((t) => [t.id, t]));
  for (let epoch = startEpoch; epoch < o.epochs; epoch += 1) {
    const epochStart = performance.now();
    const batches = planEpoch(trainItems.map((t) => t.id), o.batchSize, o.seed, epoch).batches
      .map((ids) => ids.map((id) => byId.get(id) as BatchItem));
    const load = (b: number): Promise<LoadedBatch> | undefined =>
      b < batches.length ? loadBatch(index.root, batches[b] as BatchItem[], augment, { kind: 'train', seed: o.seed, epoch }) : undefined;
    let next = load(epoch === startEpoch ? startBatch : 0);
    let lossSum = 0;
    let top1Sum = 0;
    let seen = 0;
    for (let b = epoch === startEpoch ? startBatch : 0; b < batches.length; b += 1) {
      const batch = await (next as Promise<LoadedBatch>);
      next = load(b + 1);
      for (const s of batch.skipped) o.log?.warn({ path: s.path, error: s.error }, 'image skipped');
      skippedImages += batch.skipped.length;
      const t0 = performance.now();
      const r = computeGradients(vgg, batch.images, batch.labels);
      if (r.samples > 0) sgd.apply(vgg, r.grads);
      tf.dispose([...r.grads.values()]);
      step += 1;
      lossSum += r.loss * r.samples;
      top1Sum += r.top1;
      seen += r.samples;
      const info = { step, epoch, loss: r.loss, top1: r.top1 / Math.max(1, r.samples), top5: r.top5 / Math.max(1, r.samples),
        samples: r.samples, ms: performance.now() - t0, lr: sgd.learningRate };
      o.onStep?.(info);
      o.log?.debug(info, 'step applied');
      if (o.checkpointEverySteps > 0 && step % o.checkpointEverySteps === 0 && b + 1 < batches.length) await save(epoch, b + 1);
    }
    const val = await validate(vgg, index.root, valItems, augment, o.evalQ, o.batchSize);
    last = { top1: val.top1, top5: val.top5 };
    plateau = stepPlateau(plateau, val.top1);
    sgd.learningRate = plateau.learningRate;
    const info: EpochInfo = {
      epoch, trainLoss: lossSum / Math.max(1, seen), trainTop1: top1Sum / Math.max(1, seen), valTop1: val.top1, valTop5: val.top5,
      valLoss: val.loss, lr: plateau.learningRate, seconds: (performance.now() - epochStart) / 1000,
    };
    history.push(info);
    o.log?.info(info, 'epoch done');
    await save(epoch + 1, 0);
  }
  sgd.dispose();
  disposeVgg(vgg);
  return {
    epochs: o.epochs, steps: step, valTop1: last.top1, valTop5: last.top5, history, skippedImages,
    wallSeconds: (performance.now() - started) / 1000,
  };
}

