import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { Redis, type RedisOptions } from 'ioredis';
import { ConfigError, VggError } from './errors.ts';

/**
 * An ioredis connection from a redis:// or rediss:// URL (password and TLS
 * come from the URL). BullMQ needs maxRetriesPerRequest: null on worker
 * connections; we use it everywhere so a Redis restart is waited out.
 */
export function connectRedis(url: string, extra: RedisOptions = {}): Redis {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigError(`--redis: expected a URL like redis://host:6379, got ${JSON.stringify(url)}`);
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    throw new ConfigError(`--redis: expected a redis:// or rediss:// URL, got ${JSON.stringify(url)}`);
  }
  const redis = new Redis(url, { maxRetriesPerRequest: null, enableReadyCheck: true, lazyConnect: false, ...tlsFor(parsed), ...extra });
  redis.on('error', (err: Error) => { lastError.set(redis, err.message); /* reconnects on its own; callers see failed commands */ });
  return redis;
}

const lastError = new WeakMap<Redis, string>();

/** The URL with its password replaced by `***`: safe to print. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    return u.toString().replace(/\/$/, '');
  } catch {
    return '(unparsable URL)';
  }
}

/**
 * PING through `redis`; on failure a VggError that names the (redacted) URL and
 * the connection's last error (refused, WRONGPASS, TLS) instead of a retry count.
 */
export async function checkRedis(redis: Redis, url: string): Promise<void> {
  try {
    await redis.ping();
  } catch (err) {
    const why = lastError.get(redis) ?? (err as Error).message;
    throw new VggError('VGG_ERR_REDIS', `--redis: expected a Redis answering at ${redactUrl(url)}, got: ${why}`);
  }
}

/**
 * The ioredis TLS option of a URL: none for redis://; for rediss://, the system
 * CAs or the PEM file named by VGG_REDIS_CA (a private CA, a self-signed
 * server), the host name verified.
 */
export function tlsFor(url: URL): { tls?: { ca?: Buffer; servername?: string } } {
  return url.protocol === 'rediss:' ? { tls: tlsOptions(url) } : {};
}

function tlsOptions(url: URL): { ca?: Buffer; servername?: string } {
  // SNI takes host names only; an IP is still checked against the certificate's subjectAltName.
  const sni = isIP(url.hostname) === 0 ? { servername: url.hostname } : {};
  const caFile = process.env.VGG_REDIS_CA;
  if (caFile === undefined || caFile === '') return sni;
  try {
    return { ca: readFileSync(caFile), ...sni };
  } catch (err) {
    throw new ConfigError(`VGG_REDIS_CA: expected a readable PEM file, got ${JSON.stringify(caFile)} (${(err as Error).message})`);
  }
}
