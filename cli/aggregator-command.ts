import type { Command } from 'commander';
import { startFollower } from '../coordinator/shard-follower.ts';
import { ConfigError } from '../shared/errors.ts';
import { createLogger } from '../shared/logger.ts';
import { UPDATE_THREADS_OPTION, intOption, tokenFromEnv, wsUrl } from '../shared/option-parsers.ts';
import { parseShard } from '../shared/shard.ts';
import { setUpdateThreads } from '../shared/simd.ts';

interface AggregatorFlags { leader: string; shard: string; host: string; port: number; advertise?: string; token?: string; updateThreads?: number }

export function registerAggregatorCommands(program: Command): void {
  const aggregator = program.command('aggregator').description('follower shards of the all-reduce aggregator (the coordinator is shard 0)');
  aggregator.command('start')
    .description('serve shard i of K: a contiguous byte range of the flat parameter vector (coordinator started with --shards K)')
    .requiredOption('--leader <url>', 'the coordinator\'s aggregator URL, e.g. ws://coord:7070 (env VGG_LEADER)', process.env.VGG_LEADER)
    .requiredOption('--shard <i/K>', 'this shard, 1 <= i < K (env VGG_SHARD)', process.env.VGG_SHARD)
    .option('--host <addr>', 'bind address for workers (env VGG_HOST)', process.env.VGG_HOST ?? '127.0.0.1')
    .option('--port <n>', 'port for workers, 0: any free (env VGG_PORT)', intOption('--port', 0, 65535), process.env.VGG_PORT === undefined ? 7071 : intOption('VGG_PORT', 0, 65535)(process.env.VGG_PORT))
    .option('--advertise <url>', 'the URL workers are told to reach this shard at (env VGG_ADVERTISE; default ws://host:port, the hostname for 0.0.0.0)', process.env.VGG_ADVERTISE)
    .option('--token <token>', 'run token (env VGG_TOKEN, or a file named by VGG_TOKEN_FILE)')
    .option(...UPDATE_THREADS_OPTION)
    .action(async (f: AggregatorFlags) => {
      setUpdateThreads(f.updateThreads);
      wsUrl('--leader', f.leader);
      wsUrl('--advertise', f.advertise);
      const shard = parseShard('--shard', f.shard);
      if (shard.index === 0) throw new ConfigError('--shard: expected 1 <= i < K, got 0/K: shard 0 is the coordinator (coordinator start --shards K)');
      const log = createLogger({ role: 'aggregator' });
      const h = await startFollower({ leader: f.leader, token: f.token ?? tokenFromEnv(), shard, host: f.host, port: f.port, advertise: f.advertise, log });
      process.stdout.write(`${JSON.stringify({ event: 'listening', port: h.port, url: h.url, shard: `${shard.index}/${shard.count}` })}\n`);
      const shutdown = () => { void h.close().then(() => process.exit(143)); };
      process.once('SIGTERM', shutdown);
      process.once('SIGINT', shutdown);
      await h.done;
    });
}
