/** What `status` shows; published by the coordinator into Redis as JSON. Stable schema v1. */
export interface RunState {
  schema: 1;
  run: string;
  state: 'starting' | 'waiting-for-workers' | 'training' | 'validating' | 'finished' | 'failed';
  epoch: number;
  epochs: number;
  step: number;
  stepsPerEpoch: number;
  /** Jobs of the current epoch already applied. */
  appliedInEpoch: number;
  learningRate: number;
  /** Exponential moving average of the training loss (0.9). */
  loss: number | null;
  trainTop1: number | null;
  trainTop5: number | null;
  valTop1: number | null;
  valTop5: number | null;
  imagesPerSec: number | null;
  etaSeconds: number | null;
  members: number;
  skippedImages: number;
  /** The most samples a step of the run has had (its full step; --partial-steps). Absent in states of older coordinators. */
  fullStepSamples?: number;
  /** Steps of the run with fewer samples than the full step (a worker lost or not yet back, an epoch's last step). */
  shortSteps?: number;
  /**
   * With `--shards K`: each aggregator shard's float range [lo, hi) and where workers reach it
   * (shard 0 is the coordinator; lo = hi = 0 with `--hosted-shards`). Absent with one aggregator.
   */
  shards?: ShardState[];
  startedAt: string;
  updatedAt: string;
}

/** One aggregator shard in `status`. */
export interface ShardState { index: number; lo: number; hi: number; url: string; ready: boolean }

/** One worker's heartbeat, written by the worker every few seconds. */
export interface WorkerHeartbeat {
  workerId: string;
  host: string;
  gpu: number | null;
  backend: string;
  pid: number;
  step: number;
  jobs: number;
  imagesPerSec: number | null;
  lastHeartbeat: string;
}
