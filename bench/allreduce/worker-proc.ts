/**
 * bench:allreduce and bench:scaling helper: one worker process. Joins each step with a
 * 138,357,544-float gradient, streams it, waits for the new weights; prints
 * the time of each weights arrival (ms, performance.now()) as one JSON line.
 */
import { createLogger } from '../../shared/logger.ts';
import { modelHash } from '../../shared/param-layout.ts';
import { DEFAULT_MODEL_CONFIG } from '../../shared/vgg-configs.ts';
import { ShardGroup } from '../../worker/shard-group.ts';

const arg = (name: string) => process.argv[process.argv.indexOf(name) + 1] ?? '';
const steps = Number(arg('--steps'));
const id = arg('--id');
// A GPU's compute time per step, simulated by waiting (a GPU leaves the CPU free for communication).
const computeMs = process.argv.includes('--compute-ms') ? Number(arg('--compute-ms')) : 0;
const log = createLogger();
log.level = 'warn';
const client = new ShardGroup({ url: arg('--url'), token: 'bench', workerId: id, host: 'bench', gpu: null, backend: 'none', log });
await client.connect();
await client.ready(modelHash(DEFAULT_MODEL_CONFIG));
const grad = new Float32Array(Number(arg('--floats')) || 138_357_544).fill(1e-3);
const arrivals: number[] = [];
for (let step = 0; step < steps; step += 1) {
  const joined = client.next<{ t: string }>(['reply']);
  client.send({ t: 'join', step, jobId: `w${id}-s${step}`, lockToken: 'x' });
  if ((await joined).value.t !== 'joined') throw new Error(`join of step ${step} refused`);
  if (computeMs > 0) await new Promise((r) => setTimeout(r, computeMs));
  const next = client.next(['weights'], (_n, s) => (s as number) === step + 1);
  await client.sendGradient(step, `w${id}-s${step}`, [step], { samples: 1, loss: 0, top1: 0, top5: 0, skipped: 0 }, grad);
  await next;
  arrivals.push(performance.now());
}
process.stdout.write(`${JSON.stringify({ id, arrivals })}\n`);
client.close();
