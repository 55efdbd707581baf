import * as tf from '@tensorflow/tfjs';
import { CheckpointError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import { loadCheckpoint, restoreWeights, type LoadedCheckpoint } from '../train/checkpoint.ts';
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

/**
 * Fine-tuning (Section 3.1: S = 384 initialised from S = 256; multi-scale from
 * S = 384): all weights from a checkpoint of the same model, checked name by
 * name and shape by shape before any is written. The optimiser state and the
 * step are not taken: the new run has its own scale and learning rate.
 */
export async function initFromCheckpoint(target: VggModel, dirOrRoot: string, log?: Logger): Promise<void> {
  await withCheckpoint(dirOrRoot, (ck) => {
    restoreWeights(target, ck.weights);
    log?.info({ from: ck.dir, step: ck.state.step }, 'initialised from checkpoint (fine-tuning)');
  });
}

/** Warm start of a deeper config from a checkpoint of A (path), as the run options ask. */
export async function warmStartFromCheckpoint(target: VggModel, dirOrRoot: string, log?: Logger): Promise<void> {
  await withCheckpoint(dirOrRoot, (ck) => {
    log?.info({ from: ck.dir, copied: warmStartFromA(target, ck.weights) }, 'warm start from config A');
  });
}

/** Loads a checkpoint, hands it to `use`, and frees its tensors whatever happens. */
async function withCheckpoint(dirOrRoot: string, use: (ck: LoadedCheckpoint) => void): Promise<void> {
  const ck = await loadCheckpoint(dirOrRoot);
  try {
    use(ck);
  } finally {
    tf.dispose(Object.values(ck.weights));
  }
}
