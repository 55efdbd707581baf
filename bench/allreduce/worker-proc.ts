/**
 * bench:allreduce and bench:scaling helper: one worker process, with the worker's own
 * transport (a thread owning the sockets, worker/transport.ts). Joins each step with a
 * 138,357,544-float gradient, streams it, waits for the new weights; prints
 * the time of each weights arrival (ms, performance.now()) and the process's CPU time and minor page faults then as one JSON line.
 * `--compute-ms C`: a GPU's compute time per step, simulated by waiting (a GPU leaves the
 * CPU free for communication). `--overlap`: the classifier's gradients (fc6-fc8) go out
 * when a real backward pass would have them, (1 - WINDOW_FRACTION) C into the step, and the
 * conv body's at C, as the worker does (docs/measurements/h200-vgg16-overlap.json).
 * `--host-shard i/K`: this worker also hosts aggregator shard i of K (on its transport thread).
 * `--host-copies`: also the host-side copies a tfjs-node worker makes each step (host-copies.ts): the
 * weights read per tensor once they arrive, the gradients copied per tensor when the compute has them;
 * their times (on this thread) go into the output. With `--overlap` the classifier's come out before the
 * body's backward starts, as with tfjs-node: the backward pass runs on the worker's main thread, which
 * dispatches the body's ops only once the classifier's gradients are out (dataSync blocks it), so the
 * GPU waits for those copies. `--copy-out main`: each gradient tensor's copy into the shared gradient on
 * this thread too (the worker before the eleventh session); default: on the transport thread
 * (Transport.putGradient for tensors of 1 MB or more, as the worker does now).
 */
import { createLogger } from '../../shared/logger.ts';
import { buildLayout, modelHash } from '../../shared/param-layout.ts';
import { parseShard } from '../../shared/shard.ts';
import { DEFAULT_MODEL_CONFIG } from '../../shared/vgg-configs.ts';
import { reuseFreedMemory } from '../../worker/host-memory.ts';
import { Transport } from '../../worker/transport.ts';
import { WARMUP_STEPS, WINDOW_FRACTION, median, peakRssBytes, processStat } from './cluster.ts';
import { copyGradientsOut, copyWeightsIn } from './host-copies.ts';

const arg = (name: string) => process.argv[process.argv.indexOf(name) + 1] ?? '';
const steps = Number(arg('--steps'));
const id = arg('--id');
const computeMs = process.argv.includes('--compute-ms') ? Number(arg('--compute-ms')) : 0;
const overlap = process.argv.includes('--overlap');
const hostCopies = process.argv.includes('--host-copies');
const copyOutHere = arg('--copy-out') === 'main';
const log = createLogger();
log.level = 'warn';
// As the worker does (worker/job-loop.ts); VGG_HEAP_REUSE=false for the comparison.
reuseFreedMemory();
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
const flat = client.allocateGradient(floats).fill(1e-3);
const at = floats === layout.totalSize ? layout.byName.get('fc6/kernel')?.offset ?? 0 : 0;
// The host copies go per tensor of the VGG-16 layout (or one range when --floats says another size).
const entries = floats === layout.totalSize ? layout.entries : [{ ...(layout.entries[0] as (typeof layout.entries)[number]), name: 'all', offset: 0, size: floats, shape: [floats] }];
const inHead = (e: (typeof entries)[number]) => at > 0 && e.offset >= at;
const head = entries.filter(inHead);
const body = entries.filter((e) => !inHead(e));
const device = hostCopies ? new Float32Array(floats).fill(1e-3) : new Float32Array(0);
const put = copyOutHere ? (offset: number, values: Float32Array) => flat.set(values, offset) : (offset: number, values: Float32Array) => client.putGradient(offset, values);
const weightsMs: number[] = [];
const gradientsMs: number[] = [];
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const arrivals: number[] = [];
/** This process's CPU time (all threads, ms) and minor page faults at each arrival. */
const cpuMs: number[] = [];
const minorFaults: number[] = [];
let transportBusy = NaN;
for (let step = 0; step < steps; step += 1) {
  const joined = client.next<{ t: string }>(['reply']);
  client.send({ t: 'join', step, jobId: `w${id}-s${step}`, lockToken: 'x' });
  if ((await joined).value.t !== 'joined') throw new Error(`join of step ${step} refused: ${JSON.stringify((await joined).value)}`);
  const next = client.next(['weights'], (_n, s) => (s as number) === step + 1);
  const stats = { samples: 1, loss: 0, top1: 0, top5: 0, skipped: 0 };
  if (overlap && computeMs > 0) {
    await sleep(computeMs * (1 - WINDOW_FRACTION));
    // The classifier's gradients out first; only then is the body's backward dispatched (the GPU waits).
    const headMs = hostCopies ? copyGradientsOut(head, device, put) : 0;
    const bodyDone = sleep(computeMs * WINDOW_FRACTION);
    await client.sendGradient(step, `w${id}-s${step}`, [step], stats, { at, body: bodyDone.then(() => { if (hostCopies) gradientsMs.push(headMs + copyGradientsOut(body, device, put)); }) });
  } else {
    if (computeMs > 0) await sleep(computeMs);
    if (hostCopies) gradientsMs.push(copyGradientsOut(entries, device, put));
    await client.sendGradient(step, `w${id}-s${step}`, [step], stats);
  }
  await next;
  arrivals.push(performance.now());
  const cpu = process.cpuUsage();
  cpuMs.push((cpu.user + cpu.system) / 1000);
  minorFaults.push(processStat().minorFaults);
  // The transport thread's busy share over the timed steps (from the last untimed step's arrival on).
  if (step === WARMUP_STEPS - 1) client.busyRatio();
  if (step === steps - 1) transportBusy = client.busyRatio();
  // For the harness's CPU accounting (cluster.ts): it reads the aggregator processes' CPU time when all workers have a step.
  process.stdout.write(`${JSON.stringify({ arrived: step })}\n`);
  // The next step's model: the new weights into the framework (part of the next step's interval).
  if (hostCopies) {
    weightsMs.push(copyWeightsIn(entries, (lo, hi) => client.view(lo, hi)).ms);
    client.modelWritten();
  }
}
// Peak RSS (VmHWM) of the whole process: with --host-shard it holds the shard's weights, momentum and sum.
process.stdout.write(`${JSON.stringify({ id, arrivals, cpuMs, minorFaults, transportBusy, peakRssBytes: peakRssBytes(), ...(hostCopies ? { hostCopyMs: { weights: median(weightsMs), gradients: median(gradientsMs) } } : {}) })}\n`);
await client.close();
