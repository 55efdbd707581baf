import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { switchBackend } from '../../worker/backend.ts';
import { buildVgg, disposeVgg, readFlat } from '../../worker/model/vgg-model.ts';
import { MomentumSgd } from '../../worker/train/momentum-sgd.ts';
import { initialPlateau, stepPlateau } from '../../shared/lr-schedule.ts';
import { epochPermutation } from '../../shared/rng.ts';
import { TINY_VGG_A } from '../../shared/vgg-configs.ts';

await switchBackend('wasm');

describe('momentum SGD', () => {
  test('two steps follow v = mu v + g + wd w (kernels only), w -= lr v, keyed by name', () => {
    const vgg = buildVgg(TINY_VGG_A);
    const w0 = readFlat(vgg);
    const sgd = new MomentumSgd(vgg.layout, { learningRate: 0.1, momentum: 0.9, weightDecay: 0.01 });
    const grads = new Map(vgg.layout.entries.map((e) => [e.name, tf.fill(e.shape, 0.5)]));
    sgd.apply(vgg, grads);
    sgd.apply(vgg, grads);
    const w2 = readFlat(vgg);
    for (const e of vgg.layout.entries) {
      for (const i of [e.offset, e.offset + e.size - 1]) {
        const wd = e.decay ? 0.01 : 0;
        const w = w0[i] as number;
        const v1 = 0.5 + wd * w;
        const w1 = w - 0.1 * v1;
        const v2 = 0.9 * v1 + 0.5 + wd * w1;
        assert.ok(Math.abs((w2[i] as number) - (w1 - 0.1 * v2)) < 1e-6, `${e.name}[${i - e.offset}]`);
      }
    }
    const v = sgd.readFlat();
    assert.ok(Math.abs((v[vgg.layout.byName.get('fc8/bias')?.offset ?? 0] as number) - 0.95) < 1e-6);
    tf.dispose([...grads.values()]);
    sgd.dispose();
    disposeVgg(vgg);
  });

  test('a missing gradient is rejected before anything changes', () => {
    const vgg = buildVgg(TINY_VGG_A);
    const before = readFlat(vgg);
    const sgd = new MomentumSgd(vgg.layout);
    const grads = new Map(vgg.layout.entries.filter((e) => e.name !== 'fc8/bias').map((e) => [e.name, tf.zeros(e.shape)]));
    assert.throws(() => sgd.apply(vgg, grads), /gradient of fc8\/bias: expected one, got none/);
    tf.dispose([...grads.values()]);
    assert.deepEqual(readFlat(vgg), before);
    assert.deepEqual(sgd.readFlat(), new Float32Array(vgg.layout.totalSize));
    sgd.dispose();
    disposeVgg(vgg);
  });
});

describe('learning-rate schedule and data order', () => {
  test('lr is divided by 10 when val top-1 stops improving, at most three times', () => {
    let s = initialPlateau(0.01);
    const lrs: number[] = [];
    for (const acc of [0.5, 0.6, 0.6, 0.65, 0.64, 0.63, 0.62, 0.61]) {
      s = stepPlateau(s, acc);
      lrs.push(s.learningRate);
    }
    assert.deepEqual(lrs.map((x) => Number(x.toPrecision(3))), [0.01, 0.01, 0.001, 0.001, 0.0001, 0.00001, 0.00001, 0.00001]);
    assert.equal(s.reductions, 3);
  });

  test('epoch permutations are deterministic per (seed, epoch) and cover every sample once', () => {
    const a = epochPermutation(1000, 7, 2);
    assert.deepEqual(a, epochPermutation(1000, 7, 2));
    assert.notDeepEqual(a, epochPermutation(1000, 7, 3));
    assert.deepEqual([...a].sort((x, y) => x - y), Array.from({ length: 1000 }, (_, i) => i));
  });
});
