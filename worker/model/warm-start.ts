import type * as tf from '@tensorflow/tfjs';
import { CheckpointError } from '../../shared/errors.ts';
import { planLayers } from '../../shared/param-layout.ts';
import { resolveModelConfig } from '../../shared/vgg-configs.ts';
import type { VggModel } from './vgg-model.ts';

/**
 * The paper's warm start (Section 3.1): a deeper net takes the first four
 * conv layers and the three FC layers of a trained net A. A's first four conv
 * layers are conv1_1, conv2_1, conv3_1 and conv3_2; they go to the layers of
 * the same name in the deeper net, the only placement where the shapes agree.
 * Everything else keeps its fresh initialisation. Returns the copied weights.
 */
export function warmStartFromA(target: VggModel, source: tf.NamedTensorMap): string[] {
  const aPlan = planLayers(resolveModelConfig({ ...target.config, config: 'A', batchNorm: target.config.batchNorm }));
  const convs = aPlan.filter((l) => l.type === 'conv').slice(0, 4).map((l) => l.name);
  const layers = [...convs, 'fc6', 'fc7', 'fc8'];
  const copies: [tf.LayerVariable, tf.Tensor, string][] = [];
  for (const layer of layers) {
    for (const e of target.layout.entries.filter((x) => x.layer === layer && x.role !== 'gamma' && x.role !== 'beta'
      && x.role !== 'movingMean' && x.role !== 'movingVariance')) {
      const t = source[`${layer}/${e.role}`];
      if (t === undefined) throw new CheckpointError(`warm start: expected ${e.name} in the checkpoint of A, got none`);
      if (t.shape.join(',') !== e.shape.join(',')) {
        throw new CheckpointError(`warm start ${e.name}: expected shape [${e.shape}], got [${t.shape}] (same inputSize, width and classes as A?)`);
      }
      const v = target.variables.get(e.name);
      if (v !== undefined) copies.push([v, t, e.name]);
    }
  }
  for (const [v, t] of copies) v.write(t);
  return copies.map(([, , name]) => name);
}
