import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Backoff, sleep } from '../../shared/backoff.ts';

describe('Backoff (waits between tries)', () => {
  test('doubles with each failure in a row up to the cap, and starts over after a reset', () => {
    // The worker's refused jobs: 100 ms, doubling, at most 3.2 s.
    const b = new Backoff(100, 3200);
    assert.deepEqual(Array.from({ length: 8 }, () => b.next()), [100, 200, 400, 800, 1600, 3200, 3200, 3200]);
    assert.equal(b.failures, 8);
    b.reset();
    assert.equal(b.failures, 0);
    assert.deepEqual([b.next(), b.next()], [100, 200]);
  });

  test('a cap that is not a power of two times the first wait is reached, not passed; long runs of failures stay at the cap', () => {
    const b = new Backoff(200, 5000);
    const waits = Array.from({ length: 2000 }, () => b.next());
    assert.deepEqual(waits.slice(0, 7), [200, 400, 800, 1600, 3200, 5000, 5000]);
    assert.ok(waits.every((w) => Number.isFinite(w) && w <= 5000));
    assert.equal(waits.at(-1), 5000);
  });

  test('bad waits are refused with what was expected and what came', () => {
    assert.throws(() => new Backoff(0, 100), { name: 'TypeError', message: 'Backoff: expected a first wait > 0 ms, got 0' });
    assert.throws(() => new Backoff(Number.NaN, 100), { name: 'TypeError', message: 'Backoff: expected a first wait > 0 ms, got NaN' });
    assert.throws(() => new Backoff(100, 50), { name: 'TypeError', message: 'Backoff: expected a longest wait >= the first (100 ms), got 50' });
  });
});

describe('sleep', () => {
  test('an abort during the wait ends it at once (a worker stopping while it waits out a refusal)', async () => {
    const stop = new AbortController();
    const t0 = performance.now();
    const waiting = sleep(60_000, stop.signal);
    let ended = false;
    void waiting.then(() => { ended = true; });
    await new Promise((r) => setImmediate(r));
    assert.equal(ended, false);
    stop.abort();
    await waiting;
    // Well short of the minute asked for: the abort ended it (the test's own timeout would end a wait that ran on).
    assert.ok(performance.now() - t0 < 30_000);
  });

  test('an aborted signal does not wait at all, and without a signal the wait runs out', async () => {
    const stop = new AbortController();
    stop.abort();
    await sleep(60_000, stop.signal);
    const t0 = performance.now();
    await sleep(20);
    assert.ok(performance.now() - t0 >= 19);
  });
});
