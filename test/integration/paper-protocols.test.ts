import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { startCoordinator } from '../../coordinator/coordinator.ts';
import { importFashionMnist } from '../../coordinator/fashion-mnist-import.ts';
import { startRedisServer, type RedisChild } from '../../coordinator/redis-server.ts';
import { createLogger } from '../../shared/logger.ts';
import { buildLayout } from '../../shared/param-layout.ts';
import { resolveModelConfig } from '../../shared/vgg-configs.ts';
import type { EvalReport } from '../../worker/eval/evaluate.ts';
import { checkedWeights, loadCheckpoint } from '../../worker/train/checkpoint.ts';
import { tempDir } from '../helpers/images.ts';
import { spawnCli, tinyRun } from '../helpers/cluster.ts';

const log = createLogger({ test: 'paper-protocols' });
log.level = process.env.TEST_LOG ?? 'warn';
const data = tempDir('paper');
const ckA = tempDir('paper-ck-a');
let redis: RedisChild;

before(async () => {
  redis = await startRedisServer();
  await importFashionMnist({ out: data, trainLimit: 128, valLimit: 24 });
  // A trained checkpoint of a tiny config A (the same model as tinyRun's), from the CLI.
  const train = spawnCli(['train', '--data', data, '--config', 'A', '--width', '0.125', '--fc-units', '64', '--input-size', '32',
    '--scale', '32:40', '--eval-scale', '36', '--epochs', '1', '--batch-size', '32', '--backend', 'wasm', '--checkpoint-dir', ckA]);
  assert.equal(await train.exited, 0, train.output());
});
after(async () => { await redis.stop(); });

test('eval runs every protocol on a checkpoint and prints the table; --json gives one object', async () => {
  const json = spawnCli(['eval', '--checkpoint', ckA, '--data', data, '--val-limit', '12', '--backend', 'wasm', '--json']);
  assert.equal(await json.exited, 0, json.output());
  const r = JSON.parse(json.output().trim().split('\n').at(-1) ?? '{}') as EvalReport;
  assert.equal(r.images, 12);
  assert.deepEqual(r.trainScale, [32, 40]);
  assert.deepEqual(r.results.map((x) => [x.protocol, x.scales]), [
    ['single', [36]], ['dense', [36]], ['multi-scale', [32, 36, 40]], ['multi-crop', [32, 36, 40]], ['multi-crop+dense', [32, 36, 40]],
  ]);
  for (const x of r.results) assert.ok(x.top1Error >= 0 && x.top1Error <= 1 && x.top5Error <= x.top1Error, JSON.stringify(x));
  const table = spawnCli(['eval', '--checkpoint', ckA, '--data', data, '--val-limit', '4', '--protocols', 'dense,multi-crop', '--scales', '32,48', '--backend', 'wasm']);
  assert.equal(await table.exited, 0, table.output());
  assert.match(table.output(), /\| A \(width 0\.125\) \| \[32;40\] +\| 32,48 +\| multi-crop \(5x5 \+ flips per scale\)/);
  const bad = spawnCli(['eval', '--checkpoint', ckA, '--data', data, '--protocols', 'dense,ten-crop']);
  assert.equal(await bad.exited, 2);
  assert.match(bad.output(), /--protocols: expected some of single, dense, multi-scale, multi-crop, multi-crop\+dense, got ten-crop/);
});

test('coordinator start --init-from (fine-tuning) takes every weight; --warm-start puts A\'s four convs and FC layers into D', async () => {
  const ck = await loadCheckpoint(ckA);
  const fromA = new Map(checkedWeights(buildLayout(ck.state.modelConfig), ck.weights).map(([e, t]) => [e.name, t.dataSync() as Float32Array]));
  const tuned = await startCoordinator(tinyRun({ data, redis: redis.url, run: 'finetune', initFrom: ckA, scale: '40', lr: '0.001' }), log);
  try {
    for (const e of tuned.aggregator.options.sgd.layout.entries) {
      assert.deepEqual(tuned.aggregator.options.weights.subarray(e.offset, e.offset + e.size), fromA.get(e.name), e.name);
    }
  } finally {
    await tuned.stop();
  }
  const deep = await startCoordinator(tinyRun({ data, redis: redis.url, run: 'warm', config: 'D', warmStart: ckA }), log);
  try {
    const layout = buildLayout(resolveModelConfig({ ...ck.state.modelConfig, config: 'D' }));
    const copied = new Set(['conv1_1', 'conv2_1', 'conv3_1', 'conv3_2', 'fc6', 'fc7', 'fc8']);
    for (const e of layout.entries) {
      const w = deep.aggregator.options.weights.subarray(e.offset, e.offset + e.size);
      const a = fromA.get(e.name);
      if (copied.has(e.layer)) assert.deepEqual(w, a, `${e.name} copied from A`);
      else if (e.role === 'kernel') assert.ok(a === undefined || a.length !== w.length || w.some((v, i) => v !== a[i]), `${e.name} fresh`);
    }
  } finally {
    await deep.stop();
  }
  tf.dispose(Object.values(ck.weights));
});
