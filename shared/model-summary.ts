import { buildLayout, planLayers, modelHash } from './param-layout.ts';
import type { ModelConfig } from './vgg-configs.ts';

export interface LayerRow { name: string; type: string; outputShape: number[]; params: number; trainableParams: number }

export interface ModelSummary {
  config: string;
  batchNorm: boolean;
  inputSize: number;
  numClasses: number;
  widthMultiplier: number;
  fcUnits: number;
  layers: LayerRow[];
  params: number;
  trainableParams: number;
  /** fp32 bytes of the trainable parameters (one gradient on the wire). */
  gradientBytes: number;
  modelHash: string;
}

/** The layer table of `model info`, computed from the plan (no tensors allocated). */
export function summarize(cfg: ModelConfig): ModelSummary {
  const layout = buildLayout(cfg);
  const layers = planLayers(cfg).map((l) => {
    const entries = layout.entries.filter((e) => e.layer === l.name);
    return {
      name: l.name, type: l.type, outputShape: l.outputShape,
      params: entries.reduce((s, e) => s + e.size, 0),
      trainableParams: entries.filter((e) => e.trainable).reduce((s, e) => s + e.size, 0),
    };
  });
  return {
    config: cfg.config, batchNorm: cfg.batchNorm, inputSize: cfg.inputSize, numClasses: cfg.numClasses,
    widthMultiplier: cfg.widthMultiplier, fcUnits: cfg.fcUnits, layers,
    params: layout.totalSize, trainableParams: layout.trainableSize, gradientBytes: layout.trainableSize * 4,
    modelHash: modelHash(cfg, layout),
  };
}

const fmt = (n: number) => n.toLocaleString('en-US');

/** torchinfo-like text table. */
export function formatSummary(s: ModelSummary): string {
  const rows = s.layers.map((l) => [l.name, l.type, `[${l.outputShape.join(', ')}]`, fmt(l.params)]);
  const head = ['Layer', 'Type', 'Output shape', 'Params'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 3 ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0))).join('  ');
  const rule = '-'.repeat(widths.reduce((a, b) => a + b + 2, -2));
  return [
    `VGG config ${s.config}${s.batchNorm ? ' + batch norm' : ''}  input ${s.inputSize}x${s.inputSize}x3  classes ${s.numClasses}`,
    rule, line(head), rule, ...rows.map(line), rule,
    `Total params:         ${fmt(s.params)}`,
    `Trainable params:     ${fmt(s.trainableParams)}`,
    `Non-trainable params: ${fmt(s.params - s.trainableParams)}`,
    `fp32 gradient:        ${(s.gradientBytes / 1e6).toFixed(1)} MB`,
    `Model hash:           ${s.modelHash}`,
  ].join('\n');
}
