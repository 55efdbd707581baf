import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { parseBackend, selectBackend } from '../../worker/backend.ts';
import { trainingKernelsInstalled } from '../../worker/kernels/training-kernels.ts';
import { ConfigError } from '../../shared/errors.ts';

describe('backend selection', () => {
  test('auto without tfjs-node falls back to wasm with our kernels, says why, and sets CUDA_VISIBLE_DEVICES', async () => {
    delete process.env.CUDA_VISIBLE_DEVICES;
    const lines: object[] = [];
    const log = { info: (o: object) => lines.push(o) } as never;
    const r = await selectBackend({ backend: 'auto', gpu: 3, log });
    assert.equal(process.env.CUDA_VISIBLE_DEVICES, '3');
    assert.equal(r.name, tf.getBackend());
    if (r.name === 'tensorflow') return; // a machine with libtensorflow installed: nothing to fall back from
    assert.equal(r.name, 'wasm');
    assert.ok(trainingKernelsInstalled('wasm'));
    assert.ok(tf.getKernel('Conv2DBackpropFilter', 'wasm') !== undefined);
    assert.match(r.rejected['@tensorflow/tfjs-node-gpu'] ?? '', /.+/);
    assert.match(r.rejected['@tensorflow/tfjs-node'] ?? '', /.+/);
    assert.equal(lines.length, 1);
    assert.equal((await selectBackend({ backend: 'cpu' })).name, r.name, 'the first choice holds for the process');
  });

  test('an unknown backend name is a config error naming the option', () => {
    assert.throws(() => parseBackend('tpu'), (err: unknown) => err instanceof ConfigError
      && err.message === '--backend: expected one of auto, tensorflow, wasm, cpu, got "tpu"');
    assert.throws(() => parseBackend('gpu', 'VGG_BACKEND'), /VGG_BACKEND: expected one of/);
  });
});
