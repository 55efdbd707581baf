#!/usr/bin/env node
// Builds the data pipeline's training-crop JPEG decoder (worker/data/native/jpeg_crop.c)
// into build/jpeg_crop.node with the system C compiler and libjpeg-turbo
// (Debian: apt-get install -y gcc libc6-dev libjpeg62-turbo-dev). Node-API only, so
// one build serves every Node version >= 20. Without --required a failed build is
// reported and exits 0: the pipeline then decodes with sharp (`npm ci` runs this
// best-effort through `prepare`); `npm test` runs it with --required.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const source = path.join(root, 'worker/data/native/jpeg_crop.c');
const target = path.join(root, 'build/jpeg_crop.node');
const required = process.argv.includes('--required');

function headers() {
  try {
    return path.join(path.dirname(createRequire(import.meta.url).resolve('node-api-headers/package.json')), 'include');
  } catch {
    return path.join(path.dirname(process.execPath), '..', 'include', 'node');
  }
}

// An image build runs `npm ci` (and so this, through prepare) before the sources are copied in.
if (!existsSync(source)) {
  console.log(`build:native: ${path.relative(root, source)} is not here yet; nothing built`);
  process.exit(required ? 1 : 0);
}
if (existsSync(target) && statSync(target).mtimeMs >= statSync(source).mtimeMs && !process.argv.includes('--force')) process.exit(0);
mkdirSync(path.dirname(target), { recursive: true });
const cc = process.env.CC ?? 'cc';
const args = ['-O3', '-std=c11', '-D_DEFAULT_SOURCE', '-Wall', '-Wextra', '-fPIC', '-shared', '-I', headers(), source, '-o', target, '-ljpeg', '-lm'];
const built = spawnSync(cc, args, { encoding: 'utf8' });
if (built.status === 0) {
  console.log(`build:native: built ${path.relative(root, target)}`);
} else {
  const why = (built.stderr || String(built.error ?? '')).trim().split('\n').slice(0, 4).join('\n') || `exit status ${built.status}`;
  console.error(`build:native: ${cc} ${args.join(' ')} failed; expected a C compiler and libjpeg-turbo's headers `
    + `(apt-get install -y gcc libc6-dev libjpeg62-turbo-dev), got:\n${why}`);
  if (required) process.exit(1);
  console.error('build:native: the data pipeline decodes with sharp instead (slower; the same augmentation, resampled with Lanczos instead of bilinear)');
}
