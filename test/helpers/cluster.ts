import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import { resolveRunConfig, type RunConfig } from '../../coordinator/run-config.ts';
import { runKeys, type LedgerEntry } from '../../shared/redis-keys.ts';

export const BIN = path.resolve('bin/vgg-train.js');

/** A small run: tiny VGG-A on 32x32 images, no dropout (deterministic), port chosen by the OS. */
export function tinyRun(overrides: Partial<Record<keyof RunConfig, unknown>>): RunConfig {
  return resolveRunConfig({
    config: 'A', inputSize: '32', width: '0.125', fcUnits: '64', dropout: '0', scale: '32:36', evalScale: '32', normalize: 'mean-std',
    batchSize: '16', epochs: '1', port: '0', host: '127.0.0.1', token: 'test-token', lockDurationMs: '5000', ...overrides,
  }, {});
}

export interface Proc { child: ChildProcess; output: () => string; exited: Promise<number | null> }

/**
 * Starts `vgg-train <args>` as a real process; its stdout and stderr are kept for failure messages.
 * For a failure that comes only now and then (a hang): VGG_TEST_LOG_DIR=<dir> also writes each process's
 * output to <dir>/<ms since epoch>-<pid>-<command>.log as it comes, at VGG_TEST_LOG_LEVEL (default warn).
 */
export function spawnCli(args: string[], env: Record<string, string> = {}): Proc {
  const level = process.env.VGG_TEST_LOG_LEVEL ?? 'warn';
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VGG_LOG_LEVEL: level, ...env } });
  const dir = process.env.VGG_TEST_LOG_DIR;
  const file = dir === undefined ? undefined : createWriteStream(path.join(dir, `${Date.now()}-${child.pid}-${args.slice(0, 2).join('-')}.log`));
  file?.write(`${args.join(' ')}\n`);
  let out = '';
  const keep = (d: Buffer): void => { out += d.toString(); file?.write(d); };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  child.once('close', () => file?.end());
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, output: () => out, exited };
}

export function spawnWorker(port: number, redis: string, token = 'test-token', extra: string[] = [], env: Record<string, string> = {}): Proc {
  return spawnCli(['worker', 'start', '--coordinator', `ws://127.0.0.1:${port}`, '--token', token, '--redis', redis, ...extra], env);
}

/**
 * `body`, or a failure after `ms` that says what each process in `procs()` last wrote (and `context()`,
 * e.g. the run's status): a multi-process scenario that stalls fails with what is needed to find out why
 * instead of holding the suite until CI's limit. (The processes are left to the file's after() hook.)
 */
export async function withDeadline<T>(ms: number, procs: () => Proc[], body: Promise<T>, context: () => Promise<string> = async () => ''): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      void context().catch((err: Error) => `(context failed: ${err.message})`).then((c) => {
        const tails = procs().map((p) => `--- pid ${p.child.pid} (${p.child.exitCode === null && p.child.signalCode === null ? 'running' : `exited ${p.child.exitCode ?? p.child.signalCode}`}): ${p.child.spawnargs.slice(2, 4).join(' ')}\n${p.output().slice(-4000)}`);
        reject(new Error(`not done after ${ms} ms\n${c}\n${tails.join('\n')}`));
      });
    }, ms);
  });
  try {
    return await Promise.race([body, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Every job these workers trained was acknowledged in its queue: none carried a job taken from a coordinator's
 * queue into the next coordinator's run (a --resume rebuilds the queue with the same job ids; the old job's ack
 * then fails, and its new copy waited in the queue while this worker held it in a step).
 */
export function assertAcksLanded(workers: Proc[]): void {
  for (const w of workers) {
    const failed = w.output().split('\n').filter((l) => l.includes('ack failed'));
    if (failed.length > 0) throw new Error(`worker ${w.child.pid}: expected every ack to land, got ${failed.length} failed:\n${failed.join('\n')}`);
  }
}

/** Polls `condition` until true; fails after `timeoutMs` with `what`. */
export async function waitFor(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 60000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function readLedger(redisUrl: string, run: string, epoch: number): Promise<LedgerEntry[]> {
  const r = new Redis(redisUrl);
  try {
    return (await r.lrange(runKeys(run).ledger(epoch), 0, -1)).map((v) => JSON.parse(v) as LedgerEntry);
  } finally {
    r.disconnect();
  }
}

/** Every sample id 0..n-1 (dataset positions) exactly once across the ledger's jobs. */
export function sampleCounts(ledger: LedgerEntry[], n: number): { missing: number[]; duplicates: number[] } {
  const counts = new Uint32Array(n);
  for (const e of ledger) for (const id of e.sampleIds) counts[id] = (counts[id] ?? 0) + 1;
  const missing: number[] = [];
  const duplicates: number[] = [];
  counts.forEach((c, i) => { if (c === 0) missing.push(i); if (c > 1) duplicates.push(i); });
  return { missing, duplicates };
}

export function relativeDiff(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i += 1) {
    num += ((a[i] as number) - (b[i] as number)) ** 2;
    den += (b[i] as number) ** 2;
  }
  return Math.sqrt(num / den);
}
