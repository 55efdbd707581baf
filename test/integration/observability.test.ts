import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { startCoordinator } from '../../coordinator/coordinator.ts';
import { importFashionMnist } from '../../coordinator/fashion-mnist-import.ts';
import { freePort, startRedisServer, type RedisChild } from '../../coordinator/redis-server.ts';
import { createLogger } from '../../shared/logger.ts';
import { tempDir } from '../helpers/images.ts';
import { spawnCli, tinyRun, waitFor, type Proc } from '../helpers/cluster.ts';

const log = createLogger({ test: 'observability' });
log.level = process.env.TEST_LOG ?? 'warn';
const data = tempDir('observability');
let redis: RedisChild;
const procs: Proc[] = [];

before(async () => {
  redis = await startRedisServer();
  await importFashionMnist({ out: data, trainLimit: 256, valLimit: 64 });
});
after(async () => {
  for (const p of procs) p.child.kill('SIGKILL');
  await redis.stop();
});

/** Parses the Prometheus text format into series -> value (`name{labels}` as written). */
async function scrape(port: number): Promise<Map<string, number>> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(res.status, 200);
  const out = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

/** The value of the first series named `name` (any labels). */
const value = (m: Map<string, number>, name: string): number => {
  for (const [k, v] of m) if (k === name || k.startsWith(`${name}{`)) return v;
  return NaN;
};

test('/metrics of the coordinator and of a worker move during a run; the report of the run holds its curves', async (t) => {
  const [coordinatorMetrics, workerMetrics] = [await freePort(), await freePort()];
  const coordinator = await startCoordinator(tinyRun({
    data, redis: redis.url, run: 'obs', epochs: '2', trainLimit: '256', valLimit: '64', batchSize: '8', metricsPort: String(coordinatorMetrics),
  }), log);
  t.after(() => coordinator.stop());
  const worker = spawnCli(['worker', 'start', '--coordinator', `ws://127.0.0.1:${coordinator.port}`, '--token', 'test-token',
    '--redis', redis.url, '--metrics-port', String(workerMetrics)], { VGG_LOG_LEVEL: 'info' });
  procs.push(worker);

  // Two scrapes of each, some steps apart: the counters must have moved.
  await waitFor('a few steps', async () => value(await scrape(coordinatorMetrics), 'vgg_steps_total') >= 3);
  const [c1, w1] = [await scrape(coordinatorMetrics), await scrape(workerMetrics)];
  await waitFor('more steps', async () => value(await scrape(coordinatorMetrics), 'vgg_steps_total') >= value(c1, 'vgg_steps_total') + 5);
  const [c2, w2] = [await scrape(coordinatorMetrics), await scrape(workerMetrics)];
  for (const name of ['vgg_steps_total', 'vgg_images_total', 'vgg_received_bytes_total', 'vgg_sent_bytes_total', 'vgg_step_seconds_count']) {
    assert.ok(value(c2, name) > value(c1, name), `coordinator ${name}: ${value(c1, name)} -> ${value(c2, name)}`);
    assert.ok(value(w2, name) > value(w1, name), `worker ${name}: ${value(w1, name)} -> ${value(w2, name)}`);
  }
  assert.ok(value(w2, 'vgg_communication_seconds_count') > 0 && value(w2, 'vgg_compute_seconds_count') > 0);
  // The host copies around the framework, each direction: one weights version per step here (one worker), a gradient per step.
  const copies = (m: Map<string, number>, direction: string) => value(new Map([...m].filter(([k]) => k.includes(`direction="${direction}"`))), 'vgg_host_copy_seconds_count');
  for (const direction of ['weights_in', 'gradients_out']) {
    assert.ok(copies(w2, direction) > copies(w1, direction), `worker host copies ${direction}: ${copies(w1, direction)} -> ${copies(w2, direction)}`);
  }
  assert.ok(value(w2, 'vgg_minor_page_faults_total') > 0, 'worker page faults counted');
  // The busy share of the thread that moves the gradients (the worker's transport thread, the coordinator's aggregator).
  for (const [who, m] of [['worker', w2], ['coordinator', c2]] as const) {
    const busy = value(m, 'vgg_transport_busy_ratio');
    assert.ok(busy > 0 && busy <= 1, `${who} vgg_transport_busy_ratio: expected in (0, 1], got ${busy}`);
  }
  assert.equal(value(c2, 'vgg_members'), 1);
  assert.ok(value(c2, 'vgg_learning_rate') > 0, 'learning rate');
  assert.ok(Number.isFinite(value(c2, 'vgg_loss')), 'loss');
  assert.ok([...c2.keys()].some((k) => k.startsWith('vgg_queue_jobs{') && k.includes('queue="train"')), 'queue depth series');
  assert.ok([...w2.keys()].some((k) => k.includes('role="worker"') && k.includes('worker_id="') && k.includes('gpu="')), 'worker labels');
  const health = await fetch(`http://127.0.0.1:${coordinatorMetrics}/healthz`);
  assert.equal(health.status, 200);

  const summary = await coordinator.done;
  await coordinator.stop();
  assert.equal(await worker.exited, 0, worker.output());
  // Every log line of the worker names its role, id and GPU.
  const lines = worker.output().split('\n').filter((l) => l.startsWith('{'));
  assert.ok(lines.length >= 2, worker.output());
  for (const l of lines) {
    const j = JSON.parse(l) as Record<string, unknown>;
    assert.ok(j.role === 'worker' && typeof j.workerId === 'string' && 'gpu' in j, l);
  }

  // The report: four panels; the per-step curves have a point per step, the validation ones a point per epoch.
  const out = path.join(tempDir('report'), 'run.html');
  const report = spawnCli(['report', '--redis', redis.url, '--run', 'obs', '--out', out]);
  assert.equal(await report.exited, 0, report.output());
  const html = readFileSync(out, 'utf8');
  const curves = [...html.matchAll(/<polyline class="curve" data-series="([^"]+)" data-points="(\d+)"[^>]* points="([^"]*)"/g)]
    .map((m) => ({ name: m[1] as string, n: Number(m[2]), coords: (m[3] as string).split(' ').filter((p) => p !== '') }));
  const byName = new Map(curves.map((c) => [c.name, c]));
  for (const name of ['train loss (moving average)', 'train top-1', 'lr']) {
    assert.ok((byName.get(name)?.n ?? 0) >= summary.steps - 2, `${name}: ${byName.get(name)?.n} points for ${summary.steps} steps`);
  }
  assert.ok((byName.get('images/s')?.n ?? 0) >= 2, 'images/s is measured over 2 s windows');
  for (const name of ['val top-1', 'val top-5', 'validation loss']) assert.equal(byName.get(name)?.n, 2, name);
  // Points are inside the plot and the loss curve is not flat.
  const ys = (byName.get('train loss (moving average)')?.coords ?? []).map((p) => Number(p.split(',')[1]));
  assert.ok(ys.every((y) => y >= 0 && y <= 500) && Math.max(...ys) - Math.min(...ys) > 20);
  assert.match(html, /<td>2<\/td><td>\d+<\/td>/); // the epoch table
  const svg = spawnCli(['report', '--redis', redis.url, '--run', 'obs', '--out', out.replace(/html$/, 'svg')]);
  assert.equal(await svg.exited, 0);
  assert.match(readFileSync(out.replace(/html$/, 'svg'), 'utf8'), /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  const bad = spawnCli(['report', '--redis', redis.url, '--run', 'obs', '--out', 'x.png']);
  assert.equal(await bad.exited, 2);
  assert.match(bad.output(), /--out: expected a file ending in \.html or \.svg, got "x.png"/);
});
