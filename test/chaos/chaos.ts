/**
 * npm run chaos — a small run with 3 workers, trained twice per seed: once
 * without faults, once while this script SIGKILLs random workers at random
 * moments (and restarts them), SIGKILLs the coordinator once (restarted with
 * --resume) and restarts Redis once (AOF on). Then, for every run with faults:
 * `audit` of every epoch (0 missing, 0 duplicated), the faults all injected, no
 * worker exiting on its own; and over all seeds, the mean of (val top-1 with
 * faults - without) within 1 point. One pair alone cannot tell: which jobs meet
 * in a step differs from run to run, and with it the final accuracy, by up to
 * ~1.5 points at this size (fault-free runs of one seed gave 79.42-80.62%).
 * Prints each seed's faults and outcomes as a table; the last line is one JSON
 * object. Exit code 1 when any check fails.
 *
 *   npm run chaos [-- --seeds 7,8,9 --faults worker,coordinator,redis --worker-kills 6 --epochs 3 --train-limit 8000]
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { auditEpoch, type AuditReport } from '../../coordinator/audit.ts';
import { freePort, startRedisServer, type RedisChild } from '../../coordinator/redis-server.ts';
import type { RunState } from '../../coordinator/run-state.ts';
import { intOption } from '../../shared/option-parsers.ts';
import { connectRedis } from '../../shared/redis-connection.ts';
import { runKeys, type LedgerEntry } from '../../shared/redis-keys.ts';
import { Rng } from '../../shared/rng.ts';
import { spawnCli, type Proc } from '../helpers/cluster.ts';

const FAULT_KINDS = ['worker', 'coordinator', 'redis'] as const;
type FaultKind = typeof FAULT_KINDS[number];

const o = new Command('chaos')
  .option('--seeds <list>', 'seeds of the runs and their fault schedules (one pair of runs each)', (v: string) => {
    const seeds = v.split(',').map((x) => intOption('--seeds', 0)(x.trim()));
    if (seeds.length === 0 || new Set(seeds).size !== seeds.length) throw new Error(`--seeds: expected distinct integers separated by commas, got ${JSON.stringify(v)}`);
    return seeds;
  }, [7, 8, 9])
  .option('--workers <n>', 'worker processes', intOption('--workers', 2, 16), 3)
  .option('--worker-kills <n>', 'worker SIGKILLs', intOption('--worker-kills', 5), 6)
  .option('--faults <list>', 'kinds of fault to inject (the schedule of each kind is the same whatever the others)', (v: string) => {
    const kinds = v.split(',').map((k) => k.trim());
    const bad = kinds.filter((k) => !FAULT_KINDS.includes(k as FaultKind));
    if (kinds.length === 0 || bad.length > 0) throw new Error(`--faults: expected some of ${FAULT_KINDS.join(', ')}, got ${JSON.stringify(v)}`);
    return kinds as FaultKind[];
  }, [...FAULT_KINDS])
  .option('--epochs <n>', 'epochs', intOption('--epochs', 2), 3)
  .option('--train-limit <n>', 'training images', intOption('--train-limit', 100), 8000)
  .option('--val-limit <n>', 'validation images', intOption('--val-limit', 100), 5000)
  .parse(process.argv)
  .opts<{ seeds: number[]; faults: FaultKind[]; workers: number; workerKills: number; epochs: number; trainLimit: number; valLimit: number }>();

const TOKEN = 'chaos-token';
const started = Date.now();
const since = () => (Date.now() - started) / 1000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const redis: { child: RedisChild } = { child: await startRedisServer({ appendonly: true }) };
const { port: redisPort, dir: redisDir, url: redisUrl } = redis.child;
const state = connectRedis(redisUrl);

function runArgs(run: string, seed: number, aggPort: number, checkpointDir: string): string[] {
  return [
    '--run', run, '--redis', redisUrl, '--port', String(aggPort), '--token', TOKEN, '--seed', String(seed),
    '--config', 'A', '--width', '0.125', '--fc-units', '128', '--dropout', '0', '--input-size', '32', '--scale', '32:36', '--eval-scale', '32',
    '--batch-size', '16', '--lr', '0.02', '--lr-drop-epochs', String(o.epochs - 1), '--epochs', String(o.epochs),
    '--train-limit', String(o.trainLimit), '--val-limit', String(o.valLimit), '--min-workers', String(o.workers),
    '--checkpoint-dir', checkpointDir, '--checkpoint-every', '20', '--keep', '2', '--lock-duration-ms', '4000', '--heartbeat-timeout-ms', '5000',
  ];
}

async function readState(run: string): Promise<RunState | null> {
  const raw = await state.hget(runKeys(run).state, 'state');
  return raw === null ? null : (JSON.parse(raw) as RunState);
}

/** Epochs done plus the fraction of the current one. */
const progressOf = (s: RunState | null) => (s === null ? 0 : s.state === 'finished' ? s.epochs : s.epoch + s.appliedInEpoch / Math.max(1, s.stepsPerEpoch));

function startCoordinator(args: string[]): Proc {
  return spawnCli(['coordinator', 'start', ...args, '--json']);
}

function startWorker(aggPort: number): Proc {
  return spawnCli(['worker', 'start', '--coordinator', `ws://127.0.0.1:${aggPort}`, '--token', TOKEN, '--redis', redisUrl]);
}

function summaryOf(p: Proc): { valTop1: number; steps: number; history: { valTop1: number }[] } {
  const last = p.output().trim().split('\n').filter((l) => l.startsWith('{"run"')).at(-1);
  if (last === undefined) throw new Error(`coordinator printed no summary:\n${p.output().slice(-3000)}`);
  return JSON.parse(last) as { valTop1: number; steps: number; history: { valTop1: number }[] };
}

/**
 * How many jobs each step applied, from the epochs' ledgers: jobsPerStep[k] steps applied k jobs. A resumed
 * coordinator records its checkpoint's jobs at the checkpoint's step: a group larger than the workers is left out.
 */
async function jobsPerStep(run: string): Promise<number[]> {
  const perStep = new Map<number, Set<string>>();
  for (let e = 0; e < o.epochs; e += 1) {
    for (const v of await state.lrange(runKeys(run).ledger(e), 0, -1)) {
      const entry = JSON.parse(v) as LedgerEntry;
      const jobs = perStep.get(entry.step) ?? new Set<string>();
      jobs.add(entry.jobId);
      perStep.set(entry.step, jobs);
    }
  }
  const hist = new Array<number>(o.workers + 1).fill(0);
  for (const jobs of perStep.values()) if (jobs.size <= o.workers) hist[jobs.size] = (hist[jobs.size] ?? 0) + 1;
  return hist;
}

/** A run's steps, how many jobs they applied and its validation accuracy after each epoch, for the printout. */
const shape = (r: { steps: number; jobsPerStep: number[]; history: { valTop1: number }[] }) =>
  `${r.steps} steps (${r.jobsPerStep.map((n, k) => ({ k, n })).filter(({ k, n }) => k > 0 && n > 0).reverse().map(({ k, n }) => `${n} of ${k} jobs`).join(', ')}), `
  + `val top-1 by epoch ${r.history.map((h) => (100 * h.valTop1).toFixed(2)).join(' / ')}`;

interface Fault { at: number; progress: number; step: number; fault: string; outcome: string }

/** One run; with `chaos`, faults are injected at random progress points drawn from the seed. */
async function run(name: string, seed: number, chaos: boolean): Promise<{ valTop1: number; steps: number; history: { valTop1: number }[]; jobsPerStep: number[]; faults: Fault[]; audits: AuditReport[]; seconds: number; unexpectedExits: number }> {
  const t0 = Date.now();
  const rng = new Rng(seed * 7919 + 1);
  const aggPort = await freePort();
  const args = runArgs(name, seed, aggPort, mkdtempSync(path.join(tmpdir(), `vgg-chaos-${name}-`)));
  let coordinator = startCoordinator(args);
  const workers: Proc[] = [];
  let unexpectedExits = 0;
  const killed = new Set<Proc>();
  const spawnWorker = (slot: number) => {
    const w = startWorker(aggPort);
    workers[slot] = w;
    // A worker that exits on its own (not by us, not at the end of the run) is a failure to survive.
    void w.exited.then(async (code) => {
      if (killed.has(w) || code === 0) return;
      unexpectedExits += 1;
      process.stderr.write(`worker exited unexpectedly (code ${code}):\n${w.output().slice(-2000)}\n`);
      if (!finished) spawnWorker(slot);
    });
  };
  let finished = false;
  for (let i = 0; i < o.workers; i += 1) spawnWorker(i);
  const faults: Fault[] = [];
  const E = o.epochs;
  let plan: { progress: number; kind: FaultKind }[] = [];
  if (chaos) {
    for (let i = 0; i < o.workerKills; i += 1) plan.push({ progress: 0.1 + rng.next() * (E - 0.3), kind: 'worker' });
    plan.push({ progress: E * (0.4 + 0.2 * rng.next()), kind: 'coordinator' });
    plan.push({ progress: E * (0.7 + 0.15 * rng.next()), kind: 'redis' });
    plan = plan.filter((f) => o.faults.includes(f.kind)).sort((a, b) => a.progress - b.progress);
  }
  let coordinatorExit = coordinator.exited;
  for (const f of plan) {
    let s = await readState(name);
    while (progressOf(s) < f.progress && s?.state !== 'finished') {
      await sleep(20 + rng.next() * 60);
      s = await readState(name);
    }
    if (s?.state === 'finished') break;
    const step = s?.step ?? 0;
    const at = since();
    if (f.kind === 'worker') {
      const slot = rng.int(0, o.workers - 1);
      const victim = workers[slot] as Proc;
      killed.add(victim);
      victim.child.kill('SIGKILL');
      await victim.exited;
      const downMs = Math.round(200 + rng.next() * 1500);
      await sleep(downMs);
      spawnWorker(slot);
      faults.push({ at, progress: f.progress, step, fault: `SIGKILL worker ${slot + 1} (pid ${victim.child.pid})`, outcome: `restarted after ${downMs} ms as pid ${workers[slot]?.child.pid}` });
    } else if (f.kind === 'coordinator') {
      const pid = coordinator.child.pid;
      coordinator.child.kill('SIGKILL');
      await coordinatorExit;
      const downMs = Math.round(300 + rng.next() * 1000);
      await sleep(downMs);
      coordinator = startCoordinator([...args, '--resume']);
      coordinatorExit = coordinator.exited;
      let r = await readState(name);
      const t1 = Date.now();
      // The restarted coordinator rewrites the state from its checkpoint; wait for it to train again.
      while (r === null || r.step === step || r.state !== 'training') {
        if (coordinator.child.exitCode !== null) throw new Error(`resumed coordinator exited:\n${coordinator.output().slice(-3000)}`);
        await sleep(50);
        r = await readState(name);
      }
      faults.push({ at, progress: f.progress, step, fault: `SIGKILL coordinator (pid ${pid})`, outcome: `restarted with --resume after ${downMs} ms; training again ${((Date.now() - t1) / 1000).toFixed(1)} s later at step ${r.step} (from its checkpoint)` });
    } else {
      const t1 = Date.now();
      await redis.child.stop();
      redis.child = await startRedisServer({ port: redisPort, dir: redisDir, appendonly: true });
      const downMs = Date.now() - t1;
      const before = step;
      let r = await readState(name);
      while (r !== null && r.step <= before + 2 && r.state !== 'finished') { await sleep(50); r = await readState(name); }
      faults.push({ at, progress: f.progress, step, fault: 'restart Redis (SIGTERM, AOF reload)', outcome: `down ${downMs} ms; run went on (step ${r?.step ?? '?'} after)` });
    }
  }
  const code = await coordinatorExit;
  finished = true;
  if (code !== 0) throw new Error(`coordinator exited with ${code}:\n${coordinator.output().slice(-3000)}`);
  await Promise.all(workers.map((w) => Promise.race([w.exited, sleep(20000).then(() => { w.child.kill('SIGKILL'); return w.exited; })])));
  const audits: AuditReport[] = [];
  for (let e = 0; e < o.epochs; e += 1) audits.push(await auditEpoch(state, name, e));
  return { ...summaryOf(coordinator), jobsPerStep: await jobsPerStep(name), faults, audits, seconds: (Date.now() - t0) / 1000, unexpectedExits };
}

try {
  process.stdout.write(`chaos: ${o.workers} workers, ${o.epochs} epochs of ${o.trainLimit} images, seeds ${o.seeds.join(', ')}; Redis ${redisUrl} (AOF, dir ${redisDir})\n`);
  const pairs = [];
  for (const seed of o.seeds) {
    process.stdout.write(`seed ${seed}: fault-free run...\n`);
    const base = await run(`chaos-base-${seed}`, seed, false);
    process.stdout.write(`seed ${seed}: fault-free val top-1 ${(100 * base.valTop1).toFixed(2)}% in ${base.seconds.toFixed(0)} s; ${shape(base)}\nseed ${seed}: run with faults...\n`);
    const chaos = await run(`chaos-${seed}`, seed, true);
    const rows = chaos.faults.map((f, i) => [String(i + 1), `${f.at.toFixed(1)} s`, `${f.progress.toFixed(2)}`, String(f.step), f.fault, f.outcome]);
    const head = ['#', 'at', 'epochs', 'step', 'fault', 'outcome'];
    const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => (r[c] ?? '').length)));
    const line = (r: string[]) => r.map((x, c) => x.padEnd(widths[c] ?? 0)).join('  ');
    process.stdout.write(`\n${line(head)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}\n${rows.map(line).join('\n')}\n\n`);
    for (const a of chaos.audits) {
      process.stdout.write(`audit epoch ${a.epoch}: ${a.samples} samples, ${a.jobs} jobs, ${a.missing} missing, ${a.duplicates} duplicated${a.replayedWrites > 0 ? `, ${a.replayedWrites} replayed ledger writes` : ''}\n`);
    }
    const counts = { workerKills: chaos.faults.filter((f) => f.fault.includes('worker')).length, coordinatorKills: chaos.faults.filter((f) => f.fault.includes('coordinator')).length, redisRestarts: chaos.faults.filter((f) => f.fault.includes('Redis')).length };
    const exact = chaos.audits.every((a) => a.missing === 0 && a.duplicates === 0);
    const injected = (kind: FaultKind, n: number, min: number) => (o.faults.includes(kind) ? n >= min : n === 0);
    const survived = exact && injected('worker', counts.workerKills, 5) && injected('coordinator', counts.coordinatorKills, 1)
      && counts.coordinatorKills <= 1 && injected('redis', counts.redisRestarts, 1) && counts.redisRestarts <= 1 && chaos.unexpectedExits === 0;
    const diff = 100 * (chaos.valTop1 - base.valTop1);
    process.stdout.write(`seed ${seed}: with faults ${shape(chaos)}\n`);
    process.stdout.write(`seed ${seed}: val top-1 ${(100 * chaos.valTop1).toFixed(2)}% with faults, ${(100 * base.valTop1).toFixed(2)}% without (${diff >= 0 ? '+' : ''}${diff.toFixed(2)} points); exactly once and every fault survived: ${survived ? 'yes' : 'NO'}\n\n`);
    pairs.push({
      seed, survived, ...counts, unexpectedWorkerExits: chaos.unexpectedExits, faults: chaos.faults,
      audit: chaos.audits.map((a) => ({ epoch: a.epoch, samples: a.samples, missing: a.missing, duplicates: a.duplicates, replayedWrites: a.replayedWrites })),
      valTop1: chaos.valTop1, baselineValTop1: base.valTop1, diffPoints: diff, steps: { baseline: base.steps, chaos: chaos.steps },
      jobsPerStep: { baseline: base.jobsPerStep, chaos: chaos.jobsPerStep }, valTop1ByEpoch: { baseline: base.history.map((h) => h.valTop1), chaos: chaos.history.map((h) => h.valTop1) }, seconds: { baseline: base.seconds, chaos: chaos.seconds },
    });
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const meanDiff = mean(pairs.map((p) => p.diffPoints));
  const baseline = pairs.map((p) => 100 * p.baselineValTop1);
  const pass = pairs.every((p) => p.survived) && Math.abs(meanDiff) <= 1;
  process.stdout.write(`val top-1 with faults - without, per seed: ${pairs.map((p) => `${p.seed}: ${p.diffPoints >= 0 ? '+' : ''}${p.diffPoints.toFixed(2)}`).join(', ')}; `
    + `mean ${meanDiff >= 0 ? '+' : ''}${meanDiff.toFixed(2)} points (limit 1); fault-free runs ${Math.min(...baseline).toFixed(2)}-${Math.max(...baseline).toFixed(2)}%\n`);
  process.stdout.write(`${pass ? 'PASS' : 'FAIL'}\n`);
  process.stdout.write(`${JSON.stringify({ chaos: pass ? 'pass' : 'fail', seeds: o.seeds, faults: o.faults, workers: o.workers, epochs: o.epochs, meanDiffPoints: meanDiff, runs: pairs })}\n`);
  process.exitCode = pass ? 0 : 1;
} finally {
  state.disconnect();
  await redis.child.stop();
}
