import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { drawAugment, loadBatch, type AugmentOptions, type BatchItem } from '../../worker/data/image-pipeline.ts';
import { tempDir, writeImage } from '../helpers/images.ts';

const opts: AugmentOptions = {
  inputSize: 32, sMin: 36, sMax: 48, flip: true, pcaStd: 0.1, meanRgb: [120, 110, 100], stdRgb: [1, 1, 1],
};

describe('image pipeline', async () => {
  const root = tempDir('pipe');
  await writeImage(path.join(root, 'rgb.JPEG'), { width: 64, height: 48, seed: 1 });
  await writeImage(path.join(root, 'grey.JPEG'), { kind: 'grey', seed: 2 });
  await writeImage(path.join(root, 'cmyk.JPEG'), { kind: 'cmyk', seed: 3 });
  await writeImage(path.join(root, 'png-named.JPEG'), { kind: 'png', seed: 4 });
  await writeFile(path.join(root, 'broken.JPEG'), Buffer.from('this is not a jpeg'));
  const item = (id: number, file: string): BatchItem => ({ id, path: file, label: id % 3 });

  test('the same sample, epoch and seed give the same tensor; another epoch does not', async () => {
    const a = await loadBatch(root, [item(0, 'rgb.JPEG')], opts, { kind: 'train', seed: 5, epoch: 0 });
    const b = await loadBatch(root, [item(0, 'rgb.JPEG')], opts, { kind: 'train', seed: 5, epoch: 0 });
    const c = await loadBatch(root, [item(0, 'rgb.JPEG')], opts, { kind: 'train', seed: 5, epoch: 1 });
    assert.equal(a.images.length, 32 * 32 * 3);
    assert.deepEqual(a.images, b.images);
    assert.notDeepEqual(a.images, c.images);
  });

  test('CMYK and greyscale JPEGs and a PNG saved as .JPEG load as RGB', async () => {
    const batch = await loadBatch(root, [item(1, 'grey.JPEG'), item(2, 'cmyk.JPEG'), item(3, 'png-named.JPEG')], opts, { kind: 'eval', q: 40 });
    assert.equal(batch.skipped.length, 0);
    assert.equal(batch.images.length, 3 * 32 * 32 * 3);
    // A greyscale image has equal R, G, B before mean subtraction.
    const px = batch.images.subarray(0, 3);
    assert.ok(Math.abs(((px[0] as number) + 120) - ((px[1] as number) + 110)) < 1e-4);
  });

  test('an unreadable file is skipped, named and counted; the rest of the batch loads', async () => {
    const batch = await loadBatch(root, [item(0, 'rgb.JPEG'), item(4, 'broken.JPEG'), item(1, 'grey.JPEG')], opts, { kind: 'train', seed: 1, epoch: 0 });
    assert.deepEqual(batch.ids, [0, 1]);
    assert.deepEqual(Array.from(batch.labels), [0, 1]);
    assert.equal(batch.images.length, 2 * 32 * 32 * 3);
    assert.equal(batch.skipped.length, 1);
    assert.equal(batch.skipped[0]?.path, 'broken.JPEG');
    assert.match(batch.skipped[0]?.error ?? '', /broken\.JPEG: expected a readable JPEG or PNG, got: /);
  });

  test('a PNG (sharp) and the same picture as a JPEG (crop decoder) give the same flipped crop', async () => {
    // Smooth waves, so Lanczos (sharp) and bilinear (crop decoder) resampling agree closely; a crop
    // flipped before instead of after cropping, or mirrored the wrong way, would not.
    const W = 64;
    const H = 48;
    const px = Buffer.alloc(W * H * 3);
    for (let i = 0; i < px.length; i += 1) {
      const p = Math.floor(i / 3);
      px[i] = Math.round(127 + 100 * Math.sin((i % 3 === 1 ? Math.floor(p / W) : p % W) / 4 + (i % 3)));
    }
    const raw = { raw: { width: W, height: H, channels: 3 as const } };
    await sharp(px, raw).png().toFile(path.join(root, 'waves.png'));
    await sharp(px, raw).jpeg({ quality: 100, chromaSubsampling: '4:4:4' }).toFile(path.join(root, 'waves.JPEG'));
    const flat = { ...opts, pcaStd: 0, meanRgb: [0, 0, 0] as [number, number, number] };
    const id = [...Array(50).keys()].find((i) => { const d = drawAugment(flat, 9, 0, i, W, H); return d.flip && d.cropX > 4; }) as number;
    const load = async (f: string) => (await loadBatch(root, [item(id, f)], flat, { kind: 'train', seed: 9, epoch: 0 })).images;
    const png = await load('waves.png');
    const jpeg = await load('waves.JPEG');
    const side = flat.inputSize;
    const mirrored = new Float32Array(png.length);
    for (let p = 0; p < side * side; p += 1) {
      const q = p - (p % side) + side - 1 - (p % side);
      for (let c = 0; c < 3; c += 1) mirrored[q * 3 + c] = png[p * 3 + c] as number;
    }
    const mae = (a: Float32Array, b: Float32Array) => a.reduce((sum, v, i) => sum + Math.abs(v - (b[i] as number)), 0) / a.length;
    assert.ok(mae(png, jpeg) < 3, `PNG vs JPEG: ${mae(png, jpeg).toFixed(2)} levels`);
    assert.ok(mae(mirrored, jpeg) > 10, `the mirror of the PNG's crop is far from the JPEG's: ${mae(mirrored, jpeg).toFixed(2)} levels`);
  });

  test('evaluation is a deterministic centre crop with mean subtraction', async () => {
    const a = await loadBatch(root, [item(0, 'rgb.JPEG')], { ...opts, meanRgb: [0, 0, 0] }, { kind: 'eval', q: 32 });
    const b = await loadBatch(root, [item(0, 'rgb.JPEG')], { ...opts, meanRgb: [10, 10, 10] }, { kind: 'eval', q: 32 });
    assert.ok(a.images.every((v, i) => Math.abs(v - 10 - (b.images[i] as number)) < 1e-4));
    assert.ok(a.images.every((v) => v >= 0 && v <= 255));
  });
});
