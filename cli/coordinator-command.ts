import type { Command } from 'commander';
import { startCoordinator } from '../coordinator/coordinator.ts';
import { resolveRunConfig, type RunConfig } from '../coordinator/run-config.ts';
import { createLogger } from '../shared/logger.ts';
import { UPDATE_THREADS_OPTION } from '../shared/option-parsers.ts';
import { setUpdateThreads } from '../shared/simd.ts';
import { addRunOptions } from './run-options.ts';

export function registerCoordinatorCommands(program: Command): void {
  const coordinator = program.command('coordinator').description('the run: dataset, job queues, embedded aggregator, checkpoints');
  addRunOptions(coordinator.command('start').description('start the coordinator of a run (one per run)'))
    .option('--json', 'print the run summary as one JSON object at the end', false)
    .option(...UPDATE_THREADS_OPTION)
    .action(async (flags: Partial<Record<keyof RunConfig, unknown>> & { configFile?: string; json: boolean; updateThreads?: number }) => {
      const { updateThreads, ...runFlags } = flags;
      setUpdateThreads(updateThreads);
      const cfg = resolveRunConfig(runFlags, process.env, flags.configFile);
      const log = createLogger({ role: 'coordinator', run: cfg.run });
      const handle = await startCoordinator(cfg, log);
      process.stdout.write(`${JSON.stringify({ event: 'listening', port: handle.port, run: cfg.run })}\n`);
      const shutdown = () => { void handle.stop().then(() => process.exit(143)); };
      process.once('SIGTERM', shutdown);
      process.once('SIGINT', shutdown);
      const summary = await handle.done;
      await handle.stop();
      process.stdout.write(`${flags.json ? JSON.stringify(summary) : `run ${summary.run} finished: ${summary.steps} steps, val top-1 ${(100 * summary.valTop1).toFixed(2)}%`}\n`);
    });
}
