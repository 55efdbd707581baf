import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import * as tf from '@tensorflow/tfjs';
import { Worker as BullWorker, type Job } from 'bullmq';
import type { RunInfo } from '../coordinator/coordinator.ts';
import type { RunState, WorkerHeartbeat } from '../coordinator/run-state.ts';
import { Backoff, sleep } from '../shared/backoff.ts';
import type { Logger } from '../shared/logger.ts';
import { createMetrics, serveMetrics } from '../shared/metrics.ts';
import { ErrorFeedback } from '../shared/half.ts';
import { modelHash } from '../shared/param-layout.ts';
import { connectRedis } from '../shared/redis-connection.ts';
import { runKeys, type EvalJobData, type EvalJobResult, type TrainJobData } from '../shared/redis-keys.ts';
import { ProtocolError, type BatchStats } from '../shared/wire-protocol.ts';
import { ConnectionLost, type GradientSplit } from './aggregator-client.ts';
import { PUT_MIN_FLOATS, Transport, type TransportInit } from './transport.ts';
import { selectBackend, type BackendChoice } from './backend.ts';
import { loadBatch, type BatchItem, type LoadedBatch } from './data/image-pipeline.ts';
import { indexDataset } from '../coordinator/dataset-index.ts';
import { buildVgg, writeFlat, type VggModel } from './model/vgg-model.ts';
import { reuseFreedMemory } from './host-memory.ts';
import { computeGradients, evaluateBatch } from './train/gradient-step.ts';

export interface WorkerOptions {
  coordinator: string;
  token: string;
  gpu: number | null;
  backend?: BackendChoice;
  /** Override the dataset root the coordinator announces (a different mount on this node). */
  data?: string;
  /** Override the Redis URL the coordinator announces. */
  redis?: string;
  workerId?: string;
  log: Logger;
  /** Serve /metrics and /healthz here (loopback unless told otherwise). */
  metrics?: { host: string; port: number };
  /**
   * Send the classifier's gradients while the conv body's backward runs. `auto`: when the
   * model computes on a GPU (tfjs-node-gpu), where the CPU is free to send; on a CPU backend
   * the cores are busy computing and the early bytes only compete with it. @defaultValue 'auto'
   */
  overlap?: OverlapChoice;
  /**
   * Host aggregator shard i of K on the transport thread (`--host-shard i/K`, coordinator started
   * with `--shards K --hosted-shards true`): its bytes never cross a socket for this worker. After
   * stop() the worker leaves the steps but serves the shard until the run ends.
   */
  hostShard?: TransportInit['hostShard'];
}

export const OVERLAP_CHOICES = ['auto', 'on', 'off'] as const;
export type OverlapChoice = (typeof OVERLAP_CHOICES)[number];

/** Why a train job was given up. */
class JobAbandoned extends Error {}
/** The wait after a refused job, doubling with each refusal in a row up to the max (a stop cuts it short). */
const REFUSAL_BACKOFF_MS = 100;
const REFUSAL_BACKOFF_MAX_MS = 3200;

/**
 * One worker process: connect, build the model the run names, then loop:
 * take a job, join the step, load and augment, compute the gradient, stream
 * it, wait for the new weights, acknowledge. Returns when the run finishes or
 * on stop() (SIGTERM): a job in flight is finished first.
 */
export async function runWorker(o: WorkerOptions): Promise<{ jobs: number; stop: () => void; done: Promise<void> }> {
  const workerId = o.workerId ?? `${hostname()}-${process.pid}-${randomUUID().slice(0, 6)}`;
  // Every line of this worker carries its id and GPU.
  const log = o.log.child({ workerId, gpu: o.gpu });
  // Every step copies the weights into the framework and the gradients out of it (VGG-16: 553 MB each
  // way, in blocks of up to 411 MB): glibc keeps the freed blocks mapped for the next step instead of
  // faulting fresh pages in each time (worker/host-memory.ts; bench:scaling --host-copies measures it).
  const heap = reuseFreedMemory();
  log.info(heap, heap.applied ? 'freed host memory kept mapped for reuse' : 'malloc left as it is');
  const backend = await selectBackend({ backend: o.backend, gpu: o.gpu ?? undefined, log });
  const metrics = o.metrics === undefined ? undefined : createMetrics({ role: 'worker', worker_id: workerId, gpu: String(o.gpu ?? '') });
  // The sockets live on a transport thread: gradients stream while this thread computes.
  const client = new Transport({ client: { url: o.coordinator, token: o.token, workerId, host: hostname(), gpu: o.gpu, backend: backend.name }, log, metrics, hostShard: o.hostShard });
  const metricsServer = metrics === undefined || o.metrics === undefined ? undefined
    : await serveMetrics(metrics, { ...o.metrics, healthy: () => client.connected, log });
  await client.connect();
  const run = client.run as unknown as RunInfo;
  const root = o.data ?? run.data;
  const index = await indexDataset(root);
  const vgg: VggModel = buildVgg(run.model);
  const hash = modelHash(run.model, vgg.layout);
  let modelStep = -1;
  const ready = () => client.ready(hash);
  await ready();
  const syncModel = async (step: number) => {
    await client.waitForWeights(step);
    if (modelStep !== client.weightsStep) {
      const t = performance.now();
      // Views of the received weights, no copy (the backend copies them, or keeps them as the tensors'
      // storage until modelWritten() lets the next version be received into a newer buffer).
      writeFlat(vgg, (start, end) => client.view(start, end));
      client.modelWritten();
      metrics?.hostCopySeconds.observe({ direction: 'weights_in' }, (performance.now() - t) / 1000);
      modelStep = client.weightsStep;
    }
  };

  const keys = runKeys(run.run);
  const redis = connectRedis(o.redis ?? run.redis);
  const connections = [redis];
  const bull = (name: string) => {
    const connection = connectRedis(o.redis ?? run.redis);
    connections.push(connection);
    const w = new BullWorker(name, null, { connection, lockDuration: run.lockDurationMs, drainDelay: 1 });
    w.on('error', (err) => log.warn({ err: err.message }, 'queue error'));
    return w;
  };
  const trainW = bull(keys.trainQueue);
  const evalW = bull(keys.evalQueue);
  const flat = client.allocateGradient(vgg.layout.totalSize);
  // The classifier (fc6-fc8, the end of the layout; 89% of VGG-16's floats): its gradients are final
  // first in the backward pass and go on the wire while the conv body's are being computed.
  const head = vgg.layout.entries.slice(vgg.layout.entries.findIndex((e) => e.layer === 'fc6'));
  const headAt = head[0]?.offset ?? 0;
  const headNames = new Set(head.map((e) => e.name));
  const overlap = o.overlap === 'on' || ((o.overlap ?? 'auto') === 'auto' && backend.detail === '@tensorflow/tfjs-node-gpu');
  const wire = run.wire ?? 'fp32';
  const feedback = run.errorFeedback === true && wire !== 'fp32' ? new ErrorFeedback(wire, flat.length) : undefined;
  // tfjs-node's and wasm's dataSync of an op's output is a fresh array: the transport thread copies it into
  // the gradient while this thread goes on (with tfjs-node: dispatching the conv body's backward, which the
  // GPU otherwise waits for). The cpu backend's array is the tensor's storage, copied here; so is every
  // array with error feedback, which compensates the gradient on this thread (and putGradient copies the
  // ones under 1 MB here itself).
  const offThread = (backend.name === 'tensorflow' || backend.name === 'wasm') && feedback === undefined;
  log.info({ overlap, backend: backend.detail, gradientCopies: offThread ? `transport thread (tensors of ${(PUT_MIN_FLOATS * 4) / 2 ** 20} MB or more)` : 'this thread' },
    overlap ? 'classifier gradients go out during the backward pass' : 'gradients go out after the backward pass');
  const copyOut = (offset: number, g: tf.Tensor) => {
    const values = g.dataSync() as Float32Array;
    if (offThread) client.putGradient(offset, values);
    else flat.set(values, offset);
  };
  let jobs = 0;
  let faultsSeen = process.resourceUsage().minorPageFault;
  let stopping = false;
  /** Aborted by stop(): cuts a refusal's wait short. */
  const stopped = new AbortController();
  let rate: number | null = null;

  const beat = async () => {
    const hb: WorkerHeartbeat = {
      workerId, host: hostname(), gpu: o.gpu, backend: backend.name, pid: process.pid, step: client.weightsStep, jobs,
      imagesPerSec: rate, lastHeartbeat: new Date().toISOString(),
    };
    await redis.hset(keys.workers, workerId, JSON.stringify(hb)).catch(() => {});
  };
  const heartbeat = setInterval(() => { void beat(); }, 2000);

  const holdLock = (job: Job, token: string) => setInterval(() => {
    void job.extendLock(token, run.lockDurationMs).catch((err: Error) => log.warn({ jobId: job.id, err: err.message }, 'lock extension failed'));
  }, Math.max(200, run.lockDurationMs / 3));

  const items = (ids: number[], split: 'train' | 'val'): BatchItem[] =>
    ids.map((id) => ({ id, path: index[split][id]?.path ?? '', label: index[split][id]?.label ?? 0 }));

  const trainBatch = (job: Job<TrainJobData>) => loadBatch(root, items(job.data.sampleIds, 'train'), run.augment, { kind: 'train', seed: run.seed, epoch: job.data.epoch });

  /**
   * The next train job, taken while this step's gradient is on the wire and its images
   * decoded meanwhile (sharp decodes on libvips threads): the next step starts with its batch
   * ready. Augmentation depends on (seed, epoch, sample) only, so results do not change.
   */
  let prefetched: { job: Job<TrainJobData>; token: string; lock: NodeJS.Timeout; batch: Promise<LoadedBatch> } | undefined;
  let prefetching: Promise<void> = Promise.resolve();
  const prefetch = () => {
    prefetching = (async () => {
      if (prefetched !== undefined || stopping) return;
      const token = randomUUID();
      const job = await trainW.getNextJob(token, { block: false }).catch(() => undefined) as Job<TrainJobData> | undefined;
      if (job === undefined) return;
      const batch = trainBatch(job);
      batch.catch(() => {}); // seen when the job runs
      prefetched = { job, token, lock: holdLock(job, token), batch };
    })();
  };
  const releasePrefetched = async () => {
    const p = prefetched;
    prefetched = undefined;
    if (p === undefined) return;
    clearInterval(p.lock);
    await p.job.moveToWait(p.token).catch(() => {});
  };

  const trainJob = async (job: Job<TrainJobData>, token: string, loaded?: Promise<LoadedBatch>) => {
    const jobId = job.id as string;
    if ((await redis.hexists(keys.applied(job.data.epoch), jobId)) === 1) {
      await job.moveToCompleted({ skipped: 'already applied' }, token, false);
      return;
    }
    // Join the step of our newest weights; a stale answer means newer weights are coming.
    for (;;) {
      const step = client.weightsStep;
      const reply = client.next<{ t: string; step?: number; code?: string }>(['reply']);
      // A send refused at once (the link just dropped: ConnectionLost) leaves `reply` unawaited, and its own
      // rejection at the drop would be unhandled and end the process: the send's error is the one that counts.
      reply.catch(() => {});
      client.send({ t: 'join', step, jobId, lockToken: token });
      const { value } = await reply;
      if (value.t === 'joined') break;
      // (During a commit the aggregator still answers with the step being committed: wait for the next.)
      if (value.t === 'stale') { await client.waitForWeights(Math.max(value.step ?? 0, step + 1)); continue; }
      log.warn({ jobId, reply: value }, 'join refused; job given up');
      throw new JobAbandoned();
    }
    const step = client.weightsStep;
    await syncModel(step);
    const t0 = performance.now();
    const batch = await (loaded ?? trainBatch(job));
    for (const s of batch.skipped) log.warn({ path: s.path, error: s.error }, 'image skipped');
    const statsOf = (f: { samples: number; loss: number; top1: number; top5: number }): BatchStats =>
      ({ samples: f.samples, loss: f.loss, top1: f.top1, top5: f.top5, skipped: batch.skipped.length });
    // The forward pass's figures (an early send carries them), then the finished pass's (the same values).
    let stats = statsOf({ samples: 0, loss: 0, top1: 0, top5: 0 });
    // One try at sending the gradient: the outcome (new weights, a resend, a refusal) and the send itself.
    const attempt = (split?: GradientSplit) => {
      const outcome = client.next(['weights', 'resend', 'reply'],
        (name, v) => name === 'resend' || (name === 'weights' && (v as number) > step) || (name === 'reply' && (v as { t?: string }).t === 'error'));
      const sending = client.sendGradient(step, jobId, batch.ids, stats, split);
      outcome.catch(() => {});
      sending.catch(() => {});
      return { outcome, sending };
    };
    let current: ReturnType<typeof attempt> | undefined;
    let releaseBody!: () => void;
    let failBody!: (e: Error) => void;
    const body = new Promise<void>((resolve, reject) => { releaseBody = resolve; failBody = reject; });
    body.catch(() => {});
    let early = 0;
    let copyMs = 0;
    let r: ReturnType<typeof computeGradients>;
    try {
      r = computeGradients(vgg, batch.images, batch.labels, !overlap ? undefined : {
        names: headNames,
        forward: (f) => { stats = statsOf(f); },
        ready: (name, g) => {
          const e = vgg.layout.byName.get(name);
          if (e === undefined) return;
          const t = performance.now();
          copyOut(e.offset, g);
          copyMs += performance.now() - t;
          early += 1;
          if (early !== headNames.size || !client.connected) return;
          // Once per gradient (a resend of this step carries the same, already compensated, values).
          feedback?.compensate(flat, headAt, flat.length);
          current = attempt({ at: headAt, body });
        },
      });
    } catch (err) {
      failBody(err as Error);
      throw err;
    }
    const t1 = performance.now();
    for (const e of vgg.layout.entries) {
      if (current !== undefined && headNames.has(e.name)) continue;
      const g = e.trainable ? r.grads.get(e.name) : undefined;
      // A statistic's current value (BN moving means) may be the model's view of the received weights: copied here.
      const value = e.trainable ? undefined : vgg.variables.get(e.name)?.read();
      if (g !== undefined) copyOut(e.offset, g);
      else if (value !== undefined) flat.set(value.dataSync() as Float32Array, e.offset);
      else flat.fill(0, e.offset, e.offset + e.size);
    }
    copyMs += performance.now() - t1;
    tf.dispose([...r.grads.values()]);
    stats = statsOf(r);
    feedback?.compensate(flat, 0, current === undefined ? flat.length : headAt);
    releaseBody();
    prefetch();
    // Send (the classifier is on its way already), and again whenever a lost member aborts the step, until the new weights arrive.
    current ??= attempt();
    for (;;) {
      await current.sending;
      const { name, value } = await current.outcome;
      if (name === 'weights') break;
      if (name === 'reply') {
        log.warn({ jobId, reply: value }, 'gradient refused; job given up');
        throw new JobAbandoned();
      }
      current = attempt();
    }
    const t2 = performance.now();
    rate = (r.samples * 1000) / (t2 - t0);
    jobs += 1;
    if (metrics !== undefined) {
      metrics.hostCopySeconds.observe({ direction: 'gradients_out' }, copyMs / 1000);
      const faults = process.resourceUsage().minorPageFault;
      metrics.minorPageFaults.inc(Math.max(0, faults - faultsSeen));
      faultsSeen = faults;
      metrics.computeSeconds.observe((t1 - t0) / 1000);
      metrics.communicationSeconds.observe((t2 - t1) / 1000);
      metrics.stepSeconds.observe((t2 - t0) / 1000);
      metrics.transportBusy.set(client.busyRatio());
      metrics.steps.inc();
      metrics.step.set(client.weightsStep);
      metrics.images.inc(r.samples);
      metrics.imagesPerSecond.set(rate);
      metrics.loss.set(r.loss);
      metrics.learningRate.set(client.learningRate);
      metrics.epoch.set(job.data.epoch);
      metrics.skippedImages.inc(batch.skipped.length);
    }
    await job.moveToCompleted({ step: step + 1, samples: r.samples }, token, false).catch((err: Error) => log.warn({ jobId, err: err.message }, 'ack failed (job already released)'));
  };

  const evalJob = async (job: Job<EvalJobData>, token: string) => {
    await syncModel(job.data.step);
    const batch = await loadBatch(root, items(job.data.sampleIds, 'val'), run.augment, { kind: 'eval', q: run.evalQ });
    const r = evaluateBatch(vgg, batch.images, batch.labels);
    const result: EvalJobResult = { samples: r.samples, top1: r.top1, top5: r.top5, lossSum: r.lossSum, skipped: batch.skipped.length };
    await redis.hset(keys.evalResults(job.data.epoch), job.id as string, JSON.stringify(result));
    await job.moveToCompleted(result, token, false);
  };


  const finished = async () => {
    const raw = await redis.hget(keys.state, 'state').catch(() => null);
    return raw !== null && (JSON.parse(raw) as RunState).state === 'finished';
  };

  const loop = async () => {
    let idleSent = -1;
    let failures = 0;
    /** Refusals in a row (JobAbandoned): each waits twice as long as the last before the next job. */
    const refusals = new Backoff(REFUSAL_BACKOFF_MS, REFUSAL_BACKOFF_MAX_MS);
    while (!stopping) {
      try {
        if (!client.connected) {
          await client.connect(async () => stopping || (await finished()));
          await ready();
          idleSent = -1;
          // A job taken before the link dropped may belong to a queue the coordinator has rebuilt since (a
          // --resume obliterates the queue and adds the same job ids again): joined with it, this worker would
          // hold the job in the new run's step while its new copy waits in the queue (another worker then takes
          // it and is refused, again and again, and the ack fails). Back to the queue it goes (a no-op where the
          // lock is gone); the next job is taken afresh.
          await prefetching;
          await releasePrefetched();
        }
        await prefetching;
        const pre = prefetched;
        prefetched = undefined;
        const token = pre?.token ?? randomUUID();
        let job: Job | undefined = pre?.job ?? await trainW.getNextJob(token, { block: false });
        if (job === undefined) {
          if (idleSent !== client.weightsStep) { client.send({ t: 'idle', step: client.weightsStep }); idleSent = client.weightsStep; }
          const ej = await evalW.getNextJob(token, { block: false });
          if (ej !== undefined) { await evalJob(ej as Job<EvalJobData>, token); continue; }
          if (await finished()) break;
          job = await trainW.getNextJob(token, { block: true });
          if (job === undefined) continue;
        }
        idleSent = -1;
        const lock = pre?.lock ?? holdLock(job, token);
        try {
          await trainJob(job as Job<TrainJobData>, token, pre?.batch);
          failures = 0;
          refusals.reset();
        } catch (err) {
          // Return it at once so another worker can take it (the ledger keeps it exactly-once).
          await job.moveToWait(token).catch(() => {});
          // Refused (the job held by another member, say): the same job is likely the next one in the queue;
          // taking it again at once would only be refused again, as fast as Redis and the aggregator answer.
          if (err instanceof JobAbandoned) await sleep(refusals.next(), stopped.signal);
          if (!(err instanceof JobAbandoned || err instanceof ConnectionLost)) {
            // We may be expected in the step or half-way through a gradient: leave the step by
            // dropping the connection (the aggregator then goes on without us), rejoin afresh.
            client.terminate();
            throw err;
          }
        } finally {
          clearInterval(lock);
        }
      } catch (err) {
        if (err instanceof ConnectionLost) {
          if (stopping || (await finished())) break;
          log.warn('aggregator connection lost; reconnecting');
          continue;
        }
        if (err instanceof ProtocolError) throw err;
        failures += 1;
        log.error({ err: (err as Error).message, failures }, 'worker loop error');
        // A broken backend (e.g. the wasm heap exhausted) does not heal: leave, and let the supervisor restart us.
        if (failures >= 3) throw err;
        await sleep(500, stopped.signal);
      }
    }
  };

  const done = loop().finally(async () => {
    clearInterval(heartbeat);
    await prefetching.catch(() => {});
    await releasePrefetched();
    await redis.hdel(keys.workers, workerId).catch(() => {});
    await client.close();
    await Promise.allSettled([trainW.close(), evalW.close()]);
    for (const c of connections) c.disconnect();
    await metricsServer?.close();
    log.info({ jobs }, 'worker left');
  });
  return { get jobs() { return jobs; }, stop: () => { stopping = true; stopped.abort(); }, done };
}
