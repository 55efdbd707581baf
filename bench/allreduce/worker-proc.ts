/**
 * bench:allreduce and bench:scaling helper: one worker process, with the worker's own
 * transport (a thread owning the sockets, worker/transport.ts). Joins each step with a
 * 138,357,544-float gradient, streams it, waits for the new weights; prints
 * the time of each weights arrival (ms, performance.now()) as one JSON line.
 * `--compute-ms C`: a GPU's compute time per step, simulated by waiting (a GPU leaves the
 * CPU free for communication). `--overlap`: the classifier's gradients (fc6-fc8) go out
 * when a real backward pass would have them, (1 - WINDOW_FRACTION) C into the step, and the
 * conv body's at C, as the worker does (docs/measurements/h200-vgg16-overlap.json).
 * `--host-shard i/K`: this worker also hosts aggregator shard i of K (on its transport thread).
 */
import { createLogger } from '../../shared/logger.ts';
import { buildLayout, modelHash } from '../../shared/param-layout.ts';
import { parseShard } from '../../shared/shard.ts';
import { DEFAULT_MODEL_CONFIG } from '../../shared/vgg-configs.ts';
import { Transport } from '../../worker/transport.ts';
import { WINDOW_FRACTION, peakRssBytes } from './cluster.ts';

const arg = (name: string) => process.argv[process.argv.indexOf(name) + 1] ?? '';
const steps = Number(arg('--steps'));
const id = arg('--id');
const computeMs = process.argv.includes('--compute-ms') ? Number(arg('--compute-ms')) : 0;
const overlap = process.argv.includes('--overlap');
const log = createLogger();
log.level = 'warn';
const layout = buildLayout(DEFAULT_MODEL_CONFIG);
const hostShard = process.argv.includes('--host-shard') ? { shard: parseShard('--host-shard', arg('--host-shard')), host: '127.0.0.1', port: 0 } : undefined;
const client = new Transport({ client: { url: arg('--url'), token: 'bench', workerId: id, host: 'bench', gpu: null, backend: 'none' }, log, hostShard });
await client.connect();
await client.ready(modelHash(DEFAULT_MODEL_CONFIG));
// Wait for every worker to be connected (cluster.ts answers "go" on stdin).
process.stdout.write(`${JSON.stringify({ ready: true, id })}\n`);
await new Promise<void>((resolve) => {
  process.stdin.on('data', (d: Buffer) => { if (d.toString().includes('go')) { process.stdin.destroy(); resolve(); } });
});
const floats = Number(arg('--floats')) || layout.totalSize;
client.allocateGradient(floats).fill(1e-3);
const at = floats === layout.totalSize ? layout.byName.get('fc6/kernel')?.offset ?? 0 : 0;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const arrivals: number[] = [];
for (let step = 0; step < steps; step += 1) {
  const joined = client.next<{ t: string }>(['reply']);
  client.send({ t: 'join', step, jobId: `w${id}-s${step}`, lockToken: 'x' });
  if ((await joined).value.t !== 'joined') throw new Error(`join of step ${step} refused: ${JSON.stringify((await joined).value)}`);
  const next = client.next(['weights'], (_n, s) => (s as number) === step + 1);
  const stats = { samples: 1, loss: 0, top1: 0, top5: 0, skipped: 0 };
  if (overlap && computeMs > 0) {
    await sleep(computeMs * (1 - WINDOW_FRACTION));
    await client.sendGradient(step, `w${id}-s${step}`, [step], stats, { at, body: sleep(computeMs * WINDOW_FRACTION) });
  } else {
    if (computeMs > 0) await sleep(computeMs);
    await client.sendGradient(step, `w${id}-s${step}`, [step], stats);
  }
  await next;
  arrivals.push(performance.now());
}
// Peak RSS (VmHWM) of the whole process: with --host-shard it holds the shard's weights, momentum and sum.
process.stdout.write(`${JSON.stringify({ id, arrivals, peakRssBytes: peakRssBytes() })}\n`);
await client.close();
