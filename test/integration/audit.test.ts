import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { auditEpoch } from '../../coordinator/audit.ts';
import { startRedisServer, type RedisChild } from '../../coordinator/redis-server.ts';
import { connectRedis } from '../../shared/redis-connection.ts';
import { runKeys } from '../../shared/redis-keys.ts';

let server: RedisChild;
before(async () => { server = await startRedisServer(); });
after(async () => { await server.stop(); });

test('audit counts missing and duplicated samples of an epoch from the ledger', async (t) => {
  const redis = connectRedis(server.url);
  t.after(() => redis.disconnect());
  const keys = runKeys('audit');
  await redis.set(keys.meta, JSON.stringify({ trainTotal: 10, trainLimit: 0, batchSize: 4, seed: 1, epochs: 1 }));
  const entry = (jobId: string, step: number, sampleIds: number[]) => JSON.stringify({ jobId, step, position: 0, sampleIds, workerId: 'w' });
  // b applied at steps 2 and 3: a real duplicate. a's entry written twice for one step (a resent write): one application.
  await redis.rpush(keys.ledger(0), entry('a', 1, [0, 1, 2, 3]), entry('a', 1, [0, 1, 2, 3]), entry('b', 2, [4, 5, 6, 7]), entry('b', 3, [4, 5, 6, 7]));
  const r = await auditEpoch(redis, 'audit', 0);
  assert.deepEqual({ samples: r.samples, jobs: r.jobs, replayed: r.replayedWrites, applied: r.applied, missing: r.missing, duplicates: r.duplicates },
    { samples: 10, jobs: 3, replayed: 1, applied: 12, missing: 2, duplicates: 4 });
  assert.deepEqual(r.missingIds, [8, 9]);
  assert.deepEqual(r.duplicateIds, [4, 5, 6, 7]);
  assert.equal(r.complete, false);
  await assert.rejects(auditEpoch(redis, 'nope', 0), /run nope: expected its metadata at vgg:nope:meta, got none/);
});
