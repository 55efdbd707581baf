/**
 * The ranges of a step's sum that a contribution has written so far. The first contribution to
 * a float stores it and later ones add (FloatArena.accumulate's `put`), so the sum needs no zeroing
 * pass before each step and the first member's reduce does not read it (a pass over VGG-16's
 * 553 MB takes ~30 ms on one core of the device machine's Xeon, by its SGD's timing). Members send their gradients in runs of chunks (from `split`
 * to the end, then from 0), so the written set stays a handful of intervals.
 */
export class WrittenRanges {
  /** Sorted, disjoint, non-adjacent [lo, hi) pairs, flattened. */
  private runs: number[] = [];

  clear(): void {
    this.runs = [];
  }

  /** Whether every float of [lo, hi) has been written. */
  covers(lo: number, hi: number): boolean {
    for (let i = 0; i < this.runs.length; i += 2) if ((this.runs[i] as number) <= lo && hi <= (this.runs[i + 1] as number)) return true;
    return lo >= hi;
  }

  /** Calls `visit(lo, hi, fresh)` for the pieces of [lo, hi) in order, as take does, marking nothing written. */
  pieces(lo: number, hi: number, visit: (lo: number, hi: number, fresh: boolean) => void): void {
    let at = lo;
    for (let i = 0; i < this.runs.length; i += 2) {
      const from = Math.max(this.runs[i] as number, lo);
      const to = Math.min(this.runs[i + 1] as number, hi);
      if (from >= to) continue;
      if (at < from) visit(at, from, true);
      visit(from, to, false);
      at = to;
    }
    if (at < hi) visit(at, hi, true);
  }

  /**
   * Calls `visit(lo, hi, fresh)` for the pieces of [lo, hi) in order, `fresh` where nothing was
   * written yet, then marks [lo, hi) written. Returns whether every visit returned true (all are
   * made even after a false one: a void sum is reset as a whole).
   */
  take(lo: number, hi: number, visit: (lo: number, hi: number, fresh: boolean) => boolean): boolean {
    let ok = true;
    this.pieces(lo, hi, (a, b, fresh) => { ok = visit(a, b, fresh) && ok; });
    if (lo < hi) this.mark(lo, hi);
    return ok;
  }

  /** Marks [lo, hi) written: one run with the runs it overlaps or touches. */
  private mark(lo: number, hi: number): void {
    const kept: number[] = [];
    let mergedLo = lo;
    let mergedHi = hi;
    for (let i = 0; i < this.runs.length; i += 2) {
      const a = this.runs[i] as number;
      const b = this.runs[i + 1] as number;
      if (b < lo || a > hi) { kept.push(a, b); continue; } // apart (touching runs merge)
      mergedLo = Math.min(mergedLo, a);
      mergedHi = Math.max(mergedHi, b);
    }
    const idx = kept.findIndex((v, j) => j % 2 === 0 && v > mergedLo);
    kept.splice(idx === -1 ? kept.length : idx, 0, mergedLo, mergedHi);
    this.runs = kept;
  }
}
