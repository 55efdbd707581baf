import { Redis, type RedisOptions } from 'ioredis';
import { ConfigError } from './errors.ts';

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
  const redis = new Redis(url, { maxRetriesPerRequest: null, enableReadyCheck: true, lazyConnect: false, ...extra });
  redis.on('error', () => { /* reconnects on its own; callers see failed commands */ });
  return redis;
}
