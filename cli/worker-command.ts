import { spawn } from 'node:child_process';
import type { Command } from 'commander';
import { ConfigError } from '../shared/errors.ts';
import { createLogger } from '../shared/logger.ts';
import { choiceOption, intOption, tokenFromEnv } from '../shared/option-parsers.ts';
import { BACKEND_CHOICES, type BackendChoice } from '../worker/backend.ts';
import { OVERLAP_CHOICES, runWorker, type OverlapChoice } from '../worker/job-loop.ts';

interface WorkerFlags {
  coordinator: string; token?: string; gpu?: number; gpus?: string; backend?: BackendChoice; data?: string; redis?: string;
  metricsHost: string; metricsPort: number; overlap: OverlapChoice;
}

function parseGpus(value: string): number[] {
  const gpus = value.split(',').map((s) => s.trim());
  if (gpus.some((g) => !/^\d+$/.test(g))) throw new ConfigError(`--gpus: expected a comma-separated list like 0,1,2,3, got ${JSON.stringify(value)}`);
  return gpus.map(Number);
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
    .action(async (f: WorkerFlags) => {
      if (!/^wss?:\/\//.test(f.coordinator)) throw new ConfigError(`--coordinator: expected a ws:// or wss:// URL, got ${JSON.stringify(f.coordinator)}`);
      if (f.gpus !== undefined) {
        const drop = new Set(['--gpus', '--metrics-port']);
        const children = parseGpus(f.gpus).map((gpu, i) => {
          const args = process.argv.slice(2).filter((a, k, all) => !drop.has(a) && !drop.has(all[k - 1] ?? ''));
          const metrics = f.metricsPort > 0 ? ['--metrics-port', String(f.metricsPort + i)] : ['--metrics-port', '0'];
          return spawn(process.execPath, [...process.execArgv, process.argv[1] as string, ...args, ...metrics, '--gpu', String(gpu)], { stdio: 'inherit' });
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
        data: f.data, redis: f.redis, log, metrics: f.metricsPort > 0 ? { host: f.metricsHost, port: f.metricsPort } : undefined, overlap: f.overlap,
      });
      // SIGTERM: finish the job in flight, then leave cleanly.
      process.once('SIGTERM', () => w.stop());
      process.once('SIGINT', () => w.stop());
      await w.done;
    });
}
