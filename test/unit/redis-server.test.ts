import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startRedisServer } from '../../coordinator/redis-server.ts';

test('a missing redis-server binary is a clear error naming the binary and the fix', async () => {
  await assert.rejects(startRedisServer({ binary: 'vgg-no-such-redis-server' }), (err: Error & { code?: string }) =>
    err.code === 'VGG_ERR_REDIS'
    && err.message === 'vgg-no-such-redis-server: expected a Redis server binary on PATH (Debian: apt-get install redis-server), got none');
});
