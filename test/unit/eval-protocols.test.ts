import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { resolveModelConfig, TINY_VGG_A } from '../../shared/vgg-configs.ts';
import { switchBackend } from '../../worker/backend.ts';
import { paperScales } from '../../worker/eval/evaluate.ts';
import { centreCropSoftmax, cropGrid, denseMapSide, denseScoreMap, denseSoftmax, multiCropSoftmax } from '../../worker/eval/protocols.ts';
import { buildVgg, disposeVgg } from '../../worker/model/vgg-model.ts';
import { maxRelativeError } from '../helpers/numeric.ts';

await switchBackend('wasm');

describe('dense evaluation (FC layers as convolutions)', () => {
  // inputSize 64: fc6 becomes a 2x2 convolution, which checks the flatten order of its kernel.
  for (const [name, cfg] of [['inputSize 32 (fc6 1x1)', { ...TINY_VGG_A, dropout: 0.5 }], ['inputSize 64 (fc6 2x2)', { ...TINY_VGG_A, inputSize: 64 }],
    ['B with batch norm', { ...TINY_VGG_A, config: 'B', batchNorm: true }]] as const) {
    test(`${name}: on an inputSize image the score map is 1x1 and equals the standard forward pass`, () => {
      const vgg = buildVgg(resolveModelConfig(cfg), { seed: 3 });
      const side = vgg.config.inputSize;
      const x = tf.randomNormal([2, side, side, 3], 0, 1, 'float32', 7) as tf.Tensor4D;
      const map = denseScoreMap(vgg, x);
      assert.deepEqual(map.shape, [2, 1, 1, 10]);
      const standard = vgg.model.apply(x, { training: false }) as tf.Tensor;
      const d = maxRelativeError(map.reshape([2, 10]).dataSync() as Float32Array, standard.dataSync() as Float32Array);
      assert.ok(d < 1e-4, `relative difference ${d}`);
      tf.dispose([x, map, standard]);
      disposeVgg(vgg);
    });
  }

  test('on a larger image the score map has the expected size, varies over the image, and its average gives posteriors', () => {
    const vgg = buildVgg(resolveModelConfig({ ...TINY_VGG_A, inputSize: 64 }), { seed: 3 });
    const x = tf.randomNormal([1, 128, 96, 3], 0, 1, 'float32', 9) as tf.Tensor4D;
    const map = denseScoreMap(vgg, x);
    // Body output 4x3 (five pools), fc6 2x2 valid: 3x2.
    assert.deepEqual(map.shape, [1, denseMapSide(128, 64), denseMapSide(96, 64), 10]);
    assert.deepEqual(map.shape, [1, 3, 2, 10]);
    // The locations see different parts of the image: the map is not constant.
    const spread = tf.tidy(() => tf.sub(tf.max(map, [1, 2]), tf.min(map, [1, 2])).max().dataSync()[0] ?? 0);
    assert.ok(spread > 1e-4);
    const p = denseSoftmax(vgg, x.squeeze([0]) as tf.Tensor3D);
    const sum = p.sum().dataSync()[0] ?? 0;
    assert.ok(Math.abs(sum - 1) < 1e-5);
    tf.dispose([x, map, p]);
    disposeVgg(vgg);
  });
});

describe('multi-crop evaluation', () => {
  test('a 5x5 grid: 25 crops per scale, corners and edges included, evenly spaced, inside the image', () => {
    const g = cropGrid(256, 300, 224);
    assert.equal(g.length, 25);
    assert.deepEqual([...new Set(g.map((c) => c.x))], [0, 8, 16, 24, 32]);
    assert.deepEqual([...new Set(g.map((c) => c.y))], [0, 19, 38, 57, 76]);
    for (const corner of [{ x: 0, y: 0 }, { x: 32, y: 0 }, { x: 0, y: 76 }, { x: 32, y: 76 }]) assert.ok(g.some((c) => c.x === corner.x && c.y === corner.y));
    assert.ok(g.every((c) => c.x + 224 <= 256 && c.y + 224 <= 300));
    // Three scales, each with the flips: the paper's 150 crops.
    assert.equal(3 * 2 * cropGrid(384, 384, 224).length, 150);
    assert.throws(() => cropGrid(200, 300, 224), /crop grid: expected an image of at least 224x224, got 200x300/);
  });

  test('the posteriors average all 50 views: on an image where every crop and flip is the same, they equal the centre crop\'s', () => {
    const vgg = buildVgg(resolveModelConfig(TINY_VGG_A), { seed: 5 });
    // Constant rows and columns: every 32x32 crop of a constant image is identical, flipped or not.
    const img = tf.fill([48, 40, 3], 0.7) as tf.Tensor3D;
    const a = multiCropSoftmax(vgg, img).dataSync() as Float32Array;
    const b = centreCropSoftmax(vgg, img).dataSync() as Float32Array;
    assert.ok(maxRelativeError(a, b) < 1e-5);
    // On a non-constant image they differ (the crops are really different views).
    const noise = tf.randomUniform([48, 40, 3], -2, 2, 'float32', 4) as tf.Tensor3D;
    assert.ok(maxRelativeError(multiCropSoftmax(vgg, noise).dataSync() as Float32Array, centreCropSoftmax(vgg, noise).dataSync() as Float32Array) > 1e-4);
    tf.dispose([img, noise]);
    disposeVgg(vgg);
  });
});

test('test scales follow the paper: Q = S and {S-32, S, S+32} at S = 256; (Smin+Smax)/2 and {256, 384, 512} when jittered', () => {
  assert.deepEqual(paperScales([256, 256], 224), { single: 256, multi: [224, 256, 288] });
  assert.deepEqual(paperScales([256, 512], 224), { single: 384, multi: [256, 384, 512] });
  assert.deepEqual(paperScales([384, 384], 224), { single: 384, multi: [336, 384, 432] });
  // Small images: the same ratios, never below the crop.
  assert.deepEqual(paperScales([36, 36], 32), { single: 36, multi: [32, 36, 41] });
});
