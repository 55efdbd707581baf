import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { startCoordinator } from '../coordinator/coordinator.ts';
import { redisReachable, startRedisServer, type RedisChild } from '../coordinator/redis-server.ts';
import { resolveRunConfig, type RunConfig } from '../coordinator/run-config.ts';
import { ConfigError } from '../shared/errors.ts';
import { createLogger } from '../shared/logger.ts';
import { intOption } from '../shared/option-parsers.ts';
import { addRunOptions } from './run-options.ts';

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'vgg-train.js');

export function registerLocalCommand(program: Command): void {
  addRunOptions(program.command('local').description('everything on one machine: Redis (started if none answers), a coordinator and N workers'))
    .option('--workers <n>', 'worker processes', intOption('--workers', 1, 64), 2)
    .option('--json', 'last line of output is one JSON object', false)
    .action(async (flags: Partial<Record<keyof RunConfig, unknown>> & { configFile?: string; workers: number; json: boolean }) => {
      const { workers, json, configFile, ...rest } = flags;
      const token = randomBytes(16).toString('hex');
      const cfg = resolveRunConfig({ port: '0', minWorkers: String(workers), ...rest, token, host: '127.0.0.1' }, process.env, configFile);
      if (cfg.hostedShards && workers < cfg.shards - 1) {
        throw new ConfigError(`--hosted-shards: expected --workers >= ${cfg.shards - 1} (one per hosted shard of --shards ${cfg.shards}), got ${workers}`);
      }
      const log = createLogger({ role: 'local', run: cfg.run });
      let redis: RedisChild | undefined;
      if (!(await redisReachable(cfg.redis))) {
        redis = await startRedisServer();
        log.info({ url: redis.url, pid: redis.pid, dir: redis.dir }, 'started redis-server (none answered at --redis)');
        cfg.redis = redis.url;
      }
      const children: ChildProcess[] = [];
      const followers: ChildProcess[] = [];
      const coordinator = await startCoordinator(cfg, log.child({ role: 'coordinator' }));
      const terminate = async (procs: ChildProcess[]) => {
        for (const c of procs) if (c.exitCode === null) c.kill('SIGTERM');
        await Promise.all(procs.map((c) => c.exitCode !== null ? undefined : new Promise((r) => c.once('exit', r))));
      };
      // Workers first, then the coordinator (it closes the shard links cleanly), then the follower shards.
      // Workers that host shards serve them until the coordinator ends the run: stop both at once.
      const cleanup = async () => {
        if (cfg.hostedShards) await Promise.all([terminate(children), coordinator.stop()]);
        else {
          await terminate(children);
          await coordinator.stop();
        }
        await terminate(followers);
        await redis?.stop();
      };
      process.once('SIGINT', () => { void cleanup().then(() => process.exit(130)); });
      process.once('SIGTERM', () => { void cleanup().then(() => process.exit(143)); });
      // Follower shards of the aggregator (--shards K): the coordinator is shard 0; with --hosted-shards, workers 0..K-2 host them.
      for (let i = 1; i < cfg.shards && !cfg.hostedShards; i += 1) {
        followers.push(spawn(process.execPath, [BIN, 'aggregator', 'start', '--leader', `ws://127.0.0.1:${coordinator.port}`, '--shard', `${i}/${cfg.shards}`, '--host', '127.0.0.1', '--port', '0'],
          { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, VGG_TOKEN: token } }));
      }
      for (let i = 0; i < workers; i += 1) {
        // The token goes by environment, not argv: a command line is visible to every user in `ps`.
        const host = cfg.hostedShards && i < cfg.shards - 1 ? ['--host-shard', `${i + 1}/${cfg.shards}`] : [];
        children.push(spawn(process.execPath, [BIN, 'worker', 'start', '--coordinator', `ws://127.0.0.1:${coordinator.port}`, '--gpu', String(i), '--redis', cfg.redis, ...host],
          { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, VGG_TOKEN: token, CUDA_VISIBLE_DEVICES: String(i) } }));
      }
      // If every worker dies, the run cannot go on: fail instead of waiting forever.
      const allDead = new Promise<never>((_, reject) => {
        let dead = 0;
        for (const c of children) c.once('exit', (code) => { if (++dead === workers) reject(new Error(`all ${workers} workers exited (last code ${code}); see the log above`)); });
      });
      try {
        const s = await Promise.race([coordinator.done, allDead]);
        for (const e of s.history) {
          process.stdout.write(`epoch ${e.epoch + 1}: step ${e.step}  train loss ${e.trainLoss?.toFixed(4) ?? '-'}  val top-1 ${(100 * e.valTop1).toFixed(2)}%  top-5 ${(100 * e.valTop5).toFixed(2)}%  lr ${e.lr}  ${e.seconds.toFixed(1)} s\n`);
        }
        const summary = { run: s.run, workers, epochs: s.epochs, steps: s.steps, valTop1: s.valTop1, valTop5: s.valTop5, wallSeconds: s.wallSeconds, skippedImages: s.skippedImages, data: cfg.data || 'built-in' };
        process.stdout.write(json ? `${JSON.stringify(summary)}\n`
          : `done: ${workers} workers, ${s.steps} steps, val top-1 ${(100 * s.valTop1).toFixed(2)}%, top-5 ${(100 * s.valTop5).toFixed(2)}%, ${s.wallSeconds.toFixed(1)} s\n`);
      } finally {
        await cleanup();
      }
    });
}
