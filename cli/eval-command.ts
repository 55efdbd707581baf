import type { Command } from 'commander';
import { ConfigError } from '../shared/errors.ts';
import { createLogger } from '../shared/logger.ts';
import { choiceOption, intListOption, intOption } from '../shared/option-parsers.ts';
import { BACKEND_CHOICES, selectBackend, type BackendChoice } from '../worker/backend.ts';
import { PROTOCOLS, evaluateCheckpoint, formatEvalTable, type Protocol } from '../worker/eval/evaluate.ts';

interface EvalFlags { checkpoint: string; data: string; protocols?: string; scales?: number[]; q?: number; valLimit?: number; backend?: BackendChoice; gpu?: number; json: boolean }

export function registerEvalCommand(program: Command): void {
  program.command('eval')
    .description('evaluate a checkpoint with the paper\'s protocols: single scale, dense, multi-scale, multi-crop, multi-crop & dense')
    .requiredOption('--checkpoint <dir>', 'checkpoint folder, or a --checkpoint-dir (its newest)')
    .requiredOption('--data <dir>', 'ImageNet-layout dataset root (its val split is used)')
    .option('--protocols <list>', `comma-separated, of ${PROTOCOLS.join(', ')} (default: all)`)
    .option('--scales <list>', 'multi-scale test scales Q (default: {S-S/8, S, S+S/8} for fixed S, {Smin, mid, Smax} for jittered)', intListOption('--scales'))
    .option('--q <n>', 'single-scale test scale (default: S, or (Smin+Smax)/2)', intOption('--q', 1))
    .option('--val-limit <n>', 'use only the first n validation images', intOption('--val-limit', 1))
    .option('--backend <name>', `compute backend: ${BACKEND_CHOICES.join(', ')}`, choiceOption('--backend', BACKEND_CHOICES))
    .option('--gpu <n>', 'GPU index', intOption('--gpu', 0))
    .option('--json', 'one JSON object', false)
    .action(async (f: EvalFlags) => {
      const log = createLogger({ role: 'eval' });
      const protocols = f.protocols?.split(',').map((p) => p.trim()) as Protocol[] | undefined;
      const unknown = protocols?.filter((p) => !(PROTOCOLS as readonly string[]).includes(p)) ?? [];
      if (unknown.length > 0) throw new ConfigError(`--protocols: expected some of ${PROTOCOLS.join(', ')}, got ${unknown.join(', ')}`);
      await selectBackend({ backend: f.backend, gpu: f.gpu, log });
      const report = await evaluateCheckpoint({
        checkpoint: f.checkpoint, data: f.data, protocols, scales: f.scales, q: f.q, valLimit: f.valLimit, log,
        onProgress: (d, t) => log.info({ done: d, total: t }, 'evaluating'),
      });
      process.stdout.write(f.json ? `${JSON.stringify(report)}\n` : `${formatEvalTable([report])}\n${report.images} validation images, checkpoint ${report.checkpoint}\n`);
    });
}
