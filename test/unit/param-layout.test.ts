import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { buildLayout, flatten, modelHash, unflatten } from '../../shared/param-layout.ts';
import { CONFIG_NAMES, resolveModelConfig, TINY_VGG_A } from '../../shared/vgg-configs.ts';
import { ConfigError, ShapeError } from '../../shared/errors.ts';

const PUBLISHED: Record<string, number> = {
  A: 132_863_336, 'A-LRN': 132_863_336, B: 133_047_848, C: 133_638_952, D: 138_357_544, E: 143_667_240,
};

describe('model zoo parameter counts', () => {
  for (const name of CONFIG_NAMES) {
    test(`config ${name} has the published ${PUBLISHED[name]} parameters`, () => {
      const layout = buildLayout(resolveModelConfig({ config: name }));
      assert.equal(layout.totalSize, PUBLISHED[name]);
      assert.equal(layout.trainableSize, PUBLISHED[name]);
    });
  }

  test('D with batch norm and bias-free convs has 138,361,768 trainable parameters', () => {
    const layout = buildLayout(resolveModelConfig({ config: 'D', batchNorm: true }));
    assert.equal(layout.trainableSize, 138_361_768);
    assert.equal(layout.entries.filter((e) => e.role === 'bias' && e.layer.startsWith('conv')).length, 0);
  });

  test('config C has 1x1 convs as the last layer of blocks 3, 4, 5', () => {
    const layout = buildLayout(resolveModelConfig({ config: 'C' }));
    const oneByOne = layout.entries.filter((e) => e.role === 'kernel' && e.shape[0] === 1).map((e) => e.layer);
    assert.deepEqual(oneByOne, ['conv3_3', 'conv4_3', 'conv5_3']);
  });

  test('fc6 of D is 25088 x 4096 (74% of the parameters)', () => {
    const layout = buildLayout(resolveModelConfig({ config: 'D' }));
    assert.deepEqual(layout.byName.get('fc6/kernel')?.shape, [25088, 4096]);
  });
});

describe('flat layout', () => {
  test('offsets are contiguous and flatten/unflatten round-trip', () => {
    const layout = buildLayout(TINY_VGG_A);
    let offset = 0;
    for (const e of layout.entries) {
      assert.equal(e.offset, offset);
      offset += e.size;
    }
    const named = new Map(layout.entries.map((e) => [e.name, Float32Array.from({ length: e.size }, (_, i) => e.offset + i)]));
    const flat = flatten(layout, named);
    for (const [name, view] of unflatten(layout, flat)) assert.deepEqual(view, named.get(name));
  });

  test('flatten rejects a parameter of the wrong size, naming it', () => {
    const layout = buildLayout(TINY_VGG_A);
    const named = new Map(layout.entries.map((e) => [e.name, new Float32Array(e.size)]));
    named.set('fc7/bias', new Float32Array(3));
    assert.throws(() => flatten(layout, named), (err: unknown) => err instanceof ShapeError
      && err.code === 'VGG_ERR_SHAPE' && err.message === 'parameter fc7/bias: expected 256 floats (shape [256]), got 3');
  });

  test('weight decay applies to kernels only', () => {
    const layout = buildLayout(resolveModelConfig({ ...TINY_VGG_A, batchNorm: true }));
    for (const e of layout.entries) assert.equal(e.decay, e.role === 'kernel', e.name);
  });

  test('model hash is stable and differs between configs', () => {
    assert.equal(modelHash(TINY_VGG_A), modelHash({ ...TINY_VGG_A }));
    assert.notEqual(modelHash(TINY_VGG_A), modelHash({ ...TINY_VGG_A, numClasses: 11 }));
    assert.notEqual(modelHash(TINY_VGG_A), modelHash({ ...TINY_VGG_A, config: 'B' }));
  });

  test('bad model options are rejected naming the option', () => {
    assert.throws(() => resolveModelConfig({ inputSize: 16 }), new ConfigError('inputSize: expected an integer >= 32, got 16'));
    assert.throws(() => resolveModelConfig({ config: 'F' as never }), /config: expected one of A, A-LRN, B, C, D, E, got "F"/);
  });
});
