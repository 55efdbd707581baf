import { hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import * as tf from '@tensorflow/tfjs';
import { Job, Queue, Worker as BullWorker } from 'bullmq';
import type { Redis } from 'ioredis';
import { CheckpointError } from '../shared/errors.ts';
import { FlatMomentumSgd } from '../shared/flat-sgd.ts';
import type { Logger } from '../shared/logger.ts';
import { initialPlateau, stepPlateau, type PlateauState } from '../shared/lr-schedule.ts';
import { modelHash } from '../shared/param-layout.ts';
import { connectRedis } from '../shared/redis-connection.ts';
import { subsetIds } from '../shared/subset.ts';
import type { WireFormat } from '../shared/half.ts';
import { busyMeter, createMetrics, serveMetrics } from '../shared/metrics.ts';
import { evalJobId, runKeys, trainJobId, type EvalJobData, type EvalJobResult, type LedgerEntry, type RunMeta, type SeriesPoint } from '../shared/redis-keys.ts';
import { resolveModelConfig, type ModelConfig } from '../shared/vgg-configs.ts';
import { estimateRgbStats, type AugmentOptions } from '../worker/data/image-pipeline.ts';
import { initFromCheckpoint, warmStartFromCheckpoint } from '../worker/model/warm-start.ts';
import { buildVgg, disposeVgg, readFlat } from '../worker/model/vgg-model.ts';
import { checkedWeights, loadCheckpoint, modelTopology, saveCheckpoint } from '../worker/train/checkpoint.ts';
import { aggregatorArenaFloats, tryArena } from '../shared/simd.ts';
import { Aggregator, type Contribution, type Member } from './aggregator.ts';
import { ShardLeader } from './shard-leader.ts';
import { indexDataset } from './dataset-index.ts';
import { ensureDefaultDataset } from './default-dataset.ts';
import { planEpoch, trainJobs, type EpochPlan } from './epoch-plan.ts';
import type { RunConfig } from './run-config.ts';
import type { RunState } from './run-state.ts';

export interface EpochSummary { epoch: number; step: number; trainLoss: number | null; valTop1: number; valTop5: number; valLoss: number; lr: number; seconds: number }
export interface RunSummary { run: string; epochs: number; steps: number; valTop1: number; valTop5: number; wallSeconds: number; history: EpochSummary[]; skippedImages: number }

export interface CoordinatorHandle {
  port: number;
  aggregator: Aggregator;
  /** Resolves when the last epoch is validated and checkpointed. */
  done: Promise<RunSummary>;
  stop(): Promise<void>;
}

/** The run info every worker receives in `welcome`. */
export interface RunInfo { run: string; redis: string; data: string; model: ModelConfig; augment: AugmentOptions; seed: number; evalQ: number; lockDurationMs: number; heartbeatTimeoutMs: number; wire: WireFormat; errorFeedback: boolean }

/**
 * The coordinator of one run: indexes the data, holds the master weights in
 * its embedded aggregator, puts one BullMQ job per worker-step batch on the
 * train queue, validates through eval jobs at each epoch end, steps the
 * learning rate on plateau, checkpoints, and publishes state for `status`.
 */
export async function startCoordinator(cfg: RunConfig, log: Logger): Promise<CoordinatorHandle> {
  const started = Date.now();
  /** This thread's (the aggregator's) busy share since the last commit (vgg_transport_busy_ratio). */
  const aggregatorBusy = busyMeter(performance.eventLoopUtilization.bind(performance));
  tf.enableProdMode();
  await tf.setBackend('cpu');
  const data = cfg.data !== '' ? cfg.data : (await ensureDefaultDataset(log)).root;
  const index = await indexDataset(data, { onProgress: (d, t) => { if (d === t) log.info({ classes: t }, 'dataset indexed'); } });
  const model = resolveModelConfig({
    config: cfg.config, batchNorm: cfg.batchNorm, numClasses: cfg.numClasses || index.classes.length, inputSize: cfg.inputSize,
    widthMultiplier: cfg.width, fcUnits: cfg.fcUnits, dropout: cfg.dropout,
  });
  const trainIds = subsetIds(index.train.length, cfg.trainLimit);
  const valIds = subsetIds(index.val.length, cfg.valLimit);
  const trainCount = trainIds.length;
  const valCount = valIds.length;
  const stats = await estimateRgbStats(index.root, trainIds.map((id) => index.train[id]?.path ?? ''));
  const augment: AugmentOptions = {
    inputSize: model.inputSize, sMin: cfg.scale[0], sMax: cfg.scale[1], flip: true, pcaStd: 0.1,
    meanRgb: stats.meanRgb, stdRgb: cfg.normalize === 'mean-std' ? stats.stdRgb : [1, 1, 1],
  };
  const vgg = buildVgg(model, { init: cfg.init, seed: cfg.seed });
  // A resumed run's own checkpoint overrides these below.
  if (cfg.initFrom !== '') await initFromCheckpoint(vgg, cfg.initFrom, log);
  if (cfg.warmStart !== '') await warmStartFromCheckpoint(vgg, cfg.warmStart, log);
  const layout = vgg.layout;
  const hash = modelHash(model, layout);
  const topology = modelTopology(vgg);
  // Master weights, momentum and the aggregator's sum in one FloatArena: the reduce and SGD loops run as SIMD.
  const arena = tryArena(aggregatorArenaFloats(layout.totalSize));
  const weights = readFlat(vgg, arena?.alloc(layout.totalSize));
  disposeVgg(vgg);

  const keys = runKeys(cfg.run);
  const redis = connectRedis(cfg.redis);
  const metrics = cfg.metricsPort > 0 ? createMetrics({ role: 'coordinator', run: cfg.run }) : undefined;
  const trainQueue = new Queue(keys.trainQueue, { connection: redis });
  const evalQueue = new Queue(keys.evalQueue, { connection: redis });
  for (const q of [trainQueue, evalQueue]) q.on('error', (err) => log.warn({ err: err.message }, 'queue error'));
  // Recovers jobs of workers that died holding a lock we were never told about.
  const checkerConnections = [connectRedis(cfg.redis), connectRedis(cfg.redis)];
  const checkers = [keys.trainQueue, keys.evalQueue].map((name, i) => new BullWorker(name, null, {
    connection: checkerConnections[i] as Redis, lockDuration: cfg.lockDurationMs, stalledInterval: Math.max(500, cfg.lockDurationMs / 2), maxStalledCount: 1000,
  }));
  for (const c of checkers) { c.on('error', (err) => log.warn({ err: err.message }, 'stalled checker error')); void c.startStalledCheckTimer(); }

  let step = 0;
  let epoch = 0;
  let applied = new Set<number>();
  let plateau: PlateauState = initialPlateau(cfg.lr);
  let fullStepSamples = 0;
  let shortSteps = 0;
  const momentum = arena?.alloc(layout.totalSize) ?? new Float32Array(layout.totalSize);
  if (cfg.resume && cfg.checkpointDir !== '') {
    const ck = await loadCheckpoint(cfg.checkpointDir).catch((err: unknown) => {
      if (err instanceof CheckpointError && /got none/.test(err.message)) return undefined;
      throw err;
    });
    if (ck !== undefined) {
      if (ck.state.modelHash !== hash) throw new CheckpointError(`--resume: checkpoint model hash ${ck.state.modelHash} does not match this run's ${hash}`);
      for (const [e, t] of checkedWeights(layout, ck.weights)) weights.set(t.dataSync() as Float32Array, e.offset);
      tf.dispose(Object.values(ck.weights));
      momentum.set(ck.momentum);
      ({ step, epoch } = ck.state);
      applied = new Set(ck.state.appliedPositions ?? []);
      fullStepSamples = ck.state.fullStepSamples ?? 0;
      shortSteps = ck.state.shortSteps ?? 0;
      plateau = ck.state.schedule as unknown as PlateauState;
      log.info({ dir: ck.dir, step, epoch, appliedInEpoch: applied.size, fullStepSamples }, 'resuming from checkpoint');
    } else log.warn({ dir: cfg.checkpointDir }, '--resume: no checkpoint yet; starting fresh');
  }
  // Jobs and ledgers of earlier incarnations are void: the checkpoint is the truth.
  await trainQueue.obliterate({ force: true });
  await evalQueue.obliterate({ force: true });
  // On resume, the ledgers of finished epochs stay (audit); later ones are rebuilt from the checkpoint.
  const stale = (await redis.keys(`vgg:${cfg.run}:*`)).filter((k) => {
    const m = /:(?:ledger|applied):(\d+)$/.exec(k);
    return m === null ? !(k.endsWith(':history') || k.endsWith(':series')) || !cfg.resume : Number(m[1]) >= epoch;
  });
  if (stale.length > 0) await redis.del(...stale);
  // A resumed run's summary and curves: the epochs validated and the steps recorded up to its checkpoint
  // (what came after it is trained again, and recorded again).
  const history: EpochSummary[] = [];
  if (cfg.resume) {
    history.push(...(await redis.lrange(keys.history, 0, -1)).map((v) => JSON.parse(v) as EpochSummary).filter((h) => h.epoch < epoch));
    const series = (await redis.lrange(keys.series, 0, -1)).filter((v) => (JSON.parse(v) as SeriesPoint).step <= step);
    const tx = redis.multi().del(keys.history, keys.series);
    if (history.length > 0) tx.rpush(keys.history, ...history.map((h) => JSON.stringify(h)));
    if (series.length > 0) tx.rpush(keys.series, ...series);
    await tx.exec();
  }

  const sgd = new FlatMomentumSgd(layout, { learningRate: plateau.learningRate, momentum: cfg.momentum, weightDecay: cfg.weightDecay }, momentum);
  let plan: EpochPlan = planEpoch(trainIds, cfg.batchSize, cfg.seed, epoch);
  const state: RunState = {
    schema: 1, run: cfg.run, state: 'starting', epoch, epochs: cfg.epochs, step, stepsPerEpoch: plan.batches.length, appliedInEpoch: applied.size,
    learningRate: plateau.learningRate, loss: null, trainTop1: null, trainTop5: null, valTop1: null, valTop5: null, imagesPerSec: null,
    etaSeconds: null, members: 0, skippedImages: 0, fullStepSamples, shortSteps, startedAt: new Date(started).toISOString(), updatedAt: new Date().toISOString(),
  };
  const publish = async () => {
    state.updatedAt = new Date().toISOString();
    state.members = aggregator.readyMembers().length;
    state.shards = leader?.shardStates();
    metrics?.members.set(state.members);
    await redis.hset(keys.state, 'state', JSON.stringify(state));
  };
  /** Appends applied jobs to the epoch's ledger (list, for audit) and applied set (hash, for lookups) atomically. */
  const writeLedger = async (positions: Iterable<number>, atStep: number, workers: string[] = []) => {
    const tx = redis.multi();
    let i = 0;
    for (const p of positions) {
      const jobId = trainJobId(epoch, p);
      const entry: LedgerEntry = { jobId, step: atStep, position: p, sampleIds: plan.batches[p] ?? [], workerId: workers[i] ?? null };
      tx.hset(keys.applied(epoch), jobId, String(atStep)).rpush(keys.ledger(epoch), JSON.stringify(entry));
      i += 1;
    }
    if (i > 0) await tx.exec();
  };
  await writeLedger(applied, step);
  const meta: RunMeta = { trainTotal: index.train.length, trainLimit: cfg.trainLimit, batchSize: cfg.batchSize, seed: cfg.seed, epochs: cfg.epochs };
  await redis.set(keys.meta, JSON.stringify(meta));
  const checkpoint = async () => {
    if (cfg.checkpointDir === '') return;
    aggregator.settle(); // early commit: the last step's staged ranges finished into weights and momentum
    // The follower shards' ranges of the weights and momentum, as of this step.
    await leader?.gather(step);
    const dir = await saveCheckpoint(cfg.checkpointDir, {
      topology, layout, weights, momentum: sgd.velocity,
      state: {
        step, epoch, batchInEpoch: applied.size, appliedPositions: [...applied].sort((a, b) => a - b), fullStepSamples: aggregator.fullStepSamples, shortSteps: state.shortSteps, modelHash: hash,
        modelConfig: model, runConfig: { ...cfg, token: undefined }, schedule: { ...plateau }, createdAt: new Date().toISOString(),
        normalization: { meanRgb: augment.meanRgb, stdRgb: augment.stdRgb }, trainScale: [augment.sMin, augment.sMax],
      },
    }, cfg.keep);
    log.info({ dir, step, epoch }, 'checkpoint written');
  };

  let rate = { t: Date.now(), images: 0 };
  // About 4,000 points per run for the curves, whatever its length.
  const seriesEvery = Math.max(1, Math.ceil((cfg.epochs * plan.batches.length) / 4000));
  let lastCommit = performance.now();
  const onCommit = async (newStep: number, contributions: Contribution[]) => {
    const commitStart = performance.now();
    metrics?.stepSeconds.observe((commitStart - lastCommit) / 1000);
    lastCommit = commitStart;
    step = newStep;
    const positions = contributions.map((c) => plan.positions.get(c.jobId) as number);
    for (const p of positions) applied.add(p);
    await writeLedger(positions, step, contributions.map((c) => c.workerId));
    const n = contributions.reduce((s, c) => s + c.stats.samples, 0);
    if (n > 0) {
      const loss = contributions.reduce((s, c) => s + c.stats.loss * c.stats.samples, 0) / n;
      state.loss = state.loss === null ? loss : 0.9 * state.loss + 0.1 * loss;
      state.trainTop1 = contributions.reduce((s, c) => s + c.stats.top1, 0) / n;
      state.trainTop5 = contributions.reduce((s, c) => s + c.stats.top5, 0) / n;
    }
    const skipped = contributions.reduce((s, c) => s + c.stats.skipped, 0);
    state.skippedImages += skipped;
    state.fullStepSamples = aggregator.fullStepSamples;
    if (n < aggregator.fullStepSamples) {
      state.shortSteps = (state.shortSteps ?? 0) + 1;
      metrics?.shortSteps.inc();
    }
    rate.images += n;
    const now = Date.now();
    if (now - rate.t > 2000) {
      state.imagesPerSec = (rate.images * 1000) / (now - rate.t);
      rate = { t: now, images: 0 };
    }
    if (state.imagesPerSec !== null && state.imagesPerSec > 0) {
      const left = (cfg.epochs - epoch) * trainCount - applied.size * cfg.batchSize;
      state.etaSeconds = left / state.imagesPerSec;
    }
    Object.assign(state, { step, appliedInEpoch: applied.size });
    await publish();
    if (step % seriesEvery === 0) {
      const point: SeriesPoint = {
        step, epoch, t: (Date.now() - started) / 1000, loss: state.loss, top1: state.trainTop1, top5: state.trainTop5,
        lr: plateau.learningRate, imagesPerSec: state.imagesPerSec,
      };
      await redis.rpush(keys.series, JSON.stringify(point));
    }
    if (metrics !== undefined) {
      metrics.steps.inc();
      metrics.step.set(step);
      metrics.epoch.set(epoch);
      metrics.images.inc(n);
      metrics.skippedImages.inc(skipped);
      if (state.loss !== null) metrics.loss.set(state.loss);
      if (state.imagesPerSec !== null) metrics.imagesPerSecond.set(state.imagesPerSec);
      metrics.learningRate.set(plateau.learningRate);
      metrics.computeSeconds.observe((performance.now() - commitStart) / 1000);
      metrics.transportBusy.set(aggregatorBusy());
    }
    if (cfg.checkpointEvery > 0 && step % cfg.checkpointEvery === 0 && applied.size < plan.batches.length) await checkpoint();
    if (applied.size === plan.batches.length) setImmediate(() => { void endEpoch().catch(fail); });
  };

  const onMemberLost = (m: Member) => {
    const { jobId, lockToken } = m;
    void publish();
    if (jobId === undefined || lockToken === undefined || aggregator.options.jobStatus(jobId) !== 'pending') return;
    // Back to the queue at once, not after the lock expires.
    void Job.fromId(trainQueue, jobId).then((job) => job?.moveToWait(lockToken))
      .then(() => log.info({ jobId, workerId: m.workerId }, 'job of lost member returned to the queue'))
      .catch((err: Error) => log.warn({ jobId, err: err.message }, 'could not return job; the stalled check will'));
  };

  const runInfo: RunInfo = {
    run: cfg.run, redis: cfg.redis, data: index.root, model, augment, seed: cfg.seed, evalQ: cfg.evalScale,
    lockDurationMs: cfg.lockDurationMs, heartbeatTimeoutMs: cfg.heartbeatTimeoutMs, wire: cfg.wire, errorFeedback: cfg.errorFeedback,
  };
  // With --shards K this aggregator is shard 0: it updates its range and decides each step for all.
  const leader = cfg.shards === 1 ? undefined : new ShardLeader({
    count: cfg.shards, model, leaderOwnsNone: cfg.hostedShards,
    onShardLost: (index, reason) => fail(new Error(`aggregator shard ${index}/${cfg.shards} lost (${reason}): its range of the weights is gone; restart it and this coordinator with --resume`)),
  });
  const aggregator = new Aggregator({
    host: cfg.host, port: cfg.port, token: cfg.token, modelHash: hash, step, shardLeader: leader, weights, sgd,
    runInfo: runInfo as unknown as Record<string, unknown>,
    jobStatus: (jobId) => {
      const p = plan.positions.get(jobId);
      if (p === undefined) return 'unknown';
      return applied.has(p) ? 'applied' : 'pending';
    },
    onCommit, onMemberLost, log, heartbeatTimeoutMs: cfg.heartbeatTimeoutMs, metrics, wire: cfg.wire,
    earlyCommit: cfg.earlyCommit, // the flag, the config file or VGG_EARLY_COMMIT
    partialSteps: cfg.partialSteps, fullStepSamples,
  });
  const port = await aggregator.start();
  let stopping = false;
  const metricsServer = metrics === undefined ? undefined
    : await serveMetrics(metrics, { host: cfg.metricsHost, port: cfg.metricsPort, healthy: () => !stopping, log });
  // Queue depths for /metrics, refreshed every second while it is served.
  const refreshQueues = () => {
    for (const [name, q] of [['train', trainQueue], ['eval', evalQueue]] as const) {
      void q.getJobCounts('waiting', 'active', 'completed', 'failed', 'delayed').then((counts) => {
        for (const [st, n] of Object.entries(counts)) metrics?.queueJobs.set({ queue: name, state: st }, n);
      }).catch(() => {});
    }
  };
  if (metrics !== undefined) refreshQueues();
  const queueTimer = metrics === undefined ? undefined : setInterval(refreshQueues, 1000);
  log.info({ port, host: cfg.host, run: cfg.run, modelHash: hash, step, epoch, coordinatorHost: hostname() }, 'aggregator listening');

  let finish!: (s: RunSummary) => void;
  let fail!: (e: unknown) => void;
  const done = new Promise<RunSummary>((resolve, reject) => { finish = resolve; fail = reject; });
  let epochStart = Date.now();

  const startEpoch = async () => {
    plan = planEpoch(trainIds, cfg.batchSize, cfg.seed, epoch);
    epochStart = Date.now();
    Object.assign(state, { state: 'training', epoch, stepsPerEpoch: plan.batches.length, appliedInEpoch: applied.size });
    await publish();
    const jobs = trainJobs(cfg.run, plan, applied);
    log.info({ epoch, jobs: jobs.length, batches: plan.batches.length }, 'epoch started');
    if (jobs.length === 0) setImmediate(() => { void endEpoch().catch(fail); });
    else await trainQueue.addBulk(jobs);
  };

  const validate = async (): Promise<EvalJobResult> => {
    state.state = 'validating';
    await publish();
    const evalBatch = Math.max(cfg.batchSize, 32);
    const jobs = [];
    for (let i = 0, p = 0; i < valCount; i += evalBatch, p += 1) {
      const sampleIds = valIds.slice(i, i + evalBatch);
      jobs.push({ name: 'eval', data: { run: cfg.run, epoch, position: p, sampleIds, step } satisfies EvalJobData, opts: { jobId: evalJobId(epoch, p), removeOnComplete: true } });
    }
    await evalQueue.addBulk(jobs);
    while (!stopping && (await redis.hlen(keys.evalResults(epoch))) < jobs.length) await new Promise((r) => setTimeout(r, 100));
    const results = Object.values(await redis.hgetall(keys.evalResults(epoch))).map((v) => JSON.parse(v) as EvalJobResult);
    return results.reduce((a, r) => ({ samples: a.samples + r.samples, top1: a.top1 + r.top1, top5: a.top5 + r.top5, lossSum: a.lossSum + r.lossSum, skipped: a.skipped + r.skipped }),
      { samples: 0, top1: 0, top5: 0, lossSum: 0, skipped: 0 });
  };

  const endEpoch = async () => {
    if (stopping) return;
    const val = await validate();
    if (stopping) return;
    const n = Math.max(1, val.samples);
    plateau = cfg.lrDropEpochs.length === 0 ? stepPlateau(plateau, val.top1 / n)
      : { ...plateau, learningRate: cfg.lrDropEpochs.includes(epoch + 1) ? plateau.learningRate / 10 : plateau.learningRate };
    aggregator.setLearningRate(plateau.learningRate);
    const summary: EpochSummary = {
      epoch, step, trainLoss: state.loss, valTop1: val.top1 / n, valTop5: val.top5 / n, valLoss: val.lossSum / n,
      lr: plateau.learningRate, seconds: (Date.now() - epochStart) / 1000,
    };
    history.push(summary);
    await redis.rpush(keys.history, JSON.stringify(summary));
    Object.assign(state, { valTop1: summary.valTop1, valTop5: summary.valTop5, learningRate: plateau.learningRate });
    metrics?.validationTop1.set(summary.valTop1);
    metrics?.validationTop5.set(summary.valTop5);
    metrics?.learningRate.set(plateau.learningRate);
    log.info(summary, 'epoch done');
    epoch += 1;
    applied = new Set();
    await checkpoint();
    if (epoch < cfg.epochs) {
      await startEpoch();
      return;
    }
    Object.assign(state, { state: 'finished', etaSeconds: 0 });
    await publish();
    finish({
      run: cfg.run, epochs: cfg.epochs, steps: step, valTop1: summary.valTop1, valTop5: summary.valTop5,
      wallSeconds: (Date.now() - started) / 1000, history, skippedImages: state.skippedImages,
    });
  };

  // Wait for the cluster to form before the first job, so that step composition does not depend on start order.
  void (async () => {
    state.state = 'waiting-for-workers';
    await publish();
    while (!stopping && aggregator.readyMembers().length < cfg.minWorkers) await new Promise((r) => setTimeout(r, 50));
    if (!stopping) await startEpoch();
  })().catch(fail);

  let stopped: Promise<void> | undefined;
  const stop = () => {
    stopped ??= (async () => {
      stopping = true;
      clearInterval(queueTimer);
      await metricsServer?.close();
      await aggregator.close();
      await Promise.allSettled([...checkers.map((c) => c.close()), trainQueue.close(), evalQueue.close()]);
      for (const c of [redis, ...checkerConnections]) c.disconnect();
    })();
    return stopped;
  };
  return { port, aggregator, done, stop };
}
