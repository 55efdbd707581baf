/**
 * A worker's hosted aggregator shard on a thread of its own (`VGG_HOSTED_SHARD_THREAD=1`), instead of on the
 * transport thread. On the transport thread the hosting worker's one thread does all of its socket work: its
 * own gradient and weights to and from every shard, and its shard's gradients and weights from and to every
 * worker: ~2 (N - 1) / N of the parameter bytes each phase, the projection's limit at scale (bench:scaling:
 * one thread moves ~3 GB/s of socket bytes; docs/ROADMAP.md, "after the thirteenth session"). Here the
 * shard's sockets are on their own thread, and this worker reaches its shard over loopback like any other
 * worker (the in-process link is one thread's): its own range then crosses the kernel. Worth it only where a
 * worker has cores to spare (a GPU node); on a machine whose cores are all busy it only adds that work.
 *
 * The transport thread calls startFollowerOnThread; this module, loaded as the thread's main, runs
 * startFollower there (in the memory the worker shares, when it has one) and reports back.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { startFollower, type FollowerOptions } from '../coordinator/shard-follower.ts';
import { createLogger } from '../shared/logger.ts';
import { FloatArena } from '../shared/simd.ts';
import { ProtocolError } from '../shared/wire-protocol.ts';
import { tsThread } from './ts-thread.ts';

interface ThreadInit {
  hostedShardThread: true;
  follower: Pick<FollowerOptions, 'leader' | 'token' | 'shard' | 'host' | 'port' | 'advertise'>;
  logBindings: Record<string, unknown>;
  memory?: WebAssembly.Memory;
}

type FromShard =
  | { op: 'started'; url: string }
  | { op: 'failed'; code?: string; message: string }
  | { op: 'done' }
  | { op: 'lost'; message: string };

/**
 * Starts the follower on a new thread. Resolves once it serves (`done` then settles as FollowerHandle.done does:
 * resolves when the leader ends the run, rejects when the link is lost), rejects as startFollower rejects (a
 * ProtocolError keeps its code). `signal` stops a start still waiting for its leader.
 */
export function startFollowerOnThread(o: ThreadInit['follower'] & { logBindings: Record<string, unknown>; memory?: WebAssembly.Memory; signal?: AbortSignal }): Promise<{ url: string; done: Promise<void> }> {
  const init: ThreadInit = {
    hostedShardThread: true,
    follower: { leader: o.leader, token: o.token, shard: o.shard, host: o.host, port: o.port, advertise: o.advertise },
    logBindings: o.logBindings,
    ...(o.memory === undefined ? {} : { memory: o.memory }),
  };
  const thread = tsThread(import.meta.url, init);
  // The transport thread decides how long the process serves (it waits for `done`): this one keeps nothing alive.
  thread.unref();
  o.signal?.addEventListener('abort', () => thread.postMessage({ op: 'stop' }), { once: true });
  return new Promise((resolveStart, rejectStart) => {
    let settleDone: { resolve: () => void; reject: (e: Error) => void } | undefined;
    const done = new Promise<void>((resolve, reject) => { settleDone = { resolve, reject }; });
    done.catch(() => {}); // the caller handles it; a start that fails never makes it visible
    let started = false;
    const end = (err?: Error) => {
      void thread.terminate();
      if (!started) rejectStart(err ?? new Error('hosted shard thread: ended before it served'));
      else if (err === undefined) settleDone?.resolve();
      else settleDone?.reject(err);
    };
    thread.on('message', (m: FromShard) => {
      if (m.op === 'started') { started = true; resolveStart({ url: m.url, done }); return; }
      if (m.op === 'failed') end(m.code === undefined ? new Error(m.message) : new ProtocolError(m.code, m.message));
      else if (m.op === 'done') end();
      else end(new Error(m.message));
    });
    thread.on('error', (err) => end(err));
    thread.on('exit', (code) => end(new Error(`hosted shard thread exited (code ${code})`)));
  });
}

/** The thread's main: the follower, in the worker's shared memory when it has one. */
async function serve(init: ThreadInit): Promise<void> {
  const port = parentPort;
  if (port === null) return;
  const log = createLogger(init.logBindings);
  const stop = new AbortController();
  port.on('message', (m: { op: string }) => { if (m.op === 'stop') stop.abort(); });
  const arena = init.memory === undefined ? undefined : new FloatArena(0, 1, { memory: init.memory, bump: true });
  let handle;
  try {
    handle = await startFollower({ ...init.follower, log, signal: stop.signal, arena });
  } catch (err) {
    port.postMessage({ op: 'failed', code: err instanceof ProtocolError ? err.code : undefined, message: (err as Error).message } satisfies FromShard);
    return;
  }
  port.postMessage({ op: 'started', url: handle.url } satisfies FromShard);
  await handle.done.then(
    () => port.postMessage({ op: 'done' } satisfies FromShard),
    (err: Error) => port.postMessage({ op: 'lost', message: err.message } satisfies FromShard),
  );
}

if ((workerData as Partial<ThreadInit> | null)?.hostedShardThread === true) void serve(workerData as ThreadInit);
