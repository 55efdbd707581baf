import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { boolEnv } from '../shared/option-parsers.ts';

const ADDON = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../build/heap_reuse.node');

/**
 * Has glibc keep freed large blocks mapped for reuse (worker/native/heap_reuse.c), so a worker's
 * per-step host copies of the weights and gradients (hundreds of MB, allocated and freed every step)
 * land in memory already mapped instead of faulting in and zeroing fresh pages each time. On by
 * default for workers; `VGG_HEAP_REUSE=false` leaves malloc as it is. Returns what happened, for the log.
 */
export function reuseFreedMemory(env: NodeJS.ProcessEnv = process.env): { applied: boolean; reason: string } {
  if (!boolEnv('VGG_HEAP_REUSE', true, env)) return { applied: false, reason: 'VGG_HEAP_REUSE=false' };
  if (!existsSync(ADDON)) return { applied: false, reason: `${ADDON} not built (npm run build:native)` };
  const addon = createRequire(import.meta.url)(ADDON) as { reuseFreedMemory: () => boolean };
  return addon.reuseFreedMemory() ? { applied: true, reason: 'mallopt: M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GiB' } : { applied: false, reason: 'not glibc' };
}
