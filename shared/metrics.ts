import { createServer } from 'node:http';
import type { EventLoopUtilityFunction } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Logger } from './logger.ts';

/**
 * The share of the time since its last call (the first call: since the meter was made) that an event
 * loop was busy, from `elu`: `performance.eventLoopUtilization` (this thread) or a Worker's
 * `performance.eventLoopUtilization` (that thread). For vgg_transport_busy_ratio.
 */
export function busyMeter(elu: EventLoopUtilityFunction): () => number {
  let last = elu();
  return () => {
    const now = elu();
    const since = elu(now, last);
    last = now;
    return since.utilization;
  };
}

/**
 * The Prometheus series of one process (coordinator or worker), named by
 * Prometheus conventions; every series carries the process's default labels
 * (`role`, and `worker_id`, `gpu` on workers).
 */
export interface Metrics {
  registry: Registry;
  /** Worker: job taken to new weights in hand. Coordinator: commit to commit. */
  stepSeconds: Histogram;
  /** Worker: load, augment, forward and backward. Coordinator: reduce tail, SGD update and ledger write. */
  computeSeconds: Histogram;
  /** Worker: streaming the gradient and waiting for the new weights. */
  communicationSeconds: Histogram;
  /**
   * Worker: the host-side copies around the framework, by `direction`: `weights_in` (the newest weights
   * written into the model, once per version; not in the step's time), `gradients_out` (the gradients read
   * out of the framework into the send buffer; inside the compute time).
   */
  hostCopySeconds: Histogram<'direction'>;
  /** Worker: the process's minor page faults (memory mapped in by the kernel), counted at each step's end. */
  minorPageFaults: Counter;
  sentBytes: Counter;
  receivedBytes: Counter;
  images: Counter;
  imagesPerSecond: Gauge;
  loss: Gauge;
  learningRate: Gauge;
  epoch: Gauge;
  step: Gauge;
  steps: Counter;
  members: Gauge;
  rejectedFrames: Counter<'code'>;
  skippedImages: Counter;
  shortSteps: Counter;
  transportBusy: Gauge;
  queueJobs: Gauge<'queue' | 'state'>;
  validationTop1: Gauge;
  validationTop5: Gauge;
}

const STEP_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export function createMetrics(labels: Record<string, string>): Metrics {
  const registry = new Registry();
  registry.setDefaultLabels(labels);
  collectDefaultMetrics({ register: registry, prefix: 'vgg_process_' });
  const r = { registers: [registry] };
  return {
    registry,
    stepSeconds: new Histogram({ name: 'vgg_step_seconds', help: 'time of one synchronous training step', buckets: STEP_BUCKETS, ...r }),
    computeSeconds: new Histogram({ name: 'vgg_compute_seconds', help: 'compute time per step (worker: data + forward/backward; coordinator: update)', buckets: STEP_BUCKETS, ...r }),
    communicationSeconds: new Histogram({ name: 'vgg_communication_seconds', help: 'gradient out and weights in, per step', buckets: STEP_BUCKETS, ...r }),
    hostCopySeconds: new Histogram({ name: 'vgg_host_copy_seconds', help: 'worker: weights into the model (per version) and gradients out of it (per step), by direction', labelNames: ['direction'], buckets: STEP_BUCKETS, ...r }),
    minorPageFaults: new Counter({ name: 'vgg_minor_page_faults_total', help: 'worker: minor page faults of the process (fresh memory mapped in)', ...r }),
    sentBytes: new Counter({ name: 'vgg_sent_bytes_total', help: 'bytes written to aggregator sockets', ...r }),
    receivedBytes: new Counter({ name: 'vgg_received_bytes_total', help: 'bytes read from aggregator sockets', ...r }),
    images: new Counter({ name: 'vgg_images_total', help: 'training images in applied (coordinator) or computed (worker) steps', ...r }),
    imagesPerSecond: new Gauge({ name: 'vgg_images_per_second', help: 'recent training throughput', ...r }),
    loss: new Gauge({ name: 'vgg_loss', help: 'training loss (coordinator: moving average; worker: last batch)', ...r }),
    learningRate: new Gauge({ name: 'vgg_learning_rate', help: 'current learning rate', ...r }),
    epoch: new Gauge({ name: 'vgg_epoch', help: 'current epoch (0-based)', ...r }),
    step: new Gauge({ name: 'vgg_step', help: 'version of the weights (steps applied)', ...r }),
    steps: new Counter({ name: 'vgg_steps_total', help: 'steps applied (coordinator) or joined (worker) by this process', ...r }),
    members: new Gauge({ name: 'vgg_members', help: 'workers connected and ready', ...r }),
    rejectedFrames: new Counter({ name: 'vgg_rejected_frames_total', help: 'frames refused by the aggregator, by error code', labelNames: ['code'], ...r }),
    skippedImages: new Counter({ name: 'vgg_skipped_images_total', help: 'unreadable images skipped', ...r }),
    shortSteps: new Counter({ name: 'vgg_short_steps_total', help: 'coordinator: steps with fewer samples than the full step (a worker lost or not yet back, an epoch\'s last step)', ...r }),
    transportBusy: new Gauge({ name: 'vgg_transport_busy_ratio', help: 'share of the last step the thread moving the gradients and weights was busy (worker: its transport thread, with a hosted shard\'s reduce and update; coordinator: the aggregator\'s thread); near 1 it limits the step', ...r }),
    queueJobs: new Gauge({ name: 'vgg_queue_jobs', help: 'BullMQ jobs by queue and state', labelNames: ['queue', 'state'], ...r }),
    validationTop1: new Gauge({ name: 'vgg_validation_top1_ratio', help: 'validation top-1 accuracy of the last epoch', ...r }),
    validationTop5: new Gauge({ name: 'vgg_validation_top5_ratio', help: 'validation top-5 accuracy of the last epoch', ...r }),
  };
}

export interface MetricsServer { port: number; close: () => Promise<void> }

/**
 * `GET /metrics` (Prometheus text format) and `GET /healthz` (200 while
 * `healthy()`, else 503: readiness and liveness probes). Binds `host`, loopback
 * unless told otherwise; port 0 picks a free one.
 */
export async function serveMetrics(metrics: Metrics, options: { host: string; port: number; healthy?: () => boolean; log?: Logger }): Promise<MetricsServer> {
  const server = createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (req.method === 'GET' && url === '/metrics') {
      metrics.registry.metrics().then((body) => {
        res.writeHead(200, { 'content-type': metrics.registry.contentType });
        res.end(body);
      }).catch((err: Error) => {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`metrics: ${err.message}\n`);
      });
      return;
    }
    if (req.method === 'GET' && url === '/healthz') {
      const ok = options.healthy?.() ?? true;
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' });
      res.end(ok ? 'ok\n' : 'not ready\n');
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('expected GET /metrics or /healthz\n');
  });
  server.on('error', (err) => options.log?.warn({ err: err.message }, 'metrics server error'));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : options.port;
  options.log?.info({ host: options.host, port }, 'metrics at /metrics, health at /healthz');
  return { port, close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }) };
}
