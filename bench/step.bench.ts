/**
 * bench:step — median training-step time of the tiny VGG-A (channels
 * 8,M,16,M,32,32,M,64,64,M,64,64,M; FC 256-256-10; 32x32; batch 32) on stock
 * cpu, on cpu with our kernels and on wasm with our kernels, and a forward
 * pass of full VGG-16 at batch 1 on wasm. Last line: one JSON object.
 *
 *   npm run bench:step [-- --stock-steps 3 --steps 20]
 */
import * as tf from '@tensorflow/tfjs';
import { parseArgs } from 'node:util';
import { switchBackend } from '../worker/backend.ts';
import { buildVgg, disposeVgg } from '../worker/model/vgg-model.ts';
import { computeGradients } from '../worker/train/gradient-step.ts';
import { MomentumSgd } from '../worker/train/momentum-sgd.ts';
import { resolveModelConfig, TINY_VGG_A } from '../shared/vgg-configs.ts';
import { Rng } from '../shared/rng.ts';

const { values } = parseArgs({ options: { 'stock-steps': { type: 'string', default: '3' }, steps: { type: 'string', default: '20' } } });
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function stepTimes(backend: 'cpu' | 'wasm', stock: boolean, steps: number): Promise<number> {
  await switchBackend(backend, stock);
  const vgg = buildVgg(TINY_VGG_A);
  const sgd = new MomentumSgd(vgg.layout);
  const rng = new Rng(1);
  const images = Float32Array.from({ length: 32 * 32 * 32 * 3 }, () => rng.normal());
  const labels = Int32Array.from({ length: 32 }, (_, i) => i % 10);
  const times: number[] = [];
  for (let i = 0; i < steps + 1; i += 1) {
    const t0 = performance.now();
    const r = computeGradients(vgg, images, labels);
    sgd.apply(vgg, r.grads);
    tf.dispose([...r.grads.values()]);
    (vgg.variables.get('fc8/bias')?.read().dataSync());
    if (i > 0) times.push(performance.now() - t0);
  }
  sgd.dispose();
  disposeVgg(vgg);
  return median(times);
}

const stockCpuMs = await stepTimes('cpu', true, Number(values['stock-steps']));
console.log(`tiny VGG-A step, stock cpu:     ${stockCpuMs.toFixed(1)} ms`);
const oursCpuMs = await stepTimes('cpu', false, Number(values.steps));
console.log(`tiny VGG-A step, our cpu:       ${oursCpuMs.toFixed(1)} ms`);
const oursWasmMs = await stepTimes('wasm', false, Number(values.steps));
console.log(`tiny VGG-A step, our wasm:      ${oursWasmMs.toFixed(1)} ms`);

await switchBackend('wasm');
const vgg16 = buildVgg(resolveModelConfig({ config: 'D' }));
const forward: number[] = [];
for (let i = 0; i < 4; i += 1) {
  const t0 = performance.now();
  tf.tidy(() => (vgg16.model.predict(tf.zeros([1, 224, 224, 3])) as tf.Tensor).dataSync());
  if (i > 0) forward.push(performance.now() - t0);
}
disposeVgg(vgg16);
const vgg16ForwardMs = median(forward);
console.log(`VGG-16 forward, batch 1, wasm:  ${vgg16ForwardMs.toFixed(1)} ms`);
console.log(`speed-up of our wasm over stock cpu: ${(stockCpuMs / oursWasmMs).toFixed(1)}x (target >= 100x)`);
console.log(JSON.stringify({
  bench: 'step', model: 'tiny VGG-A', batch: 32, stockCpuMs, oursCpuMs, oursWasmMs,
  speedupWasmVsStockCpu: stockCpuMs / oursWasmMs, vgg16ForwardBatch1WasmMs: vgg16ForwardMs,
}));
