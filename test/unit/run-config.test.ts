import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { resolveRunConfig } from '../../coordinator/run-config.ts';
import { planEpoch, trainJobs } from '../../coordinator/epoch-plan.ts';
import { ConfigError } from '../../shared/errors.ts';
import { subsetIds } from '../../shared/subset.ts';
import { tempDir } from '../helpers/images.ts';

describe('run configuration', () => {
  test('flags win over environment, environment over the config file, the file over defaults', () => {
    const file = path.join(tempDir('cfg'), 'run.json');
    writeFileSync(file, JSON.stringify({ epochs: 5, lr: 0.05, batchSize: 8, data: '/data/x' }));
    const cfg = resolveRunConfig({ epochs: '7' }, { VGG_EPOCHS: '6', VGG_LR: '0.02' }, file);
    assert.equal(cfg.epochs, 7);
    assert.equal(cfg.lr, 0.02);
    assert.equal(cfg.batchSize, 8);
    assert.equal(cfg.data, '/data/x');
    assert.equal(cfg.config, 'D', 'a real dataset gets the paper defaults');
    assert.equal(cfg.momentum, 0.9);
  });

  test('without a dataset the built-in small defaults apply', () => {
    const cfg = resolveRunConfig({}, {});
    assert.deepEqual([cfg.config, cfg.inputSize, cfg.width, cfg.scale], ['A', 32, 0.125, [32, 36]]);
  });

  test('bad values are rejected naming the option and its source', () => {
    assert.throws(() => resolveRunConfig({}, { VGG_EPOCHS: 'many' }), new ConfigError('--epochs: expected an integer in [1, inf], got "many"'));
    assert.throws(() => resolveRunConfig({ port: '70000' }, {}), /--port: expected an integer in \[0, 65535\], got "70000"/);
    const file = path.join(tempDir('cfg-bad'), 'run.json');
    writeFileSync(file, JSON.stringify({ epoch: 3 }));
    assert.throws(() => resolveRunConfig({}, {}, file), /--config-file: unknown keys epoch; expected some of/);
    assert.throws(() => resolveRunConfig({ hostedShards: 'true' }, {}), new ConfigError('--hosted-shards: expected --shards K >= 2 (the coordinator plus at least one worker-hosted shard), got --shards 1'));
    assert.throws(() => resolveRunConfig({ earlyCommit: 'soon' }, {}), new ConfigError('--early-commit: expected true or false, got "soon"'));
  });

  test('--early-commit is off unless the flag or VGG_EARLY_COMMIT turns it on', () => {
    assert.deepEqual([false, true, true].map((_, i) => resolveRunConfig(i === 1 ? { earlyCommit: 'true' } : {}, i === 2 ? { VGG_EARLY_COMMIT: '1' } : {}).earlyCommit), [false, true, true]);
  });

  test('--lr-drop-epochs takes a list; without it the plateau rule applies', () => {
    assert.deepEqual(resolveRunConfig({ lrDropEpochs: '5,7' }, {}).lrDropEpochs, [5, 7]);
    assert.deepEqual(resolveRunConfig({}, {}).lrDropEpochs, []);
    assert.throws(() => resolveRunConfig({}, { VGG_LR_DROP_EPOCHS: '5;7' }), /--lr-drop-epochs: expected a comma-separated list of positive integers like 5,7, got "5;7"/);
  });

  test('a token is required when the aggregator listens beyond loopback', () => {
    assert.throws(() => resolveRunConfig({ host: '0.0.0.0' }, {}), /--token: expected a token when the aggregator listens on 0.0.0.0 \(not loopback\), got none/);
    assert.equal(resolveRunConfig({ host: '0.0.0.0', token: 's3cret' }, {}).token, 's3cret');
    // A mounted secret file (Docker, Kubernetes), trimmed; a missing one is named.
    const dir = mkdtempSync(path.join(tmpdir(), 'vgg-token-'));
    writeFileSync(path.join(dir, 'token'), 'from-file\n');
    assert.equal(resolveRunConfig({ host: '0.0.0.0' }, { VGG_TOKEN_FILE: path.join(dir, 'token') }).token, 'from-file');
    assert.throws(() => resolveRunConfig({ host: '0.0.0.0' }, { VGG_TOKEN_FILE: path.join(dir, 'nope') }), /VGG_TOKEN_FILE: expected a readable file holding the token, got ".*nope"/);
  });
});

describe('epoch plan', () => {
  test('one job per batch of a seeded permutation, skipping applied positions; job ids are stable', () => {
    const ids = subsetIds(100, 40);
    assert.equal(new Set(ids).size, 40);
    const plan = planEpoch(ids, 16, 3, 1);
    assert.deepEqual(plan.batches.map((b) => b.length), [16, 16, 8]);
    assert.deepEqual(plan.batches.flat().sort((a, b) => a - b), [...ids].sort((a, b) => a - b));
    assert.deepEqual(planEpoch(ids, 16, 3, 1).batches, plan.batches);
    const jobs = trainJobs('r', plan, new Set([1]));
    assert.deepEqual(jobs.map((j) => j.opts.jobId), ['train-e1-b0', 'train-e1-b2']);
  });
});
