/**
 * Helper threads that run the FloatArena's SIMD kernels on parts of a range, over the arena's
 * memory made shared. One core streams memory at a fraction of what the socket can: on the
 * device machine's Xeon (16 cores, 2026-11-28) one thread ran momentum SGD over 138M floats in
 * 153-168 ms (2.4x this development box's EPYC core), 4 threads in 54 ms.
 *
 * Used for the update at commit (SGD, the BN means: one call per layout entry), not for the reduce
 * on arrival: a fork-join per 4 MiB chunk, between the socket reads of one transport thread, made
 * the steps slower on that machine (bench:allreduce, same run, 4 threads against 1: 1 aggregator
 * with 4 workers 2,438 against 1,570 ms, 4 hosted shards 866 against 654 ms), and the reduce's
 * calibration loop gained little (110 against 134 ms: its input is staged into the arena by one
 * memcpy per chunk anyway). Mind also that the pool needs the arena's memory shared, and V8 copies
 * into a SharedArrayBuffer (the frame slots' TypedArray.set from socket reads) about half as fast as
 * into plain memory (relaxed memmove): `--update-threads` is opt-in for that reason (simd.ts).
 *
 * The hand-off is synchronous, as the kernels are: the caller posts each helper its part through
 * a shared control block (Atomics.notify), runs its own part, and waits (Atomics.wait) for the
 * helpers. A helper sleeps in Atomics.wait between calls and never returns to its event loop.
 */
import { Worker } from 'node:worker_threads';

/** Kernel names in the order the control block numbers them: the update's (the reduce stays on its thread). */
export const POOL_OPS = ['sgd', 'avg'] as const;
export type PoolOp = (typeof POOL_OPS)[number];

/** Int32 slots per helper in the control block: [request, done, op]. */
const SLOTS = 16;
/** Float64 arguments per helper (the kernel's, at most 8; the result comes back in the first). */
const ARGS = 8;
/** The longest a caller waits for a helper before it gives up: a helper that died. */
const WAIT_MS = 60_000;

const HELPER = `
const { workerData } = require('node:worker_threads');
const { module, memory, ctl, args, index, ops } = workerData;
const k = new WebAssembly.Instance(module, { env: { memory } }).exports;
const at = index * ${SLOTS};
const a = args.subarray(index * ${ARGS}, index * ${ARGS} + ${ARGS});
let seen = 0;
for (;;) {
  Atomics.wait(ctl, at, seen);
  const req = Atomics.load(ctl, at);
  if (req === seen) continue;
  if (req < 0) break;
  seen = req;
  const r = k[ops[ctl[at + 2]]](a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
  a[0] = typeof r === 'number' ? r : 0;
  Atomics.store(ctl, at + 1, seen);
  Atomics.notify(ctl, at + 1);
}
`;

export class KernelPool {
  readonly helpers: number;
  private readonly ctl: Int32Array;
  private readonly args: Float64Array;
  private readonly threads: Worker[];
  private readonly exited: Promise<void>[];
  private seq = 0;
  private closed = false;

  /** `helpers` threads, each with its own instance of `module` over the shared `memory`. */
  constructor(module: WebAssembly.Module, memory: WebAssembly.Memory, helpers: number) {
    if (!(memory.buffer instanceof SharedArrayBuffer)) throw new TypeError('KernelPool: expected a shared WebAssembly.Memory, got an unshared one');
    this.helpers = helpers;
    this.ctl = new Int32Array(new SharedArrayBuffer(4 * SLOTS * helpers));
    this.args = new Float64Array(new SharedArrayBuffer(8 * ARGS * helpers));
    this.threads = Array.from({ length: helpers }, (_, index) => {
      const w = new Worker(HELPER, { eval: true, workerData: { module, memory, ctl: this.ctl, args: this.args, index, ops: POOL_OPS } });
      w.unref(); // the process may exit with helpers asleep
      return w;
    });
    this.exited = this.threads.map((w) => new Promise<void>((resolve) => { w.once('exit', () => resolve()); w.once('error', () => undefined); }));
  }

  /**
   * Runs `op` on every part: `parts[0]` on this thread, the rest on helpers (at most `helpers`
   * of them), and returns the sum of the kernels' results (0 for the update's kernels, which return none).
   * `own` runs this thread's part.
   */
  run(op: PoolOp, parts: number[][], own: (args: number[]) => number): number {
    if (this.closed) throw new Error('KernelPool: closed');
    if (parts.length - 1 > this.helpers) throw new RangeError(`KernelPool: expected at most ${this.helpers + 1} parts, got ${parts.length}`);
    this.seq += 1;
    const code = POOL_OPS.indexOf(op);
    for (let h = 0; h + 1 < parts.length; h += 1) {
      const p = parts[h + 1] as number[];
      for (let i = 0; i < ARGS; i += 1) this.args[h * ARGS + i] = p[i] ?? 0;
      this.ctl[h * SLOTS + 2] = code;
      Atomics.store(this.ctl, h * SLOTS, this.seq);
      Atomics.notify(this.ctl, h * SLOTS);
    }
    let result = own(parts[0] as number[]);
    for (let h = 0; h + 1 < parts.length; h += 1) {
      for (;;) {
        const done = Atomics.load(this.ctl, h * SLOTS + 1);
        if (done === this.seq) break;
        if (Atomics.wait(this.ctl, h * SLOTS + 1, done, WAIT_MS) === 'timed-out') {
          throw new Error(`KernelPool: helper ${h} did not finish ${op} in ${WAIT_MS / 1000} s (a helper thread died?)`);
        }
      }
      result += this.args[h * ARGS] as number;
    }
    return result;
  }

  /** Wakes the helpers to exit. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (let h = 0; h < this.helpers; h += 1) {
      (this.threads[h] as Worker).ref(); // held until it has exited
      Atomics.store(this.ctl, h * SLOTS, -1);
      Atomics.notify(this.ctl, h * SLOTS);
    }
    await Promise.all(this.exited);
  }
}
