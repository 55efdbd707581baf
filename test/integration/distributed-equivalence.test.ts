import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { startCoordinator, type RunSummary } from '../../coordinator/coordinator.ts';
import { importFashionMnist } from '../../coordinator/fashion-mnist-import.ts';
import { startRedisServer, type RedisChild } from '../../coordinator/redis-server.ts';
import type { RunConfig } from '../../coordinator/run-config.ts';
import { createLogger } from '../../shared/logger.ts';
import { listCheckpoints } from '../../worker/train/checkpoint.ts';
import { train } from '../../worker/train/trainer.ts';
import { switchBackend } from '../../worker/backend.ts';
import { resolveModelConfig } from '../../shared/vgg-configs.ts';
import { tempDir } from '../helpers/images.ts';
import { readLedger, relativeDiff, sampleCounts, spawnWorker, tinyRun, type Proc } from '../helpers/cluster.ts';

const log = createLogger({ test: 'equivalence' });
log.level = process.env.TEST_LOG ?? 'warn';
const data = tempDir('dist-eq');
let redis: RedisChild;

async function weightsOf(dir: string): Promise<Float32Array> {
  const newest = (await listCheckpoints(dir)).at(-1);
  assert.ok(newest !== undefined, `a checkpoint in ${dir}`);
  const b = await readFile(path.join(newest, 'weights.bin'));
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

/** One run: in-process coordinator, `workers` real worker processes. */
async function runCluster(cfg: RunConfig, workers: number): Promise<{ summary: RunSummary; procs: Proc[] }> {
  const coordinator = await startCoordinator(cfg, log);
  // The classifier's gradients sent during the backward pass (a GPU worker's default): the results must not change.
  const procs = Array.from({ length: workers }, () => spawnWorker(coordinator.port, cfg.redis, 'test-token', ['--overlap', 'on']));
  try {
    const summary = await coordinator.done;
    await Promise.all(procs.map((p) => p.exited));
    return { summary, procs };
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${procs.map((p) => p.output()).join('\n')}`);
  } finally {
    for (const p of procs) p.child.kill('SIGKILL');
    await coordinator.stop();
  }
}

describe('data parallelism is exact', () => {
  before(async () => {
    redis = await startRedisServer();
    await importFashionMnist({ out: data, trainLimit: 128, valLimit: 32 });
  });
  after(async () => { await redis.stop(); });

  test('2 workers with batch b end with the weights of 1 worker with batch 2b, and 1 worker equals the single-process trainer', async (t) => {
    // FC 512: fc7's kernel (512 x 512, 1 MB) is big enough for the workers to hand its gradient to the transport thread.
    const common = { data, redis: redis.url, trainLimit: '128', valLimit: '32', seed: '4', fcUnits: '512' };
    const twoDir = tempDir('ck-two');
    const oneDir = tempDir('ck-one');
    const two = await runCluster(tinyRun({ ...common, run: 'eq2', batchSize: '16', minWorkers: '2', checkpointDir: twoDir }), 2);
    const one = await runCluster(tinyRun({ ...common, run: 'eq1', batchSize: '32', minWorkers: '1', checkpointDir: oneDir }), 1);
    assert.equal(two.summary.steps, 4);
    assert.equal(one.summary.steps, 4);
    for (const run of ['eq2', 'eq1']) {
      const { missing, duplicates } = sampleCounts(await readLedger(redis.url, run, 0), 128);
      assert.deepEqual({ missing, duplicates }, { missing: [], duplicates: [] }, run);
    }
    const w2 = await weightsOf(twoDir);
    const w1 = await weightsOf(oneDir);
    const d = relativeDiff(w2, w1);
    assert.ok(d < 1e-5, `2x16 vs 1x32: relative difference ${d}`);
    t.diagnostic(`2 workers x 16 vs 1 worker x 32 after 4 steps: relative L2 difference ${d.toExponential(2)}`);

    await switchBackend('wasm');
    const singleDir = tempDir('ck-single');
    await train({
      data, model: resolveModelConfig({ config: 'A', inputSize: 32, widthMultiplier: 0.125, fcUnits: 512, dropout: 0, numClasses: 10 }),
      init: 'kaiming', seed: 4, epochs: 1, batchSize: 32, sgd: { learningRate: 0.01, momentum: 0.9, weightDecay: 5e-4 },
      sMin: 32, sMax: 36, evalQ: 32, normalizeStd: true, checkpointDir: singleDir, checkpointEverySteps: 0, keepCheckpoints: 1,
      resume: false, trainLimit: 128, valLimit: 32,
    });
    const ws = await weightsOf(singleDir);
    const ds = relativeDiff(w1, ws);
    assert.ok(ds < 1e-5, `1 distributed worker vs single process: relative difference ${ds}`);
    t.diagnostic(`1 distributed worker vs the single-process trainer: relative L2 difference ${ds.toExponential(2)}`);
    assert.notEqual(relativeDiff(ws, new Float32Array(ws.length).fill(0.001)), 0);
  });

  test('--wire bf16 and fp16 move 16-bit values end to end and cost no accuracy on Fashion-MNIST (bound: 2 points of val top-1)', async (t) => {
    // 2,000 training and 500 test images, 3 epochs of 63 steps, 1 worker: deterministic for a seed, so the only
    // difference between runs of one seed is the rounding on the wire. Two seeds for bf16 (the bound is on their
    // mean: a single 500-image score moves by ~2 points from seed to seed); one for fp16.
    const wireData = tempDir('dist-wire');
    await importFashionMnist({ out: wireData, trainLimit: 2000, valLimit: 500 });
    const runs: [string, number][] = [['fp32', 5], ['bf16', 5], ['fp16', 5], ['fp32', 6], ['bf16', 6]];
    const results = new Map<string, { w: Float32Array; top1: number }>();
    for (const [wire, seed] of runs) {
      const dir = tempDir(`ck-wire-${wire}-${seed}`);
      const run = `wire-${wire}-${seed}`;
      const { summary } = await runCluster(tinyRun({ data: wireData, redis: redis.url, seed: String(seed), epochs: '3', batchSize: '32', lr: '0.01', run, wire, checkpointDir: dir }), 1);
      const { missing, duplicates } = sampleCounts(await readLedger(redis.url, run, 2), 2000);
      assert.deepEqual({ missing: missing.length, duplicates: duplicates.length }, { missing: 0, duplicates: 0 });
      results.set(`${wire}-${seed}`, { w: await weightsOf(dir), top1: summary.valTop1 });
      t.diagnostic(`${wire}, seed ${seed}: val top-1 ${(100 * summary.valTop1).toFixed(1)}%`);
    }
    const top1 = (k: string) => results.get(k)?.top1 ?? Number.NaN;
    const fp32 = (top1('fp32-5') + top1('fp32-6')) / 2;
    const bf16 = (top1('bf16-5') + top1('bf16-6')) / 2;
    t.diagnostic(`mean val top-1 over seeds 5, 6: fp32 ${(100 * fp32).toFixed(1)}%, bf16 ${(100 * bf16).toFixed(1)}%; fp16 (seed 5) ${(100 * top1('fp16-5')).toFixed(1)}%`);
    assert.ok(fp32 > 0.6, `the fp32 runs learned: ${fp32}`);
    assert.ok(bf16 >= fp32 - 0.02, `bf16 costs at most 2 points: ${bf16} vs ${fp32}`);
    assert.ok(top1('fp16-5') >= top1('fp32-5') - 0.02, `fp16 costs at most 2 points: ${top1('fp16-5')} vs ${top1('fp32-5')}`);
    for (const k of ['bf16-5', 'fp16-5']) {
      const d = relativeDiff(results.get(k)?.w as Float32Array, results.get('fp32-5')?.w as Float32Array);
      assert.ok(d > 0, `${k}: the values were rounded on the wire (relative weight difference ${d})`);
    }
  });
});
