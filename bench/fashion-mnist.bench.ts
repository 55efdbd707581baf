/**
 * bench:fashion-mnist — `vgg-train local --workers 2` on the real Fashion-MNIST
 * (Debian dataset-fashion-mnist, converted to JPEGs once), then the test-set
 * (10k images, the val/ split) top-1 accuracy and the wall time. Target: >= 92%.
 * Extra arguments go to `local` and override the defaults below.
 * Last line: one JSON object.
 *
 *   npm run bench:fashion-mnist [-- --epochs 7 --workers 2]
 */
import { spawn } from 'node:child_process';
import path from 'node:path';

const defaults = ['--workers', '2', '--config', 'A', '--width', '0.25', '--fc-units', '512', '--input-size', '32', '--scale', '32:36',
  '--eval-scale', '32', '--batch-size', '32', '--lr', '0.02', '--lr-drop-epochs', '4,6', '--epochs', '7', '--run', 'bench-fmnist'];
const args = [...defaults, ...process.argv.slice(2), '--json'];
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
console.log(`Fashion-MNIST test top-1: ${(100 * summary.valTop1).toFixed(2)}% (target >= 92%), top-5 ${(100 * summary.valTop5).toFixed(2)}%`);
console.log(`wall time: ${summary.wallSeconds.toFixed(0)} s training, ${((Date.now() - started) / 1000).toFixed(0)} s in all (dataset conversion on first use included)`);
console.log(JSON.stringify({ bench: 'fashion-mnist', args, ...summary, totalSeconds: (Date.now() - started) / 1000, targetTop1: 0.92 }));
