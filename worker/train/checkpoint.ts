import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { CheckpointError } from '../../shared/errors.ts';
import type { ParamEntry, ParamLayout } from '../../shared/param-layout.ts';
import type { ModelConfig } from '../../shared/vgg-configs.ts';
import type { VggModel } from '../model/vgg-model.ts';

/** Everything besides the tensors that a run needs to continue exactly. */
export interface CheckpointState {
  step: number;
  epoch: number;
  /** Batches of `epoch` already applied (the data cursor). */
  batchInEpoch: number;
  /** Distributed runs: batch positions of `epoch` already applied (the data cursor, in any order). */
  appliedPositions?: number[];
  /** Distributed runs: the most samples a step has had (the aggregator's fullStepSamples, PartialSteps). */
  fullStepSamples?: number;
  /** Distributed runs: steps so far with fewer samples than the full step (status). */
  shortSteps?: number;
  modelHash: string;
  modelConfig: ModelConfig;
  /** The full run config, for reproducibility (nanoGPT habit). */
  runConfig: Record<string, unknown>;
  schedule: Record<string, unknown>;
  /** Input normalisation the weights were trained with (what evaluation must apply). */
  normalization?: { meanRgb: [number, number, number]; stdRgb: [number, number, number] };
  /** Training scale [Smin, Smax] (S fixed when equal). */
  trainScale?: [number, number];
  createdAt: string;
}

export interface LoadedCheckpoint {
  dir: string;
  state: CheckpointState;
  /** Layout name -> values (keras weight names equal our layout names up to role spelling). */
  weights: tf.NamedTensorMap;
  momentum: Float32Array;
}

const STEP_DIR = /^step-(\d{9})$/;

/** A tf.io handler over a folder holding model.json + weights.bin: what tf.loadLayersModel reads. */
export function folderHandler(dir: string): tf.io.IOHandler {
  return {
    async load() {
      const modelJson = JSON.parse(await readFile(path.join(dir, 'model.json'), 'utf8')) as tf.io.ModelJSON;
      const weightData = await readFile(path.join(dir, 'weights.bin'));
      const weightSpecs = modelJson.weightsManifest.flatMap((g) => g.weights);
      return {
        modelTopology: modelJson.modelTopology,
        weightSpecs,
        weightData: weightData.buffer.slice(weightData.byteOffset, weightData.byteOffset + weightData.byteLength),
        format: modelJson.format,
        generatedBy: modelJson.generatedBy,
        convertedBy: modelJson.convertedBy,
      };
    },
  };
}

const KERAS_ROLE: Record<string, string> = {
  kernel: 'kernel', bias: 'bias', gamma: 'gamma', beta: 'beta', movingMean: 'moving_mean', movingVariance: 'moving_variance',
};

/** The keras weight name of a layout entry (`conv1_1/kernel`, `conv1_1_bn/moving_mean`). */
export function kerasName(e: ParamEntry): string {
  return `${e.layer}/${KERAS_ROLE[e.role]}`;
}

/** The layers-model topology (model.json's modelTopology) of a built model. */
export function modelTopology(vgg: VggModel): object {
  return vgg.model.toJSON(null, false) as object;
}

/** What a checkpoint holds: a topology, flat weights and momentum in layout order, and the run state. */
export interface CheckpointContent {
  topology: object;
  layout: ParamLayout;
  weights: Float32Array;
  momentum: Float32Array;
  state: CheckpointState;
}

/**
 * Writes a checkpoint atomically (a temp folder renamed into place) and keeps
 * the newest `keep`. model.json + weights.bin are the TensorFlow.js layers
 * format, written straight from the flat vector. Returns the folder.
 */
export async function saveCheckpoint(root: string, content: CheckpointContent, keep = 3): Promise<string> {
  const { topology, layout, weights, momentum, state } = content;
  await mkdir(root, { recursive: true });
  const name = `step-${String(state.step).padStart(9, '0')}`;
  const final = path.join(root, name);
  const tmp = path.join(root, `.tmp-${name}-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp);
  const modelJson = {
    modelTopology: topology, format: 'layers-model', generatedBy: 'vgg-train', convertedBy: null,
    weightsManifest: [{ paths: ['weights.bin'], weights: layout.entries.map((e) => ({ name: kerasName(e), shape: e.shape, dtype: 'float32' })) }],
  };
  await writeFile(path.join(tmp, 'model.json'), JSON.stringify(modelJson));
  await writeFile(path.join(tmp, 'weights.bin'), Buffer.from(weights.buffer, weights.byteOffset, weights.byteLength));
  await writeFile(path.join(tmp, 'momentum.bin'), Buffer.from(momentum.buffer, momentum.byteOffset, momentum.byteLength));
  await writeFile(path.join(tmp, 'state.json'), JSON.stringify(state, null, 2));
  await rm(final, { recursive: true, force: true });
  await rename(tmp, final);
  const all = await listCheckpoints(root);
  for (const old of all.slice(0, Math.max(0, all.length - keep))) await rm(old, { recursive: true, force: true });
  return final;
}

/** Complete checkpoints under root, oldest first. */
export async function listCheckpoints(root: string): Promise<string[]> {
  if (!existsSync(root)) return [];
  return (await readdir(root)).filter((n) => STEP_DIR.test(n)).sort()
    .map((n) => path.join(root, n)).filter((d) => existsSync(path.join(d, 'state.json')));
}

/** Loads a checkpoint folder, or the newest under a root when `dirOrRoot` holds step-* folders. */
export async function loadCheckpoint(dirOrRoot: string): Promise<LoadedCheckpoint> {
  let dir = dirOrRoot;
  if (!existsSync(path.join(dir, 'state.json'))) {
    const all = await listCheckpoints(dirOrRoot);
    const newest = all[all.length - 1];
    if (newest === undefined) throw new CheckpointError(`${dirOrRoot}: expected a checkpoint (state.json or step-* folders), got none`);
    dir = newest;
  }
  try {
    const state = JSON.parse(await readFile(path.join(dir, 'state.json'), 'utf8')) as CheckpointState;
    const artifacts = await (folderHandler(dir).load as () => Promise<tf.io.ModelArtifacts>)();
    const weights = tf.io.decodeWeights(artifacts.weightData as ArrayBuffer, artifacts.weightSpecs ?? []);
    const m = await readFile(path.join(dir, 'momentum.bin'));
    const momentum = new Float32Array(m.buffer.slice(m.byteOffset, m.byteOffset + m.byteLength));
    return { dir, state, weights, momentum };
  } catch (err) {
    throw new CheckpointError(`${dir}: expected a readable checkpoint, got: ${(err as Error).message}`, { cause: err });
  }
}

/** Copies checkpoint weights into a model of the same layout; checks every name and shape first. */
export function restoreWeights(vgg: VggModel, weights: tf.NamedTensorMap): void {
  for (const [e, t] of checkedWeights(vgg.layout, weights)) vgg.variables.get(e.name)?.write(t);
}

/** Every layout entry paired with its checkpoint tensor; throws before anything is used if one is missing or misshapen. */
export function checkedWeights(layout: ParamLayout, weights: tf.NamedTensorMap): (readonly [ParamEntry, tf.Tensor])[] {
  return layout.entries.map((e) => {
    const t = weights[kerasName(e)];
    if (t === undefined) throw new CheckpointError(`checkpoint: expected weight ${e.name}, got none`);
    if (t.shape.join(',') !== e.shape.join(',')) {
      throw new CheckpointError(`checkpoint weight ${e.name}: expected shape [${e.shape}], got [${t.shape}]`);
    }
    return [e, t] as const;
  });
}
