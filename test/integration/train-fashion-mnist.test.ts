import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { importFashionMnist } from '../../coordinator/fashion-mnist-import.ts';
import { indexDataset } from '../../coordinator/dataset-index.ts';
import { switchBackend } from '../../worker/backend.ts';
import { folderHandler, listCheckpoints, loadCheckpoint } from '../../worker/train/checkpoint.ts';
import { train, type StepInfo, type TrainOptions } from '../../worker/train/trainer.ts';
import { TINY_VGG_A } from '../../shared/vgg-configs.ts';
import { tempDir } from '../helpers/images.ts';
import '../../worker/model/lrn-layer.ts';

const data = tempDir('fmnist');

function options(overrides: Partial<TrainOptions>): TrainOptions {
  return {
    data, model: { ...TINY_VGG_A, dropout: 0 }, init: 'kaiming', seed: 3, epochs: 2, batchSize: 32,
    sgd: { learningRate: 0.02, momentum: 0.9, weightDecay: 5e-4 }, sMin: 32, sMax: 36, evalQ: 32, normalizeStd: true,
    checkpointEverySteps: 0, keepCheckpoints: 2, resume: false, ...overrides,
  };
}

describe('single-process training on real Fashion-MNIST JPEGs', () => {
  before(async () => {
    await switchBackend('wasm');
    const counts = await importFashionMnist({ out: data, trainLimit: 480, valLimit: 160 });
    assert.deepEqual(counts, { train: 480, val: 160 });
  });

  test('the import wrote an ImageNet-layout tree with class names', async () => {
    const index = await indexDataset(data);
    assert.equal(index.classes.length, 10);
    assert.equal(index.train.length, 480);
    assert.equal(index.val.length, 160);
    assert.equal(index.classNames.class09, 'Ankle boot');
  });

  test('the loss falls, accuracy beats chance, and no tensor leaks', async () => {
    const steps: (StepInfo & { tensors: number })[] = [];
    const result = await train(options({ epochs: 3, onStep: (s) => steps.push({ ...s, tensors: tf.memory().numTensors }) }));
    assert.equal(result.steps, 45);
    const mean = (xs: StepInfo[]) => xs.reduce((s, x) => s + x.loss, 0) / xs.length;
    const first = mean(steps.slice(0, 5));
    const last = mean(steps.slice(-5));
    assert.ok(last < first * 0.8, `loss fell from ${first} to ${last}`);
    assert.ok(result.valTop1 > 0.3, `val top-1 ${result.valTop1} beats chance (0.1)`);
    assert.equal(steps[9]?.tensors, steps[1]?.tensors, 'live tensors after step 10 equal those after step 2');
  });

  test('checkpoints load with tf.loadLayersModel, and resume continues to the same weights', async () => {
    const straight = tempDir('ck-straight');
    const resumed = tempDir('ck-resumed');
    await train(options({ checkpointDir: straight }));
    await train(options({ checkpointDir: resumed, epochs: 1 }));
    const mid = await loadCheckpoint(resumed);
    assert.equal(mid.state.epoch, 1);
    assert.equal(mid.state.step, 15);
    await train(options({ checkpointDir: resumed, resume: true }));

    const [a, b] = [await listCheckpoints(straight), await listCheckpoints(resumed)];
    assert.equal(path.basename(a.at(-1) ?? ''), 'step-000000030');
    assert.equal(path.basename(b.at(-1) ?? ''), 'step-000000030');
    assert.deepEqual(await readFile(path.join(b.at(-1) ?? '', 'weights.bin')), await readFile(path.join(a.at(-1) ?? '', 'weights.bin')));
    assert.deepEqual(await readFile(path.join(b.at(-1) ?? '', 'momentum.bin')), await readFile(path.join(a.at(-1) ?? '', 'momentum.bin')));

    const model = await tf.loadLayersModel(folderHandler(a.at(-1) ?? ''));
    const logits = tf.tidy(() => (model.predict(tf.zeros([1, 32, 32, 3])) as tf.Tensor).shape);
    assert.deepEqual(logits, [1, 10]);
    model.dispose();
  });
});
