import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import type { RunState } from '../../coordinator/run-state.ts';
import { formatStatus, type StatusReport } from '../../cli/status-command.ts';

const bin = path.resolve('bin/vgg-train.js');
const run = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, VGG_LOG_LEVEL: 'silent' } });

describe('vgg-train CLI', () => {
  test('model info --json prints config, params and trainableParams', () => {
    const r = run('model', 'info', '--config', 'D', '--batch-norm', '--json');
    assert.equal(r.status, 0, r.stderr);
    const info = JSON.parse(r.stdout.trim()) as { config: string; params: number; trainableParams: number; layers: unknown[] };
    assert.equal(info.config, 'D');
    assert.equal(info.trainableParams, 138_361_768);
    assert.equal(info.params, 138_361_768 + 2 * 4224);
  });

  test('model info prints a layer table with totals', () => {
    const r = run('model', 'info', '--config', 'E');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /conv5_4 +conv +\[14, 14, 512\] +2,359,808/);
    assert.match(r.stdout, /Total params: +143,667,240/);
  });

  test('a bad flag exits 2 with a message naming the option, the expected and the given value', () => {
    const r = run('model', 'info', '--config', 'Z');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--config: expected one of A, A-LRN, B, C, D, E, got "Z"/);
    for (const cmd of [['coordinator', 'start'], ['aggregator', 'start', '--leader', 'ws://127.0.0.1:9', '--shard', '1/2'], ['worker', 'start', '--coordinator', 'ws://127.0.0.1:9']]) {
      const u = run(...cmd, '--update-threads', '0');
      assert.equal(u.status, 2, cmd.join(' '));
      assert.match(u.stderr, /--update-threads: expected an integer in \[1, 64\], got "0"/);
    }
    const t = run('train', '--lr', '-1');
    assert.equal(t.status, 2);
    assert.match(t.stderr, /--lr: expected a number in \(0, 10\], got "-1"/);
  });

  test('worker start --host-shard takes i/K with 1 <= i < K or auto; with --gpus only auto', () => {
    const w = (...args: string[]) => run('worker', 'start', '--coordinator', 'ws://127.0.0.1:9', '--token', 't', ...args);
    const zero = w('--host-shard', '0/3');
    assert.equal(zero.status, 2);
    assert.match(zero.stderr, /--host-shard: expected 1 <= i < K, got 0\/K: shard 0 is the coordinator/);
    const bad = w('--host-shard', '3/3');
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--host-shard: expected i\/K with 0 <= i < K <= 64, e.g. 1\/2, got "3\/3"/);
    const gpus = w('--host-shard', '1/3', '--gpus', '0,1');
    assert.equal(gpus.status, 2);
    assert.match(gpus.stderr, /--host-shard: expected auto \(without --shard-advertise\) with --gpus, got 1\/3/);
  });
});

describe('status (human)', () => {
  const counts = { waiting: 0, active: 0, completed: 0, failed: 0, delayed: 0 };
  const state: RunState = {
    schema: 1, run: 'r', state: 'training', epoch: 0, epochs: 2, step: 10, stepsPerEpoch: 20, appliedInEpoch: 28, learningRate: 0.01,
    loss: 2.1, trainTop1: 0.3, trainTop5: 0.6, valTop1: null, valTop5: null, imagesPerSec: 100, etaSeconds: 60, members: 3, skippedImages: 0,
    startedAt: '', updatedAt: '',
  };
  const report = (s: RunState): StatusReport => ({ schema: 1, run: 'r', time: '', state: s, workers: [], queues: { train: counts, eval: counts }, history: [], recentLoss: [] });

  test('shows the full step and the short steps when the coordinator publishes them, nothing of them when not (an older coordinator)', () => {
    assert.match(formatStatus(report({ ...state, fullStepSamples: 48, shortSteps: 5 })), /members 3 {3}skipped images 0 {3}full step 48 samples, 5 short steps\n/);
    assert.doesNotMatch(formatStatus(report(state)), /full step|short steps/);
  });
});
