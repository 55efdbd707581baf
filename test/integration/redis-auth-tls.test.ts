import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Queue, Worker } from 'bullmq';
import { startRedisServer, type RedisChild } from '../../coordinator/redis-server.ts';
import { connectRedis } from '../../shared/redis-connection.ts';
import { spawnCli } from '../helpers/cluster.ts';

let server: RedisChild;
let ca = '';
before(async () => {
  // A self-signed certificate for 127.0.0.1, made here with openssl.
  const dir = mkdtempSync(path.join(tmpdir(), 'vgg-tls-'));
  const [cert, key] = [path.join(dir, 'cert.pem'), path.join(dir, 'key.pem')];
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  ca = cert;
  process.env.VGG_REDIS_CA = ca;
  server = await startRedisServer({ password: 'p@ss word', tls: { cert, key, ca } });
});
after(async () => {
  delete process.env.VGG_REDIS_CA;
  await server.stop();
});

test('a rediss:// URL with a password carries BullMQ jobs over TLS', async (t) => {
  assert.match(server.url, /^rediss:\/\/:p%40ss%20word@127\.0\.0\.1:\d+$/);
  const [a, b] = [connectRedis(server.url), connectRedis(server.url)];
  const queue = new Queue('tls-q', { connection: a });
  const worker = new Worker('tls-q', null, { connection: b });
  t.after(async () => {
    await Promise.allSettled([queue.close(), worker.close()]);
    a.disconnect();
    b.disconnect();
  });
  await queue.add('j', { n: 42 }, { jobId: 'job-1' });
  const job = await worker.getNextJob('tok', { block: true });
  assert.equal(job?.data.n, 42);
  await job?.moveToCompleted('ok', 'tok', false);
  assert.equal(await queue.getJobState('job-1'), 'completed');
});

test('the CLI reaches a TLS Redis with a password (status), and names a wrong password', async () => {
  const ok = spawnCli(['status', '--json', '--redis', server.url, '--run', 'none'], { VGG_REDIS_CA: ca });
  assert.equal(await ok.exited, 0, ok.output());
  assert.equal(JSON.parse(ok.output().trim().split('\n').at(-1) ?? '{}').state, null);
  const bad = spawnCli(['status', '--json', '--redis', server.url.replace('p%40ss%20word', 'wrong'), '--run', 'none'], { VGG_REDIS_CA: ca });
  assert.notEqual(await bad.exited, 0);
  assert.match(bad.output(), /WRONGPASS|invalid username-password/);
});
