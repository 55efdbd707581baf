/**
 * bench:allreduce helper: our aggregator alone in a process (`--wire fp32|bf16|fp16`), on the VGG-16
 * layout (138,357,544 trainable floats). Prints {"port"} when listening and,
 * after `--steps` commits, {"peakRssBytes"} (VmHWM), and exits once the workers hung up.
 * `--shards K`: this is shard 0 of K (the leader); `--follow URL --shard i/K`: a follower shard;
 * `--hosted`: the workers host shards 1..K-1 and this leader owns no floats. `--early-commit`: the
 * leader seals each step and sends the followers its roster (early commit; also with VGG_EARLY_COMMIT).
 */
import { Aggregator } from '../../coordinator/aggregator.ts';
import { startFollower } from '../../coordinator/shard-follower.ts';
import { ShardLeader } from '../../coordinator/shard-leader.ts';
import { FlatMomentumSgd } from '../../shared/flat-sgd.ts';
import type { WireFormat } from '../../shared/half.ts';
import { createLogger } from '../../shared/logger.ts';
import { buildLayout, modelHash } from '../../shared/param-layout.ts';
import { parseShard } from '../../shared/shard.ts';
import { aggregatorArenaFloats, tryArena } from '../../shared/simd.ts';
import { DEFAULT_MODEL_CONFIG } from '../../shared/vgg-configs.ts';
import { earlyCommitEnabled, peakRssBytes } from './cluster.ts';

const arg = (name: string, fallback: string) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] ?? fallback : fallback);
const steps = Number(arg('--steps', '1'));
const wire = arg('--wire', 'fp32') as WireFormat;
const shards = Number(arg('--shards', '1'));
const log = createLogger();
log.level = 'warn';

if (process.argv.includes('--follow')) {
  const h = await startFollower({ leader: arg('--follow', ''), token: 'bench', shard: parseShard('--shard', arg('--shard', '')), host: '127.0.0.1', port: 0, log });
  await h.done;
  process.stdout.write(`${JSON.stringify({ peakRssBytes: peakRssBytes(), shard: arg('--shard', '') })}\n`);
  process.exit(0);
}

const layout = buildLayout(DEFAULT_MODEL_CONFIG);
// The real hash: a follower shard checks it against the model the leader names.
const hash = modelHash(DEFAULT_MODEL_CONFIG, layout);
const arena = tryArena(aggregatorArenaFloats(layout.totalSize));
const weights = (arena?.alloc(layout.totalSize) ?? new Float32Array(layout.totalSize)).fill(0.01);
const sgdOptions = { learningRate: 0.01, momentum: 0.9, weightDecay: 5e-4 };
const velocity = arena?.alloc(layout.totalSize) ?? new Float32Array(layout.totalSize);
const leader = shards === 1 ? undefined : new ShardLeader({
  count: shards, model: DEFAULT_MODEL_CONFIG, leaderOwnsNone: process.argv.includes('--hosted'), onShardLost: (i, reason) => { throw new Error(`shard ${i} lost: ${reason}`); },
});
const agg: Aggregator = new Aggregator({
  host: '127.0.0.1', port: 0, token: 'bench', modelHash: hash, step: 0, runInfo: { run: 'bench', wire }, wire, shardLeader: leader,
  weights, sgd: new FlatMomentumSgd(layout, sgdOptions, velocity),
  jobStatus: () => 'pending', onMemberLost: () => {}, log, earlyCommit: process.argv.includes('--early-commit') || earlyCommitEnabled(),
  onCommit: async (step) => {
    if (step < steps) return;
    process.stdout.write(`${JSON.stringify({ peakRssBytes: peakRssBytes(), floats: layout.totalSize })}\n`);
    // The last weights are still being written: leave once every worker has them and hung up.
    const leave = setInterval(() => {
      if (agg.members.size > 0) return;
      clearInterval(leave);
      void agg.close().then(() => process.exit(0));
    }, 50);
  },
});
process.stdout.write(`${JSON.stringify({ port: await agg.start(), floats: layout.totalSize })}\n`);
