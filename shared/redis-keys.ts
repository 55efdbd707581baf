/** Every Redis key and queue name of a run, in one place. Tensors never go to Redis. */
export interface RunKeys {
  trainQueue: string;
  evalQueue: string;
  /** Hash: run state for `status` (one JSON field `state`). */
  state: string;
  /** Hash: workerId -> JSON heartbeat. */
  workers: string;
  /** List per epoch, append-only: one JSON LedgerEntry per applied job (what `audit` reads). */
  ledger: (epoch: number) => string;
  /** Hash per epoch: jobId -> step applied (membership checks). */
  applied: (epoch: number) => string;
  /** JSON RunMeta: what the epochs draw from. */
  meta: string;
  /** Hash per epoch: jobId -> JSON eval counts. */
  evalResults: (epoch: number) => string;
  /** List of JSON history entries (per epoch). */
  history: string;
  /** List of JSON SeriesPoint, every few steps (report, sparkline). */
  series: string;
}

export function runKeys(run: string): RunKeys {
  const p = `vgg:${run}`;
  return {
    trainQueue: `vgg-${run}-train`,
    evalQueue: `vgg-${run}-eval`,
    state: `${p}:state`,
    workers: `${p}:workers`,
    ledger: (epoch) => `${p}:ledger:${epoch}`,
    applied: (epoch) => `${p}:applied:${epoch}`,
    meta: `${p}:meta`,
    evalResults: (epoch) => `${p}:eval:${epoch}`,
    history: `${p}:history`,
    series: `${p}:series`,
  };
}

/** A point of the training curves, written by the coordinator every few steps. */
export interface SeriesPoint { step: number; epoch: number; t: number; loss: number | null; top1: number | null; top5: number | null; lr: number; imagesPerSec: number | null }

/** One applied job in the ledger. */
export interface LedgerEntry { jobId: string; step: number; position: number; sampleIds: number[]; workerId: string | null }

/** The sample population of a run's epochs: subsetIds(trainTotal, trainLimit). */
export interface RunMeta { trainTotal: number; trainLimit: number; batchSize: number; seed: number; epochs: number }

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
