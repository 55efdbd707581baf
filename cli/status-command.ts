import type { Command } from 'commander';
import { Queue } from 'bullmq';
import type { EpochSummary } from '../coordinator/coordinator.ts';
import type { RunState, WorkerHeartbeat } from '../coordinator/run-state.ts';
import { intOption } from '../shared/option-parsers.ts';
import { checkRedis, connectRedis } from '../shared/redis-connection.ts';
import { runKeys, type SeriesPoint } from '../shared/redis-keys.ts';
import { sparkline } from '../coordinator/report.ts';

type Counts = Record<'waiting' | 'active' | 'completed' | 'failed' | 'delayed', number>;

/** `status --json`: schema 1, documented in docs/STATUS.md. */
export interface StatusReport {
  schema: 1;
  run: string;
  time: string;
  state: RunState | null;
  workers: (WorkerHeartbeat & { heartbeatAgeSeconds: number })[];
  queues: { train: Counts; eval: Counts };
  history: EpochSummary[];
  /** Training loss (moving average) at the last recorded steps, oldest first (up to 40). */
  recentLoss: number[];
}

const pct = (x: number | null | undefined) => (x === null || x === undefined ? '-' : `${(100 * x).toFixed(2)}%`);
const num = (x: number | null | undefined, d = 1) => (x === null || x === undefined ? '-' : x.toFixed(d));

export function formatStatus(r: StatusReport): string {
  const s = r.state;
  if (s === null) return `run ${r.run}: no state in Redis (not started, or another --run / --redis?)\n`;
  const lines = [
    `run ${s.run}: ${s.state}   epoch ${s.epoch + (s.state === 'finished' ? 0 : 1)}/${s.epochs}   step ${s.step} (${s.appliedInEpoch}/${s.stepsPerEpoch} jobs this epoch)   lr ${s.learningRate}`,
    `loss ${num(s.loss, 4)} ${sparkline(r.recentLoss)}   train top-1 ${pct(s.trainTop1)} top-5 ${pct(s.trainTop5)}   val top-1 ${pct(s.valTop1)} top-5 ${pct(s.valTop5)}`,
    `images/s ${num(s.imagesPerSec)}   ETA ${s.etaSeconds === null ? '-' : `${Math.round(s.etaSeconds)} s`}   members ${s.members}   skipped images ${s.skippedImages}`
      + (s.fullStepSamples === undefined ? '' : `   full step ${s.fullStepSamples} samples, ${s.shortSteps ?? 0} short steps`),
    `queues: train ${JSON.stringify(r.queues.train)}  eval ${JSON.stringify(r.queues.eval)}`,
    ...(s.shards === undefined ? [] : [
      `aggregator shards: ${s.shards.length}${s.shards[0]?.hi === 0 ? ' (--hosted-shards: shard 0, the coordinator, owns no floats)' : ''}`,
      ...s.shards.map((sh) => `  ${sh.index}/${s.shards?.length}  floats [${sh.lo.toLocaleString('en-US')}, ${sh.hi.toLocaleString('en-US')})  ${sh.index === 0 ? 'coordinator' : sh.url || '-'}  ${sh.ready ? 'ready' : 'not connected'}`),
    ]),
    'workers:',
    ...r.workers.map((w) => `  ${w.workerId}  host ${w.host}  gpu ${w.gpu ?? '-'}  ${w.backend}  step ${w.step}  jobs ${w.jobs}  ${num(w.imagesPerSec)} img/s  heartbeat ${w.heartbeatAgeSeconds.toFixed(1)} s ago`),
  ];
  return `${lines.join('\n')}\n`;
}

export async function readStatus(redisUrl: string, run: string): Promise<StatusReport> {
  const keys = runKeys(run);
  const redis = connectRedis(redisUrl, { maxRetriesPerRequest: 1 });
  try {
    await checkRedis(redis, redisUrl);
    const [raw, workers, history, series] = await Promise.all([redis.hget(keys.state, 'state'), redis.hgetall(keys.workers), redis.lrange(keys.history, 0, -1),
      redis.lrange(keys.series, -40, -1)]);
    const counts = async (name: string) => {
      const q = new Queue(name, { connection: redis });
      try {
        return (await q.getJobCounts('waiting', 'active', 'completed', 'failed', 'delayed')) as Counts;
      } finally {
        await q.close();
      }
    };
    const now = Date.now();
    return {
      schema: 1, run, time: new Date(now).toISOString(), state: raw === null ? null : (JSON.parse(raw) as RunState),
      workers: Object.values(workers).map((v) => JSON.parse(v) as WorkerHeartbeat)
        .map((w) => ({ ...w, heartbeatAgeSeconds: (now - Date.parse(w.lastHeartbeat)) / 1000 }))
        .sort((a, b) => a.workerId.localeCompare(b.workerId)),
      queues: { train: await counts(keys.trainQueue), eval: await counts(keys.evalQueue) },
      history: history.map((h) => JSON.parse(h) as EpochSummary),
      recentLoss: series.map((p) => (JSON.parse(p) as SeriesPoint).loss).filter((l): l is number => l !== null),
    };
  } finally {
    redis.disconnect();
  }
}

export function registerStatusCommand(program: Command): void {
  program.command('status')
    .description('run state, per-worker heartbeats, queue counts')
    .option('--redis <url>', 'Redis URL (env VGG_REDIS)', process.env.VGG_REDIS ?? 'redis://127.0.0.1:6379')
    .option('--run <name>', 'run name (env VGG_RUN)', process.env.VGG_RUN ?? 'default')
    .option('--json', 'one JSON object (schema: docs/STATUS.md)', false)
    .option('--watch', 'redraw on a terminal; one JSON object per line otherwise', false)
    .option('--interval <ms>', 'refresh interval for --watch', intOption('--interval', 100), 2000)
    .action(async (o: { redis: string; run: string; json: boolean; watch: boolean; interval: number }) => {
      const tty = process.stdout.isTTY === true;
      for (;;) {
        const report = await readStatus(o.redis, o.run);
        if (o.watch && tty && !o.json) process.stdout.write(`\x1b[H\x1b[2J${formatStatus(report)}`);
        else process.stdout.write(o.json || (o.watch && !tty) ? `${JSON.stringify(report)}\n` : formatStatus(report));
        if (!o.watch || report.state?.state === 'finished') return;
        await new Promise((r) => setTimeout(r, o.interval));
      }
    });
}
