import { writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { readCurves, renderHtml, renderSvg } from '../coordinator/report.ts';
import { ConfigError } from '../shared/errors.ts';
import { checkRedis, connectRedis } from '../shared/redis-connection.ts';

export function registerReportCommand(program: Command): void {
  program.command('report')
    .description('draw the run\'s curves (loss, top-1/top-5 error, learning rate, images/s) into an HTML page or an SVG')
    .requiredOption('--out <file>', 'FILE.html or FILE.svg')
    .option('--redis <url>', 'Redis URL (env VGG_REDIS)', process.env.VGG_REDIS ?? 'redis://127.0.0.1:6379')
    .option('--run <name>', 'run name (env VGG_RUN)', process.env.VGG_RUN ?? 'default')
    .action(async (o: { out: string; redis: string; run: string }) => {
      const kind = /\.svg$/i.test(o.out) ? 'svg' : /\.html?$/i.test(o.out) ? 'html' : undefined;
      if (kind === undefined) throw new ConfigError(`--out: expected a file ending in .html or .svg, got ${JSON.stringify(o.out)}`);
      const redis = connectRedis(o.redis, { maxRetriesPerRequest: 1 });
      try {
        await checkRedis(redis, o.redis);
        const curves = await readCurves(redis, o.run);
        if (curves.series.length === 0 && curves.history.length === 0) {
          throw new ConfigError(`--run: expected a run with recorded steps, got none for ${JSON.stringify(o.run)} (wrong --run or --redis?)`);
        }
        await writeFile(o.out, kind === 'svg' ? renderSvg(curves) : renderHtml(curves));
        process.stdout.write(`${o.out}: ${curves.series.length} points, ${curves.history.length} epochs\n`);
      } finally {
        redis.disconnect();
      }
    });
}
