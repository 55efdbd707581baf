/**
 * bench:paper — the paper's recipe, adapted to Fashion-MNIST on CPUs, for
 * width-reduced configs A, B and D (D warm-started from A, as in Section 3.1),
 * each trained with `vgg-train local --workers 2`, then evaluated with every
 * protocol of `vgg-train eval`: single scale (centre crop and dense),
 * multi-scale dense, multi-crop, multi-crop & dense. Prints the table (the
 * shape of the paper's Tables 3-5); the last line is one JSON object.
 *
 * Adaptation (docs/PAPER.md): images are 28x28, so every size is divided by 7
 * and rounded to the net's minimum: crop 224 -> 32, S = 256 -> 36, test scales
 * {S-32, S, S+32} -> {32, 36, 41}. Batch 256 -> 2 workers x 32. lr 0.01 ->
 * 0.02 (smaller batch, fewer epochs), divided by 10 for the last epoch instead
 * of on plateau (too few epochs to see one). Momentum 0.9, weight decay 5e-4,
 * dropout 0.5, mean-RGB subtraction (and std division: He init) as the paper.
 *
 *   npm run bench:paper [-- --epochs 3 --train-limit 30000 --val-limit 1000 --width 0.125]
 */
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { ensureDefaultDataset } from '../coordinator/default-dataset.ts';
import { intOption, numberOption } from '../shared/option-parsers.ts';
import { formatEvalTable, type EvalReport } from '../worker/eval/evaluate.ts';

const o = new Command('bench:paper')
  .option('--configs <list>', 'configs, in order (D is warm-started from A when A came first)', 'A,B,D')
  .option('--epochs <n>', 'epochs per config', intOption('--epochs', 1), 3)
  .option('--train-limit <n>', 'training images', intOption('--train-limit', 64), 30000)
  .option('--val-limit <n>', 'validation images evaluated', intOption('--val-limit', 10), 1000)
  .option('--width <x>', 'conv width multiplier', numberOption('--width', 0, 1, true), 0.125)
  .option('--fc-units <n>', 'fc6/fc7 units', intOption('--fc-units', 8), 256)
  .parse(process.argv)
  .opts<{ configs: string; epochs: number; trainLimit: number; valLimit: number; width: number; fcUnits: number }>();

const bin = path.resolve('bin/vgg-train.js');
const started = Date.now();

function run(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'inherit'], env: { VGG_LOG_LEVEL: 'warn', ...process.env } });
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`vgg-train ${args.slice(0, 2).join(' ')} exited with ${code}\n${out.slice(-2000)}`))));
  });
}
const lastJson = <T>(out: string): T => JSON.parse(out.trim().split('\n').at(-1) ?? '{}') as T;

const { root: data } = await ensureDefaultDataset();
const reports: EvalReport[] = [];
const training: Record<string, unknown>[] = [];
const checkpoints = new Map<string, string>();
for (const config of o.configs.split(',')) {
  const dir = mkdtempSync(path.join(tmpdir(), `vgg-paper-${config}-`));
  const warm = config !== 'A' && ['D', 'E'].includes(config) ? checkpoints.get('A') : undefined;
  const args = ['local', '--workers', '2', '--data', data, '--run', `paper-${config}`, '--config', config, '--width', String(o.width),
    '--fc-units', String(o.fcUnits), '--input-size', '32', '--scale', '36', '--eval-scale', '36', '--batch-size', '32', '--lr', '0.02',
    ...(o.epochs > 1 ? ['--lr-drop-epochs', String(o.epochs - 1)] : []), '--epochs', String(o.epochs), '--train-limit', String(o.trainLimit), '--val-limit', String(o.valLimit),
    '--checkpoint-dir', dir, '--keep', '1', ...(warm === undefined ? [] : ['--warm-start', warm]), '--json'];
  process.stdout.write(`training ${config}${warm === undefined ? '' : ' (warm start from A)'}...\n`);
  const t = Date.now();
  const summary = lastJson<{ valTop1: number; steps: number; wallSeconds: number }>(await run(args));
  training.push({ config, warmStart: warm !== undefined, ...summary });
  process.stdout.write(`  ${summary.steps} steps, centre-crop val top-1 ${(100 * summary.valTop1).toFixed(2)}%, ${((Date.now() - t) / 1000).toFixed(0)} s\n`);
  checkpoints.set(config, dir);
  process.stdout.write(`evaluating ${config} (${o.valLimit} images, all protocols)...\n`);
  reports.push(lastJson<EvalReport>(await run(['eval', '--checkpoint', dir, '--data', data, '--val-limit', String(o.valLimit), '--json'])));
}
process.stdout.write(`\n${formatEvalTable(reports)}\n`);
process.stdout.write(`Fashion-MNIST, ${o.trainLimit} training images x ${o.epochs} epochs, the first ${o.valLimit} test images; ${((Date.now() - started) / 1000).toFixed(0)} s in all\n`);
process.stdout.write(`${JSON.stringify({
  bench: 'paper', epochs: o.epochs, trainLimit: o.trainLimit, valLimit: o.valLimit, width: o.width, fcUnits: o.fcUnits, training,
  results: reports.map((r) => ({ config: r.config.config, trainScale: r.trainScale, images: r.images, results: r.results })),
  seconds: (Date.now() - started) / 1000,
})}\n`);
