import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Packr } from 'msgpackr';
import { buildLayout } from '../../shared/param-layout.ts';
import { Rng } from '../../shared/rng.ts';
import { TINY_VGG_A } from '../../shared/vgg-configs.ts';
import { FlatMomentumSgd } from '../../shared/flat-sgd.ts';
import { CHUNK_FLOATS, PROTOCOL_VERSION } from '../../shared/wire-protocol.ts';
import { RawPeer, SGD, join, startAggregator, stats } from '../helpers/aggregator-harness.ts';

const CASES = Number(process.env.FUZZ_CASES ?? 10_000);
const PARALLEL = 32;
const S = 4;

/**
 * 10,000 hostile frames against a live aggregator while an honest member
 * holds the step open: random bytes, random msgpack values, and valid
 * sequences (handshake, join, gradient) whose last frame has one field
 * broken. Afterwards no step was committed, the weights are bit-identical,
 * and one honest step gives exactly the expected weights.
 */
test(`fuzz: ${CASES} random and mutated frames leave the weights untouched and the next step exact`, async (t) => {
  // A tiny layout keeps each connection's weights transfer small; chunks are shrunk so a gradient has several.
  const layout = buildLayout({ ...TINY_VGG_A, widthMultiplier: 1 / 64, fcUnits: 8 });
  const h = await startAggregator({ layout, step: S });
  try {
    const n = layout.totalSize;
    assert.ok(n < CHUNK_FLOATS);
    const honest = await h.member('honest');
    assert.equal(await join(honest, 'job-honest'), 'joined');

    const rng = new Rng(2014);
    const rand = () => rng.next();
    const int = (k: number) => Math.floor(rand() * k);
    const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)] as T;
    const packr = new Packr({ useRecords: false, moreTypes: false });
    const pack = (v: unknown) => packr.pack(v);
    const randomValue = (depth = 0): unknown => {
      switch (int(depth > 2 ? 6 : 8)) {
        case 0: return int(2 ** 31) - 2 ** 30;
        case 1: return rand() * 1e6 - 5e5;
        case 2: return pick([null, true, false, Number.NaN, Infinity, -Infinity, 2 ** 60, -0]);
        case 3: return 'x'.repeat(int(40));
        case 4: return new Uint8Array(int(64)).map(() => int(256));
        case 5: return pick(['hello', 'ready', 'join', 'idle', 'grad-begin', 'grad-chunk', 'grad-end', 'weights-begin', '']);
        case 6: return Array.from({ length: int(5) }, () => randomValue(depth + 1));
        default: return Object.fromEntries(Array.from({ length: int(5) }, () => [pick(['t', 'step', 'offset', 'data', 'jobId', 'token', 'x']), randomValue(depth + 1)]));
      }
    };
    const broken = [undefined, null, -1, 1.5, 'x', '', Number.NaN, Infinity, 2 ** 60, [], {}, true, new Uint8Array(3)] as const;
    const floats = (k: number, v: number) => new Uint8Array(new Float32Array(k).fill(v).buffer);

    /** A valid sequence for job `jobId`: handshake, join, a gradient in chunks of `chunk` floats. */
    const sequence = (jobId: string, chunk: number): Record<string, unknown>[] => {
      const frames: Record<string, unknown>[] = [
        { t: 'hello', protocol: PROTOCOL_VERSION, token: 'secret', workerId: jobId, host: 'h', gpu: 0, backend: 'cpu' },
        { t: 'ready', modelHash: 'hash-1' },
        { t: 'join', step: S, jobId, lockToken: 'tok' },
        { t: 'grad-begin', step: S, jobId, sampleIds: [1, 2, 3], stats: stats(3), totalFloats: n },
      ];
      for (let o = 0; o < n; o += chunk) frames.push({ t: 'grad-chunk', step: S, offset: o, data: floats(Math.min(chunk, n - o), 0.5) });
      frames.push({ t: 'grad-end', step: S });
      return frames;
    };

    /** One field of `msg` replaced by a value of the wrong kind, or the data made hostile. */
    const mutate = (msg: Record<string, unknown>): Record<string, unknown> => {
      const out = { ...msg };
      const key = pick(Object.keys(out));
      if (key === 'data' && rand() < 0.5) {
        const d = new Float32Array((out.data as Uint8Array).slice().buffer);
        d[int(d.length)] = pick([Number.NaN, Infinity, -Infinity]);
        out.data = new Uint8Array(d.buffer);
      } else if (key === 'offset' && rand() < 0.5) {
        out.offset = pick([n, n + 1, 2 ** 31, (msg.offset as number) + 1]);
      } else if (key === 'step' && rand() < 0.5) {
        out.step = pick([S + 1, S + 100]);
      } else if (key === 't') {
        out.t = pick(['shutdown', 'weights-chunk', '', 'GRAD-END']);
      } else {
        const v = pick(broken);
        if (v === undefined) delete out[key];
        else out[key] = v;
      }
      return out;
    };

    const tally = { randomBytes: 0, randomValues: 0, mutated: 0, replies: new Map<string, number>() };
    const runCase = async (i: number): Promise<void> => {
      const peer = new RawPeer(h.port);
      await peer.opened();
      const kind = rand();
      const frames: Buffer[] = [];
      const seq = sequence(`job-f${i}`, 1 + int(n / 2));
      if (kind < 0.15) {
        tally.randomBytes += 1;
        const prefix = int(3); // after 0, 1 or 2 valid handshake frames
        for (const f of seq.slice(0, prefix)) frames.push(pack(f));
        frames.push(Buffer.from(Array.from({ length: int(200) }, () => int(256))));
      } else if (kind < 0.3) {
        tally.randomValues += 1;
        for (const f of seq.slice(0, int(3))) frames.push(pack(f));
        frames.push(pack(randomValue()));
      } else {
        tally.mutated += 1;
        const at = int(seq.length);
        for (const f of seq.slice(0, at)) frames.push(pack(f));
        frames.push(pack(mutate(seq[at] as Record<string, unknown>)));
      }
      // A probe that always gets an answer: 'stale' from a ready member, an error otherwise.
      frames.push(pack({ t: 'join', step: 0, jobId: 'probe', lockToken: 'tok' }));
      peer.send(...frames);
      // Read replies until the first error, the probe's answer or the close; then hang up.
      for (;;) {
        const r = await peer.reply();
        if (r === undefined) break;
        const key = r.t === 'error' ? String(r.code) : String(r.t);
        tally.replies.set(key, (tally.replies.get(key) ?? 0) + 1);
        if (r.t === 'error' || r.t === 'stale') break;
      }
      peer.ws.terminate();
      await peer.closed;
    };

    let next = 0;
    await Promise.all(Array.from({ length: PARALLEL }, async () => {
      while (next < CASES) await runCase(next++);
    }));
    // Every fuzzing peer is gone once the server has seen its socket close.
    while (h.agg.members.size > 1) await new Promise((r) => setImmediate(r));

    t.diagnostic(`cases: ${tally.randomBytes} random bytes, ${tally.randomValues} random values, ${tally.mutated} mutated; answers: ${JSON.stringify(Object.fromEntries(tally.replies))}`);
    assert.equal(tally.randomBytes + tally.randomValues + tally.mutated, CASES);
    const errors = [...tally.replies].filter(([k]) => k.startsWith('VGG_ERR')).reduce((s, [, v]) => s + v, 0);
    assert.ok(errors > CASES * 0.8, `expected most cases refused with an error code, got ${errors}: ${JSON.stringify([...tally.replies])}`);
    assert.equal(h.agg.step, S, 'no step may commit from fuzzed frames');
    assert.equal(h.commits.length, 0);
    assert.deepEqual(h.weights, h.initial);

    // The honest member, joined since before the storm, completes the step alone.
    const grad = Float32Array.from({ length: n }, (_, i) => Math.cos(i) / 7);
    const weights = honest.next(['weights'], (_n, s) => (s as number) === S + 1);
    await honest.sendGradient(S, 'job-honest', [10, 11, 12, 13], stats(4), grad);
    await weights;
    const expected = h.initial.slice();
    new FlatMomentumSgd(layout, SGD).apply(expected, grad.map((v) => 4 * v), 1 / 4);
    assert.deepEqual(h.weights, expected);
    assert.deepEqual(honest.weights, expected);
    assert.deepEqual(h.commits.map((cs) => cs.map((c) => c.jobId)), [['job-honest']]);
  } finally {
    await h.close();
  }
});
