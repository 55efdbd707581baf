import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { indexDataset } from '../../coordinator/dataset-index.ts';
import { ConfigError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import { subsetIds } from '../../shared/subset.ts';
import type { ModelConfig } from '../../shared/vgg-configs.ts';
import { estimateRgbStats, loadScaledImage, type AugmentOptions } from '../data/image-pipeline.ts';
import { buildVgg, disposeVgg } from '../model/vgg-model.ts';
import { loadCheckpoint, restoreWeights } from '../train/checkpoint.ts';
import { centreCropSoftmax, denseSoftmax, multiCropSoftmax } from './protocols.ts';

export const PROTOCOLS = ['single', 'dense', 'multi-scale', 'multi-crop', 'multi-crop+dense'] as const;
export type Protocol = (typeof PROTOCOLS)[number];

export interface ProtocolResult { protocol: Protocol; scales: number[]; top1Error: number; top5Error: number }

export interface EvalReport {
  checkpoint: string;
  config: ModelConfig;
  /** Training scale [Smin, Smax] of the checkpoint. */
  trainScale: [number, number];
  images: number;
  results: ProtocolResult[];
}

/**
 * The paper's test scales from the training scale (Section 4.1, 4.2): single
 * scale Q = S for fixed S, Q = (Smin + Smax) / 2 for jittered S; multi-scale
 * {S - 32, S, S + 32} at S = 256 (here relative: S -+ S/8, so the same ratios
 * on small images) and {Smin, (Smin + Smax) / 2, Smax} for jittered S. Scales
 * below the crop size are raised to it (a crop must fit).
 */
export function paperScales(trainScale: [number, number], inputSize: number): { single: number; multi: number[] } {
  const [lo, hi] = trainScale;
  const single = Math.round((lo + hi) / 2);
  const raw = lo === hi ? [lo - lo / 8, lo, lo + lo / 8] : [lo, single, hi];
  const multi = [...new Set(raw.map((q) => Math.max(inputSize, Math.round(q))))];
  return { single: Math.max(inputSize, single), multi };
}

/** Element-wise mean of equally long posterior vectors. */
function mean(ps: Float32Array[]): Float32Array {
  const out = new Float32Array(ps[0]?.length ?? 0);
  for (const p of ps) for (let i = 0; i < out.length; i += 1) out[i] = (out[i] as number) + (p[i] as number) / ps.length;
  return out;
}

function hits(p: Float32Array, label: number): [number, number] {
  const target = p[label] as number;
  let above = 0;
  for (let i = 0; i < p.length; i += 1) if ((p[i] as number) > target) above += 1;
  return [above === 0 ? 1 : 0, above < 5 ? 1 : 0];
}

/** Evaluates a checkpoint on the validation split with the chosen protocols. */
export async function evaluateCheckpoint(o: {
  checkpoint: string; data: string; protocols?: Protocol[]; scales?: number[]; q?: number; valLimit?: number; log?: Logger;
  onProgress?: (done: number, total: number) => void;
}): Promise<EvalReport> {
  const ck = await loadCheckpoint(o.checkpoint);
  const config = ck.state.modelConfig;
  const vgg = buildVgg(config);
  try {
    restoreWeights(vgg, ck.weights);
  } finally {
    tf.dispose(Object.values(ck.weights));
  }
  const index = await indexDataset(o.data);
  const run = ck.state.runConfig as { scale?: [number, number]; sMin?: number; sMax?: number; trainLimit?: number; normalize?: string; normalizeStd?: boolean };
  const trainScale: [number, number] = ck.state.trainScale ?? run.scale ?? [run.sMin ?? config.inputSize, run.sMax ?? config.inputSize];
  let norm = ck.state.normalization;
  if (norm === undefined) {
    // Older checkpoints: the statistics are a pure function of the training files, so recompute them.
    const stats = await estimateRgbStats(index.root, subsetIds(index.train.length, run.trainLimit ?? 0).map((id) => index.train[id]?.path ?? ''));
    norm = { meanRgb: stats.meanRgb, stdRgb: run.normalize === 'mean' || run.normalizeStd === false ? [1, 1, 1] : stats.stdRgb };
  }
  const opts: AugmentOptions = { inputSize: config.inputSize, sMin: trainScale[0], sMax: trainScale[1], flip: false, pcaStd: 0, ...norm };
  const paper = paperScales(trainScale, config.inputSize);
  const q0 = o.q ?? paper.single;
  const scales = o.scales ?? paper.multi;
  for (const q of [q0, ...scales]) {
    if (q < config.inputSize) throw new ConfigError(`--scales: expected every Q >= the crop size ${config.inputSize}, got ${q}`);
  }
  const protocols = o.protocols ?? [...PROTOCOLS];
  const ids = subsetIds(index.val.length, o.valLimit ?? 0);
  const counts = new Map<Protocol, [number, number]>(protocols.map((p) => [p, [0, 0]]));
  const add = (p: Protocol, probs: Float32Array, label: number) => {
    const c = counts.get(p);
    if (c === undefined) return;
    const [t1, t5] = hits(probs, label);
    c[0] += t1;
    c[1] += t5;
  };
  const wants = (...ps: Protocol[]) => ps.some((p) => counts.has(p));
  let done = 0;
  for (const id of ids) {
    const item = index.val[id];
    if (item === undefined) continue;
    const views = new Map<number, tf.Tensor3D>();
    const view = async (q: number) => {
      let t = views.get(q);
      if (t === undefined) {
        const img = await loadScaledImage(path.join(index.root, item.path), opts, q);
        t = tf.tensor3d(img.data, [img.height, img.width, 3]);
        views.set(q, t);
      }
      return t;
    };
    // Each view's posteriors are computed once, whichever protocols use them (q0 is usually among the scales).
    const posteriors = async (fn: typeof denseSoftmax, memo: Map<number, Float32Array>, q: number) => {
      let p = memo.get(q);
      if (p === undefined) {
        const t = fn(vgg, await view(q));
        p = (t.dataSync() as Float32Array).slice();
        t.dispose();
        memo.set(q, p);
      }
      return p;
    };
    const denseAt = new Map<number, Float32Array>();
    if (wants('single')) add('single', await posteriors(centreCropSoftmax, new Map(), q0), item.label);
    if (wants('dense')) add('dense', await posteriors(denseSoftmax, denseAt, q0), item.label);
    const overScales = async (fn: typeof denseSoftmax, memo: Map<number, Float32Array>) => {
      const ps: Float32Array[] = [];
      for (const q of scales) ps.push(await posteriors(fn, memo, q));
      return mean(ps);
    };
    const dense = wants('multi-scale', 'multi-crop+dense') ? await overScales(denseSoftmax, denseAt) : undefined;
    const crops = wants('multi-crop', 'multi-crop+dense') ? await overScales(multiCropSoftmax, new Map()) : undefined;
    if (dense !== undefined) add('multi-scale', dense, item.label);
    if (crops !== undefined) add('multi-crop', crops, item.label);
    if (dense !== undefined && crops !== undefined) add('multi-crop+dense', mean([dense, crops]), item.label);
    tf.dispose([...views.values()]);
    done += 1;
    if (done % 100 === 0 || done === ids.length) o.onProgress?.(done, ids.length);
  }
  disposeVgg(vgg);
  const n = Math.max(1, done);
  const results = protocols.map((p) => {
    const [t1, t5] = counts.get(p) ?? [0, 0];
    const single = p === 'single' || p === 'dense';
    return { protocol: p, scales: single ? [q0] : scales, top1Error: 1 - t1 / n, top5Error: 1 - t5 / n };
  });
  return { checkpoint: ck.dir, config, trainScale, images: done, results };
}

const NAMES: Record<Protocol, string> = {
  single: 'single scale, centre crop',
  dense: 'single scale, dense',
  'multi-scale': 'multi-scale, dense',
  'multi-crop': 'multi-crop (5x5 + flips per scale)',
  'multi-crop+dense': 'multi-crop & dense',
};

/** A table shaped like the paper's Tables 3-5. */
export function formatEvalTable(reports: EvalReport[]): string {
  const rows = reports.flatMap((r) => r.results.map((x) => [
    `${r.config.config}${r.config.batchNorm ? '-BN' : ''} (width ${r.config.widthMultiplier})`,
    r.trainScale[0] === r.trainScale[1] ? String(r.trainScale[0]) : `[${r.trainScale[0]};${r.trainScale[1]}]`,
    x.scales.join(','), NAMES[x.protocol], (100 * x.top1Error).toFixed(2), (100 * x.top5Error).toFixed(2),
  ]));
  const head = ['ConvNet config', 'train (S)', 'test (Q)', 'protocol', 'top-1 val. error (%)', 'top-5 val. error (%)'];
  const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => (r[c] ?? '').length)));
  const line = (r: string[]) => `| ${r.map((x, c) => x.padEnd(widths[c] ?? 0)).join(' | ')} |`;
  return [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n');
}
