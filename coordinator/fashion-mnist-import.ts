import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import sharp from 'sharp';
import { DataError } from '../shared/errors.ts';

/** Where Debian's `dataset-fashion-mnist` puts the idx files. */
export const DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist';

export const FASHION_MNIST_CLASSES = [
  'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
];

export interface ImportOptions {
  /** Folder with the four idx(-ubyte)(.gz) files. @defaultValue DEBIAN_FASHION_MNIST */
  source?: string;
  out: string;
  /** At most this many training images (the first ones). */
  trainLimit?: number;
  /** At most this many test images, written to val/. */
  valLimit?: number;
  onProgress?: (done: number, total: number) => void;
}

async function readIdx(file: string, magic: number): Promise<{ dims: number[]; data: Buffer }> {
  const raw = await readFile(file);
  const buf = file.endsWith('.gz') ? gunzipSync(raw) : raw;
  const got = buf.readUInt32BE(0);
  if (got !== magic) {
    throw new DataError('VGG_ERR_DATASET', `${file}: expected idx magic 0x${magic.toString(16)}, got 0x${got.toString(16)}`);
  }
  const rank = magic & 0xff;
  const dims = Array.from({ length: rank }, (_, i) => buf.readUInt32BE(4 + 4 * i));
  return { dims, data: buf.subarray(4 + 4 * rank) };
}

function findIdx(source: string, stem: string): string {
  for (const name of [`${stem}.gz`, stem]) {
    const file = path.join(source, name);
    if (existsSync(file)) return file;
  }
  throw new DataError('VGG_ERR_DATASET',
    `${source}: expected ${stem}(.gz) (install the Debian package dataset-fashion-mnist or pass --source), got no such file`);
}

/** Class folder names: sortable, so the class index equals the Fashion-MNIST label. */
export function fashionClassDir(label: number): string {
  return `class${String(label).padStart(2, '0')}`;
}

/**
 * Converts Fashion-MNIST idx files into an ImageNet-layout tree of greyscale
 * JPEGs: train/classNN/*.JPEG, val/classNN/*.JPEG (the 10k test set), and
 * synset_words.txt with the class names. Returns the image counts.
 */
export async function importFashionMnist(options: ImportOptions): Promise<{ train: number; val: number }> {
  const source = options.source ?? DEBIAN_FASHION_MNIST;
  const splits = [
    { dir: 'train', images: 'train-images-idx3-ubyte', labels: 'train-labels-idx1-ubyte', limit: options.trainLimit },
    { dir: 'val', images: 't10k-images-idx3-ubyte', labels: 't10k-labels-idx1-ubyte', limit: options.valLimit },
  ];
  const counts = { train: 0, val: 0 };
  await mkdir(options.out, { recursive: true });
  await writeFile(path.join(options.out, 'synset_words.txt'),
    FASHION_MNIST_CLASSES.map((name, i) => `${fashionClassDir(i)} ${name}`).join('\n') + '\n');
  for (const split of splits) {
    const images = await readIdx(findIdx(source, split.images), 0x803);
    const labels = await readIdx(findIdx(source, split.labels), 0x801);
    const [n = 0, rows = 28, cols = 28] = images.dims;
    const total = Math.min(n, split.limit ?? n);
    for (let c = 0; c < FASHION_MNIST_CLASSES.length; c += 1) {
      await mkdir(path.join(options.out, split.dir, fashionClassDir(c)), { recursive: true });
    }
    const pixels = rows * cols;
    const batch = 64;
    for (let start = 0; start < total; start += batch) {
      const jobs: Promise<unknown>[] = [];
      for (let i = start; i < Math.min(total, start + batch); i += 1) {
        const label = labels.data[i] as number;
        const file = path.join(options.out, split.dir, fashionClassDir(label), `fmnist_${split.dir}_${String(i).padStart(5, '0')}.JPEG`);
        const raw = images.data.subarray(i * pixels, (i + 1) * pixels);
        jobs.push(sharp(raw, { raw: { width: cols, height: rows, channels: 1 } }).jpeg({ quality: 95 }).toFile(file));
      }
      await Promise.all(jobs);
      options.onProgress?.(Math.min(total, start + batch), total);
    }
    counts[split.dir as 'train' | 'val'] = total;
  }
  return counts;
}
