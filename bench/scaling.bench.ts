/**
 * bench:scaling — N workers (1, 2, 4) that simulate a GPU's compute time per
 * step (`--compute-ms`, default 290: VGG-16 at batch 64 on a V100-class GPU; an
 * H200 measured 98 ms fp32, 30 ms bf16: docs/measurements/) and move real
 * VGG-16-sized gradients through our aggregator over loopback. Reports the
 * measured scaling efficiency here (compute time / step time; and, as the paper and
 * Horovod count it, one worker's step time / N workers' step time), then a model,
 * calibrated on this machine's measured per-byte costs, projecting the
 * efficiency for N up to 64 workers over 25 and 100 GbE with K aggregator shards.
 * Last line: one JSON object.
 *
 * Measured with and without overlap (`--overlap false,true`): with it, each worker sends the
 * classifier's gradients (fc6-fc8, 89% of the bytes) 43% into the simulated compute and the conv
 * body's at its end, as the worker does; an H200 has the classifier's gradients complete 1 ms into
 * the backward and runs the body's backward for 57% of the fp32 step after that
 * (docs/measurements/h200-vgg16-overlap.json). `--early-commit false,true`: measured without and/or
 * with early commit (each range's new weights sent once every worker has sent it).
 *
 * The model (ninth session; before it, the tables credited the weights' return to the overlap and to
 * full duplex, which only early commit gives). Per step, phases of a step:
 *   up(N)   = max(P / B (a worker's link), N P / (K B) (a shard's link)): the gradients in
 *   down(N) = the same: the new weights out          (K = N hosted: (N - 1) P / (N B) each, a ring's bytes)
 *   reduce  = (N P / K) c_reduce, update = (P / K) c_update   (per shard, on its VGG_UPDATE_THREADS threads)
 *   P = gradient bytes on the wire (fp32: 553 MB; bf16: half), B = link bytes/s,
 *   c_reduce, c_update = measured ns per byte of our reduce-on-arrival and SGD loops.
 * Default (no early commit): the weights go out after the update, after every gradient is in.
 *   no overlap:   step = compute + up + reduce + update + down
 *   overlap:      step = compute + comm - min(0.89 (up + reduce), 0.57 compute)   (the classifier's share of
 *                 the gradients' phase hides in the body's backward; the update and the weights do not)
 * Early commit: the weights of a range go out while later ranges come in (full duplex), at the price of
 *   one more pass over the updated floats (finish: 0.8 c_update, 16 of SGD's 20 bytes per float):
 *   comm_e = max(up, down) + reduce + 1.8 update;  step = compute + comm_e - min(0.89 comm_e, 0.57 compute).
 * Host copies (tenth session; `--host-copies true`, the default): a tfjs-node worker also copies the
 * gradients out of the framework every step and the GPU moves the weights and gradients over PCIe (H2D,
 * D2H: 40.5 ms each, pageable memory as tfjs-node's, an H200); bench/allreduce/host-copies.ts makes the
 * host copies, measured here. Weights in = H2D (+ TF's copy of any view it finds misaligned: none since
 * the eleventh session's aligned buffers). Gradients out = main (D2H and dataSync's fresh copy, on the
 * main thread) + set (the copy into the shared gradient, on the transport thread since the eleventh
 * session: Transport.putGradient). Eleventh session: tfjs-node's backward pass runs on the main thread
 * and dispatches the body's ops only after the classifier's gradients are out, so the GPU waits for
 * `main` (the tenth session's model had the copies run alongside the body's backward):
 *   no overlap:   step = compute + weights_in + main + set + comm
 *   overlap:      window = 0.57 compute - 0.89 set (at least 0), step = compute + weights_in + main
 *                 + 0.11 set + max(0, 0.89 set - 0.57 compute) + comm - min(0.89 (up + reduce), window)
 *   early commit: the same with comm_e and min(0.89 comm_e, window).
 * With every copy on the main thread (`--copy-out main`, the worker before): window = 0.57 compute and
 * all of set on the step (printed for 64 workers).
 * Transport CPU (thirteenth session; `--transport-cpu true`, the default): a phase takes at least its busiest
 * thread's socket work, c_transport ns per byte sent or received (calibrated here from a hosted 2-worker run's
 * CPU time per step; one thread per process does all of its sockets):
 *   up = down = max(link time as above, c_transport x (hosted: 2 (N - 1) P / N; else max(P, N P / K)))
 *   early commit: max(up's link time, 2 x its CPU time) in place of max(up, down): one thread does both directions.
 * The earlier model (`--transport-cpu false`) had the link alone: 100 GbE needs ~12.5 GB/s, and one
 * thread here moves ~3.5 GB/s of socket bytes.
 *
 *   npm run bench:scaling [-- --workers 1,2,4 --compute-ms 290 --steps 3 --shards 1,2 --overlap false,true --hosted false,true --host-copies false,true --copy-out main,thread --transport-cpu true]
 */
import { Command } from 'commander';
import { FlatMomentumSgd } from '../shared/flat-sgd.ts';
import { choiceListOption, choiceOption, intListOption, intOption } from '../shared/option-parsers.ts';
import { buildLayout } from '../shared/param-layout.ts';
import { FloatArena, aggregatorArenaFloats, updateThreads } from '../shared/simd.ts';
import { DEFAULT_MODEL_CONFIG } from '../shared/vgg-configs.ts';
import { CHUNK_FLOATS } from '../shared/wire-protocol.ts';
import { alignedFloats, reuseFreedMemory } from '../worker/host-memory.ts';
import { VGG16_FLOATS, WINDOW_FRACTION, median, runOurs } from './allreduce/cluster.ts';
import { D2H_MS, H2D_MS, copyGradientsOut, copyWeightsIn } from './allreduce/host-copies.ts';

/** A list of true/false for `option`. */
const boolList = (option: string) => (v: string): boolean[] => choiceListOption(option, ['false', 'true'])(v).map((x) => x === 'true');

const o = new Command('bench:scaling')
  .option('--workers <list>', 'worker counts measured here', intListOption('--workers'), [1, 2, 4])
  .option('--compute-ms <n>', 'simulated GPU compute time per step', intOption('--compute-ms', 0), 290)
  .option('--steps <n>', 'timed steps per point (after two untimed ones)', intOption('--steps', 1), 3)
  .option('--wire <w>', 'wire format of the measured runs', 'fp32')
  .option('--shards <list>', 'aggregator shard counts K of the measured runs', intListOption('--shards'), [1])
  .option('--overlap <list>', 'measure without (false) and/or with (true) the classifier sent during the backward', boolList('--overlap'), [false, true])
  .option('--hosted <list>', 'also measure with the workers hosting N shards (true; worker start --host-shard) instead of --shards', boolList('--hosted'), [false, true])
  .option('--early-commit <list>', 'measure without (false) and/or with (true) early commit', boolList('--early-commit'), [false])
  .option('--host-copies <list>', 'measure without (false) and/or with (true) the host copies of a tfjs-node worker (the model includes them when true is listed)', boolList('--host-copies'), [true])
  .option('--copy-out <list>', 'with host copies: each gradient tensor copied into the shared gradient on the transport thread (thread: the worker) and/or on the main thread (main: before the eleventh session)', choiceListOption('--copy-out', ['main', 'thread'] as const), ['thread'])
  .option('--transport-cpu <bool>', 'the model counts the transport threads\' CPU per byte, calibrated here (false: the link alone, the model before the thirteenth session)', (v: string) => choiceOption('--transport-cpu', ['false', 'true'])(v) === 'true', true)
  .parse(process.argv)
  .opts<{ workers: number[]; computeMs: number; steps: number; wire: string; shards: number[]; overlap: boolean[]; hosted: boolean[]; earlyCommit: boolean[]; hostCopies: boolean[]; copyOut: ('main' | 'thread')[]; transportCpu: boolean }>();

// Calibration: our per-byte CPU costs, measured here on the aggregator's real loops (138M floats in a
// FloatArena: SIMD; each 4 MiB chunk staged in from outside the arena, as from a socket).
const layout = buildLayout(DEFAULT_MODEL_CONFIG);
const n = VGG16_FLOATS;
const threads = updateThreads(); // VGG_UPDATE_THREADS, as every aggregator process of the runs below
const arena = new FloatArena(aggregatorArenaFloats(n), threads);
const sum = arena.alloc(n);
const chunk = new Float32Array(CHUNK_FLOATS).fill(1e-3);
const w = arena.alloc(n).fill(0.01);
const time = (f: () => void) => { const t = performance.now(); f(); return performance.now() - t; };
const reduce = () => { for (let off = 0; off < n; off += CHUNK_FLOATS) arena.accumulate(sum, off, chunk.subarray(0, Math.min(CHUNK_FLOATS, n - off)), 2); };
reduce();
const reduceMs = time(reduce);
const sgd = new FlatMomentumSgd(layout, { learningRate: 0.01, momentum: 0.9, weightDecay: 5e-4 }, arena.alloc(n));
sgd.apply(w, sum, 0.5);
const updateMs = time(() => sgd.apply(w, sum, 0.5));
const cReduce = (reduceMs * 1e6) / (n * 4); // ns per gradient byte
const cUpdate = (updateMs * 1e6) / (n * 4);
// A worker's host copies per step (host-copies.ts), on this machine, when the model is to include them:
// the weights viewed in a received version (TF's copy only where a view is misaligned), the gradients out
// (dataSync's fresh arrays: syncMs) and into the shared gradient (setMs), with the heap setting a worker
// makes (VGG_HEAP_REUSE=false: without).
const withHost = o.hostCopies.includes(true);
let copiesNote = 'no host copies (--host-copies false)';
let heapReuse = false;
let weightsCopyMs = 0;
let weightsCopiedBytes = 0;
let syncMs = 0;
let setMs = 0;
if (withHost) {
  const heap = reuseFreedMemory();
  const received = alignedFloats(n).fill(0.01);
  const device = new Float32Array(n).fill(1e-3);
  const sharedFlat = new Float32Array(new SharedArrayBuffer(n * 4));
  // Steady state: the median of the last 4 of 6 runs (the first ones map the memory the later ones reuse).
  const steady = (f: () => number) => median(Array.from({ length: 6 }, f).slice(2));
  weightsCopyMs = steady(() => {
    const r = copyWeightsIn(layout.entries, (lo, hi) => received.subarray(lo, hi));
    weightsCopiedBytes = r.copiedBytes;
    return r.ms;
  });
  let synced: Float32Array[] = [];
  syncMs = steady(() => { synced = []; return copyGradientsOut(layout.entries, device, (_o, v) => { synced.push(v); }); });
  setMs = steady(() => time(() => layout.entries.forEach((e, i) => sharedFlat.set(synced[i] as Float32Array, e.offset))));
  heapReuse = heap.applied;
  copiesNote = `a worker's host copies per step${heap.applied ? '' : ` (${heap.reason})`}: weights in ${weightsCopyMs.toFixed(0)} ms (${(weightsCopiedBytes / 2 ** 20).toFixed(0)} MiB copied), gradients out ${syncMs.toFixed(0)} ms + ${setMs.toFixed(0)} ms into the shared gradient (+ ${H2D_MS} / ${D2H_MS} ms PCIe)`;
}
const weightsInMs = withHost ? weightsCopyMs + H2D_MS : 0;
// The gradients' part on the main thread (D2H and dataSync's copy: the GPU waits for it) and the copy into the shared gradient.
const gradsMainMs = withHost ? syncMs + D2H_MS : 0;
const gradsSetMs = withHost ? setMs : 0;
process.stdout.write(`calibration (${threads} update thread${threads > 1 ? 's' : ''}): reduce ${reduceMs.toFixed(0)} ms, SGD update ${updateMs.toFixed(0)} ms per 138M floats (${cReduce.toFixed(2)}, ${cUpdate.toFixed(2)} ns/byte); ${copiesNote}\n`);

// The transport's own CPU per byte (thirteenth session): every byte a process sends or receives costs its
// thread the kernel's copy, ws's framing and our copy into the frame slot or the version buffer, on one
// thread per process (a worker's transport thread, which also runs its hosted shard). Calibrated from a
// hosted 2-worker run without compute: the CPU time of all processes per step (cluster.ts reads /proc)
// less the reduce and the update counted above, over the bytes all processes sent and received
// (every worker sends (N - 1) / N of the gradient and as much of the weights, and receives as much).
// Loopback has 64 KiB packets; a NIC's are 1.5-9 KB, so a cluster's cost per byte is at least this.
const transportNs: Record<string, number> = { fp32: 0, bf16: 0 };
if (o.transportCpu) {
  for (const wire of ['fp32', 'bf16']) {
    const N = 2;
    const r = await runOurs({ workers: N, steps: o.steps, wire, hosted: true });
    const sideBytes = 4 * (N - 1) * n * (wire === 'fp32' ? 4 : 2);
    transportNs[wire] = (Math.max(0, r.cpuMsPerStep - N * reduceMs - updateMs) * 1e6) / sideBytes;
  }
  const rate = (ns: number) => `${ns.toFixed(3)} ns/byte, ${(1 / ns).toFixed(1)} GB/s a thread`;
  process.stdout.write(`calibration, transport CPU (2 workers hosting their shards, fp32 / bf16 on the wire; bf16's conversions included): ${rate(transportNs.fp32 as number)} / ${rate(transportNs.bf16 as number)} sent or received\n`);
}

// Measured here: one machine, loopback, N worker processes.
const measured: { workers: number; shards: number; hosted: boolean; overlap: boolean; earlyCommit: boolean; hostCopies: boolean; copyOut?: 'main' | 'thread'; stepMs: number; cpuMsPerStep: number; efficiency: number; relativeEfficiency?: number; hostCopyMs?: { weights: number; gradients: number } }[] = [];

const layouts = o.hosted.flatMap((hosted): { hosted: boolean; shards: number }[] => (hosted ? [{ hosted, shards: 0 }] : o.shards.map((shards) => ({ hosted, shards }))));
const copyModes = o.hostCopies.flatMap((h): { hostCopies: boolean; copyOut?: 'main' | 'thread' }[] => (h ? o.copyOut.map((copyOut) => ({ hostCopies: h, copyOut })) : [{ hostCopies: h }]));
for (const { hostCopies, copyOut } of copyModes) for (const earlyCommit of o.earlyCommit) for (const overlap of o.overlap) for (const layout of layouts) for (const workers of o.workers) {
  // Hosted: worker i hosts shard i + 1 of N + 1, the leader owns no floats (N shards with bytes).
  const shards = layout.hosted ? workers : layout.shards;
  const r = await runOurs({ workers, steps: o.steps, wire: o.wire, computeMs: o.computeMs, shards, overlap, hosted: layout.hosted, earlyCommit, hostCopies, copyOut });
  const efficiency = o.computeMs / r.stepMs;
  measured.push({ workers, shards, hosted: layout.hosted, overlap, earlyCommit, hostCopies, ...(copyOut === undefined ? {} : { copyOut }), stepMs: Math.round(r.stepMs), cpuMsPerStep: Math.round(r.cpuMsPerStep), efficiency: Number(efficiency.toFixed(3)), ...(r.hostCopyMs === undefined ? {} : { hostCopyMs: r.hostCopyMs }) });
  const copies = r.hostCopyMs === undefined ? '' : ` (host copies on the main thread: weights ${r.hostCopyMs.weights.toFixed(0)} ms, gradients ${r.hostCopyMs.gradients.toFixed(0)} ms)`;
  process.stdout.write(`measured, ${workers} worker(s), ${shards} shard(s)${layout.hosted ? ' hosted by the workers' : ''}, ${o.wire}, ${overlap ? 'overlap' : 'no overlap'}${earlyCommit ? ', early commit' : ''}${hostCopies ? `, host copies (gradients into the shared buffer on the ${copyOut === 'main' ? 'main' : 'transport'} thread)` : ''}, compute ${o.computeMs} ms: step ${r.stepMs.toFixed(0)} ms, efficiency ${(100 * efficiency).toFixed(1)}%${copies}; CPU of all processes ${r.cpuMsPerStep.toFixed(0)} ms a step\n`);
}
/**
 * Scaling efficiency as the paper (3.75x on 4 GPUs: 93.75%) and Horovod (VGG-16: 68-79%) count it: throughput per worker
 * at N against one worker training alone, i.e. one worker's step time over N workers' (the compute per worker is the
 * same). Alone here: one worker hosting its only shard (the update in process, no socket), with the same overlap and
 * host copies. The efficiency above is stricter: the compute's share of the step, which a lone worker's own host copies
 * and update lower too.
 */
const aloneOf = (m: (typeof measured)[number]) => measured.find((a) => a.workers === 1 && a.hosted && a.overlap === m.overlap && a.earlyCommit === m.earlyCommit && a.hostCopies === m.hostCopies && a.copyOut === m.copyOut);
const relativeLines: string[] = [];
for (const m of measured) {
  const alone = aloneOf(m);
  if (alone === undefined || m.workers === 1) continue;
  m.relativeEfficiency = Number((alone.stepMs / m.stepMs).toFixed(3));
  relativeLines.push(`${m.workers} workers, ${m.hosted ? `${m.shards} shards hosted by the workers` : `${m.shards} shard(s)`}, ${m.overlap ? 'overlap' : 'no overlap'}${m.earlyCommit ? ', early commit' : ''}: ${(100 * m.relativeEfficiency).toFixed(1)}%`);
}
if (relativeLines.length > 0) process.stdout.write(`measured against one worker alone (its shard in process; one worker's step / N workers' step, the paper's and Horovod's count): ${relativeLines.join('; ')}\n`);
process.stdout.write('(every process shares this machine\'s 2 cores and one memory bus: the measured figures are a floor, not a cluster)\n');

// Projection for a cluster.
const projections: { link: string; wire: string; shards: string; workers: number; efficiency: number }[] = [];
const links = { '25GbE': 25e9 / 8, '100GbE': 100e9 / 8 };
const tables = { plain: [] as string[], overlap: [] as string[], early: [] as string[], relative: [] as string[] };
const overlapProjections: typeof projections = [];
/** The overlap projection against one worker alone, its shard in process (the paper's and Horovod's count). */
const relativeOverlapProjections: typeof projections = [];
const earlyCommitProjections: typeof projections = [];
const copyOutMain: ((typeof projections)[number] & { thread: number })[] = [];
// H200, fp32, batch 64 (docs/measurements/h200-vgg16-overlap.json): classifier bytes / all bytes, body backward after them / step.
const CLASSIFIER_FRACTION = 494_571_424 / 553_430_176;
const pct = (e: number) => `${(100 * e).toFixed(0)}%`.padStart(5);
/**
 * The model's efficiencies for N workers over a link of `bytesPerSec` with `shards` shards, each process's
 * socket work spread over `threads` threads (1: what is built, one transport thread a process).
 */
function model(bytesPerSec: number, wire: string, shards: string, N: number, threads: number) {
  const P = n * (wire === 'fp32' ? 4 : 2);
  // The CPU loops touch fp32 values: bytes of fp32 regardless of the wire.
  const P32 = n * 4;
  const K = shards === '1' ? 1 : shards === 'N/8' ? Math.max(1, N / 8) : N;
  // One phase's bytes over the busiest link. Hosted by the workers: a worker's own slice stays in
  // process, so its link moves (N - 1) / N of P each way: the ring all-reduce's bytes.
  const linkMs = (shards === 'N hosted' ? ((N - 1) * P) / (N * bytesPerSec) : Math.max(P / bytesPerSec, (N * P) / (K * bytesPerSec))) * 1000;
  // The busiest process's socket work in one phase: a hosting worker sends and receives (N - 1) / N of
  // P; otherwise a worker sends P and a shard receives N P / K (or the reverse, for the weights).
  const cpuMs = ((shards === 'N hosted' ? (2 * (N - 1) * P) / N : Math.max(P, (N * P) / K)) * (transportNs[wire] as number)) / 1e6 / threads;
  const phaseMs = Math.max(linkMs, cpuMs);
  const reduceMs = ((N * P32) / K) * cReduce / 1e6;
  const updateMs = (P32 / K) * cUpdate / 1e6;
  const comm = 2 * phaseMs + reduceMs + updateMs;
  const plain = o.computeMs / (o.computeMs + weightsInMs + gradsMainMs + gradsSetMs + comm);
  // Overlap: the classifier's gradients come out on the main thread before the body's backward is
  // dispatched (the GPU waits: gradsMain all on the step); the transport thread then copies them into
  // the shared gradient during the body's backward, before their send can use that window.
  const overlapOf = (setInWindowMs: number, c: number, hidden: number) => {
    const hideMs = Math.max(0, WINDOW_FRACTION * o.computeMs - setInWindowMs);
    const host = weightsInMs + gradsMainMs + gradsSetMs - setInWindowMs + Math.max(0, setInWindowMs - WINDOW_FRACTION * o.computeMs);
    return o.computeMs / (o.computeMs + host + c - Math.min(hidden, hideMs));
  };
  const overlap = overlapOf(CLASSIFIER_FRACTION * gradsSetMs, comm, CLASSIFIER_FRACTION * (phaseMs + reduceMs));
  // Full duplex overlaps the two phases on the link, not on the threads that do both.
  const commEarly = Math.max(linkMs, 2 * cpuMs) + reduceMs + 1.8 * updateMs;
  const early = overlapOf(CLASSIFIER_FRACTION * gradsSetMs, commEarly, CLASSIFIER_FRACTION * commEarly);
  // The worker before the eleventh session: every copy on the main thread, the body's backward after them.
  const copyOutMainOverlap = overlapOf(0, comm, CLASSIFIER_FRACTION * (phaseMs + reduceMs));
  return { plain, overlap, early, copyOutMainOverlap };
}

for (const [link, bytesPerSec] of Object.entries(links)) {
  for (const wire of ['fp32', 'bf16']) {
    for (const shards of ['1', 'N/8', 'N', 'N hosted']) {
      const cells = { plain: [] as string[], overlap: [] as string[], early: [] as string[], relative: [] as string[] };
      // One worker alone: its only shard in process (no link, no socket).
      const one = model(bytesPerSec, wire, 'N hosted', 1, 1).overlap;
      for (const N of [4, 8, 16, 32, 64]) {
        const { plain, overlap, early, copyOutMainOverlap } = model(bytesPerSec, wire, shards, N, 1);
        if (shards === 'N hosted' && N === 64) copyOutMain.push({ link, wire, shards, workers: N, efficiency: Number(copyOutMainOverlap.toFixed(3)), thread: Number(overlap.toFixed(3)) });
        const at = { link, wire, shards, workers: N };
        projections.push({ ...at, efficiency: Number(plain.toFixed(3)) });
        overlapProjections.push({ ...at, efficiency: Number(overlap.toFixed(3)) });
        relativeOverlapProjections.push({ ...at, efficiency: Number((overlap / one).toFixed(3)) });
        cells.relative.push(pct(overlap / one));
        earlyCommitProjections.push({ ...at, efficiency: Number(early.toFixed(3)) });
        cells.plain.push(pct(plain));
        cells.overlap.push(pct(overlap));
        cells.early.push(pct(early));
      }
      for (const k of ['plain', 'overlap', 'early', 'relative'] as const) tables[k].push(`${link.padEnd(7)} ${wire.padEnd(5)} K=${shards.padEnd(8)} ${cells[k].join(' ')}`);
    }
  }
}
// What more transport threads a process would give (not built: every process has one): 64 workers, K=N hosted, overlap.
const TRANSPORT_THREADS = [1, 2, 4, 8];
const threadProjections = Object.entries(links).flatMap(([link, bytesPerSec]) => ['fp32', 'bf16'].map((wire) => ({
  link, wire, shards: 'N hosted', workers: 64, byThreads: TRANSPORT_THREADS.map((t) => Number(model(bytesPerSec, wire, 'N hosted', 64, t).overlap.toFixed(3))),
})));
const hostNote = withHost ? `with a worker's host copies and PCIe: weights in ${weightsInMs.toFixed(0)} ms, gradients out ${gradsMainMs.toFixed(0)} ms (main thread) + ${gradsSetMs.toFixed(0)} ms (transport thread) per step` : 'without the workers\' host copies (--host-copies false)';
process.stdout.write(`\nprojected efficiency, compute ${o.computeMs} ms/step, ${hostNote}, no overlap (N = 4 8 16 32 64):\n${tables.plain.join('\n')}\n`);
process.stdout.write(`\nprojected with the classifier's gradients sent during the body's backward (what the worker does; the weights come back after the commit):\n${tables.overlap.join('\n')}\n`);
process.stdout.write(`\nthe same (overlap) against one worker alone (its only shard in process): throughput per worker at N against a lone worker's, as the paper (3.75x on 4 GPUs) and Horovod (VGG-16: 68-79%) count scaling:\n${tables.relative.join('\n')}\n`);
process.stdout.write(`\nprojected with that and --early-commit (each range's weights go out while later ranges come in; one more pass over the update):\n${tables.early.join('\n')}\n`);
if (o.transportCpu) {
  const cells = threadProjections.map((p) => `${p.link} ${p.wire} ${p.byThreads.map((e) => pct(e).trim()).join(' / ')}`);
  process.stdout.write(`\nthe same, 64 workers, K=N hosted, overlap, with each process's sockets spread over ${TRANSPORT_THREADS.join(' / ')} threads (one by default; 2 is what VGG_HOSTED_SHARD_THREAD=1 builds, a hosted shard's sockets on a thread of their own, less the 2/N of the vector it then moves over loopback; 4 and 8 not built): ${cells.join(', ')}\n`);
}
if (withHost) {
  const cells = copyOutMain.map((p) => `${p.link} ${p.wire} ${pct(p.efficiency).trim()} (${pct(p.thread).trim()} on the transport thread)`);
  process.stdout.write(`\nthe same, 64 workers, K=N hosted, overlap, with the gradients copied into the shared buffer on the main thread (the worker before the eleventh session): ${cells.join(', ')}\n`);
}
process.stdout.write(`${JSON.stringify({ bench: 'scaling', computeMs: o.computeMs, wire: o.wire, calibration: { updateThreads: threads, reduceMs, updateMs, cReduceNsPerByte: cReduce, cUpdateNsPerByte: cUpdate, transportCpu: o.transportCpu, cTransportNsPerByte: transportNs, weightsCopyMs, weightsCopiedBytes, gradientsSyncMs: syncMs, gradientsSetMs: setMs, heapReuse, h2dMs: H2D_MS, d2hMs: D2H_MS }, modelHostMs: { weightsIn: weightsInMs, gradientsMain: gradsMainMs, gradientsSet: gradsSetMs }, measured, projections, overlapProjections, relativeOverlapProjections, earlyCommitProjections, copyOutMainProjections: copyOutMain, transportThreads: TRANSPORT_THREADS, transportThreadProjections: threadProjections })}\n`);
