import { encodeBf16 } from '../shared/half.ts';
import type { FloatArena } from '../shared/simd.ts';
import { streamPutTwo } from '../worker/host-memory.ts';

/**
 * A contribution's floats for [lo, hi) of the sum, weighted by `n` (its samples), not yet in the sum; `round`: they
 * go in rounded to bfloat16 precision (a bf16 run's hosting worker sends its own range as fp32, see the aggregator).
 */
export interface DeferredRun<M> { member: M; lo: number; hi: number; g: Float32Array; n: number; round: boolean }

/**
 * A hosting worker's own chunks, kept out of its shard's sum until another member's chunk of the same floats
 * arrives, then both go in at once (the addon's streamPutTwo): sum = (0 + n_a a) + n_b b, the floats of a put of
 * the first and a reduce of the second, bit for bit, in one pass with streaming stores. Two contributions then
 * cost the sum one write, where a put and a reduce wrote it, read it back and wrote it again (8 bytes a float of
 * the shard's range less). The runs are views of the worker's own gradient (the in-process link does not copy),
 * which it does not write again before the step's weights reach it. Runs never overlap: each is a piece of the
 * sum no contribution had written when it came, and one member's runs wait at a time.
 */
export class DeferredContributions<M> {
  private runs: DeferredRun<M>[] = [];

  get size(): number { return this.runs.length; }

  /** Whether any of `member`'s floats wait. */
  has(member: M): boolean { return this.runs.some((r) => r.member === member); }

  /** Whether floats of a member other than `member` wait (one member's at a time: runs of two would overlap). */
  holdsOtherThan(member: M): boolean { return this.runs.some((r) => r.member !== member); }

  add(run: DeferredRun<M>): void { this.runs.push(run); }

  /** Forgets `member`'s runs (its contribution is void). */
  drop(member: M): void { this.runs = this.runs.filter((r) => r.member !== member); }

  clear(): void { this.runs = []; }

  /**
   * sum[lo, hi) (a range no contribution has written) from `g` (n; floats, or bfloat16 codes), fused with the runs
   * waiting there; floats of [lo, hi) with none waiting are put alone. Returns whether `g` was finite and the members
   * whose waiting floats were not (their runs are gone: the caller voids their contributions).
   */
  putWith(arena: FloatArena, sum: Float32Array, lo: number, hi: number, g: Float32Array | Uint16Array, n: number): { finite: boolean; voided: M[] } {
    let finite = true;
    const voided: M[] = [];
    const kept: DeferredRun<M>[] = [];
    const alone = (from: number, to: number) => {
      const part = g.subarray(from - lo, to - lo);
      finite = (part instanceof Uint16Array ? arena.accumulateBf16(sum, from, part, n, true) : arena.accumulate(sum, from, part, n, true)) && finite;
    };
    let at = lo;
    for (const d of [...this.runs].sort((x, y) => x.lo - y.lo)) {
      const from = Math.max(d.lo, lo);
      const to = Math.min(d.hi, hi);
      if (from >= to) { kept.push(d); continue; }
      if (at < from) alone(at, from);
      const a = d.g.subarray(from - d.lo, to - d.lo);
      const b = g.subarray(from - lo, to - lo);
      const flags = streamPutTwo(sum.subarray(from, to), a, d.n, b, n, d.round) ?? twoKernels(arena, sum, from, a, d.n, d.round, b, n);
      if ((flags & 1) !== 0 && !voided.includes(d.member)) voided.push(d.member);
      if ((flags & 2) !== 0) finite = false;
      if (d.lo < from) kept.push({ ...d, hi: from, g: d.g.subarray(0, from - d.lo) });
      if (to < d.hi) kept.push({ ...d, lo: to, g: d.g.subarray(to - d.lo) });
      at = to;
    }
    if (at < hi) alone(at, hi);
    this.runs = kept.filter((d) => !voided.includes(d.member));
    return { finite, voided };
  }

  /** Removes and returns the parts of the runs that lie within [lo, hi) (no other member will send them any more). */
  takeWithin(lo: number, hi: number): DeferredRun<M>[] {
    const out: DeferredRun<M>[] = [];
    const kept: DeferredRun<M>[] = [];
    for (const d of this.runs) {
      const from = Math.max(d.lo, lo);
      const to = Math.min(d.hi, hi);
      if (from >= to) { kept.push(d); continue; }
      out.push({ ...d, lo: from, hi: to, g: d.g.subarray(from - d.lo, to - d.lo) });
      if (d.lo < from) kept.push({ ...d, hi: from, g: d.g.subarray(0, from - d.lo) });
      if (to < d.hi) kept.push({ ...d, lo: to, g: d.g.subarray(to - d.lo) });
    }
    this.runs = kept;
    return out;
  }
}

/**
 * sum[at..] = 0 + n g (`put`), or += n g, with g's floats as they are or (`round`) rounded to bfloat16 precision:
 * then through their codes (the encode the worker would have made, into the arena's staging room: no allocation),
 * so the floats are those of its codes' put or reduce. Whether g was finite (a float rounded to Inf is not).
 */
export function putFloats(arena: FloatArena, sum: Float32Array, at: number, g: Float32Array, n: number, round: boolean, put: boolean): boolean {
  if (!round) return arena.accumulate(sum, at, g, n, put);
  const codes = arena.stagingCodes(g.length); // g: a chunk's piece, at most CHUNK_FLOATS
  encodeBf16(g, codes);
  return arena.accumulateBf16(sum, at, codes, n, put);
}

/** The put of `a` and the reduce of `b` as two kernels (streamPutTwo's flags), where the addon has no fused pass. */
function twoKernels(arena: FloatArena, sum: Float32Array, at: number, a: Float32Array, na: number, round: boolean, b: Float32Array | Uint16Array, nb: number): number {
  const aFinite = putFloats(arena, sum, at, a, na, round, true);
  const bFinite = b instanceof Uint16Array ? arena.accumulateBf16(sum, at, b, nb, false) : arena.accumulate(sum, at, b, nb, false);
  return (aFinite ? 0 : 1) | (bFinite ? 0 : 2);
}
