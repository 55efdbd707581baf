import type { Redis } from 'ioredis';
import { runKeys, type LedgerEntry, type RunMeta } from '../shared/redis-keys.ts';
import { subsetIds } from '../shared/subset.ts';

/** `vgg-train audit --json`: what the ledger says about one epoch. */
export interface AuditReport {
  run: string;
  epoch: number;
  /** Samples the epoch draws from. */
  samples: number;
  /** Jobs in the ledger. */
  jobs: number;
  /** Ledger entries written twice by a client resend (same job, same step): counted once. */
  replayedWrites: number;
  /** Sample applications recorded (samples when complete and exact). */
  applied: number;
  /** Planned samples never applied. */
  missing: number;
  /** Samples applied more than once. */
  duplicates: number;
  /** The first 100 of each, for a look. */
  missingIds: number[];
  duplicateIds: number[];
  complete: boolean;
}

/** Reads an epoch's ledger and counts missing and duplicated samples against the run's sample population. */
export async function auditEpoch(redis: Redis, run: string, epoch: number): Promise<AuditReport> {
  const keys = runKeys(run);
  const rawMeta = await redis.get(keys.meta);
  if (rawMeta === null) throw new Error(`run ${run}: expected its metadata at ${keys.meta}, got none (wrong --run or --redis?)`);
  const meta = JSON.parse(rawMeta) as RunMeta;
  const population = subsetIds(meta.trainTotal, meta.trainLimit);
  // A ledger write whose reply was lost in a Redis restart is resent by the client: the same
  // (job, step) entry twice is one application, not two. The same job at two steps is a duplicate.
  const raw = await redis.lrange(keys.ledger(epoch), 0, -1);
  const seen = new Set<string>();
  const entries: LedgerEntry[] = [];
  for (const v of raw) {
    const e = JSON.parse(v) as LedgerEntry;
    const key = `${e.jobId}@${e.step}`;
    if (!seen.has(key)) entries.push(e);
    seen.add(key);
  }
  const counts = new Map<number, number>(population.map((id) => [id, 0]));
  let applied = 0;
  for (const e of entries) {
    for (const id of e.sampleIds) {
      counts.set(id, (counts.get(id) ?? 0) + 1);
      applied += 1;
    }
  }
  const missingIds: number[] = [];
  const duplicateIds: number[] = [];
  for (const [id, c] of counts) {
    if (c === 0) missingIds.push(id);
    if (c > 1) duplicateIds.push(id);
  }
  return {
    run, epoch, samples: population.length, jobs: entries.length, replayedWrites: raw.length - entries.length, applied, missing: missingIds.length, duplicates: duplicateIds.length,
    missingIds: missingIds.slice(0, 100), duplicateIds: duplicateIds.slice(0, 100), complete: missingIds.length === 0 && duplicateIds.length === 0,
  };
}
