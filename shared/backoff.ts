/**
 * Waits that double with each failure in a row up to a cap, and start over after a success: a worker's
 * reconnects to its aggregator, a follower's to its leader, a worker's next job after a refused one.
 */
export class Backoff {
  readonly firstMs: number;
  readonly maxMs: number;
  private inARow = 0;

  constructor(firstMs: number, maxMs: number) {
    if (!Number.isFinite(firstMs) || firstMs <= 0) throw new TypeError(`Backoff: expected a first wait > 0 ms, got ${firstMs}`);
    if (!Number.isFinite(maxMs) || maxMs < firstMs) throw new TypeError(`Backoff: expected a longest wait >= the first (${firstMs} ms), got ${maxMs}`);
    this.firstMs = firstMs;
    this.maxMs = maxMs;
  }

  /** Failures since the last reset. */
  get failures(): number { return this.inARow; }

  /** Counts a failure; the wait before the next try: firstMs after the first in a row, twice the last after each further one, at most maxMs. */
  next(): number {
    this.inARow += 1;
    return Math.min(this.maxMs, this.firstMs * 2 ** Math.min(this.inARow - 1, 52));
  }

  /** A success: the next failure waits firstMs again. */
  reset(): void { this.inARow = 0; }
}

/** Resolves after `ms`, or at once when `signal` aborts (or has). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted === true) return Promise.resolve();
  return new Promise((resolve) => {
    const wake = () => { clearTimeout(timer); resolve(); };
    const timer = setTimeout(() => { signal?.removeEventListener('abort', wake); resolve(); }, ms);
    signal?.addEventListener('abort', wake, { once: true });
  });
}
