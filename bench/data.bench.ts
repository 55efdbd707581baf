/**
 * bench:data — images/s per core of the training augmentation (decode,
 * isotropic rescale to S in [256, 512], random 224 crop, flip, PCA colour
 * shift, mean subtraction) on real photographs from Debian's python3-skimage,
 * re-encoded as ImageNet-sized JPEGs (shorter side 375, quality 90).
 * One image at a time on one thread (the native crop decoder, or libvips with
 * one thread): the figure is per core. Also our general path (sharp for every
 * file) in a child process.
 * In the same run, the peer: torchvision + PIL doing the same steps on the same
 * files (Debian python3-torchvision, /usr/bin/python3), and the ratio (goal >= 1.5).
 * Last line: one JSON object.
 *
 *   npm run bench:data [-- --images 400 --python /usr/bin/python3]
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { loadTrainImage, type AugmentOptions } from '../worker/data/image-pipeline.ts';
import { nativeDecodeCrop } from '../worker/data/jpeg-native.ts';

const { values } = parseArgs({ options: {
  images: { type: 'string', default: '400' }, 'ours-only': { type: 'boolean', default: false }, source: { type: 'string', default: '/usr/lib/python3/dist-packages/skimage/data' },
  python: { type: 'string', default: '/usr/bin/python3' },
} });
const PHOTOS = ['astronaut.png', 'chelsea.png', 'coffee.png', 'motorcycle_left.png', 'motorcycle_right.png', 'hubble_deep_field.jpg',
  'rocket.jpg', 'camera.png', 'ihc.png', 'grass.png', 'gravel.png', 'brick.png', 'retina.jpg', 'color.png'];

const source = values.source as string;
const dir = path.join(tmpdir(), 'vgg-bench-data');
const jpegOf = (p: string): string => path.join(dir, `${path.parse(p).name}.JPEG`);
// A photograph counts when its re-encoded JPEG is cached or its source is there to make it.
const found = PHOTOS.filter((p) => existsSync(jpegOf(p)) || existsSync(path.join(source, p)));
if (found.length === 0) {
  console.error(`bench:data: expected real photographs in ${source} or their JPEGs in ${dir} (apt-get install python3-skimage), got none`);
  process.exit(2);
}
await mkdir(dir, { recursive: true });
const files: string[] = [];
for (const p of found) {
  const out = jpegOf(p);
  if (!existsSync(out)) await sharp(path.join(source, p)).resize({ width: 500, height: 375, fit: 'cover' }).jpeg({ quality: 90 }).toFile(out);
  files.push(out);
}

sharp.concurrency(1);
const opts: AugmentOptions = {
  inputSize: 224, sMin: 256, sMax: 512, flip: true, pcaStd: 0.1, meanRgb: [123.68, 116.779, 103.939], stdRgb: [1, 1, 1],
};
const out = new Float32Array(224 * 224 * 3);
const n = Number(values.images);
for (let i = 0; i < 20; i += 1) await loadTrainImage(files[i % files.length] as string, opts, 1, 0, i, out, 0);
const t0 = performance.now();
const cpu0 = process.cpuUsage();
for (let i = 0; i < n; i += 1) await loadTrainImage(files[i % files.length] as string, opts, 1, 1, i, out, 0);
const seconds = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
// Cores busy on average while measuring (all threads of the process): ~1 means the figure is per core.
const coresBusy = (cpu.user + cpu.system) / 1e6 / seconds;
const imagesPerSecondPerCore = n / seconds;
if (values['ours-only']) {
  console.log(JSON.stringify({ imagesPerSecondPerCore }));
  process.exit(0);
}
const decoder = nativeDecodeCrop === null ? 'sharp/libvips (native crop decoder not built: npm run build:native)' : 'native crop decoder (libjpeg-turbo)';
console.log(`photographs: ${files.length} real images, re-encoded 500x375 JPEG, in ${dir}`);
console.log(`ours, ${decoder}, training augmentation (S in [256,512], crop 224, flip, PCA, mean): ${imagesPerSecondPerCore.toFixed(0)} images/s per core (${coresBusy.toFixed(2)} cores busy on average)`);

// Our general path (sharp/libvips, for files the crop decoder declines), same files, in a child process.
let sharpPath: number | null = null;
if (nativeDecodeCrop !== null) {
  const self = spawnSync(process.execPath, [...process.execArgv, new URL(import.meta.url).pathname, '--ours-only', '--images', String(n)],
    { encoding: 'utf8', env: { ...process.env, VGG_JPEG_DECODER: 'sharp' } });
  sharpPath = self.status === 0 ? (JSON.parse(self.stdout.trim().split('\n').at(-1) ?? '{}') as { imagesPerSecondPerCore: number }).imagesPerSecondPerCore : null;
  console.log(`ours, sharp/libvips for every file (VGG_JPEG_DECODER=sharp): ${sharpPath === null ? `failed: ${self.stderr.trim().split('\n').at(-1)}` : `${sharpPath.toFixed(0)} images/s per core`}`);
}

// The peer, same files, same steps, one thread.
const script = path.join(path.dirname(new URL(import.meta.url).pathname), 'data', 'torchvision_peer.py');
const peer = spawnSync(values.python as string, [script, '--images', String(n), ...files], { encoding: 'utf8', env: { ...process.env, OMP_NUM_THREADS: '1' } });
let peerFigure: { imagesPerSecondPerCore: number; torch: string; torchvision: string } | null = null;
if (peer.status === 0) {
  peerFigure = JSON.parse(peer.stdout.trim().split('\n').at(-1) ?? '{}') as { imagesPerSecondPerCore: number; torch: string; torchvision: string };
  console.log(`torchvision ${peerFigure.torchvision} + PIL, same steps: ${peerFigure.imagesPerSecondPerCore.toFixed(0)} images/s per core`);
  console.log(`ours / torchvision: ${(imagesPerSecondPerCore / peerFigure.imagesPerSecondPerCore).toFixed(2)}x (goal >= 1.5x)`);
} else {
  console.log(`torchvision peer not run (${values.python} with python3-torchvision: apt-get install python3-torchvision): ${(peer.stderr ?? String(peer.error)).trim().split('\n').at(-1)}`);
}
console.log(JSON.stringify({
  bench: 'data', images: n, photographs: files.length, scale: [256, 512], crop: 224, decoder: nativeDecodeCrop === null ? 'sharp' : 'native',
  imagesPerSecondPerCore, coresBusy, sharpImagesPerSecondPerCore: sharpPath,
  torchvisionImagesPerSecondPerCore: peerFigure?.imagesPerSecondPerCore ?? null,
  ratio: peerFigure === null ? null : imagesPerSecondPerCore / peerFigure.imagesPerSecondPerCore,
}));
