import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { switchBackend } from '../../worker/backend.ts';
import { maxRelativeError } from '../helpers/numeric.ts';

process.env.VGG_LOG_LEVEL = 'silent';

interface Case { stride: number; pad: 'same' | 'valid'; k: number; h: number; w: number }
const cases: Case[] = [];
for (const stride of [1, 2]) for (const pad of ['same', 'valid'] as const) for (const k of [1, 3]) cases.push({ stride, pad, k, h: 9, w: 7 });
cases.push({ stride: 2, pad: 'same', k: 3, h: 8, w: 8 });

/** dX and dW of sum(conv2d(x, w) * dy) on the current backend. */
function convGrads(c: Case, x: Float32Array, w: Float32Array, dy: Float32Array, dyShape: number[]): [Float32Array, Float32Array] {
  return tf.tidy(() => {
    const xs = tf.tensor4d(x, [2, c.h, c.w, 3]);
    const ws = tf.tensor4d(w, [c.k, c.k, 3, 5]);
    const dys = tf.tensor(dy, dyShape);
    const g = tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, c.stride, c.pad), dys)));
    const [gx, gw] = g([xs, ws]);
    return [gx?.dataSync() as Float32Array, gw?.dataSync() as Float32Array];
  });
}

async function inputs(c: Case) {
  await switchBackend('cpu', true);
  return tf.tidy(() => {
    const x = tf.randomNormal([2, c.h, c.w, 3], 0, 1, 'float32', 1);
    const w = tf.randomNormal([c.k, c.k, 3, 5], 0, 1, 'float32', 2);
    const y = tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, c.stride, c.pad);
    const dy = tf.randomNormal(y.shape, 0, 1, 'float32', 3);
    return { x: x.dataSync() as Float32Array, w: w.dataSync() as Float32Array, dy: dy.dataSync() as Float32Array, dyShape: dy.shape };
  });
}

describe('training kernels equal the stock cpu kernels within 1e-5 relative', () => {
  for (const c of cases) {
    test(`conv ${c.k}x${c.k} stride ${c.stride} ${c.pad} on ${c.h}x${c.w}`, async () => {
      const { x, w, dy, dyShape } = await inputs(c);
      const [refX, refW] = convGrads(c, x, w, dy, dyShape);
      for (const backend of ['cpu', 'wasm'] as const) {
        await switchBackend(backend);
        const [gx, gw] = convGrads(c, x, w, dy, dyShape);
        assert.ok(maxRelativeError(gx, refX) < 1e-5, `${backend} dX rel err ${maxRelativeError(gx, refX)}`);
        assert.ok(maxRelativeError(gw, refW) < 1e-5, `${backend} dW rel err ${maxRelativeError(gw, refW)}`);
      }
    });
  }

  test('wasm BatchMatMul with transposed operands equals cpu', async () => {
    const shapes: [number[], number[], boolean, boolean][] = [
      [[32, 24], [32, 16], true, false], [[24, 32], [16, 32], false, true], [[32, 24], [16, 32], true, true], [[2, 7, 5], [2, 7, 3], true, false],
    ];
    for (const [sa, sb, ta, tb] of shapes) {
      await switchBackend('cpu', true);
      const [a, b, ref] = tf.tidy(() => {
        const ta_ = tf.randomNormal(sa, 0, 1, 'float32', 4);
        const tb_ = tf.randomNormal(sb, 0, 1, 'float32', 5);
        return [ta_.dataSync() as Float32Array, tb_.dataSync() as Float32Array, tf.matMul(ta_, tb_, ta, tb).dataSync() as Float32Array];
      });
      await switchBackend('wasm');
      const got = tf.tidy(() => tf.matMul(tf.tensor(a, sa), tf.tensor(b, sb), ta, tb).dataSync() as Float32Array);
      assert.ok(maxRelativeError(got, ref) < 1e-5, `shapes ${sa} x ${sb} ta=${ta} tb=${tb}: rel err ${maxRelativeError(got, ref)}`);
    }
  });

  test('kernels leave no tensors behind', async () => {
    await switchBackend('wasm');
    const c = cases[3] as Case;
    const { x, w, dy, dyShape } = await inputs(c);
    await switchBackend('wasm');
    convGrads(c, x, w, dy, dyShape);
    const before = tf.memory().numTensors;
    const dataBefore = tf.engine().backend.numDataIds();
    convGrads(c, x, w, dy, dyShape);
    assert.equal(tf.memory().numTensors, before);
    assert.equal(tf.engine().backend.numDataIds(), dataBefore);
  });
});
