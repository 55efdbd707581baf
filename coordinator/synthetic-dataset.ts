import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { Rng } from '../shared/rng.ts';

/**
 * A small generated ImageNet-layout set for machines without Fashion-MNIST:
 * each class is a stripe orientation and colour, with noise, as 40x40 JPEGs.
 */
export async function generateSyntheticDataset(out: string, options: { classes?: number; trainPerClass?: number; valPerClass?: number; seed?: number } = {}): Promise<{ train: number; val: number }> {
  const classes = options.classes ?? 10;
  const per = { train: options.trainPerClass ?? 200, val: options.valPerClass ?? 40 };
  const rng = new Rng(options.seed ?? 7);
  const side = 40;
  const names: string[] = [];
  for (const split of ['train', 'val'] as const) {
    for (let c = 0; c < classes; c += 1) {
      const wnid = `synth${String(c).padStart(2, '0')}`;
      if (split === 'train') names.push(`${wnid} stripes at ${Math.round((180 * c) / classes)} degrees`);
      const dir = path.join(out, split, wnid);
      await mkdir(dir, { recursive: true });
      const angle = (Math.PI * c) / classes;
      const hue = [(c * 67) % 256, (c * 131 + 60) % 256, (c * 29 + 120) % 256];
      for (let i = 0; i < per[split]; i += 1) {
        const px = Buffer.alloc(side * side * 3);
        const phase = rng.next() * 6.28;
        const freq = 0.5 + rng.next() * 0.3;
        for (let y = 0; y < side; y += 1) {
          for (let x = 0; x < side; x += 1) {
            const s = Math.sin((x * Math.cos(angle) + y * Math.sin(angle)) * freq + phase) > 0 ? 1 : 0.25;
            for (let k = 0; k < 3; k += 1) {
              const v = (hue[k] as number) * s + (rng.next() - 0.5) * 60;
              px[(y * side + x) * 3 + k] = Math.max(0, Math.min(255, Math.round(v)));
            }
          }
        }
        await sharp(px, { raw: { width: side, height: side, channels: 3 } }).jpeg({ quality: 90 })
          .toFile(path.join(dir, `${wnid}_${split}_${String(i).padStart(4, '0')}.JPEG`));
      }
    }
  }
  await writeFile(path.join(out, 'synset_words.txt'), names.join('\n') + '\n');
  return { train: classes * per.train, val: classes * per.val };
}
