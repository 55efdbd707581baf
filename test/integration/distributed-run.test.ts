import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { startCoordinator } from '../../coordinator/coordinator.ts';
import { importFashionMnist } from '../../coordinator/fashion-mnist-import.ts';
import { freePort, startRedisServer, type RedisChild } from '../../coordinator/redis-server.ts';
import { createLogger } from '../../shared/logger.ts';
import { listCheckpoints } from '../../worker/train/checkpoint.ts';
import { tempDir } from '../helpers/images.ts';
import { assertAcksLanded, readLedger, sampleCounts, spawnCli, spawnWorker, tinyRun, waitFor, type Proc } from '../helpers/cluster.ts';

const log = createLogger({ test: 'distributed-run' });
log.level = process.env.TEST_LOG ?? 'warn';
const data = tempDir('dist-run');
const TRAIN = 1200;
let redis: RedisChild;
const procs: Proc[] = [];

async function assertExactlyOnce(run: string, epochs: number): Promise<void> {
  for (let e = 0; e < epochs; e += 1) {
    const counts = sampleCounts(await readLedger(redis.url, run, e), TRAIN);
    assert.deepEqual({ epoch: e, missing: counts.missing.length, duplicates: counts.duplicates.length }, { epoch: e, missing: 0, duplicates: 0 });
  }
}

describe('distributed runs on real Redis, BullMQ and WebSockets', () => {
  before(async () => {
    redis = await startRedisServer();
    await importFashionMnist({ out: data, trainLimit: TRAIN, valLimit: 200 });
  });
  after(async () => {
    for (const p of procs) p.child.kill('SIGKILL');
    await redis.stop();
  });

  test('2 workers (--gpus 0,1), 2 epochs: every training sample applied exactly once per epoch; status reports the run', async () => {
    const coordinator = await startCoordinator(tinyRun({ data, redis: redis.url, run: 'plain', epochs: '2', minWorkers: '2', trainLimit: '192' }), log);
    // One `--gpus 0,1` launcher: one worker process per GPU.
    const launcher = spawnCli(['worker', 'start', '--coordinator', `ws://127.0.0.1:${coordinator.port}`, '--token', 'test-token', '--redis', redis.url, '--gpus', '0,1']);
    procs.push(launcher);
    const summary = await coordinator.done;
    await coordinator.stop();
    assert.equal(await launcher.exited, 0, launcher.output());
    assert.equal(summary.epochs, 2);
    assert.equal(summary.steps, 12, '12 jobs of 16 per epoch, 2 per step');
    for (let e = 0; e < 2; e += 1) {
      const ledger = await readLedger(redis.url, 'plain', e);
      assert.equal(ledger.length, 12);
      const ids = ledger.flatMap((l) => l.sampleIds);
      assert.equal(ids.length, 192);
      assert.equal(new Set(ids).size, 192, `epoch ${e}: no sample twice`);
      assert.equal(new Set(ledger.map((l) => l.workerId)).size, 2, 'both GPU processes contributed');
    }
    const status = spawnCli(['status', '--redis', redis.url, '--run', 'plain', '--json']);
    assert.equal(await status.exited, 0, status.output());
    const report = JSON.parse(status.output().trim().split('\n').at(-1) ?? '{}') as { schema: number; state: { state: string; epoch: number; step: number; valTop1: number; fullStepSamples: number; shortSteps: number }; queues: { train: { waiting: number } }; history: unknown[] };
    assert.equal(report.schema, 1);
    assert.equal(report.state.state, 'finished');
    assert.equal(report.state.step, 12);
    // Every step held both workers' 16 samples: the full step, and no short one.
    assert.deepEqual([report.state.fullStepSamples, report.state.shortSteps], [32, 0]);
    assert.equal(report.queues.train.waiting, 0);
    assert.equal(report.history.length, 2);
    const audit = spawnCli(['audit', '--epoch', '1', '--redis', redis.url, '--run', 'plain', '--json']);
    assert.equal(await audit.exited, 0, audit.output());
    const a = JSON.parse(audit.output().trim()) as { epoch: number; samples: number; missing: number; duplicates: number; jobs: number };
    assert.deepEqual([a.epoch, a.samples, a.missing, a.duplicates, a.jobs], [1, 192, 0, 0, 12]);
  });

  test('a worker started mid-run joins and contributes; one killed with SIGKILL does not stall the run; one sent SIGTERM leaves cleanly', async () => {
    const coordinator = await startCoordinator(tinyRun({ data, redis: redis.url, run: 'churn', epochs: '3', minWorkers: '2' }), log);
    const first = [spawnWorker(coordinator.port, redis.url), spawnWorker(coordinator.port, redis.url)];
    procs.push(...first);
    await waitFor('step 5', () => coordinator.aggregator.step >= 5);
    const late = spawnWorker(coordinator.port, redis.url);
    procs.push(late);
    const lateApplied = async () => {
      const entries = [...(await readLedger(redis.url, 'churn', 0)), ...(await readLedger(redis.url, 'churn', 1))];
      return entries.some((e) => e.workerId?.includes(`-${late.child.pid}-`) === true);
    };
    await waitFor('a job applied by the late worker', lateApplied, 120000);
    const victim = first[0] as Proc;
    victim.child.kill('SIGKILL');
    const stepAtKill = coordinator.aggregator.step;
    // SIGTERM: the worker finishes (or returns) its job and leaves cleanly, with exit code 0.
    const leaver = first[1] as Proc;
    leaver.child.kill('SIGTERM');
    assert.equal(await leaver.exited, 0, leaver.output());
    const summary = await coordinator.done;
    await coordinator.stop();
    assert.equal(await victim.exited, null, 'killed by a signal');
    assert.ok(summary.steps > stepAtKill, 'the run went on after the kill');
    assert.equal(summary.epochs, 3);
    await assertExactlyOnce('churn', 3);
  });

  test('the coordinator killed mid-epoch and restarted with --resume continues without repeating or skipping samples (the workers that outlived it bring no job of its queue into the new run); its summary has every epoch', async () => {
    const port = await freePort();
    const ckpt = tempDir('resume-ck');
    const args = ['coordinator', 'start', '--data', data, '--redis', redis.url, '--run', 'resume', '--port', String(port), '--token', 'test-token',
      '--config', 'A', '--input-size', '32', '--width', '0.125', '--fc-units', '64', '--dropout', '0', '--scale', '32:36', '--eval-scale', '32',
      '--batch-size', '16', '--epochs', '2', '--min-workers', '2', '--checkpoint-dir', ckpt, '--checkpoint-every', '4', '--lock-duration-ms', '5000', '--json'];
    const c1 = spawnCli(args);
    procs.push(c1);
    const workers = [spawnWorker(port, redis.url), spawnWorker(port, redis.url)];
    procs.push(...workers);
    // Kill once a checkpoint mid-way through epoch 1 exists (75 jobs an epoch, 2 a step: epoch 1 begins at step 38, and step 48 has 20 of its jobs).
    await waitFor('a checkpoint in epoch 1', async () => (await listCheckpoints(ckpt)).some((d) => Number(path.basename(d).slice(5)) >= 48), 240000);
    c1.child.kill('SIGKILL');
    await c1.exited;
    const c2 = spawnCli([...args, '--resume'], { VGG_LOG_LEVEL: 'info' });
    procs.push(c2);
    const code = await c2.exited;
    assert.equal(code, 0, c2.output());
    const resumed = /"step":(\d+),"epoch":1,"appliedInEpoch":(\d+),"fullStepSamples":(\d+),"msg":"resuming from checkpoint"/.exec(c2.output());
    assert.ok(resumed !== null, `resumed from a checkpoint of epoch 1: ${c2.output().slice(0, 3000)}`);
    assert.ok(Number(resumed[1]) >= 48 && Number(resumed[2]) >= 16, `resumed mid-epoch: ${resumed[0]}`);
    // 2 workers of 16 samples: the full step (--partial-steps scale) came back with the checkpoint.
    assert.equal(Number(resumed[3]), 32);
    const summary = JSON.parse(c2.output().trim().split('\n').filter((l) => l.startsWith('{"run"')).at(-1) ?? '{}') as { epochs: number; steps: number; valTop1: number; history: { epoch: number }[] };
    assert.equal(summary.epochs, 2);
    // Epoch 0 was validated before the kill: the resumed run's summary has it from Redis.
    assert.deepEqual(summary.history.map((h) => h.epoch), [0, 1]);
    assert.ok(summary.valTop1 > 0.3, `the resumed run learned: val top-1 ${summary.valTop1}`);
    await Promise.all(workers.map((w) => w.exited));
    await assertExactlyOnce('resume', 2);
    assertAcksLanded(workers);
    assert.ok(existsSync(ckpt));
  });
});
