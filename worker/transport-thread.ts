/**
 * The transport thread: owns the worker's WebSockets (a ShardGroup) so that
 * gradients stream, weights arrive and pings are answered while the main thread
 * is busy computing (tfjs kernels run synchronously there, and tfjs-node's
 * data() blocks). Talks to worker/transport.ts over the thread's port; the
 * gradient is read from the SharedArrayBuffer the main thread writes it into;
 * each weights version is handed over (transferred), and its buffer comes back
 * when the main thread is done with it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { startFollower } from '../coordinator/shard-follower.ts';
import { createLogger } from '../shared/logger.ts';
import type { Metrics } from '../shared/metrics.ts';
import { ProtocolError, type BatchStats, type ClientMessage } from '../shared/wire-protocol.ts';
import { FloatArena } from '../shared/simd.ts';
import { ConnectionLost } from './aggregator-client.ts';
import { SEND_ROOM_RESERVE_BYTES, allowSendRooms, allowVersionRooms, versionReserveBytes } from './arena-rooms.ts';
import { copyFloats } from './host-memory.ts';
import { ShardGroup } from './shard-group.ts';
import { startFollowerOnThread } from './shard-thread.ts';
import { transferList, type FromThread, type ToThread, type TransportInit } from './transport.ts';

const port = parentPort;
if (port === null) throw new Error('transport-thread: expected to run in a worker thread');
const init = workerData as TransportInit;
const log = createLogger(init.logBindings);
// Bytes in and out, reported with every message (the metrics registry lives on the main thread).
const bytes = { sent: 0, received: 0 };
const counter = (key: 'sent' | 'received') => ({ inc: (n = 1) => { bytes[key] += n; } });
const metrics = { sentBytes: counter('sent'), receivedBytes: counter('received') } as unknown as Metrics;
// A hosting worker's memory, shared with the main thread (TransportInit.memory): the hosted shard's state, the
// weights versions, the send rooms and the gradient are all taken from it. (Nothing taken is given back: a shard
// hosted again after a loss takes new room, and an arena of its own once the memory is full.)
const shared = init.memory === undefined ? undefined : new FloatArena(0, 1, { memory: init.memory, bump: true });
if (shared !== undefined) {
  allowSendRooms(shared);
  allowVersionRooms(shared);
}
const group = new ShardGroup({ ...init.client, log, metrics });
// The aggregator shard this worker hosts, if any: started first (the coordinator welcomes workers
// once every shard is ready), and reached by the group in process at the URL it advertises.
let hosted: Promise<{ done: Promise<void> } | undefined> | undefined;
let closing = false;
/** A shard was hosted (or declined) once: later start failures are retried, not fatal. */
let hostedOnce = false;
// Closing stops a start still waiting for its coordinator (after the run ended there is none to wait for).
const stopHosting = new AbortController();
const host = (hostShard: NonNullable<TransportInit['hostShard']>, retryMs = 1000): void => {
  const options = { leader: init.client.url, token: init.client.token, signal: stopHosting.signal, ...hostShard };
  // (On a thread of its own, the shard allocates from the shared memory there: FloatArena's shared pointer.)
  const start: Promise<{ done: Promise<void> }> = init.hostShardThread === true
    ? startFollowerOnThread({ ...options, logBindings: init.logBindings, memory: init.memory })
    : startFollower({ ...options, log, arena: shared });
  const started = start.catch((err: Error) => {
    // --host-shard auto and every shard taken (or the run started): this worker only trains.
    if (hostShard.shard !== 'any' || !(err instanceof ProtocolError) || err.code !== 'VGG_ERR_SHARD_UNAVAILABLE') throw err;
    log.info({ reason: err.message }, 'no aggregator shard to host; training only');
    return undefined;
  });
  hosted = started;
  started.then(() => { hostedOnce = true; }, () => {});
  started.then((h) => h?.done).catch((err: Error) => {
    if (closing) { log.info({ err: err.message }, 'stopped hosting the aggregator shard'); return; }
    // Its state is gone with the coordinator's link (or it was refused): this worker leaves the run's
    // steps, and hosts the shard again for the coordinator's next start (--resume), as it reconnects.
    log.error({ err: err.message, retryMs }, 'hosted aggregator shard lost; hosting it again for the next coordinator');
    group.terminate();
    setTimeout(() => { if (!closing) host(hostShard, Math.min(2 * retryMs, 5000)); }, retryMs);
  });
};
if (init.hostShard !== undefined) host(init.hostShard);

/**
 * Waits until the hosted shard (if any) serves or was declined, asking `giveUp` every second (the run
 * may end while a shard waits for a coordinator that will not come back). The first start's refusal
 * is a configuration error and thrown; a later one is retried by host().
 */
async function hostedReady(giveUp: () => Promise<boolean>): Promise<void> {
  for (;;) {
    const current = hosted;
    if (current === undefined) return;
    const r = await Promise.race([current.then(() => 'served', (e: Error) => e), new Promise((res) => setTimeout(() => res('waiting'), 1000))]);
    if (r === 'served') return;
    if (r instanceof Error && !hostedOnce) throw r;
    if (await giveUp()) throw new ConnectionLost();
  }
}
let flat: Float32Array<ArrayBufferLike> = new Float32Array(0);

const post = (msg: FromThread, transfer: ArrayBuffer[] = []) => {
  port.postMessage({ ...msg, sent: bytes.sent, received: bytes.received }, transfer);
  bytes.sent = 0;
  bytes.received = 0;
};

group.on('weights', (step: number) => {
  const parts = group.takeWeights();
  // (With several shards the parts are views of one buffer: transferred once.)
  post({ op: 'weights', step, learningRate: group.learningRate, parts }, transferList(parts.map((p) => p.weights)));
});
// With the attempt it asks for (the client has taken it already): the main thread drops a resend
// that a send started after it already carries.
group.on('resend', (step: number) => post({ op: 'resend', step, attempt: group.leader.attempt }));
group.on('reply', (msg: unknown) => post({ op: 'event', name: 'reply', value: msg }));
group.on('disconnected', () => post({ op: 'event', name: 'disconnected', value: null }));

const giveUps = new Map<number, (v: boolean) => void>();
let nextAsk = 1;
const askGiveUp = (call: number) => () => new Promise<boolean>((resolve) => {
  const id = nextAsk++;
  giveUps.set(id, resolve);
  post({ op: 'give-up?', id, call });
});
/** Resolves when the main thread says the gradient's body is written (per sendGradient call). */
const bodies = new Map<number, () => void>();

/** A send waiting for a body that will not come (the connection is being dropped) fails on the closed socket instead. */
const releaseBodies = () => { for (const release of bodies.values()) release(); };

async function call(id: number, method: string, args: unknown[]): Promise<unknown> {
  switch (method) {
    case 'connect': {
      const giveUp = askGiveUp(id);
      await hostedReady(giveUp);
      await group.connect(giveUp);
      return group.run;
    }
    case 'ready':
      await group.ready(args[0] as string);
      return null;
    case 'sendGradient': {
      const [step, jobId, sampleIds, stats, at] = args as [number, string, number[], BatchStats, number | null];
      const body = at === null ? undefined : new Promise<void>((resolve) => bodies.set(id, resolve));
      // Posted before any resend this send has to answer (ShardGroup.sendGradient reads the attempt synchronously).
      post({ op: 'started', step, attempt: group.leader.attempt });
      try {
        await group.sendGradient(step, jobId, sampleIds, stats, flat, at === null ? undefined : { at, body: body as Promise<void> });
      } finally {
        bodies.delete(id);
      }
      return null;
    }
    default:
      throw new Error(`transport-thread: unknown call ${method}`);
  }
}

port.on('message', (msg: ToThread) => {
  switch (msg.op) {
    case 'call':
      call(msg.id, msg.method, msg.args).then(
        (value) => post({ op: 'result', id: msg.id, ok: true, value }),
        (err: Error & { code?: string }) => post({ op: 'result', id: msg.id, ok: false, error: { name: err.constructor.name, code: err instanceof ProtocolError ? err.code : undefined, message: err.message } }),
      );
      return;
    case 'body':
      bodies.get(msg.id)?.();
      return;
    case 'gradient': {
      if (msg.inShared === true && shared !== undefined) {
        flat = new Float32Array(shared.memory.buffer, msg.offset, msg.floats);
        return;
      }
      // The main thread's arena (the gradient first, then free room): adopted here, the encode, the
      // send rooms and the weights versions work in it (aggregator-client.ts). Room for the versions is
      // there when the main thread could reserve it (Transport.allocateGradient).
      const arena = msg.memory === undefined ? undefined : new FloatArena(0, 1, { memory: msg.memory, used: msg.used ?? 0 });
      if (arena !== undefined) {
        allowSendRooms(arena);
        if (arena.free >= SEND_ROOM_RESERVE_BYTES + versionReserveBytes(msg.floats)) allowVersionRooms(arena);
      }
      flat = new Float32Array(arena?.memory.buffer ?? msg.buffer, msg.offset, msg.floats);
      return;
    }
    case 'put':
      // A gradient tensor's values, copied into place here while the main thread goes on (Transport.putGradient).
      copyFloats(flat, msg.offset, msg.values);
      return;
    case 'give-up':
      giveUps.get(msg.id)?.(msg.value);
      giveUps.delete(msg.id);
      return;
    case 'send':
      // A frame for a dropped connection is lost with it; the main thread hears 'disconnected'.
      try { group.send(msg.msg as ClientMessage); } catch { /* not connected */ }
      return;
    case 'recycle':
      group.recycle(msg.buffers);
      return;
    case 'terminate':
      group.terminate();
      releaseBodies();
      return;
    case 'close':
      group.close();
      releaseBodies();
      // A hosted shard goes on serving the other workers until the coordinator ends the run (or is lost):
      // closing it now would take its range of the weights and momentum with it and stop the run.
      closing = true;
      stopHosting.abort();
      if (hosted === undefined) port.close();
      else void hosted.then((h) => h?.done).catch(() => {}).finally(() => port.close());
      return;
  }
});
