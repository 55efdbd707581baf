import { spawn, type ChildProcess } from 'node:child_process';
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

/** Starts `vgg-train <args>` as a real process; its stderr is kept for failure messages. */
export function spawnCli(args: string[], env: Record<string, string> = {}): Proc {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VGG_LOG_LEVEL: 'warn', ...env } });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, output: () => out, exited };
}

export function spawnWorker(port: number, redis: string, token = 'test-token', extra: string[] = []): Proc {
  return spawnCli(['worker', 'start', '--coordinator', `ws://127.0.0.1:${port}`, '--token', token, '--redis', redis, ...extra]);
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
