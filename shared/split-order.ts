import { CHUNK_FLOATS } from './wire-protocol.ts';

/**
 * The order a split vector of `total` floats travels in, gradients and weights alike: floats
 * [split, total) first, then [0, split) (the classifier's gradients are final first and sit at the
 * end of the layout); split 0 is the plain order. A cursor is where the next chunk must start
 * (`next`) and whether [split, total) is in (`wrapped`).
 */
export interface SplitCursor { next: number; split: number; wrapped: boolean }

/** A cursor at the start of the order from `split`. */
export function startAt(split: number): SplitCursor {
  return { next: split, split, wrapped: split === 0 };
}

/** Where the cursor's current run of chunks ends: `total`, or after the wrap the split. */
export function runEnd(c: SplitCursor, total: number): number {
  return c.wrapped && c.split > 0 ? c.split : total;
}

/** Moves the cursor past `n` floats (checked against runEnd by the caller), wrapping at `total`. */
export function advance(c: SplitCursor, n: number, total: number): void {
  c.next += n;
  if (!c.wrapped && c.next === total) Object.assign(c, { next: 0, wrapped: true });
}

/** All `total` floats are in. */
export function complete(c: SplitCursor, total: number): boolean {
  return c.wrapped && c.next === runEnd(c, total);
}

/** Floats in so far, counted in the order. */
export function position(c: SplitCursor, total: number): number {
  return c.split === 0 ? c.next : c.wrapped ? total - c.split + c.next : c.next - c.split;
}

/** The float range at position `pos` of the order from `split`: a chunk, cut at the order's runs. */
export function unitAt(pos: number, split: number, total: number): [number, number] {
  const first = total - split;
  if (pos < first) return [split + pos, Math.min(total, split + pos + CHUNK_FLOATS)];
  const lo = pos - first;
  return [lo, Math.min(split, lo + CHUNK_FLOATS)];
}

/** Positions [from, to) of the order from `split` as float ranges, in that order. */
export function runsOf(split: number, from: number, to: number, total: number): [number, number][] {
  const first = total - split;
  const runs: [number, number][] = [];
  if (from < Math.min(to, first)) runs.push([split + from, split + Math.min(to, first)]);
  if (to > Math.max(from, first)) runs.push([Math.max(from, first) - first, to - first]);
  return runs;
}
