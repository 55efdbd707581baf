/**
 * Runs our aggregator and N worker processes over loopback (the helpers next to
 * this file) and times the synchronous steps. Shared by bench:allreduce and
 * bench:scaling.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { boolEnv } from '../../shared/option-parsers.ts';

export const VGG16_FLOATS = 138_357_544;
/**
 * Untimed steps first: a worker receives the first two versions of the weights into fresh buffers
 * (it double-buffers them), whose pages the kernel zeroes as they are first written; from the third
 * step on it receives into the buffer given back (a steady state's step).
 */
export const WARMUP_STEPS = 2;
/** H200, VGG-16 fp32 batch 64 (docs/measurements/h200-vgg16-overlap.json): the conv body's backward after the classifier's gradients are final, over the step. */
export const WINDOW_FRACTION = 54.88 / 96.44;
const here = path.dirname(new URL(import.meta.url).pathname);

/** This process's peak RSS (VmHWM) in bytes, for the benchmark helpers to print. */
export const peakRssBytes = (): number => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? 0) * 1024;

export const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)] ?? NaN;
};

/**
 * CPU time (user + system, all threads, ms) and minor page faults that process `pid` (default: this one) has had
 * so far, from /proc/PID/stat; NaN where it cannot be read. The faults tell whether a run has reached its steady
 * state: on a virtual machine a page touched for the first time costs ~1 us of fault plus the host's own fault
 * (~0.2-0.3 GB/s of first touches here, where the steady step moves ~5 GB/s); a worker touches its 2.6 GB of
 * buffers for the first time in step 0, untimed, and ~10-1,400 pages a step after it (fourteenth session).
 */
export function processStat(pid: number | undefined = process.pid): { cpuMs: number; minorFaults: number } {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces): state is field 3, minflt 10, utime 14, stime 15.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { cpuMs: (Number(rest[11]) + Number(rest[12])) * 10, minorFaults: Number(rest[7]) };
  } catch {
    return { cpuMs: NaN, minorFaults: NaN };
  }
}

/** A child process; its stdout lines go to `onLine`, `done` resolves with all of it on exit 0; `say` writes a line to its stdin. */
export function run(cmd: string, args: string[], onLine?: (line: string) => void): { done: Promise<string>; say: (line: string) => void; pid: number | undefined } {
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  let pending = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    pending += d.toString();
    for (let i = pending.indexOf('\n'); i >= 0; i = pending.indexOf('\n')) {
      onLine?.(pending.slice(0, i));
      pending = pending.slice(i + 1);
    }
  });
  return {
    done: new Promise((resolve, reject) => child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}`))))),
    say: (line) => { child.stdin.write(`${line}\n`); },
    pid: child.pid,
  };
}

/** BENCH_NODE_ARGS: more node flags for every child (e.g. `--require ./probe.cjs` or `--perf-basic-prof` to profile). */
const node = (script: string, args: string[], onLine?: (l: string) => void) =>
  run(process.execPath, ['--max-old-space-size=8192', ...(process.env.BENCH_NODE_ARGS?.split(' ').filter(Boolean) ?? []), '--import', 'tsx', path.join(here, script), ...args], onLine);

/** VGG_EARLY_COMMIT, read as the run option --early-commit reads it: the benchmarks' leaders use early commit. */
export function earlyCommitEnabled(): boolean {
  return boolEnv('VGG_EARLY_COMMIT', false);
}

export interface OursResult {
  stepMs: number; steps: number[]; peakRssBytes: number; followerPeakRssBytes: number; workerPeakRssBytes: number;
  /** With hostCopies: the slowest worker's median ms per step of the weights' and the gradients' host copies. */
  hostCopyMs?: { weights: number; gradients: number };
  /**
   * CPU time of all our processes (leader, followers, workers; every thread) per timed step, ms: each worker's
   * own (process.cpuUsage) when it has the last untimed step's weights and the last step's; the leader's and
   * followers' read from /proc when the last worker has them (they live on until the workers hang up).
   */
  cpuMsPerStep: number;
  /**
   * Minor page faults of all our processes per timed step, counted as cpuMsPerStep is: near 0 in the steady state
   * (every buffer reused); thousands mean memory touched for the first time inside the timed steps (see processStat).
   */
  minorFaultsPerStep: number;
  /** The busiest worker's transport thread: the share of the timed steps its event loop was busy. */
  transportBusy: number;
}

/**
 * `steps` timed steps (after WARMUP_STEPS untimed ones) of `workers` workers through `shards` aggregator processes (default 1);
 * `overlap`: the workers send the classifier's gradients before the simulated compute ends (worker-proc.ts);
 * `hosted`: each worker hosts one of the N shards (its transport thread), the leader owns no floats;
 * `earlyCommit`: the leader seals each step and the shards send each range's weights once all have sent it;
 * `hostCopies`: the workers also make a tfjs-node worker's host-side copies of the weights and gradients (host-copies.ts),
 * each gradient tensor copied into the shared gradient on the transport thread (`copyOut` 'thread', the worker's way) or
 * on the main thread ('main').
 */
export async function runOurs(o: { workers: number; steps: number; wire: string; computeMs?: number; shards?: number; overlap?: boolean; hosted?: boolean; earlyCommit?: boolean; hostCopies?: boolean; copyOut?: 'main' | 'thread' }): Promise<OursResult> {
  // Hosted: worker i hosts shard i + 1 of N + 1 and the leader owns no floats.
  const shards = o.hosted === true ? o.workers + 1 : o.shards ?? 1;
  let resolvePort!: (p: number) => void;
  const port = new Promise<number>((r) => { resolvePort = r; });
  let peak = 0;
  let followerPeak = 0;
  const agg = node('aggregator-proc.ts', ['--steps', String(o.steps + WARMUP_STEPS), '--wire', o.wire, '--shards', String(shards), ...(o.hosted === true ? ['--hosted'] : []), ...(o.earlyCommit === true ? ['--early-commit'] : [])], (line) => {
    const m = JSON.parse(line) as { port?: number; peakRssBytes?: number };
    if (m.port !== undefined) resolvePort(m.port);
    if (m.peakRssBytes !== undefined) peak = m.peakRssBytes;
  });
  const url = `ws://127.0.0.1:${await port}`;
  const followerRuns = Array.from({ length: o.hosted === true ? 0 : shards - 1 }, (_, i) => node('aggregator-proc.ts', ['--follow', url, '--shard', `${i + 1}/${shards}`], (line) => {
    const m = JSON.parse(line) as { peakRssBytes?: number };
    if (m.peakRssBytes !== undefined) followerPeak = Math.max(followerPeak, m.peakRssBytes);
  }));
  const followers = followerRuns.map((f) => f.done);
  // Every worker connected (and hosting its shard) before any joins step 0: one that came late would find
  // the step committed without it (a stale join).
  let ready = 0;
  // The aggregator processes' CPU when all workers have the weights of step WARMUP_STEPS - 1 and of the last step
  // (a worker may be gone by the time its last line is read: workers report their own).
  const arrived = new Map<number, number>();
  const aggAt: { cpuMs: number; minorFaults: number }[] = [];
  const onArrival = (step: number) => {
    const n = (arrived.get(step) ?? 0) + 1;
    arrived.set(step, n);
    if (n === o.workers && (step === WARMUP_STEPS - 1 || step === WARMUP_STEPS + o.steps - 1)) {
      const stats = [agg, ...followerRuns].map((p) => processStat(p.pid));
      aggAt.push({ cpuMs: sum(stats.map((x) => x.cpuMs)), minorFaults: sum(stats.map((x) => x.minorFaults)) });
    }
  };
  const procs = Array.from({ length: o.workers }, (_, i) => node('worker-proc.ts',
    ['--url', url, '--steps', String(o.steps + WARMUP_STEPS), '--id', String(i), '--compute-ms', String(o.computeMs ?? 0), ...(o.overlap === true ? ['--overlap'] : []), ...(o.hostCopies === true ? ['--host-copies', '--copy-out', o.copyOut ?? 'thread'] : []),
      ...(o.hosted === true ? ['--host-shard', `${i + 1}/${shards}`] : [])], (line) => {
      const m = JSON.parse(line) as { ready?: boolean; arrived?: number };
      if (m.arrived !== undefined) onArrival(m.arrived);
      if (m.ready !== true) return;
      ready += 1;
      if (ready === o.workers) for (const p of procs) p.say('go');
    }));
  const outs = await Promise.all(procs.map((p) => p.done));
  await agg.done;
  await Promise.all(followers);
  const results = outs.map((s) => JSON.parse(s.trim().split('\n').at(-1) ?? '{}') as { arrivals: number[]; cpuMs: number[]; minorFaults: number[]; transportBusy: number; peakRssBytes: number; hostCopyMs?: { weights: number; gradients: number } });
  const arrivals = results.map((r) => r.arrivals);
  // A step ends when the last worker has the new weights; arrivals are per-process clocks, so take each worker's own intervals, the slowest.
  const steps = Array.from({ length: o.steps }, (_, k) => Math.max(...arrivals.map((a) => (a[k + WARMUP_STEPS] ?? NaN) - (a[k + WARMUP_STEPS - 1] ?? NaN))));
  const copies = results.flatMap((r) => (r.hostCopyMs === undefined ? [] : [r.hostCopyMs]));
  const hostCopyMs = copies.length === 0 ? undefined : { weights: Math.max(...copies.map((c) => c.weights)), gradients: Math.max(...copies.map((c) => c.gradients)) };
  // Over the timed steps: from the last untimed step's arrival to the last step's, per step.
  const timed = (xs: number[]) => ((xs[WARMUP_STEPS + o.steps - 1] ?? NaN) - (xs[WARMUP_STEPS - 1] ?? NaN));
  const perStep = (field: 'cpuMs' | 'minorFaults') => aggAt.length === 2
    ? ((aggAt[1] as (typeof aggAt)[number])[field] - (aggAt[0] as (typeof aggAt)[number])[field] + sum(results.map((r) => timed(r[field])))) / o.steps
    : NaN;
  const cpuMsPerStep = perStep('cpuMs');
  const minorFaultsPerStep = perStep('minorFaults');
  return { stepMs: median(steps), steps, cpuMsPerStep, minorFaultsPerStep, transportBusy: Math.max(...results.map((r) => r.transportBusy ?? NaN)), peakRssBytes: peak, followerPeakRssBytes: followerPeak, workerPeakRssBytes: Math.max(...results.map((r) => r.peakRssBytes)), ...(hostCopyMs === undefined ? {} : { hostCopyMs }) };
}
