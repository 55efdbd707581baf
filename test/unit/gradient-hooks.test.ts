import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { switchBackend } from '../../worker/backend.ts';
import { buildVgg, disposeVgg } from '../../worker/model/vgg-model.ts';
import { computeGradients } from '../../worker/train/gradient-step.ts';
import { resolveModelConfig, TINY_VGG_A } from '../../shared/vgg-configs.ts';
import { Rng } from '../../shared/rng.ts';

await switchBackend('wasm');

test('early gradients: the classifier\'s are handed over during the backward pass, before any conv layer\'s, equal to the final ones bit for bit', () => {
  const vgg = buildVgg(resolveModelConfig({ ...TINY_VGG_A, dropout: 0 }), { seed: 3 });
  const rng = new Rng(9);
  const n = 4;
  const side = vgg.config.inputSize;
  const images = Float32Array.from({ length: n * side * side * 3 }, () => rng.normal());
  const labels = Int32Array.from({ length: n }, (_, i) => i % vgg.config.numClasses);
  const plain = computeGradients(vgg, images, labels);

  const head = vgg.layout.entries.filter((e) => e.layer.startsWith('fc')).map((e) => e.name);
  const watched = [...head, 'conv1_1/kernel', 'conv2_1/bias'];
  const order: string[] = [];
  const values = new Map<string, Float32Array>();
  let forward: { loss: number; samples: number } | undefined;
  const hooked = computeGradients(vgg, images, labels, {
    names: watched,
    forward: (f) => { forward = f; assert.equal(order.length, 0, 'the forward figures come before any gradient'); },
    ready: (name, g) => { order.push(name); values.set(name, (g.dataSync() as Float32Array).slice()); },
  });

  assert.deepEqual([...order].sort(), [...watched].sort(), 'each watched parameter once');
  const lastHead = Math.max(...head.map((name) => order.indexOf(name)));
  assert.ok(lastHead < order.indexOf('conv2_1/bias') && lastHead < order.indexOf('conv1_1/kernel'), `classifier first: ${order.join(', ')}`);
  for (const name of watched) {
    const early = values.get(name) as Float32Array;
    const final = hooked.grads.get(name)?.dataSync() as Float32Array;
    const without = plain.grads.get(name)?.dataSync() as Float32Array;
    assert.equal(Buffer.compare(Buffer.from(early.buffer), Buffer.from(final.buffer)), 0, `${name}: early = final`);
    assert.equal(Buffer.compare(Buffer.from(early.buffer), Buffer.from(without.buffer)), 0, `${name}: hooks change nothing`);
  }
  assert.equal(forward?.loss, hooked.loss);
  assert.equal(forward?.samples, n);

  // The hooks are gone afterwards: a plain pass calls nothing.
  const after = computeGradients(vgg, images, labels);
  assert.equal(order.length, watched.length);
  tf.dispose([...plain.grads.values(), ...hooked.grads.values(), ...after.grads.values()]);
  disposeVgg(vgg);
});
