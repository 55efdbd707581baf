import { epochPermutation } from '../shared/rng.ts';
import { trainJobId, type TrainJobData } from '../shared/redis-keys.ts';

/** One job per worker-step batch: the sample ids of each position of a seeded permutation. */
export interface EpochPlan {
  epoch: number;
  batches: number[][];
  /** jobId -> position. */
  positions: Map<string, number>;
}

/** `ids`: the dataset positions in play (all, or an even subset); batches hold these ids. */
export function planEpoch(ids: number[], batchSize: number, seed: number, epoch: number): EpochPlan {
  const perm = epochPermutation(ids.length, seed, epoch);
  const batches: number[][] = [];
  for (let i = 0; i < ids.length; i += batchSize) batches.push(Array.from(perm.subarray(i, i + batchSize), (j) => ids[j] as number));
  return { epoch, batches, positions: new Map(batches.map((_, p) => [trainJobId(epoch, p), p])) };
}

/** Jobs for the positions not yet applied, for Queue.addBulk. Job ids make re-adding idempotent. */
export function trainJobs(run: string, plan: EpochPlan, applied: Set<number>) {
  return plan.batches.flatMap((sampleIds, position) => applied.has(position) ? [] : [{
    name: 'train',
    data: { run, epoch: plan.epoch, position, sampleIds } satisfies TrainJobData,
    opts: { jobId: trainJobId(plan.epoch, position), removeOnComplete: true, removeOnFail: 1000 },
  }]);
}
