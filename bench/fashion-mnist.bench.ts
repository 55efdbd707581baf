/**
 * bench:fashion-mnist — `vgg-train local --workers 2` on the real Fashion-MNIST
 * (Debian dataset-fashion-mnist, converted to JPEGs once), then the test-set
 * (10k images, the val/ split) top-1 accuracy of a single centre crop (the
 * figure the target is for: >= 92%), then the paper's evaluation of the final
 * checkpoint (centre crop at Q, dense, multi-scale: `vgg-train eval`), and the wall time.
 * Defaults: VGG-A width 1/4, FC 512, dropout 0.25, batch 2x32, lr 0.02 divided by 10
 * after epochs 9 and 13, 16 epochs (measured: 92.19%, README).
 * Extra arguments go to `local` and override the defaults below.
 * Last line: one JSON object.
 *
 *   npm run bench:fashion-mnist [-- --epochs 12 --workers 2]
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ensureDefaultDataset } from '../coordinator/default-dataset.ts';
import type { EvalReport } from '../worker/eval/evaluate.ts';

const checkpoints = mkdtempSync(path.join(tmpdir(), 'vgg-bench-fmnist-'));
const defaults = ['--workers', '2', '--config', 'A', '--width', '0.25', '--fc-units', '512', '--dropout', '0.25', '--input-size', '32', '--scale', '32:36',
  '--eval-scale', '32', '--batch-size', '32', '--lr', '0.02', '--lr-drop-epochs', '9,13', '--epochs', '16', '--run', 'bench-fmnist'];
const args = [...defaults, ...process.argv.slice(2), '--checkpoint-dir', checkpoints, '--keep', '1', '--json'];
const started = Date.now();
const child = spawn(process.execPath, [path.resolve('bin/vgg-train.js'), 'local', ...args], {
  stdio: ['ignore', 'pipe', 'inherit'], env: { VGG_LOG_LEVEL: 'warn', ...process.env },
});
let out = '';
child.stdout.on('data', (d: Buffer) => { out += d.toString(); process.stdout.write(d); });
const code = await new Promise<number | null>((r) => child.on('exit', r));
if (code !== 0) {
  console.error(`bench:fashion-mnist: expected vgg-train local to exit 0, got ${code}`);
  process.exit(1);
}
const summary = JSON.parse(out.trim().split('\n').at(-1) ?? '{}') as { valTop1: number; valTop5: number; wallSeconds: number; epochs: number; steps: number; workers: number };
console.log(`Fashion-MNIST test top-1, single centre crop: ${(100 * summary.valTop1).toFixed(2)}%, top-5 ${(100 * summary.valTop5).toFixed(2)}%`);

// The paper's evaluation of the final weights on the whole test set: dense, multi-scale (Section 3.2, 4.2).
const { root } = await ensureDefaultDataset();
const evalStart = Date.now();
const valLimit = args.includes('--val-limit') ? ['--val-limit', args[args.lastIndexOf('--val-limit') + 1] as string] : [];
const ev = spawnSync(process.execPath, [path.resolve('bin/vgg-train.js'), 'eval', '--checkpoint', checkpoints, '--data', root, '--protocols', 'single,dense,multi-scale', ...valLimit, '--json'],
  { encoding: 'utf8', env: { VGG_LOG_LEVEL: 'warn', ...process.env }, maxBuffer: 64 * 1024 * 1024 });
if (ev.status !== 0) {
  console.error(`bench:fashion-mnist: expected vgg-train eval to exit 0, got ${ev.status}\n${ev.stderr}`);
  process.exit(1);
}
const report = JSON.parse(ev.stdout.trim().split('\n').at(-1) ?? '{}') as EvalReport;
const byProtocol = Object.fromEntries(report.results.map((r) => [r.protocol, { top1: 1 - r.top1Error, top5: 1 - r.top5Error, scales: r.scales }]));
for (const r of report.results) console.log(`  ${r.protocol.padEnd(12)} Q=${r.scales.join(',').padEnd(9)} top-1 ${(100 * (1 - r.top1Error)).toFixed(2)}%  top-5 ${(100 * (1 - r.top5Error)).toFixed(2)}%`);
console.log(`Fashion-MNIST test top-1 (single centre crop at Q = ${args[args.lastIndexOf('--eval-scale') + 1]}): ${(100 * summary.valTop1).toFixed(2)}% (target >= 92%); paper protocols above, on ${report.images} images`);
console.log(`wall time: ${summary.wallSeconds.toFixed(0)} s training, ${((Date.now() - evalStart) / 1000).toFixed(0)} s evaluation, ${((Date.now() - started) / 1000).toFixed(0)} s in all (dataset conversion on first use included)`);
console.log(JSON.stringify({ bench: 'fashion-mnist', args, ...summary, testTop1: summary.valTop1, evaluation: byProtocol, totalSeconds: (Date.now() - started) / 1000, targetTop1: 0.92 }));
