import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { VggError } from '../shared/errors.ts';
import { tlsFor } from '../shared/redis-connection.ts';

export interface RedisChild {
  url: string;
  port: number;
  pid: number;
  dir: string;
  process: ChildProcess;
  /** SIGTERM, then waits for the exit. Idempotent. */
  stop(): Promise<void>;
}

/** A free loopback TCP port (bound and released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** True when a Redis answers PING at `url` within `timeoutMs`. */
export async function redisReachable(url: string, timeoutMs = 1000): Promise<boolean> {
  const r = new Redis(url, { lazyConnect: true, connectTimeout: timeoutMs, maxRetriesPerRequest: 0, retryStrategy: () => null, ...tlsFor(new URL(url)) });
  r.on('error', () => {});
  try {
    await r.connect();
    return (await r.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    r.disconnect();
  }
}

export interface RedisServerOptions {
  port?: number;
  dir?: string;
  appendonly?: boolean;
  binary?: string;
  /** requirepass; the URL then carries it. */
  password?: string;
  /** TLS only (no plain port); the URL is rediss://. Clients need the CA (VGG_REDIS_CA). */
  tls?: { cert: string; key: string; ca: string };
}

/**
 * Starts `redis-server` as a child on a free loopback port with its own temp
 * dir (no persistence unless `appendonly`, then fsync always), and waits for PING.
 * Started again with the same port and dir, it reloads the AOF.
 */
export async function startRedisServer(options: RedisServerOptions = {}): Promise<RedisChild> {
  const port = options.port ?? (await freePort());
  const dir = path.resolve(options.dir ?? mkdtempSync(path.join(tmpdir(), 'vgg-redis-')));
  const binary = options.binary ?? 'redis-server';
  const tlsArgs = options.tls === undefined ? ['--port', String(port)] : [
    '--port', '0', '--tls-port', String(port), '--tls-cert-file', options.tls.cert, '--tls-key-file', options.tls.key,
    '--tls-ca-cert-file', options.tls.ca, '--tls-auth-clients', 'no',
  ];
  const child = spawn(binary, [
    // With AOF on, fsync every write: a restart then loses no ledger entry (our write rate is a few per step).
    ...tlsArgs, '--bind', '127.0.0.1', '--save', '', '--appendonly', options.appendonly ? 'yes' : 'no', '--appendfsync', 'always',
    '--dir', dir, '--logfile', path.join(dir, 'redis.log'), '--maxmemory-policy', 'noeviction',
    ...(options.password === undefined ? [] : ['--requirepass', options.password]),
  ], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const spawnError = new Promise<never>((_, reject) => child.once('error', (err: NodeJS.ErrnoException) => {
    reject(err.code === 'ENOENT'
      ? new VggError('VGG_ERR_REDIS', `${binary}: expected a Redis server binary on PATH (Debian: apt-get install redis-server), got none`)
      : err);
  }));
  const auth = options.password === undefined ? '' : `:${encodeURIComponent(options.password)}@`;
  const url = `${options.tls === undefined ? 'redis' : 'rediss'}://${auth}127.0.0.1:${port}`;
  const ready = (async () => {
    for (let i = 0; i < 200; i += 1) {
      if (await redisReachable(url, 200)) return;
      if (child.exitCode !== null) throw new VggError('VGG_ERR_REDIS', `${binary} exited with code ${child.exitCode}; see ${path.join(dir, 'redis.log')}`);
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new VggError('VGG_ERR_REDIS', `${binary} on port ${port}: expected PONG within 5 s, got none`);
  })();
  await Promise.race([ready, spawnError]);
  let stopping: Promise<void> | undefined;
  return {
    url, port, pid: child.pid ?? -1, dir, process: child,
    stop: () => {
      stopping ??= (async () => {
        if (child.exitCode === null) child.kill('SIGTERM');
        await exited;
      })();
      return stopping;
    },
  };
}
