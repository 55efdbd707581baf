import { ConfigError } from './errors.ts';
import type { ParamLayout } from './param-layout.ts';

/** Shard i of K: which part of the flat parameter vector it owns. */
export interface ShardSpec { index: number; count: number }

/** A contiguous float range [lo, hi) of the flat parameter vector. */
export interface FloatRange { lo: number; hi: number }

/** Parses `i/K` (0 <= i < K <= 64). */
export function parseShard(flag: string, value: string): ShardSpec {
  const m = /^(\d+)\/(\d+)$/.exec(value.trim());
  const index = Number(m?.[1]);
  const count = Number(m?.[2]);
  if (m === null || count < 1 || count > 64 || index >= count) {
    throw new ConfigError(`${flag}: expected i/K with 0 <= i < K <= 64, e.g. 1/2, got ${JSON.stringify(value)}`);
  }
  return { index, count };
}

/**
 * The range shard `index` of `count` owns: equal shares of the bytes, not of
 * the layers (fc6 alone is 74% of VGG-16), rounded to 16 floats so every
 * boundary is 64-byte aligned. Shard 0 starts at 0 and the last ends at `total`.
 * `leaderOwnsNone`: shard 0 owns no floats and shards 1..K-1 share them all.
 */
export function shardRange(total: number, index: number, count: number, leaderOwnsNone = false): FloatRange {
  // Shards hosted by the workers (coordinator --hosted-shards): shard 0, the coordinator, only decides the steps.
  if (leaderOwnsNone && count > 1) return index === 0 ? { lo: 0, hi: 0 } : shardRange(total, index - 1, count - 1);
  const cut = (i: number) => (i >= count ? total : Math.min(total, Math.round((total * i) / count / 16) * 16));
  return { lo: cut(index), hi: cut(index + 1) };
}

/**
 * The layout entries that fall into [lo, hi), clipped and shifted so that
 * offsets are relative to lo: what a shard's momentum SGD iterates over (decay
 * and trainable flags come with each piece).
 */
export function sliceLayout(layout: ParamLayout, { lo, hi }: FloatRange): ParamLayout {
  const entries = layout.entries
    .filter((e) => e.offset < hi && e.offset + e.size > lo)
    .map((e) => {
      const start = Math.max(lo, e.offset);
      const end = Math.min(hi, e.offset + e.size);
      return { ...e, offset: start - lo, size: end - start };
    });
  return {
    entries, totalSize: hi - lo, trainableSize: entries.filter((e) => e.trainable).reduce((n, e) => n + e.size, 0),
    byName: new Map(entries.map((e) => [e.name, e])),
  };
}
