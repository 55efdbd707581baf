import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import type { Logger } from '../shared/logger.ts';
import { DEBIAN_FASHION_MNIST, importFashionMnist } from './fashion-mnist-import.ts';
import { generateSyntheticDataset } from './synthetic-dataset.ts';

/** Where built-in datasets are materialised. @defaultValue $VGG_TRAIN_CACHE or ~/.cache/vgg-train */
export function cacheDir(): string {
  return process.env.VGG_TRAIN_CACHE ?? path.join(homedir(), '.cache', 'vgg-train');
}

/**
 * The built-in default dataset: Fashion-MNIST as JPEGs when Debian's
 * dataset-fashion-mnist is installed, otherwise a generated set. Built once,
 * then reused (a `.complete` marker guards against half-written trees).
 */
export async function ensureDefaultDataset(log?: Logger): Promise<{ root: string; kind: 'fashion-mnist' | 'synthetic' }> {
  const hasFashion = existsSync(path.join(DEBIAN_FASHION_MNIST, 'train-images-idx3-ubyte.gz'));
  const kind = hasFashion ? 'fashion-mnist' : 'synthetic';
  const root = path.join(cacheDir(), kind);
  const marker = path.join(root, '.complete');
  if (!existsSync(marker)) {
    log?.info({ root, kind }, 'building the built-in dataset (once)');
    const counts = hasFashion
      ? await importFashionMnist({ out: root, onProgress: (d, t) => { if (d === t) log?.info({ images: t }, 'split imported'); } })
      : await generateSyntheticDataset(root);
    await writeFile(marker, JSON.stringify(counts));
  }
  return { root, kind };
}
