import { spawn } from 'node:child_process';
import type { Command } from 'commander';
import { ConfigError } from '../shared/errors.ts';
import { createLogger } from '../shared/logger.ts';
import { UPDATE_THREADS_OPTION, choiceOption, intOption, tokenFromEnv, wsUrl } from '../shared/option-parsers.ts';
import { parseShard, type ShardSpec } from '../shared/shard.ts';
import { setUpdateThreads } from '../shared/simd.ts';
import { BACKEND_CHOICES, type BackendChoice } from '../worker/backend.ts';
import { OVERLAP_CHOICES, runWorker, type OverlapChoice } from '../worker/job-loop.ts';

interface WorkerFlags {
  coordinator: string; token?: string; gpu?: number; gpus?: string; backend?: BackendChoice; data?: string; redis?: string;
  metricsHost: string; metricsPort: number; overlap: OverlapChoice; hostShard?: string; shardHost: string; shardPort: number; shardAdvertise?: string; updateThreads?: number;
}

function parseGpus(value: string): number[] {
  const gpus = value.split(',').map((s) => s.trim());
  if (gpus.some((g) => !/^\d+$/.test(g))) throw new ConfigError(`--gpus: expected a comma-separated list like 0,1,2,3, got ${JSON.stringify(value)}`);
  return gpus.map(Number);
}

/** --host-shard i/K with where the other workers reach it. */
function hostedShard(f: WorkerFlags): { shard: ShardSpec | 'any'; host: string; port: number; advertise?: string } {
  const shard = f.hostShard === 'auto' ? 'any' : parseShard('--host-shard', f.hostShard ?? '');
  if (shard !== 'any' && shard.index === 0) throw new ConfigError('--host-shard: expected 1 <= i < K, got 0/K: shard 0 is the coordinator');
  wsUrl('--shard-advertise', f.shardAdvertise);
  return { shard, host: f.shardHost, port: f.shardPort, ...(f.shardAdvertise === undefined ? {} : { advertise: f.shardAdvertise }) };
}

export function registerWorkerCommands(program: Command): void {
  const worker = program.command('worker').description('training workers (one process per GPU)');
  worker.command('start')
    .description('join a run as a worker')
    .requiredOption('--coordinator <url>', 'aggregator URL, e.g. ws://coord:7070 (env VGG_COORDINATOR)', process.env.VGG_COORDINATOR)
    .option('--token <token>', 'run token (env VGG_TOKEN, or a file named by VGG_TOKEN_FILE)')
    .option('--gpu <n>', 'GPU index: sets CUDA_VISIBLE_DEVICES before TensorFlow.js loads', intOption('--gpu', 0))
    .option('--gpus <list>', 'start one worker process per GPU, e.g. 0,1,2,3')
    .option('--backend <name>', `compute backend: ${BACKEND_CHOICES.join(', ')}`, choiceOption('--backend', BACKEND_CHOICES))
    .option('--data <dir>', 'dataset root on this node, if not the coordinator\'s path')
    .option('--redis <url>', 'Redis URL, if not the coordinator\'s')
    .option('--overlap <mode>', `send the classifier's gradients during the backward pass: ${OVERLAP_CHOICES.join(', ')} (auto: on a GPU) (env VGG_OVERLAP)`,
      choiceOption('--overlap', OVERLAP_CHOICES), process.env.VGG_OVERLAP === undefined ? 'auto' : choiceOption('VGG_OVERLAP', OVERLAP_CHOICES)(process.env.VGG_OVERLAP))
    .option('--metrics-host <addr>', 'bind address of /metrics and /healthz (env VGG_METRICS_HOST)', process.env.VGG_METRICS_HOST ?? '127.0.0.1')
    .option('--metrics-port <n>', 'port of /metrics and /healthz, 0: off; with --gpus, GPU i of the list uses port + i (env VGG_METRICS_PORT)',
      intOption('--metrics-port', 0, 65535), process.env.VGG_METRICS_PORT === undefined ? 0 : intOption('VGG_METRICS_PORT', 0, 65535)(process.env.VGG_METRICS_PORT))
    .option('--host-shard <i/K|auto>', 'also serve aggregator shard i of K, 1 <= i < K (coordinator started with --shards K --hosted-shards true); auto: any shard still free, none if all are taken (env VGG_HOST_SHARD)', process.env.VGG_HOST_SHARD)
    .option('--shard-host <addr>', 'with --host-shard: bind address for the other workers (env VGG_SHARD_HOST)', process.env.VGG_SHARD_HOST ?? '127.0.0.1')
    .option('--shard-port <n>', 'with --host-shard: port for the other workers, 0: any free; with --gpus, GPU i of the list uses port + i (env VGG_SHARD_PORT)', intOption('--shard-port', 0, 65535),
      process.env.VGG_SHARD_PORT === undefined ? 0 : intOption('VGG_SHARD_PORT', 0, 65535)(process.env.VGG_SHARD_PORT))
    .option('--shard-advertise <url>', 'with --host-shard: the URL the other workers are told to use (env VGG_SHARD_ADVERTISE; default ws://shard-host:port, the hostname for 0.0.0.0)', process.env.VGG_SHARD_ADVERTISE)
    .option(...UPDATE_THREADS_OPTION)
    .action(async (f: WorkerFlags) => {
      setUpdateThreads(f.updateThreads);
      wsUrl('--coordinator', f.coordinator);
      const hostShard = f.hostShard === undefined ? undefined : hostedShard(f);
      if (f.gpus !== undefined && hostShard !== undefined && (hostShard.shard !== 'any' || hostShard.advertise !== undefined)) {
        throw new ConfigError(`--host-shard: expected auto (without --shard-advertise) with --gpus, got ${f.hostShard}${hostShard.advertise === undefined ? '' : ` and --shard-advertise ${hostShard.advertise}`} (or start one \`worker start --gpu n --host-shard i/K\` per GPU)`);
      }
      if (f.gpus !== undefined) {
        const drop = new Set(['--gpus', '--metrics-port', '--shard-port']);
        const children = parseGpus(f.gpus).map((gpu, i) => {
          const args = process.argv.slice(2).filter((a, k, all) => !drop.has(a) && !drop.has(all[k - 1] ?? ''));
          // Per GPU i of the list: port + i (0 stays 0: any free).
          const ports = (flag: string, port: number) => [flag, String(port > 0 ? port + i : 0)];
          return spawn(process.execPath, [...process.execArgv, process.argv[1] as string, ...args, ...ports('--metrics-port', f.metricsPort),
            ...ports('--shard-port', f.shardPort), '--gpu', String(gpu)], { stdio: 'inherit' });
        });
        const forward = (sig: NodeJS.Signals) => { for (const c of children) c.kill(sig); };
        process.on('SIGTERM', () => forward('SIGTERM'));
        process.on('SIGINT', () => forward('SIGINT'));
        const codes = await Promise.all(children.map((c) => new Promise<number>((r) => c.on('exit', (code) => r(code ?? 1)))));
        process.exitCode = Math.max(...codes);
        return;
      }
      const log = createLogger({ role: 'worker' });
      const w = await runWorker({
        coordinator: f.coordinator, token: f.token ?? tokenFromEnv(), gpu: f.gpu ?? null, backend: f.backend,
        data: f.data, redis: f.redis, log, metrics: f.metricsPort > 0 ? { host: f.metricsHost, port: f.metricsPort } : undefined, overlap: f.overlap, hostShard,
      });
      // SIGTERM: finish the job in flight, then leave cleanly.
      process.once('SIGTERM', () => w.stop());
      process.once('SIGINT', () => w.stop());
      await w.done;
    });
}
