import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { WrittenRanges } from '../../shared/written-ranges.ts';

/** The pieces `take` visits, as [lo, hi, fresh] triples. */
function pieces(w: WrittenRanges, lo: number, hi: number): [number, number, boolean][] {
  const out: [number, number, boolean][] = [];
  w.take(lo, hi, (a, b, fresh) => { out.push([a, b, fresh]); return true; });
  return out;
}

describe('WrittenRanges (first contribution stores, later ones add)', () => {
  test('runs from a split and from 0, as members send them: fresh exactly where no earlier piece wrote', () => {
    const w = new WrittenRanges();
    assert.deepEqual(pieces(w, 60, 80), [[60, 80, true]]);
    assert.deepEqual(pieces(w, 80, 100), [[80, 100, true]]);
    assert.deepEqual(pieces(w, 0, 30), [[0, 30, true]]);
    assert.equal(w.covers(0, 100), false);
    // A second member from 0, chunks crossing the first member's written runs.
    assert.deepEqual(pieces(w, 0, 45), [[0, 30, false], [30, 45, true]]);
    assert.deepEqual(pieces(w, 45, 90), [[45, 60, true], [60, 90, false]]);
    assert.deepEqual(pieces(w, 90, 100), [[90, 100, false]]);
    assert.equal(w.covers(0, 100), true);
    assert.deepEqual(pieces(w, 10, 20), [[10, 20, false]]);
    w.clear();
    assert.equal(w.covers(0, 1), false);
    assert.deepEqual(pieces(w, 0, 100), [[0, 100, true]]);
  });

  test('a piece bridging two runs, an empty range, and a false visit reported after every piece was visited', () => {
    const w = new WrittenRanges();
    pieces(w, 10, 20);
    pieces(w, 30, 40);
    assert.deepEqual(pieces(w, 5, 45), [[5, 10, true], [10, 20, false], [20, 30, true], [30, 40, false], [40, 45, true]]);
    assert.equal(w.covers(5, 45), true);
    assert.deepEqual(pieces(w, 50, 50), []);
    assert.equal(w.covers(46, 50), false);
    const seen: boolean[] = [];
    const ok = w.take(0, 60, (_a, _b, fresh) => { seen.push(fresh); return !fresh; });
    assert.equal(ok, false);
    assert.deepEqual(seen, [true, false, true]);
    assert.equal(w.covers(0, 60), true);
  });
  test('pieces visits as take does and marks nothing written', () => {
    const w = new WrittenRanges();
    pieces(w, 10, 20);
    pieces(w, 30, 40);
    const seen: [number, number, boolean][] = [];
    w.pieces(5, 45, (a, b, fresh) => { seen.push([a, b, fresh]); });
    assert.deepEqual(seen, [[5, 10, true], [10, 20, false], [20, 30, true], [30, 40, false], [40, 45, true]]);
    assert.equal(w.covers(5, 45), false);
    assert.deepEqual(pieces(w, 5, 45), seen, 'take then sees the same pieces');
    const none: unknown[] = [];
    w.pieces(7, 7, (...p) => { none.push(p); });
    assert.deepEqual(none, []);
  });
});
