import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { switchBackend } from '../../worker/backend.ts';
import { buildVgg, disposeVgg, readFlat, writeFlat } from '../../worker/model/vgg-model.ts';
import { warmStartFromA } from '../../worker/model/warm-start.ts';
import { resolveModelConfig, TINY_VGG_A } from '../../shared/vgg-configs.ts';

await switchBackend('wasm');

describe('built models', () => {
  for (const config of ['A', 'A-LRN', 'B', 'C', 'D', 'E'] as const) {
    for (const batchNorm of [false, true]) {
      test(`${config}${batchNorm ? '-BN' : ''} (width 1/8) has the layout's weights and outputs logits`, () => {
        const vgg = buildVgg(resolveModelConfig({ ...TINY_VGG_A, config, batchNorm }));
        assert.equal(vgg.model.countParams(), vgg.layout.totalSize);
        const out = tf.tidy(() => (vgg.model.predict(tf.ones([2, 32, 32, 3])) as tf.Tensor).shape);
        assert.deepEqual(out, [2, 10]);
        disposeVgg(vgg);
      });
    }
  }

  test('the same seed gives the same weights; another seed does not', () => {
    const a = buildVgg(TINY_VGG_A, { seed: 5 });
    const b = buildVgg(TINY_VGG_A, { seed: 5 });
    const c = buildVgg(TINY_VGG_A, { seed: 6 });
    assert.deepEqual(readFlat(a), readFlat(b));
    assert.notDeepEqual(readFlat(a), readFlat(c));
    [a, b, c].forEach(disposeVgg);
  });

  test('paper init: kernels have std ~0.1 (variance 1e-2), biases zero', () => {
    const vgg = buildVgg(TINY_VGG_A, { init: 'paper' });
    const fc6 = vgg.variables.get('fc6/kernel')?.read().dataSync() as Float32Array;
    const mean = fc6.reduce((s, v) => s + v, 0) / fc6.length;
    const std = Math.sqrt(fc6.reduce((s, v) => s + (v - mean) ** 2, 0) / fc6.length);
    assert.ok(Math.abs(std - 0.1) < 0.005, `std ${std}`);
    assert.ok((vgg.variables.get('fc6/bias')?.read().dataSync() as Float32Array).every((v) => v === 0));
    disposeVgg(vgg);
  });

  test('writeFlat then readFlat returns the same vector', () => {
    const vgg = buildVgg(TINY_VGG_A);
    const flat = Float32Array.from({ length: vgg.layout.totalSize }, (_, i) => (i % 97) / 97);
    writeFlat(vgg, flat);
    assert.deepEqual(readFlat(vgg), flat);
    assert.throws(() => writeFlat(vgg, new Float32Array(5)), /flat weights: expected 229562 floats, got 5/);
    disposeVgg(vgg);
  });

  test('warm start copies four convs and three FC layers of A into D; the rest stays fresh', () => {
    const a = buildVgg(resolveModelConfig({ ...TINY_VGG_A, config: 'A' }), { seed: 11 });
    const d = buildVgg(resolveModelConfig({ ...TINY_VGG_A, config: 'D' }), { seed: 22 });
    const fresh = new Map([...d.variables].map(([k, v]) => [k, v.read().dataSync().slice()]));
    const source: tf.NamedTensorMap = {};
    for (const [name, v] of a.variables) source[name] = v.read();
    const copied = warmStartFromA(d, source);
    const expected = ['conv1_1', 'conv2_1', 'conv3_1', 'conv3_2', 'fc6', 'fc7', 'fc8'].flatMap((l) => [`${l}/kernel`, `${l}/bias`]);
    assert.deepEqual(copied.sort(), expected.sort());
    for (const [name, v] of d.variables) {
      const now = v.read().dataSync();
      if (copied.includes(name)) assert.deepEqual(now, a.variables.get(name)?.read().dataSync(), name);
      else assert.deepEqual(now, fresh.get(name), name);
    }
    disposeVgg(a);
    disposeVgg(d);
  });
});
