/**
 * bench:allreduce — one synchronous step of a 138,357,544-float fp32 gradient
 * (VGG-16) through our aggregator, with the aggregator and each worker in its
 * own process over loopback, against torch.distributed.all_reduce with the gloo
 * backend (separate processes, same size; Debian python3-torch via
 * /usr/bin/python3), in the same run: gloo right before each of our rows (the ratio compares
 * neighbouring runs). Our step includes what gloo's does not:
 * the join round trip and momentum SGD on the master weights.
 * Also the aggregator's peak RSS (VmHWM) against the fp32 parameter bytes, and the CPU time per step of all
 * our processes against all gloo ranks' (on a box whose cores are all busy, the wall-time ratio follows it,
 * and it moves less between minutes than the wall time does).
 * `--shards 1,2`: also through K aggregator processes (coordinator --shards K), each
 * owning 1/K of the bytes (the largest follower's peak RSS is printed too).
 * `--hosted yes|no|only`: also (or only) with N shards hosted by the N workers themselves
 * (`worker start --host-shard`; the leader owns no floats; the largest hosting worker's peak RSS is printed).
 * `VGG_EARLY_COMMIT=1` (inherited by the aggregator processes): with early commit.
 * Last line: one JSON object.
 *
 *   npm run bench:allreduce [-- --workers 2,4 --steps 4 --wire fp32,bf16 --shards 1,2 --hosted yes]
 */
import path from 'node:path';
import { Command } from 'commander';
import { freePort } from '../coordinator/redis-server.ts';
import { intListOption, intOption } from '../shared/option-parsers.ts';
import { updateThreads } from '../shared/simd.ts';
import { VGG16_FLOATS, earlyCommitEnabled, median, run, runOurs, sum } from './allreduce/cluster.ts';

const o = new Command('bench:allreduce')
  .option('--workers <list>', 'worker counts', intListOption('--workers'), [2, 4])
  .option('--steps <n>', 'timed steps (after two untimed ones)', intOption('--steps', 1), 4)
  .option('--wire <list>', 'our wire formats to time (gloo is always fp32)', 'fp32,bf16')
  .option('--shards <list>', 'aggregator shard counts K to time', intListOption('--shards'), [1, 2])
  .option('--hosted <list>', 'also (yes) or only (only) time shards hosted by the workers (N shards, worker start --host-shard): yes, no, only', 'yes')
  .option('--python <path>', 'python with torch', '/usr/bin/python3')
  .parse(process.argv)
  .opts<{ workers: number[]; steps: number; python: string; wire: string; shards: number[]; hosted: string }>();
if (!['yes', 'no', 'only'].includes(o.hosted)) throw new Error(`--hosted: expected yes, no or only, got ${JSON.stringify(o.hosted)}`);

const FLOATS = VGG16_FLOATS;
const here = path.dirname(new URL(import.meta.url).pathname);

/** gloo's median step, and the CPU time and minor page faults of all its ranks per timed step (each rank's over the timed loop). */
async function gloo(workers: number): Promise<{ stepMs: number; steps: number[]; torch: string; cpuMsPerStep: number; minorFaultsPerStep: number }> {
  const port = await freePort();
  const procs = Array.from({ length: workers }, (_, rank) => run(o.python, [path.join(here, 'allreduce', 'gloo.py'),
    '--rank', String(rank), '--world', String(workers), '--port', String(port), '--floats', String(FLOATS), '--steps', String(o.steps)]).done);
  const outs = await Promise.all(procs);
  const last = outs.map((out) => JSON.parse(out.trim().split('\n').at(-1) ?? '{}') as { ms?: number[]; torch?: string; cpuMs: number; minorFaults: number });
  const r = last[0] as { ms: number[]; torch: string };
  return { stepMs: median(r.ms), steps: r.ms, torch: r.torch, cpuMsPerStep: sum(last.map((l) => l.cpuMs)) / o.steps, minorFaultsPerStep: sum(last.map((l) => l.minorFaults)) / o.steps };
}

const bytes = FLOATS * 4;
const rows: Record<string, unknown>[] = [];
process.stdout.write(`bench:allreduce: ${FLOATS.toLocaleString('en-US')} fp32 floats (${(bytes / 2 ** 20).toFixed(0)} MiB), ${o.steps} timed steps, median; aggregator update threads ${updateThreads()} (VGG_UPDATE_THREADS); early commit ${earlyCommitEnabled() ? 'on' : 'off'} (VGG_EARLY_COMMIT)\n`);
for (const n of o.workers) {
  // Shard counts K through separate aggregator processes, then (hosted) N shards on the workers' transport threads.
  const layouts = [...(o.hosted === 'only' ? [] : o.shards.map((shards) => ({ shards, hosted: false }))), ...(o.hosted === 'no' ? [] : [{ shards: n, hosted: true }])];
  for (const wire of o.wire.split(',')) for (const { shards, hosted } of layouts) {
    // gloo right before each of ours: this machine's speed drifts 10-35% between minutes, so a ratio compares one minute's two runs.
    const g = await gloo(n);
    const a = await runOurs({ workers: n, steps: o.steps, wire, shards, hosted });
    const row = {
      workers: n, wire, shards, hosted, followerPeakRssBytes: a.followerPeakRssBytes, workerPeakRssBytes: a.workerPeakRssBytes, oursMs: Math.round(a.stepMs), glooFp32Ms: Math.round(g.stepMs), ratio: Number((a.stepMs / g.stepMs).toFixed(3)),
      aggregatorPeakRssBytes: a.peakRssBytes, rssOverParamBytes: Number((a.peakRssBytes / bytes).toFixed(2)), oursSteps: a.steps.map(Math.round),
      glooSteps: g.steps.map(Math.round), torch: g.torch,
      workerTransportBusy: Number(a.transportBusy.toFixed(3)), oursCpuMsPerStep: Math.round(a.cpuMsPerStep), glooCpuMsPerStep: Math.round(g.cpuMsPerStep), cpuRatio: Number((a.cpuMsPerStep / g.cpuMsPerStep).toFixed(3)),
      oursMinorFaultsPerStep: Math.round(a.minorFaultsPerStep), glooMinorFaultsPerStep: Math.round(g.minorFaultsPerStep),
    };
    rows.push(row);
    const goal = wire === 'fp32' ? 'goal <= 1.0' : 'goal <= 0.67, 1.5x faster';
    const follower = hosted ? `; largest hosting worker ${(a.workerPeakRssBytes / 2 ** 30).toFixed(2)} GiB`
      : shards > 1 ? `; largest follower ${(a.followerPeakRssBytes / 2 ** 30).toFixed(2)} GiB` : '';
    const where = hosted ? `${shards} shards hosted by the workers` : `${shards} shard${shards > 1 ? 's' : ''}`;
    process.stdout.write(`${n} workers, ours ${wire}, ${where}: ${row.oursMs} ms, gloo fp32 ${row.glooFp32Ms} ms, ours/gloo ${row.ratio} (${goal}); CPU per step (all processes) ${row.oursCpuMsPerStep} ms against gloo's ${row.glooCpuMsPerStep} ms, ${row.cpuRatio}x; minor page faults per step ${row.oursMinorFaultsPerStep} against ${row.glooMinorFaultsPerStep}; a worker's transport thread busy ${(100 * a.transportBusy).toFixed(0)}% of the time; ${hosted ? 'leader' : 'aggregator'} peak RSS ${(a.peakRssBytes / 2 ** 30).toFixed(2)} GiB = ${row.rssOverParamBytes}x the fp32 parameter bytes${follower}\n`);
  }
}
process.stdout.write(`${JSON.stringify({ bench: 'allreduce', floats: FLOATS, updateThreads: updateThreads(), earlyCommit: earlyCommitEnabled(), rows })}\n`);
