#!/usr/bin/env node
// Builds the native addons with the system C compiler: the data pipeline's training-crop
// JPEG decoder (worker/data/native/jpeg_crop.c -> build/jpeg_crop.node, with libjpeg-turbo;
// Debian: apt-get install -y gcc libc6-dev libjpeg62-turbo-dev) and the worker's
// host memory helpers (worker/native/host_memory.c -> build/host_memory.node). Node-API only, so one
// build serves every Node version >= 20. Without --required a failed build is reported
// and exits 0: the pipeline then decodes with sharp, the worker leaves malloc as it is
// (`npm ci` runs this best-effort through `prepare`); `npm test` runs it with --required.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const required = process.argv.includes('--required');

function headers() {
  try {
    return path.join(path.dirname(createRequire(import.meta.url).resolve('node-api-headers/package.json')), 'include');
  } catch {
    return path.join(path.dirname(process.execPath), '..', 'include', 'node');
  }
}

/**
 * The addons: the crop decoder, and the worker's host memory helpers (worker/native/host_memory.c: glibc
 * keeps freed large blocks mapped; buffers placed where TensorFlow wraps them without a copy; no library
 * beyond libc). Each one's failure is reported on its own.
 */
const addons = [
  {
    source: 'worker/data/native/jpeg_crop.c', target: 'build/jpeg_crop.node', libs: ['-ljpeg', '-lm'], needs: 'a C compiler and libjpeg-turbo\'s headers (apt-get install -y gcc libc6-dev libjpeg62-turbo-dev)',
    without: 'the data pipeline decodes with sharp instead (slower; the same augmentation, resampled with Lanczos instead of bilinear)',
  },
  {
    source: 'worker/native/host_memory.c', target: 'build/host_memory.node', libs: [], needs: 'a C compiler (apt-get install -y gcc libc6-dev)',
    without: 'workers leave glibc\'s large-block handling as it is (each step then faults its host copies\' pages in again) and receive the weights wherever malloc puts them (TensorFlow then copies the ones it finds misaligned)',
  },
];

let failed = false;
for (const a of addons) {
  const source = path.join(root, a.source);
  const target = path.join(root, a.target);
  // An image build runs `npm ci` (and so this, through prepare) before the sources are copied in.
  if (!existsSync(source)) {
    console.log(`build:native: ${a.source} is not here yet; nothing built`);
    failed = true;
    continue;
  }
  if (existsSync(target) && statSync(target).mtimeMs >= statSync(source).mtimeMs && !process.argv.includes('--force')) continue;
  mkdirSync(path.dirname(target), { recursive: true });
  const cc = process.env.CC ?? 'cc';
  const args = ['-O3', '-std=c11', '-D_DEFAULT_SOURCE', '-Wall', '-Wextra', '-fPIC', '-shared', '-I', headers(), source, '-o', target, ...a.libs];
  const built = spawnSync(cc, args, { encoding: 'utf8' });
  if (built.status === 0) {
    console.log(`build:native: built ${a.target}`);
    continue;
  }
  failed = true;
  const why = (built.stderr || String(built.error ?? '')).trim().split('\n').slice(0, 4).join('\n') || `exit status ${built.status}`;
  console.error(`build:native: ${cc} ${args.join(' ')} failed; expected ${a.needs}, got:\n${why}`);
  if (!required) console.error(`build:native: ${a.without}`);
}
if (failed && required) process.exit(1);
