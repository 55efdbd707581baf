/** Every Redis key and queue name of a run, in one place. Tensors never go to Redis. */
export interface RunKeys {
  trainQueue: string;
  evalQueue: string;
  /** Hash: run state for `status` (one JSON field `state`). */
  state: string;
  /** Hash: workerId -> JSON heartbeat. */
  workers: string;
  /** Hash per epoch: jobId -> JSON { step, sampleIds }: the ledger of applied jobs. */
  ledger: (epoch: number) => string;
  /** Hash per epoch: jobId -> JSON eval counts. */
  evalResults: (epoch: number) => string;
  /** List of JSON history entries (per epoch). */
  history: string;
}

export function runKeys(run: string): RunKeys {
  const p = `vgg:${run}`;
  return {
    trainQueue: `vgg-${run}-train`,
    evalQueue: `vgg-${run}-eval`,
    state: `${p}:state`,
    workers: `${p}:workers`,
    ledger: (epoch) => `${p}:ledger:${epoch}`,
    evalResults: (epoch) => `${p}:eval:${epoch}`,
    history: `${p}:history`,
  };
}

/** Job payloads on the queues. */
export interface TrainJobData { run: string; epoch: number; position: number; sampleIds: number[] }
export interface EvalJobData { run: string; epoch: number; position: number; sampleIds: number[]; step: number }
export interface EvalJobResult { samples: number; top1: number; top5: number; lossSum: number; skipped: number }

export function trainJobId(epoch: number, position: number): string {
  return `train-e${epoch}-b${position}`;
}

export function evalJobId(epoch: number, position: number): string {
  return `eval-e${epoch}-b${position}`;
}
