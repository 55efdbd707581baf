import type { Command } from 'commander';
import { auditEpoch } from '../coordinator/audit.ts';
import { intOption } from '../shared/option-parsers.ts';
import { checkRedis, connectRedis } from '../shared/redis-connection.ts';

export function registerAuditCommand(program: Command): void {
  program.command('audit')
    .description('check the ledger of an epoch: every sample applied exactly once?')
    .requiredOption('--epoch <e>', 'epoch (0-based)', intOption('--epoch', 0))
    .option('--redis <url>', 'Redis URL (env VGG_REDIS)', process.env.VGG_REDIS ?? 'redis://127.0.0.1:6379')
    .option('--run <name>', 'run name (env VGG_RUN)', process.env.VGG_RUN ?? 'default')
    .option('--json', 'one JSON object', false)
    .action(async (o: { epoch: number; redis: string; run: string; json: boolean }) => {
      const redis = connectRedis(o.redis, { maxRetriesPerRequest: 1 });
      try {
        await checkRedis(redis, o.redis);
        const r = await auditEpoch(redis, o.run, o.epoch);
        process.stdout.write(o.json ? `${JSON.stringify(r)}\n`
          : `run ${r.run} epoch ${r.epoch}: ${r.samples} samples, ${r.jobs} jobs, ${r.applied} applied, ${r.missing} missing, ${r.duplicates} duplicated${r.complete ? ' - exact' : ''}\n`);
        if (!r.complete) process.exitCode = 1;
      } finally {
        redis.disconnect();
      }
    });
}
