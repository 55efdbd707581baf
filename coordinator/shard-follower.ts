import { hostname } from 'node:os';
import WebSocket from 'ws';
import { Backoff, sleep } from '../shared/backoff.ts';
import { FlatMomentumSgd } from '../shared/flat-sgd.ts';
import type { WireFormat } from '../shared/half.ts';
import type { Logger } from '../shared/logger.ts';
import { listenLocal } from '../shared/local-link.ts';
import { buildLayout, modelHash } from '../shared/param-layout.ts';
import { sliceLayout, type ShardSpec } from '../shared/shard.ts';
import { aggregatorArenaFloats, tryArena, type FloatArena } from '../shared/simd.ts';
import type { ModelConfig } from '../shared/vgg-configs.ts';
import { MAX_PAYLOAD_BYTES, PROTOCOL_VERSION, ProtocolError, decodeFrame, encode, field, type ShardMessage } from '../shared/wire-protocol.ts';
import { Aggregator, type LeaderCommit } from './aggregator.ts';
import { RangeStateReceiver, sendRangeState } from './shard-state.ts';

export interface FollowerOptions {
  /** The coordinator's aggregator URL (shard 0). */
  leader: string;
  token: string;
  /** This shard, or 'any': the leader assigns a free one (VGG_ERR_SHARD_UNAVAILABLE when none is). */
  shard: ShardSpec | 'any';
  /** Where workers connect to this shard: bind address and port (0: any free). */
  host: string;
  port: number;
  /** The URL workers are told to use; default ws://host:port (this machine's hostname for 0.0.0.0 and ::). */
  advertise?: string;
  log: Logger;
  /** First reconnect delay while the leader is not up yet. @defaultValue 200 */
  backoffMs?: number;
  /** Stops retrying an unreachable leader (startFollower then rejects). */
  signal?: AbortSignal;
  /**
   * The arena to keep the shard's state in (weights, momentum, the sum, slots, rooms) while it has room: a
   * hosting worker's memory shared with its gradient and weights versions (worker/transport.ts). Default: one
   * of its own.
   */
  arena?: FloatArena;
}

export interface FollowerHandle {
  /** The shard served (the one asked for, or the one the leader assigned). */
  shard: ShardSpec;
  port: number;
  url: string;
  aggregator: Aggregator;
  /** Resolves when the leader closes the link at the end of the run; rejects when it is lost. */
  done: Promise<void>;
  close(): Promise<void>;
}

interface Init { shard: ShardSpec; step: number; lo: number; hi: number; modelHash: string; model: ModelConfig; sgd: { momentum: number; weightDecay: number }; secret: Buffer; run: Record<string, unknown>; state: Float32Array }

/**
 * A follower shard of the aggregator (`vgg-train aggregator start --shard i/K`):
 * connects to the leader (retrying until it answers), receives its range of
 * the weights and momentum, then serves workers for that range: reduces their
 * gradient slices on arrival, applies momentum SGD when the leader commits a
 * step, broadcasts the range's new weights, and sends its state back when the
 * leader checkpoints. It holds (hi - lo) floats of weights, momentum and sum.
 */
export async function startFollower(o: FollowerOptions): Promise<FollowerHandle> {
  if (o.shard !== 'any' && o.shard.index === 0) throw new ProtocolError('VGG_ERR_SHARD', '--shard: expected 1..K-1, got 0 (shard 0 is embedded in the coordinator)');
  const backoff = new Backoff(o.backoffMs ?? 200, Math.max(o.backoffMs ?? 200, 5000));
  let link: { ws: WebSocket; init: Init } | undefined;
  while (link === undefined) {
    try {
      link = await connectLeader(o);
    } catch (err) {
      if (err instanceof ProtocolError) throw err;
      if (o.signal?.aborted === true) throw new Error(`--leader ${o.leader}: gave up (${(err as Error).message})`);
      const retryMs = backoff.next();
      o.log.warn({ leader: o.leader, err: (err as Error).message, retryMs }, 'leader unreachable; retrying');
      await sleep(retryMs, o.signal);
    }
  }
  const { ws, init } = link;
  const log = o.log.child({ shard: `${init.shard.index}/${init.shard.count}` });
  const n = init.hi - init.lo;
  const layout = buildLayout(init.model);
  const hash = modelHash(init.model, layout);
  if (hash !== init.modelHash) throw new ProtocolError('VGG_ERR_MODEL_HASH', `shard-init.modelHash: expected ${hash} for the model it names, got ${init.modelHash}`);
  const weights = init.state.subarray(0, n);
  const sgd = new FlatMomentumSgd(sliceLayout(layout, init), { learningRate: 0, ...init.sgd }, init.state.subarray(n, 2 * n));
  const send = (msg: ShardMessage) => { if (ws.readyState === WebSocket.OPEN) ws.send(encode(msg)); };
  const aggregator = new Aggregator({
    host: o.host, port: o.port, token: o.token, modelHash: init.modelHash, weights, sgd, step: init.step, runInfo: init.run,
    jobStatus: () => 'pending', onCommit: async () => {}, onMemberLost: () => {}, log,
    heartbeatTimeoutMs: Number(init.run.heartbeatTimeoutMs) || 30_000, wire: (init.run.wire ?? 'fp32') as WireFormat,
    follower: {
      secret: init.secret,
      onHave: (step, attempt, jobId) => send({ t: 'have', step, attempt, jobId }),
      onLost: (workerId) => send({ t: 'lost', workerId }),
    },
  });
  const port = await aggregator.start();
  // Bound to every interface: the others reach it by this host's name unless told otherwise.
  const reachable = o.host === '0.0.0.0' || o.host === '::' ? hostname() : o.host;
  const url = o.advertise ?? `ws://${reachable.includes(':') ? `[${reachable}]` : reachable}:${port}`;
  // A worker hosting this shard (worker start --host-shard) reaches it in process at the URL it advertises.
  const unlisten = listenLocal(url, (end) => aggregator.acceptLocal(end));

  // The leader's frames in order: a commit waits for its gradients, and what follows waits for it.
  let queue = Promise.resolve();
  let finish!: () => void;
  let fail!: (e: Error) => void;
  const done = new Promise<void>((resolve, reject) => { finish = resolve; fail = reject; });
  const onFrame = (msg: Record<string, unknown>) => {
    queue = queue.then(async () => {
      switch (msg.t) {
        case 'commit':
          await aggregator.leaderCommit(decision(msg));
          return;
        case 'roster':
          aggregator.leaderRoster(decision(msg));
          return;
        case 'abort':
          aggregator.leaderAbort(field<number>(msg, 'step', 'int'), field<number>(msg, 'attempt', 'int'));
          return;
        case 'state-request':
          // Straight from the arrays: the next leader frame (a commit) is not handled until the bytes are out.
          aggregator.settle();
          sendRangeState(ws, aggregator.step, weights, sgd.velocity);
          while (ws.readyState === WebSocket.OPEN && ws.bufferedAmount > 0) await new Promise((r) => setTimeout(r, 1));
          return;
        default:
          throw new ProtocolError('VGG_ERR_UNKNOWN_TYPE', `leader frame.t: expected roster, commit, abort or state-request, got ${JSON.stringify(msg.t)}`);
      }
    }).catch((err: Error) => {
      log.error({ err: err.message }, 'leader frame failed; leaving');
      ws.terminate();
    });
  };
  ws.on('message', (raw: Buffer) => {
    try {
      onFrame(decodeFrame(raw));
    } catch (err) {
      log.error({ err: (err as Error).message }, 'bad frame from the leader; leaving');
      ws.terminate();
    }
  });
  // The leader pings every third of the heartbeat timeout; a whole timeout of silence means it is gone.
  const timeoutMs = Number(init.run.heartbeatTimeoutMs) || 30_000;
  let lastPing = performance.now();
  ws.on('ping', () => { lastPing = performance.now(); });
  const watch = setInterval(() => {
    if (performance.now() - lastPing > timeoutMs) {
      log.error({ silentMs: Math.round(performance.now() - lastPing) }, 'leader silent; leaving');
      ws.terminate();
    }
  }, Math.max(10, Math.floor(timeoutMs / 3)));
  ws.on('close', (code) => {
    clearInterval(watch);
    unlisten();
    void aggregator.close().then(() => {
      // 1000/1001: the coordinator finished or stopped; anything else: it (or the link) died mid-run.
      if (code === 1000 || code === 1001) finish();
      else fail(new Error(`--leader ${o.leader}: link lost (code ${code}); this shard's state is gone: restart it and the coordinator with --resume`));
    });
  });
  send({ t: 'shard-ready', url });
  log.info({ port, url, lo: init.lo, hi: init.hi, step: init.step }, 'follower shard listening');
  return {
    shard: init.shard, port, url, aggregator, done,
    async close() {
      unlisten();
      ws.close(1000);
      await aggregator.close();
    },
  };
}

/**
 * A leader's roster or commit. `divisor` (what the sum is divided by) may be missing from a leader of an
 * earlier version: it divided by the step's samples. It is never below them (a step larger than the full one is the new full one).
 */
export function decision(msg: Record<string, unknown>): LeaderCommit {
  const totalSamples = field<number>(msg, 'totalSamples', 'int');
  const divisor = msg.divisor === undefined ? totalSamples : field<number>(msg, 'divisor', 'int');
  if (divisor < totalSamples) throw new ProtocolError('VGG_ERR_FRAME_FIELD', `${String(msg.t)}.divisor: expected an integer >= totalSamples (${totalSamples}), got ${divisor}`);
  return {
    step: field<number>(msg, 'step', 'int'), attempt: field<number>(msg, 'attempt', 'int'), jobs: field<string[]>(msg, 'jobs', 'object'),
    totalSamples, divisor, learningRate: field<number>(msg, 'learningRate', 'number'),
  };
}

/** Connects, sends shard-hello, and reads shard-init and the state that follows. */
function connectLeader(o: FollowerOptions): Promise<{ ws: WebSocket; init: Init }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(o.leader, { maxPayload: MAX_PAYLOAD_BYTES, perMessageDeflate: false });
    let init: Omit<Init, 'state'> | undefined;
    let state: Float32Array | undefined;
    let receiver: RangeStateReceiver | undefined;
    const fail = (err: Error) => { ws.removeAllListeners('message'); ws.terminate(); reject(err); };
    ws.on('error', (err) => fail(err));
    ws.on('close', () => reject(new Error('closed before shard-init')));
    // Shard 0 of 0 asks for any free shard.
    const [shard, shards] = o.shard === 'any' ? [0, 0] : [o.shard.index, o.shard.count];
    ws.on('open', () => ws.send(encode({ t: 'shard-hello', protocol: PROTOCOL_VERSION, token: o.token, shard, shards })));
    ws.on('message', (raw: Buffer) => {
      try {
        const msg = decodeFrame(raw);
        if (msg.t === 'error') throw new ProtocolError(String(msg.code), String(msg.message));
        if (msg.t === 'shard-init') {
          const lo = field<number>(msg, 'lo', 'int');
          const hi = field<number>(msg, 'hi', 'int');
          init = {
            shard: { index: field<number>(msg, 'shard', 'int'), count: field<number>(msg, 'shards', 'int') },
            step: field<number>(msg, 'step', 'int'), lo, hi, modelHash: field<string>(msg, 'modelHash', 'string'),
            model: field<ModelConfig>(msg, 'model', 'object'), sgd: field<Init['sgd']>(msg, 'sgd', 'object'),
            secret: Buffer.from(field<string>(msg, 'secret', 'string'), 'hex'), run: field<Record<string, unknown>>(msg, 'run', 'object'),
          };
          // Weights and momentum, then the aggregator's sum and scratch, in one FloatArena (SIMD loops).
          const given = o.arena !== undefined && o.arena.free >= 4 * aggregatorArenaFloats(hi - lo) ? o.arena : undefined;
          state = (given ?? tryArena(aggregatorArenaFloats(hi - lo)))?.alloc(2 * (hi - lo)) ?? new Float32Array(2 * (hi - lo));
          receiver = new RangeStateReceiver(state.subarray(0, hi - lo), state.subarray(hi - lo));
          return;
        }
        if (init === undefined || state === undefined || receiver === undefined) throw new ProtocolError('VGG_ERR_HANDSHAKE', `leader: expected shard-init first, got ${JSON.stringify(msg.t)}`);
        if (msg.t === 'state-chunk') {
          receiver.chunk(msg);
          return;
        }
        if (msg.t === 'state-end') {
          receiver.end();
          ws.removeAllListeners('message');
          ws.removeAllListeners('close');
          ws.removeAllListeners('error');
          ws.on('error', (err) => o.log.warn({ err: err.message }, 'leader link error'));
          resolve({ ws, init: { ...init, state } });
          return;
        }
        throw new ProtocolError('VGG_ERR_HANDSHAKE', `leader: expected state-chunk or state-end, got ${JSON.stringify(msg.t)}`);
      } catch (err) {
        fail(err as Error);
      }
    });
  });
}
