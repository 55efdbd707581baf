/**
 * bench:allreduce helper: our aggregator alone in a process (`--wire fp32|bf16|fp16`), on the VGG-16
 * layout (138,357,544 trainable floats). Prints {"port"} when listening and,
 * after `--steps` commits, {"peakRssBytes"} (VmHWM), and exits once the workers hung up.
 */
import { readFileSync } from 'node:fs';
import { Aggregator } from '../../coordinator/aggregator.ts';
import { FlatMomentumSgd } from '../../shared/flat-sgd.ts';
import type { WireFormat } from '../../shared/half.ts';
import { createLogger } from '../../shared/logger.ts';
import { buildLayout } from '../../shared/param-layout.ts';
import { DEFAULT_MODEL_CONFIG } from '../../shared/vgg-configs.ts';

const steps = Number(process.argv[process.argv.indexOf('--steps') + 1]);
const wire = (process.argv.includes('--wire') ? process.argv[process.argv.indexOf('--wire') + 1] : 'fp32') as WireFormat;
const log = createLogger();
log.level = 'warn';
const layout = buildLayout(DEFAULT_MODEL_CONFIG);
const weights = new Float32Array(layout.totalSize).fill(0.01);
const agg = new Aggregator({
  host: '127.0.0.1', port: 0, token: 'bench', modelHash: 'bench', weights, step: 0, runInfo: { run: 'bench', wire }, wire,
  sgd: new FlatMomentumSgd(layout, { learningRate: 0.01, momentum: 0.9, weightDecay: 5e-4 }),
  jobStatus: () => 'pending', onMemberLost: () => {}, log,
  onCommit: async (step) => {
    if (step < steps) return;
    const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    process.stdout.write(`${JSON.stringify({ peakRssBytes: Number(hwm?.[1] ?? 0) * 1024, floats: layout.totalSize })}\n`);
    // The last weights are still being written: leave once every worker has them and hung up.
    const leave = setInterval(() => {
      if (agg.members.size > 0) return;
      clearInterval(leave);
      void agg.close().then(() => process.exit(0));
    }, 50);
  },
});
process.stdout.write(`${JSON.stringify({ port: await agg.start(), floats: layout.totalSize })}\n`);
