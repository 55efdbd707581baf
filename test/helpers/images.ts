import { mkdir, writeFile } from 'node:fs/promises';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { Rng } from '../../shared/rng.ts';

export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), `vgg-${prefix}-`));
}

/** A real JPEG (or PNG) of seeded noise: width x height, RGB unless `kind` says otherwise. */
export async function writeImage(file: string, options: { width?: number; height?: number; seed?: number; kind?: 'rgb' | 'grey' | 'cmyk' | 'png' } = {}): Promise<void> {
  const width = options.width ?? 48;
  const height = options.height ?? 40;
  const rng = new Rng(options.seed ?? 1);
  const px = Buffer.alloc(width * height * 3);
  for (let i = 0; i < px.length; i += 1) px[i] = Math.floor(rng.next() * 256);
  await mkdir(path.dirname(file), { recursive: true });
  let img = sharp(px, { raw: { width, height, channels: 3 } });
  switch (options.kind ?? 'rgb') {
    case 'grey': img = img.toColourspace('b-w').jpeg(); break;
    case 'cmyk': img = img.toColourspace('cmyk').jpeg(); break;
    case 'png': img = img.png(); break;
    default: img = img.jpeg({ quality: 90 });
  }
  await img.toFile(file);
}

/** A tiny ImageNet-layout tree: `classes` wnids, `perClass` train images each, val as folders. */
export async function writeTree(root: string, classes: string[], perClass: number, valPerClass = 1): Promise<void> {
  for (const [c, wnid] of classes.entries()) {
    for (let i = 0; i < perClass; i += 1) await writeImage(path.join(root, 'train', wnid, `${wnid}_${i}.JPEG`), { seed: c * 100 + i });
    for (let i = 0; i < valPerClass; i += 1) await writeImage(path.join(root, 'val', wnid, `val_${wnid}_${i}.JPEG`), { seed: 9000 + c * 100 + i });
  }
}

export { writeFile };
